"""Sub-pixel registration of thin/thick detector images.

- :func:`phase_correlation`: whitened cross-power spectrum, integer peak, then local upsampled DFT
  refinement (Guizar-Sicairos, Thurman & Fienup, Opt. Lett. 33, 156 (2008)). The thin/thick blur
  is zero-phase (symmetric PSF), so it does not bias the shift.
- :func:`feature_registration`: blob features (difference of Gaussians) in both images,
  displacement voting over all candidate pairs and a median of the consistent matches. Features
  that exist in one image only (sparse scintillator defects) cast scattered votes and lose.
- :func:`register`: phase correlation, falling back to features when the correlation peak is not
  clearly above its side lobes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from xinstrument.calibration._checks import as_image

MIN_SIZE_PX = (16, 16)
PEAK_RATIO_MIN = 2.0  # correlation peak over the next-highest side lobe below which it is ambiguous


@dataclass
class Registration:
    shift_px: tuple[float, float]  # (dy, dx): shift_image(moving, shift_px) aligns it to reference
    method: str
    quality: float  # phase correlation: peak / next side lobe; features: fraction of consistent matches


def _pair(reference: np.ndarray, moving: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = as_image(reference, "reference", MIN_SIZE_PX)
    b = as_image(moving, "moving", MIN_SIZE_PX)
    if a.shape != b.shape:
        raise ValueError(f"reference and moving images have mismatched sizes {a.shape} vs {b.shape}")
    return a, b


def _local_correlation(cross: np.ndarray, shifts_r: np.ndarray, shifts_c: np.ndarray) -> np.ndarray:
    """Correlation sum_k cross(k) exp(2 pi i k.s / N) evaluated at arbitrary shifts (matrix DFT)."""
    rows, cols = cross.shape
    kr = np.fft.fftfreq(rows) * rows
    kc = np.fft.fftfreq(cols) * cols
    er = np.exp(2j * np.pi * np.outer(shifts_r, kr) / rows)
    ec = np.exp(2j * np.pi * np.outer(kc, shifts_c) / cols)
    return (er @ cross @ ec).real


def _tukey(n: int, taper: float = 0.2) -> np.ndarray:
    x = np.linspace(0.0, 1.0, n)
    w = np.ones(n)
    edge = taper / 2
    lo, hi = x < edge, x > 1 - edge
    w[lo] = 0.5 * (1 - np.cos(np.pi * x[lo] / edge))
    w[hi] = 0.5 * (1 - np.cos(np.pi * (1 - x[hi]) / edge))
    return w


def phase_correlation(reference: np.ndarray, moving: np.ndarray, upsample: int = 20) -> Registration:
    """Translation that aligns ``moving`` onto ``reference`` to 1/``upsample`` px."""
    a, b = _pair(reference, moving)
    if not isinstance(upsample, int) or upsample < 1:
        raise ValueError(f"upsample must be a positive integer, got {upsample!r}")
    # Tukey taper (flat centre) against the wrap-around edge step; a full Hann window would
    # weight the two images differently once shifted and bias the shift toward zero.
    win = np.outer(_tukey(a.shape[0]), _tukey(a.shape[1]))
    fa = np.fft.fft2((a - a.mean()) * win)
    fb = np.fft.fft2((b - b.mean()) * win)
    cross = fa * np.conj(fb)
    cross /= np.maximum(np.abs(cross), 1e-12 * np.abs(cross).max() + 1e-300)
    corr = np.fft.ifft2(cross).real
    peak = np.unravel_index(int(np.argmax(corr)), corr.shape)
    top = corr[peak]
    masked = corr.copy()
    r0, c0 = peak
    for dr in range(-2, 3):
        for dc in range(-2, 3):
            masked[(r0 + dr) % corr.shape[0], (c0 + dc) % corr.shape[1]] = -np.inf
    quality = float(top / max(masked.max(), 1e-12))
    peak_signed = np.array([p if p <= n // 2 else p - n for p, n in zip(peak, corr.shape, strict=True)], float)
    shift = peak_signed.copy()
    if upsample > 1:
        # Refine on a 1/upsample grid over +-1 px around the integer peak.
        steps = np.arange(-upsample, upsample + 1) / upsample
        local = _local_correlation(cross, peak_signed[0] + steps, peak_signed[1] + steps)
        lr, lc = np.unravel_index(int(np.argmax(local)), local.shape)
        shift = np.array([peak_signed[0] + steps[lr], peak_signed[1] + steps[lc]])
    return Registration(shift_px=(float(shift[0]), float(shift[1])), method="phase_correlation", quality=quality)


def _blobs(img: np.ndarray, sigma_px: float, count: int) -> np.ndarray:
    dog = ndimage.gaussian_filter(img, sigma_px) - ndimage.gaussian_filter(img, 1.6 * sigma_px)
    points = []
    # Ignore responses at rounding level: a flat image has no features.
    floor = 1e-6 * float(np.ptp(img)) if np.ptp(img) > 0 else np.inf
    for response in (dog, -dog):
        peaks = (response == ndimage.maximum_filter(response, size=int(4 * sigma_px) | 1)) & (response > floor)
        idx = np.argwhere(peaks)
        order = np.argsort(response[peaks])[::-1][:count]
        for r, c in idx[order]:
            # Sub-pixel position from a 3x3 centroid of the response.
            r0, r1 = max(r - 1, 0), min(r + 2, img.shape[0])
            c0, c1 = max(c - 1, 0), min(c + 2, img.shape[1])
            w = np.clip(response[r0:r1, c0:c1], 0, None)
            yy, xx = np.mgrid[r0:r1, c0:c1]
            s = w.sum()
            points.append((float((w * yy).sum() / s), float((w * xx).sum() / s)) if s > 0 else (float(r), float(c)))
    return np.asarray(points, float).reshape(-1, 2)


def feature_registration(
    reference: np.ndarray,
    moving: np.ndarray,
    max_shift_px: float = 32.0,
    feature_sigma_px: float = 3.0,
    max_features: int = 200,
    tolerance_px: float = 1.5,
) -> Registration:
    """Translation from matched blob features, robust to features present in one image only."""
    a, b = _pair(reference, moving)
    pa = _blobs(a, feature_sigma_px, max_features)
    pb = _blobs(b, feature_sigma_px, max_features)
    if len(pa) < 3 or len(pb) < 3:
        raise ValueError(
            f"feature registration: too few features ({len(pa)} in reference, {len(pb)} in moving); "
            "the images carry no structure to match"
        )
    disp = (pa[:, None, :] - pb[None, :, :]).reshape(-1, 2)
    disp = disp[np.all(np.abs(disp) <= max_shift_px, axis=1)]
    if disp.size == 0:
        raise ValueError(f"feature registration: no feature pairs within max_shift_px={max_shift_px}")
    # Vote on a tolerance-sized grid, then refine with the median of the consistent pairs.
    bins = np.round(disp / tolerance_px).astype(int)
    keys, counts = np.unique(bins, axis=0, return_counts=True)
    best = keys[np.argmax(counts)] * tolerance_px
    close = np.all(np.abs(disp - best) <= tolerance_px, axis=1)
    shift = np.median(disp[close], axis=0)
    close = np.all(np.abs(disp - shift) <= 0.5 * tolerance_px, axis=1)
    if close.sum() >= 3:
        shift = np.median(disp[close], axis=0)
    quality = float(close.sum() / min(len(pa), len(pb)))
    return Registration(shift_px=(float(shift[0]), float(shift[1])), method="features", quality=quality)


def register(reference: np.ndarray, moving: np.ndarray, method: str = "auto", upsample: int = 20) -> Registration:
    """Register ``moving`` to ``reference``: "phase", "features", or "auto" (phase, else features)."""
    if method not in ("auto", "phase", "features"):
        raise ValueError(f"method must be 'auto', 'phase' or 'features', got {method!r}")
    if method == "features":
        return feature_registration(reference, moving)
    result = phase_correlation(reference, moving, upsample)
    if method == "phase" or result.quality >= PEAK_RATIO_MIN:
        return result
    try:
        return feature_registration(reference, moving)
    except ValueError:
        return result


def shift_image(image: np.ndarray, shift_px: tuple[float, float]) -> np.ndarray:
    """Translate by (dy, dx) px with a Fourier phase ramp (periodic boundary)."""
    img = as_image(image, "image")
    fy = np.fft.fftfreq(img.shape[0])[:, None]
    fx = np.fft.fftfreq(img.shape[1])[None, :]
    ramp = np.exp(-2j * np.pi * (fy * shift_px[0] + fx * shift_px[1]))
    return np.fft.ifft2(np.fft.fft2(img) * ramp).real
