#!/usr/bin/env python3
"""Train the shipped super-resolution weights of the simulated lens-coupled profile.

    python scripts/train_sr.py [any option of `xinstrument train`, e.g. --steps 500]

The same as ``xinstrument train --task sr`` with the settings of the shipped ``sim-yag20-5x-sr``
``sr_x2`` weights (later options override them): HR images are the twin's noise-free 5 um
reference screen on the 2x finer grid (pool of 64 images of 192 px; validation from seed
10 000); LR inputs apply the profile's measured MTF ratio on the fine grid, then area
down-sampling (what a camera pixel integrates, aliasing included: the anti-aliased bicubic
decimation of paper 003 hides it from the network, which then fails on real frames' near-Nyquist
bars), then Gaussian noise of the profile's noise sigma (x 0.5-2). 3000 AdamW steps of 16 patches,
seed 0, on 2 CPU threads (about 4 min). The weights and their training record
(``weights/sr_x2.json``) go into the profile.

The ``sim-yag200-5x`` ``sr_x2`` weights come from paper 003's degradation on that profile:
``--profile sim-yag200-5x --blur gaussian --downsample bicubic --threads 1``. On its 200 um
screen the measured-ratio / area variant trained worse (held-out chart 38.6 dB / 0.991 against
44.9 / 0.996, finest group 4 um against 3 um).

The ``sim-micro-16x-sr`` ``sr_x2`` weights (tomosynthesis slices of the 16x micro bench):

    python scripts/sr_resolution_budget.py --store-slice-transfer profiles/sim-micro-16x-sr \
        --store-arc-deg 20 --store-angles 21 --store-exposure-s 3.0476 [--store-recon multiframe]
    python scripts/train_sr.py --micro

``--micro`` trains on the slice transfer the profile names (shift-and-add, or with
``--store-recon multiframe`` the multi-frame slices of ``xinstrument.recon.multiframe``) and the
slice noise: the bench's training families (never the held-out charts), 3000 AdamW steps of 16
patches, pool of 64 images of 192 px, seed 0, one thread (about 15 CPU minutes).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xinstrument.cli import main  # noqa: E402

SHIPPED = ["--task", "sr", "--profile", "sim-yag20-5x-sr", "--factor", "2", "--blur", "mtf_ratio",
           "--downsample", "area", "--steps", "3000", "--batch", "16", "--pool-images", "64",
           "--pool-px", "192", "--seed", "0", "--threads", "2"]

MICRO = ["--task", "sr", "--profile", "sim-micro-16x-sr", "--factor", "2", "--blur", "slice",
         "--downsample", "area", "--steps", "3000", "--batch", "16", "--pool-images", "64",
         "--pool-px", "192", "--seed", "0", "--threads", "1",
         "--hr-families", "pcb,dead_leaves,fibres,powders,fractal_texture,mix"]

if __name__ == "__main__":
    args = sys.argv[1:]
    preset = SHIPPED
    if "--micro" in args:
        args = [x for x in args if x != "--micro"]
        preset = MICRO
    sys.exit(main(["train", *preset, *args]))
