"""Training of the learned restoration methods from noise-free thin-detector (HR) images.

Thick-detector inputs are synthesised on the fly with the profile's physics: MTF-ratio blur and
NNPS-shaped quantum noise at a random dose around the calibration dose (:class:`DetectorPhysics`).
Patches get random flips and 90-degree rotations. Adam, fixed seeds (deterministic on the CPU),
validation PSNR/SSIM per epoch, optional checkpoints, weights saved into the profile.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._fourier import default_device
from .diffusion import cold_degrade, sde_forward, sr3_forward
from .metrics import psnr, ssim
from .networks import METHOD_CONFIGS, build_model, pack_weights
from .physics import DetectorPhysics
from .samplers import make_restore_fn, to_model_range

__all__ = [
    "HrSource",
    "TrainResult",
    "crop_source",
    "pooled_source",
    "synthesize_batch",
    "train",
    "training_loss",
]

HrSource = Callable[[np.random.Generator, int, int], np.ndarray]
"""Callable ``(rng, count, patch_px) -> (count, patch_px, patch_px)`` noise-free HR patches."""

# Dose of the synthesised thick frames relative to the NNPS calibration dose: log-uniform over
# a factor 2 either way, so the networks see the noise range of routine exposures.
DOSE_RANGE = (0.5, 2.0)


def crop_source(images: np.ndarray | Sequence[np.ndarray]) -> HrSource:
    """An :data:`HrSource` cutting random patches from a stack or list of 2-D HR images."""
    imgs = [np.asarray(im, dtype=np.float32) for im in (images if not isinstance(images, np.ndarray)
                                                       or images.ndim == 3 else [images])]
    if not imgs:
        raise ValueError("crop_source: no images")
    for i, im in enumerate(imgs):
        if im.ndim != 2 or not np.isfinite(im).all():
            raise ValueError(f"crop_source: image {i} must be 2-D and finite, got shape {im.shape}")

    def source(rng: np.random.Generator, count: int, patch_px: int) -> np.ndarray:
        out = np.empty((count, patch_px, patch_px), np.float32)
        for k in range(count):
            im = imgs[int(rng.integers(len(imgs)))]
            if im.shape[0] < patch_px or im.shape[1] < patch_px:
                raise ValueError(f"crop_source: image {im.shape} smaller than patch {patch_px}")
            y = int(rng.integers(im.shape[0] - patch_px + 1))
            x = int(rng.integers(im.shape[1] - patch_px + 1))
            out[k] = im[y:y + patch_px, x:x + patch_px]
        return out

    return source


def pooled_source(source: HrSource, count: int, size_px: int, seed: int) -> HrSource:
    """Draw ``count`` HR images of ``size_px`` from ``source`` once (seeded), then crop patches
    from that pool: rendering a twin image costs far more than a training step, so a fixed pool
    with random crops, flips and rotations keeps short CPU runs fast."""
    count = _check_int("pool count", count, 1)
    size_px = _check_int("pool size_px", size_px, 8)
    images = np.asarray(source(np.random.default_rng(seed), count, size_px), dtype=np.float32)
    if images.shape != (count, size_px, size_px):
        raise ValueError(f"HR source returned shape {images.shape}, expected {(count, size_px, size_px)}")
    return crop_source(images)


def _as_source(src: Any, name: str) -> HrSource:
    if callable(src):
        return src
    if isinstance(src, (np.ndarray, list, tuple)):
        return crop_source(src)
    raise TypeError(f"{name}: expected a callable (rng, count, patch_px) or HR images, got {type(src).__name__}")


def _draw_hr(source: HrSource, rng: np.random.Generator, count: int, patch: int, augment: bool) -> np.ndarray:
    hr = np.asarray(source(rng, count, patch), dtype=np.float32)
    if hr.shape != (count, patch, patch):
        raise ValueError(f"HR source returned shape {hr.shape}, expected {(count, patch, patch)}")
    if not np.isfinite(hr).all():
        raise ValueError("HR source returned non-finite values")
    if augment:
        for k in range(count):
            r = int(rng.integers(4))
            im = np.rot90(hr[k], r)
            if rng.random() < 0.5:
                im = im[:, ::-1]
            hr[k] = im
    return hr


def synthesize_batch(
    physics: DetectorPhysics, hr: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Thick-detector frames for HR patches (B, H, W) at random doses in :data:`DOSE_RANGE`."""
    lo, hi = math.log(DOSE_RANGE[0]), math.log(DOSE_RANGE[1])
    u = torch.rand(hr.shape[0], generator=generator, device=hr.device)
    dose = torch.exp(lo + (hi - lo) * u)
    return physics.degrade(hr, generator, dose)


def training_loss(
    method: str,
    model: torch.nn.Module,
    physics: DetectorPhysics,
    hr: torch.Tensor,
    lr_frames: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """One batch's loss. x0-predicting methods use L1 (sharper than L2 for restoration, the
    common choice of cold diffusion, Bansal et al. 2023); SR3 uses the DDPM noise MSE."""
    n = hr.shape[0]
    if method == "unet":
        return F.l1_loss(model(lr_frames[:, None])[:, 0], hr)
    s = torch.rand(n, generator=generator, device=hr.device)
    if method == "cold_diffusion":
        # The blend's end point is the real (noisy) thick frame, so D_1 is what the sampler starts from.
        x_s = cold_degrade(hr, lr_frames, s)
        return F.l1_loss(model(x_s[:, None], s)[:, 0], hr)
    if method == "sde":
        shape = tuple(hr.shape[-2:])
        ratio = physics.ratio_rfft(shape, hr.device)
        t_mean = hr.mean(dim=(-2, -1)).clamp(min=0)
        q = physics.nnps_rfft(shape, hr.device)[None] * t_mean[:, None, None]
        x_s = sde_forward(hr, s, ratio, q, generator)
        return F.l1_loss(model(torch.stack([x_s, lr_frames], 1), s)[:, 0], hr)
    if method == "sr3":
        eps = torch.randn(hr.shape, generator=generator, device=hr.device)
        z = sr3_forward(to_model_range(hr), s, eps)
        pred = model(torch.stack([z, to_model_range(lr_frames)], 1), s)[:, 0]
        return F.mse_loss(pred, eps)
    raise ValueError(f"unknown learned method {method!r}")


@dataclass
class TrainResult:
    """Outcome of :func:`train`: the trained model, its packed weights and the history."""

    model: torch.nn.Module
    weights: dict[str, torch.Tensor]
    losses: list[float] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def _check_int(name: str, value: Any, minimum: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def train(
    method: str,
    profile: Any,
    hr_source: HrSource | np.ndarray | Sequence[np.ndarray],
    *,
    patch: int = 128,
    batch: int = 16,
    steps: int = 1000,
    lr: float = 2e-4,
    seed: int = 0,
    device: str | torch.device | None = None,
    val_source: HrSource | np.ndarray | Sequence[np.ndarray] | None = None,
    val_patches: int = 16,
    steps_per_epoch: int = 100,
    sample_steps: int | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: Callable[[dict[str, float]], None] | None = None,
    base_channels: int = 24,
    depth: int = 3,
    save_to_profile: bool = True,
    grad_clip: float | None = None,
) -> TrainResult:
    """Train one learned method for a detector profile.

    Parameters
    ----------
    method : "unet", "cold_diffusion", "sde" or "sr3".
    profile : DetectorProfile (MTF ratio, NNPS, nnps_mean_signal; weights are saved into it).
    hr_source : noise-free HR patches: a callable ``(rng, count, patch_px)`` (e.g. the digital
        twin's generator) or HR images to crop from.
    patch, batch, steps : patch side (px; paper 001 uses 128), patches per step (paper 001: 16),
        optimiser steps.
    lr : Adam learning rate (paper 001 uses 2e-5 for long runs; 2e-4 converges faster for the
        short schedules used to build the shipped small models).
    seed : seeds the network initialisation, patch draws, noise and times; on the CPU two runs
        with the same seed give identical weights.
    val_source : HR source for validation (different samples from training); default: none.
    val_patches, steps_per_epoch, sample_steps : validation set size, steps between validations
        ("epochs"), sampler steps used for validation.
    checkpoint_dir : if given, model + optimiser state each epoch as ``<method>_latest.pt``.
    progress : called after every step with {"step", "loss"} and after every epoch also with
        {"epoch", "val_psnr_db", "val_ssim"}.
    base_channels, depth : U-Net size.
    save_to_profile : call ``profile.save_weights(method, weights)`` at the end.
    grad_clip : clip the gradient's global norm to this before each step (None: no clipping);
        the usual guard of diffusion training (Ho et al. 2020 clip at 1) against a loss spike
        that throws the network out to "no correction".
    """
    if method not in METHOD_CONFIGS:
        raise ValueError(f"train: unknown learned method {method!r}; choose from {list(METHOD_CONFIGS)}")
    patch = _check_int("patch", patch, 8)
    batch = _check_int("batch", batch, 1)
    steps = _check_int("steps", steps, 1)
    steps_per_epoch = _check_int("steps_per_epoch", steps_per_epoch, 1)
    seed = _check_int("seed", seed, 0)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if grad_clip is not None and not (isinstance(grad_clip, (int, float)) and math.isfinite(grad_clip)
                                      and grad_clip > 0):
        raise ValueError(f"grad_clip must be None or a finite number > 0, got {grad_clip!r}")
    physics = DetectorPhysics.from_profile(profile)
    if not physics.has_noise_model:
        raise ValueError(
            f"profile {getattr(profile, 'name', '?')!r} lacks nnps_lr / nnps_mean_signal needed to synthesise"
            " thick-detector training inputs"
        )
    source = _as_source(hr_source, "hr_source")
    val = _as_source(val_source, "val_source") if val_source is not None else None
    dev = default_device(device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(method, base_channels=base_channels, depth=depth).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)

    val_set = None
    if val is not None:
        vrng = np.random.default_rng(seed + 1)
        vgen = torch.Generator(device=dev).manual_seed(seed + 1)
        v_hr = torch.from_numpy(_draw_hr(val, vrng, val_patches, patch, augment=False)).to(dev)
        val_set = (v_hr, synthesize_batch(physics, v_hr, vgen))

    result = TrainResult(model=model, weights={})
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        model.train()
        hr = torch.from_numpy(_draw_hr(source, rng, batch, patch, augment=True)).to(dev)
        lr_frames = synthesize_batch(physics, hr, gen)
        loss = training_loss(method, model, physics, hr, lr_frames, gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
        opt.step()
        result.losses.append(float(loss.item()))
        report: dict[str, float] = {"step": step, "loss": result.losses[-1]}
        if step % steps_per_epoch == 0 or step == steps:
            epoch = math.ceil(step / steps_per_epoch)
            report["epoch"] = epoch
            end_of_epoch(report, model, method, physics, val_set, sample_steps, seed, result,
                         checkpoint_dir, opt, step)
        if progress is not None:
            progress(report)
    result.seconds = time.perf_counter() - t0
    model.eval()
    result.weights = pack_weights(model, method)
    if save_to_profile:
        profile.save_weights(method, result.weights)
    return result


def end_of_epoch(report: dict, model, method: str, physics, val_set, sample_steps, seed: int,
                 result, checkpoint_dir, opt, step: int, extra_state: dict | None = None) -> None:
    """Validation PSNR/SSIM into ``report`` and ``result.validation``, then a checkpoint.

    Shared by single-process and distributed training so both record and save the same way.
    """
    if val_set is not None:
        model.eval()
        with torch.no_grad():
            restore = make_restore_fn(method, model, physics, steps=sample_steps, seed=seed)
            out = restore(val_set[1]).cpu().numpy()
        ref = val_set[0].cpu().numpy()
        report["val_psnr_db"] = float(np.mean(psnr(out, ref, 1.0)))
        report["val_ssim"] = float(np.mean(ssim(out, ref, 1.0)))
        result.validation.append({k: float(v) for k, v in report.items()})
    if checkpoint_dir is not None:
        folder = Path(checkpoint_dir)
        folder.mkdir(parents=True, exist_ok=True)
        state = {"model": pack_weights(model, method), "optimizer": opt.state_dict(), "step": step}
        state.update(extra_state or {})
        torch.save(state, folder / f"{method}_latest.pt")
