"""Synthetic detector images with known answers for the calibration tests."""
from __future__ import annotations

import numpy as np
from scipy.special import ndtr

_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)


def slanted_edge(
    shape: tuple[int, int],
    angle_deg: float,
    sigma_px: float,
    low: float = 0.1,
    high: float = 1.0,
    centre_col: float | None = None,
) -> np.ndarray:
    """Pixel-integrated image of a step edge blurred by a Gaussian PSF of ``sigma_px``.

    The edge passes through (row 0 centre, ``centre_col``) with column increasing by
    tan(angle) per row; bright on the right. Integration over each pixel is exact along
    columns (closed form of the integral of the normal CDF) and 8-point Gauss-Legendre along rows.
    """
    rows, cols = shape
    theta = np.radians(angle_deg)
    c, _s = np.cos(theta), np.sin(theta)
    x0 = (cols - 1) / 2.0 - (rows - 1) / 2.0 * np.tan(theta) if centre_col is None else centre_col

    def g(u: np.ndarray) -> np.ndarray:  # antiderivative of the normal CDF
        return u * ndtr(u) + np.exp(-0.5 * u * u) / np.sqrt(2 * np.pi)

    x = np.arange(cols, dtype=float)[None, :]
    out = np.zeros(shape)
    for node, weight in zip(_GL_X, _GL_W, strict=True):
        y = np.arange(rows, dtype=float)[:, None] + 0.5 * node
        k = (y * np.tan(theta) + x0) * c  # d = x*cos - k is the signed distance to the edge
        ua = ((x - 0.5) * c - k) / sigma_px
        ub = ((x + 0.5) * c - k) / sigma_px
        out += 0.5 * weight * sigma_px / c * (g(ub) - g(ua))
    return low + (high - low) * out


def edge_mtf_analytic(f_cy_per_px: np.ndarray, angle_deg: float, sigma_px: float) -> np.ndarray:
    """Gaussian MTF times the square-pixel aperture projected on the edge normal."""
    theta = np.radians(angle_deg)
    return (
        np.exp(-2 * np.pi**2 * sigma_px**2 * f_cy_per_px**2)
        * np.sinc(f_cy_per_px * np.cos(theta))
        * np.sinc(f_cy_per_px * np.sin(theta))
    )


def gaussian_kernel(size: int, sigma_px: float) -> np.ndarray:
    y, x = np.mgrid[: size, : size] - (size - 1) / 2.0
    k = np.exp(-(x**2 + y**2) / (2 * sigma_px**2))
    return k / k.sum()
