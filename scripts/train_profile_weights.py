"""Train the shipped restoration weights of a detector profile.

The HR (thin-detector, noise-free) patch source is pluggable: a dotted path ``module:callable``
naming either an :data:`~xinstrument.restoration.training.HrSource` (``(rng, count, patch_px)
-> (count, patch_px, patch_px)``) or a factory returning one when called with ``seed=``; or
``--hr-images FILE.npy`` (a (N, H, W) stack). The digital twin's generator is imported only
when named, so this script runs without it.

Example::

    python scripts/train_profile_weights.py --profile sim-gos --method sde \\
        --hr-source xinstrument.sim:hr_patch_source --steps 20000 --seed 0
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", required=True, help="profile name or folder")
    p.add_argument("--method", action="append", choices=list(METHOD_CONFIGS),
                   help="learned method(s) to train; default all")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hr-source", help="dotted path module:callable giving HR patches")
    src.add_argument("--hr-images", help=".npy stack (N, H, W) of HR images to crop from")
    p.add_argument("--val-source", help="like --hr-source, for validation (different samples)")
    p.add_argument("--steps", type=int, default=5000)
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
