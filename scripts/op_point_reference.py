"""Empirical-MMSE reference: what a network that knows the sample class reaches (writes no weights).

A network trained with a mean-squared-error loss on unlimited samples of exactly the test
distribution approximates the posterior mean, the minimum-MSE estimator. For each profile this
script trains such a specialist (the network of :mod:`xinstrument.restoration.specialist`, whose
PCB weights ``scripts/train_specialist.py`` ships) at the profile's operating-point dose (the dose
at which the thick input's SSIM on held-out PCB frames is 0.75,
:func:`xinstrument.family_bench.operating_point_dose`) or at ``--dose-ratio``, and scores it on
the frames of ``xinstrument bench restoration --families`` (the PCB family, or ``--eval-family``),
so its figures compare with the methods' there, and on more frames of that family.

    python scripts/op_point_reference.py [--profiles sim-yag200-5x,sim-gos134] [--steps 1600]
        [--size-px 128] [--seed 0] [--families pcb] [--eval-family pcb] [--dose-ratio D]
        [--bench-frames 3] [--out curve.json]

Training: a pool of thin-screen PCB truths rendered on the profile's twin bench at the
evaluation frame size (seeds from :data:`TRAIN_SEED_BASE`, below every evaluation seed), random
rotations / flips, the profile's own forward model (``physics.degrade``, fresh noise every batch)
at the operating-point dose on whole frames, then the Wiener filter the bench scores
(``wiener`` with the profile's curves at that dose); the network sees random patches of
[Wiener output, thick frame] and predicts the truth as a correction added to the Wiener output
(the product's U-Net, :class:`xinstrument.restoration.networks.UNet`, residual on channel 0).
At one fixed dose the network needs no dose input. Its head starts at zero, so step 0 is the
Wiener filter itself.

Evaluation (SSIM / PSNR against the truth, every ``--eval-every`` steps):
- ``bench``: the family benchmark's frames of the evaluation family (PCB by default), rendered and degraded exactly as
  :func:`xinstrument.family_bench.family_benchmark` does (``measurement_pairs`` from
  ``EVAL_SEED_BASE + 1000``); the Wiener row reproduces that table's Wiener figure;
- ``held_out``: ``--extra-frames`` more frames of the evaluation family from
  :data:`EXTRA_EVAL_SEED`, degraded the same way (a less noisy figure);
- ``validation``: frames of the first training family from :data:`VALIDATION_SEED_BASE` (below
  the evaluation block, not trained on): the only set any choice may look at.
Plug-and-play is scored on the same sets beside Wiener.
Nothing here is chosen against the evaluation frames; the settings are fixed defaults.
Weights are not written (``--out`` holds the curve only).

Measured with the defaults (U-Net width 24, depth 3, 572 449 parameters; 1600 steps of 12
patches of 64 px, about 22 min per profile on one CPU thread), SSIM / PSNR on the bench's three
frames, Wiener of the same run in brackets: sim-yag200-5x 0.943 / 36.9 dB (0.907 / 34.3 dB),
sim-gos134 0.953 / 34.8 dB (0.835 / 27.9 dB); still rising by 0.001 per 200 steps at the end.
With ``--families`` set to all seven training families (same network, budget and seeds), the
pool no longer knows the sample class: 0.916 / 35.5 dB and 0.894 / 31.6 dB on the same frames,
so knowing that the sample is a circuit board is worth 0.03-0.06 SSIM here, the dose 0.005-0.02
(plug-and-play with the shared prior: 0.911 / 0.876).
Depth 4 at lr 1e-3 diverged in its first 200 steps (no normalisation layers in the U-Net).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Training truths: seeds TRAIN_SEED_BASE + POOL_SEED_STRIDE * seed + k (k < pool), far below
# EVAL_SEED_BASE (10**6) like every training source's (xinstrument.sim.families.training_source).
TRAIN_SEED_BASE = 200_000
POOL_SEED_STRIDE = 10_000
# Validation truths: below the evaluation block and above every training seed of this script.
VALIDATION_SEED_BASE = 900_000
# Held-out figure: PCB frames from EVAL_SEED_BASE + this, a block the family benchmark
# (EVAL_SEED_BASE + 500 / 900 / 1000..11000 + n) does not use.
EXTRA_EVAL_SEED = 50_000
PROFILES = ("sim-yag200-5x", "sim-gos134")


@dataclass
class Setup:
    """One profile at its operating point."""

    name: str
    profile: Any
    phys: Any
    bench: str
    dose: float
    input_ssim_at_dose: float

    def wiener(self, frames: torch.Tensor) -> torch.Tensor:
        """The bench's Wiener (same curves and dose) on (B, H, W) frames."""
        from xinstrument.restoration.specialist import wiener_at_dose
        return wiener_at_dose(self.phys, frames, self.dose)


def load_setup(name: str, size_px: int) -> Setup:
    """Load ``name`` as the family benchmark does and find its operating-point dose at
    ``size_px`` (the frame side the bench calibrates the dose on)."""
    from xinstrument.family_bench import operating_point_dose
    from xinstrument.profiles import find_profile
    from xinstrument.restoration.cli import bench_for_profile
    from xinstrument.restoration.pnp import check_physics

    prof = find_profile(name)
    bench = bench_for_profile(prof)
    phys = check_physics(prof, "the operating-point reference")
    dose, s = operating_point_dose(phys, bench, size_px)
    return Setup(name, prof, phys, bench, float(dose), float(s))


def render_truths(bench: str, size_px: int, seeds, families=("pcb",)) -> np.ndarray:
    """Thin-screen truths, the families taken in turn (seed i: ``families[i % n]``)."""
    from xinstrument.sim.families import check_training_families, render_family
    families = check_training_families(families)
    return np.stack([render_family(families[i % len(families)], size_px, int(s),
                                   bench=bench).truth for i, s in enumerate(seeds)])


@dataclass
class EvalSet:
    name: str
    lr: np.ndarray       # thick frames at the dose (B, H, W)
    hr: np.ndarray       # thin-screen truths


def family_frames(st: Setup, name: str, size_px: int, n: int, seed: int,
               family: str = "pcb") -> EvalSet:
    """``n`` frames of ``family`` (default PCB) from ``seed`` at the setup's dose, as the bench
    makes them."""
    from xinstrument.sim.families import measurement_pairs
    lr, hr = measurement_pairs(st.phys, family, n, size_px, seed, dose_ratio=st.dose,
                               bench=st.bench)
    return EvalSet(name, lr, hr)


def bench_frames(st: Setup, size_px: int, n: int = 3, family: str = "pcb") -> EvalSet:
    """The ``family`` frames of ``family_benchmark`` at the setup's dose: same seeds, same
    ``measurement_pairs`` call (its noise generator is seeded with the first frame's seed)."""
    from xinstrument.sim.families import EVAL_SEED_BASE, FAMILIES
    return family_frames(st, "bench", size_px, n,
                      EVAL_SEED_BASE + 1000 * (FAMILIES.index(family) + 1), family)


def restore(model: torch.nn.Module | None, st: Setup, lr: np.ndarray) -> np.ndarray:
    """Wiener each frame alone (as the bench calls a method), then the network's correction
    (``model`` None: the Wiener output itself)."""
    w = np.stack([np.asarray(st.wiener(torch.from_numpy(x)), np.float32) for x in lr])
    if model is None:
        return w
    x = torch.stack([torch.from_numpy(w), torch.from_numpy(np.asarray(lr, np.float32))], dim=1)
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)[:, 0].numpy()
    model.train(was)
    return out


def score(out: np.ndarray, hr: np.ndarray) -> dict[str, float]:
    from xinstrument.restoration.metrics import psnr, ssim
    return {"ssim": float(np.mean(ssim(out, hr, 1.0))), "psnr_db": float(np.mean(psnr(out, hr, 1.0)))}


def evaluate(model, st: Setup, sets: list[EvalSet]) -> dict[str, dict[str, float]]:
    return {s.name: score(restore(model, st, s.lr), s.hr) for s in sets}


def train(st: Setup, pool: np.ndarray, *, steps: int, batch: int, patch_px: int, seed: int,
          base_channels: int = 24, depth: int = 3, lr: float = 1e-3, eval_every: int = 0,
          sets: list[EvalSet] | None = None, dose_range: tuple[float, float] | None = None,
          log=None) -> tuple[torch.nn.Module, dict]:
    """:func:`xinstrument.restoration.specialist.train_specialist` at the operating-point dose
    (or over ``dose_range``), scored on ``sets`` every ``eval_every`` steps."""
    from xinstrument.restoration.specialist import train_specialist
    sets = sets or []
    return train_specialist(st.phys, pool, dose_range or (st.dose, st.dose), steps=steps,
                            batch=batch, patch_px=patch_px, seed=seed,
                            base_channels=base_channels, depth=depth, lr=lr,
                            eval_every=eval_every,
                            evaluate=(lambda m: evaluate(m, st, sets)) if sets else None,
                            log=log)


def run_profile(name: str, a, log) -> dict:
    t0 = time.perf_counter()
    st = load_setup(name, a.size_px)
    log(f"{name}: bench {st.bench}, operating-point dose {st.dose:.4g} (input SSIM "
        f"{st.input_ssim_at_dose:.4f} on the dose-calibration frames)")
    if a.dose_ratio is not None:
        st.dose = a.dose_ratio
        log(f"{name}: trained and scored at dose ratio {st.dose:.4g} instead")
    pool_seeds = TRAIN_SEED_BASE + POOL_SEED_STRIDE * a.seed + np.arange(a.pool)
    pool = render_truths(st.bench, a.size_px, pool_seeds, a.family_list)
    from xinstrument.sim.families import EVAL_SEED_BASE
    fam = a.eval_family
    sets = [bench_frames(st, a.size_px, a.bench_frames, fam),
            family_frames(st, "held_out", a.size_px, a.extra_frames, EVAL_SEED_BASE + EXTRA_EVAL_SEED,
                       fam),
            # validation: the first training family's frames, never the evaluation family's
            family_frames(st, "validation", a.size_px, a.validation_frames, VALIDATION_SEED_BASE,
                       a.family_list[0])]
    from xinstrument.restoration.pnp import pnp_restore
    refs = {"thick input": {s.name: score(s.lr, s.hr) for s in sets},
            "wiener": evaluate(None, st, sets),
            "pnp_hqs": {s.name: score(np.stack([pnp_restore(x, st.profile, dose_ratio=st.dose)
                                                for x in s.lr]), s.hr) for s in sets}}
    for k, v in refs.items():
        log(f"{name}: {k:<12} " + "  ".join(f"{s} SSIM {r['ssim']:.4f} PSNR {r['psnr_db']:.2f}"
                                            for s, r in v.items()))
    t_prep = time.perf_counter() - t0
    model, rec = train(st, pool, steps=a.steps, batch=a.batch, patch_px=a.patch_px, seed=a.seed,
                       base_channels=a.base_channels, depth=a.depth, lr=a.lr,
                       eval_every=a.eval_every, sets=sets, log=lambda m: log(f"{name}: {m}"))
    return {"profile": name, "bench": st.bench, "dose_ratio": st.dose,
            "input_ssim_dose_frames": st.input_ssim_at_dose,
            "architecture": {"class": "xinstrument.restoration.networks.UNet", "in_channels": 2,
                             "inputs": ["wiener output", "thick frame"],
                             "residual": "output added to the Wiener output",
                             "base_channels": a.base_channels, "depth": a.depth,
                             "parameters": sum(p.numel() for p in model.parameters())},
            "training": {"steps": a.steps, "batch": a.batch, "patch_px": a.patch_px, "lr": a.lr,
                         "pool": a.pool, "families": list(a.family_list), "pool_seeds": [int(pool_seeds[0]), int(pool_seeds[-1])],
                         "seed": a.seed, "threads": torch.get_num_threads(),
                         "train_s": round(rec["train_s"], 1), "prep_s": round(t_prep, 1),
                         "wall_s_with_evaluation": round(time.perf_counter() - t0, 1)},
            "eval_family": a.eval_family,
            "frames": {s.name: len(s.lr) for s in sets}, "size_px": a.size_px,
            "references": refs, "curve": rec["curve"]}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default=",".join(PROFILES),
                    help="comma-separated profile names (default: the shipped two)")
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--size-px", type=int, default=128,
                    help="evaluation frame side, also the pool frames' and the dose calibration's")
    ap.add_argument("--patch-px", type=int, default=64, help="training patch side")
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--pool", type=int, default=400, help="truths rendered for training")
    ap.add_argument("--families", default="pcb",
                    help="comma-separated training families of the pool, taken in turn (default "
                    "pcb: the specialist; every training family asks whether knowing the "
                    "sample class or the dose is what counts)")
    ap.add_argument("--extra-frames", type=int, default=8, help="more evaluation-family frames")
    ap.add_argument("--bench-frames", type=int, default=3,
                    help="frames of the family benchmark's set (3 at the operating point)")
    ap.add_argument("--eval-family", default="pcb",
                    help="family scored (any, held-out ones included: evaluation only)")
    ap.add_argument("--dose-ratio", type=float, default=None,
                    help="dose of training and evaluation (default: the operating point)")
    ap.add_argument("--validation-frames", type=int, default=4)
    ap.add_argument("--base-channels", type=int, default=24)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared CPU more threads oversubscribe it)")
    ap.add_argument("--out", type=Path, default=None, help="JSON of the curves")
    a = ap.parse_args(argv)
    a.profile_list = [p.strip() for p in a.profiles.split(",") if p.strip()]
    if not a.profile_list:
        ap.error("--profiles: no profile named")
    from xinstrument.sim.families import check_training_families
    names = [f.strip() for f in a.families.split(",") if f.strip()]
    if not names:
        ap.error("--families: no family named")
    try:
        a.family_list = check_training_families(names)
    except ValueError as exc:
        ap.error(f"--families: {exc}")
    check_training_options(ap, a, ("extra_frames", "validation_frames", "bench_frames"))
    from xinstrument.sim.families import FAMILIES
    if a.eval_family not in FAMILIES:
        ap.error(f"--eval-family: unknown family {a.eval_family!r}; families are "
                 f"{', '.join(FAMILIES)}")
    if a.dose_ratio is not None and not (math.isfinite(a.dose_ratio) and a.dose_ratio > 0):
        ap.error(f"--dose-ratio must be a finite number > 0, got {a.dose_ratio}")
    if a.out is not None and not a.out.parent.is_dir():
        ap.error(f"--out: folder {a.out.parent} does not exist")
    for name in a.profile_list:
        check_profile(ap, name, "--profiles")
    return a


def check_training_options(ap: argparse.ArgumentParser, a, counts: tuple[str, ...] = ()) -> None:
    """``ap.error`` for a bad value of the training options this script shares with
    train_specialist.py (and of the further counts named in ``counts``, each >= 1)."""
    for key, lo in (("steps", 1), ("size_px", 32), ("patch_px", 16), ("batch", 1), ("pool", 1),
                    ("base_channels", 1), ("depth", 1), ("eval_every", 1), ("seed", 0),
                    ("threads", 1), *((c, 1) for c in counts)):
        if getattr(a, key) < lo:
            ap.error(f"--{key.replace('_', '-')} must be >= {lo}, got {getattr(a, key)}")
    if a.patch_px > a.size_px:
        ap.error(f"--patch-px {a.patch_px} is larger than the frames (--size-px {a.size_px})")
    if a.pool > POOL_SEED_STRIDE:
        ap.error(f"--pool must be <= {POOL_SEED_STRIDE} (training seed blocks of one --seed)")
    if TRAIN_SEED_BASE + POOL_SEED_STRIDE * (a.seed + 1) > VALIDATION_SEED_BASE:
        ap.error(f"--seed {a.seed}: its training seeds would reach the validation block; "
                 f"use a seed < {(VALIDATION_SEED_BASE - TRAIN_SEED_BASE) // POOL_SEED_STRIDE}")
    if not (math.isfinite(a.lr) and a.lr > 0):
        ap.error(f"--lr must be a finite number > 0, got {a.lr}")


def check_profile(ap: argparse.ArgumentParser, name: str, option: str) -> None:
    from xinstrument.profiles import ProfileError, find_profile
    try:
        find_profile(name)
    except ProfileError as exc:
        ap.error(f"{option}: {exc}")


def main(argv=None) -> int:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    log = lambda m: print(m, flush=True)
    results = []
    for name in a.profile_list:
        results.append(run_profile(name, a, log))
        if a.out is not None:      # written after each profile: a later failure keeps the first
            a.out.write_text(json.dumps({"results": results}, indent=1))
    for r in results:
        last = r["curve"][-1]
        log(f"{r['profile']}: dose {r['dose_ratio']:.4g}, {r['architecture']['parameters']} "
            f"parameters, {r['training']['train_s']:.0f} s training; final: " +
            "  ".join(f"{s} SSIM {last[s]['ssim']:.4f} PSNR {last[s]['psnr_db']:.2f} (Wiener "
                      f"{r['references']['wiener'][s]['ssim']:.4f})" for s in r["frames"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
