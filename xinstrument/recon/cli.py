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


def slice_reconstruction(profile: Any) -> str:
    """The slices ``profile``'s SR weights were trained on: ``saa`` (shift-and-add, the default)
    or ``multiframe`` (``[calibration] slice_reconstruction``, :mod:`.multiframe`)."""
    value = str((getattr(profile, "calibration", None) or {}).get("slice_reconstruction", "saa"))
    if value not in ("saa", "multiframe"):
        raise UserError(f"profile {profile.name!r}: [calibration] slice_reconstruction must be saa "
                        f"or multiframe, got {value!r}")
    return value


def multiframe_projections(data: Any, profile: Any, path: Path) -> np.ndarray:
    """The scan's transmissions each filtered by its share of the multi-frame slice
    (:func:`.multiframe.prefilter_projections`), so that shift-and-add makes multi-frame slices
    at every height. The projections' OTFs and noise come from the twin bench ``profile`` was
    calibrated on, at each projection's tube angle and recorded exposure."""
    from ..sim.slice_transfer import MULTIFRAME_PAD_PX, profile_multiframe_weights
    from .multiframe import prefilter_projections
    exposure = np.asarray(data.exposure_s if data.exposure_s is not None
                          else np.full(data.theta_deg.shape, np.nan), np.float64)
    if not np.all(np.isfinite(exposure) & (exposure > 0)):
        raise UserError(f"{path}: multi-frame slices need each projection's exposure, and the scan "
                        "does not record it for every projection")
    if data.frames_averaged is not None:
        exposure = exposure * np.maximum(np.asarray(data.frames_averaged), 1)
    trans = np.asarray(data.transmission, np.float32)
    # the per-projection OTFs vary along the tube's swing: x (columns) for axis y
    swap = data.geometry.axis == "x"
    if swap:
        trans = np.swapaxes(trans, 1, 2)
    pixel_um = data.geometry.pixel_mm * 1000
    otfs = nps = None
    for e in np.unique(exposure):
        sel = np.flatnonzero(exposure == e)
        try:
            h, n = profile_multiframe_weights(profile, pixel_um, trans.shape[1:],
                                              data.theta_deg[sel], float(e), MULTIFRAME_PAD_PX)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if otfs is None:
            otfs = np.empty((trans.shape[0], *h.shape[1:]), h.dtype)
            nps = np.empty((trans.shape[0], *n.shape[1:]), n.dtype)
        otfs[sel], nps[sel] = h, n
    out = prefilter_projections(trans, otfs, nps, pad_px=MULTIFRAME_PAD_PX)
    return np.ascontiguousarray(np.swapaxes(out, 1, 2)) if swap else out


def _check_sr_pixel(path: Path, data: Any, profile: Any) -> None:
    px_um = data.geometry.pixel_mm * 1000
    if abs(px_um - profile.pixel_size_um) > 0.01 * profile.pixel_size_um:
        raise UserError(f"{path}: detector pixel {px_um:g} um does not match profile "
                        f"{profile.name!r} ({profile.pixel_size_um:g} um); its SR network was "
                        "trained for that pixel")


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
    slices_for = None
    if super_resolve is not None:
        if profile is None:
            raise UserError("--super-resolve needs --profile (the profile holding the SR weights)")
        slices_for = slice_reconstruction(profile)
        if slices_for == "multiframe" and method != "saa":
            raise UserError(f"profile {profile.name!r}: its {super_resolve} weights were trained on "
                            "multi-frame slices (slice_reconstruction = \"multiframe\"), which "
                            f"shift-and-add makes from filtered projections; --method {method} "
                            "cannot; use --method saa with --super-resolve")
    try:
        h = parse_heights(heights)
        data = load_scan(path, restored=restored)
        projections = data.transmission
        if super_resolve is not None:
            _check_sr_pixel(path, data, profile)
        if slices_for == "multiframe":
            projections = multiframe_projections(data, profile, path)
        bar = ProgressBar(f"recon {method}")
        rec = reconstruct(projections, data.theta_deg, data.geometry, h, method,
                          iterations=iterations, device=device,
                          progress=lambda d, n: bar.update(d / n))
        bar.close()
    except ReconError as exc:
        raise UserError(str(exc)) from None
    sr_note = ""
    if super_resolve is not None:
        rec = dataclasses.replace(rec, params=dict(rec.params, slice_reconstruction=slices_for))
        rec = super_resolve_slices(rec, profile, super_resolve, device)
        sr_note = (f", {slices_for} slices" if slices_for == "multiframe" else "") + (
                   f", super-resolved {super_resolve} to {rec.grid.voxel_mm * 1000:.4g} um "
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
