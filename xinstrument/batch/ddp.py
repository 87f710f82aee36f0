"""Training under torchrun with DistributedDataParallel; single-process training otherwise.

``train_ddp`` takes the arguments of :func:`xinstrument.restoration.training.train`. Launched
plainly it *is* that function. Launched by ``torchrun`` (``WORLD_SIZE`` / ``RANK`` /
``LOCAL_RANK`` in the environment) every process builds the same initial model from ``seed``,
wraps it in DDP (gradients averaged over processes after every step) and draws ``batch //
world_size`` patches per step, so the global batch stays ``batch``. Rank 0 draws exactly the
patches, noise and times of the single-process run (same generators, same order); with world
size 1 the weights are identical to ``train``'s. Validation, checkpoints, progress and saving
into the profile happen on rank 0 only.

Backend: NCCL when the processes have GPUs (one GPU per process, ``cuda:LOCAL_RANK``), gloo on
CPUs. Examples::

    torchrun --standalone --nproc-per-node 4 -m xinstrument.batch.ddp --profile P --method sde ...
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["distributed_env", "train_ddp"]


def distributed_env() -> tuple[int, int, int] | None:
    """(rank, local_rank, world_size) when launched by torchrun, else None."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise ValueError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun), "
                         f"got {os.environ.get('WORLD_SIZE')!r}, {os.environ.get('RANK')!r}, "
                         f"{os.environ.get('LOCAL_RANK')!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return rank, local, world


def train_ddp(method: str, profile: Any, hr_source: Any, *, patch: int = 128, batch: int = 16,
              steps: int = 1000, lr: float = 2e-4, seed: int = 0,
              device: str | torch.device | None = None, val_source: Any = None,
              val_patches: int = 16, steps_per_epoch: int = 100,
              sample_steps: int | None = None, checkpoint_dir: str | Path | None = None,
              progress: Any = None, base_channels: int = 24, depth: int = 3,
              save_to_profile: bool = True, backend: str | None = None,
              init_method: str | None = None):
    """Train one learned method, data-parallel when launched by torchrun (see module doc).

    Extra parameters: ``backend`` ("gloo" / "nccl"; default by device) and ``init_method``
    (default ``env://``, torchrun's rendezvous; e.g. ``file:///shared/store`` instead).
    Returns the same TrainResult as ``train`` on every rank (losses are the mean over ranks).
    """
    from ..restoration import training as T

    env = distributed_env()
    if env is None and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return T.train(method, profile, hr_source, patch=patch, batch=batch, steps=steps, lr=lr,
                       seed=seed, device=device, val_source=val_source, val_patches=val_patches,
                       steps_per_epoch=steps_per_epoch, sample_steps=sample_steps,
                       checkpoint_dir=checkpoint_dir, progress=progress,
                       base_channels=base_channels, depth=depth,
                       save_to_profile=save_to_profile)
    return _train_distributed(T, env, method, profile, hr_source, patch, batch, steps, lr, seed,
                              device, val_source, val_patches, steps_per_epoch, sample_steps,
                              checkpoint_dir, progress, base_channels, depth, save_to_profile,
                              backend, init_method)


def _train_distributed(T, env, method, profile, hr_source, patch, batch, steps, lr, seed, device,
                       val_source, val_patches, steps_per_epoch, sample_steps, checkpoint_dir,
                       progress, base_channels, depth, save_to_profile, backend, init_method):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ..restoration.networks import METHOD_CONFIGS, build_model, pack_weights
    from ..restoration.physics import DetectorPhysics

    if method not in METHOD_CONFIGS:
        raise ValueError(f"train: unknown learned method {method!r}; choose from {list(METHOD_CONFIGS)}")
    patch = T._check_int("patch", patch, 8)
    batch = T._check_int("batch", batch, 1)
    steps = T._check_int("steps", steps, 1)
    steps_per_epoch = T._check_int("steps_per_epoch", steps_per_epoch, 1)
    seed = T._check_int("seed", seed, 0)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")

    own_group = not dist.is_initialized()
    if own_group:
        rank, local_rank, world = env
    else:
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = env[1] if env else rank
    if batch % world:
        raise ValueError(f"batch {batch} is not divisible by the {world} processes; the global "
                         "batch is split evenly between them")
    if device is None:
        dev = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if own_group:
        dist.init_process_group(backend or ("nccl" if dev.type == "cuda" else "gloo"),
                                init_method=init_method or "env://", rank=rank, world_size=world)
    try:
        physics = DetectorPhysics.from_profile(profile)
        if not physics.has_noise_model:
            raise ValueError(f"profile {getattr(profile, 'name', '?')!r} lacks nnps_lr / "
                             "nnps_mean_signal needed to synthesise thick-detector training inputs")
        source = T._as_source(hr_source, "hr_source")
        val = T._as_source(val_source, "val_source") if val_source is not None else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(method, base_channels=base_channels, depth=depth).to(dev)
        ddp = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        opt = torch.optim.Adam(ddp.parameters(), lr=lr)
        # Rank 0 uses the single-process generators; other ranks their own streams.
        rng = np.random.default_rng(seed if rank == 0 else [seed, rank])
        gen = torch.Generator(device=dev).manual_seed(seed if rank == 0 else
                                                      int(np.random.SeedSequence([seed, rank])
                                                          .generate_state(1)[0]))
        local_batch = batch // world
        val_set = None
        if val is not None and rank == 0:
            vrng = np.random.default_rng(seed + 1)
            vgen = torch.Generator(device=dev).manual_seed(seed + 1)
            v_hr = torch.from_numpy(T._draw_hr(val, vrng, val_patches, patch, augment=False)).to(dev)
            val_set = (v_hr, T.synthesize_batch(physics, v_hr, vgen))

        result = T.TrainResult(model=model, weights={})
        t0 = time.perf_counter()
        for step in range(1, steps + 1):
            ddp.train()
            hr = torch.from_numpy(T._draw_hr(source, rng, local_batch, patch, augment=True)).to(dev)
            lr_frames = T.synthesize_batch(physics, hr, gen)
            loss = T.training_loss(method, ddp, physics, hr, lr_frames, gen)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at step {step} "
                                         f"on rank {rank}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            mean_loss = loss.detach().clone()
            if world > 1:
                dist.all_reduce(mean_loss)
                mean_loss /= world
            result.losses.append(float(mean_loss.item()))
            report: dict[str, float] = {"step": step, "loss": result.losses[-1]}
            if rank == 0 and (step % steps_per_epoch == 0 or step == steps):
                report["epoch"] = math.ceil(step / steps_per_epoch)
                T.end_of_epoch(report, model, method, physics, val_set, sample_steps, seed, result,
                               checkpoint_dir, opt, step, extra_state={"world_size": world})
            if progress is not None and rank == 0:
                progress(report)
        result.seconds = time.perf_counter() - t0
        model.eval()
        result.weights = pack_weights(model, method)
        if save_to_profile and rank == 0:
            profile.save_weights(method, result.weights)
        dist.barrier()
        return result
    finally:
        if own_group:
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """``torchrun ... -m xinstrument.batch.ddp --profile P --method M --steps N``: train on the
    twin's HR images of the training sample families (the HR pool of ``xinstrument train``;
    ``--hr-families`` names some, held-out ones are refused), weights saved into the profile."""
    import argparse

    from ..cliargs import non_negative_int, positive_int
    from ..profiles import find_profile
    from ..restoration.cli import bench_for_profile
    from ..sim.families import TRAINING_FAMILIES, check_training_families, training_hr_source

    p = argparse.ArgumentParser(prog="xinstrument.batch.ddp", description=main.__doc__)
    p.add_argument("--profile", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--steps", type=positive_int, required=True)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--patch", type=positive_int, default=64)
    p.add_argument("--batch", type=positive_int, default=8, help="global batch (all processes)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--base-channels", type=positive_int, default=16)
    p.add_argument("--pool-images", type=positive_int, default=96)
    p.add_argument("--pool-px", type=positive_int, default=256)
    p.add_argument("--device", default=None)
    p.add_argument("--hr-families", default=",".join(TRAINING_FAMILIES), metavar="F1,F2,...",
                   help="training sample families of the HR pool (default all of them)")
    a = p.parse_args(argv)
    try:
        families = check_training_families([f.strip() for f in a.hr_families.split(",")
                                            if f.strip()])
    except ValueError as exc:
        p.error(f"--hr-families: {exc}")
    profile = find_profile(a.profile)
    bench = bench_for_profile(profile)
    env = distributed_env()
    rank = env[0] if env else 0
    res = train_ddp(a.method, profile,
                    training_hr_source(a.seed, bench, families, a.pool_images, a.pool_px),
                    patch=a.patch, batch=a.batch, steps=a.steps, lr=a.lr, seed=a.seed,
                    device=a.device, base_channels=a.base_channels,
                    steps_per_epoch=max(1, a.steps // 5),
                    progress=lambda r: print(f"step {int(r['step'])} loss {r['loss']:.5f}",
                                             flush=True) if "epoch" in r else None)
    if rank == 0:
        print(f"trained {a.method} for {profile.name} on {env[2] if env else 1} process(es): "
              f"{a.steps} steps, {res.seconds:.1f} s; weights in {profile.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
