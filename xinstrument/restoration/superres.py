"""Super-resolution below the camera pixel (shared/papers/003).

A very deep convolutional network (VDCN: a plain stack of 3 x 3 convolutions with ReLU, global
residual learning) ending in transposed convolutions that up-sample by the SR factor, trained
on high-resolution (HR) images degraded by the detector's calibrated model:

1. bicubic down-sampling by the factor (anti-aliased, as MATLAB's ``imresize`` used by the SR
   literature);
2. a Gaussian blur whose sigma is the detector's ESF -> LSF -> Gaussian-fit sigma
   (``DetectorProfile.esf_sigma_um``, measured on the LR detector, so applied on the LR grid);
3. additive Gaussian noise whose sigma is the background noise of the detector's frames
   (``DetectorProfile.noise_sigma`` or :func:`background_noise_sigma` of a background region).

Frames are flat-field corrected transmission (flat = 1). Output frames have ``factor`` times
more pixels per axis and a pixel ``factor`` times smaller (:attr:`SuperResolver.output_pixel_size_um`).

Weights live in the profile as method ``sr_x<factor>`` and record the factor and architecture as
integer ``meta.*`` tensors, so ``torch.load(weights_only=True)`` restores them without code.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import curve_fit
from scipy.signal import find_peaks
from torch import nn

from ._fourier import as_batch, default_device
from .metrics import psnr, ssim
from .stage import blend_window
from .training import _as_source, _check_int, _draw_hr

__all__ = [
    "SLICE_KEYS",
    "SR_BLURS",
    "SR_DOWNSAMPLES",
    "SR_FACTORS",
    "BarGroupResult",
    "SRDegradation",
    "SRNet",
    "SRTrainResult",
    "SliceTransfer",
    "SuperResolutionError",
    "SuperResolver",
    "background_noise_sigma",
    "bar_group_contrast_at_centres",
    "bar_group_profile",
    "bicubic_downsample",
    "bicubic_upsample",
    "centred_config",
    "count_bars",
    "fine_grid_config",
    "gaussian_blur",
    "measure_bar_group",
    "pack_sr_weights",
    "sr_method",
    "sr_net_from_weights",
    "train_sr",
]

SR_FACTORS = (2, 4)
# Blur models of the degradation: paper 003's ESF Gaussian, the profile's measured MTF ratio, or
# the anisotropic transfer of the bench's tomosynthesis slices stored in the profile.
SR_BLURS = ("gaussian", "mtf_ratio", "slice")
# profile.toml [calibration] keys of the slice transfer (blur "slice"): the file in the profile
# folder (frequency_x_cy_per_px, frequency_y_cy_per_px, transfer [n_fy, n_fx]; LR cycles per
# pixel, x along the tilt), the arc and projections it holds, the slice's noise sigma
SLICE_KEYS = ("slice_transfer_file", "slice_half_arc_deg", "slice_projections", "slice_noise_sigma")
# "bicubic": anti-aliased bicubic decimation (paper 003); "area": the mean of each factor x factor
# block, i.e. what a camera pixel integrates - it passes the aliasing a real frame carries
SR_DOWNSAMPLES = ("bicubic", "area")
_WEIGHTS_FORMAT = 1
_META = "meta."
# Distinguishes SR weights from the restoration U-Net family's (which store meta.method_id).
_SR_KIND = 1001
# Noise sigma of the synthesised LR frames, relative to the calibrated sigma: log-uniform over
# 1/sqrt(2) .. sqrt(2), the sigma range of the dose range 0.5 .. 2 that the restoration training
# uses (training.DOSE_RANGE; quantum noise sigma ~ 1/sqrt(dose)).
NOISE_SCALE_RANGE = (1 / math.sqrt(2), math.sqrt(2))
# Gaussian kernels are truncated at 4 sigma (scipy.ndimage.gaussian_filter's default).
_TRUNCATE_SIGMA = 4.0


class SuperResolutionError(ValueError):
    """A super-resolution request cannot be served: wrong factor, missing calibration or weights."""


def sr_method(factor: int) -> str:
    """Profile weights name of the SR network for ``factor`` (``"sr_x2"``, ``"sr_x4"``)."""
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or int(factor) not in SR_FACTORS:
        raise SuperResolutionError(f"SR factor must be one of {SR_FACTORS}, got {factor!r}")
    return f"sr_x{int(factor)}"


def _profile_name(profile: Any) -> str:
    return str(getattr(profile, "path", None) or getattr(profile, "name", "profile"))


# ------------------------------------------------------------------------------ image operators
def gaussian_blur(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) with reflect boundaries; sigma in pixels (0: copy)."""
    if not (math.isfinite(sigma_px) and sigma_px >= 0):
        raise ValueError(f"sigma_px must be finite and >= 0, got {sigma_px!r}")
    if sigma_px == 0:
        return x.clone()
    r = max(1, math.ceil(_TRUNCATE_SIGMA * sigma_px))
    r = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma_px) ** 2)
    k = k / k.sum()
    h = F.pad(x[:, None], (r, r, r, r), mode="reflect")
    h = F.conv2d(h, k.view(1, 1, 1, -1))
    h = F.conv2d(h, k.view(1, 1, -1, 1))
    return h[:, 0]


def bicubic_downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, H, W) -> (B, H/factor, W/factor) bicubic with anti-aliasing (H, W multiples of factor)."""
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"image {tuple(x.shape[-2:])} is not a multiple of the SR factor {factor}")
    return F.interpolate(x[:, None], scale_factor=1.0 / factor, mode="bicubic",
                         align_corners=False, antialias=True)[:, 0]


def area_downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, H, W) -> (B, H/factor, W/factor): the mean of each factor x factor block, the camera
    pixel's own integration of the image on the fine grid (H, W multiples of factor)."""
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"image {tuple(x.shape[-2:])} is not a multiple of the SR factor {factor}")
    return F.avg_pool2d(x[:, None], factor)[:, 0]


def _bicubic_up(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x[:, None], scale_factor=factor, mode="bicubic", align_corners=False)[:, 0]


def bicubic_upsample(frames: Any, factor: int) -> np.ndarray:
    """Bicubic interpolation baseline: (H, W) or (B, H, W) -> factor x larger, float32 numpy.

    Pixel centres follow the same convention as the SR network (``align_corners=False``: the
    output pixels tile each input pixel), so the two are compared on the same grid.
    """
    sr_method(factor)
    x, single = as_batch(frames, "frames")
    out = _bicubic_up(x, int(factor)).cpu().numpy()
    return out[0] if single else out


def background_noise_sigma(region: Any, bins: int = 64) -> float:
    """Noise sigma of a flat background region: a plane is removed (illumination gradient), the
    distribution of the residual is histogrammed and a Gaussian fitted to it (paper 003, fig. 5).

    Raises ``ValueError`` for regions smaller than 8 x 8 px or without spread.
    """
    a = np.asarray(region, dtype=np.float64)
    if a.ndim != 2 or min(a.shape) < 8:
        raise ValueError(f"background region must be 2-D and at least 8 x 8 px, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("background region contains NaN/inf")
    yy, xx = np.mgrid[: a.shape[0], : a.shape[1]]
    design = np.stack([np.ones(a.size), yy.ravel(), xx.ravel()], 1)
    coef, *_ = np.linalg.lstsq(design, a.ravel(), rcond=None)
    res = a.ravel() - design @ coef
    mad = 1.4826 * np.median(np.abs(res - np.median(res)))
    if not mad > 1e-9 * max(1.0, float(np.abs(a).mean())):
        raise ValueError("background region has no noise spread (constant values)")
    lim = 5 * mad
    hist, edges = np.histogram(res, bins=bins, range=(-lim, lim))
    centres = 0.5 * (edges[1:] + edges[:-1])

    def gauss(v, amp, mu, s):
        return amp * np.exp(-0.5 * ((v - mu) / s) ** 2)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # covariance warnings: only the estimate is used
            popt, _ = curve_fit(gauss, centres, hist, p0=(hist.max(), 0.0, mad), maxfev=2000)
        sigma = abs(float(popt[2]))
    except RuntimeError:
        sigma = float(mad)
    if not (math.isfinite(sigma) and 0.2 * mad < sigma < 5 * mad):
        sigma = float(mad)     # a failed fit never beats the robust estimate
    return sigma


# ------------------------------------------------------------------------------ degradation
@dataclass(frozen=True, eq=False)
class SliceTransfer:
    """Transfer of a tomosynthesis slice relative to the fine-grid ground truth: the mean of the
    tilted projections' OTFs over the reference screen's MTF (``xinstrument.sim.slice_transfer``;
    for multi-frame slices, ``[calibration] slice_reconstruction = "multiframe"``, the transfer of
    ``xinstrument.recon.multiframe.noise_matched_transfer`` instead),
    sampled on LR frequencies 0 .. f_max on both axes (even in fx and fy; x is along the tilt).
    ``transfer`` is real and may dip below 0 where the averaged parallax reverses contrast."""

    frequency_x_cy_per_px: np.ndarray
    frequency_y_cy_per_px: np.ndarray
    transfer: np.ndarray
    half_arc_deg: float
    projections: int
    noise_sigma: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        fx, fy, t = (np.asarray(v, dtype=np.float64) for v in
                     (self.frequency_x_cy_per_px, self.frequency_y_cy_per_px, self.transfer))
        for name, f in (("frequency_x_cy_per_px", fx), ("frequency_y_cy_per_px", fy)):
            if f.ndim != 1 or f.size < 4 or f[0] != 0 or not np.all(np.diff(f) > 0):
                raise SuperResolutionError(f"slice transfer: {name} must be increasing LR "
                                           "frequencies from 0, at least 4 samples")
        if t.shape != (fy.size, fx.size) or not np.all(np.isfinite(t)) or np.abs(t).max() > 1 + 1e-6:
            raise SuperResolutionError(
                f"slice transfer: transfer must be finite, |value| <= 1, of shape "
                f"({fy.size}, {fx.size}) (n_fy, n_fx), got {t.shape}")
        if not (math.isfinite(self.half_arc_deg) and 0 < self.half_arc_deg < 90
                and int(self.projections) >= 2):
            raise SuperResolutionError(f"slice transfer: half arc {self.half_arc_deg!r} deg and "
                                       f"{self.projections!r} projections do not make a slice")
        object.__setattr__(self, "frequency_x_cy_per_px", fx)
        object.__setattr__(self, "frequency_y_cy_per_px", fy)
        object.__setattr__(self, "transfer", t)

    @classmethod
    def from_profile(cls, profile: Any) -> SliceTransfer:
        """The slice transfer named by ``profile.calibration`` (:data:`SLICE_KEYS`); a missing
        key, file or array is a :class:`SuperResolutionError` naming it."""
        cal = getattr(profile, "calibration", None) or {}
        where = _profile_name(profile)
        for key in SLICE_KEYS:
            if key not in cal:
                raise SuperResolutionError(
                    f"{where}: blur 'slice' needs the tomosynthesis slice transfer, but profile.toml "
                    f"[calibration] has no {key!r} (store it with scripts/sr_resolution_budget.py "
                    "--store-slice-transfer)")
        folder = getattr(profile, "path", None)
        if folder is None:
            raise SuperResolutionError(f"{where}: profile has no folder to read "
                                       f"{cal['slice_transfer_file']!r} from")
        from pathlib import Path
        folder = Path(folder).resolve()
        path = (folder / str(cal["slice_transfer_file"])).resolve()
        if folder not in path.parents or not path.is_file():
            raise SuperResolutionError(f"{where}: slice_transfer_file {cal['slice_transfer_file']!r} "
                                       "is not a file inside the profile folder")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: np.array(npz[k]) for k in npz.files}
        except (OSError, ValueError) as exc:
            raise SuperResolutionError(f"{path}: not a readable .npz ({exc})") from None
        for key in ("frequency_x_cy_per_px", "frequency_y_cy_per_px", "transfer"):
            if key not in arrays:
                raise SuperResolutionError(f"{path}: missing array {key!r} (has {sorted(arrays)})")
        return cls(arrays["frequency_x_cy_per_px"], arrays["frequency_y_cy_per_px"],
                   arrays["transfer"], float(cal["slice_half_arc_deg"]),
                   int(cal["slice_projections"]), float(cal["slice_noise_sigma"]),
                   str(cal.get("slice_transfer_source", "")))

    def on_rfft_grid(self, shape: tuple[int, int], factor: int) -> np.ndarray:
        """The transfer on the rfft2 grid of an HR image of ``shape`` (``factor`` x finer than the
        LR pixels the table is sampled in), bilinear in |fy|, |fx|; beyond the table its edge."""
        fy = np.abs(np.fft.fftfreq(shape[0]))[:, None] * factor      # HR cy/px -> LR cy/px
        fx = np.fft.rfftfreq(shape[1])[None, :] * factor
        tx, ty = self.frequency_x_cy_per_px, self.frequency_y_cy_per_px
        fx = np.minimum(fx, tx[-1])
        fy = np.minimum(fy, ty[-1])
        ix = np.clip(np.searchsorted(tx, fx, side="right") - 1, 0, tx.size - 2)
        iy = np.clip(np.searchsorted(ty, fy, side="right") - 1, 0, ty.size - 2)
        ax = (fx - tx[ix]) / (tx[ix + 1] - tx[ix])
        ay = (fy - ty[iy]) / (ty[iy + 1] - ty[iy])
        t = self.transfer
        return ((1 - ay) * ((1 - ax) * t[iy, ix] + ax * t[iy, ix + 1])
                + ay * ((1 - ax) * t[iy + 1, ix] + ax * t[iy + 1, ix + 1]))


@dataclass(frozen=True)
class SRDegradation:
    """HR -> LR model of paper 003: bicubic down-sampling by ``factor``, Gaussian blur of
    ``blur_sigma_lr_px`` (LR pixels), additive Gaussian noise of ``noise_sigma`` (transmission)
    scaled per image by a log-uniform factor in ``noise_scale_range``."""

    factor: int
    blur_sigma_lr_px: float
    noise_sigma: float
    noise_scale_range: tuple[float, float] = NOISE_SCALE_RANGE
    # Optional measured blur instead of the Gaussian: (frequency LR cy/px, MTF_LR / MTF_HR),
    # applied on the HR grid before down-sampling (see ``from_profile(blur="mtf_ratio")``).
    transfer: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    downsample: str = "bicubic"
    # Optional anisotropic transfer of tomosynthesis slices (``from_profile(blur="slice")``),
    # applied on the HR grid before down-sampling instead of ``transfer``.
    slice_transfer: SliceTransfer | None = None

    def __post_init__(self) -> None:
        sr_method(self.factor)
        if self.downsample not in SR_DOWNSAMPLES:
            raise SuperResolutionError(f"downsample must be one of {SR_DOWNSAMPLES}, got "
                                       f"{self.downsample!r}")
        if self.transfer is not None and self.slice_transfer is not None:
            raise SuperResolutionError("give the radial transfer or the slice transfer, not both")
        if self.transfer is not None:
            f, r = (np.asarray(v, dtype=np.float64) for v in self.transfer)
            if f.ndim != 1 or f.shape != r.shape or f.size < 4 or not np.all(np.diff(f) > 0) \
                    or f[0] != 0 or not np.all(np.isfinite(r)) or r.min() < 0 or r.max() > 1 + 1e-6:
                raise SuperResolutionError(
                    "transfer must be (frequency, ratio): increasing frequencies from 0 (LR cy/px) "
                    "and finite ratios in [0, 1], at least 4 samples")
        if not (math.isfinite(self.blur_sigma_lr_px) and self.blur_sigma_lr_px >= 0):
            raise SuperResolutionError(f"blur sigma must be finite and >= 0 px, got {self.blur_sigma_lr_px!r}")
        if not (math.isfinite(self.noise_sigma) and self.noise_sigma >= 0):
            raise SuperResolutionError(f"noise sigma must be finite and >= 0, got {self.noise_sigma!r}")
        lo, hi = self.noise_scale_range
        if not (0 < lo <= hi):
            raise SuperResolutionError(f"noise_scale_range must satisfy 0 < lo <= hi, got {self.noise_scale_range}")

    @classmethod
    def from_profile(cls, profile: Any, factor: int, noise_sigma: float | None = None,
                     background: Any = None, blur: str = "gaussian",
                     downsample: str = "bicubic") -> SRDegradation:
        """The degradation of ``profile``'s detector.

        ``blur="gaussian"`` (paper 003): sigma ``profile.esf_sigma_um / profile.pixel_size_um``
        LR pixels (both at the scintillator plane), applied after down-sampling.
        ``blur="mtf_ratio"``: the profile's measured ``mtf_ratio`` (MTF_LR / MTF_HR, LR cy/px)
        applied on the HR grid before down-sampling, for HR images that carry the reference
        screen's blur; a thin screen's depth blur has long tails that one Gaussian fitted to the
        ESF core misses. Beyond the profile's table (LR Nyquist) the ratio continues as the
        Gaussian fitted to it.
        ``blur="slice"``: the anisotropic transfer of the bench's tomosynthesis slices stored in
        the profile (:class:`SliceTransfer`, :data:`SLICE_KEYS`), applied on the HR grid before
        down-sampling; the default noise is then the slice's (``slice_noise_sigma``: its
        projections averaged).
        Noise sigma: ``noise_sigma`` if given, else measured from the ``background`` region
        (:func:`background_noise_sigma`), else ``profile.noise_sigma`` (the slice's for
        ``blur="slice"``).
        ``downsample``: one of :data:`SR_DOWNSAMPLES`.
        """
        sr_method(factor)
        if blur not in SR_BLURS:
            raise SuperResolutionError(f"blur must be one of {SR_BLURS}, got {blur!r}")
        esf = getattr(profile, "esf_sigma_um", None)
        transfer = slice_transfer = None
        if blur == "slice":
            slice_transfer = SliceTransfer.from_profile(profile)
            esf = 0.0
            if noise_sigma is None and background is None:
                noise_sigma = slice_transfer.noise_sigma
        if blur == "mtf_ratio":
            f = getattr(profile, "frequency_cy_per_px", None)
            ratio = getattr(profile, "mtf_ratio", None)
            if f is None or ratio is None:
                raise SuperResolutionError(
                    f"{_profile_name(profile)}: blur 'mtf_ratio' needs the profile's "
                    "frequency_cy_per_px and mtf_ratio arrays")
            transfer = (tuple(float(v) for v in f), tuple(float(v) for v in ratio))
            esf = 0.0
        if esf is None:
            raise SuperResolutionError(
                f"{_profile_name(profile)}: profile has no esf_sigma_um (Gaussian PSF sigma from the "
                "edge's ESF -> LSF fit); measure it with xinstrument.calibration.mtf.esf_gaussian_sigma "
                "on a slanted-edge image and store it in profile.toml"
            )
        if noise_sigma is None and background is not None:
            noise_sigma = background_noise_sigma(background)
        if noise_sigma is None:
            noise_sigma = getattr(profile, "noise_sigma", None)
        if noise_sigma is None:
            raise SuperResolutionError(
                f"{_profile_name(profile)}: no noise sigma: the profile has no noise_sigma and no "
                "background region was given"
            )
        pixel_um = float(profile.pixel_size_um)
        return cls(int(factor), float(esf) / pixel_um, float(noise_sigma), transfer=transfer,
                   downsample=downsample, slice_transfer=slice_transfer)

    def transfer_hr(self, shape: tuple[int, int]) -> torch.Tensor:
        """The ``transfer`` (or ``slice_transfer``) on the rfft2 grid of an HR image of ``shape``
        (float32)."""
        if self.slice_transfer is not None:
            return torch.from_numpy(
                self.slice_transfer.on_rfft_grid(shape, self.factor).astype(np.float32))
        f_tab, r_tab = (np.asarray(v, dtype=np.float64) for v in self.transfer)
        fy = np.fft.fftfreq(shape[0])[:, None] * self.factor      # HR cy/px -> LR cy/px
        fx = np.fft.rfftfreq(shape[1])[None, :] * self.factor
        fr = np.hypot(fx, fy)
        # Gaussian tail exp(-2 pi^2 s^2 f^2) fitted (least squares on log) where the ratio is
        # above 5 %, continued from the table's last value
        ok = (r_tab > 0.05) & (f_tab > 0)
        s2 = 0.0
        if ok.sum() >= 2:
            s2 = max(0.0, float(np.sum(-np.log(r_tab[ok]) * f_tab[ok] ** 2)
                               / np.sum(2 * np.pi ** 2 * f_tab[ok] ** 4)))
        inside = np.interp(np.minimum(fr, f_tab[-1]), f_tab, r_tab)
        tail = r_tab[-1] * np.exp(-2 * np.pi ** 2 * s2 * (fr ** 2 - f_tab[-1] ** 2))
        return torch.from_numpy(np.where(fr <= f_tab[-1], inside, tail).astype(np.float32))

    def _apply_transfer(self, hr: torch.Tensor) -> torch.Tensor:
        # reflect padding keeps the FFT's wrap-around away from the patch
        pad = min(16, hr.shape[-1] - 1, hr.shape[-2] - 1)
        x = F.pad(hr[:, None], (pad, pad, pad, pad), mode="reflect")[:, 0]
        h = self.transfer_hr(tuple(x.shape[-2:])).to(hr.device)
        y = torch.fft.irfft2(torch.fft.rfft2(x) * h, s=x.shape[-2:])
        return y[:, pad:pad + hr.shape[-2], pad:pad + hr.shape[-1]]

    def __call__(self, hr: torch.Tensor, generator: torch.Generator | None = None,
                 noise: bool = True) -> torch.Tensor:
        """Degrade HR patches (B, H, W) (H, W multiples of ``factor``) to LR (B, H/f, W/f)."""
        if hr.ndim != 3:
            raise ValueError(f"HR patches must be (B, H, W), got {tuple(hr.shape)}")
        if self.transfer is not None or self.slice_transfer is not None:
            hr = self._apply_transfer(hr)
        down = area_downsample if self.downsample == "area" else bicubic_downsample
        lr = gaussian_blur(down(hr, self.factor), self.blur_sigma_lr_px)
        if noise and self.noise_sigma > 0:
            lo, hi = (math.log(v) for v in self.noise_scale_range)
            u = torch.rand(hr.shape[0], generator=generator, device=hr.device)
            sigma = self.noise_sigma * torch.exp(lo + (hi - lo) * u)
            eps = torch.randn(lr.shape, generator=generator, device=hr.device)
            lr = lr + sigma[:, None, None] * eps
        return lr


# ------------------------------------------------------------------------------ network
class SRNet(nn.Module):
    """VDCN with transposed-convolution up-sampling (paper 003, fig. 6).

    LR features: a 3 x 3 stem and ``layers`` 3 x 3 conv + ReLU layers with a skip around them
    (global residual learning, Kim et al. VDSR 2016); one ``ConvTranspose2d(4, stride 2, pad 1)``
    + ReLU per factor of 2 (output exactly 2x per stage); a 3 x 3 head whose output is added to
    the bicubic up-sampling of the input, so training starts from the bicubic baseline.
    No normalisation layers, so tiled inference matches whole-frame inference.
    """

    def __init__(self, factor: int = 2, channels: int = 32, layers: int = 8) -> None:
        super().__init__()
        sr_method(factor)
        if channels < 1 or layers < 1:
            raise ValueError(f"SRNet needs channels and layers >= 1, got {channels}, {layers}")
        self.factor = int(factor)
        self.config = {"factor": self.factor, "channels": int(channels), "layers": int(layers)}
        conv = lambda cin, cout: nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect")
        self.stem = conv(1, channels)
        self.body = nn.Sequential(*[m for _ in range(layers) for m in (conv(channels, channels), nn.ReLU())])
        stages = round(math.log2(self.factor))
        self.up = nn.Sequential(*[m for _ in range(stages) for m in (
            nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1), nn.ReLU())])
        self.head = conv(channels, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def receptive_radius_lr_px(self) -> int:
        """Half-width of the receptive field on the LR grid (for tile overlaps)."""
        return 2 + self.config["layers"] + 2 * round(math.log2(self.factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"SRNet expects (N, 1, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < 2:
            raise ValueError(f"SRNet needs frames of at least 2 x 2 px, got {tuple(x.shape[-2:])}")
        h = F.relu(self.stem(x))
        h = h + self.body(h)
        out = self.head(self.up(h))
        base = F.interpolate(x, scale_factor=self.factor, mode="bicubic", align_corners=False)
        return base + out


def pack_sr_weights(model: SRNet) -> dict[str, torch.Tensor]:
    """State dict plus ``meta.*`` integer tensors (format, kind, factor, channels, layers)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    meta = {"format": _WEIGHTS_FORMAT, "kind": _SR_KIND, **model.config}
    state.update({_META + k: torch.tensor(int(v), dtype=torch.int64) for k, v in meta.items()})
    return state


def sr_net_from_weights(state: dict[str, torch.Tensor], factor: int | None = None,
                        where: str = "weights") -> SRNet:
    """Rebuild an :class:`SRNet` from :func:`pack_sr_weights` output.

    ``factor``, when given, must equal the factor the weights were trained for.
    """
    meta = {k[len(_META):]: int(v) for k, v in state.items() if k.startswith(_META) and v.numel() == 1}
    if meta.get("kind") != _SR_KIND or meta.get("format") != _WEIGHTS_FORMAT:
        raise SuperResolutionError(
            f"{where}: not super-resolution weights of this version "
            f"(meta kind {meta.get('kind')!r}, format {meta.get('format')!r})"
        )
    if factor is not None and meta.get("factor") != int(factor):
        raise SuperResolutionError(
            f"{where}: weights were trained for SR factor {meta.get('factor')}, not {factor}; "
            f"train them with `xinstrument train --task sr --factor {factor}`"
        )
    try:
        model = SRNet(meta["factor"], meta["channels"], meta["layers"])
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith(_META)})
    except (KeyError, RuntimeError, ValueError) as exc:
        raise SuperResolutionError(f"{where}: SR weights do not match their architecture: {exc}") from exc
    return model


# ------------------------------------------------------------------------------ HR source (twin)
def centred_config(config: Any) -> Any:
    """``config`` with ``pad_px`` raised until the padded frame minus the sensor is even on both
    axes, so the cropped sensor is exactly centred on the sample (pixel x = (c + 0.5 - cols/2) p).
    Needed to align a twin's frames with those of another pixel size."""
    import scipy.fft as sfft

    pad = int(config.pad_px)
    s = config.sensor
    while any((sfft.next_fast_len(n + 2 * pad, real=True) - n) % 2 for n in (s.rows, s.cols)):
        pad += 1
    return dataclasses.replace(config, pad_px=pad)


def fine_grid_config(config: Any, factor: int) -> Any:
    """The same bench with ``factor`` x finer sensor pixels and ``factor`` x more of them (same
    field of view), centred as :func:`centred_config`: the twin's fine-grid ground truth."""
    sr_method(factor)
    s = config.sensor
    sensor = dataclasses.replace(s, pixel_um=s.pixel_um / factor, rows=s.rows * factor, cols=s.cols * factor)
    # the same rendering resolution: the fine pixels are already factor x smaller
    oversample = max(1, int(getattr(config, "oversample", 1)) // factor)
    return centred_config(dataclasses.replace(config, sensor=sensor, pad_px=config.pad_px * factor,
                                              oversample=oversample))


# ------------------------------------------------------------------------------ training
@dataclass
class SRTrainResult:
    """Outcome of :func:`train_sr`."""

    model: SRNet
    weights: dict[str, torch.Tensor]
    degradation: SRDegradation
    losses: list[float] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def _draw(source, rng: np.random.Generator, count: int, patch: int, augment: bool) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(_draw_hr(source, rng, count, patch, augment)))


def train_sr(
    profile: Any,
    factor: int,
    hr_source: Any,
    steps: int = 1000,
    seed: int = 0,
    *,
    patch: int = 64,
    batch: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    channels: int = 32,
    layers: int = 8,
    noise_sigma: float | None = None,
    background: Any = None,
    blur: str = "gaussian",
    downsample: str = "bicubic",
    device: str | torch.device | None = None,
    val_source: Any = None,
    val_patches: int = 8,
    steps_per_epoch: int = 100,
    progress: Callable[[dict[str, float]], None] | None = None,
    save_to_profile: bool = True,
) -> SRTrainResult:
    """Train the SR network of ``profile`` for ``factor`` on HR images.

    Parameters
    ----------
    profile : DetectorProfile with ``esf_sigma_um`` (and ``noise_sigma`` unless ``noise_sigma`` or
        ``background`` is given); the weights are saved into it as ``sr_x<factor>``.
    hr_source : callable ``(rng, count, patch_px)`` (e.g. :func:`xinstrument.sim.hr_source.twin_hr_source`) or HR images
        (on the fine grid: ``factor`` x smaller pixels than the detector) to crop from.
    steps, seed : optimiser steps; seed of initialisation, patch draws and noise (deterministic
        on the CPU).
    patch, batch : HR patch side (px, multiple of ``factor``), patches per step.
    lr, weight_decay : AdamW (paper 003: AdamW, learning rate 0.001); L1 loss (sharper than L2
        for SR, Lim et al. EDSR 2017); gradient norm clipped at 1 (VDSR trains at high rates
        with clipping, Kim et al. 2016).
    channels, layers : network size.
    blur : "gaussian" (ESF sigma, paper 003), "mtf_ratio" or "slice" (tomosynthesis slices;
        see :meth:`SRDegradation.from_profile`).
    downsample : "bicubic" (paper 003) or "area" (camera pixel integration).
    val_source : HR source for validation PSNR/SSIM of SR and bicubic every ``steps_per_epoch``.
    """
    sr_method(factor)
    steps = _check_int("steps", steps, 1)
    seed = _check_int("seed", seed, 0)
    patch = _check_int("patch", patch, 8)
    batch = _check_int("batch", batch, 1)
    steps_per_epoch = _check_int("steps_per_epoch", steps_per_epoch, 1)
    if patch % factor:
        raise ValueError(f"patch {patch} px must be a multiple of the SR factor {factor}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    degradation = SRDegradation.from_profile(profile, factor, noise_sigma, background, blur,
                                             downsample)
    source = _as_source(hr_source, "hr_source")
    dev = default_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SRNet(factor, channels, layers).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    val_set = None
    if val_source is not None:
        v_hr = _draw(_as_source(val_source, "val_source"), np.random.default_rng(seed + 1), val_patches, patch, False).to(dev)
        v_gen = torch.Generator(device=dev).manual_seed(seed + 1)
        val_set = (v_hr, degradation(v_hr, v_gen))
    result = SRTrainResult(model=model, weights={}, degradation=degradation)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        model.train()
        hr = _draw(source, rng, batch, patch, True).to(dev)
        lr_frames = degradation(hr, gen)
        loss = F.l1_loss(model(lr_frames[:, None])[:, 0], hr)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"SR training loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        result.losses.append(float(loss.item()))
        report: dict[str, float] = {"step": step, "loss": result.losses[-1]}
        if val_set is not None and (step % steps_per_epoch == 0 or step == steps):
            model.eval()
            with torch.no_grad():
                out = model(val_set[1][:, None])[:, 0].cpu().numpy()
                base = _bicubic_up(val_set[1], factor).cpu().numpy()
            ref = val_set[0].cpu().numpy()
            report.update(val_psnr_db=float(np.mean(psnr(out, ref, 1.0))),
                          val_ssim=float(np.mean(ssim(out, ref, 1.0))),
                          val_bicubic_psnr_db=float(np.mean(psnr(base, ref, 1.0))),
                          val_bicubic_ssim=float(np.mean(ssim(base, ref, 1.0))))
            result.validation.append(dict(report))
        if progress is not None:
            progress(report)
    result.seconds = time.perf_counter() - t0
    model.eval()
    result.weights = pack_sr_weights(model)
    if save_to_profile:
        profile.save_weights(sr_method(factor), result.weights)
    return result


# ------------------------------------------------------------------------------ inference
def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    out = list(range(0, length - tile, step))
    out.append(length - tile)
    return out


class SuperResolver:
    """Super-resolve frames with the ``sr_x<factor>`` network of a detector profile.

    Parameters
    ----------
    profile : DetectorProfile holding ``sr_x<factor>`` weights.
    factor : 2 or 4; must be the factor the weights were trained for.
    device : "cuda", "cpu", ...; default CUDA when available.
    tile, overlap, batch : LR tile side (px), overlap between tiles (px; at least the network's
        receptive radius), tiles per forward pass. Tiles are blended with raised-cosine weights.

    ``restore`` takes (H, W) or (B, H, W) transmission frames and returns float32 numpy of shape
    (factor H, factor W) or (B, factor H, factor W); ``output_pixel_size_um`` is the new pitch.
    """

    def __init__(self, profile: Any, factor: int = 2, device: str | torch.device | None = None,
                 tile: int = 256, overlap: int = 32, batch: int = 4) -> None:
        self.method = sr_method(factor)
        self.factor = int(factor)
        self.profile = profile
        weights = getattr(profile, "weights", None) or {}
        if self.method not in weights:
            have = sorted(m for m in weights if m.startswith("sr_x"))
            raise SuperResolutionError(
                f"{_profile_name(profile)}: no super-resolution weights for factor {self.factor} "
                f"({self.method}); trained factors: {have or 'none'}; train with "
                f"`xinstrument train --task sr --factor {self.factor}`"
            )
        state = profile.load_weights(self.method)
        self.model = sr_net_from_weights(state, self.factor, f"{_profile_name(profile)}: {self.method}")
        self.device = default_device(device)
        self.model.eval().to(self.device)
        if not (isinstance(tile, int) and tile >= 16):
            raise ValueError(f"tile must be an integer >= 16 px, got {tile!r}")
        if not (isinstance(overlap, int) and 0 <= overlap < tile // 2):
            raise ValueError(f"overlap must be an integer in [0, tile/2), got {overlap!r}")
        if not (isinstance(batch, int) and batch >= 1):
            raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
        self.tile, self.overlap, self.batch = tile, overlap, batch
        self.latency_s = float("nan")

    @property
    def output_pixel_size_um(self) -> float:
        """Pixel pitch of restored frames at the scintillator plane (profile pitch / factor)."""
        return float(self.profile.pixel_size_um) / self.factor

    def _tiled(self, x: torch.Tensor) -> torch.Tensor:
        f = self.factor
        b, h, w = x.shape
        th, tw = min(self.tile, h), min(self.tile, w)
        ys = _starts(h, th, th - self.overlap)
        xs = _starts(w, tw, tw - self.overlap)
        out = torch.zeros((b, f * h, f * w), dtype=torch.float32, device=x.device)
        norm = torch.zeros((f * h, f * w), dtype=torch.float32, device=x.device)
        weights = {}
        for y in ys:
            for xx in xs:
                wy = blend_window(f * th, f * self.overlap, y > 0, y + th < h)
                wx = blend_window(f * tw, f * self.overlap, xx > 0, xx + tw < w)
                weights[y, xx] = (wy[:, None] * wx[None, :]).to(x.device)
                norm[f * y:f * (y + th), f * xx:f * (xx + tw)] += weights[y, xx]
        jobs = [(i, y, xx) for i in range(b) for y in ys for xx in xs]
        for k in range(0, len(jobs), self.batch):
            chunk = jobs[k:k + self.batch]
            tiles = torch.stack([x[i, y:y + th, xx:xx + tw] for i, y, xx in chunk])
            res = self.model(tiles[:, None])[:, 0].float()
            for (i, y, xx), r in zip(chunk, res):
                out[i, f * y:f * (y + th), f * xx:f * (xx + tw)] += r * weights[y, xx]
        return out / norm

    def restore(self, frames: Any) -> np.ndarray:
        x, single = as_batch(frames, "frames")
        if min(x.shape[-2:]) < 2:
            raise ValueError(f"frames must be at least 2 x 2 px, got {tuple(x.shape[-2:])}")
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self._tiled(x.to(self.device)).cpu().numpy()
        self.latency_s = time.perf_counter() - t0
        if not np.isfinite(out).all():
            raise FloatingPointError(f"{self.method} produced non-finite output")
        return out[0] if single else out


# ------------------------------------------------------------------------------ bar groups
@dataclass
class BarGroupResult:
    """Measurement of one line-pair group (see :func:`measure_bar_group`)."""

    width_um: float
    orientation: str
    period_px: float
    contrast: float | None      # Michelson contrast, None when unmeasurable (below Nyquist...)
    ctf: float | None           # contrast / reference contrast
    bars_found: int
    bars_expected: int
    bar_count_ok: bool
    resolved: bool
    note: str = ""


def count_bars(profile: np.ndarray, period_px: float, expected: int,
               min_relative_prominence: float = 0.5) -> tuple[int, int, bool]:
    """Count dark bars (transmission minima) across a bar-group profile.

    Extrema at least 0.6 period apart are candidates; a minimum is a bar, and a maximum between
    the first and last bar a gap, when its prominence (depth below / height above its
    surroundings within +-1 period, ``scipy.signal.find_peaks``) is at least ``min_relative_prominence`` of the
    deepest minimum's prominence: wiggles much weaker than the strongest bar are not bars, and
    invented bars as strong as real ones are counted. Returns ``(bars, gaps, ok)``; ``ok`` means
    exactly ``expected`` bars, ``expected - 1`` gaps and spacings of the bar centres (middle of
    each bar's half-depth run) within 25 % of the period:
    no bar missing, merged or invented.
    """
    p = np.asarray(profile, dtype=np.float64)
    if p.ndim != 1 or p.size < 3:
        raise ValueError(f"profile must be 1-D with >= 3 samples, got shape {p.shape}")
    if not (isinstance(expected, (int, np.integer)) and expected >= 1):
        raise ValueError(f"expected bar count must be an integer >= 1, got {expected!r}")
    dist = max(1, int(0.6 * period_px))
    # prominence within +-1 period: a bar's depth against its own gaps, not the group's mean dip
    wlen = 2 * math.ceil(period_px) + 1
    with warnings.catch_warnings():     # flat stretches give zero-prominence candidates
        warnings.simplefilter("ignore")
        lows, low_props = find_peaks(-p, distance=dist, prominence=0.0, wlen=wlen)
        highs, high_props = find_peaks(p, distance=dist, prominence=0.0, wlen=wlen)
    if lows.size == 0 or not low_props["prominences"].max() > 0:
        return 0, 0, False
    threshold = min_relative_prominence * float(low_props["prominences"].max())
    keep = low_props["prominences"] >= threshold
    lows, depths = lows[keep], low_props["prominences"][keep]
    highs = highs[high_props["prominences"] >= threshold]
    gaps = int(((highs > lows[0]) & (highs < lows[-1])).sum())
    # bar centres: middle of the run below half the bar's depth (the argmin of a wide, flat-
    # bottomed bar falls anywhere on its noisy bottom)
    centres = []
    for i, depth in zip(lows, depths):
        level = p[i] + 0.5 * depth
        a = b = i
        while a > 0 and p[a - 1] < level:
            a -= 1
        while b < p.size - 1 and p[b + 1] < level:
            b += 1
        centres.append(0.5 * (a + b))
    spacing_ok = bool(np.all(np.abs(np.diff(centres) - period_px) <= 0.25 * period_px))
    ok = lows.size == expected and gaps == expected - 1 and spacing_ok
    return int(lows.size), gaps, bool(ok)


def bar_group_profile(image: np.ndarray, group: dict, pixel_mm: float,
                      half_width_bars: float = 5.5, along_fraction: float = 0.6) -> np.ndarray:
    """Profile across a chart group (``xinstrument.sim.samples.chart_groups`` entry) in an image
    whose pixel centres are at x = (c + 0.5 - cols/2) * pixel_mm (a centred twin grid).

    Averaged over the central ``along_fraction`` of the bar length; ``half_width_bars`` bar widths
    either side of the group centre (3 bars span 2.5 widths; the default 5.5 leaves room for one
    invented bar one period beyond each end of the group, with background around it).
    """
    img = np.asarray(image, dtype=np.float64)
    rows, cols = img.shape
    w = group["width_mm"]
    to_col = lambda x: x / pixel_mm + cols / 2 - 0.5
    to_row = lambda y: y / pixel_mm + rows / 2 - 0.5
    across = half_width_bars * w
    along = 0.5 * along_fraction * group["length_mm"]
    if group["orientation"] == "vertical":    # bars run along y; profile along x
        c0, c1 = to_col(group["cx"] - across), to_col(group["cx"] + across)
        r0, r1 = to_row(group["cy"] - along), to_row(group["cy"] + along)
        roi = img[round(r0):round(r1) + 1, math.ceil(c0):math.floor(c1) + 1]
        prof = roi.mean(axis=0)
    else:
        r0, r1 = to_row(group["cy"] - across), to_row(group["cy"] + across)
        c0, c1 = to_col(group["cx"] - along), to_col(group["cx"] + along)
        roi = img[math.ceil(r0):math.floor(r1) + 1, round(c0):round(c1) + 1]
        prof = roi.mean(axis=1)
    if roi.size == 0 or prof.size < 3:
        raise ValueError(f"bar group {group['width_um']} um {group['orientation']} lies outside the image")
    return prof


# bars at least this wide (px) hold two or more pixels in their central half
CENTRES_MIN_BAR_PX = 4.0


def bar_group_contrast_at_centres(image: np.ndarray, group: dict, pixel_mm: float,
                                  n_bars: int = 3) -> float:
    """Michelson contrast of a group from the chart's known layout: the mean profile over the
    central half of each gap against that over the central half of each bar.

    For groups wide enough to hold a few pixels in each half (the chart's widest), this is the
    contrast the chart presents to the detector. A peak search on such wide, flat bars takes
    noise or ringing extrema inside a bar or gap for the group's; as the CTF reference that
    moves every CTF of the image (SR outputs of the twin chart read 0.018 against a true 0.065,
    so CTFs of 3.7)."""
    img = np.asarray(image, dtype=np.float64)
    w = group["width_mm"]
    across = (n_bars - 0.5) * w
    prof = bar_group_profile(img, group, pixel_mm, half_width_bars=n_bars - 0.5)
    rows, cols = img.shape
    if group["orientation"] == "vertical":
        first = math.ceil((group["cx"] - across) / pixel_mm + cols / 2 - 0.5)
        pos = (first + np.arange(prof.size) + 0.5 - cols / 2) * pixel_mm - group["cx"]
    else:
        first = math.ceil((group["cy"] - across) / pixel_mm + rows / 2 - 0.5)
        pos = (first + np.arange(prof.size) + 0.5 - rows / 2) * pixel_mm - group["cy"]

    def level(centres) -> float:
        sel = np.zeros(prof.size, bool)
        for c in centres:
            inside = np.abs(pos - c) <= w / 4
            if not inside.any():
                raise ValueError(f"{group['width_um']:g} um group: no pixel within a quarter bar "
                                 "width of a bar or gap centre (group too fine for this measure)")
            sel |= inside
        return float(prof[sel].mean())

    i_bar = level([(2 * k - (n_bars - 1)) * w for k in range(n_bars)])
    i_gap = level([(2 * k - (n_bars - 2)) * w for k in range(n_bars - 1)])
    if i_bar + i_gap <= 0:
        raise ValueError(f"{group['width_um']:g} um group: mean of bars and gaps is not positive")
    return max(0.0, (i_gap - i_bar) / (i_gap + i_bar))


def measure_bar_group(image: np.ndarray, group: dict, pixel_mm: float,
                      reference_contrast: float | None = None, n_bars: int = 3,
                      ctf_threshold: float = 0.10) -> BarGroupResult:
    """CTF and bar count of one chart group; resolved = CTF > ``ctf_threshold`` (10 %, the
    customary limiting-resolution criterion) and the bar count is right.

    Contrast: at the known bar and gap centres (:func:`bar_group_contrast_at_centres`) when a
    bar is at least ``CENTRES_MIN_BAR_PX`` wide, else the Michelson contrast of the profile's
    extrema (fine groups, where the bars may sit off their nominal places)."""
    from xinstrument.calibration.ctf import michelson_contrast

    period_px = 2 * group["width_mm"] / pixel_mm
    prof = bar_group_profile(image, group, pixel_mm)
    # contrast over the group's own extent (n bars + n - 1 gaps); the count also sees the margins
    inner = bar_group_profile(image, group, pixel_mm, half_width_bars=n_bars - 0.5)
    contrast = ctf = None
    note = ""
    try:
        if period_px / 2 >= CENTRES_MIN_BAR_PX:
            contrast = bar_group_contrast_at_centres(image, group, pixel_mm, n_bars)
        else:
            contrast = michelson_contrast(inner, period_px, name=f"{group['width_um']:g} um group")
    except ValueError as exc:
        note = str(exc)
    if contrast is not None:
        ctf = contrast / reference_contrast if reference_contrast else contrast
    found, _gaps, ok = (0, 0, False)
    if period_px >= 2:
        found, _gaps, ok = count_bars(prof, period_px, n_bars)
    else:
        note = note or f"bar period {period_px:.2f} px is below 2 px (beyond Nyquist)"
    resolved = bool(ctf is not None and ctf > ctf_threshold and ok)
    return BarGroupResult(float(group["width_um"]), group["orientation"], float(period_px), contrast, ctf,
                          found, n_bars, ok, resolved, note)
