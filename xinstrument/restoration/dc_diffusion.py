"""Data-consistent diffusion sampling with the shared denoiser (DiffPIR-style).

A noise-conditioned Gaussian denoiser D(x, s) is the posterior-mean estimate of a clean image
from ``x = x0 + s eps``, i.e. a variance-exploding diffusion model's x0-prediction at noise s
(Tweedie; Karras et al. 2022). Sampling from s_max down to the frame's noise, each step

    x0_hat   = D(x_k, s_k)                                   prior (the shared network)
    x0_tilde = argmin ||y - A x||^2_{N^-1} + lam / s_k^2 ||x - x0_hat||^2     data (closed form)
    eps_hat  = (x_k - x0_tilde) / s_k
    x_{k+1}  = x0_tilde + s_{k+1} (sqrt(1 - zeta) eps_hat + sqrt(zeta) eps),  eps ~ N(0, 1)

(Zhu et al., "Denoising Diffusion Models for Plug-and-Play Image Restoration", CVPRW 2023,
eq. 13-15, in variance-exploding form), with the profile's MTF ratio and NNPS in the data step
(:class:`.pnp.DataStep`). The fresh noise (``zeta``) makes samples differ where the data leave the
image undetermined: the per-pixel spread of several samples of one frame maps the detail the
measurement could not fix (the null space of A at this noise), which the fidelity report shows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import registry
from ._fourier import as_batch, crop_frames, pad_frames
from .denoiser import LoadedDenoiser, load_denoiser
from .pnp import PAD_PX, DataStep, _check_dose, check_physics, noise_sigma

__all__ = ["DC_DEFAULTS", "PosteriorSamples", "dc_diffusion_restore", "posterior_samples"]

# Tuned like PNP_DEFAULTS on training families only: lambda 1 gave +2.2 dB per sample on the YAG
# profile over lambda 0.25 (and -0.6 dB on GOS), zeta 0.3 over 0.1 (+0.3 dB).
DC_DEFAULTS = {"steps": registry.get("dc_diffusion").steps_default,
               "sigma_start": 0.15,
               "lam": 1.0,
               "zeta": 0.3}


@dataclass
class PosteriorSamples:
    """``samples`` (S, H, W) or (S, B, H, W); ``mean`` and ``spread`` (per-pixel standard
    deviation over the samples) of the frame's shape."""

    samples: np.ndarray
    mean: np.ndarray
    spread: np.ndarray


def _sample(x: torch.Tensor, phys, dose: float, den: LoadedDenoiser, steps: int,
            sigma_start: float, lam: float, zeta: float, gen: torch.Generator,
            pad_px: int) -> torch.Tensor:
    yp = pad_frames(x, pad_px, fast=True)
    mean_t = x.mean(dim=(-2, -1))
    data = DataStep.build(phys, yp, mean_t, dose)
    s_end = noise_sigma(phys, mean_t, dose).to(x.device)
    lo, hi = den.sigma_range
    if float(s_end.max()) > hi:
        raise ValueError(f"frame noise sigma {float(s_end.max()):.3g} is above the denoiser's "
                         f"trained range (<= {hi:g}): dose too low for this prior")
    start = torch.maximum(torch.full_like(s_end, min(sigma_start, hi)), s_end)
    sig = [torch.exp(torch.log(start) + (torch.log(s_end) - torch.log(start)) * k /
                     max(steps - 1, 1)) for k in range(steps)]
    # start from the data step on the measurement itself plus noise at the first level
    noise = torch.randn(yp.shape, generator=gen, device="cpu").to(yp.device)
    xk = data(yp, sig[0], lam) + sig[0].reshape(-1, 1, 1) * noise
    x0 = xk
    for k, s in enumerate(sig):
        x0_hat = den(xk, s.clamp(min=lo))
        x0 = data(x0_hat, s, lam)
        if k == steps - 1:
            break
        s_b, s_next = s.reshape(-1, 1, 1), sig[k + 1].reshape(-1, 1, 1)
        eps_hat = (xk - x0) / s_b
        eps = torch.randn(yp.shape, generator=gen, device="cpu").to(yp.device)
        xk = x0 + s_next * (math.sqrt(1 - zeta) * eps_hat + math.sqrt(zeta) * eps)
    return crop_frames(x0, pad_px, tuple(x.shape[-2:]))


def _checked(frames, profile, dose_ratio, steps, zeta, pixel_size_um, denoiser):
    phys = check_physics(profile, "data-consistent diffusion", pixel_size_um)
    dose = _check_dose(dose_ratio)
    if not (isinstance(steps, int) and 1 <= steps <= 50):
        raise ValueError(f"steps must be an integer 1..50, got {steps!r}")
    if not 0 <= zeta <= 1:
        raise ValueError(f"zeta must be in 0..1, got {zeta!r}")
    den = denoiser or load_denoiser()
    x, single = as_batch(frames, device=den.device)
    return phys, dose, den, x, single


def posterior_samples(frames: Any, profile: Any, *, n_samples: int = 4, dose_ratio: float = 1.0,
                      steps: int = DC_DEFAULTS["steps"],
                      sigma_start: float = DC_DEFAULTS["sigma_start"],
                      lam: float = DC_DEFAULTS["lam"], zeta: float = DC_DEFAULTS["zeta"],
                      seed: int = 0, denoiser: LoadedDenoiser | None = None,
                      pixel_size_um: float | None = None, pad_px: int = PAD_PX
                      ) -> PosteriorSamples:
    """``n_samples`` data-consistent samples of each frame, their mean and per-pixel spread.

    Samples of one call are independent draws (seeded by ``seed``); ``frames`` (H, W) or
    (B, H, W) transmission; the profile needs MTF ratio and NNPS.
    """
    if not (isinstance(n_samples, int) and n_samples >= 1):
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
    phys, dose, den, x, single = _checked(frames, profile, dose_ratio, steps, zeta,
                                          pixel_size_um, denoiser)
    gen = torch.Generator().manual_seed(int(seed))
    b = x.shape[0]
    # all samples of all frames in one batch: the network runs once per step
    xs = x.repeat(n_samples, 1, 1)
    out = _sample(xs, phys, dose, den, steps, sigma_start, lam, zeta, gen, pad_px)
    out = out.reshape(n_samples, b, *x.shape[-2:]).cpu().numpy().astype(np.float32)
    if single:
        out = out[:, 0]
    spread = out.std(axis=0, ddof=1) if n_samples > 1 else np.zeros_like(out[0])
    return PosteriorSamples(out, out.mean(axis=0), spread.astype(np.float32))


def dc_diffusion_restore(frames: Any, profile: Any, *, dose_ratio: float = 1.0,
                         steps: int = DC_DEFAULTS["steps"],
                         sigma_start: float = DC_DEFAULTS["sigma_start"],
                         lam: float = DC_DEFAULTS["lam"], zeta: float = DC_DEFAULTS["zeta"],
                         seed: int = 0, denoiser: LoadedDenoiser | None = None,
                         pixel_size_um: float | None = None, pad_px: int = PAD_PX) -> Any:
    """One data-consistent diffusion sample per frame (the restoration a live view shows)."""
    phys, dose, den, x, single = _checked(frames, profile, dose_ratio, steps, zeta,
                                          pixel_size_um, denoiser)
    gen = torch.Generator().manual_seed(int(seed))
    out = _sample(x, phys, dose, den, steps, sigma_start, lam, zeta, gen, pad_px)
    from ._fourier import restore_type
    return restore_type(out, frames, single)
