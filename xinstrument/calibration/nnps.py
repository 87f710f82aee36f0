"""Normalised noise power spectrum, IEC 62220-1-1:2015 style.

Flat-field images are cut into ROIs (default 256 x 256 px, overlapping by half), each ROI is
detrended by a fitted second-order 2-D polynomial (removes heel effect and shading), and

    NPS(u, v) = dx * dy / (Nx * Ny) * < |DFT(ROI - fit)|^2 >,   NNPS = NPS / mean^2

with dx = dy = 1 px (units px^2 against cycles/pixel) or dx = dy = pixel pitch in mm (mm^2
against cycles/mm). The 1-D NNPS averages the 7 rows and 7 columns on either side of the
frequency axes, excluding the axes themselves (IEC 62220-1), binned by radial frequency.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xinstrument.calibration._checks import as_image, positive

ROI_SIZE_PX = 256  # IEC 62220-1-1
AXIS_LINES = 7  # lines on each side of an axis used for the 1-D cut (IEC 62220-1-1)


@dataclass
class NNPSResult:
    frequency_cy_per_px: np.ndarray  # 1-D bin centres
    nnps_px2: np.ndarray  # 1-D NNPS in px^2
    frequency_cy_per_mm: np.ndarray
    nnps_mm2: np.ndarray
    nnps_2d_px2: np.ndarray  # fftshift-ed 2-D NNPS, DC at (roi//2, roi//2)
    mean_signal: float
    n_rois: int
    roi_size_px: int
    pixel_size_um: float


def _poly2_basis(n: int) -> np.ndarray:
    y, x = np.mgrid[:n, :n] / (n - 1.0) - 0.5
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1).reshape(-1, 6)


def _as_stack(images: np.ndarray | Sequence[np.ndarray], roi_size_px: int) -> list[np.ndarray]:
    if isinstance(images, np.ndarray) and images.ndim == 3:
        frames = [images[i] for i in range(images.shape[0])]
    elif isinstance(images, np.ndarray):
        frames = [images]
    else:
        frames = list(images)
    if not frames:
        raise ValueError("flat images: got an empty list")
    out = [as_image(f, f"flat image {i}", (roi_size_px, roi_size_px)) for i, f in enumerate(frames)]
    if any(f.shape != out[0].shape for f in out):
        raise ValueError(f"flat images: mismatched sizes {sorted({f.shape for f in out})}")
    return out


def nnps(
    flat_images: np.ndarray | Sequence[np.ndarray],
    pixel_size_um: float,
    roi_size_px: int = ROI_SIZE_PX,
    dark: np.ndarray | None = None,
) -> NNPSResult:
    """NNPS of linear (offset-corrected) flat-field images.

    Parameters
    ----------
    flat_images : one 2-D flat, a (n, rows, cols) stack, or a list of equally sized flats.
    pixel_size_um : pixel pitch at the scintillator, for the mm^2 / cycles-per-mm outputs.
    roi_size_px : ROI edge length (even, >= 16); ROIs overlap by half.
    dark : optional dark frame subtracted from every flat (same shape).
    """
    pixel_size_um = positive(pixel_size_um, "pixel_size_um")
    if not isinstance(roi_size_px, (int, np.integer)) or roi_size_px < 16 or roi_size_px % 2:
        raise ValueError(f"roi_size_px must be an even integer >= 16, got {roi_size_px!r}")
    frames = _as_stack(flat_images, roi_size_px)
    if dark is not None:
        d = as_image(dark, "dark")
        if d.shape != frames[0].shape:
            raise ValueError(f"dark has shape {d.shape}, flats have {frames[0].shape}")
        frames = [f - d for f in frames]
    n = int(roi_size_px)
    step = n // 2
    basis = _poly2_basis(n)
    pinv = np.linalg.pinv(basis)
    power = np.zeros((n, n))
    means: list[float] = []
    count = 0
    for f in frames:
        for r0 in range(0, f.shape[0] - n + 1, step):
            for c0 in range(0, f.shape[1] - n + 1, step):
                roi = f[r0 : r0 + n, c0 : c0 + n]
                coef = pinv @ roi.ravel()
                trend = (basis @ coef).reshape(n, n)
                means.append(float(roi.mean()))
                power += np.abs(np.fft.fft2(roi - trend)) ** 2
                count += 1
    mean_signal = float(np.mean(means))
    if mean_signal <= 0:
        raise ValueError(f"flat images: mean signal {mean_signal:.4g} is not positive (dark-corrected flats expected)")
    nps_px2 = power / (count * n * n)  # dx = dy = 1 px
    nnps2d = nps_px2 / mean_signal**2

    f = np.fft.fftfreq(n)
    lines = np.r_[1 : AXIS_LINES + 1, -AXIS_LINES:0]
    # Rows adjacent to the u axis (v = +-1..7) and columns adjacent to the v axis.
    fu = np.concatenate([np.broadcast_to(f[None, :], (lines.size, n)).ravel(),
                         np.broadcast_to(f[lines][:, None], (lines.size, n)).ravel()])
    fv = np.concatenate([np.broadcast_to(f[lines][:, None], (lines.size, n)).ravel(),
                         np.broadcast_to(f[None, :], (lines.size, n)).ravel()])
    vals = np.concatenate([nnps2d[lines, :].ravel(), nnps2d[:, lines].T.ravel()])
    radius = np.hypot(fu, fv)
    bin_width = 1.0 / n
    edges = np.arange(0.0, 0.5 + bin_width, bin_width) + bin_width / 2
    centres = 0.5 * (edges[:-1] + edges[1:])
    idx = np.digitize(radius, edges) - 1
    good = (idx >= 0) & (idx < centres.size)
    counts = np.bincount(idx[good], minlength=centres.size)
    sums = np.bincount(idx[good], weights=vals[good], minlength=centres.size)
    have = counts > 0
    centres, one_d = centres[have], sums[have] / counts[have]
    pixel_mm = pixel_size_um / 1000.0
    return NNPSResult(
        frequency_cy_per_px=centres,
        nnps_px2=one_d,
        frequency_cy_per_mm=centres / pixel_mm,
        nnps_mm2=one_d * pixel_mm**2,
        nnps_2d_px2=np.fft.fftshift(nnps2d),
        mean_signal=mean_signal,
        n_rois=count,
        roi_size_px=n,
        pixel_size_um=pixel_size_um,
    )


def resample_curve(frequency: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Linear interpolation onto ``grid``; beyond the ends the nearest value is held."""
    return np.interp(np.asarray(grid, float), np.asarray(frequency, float), np.asarray(values, float))


def remove_fixed_pattern(flat_images: np.ndarray) -> np.ndarray:
    """Temporal noise of a flat stack, on the stack's mean level.

    Returns ``mean + (f_i - f_bar) * sqrt(n / (n - 1))`` for each flat ``f_i`` of the
    (n, rows, cols) stack, where ``f_bar`` is the per-pixel mean over the stack and ``mean`` its
    spatial mean: the fixed pattern (gain and offset non-uniformity, shading) cancels, which is
    what flat-field correction does to measured images, and the factor restores the variance that
    subtracting the n-frame mean removes (each residual keeps (n-1)/n of it).
    """
    stack = np.asarray(flat_images, dtype=float)
    if stack.ndim != 3 or stack.shape[0] < 2:
        raise ValueError(f"removing the fixed pattern needs a stack of at least 2 flats, got shape {stack.shape}")
    n = stack.shape[0]
    f_bar = stack.mean(axis=0)
    return float(f_bar.mean()) + (stack - f_bar) * np.sqrt(n / (n - 1.0))
