"""Storage exceptions."""
from __future__ import annotations

import errno
from pathlib import Path

_CAUSES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit reached",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "folder does not exist",
    errno.ENOTDIR: "a parent of the path is not a folder",
    errno.EISDIR: "path is a folder",
}


class StorageError(OSError):
    """A scan file could not be written or read.

    The message names the file and what failed (disk full, unwritable folder, existing file,
    not an xinstrument file, ...). ``path`` holds the file concerned.
    """

    def __init__(self, path: str | Path, message: str, errno_: int | None = None) -> None:
        self.path = Path(path)
        text = f"{self.path}: {message}"
        if errno_ is None:
            super().__init__(text)
        else:
            super().__init__(errno_, text)
        self.args = (text,)

    def __str__(self) -> str:
        return self.args[0]


def describe_os_error(exc: BaseException) -> tuple[str, int | None]:
    """Short human cause for an OSError raised by the OS or by HDF5."""
    err = getattr(exc, "errno", None)
    text = str(exc)
    if err in _CAUSES:
        return f"{_CAUSES[err]} ({text})", err
    low = text.lower()
    # HDF5 reports OS failures inside its own message text, often without errno.
    for code, cause in _CAUSES.items():
        name = errno.errorcode.get(code, "")
        if (name and name.lower() in low) or f"errno = {code}," in low:
            return f"{cause} ({text})", code
    if "no space left" in low:
        return f"disk full ({text})", errno.ENOSPC
    if "file too large" in low:
        return f"file size limit reached ({text})", errno.EFBIG
    if "permission denied" in low:
        return f"permission denied ({text})", errno.EACCES
    return text, err
