#!/usr/bin/env python3
"""Benchmark super-resolution against bicubic and deblur-only restoration on the digital twin.

    python scripts/bench_sr.py [--profile sim-yag200-5x --factor 2 --json out.json]

Held-out twin samples, imaged by the lens-coupled bench (YAG:Ce 200 um, 5x NA 0.4, 6.5 um
camera pixels = 1.3 um at the screen) as a user would: thick-screen frames at best focus,
dark/flat corrected with averaged references (defect pixels replaced). Methods, all compared
on the ``factor`` x finer grid of the twin's fine-grid ground truth (noise-free thin-screen
image rendered with ``factor`` x smaller camera pixels):

* raw        : the corrected frame (CTF on its own grid; pixel replication for PSNR/SSIM);
* bicubic    : bicubic interpolation of the frame;
* wiener+bic : deblur-only Wiener restoration (profile MTF ratio and NNPS), then bicubic;
* unet+bic   : deblur-only learned restoration (profile ``unet`` weights, if any), then bicubic;
* sr         : the profile's ``sr_x<factor>`` network;
* truth      : the fine-grid ground truth itself (the ceiling of the CTF measure).

Resolution chart (line widths 15 .. 1 um, 3 bars, horizontal and vertical groups): per group the
Michelson contrast of the profile across the bars divided by that of the 15 um groups (CTF), and
the number of bars found (transmission minima at the bar spacing). A group is resolved when
CTF > 10 % and exactly 3 bars with 2 gaps are found, in both orientations; the finest resolved
line width is reported (the finest group such that it and all coarser groups resolve; groups
resolved below that limit are listed in the JSON). PCB patches (seeds not used in training): PSNR/SSIM against the ground
truth, data range 1 (transmission), 8 LR px border excluded.
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

from xinstrument.acquisition.correction import FlatFieldCorrector
from xinstrument.profiles import find_profile
from xinstrument.restoration import Restorer, psnr, ssim
from xinstrument.restoration.superres import (
    SuperResolver,
    bicubic_upsample,
    centred_config,
    fine_grid_config,
    measure_bar_group,
)
from xinstrument.sim.bench import Twin, lens_bench
from xinstrument.sim.samples import (
    CHART_LINE_WIDTHS_UM,
    chart_groups,
    make_sample,
    resolution_chart,
)

REFERENCE_WIDTH_UM = max(CHART_LINE_WIDTHS_UM)
BORDER_LR_PX = 8


def acquire(twin: Twin, exposure_s: float, frames: int, refs: int = 16) -> np.ndarray:
    """Dark/flat corrected, averaged thick-screen frame at the thick screen's best focus."""
    twin.set_state(stage_um=twin.best_focus_um("thick", twin.fixed_state.voltage_kv))
    twin.set_state(xray_on=False)
    darks = np.stack([twin.render(exposure_s)[0] for _ in range(refs)])
    twin.set_state(xray_on=True, sample_in=False)
    flats = np.stack([twin.render(exposure_s)[0] for _ in range(refs)])
    twin.set_state(sample_in=True)
    corr = FlatFieldCorrector.from_series(darks, flats)
    return np.mean([corr(twin.render(exposure_s)[0]) for _ in range(frames)], axis=0).astype(np.float32)


def methods(frame: np.ndarray, factor: int, restorers: dict, sr: SuperResolver) -> dict[str, np.ndarray]:
    out = {"raw": frame, "bicubic": bicubic_upsample(frame, factor)}
    for name, r in restorers.items():
        out[f"{name}+bic"] = bicubic_upsample(r.restore(frame), factor)
    out["sr"] = sr.restore(frame)
    return out


def chart_table(images: dict[str, tuple[np.ndarray, float]], groups: list[dict]) -> dict:
    """Per method: per-group results and the finest line width resolved in both orientations."""
    table = {}
    for name, (img, pixel_mm) in images.items():
        ref_groups = [g for g in groups if g["width_um"] == REFERENCE_WIDTH_UM]
        ref = float(np.mean([measure_bar_group(img, g, pixel_mm).contrast or 0.0 for g in ref_groups]))
        rows = [measure_bar_group(img, g, pixel_mm, reference_contrast=ref) for g in groups]
        by_width: dict[float, list] = {}
        for r in rows:
            by_width.setdefault(r.width_um, []).append(r)
        resolved = [w for w, rs in by_width.items() if all(r.resolved for r in rs)]
        # limiting resolution: the finest group such that it and every coarser group resolve
        limit = None
        for w in sorted(by_width, reverse=True):
            if w not in resolved:
                break
            limit = w
        table[name] = {
            "reference_contrast": ref,
            "finest_resolved_um": limit,
            "resolved_widths_um": sorted(resolved),
            "groups": [{"width_um": r.width_um, "orientation": r.orientation, "ctf": r.ctf,
                        "bars_found": r.bars_found, "bar_count_ok": r.bar_count_ok,
                        "resolved": r.resolved, "note": r.note} for r in rows],
        }
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="sim-yag200-5x")
    p.add_argument("--factor", type=int, default=2, choices=(2, 4))
    p.add_argument("--chart-px", type=int, default=1024, help="camera pixels of the chart frame")
    p.add_argument("--pcb-px", type=int, default=256, help="camera pixels of each PCB frame")
    p.add_argument("--pcb-samples", type=int, default=4)
    p.add_argument("--exposure-s", type=float, default=1.0, help="exposure (profile noise_sigma is at 1 s)")
    p.add_argument("--frames", type=int, default=1, help="frames averaged per image")
    p.add_argument("--seed", type=int, default=900_000, help="held-out sample seeds start here")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    f = a.factor
    t0 = time.time()

    profile = find_profile(a.profile)
    sr = SuperResolver(profile, f, device="cpu")
    restorers = {"wiener": Restorer(profile, "wiener", device="cpu")}
    if "unet" in profile.weights:
        restorers["unet"] = Restorer(profile, "unet", device="cpu")

    # ---- resolution chart
    cfg = centred_config(lens_bench(sensor_px=a.chart_px))
    fine = fine_grid_config(cfg, f)
    chart = resolution_chart(cfg.fov_mm)
    groups = chart_groups(cfg.fov_mm)
    twin = Twin(cfg, sample=chart, seed=a.seed)
    frame = acquire(twin, a.exposure_s, a.frames)
    truth = Twin(fine, sample=chart, seed=a.seed).ground_truth()
    thin_lr = twin.ground_truth()   # noise-free thin screen on the camera grid: the pixel's limit
    px_lr = cfg.pixel_at_object_um / 1000
    px_hr = fine.pixel_at_object_um / 1000
    outs = methods(frame, f, restorers, sr)
    images = {k: (v, px_lr if k == "raw" else px_hr) for k, v in outs.items()}
    images["thin, camera px, noise-free"] = (thin_lr, px_lr)
    images["truth"] = (truth, px_hr)
    table = chart_table(images, groups)
    b = BORDER_LR_PX * f
    chart_scores = {}
    for k, v in outs.items():
        img = np.kron(v, np.ones((f, f), np.float32)) if k == "raw" else v
        chart_scores[k] = (psnr(img[b:-b, b:-b], truth[b:-b, b:-b], 1.0), ssim(img[b:-b, b:-b], truth[b:-b, b:-b], 1.0))
    print(f"chart: {a.chart_px}^2 camera px, object pixel {cfg.pixel_at_object_um:.3f} um -> "
          f"{fine.pixel_at_object_um:.3f} um; {time.time() - t0:.0f} s", flush=True)

    # ---- PCB patches, held-out seeds
    pcfg = centred_config(lens_bench(sensor_px=a.pcb_px))
    pfine = fine_grid_config(pcfg, f)
    pcb_scores: dict[str, list] = {}
    for i in range(a.pcb_samples):
        sample = make_sample("pcb", pcfg.fov_mm * 2.0, a.seed + i)
        fr = acquire(Twin(pcfg, sample=sample, seed=a.seed + i), a.exposure_s, a.frames)
        gt = Twin(pfine, sample=sample, seed=a.seed + i).ground_truth()
        for k, v in methods(fr, f, restorers, sr).items():
            img = np.kron(v, np.ones((f, f), np.float32)) if k == "raw" else v
            pcb_scores.setdefault(k, []).append(
                (psnr(img[b:-b, b:-b], gt[b:-b, b:-b], 1.0), ssim(img[b:-b, b:-b], gt[b:-b, b:-b], 1.0)))

    # ---- report
    print(f"\nprofile {profile.name}, SR x{f}: output pixel {sr.output_pixel_size_um:.3f} um at the screen; "
          f"exposure {a.exposure_s:g} s x {a.frames} frame(s)")
    print(f"{'method':30s} {'finest resolved':>16s} {'1 um CTF (v/h)':>16s} {'1 um bars':>10s} "
          f"{'chart PSNR/SSIM':>17s} {'PCB PSNR/SSIM':>16s}")
    for k, t in table.items():
        one = [g for g in t["groups"] if g["width_um"] == 1.0]
        ctf = "/".join("-" if g["ctf"] is None else f"{g['ctf']:.2f}" for g in one)
        bars = "/".join(str(g["bars_found"]) for g in one)
        fin = "none" if t["finest_resolved_um"] is None else f"{t['finest_resolved_um']:g} um"
        cs = chart_scores.get(k)
        ps = pcb_scores.get(k)
        cs_s = f"{cs[0]:.2f}/{cs[1]:.3f}" if cs else "-"
        ps_s = f"{np.mean([s[0] for s in ps]):.2f}/{np.mean([s[1] for s in ps]):.3f}" if ps else "-"
        print(f"{k:30s} {fin:>16s} {ctf:>16s} {bars:>10s} {cs_s:>17s} {ps_s:>16s}")
    print("\nper-group CTF (v/h) and bars found:")
    widths = sorted({g["width_um"] for g in groups}, reverse=True)
    print(f"{'method':30s} " + " ".join(f"{w:>11g}" for w in widths))
    for k, t in table.items():
        cells = []
        for w in widths:
            gs = [g for g in t["groups"] if g["width_um"] == w]
            c = "/".join("-" if g["ctf"] is None else f"{g['ctf']:.2f}" for g in gs)
            cells.append(f"{c}{'*' if all(g['resolved'] for g in gs) else ' '}")
        print(f"{k:30s} " + " ".join(f"{c:>11s}" for c in cells))
    print("(* = resolved: CTF > 0.10 and 3 bars in both orientations)")
    print(f"total {time.time() - t0:.0f} s")
    if a.json:
        a.json.write_text(json.dumps({
            "profile": profile.name, "factor": f, "exposure_s": a.exposure_s, "frames": a.frames,
            "chart": table,
            "chart_psnr_ssim": {k: list(map(float, v)) for k, v in chart_scores.items()},
            "pcb_psnr_ssim": {k: [list(map(float, s)) for s in v] for k, v in pcb_scores.items()},
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
