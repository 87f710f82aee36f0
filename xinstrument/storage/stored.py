"""Stored-scan logic, once: load-and-correct a scan file, and restore a scan into a new file.

:func:`load_corrected` is the one way the product turns a stored scan into transmission
(``restore``, ``batch restore``, ``recon``, the GUI): the corrected stack when the file has one
for every projection; otherwise the raw projections corrected with the references recorded
beside them (the dark, and the flat series written last before each projection), with the
defect map, exactly as the live pipeline corrects. A file that does not say whether its frames
are corrected (format 1) is refused rather than guessed from its dtype.

:func:`restore_scan` writes the input's frames (same order, counts and per-frame metadata),
its corrected stack and one restored frame per projection into a new scan file.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..acquisition.correction import CorrectionError
from ..acquisition.frame import ReferenceSet
from . import layout as L
from .errors import StorageError
from .reader import ScanReader
from .sink import check_target
from .writer import ScanWriter

__all__ = ["FrameRestoreError", "StoredScan", "load_corrected", "restore_scan"]


class FrameRestoreError(ValueError):
    """Restoring the projection at file index ``index`` failed (``__cause__``: why)."""

    def __init__(self, index: int, exc: BaseException) -> None:
        super().__init__(f"frame {index}: {exc}")
        self.index = index


@dataclass
class StoredScan:
    """Projections of a stored scan as transmission, with where they came from."""

    transmission: np.ndarray               # (n, rows, cols) float32
    theta_deg: np.ndarray                  # (n,) degrees
    source_index: np.ndarray               # write-order index of each raw projection
    dark_index: np.ndarray                 # index of the dark that corrected each
    flat_index: np.ndarray                 # index of the flat that corrected each
    how: str                               # "stored corrected frames" / "raw frames corrected..."
    metadata: dict[str, Any] = field(default_factory=dict)
    # per projection: exposure_s, voltage_kv, current_ua, theta_deg and frames_averaged as
    # recorded (NaN / 0 where the file lacks them), and flat_frames_averaged: exposures in the
    # flat reference that corrected it (0: unknown) - what the restoration's dose needs
    settings: dict[str, np.ndarray] = field(default_factory=dict)


def _runs(idx: np.ndarray) -> list[np.ndarray]:
    if idx.size == 0:
        return []
    return np.split(idx, np.flatnonzero(np.diff(idx) != 1) + 1)


def load_corrected(source: str | Path | ScanReader) -> StoredScan:
    """The projections of a scan file as flat-field corrected transmission (see module doc).

    Raises StorageError naming the problem: no projections, raw projections without darks or
    flats, a file that does not record whether its frames are corrected.
    """
    if isinstance(source, ScanReader):
        return _load(source)
    with ScanReader(source) as r:
        return _load(r)


SETTING_FIELDS = ("exposure_s", "voltage_kv", "current_ua", "theta_deg", "frames_averaged")


def _settings(md: dict[str, np.ndarray], proj: np.ndarray, flat_index: np.ndarray
              ) -> dict[str, np.ndarray]:
    """Per-projection recorded settings and the flat reference's exposure count (the frames
    of the flat run that ends at or holds ``flat_index``; 0 when unknown)."""
    out = {name: np.asarray(md[name][proj]) for name in SETTING_FIELDS}
    keys, counts = md["image_key"], md["frames_averaged"]
    flat_n = np.zeros(proj.size, np.int64)
    for k, f in enumerate(np.asarray(flat_index, dtype=np.int64)):
        if f < 0 or f >= keys.size or keys[f] != L.IMAGE_KEY_FLAT:
            continue
        a = b = int(f)
        while a > 0 and keys[a - 1] == L.IMAGE_KEY_FLAT:
            a -= 1
        while b + 1 < keys.size and keys[b + 1] == L.IMAGE_KEY_FLAT:
            b += 1
        run = counts[a:b + 1].astype(np.int64)
        flat_n[k] = int(run.sum()) if (run >= 1).all() else 0
    out["flat_frames_averaged"] = flat_n
    return out


def _load(r: ScanReader) -> StoredScan:
    md = r.frame_metadata
    keys = md["image_key"]
    proj = np.flatnonzero(keys == L.IMAGE_KEY_PROJECTION)
    if proj.size == 0:
        raise StorageError(r.path, "no projections stored")
    theta = md["theta_deg"][proj].astype(np.float64)
    if r.is_corrected("measured"):
        # a measured stack of corrected frames is not something this product writes; a
        # converted file may: use it as transmission
        data = r.projections.astype(np.float32)
        none = np.full(proj.size, -1)
        return StoredScan(data, theta, proj, none, none, "stored corrected frames", r.metadata,
                          _settings(md, proj, none))
    if r.has_corrected:
        cm = r.corrected_metadata
        order = {int(s): k for k, s in enumerate(cm["source_index"])}
        if all(int(i) in order for i in proj):
            stack = r.corrected
            pick = [order[int(i)] for i in proj]
            return StoredScan(stack[pick].astype(np.float32), theta, proj,
                              cm["dark_index"][pick], cm["flat_index"][pick],
                              "stored corrected frames", r.metadata,
                              _settings(md, proj, cm["flat_index"][pick]))
    darks = np.flatnonzero(keys == L.IMAGE_KEY_DARK)
    flats = np.flatnonzero(keys == L.IMAGE_KEY_FLAT)
    if darks.size == 0 or flats.size == 0:
        which = "dark" if darks.size == 0 else "flat"
        raise StorageError(r.path, f"the projections are raw and the file has no {which} "
                                   "frames to correct them")
    # references: darks averaged (per run), each flat series averaged; a projection uses the
    # last dark and flat series written before it (the first ones if none precedes it)
    dark_runs = [(int(run[0]), int(run[-1]), np.mean([r.frame(int(i)) for i in run], axis=0,
                                                       dtype=np.float64).astype(np.float32))
                 for run in _runs(darks)]
    flat_runs = [(int(run[0]), int(run[-1]), np.mean([r.frame(int(i)) for i in run], axis=0,
                                                       dtype=np.float64).astype(np.float32))
                 for run in _runs(flats)]
    sets: dict[tuple[int, int], ReferenceSet] = {}
    out = np.empty((proj.size, *r.frame_shape), np.float32)
    dark_i = np.empty(proj.size, np.int64)
    flat_i = np.empty(proj.size, np.int64)
    for k, i in enumerate(proj):
        d = [x for x in dark_runs if x[0] < i] or dark_runs[:1]
        f = [x for x in flat_runs if x[0] < i] or flat_runs[:1]
        d, f = d[-1], f[-1]
        key = (d[0], f[0])
        if key not in sets:
            try:
                sets[key] = ReferenceSet(d[2], f[2])
            except (CorrectionError, ValueError) as exc:
                raise StorageError(r.path, f"cannot flat-field correct the raw projections: "
                                           f"{exc}") from None
        out[k] = sets[key].correct(r.frame(int(i)))
        dark_i[k], flat_i[k] = d[1], f[1]
    how = (f"raw frames corrected with {flats.size} flats / {darks.size} darks "
           "(defect map applied)")
    return StoredScan(out, theta, proj, dark_i, flat_i, how, r.metadata,
                      _settings(md, proj, flat_i))


def restore_scan(in_path: str | Path, out_path: str | Path, restore: Callable[[np.ndarray],
                 np.ndarray], *, method: str, profile: str, scale: int = 1,
                 restored_pixel_size_um: float | None = None, metadata: dict | None = None,
                 overwrite: bool = False, batch_frames: int = 1,
                 on_projection: Callable[[np.ndarray], None] | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 attrs: Callable[[], dict] | None = None) -> StoredScan:
    """Restore every projection of ``in_path`` into a new scan file ``out_path``.

    ``restore`` maps a (B, rows, cols) stack (or one frame) of transmission to restored frames
    ``scale`` x larger per axis; ``batch_frames`` projections go through it at once.
    ``on_projection(raw)`` sees every raw projection (checksums); ``attrs()`` gives run-level
    attributes set before the file closes. A failure removes the half-written output. The
    input is opened read-only. Returns the loaded input (StoredScan).
    """
    in_path, out_path = Path(in_path), Path(out_path)
    with contextlib.suppress(OSError):
        if out_path.exists() and out_path.samefile(in_path):
            raise StorageError(out_path, "output must be a new file, not the input")
    check_target(out_path, overwrite)
    if batch_frames < 1:
        raise ValueError(f"batch_frames must be >= 1, got {batch_frames}")
    with ScanReader(in_path) as r:
        scan = _load(r)
        meta = dict(r.metadata)
        meta.update(metadata or {})
        rows, cols = r.frame_shape
        w = ScanWriter(out_path, r.frame_shape, r.dtype, metadata=meta, restored=True,
                       restored_shape=(rows * scale, cols * scale),
                       restored_pixel_size_um=restored_pixel_size_um,
                       corrected=True, swmr=False, overwrite=overwrite)
        try:
            k = 0
            pending: list[tuple[int, np.ndarray]] = []
            n = scan.transmission.shape[0]

            def flush() -> None:
                if not pending:
                    return
                stack = np.stack([t for _, t in pending])
                try:
                    out = np.asarray(restore(stack), dtype=np.float32)
                except (ValueError, FloatingPointError) as exc:
                    raise FrameRestoreError(pending[0][0], exc) from exc
                if out.ndim == 2:
                    out = out[None]
                for (j, _), rest in zip(pending, out):
                    w.append_restored(rest, source_index=j, method=method, profile=profile)
                pending.clear()

            for i, frame, md in r.frames():
                key = md.pop("image_key")
                j = w.append(frame, image_key=int(key), **md)
                if key != L.IMAGE_KEY_PROJECTION:
                    continue
                if on_projection is not None:
                    on_projection(frame)
                t = scan.transmission[k]
                if not np.isfinite(t).all():
                    raise StorageError(in_path, f"projection {i} contains NaN or infinite "
                                                "values")
                if scan.dark_index[k] >= 0:
                    w.append_corrected(t, source_index=j, dark_index=int(scan.dark_index[k]),
                                       flat_index=int(scan.flat_index[k]))
                pending.append((j, t))
                k += 1
                if len(pending) >= batch_frames:
                    flush()
                if progress is not None:
                    progress(k, n)
            flush()
            if attrs is not None:
                w.set_attrs(**attrs())
        except BaseException:
            with contextlib.suppress(Exception):
                w.close(complete=False, reason="restoration failed")
            with contextlib.suppress(OSError):
                out_path.unlink()
            raise
        w.close(complete=True)
    return scan
