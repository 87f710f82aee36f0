"""Contrast transfer function from bar patterns and the CTF <-> MTF relations.

A bar (square-wave) target of fundamental frequency f has the Fourier series
(4/pi) sum_k (-1)^((k-1)/2) cos(2 pi k f x) / k over odd k, so for a linear system

    CTF(f) = 4/pi [MTF(f) - MTF(3f)/3 + MTF(5f)/5 - MTF(7f)/7 + ...]

and the inverse is Coltman's series (J. W. Coltman, JOSA 44, 468 (1954)):

    MTF(f) = pi/4 sum_k B_k CTF(k f) / k,  k odd,
    B_k = (-1)^m (-1)^((k-1)/2) for square-free k with m prime factors, 0 otherwise
    (MTF = pi/4 [C(f) + C(3f)/3 - C(5f)/5 + C(7f)/7 + C(11f)/11 - C(13f)/13 - C(15f)/15 + ...]).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.signal import find_peaks

from xinstrument.calibration._checks import as_image, positive

SERIES_TERMS = 50  # odd harmonics summed; beyond the last measured frequency values are 0


def _coltman_coefficient(k: int) -> float:
    m, n, p = 0, k, 3
    while p * p <= n:
        if n % p == 0:
            n //= p
            if n % p == 0:
                return 0.0  # repeated prime factor
            m += 1
        p += 2
    if n > 1:
        m += 1
    return float((-1) ** m * (-1) ** ((k - 1) // 2))


def _check_curve(frequency: np.ndarray, values: np.ndarray, label: str) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(frequency, dtype=float)
    v = np.asarray(values, dtype=float)
    if f.ndim != 1 or f.shape != v.shape or f.size < 2:
        raise ValueError(f"{label}: frequency and values must be 1-D of equal length >= 2, got {f.shape} and {v.shape}")
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(v))):
        raise ValueError(f"{label}: frequency or values contain NaN/inf")
    if np.any(np.diff(f) <= 0) or f[0] < 0:
        raise ValueError(f"{label}: frequency must be non-negative and strictly increasing")
    return f, v


def _sample(f: np.ndarray, v: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.interp(x, f, v, right=0.0)


def ctf_from_mtf(frequency: np.ndarray, mtf: np.ndarray, terms: int = SERIES_TERMS) -> np.ndarray:
    """Square-wave response (CTF) on ``frequency`` from an MTF on the same grid."""
    f, m = _check_curve(frequency, mtf, "ctf_from_mtf")
    out = np.zeros_like(f)
    for j in range(terms):
        k = 2 * j + 1
        out += (-1) ** j * _sample(f, m, k * f) / k
    return 4.0 / np.pi * out


def mtf_from_ctf(frequency: np.ndarray, ctf: np.ndarray, terms: int = SERIES_TERMS) -> np.ndarray:
    """Coltman's series: MTF on ``frequency`` from a CTF measured on the same grid.

    CTF beyond the last measured frequency is taken as 0 (bars no longer resolved).
    """
    f, c = _check_curve(frequency, ctf, "mtf_from_ctf")
    out = np.zeros_like(f)
    for j in range(terms):
        k = 2 * j + 1
        b = _coltman_coefficient(k)
        if b:
            out += b * _sample(f, c, k * f) / k
    return np.pi / 4.0 * out


def michelson_contrast(
    bars: np.ndarray,
    period_px: float | None = None,
    axis: int = 1,
    name: str = "bar ROI",
) -> float:
    """Michelson contrast (Imax - Imin)/(Imax + Imin) of a bar group.

    ``bars`` is a 2-D ROI with bars perpendicular to ``axis`` (averaged along the bars) or a 1-D
    profile across them. Imax/Imin are the means of the profile's local maxima/minima (peaks at
    least 0.6 period apart when ``period_px`` is given), so noise spikes do not inflate contrast.
    """
    arr = np.asarray(bars) if isinstance(bars, np.ndarray) else bars
    if isinstance(arr, np.ndarray) and arr.ndim == 1:
        profile = as_image(arr[None, :], name, (1, 3))[0]
    else:
        img = as_image(arr, name, (1, 3))
        if axis not in (0, 1):
            raise ValueError(f"axis must be 0 or 1, got {axis!r}")
        profile = img.mean(axis=1 - axis)
    distance = None
    if period_px is not None:
        period = positive(period_px, "period_px")
        if period < 2:
            raise ValueError(f"{name}: bar period {period:.3g} px is below 2 px (beyond Nyquist)")
        if profile.size < 1.5 * period:
            raise ValueError(f"{name}: profile of {profile.size} px is shorter than 1.5 bar periods ({period:.3g} px)")
        distance = max(1, int(0.6 * period))
    hi_idx, _ = find_peaks(profile, distance=distance)
    lo_idx, _ = find_peaks(-profile, distance=distance)
    if hi_idx.size == 0 or lo_idx.size == 0:
        raise ValueError(f"{name}: no bar modulation found (profile has no interior maxima and minima)")
    i_max, i_min = float(profile[hi_idx].mean()), float(profile[lo_idx].mean())
    if i_max + i_min <= 0:
        raise ValueError(f"{name}: mean of bar maxima and minima is not positive ({i_max:.4g}, {i_min:.4g})")
    return max(0.0, (i_max - i_min) / (i_max + i_min))


@dataclass
class CTFResult:
    frequency_lp_per_mm: np.ndarray
    frequency_cy_per_px: np.ndarray
    ctf: np.ndarray  # normalised by reference_contrast when given
    raw_contrast: np.ndarray


def ctf_from_bar_groups(
    groups: Sequence[tuple[float, np.ndarray]],
    pixel_size_um: float,
    reference_contrast: float | None = None,
    axis: int = 1,
) -> CTFResult:
    """CTF from bar groups: ``groups`` is a sequence of (frequency in lp/mm, ROI of that group).

    ``reference_contrast`` is the Michelson contrast of a large bright/dark area of the same chart
    (zero-frequency modulation); CTF = contrast / reference_contrast.
    """
    pixel_size_um = positive(pixel_size_um, "pixel_size_um")
    if not groups:
        raise ValueError("ctf_from_bar_groups: no bar groups given")
    freqs, contrasts = [], []
    for i, (f_lp_mm, roi) in enumerate(groups):
        f = positive(f_lp_mm, f"group {i} frequency_lp_per_mm")
        period_px = 1000.0 / (f * pixel_size_um)
        contrasts.append(michelson_contrast(roi, period_px, axis, name=f"bar group {i} ({f:g} lp/mm)"))
        freqs.append(f)
    order = np.argsort(freqs)
    f_arr = np.asarray(freqs, float)[order]
    c_arr = np.asarray(contrasts, float)[order]
    if np.any(np.diff(f_arr) == 0):
        raise ValueError(f"ctf_from_bar_groups: duplicate group frequencies {f_arr.tolist()}")
    ref = 1.0 if reference_contrast is None else positive(reference_contrast, "reference_contrast")
    return CTFResult(
        frequency_lp_per_mm=f_arr,
        frequency_cy_per_px=f_arr * pixel_size_um / 1000.0,
        ctf=c_arr / ref,
        raw_contrast=c_arr,
    )
