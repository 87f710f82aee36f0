"""Per-file tomosynthesis reconstruction task (xinstrument.recon), writing a NEW file.

The input scan is copied to ``<output>.partial``, the slices are stored in the copy under
``/entry/recon/<name>`` with xinstrument.recon's own writer, the batch identity attributes are
added to that group, and the copy is renamed into place: the input is never opened for writing.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import UserError
from .tasks import PARTIAL_SUFFIX, FileResult, InputError, _open_input, _worker_name

__all__ = ["recon_file", "recon_output_path_for"]

CHECKSUM_SCHEME = "xinstrument-batch-recon/1"


def recon_output_path_for(input_path: str | Path, out_dir: str | Path | None, name: str) -> Path:
    p = Path(input_path)
    folder = Path(out_dir) if out_dir is not None else p.parent
    return folder / f"{p.stem}_recon-{name}.h5"


def _checksum(transmission: np.ndarray, theta_deg: np.ndarray, params: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps({"scheme": CHECKSUM_SCHEME, "params": params,
                                   "version": __version__}, sort_keys=True).encode())
    for a in (np.ascontiguousarray(transmission, np.float32),
              np.ascontiguousarray(theta_deg, np.float64)):
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _complete(output: Path, group: str, checksum: str, n_slices: int) -> bool:
    import h5py
    if not output.exists():
        return False
    try:
        with h5py.File(output, "r") as f:
            g = f.get(group)
            return (g is not None and g.attrs.get("batch_checksum") == checksum
                    and g["slices"].shape[0] == n_slices)
    except (OSError, KeyError):
        return False


def recon_file(input_path: str | Path, output_path: str | Path, *, method: str = "sirt",
               heights: str = "0:1.6:16", restored: bool = False, iterations: int = 20,
               name: str | None = None, device: str | None = None, force: bool = False
               ) -> FileResult:
    """Reconstruct one tomosynthesis scan into a new file (copy of the input + slices).

    ``heights``: 'h1,h2,...' or 'start:stop:count' in mm above the sample base; ``restored``:
    use the restored projections stored in the file. Permanent problems (not a tomosynthesis
    scan, too few projections, bad heights) raise :class:`InputError`.
    """
    from ..recon import ReconError, load_scan, parse_heights, reconstruct, save_reconstruction

    t0 = time.perf_counter()
    src, dst = Path(input_path), Path(output_path)
    name = name or (method + ("_restored" if restored else ""))
    group = f"/entry/recon/{name}"
    result = FileResult(input=str(src), output=str(dst), status="done",
                        worker=_worker_name())
    _open_input(src).close()  # unreadable inputs fail here with a clear InputError
    try:
        h = parse_heights(heights)
        data = load_scan(src, restored=restored)
    except (ReconError, UserError) as exc:
        raise InputError(str(exc)) from None
    params = {"method": method, "heights_mm": [float(x) for x in h], "restored": restored,
              "iterations": iterations}
    checksum = _checksum(data.transmission, data.theta_deg, params)
    n_proj = int(data.transmission.shape[0])
    result.n_frames = n_proj
    if not force and _complete(dst, group, checksum, len(h)):
        result.status = "skipped"
        result.seconds = time.perf_counter() - t0
        return result
    try:
        rec = reconstruct(data.transmission, data.theta_deg, data.geometry, h, method,
                          iterations=iterations, device=device)
    except ReconError as exc:
        raise InputError(f"{src}: {exc}") from None
    result.device = str(device or ("cuda" if _cuda() else "cpu"))
    partial = dst.with_name(dst.name + PARTIAL_SUFFIX)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(src, partial)
        os.chmod(partial, 0o644)
        save_reconstruction(partial, rec, name, group_attrs={
            "batch_checksum": checksum, "batch_n_projections": n_proj,
            "batch_source": str(src), "batch_version": __version__})
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    os.replace(partial, dst)
    result.seconds = time.perf_counter() - t0
    return result


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()
