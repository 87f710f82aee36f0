"""Image-quality metrics for restoration: PSNR, SSIM (+ map), radial PSD, high-frequency PSD gain.

numpy in, numpy (or float) out; torch is used inside for the filtering. Computed in float64 so
that scores are reproducible to the last printed digit.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["high_frequency_psd_gain", "psnr", "radial_psd", "ssim"]

# SSIM constants and window (Wang et al. 2004, IEEE TIP 13(4), section III-C): Gaussian
# weighting with sigma 1.5 px, K1 = 0.01, K2 = 0.03. Window truncated at 3.5 sigma (11 x 11),
# as in scikit-image's gaussian_weights=True.
SSIM_SIGMA_PX = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_TRUNCATE = 3.5


def _pair(x: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    b = np.asarray(ref.detach().cpu() if isinstance(ref, torch.Tensor) else ref)
    for name, arr in (("x", a), ("ref", b)):
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{name}: dtype {arr.dtype} is not a real numeric type")
        if arr.ndim not in (2, 3) or min(arr.shape) == 0:
            raise ValueError(f"{name}: expected shape (H, W) or (B, H, W), got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: non-finite values (NaN or inf)")
    if a.shape != b.shape:
        raise ValueError(f"x and ref shapes differ: {a.shape} vs {b.shape}")
    return a.astype(np.float64), b.astype(np.float64)


def _check_range(data_range: float) -> float:
    if not (isinstance(data_range, (int, float, np.floating)) and math.isfinite(data_range)
            and data_range > 0):
        raise ValueError(f"data_range must be a finite number > 0, got {data_range!r}")
    return float(data_range)


def psnr(x: Any, ref: Any, data_range: float) -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``.

    (H, W) inputs give a float; (B, H, W) give one value per image. Identical images give inf.
    """
    dr = _check_range(data_range)
    a, b = _pair(x, ref)
    mse = ((a - b) ** 2).mean(axis=(-2, -1))
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(dr * dr / mse)
    return float(out) if a.ndim == 2 else out


def _gaussian_kernel_1d() -> torch.Tensor:
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA_PX + 0.5)
    xs = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (xs / SSIM_SIGMA_PX) ** 2)
    return k / k.sum()


def _gaussian_filter(img: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (N, 1, H, W) with half-sample symmetric boundaries."""
    k = _gaussian_kernel_1d()
    r = (k.numel() - 1) // 2

    def sym_pad(t: torch.Tensor, dim: int) -> torch.Tensor:
        n = t.shape[dim]
        if n >= r:
            head = t.narrow(dim, 0, r).flip(dim)
            tail = t.narrow(dim, n - r, r).flip(dim)
            return torch.cat([head, t, tail], dim)
        # Tiny images: tile the mirrored signal until it is long enough.
        period = torch.cat([t, t.flip(dim)], dim)
        reps = [1] * t.ndim
        reps[dim] = (2 * r + n) // (2 * n) + 2
        long = period.repeat(*reps)
        start = 2 * n * (reps[dim] // 2) - r
        return long.narrow(dim, start, n + 2 * r)

    t = sym_pad(img, 2)
    t = F.conv2d(t, k.view(1, 1, -1, 1))
    t = sym_pad(t, 3)
    return F.conv2d(t, k.view(1, 1, 1, -1))


def ssim(
    x: Any, ref: Any, data_range: float, return_map: bool = False
) -> float | np.ndarray | tuple[Any, np.ndarray]:
    """Structural similarity (Wang et al. 2004) with an 11 x 11 Gaussian window, sigma 1.5 px.

    Local means/variances use population (not sample) statistics; the mean SSIM excludes a
    5-px border, where the window leaves the image (as scikit-image does), while the returned
    map covers the whole image with mirrored boundaries.

    Returns the mean SSIM (float for (H, W), array for (B, H, W)), and with ``return_map`` also
    the SSIM map of the input's shape.
    """
    dr = _check_range(data_range)
    a, b = _pair(x, ref)
    single = a.ndim == 2
    ta = torch.from_numpy(a.reshape(-1, 1, *a.shape[-2:]))
    tb = torch.from_numpy(b.reshape(-1, 1, *b.shape[-2:]))
    c1 = (SSIM_K1 * dr) ** 2
    c2 = (SSIM_K2 * dr) ** 2
    mu_a = _gaussian_filter(ta)
    mu_b = _gaussian_filter(tb)
    var_a = _gaussian_filter(ta * ta) - mu_a**2
    var_b = _gaussian_filter(tb * tb) - mu_b**2
    cov = _gaussian_filter(ta * tb) - mu_a * mu_b
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    smap = smap[:, 0]
    pad = int(SSIM_TRUNCATE * SSIM_SIGMA_PX + 0.5)
    inner = smap[:, pad:-pad, pad:-pad] if min(smap.shape[-2:]) > 2 * pad else smap
    mean = inner.mean(dim=(-2, -1)).numpy()
    smap_np = smap.numpy()
    if single:
        mean_out: float | np.ndarray = float(mean[0])
        smap_np = smap_np[0]
    else:
        mean_out = mean
    return (mean_out, smap_np) if return_map else mean_out


def radial_psd(image: Any, *, detrend: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """1-D radially averaged power spectral density.

    ``PSD(f) = <|DFT(image - mean)|^2> / (H W)`` (transmission^2 px^2), averaged over annuli of
    width 1 / max(H, W) cycles/pixel up to Nyquist and over the batch for (B, H, W) input.

    Returns ``(frequency_cy_per_px, psd)``: bin centres and averages; empty annuli are dropped.
    """
    arr = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"image: dtype {arr.dtype} is not a real numeric type")
    if arr.ndim not in (2, 3) or min(arr.shape) < 2:
        raise ValueError(f"image: expected shape (H, W) or (B, H, W) with sides >= 2, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("image: non-finite values (NaN or inf)")
    t = torch.from_numpy(arr.astype(np.float64).reshape(-1, *arr.shape[-2:]))
    if detrend:
        t = t - t.mean(dim=(-2, -1), keepdim=True)
    h, w = t.shape[-2:]
    spec = torch.fft.rfft2(t)
    power = (spec.real**2 + spec.imag**2).mean(0) / (h * w)
    fy = torch.fft.fftfreq(h, dtype=torch.float64)
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    step = 1.0 / max(h, w)
    nbins = round(0.5 / step)
    idx = torch.round(radius / step).long()
    keep = (idx >= 1) & (idx <= nbins)
    sums = torch.zeros(nbins + 1, dtype=torch.float64).index_add_(0, idx[keep], power[keep])
    counts = torch.zeros(nbins + 1, dtype=torch.float64).index_add_(
        0, idx[keep], torch.ones_like(power[keep])
    )
    freq = torch.arange(nbins + 1, dtype=torch.float64) * step
    ok = counts > 0
    ok[0] = False
    return freq[ok].numpy(), (sums[ok] / counts[ok]).numpy()


def high_frequency_psd_gain(
    restored: Any, reference: Any, band_cy_per_px: tuple[float, float] = (0.25, 0.5)
) -> float:
    """Ratio of the summed radial PSD of ``restored`` to that of ``reference`` inside a band.

    With the thick-detector input as ``reference`` this is the "high-frequency PSD gain"
    (paper 004 reports x8.45 for RL with the measured PSF).
    """
    lo, hi = band_cy_per_px
    if not (0 <= lo < hi <= 0.5 + 1e-12):
        raise ValueError(f"band_cy_per_px must satisfy 0 <= low < high <= 0.5, got {band_cy_per_px}")
    f1, p1 = radial_psd(restored)
    f2, p2 = radial_psd(reference)
    m1 = (f1 >= lo) & (f1 <= hi)
    m2 = (f2 >= lo) & (f2 <= hi)
    if not m1.any() or not m2.any():
        raise ValueError(f"band {band_cy_per_px} contains no frequency bin for these image sizes")
    denom = p2[m2].sum()
    if denom <= 0:
        raise ValueError("reference has zero power in the band")
    return float(p1[m1].sum() / denom)
