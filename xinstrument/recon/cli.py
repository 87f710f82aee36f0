"""``xinstrument recon FILE --method saa|fbp|sirt --heights ... [--super-resolve sr_x2 --profile P]``:
slices, optionally super-resolved onto a finer grid, into a new file (a copy of the scan with the
slices added: ``<stem>_recon-<method>.h5`` in the working directory or ``--out``), or into the
scan file itself with ``--in-place``."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from ..cliargs import torch_device
from ..errors import UserError

# Slices are attenuation (features bright); the SR network was trained on flat-normalised
# transmission (features dark on 1). Each slice is mapped affinely onto this transmission span
# (its 0.5 / 99.5 percentiles to 1.0 / 0.3, the range of the twin's training images) and back.
_SLICE_PERCENTILES = (0.5, 99.5)
_TRANSMISSION_SPAN = (1.0, 0.3)


def super_resolve_slices(rec: Any, profile: Any, method: str, device: str | None = None) -> Any:
    """A copy of reconstruction ``rec`` with every slice super-resolved by ``method``.

    The grid gets ``scale`` x more voxels per axis of ``voxel_mm / scale`` over the same extent
    (output voxels tile each input voxel, as the network's up-sampling does); coverage is
    replicated. Raises ``UserError`` for a method or profile that cannot super-resolve.
    """
    from ..restoration import Restorer
    from ..restoration.stage import sr_factor

    if sr_factor(method) is None:
        raise UserError(f"--super-resolve takes a super-resolution method (sr_x2, sr_x4), "
                        f"got {method!r}")
    try:
        r = Restorer(profile, method, device=device)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    f = r.scale
    lo_p, hi_p = _SLICE_PERCENTILES
    t_hi, t_lo = _TRANSMISSION_SPAN
    out = np.empty((rec.slices.shape[0], rec.slices.shape[1] * f, rec.slices.shape[2] * f),
                   np.float32)
    for k, s in enumerate(rec.slices):
        a, b = np.percentile(s, [lo_p, hi_p])
        gain = (t_lo - t_hi) / (b - a) if b > a else 0.0
        t = (t_hi + (s - a) * gain).astype(np.float32)
        sr = r.restore(t)
        out[k] = a + (sr - t_hi) / gain if gain else s.repeat(f, 0).repeat(f, 1)
    grid = dataclasses.replace(rec.grid, rows=rec.grid.rows * f, cols=rec.grid.cols * f,
                               voxel_mm=rec.grid.voxel_mm / f)
    params = dict(rec.params, super_resolution=method, sr_scale=f, sr_profile=profile.name,
                  sr_voxel_mm=grid.voxel_mm, source_voxel_mm=rec.grid.voxel_mm)
    return dataclasses.replace(rec, slices=out, grid=grid,
                               coverage=rec.coverage.repeat(f, 1).repeat(f, 2), params=params)


def run_recon(path: Path, method: str, heights: str, restored: bool = False,
              iterations: int = 20, name: str | None = None, device: str | None = None,
              super_resolve: str | None = None, profile: Any = None,
              target: Path | None = None, shown_as: Path | None = None) -> str:
    """Reconstruct scan ``path`` and store the slices in ``target`` (default: ``path``);
    ``shown_as``: the name the message gives the target (a file written under a temporary
    name)."""
    from ..progress import ProgressBar
    from .io import load_scan, save_reconstruction
    from .methods import ReconError, parse_heights, reconstruct
    try:
        h = parse_heights(heights)
        data = load_scan(path, restored=restored)
        bar = ProgressBar(f"recon {method}")
        rec = reconstruct(data.transmission, data.theta_deg, data.geometry, h, method,
                          iterations=iterations, device=device,
                          progress=lambda d, n: bar.update(d / n))
        bar.close()
    except ReconError as exc:
        raise UserError(str(exc)) from None
    sr_note = ""
    if super_resolve is not None:
        if profile is None:
            raise UserError("--super-resolve needs --profile (the profile holding the SR weights)")
        px_um = data.geometry.pixel_mm * 1000
        if abs(px_um - profile.pixel_size_um) > 0.01 * profile.pixel_size_um:
            raise UserError(f"{path}: detector pixel {px_um:g} um does not match profile "
                            f"{profile.name!r} ({profile.pixel_size_um:g} um); its SR network was "
                            "trained for that pixel")
        rec = super_resolve_slices(rec, profile, super_resolve, device)
        sr_note = (f", super-resolved {super_resolve} to {rec.grid.voxel_mm * 1000:.4g} um "
                   "voxels")
    name = name or (method + ("_restored" if restored else "")
                    + (f"_{super_resolve}" if super_resolve else ""))
    target = path if target is None else target
    where = save_reconstruction(target, rec, name)
    note = "" if data.complete else f" (scan incomplete: {data.reason})"
    print(f"{method}: {rec.slices.shape[0]} slices of {rec.slices.shape[1]}x"
          f"{rec.slices.shape[2]} from {rec.n_projections} projections in {rec.elapsed_s:.1f} s"
          f"{sr_note} -> {shown_as or target}:{where}{note}")
    return where


def _cmd(a: argparse.Namespace) -> int:
    if not a.file.exists():
        raise UserError(f"{a.file} does not exist")
    profile = None
    if a.super_resolve is not None:
        if a.profile is None:
            raise UserError("--super-resolve needs --profile (the profile holding the SR weights)")
        from ..profiles import find_profile
        profile = find_profile(a.profile)
    elif a.profile is not None:
        raise UserError("--profile is only used with --super-resolve")
    target = _target(a)
    partial = None
    if target != a.file:
        # the new file is the scan plus its slices; it appears under its name only when done
        import os
        import shutil
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(a.file, partial)
        os.chmod(partial, 0o644)
    try:
        for m in a.method:
            run_recon(a.file, m, a.heights, a.restored, a.iterations, device=a.device,
                      super_resolve=a.super_resolve, profile=profile,
                      target=partial if partial is not None else target, shown_as=target)
    except BaseException:
        if partial is not None:
            partial.unlink(missing_ok=True)
        raise
    if partial is not None:
        partial.replace(target)
    return 0


def _target(a: argparse.Namespace) -> Path:
    """The file the slices go to (see the module docstring); refuses to replace files."""
    from ..outputs import derived_output
    if a.in_place:
        if a.out is not None:
            raise UserError("--in-place and --out exclude each other")
        return a.file
    target = a.out if a.out is not None else derived_output(
        a.file, "recon", "-".join(dict.fromkeys(a.method)))
    if target.exists() and target.resolve() == a.file.resolve():
        raise UserError(f"--out {target} is the input scan; use --in-place to add the slices "
                        "to it")
    if target.exists() and not a.overwrite:
        raise UserError(f"{target} exists; pass --overwrite to replace it")
    if not target.parent.is_dir():
        raise UserError(f"output folder {target.parent} does not exist")
    return target


def register(sub) -> None:
    p = sub.add_parser("recon", help="tomosynthesis reconstruction of a scan file",
                       description="Reconstruct slices at given heights above the sample base "
                                   "from a tomosynthesis scan file. They go under "
                                   "/entry/recon/<method> of a new file, a copy of the scan "
                                   "(default <stem>_recon-<method>.h5 in the working "
                                   "directory), or of the scan itself with --in-place.")
    p.add_argument("file", type=Path, help="scan file written by `xinstrument scan tomo`")
    p.add_argument("--method", choices=["saa", "fbp", "sirt"], nargs="+", default=["sirt"],
                   help="shift-and-add, limited-arc filtered back-projection, SIRT (default)")
    p.add_argument("--heights", default="0:1.6:16",
                   help="slice heights in mm above the sample base: 'h1,h2,...' or "
                        "'start:stop:count' (default 0:1.6:16)")
    p.add_argument("--restored", action="store_true",
                   help="use the restored projections stored by the scan")
    p.add_argument("--iterations", type=int, default=20, help="SIRT iterations (default 20)")
    p.add_argument("--device", type=torch_device, default=None,
                   help="torch device (default: cuda if present)")
    p.add_argument("--super-resolve", default=None, metavar="SR_METHOD",
                   help="super-resolve every slice with this method of --profile (sr_x2, "
                        "sr_x4); stored as /entry/recon/<method>_<SR_METHOD> with the finer "
                        "voxel size")
    p.add_argument("--profile", default=None, help="detector profile for --super-resolve")
    p.add_argument("--out", type=Path, default=None,
                   help="output file (default: <stem>_recon-<method>.h5 in the working "
                        "directory)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--in-place", action="store_true",
                   help="add the slices to the scan file itself instead of a new file")
    p.set_defaults(func=_cmd)
