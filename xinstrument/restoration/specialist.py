"""Sample-class specialist: restoration that knows what kind of sample it is looking at (opt-in).

The shared prior of plug-and-play knows images in general; a specialist knows one sample class
(circuit boards) at one detector and dose. A network trained with a mean-squared-error loss on
unlimited samples of exactly that distribution approaches its posterior mean, the minimum-MSE
estimator, which no general prior can beat on that class. It pays for it off the class: it
paints what it learned where the sample is something else (``xinstrument bench restoration
--families`` shows by how much), so it is never a default, and the fidelity guard checks its
output against the measurement like every method's.

The method: the profile's Wiener filter at the frame's dose (MTF ratio and NNPS, as ``wiener``),
then a U-Net (:class:`.networks.UNet`, inputs [Wiener output, thick frame]) that predicts the
thin-screen frame as a correction added to the Wiener output; tiled like the other networks.
Trained per profile from its own forward model by ``scripts/train_specialist.py`` over a dose
range; the range, the sample class and the detector it was trained for are stored in the
weights, and frames outside them are refused with a message naming what differs.

Pure: arrays, torch and the profile's calibration only (the training truths are given by the
caller).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._fourier import as_batch, restore_type
from .classical import wiener
from .networks import UNet, pack_weights, unet_from_weights
from .physics import DetectorPhysics
from .pnp import _check_dose, check_physics

__all__ = ["SPECIALIST_FAMILIES", "Specialist", "dose_refusal", "load_specialist",
           "pack_specialist", "specialist_restore", "train_specialist", "trained_dose_ratio"]

# Method name -> the sample family (xinstrument.sim.families) its network was trained on.
SPECIALIST_FAMILIES = {"specialist_pcb": "pcb"}
_DOSE_KEY = "specialist.dose_ratio_range"
_DETECTOR_KEY = "specialist.detector_id"
# A dose within this relative margin of the trained range's ends is inside it (rounding of a
# range written as text).
_DOSE_REL_TOL = 1e-6


def pack_specialist(model: UNet, method: str, dose_ratio_range: tuple[float, float],
                    detector_id: str) -> dict[str, torch.Tensor]:
    """Weights of a specialist: the U-Net (:func:`.networks.pack_weights`), the dose range it was
    trained over and the detector id of its profile (UTF-8 bytes)."""
    if method not in SPECIALIST_FAMILIES:
        raise ValueError(f"{method!r} is not a specialist method "
                         f"({', '.join(SPECIALIST_FAMILIES)})")
    lo, hi = (float(v) for v in dose_ratio_range)
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"dose ratio range must be 0 < low <= high, got {dose_ratio_range!r}")
    state = pack_weights(model, method)
    state[_DOSE_KEY] = torch.tensor([lo, hi], dtype=torch.float64)
    state[_DETECTOR_KEY] = torch.tensor(list(str(detector_id).encode()), dtype=torch.uint8)
    return state


@dataclass
class Specialist:
    """A loaded specialist network and what it was trained for."""

    method: str
    model: UNet
    dose_ratio_range: tuple[float, float]
    detector_id: str

    @property
    def family(self) -> str:
        return SPECIALIST_FAMILIES[self.method]

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], method: str) -> Specialist:
        """Rebuild from :func:`pack_specialist` output; ValueError naming what is wrong."""
        if method not in SPECIALIST_FAMILIES:
            raise ValueError(f"{method!r} is not a specialist method "
                             f"({', '.join(SPECIALIST_FAMILIES)})")
        rest = dict(state)
        dose = rest.pop(_DOSE_KEY, None)
        det = rest.pop(_DETECTOR_KEY, None)
        model, trained_for = unet_from_weights(rest)
        if trained_for != method:
            raise ValueError(f"weights stored for {method!r} were trained for {trained_for!r}")
        if dose is None or det is None or dose.numel() != 2:
            raise ValueError(f"weights for {method!r} lack the trained dose range or detector id "
                             "(not written by scripts/train_specialist.py)")
        lo, hi = (float(v) for v in dose)
        return cls(method, model.eval(), (lo, hi), bytes(det.tolist()).decode(errors="replace"))

    def check(self, profile: Any, dose_ratio: float | None = None) -> None:
        """ValueError when ``profile`` is not the detector these weights were trained for or the
        dose (when given) is outside the trained range."""
        det = getattr(profile, "detector_id", None)
        if det is not None and det != self.detector_id:
            raise ValueError(f"{self.method} weights were trained for detector "
                             f"{self.detector_id!r}, not {det!r} (profile "
                             f"{getattr(profile, 'name', '?')!r}); train them for this profile "
                             "with scripts/train_specialist.py")
        if dose_ratio is None:
            return
        lo, hi = self.dose_ratio_range
        if not lo * (1 - _DOSE_REL_TOL) <= dose_ratio <= hi * (1 + _DOSE_REL_TOL):
            raise ValueError(f"dose ratio {dose_ratio:.4g} is outside the range {self.method} was "
                             f"trained for ({lo:.4g}..{hi:.4g} of the profile's calibration "
                             "dose): its noise is not what the network learned to remove; "
                             "retrain with scripts/train_specialist.py --dose-ratio")

    def apply(self, wiener_out: torch.Tensor, thick: torch.Tensor, tile: int = 512,
              overlap: int = 32, batch: int = 4) -> torch.Tensor:
        """The network's output on (B, H, W) Wiener output and thick frames, tiled."""
        from .stage import tiled_apply

        model = self.model.to(wiener_out.device)
        stacked = torch.stack([wiener_out, thick], dim=1)          # (B, 2, H, W)
        with torch.no_grad():
            return tiled_apply(lambda tiles: model(tiles)[:, 0], stacked, tile=tile,
                               overlap=overlap, batch=batch)


_CACHE: dict[tuple[str, float, str], Specialist] = {}


def load_specialist(profile: Any, method: str = "specialist_pcb") -> Specialist:
    """The specialist weights of ``profile`` (cached per file and modification time)."""
    weights = getattr(profile, "weights", None) or {}
    if method not in weights:
        raise ValueError(f"profile {getattr(profile, 'name', '?')!r} has no weights for "
                         f"{method!r} (has {sorted(weights) or 'none'}); train them with "
                         f"scripts/train_specialist.py --profile {getattr(profile, 'name', '?')}")
    path = Path(getattr(profile, "path", None) or ".") / weights[method]
    key = (str(path.resolve()), path.stat().st_mtime if path.is_file() else -1.0, method)
    if key not in _CACHE:
        _CACHE[key] = Specialist.from_state(profile.load_weights(method), method)
    return _CACHE[key]


def trained_dose_ratio(profile: Any, method: str) -> float | None:
    """The geometric centre of the dose range ``profile``'s ``method`` weights were trained
    over (a dose its speed can be timed at); None for a method that is not a specialist."""
    if method not in SPECIALIST_FAMILIES:
        return None
    lo, hi = load_specialist(profile, method).dose_ratio_range
    return math.sqrt(lo * hi)


def dose_refusal(profile: Any, method: str, dose_ratio: float) -> str | None:
    """Why ``method`` refuses frames at ``dose_ratio`` with ``profile`` (its specialist weights'
    dose range or detector); None when it takes them or is not a specialist."""
    if method not in SPECIALIST_FAMILIES:
        return None
    try:
        load_specialist(profile, method).check(profile, float(dose_ratio))
    except ValueError as exc:
        return str(exc)
    return None


def specialist_restore(frames: Any, profile: Any, *, method: str = "specialist_pcb",
                       dose_ratio: float = 1.0, pixel_size_um: float | None = None,
                       specialist: Specialist | None = None, tile: int = 512, overlap: int = 32,
                       batch: int = 4) -> Any:
    """Restore thick-detector frames with the profile's sample-class specialist.

    Parameters
    ----------
    frames : (H, W) or (B, H, W) flat-field corrected transmission frames.
    profile : the DetectorProfile the weights belong to (MTF ratio, NNPS, weights).
    dose_ratio : detected quanta of these frames' flat / the profile's ``nnps_mean_signal``;
        must lie in the range the weights were trained for.
    pixel_size_um : the frames' pixel size; checked against the profile's when given.
    specialist : loaded weights (default: the profile's, :func:`load_specialist`).
    tile, overlap, batch : tiling of frames larger than ``tile``.
    """
    phys = check_physics(profile, f"the {method} specialist", pixel_size_um)
    dose = _check_dose(dose_ratio)
    spec = specialist or load_specialist(profile, method)
    spec.check(profile, dose)
    device = next(spec.model.parameters()).device
    x, single = as_batch(frames, device=device)
    w = wiener_at_dose(phys, x, dose)
    out = spec.apply(w, x, tile=tile, overlap=overlap, batch=batch)
    return restore_type(out, frames, single)


def wiener_at_dose(phys: DetectorPhysics, frames: torch.Tensor, dose_ratio: float) -> torch.Tensor:
    """The Wiener filter the specialist is trained on: the profile's curves at the dose."""
    return wiener(frames, phys.frequency_cy_per_px, phys.mtf_ratio, phys.nnps_lr,
                  dose_ratio=dose_ratio)


# --- training ----------------------------------------------------------------------------------
def build_network(base_channels: int = 24, depth: int = 3) -> UNet:
    """The specialist's U-Net; its head starts at zero, so before training it is Wiener."""
    torch.manual_seed(0)
    return UNet(in_channels=2, out_channels=1, base_channels=base_channels, depth=depth,
                residual=True)


def make_batch(phys: DetectorPhysics, pool: np.ndarray, rng: np.random.Generator,
               gen: torch.Generator, batch: int, patch_px: int, dose_ratio: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random pool frames, rotated / flipped, degraded whole at ``dose_ratio`` (fresh noise),
    Wiener filtered whole, then one random patch each: ([Wiener, thick] (B, 2, p, p),
    truth (B, 1, p, p))."""
    idx = rng.integers(len(pool), size=batch)
    hr = np.stack([np.rot90(pool[i], int(rng.integers(4)))[:, ::-1 if rng.random() < 0.5 else 1]
                   for i in idx]).astype(np.float32)
    hr_t = torch.from_numpy(np.ascontiguousarray(hr))
    with torch.no_grad():
        lr = phys.degrade(hr_t, gen, dose_ratio)
        w = wiener_at_dose(phys, lr, dose_ratio)
    size = hr.shape[-1]
    xs, ts = [], []
    for k in range(batch):
        y0, x0 = (int(v) for v in rng.integers(size - patch_px + 1, size=2))
        sl = (k, slice(y0, y0 + patch_px), slice(x0, x0 + patch_px))
        xs.append(torch.stack([w[sl], lr[sl]]))
        ts.append(hr_t[sl][None])
    return torch.stack(xs), torch.stack(ts)


def train_specialist(phys: DetectorPhysics, pool: np.ndarray, dose_ratio_range: tuple[float, float],
                     *, steps: int, batch: int = 12, patch_px: int = 64, seed: int = 0,
                     base_channels: int = 24, depth: int = 3, lr: float = 1e-3,
                     eval_every: int = 0, evaluate: Callable[[UNet], dict] | None = None,
                     log: Callable[[str], None] | None = None) -> tuple[UNet, dict]:
    """Train a specialist on thin-screen truths ``pool`` (N, H, W) through ``phys``'s forward
    model, each batch at a dose drawn log-uniformly from ``dose_ratio_range``.

    Adam on the MSE, cosine-decayed learning rate (to lr / 20), gradients clipped at norm 1.
    ``evaluate(model)`` is called every ``eval_every`` steps (and at step 0) and its dict kept.
    Returns the model (eval mode) and a record: training seconds, mean loss of each block, curve.
    """
    lo, hi = (float(v) for v in dose_ratio_range)
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"dose ratio range must be 0 < low <= high, got {dose_ratio_range!r}")
    if pool.ndim != 3 or min(pool.shape[-2:]) < patch_px:
        raise ValueError(f"pool must be (N, H, W) frames of at least {patch_px} px, got "
                         f"{pool.shape}")
    say = log or (lambda m: None)
    model = build_network(base_channels, depth)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr / 20)
    rng = np.random.default_rng([seed, 1])
    gen = torch.Generator().manual_seed(seed + 17)
    curve: list[dict] = []
    losses: list[float] = []
    block: list[float] = []
    t_train = 0.0

    def record(step: int, loss: float | None) -> None:
        row = {"step": step, **({"train_mse": loss} if loss is not None else {})}
        if evaluate is not None:
            model.eval()
            row.update(evaluate(model))
            model.train()
        curve.append(row)
        say(_fmt(row, t_train))

    if eval_every and evaluate is not None:
        record(0, None)
    model.train()
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        dose = lo if hi == lo else math.exp(rng.uniform(math.log(lo), math.log(hi)))
        x, t = make_batch(phys, pool, rng, gen, batch, patch_px, dose)
        loss = torch.mean((model(x) - t) ** 2)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        t_train += time.perf_counter() - t0
        block.append(loss.item())
        if eval_every and (step % eval_every == 0 or step == steps):
            losses.append(float(np.mean(block)))
            block = []
            record(step, losses[-1])
    model.eval()
    return model, {"train_s": t_train, "loss_blocks": losses, "curve": curve}


def _fmt(row: dict, t_s: float) -> str:
    parts = [f"step {row['step']:>5}", f"{t_s:7.0f} s"]
    if "train_mse" in row:
        parts.append(f"mse {row['train_mse']:.3e}")
    for k, v in row.items():
        if isinstance(v, dict) and "ssim" in v:
            parts.append(f"{k} SSIM {v['ssim']:.4f} PSNR {v['psnr_db']:.2f}")
    return "  ".join(parts)
