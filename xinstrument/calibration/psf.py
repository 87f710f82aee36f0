"""PSF of a thick scintillator relative to a thin one.

- :func:`mtf_ratio`: regularised MTF_LR / MTF_HR on a 1-D frequency grid (papers 000-002: the
  blur between thin and thick detectors is the ratio of their MTFs).
- :func:`fit_mtf_ratio`: the ratio of two measured (noisy) MTFs as a non-negative mixture of
  Gaussian blurs fitted to the quotient with its noise (what ``xinstrument calibrate mtf`` stores).
- :func:`psf_from_mtf_ratio`: that radial ratio turned into a 2-D odd square kernel.
- :func:`extract_psf`: PSF_all from a registered thin/thick image pair, on a window that keeps
  the central structure (paper 004: 60 x 60 px). Default method: the non-negative kernel that
  fits thick = thin (*) psf + offset in weighted least squares, with a smoothness penalty that
  grows with radius (:func:`lsq_kernel`); it converges to one answer whatever pixels are left
  out, so masking defects removes data, not accuracy. Paper 004's Richardson-Lucy deconvolution
  (:func:`richardson_lucy_kernel`) is kept as ``method="rl"``. Hot, cold and clipped pixels are
  repaired in the thin image and left out of the fit in the thick one; dust and other compact
  defects of either image are found as significant blobs of the first fit's residual, repaired
  in the thin image and left out of the fit with the rim the PSF core spreads them over.
- :func:`psf_shape`: peak, FWHM and halo energy, the figures NCC does not show.
- :func:`radial_profile`: 2-D spectrum or kernel -> 1-D radial curve.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from xinstrument.calibration._checks import as_image, positive
from xinstrument.calibration.registration import Registration, register

# Paper 004 (section 3) limits Lucy-Richardson to eight iterations from its start. Here RL starts
# from a regularised Fourier quotient, which is smoother than the PSF: on thin/thick pairs with a
# known Gaussian + exponential-halo PSF (doses 300-5000 quanta/px), 8 iterations leave the halo
# energy 2.5x too high and the peak at half its value, 30 come within 20 % of both (NCC 0.985-
# 0.998, the best of 8-50); 50 over-sharpen. Its residual masking then selects the pixels where
# the unconverged estimate misfits most (sharp specks), which doubles the halo: see lsq_kernel.
RL_ITERATIONS = 30
PSF_WINDOW_PX = 61  # paper 004 truncates to 60 x 60; odd so that the kernel has a centre pixel
MTF_HR_FLOOR = 0.02  # below this the thin detector carries no usable signal; ratio is regularised


def _interior_weights(shape, margin_px: int, weights=None) -> np.ndarray:
    """1 inside ``margin_px`` of the border (the kernel's reach), times ``weights`` (a defect
    mask); an error when nothing is left to fit."""
    w = np.zeros(shape)
    w[margin_px:shape[0] - margin_px, margin_px:shape[1] - margin_px] = 1.0
    if weights is not None:
        w = w * np.asarray(weights, dtype=float)
    if not w.any():
        raise ValueError("PSF extraction: no usable pixels left after masking defects")
    return w


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


# Ratio of measured MTFs (fit_mtf_ratio). The thick screen's image is a depth-weighted sum of
# defocused images, k(z) >= 0 (shared/papers/004, eq. 1-2), so its extra blur over the thin screen
# is modelled as a non-negative mixture of Gaussian blurs: ratio(f) = w_0 + sum_k w_k
# exp(-2 pi^2 s_k^2 f^2), w >= 0, sum w = 1 (w_0: light as sharp as the thin screen's, the
# layer within the depth of field). Every such curve falls monotonically and has a
# non-negative, smooth kernel; a rise towards Nyquist or a wiggle (ESF noise, aliasing) cannot be
# fitted, and a wiggle is what spreads the kernel's LSF over tens of pixels.
RATIO_FIT_WIDTHS_PX = np.geomspace(0.1, PSF_WINDOW_PX / 2, 48)  # s_k: no wider than the stored kernel
# The thick screen's MTF below this many of its noise sd is noise with a Rayleigh bias (its
# magnitude is never below the noise): the quotient there is left out of the fit.
RATIO_MIN_LR_SNR = 3.0
# Frequencies up to which ratio / sd(ratio) stays above this are "reliable" (recorded).
RATIO_RELIABLE_SNR = 10.0
# sd floor of the quotient: the measurement's accuracy beyond its noise (edge fit, binning
# corrections; MTFs agree with their analytic values within 1e-3 in tests/calibration/test_mtf.py).
RATIO_SD_FLOOR = 1e-3


@dataclass
class RatioFit:
    """MTF ratio fitted to a measured quotient; see :func:`fit_mtf_ratio`."""

    ratio: np.ndarray        # the fit on the given grid (1 at f = 0, non-increasing)
    measured: np.ndarray     # MTF_LR / MTF_HR as measured (NaN where MTF_HR <= floor)
    measured_sd: np.ndarray  # its noise sd
    used: np.ndarray         # bool, the points the fit used
    reliable_to_cy_per_px: float   # measured / (sd sqrt(max(chi2, 1))) >= RATIO_RELIABLE_SNR up to here
    used_to_cy_per_px: float       # highest frequency the fit used
    reduced_chi2: float            # mean ((measured - fit) / sd)^2 over the used points
    max_deviation_sd: float        # largest |measured - fit| / sd (unscaled) in the reliable band
    sharp_fraction: float          # w_0
    components: int                # Gaussian widths with a non-zero weight

    def record(self, prefix: str = "mtf_ratio") -> dict:
        """Scalars for a profile's [calibration] table."""
        return {f"{prefix}_fit": ("non-negative mixture of Gaussian blurs (depth-weighted "
                                  "superposition, shared/papers/004 eq. 1-2) fitted to MTF_LR / MTF_HR "
                                  "weighted by the edge MTFs' noise; monotone non-increasing"),
                f"{prefix}_reliable_to_cy_per_px": round(self.reliable_to_cy_per_px, 5),
                f"{prefix}_fit_used_to_cy_per_px": round(self.used_to_cy_per_px, 5),
                f"{prefix}_fit_reduced_chi2": round(self.reduced_chi2, 4),
                f"{prefix}_fit_max_deviation_sd": round(self.max_deviation_sd, 3),
                f"{prefix}_sharp_fraction": round(self.sharp_fraction, 5),
                f"{prefix}_fit_components": int(self.components)}


def fit_mtf_ratio(
    frequency_cy_per_px: np.ndarray,
    mtf_lr: np.ndarray,
    mtf_hr: np.ndarray,
    sd_lr: np.ndarray,
    sd_hr: np.ndarray,
    floor: float = MTF_HR_FLOOR,
) -> RatioFit:
    """MTF_LR / MTF_HR of two measured MTFs with noise sd ``sd_lr`` / ``sd_hr``, as the
    non-negative Gaussian mixture (see RATIO_FIT_WIDTHS_PX) closest to the quotient in
    noise-weighted least squares.

    The quotient's sd is propagated from both MTFs' (first order); points where MTF_HR <= ``floor``
    or MTF_LR is below RATIO_MIN_LR_SNR of its sd are left out; ratio(0) = 1 is imposed.
    """
    from scipy.optimize import nnls

    f = np.asarray(frequency_cy_per_px, dtype=float)
    lr, hr = np.asarray(mtf_lr, dtype=float), np.asarray(mtf_hr, dtype=float)
    s_lr, s_hr = np.asarray(sd_lr, dtype=float), np.asarray(sd_hr, dtype=float)
    if f.ndim != 1 or f.size < 4 or any(a.shape != f.shape for a in (lr, hr, s_lr, s_hr)):
        raise ValueError("frequency, mtf_lr, mtf_hr, sd_lr and sd_hr must be 1-D of equal length (>= 4)")
    if not all(np.all(np.isfinite(a)) for a in (f, lr, hr, s_lr, s_hr)):
        raise ValueError("MTFs or their sd contain NaN/inf")
    if f[0] != 0 or np.any(np.diff(f) <= 0):
        raise ValueError("frequency_cy_per_px must start at 0 and increase")
    if np.any(s_lr < 0) or np.any(s_hr < 0):
        raise ValueError("MTF sd must not be negative")
    floor = positive(floor, "floor")
    valid = hr > floor
    measured = np.full(f.shape, np.nan)
    measured[valid] = lr[valid] / hr[valid]
    sd = np.full(f.shape, np.inf)
    sd[valid] = np.hypot(s_lr[valid] / hr[valid], lr[valid] * s_hr[valid] / hr[valid] ** 2)
    sd = np.maximum(sd, RATIO_SD_FLOOR)
    used = valid & (lr >= RATIO_MIN_LR_SNR * s_lr)
    used[0] = False                      # imposed below
    if used.sum() < 3:
        raise ValueError("the thick screen's MTF is above its noise at fewer than 3 frequencies: "
                         "no ratio can be fitted (more edge frames, a larger edge ROI?)")
    basis = np.column_stack([np.ones_like(f)]
                            + [np.exp(-2 * np.pi**2 * s**2 * f**2) for s in RATIO_FIT_WIDTHS_PX])
    a = basis[used] / sd[used, None]
    b = measured[used] / sd[used]
    # ratio(0) = sum w = 1, as a row far heavier than the data's
    heavy = 1e3 * max(1.0, float(np.abs(a).max()))
    w, _ = nnls(np.vstack([a, heavy * basis[:1]]), np.r_[b, heavy])
    fit = basis @ w
    if not fit[0] > 0:
        raise ValueError("the MTF ratio fit has no weight (MTF_LR / MTF_HR not positive)")
    w = w / fit[0]
    fit = np.clip(fit / fit[0], 0.0, 1.0)
    z = (measured - fit) / sd
    chi2 = float(np.mean(z[used] ** 2))
    # The reliable band counts the noise the residuals show when it exceeds the pixel-noise
    # estimate (correlated noise, aliasing: on the twin's 100 um YAG edges chi2 is about 7).
    snr = np.where(valid, measured / (sd * np.sqrt(max(chi2, 1.0))), 0.0)
    low = np.flatnonzero(snr[1:] < RATIO_RELIABLE_SNR)
    reliable_to = float(f[low[0]] if low.size else f[-1])
    band = used & (f <= reliable_to)
    return RatioFit(ratio=fit, measured=measured, measured_sd=sd, used=used,
                    reliable_to_cy_per_px=reliable_to,
                    used_to_cy_per_px=float(f[used].max()),
                    reduced_chi2=chi2,
                    max_deviation_sd=float(np.abs(z[band]).max()) if band.any() else float("nan"),
                    sharp_fraction=float(w[0]), components=int(np.count_nonzero(w[1:] > 1e-9)))


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
class PSFShape:
    """Shape figures of a PSF: what NCC does not show (a halo that doubles, a peak that halves)."""

    peak: float  # largest value of the unit-sum kernel (fraction of the energy in one pixel)
    fwhm_px: float  # full width at half maximum of the azimuthal mean profile
    halo_energy: float  # fraction of the energy beyond halo_radius_px from the centre
    halo_radius_px: float

    def summary(self, pixel_size_um: float | None = None) -> str:
        um = "" if pixel_size_um is None else f" ({self.fwhm_px * pixel_size_um:.2f} um)"
        return (f"peak {self.peak:.4f}, FWHM {self.fwhm_px:.2f} px{um}, halo energy "
                f"{self.halo_energy:.3f} beyond {self.halo_radius_px:.1f} px")


def psf_shape(psf: np.ndarray, halo_radius_px: float | None = None) -> PSFShape:
    """Peak, FWHM and halo energy of a centred, odd-sized kernel (normalised to unit sum here).

    The halo radius defaults to 2 x FWHM: the energy the core does not hold, which the thick
    screen's scattered light and the optics' flare put there.
    """
    k = as_image(np.asarray(psf, dtype=float), "psf", (3, 3))
    if k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
        raise ValueError(f"psf must have odd sizes (a centre pixel), got {k.shape}")
    total = k.sum()
    if not total > 0:
        raise ValueError("psf has no positive weight")
    k = k / total
    # FWHM from the area above half maximum (a circle of diameter FWHM for a round PSF), on a
    # 4x cubic-spline upsampling of the central part so that the pixel grid does not quantise it
    c0, c1 = k.shape[0] // 2, k.shape[1] // 2
    h = min(c0, c1, 15)
    core = ndimage.zoom(k[c0 - h:c0 + h + 1, c1 - h:c1 + h + 1], 4, order=3, grid_mode=False)
    spacing = 2.0 * h / (core.shape[0] - 1)  # zoom maps the end samples onto each other
    area_px = float((core >= 0.5 * k.max()).sum()) * spacing**2
    fwhm = float(2.0 * np.sqrt(area_px / np.pi))
    r_halo = 2.0 * fwhm if halo_radius_px is None else float(halo_radius_px)
    y = np.arange(k.shape[0]) - k.shape[0] // 2
    x = np.arange(k.shape[1]) - k.shape[1] // 2
    r = np.hypot(y[:, None], x[None, :])
    return PSFShape(peak=float(k.max()), fwhm_px=fwhm, halo_energy=float(k[r > r_halo].sum()),
                    halo_radius_px=r_halo)


# Least-squares kernel (lsq_kernel). The smoothness penalty on the kernel's gradient has the weight
# SMOOTH_WEIGHT x (1 + (r / SMOOTH_RADIUS_PX)^SMOOTH_POWER) relative to the data term's scale: the
# core stays free, the tail (where the data hold the halo only as a sum over many pixels) is kept
# smooth. On thin/thick pairs with a known Gaussian + exponential-halo PSF (260 px, thick 5000
# quanta/px, thin 20000; `xinstrument bench metrology`): registered pairs peak -4 %, FWHM +4 %
# (the registration's cubic resampling adds blur), halo energy -1..+3 % of the truth, NCC
# 0.997-0.999; an unshifted pair peak -1 %, FWHM +0.6 %, halo +3 %. Richardson-Lucy (30
# iterations, residual masking) on the registered pairs: peak -20..-28 %, halo energy +125..+155 %,
# NCC 0.990. Smoothness weights of 1e-3 leave NCC 0.996, 1e-1 widen the core.
SMOOTH_WEIGHT = 0.01
SMOOTH_RADIUS_PX = 3.0
SMOOTH_POWER = 3.0
NONNEGATIVE_ROUNDS = 5  # active-set rounds: taps that go negative are fixed at 0 and the rest refit
LSQ_TOLERANCE = 1e-6  # relative residual of the normal equations at which conjugate gradients stop
LSQ_MAX_ITERATIONS = 800


def lsq_kernel(
    thin: np.ndarray,
    thick: np.ndarray,
    size_px: int = PSF_WINDOW_PX,
    weights: np.ndarray | None = None,
    margin_px: int | None = None,
    smooth_weight: float = SMOOTH_WEIGHT,
) -> tuple[np.ndarray, float]:
    """Non-negative kernel k (size_px square, centred) and offset c minimising
    sum w (thick - thin (*) k - c)^2 + smooth_weight S sum_r (1 + (r/r0)^p) |grad k|^2.

    ``weights`` (default 1) is the validity of each thick pixel: 0 leaves a defect out of the fit.
    The data term ignores a ``margin_px`` border (default half the kernel) where the circular
    convolution does not hold. S = sum w (thin - mean)^2 makes the penalty independent of the
    scene's contrast and of how many pixels are valid. Solved by conjugate gradients on the
    normal equations (FFT convolutions), then non-negativity by NONNEGATIVE_ROUNDS active-set
    refits; returns (kernel, offset), the kernel not normalised.
    """
    size = _odd_size(size_px, "size_px")
    a = np.asarray(thin, dtype=float)
    b = np.asarray(thick, dtype=float)
    shape = a.shape
    h = size // 2
    margin = h if margin_px is None else int(margin_px)
    w = _interior_weights(shape, margin, weights)
    am = a - float(a.mean())
    fa = np.fft.rfft2(am)
    taps = np.ix_(np.arange(-h, h + 1) % shape[0], np.arange(-h, h + 1) % shape[1])

    def forward(k: np.ndarray, c: float) -> np.ndarray:
        full = np.zeros(shape)
        full[taps] = k
        return np.fft.irfft2(fa * np.fft.rfft2(full), s=shape) + c

    def adjoint(r: np.ndarray) -> tuple[np.ndarray, float]:
        return np.fft.irfft2(np.conj(fa) * np.fft.rfft2(r), s=shape)[taps], float(r.sum())

    scale = float((w * am**2).sum())
    if not scale > 0:
        raise ValueError("PSF extraction: the thin image has no contrast where the thick one is valid")
    y, x = np.mgrid[-h:h + 1, -h:h + 1]
    lam_y = smooth_weight * scale * (1 + (np.hypot(y[:-1] + 0.5, x[:-1]) / SMOOTH_RADIUS_PX) ** SMOOTH_POWER)
    lam_x = smooth_weight * scale * (1 + (np.hypot(y[:, :-1], x[:, :-1] + 0.5) / SMOOTH_RADIUS_PX) ** SMOOTH_POWER)

    def normal(k: np.ndarray, c: float) -> tuple[np.ndarray, float]:
        gk, gc = adjoint(w * forward(k, c))
        gy = np.diff(k, axis=0) * lam_y
        gx = np.diff(k, axis=1) * lam_x
        gk[:-1] -= gy
        gk[1:] += gy
        gk[:, :-1] -= gx
        gk[:, 1:] += gx
        return gk, gc

    bk, bc = adjoint(w * b)
    rs0 = float((bk**2).sum() + bc**2)
    k = np.zeros((size, size))
    c = 0.0
    free = np.ones((size, size), bool)
    for rnd in range(NONNEGATIVE_ROUNDS):
        k = np.where(free, k, 0.0)
        gk, gc = normal(k, c)
        rk, rc = (bk - gk) * free, bc - gc
        pk, pc = rk.copy(), rc
        rs = float((rk**2).sum() + rc**2)
        for _ in range(LSQ_MAX_ITERATIONS):
            if rs <= LSQ_TOLERANCE**2 * rs0:
                break
            qk, qc = normal(pk, pc)
            qk *= free
            alpha = rs / (float((pk * qk).sum()) + pc * qc)
            k += alpha * pk
            c += alpha * pc
            rk -= alpha * qk
            rc -= alpha * qc
            rs_new = float((rk**2).sum() + rc**2)
            pk = rk + (rs_new / rs) * pk
            pc = rc + (rs_new / rs) * pc
            rs = rs_new
        negative = free & (k < 0)
        if not negative.any():
            break
        free &= ~negative
    return np.maximum(k, 0.0), float(c)


# Defects. A hot or cold pixel stands out from seven of its eight neighbours by DEFECT_Z robust noise sd
# and by SPECK_RATIO times their own rise above the background (scene structure, even a sharp
# speck, shares some of its signal with its neighbours through the optics). A pixel whose thick
# value departs from the thin image through the first PSF estimate by OUTLIER_Z residual sd (dust,
# scratches, a defect in either screen) is left out of the second estimate, with a margin of
# OUTLIER_DILATE_PX for the defect's blurred rim (lsq: and the PSF core's spread beyond it).
DEFECT_Z = 8.0
# A pixel-integrated Gaussian point image of sd 0.5 px puts 3.4x its nearest neighbours' rise into
# its own excess over them, one of sd 0.7 px 1.8x; a hot pixel's neighbours do not rise at all.
SPECK_RATIO = 4.0
OUTLIER_Z = 5.0
OUTLIER_DILATE_PX = 2
MAX_OUTLIER_FRACTION = 0.01
OUTLIER_ROUNDS = 3


def _predict(thin: np.ndarray, thick: np.ndarray, full_kernel: np.ndarray) -> np.ndarray:
    """thin (*) kernel with the offsets richardson_lucy_kernel applies."""
    a = thin - min(0.0, float(thin.min()))
    est = np.fft.irfft2(np.fft.rfft2(a) * np.fft.rfft2(np.fft.ifftshift(full_kernel)), s=thin.shape)
    return est + min(0.0, float(thick.min()))


def _robust_sd(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float).ravel()
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def find_defects(image: np.ndarray, saturation_level: float | None = None,
                 z_threshold: float = DEFECT_Z) -> np.ndarray:
    """Hot/cold isolated pixels and clipped pixels of an image (boolean map)."""
    img = as_image(image, "image", (3, 3))
    # second-highest and second-lowest of the eight neighbours, so that a pair of adjacent hot
    # pixels is found too (ranks 6 and 1 of the 8 sorted neighbours)
    foot = np.ones((3, 3), bool)
    foot[1, 1] = False
    hi = ndimage.rank_filter(img, 6, footprint=foot, mode="reflect")
    lo = ndimage.rank_filter(img, 1, footprint=foot, mode="reflect")
    sd = _robust_sd(img - ndimage.median_filter(img, 3, mode="reflect"))
    noisy = sd > 0
    if not noisy:
        sd = 1e-12 * max(1.0, float(np.abs(img).max()))
    # A sharp speck of the scene raises its nearest neighbours above the background around them;
    # a hot pixel does not: its excess must also exceed SPECK_RATIO times that rise (the ring of
    # the 5 x 5 neighbourhood outside the 3 x 3 one is the background).
    ring = np.ones((5, 5), bool)
    ring[1:4, 1:4] = False
    bg = ndimage.median_filter(img, footprint=ring, mode="reflect")
    defects = ((img - hi > z_threshold * sd + SPECK_RATIO * np.maximum(hi - bg, 0.0))
               | (lo - img > z_threshold * sd + SPECK_RATIO * np.maximum(bg - lo, 0.0)))
    if saturation_level is not None:
        defects |= img >= saturation_level
    elif noisy:
        # a noisy image holds its extreme value in a handful of pixels; clipping holds it in many
        for extreme in (img.max(), img.min()):
            at = img == extreme
            if at.sum() >= max(4, 5e-4 * img.size):
                defects |= at
    return defects


def repair_defects(image: np.ndarray, defects: np.ndarray, half_px: int = 2) -> np.ndarray:
    """Replace each defect pixel by the median of the good pixels in its (2 half_px + 1)^2
    neighbourhood (widened until some are good)."""
    img = np.asarray(image, dtype=float)
    out = img.copy()
    rows, cols = img.shape
    for r, c in np.argwhere(defects):
        h = half_px
        while True:
            r0, r1, c0, c1 = max(0, r - h), min(rows, r + h + 1), max(0, c - h), min(cols, c + h + 1)
            good = ~defects[r0:r1, c0:c1]
            if good.any() or h > max(rows, cols):
                break
            h *= 2
        if good.any():
            out[r, c] = float(np.median(img[r0:r1, c0:c1][good]))
    return out


@dataclass
class PSFExtraction:
    psf: np.ndarray  # odd square, sums to 1, thick = thin (*) psf
    registration: Registration
    iterations: int  # Richardson-Lucy iterations per estimate (0 for the least-squares method)
    full_estimate: np.ndarray  # untruncated estimate (image-sized, centred; lsq: the window kernel)
    shape: PSFShape | None = None
    defects_thin: int = 0  # hot/cold/clipped pixels repaired in the thin image
    defects_thick: int = 0  # hot/cold/clipped pixels masked in the thick image
    masked_fraction: float = 0.0  # share of the thick image's pixels left out of the data term
    method: str = "lsq"  # "lsq" (regularised non-negative least squares) or "rl" (Richardson-Lucy)


def richardson_lucy_kernel(
    thin: np.ndarray,
    thick: np.ndarray,
    iterations: int = RL_ITERATIONS,
    margin_px: int = 0,
    mask: np.ndarray | None = None,
    fill: np.ndarray | None = None,
) -> np.ndarray:
    """Kernel k >= 0 with thick ~= thin (*) k by Richardson-Lucy (image-sized, centred at n//2).

    The data term ignores a ``margin_px`` border where the circular convolution model does not
    hold, and the pixels where ``mask`` is False (defects): masked RL,
    update = thin (x) (M thick/est) / thin (x) M. ``fill`` (e.g. the prediction of an earlier
    estimate) replaces the masked thick pixels in the Fourier start, so that defects do not
    enter it either.
    """
    a = thin - min(0.0, float(thin.min()))
    b = thick - min(0.0, float(thick.min()))
    shape = a.shape
    m = _interior_weights(shape, margin_px, mask)
    fa = np.fft.rfft2(a)

    def conv(fk: np.ndarray) -> np.ndarray:
        return np.fft.irfft2(fa * fk, s=shape)

    def corr(x: np.ndarray) -> np.ndarray:
        return np.fft.irfft2(np.conj(fa) * np.fft.rfft2(x), s=shape)

    norm = np.maximum(corr(m), 1e-12 * float(a.sum()))
    # Start from a Tikhonov-regularised Fourier quotient (non-negative part): RL then only has to
    # refine it, so the few iterations of paper 004 suffice; a flat start needs ~50 here.
    other = float(b[m > 0].mean()) if fill is None else fill
    fb = np.fft.rfft2(b * m + (1 - m) * other)
    power = np.abs(fa) ** 2
    k = np.fft.irfft2(fb * np.conj(fa) / (power + 4.0 * float(np.median(power))), s=shape)
    k = np.maximum(k, 0.0)
    k = k / k.sum() if k.sum() > 0 else np.full(shape, 1.0 / a.size)
    for _ in range(iterations):
        est = conv(np.fft.rfft2(k))
        ratio = np.where(m > 0, b / np.maximum(est, 1e-12 * float(b.max())), 0.0)
        k = k * np.maximum(corr(ratio), 0.0) / norm
    # k is indexed by shift (0 at [0,0]); centre it.
    return np.fft.fftshift(k)


def extract_psf(
    thin: np.ndarray,
    thick: np.ndarray,
    window_px: int = PSF_WINDOW_PX,
    iterations: int = RL_ITERATIONS,
    registration: str = "auto",
    saturation_level: float | None = None,
    reject_outliers: bool = True,
    method: str = "lsq",
) -> PSFExtraction:
    """PSF_all such that thick = thin (*) psf, from one thin/thick image pair of the same scene.

    Defects are kept out of the estimate: hot, cold and clipped pixels are repaired in the thin
    image (it is the kernel's "input") and left out of the fit in the thick one (the data term).
    With ``reject_outliers`` a first estimate predicts the thick image; the compact blobs where
    the thick image departs from that prediction significantly (dust, scratches, defects of
    either screen) are repaired in the thin image and left out of the second fit together with
    the rim the PSF core spreads them over, so that a defect of the thin image does not reach the
    fit through the convolution. Registration runs on the repaired images.

    Parameters
    ----------
    thin, thick : 2-D flat-field corrected images of equal size (thin = high-resolution detector).
    window_px : odd truncation window (paper 004 uses 60 x 60; odd sizes keep a centre pixel).
    iterations : Richardson-Lucy iterations per estimate with ``method="rl"`` (paper 004: 8).
    registration : "auto", "phase", "features" or "none" (already registered).
    saturation_level : counts at which the camera clips (default: detected as a value many
        pixels share at the top or bottom of a noisy image).
    method : "lsq" (default; :func:`lsq_kernel`, converged, insensitive to which pixels are left
        out) or "rl" (paper 004's Richardson-Lucy, stopped after ``iterations``: its answer
        depends on the start, so a defect moves it more).
    """
    window = _odd_size(window_px, "window_px")
    if method not in ("lsq", "rl"):
        raise ValueError(f"method must be 'lsq' or 'rl', got {method!r}")
    if not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    a = as_image(thin, "thin image", (window + 8, window + 8))
    b = as_image(thick, "thick image", (window + 8, window + 8))
    if a.shape != b.shape:
        raise ValueError(f"thin and thick images have mismatched sizes {a.shape} vs {b.shape}")
    def_a = find_defects(a, saturation_level)
    def_b = find_defects(b, saturation_level)
    for label, d in (("thin", def_a), ("thick", def_b)):
        if d.mean() > 0.05:
            raise ValueError(f"{label} image: {100 * d.mean():.1f} % of the pixels are hot, cold or "
                             "clipped; flat-field correct it and lower the exposure")
    # Registration uses the thin image as it is: a sharp screen resolves real specks that look
    # like hot pixels, and a few true hot pixels are white noise to the phase correlation.
    a_raw = a
    a = repair_defects(a, def_a)
    b_repaired = repair_defects(b, def_b)
    if registration == "none":
        reg = Registration((0.0, 0.0), "none", float("nan"))
        b = b_repaired
        good_b = ~ndimage.binary_dilation(def_b, iterations=1)
    else:
        reg = register(a_raw, b_repaired, registration)
        b = ndimage.shift(b_repaired, reg.shift_px, order=3, mode="nearest")
        moved = ndimage.shift(def_b.astype(float), reg.shift_px, order=1, mode="nearest") > 0.01
        good_b = ~ndimage.binary_dilation(moved, iterations=2)  # cubic shift smears a defect
    # Drop the border the shift has filled in; the fit also ignores half a window at the edges.
    cut = int(np.ceil(max(abs(reg.shift_px[0]), abs(reg.shift_px[1])))) + 1
    crop = (slice(cut, a.shape[0] - cut), slice(cut, a.shape[1] - cut))
    a, b, good_b = a[crop], b[crop], good_b[crop]
    if min(a.shape) < window + 8:
        raise ValueError(f"images too small after registration ({a.shape}) for a {window} px PSF window")
    margin = window // 2
    inner = np.zeros(a.shape, bool)
    inner[margin:-margin, margin:-margin] = True
    if method == "lsq":
        psf, full, mask = _extract_lsq(a, b, good_b, window, inner, reject_outliers)
    else:
        psf, full, mask = _extract_rl(a, b, good_b, window, iterations, inner, reject_outliers)
    total = psf.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("PSF extraction failed: truncated kernel has no positive weight (images unrelated?)")
    psf = psf / total
    masked = 1.0 - float(mask[inner].sum()) / float(inner.sum())
    return PSFExtraction(psf=psf, registration=reg, iterations=int(iterations) if method == "rl" else 0,
                         full_estimate=full, shape=psf_shape(psf), defects_thin=int(def_a.sum()),
                         defects_thick=int(def_b.sum()), masked_fraction=masked, method=method)


def _outlier_blobs(residual: np.ndarray, use: np.ndarray) -> np.ndarray:
    """Compact blobs of a (thick - prediction) residual that stand out of its noise.

    Smoothed first: a dust spot or scratch is a compact blob of one sign and survives, a slightly
    misfitted edge leaves a +/- pair that cancels. Threshold OUTLIER_Z robust sd, raised so that
    at most MAX_OUTLIER_FRACTION of the pixels go (defects are sparse; model mismatch spread over
    the scene is not a defect). Returns the blobs grown by OUTLIER_DILATE_PX (the defect's rim).
    """
    smooth = ndimage.gaussian_filter(residual, 1.5)
    dev = np.abs(smooth - float(np.median(smooth[use])))
    limit = max(OUTLIER_Z * _robust_sd(smooth[use]),
                float(np.quantile(dev[use], 1.0 - MAX_OUTLIER_FRACTION)))
    if not limit > 0:
        return np.zeros(residual.shape, bool)
    return ndimage.binary_dilation((dev > limit) & use, iterations=OUTLIER_DILATE_PX)


def _inpaint(image: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Bad pixels replaced by the Gaussian-weighted mean of the good ones around them
    (normalised convolution), the width doubled from 1 px until every bad pixel has good
    neighbours: a blob of several pixels takes its surroundings' level, not one median."""
    out = np.asarray(image, dtype=float).copy()
    good = (~bad).astype(float)
    todo = bad.copy()
    sigma = 1.0
    while todo.any() and sigma <= max(out.shape):
        weight = ndimage.gaussian_filter(good, sigma, mode="reflect")
        value = ndimage.gaussian_filter(out * good, sigma, mode="reflect")
        ok = todo & (weight > 1e-3)
        out[ok] = value[ok] / weight[ok]
        todo &= ~ok
        sigma *= 2.0
    return out


def _core_radius_px(kernel: np.ndarray) -> int:
    """Radius over which a kernel's core spreads a defect: its FWHM (>= 1 px), rounded up."""
    return max(1, int(np.ceil(psf_shape(kernel).fwhm_px)))


def _extract_lsq(a, b, good_b, window, inner, reject_outliers):
    h = window // 2
    kernel, offset = lsq_kernel(a, b, window, weights=good_b)
    mask = good_b
    blobs = np.zeros(a.shape, bool)
    # A blob is a defect of the thick image (the data) or of the thin one (the input; then the
    # PSF core spreads it over its rim). Either way the thin image is repaired in the blob and the
    # thick one left out of the fit over blob and rim. A refit predicts better, so a weaker defect
    # the first fit's misfit hid can show up in its residual: up to OUTLIER_ROUNDS refits.
    for _ in range(OUTLIER_ROUNDS if reject_outliers else 0):
        if not kernel.sum() > 0:
            break
        a_fit = _inpaint(a, blobs) if blobs.any() else a
        residual = b - _convolve_window(a_fit, kernel) - offset
        new = _outlier_blobs(residual, inner & mask) & ~blobs
        if not new.any():
            break
        blobs |= new
        a_fit = _inpaint(a, blobs)
        mask = good_b & ~ndimage.binary_dilation(blobs, iterations=_core_radius_px(kernel))
        kernel, offset = lsq_kernel(a_fit, b, window, weights=mask)
    full = np.zeros(a.shape)
    cy, cx = a.shape[0] // 2, a.shape[1] // 2
    full[cy - h:cy + h + 1, cx - h:cx + h + 1] = kernel
    return kernel.copy(), full, mask


def _convolve_window(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """image (*) a centred odd kernel, circular (the model lsq_kernel fits, mean removed)."""
    h0, h1 = kernel.shape[0] // 2, kernel.shape[1] // 2
    full = np.zeros(image.shape)
    full[np.ix_(np.arange(-h0, h0 + 1) % image.shape[0], np.arange(-h1, h1 + 1) % image.shape[1])] = kernel
    am = image - float(image.mean())
    return np.fft.irfft2(np.fft.rfft2(am) * np.fft.rfft2(full), s=image.shape)


def _extract_rl(a, b, good_b, window, iterations, inner, reject_outliers):
    margin = window // 2
    b_fill = b.copy()
    # First estimate: masked pixels take their repaired values in the Fourier start.
    full = richardson_lucy_kernel(a, b, iterations, margin_px=margin, mask=good_b, fill=b_fill)
    mask = good_b
    if reject_outliers:
        outliers = _outlier_blobs(b - _predict(a, b, full), inner & good_b)
        mask = good_b & ~outliers
    # Second estimate (with or without defects, so that both are measured alike): masked pixels
    # take the first estimate's prediction in the Fourier start.
    full = richardson_lucy_kernel(a, b, iterations, margin_px=margin, mask=mask,
                                  fill=_predict(a, b, full))
    cy, cx = a.shape[0] // 2, a.shape[1] // 2
    h = window // 2
    psf = full[cy - h : cy + h + 1, cx - h : cx + h + 1].copy()
    # Remove the flat floor RL leaves under the whole kernel (noise, unmatched background):
    # estimated on the window border, where a truncated PSF should have fallen to ~0.
    border = np.concatenate([psf[0], psf[-1], psf[1:-1, 0], psf[1:-1, -1]])
    psf = np.maximum(psf - float(np.median(border)), 0.0)
    return psf, full, mask


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
