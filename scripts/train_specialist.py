"""Train a profile's PCB specialist (``specialist_pcb``) and store it in the profile.

    python scripts/train_specialist.py --profile sim-yag200-5x [--dose-ratio D] [--dose-spread 1.25]
        [--steps 3000] [--pool 400] [--size-px 128] [--seed 0] [--threads 1] [--dry-run]

The network (:mod:`xinstrument.restoration.specialist`) learns circuit boards through the
profile's own forward model (MTF ratio, NNPS at the dose): thin-screen PCB truths rendered on the
profile's twin bench (seeds from ``op_point_reference.TRAIN_SEED_BASE``, below every evaluation
seed), fresh noise every batch, each batch at a dose drawn log-uniformly from
``D / spread .. D * spread``. ``D`` defaults to the profile's operating point (the dose at which
the thick input's SSIM on PCB frames is 0.75, as ``xinstrument bench restoration
--operating-point``); a user training for their own dose gives ``--dose-ratio`` (their flat's
detected quanta over the profile's ``nnps_mean_signal``). The weights record the dose range and
the detector; the method refuses frames outside them.

Validation (logged every ``--eval-every`` steps): PCB frames from
``op_point_reference.VALIDATION_SEED_BASE`` at ``D``, never the benchmark's frames; nothing is
chosen on them (the settings are fixed defaults). Writes ``weights/specialist_pcb.pt`` and
``weights/specialist_pcb.json`` (settings, curve, times) into the profile unless ``--dry-run``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import op_point_reference as ref

METHOD = "specialist_pcb"


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True, help="profile name")
    ap.add_argument("--dose-ratio", type=float, default=None,
                    help="centre of the trained dose range (default: the operating point)")
    ap.add_argument("--dose-spread", type=float, default=1.25,
                    help="the range is dose / spread .. dose * spread (>= 1)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--pool", type=int, default=400, help="PCB truths rendered for training")
    ap.add_argument("--size-px", type=int, default=128, help="pool and validation frame side")
    ap.add_argument("--patch-px", type=int, default=64)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--base-channels", type=int, default=24)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--validation-frames", type=int, default=4)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dry-run", action="store_true", help="train and report, write nothing")
    a = ap.parse_args(argv)
    ref.check_training_options(ap, a, ("validation_frames",))
    if a.dose_ratio is not None and not (math.isfinite(a.dose_ratio) and a.dose_ratio > 0):
        ap.error(f"--dose-ratio must be a finite number > 0, got {a.dose_ratio}")
    if not (math.isfinite(a.dose_spread) and a.dose_spread >= 1):
        ap.error(f"--dose-spread must be a finite number >= 1, got {a.dose_spread}")
    ref.check_profile(ap, a.profile, "--profile")
    return a


def main(argv=None) -> int:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    log = lambda m: print(f"{a.profile}: {m}", flush=True)
    t0 = time.perf_counter()
    st = ref.load_setup(a.profile, a.size_px)
    dose = float(a.dose_ratio) if a.dose_ratio is not None else st.dose
    st.dose = dose                      # validation frames and their Wiener at the centre dose
    dose_range = (dose / a.dose_spread, dose * a.dose_spread)
    log(f"dose ratio {dose:.4g} ({'given' if a.dose_ratio is not None else 'operating point'}), "
        f"trained over {dose_range[0]:.4g}..{dose_range[1]:.4g}")
    pool_seeds = ref.TRAIN_SEED_BASE + ref.POOL_SEED_STRIDE * a.seed + np.arange(a.pool)
    pool = ref.render_truths(st.bench, a.size_px, pool_seeds)
    val = ref.family_frames(st, "validation", a.size_px, a.validation_frames,
                         ref.VALIDATION_SEED_BASE)
    wiener_val = ref.evaluate(None, st, [val])["validation"]
    log(f"validation Wiener SSIM {wiener_val['ssim']:.4f} PSNR {wiener_val['psnr_db']:.2f}")
    prep_s = time.perf_counter() - t0
    model, rec = ref.train(st, pool, steps=a.steps, batch=a.batch, patch_px=a.patch_px,
                           seed=a.seed, base_channels=a.base_channels, depth=a.depth, lr=a.lr,
                           eval_every=a.eval_every, sets=[val], dose_range=dose_range, log=log)
    final = rec["curve"][-1]["validation"]
    record = {"method": METHOD, "profile": a.profile, "bench": st.bench,
              "detector_id": st.profile.detector_id, "family": "pcb",
              "dose_ratio": dose, "dose_ratio_range": list(dose_range),
              "operating_point_dose_ratio": st.dose if a.dose_ratio is None else None,
              "steps": a.steps, "batch": a.batch, "patch_px": a.patch_px, "lr": a.lr,
              "pool": a.pool, "pool_seeds": [int(pool_seeds[0]), int(pool_seeds[-1])],
              "size_px": a.size_px, "base_channels": a.base_channels, "depth": a.depth,
              "parameters": int(sum(p.numel() for p in model.parameters())),
              "seed": a.seed, "threads": a.threads, "torch": torch.__version__,
              "train_s": round(rec["train_s"], 1), "prep_s": round(prep_s, 1),
              "wall_s": round(time.perf_counter() - t0, 1),
              "validation_wiener": wiener_val, "validation": final, "curve": rec["curve"],
              "command": "python scripts/train_specialist.py "
                         + " ".join(sys.argv[1:] if argv is None else argv)}
    log(f"validation SSIM {final['ssim']:.4f} PSNR {final['psnr_db']:.2f} (Wiener "
        f"{wiener_val['ssim']:.4f}); {rec['train_s']:.0f} s training")
    if a.dry_run:
        return 0
    from xinstrument.restoration.specialist import pack_specialist
    prof = st.profile
    prof.save_weights(METHOD, pack_specialist(model, METHOD, dose_range, prof.detector_id))
    (Path(prof.path) / "weights" / f"{METHOD}.json").write_text(json.dumps(record, indent=1) + "\n")
    log(f"wrote {Path(prof.path) / prof.weights[METHOD]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
