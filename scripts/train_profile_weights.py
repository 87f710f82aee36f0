"""Train the shipped restoration weights of a detector profile.

The HR (thin-detector, noise-free) patch source is pluggable: a dotted path ``module:callable``
naming either an :data:`~xinstrument.restoration.training.HrSource` (``(rng, count, patch_px)
-> (count, patch_px, patch_px)``) or a factory returning one when called with ``seed=``; or
``--hr-images FILE.npy`` (a (N, H, W) stack). The digital twin's generator is imported only
when named, so this script runs without it.

Example::

    python scripts/train_profile_weights.py --profile sim-gos134 --method sde \\
        --hr-source xinstrument.sim.bench:hr_patches_gos --steps 20000 --seed 0

The weights shipped in profiles/sim-yag200-5x and profiles/sim-gos134 were made with
``--shipped`` (the ``xinstrument train`` defaults: twin HR pool of 96 images of 256 px, patch
64, batch 8, Adam lr 1e-3, U-Net width 16, depth 3, seed 0, one CPU thread), which rebuilds them
and their ``weights/<method>.json`` training records::

    python scripts/train_profile_weights.py --shipped
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time

import numpy as np

from xinstrument.restoration.networks import METHOD_CONFIGS
from xinstrument.restoration.training import crop_source, train


def load_source(spec: str, seed: int):
    """Import ``module:attr`` lazily; call it with ``seed=`` if it is a factory."""
    if ":" not in spec:
        raise SystemExit(f"--hr-source must look like 'package.module:callable', got {spec!r}")
    module_name, attr = spec.split(":", 1)
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"cannot load HR source {spec!r}: {exc}") from exc
    params = inspect.signature(obj).parameters
    if "seed" in params and len(params) == 1:
        obj = obj(seed=seed)
    if not callable(obj):
        raise SystemExit(f"HR source {spec!r} is not callable")
    return obj


SHIPPED_PROFILES = ("sim-yag200-5x", "sim-gos134")
SHIPPED_METHODS = ["unet", "sde", "cold_diffusion"]
SHIPPED_STEPS = 1200


def _shipped(methods: list[str], steps: int, seed: int) -> int:
    from xinstrument.profiles import find_profile
    from xinstrument.restoration.cli import train_profile

    for name in SHIPPED_PROFILES:
        for method in methods:
            rec = train_profile(find_profile(name), method, steps=steps, seed=seed, threads=1)
            print(f"{name} {method}: val PSNR {rec['val_psnr_db']:.2f} dB, SSIM "
                  f"{rec['val_ssim']:.4f}, {rec['cpu_s']:.0f} CPU s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", help="profile name or folder (required unless --shipped)")
    p.add_argument("--method", action="append", choices=list(METHOD_CONFIGS),
                   help="learned method(s) to train; default all")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hr-source", help="dotted path module:callable giving HR patches")
    src.add_argument("--hr-images", help=".npy stack (N, H, W) of HR images to crop from")
    src.add_argument("--shipped", action="store_true",
                     help="rebuild the shipped simulated profiles' weights (unet, sde, "
                     "cold_diffusion; --steps default 1200)")
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
    args = p.parse_args(argv)
    if args.shipped:
        return _shipped(args.method or SHIPPED_METHODS, args.steps or SHIPPED_STEPS, args.seed)
    if not args.profile:
        p.error("--profile is required")
    args.steps = args.steps or 5000

    from xinstrument.profiles import find_profile

    profile = find_profile(args.profile)
    if args.hr_images:
        hr_source = crop_source(np.load(args.hr_images))
    else:
        hr_source = load_source(args.hr_source, args.seed)
    val_source = load_source(args.val_source, args.seed + 1000) if args.val_source else None

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
        )
        print(f"[{method}] saved weights into {profile.path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
