#!/usr/bin/env python3
"""Benchmark of the fidelity guard on the digital twin.

    python scripts/bench_fidelity.py [--sensor-px 256] [--frames 4] [--trials 20] [--device cpu]

Prints, for held-out PCB frames of the lens-coupled twin (a sample seed that neither the profile,
the tolerance calibration (scripts/calibrate_fidelity.py) nor the training saw) at 1 and 4
averaged exposures per frame (inside the 1-8 range the tolerances are calibrated over; 4 is
outside the 0.5-2x dose range the learned methods were trained on):
  * reduced chi-square, flagged tile fraction and frame verdict of the noise-free truth
    (the forward/noise model alone) and of every available restoration method, with the
    profile's calibrated tolerances and without any tolerance;
  * the profile's NNPS against the NNPS of flat-pair differences measured in the same run;
  * detection rate of fake features injected into the truth, Wiener and U-Net restorations
    (via-like discs and one-pixel cracks) against size and contrast (contrast in units of the
    noise sigma at the local transmission);
  * cost of the guard against the restorations on the same device, same frames.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xinstrument.calibration.nnps import nnps, resample_curve
from xinstrument.profiles import find_profile
from xinstrument.restoration import Restorer, available_methods
from xinstrument.restoration.fidelity import FidelityGuard, forward_model_for
from xinstrument.sim import Twin, lens_bench

HELD_OUT_SEED = 90210      # sample seed not used by make_sim_profiles (0) or training
N_FLAT = 8


def bench_frames(sensor_px: int, frames_averaged: list[int], n_frames: int):
    twin = Twin(lens_bench(sensor_px), sample="pcb", seed=HELD_OUT_SEED)
    twin.set_state(stage_um=twin.best_focus_um("thick", twin.fixed_state.voltage_kv))
    exposure_s = 1.0
    twin.set_state(xray_on=False)
    dark = np.mean([twin.render(exposure_s)[0].astype(np.float64) for _ in range(N_FLAT)], 0)
    twin.set_state(xray_on=True, sample_in=False)
    flats = [twin.render(exposure_s)[0].astype(np.float64) for _ in range(N_FLAT)]
    flat = np.mean(flats, 0)
    quanta = float(twin.expected_quanta("thick", exposure_s=exposure_s).mean())
    twin.set_state(sample_in=True)
    # temporal NNPS: differences of flat pairs (fixed pattern cancels), / sqrt 2 per frame
    level = float((flat - dark).mean())
    diffs = np.stack([(flats[i] - flats[i + 1]) / np.sqrt(2) + level for i in range(0, N_FLAT, 2)])
    t = nnps(diffs, twin.config.pixel_at_screen_um, roi_size_px=min(128, sensor_px // 2))
    frames = {}
    for n in frames_averaged:
        frames[n] = [((np.mean([twin.render(exposure_s)[0].astype(np.float64) for _ in range(n)], 0)
                       - dark) / (flat - dark)).astype(np.float32) for _ in range(n_frames)]
    return twin, frames, quanta, t


def inject(guard, y_list, x_list, base_name, dose, trials, method=None):
    """Detection of via-like discs and one-pixel cracks added to restorations ``x_list``."""
    eps, source = guard.tolerance_for(method)
    print(f"\n== fake features injected into the {base_name} restoration (N=1, tolerance "
          f"{eps:g}: {source}) ==")
    rng = np.random.default_rng(1)
    fwd = forward_model_for(method or "truth")
    check = lambda y, x: guard.check(y, x, dose_ratio=dose, frames_averaged=1,  # noqa: E731
                                     flat_frames_averaged=N_FLAT, forward=fwd, method=method)
    base = [check(y, x) for y, x in zip(y_list, x_list)]
    h, w = y_list[0].shape
    b = base[0].border_px + 8
    yy, xx = np.mgrid[:h, :w]
    var_unit, _ = guard.noise_statistics((h, w))
    for kind, sizes in (("via (disc, radius px)", (1, 2, 3, 5)), ("crack (1 px wide, length px)", (8, 16, 32))):
        print(f"  {kind}: detection rate, tile newly flagged / frame turned inconsistent, "
              "by contrast (x local noise sigma)")
        contrasts = (1, 2, 4, 8)
        print("    size  " + "  ".join(f"{c:>9g}s" for c in contrasts))
        for size in sizes:
            cells = []
            for c in contrasts:
                tile_hits = frame_hits = 0
                for t in range(trials):
                    i = t % len(y_list)
                    cy, cx = rng.integers(b + size, h - b - size), rng.integers(b + size, w - b - size)
                    local_t = float(guard.reblur(x_list[i])[0, cy, cx])
                    sigma = np.sqrt(var_unit / dose * (local_t + local_t**2 / N_FLAT))
                    if kind.startswith("via"):
                        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= size**2
                    else:
                        mask = (yy == cy) & (np.abs(xx - cx) <= size // 2)
                    sign = -1.0 if rng.random() < 0.5 else 1.0
                    fake = x_list[i] + (sign * c * sigma * mask).astype(np.float32)
                    r = check(y_list[i], fake)
                    ry, rx = r.tile_edges
                    ty = np.searchsorted(ry, cy, side="right") - 1
                    tx = np.searchsorted(rx, cx, side="right") - 1
                    tile_hits += bool(r.flagged[ty, tx]) and not bool(base[i].flagged[ty, tx])
                    frame_hits += (not r.consistent) and bool(base[i].consistent)
                cells.append(f"{tile_hits / trials:4.2f}/{frame_hits / trials:4.2f}")
            print(f"    {size:4d}  " + "  ".join(f"{s:>10s}" for s in cells))
    print(f"  (without injection: {sum(not r.consistent for r in base)}/{len(base)} frames inconsistent)")



def cost(prof, frame: np.ndarray, dose: float, a) -> None:
    """Guard time against restoration time on the same device and frame, interleaved (restore,
    guard, restore, ...) so that machine load drifts hit both alike; medians of ``a.reps``."""
    methods = [m for m in available_methods(prof)
               if m in ("wiener", "inverse", "richardson_lucy", "unet")]
    restorers = {m: Restorer(prof, m, device=a.device) for m in methods}
    guards = {"calibrated": FidelityGuard(prof, a.tile_px, a.false_alarm_rate, device=a.device),
              "none": FidelityGuard(prof, a.tile_px, a.false_alarm_rate, tolerance={},
                                    device=a.device)}
    device = guards["none"].device
    print(f"\n== cost on {device} ({a.timing_px} x {a.timing_px} px, torch threads "
          f"{torch.get_num_threads()}, median of {a.reps} interleaved runs) ==")
    big = np.tile(frame, (a.timing_px // frame.shape[0] + 1,) * 2)[:a.timing_px, :a.timing_px]

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    # the floor of any exact check: it re-blurs the restored frame, one inverse transform of the
    # padded frame at least (three standalone: forward, model, tolerance shape)
    g = guards["none"]
    shape = tuple(int(n + 2 * g.pad_px) for n in big.shape)
    x = torch.from_numpy(np.ascontiguousarray(big, np.float32)).to(device)
    spec = torch.fft.rfft2(torch.nn.functional.pad(x[None, None], (g.pad_px,) * 4,
                                                   mode="reflect")[0])
    torch.fft.irfft2(spec, s=shape)
    t_inverse = float(np.median([timed(lambda: torch.fft.irfft2(spec, s=shape))
                                 for _ in range(a.reps)]))
    print(f"  one inverse FFT of the padded {shape[0]} x {shape[1]} frame: {t_inverse * 1e3:.2f} ms")
    for m in methods:
        r = restorers[m]
        r.options = {"dose_ratio": dose} if m == "wiener" else {}
        reps = 3 if m == "unet" else a.reps
        xr = r.restore(big)
        checks = {tol: (lambda g=g: g.check(big, xr, dose_ratio=dose, forward=forward_model_for(m),
                                            method=m)) for tol, g in guards.items()}
        for fn in checks.values():
            fn()
        t_restore, t_guard = [], {tol: [] for tol in checks}
        for _ in range(reps):
            t_restore.append(timed(lambda: r.restore(big)))
            for tol, fn in checks.items():
                t_guard[tol].append(timed(fn))
        tr = float(np.median(t_restore))
        for tol, ts in t_guard.items():
            tg = float(np.median(ts))
            print(f"  {m:16s} restore {tr * 1e3:8.2f} ms   guard ({tol:10s} tolerance) "
                  f"{tg * 1e3:8.2f} ms   guard / restore {tg / tr:6.3f}   (one inverse FFT / "
                  f"restore {t_inverse / tr:5.3f})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="sim-yag200-5x")
    p.add_argument("--sensor-px", type=int, default=256)
    p.add_argument("--frames", type=int, default=4, help="held-out frames per averaging level")
    p.add_argument("--trials", type=int, default=20, help="injections per feature size/contrast")
    p.add_argument("--tile-px", type=int, default=32)
    p.add_argument("--false-alarm-rate", type=float, default=1e-3)
    p.add_argument("--device", default=None)
    p.add_argument("--timing-px", type=int, default=1024, help="frame size for the cost figures")
    p.add_argument("--reps", type=int, default=15, help="timed runs per method for the cost")
    p.add_argument("--cost-only", action="store_true", help="only the cost figures")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    prof = find_profile(a.profile)
    twin, frames, quanta, temporal = bench_frames(a.sensor_px, [1, 4], a.frames)
    dose = quanta / prof.nnps_mean_signal
    if a.cost_only:
        cost(prof, frames[1][0], dose, a)
        return 0
    gt = twin.ground_truth()
    temporal_nnps = np.clip(resample_curve(temporal.frequency_cy_per_px, temporal.nnps_px2,
                                           prof.frequency_cy_per_px), 0, None)
    print(f"profile {prof.name}; twin {a.sensor_px} px, sample seed {HELD_OUT_SEED}; flat "
          f"{quanta:.0f} quanta/px (dose ratio {dose:.3f}); tiles {a.tile_px} px; false-alarm "
          f"rate {a.false_alarm_rate:g} per tile and per frame")
    ratio = float(np.mean(temporal_nnps / np.maximum(prof.nnps_lr, 1e-30)))
    print(f"NNPS of flat-pair differences measured now / profile NNPS: {ratio:.3f} on average "
          "(the profile's NNPS is the temporal one: fixed pattern removed, as flat-field "
          "correction removes it)")
    print(f"calibrated tolerances: {prof.fidelity_tolerance or 'none'}")
    from xinstrument.restoration.specialist import dose_refusal
    methods = []
    for m in available_methods(prof):
        why = dose_refusal(prof, m, 1.0)     # restored as at the calibration dose below
        if why:
            print(f"{m}: not run: {why}")
        else:
            methods.append(m)
    restorers = {m: Restorer(prof, m, device=a.device) for m in methods}
    guards = {"calibrated tolerance": FidelityGuard(prof, a.tile_px, a.false_alarm_rate,
                                                    device=a.device),
              "no tolerance": FidelityGuard(prof, a.tile_px, a.false_alarm_rate, tolerance={},
                                            device=a.device)}

    print("\n== held-out frames: reduced chi2 / flagged fraction / inconsistent frames ==")
    restored = {}
    for label, guard in guards.items():
        for n, fr in frames.items():
            rows = {"truth": [gt] * len(fr)}
            for m in methods:
                if m == "wiener":
                    restorers[m].options = {"dose_ratio": dose * n}
                key = (m, n)
                if key not in restored:
                    restored[key] = [restorers[m].restore(f) for f in fr]
                rows[m] = restored[key]
            for name, outs in rows.items():
                fwd = forward_model_for(name)
                method = None if name == "truth" else name
                rs = [guard.check(y, x, dose_ratio=dose, frames_averaged=n, method=method,
                                  flat_frames_averaged=N_FLAT, forward=fwd) for y, x in zip(fr, outs)]
                chi = np.array([r.reduced_chi2 for r in rs])
                chi_t = np.array([r.reduced_chi2_tolerant for r in rs])
                ff = np.array([r.flagged_fraction for r in rs])
                bad = sum(not r.consistent for r in rs)
                print(f"  [{label}, N={n}] {name:16s} tol {rs[0].tolerance:6.3f}  chi2 "
                      f"{chi.mean():.3f} +- {chi.std():.3f} (tolerant {chi_t.mean():.3f})  "
                      f"flagged {ff.mean():.4f} "
                      f"(expected {a.false_alarm_rate:g})  inconsistent {bad}/{len(rs)}")

    guard = guards["calibrated tolerance"]
    inject(guard, frames[1], [gt] * len(frames[1]), "truth", dose, a.trials)
    for m in ("wiener", "unet"):
        if m in methods:
            inject(guard, frames[1], restored[(m, 1)], m, dose, a.trials, method=m)
    cost(prof, frames[1][0], dose, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
