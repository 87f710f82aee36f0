"""Reading calibration images from HDF5 scan files or TIFF files.

Every fault an operator can make (missing file, missing dataset, wrong dtype, frame index out of
range, ROI outside the image, dark/flat of the wrong size) is a :class:`CalibrationInputError`
whose message names the file and the problem.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xinstrument.errors import UserError

DEFAULT_DATASET = "/exchange/data"
DEFAULT_FLAT_DATASET = "/exchange/data_white"
DEFAULT_DARK_DATASET = "/exchange/data_dark"
TIFF_SUFFIXES = (".tif", ".tiff")
# xinstrument scan files (xinstrument.storage.layout): pixel size and source settings.
PIXEL_SIZE_DATASET = "/entry/instrument/detector/x_pixel_size"
VOLTAGE_DATASET = "/entry/instrument/source/voltage"
CURRENT_DATASET = "/entry/instrument/source/current"


class CalibrationInputError(UserError):
    """A calibration input (file, dataset, frame, ROI, option) is unusable; the message says why."""


@dataclass
class Frames:
    """Frames read from one input file: ``data`` is (n, rows, cols) float64."""

    path: Path
    dataset: str | None
    data: np.ndarray
    pixel_size_um: float | None = None
    conditions: dict = field(default_factory=dict)  # voltage_kv / current_ua when the file has them

    @property
    def mean(self) -> np.ndarray:
        return self.data.mean(axis=0)

    @property
    def label(self) -> str:
        return f"{self.path}:{self.dataset}" if self.dataset else str(self.path)


def _as_stack(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise CalibrationInputError(f"{where}: dtype {arr.dtype} is not detector counts (integer or float expected)")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise CalibrationInputError(f"{where}: expected a 2-D image or a 3-D frame stack, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise CalibrationInputError(f"{where}: the frame stack is empty")
    out = np.asarray(arr, dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise CalibrationInputError(f"{where}: contains NaN/inf")
    return out


def _select(stack: np.ndarray, frame: int | None, where: str) -> np.ndarray:
    if frame is None:
        return stack
    n = stack.shape[0]
    if not -n <= frame < n:
        raise CalibrationInputError(f"{where}: frame index {frame} out of range (the stack has {n} frames)")
    return stack[frame][None]


def _h5_dataset(f, path: Path, name: str):
    import h5py

    obj = f.get(name)
    if obj is None:
        found: list[str] = []
        f.visititems(lambda n, o: found.append("/" + n) if isinstance(o, h5py.Dataset) and o.ndim in (2, 3) else None)
        hint = ", ".join(found[:8]) + (" ..." if len(found) > 8 else "") if found else "none"
        raise CalibrationInputError(f"{path}: no dataset {name!r} (image datasets in the file: {hint})")
    if not isinstance(obj, h5py.Dataset):
        raise CalibrationInputError(f"{path}: {name!r} is a group, not an image dataset")
    return obj


def _h5_scalar(f, name: str) -> float | None:
    ds = f.get(name)
    try:
        if ds is None:
            return None
        v = np.asarray(ds[()], dtype=float)
        v = v[np.isfinite(v)] if v.ndim else v
        return float(np.median(v)) if np.size(v) else None
    except (TypeError, ValueError):
        return None


def read_frames(
    path: str | Path,
    dataset: str = DEFAULT_DATASET,
    frame: int | None = None,
    dark_dataset: str | None = None,
    flat_dataset: str | None = None,
) -> Frames:
    """Read the frames of one input.

    Parameters
    ----------
    path : HDF5 file (any layout; xinstrument scan files give pixel size and kV/uA too) or TIFF.
    dataset : HDF5 dataset with a 2-D image or a (n, rows, cols) stack (ignored for TIFF).
    frame : index of one frame; None keeps all frames.
    dark_dataset : dataset in the same HDF5 file whose frame mean is subtracted (dark correction).
    flat_dataset : dataset in the same HDF5 file for flat-field correction,
        ``(raw - dark) / (flat - dark) * mean(flat - dark)`` (needs ``dark_dataset``).
    """
    p = Path(path)
    if not p.exists():
        raise CalibrationInputError(f"{p}: file not found")
    if p.is_dir():
        raise CalibrationInputError(f"{p}: is a folder, expected an HDF5 or TIFF file")
    if p.suffix.lower() in TIFF_SUFFIXES:
        if dark_dataset or flat_dataset:
            raise CalibrationInputError(
                f"{p}: dark/flat datasets apply to HDF5 inputs only; give a TIFF that is already corrected"
            )
        import tifffile

        try:
            arr = tifffile.imread(p)
        except Exception as exc:  # tifffile raises several types for damaged files
            raise CalibrationInputError(f"{p}: cannot read TIFF ({exc})") from exc
        stack = _select(_as_stack(np.asarray(arr), str(p)), frame, str(p))
        return Frames(p, None, stack)

    import h5py

    if not h5py.is_hdf5(p):
        raise CalibrationInputError(f"{p}: neither an HDF5 file nor a .tif/.tiff image")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise CalibrationInputError(f"{p}: cannot open HDF5 file ({exc})") from exc
    with f:
        ds = _h5_dataset(f, p, dataset)
        where = f"{p}:{dataset}"
        if ds.ndim == 3 and frame is not None:
            n = ds.shape[0]
            if not -n <= frame < n:
                raise CalibrationInputError(f"{where}: frame index {frame} out of range (the stack has {n} frames)")
            stack = _as_stack(np.asarray(ds[frame]), where)
        else:
            stack = _select(_as_stack(np.asarray(ds[()]), where), frame, where)
        dark = flat = None
        if flat_dataset and not dark_dataset:
            raise CalibrationInputError(f"{p}: flat-field correction needs a dark dataset too")
        if dark_dataset:
            dark = _as_stack(np.asarray(_h5_dataset(f, p, dark_dataset)[()]), f"{p}:{dark_dataset}").mean(axis=0)
        if flat_dataset:
            flat = _as_stack(np.asarray(_h5_dataset(f, p, flat_dataset)[()]), f"{p}:{flat_dataset}").mean(axis=0)
        pixel = _h5_scalar(f, PIXEL_SIZE_DATASET)
        conditions = {k: v for k, v in (("voltage_kv", _h5_scalar(f, VOLTAGE_DATASET)),
                                         ("current_ua", _h5_scalar(f, CURRENT_DATASET))) if v is not None}
    shape = stack.shape[1:]
    if dark is not None:
        if dark.shape != shape:
            raise CalibrationInputError(f"{p}: dark {dark_dataset} has size {dark.shape}, frames have {shape}")
        stack = stack - dark
    if flat is not None:
        if flat.shape != shape:
            raise CalibrationInputError(f"{p}: flat {flat_dataset} has size {flat.shape}, frames have {shape}")
        gain = flat - dark
        level = float(gain.mean())
        if not level > 0:
            raise CalibrationInputError(f"{p}: flat minus dark has no positive signal (mean {level:.4g})")
        # Dead pixels (no flat signal) cannot be corrected; they are set to the flat level.
        good = gain > 1e-6 * level
        stack = np.where(good, stack / np.where(good, gain, 1.0) * level, level)
    return Frames(p, dataset, stack, pixel_size_um=pixel if pixel and pixel > 0 else None, conditions=conditions)


def crop(image: np.ndarray, roi: tuple[int, int, int, int] | None, min_px: int, label: str) -> np.ndarray:
    """Cut ``roi`` = (row0, col0, rows, cols) out of the last two axes; check it lies inside and is
    at least ``min_px`` on a side."""
    rows, cols = image.shape[-2:]
    if roi is None:
        r0, c0, h, w = 0, 0, rows, cols
    else:
        r0, c0, h, w = (int(v) for v in roi)
        if h < 1 or w < 1 or r0 < 0 or c0 < 0 or r0 + h > rows or c0 + w > cols:
            raise CalibrationInputError(
                f"{label}: ROI rows {r0}..{r0 + h}, cols {c0}..{c0 + w} is not inside the {rows}x{cols} image"
            )
    if h < min_px or w < min_px:
        raise CalibrationInputError(f"{label}: ROI of {h}x{w} px is too small; this measurement needs at least {min_px}x{min_px} px")
    return image[..., r0 : r0 + h, c0 : c0 + w]
