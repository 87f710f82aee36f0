"""ScanReader: read (or follow live) a scan file written by ScanWriter."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import h5py
import numpy as np

from . import layout as L
from .errors import StorageError, describe_os_error


def _raise_if_truncated(path: Path, exc: OSError) -> None:
    if "truncated file" in str(exc):
        raise StorageError(path, "file is shorter than its header says (a write fault such as a "
                                 "full disk stopped the writer); run xinstrument.storage.recover()"
                                 " on it to read the frames written before the fault") from exc


def _open_scan(path: Path, swmr: bool) -> tuple[h5py.File, bool]:
    """Open read-only; return (file, opened_as_swmr)."""
    if not path.exists():
        raise StorageError(path, "scan file does not exist")
    if path.is_dir():
        raise StorageError(path, "path is a folder, expected a scan file")
    if not h5py.is_hdf5(path):
        raise StorageError(path, "not an HDF5 file (not an xinstrument scan file)")
    try:
        return h5py.File(path, "r", swmr=swmr), swmr
    except OSError as exc:
        text = str(exc)
        _raise_if_truncated(path, exc)
        if swmr or "already open for write" not in text:
            cause, code = describe_os_error(exc)
            raise StorageError(path, f"cannot open scan file: {cause}", code) from exc
    # A writer is still recording, or died without closing: SWMR read sees every flushed frame.
    try:
        return h5py.File(path, "r", swmr=True), True
    except OSError as exc:
        _raise_if_truncated(path, exc)
        cause, code = describe_os_error(exc)
        raise StorageError(path, f"cannot open scan file (left open by a writer): {cause}",
                           code) from exc


class ScanReader:
    """Read frames and metadata of a scan file.

    Parameters
    ----------
    path
        File written by :class:`ScanWriter`.
    swmr
        Follow a file that is still being written: call :meth:`refresh` to see new frames. A
        file left behind by a writer that was killed is opened this way automatically.

    Frames are addressed by their write-order index (the one ``ScanWriter.append`` returned).
    Only frames whose commit was flushed are visible, so a frame in flight is never half read.
    """

    def __init__(self, path: str | Path, *, swmr: bool = False) -> None:
        self._path = Path(path)
        self._file, self._swmr = _open_scan(self._path, swmr)
        try:
            entry = self._file.get(L.ENTRY)
            if not isinstance(entry, h5py.Group) or \
                    entry.attrs.get("xi_format") != L.FORMAT_NAME:
                raise StorageError(self._path, "not an xinstrument scan file (no /entry with "
                                               f"xi_format={L.FORMAT_NAME!r})")
            version = int(entry.attrs.get("xi_format_version", -1))
            if version > L.FORMAT_VERSION:
                raise StorageError(self._path, f"scan file format version {version} is newer "
                                               f"than this reader supports ({L.FORMAT_VERSION})")
            self._entry = entry
            self._data = self._file[L.DATA]
            self._fields = {fld.name: self._file[fld.path] for fld in L.FRAME_FIELDS}
            self._progress = self._file[L.PROGRESS]
            self._has_restored = L.RESTORED in self._file
            self._has_corrected = L.CORRECTED in self._file
            self._version = version
        except KeyError as exc:
            self._file.close()
            raise StorageError(self._path, f"scan file is missing a required object: {exc}") \
                from None
        except BaseException:
            self._file.close()
            raise

    # ------------------------------------------------------------------ state
    @property
    def path(self) -> Path:
        return self._path

    @property
    def swmr(self) -> bool:
        """True when opened in SWMR read mode (following a writer, or a crashed file)."""
        return self._swmr

    def refresh(self) -> None:
        """See frames flushed by a live writer since the last refresh (SWMR mode)."""
        if not self._swmr:
            return
        self._progress.refresh()
        self._data.refresh()
        for ds in self._fields.values():
            ds.refresh()
        if self._has_restored:
            for ds in self._restored_datasets():
                ds.refresh()
        if self._has_corrected:
            for ds in self._corrected_datasets():
                ds.refresh()
        self._entry.attrs.get("xi_complete")  # attributes are re-read on access

    def _restored_datasets(self) -> list[h5py.Dataset]:
        rest = self._file[L.RESTORED]
        out = [rest["data"], rest["source_index"], rest["method"], rest["profile"]]
        out.extend(rest["extras"].values())
        return out

    @property
    def n_frames(self) -> int:
        """Measured frames fully written (committed)."""
        committed = int(self._progress[0])
        lengths = [self._data.shape[0]] + [ds.shape[0] for ds in self._fields.values()]
        return min([committed, *lengths])

    @property
    def n_restored(self) -> int:
        if not self._has_restored:
            return 0
        committed = int(self._progress[1])
        return min([committed, *(ds.shape[0] for ds in self._restored_datasets())])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self._data.shape[1:])  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    @property
    def complete(self) -> bool:
        """True only when the writer closed the run as complete."""
        return bool(self._entry.attrs.get("xi_complete", False))

    @property
    def reason(self) -> str | None:
        """Why the run is incomplete (None when complete or still recording)."""
        value = self._entry.attrs.get("xi_reason")
        return None if value is None else str(value)

    @property
    def metadata(self) -> dict:
        """Run-level metadata given to the writer, plus attributes added with set_attrs."""
        raw = self._entry["xi_metadata"][()]
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)

    @property
    def pixel_size_um(self) -> float | None:
        """Detector pixel size in um (x), None when it was not given."""
        ds = self._file.get(L.DETECTOR + "/x_pixel_size")
        return None if ds is None else float(ds[()])

    @property
    def y_pixel_size_um(self) -> float | None:
        ds = self._file.get(L.DETECTOR + "/y_pixel_size")
        return None if ds is None else float(ds[()])

    # ------------------------------------------------------------------ measured frames
    @property
    def frame_metadata(self) -> dict[str, np.ndarray]:
        """Per-frame metadata in write order: image_key, theta_deg, voltage_kv, current_ua,
        exposure_s, frames_averaged, focus_z_um, timestamp_s."""
        n = self.n_frames
        return {name: ds[:n] for name, ds in self._fields.items()}

    def _indices(self, key: int) -> np.ndarray:
        n = self.n_frames
        return np.flatnonzero(self._fields["image_key"][:n] == key)

    def _read_indices(self, idx: np.ndarray, ds: h5py.Dataset) -> np.ndarray:
        out = np.empty((idx.size, *ds.shape[1:]), dtype=ds.dtype)
        if idx.size == 0:
            return out
        # Read consecutive runs in one call each (fast path for typical dark/flat/scan blocks).
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        pos = 0
        for run in np.split(idx, breaks):
            a, b = int(run[0]), int(run[-1]) + 1
            ds.read_direct(out, np.s_[a:b], np.s_[pos:pos + b - a])
            pos += b - a
        return out

    @property
    def projections(self) -> np.ndarray:
        """All projection frames (image_key 0), shape (n, rows, cols)."""
        return self._read_indices(self._indices(L.IMAGE_KEY_PROJECTION), self._data)

    @property
    def flats(self) -> np.ndarray:
        return self._read_indices(self._indices(L.IMAGE_KEY_FLAT), self._data)

    @property
    def darks(self) -> np.ndarray:
        return self._read_indices(self._indices(L.IMAGE_KEY_DARK), self._data)

    @property
    def theta_deg(self) -> np.ndarray:
        """Rotation angle of each projection, degrees."""
        return self._fields["theta_deg"][:self.n_frames][self._indices(L.IMAGE_KEY_PROJECTION)]

    def frame(self, index: int) -> np.ndarray:
        """One measured frame by write-order index."""
        n = self.n_frames
        if not -n <= index < n:
            raise IndexError(f"{self._path}: frame {index} out of range, file has {n} frames")
        return self._data[index % n]

    def frames(self, image_key: int | None = None, start: int = 0
               ) -> Iterator[tuple[int, np.ndarray, dict[str, Any]]]:
        """Yield ``(index, frame, metadata)`` one frame at a time (no full load).

        ``image_key`` restricts to projections (0), flats (1) or darks (2). In SWMR mode,
        frames committed while iterating are included (the count is refreshed between frames).
        """
        if image_key is not None and image_key not in (0, 1, 2):
            raise ValueError(f"image_key must be None, 0, 1 or 2, got {image_key!r}")
        i = start
        while True:
            if i >= self.n_frames:
                if not self._swmr:
                    return
                self.refresh()
                if i >= self.n_frames:
                    return
            md = {name: ds[i].item() for name, ds in self._fields.items()}
            if image_key is None or md["image_key"] == image_key:
                yield i, self._data[i], md
            i += 1

    # ------------------------------------------------------------------ raw or corrected
    def is_corrected(self, stack: str = "measured") -> bool:
        """Whether ``stack`` ("measured", "corrected" or "restored") holds flat-field corrected
        frames, from the ``@corrected`` attribute the writer puts on every stack. A file that
        does not say (written before format version 2) raises StorageError: the dtype does not
        tell raw from corrected, so this reader refuses to guess."""
        paths = {"measured": L.DATA, "corrected": L.CORRECTED + "/data",
                 "restored": L.RESTORED + "/data"}
        if stack not in paths:
            raise ValueError(f"stack must be one of {sorted(paths)}, got {stack!r}")
        ds = self._file.get(paths[stack])
        if ds is None:
            raise StorageError(self._path, f"the file has no {stack} stack")
        value = ds.attrs.get("corrected")
        if value is None:
            raise StorageError(self._path, f"the {stack} frames do not say whether they are "
                                           "flat-field corrected (file format version "
                                           f"{self._version}, written before the @corrected "
                                           "attribute); refusing to guess from the dtype")
        return bool(value)

    def _corrected_datasets(self) -> list[h5py.Dataset]:
        cor = self._file[L.CORRECTED]
        return [cor["data"], *(cor[name] for name in L.CORRECTED_FIELDS)]

    @property
    def has_corrected(self) -> bool:
        """True when the file carries a stack of flat-field corrected frames."""
        return self._has_corrected

    @property
    def n_corrected(self) -> int:
        if not self._has_corrected:
            return 0
        prog = self._progress
        committed = int(prog[2]) if prog.shape[0] > 2 else 0
        return min([committed, *(ds.shape[0] for ds in self._corrected_datasets())])

    @property
    def corrected(self) -> np.ndarray | None:
        """Flat-field corrected frames (transmission), shape (m, rows, cols), or None."""
        if not self._has_corrected:
            return None
        return self._file[L.CORRECTED + "/data"][:self.n_corrected]

    @property
    def corrected_metadata(self) -> dict[str, np.ndarray]:
        """``source_index``, ``dark_index``, ``flat_index`` (write-order indices of the raw
        frame and the references that corrected it) per corrected frame; {} without any."""
        if not self._has_corrected:
            return {}
        m = self.n_corrected
        cor = self._file[L.CORRECTED]
        return {name: cor[name][:m] for name in L.CORRECTED_FIELDS}

    # ------------------------------------------------------------------ restored frames
    @property
    def restored(self) -> np.ndarray | None:
        """Restored frames, shape (m, *restored_shape), or None if the file has none declared."""
        if not self._has_restored:
            return None
        return self._file[L.RESTORED + "/data"][:self.n_restored]

    @property
    def restored_shape(self) -> tuple[int, int] | None:
        """``(rows, cols)`` of restored frames (larger than :attr:`frame_shape` after super-
        resolution), None if the file has no restored frames declared."""
        if not self._has_restored:
            return None
        return tuple(self._file[L.RESTORED + "/data"].shape[1:])  # type: ignore[return-value]

    @property
    def restored_scale(self) -> int | None:
        """Restored pixels per measured pixel along each axis (1 for deblurring, N for
        super-resolution by N); None without restored frames or for a non-integer ratio."""
        if not self._has_restored:
            return None
        value = self._file[L.RESTORED].attrs.get("scale")
        if value is not None:
            return int(value)
        # files written before the attribute existed kept the measured frame shape
        return 1 if self.restored_shape == self.frame_shape else None

    @property
    def restored_pixel_size_um(self) -> float | None:
        """Pixel pitch of the restored frames (um), None when unknown or no restored frames."""
        if not self._has_restored:
            return None
        value = self._file[L.RESTORED].attrs.get("pixel_size_um")
        if value is not None:
            return float(value)
        px, scale = self.pixel_size_um, self.restored_scale
        return None if px is None or scale is None else px / scale

    @property
    def restored_metadata(self) -> dict:
        """``source_index`` (array), ``method`` and ``profile`` (lists of str) per restored
        frame; empty dict when the file has no restored frames declared."""
        if not self._has_restored:
            return {}
        m = self.n_restored
        rest = self._file[L.RESTORED]
        return {
            "source_index": rest["source_index"][:m],
            "method": [b.decode("utf-8") for b in rest["method"][:m]],
            "profile": [b.decode("utf-8") for b in rest["profile"][:m]],
        }

    @property
    def restored_extras(self) -> dict[str, np.ndarray]:
        """Extra per-restored-frame arrays by name, shape (m, *declared shape)."""
        if not self._has_restored:
            return {}
        m = self.n_restored
        return {name: ds[:m] for name, ds in self._file[L.RESTORED_EXTRAS].items()}

    # ------------------------------------------------------------------ analysis arrays
    def read_array(self, name: str) -> np.ndarray:
        """An array written with ``ScanWriter.write_array`` (``name`` relative to /entry)."""
        obj = self._entry.get(name)
        if not isinstance(obj, h5py.Dataset):
            raise KeyError(f"{self._path}: no array /entry/{name}")
        return obj[()]

    def array_attrs(self, name: str) -> dict:
        obj = self._entry.get(name)
        if not isinstance(obj, h5py.Dataset):
            raise KeyError(f"{self._path}: no array /entry/{name}")
        return dict(obj.attrs)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        if self._file is not None and self._file.id.valid:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ScanReader({str(self._path)!r}, n_frames={self.n_frames}, "
                f"complete={self.complete})")
