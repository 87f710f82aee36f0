"""Forward (degradation) operators of the diffusion methods. Time is the fraction s = t / T in
[0, 1]; s = 0 is the thin-detector image, s = 1 the thick-detector one.

- Cold diffusion (paper 001 eq. 2): ``D_s(x0) = (1 - s) x0 + s x_b``, ``x_b`` the MTF-ratio blur.
- Physics-informed SDE (paper 002 eq. 1-2), in Fourier space:
  ``X_s = B_s X0 + Z sqrt(Sigma_s)``, ``B_s = R^s``, ``Sigma_s = q (1 - B_s^2)``, q the thick
  detector's noise power spectrum.
- SR3 / DDPM (Saharia et al. 2022; Ho et al. 2020): ``z_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) eps``
  with the cosine schedule of Nichol & Dhariwal 2021 (eq. 17).
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "RATIO_FLOOR",
    "cold_degrade",
    "cosine_alpha_bar",
    "sde_forward",
    "sde_transfer",
    "sde_variance_ratio",
    "sr3_forward",
]

# B_s = R^s needs R > 0; ratios below this carry no usable signal and would make log(R) blow up.
RATIO_FLOOR = 1e-4
# Nichol & Dhariwal 2021 eq. 17: offset s = 0.008 keeps beta small near t = 0.
_COSINE_OFFSET = 0.008
# abar is kept inside [1e-5, 1 - 1e-5] so that x0 and noise stay recoverable at both ends.
_ABAR_CLAMP = 1e-5


def _time(s: torch.Tensor | float, n: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(s, dtype=torch.float32, device=device)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"time must be a scalar or shape ({n},), got {tuple(t.shape)}")
    if bool(((t < 0) | (t > 1)).any()):
        raise ValueError("time fraction s must lie in [0, 1]")
    return t


def cold_degrade(x0: torch.Tensor, x_b: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
    """``D_s = (1 - s) x0 + s x_b`` for (B, H, W) images (paper 001 eq. 2 with s = t / T)."""
    t = _time(s, x0.shape[0], x0.device)[:, None, None]
    return (1 - t) * x0 + t * x_b


def sde_transfer(ratio_rfft: torch.Tensor, s: torch.Tensor | float, n: int | None = None) -> torch.Tensor:
    """``B_s = R^s`` on the rfft2 grid, (B, H, Wr); R clamped to [RATIO_FLOOR, 1]."""
    n = 1 if n is None else n
    t = _time(s, n, ratio_rfft.device)[:, None, None]
    r = ratio_rfft.clamp(RATIO_FLOOR, 1.0)
    return torch.exp(t * torch.log(r)[None])


def sde_variance_ratio(ratio_rfft: torch.Tensor, s_to: torch.Tensor, s_from: torch.Tensor) -> torch.Tensor:
    """``sqrt(Sigma_to / Sigma_from) = sqrt((1 - R^(2 s_to)) / (1 - R^(2 s_from)))`` (q cancels).

    Computed with expm1 so that R -> 1 (low frequencies) tends to sqrt(s_to / s_from).
    """
    log_r = torch.log(ratio_rfft.clamp(RATIO_FLOOR, 1.0))[None]
    a = s_to.reshape(-1, 1, 1).to(log_r.dtype)
    b = s_from.reshape(-1, 1, 1).to(log_r.dtype)
    num = -torch.expm1(2 * a * log_r)
    den = -torch.expm1(2 * b * log_r)
    limit = (a / b.clamp(min=1e-12)).expand_as(num)
    ratio = torch.where(den > 1e-7, num / den.clamp(min=1e-12), limit)
    return torch.sqrt(ratio.clamp(min=0))


def sde_forward(
    x0: torch.Tensor,
    s: torch.Tensor | float,
    ratio_rfft: torch.Tensor,
    q_rfft: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample ``x_s`` of the physics-informed SDE for (B, H, W) images (periodic boundaries).

    ``q_rfft``: noise power spectrum (transmission^2 px^2) on the rfft2 grid, (H, Wr) or (B, H, Wr).
    Z is complex Gaussian with the Hermitian symmetry of a real image, generated as the rfft2 of
    unit white noise, whose power spectrum is 1 in the normalisation of this package.
    """
    b = x0.shape[0]
    shape = tuple(x0.shape[-2:])
    bt = sde_transfer(ratio_rfft, _time(s, b, x0.device), b)
    sigma = q_rfft * (1 - bt * bt)
    white = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    spec = bt * torch.fft.rfft2(x0) + torch.sqrt(sigma.clamp(min=0)) * torch.fft.rfft2(white)
    return torch.fft.irfft2(spec, s=shape)


def cosine_alpha_bar(s: torch.Tensor) -> torch.Tensor:
    """Cumulative signal fraction of the cosine schedule at time fraction s (Nichol & Dhariwal
    2021 eq. 17), clamped away from 0 and 1."""
    o = _COSINE_OFFSET
    f = torch.cos((s + o) / (1 + o) * math.pi / 2) ** 2
    f0 = math.cos(o / (1 + o) * math.pi / 2) ** 2
    return (f / f0).clamp(_ABAR_CLAMP, 1 - _ABAR_CLAMP)


def sr3_forward(
    x0: torch.Tensor, s: torch.Tensor | float, noise: torch.Tensor
) -> torch.Tensor:
    """``z_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) eps`` for (B, H, W) (x0 already scaled)."""
    ab = cosine_alpha_bar(_time(s, x0.shape[0], x0.device))[:, None, None]
    return torch.sqrt(ab) * x0 + torch.sqrt(1 - ab) * noise
