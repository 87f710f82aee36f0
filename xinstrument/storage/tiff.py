"""Export frames of a scan file to TIFF (tifffile), one frame at a time."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import layout as L
from .errors import StorageError, describe_os_error
from .reader import ScanReader

WHICH = ("projections", "flats", "darks", "restored", "all")
_BIGTIFF_BYTES = 2**32 - 2**25  # classic TIFF offsets are 32-bit; leave room for tags


def _selection(reader: ScanReader, which: str) -> tuple[list[int], bool]:
    """Write-order indices to export and whether they index restored frames."""
    if which == "restored":
        if reader.restored is None:
            raise ValueError(f"{reader.path}: has no restored frames to export")
        return list(range(reader.n_restored)), True
    keys = reader.frame_metadata["image_key"]
    if which == "all":
        return list(range(keys.size)), False
    return [int(i) for i in np.flatnonzero(keys == L.IMAGE_KEYS[which])], False


def export_tiff(h5_path: str | Path, out_path: str | Path, which: str = "projections", *,
                multipage: bool = True, overwrite: bool = False) -> list[Path]:
    """Write frames of a scan file as TIFF, bit-exact (same dtype, no scaling).

    Parameters
    ----------
    h5_path
        Scan file written by ScanWriter (complete, incomplete or still recording).
    out_path
        ``multipage=True``: the ``.tif`` file to write (BigTIFF when over 4 GiB).
        ``multipage=False``: a folder (created if needed) receiving ``<which>_00000.tif`` ...
    which
        ``"projections"``, ``"flats"``, ``"darks"``, ``"restored"`` or ``"all"`` (every
        measured frame in write order).
    overwrite
        Replace existing output files; otherwise an existing one raises StorageError.

    Returns
    -------
    list of Path
        The files written. Each page carries a JSON description with the frame's write-order
        index and per-frame metadata; the resolution tags hold the pixel size.
    """
    import tifffile  # here, not at import: a GPU node records HDF5 without tifffile

    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    out_path = Path(out_path)
    with ScanReader(h5_path) as reader:
        indices, restored = _selection(reader, which)
        px_um = reader.restored_pixel_size_um if restored else reader.pixel_size_um
        # TIFF resolution in pixels per centimetre (1 cm = 1e4 um).
        res = {} if not px_um else {"resolution": (1e4 / px_um, 1e4 / px_um),
                                    "resolutionunit": "CENTIMETER"}
        dtype = np.dtype("float32") if restored else reader.dtype
        shape = reader.restored_shape if restored else reader.frame_shape
        frame_bytes = int(np.prod(shape)) * dtype.itemsize

        def pages() -> Iterator[tuple[int, np.ndarray, str]]:
            rest = reader._file[L.RESTORED + "/data"] if restored else None
            meta = reader.restored_metadata if restored else reader.frame_metadata
            for i in indices:
                if restored:
                    frame = rest[i]
                    md = {"restored_index": i, "source_index": int(meta["source_index"][i]),
                          "method": meta["method"][i], "profile": meta["profile"][i]}
                else:
                    frame = reader.frame(i)
                    md = {"index": i, **{k: v[i].item() for k, v in meta.items()}}
                yield i, frame, json.dumps(md)

        written: list[Path] = []
        try:
            if multipage:
                if out_path.exists() and not overwrite:
                    raise StorageError(out_path, "file exists; pass overwrite=True to replace it")
                big = frame_bytes * max(len(indices), 1) > _BIGTIFF_BYTES
                with tifffile.TiffWriter(out_path, bigtiff=big) as tif:
                    for _, frame, desc in pages():
                        tif.write(frame, description=desc, metadata=None, **res)
                written.append(out_path)
            else:
                out_path.mkdir(parents=True, exist_ok=True)
                for i, frame, desc in pages():
                    target = out_path / f"{which}_{i:05d}.tif"
                    if target.exists() and not overwrite:
                        raise StorageError(target, "file exists; pass overwrite=True")
                    tifffile.imwrite(target, frame, description=desc, metadata=None, **res)
                    written.append(target)
        except StorageError:
            raise
        except OSError as exc:
            cause, code = describe_os_error(exc)
            raise StorageError(out_path, f"TIFF export failed: {cause}", code) from exc
    return written
