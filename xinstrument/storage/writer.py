"""ScanWriter: record frames into a NeXus NXtomo + Data Exchange HDF5 file, live-followable.

Recording model (SWMR, single writer / multiple readers):

1. the constructor creates every object the recording needs (all per-frame datasets resizable,
   one frame per chunk), writes run-level metadata, then switches the file to SWMR mode;
2. each ``append`` resizes, writes and flushes the frame and its per-frame metadata, then bumps
   the commit counter ``/entry/xi_progress`` and flushes it, so a follower (or the file left by a
   crash) sees whole frames only;
3. ``close`` leaves SWMR mode and finalises: completeness flag, end time, Data Exchange virtual
   datasets, and whatever had to wait because SWMR forbids creating objects (``write_array``,
   ``set_attrs``).

Which optional datasets exist is fixed in the constructor (``restored``, ``restored_extras``),
because no dataset can be created once SWMR is on.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import h5py
import numpy as np

from . import layout as L
from .errors import StorageError, describe_os_error

# Measured by benchmark_write on 2048x2048 uint16 sCMOS-like frames (offset + shot + read noise):
# gzip-1 + shuffle ~50 MB/s for 1.45x, lzf + shuffle ~80-140 MB/s for 1.26x, uncompressed at
# disk speed (page cache ~1.3 GB/s). Noisy 16-bit data barely compress, so a codec costs far
# more CPU time than the disk time it saves and would drop camera frames; the default is
# uncompressed chunks. gzip/lzf remain one argument away for archiving.
DEFAULT_COMPRESSION: str | None = None

# Space kept free beside a recording (a hidden file in the same folder): when the disk fills,
# the writer deletes it so that closing the file (metadata flush, completeness flag, Data
# Exchange views) still succeeds; without it HDF5 cannot close the file at all and the process
# may crash at exit. 1 MiB holds the closing metadata of a scan of thousands of frames.
RESERVE_BYTES = 1 << 20
_COMPRESSIONS = {None, "none", "gzip", "lzf", "default"}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _jsonable(metadata: dict, path: Path) -> str:
    def default(obj: Any) -> Any:
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError(f"metadata value of type {type(obj).__name__} is not storable")

    try:
        return json.dumps(metadata, default=default, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{path}: metadata must be JSON-like (str, numbers, lists, dicts): {exc}") \
            from None


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name or name.startswith("/") or name.endswith("/"):
        raise ValueError(f"{what} name must be a relative path like 'analysis/focus_curve', "
                         f"got {name!r}")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{what} name {name!r} contains an empty, '.' or '..' component")
    return name


def _encode_name(value: str, what: str) -> bytes:
    raw = str(value).encode("utf-8")
    if len(raw) > L.NAME_BYTES:
        raise ValueError(f"{what} {value!r} is {len(raw)} bytes long; at most {L.NAME_BYTES} "
                         "bytes are stored per restored frame")
    return raw


def _cast_frame(frame: Any, shape: tuple[int, int], dtype: np.dtype, what: str) -> np.ndarray:
    arr = np.asarray(frame)
    if arr.shape != shape:
        raise ValueError(f"{what} has shape {arr.shape}; this file records frames of shape {shape}")
    if arr.dtype == dtype:
        return np.ascontiguousarray(arr)
    if np.can_cast(arr.dtype, dtype, "safe"):
        return np.ascontiguousarray(arr, dtype=dtype)
    if dtype.kind == "f" and arr.dtype.kind in "fiub":
        return np.ascontiguousarray(arr, dtype=dtype)  # float narrowing: precision, not range
    if dtype.kind in "iu" and arr.dtype.kind in "iub":
        info = np.iinfo(dtype)
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < info.min or hi > info.max:
            raise ValueError(f"{what} values span [{lo}, {hi}], outside the range of the "
                             f"file's {dtype} frames [{info.min}, {info.max}]")
        return np.ascontiguousarray(arr, dtype=dtype)
    raise ValueError(f"{what} has dtype {arr.dtype}, which cannot be stored losslessly as the "
                     f"file's {dtype} (convert explicitly, e.g. round and clip, before appending)")


def _compression_kwargs(compression: str | None) -> dict:
    if compression == "default":
        compression = DEFAULT_COMPRESSION
    if compression in (None, "none"):
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    if compression == "lzf":
        return {"compression": "lzf", "shuffle": True}
    raise ValueError(f"compression must be one of 'default', 'gzip', 'lzf', None; got "
                     f"{compression!r}")


def open_for_update(path: Path) -> h5py.File:
    """Open a closed scan file read/write, even while SWMR followers still hold it open."""
    try:
        return h5py.File(path, "r+")
    except OSError as exc:
        if "lock" not in str(exc).lower():
            raise
    # A live follower holds a shared lock; finalising only adds objects it has not opened.
    return h5py.File(path, "r+", locking=False)


def write_slices(path: Path, name: str, slices: np.ndarray, heights_mm: np.ndarray,
                 coverage: np.ndarray, *, attrs: dict, units: str,
                 group_attrs: dict | None = None) -> str:
    """Store reconstructed slices in a closed scan file as NXdata ``/entry/recon/<name>``
    (replacing one of that name); returns its HDF5 path."""
    with open_for_update(Path(path)) as f:
        entry = f["/entry"]
        recon_grp = entry.require_group("recon")
        recon_grp.attrs["NX_class"] = "NXcollection"
        if name in recon_grp:
            del recon_grp[name]
        g = recon_grp.create_group(name)
        g.attrs["NX_class"] = "NXdata"
        g.attrs["signal"] = "slices"
        g.attrs["axes"] = ["heights_mm", ".", "."]
        for k, v in (group_attrs or {}).items():
            g.attrs[k] = v
        ds = g.create_dataset("slices", data=np.asarray(slices, np.float32),
                              chunks=(1, *np.shape(slices)[1:]))
        for k, v in attrs.items():
            ds.attrs[k] = v
        ds.attrs["units"] = units
        h = g.create_dataset("heights_mm", data=heights_mm)
        h.attrs["units"] = "mm"
        g.create_dataset("coverage", data=np.clip(coverage, 0, 65535).astype(np.uint16),
                         chunks=(1, *np.shape(coverage)[1:]))
    return f"/entry/recon/{name}"


def _set_nx(obj: h5py.HLObject, nx_class: str) -> None:
    obj.attrs["NX_class"] = nx_class


class ScanWriter:
    """Write one scan (projections, flats, darks and optional restored frames) to HDF5.

    Parameters
    ----------
    path
        Output ``.h5`` file.
    frame_shape
        ``(rows, cols)`` of every measured frame (and of restored frames unless
        ``restored_shape`` says otherwise).
    dtype
        Storage dtype of measured frames (e.g. ``"uint16"`` raw, ``"float32"`` corrected).
        Appended frames are converted only when that is lossless in range; otherwise ValueError.
    metadata
        Run-level metadata (JSON-like). Recognised keys are also mapped onto NeXus fields:
        ``title``, ``instrument``, ``profile``, ``pixel_size_um`` (or ``x_pixel_size_um`` /
        ``y_pixel_size_um``), ``sample``, ``detector``, ``scintillator``,
        ``source_name``. All of it is readable back as ``ScanReader.metadata``.
    restored
        Create ``/entry/restored`` (NXdata) for restored frames, float32.
    corrected
        Create ``/entry/corrected`` (NXdata): flat-field corrected frames (float32) beside the
        raw ones, each naming its raw frame, dark and flat (``append_corrected``).
    measured_corrected
        What the measured stack holds, stored as its ``@corrected`` attribute (readers rely on
        it, never on the dtype): False for camera counts (the product's recordings), True for
        frames that were corrected before they reached this writer (converted files). Default:
        the metadata's ``corrected`` flag, else False.
    restored_shape
        ``(rows, cols)`` of the restored frames when they differ from ``frame_shape`` (super-
        resolution: ``scale`` x larger per axis); default ``frame_shape``. Implies
        ``restored=True``. The scale (restored / measured size, when the same integer on both
        axes) is stored as ``/entry/restored@scale``.
    restored_pixel_size_um
        Pixel pitch of the restored frames (um, same plane as ``pixel_size_um``); default the
        metadata's ``pixel_size_um`` divided by the scale. Stored as
        ``/entry/restored@pixel_size_um`` (absent when neither is known).
    restored_extras
        ``{name: shape}`` of extra per-restored-frame arrays, ``()`` for a scalar, e.g.
        ``{"consistency": (rows, cols), "summary": ()}``; float32, NaN until written. Implies
        ``restored=True``.
    swmr
        Record in SWMR mode so other processes can follow live (default). With False, the file
        is an ordinary HDF5 file while recording and ``write_array``/``set_attrs`` act at once.
    compression
        ``"default"`` (see ``DEFAULT_COMPRESSION``), ``"gzip"`` (level 1 + shuffle), ``"lzf"``
        (+ shuffle) or None. All lossless, one frame per chunk.
    overwrite
        Replace an existing file; otherwise an existing path raises StorageError.
    """

    def __init__(self, path: str | Path, frame_shape: tuple[int, int], dtype: Any = "float32",
                 *, metadata: dict | None = None, restored: bool = False,
                 restored_extras: dict | None = None, restored_shape: tuple[int, int] | None = None,
                 restored_pixel_size_um: float | None = None, corrected: bool = False,
                 measured_corrected: bool | None = None, swmr: bool = True,
                 compression: str | None = "default", overwrite: bool = False) -> None:
        self._path = Path(path)
        self._file: h5py.File | None = None
        self._closed = False
        try:
            shape = tuple(int(n) for n in frame_shape)
        except (TypeError, ValueError):
            raise ValueError(f"frame_shape must be (rows, cols), got {frame_shape!r}") from None
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"frame_shape must be two positive sizes (rows, cols), got "
                             f"{frame_shape!r}")
        self._shape: tuple[int, int] = shape  # type: ignore[assignment]
        try:
            self._dtype = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"dtype {dtype!r} is not a numpy dtype") from None
        if self._dtype.kind not in "iuf":
            raise ValueError(f"frames must be integer or float, got dtype {self._dtype}")
        if compression not in _COMPRESSIONS:
            raise ValueError(f"compression must be one of 'default', 'gzip', 'lzf', None; got "
                             f"{compression!r}")
        self._filters = _compression_kwargs(compression)
        extras = dict(restored_extras or {})
        self._extras: dict[str, tuple[int, ...]] = {}
        for name, ex_shape in extras.items():
            if not isinstance(name, str) or "/" in name or not name or name in L.RESTORED_RESERVED:
                raise ValueError(f"restored extra name {name!r} is invalid (plain name, not one "
                                 f"of {sorted(L.RESTORED_RESERVED)})")
            try:
                ex = tuple(int(n) for n in ex_shape)
            except (TypeError, ValueError):
                raise ValueError(f"restored extra {name!r}: shape must be a tuple of sizes or (), "
                                 f"got {ex_shape!r}") from None
            if any(n < 1 for n in ex):
                raise ValueError(f"restored extra {name!r}: sizes must be positive, got {ex}")
            self._extras[name] = ex
        self._restored = bool(restored) or bool(self._extras) or restored_shape is not None
        self._rshape: tuple[int, int] = self._shape
        if restored_shape is not None:
            try:
                rshape = tuple(int(n) for n in restored_shape)
            except (TypeError, ValueError):
                raise ValueError(f"restored_shape must be (rows, cols), got "
                                 f"{restored_shape!r}") from None
            if len(rshape) != 2 or min(rshape) < 1:
                raise ValueError(f"restored_shape must be two positive sizes (rows, cols), got "
                                 f"{restored_shape!r}")
            self._rshape = rshape  # type: ignore[assignment]
        ratios = {r / m for r, m in zip(self._rshape, self._shape)}
        # one integer ratio on both axes is a pixel-size scale; anything else (a crop) has none
        self._rscale: int | None = (int(ratios.pop()) if len(ratios) == 1
                                    and float(next(iter(ratios))).is_integer() else None)
        self._rpixel_um: float | None = None
        if restored_pixel_size_um is not None:
            try:
                val = float(restored_pixel_size_um)
            except (TypeError, ValueError):
                val = math.nan
            if not math.isfinite(val) or val <= 0:
                raise ValueError(f"restored_pixel_size_um must be a positive number of um, got "
                                 f"{restored_pixel_size_um!r}")
            self._rpixel_um = val
        self._corrected = bool(corrected)
        if measured_corrected is None:
            # a file written from already-corrected frames says so in its metadata
            declared = (metadata or {}).get("corrected", False)
            if not isinstance(declared, (bool, np.bool_)):
                raise ValueError(f"metadata 'corrected' must be true or false, got {declared!r}")
            measured_corrected = bool(declared)
        self._measured_corrected = bool(measured_corrected)
        self._n_corrected = 0
        self._swmr = bool(swmr)
        self._metadata = dict(metadata or {})
        self._metadata_json = _jsonable(self._metadata, self._path)
        self._n = 0
        self._n_restored = 0
        self._pending_arrays: dict[str, tuple[np.ndarray, dict]] = {}
        self._pending_attrs: dict[str, Any] = {}
        self._pending_nxdata: dict[str, tuple] = {}

        try:
            exists = self._path.exists()
        except OSError as exc:
            cause, code = describe_os_error(exc)
            raise StorageError(self._path, f"cannot create scan file: {cause}", code) from exc
        if self._path.is_dir():
            raise StorageError(self._path, "path is a folder, expected a file name")
        if exists and not overwrite:
            raise StorageError(self._path, "file exists; pass overwrite=True to replace it")
        try:
            self._file = h5py.File(self._path, "w", libver="latest")
        except OSError as exc:
            cause, code = describe_os_error(exc)
            if not self._path.parent.is_dir():
                cause = f"folder {self._path.parent} does not exist"
            raise StorageError(self._path, f"cannot create scan file: {cause}", code) from exc
        self._reserve: Path | None = None
        try:
            self._reserve = _make_reserve(self._path)
        except OSError as exc:
            self._abandon()
            with contextlib.suppress(OSError):
                self._path.unlink()
            cause, code = describe_os_error(exc)
            raise StorageError(self._path, f"not enough free space to start a recording "
                                           f"({RESERVE_BYTES >> 10} KiB kept for closing it): "
                                           f"{cause}", code) from exc
        try:
            self._create_layout()
            self._cache_handles()
            self._file.flush()
            if self._swmr:
                self._file.swmr_mode = True
        except OSError as exc:
            self._abandon()
            cause, code = describe_os_error(exc)
            raise StorageError(self._path, f"cannot lay out scan file: {cause}", code) from exc
        except BaseException:
            self._abandon()
            raise

    # ------------------------------------------------------------------ layout
    def _create_layout(self) -> None:
        f = self._file
        assert f is not None
        md = self._metadata
        rows, cols = self._shape
        f.attrs["default"] = "entry"
        f.attrs["file_name"] = self._path.name
        f.attrs["file_time"] = _now_iso()
        f.attrs["creator"] = "xinstrument"
        f.attrs["HDF5_Version"] = h5py.version.hdf5_version
        f.attrs["h5py_version"] = h5py.version.version

        entry = f.create_group(L.ENTRY)
        _set_nx(entry, "NXentry")
        entry.attrs["default"] = "data"
        entry.attrs["xi_format"] = L.FORMAT_NAME
        entry.attrs["xi_format_version"] = L.FORMAT_VERSION
        entry.attrs["xi_complete"] = False
        entry.create_dataset("definition", data="NXtomo")
        entry.create_dataset("title", data=str(md.get("title", self._path.stem)))
        entry.create_dataset("start_time", data=_now_iso())
        entry.create_dataset("xi_metadata", data=self._metadata_json)
        prog = entry.create_dataset("xi_progress", shape=(3,), chunks=(3,), dtype="int64",
                                    data=np.zeros(3, dtype="int64"))
        prog.attrs["columns"] = ("measured frames, restored frames, corrected frames (fully "
                                 "written and flushed)")

        inst = entry.create_group("instrument")
        _set_nx(inst, "NXinstrument")
        if "instrument" in md:
            inst.create_dataset("name", data=str(md["instrument"]))
        src = inst.create_group("source")
        _set_nx(src, "NXsource")
        src.create_dataset("type", data="Fixed Tube X-ray")
        src.create_dataset("probe", data="x-ray")
        src.create_dataset("name", data=str(md.get("source_name", "microfocus X-ray tube")))
        det = inst.create_group("detector")
        _set_nx(det, "NXdetector")
        if "detector" in md:
            det.create_dataset("description", data=str(md["detector"]))
        if "scintillator" in md:
            det.create_dataset("scintillator", data=str(md["scintillator"]))
        if "profile" in md:
            det.create_dataset("calibration_profile", data=str(md["profile"]))
        px = md.get("pixel_size_um")
        xpx = md.get("x_pixel_size_um", px)
        ypx = md.get("y_pixel_size_um", px)
        for name, value in (("x_pixel_size", xpx), ("y_pixel_size", ypx)):
            if value is not None:
                try:
                    val = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"{self._path}: metadata pixel size must be a number in um, "
                                     f"got {value!r}") from None
                if not math.isfinite(val) or val <= 0:
                    raise ValueError(f"{self._path}: metadata pixel size must be positive um, "
                                     f"got {value!r}")
                det.create_dataset(name, data=val).attrs["units"] = "um"

        sample = entry.create_group("sample")
        _set_nx(sample, "NXsample")
        sample.create_dataset("name", data=str(md.get("sample", "")))

        data = det.create_dataset(
            "data", shape=(0, rows, cols), maxshape=(None, rows, cols), chunks=(1, rows, cols),
            dtype=self._dtype, **self._filters)
        data.attrs["interpretation"] = "image"
        # what readers rely on (never the dtype): these are the camera's averaged counts
        data.attrs["corrected"] = self._measured_corrected
        data.attrs["units"] = "transmission" if self._measured_corrected else "counts"
        data.attrs["target"] = L.DATA     # NeXus: the link source names itself
        for fld in L.FRAME_FIELDS:
            ds = f.create_dataset(fld.path, shape=(0,), maxshape=(None,),
                                  chunks=(L.META_CHUNK_ROWS,), dtype=fld.dtype, fillvalue=fld.fill)
            if fld.units:
                ds.attrs["units"] = fld.units
        det["image_key"].attrs["description"] = "0 projection, 1 flat field, 2 dark field"
        det["number_of_cycles"] = det["frames_averaged"]  # NeXus name for summed exposures
        det["timestamp"].attrs["epoch"] = "1970-01-01T00:00:00Z"

        theta_ds = f[L.FIELD_BY_NAME["theta_deg"].path]
        theta_ds.attrs["target"] = L.FIELD_BY_NAME["theta_deg"].path
        det["image_key"].attrs["target"] = L.FIELD_BY_NAME["image_key"].path
        nxdata = entry.create_group("data")
        _set_nx(nxdata, "NXdata")
        nxdata["data"] = data
        nxdata["rotation_angle"] = theta_ds
        nxdata["image_key"] = det["image_key"]
        nxdata.attrs["signal"] = "data"
        nxdata.attrs["axes"] = ["rotation_angle", ".", "."]
        nxdata.attrs["rotation_angle_indices"] = 0

        exchange = f.create_group(L.EXCHANGE)
        exchange.attrs["description"] = (
            "Data Exchange view; data, data_white, data_dark and theta are added when the file "
            "is finalised and map onto /entry/instrument/detector/data")

        if self._corrected:
            cor = entry.create_group("corrected")
            _set_nx(cor, "NXdata")
            cd = cor.create_dataset(
                "data", shape=(0, rows, cols), maxshape=(None, rows, cols),
                chunks=(1, rows, cols), dtype="float32", fillvalue=np.nan, **self._filters)
            cd.attrs["interpretation"] = "image"
            cd.attrs["corrected"] = True
            cd.attrs["units"] = "transmission"
            cd.attrs["correction"] = ("(raw - dark) / (flat - dark), defective pixels replaced "
                                      "by their neighbourhood median")
            cor.attrs["signal"] = "data"
            for name in L.CORRECTED_FIELDS:
                ds = cor.create_dataset(name, shape=(0,), maxshape=(None,),
                                        chunks=(L.META_CHUNK_ROWS,), dtype="int64", fillvalue=-1)
            cor["source_index"].attrs["description"] = (
                "index into /entry/instrument/detector/data of the raw frame corrected")
            cor["dark_index"].attrs["description"] = (
                "index into /entry/instrument/detector/data of the dark (image_key 2) used")
            cor["flat_index"].attrs["description"] = (
                "index into /entry/instrument/detector/data of the flat (image_key 1) used")
            exchange["data_corrected"] = cd

        if self._restored:
            rest = entry.create_group("restored")
            _set_nx(rest, "NXdata")
            rrows, rcols = self._rshape
            rd = rest.create_dataset(
                "data", shape=(0, rrows, rcols), maxshape=(None, rrows, rcols),
                chunks=(1, rrows, rcols), dtype="float32", fillvalue=np.nan, **self._filters)
            rd.attrs["interpretation"] = "image"
            rd.attrs["corrected"] = True     # restorations start from corrected frames
            rd.attrs["units"] = "transmission"
            rest.attrs["signal"] = "data"
            if self._rscale is not None:
                rest.attrs["scale"] = self._rscale
            rpx = self._rpixel_um
            if rpx is None and xpx is not None and self._rscale is not None:
                rpx = float(xpx) / self._rscale
            if rpx is not None:
                rest.attrs["pixel_size_um"] = float(rpx)
                rd.attrs["pixel_size_um"] = float(rpx)
            rest.create_dataset("source_index", shape=(0,), maxshape=(None,),
                                chunks=(L.META_CHUNK_ROWS,), dtype="int64", fillvalue=-1)
            for name in ("method", "profile"):
                rest.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(256,),
                                    dtype=f"S{L.NAME_BYTES}")
            rest["source_index"].attrs["description"] = (
                "index into /entry/instrument/detector/data of the measured frame")
            ext = rest.create_group("extras")
            _set_nx(ext, "NXcollection")
            for name, ex in self._extras.items():
                chunks = (1, *ex) if ex else (L.META_CHUNK_ROWS,)
                kw = self._filters if ex else {}
                ext.create_dataset(name, shape=(0, *ex), maxshape=(None, *ex), chunks=chunks,
                                   dtype="float32", fillvalue=np.nan, **kw)
            exchange["data_restored"] = rd

    def _cache_handles(self) -> None:
        # Path lookups cost more than writing a small value; resolve them once per file.
        f = self._file
        self._h_data = f[L.DATA]
        self._h_fields = [(fld.name, f[fld.path]) for fld in L.FRAME_FIELDS]
        self._h_progress = f[L.PROGRESS]
        if self._corrected:
            cor = f[L.CORRECTED]
            self._h_cdata = cor["data"]
            self._h_cmeta = [cor[name] for name in L.CORRECTED_FIELDS]
        if self._restored:
            rest = f[L.RESTORED]
            self._h_rdata = rest["data"]
            self._h_rmeta = [rest["source_index"], rest["method"], rest["profile"]]
            self._h_extras = {name: rest["extras"][name] for name in self._extras}

    def _abandon(self) -> None:
        self._release_reserve()
        if self._file is not None:
            with contextlib.suppress(Exception):  # already reporting the original failure
                self._file.close()
        self._file = None
        self._closed = True

    def _release_reserve(self) -> None:
        r, self._reserve = getattr(self, "_reserve", None), None
        if r is not None:
            with contextlib.suppress(OSError):
                r.unlink()

    # ------------------------------------------------------------------ properties
    @property
    def path(self) -> Path:
        return self._path

    @property
    def n_frames(self) -> int:
        """Measured frames written so far."""
        return self._n

    @property
    def n_restored(self) -> int:
        return self._n_restored

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def restored_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of restored frames."""
        return self._rshape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def closed(self) -> bool:
        return self._closed

    def _require_open(self) -> h5py.File:
        if self._closed or self._file is None:
            raise StorageError(self._path, "scan writer is closed")
        return self._file

    def _fault(self, exc: Exception, action: str) -> StorageError:
        # a full disk: free the reserve now, so the file can still be closed properly
        self._release_reserve()
        cause, code = describe_os_error(exc)
        return StorageError(self._path, f"{action} failed: {cause}; the {self._n} frames "
                                        "flushed before this remain readable (ScanReader, or "
                                        "recover() for other HDF5 readers)", code)

    # ------------------------------------------------------------------ writing
    def append(self, frame: np.ndarray, *, image_key: int = 0, theta_deg: float = 0.0,
               voltage_kv: float = math.nan, current_ua: float = math.nan,
               exposure_s: float = math.nan, frames_averaged: int = 1,
               focus_z_um: float = math.nan, timestamp_s: float | None = None) -> int:
        """Write one measured frame and its metadata; return its index (write order).

        ``image_key`` follows NXtomo: 0 projection, 1 flat field, 2 dark field. When this
        returns, the frame is flushed and visible to SWMR readers.
        """
        f = self._require_open()
        if image_key not in (0, 1, 2) or isinstance(image_key, bool):
            raise ValueError(f"image_key must be 0 (projection), 1 (flat) or 2 (dark), got "
                             f"{image_key!r}")
        if int(frames_averaged) != frames_averaged or frames_averaged < 1:
            raise ValueError(f"frames_averaged must be an integer >= 1, got {frames_averaged!r}")
        values = {
            "image_key": int(image_key), "theta_deg": float(theta_deg),
            "voltage_kv": float(voltage_kv), "current_ua": float(current_ua),
            "exposure_s": float(exposure_s), "frames_averaged": int(frames_averaged),
            "focus_z_um": float(focus_z_um),
            "timestamp_s": float(time.time() if timestamp_s is None else timestamp_s),
        }
        arr = _cast_frame(frame, self._shape, self._dtype, f"frame {self._n}")
        i = self._n
        try:
            for name, ds in self._h_fields:
                ds.resize((i + 1,))
                ds[i] = values[name]
            data = self._h_data
            data.resize(i + 1, axis=0)
            if self._filters:
                data[i] = arr
            else:
                # One frame is exactly one uncompressed chunk: hand its bytes straight to HDF5.
                data.id.write_direct_chunk((i, 0, 0), arr.data)
            f.flush()
            self._h_progress[0] = i + 1
            self._h_progress.flush()
        except (OSError, RuntimeError) as exc:
            raise self._fault(exc, f"writing frame {i}") from exc
        self._n = i + 1
        return i

    def append_corrected(self, frame: np.ndarray, *, source_index: int, dark_index: int,
                         flat_index: int) -> int:
        """Write one flat-field corrected frame (transmission) beside the raw frame
        ``source_index`` it came from, naming the dark and flat (their indices) that corrected
        it; return its index in ``/entry/corrected/data``."""
        f = self._require_open()
        if not self._corrected:
            raise StorageError(self._path, "this file was created without a corrected stack; "
                                           "pass corrected=True to ScanWriter")
        keys = self._h_fields[0][1]
        for what, idx, key in (("source_index", source_index, 0), ("dark_index", dark_index, 2),
                               ("flat_index", flat_index, 1)):
            if isinstance(idx, bool) or int(idx) != idx or not 0 <= idx < self._n:
                raise ValueError(f"{what} must index a frame already written, in [0, {self._n}),"
                                 f" got {idx!r}")
            if int(keys[int(idx)]) != key:
                raise ValueError(f"{what} {idx} is a frame with image_key {int(keys[int(idx)])}, "
                                 f"expected {key}")
        arr = _cast_frame(frame, self._shape, np.dtype("float32"),
                          f"corrected frame {self._n_corrected}")
        j = self._n_corrected
        try:
            for ds, value in zip(self._h_cmeta, (source_index, dark_index, flat_index)):
                ds.resize((j + 1,))
                ds[j] = int(value)
            cd = self._h_cdata
            cd.resize(j + 1, axis=0)
            if self._filters:
                cd[j] = arr
            else:
                cd.id.write_direct_chunk((j, 0, 0), arr.data)
            f.flush()
            self._h_progress[2] = j + 1
            self._h_progress.flush()
        except (OSError, RuntimeError) as exc:
            raise self._fault(exc, f"writing corrected frame {j}") from exc
        self._n_corrected = j + 1
        return j

    @property
    def n_corrected(self) -> int:
        return self._n_corrected

    def append_restored(self, frame: np.ndarray, *, source_index: int, method: str, profile: str,
                        extras: dict[str, np.ndarray | float] | None = None) -> int:
        """Write one restored frame beside the measured one it came from; return its index.

        ``source_index`` is the measured frame's index (as returned by ``append``); ``method``
        and ``profile`` name the restoration method and calibration profile. ``extras`` fills
        the per-frame arrays declared in the constructor's ``restored_extras``.
        """
        f = self._require_open()
        if not self._restored:
            raise StorageError(self._path, "this file was created without restored frames; "
                                           "pass restored=True to ScanWriter")
        if isinstance(source_index, bool) or int(source_index) != source_index \
                or not 0 <= source_index < self._n:
            raise ValueError(f"source_index must be the index of a measured frame in "
                             f"[0, {self._n}), got {source_index!r}")
        method_b = _encode_name(method, "method")
        profile_b = _encode_name(profile, "profile")
        arr = _cast_frame(frame, self._rshape, np.dtype("float32"),
                          f"restored frame {self._n_restored}")
        extras = dict(extras or {})
        unknown = sorted(set(extras) - set(self._extras))
        if unknown:
            raise ValueError(f"restored extras {unknown} were not declared; declared: "
                             f"{sorted(self._extras)} (declare them in restored_extras=)")
        ex_arrays: dict[str, np.ndarray] = {}
        for name, value in extras.items():
            ex = np.asarray(value, dtype="float32")
            if ex.shape != self._extras[name]:
                raise ValueError(f"restored extra {name!r} has shape {ex.shape}, declared "
                                 f"{self._extras[name]}")
            ex_arrays[name] = ex
        j = self._n_restored
        try:
            rd = self._h_rdata
            for ds, value in zip(self._h_rmeta, (int(source_index), method_b, profile_b)):
                ds.resize((j + 1,))
                ds[j] = value
            for name, ds in self._h_extras.items():
                ds.resize(j + 1, axis=0)
                if name in ex_arrays:
                    ds[j] = ex_arrays[name]
            rd.resize(j + 1, axis=0)
            if self._filters:
                rd[j] = arr
            else:
                rd.id.write_direct_chunk((j, 0, 0), arr.data)
            f.flush()
            self._h_progress[1] = j + 1
            self._h_progress.flush()
        except (OSError, RuntimeError) as exc:
            raise self._fault(exc, f"writing restored frame {j}") from exc
        self._n_restored = j + 1
        return j

    def write_array(self, name: str, array: np.ndarray, attrs: dict | None = None) -> None:
        """Store an analysis array under ``/entry/<name>`` (e.g. ``"analysis/focus_curve"``).

        In SWMR mode no object can be created while recording, so the array is kept and written
        by ``close()`` (also when the run closes incomplete). Without SWMR it is written now.
        """
        self._require_open()
        _check_name(name, "array")
        if name.split("/")[0] in {"instrument", "sample", "data", "restored", "definition",
                                  "title", "start_time", "end_time", "xi_metadata",
                                  "xi_progress", "xi_reason"}:
            raise ValueError(f"array name {name!r} would overwrite a reserved part of /entry")
        arr = np.array(array)  # copy: the caller may reuse its buffer before close()
        if arr.dtype.kind in "OUSV":
            raise ValueError(f"array {name!r} must be numeric, got dtype {arr.dtype}")
        attrs = dict(attrs or {})
        if name in self._pending_arrays:
            raise ValueError(f"array {name!r} was already written")
        if self._swmr:
            self._pending_arrays[name] = (arr, attrs)
        else:
            try:
                self._write_array_now(self._file, name, arr, attrs)
                self._file.flush()
            except OSError as exc:
                raise self._fault(exc, f"writing array {name!r}") from exc

    def add_nxdata(self, name: str, *, signal: tuple[str, np.ndarray, dict],
                   axis: tuple[str, np.ndarray, dict], attrs: dict | None = None) -> None:
        """Store a 1-D curve as NXdata ``/entry/<name>`` (``@signal``, ``@axes``) that silx and
        nexusformat plot; ``signal`` and ``axis`` are (name, values, attrs). Written at close in
        SWMR mode, at once otherwise."""
        self._require_open()
        _check_name(name, "NXdata")
        if "/" in name or name in self._pending_nxdata or name in self._pending_arrays:
            raise ValueError(f"NXdata name {name!r} must be a new plain name")
        (sname, sval, sattrs), (aname, aval, aattrs) = signal, axis
        item = (np.array(sval), dict(sattrs), str(aname), np.array(aval), dict(aattrs),
                str(sname), dict(attrs or {}))
        self._pending_nxdata[name] = item
        if not self._swmr:
            try:
                self._write_nxdata_now(self._file, name, item)
                del self._pending_nxdata[name]
                self._file.flush()
            except OSError as exc:
                raise self._fault(exc, f"writing NXdata {name!r}") from exc

    def _write_nxdata_now(self, f: h5py.File, name: str, item: tuple) -> None:
        sval, sattrs, aname, aval, aattrs, sname, attrs = item
        grp = f[L.ENTRY].create_group(name)
        _set_nx(grp, "NXdata")
        grp.attrs["signal"] = sname
        grp.attrs["axes"] = [aname]
        grp.attrs[f"{aname}_indices"] = 0
        for k, v in attrs.items():
            grp.attrs[k] = v
        ds = grp.create_dataset(sname, data=sval)
        for k, v in sattrs.items():
            ds.attrs[k] = v
        ax = grp.create_dataset(aname, data=aval)
        for k, v in aattrs.items():
            ax.attrs[k] = v

    @property
    def has_corrected(self) -> bool:
        return self._corrected

    @property
    def has_restored(self) -> bool:
        return self._restored

    def _write_array_now(self, f: h5py.File, name: str, arr: np.ndarray, attrs: dict) -> None:
        full = f"{L.ENTRY}/{name}"
        if full in f:
            raise ValueError(f"{self._path}: /entry/{name} already exists")
        parent = full.rsplit("/", 1)[0]
        if parent not in f:
            grp = f.require_group(parent)
            _set_nx(grp, "NXcollection")
        ds = f.create_dataset(full, data=arr)
        for k, v in attrs.items():
            ds.attrs[k] = v

    def set_attrs(self, **attrs: Any) -> None:
        """Add run-level attributes (on ``/entry``, and merged into ``ScanReader.metadata``).

        Deferred to ``close()`` in SWMR mode (attributes cannot be created while recording).
        """
        self._require_open()
        _jsonable(attrs, self._path)
        for key in attrs:
            if key.startswith("xi_") or key in ("NX_class", "default"):
                raise ValueError(f"attribute name {key!r} is reserved")
        self._pending_attrs.update(attrs)
        if not self._swmr:
            try:
                self._apply_attrs(self._file)
                self._file.flush()
            except OSError as exc:
                raise self._fault(exc, "writing attributes") from exc

    def _apply_attrs(self, f: h5py.File) -> None:
        if not self._pending_attrs:
            return
        entry = f[L.ENTRY]
        for key, value in self._pending_attrs.items():
            entry.attrs[key] = value if isinstance(value, (str, int, float, bool, np.generic,
                                                           np.ndarray)) else json.dumps(value)
        merged = json.loads(entry["xi_metadata"][()].decode("utf-8"))
        merged.update(json.loads(_jsonable(self._pending_attrs, self._path)))
        del entry["xi_metadata"]
        entry.create_dataset("xi_metadata", data=json.dumps(merged))
        self._pending_attrs = {}

    def flush(self) -> None:
        """Flush everything written so far to the file (``append`` already does per frame)."""
        f = self._require_open()
        try:
            f.flush()
        except OSError as exc:
            raise self._fault(exc, "flush") from exc

    # ------------------------------------------------------------------ closing
    def close(self, complete: bool = True, reason: str | None = None) -> None:
        """Finish the file; idempotent.

        ``complete=False`` marks the run incomplete (``/entry@xi_complete`` False) with
        ``reason``. Deferred arrays and attributes are written, Data Exchange views are built,
        and the file is fsynced. Raises StorageError if finalising fails; frames already
        flushed stay readable in that case.
        """
        if self._closed:
            return
        self._closed = True
        f = self._file
        self._file = None
        if f is None:
            return
        try:
            self._release_reserve()
            if self._swmr:
                f.close()
                f = open_for_update(self._path)
            finalize(f, complete=complete, reason=reason, n_frames=self._n,
                     n_restored=self._n_restored, n_corrected=self._n_corrected)
            for name, (arr, attrs) in self._pending_arrays.items():
                self._write_array_now(f, name, arr, attrs)
            self._pending_arrays = {}
            for name, item in self._pending_nxdata.items():
                self._write_nxdata_now(f, name, item)
            self._pending_nxdata = {}
            self._apply_attrs(f)
            f.close()
            f = None
            _fsync(self._path)
        except (OSError, RuntimeError) as exc:
            raise self._fault(exc, "finalising the file") from exc
        finally:
            if f is not None:
                with contextlib.suppress(Exception):  # reporting the first failure
                    f.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close(complete=True)
        else:
            # The exception from the with block is the one to report.
            with contextlib.suppress(StorageError):
                self.close(complete=False, reason=f"{exc_type.__name__}: {exc}")
        return False

    def __del__(self) -> None:
        # A writer dropped without close(): leave a valid file marked incomplete.
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):
                self.close(complete=False, reason="writer was not closed")

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"ScanWriter({str(self._path)!r}, frame_shape={self._shape}, "
                f"dtype={self._dtype}, n_frames={self._n}, {state})")


def _make_reserve(path: Path) -> Path | None:
    """Allocate RESERVE_BYTES in a hidden file beside ``path`` (blocks really allocated)."""
    reserve = path.with_name(f".{path.name}.reserve")
    fd = os.open(reserve, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
        except OSError as exc:
            if exc.errno == 27:               # EFBIG: a per-file size limit, which no reserve
                os.close(fd)                  # in another file can help with
                reserve.unlink()
                return None
            if exc.errno not in (95, 22):     # EOPNOTSUPP / EINVAL: no fallocate, write zeros
                raise
            os.write(fd, bytes(RESERVE_BYTES))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            reserve.unlink()
        raise
    os.close(fd)
    return reserve


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange_view(f: h5py.File, key: int, image_keys: np.ndarray, name: str) -> None:
    """Build /exchange/<name> as a virtual dataset of the frames with this image key."""
    data = f[L.DATA]
    n, rows, cols = data.shape
    idx = np.flatnonzero(image_keys[:n] == key)
    if name in f[L.EXCHANGE]:
        del f[L.EXCHANGE][name]
    if idx.size == 0:
        f[L.EXCHANGE].create_dataset(name, shape=(0, rows, cols), maxshape=(None, rows, cols),
                                     chunks=(1, rows, cols), dtype=data.dtype)
        return
    layout = h5py.VirtualLayout(shape=(idx.size, rows, cols), dtype=data.dtype)
    # "." = this same file, so the views survive renaming or moving the file.
    source = h5py.VirtualSource(".", L.DATA, shape=(n, rows, cols), dtype=data.dtype)
    # Map consecutive runs of frames in one piece each (a scan has few runs).
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    pos = 0
    for run in np.split(idx, breaks):
        a, b = int(run[0]), int(run[-1]) + 1
        layout[pos:pos + (b - a)] = source[a:b]
        pos += b - a
    f[L.EXCHANGE].create_virtual_dataset(name, layout)


def finalize(f: h5py.File, *, complete: bool, reason: str | None, n_frames: int,
             n_restored: int, n_corrected: int = 0) -> None:
    """Mark completeness, trim to committed frames, build the Data Exchange views.

    Used by ``ScanWriter.close`` and by ``recover`` on a file a writer left behind.
    """
    entry = f[L.ENTRY]
    # Trim anything written past the last commit (a frame in flight when the writer died).
    for fld in L.FRAME_FIELDS:
        if f[fld.path].shape[0] > n_frames:
            f[fld.path].resize((n_frames,))
    if f[L.DATA].shape[0] > n_frames:
        f[L.DATA].resize(n_frames, axis=0)
    if L.RESTORED in f:
        rest = f[L.RESTORED]
        for name in ("data", "source_index", "method", "profile"):
            if rest[name].shape[0] > n_restored:
                rest[name].resize(n_restored, axis=0)
        for ds in rest["extras"].values():
            if ds.shape[0] > n_restored:
                ds.resize(n_restored, axis=0)
    if L.CORRECTED in f:
        cor = f[L.CORRECTED]
        for name in ("data", *L.CORRECTED_FIELDS):
            if cor[name].shape[0] > n_corrected:
                cor[name].resize(n_corrected, axis=0)
    f[L.PROGRESS][...] = [n_frames, n_restored, n_corrected]

    keys = f[L.FIELD_BY_NAME["image_key"].path][:n_frames]
    for key, name in L.EXCHANGE_NAMES.items():
        _exchange_view(f, key, keys, name)
    theta = f[L.FIELD_BY_NAME["theta_deg"].path][:n_frames][keys == L.IMAGE_KEY_PROJECTION]
    if "theta" in f[L.EXCHANGE]:
        del f[L.EXCHANGE]["theta"]
    f[L.EXCHANGE].create_dataset("theta", data=theta.astype("float64")).attrs["units"] = "deg"

    if "end_time" in entry:
        del entry["end_time"]
    entry.create_dataset("end_time", data=_now_iso())
    entry.attrs["xi_complete"] = bool(complete)
    if complete:
        if "xi_reason" in entry.attrs:
            del entry.attrs["xi_reason"]
    else:
        entry.attrs["xi_reason"] = str(reason or "recording did not finish")
