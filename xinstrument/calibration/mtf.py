"""Slanted-edge MTF (ISO 12233:2017 e-SFR method) and the ESF -> LSF -> Gaussian-sigma shortcut.

Steps of :func:`slanted_edge_mtf` (ISO 12233 Annex D, as in the reference ``sfrmat`` procedure):

1. orient the ROI so the edge is near-vertical (transitions along columns);
2. per-row derivative, Hamming-windowed around the edge, centroid per row; polynomial fit of the
   centroid against row (twice: the second pass windows around the first fit);
3. project every pixel onto the edge normal and bin at 4x oversampling to get the ESF;
4. LSF by central difference, Hamming window centred on the LSF peak, FFT, normalise at f = 0;
5. divide by the transfer function of the central-difference derivative and of the 1/4-px binning.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import curve_fit

from xinstrument.calibration._checks import as_image, positive

OVERSAMPLING = 4  # ISO 12233 e-SFR bins the projected edge at 1/4 pixel
MIN_ROI_PX = (16, 16)
# ISO 12233 recommends a slant of a few degrees: below ~1 deg the phase coverage of the 4x bins is
# poor, above ~10 deg the pixel aperture along the normal is no longer a plain rect.
ANGLE_RANGE_DEG = (1.0, 10.0)
MIN_CONTRAST = 0.2  # Michelson contrast of the edge under which the SFR becomes noise-dominated
MAX_CORRECTION = 10.0  # cap of the derivative/binning correction (as in sfrmat)


class EdgeNotFoundError(ValueError):
    """No usable edge in the region of interest."""


@dataclass
class EdgeMTFResult:
    """MTF of a slanted edge. Frequencies are along the edge normal."""

    frequency_cy_per_px: np.ndarray
    frequency_cy_per_mm: np.ndarray
    mtf: np.ndarray
    mtf50_cy_per_px: float | None
    mtf10_cy_per_px: float | None
    mtf50_cy_per_mm: float | None
    mtf10_cy_per_mm: float | None
    edge_angle_deg: float
    contrast: float
    pixel_size_um: float
    esf: np.ndarray  # oversampled ESF (bin spacing 1/OVERSAMPLING px)
    lsf: np.ndarray
    orientation: str  # "vertical" (transition along columns) or "horizontal"
    warnings: list[str] = field(default_factory=list)


@dataclass
class EdgeFit:
    """Located edge: column = polyval(coefficients, row), in oriented ROI coordinates."""

    roi: np.ndarray  # oriented so the edge is near-vertical, dark-to-bright not required
    coefficients: np.ndarray
    edge_angle_deg: float
    orientation: str


def _centroids(roi: np.ndarray, centre_cols: np.ndarray, half_width: float) -> np.ndarray:
    """Per-row centroid of the Hamming-windowed absolute derivative along columns."""
    deriv = np.diff(roi, axis=1)
    # Signed derivative, oriented so the edge is positive: noise then averages out of the
    # centroid instead of pulling it toward the window centre as |derivative| would.
    if deriv.sum() < 0:
        deriv = -deriv
    cols = np.arange(deriv.shape[1]) + 0.5  # the difference sits between two pixel centres
    dist = cols[None, :] - centre_cols[:, None]
    window = np.where(np.abs(dist) <= half_width, 0.54 + 0.46 * np.cos(np.pi * dist / half_width), 0.0)
    d = deriv * window
    total = d.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (d * cols[None, :]).sum(axis=1) / total


def locate_edge(roi_image: np.ndarray, fit_order: int = 1, name: str = "roi") -> EdgeFit:
    """Find a straight (or gently curved, ``fit_order`` > 1) edge in a ROI.

    Raises
    ------
    EdgeNotFoundError
        if the ROI holds no transition clearly above the noise or the fitted edge leaves the ROI.
    """
    roi = as_image(roi_image, name, MIN_ROI_PX)
    if not isinstance(fit_order, int) or not 1 <= fit_order <= 5:
        raise ValueError(f"fit_order must be an integer 1..5, got {fit_order!r}")
    # Orientation: the edge runs along the axis with the smaller mean gradient.
    gx = np.abs(np.diff(roi, axis=1).mean(axis=0)).sum() / roi.shape[1]
    gy = np.abs(np.diff(roi, axis=0).mean(axis=1)).sum() / roi.shape[0]
    orientation = "vertical"
    if gy > gx:
        roi = roi.T.copy()
        orientation = "horizontal"
    rows, cols = roi.shape

    # Is there an edge at all? Compare the step between the two sides with the pixel noise
    # (median absolute pixel-to-pixel difference along the edge direction).
    profile = roi.mean(axis=0)
    k = max(2, cols // 8)
    step = abs(profile[-k:].mean() - profile[:k].mean())
    noise = 1.4826 * np.median(np.abs(np.diff(roi, axis=0))) / np.sqrt(2) + 1e-12 * max(1.0, np.abs(roi).max())
    if step < 5.0 * noise / np.sqrt(rows * k) + 1e-12 or step < 3.0 * noise / np.sqrt(rows):
        raise EdgeNotFoundError(
            f"{name}: no edge found (step between the two sides {step:.4g} vs pixel noise {noise:.4g}); "
            f"select a ROI that contains one straight edge"
        )

    centre = np.full(rows, (cols - 1) / 2.0)
    half = cols / 2.0
    c = _centroids(roi, centre, half)
    y = np.arange(rows, dtype=float)
    coef = None
    half_widths = [cols / 2.0, max(6.0, cols / 4.0)]
    for i in range(4):
        ok = np.isfinite(c)
        if ok.sum() < fit_order + 2:
            raise EdgeNotFoundError(f"{name}: no edge found (too few rows with a transition)")
        coef = np.polyfit(y[ok], c[ok], fit_order)
        fitted = np.polyval(coef, y)
        if fitted.min() < 1 or fitted.max() > cols - 2:
            break
        if i >= 1:
            # Narrow the window to a few edge widths so that fewer noisy pixels enter the centroid.
            rise = _rise_width_px(EdgeFit(roi, coef, 0.0, orientation))
            half_widths.append(min(half_widths[-1], max(6.0, 3.0 * rise)))
        if i + 1 >= len(half_widths):
            break
        c = _centroids(roi, fitted, half_widths[i + 1])
    fitted = np.polyval(coef, y)
    if fitted.min() < 1 or fitted.max() > cols - 2:
        raise EdgeNotFoundError(
            f"{name}: the edge leaves the ROI (fitted column {fitted.min():.1f}..{fitted.max():.1f} "
            f"of {cols}); centre the ROI on the edge"
        )
    slope = np.polyval(np.polyder(coef), (rows - 1) / 2.0)
    angle = float(np.degrees(np.arctan(slope)))
    return EdgeFit(roi=roi, coefficients=coef, edge_angle_deg=angle, orientation=orientation)


def _rise_width_px(fit: EdgeFit) -> float:
    """10-90 % rise distance of the projected ESF (pixels), for sizing the centroid window."""
    try:
        distance, esf, _ = edge_spread_function(fit)
    except EdgeNotFoundError:
        return fit.roi.shape[1] / 4.0
    k = max(2, esf.size // 10)
    a, b = esf[:k].mean(), esf[-k:].mean()
    span = b - a
    if span == 0:
        return fit.roi.shape[1] / 4.0
    norm = np.convolve((esf - a) / span, np.ones(5) / 5, mode="same")
    inner = slice(2, esf.size - 2)
    d, v = distance[inner], norm[inner]
    lo = d[np.argmax(v > 0.1)]
    hi = d[len(v) - 1 - np.argmax(v[::-1] < 0.9)]
    return float(max(hi - lo, 1.0))


def edge_spread_function(fit: EdgeFit, oversampling: int = OVERSAMPLING) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Project the ROI onto the edge normal and bin it.

    Returns (distance_px, esf, warnings); ``distance_px`` are bin centres along the normal,
    spaced 1/oversampling px, only over the span every row covers.
    """
    roi = fit.roi
    rows, cols = roi.shape
    warnings: list[str] = []
    y = np.arange(rows, dtype=float)
    slope = np.polyval(np.polyder(fit.coefficients), y)
    cos_t = 1.0 / np.sqrt(1.0 + slope**2)
    edge_col = np.polyval(fit.coefficients, y)

    # Use a whole number of phase cycles so every 1/4-px phase is sampled equally (ISO 12233).
    mean_slope = abs(float(np.mean(slope)))
    n_rows = rows
    if mean_slope > 0:
        cycles = int(np.floor(rows * mean_slope))
        if cycles >= 1:
            n_rows = min(rows, round(cycles / mean_slope))
    dist = (np.arange(cols)[None, :] - edge_col[:n_rows, None]) * cos_t[:n_rows, None]
    values = roi[:n_rows]
    lo = np.ceil(dist.min(axis=1).max() * oversampling) / oversampling
    hi = np.floor(dist.max(axis=1).min() * oversampling) / oversampling
    if hi - lo < 8:
        raise EdgeNotFoundError("roi: too narrow across the edge (need at least 8 px on the common span)")
    inside = (dist >= lo) & (dist < hi)
    idx = np.floor((dist[inside] - lo) * oversampling).astype(int)
    nbins = round((hi - lo) * oversampling)
    counts = np.bincount(idx, minlength=nbins)[:nbins]
    sums = np.bincount(idx, weights=values[inside], minlength=nbins)[:nbins]
    centres = lo + (np.arange(nbins) + 0.5) / oversampling
    empty = counts == 0
    if empty.any():
        if empty.mean() > 0.1:
            warnings.append(
                f"{int(empty.sum())} of {nbins} oversampled ESF bins are empty (edge angle too small "
                "or ROI too short); MTF above Nyquist is unreliable"
            )
        esf = np.interp(centres, centres[~empty], sums[~empty] / counts[~empty])
    else:
        esf = sums / counts
    return centres, esf, warnings


def _crossing(freq: np.ndarray, mtf: np.ndarray, level: float) -> float | None:
    below = np.flatnonzero(mtf < level)
    if below.size == 0 or below[0] == 0:
        return None
    i = below[0]
    f0, f1, m0, m1 = freq[i - 1], freq[i], mtf[i - 1], mtf[i]
    return float(f0 + (m0 - level) * (f1 - f0) / (m0 - m1))


def slanted_edge_mtf(
    roi_image: np.ndarray,
    pixel_size_um: float,
    max_frequency_cy_per_px: float = 1.0,
    fit_order: int = 1,
    name: str = "roi",
) -> EdgeMTFResult:
    """MTF from a slanted-edge ROI (ISO 12233 e-SFR).

    Parameters
    ----------
    roi_image : 2-D array of detector counts (integer or float), flat-field corrected or raw,
        containing one straight edge tilted by ~1-10 degrees from a pixel axis.
    pixel_size_um : effective pixel pitch at the object/scintillator plane, for cycles/mm.
    max_frequency_cy_per_px : highest frequency reported (at most 2, the 4x-oversampling limit).
    fit_order : polynomial order of the edge fit (1: straight edge as in ISO 12233:2014).

    Returns
    -------
    EdgeMTFResult with ``warnings`` for low contrast, an angle outside 1-10 deg, or sparse bins.
    """
    pixel_size_um = positive(pixel_size_um, "pixel_size_um")
    max_f = positive(max_frequency_cy_per_px, "max_frequency_cy_per_px")
    if max_f > OVERSAMPLING / 2:
        raise ValueError(f"max_frequency_cy_per_px must be <= {OVERSAMPLING / 2}, got {max_f}")
    fit = locate_edge(roi_image, fit_order, name)
    _distance, esf, warnings = edge_spread_function(fit)
    delta_px = 1.0 / OVERSAMPLING

    k = max(2, esf.size // 10)
    low, high = sorted((float(esf[:k].mean()), float(esf[-k:].mean())))
    contrast = (high - low) / (high + low) if high + low > 0 else 1.0
    angle = fit.edge_angle_deg
    if contrast < MIN_CONTRAST:
        warnings.append(f"edge contrast {contrast:.1%} is below {MIN_CONTRAST:.0%}; the MTF is noise-dominated")
    if not ANGLE_RANGE_DEG[0] <= abs(angle) <= ANGLE_RANGE_DEG[1]:
        warnings.append(
            f"edge angle {angle:.2f} deg is outside {ANGLE_RANGE_DEG[0]:g}-{ANGLE_RANGE_DEG[1]:g} deg; "
            "oversampling and aperture assumptions degrade"
        )

    lsf = np.gradient(esf)  # central difference: spans 2 bins
    if lsf.sum() < 0:
        lsf = -lsf
    n = lsf.size
    peak = float(np.sum(np.arange(n) * np.clip(lsf, 0, None)) / np.clip(lsf, 0, None).sum())
    # Hamming window centred on the LSF centroid, as wide as the longer side allows.
    half = max(peak, n - 1 - peak)
    x = np.arange(n) - peak
    window = 0.54 + 0.46 * np.cos(np.pi * x / half)
    lsf_w = lsf * window
    spectrum = np.abs(np.fft.rfft(lsf_w))
    freq = np.fft.rfftfreq(n, d=delta_px)
    mtf = spectrum / spectrum[0]
    # Transfer of the central difference (span 2*delta) and of the delta-wide bins.
    correction = np.sinc(2 * freq * delta_px) * np.sinc(freq * delta_px)
    mtf = mtf / np.clip(correction, 1.0 / MAX_CORRECTION, None)
    keep = freq <= max_f + 1e-12
    freq, mtf = freq[keep], mtf[keep]
    f50 = _crossing(freq, mtf, 0.5)
    f10 = _crossing(freq, mtf, 0.1)
    if f50 is None:
        warnings.append(f"MTF does not fall to 0.5 below {max_f:g} cy/px; MTF50 not reported")
    if f10 is None:
        warnings.append(f"MTF does not fall to 0.1 below {max_f:g} cy/px; MTF10 not reported")
    to_mm = 1000.0 / pixel_size_um
    return EdgeMTFResult(
        frequency_cy_per_px=freq,
        frequency_cy_per_mm=freq * to_mm,
        mtf=mtf,
        mtf50_cy_per_px=f50,
        mtf10_cy_per_px=f10,
        mtf50_cy_per_mm=None if f50 is None else f50 * to_mm,
        mtf10_cy_per_mm=None if f10 is None else f10 * to_mm,
        edge_angle_deg=angle,
        contrast=float(contrast),
        pixel_size_um=pixel_size_um,
        esf=esf,
        lsf=lsf,
        orientation=fit.orientation,
        warnings=warnings,
    )


@dataclass
class GaussianSigmaResult:
    """Gaussian fit of the LSF of an edge (paper 003: ESF -> LSF -> Gaussian -> PSF sigma)."""

    sigma_px: float
    sigma_um: float
    lsf_sigma_px: float  # fitted LSF width, pixel aperture included
    fit_rms: float  # rms residual of the fit relative to the LSF peak
    edge_angle_deg: float


def _gauss(x: np.ndarray, a: float, mu: float, s: float, c: float) -> np.ndarray:
    return a * np.exp(-0.5 * ((x - mu) / s) ** 2) + c


def esf_gaussian_sigma(
    roi_image: np.ndarray,
    pixel_size_um: float,
    remove_pixel_aperture: bool = True,
    name: str = "roi",
) -> GaussianSigmaResult:
    """PSF sigma from an edge: ESF -> LSF -> Gaussian fit.

    The fitted LSF includes the pixel aperture (variance 1/12 px^2) and the 1/4-px bins
    (variance 1/192 px^2); with ``remove_pixel_aperture`` both are subtracted in quadrature so
    ``sigma_px`` is the blur of the optics/scintillator alone (the kernel a degradation model
    applies before pixel sampling).
    """
    pixel_size_um = positive(pixel_size_um, "pixel_size_um")
    fit = locate_edge(roi_image, 1, name)
    distance, esf, _ = edge_spread_function(fit)
    lsf = np.gradient(esf, distance)
    if lsf.sum() < 0:
        lsf = -lsf
    i = int(np.argmax(lsf))
    amp = float(lsf[i])
    p0 = (amp, float(distance[i]), 1.0, 0.0)
    try:
        popt, _ = curve_fit(_gauss, distance, lsf, p0=p0, maxfev=5000)
    except RuntimeError as exc:
        raise EdgeNotFoundError(f"{name}: Gaussian fit of the LSF did not converge ({exc})") from exc
    lsf_sigma = abs(float(popt[2]))
    residual = float(np.sqrt(np.mean((_gauss(distance, *popt) - lsf) ** 2)) / max(amp, 1e-300))
    sigma = lsf_sigma
    if remove_pixel_aperture:
        var = lsf_sigma**2 - 1.0 / 12.0 - (1.0 / OVERSAMPLING) ** 2 / 12.0
        sigma = float(np.sqrt(max(var, 0.0)))
    return GaussianSigmaResult(
        sigma_px=sigma,
        sigma_um=sigma * pixel_size_um,
        lsf_sigma_px=lsf_sigma,
        fit_rms=residual,
        edge_angle_deg=fit.edge_angle_deg,
    )
