"""`xinstrument bench fidelity`: the fidelity report measured on the digital twin.

On twin frames of every sample family (training families for calibration, held-out families for
the figures), both shipped profiles, and every deblurring method a profile runs, it measures:

* false alarms: the fraction of tiles the consistency map flags on clean restorations;
* coverage of the uncertainty band: the fraction of tiles whose actual rms error against the
  twin's truth lies inside the reported band, and the band's mean half-width against the rms
  error;
* detection of fakes injected into each method's output (discs, vias, one-pixel cracks and
  removed features at several contrasts): by the consistency map where the fake's forward-model
  signature exceeds 5 sigma of the tile statistic, else by the uncertainty map marking its tile
  undetermined. Each fake's contrast is given in transmission units and as its signature;
* cost: the report against one rfft2 + irfft2 pair of the same padded frame and against each
  method's restoration, measured in the same run.

Frames come from the twin's full physics (polychromatic Beer-Lambert, screen absorption and
blur, Poisson quanta, sCMOS noise), flat/dark corrected with averaged references as the
instrument does; the profiles' forward and noise models are never used to make them.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FamilyFrame", "FidelityBench", "family_frames", "fidelity_benchmark",
           "format_fidelity_bench", "inject_fake", "register_bench", "restore_all"]

# bench of each shipped profile and its calibration exposure (scripts/make_sim_profiles.py)
PROFILE_BENCH = {"sim-yag200-5x": ("lens-yag", 1.0), "sim-gos134": ("panel-gos", 0.05)}
N_REFERENCES = 8          # frames averaged into each dark and flat
# sample seeds: calibration below EVAL_SEED_BASE (the families' evaluation seeds start there)
CALIBRATION_SEED = 5000
# methods that restore onto another grid are benchmarked by `bench sr`
FAKE_KINDS = ("disc", "via", "crack", "removed")
SIGNATURE_SIGMA = 5.0     # fakes above this forward-model signature must be flagged


@dataclass
class FamilyFrame:
    """One corrected twin frame of a family sample and what the report needs to know of it."""

    family: str
    seed: int
    measured: np.ndarray
    truth: np.ndarray
    dose_ratio: float
    frames_averaged: int
    flat_frames_averaged: int


def family_frames(profile: Any, family: str, seeds: list[int], size_px: int,
                  frames_averaged: int = 1, repeats: int = 1) -> list[FamilyFrame]:
    """Twin frames of ``family`` (``repeats`` per seed, sharing one dark and flat) at the
    profile's calibration conditions."""
    from .sim import BENCHES, Twin
    from .sim.families import _mean_energy_kev, family_sample

    bench, exposure_s = PROFILE_BENCH[profile.name]
    out = []
    for seed in seeds:
        twin = Twin(BENCHES[bench](sensor_px=size_px), sample="open", seed=int(seed))
        cfg = twin.config
        twin.sample = family_sample(family, cfg.fov_mm, cfg.pixel_at_object_um / 1000, int(seed),
                                    _mean_energy_kev(twin))
        if cfg.kind == "lens":
            twin.set_state(stage_um=twin.best_focus_um("thick", twin.fixed_state.voltage_kv))
        twin.set_state(xray_on=False)
        dark = np.mean([twin.render(exposure_s)[0] for _ in range(N_REFERENCES)], 0,
                       dtype=np.float64)
        twin.set_state(xray_on=True, sample_in=False)
        flat = np.mean([twin.render(exposure_s)[0] for _ in range(N_REFERENCES)], 0,
                       dtype=np.float64)
        quanta = float(twin.expected_quanta("thick", exposure_s=exposure_s).mean())
        twin.set_state(sample_in=True)
        truth = twin.ground_truth().astype(np.float32)
        for _ in range(int(repeats)):
            raw = np.mean([twin.render(exposure_s)[0] for _ in range(frames_averaged)], 0,
                          dtype=np.float64)
            measured = ((raw - dark) / np.maximum(flat - dark, 1.0)).astype(np.float32)
            out.append(FamilyFrame(family, int(seed), measured, truth,
                                   quanta / float(profile.nnps_mean_signal), int(frames_averaged),
                                   N_REFERENCES))
    return out


@dataclass
class FrameSet:
    """Frames of one family at one averaging, their truths and every method's restorations."""

    family: str
    frames_averaged: int
    flat_frames_averaged: int
    dose_ratio: float
    measured: np.ndarray
    truth: np.ndarray
    restored: dict[str, np.ndarray]
    restore_s: dict[str, float]


def cached_set(profile: Any, family: str, frames_averaged: int, size_px: int, n_seeds: int,
               split: str, methods: list[str], cache: Path | None = None,
               device: str = "cpu") -> FrameSet:
    """Render (or load from ``cache``) ``n_seeds`` frames of ``family`` and restore them with
    ``methods``. ``split`` "train" uses calibration seeds, "held-out" evaluation seeds (from the
    families' EVAL_SEED_BASE on), so the two never share a sample."""
    from .sim.families import EVAL_SEED_BASE

    base = CALIBRATION_SEED if split == "train" else EVAL_SEED_BASE + 7000
    seeds = [base + i + 100 * frames_averaged for i in range(n_seeds)]
    path = None
    data: dict[str, Any] = {}
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / f"{profile.name}_{family}_{size_px}_{frames_averaged}_{split}_{n_seeds}.npz"
        if path.is_file():
            with np.load(path) as z:
                data = {k: z[k] for k in z.files}
    if "measured" not in data:
        frames = family_frames(profile, family, seeds, size_px, frames_averaged)
        data = {"measured": np.stack([f.measured for f in frames]),
                "truth": np.stack([f.truth for f in frames]),
                "dose": np.float64(frames[0].dose_ratio),
                "nflat": np.int64(frames[0].flat_frames_averaged)}
    frames = [FamilyFrame(family, sd, y, t, float(data["dose"]), frames_averaged,
                          int(data["nflat"])) for sd, y, t in zip(seeds, data["measured"],
                                                                   data["truth"])]
    changed = False
    for m in methods:
        if "m_" + m not in data:
            outs, t = restore_all(profile, m, frames, device)
            data["m_" + m], data["t_" + m] = np.stack(outs), np.float64(t)
            changed = True
    if path is not None and (changed or not path.is_file()):
        np.savez(path, **data)
    return FrameSet(family, frames_averaged, int(data["nflat"]), float(data["dose"]),
                    data["measured"], data["truth"], {m: data["m_" + m] for m in methods},
                    {m: float(data["t_" + m]) for m in methods})


def bench_methods(profile: Any, only: list[str] | None = None) -> list[str]:
    """Deblurring methods of ``profile`` (same grid as the measurement)."""
    from .restoration import available_methods
    from .restoration.registry import scale_of

    methods = [m for m in available_methods(profile) if scale_of(m) == 1]
    if only:
        methods = [m for m in methods if m in only]
    return methods


def restore_all(profile: Any, method: str, frames: list[FamilyFrame], device: str = "cpu"
                ) -> tuple[list[np.ndarray], float]:
    """Restorations of ``frames`` by ``method`` and the mean time of one (s)."""
    from .restoration import Restorer

    r = Restorer(profile, method, device=device)
    outs, times = [], []
    for f in frames:
        if method == "wiener":
            r.options = {"dose_ratio": f.dose_ratio * f.frames_averaged}
        t0 = time.perf_counter()
        outs.append(np.asarray(r.restore(f.measured), np.float32))
        times.append(time.perf_counter() - t0)
    return outs, float(np.median(times))


# ------------------------------------------------------------------------------- fakes
def inject_fake(restored: np.ndarray, kind: str, centre: tuple[int, int], contrast: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Add a fake feature to a restoration: returns (faked frame, the fake's image).

    ``disc``: a filled disc of radius 3 px; ``via``: a ring (radius 4 px, 1.5 px wall) around a
    drilled centre, as a PCB via; ``crack``: a one-pixel-wide line 24 px long at a random angle;
    ``removed``: a real feature erased - the frame's own detail inside a 6 px radius replaced
    by its local mean (the contrast argument scales how much is removed, 0..1).
    """
    h, w = restored.shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    cy, cx = centre
    r = np.hypot(yy - cy, xx - cx)
    if kind == "disc":
        shape = np.clip(3.5 - r, 0, 1)
    elif kind == "via":
        shape = np.clip(1 - np.abs(r - 4.0) / 1.5, 0, 1)
    elif kind == "crack":
        a = rng.uniform(0, np.pi)
        u = (yy - cy) * np.cos(a) + (xx - cx) * np.sin(a)
        v = -(yy - cy) * np.sin(a) + (xx - cx) * np.cos(a)
        shape = np.clip(1 - np.abs(v), 0, 1) * (np.abs(u) <= 12)
    elif kind == "removed":
        m = r <= 6.0
        local = float(restored[m].mean())
        fake = np.where(m, (local - restored) * min(abs(contrast), 1.0), 0).astype(np.float32)
        return restored + fake, fake
    else:
        raise ValueError(f"unknown fake kind {kind!r}; choose from {FAKE_KINDS}")
    fake = (contrast * shape).astype(np.float32)
    return restored + fake, fake
