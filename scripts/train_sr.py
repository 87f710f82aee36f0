#!/usr/bin/env python3
"""Train the super-resolution network of a detector profile (shared/papers/003).

    python scripts/train_sr.py --profile sim-yag200-5x --factor 2 [--steps 3000 --seed 0]

HR images: noise-free digital-twin ground truth (PCB, resolution chart, bar patterns, slanted
edge) rendered on a ``factor`` x finer pixel grid than the bench camera, drawn once into a pool
(``--pool`` images of ``--pool-px`` px) and cropped, rotated and flipped into ``--patch`` px
patches; or ``--hr-images FILE.npy`` ((N, H, W) stack on the fine grid). LR inputs come from the
profile's degradation model (bicubic down-sampling, Gaussian blur of esf_sigma_um, Gaussian noise
of noise_sigma). Weights are saved into the profile as ``sr_x<factor>``; the profile is re-read
just before saving so weights other processes wrote meanwhile are kept.

Training is single-threaded on the CPU unless ``--device`` says otherwise, deterministic for a
given seed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xinstrument.profiles import find_profile
from xinstrument.restoration.superres import sr_method, train_sr, twin_hr_source
from xinstrument.restoration.training import crop_source, pooled_source


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="sim-yag200-5x")
    p.add_argument("--factor", type=int, default=2, choices=(2, 4))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patch", type=int, default=64, help="HR patch side (px)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (paper 003: 0.001)")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--pool", type=int, default=64, help="twin HR images in the training pool")
    p.add_argument("--pool-px", type=int, default=192, help="side of each twin HR image (fine px)")
    p.add_argument("--hr-images", type=Path, help="(N, H, W) .npy stack of HR images instead of the twin")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-save", action="store_true", help="train and report only")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    profile = find_profile(a.profile)
    t0 = time.time()
    if a.hr_images is not None:
        train_src = crop_source(np.load(a.hr_images))
        hr_desc = str(a.hr_images)
    else:
        train_src = pooled_source(twin_hr_source(a.factor), a.pool, a.pool_px, seed=a.seed)
        hr_desc = f"twin fine-grid ground truth pool {a.pool} x {a.pool_px} px"
    # validation: twin images from a different seed than the training pool
    val_src = pooled_source(twin_hr_source(a.factor), 8, a.pool_px, seed=a.seed + 10_000)
    print(f"HR pools ready in {time.time() - t0:.1f} s", flush=True)

    def progress(r):
        if "val_psnr_db" in r:
            print(f"step {int(r['step'])}: loss {r['loss']:.4f}  val SR {r['val_psnr_db']:.2f} dB / "
                  f"SSIM {r['val_ssim']:.4f}  (bicubic {r['val_bicubic_psnr_db']:.2f} dB / "
                  f"{r['val_bicubic_ssim']:.4f})", flush=True)

    c0 = time.process_time()
    res = train_sr(profile, a.factor, train_src, a.steps, a.seed, patch=a.patch, batch=a.batch,
                   lr=a.lr, channels=a.channels, layers=a.layers, device=a.device,
                   val_source=val_src, val_patches=16, steps_per_epoch=max(1, a.steps // 10),
                   progress=progress, save_to_profile=False)
    record = {
        "method": sr_method(a.factor), "profile": profile.name, "factor": a.factor,
        "steps": a.steps, "seed": a.seed, "patch_px": a.patch, "batch": a.batch, "lr": a.lr,
        "optimizer": "AdamW", "channels": a.channels, "layers": a.layers, "hr_source": hr_desc,
        "blur_sigma_lr_px": res.degradation.blur_sigma_lr_px, "noise_sigma": res.degradation.noise_sigma,
        "parameters": sum(x.numel() for x in res.model.parameters()),
        "final": res.validation[-1] if res.validation else None,
        "wall_s": round(res.seconds, 1), "cpu_s": round(time.process_time() - c0, 1),
    }
    print(json.dumps(record, indent=1))
    if not a.no_save:
        fresh = find_profile(a.profile)      # keep weights others saved while this ran
        fresh.save_weights(sr_method(a.factor), res.weights)
        print(f"saved {fresh.path / fresh.weights[sr_method(a.factor)]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
