"""The recording sink: the one place that turns engine Frames into a scan file.

Every plan, from every client (API, CLI, GUI, IOC, demo, scripts), records through
:class:`RecordingSink`; it lays the frames out in the NeXus NXtomo + Data Exchange file of
:mod:`.writer`:

- ``/entry/instrument/detector/data``: the camera's averaged counts of every frame (darks
  image_key 2, flats 1, projections 0), ``@corrected = False``, so Data Exchange readers
  normalise ``(data - data_dark) / (data_white - data_dark)`` to transmission;
- ``/entry/corrected/data``: the flat-field corrected frames (``@corrected = True``) with the
  indices of the raw frame, dark and flat each came from; a reference set is written once, the
  first time a frame it corrected arrives;
- ``/entry/restored``: restored frames with method, profile, scale, pixel size and the fidelity
  guard's per-frame report (``extras``);
- ``/entry/focus_curve``: a focus curve as NXdata (silx plots it).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..acquisition.frame import Frame, ReferenceSet
from . import layout as L
from .errors import StorageError
from .writer import ScanWriter

__all__ = ["PipelineSinkAdapter", "RecordingSink", "check_target"]


def check_target(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output file before anything moves: existing (without ``overwrite``), a folder,
    a missing or unwritable parent folder. Returns the path."""
    p = Path(path)
    if p.is_dir():
        raise StorageError(p, "path is a folder, expected a file name")
    if p.exists() and not overwrite:
        raise StorageError(p, "file exists; choose another name or allow overwriting")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise StorageError(p, f"folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StorageError(p, f"folder {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK):
        raise StorageError(p, "file exists and is not writable")
    return p


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


class RecordingSink:
    """Record engine Frames into one scan file.

    Parameters
    ----------
    path : output file (refused if it exists unless ``overwrite``).
    frame_shape : (rows, cols) of measured frames.
    raw_dtype : storage dtype of the camera counts: "uint16" for single raw frames at full
        rate (one frame = one chunk written directly), "float32" for averages.
    corrected : create the corrected stack.
    restored_scale : create the restored stack, frames ``scale`` x larger per axis (None: no
        restored frames).
    restored_pixel_size_um : pixel of the restored frames (default pixel_size_um / scale).
    fidelity_layout : ``{name: shape}`` of the fidelity guard's per-frame report arrays
        (``restoration.fidelity.hdf5_extras_layout``), None without a guard.
    metadata : run-level metadata (title, instrument, profile, pixel_size_um, sample, plan...).
    """

    name = "recording"
    lossless = True

    def __init__(self, path: str | Path, frame_shape: tuple[int, int], *,
                 raw_dtype: Any = "float32", corrected: bool = False,
                 restored_scale: int | None = None,
                 restored_pixel_size_um: float | None = None,
                 fidelity_layout: dict[str, tuple[int, ...]] | None = None,
                 metadata: dict | None = None, overwrite: bool = False, swmr: bool = True,
                 compression: str | None = "default") -> None:
        check_target(path, overwrite)
        shape = tuple(int(n) for n in frame_shape)
        rshape = None
        if restored_scale is not None:
            if int(restored_scale) != restored_scale or restored_scale < 1:
                raise ValueError(f"restored_scale must be an integer >= 1, got {restored_scale!r}")
            rshape = (shape[0] * int(restored_scale), shape[1] * int(restored_scale))
        self._raw_dtype = np.dtype(raw_dtype)
        self.writer = ScanWriter(path, shape, self._raw_dtype, metadata=metadata,
                                 restored=rshape is not None, restored_shape=rshape,
                                 restored_pixel_size_um=restored_pixel_size_um,
                                 restored_extras=fidelity_layout or None, corrected=corrected,
                                 swmr=swmr, compression=compression, overwrite=overwrite)
        self._fidelity_layout = dict(fidelity_layout or {})
        self._refs: dict[int, tuple[int, int]] = {}      # ReferenceSet.id -> (dark, flat) index
        self._darks: dict[int, tuple[np.ndarray, int]] = {}
        self.frames_written = 0
        self.bytes_written = 0

    # ------------------------------------------------------------------ properties
    @property
    def path(self) -> Path:
        return self.writer.path

    @property
    def closed(self) -> bool:
        return self.writer.closed

    # ------------------------------------------------------------------ writing
    def _raw(self, data: np.ndarray, frames_averaged: int) -> np.ndarray:
        if self._raw_dtype.kind in "iu" and np.asarray(data).dtype.kind == "f":
            if frames_averaged != 1:
                raise ValueError(f"an average of {frames_averaged} frames is not integer "
                                 f"counts; record averages with raw_dtype='float32'")
            return np.asarray(data).astype(self._raw_dtype)   # a single frame: exact integers
        return data

    def write_references(self, refs: ReferenceSet) -> tuple[int, int]:
        """Write a dark and flat (once per set); return their indices in the file."""
        if refs.id in self._refs:
            return self._refs[refs.id]
        w = self.writer
        # a new flat series with the same dark (tomosynthesis flats_every) reuses the dark
        known = self._darks.get(id(refs.dark))
        if known is not None and known[0] is refs.dark:
            d = known[1]
        else:
            d = w.append(refs.dark, image_key=L.IMAGE_KEY_DARK, exposure_s=_f(refs.exposure_s),
                         frames_averaged=int(refs.dark_frames_averaged), voltage_kv=0.0,
                         current_ua=0.0, theta_deg=_f(refs.theta_deg))
            self._darks[id(refs.dark)] = (refs.dark, d)
            self.bytes_written += refs.dark.nbytes
        fl = w.append(refs.flat, image_key=L.IMAGE_KEY_FLAT, exposure_s=_f(refs.exposure_s),
                      frames_averaged=int(refs.flat_frames_averaged),
                      voltage_kv=_f(refs.voltage_kv), current_ua=_f(refs.current_ua),
                      theta_deg=_f(refs.theta_deg))
        self._refs[refs.id] = (d, fl)
        self.bytes_written += refs.flat.nbytes
        return d, fl

    def write(self, frame: Frame) -> int:
        """Record one frame (and its corrected / restored versions); return its raw index."""
        if not isinstance(frame, Frame):
            raise TypeError(f"the recording sink takes Frames, got {type(frame).__name__}")
        w = self.writer
        dark_i = flat_i = None
        if frame.corrected:
            if frame.references is None:
                raise ValueError("a corrected frame arrived without the references that "
                                 "corrected it; it cannot be recorded faithfully")
            dark_i, flat_i = self.write_references(frame.references)
        raw = frame.measured_adu
        if frame.corrected and frame.raw is None:
            raise ValueError("a corrected frame arrived without its raw counts")
        idx = w.append(self._raw(raw, frame.frames_averaged), image_key=int(frame.image_key),
                       theta_deg=_f(frame.theta_deg), voltage_kv=_f(frame.voltage_kv),
                       current_ua=_f(frame.current_ua), exposure_s=_f(frame.exposure_s),
                       frames_averaged=int(frame.frames_averaged),
                       focus_z_um=_f(frame.focus_z_um),
                       timestamp_s=(None if math.isnan(_f(frame.timestamp_s))
                                    else frame.timestamp_s))
        self.bytes_written += raw.nbytes
        if frame.corrected:
            if w.has_corrected:
                w.append_corrected(frame.data, source_index=idx, dark_index=dark_i,
                                   flat_index=flat_i)
                self.bytes_written += frame.data.nbytes
        if frame.restored is not None:
            if not w.has_restored:
                raise ValueError("a restored frame arrived but the file was laid out without "
                                 "restored frames")
            extras = None
            fid = frame.fidelity
            if self._fidelity_layout and fid is not None and hasattr(fid, "hdf5_extras"):
                ex = fid.hdf5_extras()
                if all(np.shape(ex.get(k)) == tuple(s) for k, s in self._fidelity_layout.items()
                       if k in ex):
                    extras = {k: v for k, v in ex.items() if k in self._fidelity_layout}
            w.append_restored(frame.restored, source_index=idx,
                              method=frame.restoration_method or "unknown",
                              profile=frame.restoration_profile or "", extras=extras)
            self.bytes_written += frame.restored.nbytes
        self.frames_written += 1
        return idx

    def write_focus_curve(self, positions_um: np.ndarray, values: np.ndarray, *, metric: str,
                          best_position_um: float | None = None,
                          attrs: dict | None = None) -> None:
        """Store a focus curve as NXdata ``/entry/focus_curve`` (signal = metric, axis =
        position in um), written when the file closes."""
        pos = np.asarray(positions_um, dtype=np.float64)
        val = np.asarray(values, dtype=np.float64)
        if pos.shape != val.shape or pos.ndim != 1:
            raise ValueError(f"positions {pos.shape} and values {val.shape} must be one 1-D "
                             "shape")
        extra = dict(attrs or {})
        if best_position_um is not None:
            extra["best_position_um"] = float(best_position_um)
        self.writer.add_nxdata("focus_curve", signal=("metric", val, {"long_name": metric}),
                               axis=("position", pos, {"units": "um"}), attrs=extra)

    def write_array(self, name: str, array: np.ndarray, attrs: dict | None = None) -> None:
        self.writer.write_array(name, array, attrs)

    def set_attrs(self, **attrs: Any) -> None:
        self.writer.set_attrs(**attrs)

    def close(self, complete: bool = True, reason: str | None = None) -> None:
        self.writer.close(complete=complete, reason=reason)

    def as_pipeline_sink(self, name: str = "hdf5") -> "PipelineSinkAdapter":
        return PipelineSinkAdapter(self, name)


class PipelineSinkAdapter:
    """The recording sink as one pipeline run's lossless sink. A plan runs several pipelines
    into one file (references, then projections...), so the pipeline's close does not close
    the file: the engine does, once, when the plan ends."""

    lossless = True

    def __init__(self, sink: RecordingSink, name: str = "hdf5") -> None:
        self.sink, self.name = sink, name

    def write(self, item: Frame) -> None:
        self.sink.write(item)

    def close(self, complete: bool, reason: str | None) -> None:
        pass
