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


@dataclass
class ColtmanResult:
    """MTF from a measured CTF by Coltman's series, with the uncertainty a sparse chart leaves."""

    frequency: np.ndarray
    mtf: np.ndarray
    uncertainty: np.ndarray  # half-width: interpolation between groups + harmonics past the chart
    warnings: list[str]


SPARSE_UNCERTAINTY = 0.02  # absolute MTF uncertainty above which the chart is called sparse


def _sample_loglog(f: np.ndarray, v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Power-law interpolation between measured points (0 beyond the last, as _sample)."""
    pos = (f > 0) & (v > 0)
    if pos.sum() < 2:
        return _sample(f, v, x)
    lf, lv = np.log(f[pos]), np.log(v[pos])
    out = np.exp(np.interp(np.log(np.maximum(x, 1e-300)), lf, lv))
    out[x > f[-1]] = 0.0
    out[x < f[pos][0]] = _sample(f, v, x[x < f[pos][0]])
    return out


def coltman_mtf(frequency: np.ndarray, ctf: np.ndarray, terms: int = SERIES_TERMS) -> ColtmanResult:
    """Coltman's MTF with an uncertainty and warnings for a sparse chart.

    The series needs the CTF at 3f, 5f, 7f...: between the chart's groups it is interpolated
    (linear and power-law interpolation bound the truth for a smooth, falling CTF: their
    difference is the interpolation uncertainty), and beyond the last group it is taken as 0,
    which it is at most CTF(last) away from (the truncation uncertainty). A chart whose groups
    leave more than SPARSE_UNCERTAINTY at any frequency is reported as sparse.
    """
    f, c = _check_curve(frequency, ctf, "coltman_mtf")
    lin = mtf_from_ctf(f, c, terms)
    out = np.zeros_like(f)
    trunc = np.zeros_like(f)
    last = float(abs(c[-1]))
    for j in range(terms):
        k = 2 * j + 1
        b = _coltman_coefficient(k)
        if b:
            out += b * _sample_loglog(f, c, k * f) / k
            trunc += np.where(k * f > f[-1], abs(b) * last / k, 0.0)
    log_mtf = np.pi / 4.0 * out
    uncertainty = np.abs(lin - log_mtf) + np.pi / 4.0 * np.minimum(trunc, last * 2.0)
    warnings = []
    worst = int(np.argmax(uncertainty))
    if uncertainty[worst] > SPARSE_UNCERTAINTY:
        ratio = float(np.max(f[1:] / np.maximum(f[:-1], 1e-300)))
        warnings.append(
            f"sparse chart: the Coltman MTF is uncertain by up to +-{uncertainty[worst]:.3f} (at "
            f"{f[worst]:g}); adjacent groups are up to {ratio:.2f}x apart in frequency and the "
            "series needs the CTF at 3, 5, 7... times each one: measure more groups, or use the "
            "slanted-edge MTF")
    return ColtmanResult(frequency=f, mtf=lin, uncertainty=uncertainty, warnings=warnings)


def michelson_contrast(
    bars: np.ndarray,
    period_px: float | None = None,
    axis: int = 1,
    name: str = "bar ROI",
) -> float:
    """Michelson contrast (Imax - Imin)/(Imax + Imin) of a bar group from the sampled extremes.

    The sampled extremes depend on where the pixels fall on the bars (by -13 % at a 5 px
    period); :func:`bar_contrast` fits the profile with its known period and does not.

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


MIN_PERIOD_PX = 3.0  # below this a bar group is not resolved by the pixels (fundamental > 1/3 cy/px)
MAX_HARMONIC_CY_PER_PX = 1.5  # odd harmonics fitted up to here (pixel aperture: sinc(1.5) = -0.21)
MAX_FIT_RESIDUAL = 0.05  # rms residual over the fundamental's amplitude above which the fit is not used
MAX_VIF = 10.0  # variance inflation above which a fitted harmonic is not told apart from others


@dataclass
class BarFit:
    """Known-period fit of a bar profile: c0 + sum_k c_k cos(2 pi k (x - x0) / period), k odd."""

    contrast: float  # (Imax - Imin) / (Imax + Imin) of the fitted continuous profile
    period_px: float
    centre_px: float  # x0: centre of a bright bar
    harmonics: tuple[int, ...]
    amplitudes: np.ndarray  # c_k / c0
    residual_rms: float  # of the fit, relative to the mean level
    warnings: list[str]


def _design(x: np.ndarray, period: float, x0: float, harmonics: tuple[int, ...]) -> np.ndarray:
    cols = [np.ones_like(x)] + [np.cos(2 * np.pi * k * (x - x0) / period) for k in harmonics]
    return np.stack(cols, axis=1)


def fit_bar_profile(profile: np.ndarray, period_px: float, name: str = "bar group") -> BarFit:
    """Phase-aware contrast of a bar group with a known period.

    Each pixel samples the (pixel-integrated) image at its centre, so the profile is the
    square wave's odd harmonics, each with the system's transfer, all centred on the same bar
    centre x0. Fitting them (x0 by a search, the amplitudes by least squares) gives the
    continuous profile, whose contrast does not depend on where the pixels fall on the bars:
    the sampled maxima and minima do (by -13 % at a 5 px period, -29 % at 4 px with a half-
    pixel phase). Harmonics above the sampling frequency alias; they are still told apart by
    their phase unless the phase makes them coincide with a lower one, which is refused for the
    fundamental (a 4 px period at a half-pixel phase) and dropped, with a warning, for higher
    harmonics.
    """
    prof = np.asarray(profile, dtype=float)
    period = positive(period_px, "period_px")
    if period < MIN_PERIOD_PX:
        raise ValueError(f"{name}: bar period {period:.3g} px is below {MIN_PERIOD_PX:g} px: the bars are "
                         "not resolved by enough pixels for a contrast; image the group at a larger "
                         "magnification")
    if prof.size < 2.5 * period:
        raise ValueError(f"{name}: profile of {prof.size} px holds fewer than 2.5 bar periods ({period:.3g} px)")
    mean = float(prof.mean())
    if not mean > 0:
        raise ValueError(f"{name}: mean level {mean:.4g} is not positive")
    x = np.arange(prof.size, dtype=float)
    harmonics = tuple(k for k in range(1, 16, 2) if k / period <= MAX_HARMONIC_CY_PER_PX)
    warnings: list[str] = []

    def solve(x0: float, hs: tuple[int, ...]):
        a = _design(x, period, x0, hs)
        coef, *_ = np.linalg.lstsq(a, prof, rcond=None)
        res = prof - a @ coef
        return coef, float(res @ res), a

    # x0 from the fundamental alone (its phase is unique; the aliased harmonics could trade
    # phase against amplitude), then fixed for the harmonics' amplitudes
    w = 2 * np.pi * x / period
    ab = np.linalg.lstsq(np.stack([np.ones_like(x), np.cos(w), np.sin(w)], axis=1), prof, rcond=None)[0]
    if np.hypot(ab[1], ab[2]) <= 1e-12 * abs(mean):
        raise ValueError(f"{name}: no modulation at the bar period {period:.3g} px")
    x0 = float(period * np.arctan2(ab[2], ab[1]) / (2 * np.pi))
    # A harmonic whose aliased samples nearly repeat those of other harmonics (same aliased
    # frequency and, at this phase, the same or opposite phase) cannot be told apart: its
    # variance inflation in the fit explodes. Drop such harmonics from the top (the higher the
    # harmonic, the smaller its share, at most 1/k of the fundamental's); refuse when the
    # fundamental or the 3rd harmonic (a third of the contrast of a sharp square wave) is lost.
    kept = list(harmonics)
    while True:
        full = _design(x, period, x0, tuple(kept))
        vif = np.ones(len(kept))
        for j in range(1, full.shape[1]):   # 1 / (1 - R^2) of each column on all the others
            others = np.delete(full, j, axis=1)
            col = full[:, j]
            fit_j = others @ np.linalg.lstsq(others, col, rcond=None)[0]
            ss = float(np.sum((col - col.mean()) ** 2))
            # a column that is (nearly) constant is the DC term again (kf a whole number)
            r2 = 1.0 - float(np.sum((col - fit_j) ** 2)) / ss if ss > 1e-6 * col.size else 1.0
            vif[j - 1] = 1.0 / max(1.0 - r2, 1e-12)
        bad = [k for k, v in zip(kept, vif) if v > MAX_VIF]
        if not bad:
            break
        dropped = max(bad)
        if dropped in (1, 3):
            raise ValueError(
                f"{name}: at a {period:.3g} px period and this bar phase the "
                f"{'fundamental' if dropped == 1 else '3rd harmonic'} cannot be told apart from an "
                "aliased harmonic (the pixels do not sample it), so the contrast depends on where "
                "the pixels fall on the bars; shift the chart by a quarter pixel or image the group "
                "at a larger magnification")
        kept.remove(dropped)
        warnings.append(f"harmonic {dropped} aliases onto a lower one at this phase and was left out "
                        f"(at most 1/{dropped} of the fundamental's share of the contrast)")
    coef, _, a = solve(x0, tuple(kept))
    if coef[1] < 0:  # x0 fell on a dark bar: move to the bright one
        x0 += period / 2
        coef, _, a = solve(x0, tuple(kept))
    c0 = float(coef[0])
    amps = np.asarray(coef[1:]) / c0
    fine = np.linspace(0, period, 512, endpoint=False)
    cont = c0 + _design(fine + x0, period, x0, tuple(kept))[:, 1:] @ coef[1:]
    i_max, i_min = float(cont.max()), float(cont.min())
    if i_max + i_min <= 0:
        raise ValueError(f"{name}: fitted bar profile is not positive ({i_min:.4g}..{i_max:.4g})")
    resid = float(np.sqrt(np.mean((prof - a @ coef) ** 2)) / mean)
    contrast = max(0.0, (i_max - i_min) / (i_max + i_min))
    if resid > MAX_FIT_RESIDUAL * abs(float(amps[0])):
        # structure the odd harmonics up to 1.5 cy/px do not hold: bars sharper than the
        # pixels (their sampled extremes are then right) or something besides the bars
        hi, lo = float(np.percentile(prof, 95)), float(np.percentile(prof, 5))
        warnings.append(f"the bar profile departs from its harmonic fit by {100 * resid:.1f} % of the "
                        "mean (bars sharper than the pixels, or other structure in the ROI): contrast "
                        "from the sampled extremes")
        contrast = max(0.0, (hi - lo) / (hi + lo))
    return BarFit(contrast=contrast, period_px=period,
                  centre_px=float(x0 % period), harmonics=tuple(kept), amplitudes=amps,
                  residual_rms=resid, warnings=warnings)


def bar_contrast(bars: np.ndarray, period_px: float, axis: int = 1, name: str = "bar ROI") -> BarFit:
    """:func:`fit_bar_profile` of a 2-D ROI with bars perpendicular to ``axis`` (averaged along
    the bars) or of a 1-D profile."""
    arr = np.asarray(bars) if isinstance(bars, np.ndarray) else bars
    if isinstance(arr, np.ndarray) and arr.ndim == 1:
        profile = as_image(arr[None, :], name, (1, 3))[0]
    else:
        img = as_image(arr, name, (1, 3))
        if axis not in (0, 1):
            raise ValueError(f"axis must be 0 or 1, got {axis!r}")
        profile = img.mean(axis=1 - axis)
    return fit_bar_profile(profile, period_px, name)


@dataclass
class CTFResult:
    frequency_lp_per_mm: np.ndarray
    frequency_cy_per_px: np.ndarray
    ctf: np.ndarray  # normalised by reference_contrast when given
    raw_contrast: np.ndarray
    method: str = "known-period fit of the bar profile's odd harmonics (phase-aware)"
    warnings: list[str] | None = None


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
    freqs, contrasts, warnings = [], [], []
    for i, (f_lp_mm, roi) in enumerate(groups):
        f = positive(f_lp_mm, f"group {i} frequency_lp_per_mm")
        period_px = 1000.0 / (f * pixel_size_um)
        fit = bar_contrast(roi, period_px, axis, name=f"bar group {i} ({f:g} lp/mm, {period_px:.2f} px period)")
        contrasts.append(fit.contrast)
        warnings += [f"{f:g} lp/mm: {w}" for w in fit.warnings]
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
        warnings=warnings,
    )
