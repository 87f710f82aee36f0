"""Classical restoration of thick-scintillator frames: Wiener, regularised MTF-ratio inverse,
Richardson-Lucy.

All functions take flat-field-corrected frames in transmission units, (H, W) or (B, H, W), as
numpy arrays (numpy float32 comes back) or torch tensors (a tensor comes back, on the same
device). Work is done in float32 on torch with reflect padding and ``rfft2``.

Degradation model (DESIGN.md section 1; paper 001 eq. 1): the thick (LR) frame is
``y = F^-1[R . F{x}] + n`` with ``R = MTF_LR / MTF_HR`` (radial, cycles/pixel) and ``n`` the thick
detector's quantum noise, whose power spectrum at mean transmission T is ``NNPS_LR(f) * T`` for a
flat acquired at the calibration dose (NNPS of a Poisson-like process scales as 1 / quanta, and
quanta behind the sample scale as T).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ._fourier import (
    as_batch,
    crop_frames,
    pad_frames,
    radial_frequency_rfft2,
    radial_transfer_rfft2,
    restore_type,
)

__all__ = [
    "DEFAULT_PAD_PX",
    "mtf_ratio_inverse",
    "power_law_signal_fit",
    "richardson_lucy",
    "wiener",
    "wiener_filter",
]

# Reflect padding for the Fourier methods: wider than the half-width of the blur so that
# wrap-around from the opposite edge does not reach the frame (the thick/thin PSFs of the shipped
# profiles fall below 1e-3 of peak within ~15 px).
DEFAULT_PAD_PX = 32

# Power-law exponents of object power spectra S(f) ~ f^-beta: natural scenes and man-made
# objects lie around beta = 2 (Field 1987; van der Schaaf & van Hateren 1996 report 1.6-3);
# the fit is clamped to [1, 4] so that a frame dominated by noise cannot produce a wild prior.
POWER_LAW_BETA_RANGE = (1.0, 4.0)
POWER_LAW_BETA_FALLBACK = 2.0
_FIT_BINS = 48
# A bin enters the fit only where the measured power clearly exceeds the noise and the blur has
# not yet erased the signal; below these the ratio (P - N) / R^2 is dominated by estimation error.
_FIT_MIN_SNR = 2.0
_FIT_MIN_TRANSFER = 0.05
_EPS = 1e-12
# Parametric Wiener weight alpha on N/S (Lim 1990, "Two-Dimensional Signal and Image
# Processing", sec. 9.2.4): alpha = 1 is the stationary MMSE filter, but X-ray frames of PCBs are
# mostly flat regions where a stationary signal model over-trusts the signal and the filter
# paints amplified noise there. On PCB-like synthetic scenes alpha = 10 stayed within 0.2 dB of
# the best PSNR of the sweep (1, 3, 10, 30) while raising SSIM above the blurred input at all
# tested noise levels; alpha = 1 lowered SSIM by 0.1-0.2.
DEFAULT_WIENER_ALPHA = 10.0


def wiener_filter(
    frames: Any,
    transfer_rfft: Any,
    nsr_rfft: Any,
    *,
    pad_px: int = 0,
) -> Any:
    """Apply ``G = conj(H) / (|H|^2 + NSR)`` on the rfft2 grid of the padded frames.

    Parameters
    ----------
    frames : (H, W) or (B, H, W) frames.
    transfer_rfft : H on the rfft2 grid of the padded frame, shape (H + 2 pad, (W + 2 pad)//2 + 1),
        real or complex (a PSF's OTF).
    nsr_rfft : noise-to-signal power ratio, scalar, or broadcastable to (B, H', W'//2 + 1).
    pad_px : reflect padding on each side; 0 means periodic boundaries.
    """
    x, single = as_batch(frames)
    xp = pad_frames(x, pad_px)
    hp, wp = xp.shape[-2:]
    h = torch.as_tensor(transfer_rfft, device=x.device)
    if h.shape[-2:] != (hp, wp // 2 + 1):
        raise ValueError(
            f"transfer_rfft: shape {tuple(h.shape)} does not match the rfft2 grid {(hp, wp // 2 + 1)}"
            f" of the padded frame"
        )
    nsr = torch.as_tensor(nsr_rfft, device=x.device, dtype=torch.float32)
    if not bool(torch.isfinite(nsr).all()) or bool((nsr < 0).any()):
        raise ValueError("nsr_rfft: must be finite and >= 0")
    if not bool(torch.isfinite(h).all()):
        raise ValueError("transfer_rfft: non-finite values")
    if h.is_complex():
        h = h.to(torch.complex64)
        gain = h.conj() / (h.real**2 + h.imag**2 + nsr + _EPS)
    else:
        h = h.to(torch.float32)
        gain = h / (h * h + nsr + _EPS)
    out = torch.fft.irfft2(torch.fft.rfft2(xp) * gain, s=(hp, wp))
    return restore_type(crop_frames(out, pad_px, tuple(x.shape[-2:])), frames, single)


def power_law_signal_fit(
    power: torch.Tensor,
    radius_cy_per_px: torch.Tensor,
    transfer: torch.Tensor,
    noise_psd: torch.Tensor,
    band_cy_per_px: tuple[float, float] = (0.02, 0.5),
    noise_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``S(f) = A f^-beta`` to the object spectrum behind a blurred, noisy frame.

    The radially averaged measured power P(f) = R(f)^2 S(f) + N(f) gives S = (P - N) / R^2 in the
    bins where P > 2 N and R > 0.05 inside ``band_cy_per_px``; a straight line in log-log through
    those bins gives A and beta (clamped to ``POWER_LAW_BETA_RANGE``). With fewer than three
    usable bins beta falls back to 2 and only A is fitted.

    Parameters are tensors on the rfft2 grid: ``power`` (B, H, Wr), ``radius_cy_per_px`` and
    ``transfer`` (H, Wr), ``noise_psd`` (H, Wr) or (B, H, Wr), optionally multiplied per frame by
    ``noise_scale`` (B,). Returns ``(log_amplitude, beta)``, each of shape (B,).
    """
    bins = _RadialBins(radius_cy_per_px)
    p = bins.mean(power)
    n = bins.mean(noise_psd)
    if noise_scale is not None:
        n = n * noise_scale.to(torch.float64).reshape(-1, 1)
    return _fit_binned(p, n, bins.mean(transfer.abs()), bins.mean(radius_cy_per_px), bins.counts,
                       band_cy_per_px)


class _RadialBins:
    """Annular bins of an rfft2 grid (``_FIT_BINS`` up to Nyquist): index map and counts."""

    def __init__(self, radius_cy_per_px: torch.Tensor) -> None:
        nbins = _FIT_BINS
        idx = torch.floor(radius_cy_per_px / 0.5 * nbins).long()
        # DC and the corners beyond Nyquist go to a spare bin that is dropped (no boolean
        # indexing: index_add over all pixels is several times faster on 2048 x 2048 grids).
        self.flat_idx = torch.where((radius_cy_per_px > 0) & (idx < nbins), idx, nbins).reshape(-1)
        counts = torch.zeros(nbins + 1, dtype=torch.float64, device=radius_cy_per_px.device)
        counts.index_add_(0, self.flat_idx, torch.ones_like(self.flat_idx, dtype=torch.float64))
        self.counts = counts[:nbins]

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """Per-bin mean of (H, Wr) or (B, H, Wr), as (B, nbins) float64 (B = 1 for 2-D)."""
        if t.ndim == 2:
            t = t.unsqueeze(0)
        nbins = _FIT_BINS
        # float32 sums over <= 1e5 px per annulus are accurate to ~1e-4, ample for a fit.
        vals = t.reshape(t.shape[0], -1).to(torch.float32)
        sums = torch.zeros(t.shape[0], nbins + 1, dtype=torch.float32, device=t.device)
        sums.index_add_(1, self.flat_idx, vals)
        return sums[:, :nbins].double() / self.counts.clamp(min=1)


def _fit_binned(
    p: torch.Tensor,
    n: torch.Tensor,
    r: torch.Tensor,
    f: torch.Tensor,
    counts: torch.Tensor,
    band_cy_per_px: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The power-law fit of :func:`power_law_signal_fit` on radially binned spectra (B, nbins)."""
    f_lo, f_hi = band_cy_per_px
    b, nbins = p.shape
    n = n.expand(b, nbins)
    r = r.expand(b, nbins)
    f = f.expand(b, nbins)
    counts = counts.expand(b, nbins)
    s = (p - n) / (r * r).clamp(min=_EPS)
    ok = (
        (counts > 0)
        & (p > _FIT_MIN_SNR * n)
        & (r > _FIT_MIN_TRANSFER)
        & (f >= f_lo)
        & (f <= f_hi)
        & (s > 0)
    )
    logf = torch.log(f.clamp(min=_EPS))
    logs = torch.log(s.clamp(min=_EPS))
    w = ok.to(torch.float64)
    nw = w.sum(1)
    mx = (w * logf).sum(1) / nw.clamp(min=1)
    my = (w * logs).sum(1) / nw.clamp(min=1)
    sxx = (w * (logf - mx[:, None]) ** 2).sum(1)
    sxy = (w * (logf - mx[:, None]) * (logs - my[:, None])).sum(1)
    slope = torch.where(sxx > 0, sxy / sxx.clamp(min=_EPS), torch.full_like(sxx, -POWER_LAW_BETA_FALLBACK))
    beta = (-slope).clamp(*POWER_LAW_BETA_RANGE)
    beta = torch.where(nw >= 3, beta, torch.full_like(beta, POWER_LAW_BETA_FALLBACK))
    log_amp = my + beta * mx
    # No usable bin at all: the frame is pure noise at every frequency; take the signal equal to
    # the measured low-frequency power so the filter passes the lowest frequencies only.
    fallback = torch.log(p[:, 0].clamp(min=_EPS)) + beta * logf[:, 0]
    log_amp = torch.where(nw > 0, log_amp, fallback)
    return log_amp, beta


class _WienerPlan:
    """Everything of :func:`wiener` that depends only on the profile curves and the padded frame
    shape, computed once: the real-time stage restores frames of one size with one profile."""

    def __init__(self, f: np.ndarray, ratio: np.ndarray, nnps: np.ndarray,
                 shape: tuple[int, int], device: torch.device) -> None:
        r = radial_transfer_rfft2(f, ratio, shape, device, "mtf_ratio").to(torch.float32)
        nnps_2d = radial_transfer_rfft2(f, nnps, shape, device, "nnps_lr")
        radius = radial_frequency_rfft2(shape, device)
        self.bins = _RadialBins(radius)
        self.binned_ratio = self.bins.mean(r.abs())
        self.binned_nnps = self.bins.mean(nnps_2d)
        self.binned_radius = self.bins.mean(radius)
        self.ratio = r
        self.ratio_sq = r * r + _EPS
        # The DC bin has f = 0; use half a frequency step so S stays finite (NSR there is ~0).
        self.log_f = torch.log(radius.clamp(min=0.5 / max(shape))).to(torch.float32)
        # Where the NNPS is 0 the noise term vanishes: exp(log(tiny)) ~ 0.
        self.log_nnps = torch.log(nnps_2d.double().clamp(min=1e-30)).to(torch.float32)


def _wiener_plan(f: Any, ratio: Any, nnps: np.ndarray, shape: tuple[int, int],
                 device: torch.device) -> _WienerPlan:
    fa = np.ascontiguousarray(f, dtype=np.float64)
    ra = np.ascontiguousarray(ratio, dtype=np.float64)
    na = np.ascontiguousarray(nnps, dtype=np.float64)
    return _cached_plan(fa.tobytes(), ra.tobytes(), na.tobytes(), int(shape[0]), int(shape[1]),
                        str(torch.device(device)))


@lru_cache(maxsize=8)
def _cached_plan(f_bytes: bytes, r_bytes: bytes, n_bytes: bytes, h: int, w: int,
                 device: str) -> _WienerPlan:
    def arr(b: bytes) -> np.ndarray:
        return np.frombuffer(b, dtype=np.float64).copy()

    return _WienerPlan(arr(f_bytes), arr(r_bytes), arr(n_bytes), (h, w), torch.device(device))


def wiener(
    frames: Any,
    frequency_cy_per_px: Any,
    mtf_ratio: Any,
    nnps_lr: Any,
    *,
    dose_ratio: float = 1.0,
    alpha: float = DEFAULT_WIENER_ALPHA,
    pad_px: int = DEFAULT_PAD_PX,
    fit_band_cy_per_px: tuple[float, float] = (0.02, 0.5),
) -> Any:
    """Wiener deconvolution of thick-detector frames toward the thin detector.

    ``G(f) = R(f) / (R(f)^2 + alpha N(f) / S(f))`` with R the MTF ratio (MTF_LR / MTF_HR), N the noise
    power spectrum ``NNPS_LR(f) * T_mean / dose_ratio`` (transmission^2 px^2) and S a power-law
    object spectrum fitted to each frame's own radial spectrum (:func:`power_law_signal_fit`).
    The power law is chosen over a direct spectrum estimate because it extrapolates smoothly into
    the high-frequency band where the measured spectrum is noise, and it adapts to each sample
    (a resolution chart and a PCB have different slopes).

    Parameters
    ----------
    frames : (H, W) or (B, H, W) transmission frames.
    frequency_cy_per_px, mtf_ratio, nnps_lr : 1-D radial curves of the detector profile (NNPS in
        px^2, measured on a flat).
    dose_ratio : mean detected quanta per pixel of these frames' flat divided by the profile's
        ``nnps_mean_signal`` (more dose -> proportionally less noise power).
    alpha : weight on the noise-to-signal ratio (parametric Wiener); 1 gives the MMSE filter.
    pad_px : reflect padding on each side.
    fit_band_cy_per_px : frequency band used for the power-law fit.
    """
    x, single = as_batch(frames)
    if not (isinstance(dose_ratio, (int, float)) and math.isfinite(dose_ratio) and dose_ratio > 0):
        raise ValueError(f"dose_ratio must be a finite number > 0, got {dose_ratio!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if nnps_lr is None:
        raise ValueError("wiener needs the profile's NNPS (nnps_lr); this profile has none")
    nnps = np.asarray(nnps_lr, dtype=np.float64)
    if nnps.ndim == 1 and np.any(nnps < 0):
        raise ValueError("nnps_lr: negative noise power")
    xp = pad_frames(x, pad_px, fast=True)
    shape = tuple(xp.shape[-2:])
    plan = _wiener_plan(frequency_cy_per_px, mtf_ratio, nnps, shape, x.device)
    noise_scale = x.mean(dim=(-2, -1)).clamp(min=0) / dose_ratio
    spec = torch.fft.rfft2(xp)
    power = (spec.real**2 + spec.imag**2) / (shape[0] * shape[1])
    p = plan.bins.mean(power)
    n = plan.binned_nnps * noise_scale.to(torch.float64).reshape(-1, 1)
    log_amp, beta = _fit_binned(p, n, plan.binned_ratio, plan.binned_radius, plan.bins.counts,
                                fit_band_cy_per_px)
    # NSR = alpha * noise_scale * NNPS / S with S = A f^-beta, evaluated as one exp over the
    # grid: log NSR = log(alpha noise_scale) - log A + beta log f + log NNPS.
    log_c = (math.log(alpha) + torch.log(noise_scale.double().clamp(min=_EPS)) - log_amp).float()
    nsr = torch.exp(log_c[:, None, None] + beta.float()[:, None, None] * plan.log_f + plan.log_nnps)
    # The frame mean is estimated from every pixel's quanta: never noise-limited, pass it as is.
    nsr[..., 0, 0] = 0.0
    gain = plan.ratio / (plan.ratio_sq + nsr)
    out = torch.fft.irfft2(spec * gain, s=shape)
    return restore_type(crop_frames(out, pad_px, tuple(x.shape[-2:])), frames, single)


def mtf_ratio_inverse(
    frames: Any,
    frequency_cy_per_px: Any,
    mtf_ratio: Any,
    *,
    regularization: float = 1e-2,
    pad_px: int = DEFAULT_PAD_PX,
) -> Any:
    """Tikhonov-regularised inverse of the MTF ratio: ``G = R / (R^2 + regularization)``.

    ``regularization`` is the constant noise-to-signal power ratio; 1e-2 caps the gain at 5x
    (max of R / (R^2 + a) is 1 / (2 sqrt(a))), enough to restore the ratio down to ~0.1.
    """
    if not (isinstance(regularization, (int, float)) and math.isfinite(regularization)
            and regularization > 0):
        raise ValueError(f"regularization must be a finite number > 0, got {regularization!r}")
    x, single = as_batch(frames)
    xp = pad_frames(x, pad_px, fast=True)
    shape = tuple(xp.shape[-2:])
    ratio = radial_transfer_rfft2(frequency_cy_per_px, mtf_ratio, shape, x.device, "mtf_ratio")
    gain = ratio / (ratio * ratio + float(regularization))
    # The frame mean is not noise-limited; regularising it would bias transmission by 1/(1 + a).
    gain[0, 0] = 1.0 / ratio[0, 0].clamp(min=_EPS)   # on the device: no host sync per frame
    out = torch.fft.irfft2(torch.fft.rfft2(xp) * gain, s=shape)
    return restore_type(crop_frames(out, pad_px, tuple(x.shape[-2:])), frames, single)


def _check_psf(psf: Any) -> np.ndarray:
    k = psf.detach().cpu().numpy() if isinstance(psf, torch.Tensor) else np.asarray(psf)
    if k.dtype.kind not in "fiu":
        raise TypeError(f"psf: dtype {k.dtype} is not a real numeric type")
    k = k.astype(np.float64)
    if k.ndim != 2 or k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
        raise ValueError(f"psf: must be 2-D with odd sides (centre pixel defined), got {k.shape}")
    if not np.isfinite(k).all() or np.any(k < 0):
        raise ValueError("psf: must be finite and non-negative")
    total = k.sum()
    if total <= 0:
        raise ValueError("psf: sums to zero")
    return k / total


def psf_otf_rfft2(psf: Any, shape: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Optical transfer function of a centred odd PSF on the rfft2 grid of ``shape`` (complex64)."""
    k = _check_psf(psf)
    kh, kw = k.shape
    if kh > shape[0] or kw > shape[1]:
        raise ValueError(f"psf {k.shape} larger than the (padded) frame {shape}")
    grid = torch.zeros(shape, dtype=torch.float64, device=device)
    grid[:kh, :kw] = torch.as_tensor(k, device=device)
    grid = torch.roll(grid, shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))
    return torch.fft.rfft2(grid).to(torch.complex64)


# Exponent of White's damping function (White 1994, damped Richardson-Lucy as in IRAF/STSDAS).
_DAMPING_EXPONENT = 10


def richardson_lucy(
    frames: Any,
    psf: Any,
    *,
    iterations: int = 8,
    damping_threshold: float | None = None,
    pad_px: int | None = None,
) -> Any:
    """Richardson-Lucy deconvolution with a measured PSF (paper 004: 8 iterations).

    ``u <- u * (psf_mirror (*) (y / (psf (*) u)))``, starting from a flat image at the frame
    mean (from iteration 1 on identical to any flat start). Convolutions are FFT products on the
    reflect-padded frame.

    Parameters
    ----------
    frames : (H, W) or (B, H, W) transmission frames (>= 0; small negative noise is clipped for
        the ratio).
    psf : 2-D, odd sides, non-negative; normalised to sum 1 here.
    iterations : fixed number of iterations.
    damping_threshold : None for plain RL; otherwise White's damped RL: where the model already
        matches the data within about this many transmission units the update is suppressed, so
        noise is not fitted (typically 2-3 noise sigmas).
    pad_px : reflect padding; default the PSF's larger side.
    """
    if not isinstance(iterations, (int, np.integer)) or isinstance(iterations, bool) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    if damping_threshold is not None and not (
        isinstance(damping_threshold, (int, float)) and math.isfinite(damping_threshold)
        and damping_threshold > 0
    ):
        raise ValueError(f"damping_threshold must be None or a number > 0, got {damping_threshold!r}")
    x, single = as_batch(frames)
    k = _check_psf(psf)
    pad = int(max(k.shape)) if pad_px is None else int(pad_px)
    y = pad_frames(x, pad, fast=True).clamp(min=0)
    shape = tuple(y.shape[-2:])
    otf = psf_otf_rfft2(k, shape, x.device)
    otf_conj = otf.conj()

    def conv(img: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(img) * h, s=shape)

    u = y.mean(dim=(-2, -1), keepdim=True).expand_as(y).clone()
    for _ in range(int(iterations)):
        blurred = conv(u, otf)
        if damping_threshold is None:
            rel = y / (blurred + _EPS)
        else:
            b = blurred.clamp(min=_EPS)
            # White (1994) damping, with the Poisson deviance replaced by its Gaussian limit
            # ((y - b) / threshold)^2 because frames are in transmission, not counts.
            big_u = ((y - b) / damping_threshold) ** 2
            big_u = big_u.clamp(max=1.0)
            nexp = _DAMPING_EXPONENT
            damp = big_u ** (nexp - 1) * (nexp - (nexp - 1) * big_u)
            rel = 1.0 + damp * (y - b) / b
        u = u * conv(rel, otf_conj)
    return restore_type(crop_frames(u, pad, tuple(x.shape[-2:])), frames, single)
