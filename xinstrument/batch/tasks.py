"""Per-file batch work, run on a Dask worker or in-process: the same function either way.

``restore_file`` reads one scan file, restores its projections with the live path's
:class:`~xinstrument.restoration.Restorer` (batched frames, on the worker's GPU when it has one)
and writes a NEW scan file beside or elsewhere: the measured frames with their per-frame metadata
are copied, and the restored projections are stored as ``/entry/restored`` frames pointing back
at them. The input is opened read-only and never modified.

Idempotence: the output is written under a temporary name and renamed into place only when it is
complete, carrying ``batch_checksum`` (sha256 of the input projections, method, restorer options,
the dose each projection is restored with, profile calibration content and package version) and
``batch_n_restored``. A later run skips a file whose output is complete, has the expected frame
count and the same checksum.

Dose: Wiener, plug-and-play and DC diffusion restore each projection with its dose and the
frames it averages, as the live path does (:mod:`xinstrument.restoration.dose`): from the
file's per-frame metadata, or the user's ``frames_averaged`` / ``dose_ratio``; a file that lacks
what they need is an InputError naming the missing field.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..storage import ScanReader, StorageError
from ..storage.stored import load_corrected, restore_scan

__all__ = [
    "DEFAULT_BATCH_FRAMES",
    "FileResult",
    "InputError",
    "cached_restorer",
    "input_checksum",
    "output_path_for",
    "output_status",
    "profile_fingerprint",
    "restore_file",
]

# Frames per Restorer.restore call: enough to keep a GPU busy with 2048^2 frames without
# holding more than ~130 MB of float32 input in memory at once.
DEFAULT_BATCH_FRAMES = 8
# 2: the checksum covers the dose each projection is restored with (outputs of scheme 1 were
# restored without it and are redone)
CHECKSUM_SCHEME = "xinstrument-batch-restore/2"
OUTPUT_SUFFIX = "_restored"
PARTIAL_SUFFIX = ".partial"


class InputError(ValueError):
    """A permanent problem with one input (unreadable, not a scan, raw frames, name clash):
    retrying cannot help, so the batch reports it at once and goes on with the other files."""


@dataclass
class FileResult:
    """Outcome of one file. ``status``: "done", "skipped" (complete output present) or
    "failed" (``error`` says why)."""

    input: str
    output: str
    status: str
    n_frames: int = 0
    seconds: float = 0.0
    device: str = ""
    worker: str = ""
    error: str | None = None
    retries: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------- identities
def profile_fingerprint(profile: Any, method: str) -> str:
    """sha256 of what a restoration result depends on in ``profile``: its calibration arrays
    and, for learned methods, the bytes of the method's weights file."""
    h = hashlib.sha256()
    for name in ("frequency_cy_per_px", "mtf_hr", "mtf_lr", "mtf_ratio", "psf", "nnps_lr"):
        arr = getattr(profile, name, None)
        h.update(name.encode())
        if arr is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    for name in ("nnps_mean_signal", "pixel_size_um"):
        h.update(f"{name}={getattr(profile, name, None)!r}".encode())
    weights = getattr(profile, "weights", None) or {}
    if method in weights and getattr(profile, "path", None) is not None:
        wpath = Path(profile.path) / weights[method]
        with open(wpath, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _identity_prefix(method: str, profile_digest: str, options: dict[str, Any]) -> bytes:
    return json.dumps({"scheme": CHECKSUM_SCHEME, "method": method, "profile": profile_digest,
                       "options": options, "version": __version__}, sort_keys=True).encode()


def _update_frame(h: Any, frame: np.ndarray) -> None:
    a = np.ascontiguousarray(frame)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())


def input_checksum(reader: ScanReader, method: str, profile_digest: str,
                   options: dict[str, Any]) -> str:
    """The checksum an output of ``reader``'s projections restored this way must carry."""
    h = hashlib.sha256(_identity_prefix(method, profile_digest, options))
    for _, frame, _ in reader.frames(image_key=0):
        _update_frame(h, frame)
    return h.hexdigest()


def output_path_for(input_path: str | Path, out_dir: str | Path | None, method: str) -> Path:
    """``<out_dir or input folder>/<stem>_restored-<method>.h5``."""
    p = Path(input_path)
    folder = Path(out_dir) if out_dir is not None else p.parent
    return folder / f"{p.stem}{OUTPUT_SUFFIX}-{method}.h5"


def output_status(output: Path, expected_checksum: str, n_projections: int) -> str:
    """"complete" when ``output`` is a finished file of this exact work, "absent" when it does
    not exist, otherwise a short reason why it must be redone."""
    if not output.exists():
        return "absent"
    try:
        with ScanReader(output) as r:
            md = r.metadata
            if not r.complete:
                return "incomplete"
            if md.get("batch_checksum") != expected_checksum:
                return "checksum differs (input, method, profile or version changed)"
            if r.n_restored != n_projections or md.get("batch_n_restored") != n_projections:
                return f"has {r.n_restored} restored frames, expected {n_projections}"
    except (StorageError, OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    return "complete"


# ---------------------------------------------------------------------- worker-side cache
_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()


def cached_restorer(profile: Any, method: str, device: str | None = None,
                    profile_digest: str | None = None, **restorer_kw: Any) -> Any:
    """One :class:`Restorer` per (profile content, method, device, options) per process.

    On a Dask worker this is the "one model instance per worker": the first task loads the
    weights (onto the worker's GPU when it has one, ``device=None``), later tasks reuse it.
    """
    from ..restoration import Restorer

    digest = profile_digest or profile_fingerprint(profile, method)
    key = (digest, method, device, json.dumps(restorer_kw, sort_keys=True, default=str))
    with _CACHE_LOCK:
        r = _CACHE.get(key)
        if r is None:
            r = Restorer(profile, method, device=device, **restorer_kw)
            _CACHE[key] = r
        return r


def _worker_name() -> str:
    try:
        from distributed import get_worker
        return str(get_worker().name)
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


# ---------------------------------------------------------------------- the task
def _dose_plan(src: Path, frame_shape: tuple[int, int], scan: Any, profile: Any, method: str,
               frames_averaged: int | None, dose_ratio: float | None) -> Any:
    """The dose of each projection (the single-file restore's rule, see
    :func:`xinstrument.restoration.cli.stored_dose_plan`); a file lacking what it needs is an
    InputError."""
    from ..restoration.cli import stored_dose_plan
    from ..restoration.dose import DoseMetadataError
    try:
        return stored_dose_plan(src, frame_shape, scan, profile, method,
                                frames_averaged=frames_averaged, dose_ratio=dose_ratio)
    except (DoseMetadataError, ValueError) as exc:
        raise InputError(str(exc)) from None


def _open_input(path: Path) -> ScanReader:
    if not path.exists():
        raise InputError(f"{path}: input file does not exist")
    if path.is_dir():
        raise InputError(f"{path}: input is a folder, expected an HDF5 scan file")
    try:
        return ScanReader(path)
    except StorageError as exc:
        raise InputError(f"unreadable input: {exc}") from None
    except OSError as exc:  # h5py: not HDF5, truncated, permission denied
        raise InputError(f"{path}: unreadable input (not a readable HDF5 scan file: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") \
            from None


def restore_file(input_path: str | Path, output_path: str | Path, profile: Any, method: str, *,
                 device: str | None = None, batch_frames: int = DEFAULT_BATCH_FRAMES,
                 restorer_options: dict[str, Any] | None = None, force: bool = False,
                 frames_averaged: int | None = None, dose_ratio: float | None = None
                 ) -> FileResult:
    """Restore the projections of one scan file into a new scan file.

    Parameters
    ----------
    input_path : scan file (projections loaded and corrected by ``storage.stored.load_corrected``).
    output_path : file to create; must differ from the input. Written as
        ``<output>.partial`` and renamed when complete.
    profile : DetectorProfile; method : restoration method (see ``available_methods``).
    device : "cuda", "cuda:1", "cpu"; default: the process's GPU when it has one, else CPU.
    batch_frames : projections per ``Restorer.restore`` call.
    restorer_options : extra ``Restorer`` keyword arguments (``steps``, ``tile``, ``options``...),
        part of the checksum.
    force : redo even when a complete output exists.
    frames_averaged, dose_ratio : the user's frame count and one exposure's dose (quanta per
        pixel of the flat over the profile's ``nnps_mean_signal``) for every projection,
        instead of the file's (see :func:`xinstrument.restoration.dose.plan_stored_doses`).

    Raises
    ------
    InputError : permanent problem with this input (reported, not retried).
    Anything else (I/O hiccups, worker trouble) propagates so the scheduler can retry.
    """
    t0 = time.perf_counter()
    src, dst = Path(input_path), Path(output_path)
    if batch_frames < 1:
        raise ValueError(f"batch_frames must be >= 1, got {batch_frames}")
    with contextlib.suppress(OSError):
        if dst.exists() and dst.samefile(src):
            raise InputError(f"{src}: output path {dst} is the input itself; choose another "
                             "output folder")
    options = dict(restorer_options or {})
    digest = profile_fingerprint(profile, method)
    profile_name = str(getattr(profile, "name", "?"))
    result = FileResult(input=str(src), output=str(dst), status="done",
                        worker=_worker_name())
    with _open_input(src) as reader:
        keys = reader.frame_metadata["image_key"]
        n_proj = int(np.count_nonzero(keys == 0))
        if n_proj == 0:
            raise InputError(f"{src}: no projection frames to restore")
        px = reader.pixel_size_um
        ppx = getattr(profile, "pixel_size_um", None)
        if px is not None and ppx and abs(px - ppx) > 0.01 * ppx:
            raise InputError(f"{src}: pixel size {px:g} um does not match profile "
                             f"{profile_name!r} ({ppx:g} um); wrong profile?")
        try:
            scan = load_corrected(reader)
        except StorageError as exc:
            raise InputError(f"{src}: {exc}") from None
        if not np.isfinite(scan.transmission).all():
            raise InputError(f"{src}: projections contain NaN or infinite values")
        plan = _dose_plan(src, reader.frame_shape, scan, profile, method, frames_averaged,
                          dose_ratio)
        identity = {**options, "dose": plan.identity()}
        if not force and dst.exists():
            expected = input_checksum(reader, method, digest, identity)
            if output_status(dst, expected, n_proj) == "complete":
                result.status, result.n_frames = "skipped", n_proj
                result.seconds = time.perf_counter() - t0
                return result
    restorer = cached_restorer(profile, method, device=device, profile_digest=digest,
                               **options)
    result.device = str(restorer.device)
    partial = dst.with_name(dst.name + PARTIAL_SUFFIX)
    dst.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256(_identity_prefix(method, digest, identity))
    scale = int(getattr(restorer, "scale", 1))
    out_px = None if px is None else px / scale
    out_md = {"batch_source": str(src), "profile": profile_name, "restoration_method": method,
              "restoration_input": scan.how, "restoration_scale": scale,
              "restoration_dose": plan.metadata()}
    in_order = plan.in_order(restorer)

    def restore(stack: np.ndarray) -> np.ndarray:
        return in_order(stack.astype(np.float32, copy=False))

    restore_scan(src, partial, restore, method=method, profile=profile_name, scale=scale,
                 restored_pixel_size_um=out_px, metadata=out_md, overwrite=True,
                 batch_frames=batch_frames, on_projection=lambda f: _update_frame(h, f),
                 attrs=lambda: dict(batch_checksum=h.hexdigest(), batch_n_restored=n_proj,
                                    batch_profile_sha256=digest,
                                    batch_options=json.dumps(options),
                                    batch_version=__version__))
    os.replace(partial, dst)
    result.n_frames = n_proj
    result.seconds = time.perf_counter() - t0
    return result
