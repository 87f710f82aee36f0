"""PSF of a thick scintillator relative to a thin one.

- :func:`mtf_ratio`: regularised MTF_LR / MTF_HR on a 1-D frequency grid (papers 000-002: the
  blur between thin and thick detectors is the ratio of their MTFs).
- :func:`psf_from_mtf_ratio`: that radial ratio turned into a 2-D odd square kernel.
- :func:`extract_psf`: PSF_all from a registered thin/thick image pair by Richardson-Lucy
  deconvolution of the thick image by the thin one, truncated to a window that keeps the
  central structure and drops the wide, weak response of sparse defects (paper 004: 8
  iterations, 60 x 60 px window).
- :func:`radial_profile`: 2-D spectrum or kernel -> 1-D radial curve.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from xinstrument.calibration._checks import as_image, positive
from xinstrument.calibration.registration import Registration, register

RL_ITERATIONS = 8  # paper 004, section 3: Lucy-Richardson limited to eight iterations
PSF_WINDOW_PX = 61  # paper 004 truncates to 60 x 60; odd so that the kernel has a centre pixel
MTF_HR_FLOOR = 0.02  # below this the thin detector carries no usable signal; ratio is regularised


def _odd_size(size: int, label: str) -> int:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1 or size % 2 == 0:
        raise ValueError(f"{label} must be an odd positive integer (kernel with a centre pixel), got {size!r}")
    return int(size)


def mtf_ratio(mtf_lr: np.ndarray, mtf_hr: np.ndarray, floor: float = MTF_HR_FLOOR) -> np.ndarray:
    """MTF_LR / MTF_HR, Tikhonov-regularised where MTF_HR approaches ``floor``.

    ratio = MTF_LR * MTF_HR / (MTF_HR^2 + floor^2), clipped to [0, 1]: equal to the plain ratio
    where MTF_HR >> floor, rolling off to 0 where the thin detector has no contrast left.
    """
    lr = np.asarray(mtf_lr, dtype=float)
    hr = np.asarray(mtf_hr, dtype=float)
    if lr.ndim != 1 or lr.shape != hr.shape:
        raise ValueError(f"mtf_lr and mtf_hr must be 1-D of equal length, got {lr.shape} and {hr.shape}")
    if not (np.all(np.isfinite(lr)) and np.all(np.isfinite(hr))):
        raise ValueError("mtf_lr or mtf_hr contains NaN/inf")
    floor = positive(floor, "floor")
    ratio = lr * hr / (hr**2 + floor**2)
    return np.clip(ratio / ratio[0] if ratio[0] > 0 else ratio, 0.0, 1.0)


def psf_from_mtf_ratio(
    frequency_cy_per_px: np.ndarray,
    ratio: np.ndarray,
    size_px: int = PSF_WINDOW_PX,
) -> np.ndarray:
    """2-D kernel (odd square, sums to 1) whose radial MTF is ``ratio``.

    The ratio is interpolated radially on an FFT grid at least 4x the kernel size (frequencies
    beyond the grid end take 0), inverse transformed, centred, cropped and normalised.
    """
    size = _odd_size(size_px, "size_px")
    f = np.asarray(frequency_cy_per_px, dtype=float)
    r = np.asarray(ratio, dtype=float)
    if f.ndim != 1 or f.shape != r.shape or f.size < 2 or np.any(np.diff(f) <= 0) or f[0] != 0:
        raise ValueError("frequency_cy_per_px must be 1-D, start at 0 and increase, with ratio of the same length")
    if not np.all(np.isfinite(r)):
        raise ValueError("ratio contains NaN/inf")
    n = max(256, 4 * size + 1)
    n += 1 - n % 2  # odd grid: the centre pixel is exact
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.fftfreq(n)[None, :]
    otf = np.interp(np.hypot(fy, fx), f, r, right=0.0)
    kernel = np.fft.fftshift(np.fft.ifft2(otf).real)
    c, h = n // 2, size // 2
    kernel = kernel[c - h : c + h + 1, c - h : c + h + 1]
    total = kernel.sum()
    if total <= 0:
        raise ValueError("the MTF ratio gives a kernel with non-positive sum")
    return kernel / total


@dataclass
class PSFExtraction:
    psf: np.ndarray  # odd square, sums to 1, thick = thin (*) psf
    registration: Registration
    iterations: int
    full_estimate: np.ndarray  # untruncated RL estimate (image-sized, centred)


def richardson_lucy_kernel(
    thin: np.ndarray, thick: np.ndarray, iterations: int = RL_ITERATIONS, margin_px: int = 0
) -> np.ndarray:
    """Kernel k >= 0 with thick ~= thin (*) k by Richardson-Lucy (image-sized, centred at n//2).

    The data term ignores a ``margin_px`` border where the circular convolution model does not
    hold (masked RL: update = thin (x) (M thick/est) / thin (x) M).
    """
    a = thin - min(0.0, float(thin.min()))
    b = thick - min(0.0, float(thick.min()))
    shape = a.shape
    mask = np.zeros(shape)
    mask[margin_px : shape[0] - margin_px, margin_px : shape[1] - margin_px] = 1.0
    fa = np.fft.rfft2(a)

    def conv(fk: np.ndarray) -> np.ndarray:
        return np.fft.irfft2(fa * fk, s=shape)

    def corr(x: np.ndarray) -> np.ndarray:
        return np.fft.irfft2(np.conj(fa) * np.fft.rfft2(x), s=shape)

    norm = np.maximum(corr(mask), 1e-12 * float(a.sum()))
    # Start from a Tikhonov-regularised Fourier quotient (non-negative part): RL then only has to
    # refine it, so the few iterations of paper 004 suffice; a flat start needs ~50 here.
    fb = np.fft.rfft2(b * mask + (1 - mask) * float(b[mask > 0].mean()))
    power = np.abs(fa) ** 2
    k = np.fft.irfft2(fb * np.conj(fa) / (power + 4.0 * float(np.median(power))), s=shape)
    k = np.maximum(k, 0.0)
    k = k / k.sum() if k.sum() > 0 else np.full(shape, 1.0 / a.size)
    for _ in range(iterations):
        est = conv(np.fft.rfft2(k))
        ratio = np.where(mask > 0, b / np.maximum(est, 1e-12 * float(b.max())), 0.0)
        k = k * np.maximum(corr(ratio), 0.0) / norm
    # k is indexed by shift (0 at [0,0]); centre it.
    return np.fft.fftshift(k)


def extract_psf(
    thin: np.ndarray,
    thick: np.ndarray,
    window_px: int = PSF_WINDOW_PX,
    iterations: int = RL_ITERATIONS,
    registration: str = "auto",
) -> PSFExtraction:
    """PSF_all such that thick = thin (*) psf, from one thin/thick image pair of the same scene.

    Parameters
    ----------
    thin, thick : 2-D flat-field corrected images of equal size (thin = high-resolution detector).
    window_px : odd truncation window (paper 004 uses 60 x 60; odd sizes keep a centre pixel).
    iterations : Richardson-Lucy iterations (paper 004: 8).
    registration : "auto", "phase", "features" or "none" (already registered).
    """
    window = _odd_size(window_px, "window_px")
    if not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    a = as_image(thin, "thin image", (window + 8, window + 8))
    b = as_image(thick, "thick image", (window + 8, window + 8))
    if a.shape != b.shape:
        raise ValueError(f"thin and thick images have mismatched sizes {a.shape} vs {b.shape}")
    if registration == "none":
        reg = Registration((0.0, 0.0), "none", float("nan"))
    else:
        reg = register(a, b, registration)
        b = ndimage.shift(b, reg.shift_px, order=3, mode="nearest")
    # Drop the border the shift has filled in; RL also ignores half a window at the edges.
    cut = int(np.ceil(max(abs(reg.shift_px[0]), abs(reg.shift_px[1])))) + 1
    a, b = a[cut : a.shape[0] - cut, cut : a.shape[1] - cut], b[cut : b.shape[0] - cut, cut : b.shape[1] - cut]
    if min(a.shape) < window + 8:
        raise ValueError(f"images too small after registration ({a.shape}) for a {window} px PSF window")
    full = richardson_lucy_kernel(a, b, iterations, margin_px=window // 2)
    cy, cx = a.shape[0] // 2, a.shape[1] // 2
    h = window // 2
    psf = full[cy - h : cy + h + 1, cx - h : cx + h + 1].copy()
    # Remove the flat floor RL leaves under the whole kernel (noise, unmatched background):
    # estimated on the window border, where a truncated PSF should have fallen to ~0.
    border = np.concatenate([psf[0], psf[-1], psf[1:-1, 0], psf[1:-1, -1]])
    psf = np.maximum(psf - float(np.median(border)), 0.0)
    total = psf.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("PSF extraction failed: truncated kernel has no positive weight (images unrelated?)")
    return PSFExtraction(psf=psf / total, registration=reg, iterations=int(iterations), full_estimate=full)


def normalized_cross_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Zero-mean normalised cross-correlation of two equally shaped arrays (1 = identical shape)."""
    x = np.asarray(a, float).ravel()
    y = np.asarray(b, float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"arrays have mismatched shapes {np.shape(a)} vs {np.shape(b)}")
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    if den == 0:
        raise ValueError("normalized_cross_correlation: an input is constant")
    return float((x * y).sum() / den)


def radial_profile(
    array_2d: np.ndarray,
    layout: str = "fft",
    full_width: int | None = None,
    bin_width: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Azimuthal average of a 2-D array.

    layout
        "fft": full ``fft2`` layout, DC at [0, 0]; radius in cycles/pixel.
        "rfft": ``rfft2`` half plane; ``full_width`` (image columns) is required; cycles/pixel.
        "centred": spatial kernel or fftshift-ed array, centre at (rows//2, cols//2); radius in px.
    Returns (radius, mean value per bin), bins of ``bin_width`` (default 1/max(rows, cols)
    cycles/pixel, or 1 px for "centred") with centres at 0, w, 2w, ...
    """
    arr = np.asarray(array_2d)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"radial_profile needs a non-empty 2-D array, got shape {arr.shape}")
    if np.iscomplexobj(arr):
        arr = np.abs(arr)
    arr = as_image(np.asarray(arr, dtype=float), "radial_profile input")
    rows, cols = arr.shape
    if layout == "fft":
        r = np.hypot(np.fft.fftfreq(rows)[:, None], np.fft.fftfreq(cols)[None, :])
        w = bin_width or 1.0 / max(rows, cols)
    elif layout == "rfft":
        if full_width is None or full_width // 2 + 1 != cols:
            raise ValueError(f"rfft layout with {cols} columns needs full_width with full_width//2+1 == {cols}")
        r = np.hypot(np.fft.fftfreq(rows)[:, None], np.fft.rfftfreq(full_width)[None, :])
        w = bin_width or 1.0 / max(rows, full_width)
    elif layout == "centred":
        y = np.arange(rows) - rows // 2
        x = np.arange(cols) - cols // 2
        r = np.hypot(y[:, None], x[None, :])
        w = bin_width or 1.0
    else:
        raise ValueError(f"layout must be 'fft', 'rfft' or 'centred', got {layout!r}")
    idx = np.rint(r / w).astype(int).ravel()
    counts = np.bincount(idx)
    sums = np.bincount(idx, weights=arr.ravel())
    have = counts > 0
    radius = np.arange(counts.size) * w
    return radius[have], sums[have] / counts[have]
