"""Make a scan file left behind by a writer that died ordinary, final and self-describing."""
from __future__ import annotations

from pathlib import Path

import h5py

from . import layout as L
from .errors import StorageError, describe_os_error
from .superblock import repair_superblock, superblock_state
from .writer import _fsync, finalize


def recover(path: str | Path) -> int:
    """Finalise a scan file whose writer was killed (kill -9, power cut, crashed process).

    Every frame committed before the fault is kept; anything in flight is trimmed. The file is
    marked incomplete with the reason, gets its Data Exchange views, and opens again in any HDF5
    reader without SWMR. A file that was closed normally is left untouched.

    Only call this when no process is writing the file any more.

    Returns
    -------
    int
        Number of measured frames in the recovered file.
    """
    path = Path(path)
    if not path.is_file():
        raise StorageError(path, "scan file does not exist")
    if not h5py.is_hdf5(path):
        raise StorageError(path, "not an HDF5 file (not an xinstrument scan file)")
    try:
        flags, stored_eof, size = superblock_state(path)
        left_open = flags != 0 or stored_eof > size
        if left_open:
            repair_superblock(path)
    except ValueError as exc:
        raise StorageError(path, f"cannot recover: {exc}") from exc
    except OSError as exc:
        cause, code = describe_os_error(exc)
        raise StorageError(path, f"cannot recover: {cause}", code) from exc
    try:
        with h5py.File(path, "r+") as f:
            entry = f.get(L.ENTRY)
            if not isinstance(entry, h5py.Group) or \
                    entry.attrs.get("xi_format") != L.FORMAT_NAME:
                raise StorageError(path, "not an xinstrument scan file")
            n_frames = int(f[L.PROGRESS][0])
            n_restored = int(f[L.PROGRESS][1])
            n_corrected = int(f[L.PROGRESS][2]) if f[L.PROGRESS].shape[0] > 2 else 0
            finished = "end_time" in entry
            if finished and not left_open:
                return n_frames
            finalize(f, complete=False,
                     reason=f"recording interrupted: writer stopped without closing; "
                            f"{n_frames} measured and {n_restored} restored frames recovered",
                     n_frames=n_frames, n_restored=n_restored, n_corrected=n_corrected)
        _fsync(path)
    except OSError as exc:
        if isinstance(exc, StorageError):
            raise
        cause, code = describe_os_error(exc)
        raise StorageError(path, f"cannot recover: {cause}", code) from exc
    return n_frames
