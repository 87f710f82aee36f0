"""`xinstrument restore` and `xinstrument train`: restoration of stored scans and training of a
profile's learned methods.

This module is the command-line layer above the pure restoration package: it may read files,
load profiles and use the digital twin as the default HR training source.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..storage import ScanReader, StorageError
from ..storage.sink import check_target
from ..storage.stored import FrameRestoreError, load_corrected, restore_scan
from . import Restorer, available_methods, registry

__all__ = ["bench_for_profile", "register", "restore_file", "stored_dose_model", "stored_dose_plan",
           "stored_flat_references", "train_profile", "train_sr_profile"]

log = logging.getLogger(__name__)

from ..cliargs import non_negative_int as _non_negative_int
from ..cliargs import positive_int as _positive_int
from ..cliargs import torch_device as _torch_device

# Twin benches that produce HR images at a shipped profile's pixel size.
TWIN_BENCHES = ("lens-yag", "panel-gos", "micro-tomo-16x")


def _load_profile(name: str):
    from ..profiles import find_profile
    return find_profile(name)   # ProfileError is a user error of the CLI


def bench_for_profile(profile: Any) -> str:
    """The twin bench whose HR images match ``profile``: lens-coupled YAG or GOS panel."""
    named = (getattr(profile, "calibration", None) or {}).get("bench")
    if named in TWIN_BENCHES:       # the twin bench the profile was calibrated on
        return str(named)
    material = str((getattr(profile, "scintillator", None) or {}).get("material", ""))
    if material.upper().startswith("YAG"):
        return "lens-yag"
    if material.upper().startswith("GD2O2S"):
        return "panel-gos"
    raise UserError(f"profile {profile.name!r}: no twin bench for scintillator {material!r}; "
                    f"pass --bench ({' or '.join(TWIN_BENCHES)})")


def bench_kw_for_profile(profile: Any, bench: str) -> dict:
    """Twin bench settings that make its screens those of ``profile``: the working (thick) and
    reference (thin) YAG thicknesses of a lens-coupled profile; none for panels (the panel
    bench's screens are the shipped profile's)."""
    if bench not in ("lens-yag", "micro-tomo-16x"):
        return {}
    kw = {}
    for key, table in (("thick_um", "scintillator"), ("thin_um", "reference")):
        value = (getattr(profile, table, None) or {}).get("thickness_um")
        if value is not None:
            kw[key] = float(value)
    return kw


# --- restore -------------------------------------------------------------------------------------
def stored_dose_model(profile: Any, frame_shape: tuple[int, int]):
    """How a stored frame's recorded exposure, voltage and current become its dose with
    ``profile``: ``(flat_dose_ratio, model, why_none)``. A profile calibrated on the digital
    twin gets the twin bench's detected quanta of one exposure's flat at those settings, with
    the function the live acquisition uses on the simulated bench
    (:func:`~xinstrument.restoration.dose.twin_flat_dose_ratio`); any other profile has no
    model here (``flat_dose_ratio`` None, ``why_none`` says why): its user gives the dose."""
    import dataclasses

    from .dose import twin_flat_dose_ratio

    cal = getattr(profile, "calibration", None) or {}
    mean_signal = getattr(profile, "nnps_mean_signal", None)
    name = getattr(profile, "name", "?")
    if mean_signal is None:
        return None, "", f"profile {name!r} has no nnps_mean_signal (measure its NNPS)"
    if cal.get("source") != "digital twin" and cal.get("bench") not in TWIN_BENCHES:
        return None, "", (f"profile {name!r} was not calibrated on the digital twin, so the "
                          "detected quanta at the recorded settings are not known here")
    try:
        bench = bench_for_profile(profile)
    except UserError as exc:
        return None, "", str(exc)
    from ..sim import BENCHES, Twin

    cfg = BENCHES[bench](**bench_kw_for_profile(profile, bench))
    rows, cols = (int(v) for v in frame_shape)
    cfg = dataclasses.replace(cfg, sensor=dataclasses.replace(cfg.sensor, rows=rows, cols=cols))
    twin = Twin(cfg, sample="open")

    # not cached here: plan_stored_doses asks once per distinct setting
    def flat_dose_ratio(exposure_s, voltage_kv, current_ua, theta_deg):
        st = dataclasses.replace(twin.fixed_state, theta_deg=float(theta_deg))
        return twin_flat_dose_ratio(twin, st, exposure_s, voltage_kv, current_ua, mean_signal)

    return flat_dose_ratio, f"the digital twin's {bench} bench", ""


def _run_of(keys: np.ndarray, index: int) -> np.ndarray:
    """File indices of the run of equal image keys that holds ``index``."""
    a = b = int(index)
    while a > 0 and keys[a - 1] == keys[index]:
        a -= 1
    while b + 1 < keys.size and keys[b + 1] == keys[index]:
        b += 1
    return np.arange(a, b + 1)


def stored_flat_references(in_path: str | Path, scan: Any) -> list:
    """For each projection of ``scan`` (loaded from ``in_path`` by ``load_corrected``), the
    flat reference that corrected it as a :class:`~xinstrument.restoration.dose.FlatReference`:
    the mean of its flat run minus the mean of its dark run (ADU; the runs
    ``load_corrected`` averaged) and the flat run's recorded exposure, current and voltage;
    None for a projection stored corrected without its references."""
    from ..storage import layout as L
    from .dose import FlatReference

    out: list = []
    memo: dict[tuple[int, int], Any] = {}
    with ScanReader(in_path) as r:
        md = r.frame_metadata
        keys = np.asarray(md["image_key"])
        for d, f in zip(np.asarray(scan.dark_index, np.int64), np.asarray(scan.flat_index, np.int64)):
            ok = (0 <= d < keys.size and 0 <= f < keys.size and keys[d] == L.IMAGE_KEY_DARK
                  and keys[f] == L.IMAGE_KEY_FLAT)
            if not ok:
                out.append(None)
                continue
            if (int(d), int(f)) not in memo:
                darks, flats = _run_of(keys, int(d)), _run_of(keys, int(f))
                # frame means first: the mean of the averaged run without holding the run
                level = (np.mean([float(np.mean(r.frame(int(i)), dtype=np.float64)) for i in flats])
                         - np.mean([float(np.mean(r.frame(int(i)), dtype=np.float64)) for i in darks]))

                def setting(name: str, run: np.ndarray = flats) -> float:
                    v = np.asarray(md[name], dtype=np.float64)[run]
                    return float(np.mean(v)) if np.isfinite(v).all() else math.nan

                memo[int(d), int(f)] = FlatReference(float(level), setting("exposure_s"),
                                                     setting("current_ua"), setting("voltage_kv"))
            out.append(memo[int(d), int(f)])
    return out


def stored_dose_plan(in_path: str | Path, frame_shape: tuple[int, int], scan: Any, profile: Any,
                     method: str, *, frames_averaged: int | None = None,
                     dose_ratio: float | None = None):
    """The dose each projection of a stored scan is restored with (``restore`` and ``batch
    restore``): the user's ``frames_averaged`` / ``dose_ratio`` (one exposure's), else the
    file's frame counts and one exposure's dose from the flat that corrected each projection
    when the profile records its ADU per quantum (``[calibration] nnps_adu_per_quantum``; see
    :mod:`xinstrument.restoration.dose`), else the dose :func:`stored_dose_model` computes from
    the recorded exposure, voltage and current. Raises DoseMetadataError naming the file and
    what is missing when a method that takes the dose cannot have it."""
    from .dose import ADU_PER_QUANTUM_KEY, needs_dose, plan_stored_doses

    model = (None, "", "")
    measured: dict[str, Any] = {}
    if needs_dose(method) and dose_ratio is None:
        adu = (getattr(profile, "calibration", None) or {}).get(ADU_PER_QUANTUM_KEY)
        if adu is not None:         # the measured flat: what this detector recorded
            measured = {"flat_references": stored_flat_references(in_path, scan),
                        "adu_per_quantum": adu,
                        "mean_signal": getattr(profile, "nnps_mean_signal", None)}
        else:
            flat_dose_ratio, name, why = stored_dose_model(profile, frame_shape)
            if flat_dose_ratio is None:
                why = (f"{why}, and it records no ADU per detected quantum ([calibration] "
                       f"{ADU_PER_QUANTUM_KEY}, from 'xinstrument calibrate nnps "
                       "--adu-per-quantum G') to measure the dose from the file's flats")
            model = (flat_dose_ratio, name, why)
    return plan_stored_doses(scan.settings, method, where=str(in_path),
                             frames_averaged=frames_averaged, dose_ratio=dose_ratio,
                             flat_dose_ratio=model[0], model=model[1], no_model=model[2],
                             **measured)


def restore_file(in_path: str | Path, out_path: str | Path, profile: Any, method: str, *,
                 steps: int | None = None, device: str | None = None, overwrite: bool = False,
                 progress=None, frames_averaged: int | None = None,
                 dose_ratio: float | None = None) -> dict:
    """Restore every projection of scan file ``in_path`` into a new scan file ``out_path``.

    The output holds the input's projections, flats and darks (same order, dtype and per-frame
    metadata), their flat-field corrected projections beside the references that corrected
    them, and one restored frame per projection (``/entry/restored``, with method and
    profile). Stored projections are loaded and corrected by
    :func:`xinstrument.storage.stored.load_corrected` (the one load-and-correct of stored
    scans). Super-resolution methods (``sr_x<N>``) make restored frames N x larger per axis;
    their pixel size (input pixel / N) is stored as ``/entry/restored@pixel_size_um`` and in the
    ``restoration`` metadata. The input is opened read-only and never modified. Returns a
    summary dict.

    Methods whose noise model takes the dose (Wiener, plug-and-play, DC diffusion) restore each
    projection with its dose and the frames it averages, as the live acquisition does
    (:func:`stored_dose_plan`): ``frames_averaged`` and ``dose_ratio`` (one exposure's) replace
    the file's; a file lacking them is a UserError naming the field, and nothing is written.
    The ``restoration`` metadata records the dose ratio, frames averaged and flat frames of
    every projection.
    """
    from .dose import DoseMetadataError

    in_path, out_path = Path(in_path), Path(out_path)
    if not in_path.is_file():
        raise UserError(f"{in_path}: no such file")
    if in_path.resolve() == out_path.resolve() if out_path.exists() else False:
        raise UserError(f"{out_path}: output must be a new file, not the input")
    if not registry.is_registered(method):
        raise UserError(f"unknown restoration method {method!r}; choose from "
                        f"{', '.join(registry.methods())}")
    usable = available_methods(profile)
    spec = registry.get(method)
    if method not in usable and not spec.super_resolving:   # the SR loader names the factors
        needs = [n for n, f in (("weights", spec.needs_weights), ("an NNPS", spec.needs_nnps),
                                ("a PSF", spec.needs_psf)) if f]
        raise UserError(f"profile {profile.name!r} cannot run {method!r} (it needs "
                        f"{', '.join(needs)}); available: {', '.join(usable)}")
    try:
        check_target(out_path, overwrite)
        with ScanReader(in_path) as reader:
            px = reader.pixel_size_um
            if px is not None and abs(px - profile.pixel_size_um) > 0.01 * profile.pixel_size_um:
                raise UserError(f"{in_path}: pixel size {px:g} um does not match profile "
                                f"{profile.name!r} ({profile.pixel_size_um:g} um); wrong "
                                "profile?")
            scan = load_corrected(reader)
            shape = reader.frame_shape
    except StorageError as exc:
        raise UserError(str(exc)) from None
    if not np.isfinite(scan.transmission).all():
        raise UserError(f"{in_path}: projections contain NaN or infinite values")
    try:
        plan = stored_dose_plan(in_path, shape, scan, profile, method,
                                frames_averaged=frames_averaged, dose_ratio=dose_ratio)
    except (DoseMetadataError, ValueError) as exc:
        raise UserError(str(exc)) from None
    try:
        restorer = Restorer(profile, method, device=device, steps=steps)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    # the file's own pixel size when it has one (checked against the profile above)
    out_px = (px if px is not None else float(profile.pixel_size_um)) / restorer.scale
    meta = {"restoration": {"method": method, "profile": profile.name, "steps": steps,
                            "source_file": str(in_path), "input": scan.how,
                            "scale": restorer.scale, "output_pixel_size_um": out_px,
                            **plan.metadata()}}
    meta.setdefault("profile", profile.name)
    restore_one = plan.in_order(restorer, per_frame=True)

    t0 = time.perf_counter()
    try:
        restore_scan(in_path, out_path, restore_one, method=method, profile=profile.name,
                     scale=restorer.scale, restored_pixel_size_um=out_px, metadata=meta,
                     overwrite=overwrite, progress=progress)
    except (StorageError, FrameRestoreError) as exc:
        raise UserError(str(exc)) from None
    seconds = time.perf_counter() - t0
    n_proj = int(scan.transmission.shape[0])
    return {"frames": n_proj, "seconds": seconds, "input": scan.how,
            "device": str(restorer.device), "frames_per_second": restorer.frames_per_second,
            "fallbacks": list(restorer.fallbacks), "scale": restorer.scale,
            "output_pixel_size_um": out_px, "dose": plan.metadata()}


def _dose_line(dose: dict) -> str:
    """One line on the dose the projections were restored with (None: the method takes none)."""
    if dose["dose_ratio"] is None:
        return ""
    eff, n = dose["effective_dose_ratio"], dose["frames_averaged"]
    return (f"dose ratio {min(eff):.4g}" + (f"..{max(eff):.4g}" if max(eff) > min(eff) else "")
            + f" ({min(n)}" + (f"..{max(n)}" if max(n) > min(n) else "")
            + f" frames averaged; {dose['dose_source']})")


def _cmd_restore(a: argparse.Namespace) -> int:
    from ..progress import ProgressBar
    profile = _load_profile(a.profile)
    from ..outputs import derived_output
    out = a.out or derived_output(a.input, "restored", a.method)
    bar = ProgressBar(f"restore {a.method}")
    summary = restore_file(a.input, out, profile, a.method, steps=a.steps, device=a.device,
                           overwrite=a.overwrite, progress=lambda k, n: bar.update(k / n),
                           frames_averaged=a.frames_averaged, dose_ratio=a.dose_ratio)
    bar.close()
    for msg in summary["fallbacks"]:
        print(f"note: {msg}", file=sys.stderr)
    grid = (f", x{summary['scale']} finer grid ({summary['output_pixel_size_um']:.4g} um pixels)"
            if summary["scale"] != 1 else "")
    dose = _dose_line(summary["dose"])
    print(f"restored {summary['frames']} projections ({summary['input']}) with {a.method} "
          f"[{profile.name}] on {summary['device']}{grid}"
          + (f", {dose}" if dose else "")
          + f": {summary['frames_per_second']:.2f} frames/s -> {out}")
    return 0


# --- train ---------------------------------------------------------------------------------------
def train_profile(profile: Any, method: str, *, steps: int, seed: int = 0,
                  bench: str | None = None, patch: int = 64, batch: int = 8, lr: float = 1e-3,
                  base_channels: int = 16, depth: int = 3, pool_images: int = 96,
                  pool_px: int = 256, val_patches: int = 16, steps_per_epoch: int | None = None,
                  sample_steps: int | None = None, device: str | None = None,
                  threads: int | None = None, hr_families: Sequence[str] | None = None,
                  progress=None) -> dict:
    """Train ``method`` for ``profile`` on the twin's HR images and save weights + a record.

    HR images: a pool of ``pool_images`` thin-screen twin renderings (``pool_px`` square) of the
    training sample families ``hr_families`` (default: all of them; held-out families are
    refused, so a network trained here is never scored on a family it saw), drawn from
    ``seed``; validation: a separate pool from ``seed + 1`` (other random samples). Networks
    trained on one family learn its statistics: PCB-only training laid the PCB's horizontal /
    vertical layout over flat regions as a cross-hatch. The record (settings, families, final
    validation PSNR/SSIM, CPU seconds) goes to ``weights/<method>.json``.
    """
    import torch

    from ..sim.families import TRAINING_FAMILIES, check_training_families, training_hr_source
    from .networks import METHOD_CONFIGS
    from .training import train

    if method not in METHOD_CONFIGS:
        raise UserError(f"unknown learned method {method!r}; choose from {', '.join(METHOD_CONFIGS)}")
    bench = bench or bench_for_profile(profile)
    if bench not in TWIN_BENCHES:
        raise UserError(f"unknown twin bench {bench!r}; choose from {', '.join(TWIN_BENCHES)}")
    try:
        families = check_training_families(TRAINING_FAMILIES if hr_families is None
                                           else hr_families)
    except ValueError as exc:
        raise UserError(f"--hr-families: {exc}") from None
    if threads is not None:
        torch.set_num_threads(threads)

    cpu0 = time.process_time()
    try:
        train_src = training_hr_source(seed, bench, families, pool_images, pool_px)
        val_src = training_hr_source(seed + 1, bench, families, max(4, pool_images // 8),
                                     pool_px)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    settings = {"method": method, "profile": profile.name, "bench": bench, "steps": steps,
                "seed": seed, "patch_px": patch, "batch": batch, "lr": lr,
                "base_channels": base_channels, "depth": depth, "hr_pool_images": pool_images,
                "hr_pool_px": pool_px, "val_patches": val_patches, "sample_steps": sample_steps,
                "optimizer": "Adam", "hr_families": list(families),
                "hr_source": "xinstrument.sim.families.training_hr_source"}
    try:
        result = train(method, profile, train_src, patch=patch, batch=batch, steps=steps, lr=lr,
                       seed=seed, device=device, val_source=val_src, val_patches=val_patches,
                       steps_per_epoch=steps_per_epoch or max(1, steps // 5),
                       sample_steps=sample_steps, progress=progress,
                       base_channels=base_channels, depth=depth, save_to_profile=True)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    record = dict(settings, validation=result.validation,
                  val_psnr_db=result.validation[-1].get("val_psnr_db"),
                  val_ssim=result.validation[-1].get("val_ssim"),
                  final_loss=float(np.mean(result.losses[-20:])),
                  wall_s=round(result.seconds, 1), cpu_s=round(time.process_time() - cpu0, 1),
                  parameters=int(sum(p.numel() for p in result.model.parameters())),
                  torch=torch.__version__)
    target = Path(profile.path) / "weights" / f"{method}.json"
    target.write_text(json.dumps(record, indent=1) + "\n")
    return record


def _load_hr_images(path: Path, factor: int) -> np.ndarray:
    """A user's HR images for SR training: (N, H, W) or (H, W) float .npy on the fine grid."""
    if not path.is_file():
        raise UserError(f"{path}: no such file (HR images: an .npy array (N, H, W) or (H, W))")
    try:
        hr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable .npy array ({exc})") from None
    if hr.ndim == 2:
        hr = hr[None]
    if hr.ndim != 3 or hr.dtype.kind not in "fiu":
        raise UserError(f"{path}: HR images must be a numeric (N, H, W) or (H, W) array, got "
                        f"shape {hr.shape} dtype {hr.dtype}")
    if not np.isfinite(hr).all():
        raise UserError(f"{path}: HR images contain NaN or infinite values")
    return hr.astype(np.float32)


def train_sr_profile(profile: Any, factor: int, *, steps: int, seed: int = 0,
                     bench: str | None = None, hr_images: Path | None = None, patch: int = 64,
                     batch: int = 16, lr: float = 1e-3, channels: int = 32, layers: int = 8,
                     pool_images: int = 64, pool_px: int = 192, val_patches: int = 16,
                     blur: str = "gaussian", downsample: str = "bicubic",
                     device: str | None = None, threads: int | None = None,
                     hr_families: Sequence[str] | None = None, progress=None) -> dict:
    """Train the ``sr_x<factor>`` network of ``profile`` and save weights + a record.

    HR images: noise-free twin ground truth on a ``factor`` x finer grid (a pool of
    ``pool_images`` renderings of ``pool_px`` fine pixels from ``seed``), or the user's
    ``hr_images`` (.npy, on the fine grid: ``factor`` x smaller pixels than the detector), or
    twin images of the named training sample families (``hr_families``; held-out ones refused).
    Validation: twin images from another seed (of the same families). LR inputs come from the profile's calibrated
    degradation (``esf_sigma_um`` or, with ``blur="mtf_ratio"``, ``mtf_ratio``; ``noise_sigma``;
    with ``blur="slice"`` the stored tomosynthesis slice transfer and the slice's noise). The profile is re-read just before saving,
    so weights written meanwhile by other trainings are kept.
    """
    import torch

    from xinstrument.sim.hr_source import twin_hr_source

    from ..profiles import DetectorProfile
    from .superres import SliceTransfer, SuperResolutionError, sr_method, train_sr
    from .training import crop_source, pooled_source

    try:
        method = sr_method(factor)
    except SuperResolutionError as exc:
        raise UserError(str(exc)) from None
    if blur == "gaussian" and getattr(profile, "esf_sigma_um", None) is None:
        raise UserError(f"profile {profile.name!r} has no esf_sigma_um (Gaussian PSF sigma of the "
                        "ESF -> LSF fit of a slanted edge); super-resolution training needs it "
                        "for the degradation model: measure it (xinstrument calibrate) and store "
                        "it in profile.toml")
    slice_transfer = None
    if blur == "slice":     # refuse before the twin renders the training pool
        try:
            slice_transfer = SliceTransfer.from_profile(profile)
        except SuperResolutionError as exc:
            raise UserError(str(exc)) from None
    bench = bench or bench_for_profile(profile)
    if bench not in TWIN_BENCHES:
        raise UserError(f"unknown twin bench {bench!r}; choose from {', '.join(TWIN_BENCHES)}")
    if patch % factor:
        raise UserError(f"--patch {patch} px must be a multiple of the SR factor {factor}")
    bench_kw = bench_kw_for_profile(profile, bench)
    if hr_families is not None:
        from xinstrument.sim.families import check_training_families
        if hr_images is not None:
            raise UserError("give --hr-images or --hr-families, not both")
        try:
            hr_families = check_training_families(hr_families)
        except ValueError as exc:
            raise UserError(f"--hr-families: {exc}") from None
    if threads is not None:
        torch.set_num_threads(threads)
    cpu0 = time.process_time()
    twin_source = twin_hr_source(factor, bench, bench_kw=bench_kw, families=hr_families)
    if hr_images is not None:
        hr = _load_hr_images(Path(hr_images), factor)
        if min(hr.shape[1:]) < patch:
            raise UserError(f"{hr_images}: HR images of {hr.shape[1]} x {hr.shape[2]} px are "
                            f"smaller than the {patch} px training patch")
        train_src = crop_source(hr)
        hr_desc = f"user HR images {hr_images} ({hr.shape[0]} x {hr.shape[1]} x {hr.shape[2]})"
    else:
        train_src = pooled_source(twin_source, pool_images, pool_px, seed)
        hr_desc = (f"twin fine-grid ground truth ({bench} {bench_kw}"
                   + (f", families {', '.join(hr_families)}" if hr_families else "")
                   + f"), pool {pool_images} x {pool_px} px")
    # validation: twin images from seeds the training pool does not use
    val_src = pooled_source(twin_source, max(4, pool_images // 8), pool_px, seed + 10_000)
    try:
        res = train_sr(profile, factor, train_src, steps, seed, patch=patch, batch=batch, lr=lr,
                       channels=channels, layers=layers, device=device, val_source=val_src,
                       val_patches=val_patches, steps_per_epoch=max(1, steps // 10),
                       blur=blur, downsample=downsample, progress=progress,
                       save_to_profile=False)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    final = res.validation[-1] if res.validation else {}
    record = {
        "method": method, "profile": profile.name, "factor": factor, "bench": bench,
        "steps": steps, "seed": seed, "patch_px": patch, "batch": batch, "lr": lr,
        "optimizer": "AdamW", "loss": "L1", "channels": channels, "layers": layers,
        "hr_source": hr_desc, "hr_families": list(hr_families) if hr_families else None,
        "bench_kw": bench_kw, "blur": blur, "downsample": downsample,
        "blur_sigma_lr_px": res.degradation.blur_sigma_lr_px,
        "noise_sigma": res.degradation.noise_sigma,
        **({"slice_half_arc_deg": slice_transfer.half_arc_deg,
            "slice_projections": slice_transfer.projections,
            "slice_transfer_file": profile.calibration["slice_transfer_file"],
            # the slices the transfer is of, which recon and bench sr then build for the weights
            "slice_reconstruction": str(profile.calibration.get("slice_reconstruction", "saa"))}
           if slice_transfer is not None else {}),
        "parameters": int(sum(x.numel() for x in res.model.parameters())),
        "validation": res.validation,
        "val_psnr_db": final.get("val_psnr_db"), "val_ssim": final.get("val_ssim"),
        "val_bicubic_psnr_db": final.get("val_bicubic_psnr_db"),
        "val_bicubic_ssim": final.get("val_bicubic_ssim"),
        "final_loss": float(np.mean(res.losses[-20:])),
        "wall_s": round(res.seconds, 1), "cpu_s": round(time.process_time() - cpu0, 1),
        "torch": torch.__version__,
    }
    fresh = DetectorProfile.load(profile.path)     # keep weights others saved while this ran
    fresh.save_weights(method, res.weights)
    (Path(fresh.path) / "weights" / f"{method}.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def _cmd_train(a: argparse.Namespace) -> int:
    profile = _load_profile(a.profile)
    t0 = time.perf_counter()
    if a.task == "sr":
        return _cmd_train_sr(a, profile, t0)
    if a.method is None:
        raise UserError("--method is required for --task restore (the learned restoration "
                        "method to train)")
    if a.factor is not None or a.hr_images is not None:
        raise UserError("--factor and --hr-images belong to --task sr")

    def progress(report: dict) -> None:
        if "epoch" in report:
            extra = "".join(f" {k}={report[k]:.4f}" for k in ("val_psnr_db", "val_ssim") if k in report)
            print(f"[{a.method}] step {int(report['step'])}/{a.steps} loss={report['loss']:.5f}{extra}"
                  f" ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    rec = train_profile(profile, a.method, steps=a.steps, seed=a.seed, bench=a.bench,
                        patch=a.patch, batch=a.batch, lr=a.lr, base_channels=a.base_channels,
                        pool_images=a.pool_images, pool_px=a.pool_px, device=a.device,
                        threads=a.threads, hr_families=a.hr_families, progress=progress)
    print(f"trained {a.method} for {profile.name} on {', '.join(rec['hr_families'])}: {a.steps} steps, val PSNR "
          f"{rec['val_psnr_db']:.2f} dB, SSIM {rec['val_ssim']:.4f}, {rec['wall_s']:.0f} s; "
          f"weights in {profile.path / 'weights'}")
    return 0


def _cmd_train_sr(a: argparse.Namespace, profile: Any, t0: float) -> int:
    if a.factor is None:
        raise UserError("--task sr needs --factor (2 or 4): the up-sampling factor to train")
    if a.method is not None and a.method != f"sr_x{a.factor}":
        raise UserError(f"--method {a.method} does not fit --task sr --factor {a.factor} "
                        f"(omit --method, or use sr_x{a.factor})")

    def progress(r: dict) -> None:
        if "val_psnr_db" in r:
            print(f"[sr_x{a.factor}] step {int(r['step'])}/{a.steps} loss={r['loss']:.5f} "
                  f"val SR {r['val_psnr_db']:.2f} dB / SSIM {r['val_ssim']:.4f} (bicubic "
                  f"{r['val_bicubic_psnr_db']:.2f} dB / {r['val_bicubic_ssim']:.4f}) "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    rec = train_sr_profile(profile, a.factor, steps=a.steps, seed=a.seed, bench=a.bench,
                           hr_images=a.hr_images, patch=a.patch, batch=a.batch, lr=a.lr,
                           channels=a.channels, layers=a.layers, pool_images=a.pool_images,
                           pool_px=a.pool_px, blur=a.blur, downsample=a.downsample,
                           device=a.device, threads=a.threads,
                           hr_families=a.hr_families, progress=progress)
    print(f"trained sr_x{a.factor} for {profile.name}: {a.steps} steps, val PSNR "
          f"{rec['val_psnr_db']:.2f} dB, SSIM {rec['val_ssim']:.4f} (bicubic "
          f"{rec['val_bicubic_psnr_db']:.2f} dB / {rec['val_bicubic_ssim']:.4f}), "
          f"{rec['wall_s']:.0f} s; weights in {profile.path / 'weights'}")
    return 0


def _family_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one sample family")
    return names


def register(sub) -> None:
    from .networks import METHOD_CONFIGS
    from .stage import SR_METHODS

    p = sub.add_parser("restore", help="restore a stored scan into a new HDF5 file",
                       description="Restore every projection of a scan file with a profile's "
                       "method (same stage as the live path) into a new file holding the "
                       "projections, flats, darks and the restored frames. The input is never "
                       "modified.")
    p.add_argument("input", type=Path, metavar="IN.h5", help="scan file to restore")
    p.add_argument("--profile", required=True, help="detector profile name or folder")
    p.add_argument("--method", required=True, choices=list(registry.methods()),
                   help="restoration method (the profile must hold what it needs: NNPS for "
                        "wiener, weights for the learned ones)")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="sampler steps (diffusion) or iterations (richardson_lucy)")
    p.add_argument("--device", type=_torch_device, default=None,
                   help="cuda, cpu, ... (default: cuda if present)")
    p.add_argument("--out", type=Path, default=None,
                   help="output file (default: IN_restored-METHOD.h5 in the working directory)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    from ..batch.cli import add_dose_options
    add_dose_options(p)
    p.set_defaults(func=_cmd_restore)

    p = sub.add_parser("train", help="train a learned restoration or super-resolution method "
                       "into a profile",
                       description="Train on thin-detector images of the digital twin (random "
                       "procedural samples of the training families), thick inputs synthesised with the profile's MTF "
                       "ratio and noise (--task restore), or on fine-grid HR images degraded "
                       "by bicubic down-sampling, the profile's ESF Gaussian blur and "
                       "background noise (--task sr --factor N); weights and a training record "
                       "go into the profile.")
    p.add_argument("--profile", required=True, help="detector profile name or folder")
    p.add_argument("--task", choices=["restore", "sr"], default="restore",
                   help="restore: deblurring method (--method); sr: super-resolution network "
                   "sr_x<factor> (default restore)")
    p.add_argument("--method", default=None, choices=list(METHOD_CONFIGS) + list(SR_METHODS),
                   help="learned restoration method (--task restore)")
    p.add_argument("--factor", type=_positive_int, default=None,
                   help="super-resolution factor, 2 or 4 (--task sr)")
    p.add_argument("--hr-images", type=Path, default=None,
                   help="--task sr: .npy (N, H, W) HR images on the fine grid instead of the twin")
    p.add_argument("--hr-families", type=_family_list, default=None, metavar="F1,F2,...",
                   help="twin HR images of these training sample families (comma separated; "
                   "held-out families are refused). --task restore: default all training "
                   "families; --task sr: default the bench's own samples")
    p.add_argument("--channels", type=_positive_int, default=32, help="SR network width")
    p.add_argument("--layers", type=_positive_int, default=8, help="SR network 3x3 conv layers")
    p.add_argument("--blur", choices=["gaussian", "mtf_ratio", "slice"], default="gaussian",
                   help="--task sr degradation blur: the profile's ESF Gaussian sigma (paper "
                   "003), its measured MTF ratio on the fine grid, or the anisotropic transfer "
                   "of its tomosynthesis slices with their noise (slice; profile.toml "
                   "[calibration] slice_* keys) (default gaussian)")
    p.add_argument("--downsample", choices=["bicubic", "area"], default="bicubic",
                   help="--task sr down-sampling: anti-aliased bicubic (paper 003) or area, the "
                   "camera pixel's integration, which keeps the aliasing real frames carry "
                   "(default bicubic)")
    p.add_argument("--steps", type=_positive_int, required=True, help="optimiser steps")
    p.add_argument("--seed", type=_non_negative_int, default=0,
                   help="seed of the training images, patches and weights (default 0)")
    p.add_argument("--bench", choices=list(TWIN_BENCHES), default=None,
                   help="twin bench for HR images (default: the one matching the profile)")
    p.add_argument("--patch", type=_positive_int, default=64, help="patch side, px")
    p.add_argument("--batch", type=_positive_int, default=8, help="patches per step")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--base-channels", type=_positive_int, default=16, help="U-Net width")
    p.add_argument("--pool-images", type=_positive_int, default=96,
                   help="twin HR images rendered once and cropped from")
    p.add_argument("--pool-px", type=_positive_int, default=256, help="side of those images, px")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.add_argument("--device", type=_torch_device, default=None,
                   help="torch device (default: cuda if present, else cpu)")
    p.set_defaults(func=_cmd_train)
