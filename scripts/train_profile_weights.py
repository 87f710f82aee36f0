"""Train the shipped restoration weights of a detector profile.

The HR (thin-detector, noise-free) patch source is pluggable: a dotted path ``module:callable``
naming either an :data:`~xinstrument.restoration.training.HrSource` (``(rng, count, patch_px)
-> (count, patch_px, patch_px)``) or a factory returning one when called with ``seed=``; or
``--hr-images FILE.npy`` (a (N, H, W) stack). The digital twin's generator is imported only
when named, so this script runs without it.

Example::

    python scripts/train_profile_weights.py --profile sim-gos134 --method sde \\
        --hr-source xinstrument.sim.families:training_hr_source --steps 20000 --seed 0

A factory's ``bench`` (when it takes one) is the profile's twin bench.

The weights shipped in profiles/sim-yag200-5x (unet, cold_diffusion, sde) and
profiles/sim-gos134 (the same and sr3) were made with ``--shipped``: HR images from the twin's
broad training families (:func:`xinstrument.sim.families.training_hr_source`: PCB, dead leaves,
charts, fibres, powders, fractal textures and mixes on the profile's bench; never a held-out
family), a pool of 96 images of 256 px from seed 0 (validation: 12 images from seed 1),
patch 64, batch 8, 1200 Adam steps at lr 1e-3 (SDE and SR3 gradient norms clipped at 1), U-Net
width 16, depth 3, seed 0, one CPU thread (about 4-5 CPU minutes per network). It rebuilds them
and their ``weights/<method>.json`` training records (settings, validation PSNR/SSIM per epoch,
wall and CPU seconds)::

    python scripts/train_profile_weights.py --shipped
    python scripts/train_profile_weights.py --shipped --profile sim-gos134 --method sr3

Trained on the PCB alone (the earlier recipe) the diffusion networks of the 200 um YAG profile
turned noise into horizontal / vertical streaks: they had learned the PCB's Manhattan geometry
as the prior (flat fields restored with axis/diagonal noise power 4.2-4.7 against 1.05 for the
input). The network alone does it (one pass at s = 1: 3.3-3.9; the samplers with an isotropic
denoiser: 0.95), the U-Net's nearest-neighbour upsampling does not (bilinear, PCB-trained: 5.8),
nor do tiling or the internal padding; the same network and recipe on the training families:
0.91 (cold diffusion), 1.10 (SDE).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np

from xinstrument.restoration.networks import METHOD_CONFIGS
from xinstrument.restoration.training import crop_source, train


def load_source(spec: str, seed: int, bench: str | None = None):
    """Import ``module:attr`` lazily; call it with ``seed=`` (and ``bench=`` when it takes one)
    if it is a factory, i.e. takes ``seed`` and otherwise only parameters with defaults."""
    if ":" not in spec:
        raise SystemExit(f"--hr-source must look like 'package.module:callable', got {spec!r}")
    module_name, attr = spec.split(":", 1)
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"cannot load HR source {spec!r}: {exc}") from exc
    if not callable(obj):
        raise SystemExit(f"HR source {spec!r} is not callable")
    params = inspect.signature(obj).parameters
    if "seed" in params and all(v.default is not inspect.Parameter.empty
                                for k, v in params.items() if k != "seed"):
        kw = {"seed": seed}
        if "bench" in params and bench is not None:
            kw["bench"] = bench
        obj = obj(**kw)
    return obj


# What ships: profile -> learned methods (sr3 is trained and shipped for the GOS panel only).
SHIPPED = {"sim-yag200-5x": ("unet", "cold_diffusion", "sde"),
           "sim-gos134": ("unet", "cold_diffusion", "sde", "sr3")}
SHIPPED_STEPS = 1200
SHIPPED_HR_SOURCE = "xinstrument.sim.families:training_hr_source"
# The shipped recipe (small networks that train in minutes on one CPU thread).
SHIPPED_RECIPE = {"patch": 64, "batch": 8, "lr": 1e-3, "base_channels": 16, "depth": 3,
                  "pool_images": 96, "pool_px": 256, "val_images": 12, "val_patches": 16}
# Gradient-norm clipping per method, at 1 as DDPM training does (Ho et al. 2020). Without it, on
# the training families, the SDE network of the 200 um YAG profile hit a loss spike at step ~600
# and fell back to "no correction" (validation PSNR 31.6 -> 30.0 dB, the input's; clipped: 33.9
# dB), and the GOS SR3 network collapsed to predicting zero noise at the last epoch (30.4 ->
# 2.2 dB). U-Net and cold diffusion train without it.
SHIPPED_GRAD_CLIP = {"sde": 1.0, "sr3": 1.0}


def train_shipped(profile_name: str, method: str, steps: int = SHIPPED_STEPS, seed: int = 0,
                  progress=None) -> dict:
    """Train one shipped network with the shipped recipe on the training families; saves the
    weights and ``weights/<method>.json`` (the record, returned) into the profile."""
    import torch

    from xinstrument.profiles import find_profile
    from xinstrument.restoration.cli import bench_for_profile
    from xinstrument.sim.families import TRAINING_FAMILIES, training_hr_source

    torch.set_num_threads(1)
    r = SHIPPED_RECIPE
    profile = find_profile(profile_name)
    bench = bench_for_profile(profile)
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    train_src = training_hr_source(seed=seed, bench=bench, pool_images=r["pool_images"],
                                   pool_px=r["pool_px"])
    val_src = training_hr_source(seed=seed + 1, bench=bench, pool_images=r["val_images"],
                                 pool_px=r["pool_px"])
    render_s = time.perf_counter() - wall0
    result = train(method, profile, train_src, patch=r["patch"], batch=r["batch"], steps=steps,
                   lr=r["lr"], seed=seed, val_source=val_src, val_patches=r["val_patches"],
                   steps_per_epoch=max(1, steps // 5), progress=progress,
                   base_channels=r["base_channels"], depth=r["depth"], save_to_profile=True,
                   grad_clip=SHIPPED_GRAD_CLIP.get(method))
    record = {"method": method, "profile": profile.name, "bench": bench, "steps": steps,
              "seed": seed, "patch_px": r["patch"], "batch": r["batch"], "lr": r["lr"],
              "base_channels": r["base_channels"], "depth": r["depth"],
              "hr_pool_images": r["pool_images"], "hr_pool_px": r["pool_px"],
              "val_pool_images": r["val_images"], "val_patches": r["val_patches"],
              "sample_steps": None, "optimizer": "Adam",
              "grad_clip": SHIPPED_GRAD_CLIP.get(method), "hr_source": SHIPPED_HR_SOURCE,
              "families": list(TRAINING_FAMILIES),
              "validation": result.validation,
              "val_psnr_db": result.validation[-1].get("val_psnr_db"),
              "val_ssim": result.validation[-1].get("val_ssim"),
              "final_loss": float(np.mean(result.losses[-20:])),
              "render_s": round(render_s, 1), "wall_s": round(result.seconds, 1),
              "cpu_s": round(time.process_time() - cpu0, 1), "threads": 1,
              "parameters": int(sum(p.numel() for p in result.model.parameters())),
              "torch": torch.__version__,
              "command": "python scripts/train_profile_weights.py --shipped"}
    target = Path(profile.path) / "weights" / f"{method}.json"
    target.write_text(json.dumps(record, indent=1) + "\n")
    return record


def _shipped(profiles: list[str], methods: list[str] | None, steps: int, seed: int) -> int:
    for name in profiles:
        for method in SHIPPED[name]:
            if methods and method not in methods:
                continue
            rec = train_shipped(name, method, steps=steps, seed=seed)
            print(f"{name} {method}: val PSNR {rec['val_psnr_db']:.2f} dB, SSIM "
                  f"{rec['val_ssim']:.4f}, {rec['cpu_s']:.0f} CPU s", file=sys.stderr, flush=True)
    return 0


def _bench(profile) -> str | None:
    from xinstrument.errors import UserError
    from xinstrument.restoration.cli import bench_for_profile

    try:
        return bench_for_profile(profile)
    except UserError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", help="profile name or folder (required unless --shipped; with "
                   "--shipped: only this shipped profile)")
    p.add_argument("--method", action="append", choices=list(METHOD_CONFIGS),
                   help="learned method(s) to train; default all")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hr-source", help="dotted path module:callable giving HR patches")
    src.add_argument("--hr-images", help=".npy stack (N, H, W) of HR images to crop from")
    src.add_argument("--shipped", action="store_true",
                     help="rebuild the shipped simulated profiles' weights (unet, "
                     "cold_diffusion, sde; sr3 for sim-gos134) on the training families; "
                     "--steps default 1200")
    p.add_argument("--val-source", help="like --hr-source, for validation (different samples)")
    p.add_argument("--steps", type=int, default=None, help="default 5000 (1200 with --shipped)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--base-channels", type=int, default=24)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--steps-per-epoch", type=int, default=500)
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--grad-clip", type=float, default=None,
                   help="clip the gradient norm to this before each step (default: no clipping)")
    args = p.parse_args(argv)
    if args.shipped:
        if args.profile and args.profile not in SHIPPED:
            p.error(f"--shipped: profile must be one of {', '.join(SHIPPED)}")
        return _shipped([args.profile] if args.profile else list(SHIPPED), args.method,
                        args.steps or SHIPPED_STEPS, args.seed)
    if not args.profile:
        p.error("--profile is required")
    args.steps = args.steps or 5000

    from xinstrument.profiles import find_profile

    profile = find_profile(args.profile)
    if args.hr_images:
        hr_source = crop_source(np.load(args.hr_images))
    else:
        hr_source = load_source(args.hr_source, args.seed, _bench(profile))
    val_source = load_source(args.val_source, args.seed + 1000, _bench(profile)) \
        if args.val_source else None

    for method in args.method or list(METHOD_CONFIGS):
        t0 = time.perf_counter()

        def progress(report: dict, method: str = method, t0: float = t0) -> None:
            if "epoch" in report:
                extra = "".join(
                    f" {k}={report[k]:.4f}" for k in ("val_psnr_db", "val_ssim") if k in report
                )
                print(f"[{method}] step {int(report['step'])}/{args.steps} loss={report['loss']:.5f}{extra}"
                      f" ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

        train(
            method, profile, hr_source, patch=args.patch, batch=args.batch, steps=args.steps,
            lr=args.lr, seed=args.seed, device=args.device, val_source=val_source,
            steps_per_epoch=args.steps_per_epoch, checkpoint_dir=args.checkpoint_dir,
            progress=progress, base_channels=args.base_channels, depth=args.depth,
            grad_clip=args.grad_clip,
        )
        print(f"[{method}] saved weights into {profile.path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
