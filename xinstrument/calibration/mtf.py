"""Slanted-edge MTF per ISO 12233:2023 (edition 4, e-SFR) and the ESF -> LSF -> Gaussian shortcut.

Steps of :func:`slanted_edge_mtf`, in the order of ISO 12233:2023 Annex D (the procedure of the
standard's reference implementation, sfrmat5):

1. orient the ROI so the edge is within 45 degrees of vertical (a near-horizontal edge is
   transposed); check that it holds one usable edge (contrast over noise, no clipping, flat
   plateaus on both sides, a transition narrower than the ROI);
2. per row, the [-1/2, +1/2] derivative, Hamming-windowed around the edge, and its centroid
   (shifted half a pixel for the filter's phase); polynomial fit of the centroids against the
   row; a second pass with the window centred on the first fit;
3. keep a whole number of phase cycles of rows; project every pixel *along its row* onto the
   fitted edge (horizontal distance x - x_edge(y)) and bin at 1/4 px: with integer pixel columns
   every row then falls on the same bin phases, which the projection onto the edge normal does
   not give;
4. the LSF is the [-1/2, 0, +1/2] derivative of the binned ESF, Hamming-windowed about its
   centre; DFT, normalised at f = 0;
5. divide by the transfer of that derivative and of the 1/4 px bins; the frequency of the row
   projection is along the row, so it is scaled by 1/cos(angle) to the edge normal (edition 4).

The measured MTF is that of the system along the edge normal: blur times the pixel aperture
projected on the normal.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import curve_fit

from xinstrument.calibration._checks import as_image, positive

STANDARD = "ISO 12233:2023 (edition 4)"
METHOD = ("e-SFR slanted edge: per-row centroid edge location, polynomial edge fit, projection "
          "along rows with 4x binning, frequency scaled by 1/cos(edge angle), derivative and "
          "bin corrections, Hamming-windowed LSF")
OVERSAMPLING = 4  # ISO 12233 e-SFR bins the projected edge at 1/4 pixel
MIN_ROI_PX = (16, 16)
# ISO 12233:2023 covers edges from near-vertical to 45 degrees. Below 1 degree a practical ROI
# holds less than one phase cycle of rows in a few tens of rows, so the 1/4 px bins are not all
# sampled; above 45 degrees the edge is nearer the other axis and the ROI is transposed.
ANGLE_RANGE_DEG = (1.0, 45.0)
MIN_CONTRAST = 0.2  # Michelson contrast under which ISO 12233 warns that the SFR is noise-prone
MIN_STEP_SNR = 5.0  # edge step over the noise of the binned ESF under which the edge is refused
# Plateaus: the ESF may change by at most this fraction of the step across either side of the
# transition (a 10 % shading ramp over a 128 px ROI changes it by 5 % and MTF50 by -1.9 %); a
# second edge or a bar inside the ROI change it more. Above the warning level MTF50 moves > 0.3 %.
MAX_PLATEAU_CHANGE = 0.05
WARN_PLATEAU_CHANGE = 0.015
SECOND_LOBE = 0.3  # a second LSF lobe this high (relative) is a second edge
PLATEAU_MARGIN_RISES = 1.0  # plateaus start this many 10-90 % rise distances from the edge centre
# The 10-90 % transition may take at most this fraction of the projected span (a ramp or a flat
# field with shading spreads over all of it).
MAX_TRANSITION_FRACTION = 0.5
MIN_ROWS = 8  # rows kept after the whole-phase-cycle cut (ISO 12233 asks for "sufficient" rows)
LSF_WINDOWS = ("lsf", "roi")
LSF_WINDOW_MIN_PX = 32.0  # smallest half-width of the LSF window (row px)
LSF_WINDOW_RISES = 16.0  # LSF window half-width in 10-90 % rise distances
MAX_CORRECTION = 10.0  # cap of the derivative/bin correction (as in sfrmat)
CLIPPED_FRACTION = 0.005  # share of ROI pixels at an extreme value that reads as clipping


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
    edge_angle_deg: float  # from the ROI's pixel axis nearer the edge (sign: slope of the fit)
    contrast: float
    pixel_size_um: float
    esf: np.ndarray  # binned ESF along the row (bin spacing 1/OVERSAMPLING px of the row)
    lsf: np.ndarray
    orientation: str  # "vertical" (transition along columns) or "horizontal"
    warnings: list[str] = field(default_factory=list)
    standard: str = STANDARD
    method: str = METHOD
    rows_used: int = 0
    fit_order: int = 1
    esf_bin_px: float = 1.0 / OVERSAMPLING  # ESF bin spacing along the edge normal, px
    # standard deviation of ``mtf`` from the ROI's pixel noise (see _mtf_noise_sd); None when
    # the result was not measured from an image
    mtf_sd: np.ndarray | None = None

    def summary(self) -> str:
        """One line for logs and CLI output."""
        f50 = "n/a" if self.mtf50_cy_per_px is None else f"{self.mtf50_cy_per_px:.4f} cy/px"
        return (f"MTF50 {f50}, edge angle {self.edge_angle_deg:+.2f} deg ({self.orientation} edge, "
                f"{self.rows_used} rows), contrast {self.contrast:.2f}; {self.standard}")

    def record(self, prefix: str = "mtf") -> dict:
        """Scalar description for a profile's [calibration] table."""
        return {f"{prefix}_standard": self.standard, f"{prefix}_method": self.method,
                f"{prefix}_edge_angle_deg": float(self.edge_angle_deg),
                f"{prefix}_edge_fit_order": int(self.fit_order)}


@dataclass
class EdgeFit:
    """Located edge: column = polyval(coefficients, row), in oriented ROI coordinates."""

    roi: np.ndarray  # oriented so the edge is near-vertical
    coefficients: np.ndarray
    edge_angle_deg: float
    orientation: str
    rising: bool = True  # values increase with column


def _hamming(n: int, centre: np.ndarray) -> np.ndarray:
    """Hamming windows over ``n`` samples centred at ``centre`` (one per row), each as wide as its
    longer side (the asymmetric window of the reference implementation)."""
    x = np.arange(n, dtype=float)[None, :]
    c = np.asarray(centre, dtype=float)[:, None]
    half = np.maximum(np.maximum(c, n - 1 - c), 1.0)
    return 0.54 + 0.46 * np.cos(np.pi * np.clip((x - c) / half, -1.0, 1.0))


def _centroids(deriv: np.ndarray, centre_cols: np.ndarray) -> np.ndarray:
    """Per-row centroid of the Hamming-windowed derivative (column of the transition)."""
    window = _hamming(deriv.shape[1], centre_cols - 0.5)
    d = deriv * window
    total = d.sum(axis=1)
    cols = np.arange(deriv.shape[1], dtype=float) + 0.5  # the difference sits between two pixels
    with np.errstate(invalid="ignore", divide="ignore"):
        c = (d * cols[None, :]).sum(axis=1) / total
    c[~(total > 0)] = np.nan
    return c


def _orient(roi: np.ndarray) -> tuple[np.ndarray, str]:
    """Transpose so the transition runs along columns (edge within 45 deg of vertical)."""
    gx = np.abs(np.diff(roi, axis=1).mean(axis=0)).sum()
    gy = np.abs(np.diff(roi, axis=0).mean(axis=1)).sum()
    if gy > gx:
        return roi.T.copy(), "horizontal"
    return roi, "vertical"


def _pixel_noise(roi: np.ndarray) -> float:
    """Robust per-pixel noise sd from differences along the edge direction (rows)."""
    d = np.diff(roi, axis=0)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def locate_edge(roi_image: np.ndarray, fit_order: int = 1, name: str = "roi") -> EdgeFit:
    """Find a straight (or gently curved, ``fit_order`` > 1) edge in a ROI (ISO 12233 D.3-D.4).

    Raises
    ------
    EdgeNotFoundError
        if the ROI holds no transition clearly above the noise, the fitted edge leaves the ROI or
        its tilt is outside 1-45 degrees.
    """
    roi = as_image(roi_image, name, MIN_ROI_PX)
    if not isinstance(fit_order, (int, np.integer)) or isinstance(fit_order, bool) or not 1 <= fit_order <= 5:
        raise ValueError(f"fit_order must be an integer 1..5, got {fit_order!r}")
    roi, orientation = _orient(roi)
    rows, cols = roi.shape

    # Is there a step at all? The two sides' means against the pixel noise.
    profile = roi.mean(axis=0)
    k = max(2, cols // 8)
    step = float(profile[-k:].mean() - profile[:k].mean())
    noise = _pixel_noise(roi) + 1e-12 * max(1.0, float(np.abs(roi).max()))
    if abs(step) < 5.0 * noise / np.sqrt(rows * k) or abs(step) < 3.0 * noise / np.sqrt(rows):
        swing = float(profile.max() - profile.min())
        if swing > 10.0 * noise / np.sqrt(rows) + 1e-9 * max(1.0, float(np.abs(roi).max())):
            raise EdgeNotFoundError(
                f"{name}: no edge found: both sides are at the same level while the ROI's profile "
                f"swings by {swing:.4g} (a shaded flat field, a bar, a line or two edges); select a "
                "ROI across one edge")
        raise EdgeNotFoundError(
            f"{name}: no edge found (step between the two sides {abs(step):.4g} vs pixel noise "
            f"{noise:.4g}); select a ROI that contains one straight edge"
        )
    rising = step > 0
    deriv = np.diff(roi, axis=1) * (0.5 if rising else -0.5)

    y = np.arange(rows, dtype=float)
    c = _centroids(deriv, np.full(rows, cols / 2.0))
    coef = None
    for _ in range(2):  # first pass centred on the ROI, second on the first fit
        ok = np.isfinite(c)
        if ok.sum() < max(fit_order + 2, MIN_ROWS):
            raise EdgeNotFoundError(f"{name}: no edge found (only {int(ok.sum())} rows with a transition)")
        coef = np.polyfit(y[ok], c[ok], fit_order)
        c = _centroids(deriv, np.polyval(coef, y))
    ok = np.isfinite(c)
    if ok.sum() < max(fit_order + 2, MIN_ROWS):
        raise EdgeNotFoundError(f"{name}: no edge found (only {int(ok.sum())} rows with a transition)")
    coef = np.polyfit(y[ok], c[ok], fit_order)
    fitted = np.polyval(coef, y)
    if fitted.min() < 1 or fitted.max() > cols - 2:
        raise EdgeNotFoundError(
            f"{name}: the edge leaves the ROI (fitted column {fitted.min():.1f}..{fitted.max():.1f} "
            f"of {cols}); centre the ROI on one edge that crosses it from top to bottom"
        )
    slope = float(np.polyfit(y, fitted, 1)[0])
    angle = float(np.degrees(np.arctan(slope)))
    return EdgeFit(roi=roi, coefficients=coef, edge_angle_deg=angle, orientation=orientation,
                   rising=rising)


def check_tilt(fit: EdgeFit, name: str = "roi") -> None:
    """Refuse an edge tilted less than 1 degree from the pixel axis (ISO 12233 needs a slant)."""
    angle = fit.edge_angle_deg
    if abs(angle) < ANGLE_RANGE_DEG[0]:
        raise EdgeNotFoundError(
            f"{name}: edge tilt {angle:+.2f} deg is below {ANGLE_RANGE_DEG[0]:g} deg; ISO 12233 "
            f"needs a slanted edge ({ANGLE_RANGE_DEG[0]:g}-{ANGLE_RANGE_DEG[1]:g} deg, a few degrees "
            "is best): rotate the edge"
        )


def _whole_cycles(rows: int, slope: float) -> int:
    """Rows holding a whole number of phase cycles (ISO 12233: every 1/4 px bin sampled alike)."""
    s = abs(slope)
    cycles = int(np.floor(rows * s))
    if cycles < 1:
        return 0
    return min(rows, round(cycles / s))


def _project(fit: EdgeFit, oversampling: int, whole_cycles: bool = True,
             name: str = "roi") -> tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray]:
    """Bin pixels by their distance along the row to the fitted edge.

    Returns (bin centres in row px, sums, counts, rows used, offsets); bins are centred on
    multiples of 1/oversampling and ``offsets`` (row px) are the samples' distances from their
    bin centre, whose distribution is the binning's transfer function.
    """
    roi = fit.roi
    rows, cols = roi.shape
    slope = float(np.tan(np.radians(fit.edge_angle_deg)))
    n_rows = _whole_cycles(rows, slope) if whole_cycles else rows
    if n_rows < MIN_ROWS:
        need = int(np.ceil(max(1.0 / max(abs(slope), 1e-9), MIN_ROWS)))
        raise EdgeNotFoundError(
            f"{name}: too few rows ({rows}) for a {fit.edge_angle_deg:+.2f} deg edge: one phase cycle "
            f"of the 1/{oversampling} px bins needs {need} rows; use a taller ROI or a larger tilt"
        )
    y = np.arange(n_rows, dtype=float)
    u = np.arange(cols, dtype=float)[None, :] - np.polyval(fit.coefficients, y)[:, None]
    idx = np.rint(u * oversampling).astype(int)
    lo = int(idx.min())
    idx -= lo
    nbins = int(idx.max()) + 1
    counts = np.bincount(idx.ravel(), minlength=nbins).astype(float)
    sums = np.bincount(idx.ravel(), weights=roi[:n_rows].ravel(), minlength=nbins)
    centres = (np.arange(nbins) + lo) / oversampling
    offsets = (u - np.rint(u * oversampling) / oversampling).ravel()
    if whole_cycles:
        # every sub-pixel phase must be sampled: rational slopes with a small denominator
        # (tan = 1 at 45 deg, 1/2 at 26.6 deg, 1/3 at 18.4 deg) put all rows on a few phases
        share = np.bincount((idx.ravel() + lo) % oversampling, minlength=oversampling) / idx.size
        if share.min() < 0.4 / oversampling:
            raise EdgeNotFoundError(
                f"{name}: at {fit.edge_angle_deg:+.2f} deg the rows fall on only "
                f"{int((share > 0.1 / oversampling).sum())} of the {oversampling} sub-pixel phases "
                f"(tan(angle) = {slope:.4f} is a simple fraction); tilt the edge by a degree")
    return centres, sums, counts, n_rows, offsets


def edge_spread_function(fit: EdgeFit, oversampling: int = OVERSAMPLING) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Binned ESF of a located edge.

    Returns (distance_px, esf, warnings); ``distance_px`` are bin centres along the edge normal
    (the row distance times cos(angle)), spaced cos(angle)/oversampling px.
    """
    check_tilt(fit)
    centres, sums, counts, _, _ = _project(fit, oversampling)
    warnings: list[str] = []
    empty = counts == 0
    if empty.any():
        inner = empty[(centres > centres[0] + 2) & (centres < centres[-1] - 2)]
        if inner.mean() > 0.1:
            warnings.append(f"{int(empty.sum())} of {empty.size} ESF bins are empty; the MTF above "
                            "Nyquist is unreliable")
        esf = np.interp(centres, centres[~empty], sums[~empty] / counts[~empty])
    else:
        esf = sums / counts
    cos_t = float(np.cos(np.radians(fit.edge_angle_deg)))
    return centres * cos_t, esf, warnings


def _check_clipping(fit: EdgeFit, saturation: float | None, rise_px: float, name: str) -> None:
    """Refuse an edge whose bright or dark side is clipped (saturated or cut at a floor).

    A clipped side is flat at its extreme value where the edge or the noise should make it vary:
    the extreme is then held by many pixels, either close to the transition or interleaved with
    non-extreme pixels at the same distance from the edge. A noise-free rendering, whose plateau
    is exactly constant only far (several transition widths) from the edge, is not clipping.
    """
    roi = fit.roi
    if saturation is not None:
        n_sat = int((roi >= saturation).sum())
        if n_sat:
            raise EdgeNotFoundError(f"{name}: {n_sat} pixels at or above the saturation level "
                                    f"{saturation:g}: the edge is clipped; lower the exposure")
    rows, cols = roi.shape
    u = np.arange(cols, dtype=float)[None, :] - np.polyval(fit.coefficients, np.arange(rows))[:, None]
    for label, extreme in (("bright", roi.max()), ("dark", roi.min())):
        at = roi == extreme
        n = int(at.sum())
        if n < max(3, CLIPPED_FRACTION * roi.size, 1.5 * rows):  # more than one column's worth
            continue
        side = 1.0 if np.median(u[at]) > 0 else -1.0
        dist = u * side
        d_min = float(dist[at].min())
        beyond = dist >= d_min + 2.0 * max(rise_px, 1.0)  # past any quantisation of the shoulder
        share = float(at[beyond].mean()) if beyond.any() else 1.0
        if d_min < 0.8 * max(rise_px, 1.0) or share < 0.98:
            raise EdgeNotFoundError(
                f"{name}: the {label} side is clipped ({n} pixels at {extreme:.6g}, from "
                f"{d_min:.1f} px off the edge); the e-SFR of a clipped edge is wrong: lower the "
                "exposure or the gain"
            )


def _check_esf(centres: np.ndarray, esf: np.ndarray, counts: np.ndarray, name: str,
               noise_px: float, warnings: list[str] | None = None) -> tuple[float, float]:
    """Refuse an ESF that is not one clean transition between two flat plateaus; returns the
    Michelson contrast and the 10-90 % rise distance along the row (px)."""
    n = esf.size
    k = max(4, n // 10)
    low, high = float(esf[:k].mean()), float(esf[-k:].mean())
    step = high - low
    # noise of a plateau mean of k bins (each bin averages counts samples)
    per_bin = noise_px / np.sqrt(max(float(np.median(counts[counts > 0])), 1.0))
    if abs(step) < MIN_STEP_SNR * per_bin / np.sqrt(k) * np.sqrt(2) or step == 0:
        raise EdgeNotFoundError(f"{name}: no edge found (ESF step {abs(step):.4g} is within the noise "
                                f"{per_bin / np.sqrt(k):.3g})")
    norm = (esf - low) / step
    smooth = np.convolve(norm, np.ones(OVERSAMPLING) / OVERSAMPLING, mode="same")
    inner = slice(OVERSAMPLING, n - OVERSAMPLING)
    v, d = smooth[inner], centres[inner]
    i10, i90 = int(np.argmax(v > 0.1)), len(v) - 1 - int(np.argmax(v[::-1] < 0.9))
    rise = float(d[i90] - d[i10]) if i90 > i10 else 0.0
    width = float(centres[-1] - centres[0])
    if rise > MAX_TRANSITION_FRACTION * width:
        raise EdgeNotFoundError(
            f"{name}: no usable edge: the transition spans {rise:.1f} of {width:.1f} px (a shading "
            "ramp or flat field, not an edge); select a ROI across one sharp edge"
        )
    # one edge: the LSF (derivative of the ESF smoothed over a pixel) has one lobe; a second one
    # of more than SECOND_LOBE of its height, well apart from it, is a second edge
    lsf = np.gradient(np.convolve(norm, np.ones(OVERSAMPLING) / OVERSAMPLING, mode="same"))
    lsf[:OVERSAMPLING] = lsf[-OVERSAMPLING:] = 0.0
    main = int(np.argmax(lsf))
    half_max = lsf >= 0.5 * lsf[main]
    lo_i, hi_i = main, main
    while lo_i > 0 and half_max[lo_i - 1]:
        lo_i -= 1
    while hi_i < n - 1 and half_max[hi_i + 1]:
        hi_i += 1
    guard = (hi_i - lo_i + 1) * 2 + 2 * OVERSAMPLING
    far = np.ones(n, bool)
    far[max(0, lo_i - guard):hi_i + guard + 1] = False
    if far.any() and lsf[far].max() > SECOND_LOBE * lsf[main]:
        other = float(centres[np.flatnonzero(far)[int(np.argmax(lsf[far]))]])
        raise EdgeNotFoundError(
            f"{name}: a second edge {abs(other - centres[main]):.1f} px from the first "
            f"({100 * lsf[far].max() / lsf[main]:.0f} % of its slope); select a ROI across one edge")
    # plateau flatness: fit a line to each side beyond the transition
    margin = max(PLATEAU_MARGIN_RISES * rise, 3.0)
    mid = 0.5 * (d[i10] + d[i90])
    for label, sel in (("left", centres < mid - margin), ("right", centres > mid + margin)):
        if sel.sum() < 2 * OVERSAMPLING:
            raise EdgeNotFoundError(
                f"{name}: less than 2 px of flat plateau {label} of the transition (which spans "
                f"{rise:.1f} px): the edge is too close to the ROI's side, or the ROI holds more "
                "than one edge; centre the ROI on one edge")
        x = centres[sel]
        slope = np.polyfit(x, norm[sel], 1)[0]
        change = abs(slope * (x[-1] - x[0]))
        lo_q, hi_q = np.percentile(norm[sel], [5, 95])
        if change > MAX_PLATEAU_CHANGE or hi_q - lo_q > 2 * MAX_PLATEAU_CHANGE + 6 * per_bin / abs(step):
            raise EdgeNotFoundError(
                f"{name}: no usable edge: the {label} plateau changes by {100 * max(change, hi_q - lo_q):.0f} % "
                "of the step (shading, a second edge or structure next to the edge); select a ROI "
                "with one edge between two uniform areas (flat-field correct the image)"
            )
        if change > WARN_PLATEAU_CHANGE and warnings is not None:
            warnings.append(f"the {label} plateau changes by {100 * change:.1f} % of the step: shading "
                            "(flat-field correct the image) or a PSF tail longer than the ROI (widen "
                            "it); the MTF at low frequency is uncertain by about as much")
    return (abs(step) / (high + low) if high + low > 0 else 1.0), rise


def _binning_transfer(offsets: np.ndarray, f_row: np.ndarray) -> np.ndarray:
    """|E exp(-2 pi i f offset)| over the samples' offsets from their bin centre."""
    hist, edges = np.histogram(offsets, bins=256, range=(-0.5 / OVERSAMPLING, 0.5 / OVERSAMPLING))
    mids = 0.5 * (edges[1:] + edges[:-1])
    w = hist / hist.sum()
    phase = np.exp(-2j * np.pi * np.outer(f_row, mids))
    # the histogram's own 1/256-bin width: sinc, negligible but exact
    return np.abs(phase @ w) * np.sinc(f_row * (edges[1] - edges[0]))


def _bin_means(centres: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean per bin; empty bins interpolated from their neighbours."""
    empty = counts == 0
    if not empty.any():
        return sums / counts
    return np.interp(centres, centres[~empty], sums[~empty] / counts[~empty])


def _mtf_noise_sd(counts: np.ndarray, noise_px: float, window: np.ndarray, f_row: np.ndarray,
                  area: float) -> np.ndarray:
    """Standard deviation of the uncorrected MTF from the pixel noise, per frequency.

    Each ESF bin is the mean of ``counts`` pixels, so its noise variance is v = noise_px^2 /
    counts, independent from bin to bin. The windowed LSF spectrum
    S(f) = sum_i w_i (e_{i+1} - e_{i-1}) / 2 exp(-2 pi i f i d) (bin spacing d) is linear in the
    ESF; collecting the terms of each e_j gives
    var S(f) = 1/4 sum_j v_j (w_{j-1}^2 + w_{j+1}^2 - 2 w_{j-1} w_{j+1} cos(4 pi f d)).
    Where the signal dominates, only the noise in phase with it moves |S|: half that variance.
    Divided by |S(0)| (the normalisation, whose own noise is negligible beside the step). On
    synthetic edges (Gaussian blur 0.8-1.2 px, white noise) it matches the spread of repeated
    measurements within 10 % where the MTF is above its noise; where the noise dominates, |S|
    is Rayleigh-distributed (sd 0.66 instead of 0.71 sqrt(var S), biased upwards) and this
    overstates the spread by up to 1.8x: a measurement there is noise, whatever its sd.
    """
    v = noise_px**2 / np.maximum(counts, 1.0)
    vj, wm, wp = v[1:-1], window[:-2], window[2:]
    a = float(np.sum(vj * (wm**2 + wp**2)))
    c = float(np.sum(vj * wm * wp))
    var = 0.25 * np.clip(a - 2.0 * c * np.cos(4.0 * np.pi * f_row / OVERSAMPLING), 0.0, None)
    return np.sqrt(0.5 * var) / area


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
    saturation_level: float | None = None,
    lsf_window: str = "lsf",
) -> EdgeMTFResult:
    """MTF from a slanted-edge ROI (ISO 12233:2023 e-SFR).

    Parameters
    ----------
    roi_image : 2-D array of detector counts (integer or float), flat-field corrected or raw,
        containing one straight edge tilted by 1-45 degrees from a pixel axis (a few degrees is
        best), crossing the ROI from one side to the opposite one.
    pixel_size_um : effective pixel pitch at the object/scintillator plane, for cycles/mm.
    max_frequency_cy_per_px : highest frequency reported (at most 2, the 4x-oversampling limit).
    fit_order : polynomial order of the edge fit (1: straight edge; edition 4 allows up to 5).
    saturation_level : counts at which the detector clips (default: the maximum of an integer
        dtype); any pixel there refuses the edge.
    lsf_window : "lsf" (default): Hamming window of half-width max(32 px, 16 transition widths)
        about the LSF centre; "roi": Hamming window over the whole projected span, as the
        reference implementation does (same bias within 0.25 %, up to 1.4x more MTF50 noise).

    Raises
    ------
    EdgeNotFoundError
        no usable edge: no step above the noise, clipping, a ramp or second edge instead of flat
        plateaus, too few rows for one phase cycle, or a tilt below 1 degree.
    """
    pixel_size_um = positive(pixel_size_um, "pixel_size_um")
    max_f = positive(max_frequency_cy_per_px, "max_frequency_cy_per_px")
    if max_f > OVERSAMPLING / 2:
        raise ValueError(f"max_frequency_cy_per_px must be <= {OVERSAMPLING / 2}, got {max_f}")
    if lsf_window not in LSF_WINDOWS:
        raise ValueError(f"lsf_window must be one of {LSF_WINDOWS}, got {lsf_window!r}")
    if saturation_level is None and isinstance(roi_image, np.ndarray) and np.issubdtype(roi_image.dtype, np.integer) \
            and roi_image.dtype != np.bool_:
        saturation_level = float(np.iinfo(roi_image.dtype).max)
    fit = locate_edge(roi_image, fit_order, name)
    noise_px = _pixel_noise(fit.roi)
    # Is it one edge between two plateaus? Checked on every row first, so that a ramp or a flat
    # field is named as such rather than as a tilt or row-count problem.
    centres, sums, counts, _, _ = _project(fit, OVERSAMPLING, whole_cycles=False, name=name)
    warnings: list[str] = []
    contrast, rise = _check_esf(centres, _bin_means(centres, sums, counts), counts, name, noise_px,
                                warnings)
    _check_clipping(fit, saturation_level, rise, name)
    check_tilt(fit, name)
    centres, sums, counts, n_rows, offsets = _project(fit, OVERSAMPLING, name=name)
    empty = counts == 0
    esf = _bin_means(centres, sums, counts)
    if empty[OVERSAMPLING:-OVERSAMPLING].mean() > 0.1:
        warnings.append(f"{int(empty.sum())} of {empty.size} ESF bins are empty; the MTF above "
                        "Nyquist is unreliable")
    angle = fit.edge_angle_deg
    cos_t = float(np.cos(np.radians(angle)))
    if contrast < MIN_CONTRAST:
        warnings.append(f"edge contrast {contrast:.1%} is below {MIN_CONTRAST:.0%}; the MTF is noise-prone "
                        "(ISO 12233)")

    # LSF: [-1/2, 0, +1/2] derivative of the binned ESF (ends copied from their neighbours)
    sign = 1.0 if fit.rising else -1.0
    lsf = np.zeros_like(esf)
    lsf[1:-1] = 0.5 * sign * (esf[2:] - esf[:-2])
    lsf[0], lsf[-1] = lsf[1], lsf[-2]
    n = lsf.size
    pos = np.clip(lsf, 0, None)
    centre = float(np.sum(np.arange(n) * pos) / pos.sum()) if pos.sum() > 0 else n / 2.0
    if lsf_window == "lsf":
        # Hamming window sized to the transition: noise of the MTF falls with the square root
        # of the window length, and LSF_WINDOW_RISES rise distances keep the window's bias on
        # MTF50 below 0.25 % (measured by `xinstrument bench metrology`).
        half = max(LSF_WINDOW_MIN_PX, LSF_WINDOW_RISES * rise) * OVERSAMPLING
        x = np.arange(n) - centre
        window = np.where(np.abs(x) <= half, 0.54 + 0.46 * np.cos(np.pi * np.clip(x / half, -1, 1)), 0.0)
    else:  # the whole projected span, as wide as the longer side (the reference implementation)
        window = _hamming(n, np.array([centre]))[0]
    spectrum = np.abs(np.fft.rfft(lsf * window))
    if not spectrum[0] > 0:
        raise EdgeNotFoundError(f"{name}: the windowed LSF has no area (no edge)")
    delta_row = 1.0 / OVERSAMPLING
    f_row = np.fft.rfftfreq(n, d=delta_row)
    mtf = spectrum / spectrum[0]
    # transfer of the 3-tap derivative (span 2 bins) and of the binning: each bin averages its
    # samples at their offsets from the bin centre, so the binning transfers the characteristic
    # function of the offsets (sinc(f / 4) when they spread evenly over the bin)
    correction = np.sinc(2 * f_row * delta_row) * _binning_transfer(offsets, f_row)
    mtf = mtf / np.clip(correction, 1.0 / MAX_CORRECTION, None)
    mtf_sd = (_mtf_noise_sd(counts, noise_px, window, f_row, float(spectrum[0]))
              / np.clip(correction, 1.0 / MAX_CORRECTION, None))
    freq = f_row / cos_t  # edition 4: row frequency -> frequency along the edge normal
    keep = freq <= max_f + 1e-12
    freq, mtf, mtf_sd = freq[keep], mtf[keep], mtf_sd[keep]
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
        rows_used=int(n_rows),
        fit_order=int(fit_order),
        esf_bin_px=cos_t / OVERSAMPLING,
        mtf_sd=mtf_sd,
        method=f"{METHOD} ({'window sized to the LSF' if lsf_window == 'lsf' else 'window over the ROI'})",
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

    The fitted LSF includes the pixel aperture projected on the edge normal (variance
    (cos^2 + sin^2)/12 = 1/12 px^2) and the bins (variance (cos(angle)/4)^2/12 px^2); with
    ``remove_pixel_aperture`` both are subtracted in quadrature so ``sigma_px`` is the blur of the
    optics/scintillator alone (the kernel a degradation model applies before pixel sampling).
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
        bin_px = float(np.cos(np.radians(fit.edge_angle_deg))) / OVERSAMPLING
        var = lsf_sigma**2 - 1.0 / 12.0 - bin_px**2 / 12.0
        sigma = float(np.sqrt(max(var, 0.0)))
    return GaussianSigmaResult(
        sigma_px=sigma,
        sigma_um=sigma * pixel_size_um,
        lsf_sigma_px=lsf_sigma,
        fit_rms=residual,
        edge_angle_deg=fit.edge_angle_deg,
    )
