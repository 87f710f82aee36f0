"""Axial focus scans: step the focus stage, score sharpness per step, fit the peak.

Lens-coupled benches with high-NA optics have a depth of field of a few micrometres (11 um for a
5x NA 0.4 objective), so the scintillator is focused by scanning the axial stage in 1 um steps
and fitting the sharpness curve for a sub-step optimum.
"""
from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from scipy import optimize

__all__ = [
    "DEFAULT_METRIC",
    "METRICS",
    "FocusAxis",
    "FocusCurve",
    "FocusError",
    "FocusScanAborted",
    "brenner_gradient",
    "camera_acquirer",
    "check_range",
    "coarse_fine_focus",
    "fit_peak",
    "focus_scan",
    "high_frequency_energy",
    "high_frequency_energy_sd",
    "normalized_variance",
    "sharpness",
]

_log = logging.getLogger(__name__)


class FocusError(ValueError):
    """Invalid focus-scan parameters or an unusable frame/metric."""


class FocusScanAborted(RuntimeError):
    """The scan was aborted by the caller; the partial curve is attached as ``.curve``."""

    def __init__(self, message: str, curve: FocusCurve | None = None) -> None:
        super().__init__(message)
        self.curve = curve


@runtime_checkable
class FocusAxis(Protocol):
    """What a focus scan needs from a stage axis (PI GCS driver, emulator, twin)."""

    @property
    def position_um(self) -> float: ...

    def move_to(self, position_um: float, wait: bool = True) -> None: ...


# ------------------------------------------------------------------------------- metrics
# Every metric is a quadratic form of the zero-mean frame over the squared mean level. Quantum
# noise is blurred by the same screen/optics as the structure, so on noisy frames a plain metric
# peaks where the noise power peaks, not where the sample is sharpest (on a thick screen the two
# differ by microns). Given two independent half-averages a and b of one focus step, the noise
# power of their mean equals the power of (a - b) / 2 in expectation, so
#     metric_signal = Q((a + b) / 2) - Q((a - b) / 2)
# is an unbiased estimate of the noise-free metric. Pass such a pair as a (2, rows, cols) array.
def _frame(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[0] == 2:
        if min(img.shape[1:]) < 4:
            raise FocusError(f"sharpness needs frames of at least 4x4 pixels, got {img.shape}")
    elif img.ndim != 2 or min(img.shape) < 4:
        raise FocusError(f"sharpness needs a 2-D frame of at least 4x4 pixels (or a pair of "
                         f"half-averages, shape (2, rows, cols)), got {img.shape}")
    if not np.isfinite(img).all():
        raise FocusError(f"frame contains {int((~np.isfinite(img)).sum())} non-finite pixels")
    return img


def _mean_level(img: np.ndarray) -> float:
    mean = float(img.mean())
    if not mean > 0:
        raise FocusError(f"frame mean is {mean:.3g}; intensity-normalised sharpness needs a "
                         f"positive image (dark frame or tube off?)")
    return mean


def _debiased(image: np.ndarray, quadratic: Callable[[np.ndarray], float]) -> float:
    """quadratic(zero-mean frame) / mean^2, noise-bias corrected for a pair of half-averages."""
    img = _frame(image)
    if img.ndim == 2:
        mean = _mean_level(img)
        return quadratic(img - mean) / mean ** 2
    avg = 0.5 * (img[0] + img[1])
    diff = 0.5 * (img[0] - img[1])
    mean = _mean_level(avg)
    return (quadratic(avg - mean) - quadratic(diff - diff.mean())) / mean ** 2


def normalized_variance(image: np.ndarray) -> float:
    """Variance divided by the mean squared: contrast, independent of exposure and tube current."""
    return _debiased(image, lambda x: float(np.mean(x * x)))


def brenner_gradient(image: np.ndarray) -> float:
    """Mean squared difference of pixels two apart (rows and columns), over the mean squared."""
    def q(x):
        dx = x[:, 2:] - x[:, :-2]
        dy = x[2:, :] - x[:-2, :]
        return float(np.mean(dx * dx) + np.mean(dy * dy))
    return _debiased(image, q)


def _hf_band(shape: tuple[int, int], cutoff_fraction: float):
    if not 0 < cutoff_fraction < 1:
        raise FocusError(f"cutoff_fraction must be in (0, 1), got {cutoff_fraction}")
    win = np.outer(np.hanning(shape[0]), np.hanning(shape[1]))
    fr = np.fft.fftfreq(shape[0])[:, None]
    fc = np.fft.rfftfreq(shape[1])[None, :]
    band = np.hypot(fr, fc) / 0.5 > cutoff_fraction  # radius 1.0 at Nyquist
    # the DC power of the windowed mean level is mean^2 * (sum of the window)^2
    norm = float(win.sum()) ** 2
    return win, band, norm


def high_frequency_energy(image: np.ndarray, cutoff_fraction: float = 0.25) -> float:
    """Power-spectrum energy above ``cutoff_fraction`` of the Nyquist radius, relative to the
    DC (mean-level) power, so it does not depend on exposure or tube current.

    Normalising by the DC term rather than by the total non-DC power keeps the metric monotonic
    in defocus. The frame is Hann-windowed so its edges add no leakage.
    """
    win, band, norm = _hf_band(_frame(image).shape[-2:], cutoff_fraction)

    def q(x):
        return float((np.abs(np.fft.rfft2(x * win)) ** 2)[band].sum() / norm)
    return _debiased(image, q)


def high_frequency_energy_sd(image: np.ndarray, cutoff_fraction: float = 0.25) -> float:
    """Standard deviation of :func:`high_frequency_energy` on a pair of half-averages, from the
    pair itself (no repeated steps needed).

    Per Fourier mode k of the band, with A_k, D_k the windowed transforms of the average and of
    the half-difference, noise power s_k and structure power P_k: the debiased term
    |A_k|^2 - |D_k|^2 has the variance 2 P_k s_k + 2 s_k^2 = 2 (P_k + s_k) s_k for complex
    Gaussian noise (structure x noise, and the two noise powers); the average and the
    half-difference are independent with E|A_k|^2 = P_k + s_k and E|D_k|^2 = s_k, so the product
    2 |A_k|^2 |D_k|^2 estimates it without bias. The window makes neighbouring modes covary: the
    sum is multiplied by N sum(w^4) / (sum(w^2))^2 (1.94 per axis for a Hann window); in the 0
    and Nyquist columns of the half spectrum, modes k and -k are conjugates and count twice.
    Returns NaN for a single frame (no noise estimate).
    """
    img = _frame(image)
    if img.ndim == 2:
        return float("nan")
    win, band, norm = _hf_band(img.shape[-2:], cutoff_fraction)
    avg = 0.5 * (img[0] + img[1])
    diff = 0.5 * (img[0] - img[1])
    mean = _mean_level(avg)
    a2 = np.abs(np.fft.rfft2((avg - avg.mean()) * win)) ** 2
    d2 = np.abs(np.fft.rfft2((diff - diff.mean()) * win)) ** 2
    # in the 0 (and Nyquist) column of the rfft the rows k and -k are conjugates, both summed
    weight = np.ones(a2.shape)
    weight[:, 0] = 2.0
    if img.shape[-1] % 2 == 0:
        weight[:, -1] = 2.0
    var = float((weight * 2.0 * a2 * d2)[band].sum())
    kappa = win.size * float((win ** 4).sum()) / float((win ** 2).sum()) ** 2
    return float(np.sqrt(kappa * var) / norm / mean ** 2)


METRICS: dict[str, Callable[[np.ndarray], float]] = {
    "hf_energy": high_frequency_energy,
    "brenner": brenner_gradient,
    "normalized_variance": normalized_variance,
}
# metric -> its standard deviation from one pair of half-averages (where derived)
METRIC_SD: dict[Callable[[np.ndarray], float], Callable[[np.ndarray], float]] = {
    high_frequency_energy: high_frequency_energy_sd,
}
MetricName = Literal["hf_energy", "brenner", "normalized_variance"]

# Default metric, chosen by measurement on the twin (`xinstrument bench focus`): the optimum of
# each metric on noise-free frames of the lens bench, offset from the twin's best focus (the
# stage position maximising the image's high-frequency energy, integral of MTF^2 f df), over
# the pcb, chart and every sample family. Thick screen (YAG 200 um, best focus 58.4 um): max
# |offset| hf_energy 0.9 um, brenner 13.3 um, normalized_variance 24.6 um (its optimum sits at
# the mean depth of the light, ~20 um deeper: on a 40-80 um range it lands on the edge). Thin
# screen (20 um): all three within 0.23 um. Only hf_energy focuses the thick screen where it is
# sharpest whatever the sample.
# Noisy scans with it (128 px, 1 um steps over +-8 um, flat-field corrected): at 4 x 1 s per
# step the thin screen lands within 0.5 um of the metric's noise-free optimum but on the
# low-contrast families (powders, fractal texture; both warned), at 16 x 1 s on all 13 samples
# (rms 0.12 um). The thick screen's curve is broad (3 um off the optimum the metric drops by
# 1.5-5 step sd on structured samples at 4 x 1 s, 0.03-0.9 on low-contrast ones) and asymmetric
# (the Gaussian fit over +-4 um lands 0.25-0.37 um off on noise-free frames): 16 x 1 s brings 10
# of 13 within 0.5 um; the expected uncertainty says +-0.5 um takes a median 34-46 frames per
# step, 420-1500 for the chart, powders and mixed families and ~4e4-1e5 for the fractal texture.
# That expected sd (from the curve's shape and the step sd) matches the scatter of repeated scans
# (rms ratio 1.01 thick, 1.03 thin); a single thick-screen scan's own fit sd is ~2x too small.
DEFAULT_METRIC: MetricName = "hf_energy"


def sharpness(image: np.ndarray, metric: str | Callable[[np.ndarray], float]) -> float:
    fn = _metric_fn(metric)
    value = float(fn(image))
    if not np.isfinite(value):
        raise FocusError(f"sharpness metric returned {value}")
    return value


def _metric_fn(metric: str | Callable[[np.ndarray], float]) -> Callable[[np.ndarray], float]:
    if callable(metric):
        return metric
    try:
        return METRICS[metric]
    except KeyError:
        raise FocusError(f"unknown sharpness metric {metric!r}; choose one of "
                         f"{sorted(METRICS)} or pass a callable") from None


# ------------------------------------------------------------------------------- peak fit
def _gauss(z: np.ndarray, amp: float, z0: float, sigma: float, base: float) -> np.ndarray:
    return base + amp * np.exp(-0.5 * ((z - z0) / sigma) ** 2)


def fit_peak(positions_um: np.ndarray, values: np.ndarray, model: str = "gaussian",
             half_window: int = 4, sigma: np.ndarray | None = None) -> tuple[float, dict[str, float]]:
    """Sub-step peak position of a sharpness curve, with its statistical uncertainty.

    Fits ``model`` ("gaussian": base + amp exp(-(z-z0)^2 / 2 sigma^2), or "parabola") to the
    points within ``half_window`` samples of the maximum (for the Gaussian: of the smoothed
    curve's maximum, then of the fitted centre). Falls back to the parabola, then to the sampled
    maximum, if a fit fails or puts the centre outside the fitted window.

    ``sigma`` (optional): the standard deviation of each value (e.g. from
    :func:`high_frequency_energy_sd`); the fit is then weighted by it and the centre's standard
    deviation ``centre_sd_um`` follows from the fit covariance in absolute terms, widened by the
    reduced chi^2 where the curve departs from the model by more than its noise. Without it the
    covariance is scaled by the residuals (the scatter about the model stands for the noise).
    A 3-point parabola or the sampled maximum has no such estimate (NaN).

    Returns
    -------
    (best position in um, parameters including "model" used, "centre_um" and "centre_sd_um")
    """
    z = np.asarray(positions_um, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if z.shape != v.shape or z.ndim != 1:
        raise FocusError(f"positions {z.shape} and values {v.shape} must be equal 1-D arrays")
    if z.size < 3:
        raise FocusError(f"peak fit needs at least 3 points, got {z.size}")
    if model not in ("gaussian", "parabola"):
        raise FocusError(f"fit model must be 'gaussian' or 'parabola', got {model!r}")
    sd = None
    if sigma is not None:
        sd = np.asarray(sigma, dtype=np.float64)
        if sd.shape != z.shape:
            raise FocusError(f"sigma {sd.shape} must match the positions {z.shape}")
        if not (np.all(np.isfinite(sd)) and np.all(sd > 0)):
            sd = None  # some step has no noise estimate: fall back to the residual scatter
    order = np.argsort(z)
    z, v = z[order], v[order]
    sd = None if sd is None else sd[order]
    i = int(np.argmax(v))
    params: dict[str, float] = {"peak_at_edge": float(i in (0, z.size - 1)),
                                "centre_sd_um": float("nan")}

    def window(j: int) -> slice:
        return slice(max(0, j - half_window), min(z.size, j + half_window + 1))

    if model == "gaussian" and min(z.size, 2 * half_window + 1) >= 4:
        # The window starts at the maximum of the lightly smoothed curve and is re-centred on the
        # fitted centre (up to 3 times): a window cut off-centre by one noisy step takes in more
        # of one flank, and an asymmetric curve (a thick screen's) then pulls the centre over.
        smooth = np.convolve(v, [0.25, 0.5, 0.25], mode="same")
        smooth[[0, -1]] = v[[0, -1]]
        j = int(np.argmax(smooth))
        fitted = None
        for _ in range(4):
            w = window(j)
            zw, vw = z[w], v[w]
            if zw.size < 4:
                break
            base0 = float(min(vw.min(), v.min()))
            amp0 = float(v[j] - base0) or 1e-12
            step = float(np.median(np.diff(z))) if z.size > 1 else 1.0
            width0 = max(step, 0.25 * float(zw[-1] - zw[0]))
            # bounded: on a flat, noisy top an unbounded Gaussian runs off to an infinite width
            # and amplitude; held to widths up to 10x the scanned span it stays a peak whose
            # covariance says how flat it is
            span = float(z[-1] - z[0])
            lower = (0.0, float(zw[0]), 0.25 * step, -np.inf)
            upper = (np.inf, float(zw[-1]), 10.0 * span, np.inf)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optimize.OptimizeWarning)
                    popt, pcov = optimize.curve_fit(
                        _gauss, zw, vw, p0=(amp0, float(np.clip(z[j], zw[0], zw[-1])),
                                            min(width0, 5.0 * span), base0),
                        sigma=None if sd is None else sd[w], absolute_sigma=sd is not None,
                        bounds=(lower, upper), maxfev=4000)
            except (RuntimeError, ValueError, optimize.OptimizeWarning):
                break
            amp, c, sig, base = (float(p) for p in popt)
            if not (amp > 0 and np.isfinite(c) and zw[0] < c < zw[-1]):
                break
            fitted = (c, amp, sig, base, pcov, zw)
            k = int(np.argmin(np.abs(z - c)))
            if k == j:
                break
            j = k
        if fitted is not None:
            c, amp, sig, base, pcov, zw = fitted
            if sd is not None and zw.size > 4:
                # a curve the model does not follow within the noise (chi^2 per degree of
                # freedom > 1) widens the uncertainty by that ratio (Birge)
                sel = (z >= zw[0]) & (z <= zw[-1])
                chi2 = float(np.sum(((v[sel] - _gauss(z[sel], amp, c, sig, base)) / sd[sel]) ** 2))
                pcov = pcov * max(1.0, chi2 / (zw.size - 4))
            c_sd = float(np.sqrt(pcov[1, 1])) if np.isfinite(pcov[1, 1]) and pcov[1, 1] >= 0 \
                else float("nan")
            params.update(model="gaussian", centre_um=c, amplitude=amp, sigma_um=abs(sig),
                          baseline=base, centre_sd_um=c_sd, window_lo_um=float(zw[0]),
                          window_hi_um=float(zw[-1]))
            return c, params
    w = window(i)
    params.update(window_lo_um=float(z[w][0]), window_hi_um=float(z[w][-1]))
    # parabola over the three to five points around the maximum
    k = min(2, i, z.size - 1 - i)
    if k >= 1:
        zp, vp = z[i - k:i + k + 1], v[i - k:i + k + 1]
        wp = None if sd is None else 1.0 / sd[i - k:i + k + 1]
        if zp.size > 3 or wp is not None:
            coef, cov = np.polyfit(zp - z[i], vp, 2, w=wp, cov="unscaled" if wp is not None else True)
        else:
            coef, cov = np.polyfit(zp - z[i], vp, 2), np.full((3, 3), np.nan)
        a, b, c0 = coef
        if a < 0:
            c = float(z[i] - b / (2 * a))
            if zp[0] <= c <= zp[-1]:
                # delta method: c = z_i - b / 2a
                g = np.array([b / (2 * a * a), -1 / (2 * a), 0.0])
                var = float(g @ cov @ g)
                params.update(model="parabola", centre_um=c, curvature=float(a),
                              peak_value=float(c0 - b * b / (4 * a)),
                              centre_sd_um=float(np.sqrt(var)) if np.isfinite(var) and var >= 0
                              else float("nan"))
                return c, params
    params.update(model="sample_max", centre_um=float(z[i]), peak_value=float(v[i]))
    return float(z[i]), params


# ------------------------------------------------------------------------------- scan
@dataclass
class FocusCurve:
    """Result of a focus scan: every step, the fit and where the axis was left."""

    positions_um: np.ndarray          # read back from the axis at each step
    metric_values: np.ndarray
    metric: str
    best_position_um: float
    fit_params: dict[str, float]
    requested_um: np.ndarray = field(default_factory=lambda: np.empty(0))
    frames_per_step: int = 1
    peak_at_edge: bool = False        # maximum on the first/last step: widen the range
    final_position_um: float | None = None
    coarse: FocusCurve | None = None  # the coarse pass of a coarse-then-fine scan
    warnings: list[str] = field(default_factory=list)  # optimum on the range's edge, flat curve
    # standard deviation of each step's metric (from its pair of half-averages; NaN where the
    # metric has no such estimate or the frame was single) and of the fitted optimum
    metric_sd: np.ndarray = field(default_factory=lambda: np.empty(0))
    best_position_sd_um: float = float("nan")

    def as_array(self) -> np.ndarray:
        """(n, 2) array of (position_um, metric) for storage (e.g. analysis/focus_curve)."""
        return np.column_stack([self.positions_um, self.metric_values])


ProgressCallback = Callable[[int, int, float, float], None]
"""progress(step_index, n_steps, position_um, metric_value), called after each step."""

Acquire = Callable[[int], np.ndarray]
"""acquire(frames_per_step) -> averaged (and usually flat-field corrected) 2-D frame."""


def check_range(start_um: float, stop_um: float, limits_um: tuple[float, float] | None,
                what: str = "focus scan") -> None:
    """Refuse a scan range outside the axis travel (soft limits) before anything moves."""
    if limits_um is None:
        return
    lo, hi = (float(v) for v in limits_um)
    bad = [f"{name} {v:g} um" for name, v in (("start", start_um), ("stop", stop_um))
           if not lo - 1e-9 <= v <= hi + 1e-9]
    if bad:
        raise FocusError(f"{what}: {' and '.join(bad)} outside the focus axis travel "
                         f"{lo:g}..{hi:g} um (soft limits); choose a range inside it")


def _positions(start_um: float, stop_um: float, step_um: float) -> np.ndarray:
    for name, val in (("start_um", start_um), ("stop_um", stop_um), ("step_um", step_um)):
        if not np.isfinite(val):
            raise FocusError(f"{name} must be finite, got {val}")
    if not step_um > 0:
        raise FocusError(f"step_um must be > 0, got {step_um}")
    if stop_um < start_um:
        raise FocusError(f"stop_um ({stop_um}) must be >= start_um ({start_um})")
    n = int(np.floor((stop_um - start_um) / step_um + 1e-9)) + 1
    if n < 3:
        raise FocusError(f"range {start_um}..{stop_um} um in {step_um} um steps gives {n} "
                         f"positions; a peak fit needs at least 3")
    if n > 100_000:
        raise FocusError(f"{n} focus positions requested; check the range and step")
    return start_um + step_um * np.arange(n)


def focus_scan(axis: FocusAxis, acquire: Acquire, start_um: float, stop_um: float,
               step_um: float = 1.0, frames_per_step: int = 10,
               metric: str | Callable[[np.ndarray], float] = DEFAULT_METRIC,
               fit: str = "gaussian", move_to_best: bool = True,
               progress: ProgressCallback | None = None,
               abort: threading.Event | None = None,
               roi: tuple[int, int, int, int] | None = None,
               limits_um: tuple[float, float] | None = None,
               pass_name: str = "scan", tolerance_um: float | None = None) -> FocusCurve:
    """Step ``axis`` from ``start_um`` to ``stop_um``, score each averaged frame, fit the peak.

    Parameters
    ----------
    axis : anything with ``move_to(position_um, wait=True)`` and ``position_um``
    acquire : ``acquire(frames_per_step)`` returns the averaged frame at the current position,
        or a (2, rows, cols) pair of half-averages for noise-bias corrected metrics
    step_um : 1 um by default (matches the depth of field of high-NA lens-coupled optics)
    metric : "normalized_variance", "brenner", "hf_energy" or a callable frame -> float
    fit : "gaussian" or "parabola" peak model
    move_to_best : leave the axis at the fitted optimum (else back at the starting position)
    progress : called after each step with (index, n_steps, position_um, value)
    abort : set it from another thread to stop; raises :class:`FocusScanAborted` with the
        partial curve and returns the axis to where it started
    roi : (row0, col0, rows, cols) of the frame to score (e.g. the sample, not the blank edge)
    limits_um : the axis travel (soft limits); a range outside it is refused before any move
    pass_name : "scan", "coarse" or "fine", for the warnings
    tolerance_um : how well the optimum must be determined (default half a step; not checked
        on a coarse pass): an optimum whose 2-sd uncertainty exceeds it is a warning that says
        how many frames per step would bring it there

    An optimum on the first or last step is reported in ``warnings`` (widen the range), so is a
    curve that does not rise above its noise (no focus dependence: a contact screen, no X-rays).
    With pairs of half-averages and the default metric, each step's metric has its standard
    deviation from the pair itself (:func:`high_frequency_energy_sd`): the peak fit is weighted
    by it and the optimum's standard deviation is ``best_position_sd_um``.
    """
    if int(frames_per_step) != frames_per_step or frames_per_step < 1:
        raise FocusError(f"frames_per_step must be an integer >= 1, got {frames_per_step!r}")
    metric_fn = _metric_fn(metric)
    metric_sd_fn = METRIC_SD.get(metric_fn)
    metric_name = metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")
    targets = _positions(float(start_um), float(stop_um), float(step_um))
    tol = 0.5 * float(step_um) if tolerance_um is None else float(tolerance_um)
    if not tol > 0:
        raise FocusError(f"tolerance_um must be > 0, got {tolerance_um}")
    check_range(float(start_um), float(stop_um), limits_um)
    start_position = float(axis.position_um)
    read_back = np.full(targets.size, np.nan)
    values = np.full(targets.size, np.nan)
    value_sd = np.full(targets.size, np.nan)
    done = 0
    try:
        for k, target in enumerate(targets):
            if abort is not None and abort.is_set():
                raise FocusScanAborted(f"focus scan aborted after {k} of {targets.size} steps")
            axis.move_to(float(target), wait=True)
            read_back[k] = float(axis.position_um)
            frame = np.asarray(acquire(int(frames_per_step)))
            if roi is not None:
                r0, c0, nr, nc = roi
                frame = frame[..., r0:r0 + nr, c0:c0 + nc]
            try:
                values[k] = sharpness(frame, metric_fn)
                if metric_sd_fn is not None:
                    value_sd[k] = metric_sd_fn(frame)
            except FocusError as exc:
                raise FocusError(f"step {k} at {read_back[k]:.3f} um: {exc}") from exc
            done = k + 1
            if progress is not None:
                progress(k, targets.size, float(read_back[k]), float(values[k]))
    except BaseException as exc:
        # leave the optics where the operator had them, and hand back what was measured
        try:
            axis.move_to(start_position, wait=True)
        except Exception as move_exc:  # noqa: BLE001 - the scan's own error is re-raised below
            _log.warning("focus scan: could not return the axis to %.3f um: %r",
                         start_position, move_exc)
        if isinstance(exc, FocusScanAborted):
            exc.curve = FocusCurve(read_back[:done], values[:done], metric_name, float("nan"),
                                   {}, targets[:done], int(frames_per_step))
        raise
    best, params = fit_peak(read_back, values, fit, sigma=value_sd)
    best_sd = float(params.get("centre_sd_um", float("nan")))
    at_edge = bool(params.get("peak_at_edge", 0.0))
    notes = _curve_warnings(read_back, values, best, at_edge, float(step_um), pass_name,
                            limits_um)
    span = float(np.nanmax(read_back) - np.nanmin(read_back))
    if pass_name != "coarse" and not at_edge and np.isfinite(best_sd) and 2 * best_sd > tol:
        if 2 * best_sd > span:
            notes.append(f"{pass_name} optimum {best:.2f} um is poorly determined, not at all by "
                         f"the curve: its uncertainty (2 sd, from the metric's noise) exceeds the {span:g} um "
                         "range; choose a region of the sample with fine structure, or average "
                         "many more frames per step")
        else:
            # the optimum's uncertainty scales as 1 / sqrt(frames per step) where noise dominates
            need = int(np.ceil(frames_per_step * (2 * best_sd / tol) ** 2))
            notes.append(f"{pass_name} optimum {best:.2f} um is poorly determined: uncertain by +-{2 * best_sd:.2f} um "
                         f"(2 sd, from the metric's noise), more than +-{tol:g} um: average about "
                         f"{need} frames per step (now {frames_per_step}) or longer exposures, or "
                         "choose a region of the sample with more fine structure")
    for w in notes:
        _log.warning("focus scan: %s", w)
    final = best if move_to_best else start_position
    axis.move_to(final, wait=True)
    return FocusCurve(read_back, values, metric_name, best, params, targets,
                      int(frames_per_step), at_edge, float(axis.position_um), warnings=notes,
                      metric_sd=value_sd, best_position_sd_um=best_sd)


def _curve_warnings(positions: np.ndarray, values: np.ndarray, best: float, at_edge: bool,
                    step_um: float, pass_name: str,
                    limits_um: tuple[float, float] | None) -> list[str]:
    out: list[str] = []
    lo, hi = float(positions.min()), float(positions.max())
    if at_edge:
        side = "start" if abs(best - lo) <= abs(best - hi) else "stop"
        span = hi - lo
        new_lo, new_hi = (lo - span / 2, hi - span / 2) if side == "start" else (lo + span / 2, hi + span / 2)
        if limits_um is not None:
            new_lo, new_hi = max(new_lo, limits_um[0]), min(new_hi, limits_um[1])
        at_travel = limits_um is not None and (abs(best - limits_um[0]) < step_um
                                               or abs(best - limits_um[1]) < step_um)
        out.append(
            f"{pass_name} optimum {best:.2f} um is on the {side} of the range {lo:g}..{hi:g} um: "
            "the true optimum may lie beyond it; "
            + ("it is at the end of the axis travel (check the optics' mounting)" if at_travel else
               f"widen the range (e.g. {new_lo:g}..{new_hi:g} um) and scan again"))
    # flat curve: the peak does not rise above the step-to-step scatter
    if values.size >= 5:
        scatter = float(np.median(np.abs(np.diff(values, 2)))) / np.sqrt(6.0) * 1.4826
        rise = float(values.max() - np.median(values))
        if rise <= 3.0 * scatter or rise <= 1e-6 * abs(float(values.max())):
            out.append(f"{pass_name}: sharpness changes by less than 3x its noise over {lo:g}..{hi:g} um, "
                       "so the optimum is poorly determined: widen the range, average more frames per "
                       "step, or check that the sample has structure in focus and the X-rays are on "
                       "(a contact screen has no focus dependence)")
    return out


def coarse_fine_focus(axis: FocusAxis, acquire: Acquire, centre_um: float | None = None,
                      coarse_half_range_um: float = 50.0, coarse_step_um: float = 5.0,
                      fine_half_range_um: float | None = None, fine_step_um: float = 1.0,
                      frames_per_step: int = 10, coarse_frames_per_step: int | None = None,
                      **kwargs) -> FocusCurve:
    """Coarse scan over a wide range, then a 1 um fine scan around the coarse optimum.

    The fine range defaults to two coarse steps either side of the coarse optimum, kept inside
    ``limits_um``. Both passes are checked against ``limits_um`` before anything moves. Progress
    counts the steps of both passes together (one bar, one time-left estimate from start to
    end). If the coarse peak sits on the edge of its range the fine scan still runs there, and
    the result's ``peak_at_edge`` and ``warnings`` tell the caller to widen the range. Extra
    keyword arguments (metric, fit, progress, abort, roi, limits_um) go to both passes.
    """
    centre = float(axis.position_um) if centre_um is None else float(centre_um)
    if not coarse_step_um > fine_step_um:
        raise FocusError(f"coarse_step_um ({coarse_step_um}) must exceed fine_step_um "
                         f"({fine_step_um})")
    move_to_best = kwargs.pop("move_to_best", True)
    progress = kwargs.pop("progress", None)
    limits = kwargs.get("limits_um")
    c_lo, c_hi = centre - coarse_half_range_um, centre + coarse_half_range_um
    check_range(c_lo, c_hi, limits, "coarse focus pass")
    half = 2.0 * coarse_step_um if fine_half_range_um is None else float(fine_half_range_um)
    n_coarse = _positions(c_lo, c_hi, float(coarse_step_um)).size
    n_fine = int(np.floor(2 * half / float(fine_step_um) + 1e-9)) + 1
    total = n_coarse + n_fine

    def passed(offset: int):
        if progress is None:
            return None
        return lambda k, n, z, v: progress(offset + k, max(total, offset + n), z, v)

    coarse = focus_scan(axis, acquire, c_lo, c_hi, coarse_step_um,
                        coarse_frames_per_step or max(1, frames_per_step // 2),
                        move_to_best=True, progress=passed(0), pass_name="coarse", **kwargs)
    f_lo, f_hi = coarse.best_position_um - half, coarse.best_position_um + half
    if limits is not None:
        f_lo, f_hi = max(f_lo, float(limits[0])), min(f_hi, float(limits[1]))
    fine = focus_scan(axis, acquire, f_lo, f_hi, fine_step_um, frames_per_step,
                      move_to_best=move_to_best, progress=passed(n_coarse), pass_name="fine",
                      **kwargs)
    if progress is not None and fine.positions_um.size < n_fine:  # a clipped fine range
        progress(total - 1, total, float(fine.positions_um[-1]), float(fine.metric_values[-1]))
    fine.coarse = coarse
    fine.peak_at_edge = fine.peak_at_edge or coarse.peak_at_edge
    fine.warnings = coarse.warnings + fine.warnings
    return fine


def camera_acquirer(camera, corrector: Callable[[np.ndarray], np.ndarray] | None = None,
                    timeout_s: float | None = None) -> Acquire:
    """An ``acquire(n)`` for focus scans: grab n frames from a drivers.camera Camera, average,
    and apply ``corrector`` (e.g. a FlatFieldCorrector) to the average."""
    from .averaging import average_frames

    def acquire(n_frames: int) -> np.ndarray:
        frames = camera.grab(n_frames, timeout_s=timeout_s)
        avg = average_frames([f.data for f in frames])
        return corrector(avg) if corrector is not None else avg

    return acquire
