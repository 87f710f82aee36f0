"""Train the shared noise-conditioned denoiser (the learned prior of plug-and-play restoration and
data-consistent diffusion) on the twin's training sample families, from a fixed seed.

    python scripts/train_denoiser.py [--steps 4000] [--pool 480] [--out PATH]

The twin renders a pool of noise-free thin-screen images of the training families (both
benches, seeds below the evaluation block); patches are cropped from it with flips, rotations
and random gains. Held-out families are refused by the training source
(xinstrument.sim.families.training_source). Writes the weights (torch.load(weights_only=True))
and a JSON log (steps, time, samples/s, validation PSNR) beside them.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from xinstrument.restoration.denoiser import (
    DEFAULT_WEIGHTS,
    SIGMA_RANGE,
    pack_denoiser,
    train_denoiser,
)
from xinstrument.restoration.training import crop_source
from xinstrument.sim.families import TRAINING_FAMILIES, training_source


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--pool", type=int, default=400, help="twin images rendered for the pool")
    ap.add_argument("--pool-px", type=int, default=96)
    ap.add_argument("--seed", type=int, default=2025)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared CPU, more threads oversubscribe it)")
    ap.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    src = training_source(TRAINING_FAMILIES)
    pool = src(np.random.default_rng(a.seed), a.pool, a.pool_px)
    val = src(np.random.default_rng(a.seed + 1), 12, a.pool_px)
    t_render = time.perf_counter() - t0
    print(f"rendered {a.pool} + 12 twin images in {t_render:.0f} s", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".partial.pt")

    def checkpoint(state):
        torch.save(state, tmp)

    model, res = train_denoiser(crop_source(pool), steps=a.steps, batch=a.batch, patch_px=a.patch,
                                seed=a.seed, validation=val, log=lambda m: print(m, flush=True),
                                checkpoint=checkpoint)
    info = {"steps": a.steps, "seconds": res.seconds, "samples_per_s": res.samples_per_s}
    torch.save(pack_denoiser(model, SIGMA_RANGE, info), a.out)
    tmp.unlink(missing_ok=True)
    log = {"families": list(TRAINING_FAMILIES), "seed": a.seed, "steps": a.steps,
           "batch": a.batch, "patch_px": a.patch, "pool": a.pool, "pool_px": a.pool_px,
           "render_s": round(t_render, 1), "train_s": round(res.seconds, 1),
           "samples_per_s": round(res.samples_per_s, 2), "threads": a.threads,
           "sigma_range": list(SIGMA_RANGE), "val_psnr_db": res.val_psnr_db,
           "val_input_psnr_db": res.val_input_psnr_db,
           "parameters": sum(p.numel() for p in model.parameters()),
           "loss_every_50": [round(x, 6) for x in res.train_loss]}
    a.out.with_suffix(".json").write_text(json.dumps(log, indent=1))
    print(json.dumps({k: v for k, v in log.items() if k != "loss_every_50"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
