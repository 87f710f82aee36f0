#!/usr/bin/env python3
"""Calibrate the fidelity report of the shipped simulated profiles on the training families.

    python scripts/calibrate_fidelity.py [--profile sim-yag200-5x] [--size 256] [--seeds 2]
                                         [--cache DIR] [--dry-run]

For each profile, on twin frames of every TRAINING sample family (xinstrument.sim.families;
held-out families are never used here), rendered with the twin's full physics at the profile's
calibration conditions and corrected with averaged darks and flats (1 and 4 exposures per frame):

1. the noise model's beam-hardening exponent (``noise_hardening_exponent``) from 6 repeated
   frames of one sample of each family (fit_noise_hardening, pooled);
2. the model tolerance of the forward model (the twin's noise-free truth as the "restoration")
   and of every deblurring method (calibrate_tolerance: the smallest tolerance at which no
   calibration tile is flagged, a conformal bound on held-out tiles);
3. the coefficients of each method's uncertainty band (calibrate_uncertainty: 90 % of the
   calibration tiles inside the band).

The results go to the profile's ``noise_hardening_exponent``, ``[fidelity_tolerance]`` and
``[fidelity_uncertainty]`` (nothing else changes). ``xinstrument bench fidelity`` then measures
them on the held-out families. ``--cache`` keeps rendered frames and restorations (npz) so a
second run, or the benchmark, does not recompute them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xinstrument.bench_fidelity import (
    CALIBRATION_SEED,
    PROFILE_BENCH,
    bench_methods,
    cached_set,
    family_frames,
)
from xinstrument.profiles import find_profile
from xinstrument.restoration.fidelity import (
    FORWARD_MODEL_TOLERANCE_KEY,
    FidelityGuard,
    calibrate_tolerance,
    fit_noise_hardening,
    forward_model_for,
)
from xinstrument.restoration.fidelity_report import (
    FidelityReporter,
    calibrate_uncertainty,
)
from xinstrument.sim.families import TRAINING_FAMILIES

AVERAGING = (1, 4)


def fit_beta(prof, size_px: int, families: tuple[str, ...] = TRAINING_FAMILIES) -> dict:
    scenes = []
    for i, fam in enumerate(families):
        stack = [f.measured for f in family_frames(prof, fam, [CALIBRATION_SEED + 50 + i] * 1,
                                                   size_px, 1, repeats=6)]
        scenes.append(np.stack(stack))
    dose = family_frames(prof, TRAINING_FAMILIES[0], [CALIBRATION_SEED], 32, 1)[0].dose_ratio
    guard = FidelityGuard(prof, 32, 1e-3, tolerance={}, device="cpu",
                          noise_hardening_exponent=0.0)
    return fit_noise_hardening(guard, scenes, dose_ratio=dose)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=sorted(PROFILE_BENCH), action="append",
                   help="profile(s) to calibrate (default: both)")
    p.add_argument("--size", type=int, default=256, help="frame side, px")
    p.add_argument("--seeds", type=int, default=2, help="samples per family and averaging")
    p.add_argument("--tile-px", type=int, default=32)
    p.add_argument("--false-alarm-rate", type=float, default=1e-3)
    p.add_argument("--cache", type=Path, default=None, help="folder for rendered frames")
    p.add_argument("--family", action="append", choices=TRAINING_FAMILIES,
                   help="only these training families (repeatable; default all)")
    p.add_argument("--max-tolerance", type=float, default=4.0,
                   help="largest tolerance tried; a method that needs more is not calibrated")
    p.add_argument("--dry-run", action="store_true", help="print, do not write the profile")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    for name in a.profile or sorted(PROFILE_BENCH):
        prof = find_profile(str(ROOT / "profiles" / name))
        families = tuple(a.family or TRAINING_FAMILIES)
        beta = fit_beta(prof, a.size, families)
        print(f"{name}: noise hardening exponent {beta['beta']:.3f} from {beta['tiles']} tiles "
              f"(variance measured / modelled: median {beta['ratio_median_before']:.3f} -> "
              f"{beta['ratio_median_after']:.3f}, 90th percentile {beta['ratio_p90_after']:.3f})",
              flush=True)
        prof.noise_hardening_exponent = beta["beta"]
        methods = bench_methods(prof)
        sets = [cached_set(prof, fam, n, a.size, a.seeds, "train", methods, a.cache)
                for fam in families for n in AVERAGING]
        guard = FidelityGuard(prof, a.tile_px, a.false_alarm_rate, tolerance={}, device="cpu")
        tolerances, uncertainty = {}, {}
        for key in [FORWARD_MODEL_TOLERANCE_KEY] + methods:
            method = None if key == FORWARD_MODEL_TOLERANCE_KEY else key
            pairs, doses, averaged = [], [], []
            for s in sets:
                outs = s.truth if method is None else s.restored[method]
                pairs += list(zip(s.measured, outs))
                doses += [s.dose_ratio] * len(outs)
                averaged += [s.frames_averaged] * len(outs)
            try:
                out = calibrate_tolerance(guard, pairs, method=key, dose_ratio=doses,
                                          frames_averaged=averaged,
                                          flat_frames_averaged=sets[0].flat_frames_averaged,
                                          max_tolerance=a.max_tolerance)
            except ValueError as exc:
                print(f"  {key:16s} tolerance not calibrated: {exc}", flush=True)
                continue
            tolerances[key] = round(out["tolerance"], 4)
            print(f"  {key:16s} tolerance {out['tolerance']:.4f} ({out['frames']} frames, "
                  f"{out['tiles']} tiles; held-out tile rate <= {out['held_out_rate_bound']:.1e}); "
                  f"flagged {out['flagged_before']} -> {out['flagged_after']}, reduced chi2 "
                  f"{out['reduced_chi2_before']:.3f} -> {out['reduced_chi2_after']:.3f}", flush=True)
        rep = FidelityReporter(prof, a.tile_px, a.false_alarm_rate, tolerance=tolerances,
                               device="cpu", uncertainty={})
        for method in methods:
            reports, truths, outs = [], [], []
            for s in sets:
                for y, t, x in zip(s.measured, s.truth, s.restored[method]):
                    reports.append(rep.check(y, x, dose_ratio=s.dose_ratio,
                                             frames_averaged=s.frames_averaged,
                                             flat_frames_averaged=s.flat_frames_averaged,
                                             forward=forward_model_for(method), method=method))
                    truths.append(t)
                    outs.append(x)
            cal = calibrate_uncertainty(reports, truths, outs, method=method)
            uncertainty.update({k: round(v, 6) for k, v in cal["coefficients"].items()})
            coefs = ", ".join(f"{k.rsplit('_', 1)[1]} {v:.3g}" for k, v in cal["coefficients"].items())
            print(f"  {method:16s} band: {coefs}; coverage {cal['coverage']:.3f} on "
                  f"{cal['tiles']} tiles, mean half-width / rms error {cal['width_ratio']:.2f}",
                  flush=True)
        if not a.dry_run:
            prof.fidelity_tolerance = tolerances
            prof.fidelity_uncertainty = uncertainty
            prof.save(prof.path)
            print(f"  written to {prof.path / 'profile.toml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
