"""Samplers: each a short pure function of (model, observation, schedule).

``model(x, t)`` takes (N, C, H, W) and times (N,) in [0, 1]; observations ``y`` are thick-detector
frames (N, H, W) in transmission units. Time grids run from s = 1 (thick) to s = 0 (thin).
"""
from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch

from ._fourier import crop_frames, pad_frames
from .diffusion import cold_degrade, cosine_alpha_bar, sde_transfer, sde_variance_ratio
from .physics import BLUR_PAD_PX, DetectorPhysics

__all__ = [
    "DEFAULT_STEPS",
    "cold_sample",
    "from_model_range",
    "make_restore_fn",
    "regression_sample",
    "sde_ddim_sample",
    "sr3_ddim_sample",
    "time_grid",
    "to_model_range",
]

Model = Callable[..., torch.Tensor]
Blur = Callable[[torch.Tensor], torch.Tensor]

# Default sampler steps: the papers do not state theirs; these keep a 2048 x 2048 frame within
# a few seconds on a GPU and are overridable per Restorer (frames/s is reported per step count).
DEFAULT_STEPS = {"cold_diffusion": 10, "sde": 10, "sr3": 20}


def time_grid(steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``steps + 1`` decreasing time fractions 1 = s_0 > ... > s_steps = 0."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return torch.linspace(1.0, 0.0, steps + 1, device=device)


def _t(s: torch.Tensor, n: int) -> torch.Tensor:
    return s.reshape(1).expand(n)


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """Transmission 0..1 -> -1..1, the range DDPM noise schedules are designed for."""
    return 2.0 * x - 1.0


def from_model_range(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (z + 1.0)


def regression_sample(model: Model, y: torch.Tensor) -> torch.Tensor:
    """U-Net regression baseline: one forward pass LR -> HR."""
    return model(y[:, None])[:, 0]


def cold_sample(model: Model, y: torch.Tensor, blur: Blur, steps: int) -> torch.Tensor:
    """Cold sampling (Bansal et al. 2023, alg. 2; paper 001 sec. 2.3):
    ``x_{s'} = x_s - D(x0_hat, s) + D(x0_hat, s')`` with ``D(x, s) = (1 - s) x + s blur(x)``,
    starting from the thick frame at s = 1.

    The thick frame is noisy: training blends toward it (``x_s = (1 - s) x0 + s y``), so the
    residual ``x_s - D(x0_hat, s)`` is ``s`` times the frame's noise. It is carried to the next
    step scaled by ``s' / s``, as the forward process has it; carried unscaled (the formula for
    noise-free blur) it would put the input's full noise, unblurred, into the result. For a
    noise-free ``y`` both are the same update.
    """
    grid = time_grid(steps, y.device)
    x = y
    n = y.shape[0]
    for s, s_next in pairwise(grid):
        x0 = model(x[:, None], _t(s, n))[:, 0]
        xb = blur(x0)
        residual = x - cold_degrade(x0, xb, s)
        x = cold_degrade(x0, xb, s_next) + (s_next / s) * residual
    return x


def sde_ddim_sample(model: Model, y: torch.Tensor, ratio_rfft: torch.Tensor, steps: int) -> torch.Tensor:
    """Deterministic DDIM-style sampling of the physics-informed SDE (paper 002 sec. 2.2).

    With ``x0_hat = model([x_s, y], s)`` the noise implied by the forward process is kept and
    re-scaled: ``X_{s'} = B_{s'} X0_hat + sqrt(Sigma_{s'} / Sigma_s) (X_s - B_s X0_hat)``;
    at s' = 0 (B = 1, Sigma = 0) this returns ``x0_hat``. No division by the blur: the network
    predicts x0 directly, the point of the paper's parametrisation. Periodic boundaries.
    """
    grid = time_grid(steps, y.device)
    shape = tuple(y.shape[-2:])
    n = y.shape[0]
    x = y
    for s, s_next in pairwise(grid):
        x0 = model(torch.stack([x, y], dim=1), _t(s, n))[:, 0]
        f_x0 = torch.fft.rfft2(x0)
        f_x = torch.fft.rfft2(x)
        b_s = sde_transfer(ratio_rfft, s, 1)
        b_next = sde_transfer(ratio_rfft, s_next, 1)
        keep = sde_variance_ratio(ratio_rfft, s_next.reshape(1), s.reshape(1))
        x = torch.fft.irfft2(b_next * f_x0 + keep * (f_x - b_s * f_x0), s=shape)
    return x


def sr3_ddim_sample(
    model: Model, y: torch.Tensor, steps: int, generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Conditional DDPM (SR3-like) sampled with deterministic DDIM, eta = 0 (Song et al. 2021).

    The model predicts the noise from ``[z_s, y]`` (both in the -1..1 model range); the start
    ``z_1`` is Gaussian noise drawn from ``generator`` (fixed seed -> reproducible output), or
    ``start`` when given (a reference evaluation with the noise another device drew).
    """
    grid = time_grid(steps, y.device)
    n = y.shape[0]
    cond = to_model_range(y)
    if start is not None:
        z = start.to(device=y.device, dtype=y.dtype)
    else:
        z = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype) \
            if generator is not None else torch.randn_like(y)
    x0 = z
    for s, s_next in pairwise(grid):
        eps = model(torch.stack([z, cond], dim=1), _t(s, n))[:, 0]
        ab = cosine_alpha_bar(s)
        ab_next = cosine_alpha_bar(s_next)
        # Clip x0 to the data range as DDPM sampling does (Ho et al. 2020), with room above
        # the flat (transmission 1 -> model 1) for noise and edge overshoot.
        x0 = ((z - torch.sqrt(1 - ab) * eps) / torch.sqrt(ab)).clamp(-1.5, 1.5)
        z = torch.sqrt(ab_next) * x0 + torch.sqrt(1 - ab_next) * eps
    return from_model_range(x0)


def make_restore_fn(
    method: str,
    model: Model,
    physics: DetectorPhysics,
    steps: int | None = None,
    seed: int = 0,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Bind a learned method's sampler to a model and detector: returns ``fn(y) -> x0_hat`` for
    (N, H, W) thick frames (Fourier samplers work on a reflect-padded copy)."""
    if steps is None:
        steps = DEFAULT_STEPS.get(method, 1)

    if method == "unet":
        return lambda y: regression_sample(model, y)
    if method == "cold_diffusion":
        return lambda y: cold_sample(model, y, physics.blur, steps)
    if method == "sde":

        def run_sde(y: torch.Tensor) -> torch.Tensor:
            yp = pad_frames(y, BLUR_PAD_PX, fast=True)
            ratio = physics.ratio_rfft(tuple(yp.shape[-2:]), y.device)
            out = sde_ddim_sample(model, yp, ratio, steps)
            return crop_frames(out, BLUR_PAD_PX, tuple(y.shape[-2:]))

        return run_sde
    if method == "sr3":

        def run_sr3(y: torch.Tensor) -> torch.Tensor:
            gen = torch.Generator(device=y.device).manual_seed(seed)
            return sr3_ddim_sample(model, y, steps, gen)

        return run_sr3
    raise ValueError(f"no sampler for method {method!r}")
