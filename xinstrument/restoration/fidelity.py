"""Fidelity guard: does a restored frame agree with the measurement it was restored from?

A restoration ``x_hat`` of a corrected thick-detector frame ``y`` is consistent with the
measurement when re-degrading it with the detector's forward model leaves a residual that looks
like the detector's noise:

    r = y - A x_hat,    A x = F^-1[(MTF_LR / MTF_HR) . F{x}]   (or PSF convolution for RL)

Structure that a restoration invents (a via, a crack, a ball that is not in the data) survives
re-degradation as ``A (fake)`` and shows up in ``r`` above the noise. Generative restoration can
"generate spurious information" (shared/papers/001, 002); this check is how the operator sees where.

Noise model (the profile's NNPS, see :mod:`.physics`). For a corrected frame
``T = raw / flat`` the quantum noise of the raw frame, averaged over ``N`` frames, and of the
flat, averaged over ``N_flat`` frames, both pass through the same screen, so both have the
spectral shape NNPS_LR(f) and

    NPS_r(f) = NNPS_LR(f) / d * (T / N + T^2 / N_flat)      (transmission^2 px^2)

with ``d`` the dose of this frame's flat relative to the profile's ``nnps_mean_signal`` (detected
quanta per pixel of the flat) and ``T`` the local mean transmission, here the re-degraded
restoration ``A x_hat`` (Pearson's choice: the variance of the hypothesis under test). The
per-pixel variance is ``sigma^2 = sum_f NPS_r(f) / (H W)`` and the z-score map is
``z = r / sigma``.

Tile statistics with coloured noise. ``z`` has unit variance but neighbouring pixels are
correlated (correlation rho(l) = F^-1[NNPS] / var). For a tile of k pixels ``Q = sum z^2`` has
mean k and variance ``2 sum_ij rho_ij^2 ~= 2 k c`` with ``c = sum_l rho(l)^2 =
mean_f(NNPS^2) / mean_f(NNPS)^2`` (Parseval); its third cumulant is ``8 k c3``, ``c3 =
mean_f(NNPS^3) / mean_f(NNPS)^3``. The threshold is the upper quantile of the shifted scaled
chi-square ``a chi^2_d + b`` with these three cumulants (Pearson; Satterthwaite's two-moment
``c chi^2_{k/c}`` underestimates the far tail of small windows). This needs one forward blur and
no whitening transform, which keeps the guard cheap.

Two statistics per tile share its false-alarm rate: the tile's reduced chi-square, and the
largest reduced chi-square of the ``window_px`` windows (stride half a window) centred in the
tile, at the rate over the number of windows (Bonferroni). A feature of a few pixels adds about
the same ``sum (A fake)^2 / var`` to a window as to its tile, whose null spread is larger by
the ratio of their sides: the window test finds small inventions the tile statistic dilutes.

A restoration that reproduces the measurement's noise (an unregularised inverse) has a residual
smaller than the noise: reduced chi-square below 1. The test is one-sided (too large a residual
means structure the data do not support); below 1 is reported, never flagged.

Frame decision, at a family-wise false-alarm rate of ``false_alarm_rate`` per frame, split in
two halves: one strong local invention (a single tile above the Bonferroni threshold, the upper
``false_alarm_rate / (2 M)`` quantile for M tiles) or many weak ones (more flagged tiles than
Binomial(M, false_alarm_rate) gives with probability ``false_alarm_rate / 2``,
``scipy.stats.binom.sf``) make the frame inconsistent.

Model tolerance. Neither the forward model nor a restoration is exact: the profile's radial
MTF ratio is measured with finite accuracy (and a real screen's blur varies with depth and
field position), and a regularised or learned restoration trades detail for noise, so near
strong edges ``A x_hat`` misses the measurement by a small fraction of the local detail even
when nothing is invented. Both errors have the shape of a change of blur width, which to first
order is detail in the band where the blur's width matters. The null model adds it as a
systematic term, ``sigma^2 -> sigma^2 + (eps D)^2``, with ``eps`` the relative tolerance of the
method and ``D = A y - A A y`` taken from the measurement (:meth:`FidelityGuard.measured_detail`):
taken from the restoration (``x_hat - A x_hat``) it let an invented feature widen its own null
variance, ``eps (1 - H) fake`` against a residual ``H fake``. ``eps`` is calibrated, never
guessed: :func:`calibrate_tolerance` finds the smallest value for which ordinary frames of the
method (measured frames the operator accepts, or twin frames) show no more flagged tiles than
the false-alarm rate, and the profile stores it per method (``[fidelity_tolerance]``, key
``forward_model`` for the model itself and for methods without their own; a method's tolerance
is never below the model's).

Super-resolved restorations (``factor`` times finer grid) are binned ``factor x factor`` (pixel
integration) onto the measured grid before the forward model.

Without a noise model (no NNPS or no dose) the guard reports the raw residual (transmission
units) with ``normalised=False`` and no threshold.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats

from . import registry
from ._fourier import (
    as_batch,
    crop_frames,
    default_device,
    pad_frames,
    radial_transfer_rfft2,
    trusted_frames,
)
from .classical import psf_otf_rfft2
from .physics import BLUR_PAD_PX, DetectorPhysics

__all__ = [
    "FORWARD_MODELS",
    "FORWARD_MODEL_TOLERANCE_KEY",
    "METHOD_ACCEPTED_CODES",
    "FidelityGuard",
    "FidelityResult",
    "UncertaintyResult",
    "calibrate_tolerance",
    "fit_noise_hardening",
    "forward_model_for",
    "hdf5_extras_layout",
    "sampler_uncertainty",
]

FORWARD_MODELS = ("mtf_ratio", "psf")
# Frame summary stored per restored frame in HDF5 (keys of the fidelity report's summary();
# a bare guard result fills the report's own ones with NaN / its verdict).
HDF5_SUMMARY_KEYS = ("reduced_chi2", "flagged_fraction", "consistent", "fell_back",
                     "undetermined_fraction", "uncertainty_mean", "action_code",
                     "method_accepted")
# HDF5 tile maps: tile reduced chi-square, flagged tiles, uncertainty band, undetermined tiles
HDF5_TILE_MAPS = ("consistency", "flagged", "uncertainty", "undetermined")
# Policy actions, in the order of the stored action_code.
POLICY_ACTIONS = ("accept", "flag", "fall back")
# Stored method_accepted: whether the profile's calibrated policy accepts the method of the
# restoration the report judges. Like ``consistent`` (-1: not normalised), -1 makes no claim: the
# profile has no acceptance calibration. Files written before this key have no such dataset:
# read its absence as -1 (no claim).
METHOD_ACCEPTED_CODES = {True: 1, False: 0, None: -1}


def hdf5_extras_layout(tile_grid: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """ScanWriter ``restored_extras`` of the fidelity report: the tile maps (``tile_grid``
    each) and the frame summary scalars."""
    grid = tuple(int(n) for n in tile_grid)
    return {**{k: grid for k in HDF5_TILE_MAPS}, **{k: () for k in HDF5_SUMMARY_KEYS}}


# Below this many detected quanta per pixel (open beam, all frames averaged) Poisson counts are
# too far from Gaussian for chi-square statistics (and flat-field correction itself breaks down).
MIN_QUANTA_PER_PIXEL = 10.0
# Profile [fidelity_tolerance] key of the tolerance used by methods without their own.
FORWARD_MODEL_TOLERANCE_KEY = "forward_model"
# Methods whose restoration inverts the measured PSF rather than the radial MTF ratio.
_PSF_METHODS = ("richardson_lucy",)


def forward_model_for(method: str) -> str:
    """The forward model a restoration method inverts: ``"psf"`` for Richardson-Lucy (it
    deconvolves the profile's PSF), ``"mtf_ratio"`` for every other method."""
    if registry.is_registered(method):
        return registry.get(method).forward_model
    return "psf" if method in _PSF_METHODS else "mtf_ratio"


@dataclass
class FidelityResult:
    """Data-consistency of one restored frame with its measurement.

    Attributes
    ----------
    map : (H, W) float32. ``normalised``: z-score ``(measured - A restored) / sigma`` (unit
        variance where the restoration agrees with the data). Otherwise the raw residual in
        transmission units.
    tile_chi2 : (rows, cols) float32 per-tile reduced chi-square (mean of z^2 over the tile);
        without normalisation the tile's mean squared raw residual (transmission^2).
    flagged : (rows, cols) bool, tiles above their threshold (all False when not normalised).
    reduced_chi2 : frame mean of (residual / noise sigma)^2, the noise alone (NaN when not
        normalised); about 1 for a restoration that agrees with the data to the noise.
    reduced_chi2_tolerant : the same with the model tolerance in the variance (what the tiles
        are tested with).
    flagged_fraction : flagged tiles / tiles (NaN when not normalised).
    threshold : reduced chi-square above which a full ``tile_px`` x ``tile_px`` tile is flagged
        (NaN when not normalised); ``threshold_meaning`` says how it was derived.
    expected_false_alarm_rate : fraction of tiles flagged on pure noise (the chosen rate).
    frame_p_value : probability under consistency of a frame ``reduced_chi2_tolerant`` this
        large.
    flagged_p_value : probability under consistency of at least this many flagged tiles.
    strong_tiles : (rows, cols) bool, tiles above the frame-wise (Bonferroni) threshold.
    consistent : False when a tile is above the Bonferroni threshold or
        ``flagged_p_value < expected_false_alarm_rate / 2`` (family-wise false-alarm rate per
        frame <= ``expected_false_alarm_rate``); None when the guard cannot normalise.
    rms_residual : rms of the raw residual (transmission units), always available.
    tile_edges : (row_edges, col_edges) pixel boundaries of the tiles.
    border_px : frame margin left out (NaN in ``map``; tiles entirely inside it are NaN in
        ``tile_chi2`` and never flagged).
    message : one line for the operator.
    tolerance, tolerance_source : relative model tolerance ``eps`` used and where it came from.
    scale : super-resolution factor of the restoration (binned by it before the forward model).
    fell_back, fallback_reason, method : set by the acquisition policy when the frame was
        re-restored with the classical fallback method.
    """

    map: np.ndarray
    tile_chi2: np.ndarray
    flagged: np.ndarray
    reduced_chi2: float
    flagged_fraction: float
    threshold: float
    threshold_meaning: str
    expected_false_alarm_rate: float
    frame_p_value: float
    flagged_p_value: float
    consistent: bool | None
    normalised: bool
    rms_residual: float
    message: str
    tile_px: int
    tile_edges: tuple[np.ndarray, np.ndarray]
    forward_model: str
    dose_ratio: float | None = None
    frames_averaged: int = 1
    border_px: int = 0
    correlation_factor: float = float("nan")
    strong_tiles: np.ndarray | None = None
    elapsed_s: float = float("nan")
    method: str | None = None
    fell_back: bool = False
    fallback_reason: str | None = None
    tolerance: float = 0.0
    tolerance_source: str = "none"
    reduced_chi2_tolerant: float = float("nan")
    scale: int = 1
    # per-tile noise sigma of the measurement (transmission units; None when not normalised)
    noise_tile_sigma: np.ndarray | None = None
    residual_tile_rms: np.ndarray | None = None    # per-tile rms of measured - A restored
    # with check(null_space=True): per-tile rms of the restored detail in the band the data
    # cannot determine, of the detail beyond the forward model (x - A x), the band's lowest
    # radial frequency (cy/px) and its share of the frequency plane
    null_rms: np.ndarray | None = None
    # ... and per tile the largest rms of that detail over the ``window_px`` windows centred in
    # it (a small invention is not diluted by the rest of the tile), in units of the sigma a
    # perfect restoration is tested with (noise and the forward model's tolerance)
    null_local_z: np.ndarray | None = None
    restored_detail_rms: np.ndarray | None = None
    measured_detail_rms: np.ndarray | None = None   # per tile rms of A y - A A y (edges seen)
    null_band_cutoff_cy_per_px: float = float("nan")
    null_band_fraction: float = float("nan")
    # the window test: per tile the largest reduced chi-square of a ``window_px`` window inside
    # it and its threshold (None when not normalised; NaN where a tile holds no window)
    local_chi2: np.ndarray | None = None
    test_tile_sigma: np.ndarray | None = None    # per tile sigma with the tolerance (tested)
    local_threshold: np.ndarray | None = None
    window_px: int = 0

    def hdf5_extras(self) -> dict[str, Any]:
        """The arrays stored beside the restored frame (see :func:`hdf5_extras_layout`); a
        consistency check alone has no uncertainty (NaN) and no undetermined tiles."""
        summary = self.summary()
        nan_map = np.full(self.tile_chi2.shape, np.nan, np.float32)
        if self.fell_back:
            action = "fall back"
        else:
            action = "accept" if self.consistent else "flag"
        # a bare consistency check judges no method: no acceptance claimed
        summary.update({"undetermined_fraction": float("nan"), "uncertainty_mean": float("nan"),
                        "action_code": POLICY_ACTIONS.index(action),
                        "method_accepted": METHOD_ACCEPTED_CODES[None]})
        return {"consistency": self.tile_chi2, "flagged": self.flagged.astype(np.float32),
                "uncertainty": nan_map, "undetermined": np.zeros_like(nan_map),
                **{k: float(summary[k]) for k in HDF5_SUMMARY_KEYS}}

    def summary(self) -> dict[str, Any]:
        """Scalars for PVs, logs and HDF5 attributes (NaN where not normalised)."""
        return {
            "reduced_chi2": float(self.reduced_chi2),
            "flagged_fraction": float(self.flagged_fraction),
            "threshold": float(self.threshold),
            "expected_false_alarm_rate": float(self.expected_false_alarm_rate),
            "frame_p_value": float(self.frame_p_value),
            "flagged_p_value": float(self.flagged_p_value),
            "consistent": -1 if self.consistent is None else int(self.consistent),
            "normalised": int(self.normalised),
            "rms_residual": float(self.rms_residual),
            "fell_back": int(self.fell_back),
            "tolerance": float(self.tolerance),
            "reduced_chi2_tolerant": float(self.reduced_chi2_tolerant),
        }


def _tile_edges(length: int, tile_px: int) -> np.ndarray:
    """Boundaries of ``round(length / tile_px)`` (>= 1) nearly equal tiles covering ``length``."""
    n = max(1, round(length / tile_px))
    return np.linspace(0, length, n + 1).round().astype(np.int64)


def _tile_sums(a: torch.Tensor, ry: np.ndarray, rx: np.ndarray) -> torch.Tensor:
    """Sum of a (H, W) tensor over the tiles given by row/col edges (two passes; empty tiles
    are 0). On the CPU numpy's segment sums (``add.reduceat``), several times faster than
    ``index_add_``; elsewhere two index_add passes."""
    if a.device.type == "cpu":
        h, w = a.shape
        arr = a.detach().numpy()
        r0 = np.minimum(ry[:-1], h - 1)
        c0 = np.minimum(rx[:-1], w - 1)
        # along rows first (contiguous; float32 is exact enough over one tile's width)
        out = np.add.reduceat(np.add.reduceat(arr, c0, axis=1), r0, axis=0, dtype=np.float64)
        empty = (np.diff(ry) == 0)[:, None] | (np.diff(rx) == 0)[None, :]
        out[empty] = 0.0
        return torch.from_numpy(out)
    row_tile = torch.as_tensor(np.repeat(np.arange(ry.size - 1), np.diff(ry)), device=a.device)
    col_tile = torch.as_tensor(np.repeat(np.arange(rx.size - 1), np.diff(rx)), device=a.device)
    rows = torch.zeros((ry.size - 1, a.shape[1]), dtype=a.dtype, device=a.device)
    rows.index_add_(0, row_tile, a)
    out = torch.zeros((ry.size - 1, rx.size - 1), dtype=torch.float64, device=a.device)
    return out.index_add_(1, col_tile, rows.double())


def _pow_(t: torch.Tensor, exponent: float) -> torch.Tensor:
    """``t ** exponent`` in place for ``t >= 0``, as ``exp(exponent log t)``: on the CPU torch's
    pow with a fractional exponent took 2-3x the time of log and exp (0 stays 0)."""
    return t.log_().mul_(exponent).exp_()


def _window_max(z2: torch.Tensor, ry: np.ndarray, rx: np.ndarray, window_px: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per tile, the largest mean of ``z2`` over square windows of ``window_px`` at a stride of
    half a window (windows assigned to the tile holding their centre), and the number of windows
    per tile; ``(-inf, 0)`` for tiles without one (or ``window_px`` 0)."""
    grid = (ry.size - 1, rx.size - 1)
    best = np.full(grid, -np.inf)
    count = np.zeros(grid, np.int64)
    h, w = z2.shape
    win = int(window_px)
    if win <= 0 or h < win or w < win:
        return best, count
    step = max(1, win // 2)
    if win == 2 * step:
        # even windows: sums of 2 x 2 blocks of half a window (segment sums, no integral image)
        ny, nx = h // step, w // step
        # sums over (step x step) blocks: one pooling pass (2-4x faster on the CPU than segment
        # sums or a 4-d view's sum)
        blocks = torch.nn.functional.avg_pool2d(z2.detach()[None, None].float(), step)[0, 0]
        blocks = blocks.cpu().numpy().astype(np.float64) * (step * step)
        sums = blocks[:-1, :-1] + blocks[1:, :-1] + blocks[:-1, 1:] + blocks[1:, 1:]
        sy = np.arange(ny - 1) * step
        sx = np.arange(nx - 1) * step
    else:
        a = z2.detach().double().cpu().numpy()
        s = np.zeros((h + 1, w + 1))
        np.cumsum(np.cumsum(a, 0), 1, out=s[1:, 1:])
        sy = np.arange(0, h - win + 1, step)
        sx = np.arange(0, w - win + 1, step)
        sums = (s[np.ix_(sy + win, sx + win)] - s[np.ix_(sy, sx + win)]
                - s[np.ix_(sy + win, sx)] + s[np.ix_(sy, sx)])
    ti = np.clip(np.searchsorted(ry, sy + win / 2, side="right") - 1, 0, grid[0] - 1)
    tj = np.clip(np.searchsorted(rx, sx + win / 2, side="right") - 1, 0, grid[1] - 1)
    # ti, tj never decrease: each tile's windows are one block of rows and columns of ``sums``,
    # whose maximum two segment reductions give (no scattered per-window updates)
    ci = np.bincount(ti, minlength=grid[0])
    cj = np.bincount(tj, minlength=grid[1])
    ri, rj = np.flatnonzero(ci), np.flatnonzero(cj)
    m = np.maximum.reduceat(np.maximum.reduceat(sums, np.searchsorted(tj, rj), axis=1),
                            np.searchsorted(ti, ri), axis=0)
    best[np.ix_(ri, rj)] = m / (win * win)
    count = np.outer(ci, cj).astype(np.int64)
    return best, count


class FidelityGuard:
    """Check restored frames against their measurements with a profile's forward and noise model.

    Parameters
    ----------
    profile : DetectorProfile (MTF ratio, PSF; NNPS and ``nnps_mean_signal`` to normalise).
    tile_px : tile edge length (px) of the consistency map; the frame is split into
        ``round(H / tile_px)`` x ``round(W / tile_px)`` nearly equal tiles.
    false_alarm_rate : fraction of tiles flagged on pure noise (tile threshold) and significance
        of the frame decision.
    nnps_lr : optional radial NNPS (px^2, on ``profile.frequency_cy_per_px``) that replaces the
        profile's, e.g. the temporal NNPS measured from differences of flat pairs, which excludes
        the fixed pattern that flat-field correction removes.
    device : torch device; default CUDA when present.
    pad_px : reflect padding of the forward blur.
    border_px : frame margin left out of the statistics. Near the frame edge the measurement
        contains blur from outside the field of view, which no restoration of the frame can
        know. None derives it per frame: the smallest margin at which the forward kernel's
        one-sided line-spread tail times the restored frame's transmission range (the largest
        error out-of-field content can cause) is below one noise sigma at the frame's mean
        transmission; without a noise model, the half-width of the profile's PSF.
    tolerance : relative model tolerance ``eps`` (see the module notes): a number for every
        method, a ``{method: eps}`` table, or None for the profile's ``fidelity_tolerance``.
    noise_hardening_exponent : ``beta`` of the noise model (:meth:`variance_map`); None: the
        profile's ``noise_hardening_exponent``.
    """

    def __init__(
        self,
        profile: Any,
        tile_px: int = 32,
        false_alarm_rate: float = 1e-3,
        nnps_lr: Any = None,
        device: str | torch.device | None = None,
        pad_px: int = BLUR_PAD_PX,
        border_px: int | None = None,
        tolerance: float | dict[str, float] | None = None,
        noise_hardening_exponent: float | None = None,
        window_px: int | None = None,
    ) -> None:
        if not isinstance(tile_px, (int, np.integer)) or isinstance(tile_px, bool) or tile_px < 4:
            raise ValueError(f"tile_px must be an integer >= 4, got {tile_px!r}")
        if border_px is not None and (not isinstance(border_px, (int, np.integer)) or border_px < 0):
            raise ValueError(f"border_px must be None or an integer >= 0, got {border_px!r}")
        if not (isinstance(false_alarm_rate, (int, float)) and 0 < false_alarm_rate < 1):
            raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate!r}")
        self.profile = profile
        self.physics = DetectorPhysics.from_profile(profile)
        self.tile_px = int(tile_px)
        if window_px is None:
            # a quarter of the tile (8 px for 32 px tiles): the size of a via or a solder ball
            # seen through the blur; measured on the twin's held-out families, 8 px windows
            # found 94-100 % of 5-sigma fakes where 16 px windows found 76-100 %
            window_px = min(self.tile_px, max(8, self.tile_px // 4))
        if isinstance(window_px, bool) or not isinstance(window_px, (int, np.integer)) or not (
                window_px == 0 or 4 <= window_px <= self.tile_px):
            raise ValueError(f"window_px must be 0 (no local test) or an integer in 4..tile_px, "
                             f"got {window_px!r}")
        self.window_px = int(window_px)
        self.false_alarm_rate = float(false_alarm_rate)
        self.device = default_device(device)
        self.pad_px = int(pad_px)
        self.border_px = None if border_px is None else int(border_px)
        nnps = self.physics.nnps_lr if nnps_lr is None else np.asarray(nnps_lr, dtype=np.float64)
        if nnps is not None:
            # Validated like the profile's own curve (grid, finiteness).
            DetectorPhysics(self.physics.frequency_cy_per_px, self.physics.mtf_ratio, nnps,
                            self.physics.nnps_mean_signal, self.physics.psf)
        self.nnps_lr = nnps
        if tolerance is None:
            tolerance = dict(getattr(profile, "fidelity_tolerance", None) or {})
        elif not isinstance(tolerance, dict):
            tolerance = {FORWARD_MODEL_TOLERANCE_KEY: tolerance}
        for key, eps in tolerance.items():
            if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (
                    math.isfinite(eps) and eps >= 0):
                raise ValueError(f"tolerance {key!r} must be a finite number >= 0, got {eps!r}")
        self.tolerances = {k: float(v) for k, v in tolerance.items()}
        beta = (getattr(profile, "noise_hardening_exponent", 0.0) or 0.0
                if noise_hardening_exponent is None else noise_hardening_exponent)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
            raise ValueError(f"noise_hardening_exponent must be in [0, 1), got {beta!r}")
        self.noise_hardening_exponent = float(beta)
        self._cache: dict[tuple, Any] = {}
        self._last_noise_shape: tuple[int, int] | None = None

    def tolerance_for(self, method: str | None) -> tuple[float, str]:
        """``(eps, source)``: the method's calibrated tolerance, else the forward model's, else 0.
        Never below the forward model's: no restoration can agree with the measurement better
        than the model itself does."""
        if method is not None and method in self.tolerances:
            own = self.tolerances[method]
            model = self.tolerances.get(FORWARD_MODEL_TOLERANCE_KEY, 0.0)
            if model > own:
                return model, f"forward model (above {method}'s own {own:g})"
            return own, f"calibrated for {method}"
        if FORWARD_MODEL_TOLERANCE_KEY in self.tolerances:
            return (self.tolerances[FORWARD_MODEL_TOLERANCE_KEY],
                    "forward model" + (f" ({method} not calibrated)" if method else ""))
        return 0.0, "none calibrated"

    def tile_grid(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of the tile map of an (H, W) frame."""
        return (_tile_edges(int(shape[0]), self.tile_px).size - 1,
                _tile_edges(int(shape[1]), self.tile_px).size - 1)

    @property
    def has_noise_model(self) -> bool:
        return self.nnps_lr is not None and self.physics.nnps_mean_signal is not None

    # ------------------------------------------------------------------ model pieces
    def _transfer(self, forward: str, shape: tuple[int, int]) -> torch.Tensor:
        key = ("transfer", forward, shape, str(self.device))
        if key not in self._cache:
            if forward == "psf":
                self._cache[key] = psf_otf_rfft2(self.physics.psf, shape, self.device)
            else:
                self._cache[key] = self.physics.ratio_rfft(shape, self.device)
        return self._cache[key]

    def _lsf_tail(self, forward: str) -> np.ndarray:
        """``tail[m]``: one-sided sum of |LSF| beyond m px of the forward kernel (m = 0, 1, ...).

        The LSF of a radial transfer function H is the inverse 1-D transform of H(f, 0); the
        PSF's LSF is its projection on one axis."""
        key = ("tail", forward)
        if key not in self._cache:
            if forward == "psf":
                lsf = self.physics.psf.sum(axis=0)
                lsf = lsf / lsf.sum()
                one_side = np.abs(lsf[lsf.size // 2 + 1:])
            else:
                n = 1024
                vals = np.interp(np.fft.rfftfreq(n), self.physics.frequency_cy_per_px, self.physics.mtf_ratio)
                lsf = np.fft.irfft(vals, n)
                one_side = np.abs(lsf[1:n // 2])
            tail = np.concatenate([np.cumsum(one_side[::-1])[::-1], [0.0]])
            self._cache[key] = tail
        return self._cache[key]

    def border_for(self, restored: torch.Tensor, noise_sigma: float | None, forward: str) -> int:
        """Frame margin (px) excluded from the statistics; see the class parameters."""
        if self.border_px is not None:
            return self.border_px
        if noise_sigma is None:
            return int(self.physics.psf.shape[0] // 2)
        tail = self._lsf_tail(forward)
        low, high = torch.aminmax(restored)
        span = float(high - low)
        ok = np.flatnonzero(tail * span <= noise_sigma)
        return int(ok[0]) if ok.size else int(tail.size - 1)

    def noise_statistics(self, shape: tuple[int, int]) -> tuple[float, float]:
        """``(variance per unit T at the calibration dose, correlation factor c)`` of the NNPS on
        an (H, W) frame: ``sum_f NNPS / (H W)`` and ``mean_f(NNPS^2) / mean_f(NNPS)^2`` over the
        full 2-D frequency grid."""
        if self.nnps_lr is None:
            raise ValueError("no NNPS: the noise model is unavailable")
        key = ("noise", shape)
        if key not in self._cache:
            h, w = shape
            p = radial_transfer_rfft2(self.physics.frequency_cy_per_px, self.nnps_lr, shape,
                                      "cpu", "nnps_lr").double()
            # rfft2 half-plane -> full-plane sums: columns 1 .. ceil(w/2)-1 appear twice.
            mult = torch.full((p.shape[1],), 2.0, dtype=torch.float64)
            mult[0] = 1.0
            if w % 2 == 0:
                mult[-1] = 1.0
            mean_p = float((p * mult).sum()) / (h * w)
            mean_p2 = float((p * p * mult).sum()) / (h * w)
            mean_p3 = float((p * p * p * mult).sum()) / (h * w)
            self._cache[key] = (mean_p, mean_p2 / mean_p**2)
            self._cache[("noise3", shape)] = mean_p3 / mean_p**3
        return self._cache[key]

    def _chi2_isf(self, p: Any, k: Any, c: float) -> np.ndarray:
        """Upper ``p`` quantile of a tile's reduced chi-square ``Q / k`` (k pixels) under
        coloured Gaussian noise. ``Q = sum z^2`` is a weighted sum of chi-square(1) variables
        with cumulants ``k``, ``2 k c2``, ``8 k c3`` (``c2 = mean NNPS^2 / mean NNPS^2``,
        ``c3 = mean NNPS^3 / mean NNPS^3``, Parseval); the shifted scaled chi-square
        ``a chi2(d) + b`` with the same three cumulants (Pearson's approximation, better in the
        far tail than Satterthwaite's two-moment one for small windows) gives the quantile."""
        c3 = self._cache.get(("noise3", self._last_noise_shape), c * c)
        k = np.asarray(k, dtype=np.float64)
        a = c3 / c
        d = k * c**3 / c3**2
        b = k - a * d
        return (a * stats.chi2.isf(p, d) + b) / k

    def variance_map(self, t_local: torch.Tensor, scale_var: float, frames_averaged: int,
                     flat_frames_averaged: int | None) -> torch.Tensor:
        """Per-pixel noise variance of a corrected frame at local transmission ``t_local``
        (consumed): ``scale_var (T^(1-beta) / N + T^2 / N_flat)``.

        ``beta`` (the profile's ``noise_hardening_exponent``): an energy-integrating screen
        weights each absorbed quantum by its energy; the sample hardens the beam, so the mean
        absorbed energy per quantum grows as ``(T)^-beta`` and the variance of the normalised
        signal ``T ebar / (ebar_0 q_0)`` with it. 0 for a counting detector or a screen without
        an absorption edge in the spectrum. The flat carries no sample: its term stays ``T^2``."""
        beta = self.noise_hardening_exponent
        if flat_frames_averaged is not None:
            var = t_local * t_local
            var.mul_(1.0 / flat_frames_averaged)
            var.add_(_pow_(t_local, 1.0 - beta) if beta else t_local, alpha=1.0 / frames_averaged)
            return var.mul_(scale_var)
        if beta:
            _pow_(t_local, 1.0 - beta)
        return t_local.mul_(scale_var / frames_averaged)

    @property
    def _tests_per_tile(self) -> int:
        """Tests sharing a tile's false-alarm rate: the tile statistic, and the window one."""
        return 2 if self.window_px else 1

    def _thresholds(self, counts: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
        """Per-tile reduced chi-square thresholds: at the false-alarm rate (its share of it
        when the window test runs too), and the frame-wise Bonferroni one at
        ``false_alarm_rate / (2 M)`` (same share)."""
        key = ("thr", counts.tobytes(), counts.shape, round(c, 12), self.window_px,
               self._last_noise_shape)
        if key not in self._cache:
            m = max(int(counts.size), 1)
            alpha = self.false_alarm_rate / self._tests_per_tile
            tile = self._chi2_isf(alpha, counts, c)
            frame = self._chi2_isf(alpha / (2 * m), counts, c)
            self._cache[key] = (tile.astype(np.float64), frame.astype(np.float64))
        return self._cache[key]

    def _local_thresholds(self, windows: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
        """Thresholds of a tile's largest window reduced chi-square (``windows`` per tile):
        Bonferroni over the tile's windows at its share of the false-alarm rate, and the
        frame-wise one over all tiles; +inf where a tile has no window."""
        key = ("lthr", windows.tobytes(), windows.shape, round(c, 12), self.window_px,
               self._last_noise_shape)
        if key not in self._cache:
            k = max(self.window_px, 1) ** 2
            m = max(int(windows.size), 1)
            alpha = self.false_alarm_rate / self._tests_per_tile
            n = np.maximum(windows, 1)
            tile = np.where(windows > 0, self._chi2_isf(alpha / n, k, c), np.inf)
            frame = np.where(windows > 0, self._chi2_isf(alpha / (2 * m * n), k, c), np.inf)
            self._cache[key] = (tile.astype(np.float64), frame.astype(np.float64))
        return self._cache[key]

    def measured_detail(self, measured: torch.Tensor, forward: str = "mtf_ratio") -> torch.Tensor:
        """The tolerance's shape from the measurement: ``A y - A A y``, the measured detail in
        the band where the blur's width matters (a change of blur width, or a restoration's
        bias near edges, leaves a residual of this shape). From the measurement, so a feature a
        restoration invents cannot widen its own null variance; the extra blur keeps the
        measurement's noise out of it."""
        y = measured[None] if measured.ndim == 2 else measured
        yp = pad_frames(y.to(self.device), self.pad_px, fast=True)
        shape = tuple(yp.shape[-2:])
        key = ("mdetail", forward, shape, str(self.device))
        if key not in self._cache:
            t = self._transfer(forward, shape)
            self._cache[key] = t * (1 - t)
        out = torch.fft.irfft2(torch.fft.rfft2(yp) * self._cache[key], s=shape)
        return crop_frames(out, self.pad_px, tuple(y.shape[-2:]))[0]

    def reblur(self, restored: Any, forward: str = "mtf_ratio", detail: bool = False,
               keep_spectrum: bool = False):
        """``A x``: the restored frame(s) seen through the thick detector, (B, H, W) tensor.
        With ``detail`` also ``D = A x - A A x`` (the tolerance's shape), from the same forward
        transform: returns ``(A x, D)``."""
        if forward not in FORWARD_MODELS:
            raise ValueError(f"forward model must be one of {FORWARD_MODELS}, got {forward!r}")
        x, _ = as_batch(restored, "restored")
        x = x.to(self.device)
        xp = pad_frames(x, self.pad_px, fast=True)
        shape = tuple(xp.shape[-2:])
        t = self._transfer(forward, shape)
        spec = torch.fft.rfft2(xp)
        if keep_spectrum:     # the null-space band reuses the restored frame's spectrum
            self._last_spectrum = (spec, shape)
        if not detail:
            out = torch.fft.irfft2(spec * t, s=shape)
            return crop_frames(out, self.pad_px, tuple(x.shape[-2:]))
        key = ("detail", forward, shape, str(self.device))
        if key not in self._cache:
            self._cache[key] = t * (1 - t)
        # Two inverse transforms, not one batched over a stacked spectrum: on the CPU the batched
        # call of two frame-sized spectra ran 2-5x slower than two calls (torch 2.13, 1080^2).
        size = tuple(x.shape[-2:])
        model = crop_frames(torch.fft.irfft2(spec * t, s=shape), self.pad_px, size)
        detail = crop_frames(torch.fft.irfft2(spec * self._cache[key], s=shape), self.pad_px, size)
        return model, detail

    def null_space_band(self, forward: str, dose_ratio: float, frames_averaged: int,
                        flat_frames_averaged: int | None, mean_t: float,
                        spectrum: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """Boolean rfft2 mask of the band the data cannot determine: where the transfer times
        the frame's SNR is below 1, ``H(f)^2 P_x(f) < NPS(f)``.

        ``P_x`` is the restored frame's power spectrum, averaged over rings (64 bins up to
        0.71 cy/px) so that it estimates the signal's spectrum rather than one noisy periodogram;
        ``H^2 P_x`` is then the power the detector passes of it. ``NPS`` is the measurement's
        noise at the frame's mean transmission, dose and averaging (the guard's noise model).
        A restoration consistent with the data has ``H X`` ~ the measured signal, so this band
        is where the measurement holds less signal than noise, whatever the method put there."""
        key = ("band-parts", forward, shape, str(self.device))
        if key not in self._cache:
            t = self._transfer(forward, shape)
            nnps = self.physics.nnps_rfft(shape, self.device)
            fy = torch.fft.fftfreq(shape[0], device=self.device)[:, None]
            fx = torch.fft.rfftfreq(shape[1], device=self.device)[None, :]
            ring = torch.clamp((torch.sqrt(fy * fy + fx * fx) / 0.7072 * 64).long(), max=63)
            mult = torch.full((shape[1] // 2 + 1,), 2.0, device=self.device)
            mult[0] = 1.0
            if shape[1] % 2 == 0:
                mult[-1] = 1.0
            weight = mult.expand_as(t).reshape(-1)
            t2 = t.abs().square() if t.is_complex() else t * t    # the PSF's OTF is complex
            # ring averages from every 3rd row and column of the spectrum (tens of thousands of
            # samples per frame of 1024 px: the ring means are as good, at 1/9 of the cost)
            ring_sub = ring[::3, ::3].reshape(-1)
            weight_sub = weight.reshape(t2.shape)[::3, ::3].reshape(-1)
            count_sub = torch.bincount(ring_sub, weights=weight_sub, minlength=64).clamp(min=1)
            # the radial frequency of each bin (the band's lowest frequency is reported)
            radius = torch.sqrt(fy * fy + fx * fx).expand_as(t2).contiguous()
            # H^2 P_x < NPS  <=>  H^2 / NNPS < level / P_x: the left side per shape, the right
            # one per ring (one gather and one comparison per frame)
            transfer_snr = t2 / nnps
            self._cache[key] = (transfer_snr, nnps, ring.reshape(-1), ring_sub, weight_sub,
                                count_sub * float(shape[0] * shape[1]), radius)
        transfer_snr, _, ring, ring_sub, weight_sub, norm_sub, _ = self._cache[key]
        sub = spectrum[::3, ::3]
        power = (sub.real.square() + sub.imag.square()).reshape(-1)
        p_ring = torch.bincount(ring_sub, weights=power * weight_sub, minlength=64) / norm_sub
        beta = self.noise_hardening_exponent
        level = (max(mean_t, 1e-6) ** (1.0 - beta)) / frames_averaged
        if flat_frames_averaged is not None:
            level += mean_t**2 / flat_frames_averaged
        limit = (level / float(dose_ratio)) / p_ring      # inf where a ring holds no power
        return transfer_snr < limit[ring].reshape(transfer_snr.shape)

    def _null_space_detail(self, forward: str, dose_ratio: float, frames_averaged: int,
                           flat_frames_averaged: int | None, mean_t: float,
                           size: tuple[int, int]) -> tuple[torch.Tensor, float, float]:
        """The restored frame's detail in :meth:`null_space_band` (from the spectrum kept by
        :meth:`reblur`), the band's lowest radial frequency (cy/px) and its share of the
        frequency plane."""
        if self._last_spectrum is None:
            raise RuntimeError("null-space detail needs the spectrum of the last reblur")
        spec, shape = self._last_spectrum
        self._last_spectrum = None
        spec = spec[0]
        band = self.null_space_band(forward, dose_ratio, frames_averaged, flat_frames_averaged,
                                    mean_t, spec, shape)
        u = crop_frames(torch.fft.irfft2(spec * band, s=shape)[None], self.pad_px, size)[0]
        radius = self._cache[("band-parts", forward, shape, str(self.device))][-1]
        cutoff = float(torch.where(band, radius, torch.inf).min())
        n_band = int(band.sum())
        return u, cutoff if n_band else float("nan"), n_band / band.numel()

    def _null_z(self, u2: torch.Tensor, var: torch.Tensor, iry: np.ndarray, irx: np.ndarray,
                tested: np.ndarray) -> np.ndarray:
        """Per tile the largest window rms of ``u / sigma`` (``u2``: the null-band detail
        squared, ``var``: the variance it is measured against)."""
        zu, _ = _window_max(u2 / var, iry, irx, self.window_px or self.tile_px)
        return np.sqrt(np.where(tested & np.isfinite(zu), zu, np.nan)).astype(np.float32)

    @staticmethod
    def bin_to(restored: torch.Tensor, shape: tuple[int, int]) -> tuple[torch.Tensor, int]:
        """Bin a super-resolved (B, kH, kW) restoration onto the measured (H, W) grid."""
        h, w = shape
        kh, kw = restored.shape[-2:]
        if (kh, kw) == (h, w):
            return restored, 1
        k = kh // h
        if k < 2 or kh != k * h or kw != k * w:
            raise ValueError(f"restored {kh}x{kw} is neither the measured {h}x{w} nor an integer "
                             f"multiple of it")
        return torch.nn.functional.avg_pool2d(restored[:, None], k)[:, 0], k

    # ------------------------------------------------------------------ the check
    def check(
        self,
        measured: Any,
        restored: Any,
        *,
        dose_ratio: float | None = None,
        quanta_per_pixel: float | None = None,
        frames_averaged: int = 1,
        flat_frames_averaged: int | None = None,
        forward: str = "mtf_ratio",
        method: str | None = None,
        null_space: bool = False,
    ) -> FidelityResult:
        """Consistency of one restored (H, W) frame with the corrected measurement it came from.

        Parameters
        ----------
        measured : corrected thick-detector frame (transmission, flat = 1).
        restored : the restoration of ``measured``.
        dose_ratio : detected quanta per pixel of this frame's flat (one exposure) divided by the
            profile's ``nnps_mean_signal``. Give this or ``quanta_per_pixel``; with neither the
            noise level is unknown and the guard reports raw residuals.
        quanta_per_pixel : detected X-ray quanta per pixel of the flat in one exposure.
        frames_averaged : frames averaged into ``measured`` (noise variance / N).
        flat_frames_averaged : frames averaged into the flat used for the correction; its noise
            adds ``T^2 / N_flat``. None: the flat is taken as noise-free.
        forward : "mtf_ratio" or "psf" (see :func:`forward_model_for`).
        method : restoration method name (recorded in the result).
        null_space : also measure, per tile, the restored detail in the band the data cannot
            determine (:meth:`null_space_band`; ``FidelityResult.null_rms``), from the same
            forward transform (one more inverse transform), and its largest window rms
            against the sigma a perfect restoration is tested with (``null_local_z``). Needs
            the noise model.
        """
        t0 = time.perf_counter()
        y, single_y = as_batch(measured, "measured")
        x, single_x = as_batch(restored, "restored")
        if not (single_y and single_x):
            raise ValueError("check takes one (H, W) frame at a time")
        h, w = y.shape[-2:]
        x, scale = self.bin_to(x, (h, w))
        if min(h, w) < self.tile_px:
            raise ValueError(f"frame {h}x{w} is smaller than one tile ({self.tile_px} px)")
        if not isinstance(frames_averaged, (int, np.integer)) or frames_averaged < 1:
            raise ValueError(f"frames_averaged must be an integer >= 1, got {frames_averaged!r}")
        if flat_frames_averaged is not None and (
            not isinstance(flat_frames_averaged, (int, np.integer)) or flat_frames_averaged < 1
        ):
            raise ValueError(f"flat_frames_averaged must be None or an integer >= 1, got {flat_frames_averaged!r}")
        if dose_ratio is not None and quanta_per_pixel is not None:
            raise ValueError("give dose_ratio or quanta_per_pixel, not both")
        for label, v in (("dose_ratio", dose_ratio), ("quanta_per_pixel", quanta_per_pixel)):
            if v is not None and not (isinstance(v, (int, float, np.floating, np.integer))
                                      and math.isfinite(v) and v > 0):
                raise ValueError(f"{label} must be a finite number > 0, got {v!r}")

        eps, eps_source = self.tolerance_for(method)
        y = y.to(self.device)[0]
        self._last_spectrum = None
        with trusted_frames():        # x is checked above
            model = self.reblur(x, forward, keep_spectrum=null_space)[0]
        # the tolerance's shape, from the measurement (a feature the restoration invents must
        # not widen its own null variance): the measured detail near the blur's edge, A y - A A y
        detail = self.measured_detail(y, forward) if eps > 0 else None
        resid = y - model
        ry, rx = _tile_edges(h, self.tile_px), _tile_edges(w, self.tile_px)
        nan = float("nan")

        if quanta_per_pixel is not None and self.physics.nnps_mean_signal is not None:
            dose_ratio = float(quanta_per_pixel) / float(self.physics.nnps_mean_signal)
        reason = None
        if self.nnps_lr is None:
            reason = "the profile has no noise model (NNPS)"
        elif self.physics.nnps_mean_signal is None:
            reason = "the profile has no nnps_mean_signal"
        elif dose_ratio is None:
            reason = "the dose of the frame is unknown (give dose_ratio or quanta_per_pixel)"
        else:
            open_quanta = float(dose_ratio) * float(self.physics.nnps_mean_signal) * frames_averaged
            if open_quanta < MIN_QUANTA_PER_PIXEL:
                reason = (f"the frame holds {open_quanta:.2g} detected quanta per pixel in the open "
                          f"beam; the chi-square test needs >= {MIN_QUANTA_PER_PIXEL:g}")

        if reason is None:
            var_unit, c = self.noise_statistics((h, w))
            self._last_noise_shape = (h, w)
            mean_t = float(model.mean().clamp(min=0))
            sigma_mean = math.sqrt(var_unit / float(dose_ratio) * (
                mean_t / frames_averaged + (mean_t**2 / flat_frames_averaged if flat_frames_averaged else 0.0)))
            border = self.border_for(x, sigma_mean, forward)
        else:
            border = self.border_for(x, None, forward)
        border = min(border, (min(h, w) - 1) // 2)
        # Statistics on the interior only (views, no masks): fewer full-frame passes.
        inner = (slice(border, h - border), slice(border, w - border))
        resid = resid[inner]
        n_pix = int(resid.numel())
        iry = np.clip(ry - border, 0, h - 2 * border)
        irx = np.clip(rx - border, 0, w - 2 * border)
        counts = np.outer(np.diff(iry), np.diff(irx)).astype(np.float64)
        tested = counts > 0
        safe_counts = np.where(tested, counts, 1.0)
        common = {"tile_px": self.tile_px, "tile_edges": (ry, rx), "forward_model": forward,
                  "frames_averaged": int(frames_averaged), "border_px": int(border), "method": method,
                  "tolerance": eps, "tolerance_source": eps_source, "scale": scale}

        def full_map(inner_map: torch.Tensor) -> np.ndarray:
            out = np.full((h, w), np.nan, np.float32)
            out[inner] = inner_map.float().cpu().numpy()
            return out

        if reason is not None:
            r2 = resid * resid
            rms = math.sqrt(float(r2.sum(dtype=torch.float64)) / n_pix)
            tile_ms = _tile_sums(r2, iry, irx).cpu().numpy() / safe_counts
            tile_ms = np.where(tested, tile_ms, nan).astype(np.float32)
            return FidelityResult(
                map=full_map(resid), tile_chi2=tile_ms,
                flagged=np.zeros(tile_ms.shape, bool), reduced_chi2=nan, flagged_fraction=nan,
                threshold=nan,
                threshold_meaning="none: without a noise model no threshold can be derived",
                expected_false_alarm_rate=nan, frame_p_value=nan, flagged_p_value=nan,
                consistent=None, normalised=False, rms_residual=rms,
                message=f"cannot normalise: {reason}; map and tiles are raw residuals "
                        f"(rms {rms:.3g} transmission)",
                dose_ratio=dose_ratio, elapsed_s=time.perf_counter() - t0, **common)

        r2 = resid * resid
        rms = math.sqrt(float(r2.sum(dtype=torch.float64)) / n_pix)
        scale_var = var_unit / float(dose_ratio)
        # var = scale (T / N + T^2 / N_flat), T the local transmission of A x_hat
        t_local = model[inner].clamp(min=0)
        var = self.variance_map(t_local, scale_var, frames_averaged, flat_frames_averaged)
        # Zero transmission (fully opaque) carries no quantum noise; the quantum model does not
        # describe such pixels, so their variance is held at that of one detected quantum
        # (T = 1 / quanta of the flat), the smallest non-zero level the model knows; never above
        # the open-beam level (T = 1) when the flat itself holds less than one quantum per pixel.
        quanta = float(dose_ratio) * float(self.physics.nnps_mean_signal)
        var.clamp_(min=scale_var * min(1.0, 1.0 / quanta) / frames_averaged)
        resid_tile_rms = np.sqrt(_tile_sums(r2, iry, irx).cpu().numpy() / safe_counts)
        # the measurement against the noise alone (the conventional goodness of fit)
        reduced_noise = float(r2.div_(var).sum(dtype=torch.float64)) / n_pix
        noise_tile_sigma = np.sqrt(_tile_sums(var, iry, irx).cpu().numpy() / safe_counts)
        null_extras: dict[str, Any] = {}
        if null_space:
            u, cutoff, band_frac = self._null_space_detail(forward, dose_ratio, frames_averaged,
                                                           flat_frames_averaged, mean_t, (h, w))
            u = u[inner]
            u2 = u * u
            u_rms = np.sqrt(_tile_sums(u2, iry, irx).cpu().numpy() / safe_counts)
            sharp = x[0].to(self.device)[inner] - model[inner]
            # the measured detail (edges the data show; restorations err most there)
            seen = (detail if detail is not None else self.measured_detail(y, forward))[inner]
            edge_rms = np.sqrt(_tile_sums(seen * seen, iry, irx).cpu().numpy() / safe_counts)
            sharp_rms = np.sqrt(_tile_sums(sharp * sharp, iry, irx).cpu().numpy() / safe_counts)
            null_extras = {"null_rms": np.where(tested, u_rms, nan).astype(np.float32),
                           "restored_detail_rms": np.where(tested, sharp_rms, nan).astype(np.float32),
                           "measured_detail_rms": np.where(tested, edge_rms, nan).astype(np.float32),
                           "null_band_cutoff_cy_per_px": cutoff, "null_band_fraction": band_frac}
        eps_model = self.tolerances.get(FORWARD_MODEL_TOLERANCE_KEY, 0.0)
        if null_space and (detail is None or eps_model != eps):
            # the null-band detail against the sigma a perfect restoration is tested with
            # (noise and the forward model's tolerance), the same for every method
            den = var if detail is None or eps_model == 0 else torch.addcmul(
                var, detail[inner], detail[inner], value=eps_model * eps_model)
            null_extras["null_local_z"] = self._null_z(u2, den, iry, irx, tested)
        if detail is not None:
            d = detail[inner]
            var.addcmul_(d, d, value=eps * eps)
            if null_space and eps_model == eps:
                null_extras["null_local_z"] = self._null_z(u2, var, iry, irx, tested)
        # per tile the sigma the residual is tested against (noise and model tolerance)
        if detail is None:
            test_tile_sigma = noise_tile_sigma
        elif null_space:
            # the tested variance is the noise's plus eps^2 D^2: its tile means are those of the
            # two maps already summed (no third pass over the frame)
            test_tile_sigma = np.sqrt(noise_tile_sigma**2 + (eps * edge_rms) ** 2)
        else:
            test_tile_sigma = np.sqrt(_tile_sums(var, iry, irx).cpu().numpy() / safe_counts)
        z = var.rsqrt_().mul_(resid)
        z2 = z * z
        tile_chi2 = _tile_sums(z2, iry, irx).cpu().numpy() / safe_counts
        thresholds, strong_thresholds = self._thresholds(safe_counts, c)
        # the local statistic: the largest window reduced chi-square inside each tile
        local_chi2, windows = _window_max(z2, iry, irx, self.window_px)
        local_thr, local_strong = self._local_thresholds(windows, c)
        flagged = tested & ((tile_chi2 > thresholds) | (local_chi2 > local_thr))
        strong = tested & ((tile_chi2 > strong_thresholds) | (local_chi2 > local_strong))
        tile_chi2 = np.where(tested, tile_chi2, nan)
        reduced = float(tile_chi2[tested] @ counts[tested]) / n_pix
        nu_frame = n_pix / c
        frame_p = float(stats.chi2.sf(reduced * nu_frame, nu_frame))
        m, k = int(tested.sum()), int(flagged.sum())
        flagged_p = float(stats.binom.sf(k - 1, m, self.false_alarm_rate)) if k > 0 else 1.0
        consistent = flagged_p >= self.false_alarm_rate / 2 and not strong.any()
        alpha = self.false_alarm_rate / self._tests_per_tile
        full = float(self._chi2_isf(alpha, self.tile_px**2, c))
        meaning = (f"tile reduced chi-square above its upper {alpha:g} quantile under coloured "
                   f"NNPS noise (three-cumulant chi-square, correlation factor {c:.3f})")
        if self.window_px:
            meaning += (f", or its largest {self.window_px} px window above the upper "
                        f"{alpha:g} / windows quantile (Bonferroni over the tile's windows)")
        local_chi2 = np.where(tested & np.isfinite(local_chi2), local_chi2, nan)
        verdict = "consistent with the measurement" if consistent else "NOT consistent with the measurement"
        message = (f"{verdict}: reduced chi2 {reduced_noise:.3f} against the noise ({reduced:.3f} "
                   f"with the model tolerance), {k}/{m} tiles flagged "
                   f"(expected {self.false_alarm_rate * m:.2g} by chance), "
                   f"{int(strong.sum())} beyond the frame-wise threshold; tolerance {eps:g} "
                   f"({eps_source})")
        return FidelityResult(
            map=full_map(z), tile_chi2=tile_chi2.astype(np.float32), flagged=flagged,
            reduced_chi2=reduced_noise, reduced_chi2_tolerant=reduced,
            flagged_fraction=k / m, threshold=full, threshold_meaning=meaning,
            expected_false_alarm_rate=self.false_alarm_rate, frame_p_value=frame_p,
            flagged_p_value=flagged_p, consistent=bool(consistent), normalised=True,
            rms_residual=rms, message=message, dose_ratio=float(dose_ratio),
            correlation_factor=c, strong_tiles=strong, elapsed_s=time.perf_counter() - t0,
            noise_tile_sigma=np.where(tested, noise_tile_sigma, nan).astype(np.float32),
            residual_tile_rms=np.where(tested, resid_tile_rms, nan).astype(np.float32),
            local_chi2=local_chi2.astype(np.float32),
            test_tile_sigma=np.where(tested, test_tile_sigma, nan).astype(np.float32),
            local_threshold=np.where(tested, local_thr, nan).astype(np.float32),
            window_px=self.window_px, **null_extras, **common)


# ---------------------------------------------------------------------------------------------
def calibrate_tolerance(
    guard: FidelityGuard,
    pairs: Sequence[tuple[Any, Any]],
    *,
    method: str,
    dose_ratio: float | Sequence[float],
    frames_averaged: int | Sequence[int] = 1,
    flat_frames_averaged: int | None = None,
    max_tolerance: float = 2.0,
    iterations: int = 14,
) -> dict[str, Any]:
    """Smallest relative tolerance ``eps`` for which ordinary frames of ``method`` pass the guard.

    ``pairs``: (measured corrected frame, its restoration by ``method``) of frames the operator
    accepts as ordinary (or twin frames), over the range of doses and averaging the method is used
    at (``dose_ratio`` and ``frames_averaged``: one value or one per frame); use other frames than
    those you later judge. The result
    is the smallest ``eps`` (bisection on [0, ``max_tolerance``]) at which every frame is
    consistent and at most ``floor(false_alarm_rate x tiles)`` tiles are flagged. Store it in the
    profile's ``fidelity_tolerance[method]``.

    With fewer than ``1 / false_alarm_rate`` tiles no tile may be flagged, so ``eps`` is the
    largest tolerance any calibration tile needs; a new tile of the same kind of frame then needs
    more with probability at most ``1 / (tiles + 1)`` (a conformal bound: the tiles are
    exchangeable), reported as ``"held_out_rate_bound"``. Calibrate on at least
    ``1 / false_alarm_rate`` tiles for the bound to reach the false-alarm rate.

    Returns ``{"tolerance", "flagged_before", "flagged_after", "tiles", "frames",
    "reduced_chi2_before", "reduced_chi2_after"}``; raises ValueError when even
    ``max_tolerance`` does not make the frames consistent (they are not ordinary for this method,
    or the noise model is wrong).
    """
    if not pairs:
        raise ValueError("calibrating a tolerance needs at least one (measured, restored) pair")
    def per_frame(value, label):
        values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * len(pairs)
        if len(values) != len(pairs):
            raise ValueError(f"{len(values)} values of {label} for {len(pairs)} frames")
        return values

    doses = per_frame(dose_ratio, "dose_ratio")
    averaged = per_frame(frames_averaged, "frames_averaged")
    if not guard.has_noise_model:
        raise ValueError("the profile has no noise model (NNPS): a tolerance cannot be calibrated")
    forward = forward_model_for(method)
    saved = dict(guard.tolerances)

    def run(eps: float):
        guard.tolerances = {**saved, method: eps}
        try:
            return [guard.check(y, x, dose_ratio=d, frames_averaged=int(n),
                                flat_frames_averaged=flat_frames_averaged, forward=forward,
                                method=method) for (y, x), d, n in zip(pairs, doses, averaged)]
        finally:
            guard.tolerances = saved

    def passes(results) -> bool:
        tiles = sum(int(np.isfinite(r.tile_chi2).sum()) for r in results)
        flagged = sum(int(r.flagged.sum()) for r in results)
        return all(r.consistent for r in results) and flagged <= int(guard.false_alarm_rate * tiles)

    before = run(0.0)
    tiles = sum(int(np.isfinite(r.tile_chi2).sum()) for r in before)
    if passes(before):
        lo = hi = 0.0
        after = before
    else:
        after = run(max_tolerance)
        if not passes(after):
            raise ValueError(
                f"{method}: even a tolerance of {max_tolerance:g} leaves "
                f"{sum(int(r.flagged.sum()) for r in after)} of {tiles} tiles flagged; these "
                "frames are not ordinary for this method (or the noise model does not fit them)")
        lo, hi = 0.0, float(max_tolerance)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            res = run(mid)
            if passes(res):
                hi, after = mid, res
            else:
                lo = mid
    return {"tolerance": hi, "frames": len(pairs), "tiles": tiles,
            "held_out_rate_bound": max(1.0 / (tiles + 1), guard.false_alarm_rate),
            "flagged_before": sum(int(r.flagged.sum()) for r in before),
            "flagged_after": sum(int(r.flagged.sum()) for r in after),
            "reduced_chi2_before": float(np.mean([r.reduced_chi2 for r in before])),
            "reduced_chi2_after": float(np.mean([r.reduced_chi2_tolerant for r in after]))}


# ---------------------------------------------------------------------------------------------
def fit_noise_hardening(
    guard: FidelityGuard,
    scenes: Any,
    *,
    dose_ratio: float,
    frames_averaged: int = 1,
    border_px: int = 16,
) -> dict[str, Any]:
    """Measure the noise model's ``noise_hardening_exponent`` (beta) from repeated frames.

    ``scenes``: one (n >= 4, H, W) stack, or a list of them, of corrected frames of a static
    sample, each stack corrected with one dark and flat (a photon-transfer measurement with the
    sample in; the shared flat's noise is common to a stack and drops out of its spread). Per
    tile, the variance of the frames about their mean is compared with the model
    ``var_unit / d * T^(1-beta) / N`` at the local transmission ``T`` (the frames' mean). beta
    minimises the sum of absolute log ratios over all tiles (a median fit: the hardening differs
    between materials, and small dense features, whose noise comes through the screen's blur
    from brighter surroundings, should not pull it); grid search on [0, 0.95]. Use samples of
    the materials and transmission range the detector images. Returns ``{"beta", "tiles",
    "ratio_median_before", "ratio_median_after", "ratio_p90_after"}`` (tile variance measured /
    modelled).
    """
    stacks = [scenes] if isinstance(scenes, np.ndarray) and np.ndim(scenes) == 3 else list(scenes)
    if not guard.has_noise_model:
        raise ValueError("the profile has no noise model (NNPS): nothing to fit")
    if not (isinstance(dose_ratio, (int, float)) and math.isfinite(dose_ratio) and dose_ratio > 0):
        raise ValueError(f"dose_ratio must be a finite number > 0, got {dose_ratio!r}")
    t_tiles, v_tiles = [], []
    for stack in stacks:
        stack = np.asarray(stack, dtype=np.float64)
        if stack.ndim != 3 or stack.shape[0] < 4:
            raise ValueError(f"need (n >= 4, H, W) repeated frames, got shape {stack.shape}")
        _, h, w = stack.shape
        var_unit, _ = guard.noise_statistics((h, w))
        mean = stack.mean(0)
        emp = stack.var(0, ddof=1)
        b = int(border_px)
        ry = _tile_edges(h - 2 * b, guard.tile_px) + b
        rx = _tile_edges(w - 2 * b, guard.tile_px) + b
        for i in range(ry.size - 1):
            for j in range(rx.size - 1):
                sl = (slice(ry[i], ry[i + 1]), slice(rx[j], rx[j + 1]))
                t_tiles.append((np.clip(mean[sl], 1e-6, None), var_unit))
                v_tiles.append(float(emp[sl].mean()))
    v = np.asarray(v_tiles)
    scale = 1.0 / dose_ratio / frames_averaged

    def log_ratio(beta: float) -> np.ndarray:
        pred = np.array([vu * float((t ** (1.0 - beta)).mean()) for t, vu in t_tiles]) * scale
        return np.log(v / pred)

    grid = np.arange(0.0, 0.951, 0.005)
    cost = [float(np.abs(log_ratio(beta)).sum()) for beta in grid]
    beta = float(grid[int(np.argmin(cost))])
    before, after = np.exp(log_ratio(0.0)), np.exp(log_ratio(beta))
    return {"beta": beta, "tiles": int(v.size), "ratio_median_before": float(np.median(before)),
            "ratio_median_after": float(np.median(after)),
            "ratio_p90_after": float(np.quantile(after, 0.9))}


# ---------------------------------------------------------------------------------------------
@dataclass
class UncertaintyResult:
    """Spread of a stochastic / multi-step restoration.

    Attributes
    ----------
    mean, std : (H, W) float32 per-pixel mean and sample standard deviation over the variants.
    variants : seeds or step counts used.
    cost_s : wall time of all variants.
    cost_relative : ``cost_s`` divided by the time of one restoration (``reference_s``).
    reference_s : time of one restoration (given, or the first variant's).
    """

    mean: np.ndarray
    std: np.ndarray
    variants: list
    cost_s: float
    cost_relative: float
    reference_s: float
    samples: np.ndarray | None = field(default=None, repr=False)


def _restorer_variant_fn(restorer: Any) -> tuple[Callable[[np.ndarray, Any], np.ndarray], list]:
    """Variant function and default variants for a learned :class:`~.stage.Restorer`: SR3 ->
    start-noise seeds; cold diffusion / SDE -> sampler step counts around the restorer's."""
    from .samplers import DEFAULT_STEPS, make_restore_fn
    from .stage import _float_output

    method = restorer.method
    if method not in ("sr3", "sde", "cold_diffusion") or getattr(restorer, "_model", None) is None:
        raise ValueError(f"uncertainty needs a diffusion restorer (sr3, sde, cold_diffusion), got {method!r}")
    base_steps = restorer.steps if restorer.steps is not None else DEFAULT_STEPS.get(method, 1)
    if method == "sr3":
        variants: list = [0, 1, 2, 3]
    else:
        variants = sorted({max(1, base_steps // 2), base_steps, base_steps * 2})

    def run(frame: np.ndarray, variant: Any) -> np.ndarray:
        model = _float_output(restorer._model)
        if method == "sr3":
            fn = make_restore_fn(method, model, restorer.physics, steps=base_steps, seed=int(variant))
        else:
            fn = make_restore_fn(method, model, restorer.physics, steps=int(variant))
        saved = restorer._predict
        restorer._predict = fn
        try:
            return restorer.restore(frame)
        finally:
            restorer._predict = saved

    return run, variants


def sampler_uncertainty(
    restorer_or_fn: Any,
    frame: Any,
    variants: Sequence[Any] | None = None,
    reference_s: float | None = None,
    keep_samples: bool = False,
) -> UncertaintyResult:
    """Per-pixel uncertainty of a diffusion restoration from the spread of a few runs.

    Parameters
    ----------
    restorer_or_fn : a learned :class:`~.stage.Restorer` (``sr3``: runs with different start
        noise seeds; ``sde`` / ``cold_diffusion``: runs with half, the same and twice the sampler
        steps), or a function ``fn(frame, variant) -> restored`` (then ``variants`` is required).
    frame : corrected (H, W) frame.
    variants : seeds or step counts (default: see above); at least 2.
    reference_s : time of one ordinary restoration, for ``cost_relative``; default the time of
        the first variant.
    keep_samples : also return the (n, H, W) stack of restorations.
    """
    if callable(restorer_or_fn) and not hasattr(restorer_or_fn, "restore"):
        if variants is None:
            raise ValueError("a plain restoration function needs explicit variants")
        fn = restorer_or_fn
    else:
        fn, default = _restorer_variant_fn(restorer_or_fn)
        variants = default if variants is None else variants
    variants = list(variants)
    if len(variants) < 2:
        raise ValueError(f"need at least 2 variants for a spread, got {len(variants)}")
    if reference_s is not None and not (math.isfinite(reference_s) and reference_s > 0):
        raise ValueError(f"reference_s must be a finite number > 0, got {reference_s!r}")
    outs, times = [], []
    for v in variants:
        t0 = time.perf_counter()
        outs.append(np.asarray(fn(frame, v), dtype=np.float32))
        times.append(time.perf_counter() - t0)
    stack = np.stack(outs)
    ref = float(reference_s) if reference_s is not None else times[0]
    total = float(sum(times))
    return UncertaintyResult(
        mean=stack.mean(0), std=stack.std(0, ddof=1).astype(np.float32), variants=variants,
        cost_s=total, cost_relative=total / ref if ref > 0 else float("inf"), reference_s=ref,
        samples=stack if keep_samples else None)
