"""Dark / flat-field correction, defect maps and drift registration.

Flat-field correction is the division-based background correction used with lens-coupled
scintillator detectors: ``T = (raw - dark) / (flat - dark)`` gives transmission (1 = open beam),
removing per-pixel gain, illumination shading and scintillator blemishes in one step.
Multiplying by the mean of ``flat - dark`` returns display units (counts of an average pixel).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .averaging import average_frames

__all__ = [
    "CorrectionError",
    "DriftRegistrar",
    "FlatFieldCorrector",
    "average_series",
    "build_defect_map",
    "estimate_shift",
    "find_flat_defects",
    "find_hot_pixels",
    "flat_field",
    "fourier_shift",
    "replace_defects",
    "subtract_dark",
]

_MAD_TO_SIGMA = 1.4826


class CorrectionError(ValueError):
    """Inconsistent or unusable correction references (shapes, flats not above darks...)."""


def _check_shapes(**arrays: np.ndarray) -> tuple[int, int]:
    shapes = {name: np.shape(a) for name, a in arrays.items() if a is not None}
    for name, shape in shapes.items():
        if len(shape) != 2:
            raise CorrectionError(f"{name} must be a 2-D frame, got shape {shape}")
    if len(set(shapes.values())) > 1:
        desc = ", ".join(f"{k} {v}" for k, v in shapes.items())
        raise CorrectionError(f"shape mismatch: {desc}")
    return next(iter(shapes.values()))


def _where(mask: np.ndarray, limit: int = 5) -> str:
    rc = np.argwhere(mask)[:limit]
    more = " ..." if mask.sum() > limit else ""
    return ", ".join(f"(row {r}, col {c})" for r, c in rc) + more


def average_series(frames: Sequence[np.ndarray] | np.ndarray, reject_outliers: bool = False,
                   z_threshold: float = 5.0) -> np.ndarray:
    """Average a dark or flat series (list of frames or (n, rows, cols) array) to float32.

    Use ``reject_outliers=True`` (n >= 3) to drop zingers from the reference, which would
    otherwise be imprinted on every corrected frame.
    """
    return average_frames(frames, reject_outliers=reject_outliers, z_threshold=z_threshold)


def subtract_dark(raw: np.ndarray, dark: np.ndarray) -> np.ndarray:
    """``raw - dark`` as float32 (negative values kept: they are noise, not errors)."""
    _check_shapes(raw=raw, dark=dark)
    return np.subtract(raw, dark, dtype=np.float32)


def flat_field(raw: np.ndarray, dark: np.ndarray, flat: np.ndarray, rescale: bool = False,
               defect_map: np.ndarray | None = None) -> np.ndarray:
    """One-shot flat-field correction; see :class:`FlatFieldCorrector`."""
    return FlatFieldCorrector(dark, flat, defect_map=defect_map, rescale=rescale)(raw)


# ---------------------------------------------------------------------------------- defects
def find_hot_pixels(darks: np.ndarray, z_threshold: float = 6.0) -> np.ndarray:
    """Hot (and, from a series, noisy) pixels from dark frames by robust z-score.

    Parameters
    ----------
    darks : averaged dark (rows, cols), or a dark series (n, rows, cols). With a series, pixels
        whose temporal standard deviation is an outlier (random-telegraph noise) are flagged too.
    z_threshold : robust z-score, ``(x - median) / (1.4826 MAD)``, above which a pixel is hot.
    """
    darks = np.asarray(darks, dtype=np.float32)
    if darks.ndim not in (2, 3):
        raise CorrectionError(f"darks must be 2-D or a (n, rows, cols) series, got {darks.shape}")
    if not z_threshold > 0:
        raise CorrectionError(f"z_threshold must be > 0, got {z_threshold}")

    def robust_high(x: np.ndarray) -> np.ndarray:
        med = np.median(x)
        scale = _MAD_TO_SIGMA * np.median(np.abs(x - med))
        if scale <= 0:  # perfectly uniform background: anything above it is an outlier
            return x > med
        return (x - med) / scale > z_threshold

    if darks.ndim == 2:
        return robust_high(darks)
    hot = robust_high(darks.mean(axis=0))
    if darks.shape[0] >= 3:
        hot |= robust_high(darks.std(axis=0))
    return hot


def find_flat_defects(flat: np.ndarray, dark: np.ndarray | None = None,
                      low_fraction: float = 0.5, high_fraction: float | None = 1.5,
                      window_px: int = 7) -> np.ndarray:
    """Dead / low-gain (and optionally over-responding) pixels from an averaged flat.

    A pixel's response is ``flat - dark`` relative to the local median over ``window_px``
    (so slow illumination shading is not flagged). Response below ``low_fraction`` (including
    zero or negative) is dead or low gain; above ``high_fraction`` is over-responding.
    """
    _check_shapes(flat=flat, dark=dark)
    if not 0 < low_fraction < 1:
        raise CorrectionError(f"low_fraction must be in (0, 1), got {low_fraction}")
    if high_fraction is not None and not high_fraction > 1:
        raise CorrectionError(f"high_fraction must be > 1, got {high_fraction}")
    signal = np.asarray(flat, dtype=np.float32)
    if dark is not None:
        signal = signal - np.asarray(dark, dtype=np.float32)
    local = ndimage.median_filter(signal, size=int(window_px), mode="reflect")
    bad = ~(local > 0)
    rel = np.divide(signal, local, out=np.zeros_like(signal), where=~bad)
    defects = bad | (rel < low_fraction)
    if high_fraction is not None:
        defects |= rel > high_fraction
    return defects


def build_defect_map(dark: np.ndarray, flat: np.ndarray, hot_z_threshold: float = 6.0,
                     low_fraction: float = 0.5, high_fraction: float | None = 1.5,
                     dark_series: np.ndarray | None = None) -> np.ndarray:
    """Boolean defect map: hot pixels from the darks OR dead/low-gain pixels from the flat."""
    _check_shapes(dark=dark, flat=flat)
    hot = find_hot_pixels(dark_series if dark_series is not None else dark, hot_z_threshold)
    if hot.shape != np.shape(dark):
        raise CorrectionError(f"dark_series frames {hot.shape} do not match dark {np.shape(dark)}")
    return hot | find_flat_defects(flat, dark, low_fraction, high_fraction)


def replace_defects(image: np.ndarray, defect_map: np.ndarray, window_px: int = 3,
                    max_window_px: int = 33) -> np.ndarray:
    """Replace each defective pixel by the median of the good pixels around it.

    The window starts at ``window_px`` and grows (by 2) for pixels inside defect clusters until it
    holds at least one good pixel. Returns a new float32 array.
    """
    _check_shapes(image=image, defect_map=defect_map)
    defect_map = np.asarray(defect_map, dtype=bool)
    out = np.array(image, dtype=np.float32, copy=True)
    if not defect_map.any():
        return out
    if defect_map.all():
        raise CorrectionError("defect map marks every pixel; nothing to interpolate from")
    rows, cols = np.nonzero(defect_map)
    masked = np.where(defect_map, np.nan, out)
    todo = np.arange(rows.size)
    w = max(3, int(window_px) | 1)
    while todo.size:
        if w > max_window_px:
            stuck = _mask_at(defect_map, rows[todo], cols[todo])
            raise CorrectionError(f"{todo.size} defective pixels have no good neighbour within "
                                  f"{max_window_px} px, e.g. {_where(stuck)}")
        h = w // 2
        padded = np.pad(masked, h, mode="constant", constant_values=np.nan)
        win = np.lib.stride_tricks.sliding_window_view(padded, (w, w))[rows[todo], cols[todo]]
        flat_win = win.reshape(todo.size, -1)
        has_good = ~np.all(np.isnan(flat_win), axis=1)
        if has_good.any():
            with np.errstate(all="ignore"):
                out[rows[todo[has_good]], cols[todo[has_good]]] = np.nanmedian(
                    flat_win[has_good], axis=1)
        todo = todo[~has_good]
        w += 2
    return out


def _mask_at(template: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    m = np.zeros(template.shape, dtype=bool)
    m[rows, cols] = True
    return m


# ------------------------------------------------------------------------- flat-field corrector
class FlatFieldCorrector:
    """Dark/flat correction with defect replacement, ready to be a pipeline stage.

    Parameters
    ----------
    dark, flat : averaged dark and flat frames of the same shape (any numeric dtype).
    defect_map : optional boolean map; flagged pixels are replaced by the median of good
        neighbours after the division. Pixels where ``flat <= dark`` must be in it.
    rescale : multiply by the mean of ``flat - dark`` (over good pixels) so the output is in
        display units (counts) instead of transmission.

    Calling the corrector on a raw frame returns float32.
    """

    def __init__(self, dark: np.ndarray, flat: np.ndarray, defect_map: np.ndarray | None = None,
                 rescale: bool = False) -> None:
        shape = _check_shapes(dark=dark, flat=flat, defect_map=defect_map)
        self.shape = shape
        self.dark = np.asarray(dark, dtype=np.float32)
        flat32 = np.asarray(flat, dtype=np.float32)
        for name, a in (("dark", self.dark), ("flat", flat32)):
            if not np.isfinite(a).all():
                raise CorrectionError(f"{name} contains {int((~np.isfinite(a)).sum())} "
                                      f"non-finite pixels, e.g. {_where(~np.isfinite(a))}")
        self.defect_map = (np.zeros(shape, dtype=bool) if defect_map is None
                           else np.asarray(defect_map, dtype=bool))
        signal = flat32 - self.dark
        not_brighter = (signal <= 0) & ~self.defect_map
        if not_brighter.any():
            n = int(not_brighter.sum())
            raise CorrectionError(
                f"flat is not brighter than dark in {n} of {signal.size} pixels "
                f"({100.0 * n / signal.size:.3g} %), e.g. {_where(not_brighter)}; check that the "
                f"tube was on for the flats, or mark these pixels in the defect map "
                f"(build_defect_map)")
        good = ~self.defect_map
        if not good.any():
            raise CorrectionError("defect map marks every pixel")
        self.flat_mean = float(signal[good].mean())
        safe = np.where(good, signal, 1.0)
        self.rescale = bool(rescale)
        # multiply by a precomputed reciprocal: one pass over each frame instead of two
        self._gain = (1.0 / safe).astype(np.float32)
        if self.rescale:
            self._gain *= np.float32(self.flat_mean)
        self._has_defects = bool(self.defect_map.any())

    @classmethod
    def from_series(cls, darks: Sequence[np.ndarray] | np.ndarray,
                    flats: Sequence[np.ndarray] | np.ndarray, detect_defects: bool = True,
                    reject_outliers: bool = False, rescale: bool = False,
                    **defect_kwargs: float) -> FlatFieldCorrector:
        """Average dark and flat series and (optionally) derive the defect map from them."""
        dark = average_series(darks, reject_outliers=reject_outliers)
        flat = average_series(flats, reject_outliers=reject_outliers)
        _check_shapes(dark=dark, flat=flat)
        defects = None
        if detect_defects:
            series = np.asarray(darks) if not isinstance(darks, np.ndarray) else darks
            defects = build_defect_map(dark, flat, dark_series=series if series.ndim == 3 else None,
                                       **defect_kwargs)
        return cls(dark, flat, defect_map=defects, rescale=rescale)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if np.shape(frame) != self.shape:
            raise CorrectionError(f"frame shape {np.shape(frame)} does not match the correction "
                                  f"references {self.shape}")
        out = np.subtract(frame, self.dark, dtype=np.float32)
        np.multiply(out, self._gain, out=out)
        if self._has_defects:
            out = replace_defects(out, self.defect_map)
        return out


# ---------------------------------------------------------------------------- drift registration
def _hann2d(shape: tuple[int, int]) -> np.ndarray:
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1])).astype(np.float64)


def _upsampled_dft(spec: np.ndarray, centre: tuple[float, float], factor: int,
                   size: int) -> np.ndarray:
    """Inverse DFT of ``spec`` evaluated on a ``size``x``size`` grid of spacing 1/factor
    centred on ``centre`` (pixels), by two small matrix products instead of a huge FFT."""
    rows, cols = spec.shape
    offs = (np.arange(size) - size // 2) / factor
    fr = np.fft.fftfreq(rows)
    fc = np.fft.fftfreq(cols)
    kr = np.exp(2j * np.pi * np.outer(centre[0] + offs, fr))     # (size, rows)
    kc = np.exp(2j * np.pi * np.outer(fc, centre[1] + offs))     # (cols, size)
    return kr @ spec @ kc


def estimate_shift(reference: np.ndarray, moving: np.ndarray,
                   upsample: int = 20) -> tuple[float, float]:
    """Translation (drow, dcol) in pixels that, applied to ``moving``, aligns it to ``reference``.

    Phase correlation (whitened cross-power spectrum) of Hann-windowed, mean-removed images;
    the integer peak is refined to 1/``upsample`` pixel with a local upsampled DFT.
    """
    _check_shapes(reference=reference, moving=moving)
    if int(upsample) < 1:
        raise CorrectionError(f"upsample must be >= 1, got {upsample}")
    win = _hann2d(np.shape(reference))
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(moving, dtype=np.float64)
    fa = np.fft.fft2((a - a.mean()) * win)
    fb = np.fft.fft2((b - b.mean()) * win)
    cross = fa * np.conj(fb)  # peaks at minus the displacement of moving: the correction
    mag = np.abs(cross)
    if not (mag > 0).any():
        raise CorrectionError("cannot register featureless (constant) frames")
    # partial whitening: pure phase correlation lets noise-only high frequencies (where a
    # blurred image has no signal) weigh as much as the structure and scatters the peak
    cross /= np.sqrt(np.maximum(mag, mag.max() * 1e-12))
    corr = np.fft.ifft2(cross).real
    peak = np.unravel_index(int(np.argmax(corr)), corr.shape)
    shift = np.array([p if p <= n // 2 else p - n for p, n in zip(peak, corr.shape)], float)
    if upsample > 1:
        size = int(np.ceil(upsample * 1.5)) | 1
        local = _upsampled_dft(cross, (shift[0], shift[1]), int(upsample), size).real
        r, c = np.unravel_index(int(np.argmax(local)), local.shape)
        shift += (np.array([r, c]) - size // 2) / upsample
    return float(shift[0]), float(shift[1])


def fourier_shift(image: np.ndarray, shift: tuple[float, float],
                  pad_px: int | None = None) -> np.ndarray:
    """Shift an image by a sub-pixel (drow, dcol) with a Fourier phase ramp.

    The image is reflect-padded first so the circular shift does not wrap the opposite edge in.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise CorrectionError(f"expected a 2-D image, got shape {img.shape}")
    dr, dc = (float(s) for s in shift)
    if not (np.isfinite(dr) and np.isfinite(dc)):
        raise CorrectionError(f"shift must be finite, got {shift}")
    pad = int(np.ceil(max(abs(dr), abs(dc)))) + 4 if pad_px is None else int(pad_px)
    pad = min(pad, min(img.shape) - 1)
    padded = np.pad(img, pad, mode="reflect") if pad > 0 else img
    rows, cols = padded.shape
    ramp = np.exp(-2j * np.pi * (np.fft.fftfreq(rows)[:, None] * dr
                                 + np.fft.rfftfreq(cols)[None, :] * dc))
    out = np.fft.irfft2(np.fft.rfft2(padded) * ramp, s=padded.shape)
    if pad > 0:
        out = out[pad:-pad, pad:-pad]
    return out.astype(np.float32)


@dataclass
class DriftRegistrar:
    """Registers each frame to a reference (the first frame seen, unless given).

    Meant for averaged frames of a long series where the sample or scintillator drifts
    thermally. ``shifts`` records the applied (drow, dcol) per frame; shifts larger than
    ``max_shift_px`` raise, since they mean the scene changed rather than drifted.
    """

    reference: np.ndarray | None = None
    upsample: int = 20
    max_shift_px: float = 50.0

    def __post_init__(self) -> None:
        self.shifts: list[tuple[float, float]] = []

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if self.reference is None:
            self.reference = np.array(frame, dtype=np.float32, copy=True)
            self.shifts.append((0.0, 0.0))
            return np.asarray(frame, dtype=np.float32)
        shift = estimate_shift(self.reference, frame, self.upsample)
        if max(abs(shift[0]), abs(shift[1])) > self.max_shift_px:
            raise CorrectionError(f"drift of {shift} px exceeds max_shift_px={self.max_shift_px}")
        self.shifts.append(shift)
        return fourier_shift(frame, shift)
