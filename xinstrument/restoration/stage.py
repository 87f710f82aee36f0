"""Real-time restoration stage: one object that turns corrected thick-detector frames into
restored frames with a chosen method, on the best available device.

Classical methods run on whole frames; learned methods run tiled (overlapping tiles, raised-
cosine blending) in fixed-shape batches, with mixed precision and ``torch.compile`` on CUDA only.
Super-resolution methods (``sr_x2``, ``sr_x4``: :mod:`.superres`) return frames ``scale`` times
larger per axis with a pixel ``scale`` times smaller (``Restorer.output_pixel_size_um``). A GPU
out-of-memory halves the tile size down to ``MIN_TILE_PX`` and then moves to the CPU; every
fallback is logged and listed in ``Restorer.fallbacks``.

The hot path (:meth:`Restorer.stream`) keeps frames on the device from upload to result: each
frame is copied into a pinned host buffer, uploaded on a copy stream while the previous frame
is computed, restored without any host synchronisation, and downloaded on a second copy stream
into a pinned buffer; the only synchronisation is the hand-off of each result. On the CPU the
same loop runs without streams or pinned memory. :meth:`Restorer.reference` evaluates the same
method in float64 on the CPU, the reference every fast path is checked against.

The live pipeline calls a Restorer through :mod:`xinstrument.acquisition.live_restoration`:
restoration never holds up the camera; when it cannot keep up, frames are restored at a lower
rate, newest first, and every frame still reaches the recording.
"""
from __future__ import annotations

import copy
import functools
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from . import registry
from ._fourier import as_batch, default_device, float64_reference, trusted_frames
from .classical import mtf_ratio_inverse, richardson_lucy, wiener
from .physics import DetectorPhysics

__all__ = [
    "CLASSICAL_METHODS",
    "FUNCTION_METHODS",
    "LEARNED_METHODS",
    "METHODS",
    "PRECISIONS",
    "SR_METHODS",
    "Restorer",
    "available_methods",
    "blend_window",
    "sr_factor",
    "tiled_apply",
]

log = logging.getLogger(__name__)

# The method table lives in .registry; these tuples are views of it for existing callers.
CLASSICAL_METHODS = registry.methods("classical")
# Methods implemented as one function ``fn(frames, profile, **options)`` of their own module
# (sibling of this one), run whole-frame on the stage's device; the plug-and-play ones also get
# the shared denoiser (``denoiser=``), the specialist its loaded weights and the stage's tiling.
FUNCTION_METHODS = {"pnp_hqs": ("pnp", "pnp_restore"),
                    "dc_diffusion": ("dc_diffusion", "dc_diffusion_restore"),
                    "specialist_pcb": ("specialist", "specialist_restore")}
# Networks the stage builds from profile weights and runs through the samplers.
LEARNED_METHODS = tuple(m for m in registry.methods(("regression", "diffusion"))
                        if m not in FUNCTION_METHODS)
# Super-resolution networks, one per trained factor (superres.SR_FACTORS).
SR_METHODS = registry.methods("super_resolution")
METHODS = registry.methods()            # every shipped method, in the registry's order
MIN_TILE_PX = 128
PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Mixed precision is used only where its result differs from float32 by at most this RMS,
# relative to the float32 result's RMS: 1e-3 of a transmission ~0.5 is 5e-4, 20x below the
# ~1 % quantum noise of a single frame at the shipped profiles' doses, so it cannot be seen.
AMP_MAX_REL_RMS = 1e-3
# Frames/s is averaged over this many recent calls so the figure follows load changes quickly.
_RATE_WINDOW = 20


def available_methods(profile: Any) -> list[str]:
    """Methods that can run with ``profile``: classical ones its arrays allow, learned and
    super-resolution ones it has weights for."""
    return [m for m in registry.available(profile) if m in METHODS]


def sr_factor(method: str) -> int | None:
    """The up-sampling factor of a super-resolution method name (``"sr_x2"`` -> 2), None for
    other names. Any ``sr_x<N>`` is parsed, so an unsupported factor gets its own error."""
    m = re.fullmatch(r"sr_x(\d+)", str(method))
    return int(m.group(1)) if m else None


def blend_window(size_px: int, overlap_px: int, ramp_start: bool = True, ramp_end: bool = True) -> torch.Tensor:
    """1-D blending weights of a tile: raised-cosine ramps over ``overlap_px`` at the ends that
    face a neighbouring tile, 1 elsewhere and at ends on the frame border.

    The outer quarter of each ramp is exactly 0, so the tile-edge pixels (where a network sees
    padding instead of image) never reach the output; the neighbour covers them with weight > 0.
    """
    w = torch.ones(size_px, dtype=torch.float32)
    n = min(overlap_px, size_px // 2)
    if n > 0:
        margin = n // 4
        i = torch.arange(n, dtype=torch.float32)
        span = max(n - 2 * margin, 1)
        pos = ((i - margin + 0.5) / span).clamp(0, 1)
        ramp = torch.where(i < margin, torch.zeros_like(i), 0.5 - 0.5 * torch.cos(math.pi * pos))
        if ramp_start:
            w[:n] = ramp
        if ramp_end:
            w[size_px - n:] = ramp.flip(0)
    return w


def _tile_starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


@functools.lru_cache(maxsize=16)
def _tile_plan(h: int, w: int, th: int, tw: int, overlap: int, scale: int,
               device: str) -> tuple[list[int], list[int], torch.Tensor, torch.Tensor]:
    """Tile origins, per-tile blend weights (n_y, n_x, scale th, scale tw) and their normalised
    sum's reciprocal over the output frame: fixed per frame shape, built once per shape."""
    ys = _tile_starts(h, th, th - overlap if th < h else th)
    xs = _tile_starts(w, tw, tw - overlap if tw < w else tw)
    f = scale
    wts = torch.empty((len(ys), len(xs), f * th, f * tw), dtype=torch.float32)
    norm = torch.zeros((f * h, f * w), dtype=torch.float32)
    for a, y in enumerate(ys):
        wy = blend_window(f * th, f * overlap, y > 0, y + th < h)
        for b, x in enumerate(xs):
            wx = blend_window(f * tw, f * overlap, x > 0, x + tw < w)
            wts[a, b] = wy[:, None] * wx[None, :]
            norm[f * y:f * (y + th), f * x:f * (x + tw)] += wts[a, b]
    return ys, xs, wts.to(device), (1.0 / norm).to(device)


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    frames: torch.Tensor,
    tile: int = 512,
    overlap: int = 32,
    batch: int = 4,
    scale: int = 1,
    fixed_batch: bool = False,
) -> torch.Tensor:
    """Apply an image-to-image ``fn`` ((N, h, w) -> (N, scale h, scale w)) on overlapping tiles
    of (B, H, W) frames and blend the results with raised-cosine weights. Frames of several
    channels (B, C, H, W) are tiled alike in every channel: ``fn`` then gets (N, C, h, w).

    Tiles are ``tile`` x ``tile`` (clipped to the frame; the last row/column of tiles is moved
    inward, so every tile has the same shape), neighbours overlap by ``overlap`` px, and
    ``batch`` tiles go through ``fn`` at once. With ``fixed_batch`` the last, partial batch is
    padded with copies so ``fn`` always sees one shape (CUDA graphs, compiled kernels). For a
    translation-equivariant ``fn`` whose receptive field is smaller than the overlap the result
    equals ``fn(frames)`` up to rounding. Blend weights are cached per frame shape, and nothing
    here synchronises the host with the device.
    """
    if tile < 1 or overlap < 0 or overlap >= tile or batch < 1 or scale < 1:
        raise ValueError(f"need tile >= 1, 0 <= overlap < tile, batch >= 1, scale >= 1; got "
                         f"{tile}, {overlap}, {batch}, {scale}")
    if frames.ndim not in (3, 4):
        raise ValueError(f"frames must be (B, H, W) or (B, C, H, W), got {tuple(frames.shape)}")
    b, h, w = frames.shape[0], frames.shape[-2], frames.shape[-1]
    th, tw = min(tile, h), min(tile, w)
    ys, xs, wts, inv_norm = _tile_plan(h, w, th, tw, overlap, scale, str(frames.device))
    f = scale
    wts, inv_norm = wts.to(frames.dtype), inv_norm.to(frames.dtype)
    out = torch.zeros((b, f * h, f * w), dtype=frames.dtype, device=frames.device)
    jobs = [(i, a, c) for i in range(b) for a in range(len(ys)) for c in range(len(xs))]
    for k in range(0, len(jobs), batch):
        chunk = jobs[k:k + batch]
        tiles = [frames[i, ..., ys[a]:ys[a] + th, xs[c]:xs[c] + tw] for i, a, c in chunk]
        if fixed_batch and len(tiles) < batch:
            tiles += [tiles[-1]] * (batch - len(tiles))
        tiles_t = torch.stack(tiles)
        res = fn(tiles_t).to(frames.dtype)
        want = (tiles_t.shape[0], f * th, f * tw)     # one output channel
        if tuple(res.shape) != want:
            raise RuntimeError(f"tile function returned shape {tuple(res.shape)} for "
                               f"{tuple(tiles_t.shape)} (expected {want})")
        for (i, a, c), r in zip(chunk, res):
            y, x = f * ys[a], f * xs[c]
            out[i, y:y + f * th, x:x + f * tw] += r * wts[a, c]
    return out * inv_norm


def _float_output(model: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Network outputs back in float32: the samplers' FFTs must not run in float16 (cuFFT
    accepts half precision only for power-of-two sizes, and the blur needs the precision)."""

    def run(x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return model(x, t).float()

    return run


def _float64_model(model: torch.nn.Module) -> torch.nn.Module:
    """A CPU float64 copy of ``model`` whose every submodule casts floating inputs to float64
    (time embeddings are built in float32 inside the network)."""
    ref = copy.deepcopy(model).to("cpu").double().eval()

    def cast(_mod: torch.nn.Module, args: tuple) -> tuple:
        return tuple(a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    for mod in ref.modules():
        mod.register_forward_pre_hook(cast)
    return ref


def relative_rms_error(result: Any, reference: Any) -> float:
    """RMS of ``result - reference`` over the RMS of ``reference`` (float64)."""
    r = np.asarray(result, np.float64)
    ref = np.asarray(reference, np.float64)
    if r.shape != ref.shape:
        raise ValueError(f"shapes differ: {r.shape} vs {ref.shape}")
    den = math.sqrt(float(np.mean(ref * ref))) or 1.0
    return math.sqrt(float(np.mean((r - ref) ** 2))) / den


class Restorer:
    """Restore thick-detector frames with one method of a detector profile.

    Parameters
    ----------
    profile : DetectorProfile (arrays; weights for learned methods).
    method : one of :data:`METHODS` (``sr_x<N>``: super-resolution by N, weights needed).
    device : "cuda", "cpu", ...; default CUDA when available.
    steps : sampler steps for diffusion methods (default per method), RL iterations for
        "richardson_lucy" (default 8, paper 004).
    tile, overlap, batch : tiling of learned methods (px, px, tiles per forward pass).
    amp : allow mixed precision for the networks (False: float32 everywhere).
    precision : "fp32", "bf16", "fp16" or None. None with ``amp``: on CUDA the networks run in
        float16 autocast when, on the first frame, its result is within
        :data:`AMP_MAX_REL_RMS` of float32 (else bfloat16 under the same test, else float32);
        on the CPU float32. Classical (FFT) methods always run in float32.
    compile_mode : None (``torch.compile`` default mode on CUDA, eager on the CPU), "off", or a
        ``torch.compile`` mode, e.g. "reduce-overhead" (CUDA graphs of the fixed-shape tile
        batches). A compile failure falls back to eager and is listed in ``fallbacks``.
    options : extra keyword arguments of the classical function (e.g. ``dose_ratio`` for
        Wiener, ``regularization`` for the inverse, ``damping_threshold`` for RL).

    Attributes
    ----------
    scale : output pixels per input pixel along each axis (1; N for ``sr_xN``).
    output_pixel_size_um : restored pixel pitch (profile pixel size / ``scale``).
    precision : precision in use ("auto" until the first frame has decided it).
    precision_errors : relative RMS error of each tried mixed precision against float32.
    frames_per_second : recent throughput (frames / wall s), NaN before the first call.
    latency_s : wall time of the last ``restore`` call.
    frames_restored : total frames restored.
    fallbacks : human-readable list of fallbacks taken (smaller tiles, CPU, eager, float32).
    """

    def __init__(
        self,
        profile: Any,
        method: str,
        device: str | torch.device | None = None,
        steps: int | None = None,
        tile: int = 512,
        overlap: int = 32,
        batch: int = 4,
        amp: bool = True,
        options: dict[str, Any] | None = None,
        precision: str | None = None,
        compile_mode: str | None = None,
    ) -> None:
        factor = sr_factor(method)
        if method not in METHODS and factor is None and method not in FUNCTION_METHODS:
            raise ValueError(f"unknown restoration method {method!r}; choose from "
                             f"{list(METHODS) + list(FUNCTION_METHODS)}")
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
            raise ValueError(f"steps must be a positive integer or None, got {steps!r}")
        if not (isinstance(tile, int) and tile >= MIN_TILE_PX):
            raise ValueError(f"tile must be an integer >= {MIN_TILE_PX} px, got {tile!r}")
        if not (isinstance(overlap, int) and 0 <= overlap < tile // 2):
            raise ValueError(f"overlap must be an integer in [0, tile/2), got {overlap!r}")
        if not (isinstance(batch, int) and batch >= 1):
            raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)} or None, got {precision!r}")
        if precision in _AUTOCAST_DTYPE and method in CLASSICAL_METHODS:
            raise ValueError(f"{method!r} runs in float32 only: its FFTs in {precision} lose the "
                             "filter's dynamic range (and cuFFT half precision needs power-of-two sizes)")
        if compile_mode is not None and not isinstance(compile_mode, str):
            raise ValueError(f"compile_mode must be None, 'off' or a torch.compile mode, got {compile_mode!r}")
        self.profile = profile
        self.method = method
        # output pixels per input pixel along each axis (1: same grid as the input)
        self.scale = 1 if factor is None else factor
        self._sr = None
        # SR needs no MTF/NNPS arrays: it learned the degradation from the profile's calibration
        self.physics = None if factor is not None else DetectorPhysics.from_profile(profile)
        self.device = default_device(device)
        self.steps = steps
        self.tile = tile
        self.overlap = overlap
        self.batch = batch
        self.amp = bool(amp)
        self.compile_mode = compile_mode
        self.options = dict(options or {})
        self.fallbacks: list[str] = []
        self.precision_errors: dict[str, float] = {}
        self.latency_s = float("nan")
        self.frames_restored = 0
        self._times: deque[tuple[int, float]] = deque(maxlen=_RATE_WINDOW)
        self._model = None
        self._runner: Callable[..., torch.Tensor] | None = None
        self._compiled = False
        self._predict: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._fn: Callable[..., Any] | None = None
        # restore() on CUDA: one set of pinned buffers, one caller at a time
        self._live_lock = threading.Lock()
        self._live_key: tuple | None = None
        self._live_buffers: list[dict[str, Any]] = []
        if method in CLASSICAL_METHODS or precision == "fp32" or (precision is None and not self.amp):
            self.precision = "fp32"
        elif precision is not None:
            self.precision = precision
        else:
            self.precision = "auto" if self.device.type == "cuda" else "fp32"
        if (registry.is_registered(method) and registry.get(method).needs_nnps
                and not self.physics.has_noise_model):
            raise ValueError(
                f"profile {getattr(profile, 'name', '?')!r} has no NNPS; {method!r} needs it"
                " (use 'inverse' or 'richardson_lucy')"
            )
        self._fn_kwargs: dict[str, Any] = {}
        if method in LEARNED_METHODS:
            self._load_model()
        elif factor is not None:
            self._load_sr(factor)
        elif method in FUNCTION_METHODS:
            self._load_function()

    # ------------------------------------------------------------------ set-up
    def _load_function(self) -> None:
        import importlib

        module, name = FUNCTION_METHODS[self.method]
        try:
            mod = importlib.import_module(f"{__package__}.{module}")
            self._fn = getattr(mod, name)
            self._fn_kwargs = self._function_kwargs(self.device)
        except (ImportError, AttributeError, OSError, FileNotFoundError) as exc:
            raise ValueError(f"restoration method {self.method!r} is not available here: "
                             f"{type(exc).__name__}: {exc}") from exc

    def _function_kwargs(self, device: torch.device | str) -> dict[str, Any]:
        """What a function method needs beside the frames, on ``device``: the shared denoiser
        (plug-and-play) or the profile's specialist weights (checked against the profile and
        the dose option here, so a mismatch is refused before any frame)."""
        if registry.get(self.method).kind == "plug_and_play":
            from .denoiser import load_denoiser
            return {"denoiser": load_denoiser(device=device)}
        from .specialist import load_specialist
        spec = copy.copy(load_specialist(self.profile, self.method))
        spec.model = copy.deepcopy(spec.model).to(device)
        dose = self.options.get("dose_ratio")     # None: given per frame (restore_with_dose)
        spec.check(self.profile, None if dose is None else float(dose))
        return {"specialist": spec, "method": self.method}

    def _call_function(self, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """The function method on (B, H, W) frames; a specialist tiles as the stage does."""
        kw = dict(kwargs)
        if "specialist" in kw:
            kw.update(tile=self.tile, overlap=self.overlap, batch=self.batch)
        return self._fn(x, self.profile, **kw, **self.options)

    def _compile(self, model: torch.nn.Module) -> Callable[..., torch.Tensor]:
        mode = self.compile_mode
        if self.device.type != "cuda" or mode == "off":
            return model
        try:
            self._compiled = True
            return torch.compile(model) if mode is None else torch.compile(model, mode=mode)
        except Exception as exc:  # noqa: BLE001 - compile is an optimisation only
            log.warning("torch.compile unavailable (%s); running eager", exc)
            self.fallbacks.append(f"torch.compile failed: {exc}")
            self._compiled = False
            return model

    def _load_model(self) -> None:
        weights = getattr(self.profile, "weights", None) or {}
        if self.method not in weights:
            raise ValueError(
                f"profile {getattr(self.profile, 'name', '?')!r} has no weights for {self.method!r}"
                f" (has {sorted(weights) or 'none'}); train them with `xinstrument train`"
            )
        from .networks import unet_from_weights

        state = self.profile.load_weights(self.method)
        model, method = unet_from_weights(state)
        if method != self.method:
            raise ValueError(f"weights stored for {self.method!r} were trained for {method!r}")
        model.eval().to(self.device)
        self._model = model
        self._runner = self._compile(model)
        self._bind_sampler()

    def _bind_sampler(self) -> None:
        from .samplers import make_restore_fn

        self._predict = make_restore_fn(self.method, _float_output(self._runner), self.physics,
                                        steps=self.steps)

    def _load_sr(self, factor: int) -> None:
        from .superres import SR_FACTORS, SuperResolver

        weights = getattr(self.profile, "weights", None) or {}
        have = sorted(m for m in weights if sr_factor(m) is not None)
        name = getattr(self.profile, "name", "?")
        if factor not in SR_FACTORS:
            raise ValueError(
                f"super-resolution factor {factor} ({self.method!r}) is not supported; factors: "
                f"{', '.join(f'sr_x{f}' for f in SR_FACTORS)}; profile {name!r} has "
                f"{', '.join(have) or 'no SR weights'}")
        if self.method not in weights:
            raise ValueError(
                f"profile {name!r} has no super-resolution weights for factor {factor} "
                f"({self.method!r}); it has {', '.join(have) or 'no SR weights'}; train them with "
                f"`xinstrument train --task sr --factor {factor} --profile {name}`")
        # the output tile is `tile` px, like the deblurring methods' (same memory per tile)
        self._sr = SuperResolver(self.profile, factor, device=self.device,
                                 tile=self._sr_tile(), overlap=self._sr_overlap(),
                                 batch=self.batch)
        self._sr.overlap = self._sr_overlap()
        self._model = self._sr.model
        self._runner = self._compile(self._model)

    def _sr_tile(self) -> int:
        return max(16, self.tile // self.scale)

    def _sr_overlap(self) -> int:
        # at least the network's receptive radius (LR px), below half the tile
        radius = self._sr.model.receptive_radius_lr_px if self._sr is not None else 16
        return min(max(self.overlap // self.scale, radius), self._sr_tile() // 2 - 1)

    @property
    def output_pixel_size_um(self) -> float:
        """Pixel pitch of restored frames at the scintillator plane: the profile's pixel size
        divided by :attr:`scale`."""
        return float(self.profile.pixel_size_um) / self.scale

    def output_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int]:
        """Shape of the restored frame for an input of ``frame_shape`` (rows, cols)."""
        rows, cols = (int(n) for n in frame_shape)
        return rows * self.scale, cols * self.scale

    # ------------------------------------------------------------------ metrics
    @property
    def frames_per_second(self) -> float:
        if not self._times:
            return float("nan")
        frames = sum(n for n, _ in self._times)
        seconds = sum(t for _, t in self._times)
        return frames / seconds if seconds > 0 else float("inf")

    # ------------------------------------------------------------------ work
    def _classical(self, x: torch.Tensor) -> torch.Tensor:
        p = self.physics
        if self.method == "wiener":
            return wiener(x, p.frequency_cy_per_px, p.mtf_ratio, p.nnps_lr, **self.options)
        if self.method == "inverse":
            return mtf_ratio_inverse(x, p.frequency_cy_per_px, p.mtf_ratio, **self.options)
        iterations = self.steps if self.steps is not None else 8
        return richardson_lucy(x, p.psf, iterations=iterations, **self.options)

    def _autocast(self, precision: str):
        if precision not in _AUTOCAST_DTYPE:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPE[precision])

    def _network(self, x: torch.Tensor, precision: str) -> torch.Tensor:
        """Learned or SR method on (B, H, W) device frames at ``precision``, tiled at fixed shape."""
        fixed = self._compiled
        if self._fn is not None:
            with self._autocast(precision):
                return self._call_function(x, self._fn_kwargs).float()
        if self._sr is not None:
            runner = self._runner

            def sr_fn(tiles: torch.Tensor) -> torch.Tensor:
                with self._autocast(precision):
                    return runner(tiles[:, None])[:, 0].float()

            return tiled_apply(sr_fn, x, tile=self._sr_tile(), overlap=self._sr_overlap(),
                               batch=self.batch, scale=self.scale, fixed_batch=fixed)
        assert self._predict is not None
        predict = self._predict

        def fn(tiles: torch.Tensor) -> torch.Tensor:
            with self._autocast(precision):
                return predict(tiles).float()

        return tiled_apply(fn, x, tile=self.tile, overlap=self.overlap, batch=self.batch,
                           fixed_batch=fixed)

    def _choose_precision(self, x: torch.Tensor) -> None:
        """Decide "auto" on the first frame: the lowest precision within AMP_MAX_REL_RMS of
        float32 on that frame (one tile-batch's worth of extra work, once)."""
        probe = x[:1]
        ref = self._network(probe, "fp32")
        chosen = "fp32"
        for candidate in ("fp16", "bf16"):
            try:
                err = float((self._network(probe, candidate) - ref).pow(2).mean().sqrt()
                             / ref.pow(2).mean().sqrt().clamp(min=1e-30))
            except RuntimeError as exc:     # e.g. a half-precision FFT of a non-power-of-2 size
                log.info("%s: %s not usable: %s", self.method, candidate, exc)
                err = float("inf")
            self.precision_errors[candidate] = err
            if math.isfinite(err) and err <= AMP_MAX_REL_RMS:
                chosen = candidate
                break
        if chosen == "fp32":
            self.fallbacks.append(f"mixed precision off: errors against float32 "
                                  f"{self.precision_errors} above {AMP_MAX_REL_RMS}")
        log.info("%s: precision %s (errors against float32: %s)", self.method, chosen,
                 self.precision_errors)
        self.precision = chosen

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.method in CLASSICAL_METHODS:
                if x.shape[0] <= self.batch:
                    return self._classical(x)   # the live path: no concatenation copy
                outs = [self._classical(x[i:i + self.batch]) for i in range(0, x.shape[0], self.batch)]
                return torch.cat(outs)
            if self.precision == "auto":
                self._choose_precision(x)
            try:
                return self._network(x, self.precision)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:
                if not self._compiled:
                    raise
                # compiled kernels are built lazily, on the first call: fall back to eager once
                msg = f"torch.compile failed at run time ({type(exc).__name__}: {exc}); running eager"
                log.warning(msg)
                self.fallbacks.append(msg)
                self._compiled = False
                self._runner = self._model
                if self._sr is None:
                    self._bind_sampler()
                return self._network(x, self.precision)

    def restore_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """The fast path on a (B, H, W) float32 tensor already on :attr:`device`: returns the
        restored tensor on the device, without any host synchronisation (no NaN check of the
        input, no device-to-host copy, no OOM fallback). Callers check the output."""
        with trusted_frames():
            return self._run(x)

    def _to_cpu(self, reason: str) -> None:
        msg = f"{reason}; falling back to the CPU"
        log.warning(msg)
        self.fallbacks.append(msg)
        self.device = torch.device("cpu")
        if self.precision != "fp32":
            self.precision = "fp32"
        if self._sr is not None:
            self._sr.model.to(self.device)
            self._sr.device = self.device
            self._runner = self._sr.model
            self._compiled = False
        elif self._fn is not None:
            self._fn_kwargs = self._function_kwargs(self.device)
        elif self._model is not None:
            self._model.to(self.device)
            self._runner = self._model
            self._compiled = False
            self._bind_sampler()

    def restore(self, frame_or_batch: Any) -> np.ndarray:
        """Restore one (H, W) frame or a (B, H, W) batch; returns float32 numpy of the same
        shape, or ``scale`` times larger per axis for super-resolution methods."""
        x, single = as_batch(frame_or_batch, "frame_or_batch")
        if self._sr is not None and min(x.shape[-2:]) < 2:
            raise ValueError(f"frames must be at least 2 x 2 px, got {tuple(x.shape[-2:])}")
        t0 = time.perf_counter()
        while True:
            try:
                if self.device.type == "cuda" and x.device.type == "cpu":
                    # the live path: pinned buffers, copy streams, one hand-off (see stream)
                    with self._live_lock:
                        result = next(self._stream([x.numpy()], 1, self._live_slots, account=False))
                    self._account(x.shape[0], time.perf_counter() - t0)
                    return result[0] if single else result
                out = self._run(x.to(self.device))
                break
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if (self.method in LEARNED_METHODS or self._sr is not None
                        or "specialist" in self._fn_kwargs) \
                        and self.tile // 2 >= MIN_TILE_PX:
                    self.tile //= 2
                    self.overlap = min(self.overlap, self.tile // 4)
                    if self._sr is not None:
                        self._sr.tile, self._sr.overlap = self._sr_tile(), self._sr_overlap()
                    msg = f"GPU out of memory; tiles reduced to {self.tile} px"
                    log.warning(msg)
                    self.fallbacks.append(msg)
                elif self.device.type != "cpu":
                    self._to_cpu("GPU out of memory at the smallest tile")
                else:
                    raise
        # One reduction detects any NaN/inf (a mask pass over 4 Mpx costs as much as a filter).
        if not bool(torch.isfinite(out.sum())) and not bool(torch.isfinite(out).all()):
            raise FloatingPointError(f"{self.method} produced non-finite output")
        result = out.float().cpu().numpy()
        self._account(x.shape[0], time.perf_counter() - t0)
        return result[0] if single else result

    def _account(self, frames: int, seconds: float) -> None:
        self.latency_s = seconds
        self._times.append((frames, seconds))
        self.frames_restored += frames

    def __call__(self, frame_or_batch: Any) -> np.ndarray:
        return self.restore(frame_or_batch)

    # ------------------------------------------------------------------ hot path
    def warm_up(self, frame_shape: tuple[int, int], batch: int = 1) -> None:
        """Run once on a flat frame of ``frame_shape`` so kernel selection, compilation, CUDA
        graph capture and the "auto" precision decision happen before live frames arrive."""
        rows, cols = (int(n) for n in frame_shape)
        x = torch.full((int(batch), rows, cols), 0.5, dtype=torch.float32, device=self.device)
        x = x + 0.01 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0)).to(self.device)
        out = self.restore_tensor(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if not bool(torch.isfinite(out).all()):
            raise FloatingPointError(f"{self.method} produced non-finite output on the warm-up frame")

    def stream(self, frames: Iterable[Any], depth: int = 2) -> Iterator[np.ndarray]:
        """Restore a sequence of equally shaped (H, W) frames or (B, H, W) batches, yielding
        float32 numpy results in order, ``depth`` items in flight.

        On CUDA each item is copied into a pinned host buffer, uploaded on a copy stream while
        the previous item is restored on the compute stream, restored entirely on the device,
        and downloaded into a pinned buffer on a second copy stream; the one host wait per item
        is the hand-off of its result. A non-finite result raises FloatingPointError at its
        hand-off. On the CPU the same loop runs without streams or pinned memory.
        """
        if not (isinstance(depth, int) and depth >= 1):
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        return self._stream(frames, depth, self._new_slots, account=True)

    def _new_slots(self, b: int, h: int, w: int, depth: int) -> list[dict[str, Any]]:
        """Host (pinned on CUDA) and device buffers and events of ``depth`` frames in flight."""
        cuda = self.device.type == "cuda"
        out_shape = (b, h * self.scale, w * self.scale)
        slots = []
        for _ in range(depth):
            slot = {"in": torch.empty((b, h, w), dtype=torch.float32, pin_memory=cuda),
                    "out": torch.empty(out_shape, dtype=torch.float32, pin_memory=cuda),
                    "finite": torch.ones(1, dtype=torch.bool, pin_memory=cuda)}
            if cuda:
                slot["dev_in"] = torch.empty((b, h, w), dtype=torch.float32, device=self.device)
                slot["uploaded"] = torch.cuda.Event()
                slot["computed"] = torch.cuda.Event()
                slot["ready"] = torch.cuda.Event()
            slots.append(slot)
        return slots

    def _live_slots(self, b: int, h: int, w: int, depth: int) -> list[dict[str, Any]]:
        """The one-frame buffers of :meth:`restore` on CUDA, kept while the frame shape stays."""
        key = (b, h, w, depth, str(self.device), self.scale)
        if self._live_key != key:
            self._live_buffers, self._live_key = self._new_slots(b, h, w, depth), key
        return self._live_buffers

    def _stream(self, frames: Iterable[Any], depth: int,
                slots_for: Callable[[int, int, int, int], list[dict[str, Any]]],
                account: bool) -> Iterator[np.ndarray]:
        cuda = self.device.type == "cuda"
        in_shape: tuple[int, ...] | None = None
        single = False
        slots: list[dict[str, Any]] = []
        pending: deque[tuple[dict[str, Any], float, int]] = deque()
        if cuda:
            compute = torch.cuda.current_stream(self.device)
            up = torch.cuda.Stream(self.device)
            down = torch.cuda.Stream(self.device)

        def hand_off() -> np.ndarray:
            slot, t0, n = pending.popleft()
            if cuda:
                slot["ready"].synchronize()
            if not bool(slot["finite"][0]):
                raise FloatingPointError(f"{self.method} produced non-finite output")
            result = slot["out"].numpy().copy()
            if account:
                self._account(n, time.perf_counter() - t0)
            return result[0] if single else result

        for k, item in enumerate(frames):
            arr = np.asarray(item)
            if in_shape is None:
                x0, single = as_batch(arr, "frame")    # checks type and shape once
                in_shape = tuple(arr.shape)
                slots = slots_for(*x0.shape, depth)
            elif tuple(arr.shape) != in_shape:
                raise ValueError(f"stream: frame {k} has shape {tuple(arr.shape)}, the stream "
                                 f"started with {in_shape}")
            if arr.dtype.kind not in "fiu":
                raise TypeError(f"stream: frame {k} has dtype {arr.dtype}, not a real number type")
            if len(pending) == depth:
                yield hand_off()
            slot = slots[k % depth]
            t0 = time.perf_counter()
            host_in = slot["in"]
            host_in.numpy()[...] = arr.reshape(host_in.shape)     # into the pinned buffer
            if cuda:
                with torch.cuda.stream(up):
                    slot["dev_in"].copy_(host_in, non_blocking=True)
                    slot["uploaded"].record(up)
                compute.wait_event(slot["uploaded"])
                out = self.restore_tensor(slot["dev_in"])
                finite = torch.isfinite(out.sum()).reshape(1)
                slot["computed"].record(compute)
                with torch.cuda.stream(down):
                    down.wait_event(slot["computed"])
                    out.record_stream(down)
                    finite.record_stream(down)
                    slot["out"].copy_(out, non_blocking=True)
                    slot["finite"].copy_(finite, non_blocking=True)
                    slot["ready"].record(down)
            else:
                out = self.restore_tensor(host_in)
                slot["out"].copy_(out)
                slot["finite"][0] = bool(torch.isfinite(out.sum()))
            pending.append((slot, t0, int(host_in.shape[0])))
        while pending:
            yield hand_off()

    def _sr3_reference(self, model64: Callable[..., torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """SR3 in float64 from the start noise the fast path draws (float32, on its device, with
        the sampler's fixed seed 0 per call), so the two differ only by arithmetic."""
        from .samplers import DEFAULT_STEPS, sr3_ddim_sample

        steps = self.steps if self.steps is not None else DEFAULT_STEPS["sr3"]
        device = self.device

        def run(y: torch.Tensor) -> torch.Tensor:
            gen = torch.Generator(device=device).manual_seed(0)
            start = torch.randn(y.shape, generator=gen, device=device, dtype=torch.float32)
            return sr3_ddim_sample(model64, y, steps, start=start.to("cpu", torch.float64))

        return run

    @property
    def reference_dtype(self) -> str:
        """What :meth:`reference` computes in: float64, except methods whose shared denoiser
        is float32 by construction."""
        return "float32" if self._fn is not None else "float64"

    def reference(self, frame_or_batch: Any) -> np.ndarray:
        """The same method evaluated on the CPU in float64: the correctness reference of the
        fast path (networks as float64 copies, the same tiling, no autocast, no compile).
        Returns float64 numpy of the shape :meth:`restore` returns."""
        arr = np.asarray(frame_or_batch, dtype=np.float64)
        single = arr.ndim == 2
        x = torch.from_numpy(np.ascontiguousarray(arr if not single else arr[None]))
        with torch.inference_mode(), float64_reference():
            if self.method in CLASSICAL_METHODS:
                out = self._classical(x)
            elif self._fn is not None:
                # the shared denoiser and the specialist run in float32 by construction: a CPU
                # float32 reference
                out = self._call_function(x.float(), self._function_kwargs("cpu"))
            else:
                ref_model = _float64_model(self._model)
                if self._sr is not None:
                    out = tiled_apply(lambda t: ref_model(t[:, None])[:, 0], x,
                                      tile=self._sr_tile(), overlap=self._sr_overlap(),
                                      batch=self.batch, scale=self.scale)
                else:
                    from .samplers import make_restore_fn

                    def model64(z: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
                        return ref_model(z, t).double()

                    predict = make_restore_fn(self.method, model64, self.physics, steps=self.steps)
                    if self.method == "sr3":
                        predict = self._sr3_reference(model64)
                    out = tiled_apply(lambda t: predict(t).double(), x, tile=self.tile,
                                      overlap=self.overlap, batch=self.batch,
                                      fixed_batch=self._compiled)
        res = out.double().numpy()
        return res[0] if single else res
