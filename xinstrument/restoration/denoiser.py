"""Noise-conditioned denoiser: the learned prior of the physics-in-the-loop methods.

One small network for every detector. It knows nothing of any blur: given a frame and a map of
the noise standard deviation at each pixel (transmission units), it returns the clean frame.
Plug-and-play restoration (:mod:`.pnp`) and data-consistent diffusion (:mod:`.dc_diffusion`) call
it as their prior step, the profile's physics does the rest.

Architecture, after DRUNet (Zhang et al., "Plug-and-Play Image Restoration with Deep Denoiser
Prior", TPAMI 2022): a U-Net of residual blocks, bias-free convolutions (Mohan et al., ICLR 2020:
bias-free denoisers generalise across noise levels), the noise map as an extra input channel,
output added to the input. Two changes against periodic artefacts: down-sampling by 2 x 2
averaging before a 3 x 3 convolution, up-sampling by bilinear interpolation before a 3 x 3
convolution (no strided or transposed convolution, whose uneven kernel overlap prints a grid at
2^k px periods: Odena et al., Distill 2016), and reflect padding in every convolution.

Training (:func:`train_denoiser`): noise-free thin-screen patches of the twin's training sample
families; noise Gaussian with a per-pixel standard deviation that is constant or follows the
signal (quantum noise, sigma ~ sqrt(T)), white or spatially correlated (screen-blurred quantum
noise); L1 loss on the clean patch (DRUNet), Adam with cosine decay, fixed seed.
"""
from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._fourier import as_batch, default_device, restore_type

__all__ = [
    "DEFAULT_WEIGHTS",
    "SIGMA_RANGE",
    "Denoiser",
    "DenoiserTrainResult",
    "denoise",
    "denoiser_from_weights",
    "load_denoiser",
    "pack_denoiser",
    "train_denoiser",
]

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "denoiser.pt"
# Noise standard deviations (transmission units) the network is trained for: from below the
# quantum noise of a well exposed frame (0.002) to the start of a plug-and-play schedule (0.25,
# about DPIR's 49/255 on a unit range, with margin for low-dose frames).
SIGMA_RANGE = (0.002, 0.25)
_KIND_ID = 20_25_17          # identifies a denoiser file among the product's weight files
_FORMAT = 1
_META = "meta."


class _Block(nn.Module):
    """Residual block: conv-ReLU-conv, bias-free, reflect padding."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1, bias=False, padding_mode="reflect")
        self.c2 = nn.Conv2d(c, c, 3, padding=1, bias=False, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c2(F.relu(self.c1(x)))


class Denoiser(nn.Module):
    """Bias-free residual U-Net with a noise-map input: ``forward(x, sigma)`` with x and sigma of
    shape (N, 1, H, W) returns the denoised (N, 1, H, W)."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64), blocks: int = 1) -> None:
        super().__init__()
        if len(channels) < 2 or min(channels) < 1 or blocks < 1:
            raise ValueError("Denoiser needs >= 2 levels of >= 1 channel and >= 1 block")
        self.channels = tuple(int(c) for c in channels)
        self.blocks = int(blocks)
        ch = self.channels
        self.head = nn.Conv2d(2, ch[0], 3, padding=1, bias=False, padding_mode="reflect")
        self.enc = nn.ModuleList(nn.Sequential(*[_Block(c) for _ in range(blocks)]) for c in ch[:-1])
        self.down = nn.ModuleList(nn.Conv2d(ch[i], ch[i + 1], 3, padding=1, bias=False,
                                            padding_mode="reflect") for i in range(len(ch) - 1))
        self.mid = nn.Sequential(*[_Block(ch[-1]) for _ in range(2 * blocks)])
        self.up = nn.ModuleList(nn.Conv2d(ch[i + 1], ch[i], 3, padding=1, bias=False,
                                          padding_mode="reflect") for i in range(len(ch) - 1))
        self.dec = nn.ModuleList(nn.Sequential(*[_Block(c) for _ in range(blocks)]) for c in ch[:-1])
        self.tail = nn.Conv2d(ch[0], 1, 3, padding=1, bias=False, padding_mode="reflect")

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1 or sigma.shape != x.shape:
            raise ValueError(f"Denoiser expects x and sigma of shape (N, 1, H, W), got "
                             f"{tuple(x.shape)} and {tuple(sigma.shape)}")
        h0, w0 = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h0) % m, (-w0) % m
        inp = torch.cat([x, sigma], 1)
        if ph or pw:
            mode = "reflect" if ph < h0 and pw < w0 else "replicate"
            inp = F.pad(inp, (0, pw, 0, ph), mode=mode)
        h = self.head(inp)
        skips = []
        for enc, down in zip(self.enc, self.down):
            h = enc(h)
            skips.append(h)
            h = down(F.avg_pool2d(h, 2))
        h = self.mid(h)
        for i in reversed(range(len(self.up))):
            skip = skips[i]
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = self.dec[i](self.up[i](h) + skip)
        return x + self.tail(h)[..., :h0, :w0]


def pack_denoiser(model: Denoiser, sigma_range: tuple[float, float] = SIGMA_RANGE,
                  info: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """State dict with the architecture and trained noise range as tensors under ``meta.*``
    (loadable with ``torch.load(weights_only=True)``)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    state[_META + "kind"] = torch.tensor(_KIND_ID, dtype=torch.int64)
    state[_META + "format"] = torch.tensor(_FORMAT, dtype=torch.int64)
    state[_META + "channels"] = torch.tensor(model.channels, dtype=torch.int64)
    state[_META + "blocks"] = torch.tensor(model.blocks, dtype=torch.int64)
    state[_META + "sigma_range"] = torch.tensor(sigma_range, dtype=torch.float64)
    for k, v in (info or {}).items():
        state[_META + "info." + k] = torch.tensor(float(v), dtype=torch.float64)
    return state


def denoiser_from_weights(state: dict[str, torch.Tensor], source: str = "weights"
                          ) -> tuple[Denoiser, tuple[float, float]]:
    """Rebuild a :class:`Denoiser` from :func:`pack_denoiser` output; returns the model and its
    trained noise range. Any other network's weights are refused with a clear error."""
    if not isinstance(state, dict) or int(state.get(_META + "kind", torch.tensor(-1))) != _KIND_ID:
        raise ValueError(f"{source}: not a noise-conditioned denoiser (another network's weights "
                         f"or not a weights file)")
    if int(state[_META + "format"]) != _FORMAT:
        raise ValueError(f"{source}: denoiser weights format {int(state[_META + 'format'])}, "
                         f"expected {_FORMAT}")
    try:
        model = Denoiser(tuple(int(c) for c in state[_META + "channels"].tolist()),
                         int(state[_META + "blocks"]))
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith(_META)})
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{source}: denoiser weights do not match the architecture: {exc}") from exc
    lo, hi = (float(v) for v in state[_META + "sigma_range"].tolist())
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, (lo, hi)


@dataclass
class LoadedDenoiser:
    """A denoiser ready to run: the model on its device and its trained noise range."""

    model: Denoiser
    sigma_range: tuple[float, float]
    device: torch.device
    source: str

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, *,
                 tile_px: int = 512, overlap_px: int = 32) -> torch.Tensor:
        """Denoise (B, H, W) ``x`` with noise std ``sigma`` (scalar, (B,) or (B, H, W)).

        Frames larger than ``tile_px`` run in overlapping tiles blended with a separable
        raised-cosine ramp (partition of unity, so tiling leaves no seams or grid)."""
        x = x.to(self.device, torch.float32)
        s = torch.as_tensor(sigma, dtype=torch.float32, device=self.device)
        if s.ndim == 1:
            s = s.reshape(-1, 1, 1)
        s = s.expand_as(x)
        lo, hi = self.sigma_range
        smax, smin = float(s.max()), float(s.min())
        if not (math.isfinite(smax) and math.isfinite(smin)) or smax > hi * 1.0001 or smin < 0:
            raise ValueError(f"noise level {smin:.4g}..{smax:.4g} outside the denoiser's trained "
                             f"range 0..{hi:.4g} (transmission units)")
        s = s.clamp(min=lo)
        with torch.inference_mode():
            return _tiled(lambda a, b: self.model(a[:, None], b[:, None])[:, 0], x, s,
                          tile_px, overlap_px)


def _ramp(n: int, overlap: int, first: bool, last: bool, device) -> torch.Tensor:
    w = torch.ones(n, device=device)
    if overlap > 0:
        r = 0.5 - 0.5 * torch.cos(torch.pi * (torch.arange(overlap, device=device) + 0.5) / overlap)
        if not first:
            w[:overlap] = r
        if not last:
            w[-overlap:] = r.flip(0)
    return w


def _starts(n: int, tile: int, step: int) -> list[int]:
    if n <= tile:
        return [0]
    s = list(range(0, n - tile, step))
    return s + [n - tile]


def _tiled(fn, x: torch.Tensor, s: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return fn(x, s)
    th, tw = min(tile, h), min(tile, w)
    out = torch.zeros_like(x)
    norm = torch.zeros((h, w), device=x.device)
    ys, xs = _starts(h, th, th - overlap), _starts(w, tw, tw - overlap)
    for y0 in ys:
        for x0 in xs:
            # overlap of adjacent tiles can exceed `overlap` at the last tile: the ramp covers
            # `overlap` px and the weights are normalised, so every pixel's weights sum to 1
            wy = _ramp(th, overlap if len(ys) > 1 else 0, y0 == ys[0], y0 == ys[-1], x.device)
            wx = _ramp(tw, overlap if len(xs) > 1 else 0, x0 == xs[0], x0 == xs[-1], x.device)
            wgt = wy[:, None] * wx[None, :]
            out[:, y0:y0 + th, x0:x0 + tw] += wgt * fn(x[:, y0:y0 + th, x0:x0 + tw],
                                                        s[:, y0:y0 + th, x0:x0 + tw])
            norm[y0:y0 + th, x0:x0 + tw] += wgt
    return out / norm


@lru_cache(maxsize=4)
def _load_cached(path: str, device: str) -> LoadedDenoiser:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"denoiser weights not found: {path}") from None
    except (RuntimeError, OSError, EOFError, ValueError, TypeError, AttributeError,
            pickle.UnpicklingError) as exc:   # a corrupt or foreign file
        raise ValueError(f"{path}: not a loadable weights file ({type(exc).__name__}: {exc})") from None
    model, rng = denoiser_from_weights(state, path)
    dev = torch.device(device)
    return LoadedDenoiser(model.to(dev), rng, dev, path)


def load_denoiser(path: str | Path | None = None, device: str | torch.device | None = None
                  ) -> LoadedDenoiser:
    """Load the denoiser (default: the shipped weights, trained by scripts/train_denoiser.py)."""
    p = Path(path) if path is not None else DEFAULT_WEIGHTS
    return _load_cached(str(p.resolve()), str(default_device(device)))


def denoise(frames: Any, sigma: float | np.ndarray, *, denoiser: LoadedDenoiser | None = None) -> Any:
    """Denoise transmission frames (H, W) or (B, H, W) with noise std ``sigma`` (scalar or a
    per-pixel map of the frames' shape), transmission units."""
    d = denoiser or load_denoiser()
    x, single = as_batch(frames, device=d.device)
    s = torch.as_tensor(np.asarray(sigma, dtype=np.float32), device=d.device)
    if s.ndim == 2 and single:
        s = s[None]
    if s.ndim not in (0, 1) and tuple(s.shape) != tuple(x.shape):
        raise ValueError(f"sigma map shape {tuple(s.shape)} does not match frames {tuple(x.shape)}")
    return restore_type(d(x, s), frames, single)


# --- training ------------------------------------------------------------------------------------
NOISE_KINDS = ("white", "lowpass", "deconvolved")


def noisy_batch(clean: torch.Tensor, gen: torch.Generator,
                sigma_range: tuple[float, float] = SIGMA_RANGE,
                kinds: tuple[str, ...] = ("white", "lowpass")) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy, sigma map) for clean (B, H, W) patches: per patch a noise level log-uniform in
    ``sigma_range``; half the patches with signal-dependent std sigma * sqrt(T / mean T) (quantum
    noise). Noise spectra (``kinds``, drawn with equal probability): white; ``lowpass``: white
    noise blurred by a Gaussian of 0.5-2 px (screen-blurred quanta); ``deconvolved``: the noise a
    regularised deconvolution leaves, white noise through r / (r^2 + w) with r a Gaussian
    transfer of 0.5-3 px and w log-uniform in 0.01-0.3 (what the plug-and-play data step hands
    the prior, for any detector). Every spectrum is renormalised to unit variance."""
    b = clean.shape[0]
    lo, hi = math.log(sigma_range[0]), math.log(sigma_range[1])
    sig = torch.exp(lo + (hi - lo) * torch.rand(b, generator=gen)).reshape(-1, 1, 1)
    dep = (torch.rand(b, generator=gen) < 0.5).reshape(-1, 1, 1)
    rel = torch.sqrt(clean.clamp(min=1e-3) / clean.mean(dim=(-2, -1), keepdim=True).clamp(min=1e-3))
    smap = sig * torch.where(dep, rel, torch.ones_like(rel))
    n = torch.randn(clean.shape, generator=gen)
    if tuple(kinds) == ("white", "lowpass"):
        # the first training stage's draw (kept bit-identical for reproducibility)
        corr = torch.rand(b, generator=gen) < 1 / 3
        kind = torch.where(corr, 1, 0)
    else:
        bad = [k for k in kinds if k not in NOISE_KINDS]
        if bad or not kinds:
            raise ValueError(f"noise kinds must be among {NOISE_KINDS}, got {kinds}")
        ids = torch.tensor([NOISE_KINDS.index(k) for k in kinds])
        kind = ids[torch.randint(len(ids), (b,), generator=gen)]
    fy = torch.fft.fftfreq(n.shape[-2])[:, None]
    fx = torch.fft.rfftfreq(n.shape[-1])[None, :]
    f2 = fy ** 2 + fx ** 2
    for k_id, sel in ((1, kind == 1), (2, kind == 2)):
        if not bool(sel.any()):
            continue
        m = int(sel.sum())
        if k_id == 1:
            width = (0.5 + 1.5 * torch.rand(m, generator=gen)).reshape(-1, 1, 1)
            g = torch.exp(-2 * math.pi ** 2 * width ** 2 * f2)
        else:
            width = (0.5 + 2.5 * torch.rand(m, generator=gen)).reshape(-1, 1, 1)
            w = torch.exp(math.log(0.01) + math.log(30.0) * torch.rand(m, generator=gen)
                          ).reshape(-1, 1, 1)
            r = torch.exp(-2 * math.pi ** 2 * width ** 2 * f2)
            g = r / (r * r + w)
        nc = torch.fft.irfft2(torch.fft.rfft2(n[sel]) * g, s=n.shape[-2:])
        n[sel] = nc / nc.std(dim=(-2, -1), keepdim=True).clamp(min=1e-6)
    return clean + smap * n, smap


@dataclass
class DenoiserTrainResult:
    steps: int
    seconds: float
    samples_per_s: float
    train_loss: list[float] = field(default_factory=list)
    val_psnr_db: dict[str, float] = field(default_factory=dict)
    val_input_psnr_db: dict[str, float] = field(default_factory=dict)


def train_denoiser(patches: Callable[[np.random.Generator, int, int], np.ndarray], *,
                   steps: int = 4000, batch: int = 16, patch_px: int = 64, lr: float = 1e-3,
                   seed: int = 0, channels: tuple[int, ...] = (16, 32, 64), blocks: int = 1,
                   validation: np.ndarray | None = None, log: Callable[[str], None] | None = None,
                   checkpoint: Callable[[dict[str, torch.Tensor]], None] | None = None,
                   checkpoint_every: int = 500, device: str | None = None,
                   init: dict[str, torch.Tensor] | None = None,
                   noise_kinds: tuple[str, ...] = ("white", "lowpass")
                   ) -> tuple[Denoiser, DenoiserTrainResult]:
    """Train a :class:`Denoiser` on clean patches from ``patches(rng, count, patch_px)``.

    Patches get random flips and 90-degree rotations and a random gain (0.6-1.1: other
    exposures and contrasts). ``validation``: clean images scored at sigma 0.01 / 0.03 / 0.1.
    ``init``: start from these :func:`pack_denoiser` weights (a fine-tuning stage);
    ``noise_kinds``: the noise spectra drawn (:func:`noisy_batch`).
    """
    say = log or (lambda m: None)
    dev = default_device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Denoiser(channels, blocks) if init is None else denoiser_from_weights(init)[0]
    model = model.to(dev).train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.02)
    res = DenoiserTrainResult(steps, 0.0, 0.0)
    t0 = time.perf_counter()
    running = 0.0
    for step in range(1, steps + 1):
        hr = np.asarray(patches(rng, batch, patch_px), dtype=np.float32)
        for k in range(batch):
            im = np.rot90(hr[k], int(rng.integers(4)))
            hr[k] = im[:, ::-1] if rng.random() < 0.5 else im
        clean = torch.from_numpy(hr) * torch.from_numpy(
            rng.uniform(0.6, 1.1, (batch, 1, 1)).astype(np.float32))
        noisy, smap = noisy_batch(clean, gen, kinds=noise_kinds)
        out = model(noisy[:, None].to(dev), smap[:, None].to(dev))[:, 0]
        loss = F.l1_loss(out, clean.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.detach())
        if step % 50 == 0:
            res.train_loss.append(running / 50)
            el = time.perf_counter() - t0
            say(f"step {step}/{steps} loss {running / 50:.5f} {step * batch / el:.1f} samples/s "
                f"{el:.0f} s")
            running = 0.0
        if checkpoint is not None and step % checkpoint_every == 0:
            checkpoint(pack_denoiser(model))
    res.seconds = time.perf_counter() - t0
    res.samples_per_s = steps * batch / res.seconds
    model.eval()
    if validation is not None:
        v = torch.from_numpy(np.asarray(validation, np.float32))
        vgen = torch.Generator().manual_seed(seed + 1)
        with torch.inference_mode():
            for s in (0.01, 0.03, 0.1):
                noisy = v + s * torch.randn(v.shape, generator=vgen)
                out = model(noisy[:, None].to(dev), torch.full_like(noisy, s)[:, None].to(dev))
                mse = float(((out[:, 0].cpu() - v) ** 2).mean())
                res.val_psnr_db[f"{s:g}"] = 10 * math.log10(1.0 / mse)
                res.val_input_psnr_db[f"{s:g}"] = 10 * math.log10(1.0 / float(((noisy - v) ** 2).mean()))
    return model, res
