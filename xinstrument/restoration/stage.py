"""Real-time restoration stage: one object that turns corrected thick-detector frames into
restored frames with a chosen method, on the best available device.

Classical methods run on whole frames; learned methods run tiled (overlapping tiles, raised-
cosine blending) in batches, with mixed precision and ``torch.compile`` on CUDA only.
Super-resolution methods (``sr_x2``, ``sr_x4``: :mod:`.superres`) return frames ``scale`` times
larger per axis with a pixel ``scale`` times smaller (``Restorer.output_pixel_size_um``). A GPU
out-of-memory halves the tile size down to ``MIN_TILE_PX`` and then moves to the CPU; every
fallback is logged and listed in ``Restorer.fallbacks``.
"""
from __future__ import annotations

import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from . import registry
from ._fourier import as_batch, default_device
from .classical import mtf_ratio_inverse, richardson_lucy, wiener
from .physics import DetectorPhysics

__all__ = [
    "CLASSICAL_METHODS",
    "LEARNED_METHODS",
    "METHODS",
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
LEARNED_METHODS = registry.methods(("regression", "diffusion"))
# Super-resolution networks, one per trained factor (superres.SR_FACTORS).
SR_METHODS = registry.methods("super_resolution")
METHODS = CLASSICAL_METHODS + LEARNED_METHODS + SR_METHODS
MIN_TILE_PX = 128
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


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    frames: torch.Tensor,
    tile: int = 512,
    overlap: int = 32,
    batch: int = 4,
) -> torch.Tensor:
    """Apply an image-to-image ``fn`` ((N, h, w) -> (N, h, w)) on overlapping tiles of (B, H, W)
    frames and blend the results with raised-cosine weights.

    Tiles are ``tile`` x ``tile`` (clipped to the frame), neighbours overlap by ``overlap`` px,
    and ``batch`` tiles go through ``fn`` at once. For a translation-equivariant ``fn`` whose
    receptive field is smaller than the overlap the result equals ``fn(frames)`` up to rounding.
    """
    if tile < 1 or overlap < 0 or overlap >= tile or batch < 1:
        raise ValueError(f"need tile >= 1, 0 <= overlap < tile, batch >= 1; got {tile}, {overlap}, {batch}")
    b, h, w = frames.shape
    th, tw = min(tile, h), min(tile, w)
    ys = _tile_starts(h, th, th - overlap if th < h else th)
    xs = _tile_starts(w, tw, tw - overlap if tw < w else tw)
    def window(start: int, size: int, length: int) -> torch.Tensor:
        return blend_window(size, overlap, start > 0, start + size < length).to(frames.device)

    out = torch.zeros_like(frames)
    norm = torch.zeros((h, w), dtype=frames.dtype, device=frames.device)
    weights = {}
    for y in ys:
        for x in xs:
            weights[y, x] = window(y, th, h)[:, None] * window(x, tw, w)[None, :]
            norm[y:y + th, x:x + tw] += weights[y, x]
    jobs = [(i, y, x) for i in range(b) for y in ys for x in xs]
    for k in range(0, len(jobs), batch):
        chunk = jobs[k:k + batch]
        tiles = torch.stack([frames[i, y:y + th, x:x + tw] for i, y, x in chunk])
        res = fn(tiles).to(frames.dtype)
        if res.shape != tiles.shape:
            raise RuntimeError(f"tile function returned shape {tuple(res.shape)} for {tuple(tiles.shape)}")
        for (i, y, x), r in zip(chunk, res):
            out[i, y:y + th, x:x + tw] += r * weights[y, x]
    return out / norm


def _float_output(model: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Network outputs back in float32: the samplers' FFTs must not run in float16 (cuFFT
    accepts half precision only for power-of-two sizes, and the blur needs the precision)."""

    def run(x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return model(x, t).float()

    return run


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
    amp : mixed precision (float16 autocast) on CUDA; ignored on the CPU.
    options : extra keyword arguments of the classical function (e.g. ``dose_ratio`` for
        Wiener, ``regularization`` for the inverse, ``damping_threshold`` for RL).

    Attributes
    ----------
    scale : output pixels per input pixel along each axis (1; N for ``sr_xN``).
    output_pixel_size_um : restored pixel pitch (profile pixel size / ``scale``).
    frames_per_second : recent throughput (frames / wall s), NaN before the first call.
    latency_s : wall time of the last ``restore`` call.
    frames_restored : total frames restored.
    fallbacks : human-readable list of fallbacks taken (smaller tiles, CPU).
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
    ) -> None:
        factor = sr_factor(method)
        if method not in METHODS and factor is None:
            raise ValueError(f"unknown restoration method {method!r}; choose from {list(METHODS)}")
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
            raise ValueError(f"steps must be a positive integer or None, got {steps!r}")
        if not (isinstance(tile, int) and tile >= MIN_TILE_PX):
            raise ValueError(f"tile must be an integer >= {MIN_TILE_PX} px, got {tile!r}")
        if not (isinstance(overlap, int) and 0 <= overlap < tile // 2):
            raise ValueError(f"overlap must be an integer in [0, tile/2), got {overlap!r}")
        if not (isinstance(batch, int) and batch >= 1):
            raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
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
        self.options = dict(options or {})
        self.fallbacks: list[str] = []
        self.latency_s = float("nan")
        self.frames_restored = 0
        self._times: deque[tuple[int, float]] = deque(maxlen=_RATE_WINDOW)
        self._model = None
        self._predict: Callable[[torch.Tensor], torch.Tensor] | None = None
        if method == "wiener" and not self.physics.has_noise_model:
            raise ValueError(
                f"profile {getattr(profile, 'name', '?')!r} has no NNPS; 'wiener' needs it"
                " (use 'inverse' or 'richardson_lucy')"
            )
        if method in LEARNED_METHODS:
            self._load_model()
        elif factor is not None:
            self._load_sr(factor)

    # ------------------------------------------------------------------ set-up
    def _load_model(self) -> None:
        weights = getattr(self.profile, "weights", None) or {}
        if self.method not in weights:
            raise ValueError(
                f"profile {getattr(self.profile, 'name', '?')!r} has no weights for {self.method!r}"
                f" (has {sorted(weights) or 'none'}); train them with `xinstrument train`"
            )
        from .networks import unet_from_weights
        from .samplers import make_restore_fn

        state = self.profile.load_weights(self.method)
        model, method = unet_from_weights(state)
        if method != self.method:
            raise ValueError(f"weights stored for {self.method!r} were trained for {method!r}")
        model.eval().to(self.device)
        self._model = model
        runner = model
        if self.device.type == "cuda":
            try:
                runner = torch.compile(model)
            except Exception as exc:  # noqa: BLE001 - compile is an optimisation only
                log.warning("torch.compile unavailable (%s); running eager", exc)
                self.fallbacks.append(f"torch.compile failed: {exc}")
        self._predict = make_restore_fn(self.method, _float_output(runner), self.physics, steps=self.steps)

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

    def _learned(self, x: torch.Tensor) -> torch.Tensor:
        assert self._predict is not None
        use_amp = self.amp and self.device.type == "cuda"

        def fn(tiles: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                return self._predict(tiles).float()

        return tiled_apply(fn, x, tile=self.tile, overlap=self.overlap, batch=self.batch)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self._sr is not None:
                return self._sr._tiled(x)
            if self.method in CLASSICAL_METHODS:
                if x.shape[0] <= self.batch:
                    return self._classical(x)   # the live path: no concatenation copy
                outs = [self._classical(x[i:i + self.batch]) for i in range(0, x.shape[0], self.batch)]
                return torch.cat(outs)
            return self._learned(x)

    def _to_cpu(self, reason: str) -> None:
        msg = f"{reason}; falling back to the CPU"
        log.warning(msg)
        self.fallbacks.append(msg)
        self.device = torch.device("cpu")
        if self._sr is not None:
            self._sr.model.to(self.device)
            self._sr.device = self.device
        elif self._model is not None:
            from .samplers import make_restore_fn

            self._model.to(self.device)
            self._predict = make_restore_fn(
                self.method, _float_output(self._model), self.physics, steps=self.steps
            )

    def restore(self, frame_or_batch: Any) -> np.ndarray:
        """Restore one (H, W) frame or a (B, H, W) batch; returns float32 numpy of the same
        shape, or ``scale`` times larger per axis for super-resolution methods."""
        x, single = as_batch(frame_or_batch, "frame_or_batch")
        t0 = time.perf_counter()
        while True:
            try:
                out = self._run(x.to(self.device))
                break
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if (self.method in LEARNED_METHODS or self._sr is not None) \
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
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        # One reduction detects any NaN/inf (a mask pass over 4 Mpx costs as much as a filter).
        if not bool(torch.isfinite(out.sum())) and not bool(torch.isfinite(out).all()):
            raise FloatingPointError(f"{self.method} produced non-finite output")
        result = out.float().cpu().numpy()
        dt = time.perf_counter() - t0
        self.latency_s = dt
        self._times.append((x.shape[0], dt))
        self.frames_restored += x.shape[0]
        return result[0] if single else result
