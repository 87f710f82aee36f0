#!/usr/bin/env python3
"""Benchmark super-resolution against bicubic and deblur-only restoration on the digital twin.

    python scripts/bench_sr.py [--profile sim-yag20-5x-sr --factor 2 --json out.json]

The same as ``xinstrument bench sr`` (xinstrument/bench.py: sr_benchmark), kept for scripts that
call it by path; every option of that command is accepted.

    python scripts/bench_sr.py seeds [--seeds 900000,900200,900400 --exposure-s 3.0476
                                      --recon saa,multiframe --sr NAME=WEIGHTS.pt ...]

Tomosynthesis slices of the micro bench's chart (profile sim-micro-16x-sr) over several
held-out chart seeds (noise realisations), each slice reconstructed two ways from the same
projections: ``saa`` (shift-and-add) and ``multiframe``
(:func:`xinstrument.recon.multiframe.combine_registered`, each projection weighted by its own
OTF, with the shift-and-add slice's noise; what ``bench sr --arc-deg`` builds for a profile with
``slice_reconstruction = "multiframe"``). Every slice is measured raw, bicubic, Wiener then
bicubic, and super-resolved by the profile's ``sr_x2`` and by each ``--sr`` weights file: finest
resolved group, 1 um CTF along (v) / across (h) the tilt and bar counts, the 1 um group where the
chart has it removed or replaced by a flat patch (invented bars), PSNR / SSIM against the
fine-grid truth. Projections are cached (``--cache``), so further weights cost only inference.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from xinstrument.cli import main  # noqa: E402

# Seeds of the held-out charts: the bench's SR test block (bench.SR_TEST_SEED) onwards, spaced so
# that a seed's variants (seed + 100, + 101) and projections (+ 7919 j) do not meet another's.
DEFAULT_SEEDS = "900000,900200,900400"
BORDER_HR_PX = 16


class _WeightsFile:
    """The profile with its ``sr_x<f>`` weights taken from a file (candidate weights)."""

    def __init__(self, profile, method: str, path: Path) -> None:
        self._p, self._method, self._path = profile, method, Path(path)
        self.name = f"{profile.name}:{self._path.name}"
        self.pixel_size_um = profile.pixel_size_um
        self.weights = {method: str(path)}

    def load_weights(self, method: str) -> dict:
        import torch
        return torch.load(self._path, map_location="cpu", weights_only=True)


def acquire_projections(cfg, sample, seed: int, exposure_s: float, angles_deg) -> np.ndarray:
    """The projections ``bench._sr_slice`` reconstructs (same seeds), kept apart: [n, rows, cols]."""
    from xinstrument.bench import _sr_projections
    return _sr_projections(cfg, sample, seed, exposure_s, 1, angles_deg)


def run_seeds(a: argparse.Namespace) -> dict:
    import torch

    from xinstrument.bench import SR_OVERSAMPLE, _chart_table, _chart_without
    from xinstrument.profiles import find_profile
    from xinstrument.recon.multiframe import combine_registered
    from xinstrument.restoration import Restorer, psnr, ssim
    from xinstrument.restoration.cli import bench_kw_for_profile
    from xinstrument.restoration.superres import (
        SuperResolver,
        bicubic_upsample,
        centred_config,
        fine_grid_config,
    )
    from xinstrument.sim import BENCHES, Twin
    from xinstrument.sim.bench import MICRO_CHART_WIDTHS_UM
    from xinstrument.sim.slice_transfer import multiframe_weights
    from xinstrument.sim.samples import chart_groups, resolution_chart

    torch.set_num_threads(a.threads)
    prof = find_profile(a.profile)
    f = 2
    bench = "micro-tomo-16x"
    kw = bench_kw_for_profile(prof, bench)
    cfg = centred_config(BENCHES[bench](sensor_px=a.chart_px, oversample=SR_OVERSAMPLE, **kw))
    fine = fine_grid_config(cfg, f)
    chart = resolution_chart(cfg.fov_mm, MICRO_CHART_WIDTHS_UM)
    groups = chart_groups(cfg.fov_mm, MICRO_CHART_WIDTHS_UM)
    finest = min(MICRO_CHART_WIDTHS_UM)
    angles = np.linspace(-a.arc_deg, a.arc_deg, a.angles)
    variants = {"chart": chart, "removed": _chart_without(chart, finest, False),
                "flat": _chart_without(chart, finest, True)}
    truths = {k: Twin(fine, sample=v, seed=0).ground_truth() for k, v in variants.items()}
    px_lr, px_hr = cfg.pixel_at_object_um / 1000, fine.pixel_at_object_um / 1000

    wiener = Restorer(prof, "wiener", device="cpu")
    twin = Twin(cfg, sample=chart, seed=0)
    open_beam = dataclasses.replace(twin.fixed_state, sample_in=False, xray_on=True)
    quanta = float(twin.expected_quanta("thick", open_beam, a.exposure_s).mean())
    wiener.options = {"dose_ratio": a.angles * quanta / float(prof.nnps_mean_signal)}
    methods = {"bicubic": lambda x: bicubic_upsample(x, f),
               "wiener+bicubic": lambda x: bicubic_upsample(wiener.restore(x), f)}
    nets = {"sr_x2 (profile)": SuperResolver(prof, f, device="cpu")}
    for spec in a.sr:
        name, _, path = spec.partition("=")
        nets[name] = SuperResolver(_WeightsFile(prof, "sr_x2", Path(path)), f, device="cpu")
    for name, net in nets.items():
        methods[name] = net.restore

    pad = 16
    h_otf = nps = None
    if "multiframe" in a.recon:
        # --otf-screen-um: weights from a screen model of another thickness than the bench's
        # (how much the combination depends on knowing the projections' OTFs)
        kw_otf = dict(kw, thick_um=a.otf_screen_um) if a.otf_screen_um else kw
        cfg_otf = centred_config(BENCHES[bench](sensor_px=a.chart_px, oversample=SR_OVERSAMPLE,
                                                **kw_otf))
        h_otf, nps = multiframe_weights(cfg_otf, (a.chart_px, a.chart_px), angles, a.exposure_s,
                                        pad)
        results_note = f"multiframe OTFs of a {kw_otf['thick_um']:g} um screen"
        print(results_note, file=sys.stderr)
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    results: dict = {"profile": prof.name, "chart_px": a.chart_px, "half_arc_deg": a.arc_deg,
                     "angles": a.angles, "exposure_s_per_projection": a.exposure_s,
                     "total_exposure_s": a.exposure_s * a.angles, "seeds": {},
                     "otf_screen_um": a.otf_screen_um or kw.get("thick_um")}
    for seed in a.seeds:
        per_seed: dict = {}
        for vname, sample in variants.items():
            vseed = seed + {"chart": 0, "removed": 100, "flat": 101}[vname]
            path = cache / (f"proj_{a.chart_px}_{a.arc_deg:g}_{a.angles}_{a.exposure_s:g}_"
                            f"{vname}_{vseed}.npy")
            if path.is_file():
                proj = np.load(path)
            else:
                t0 = time.perf_counter()
                proj = acquire_projections(cfg, sample, vseed, a.exposure_s, angles)
                np.save(path, proj)
                print(f"  seed {seed} {vname}: {len(angles)} projections "
                      f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
            for recon in a.recon:
                slc = (proj.mean(axis=0).astype(np.float32) if recon == "saa"
                       else combine_registered(proj, h_otf, nps, pad_px=pad))
                outs = {"raw": slc, **{k: np.asarray(fn(slc), np.float32)
                                       for k, fn in methods.items()}}
                imgs = {k: (v, px_lr if k == "raw" else px_hr) for k, v in outs.items()}
                tab = _chart_table(imgs, groups)
                for k, v in outs.items():
                    row = per_seed.setdefault(recon, {}).setdefault(k, {})
                    one = [g for g in tab[k]["groups"] if g["width_um"] == finest]
                    if vname == "chart":
                        img = np.kron(v, np.ones((f, f), np.float32)) if k == "raw" else v
                        b = BORDER_HR_PX
                        gt = truths[vname]
                        row.update(
                            finest_um=tab[k]["finest_resolved_um"],
                            ctf_1um_vh=[g["ctf"] for g in one],
                            bars_1um_vh=[g["bars_found"] for g in one],
                            resolved_1um_vh=[g["resolved"] for g in one],
                            ctf_all={f"{g['width_um']:g}{g['orientation'][0]}": g["ctf"]
                                     for g in tab[k]["groups"]},
                            psnr_db=float(psnr(img[b:-b, b:-b], gt[b:-b, b:-b], 1.0)),
                            ssim=float(ssim(img[b:-b, b:-b], gt[b:-b, b:-b], 1.0)))
                    else:
                        row[vname] = {"ctf_vh": [g["ctf"] for g in one],
                                      "bars_vh": [g["bars_found"] for g in one],
                                      "invented": any(g["bar_count_ok"] and (g["ctf"] or 0) >= 0.05
                                                      for g in one)}
        results["seeds"][str(seed)] = per_seed
        print(format_seed(seed, per_seed), flush=True)
    return results


def _f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def format_seed(seed: int, per_seed: dict) -> str:
    lines = [f"seed {seed}: method | finest | 1 um CTF v(along)/h(across) | bars v/h | "
             "removed CTF v/h | flat CTF v/h | chart PSNR/SSIM"]
    for recon, rows in per_seed.items():
        for k, r in rows.items():
            inv = ["/".join(_f(c, "{:.3f}") for c in r[v]["ctf_vh"])
                   + (" INVENTED" if r[v]["invented"] else "") for v in ("removed", "flat")]
            lines.append(
                f"  {recon:10s} {k:26s} {_f(r['finest_um'], '{:g}'):>5} "
                f"{'/'.join(_f(c) for c in r['ctf_1um_vh']):>10} "
                f"{'/'.join(str(n) for n in r['bars_1um_vh']):>5} {inv[0]:>14} {inv[1]:>14} "
                f"{r['psnr_db']:6.2f}/{r['ssim']:.3f}")
    return "\n".join(lines)


def seeds_main(argv) -> int:
    p = argparse.ArgumentParser(prog="bench_sr.py seeds", description=__doc__.split("\n\n")[2])
    p.add_argument("--profile", default="sim-micro-16x-sr")
    p.add_argument("--seeds", default=DEFAULT_SEEDS, help="held-out chart seeds, comma separated")
    p.add_argument("--chart-px", type=int, default=512,
                   help="chart frame side, camera px (512 holds the same bar groups as 1024)")
    p.add_argument("--arc-deg", type=float, default=20.0)
    p.add_argument("--angles", type=int, default=21)
    p.add_argument("--exposure-s", type=float, default=3.0476, help="exposure per projection, s")
    p.add_argument("--recon", default="saa,multiframe", help="saa and/or multiframe")
    p.add_argument("--sr", action="append", default=[], metavar="NAME=WEIGHTS.pt",
                   help="also run these sr_x2 weights (repeatable)")
    p.add_argument("--cache", default="/tmp/xinstrument-sr-bench", help="projection cache folder")
    p.add_argument("--otf-screen-um", type=float, default=None,
                   help="multiframe: the projections' OTFs from a screen of this thickness "
                   "(default: the bench's own)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.recon = [r.strip() for r in a.recon.split(",")]
    bad = [r for r in a.recon if r not in ("saa", "multiframe")]
    if bad:
        p.error(f"--recon: unknown reconstruction(s) {bad}; choose saa, multiframe")
    res = run_seeds(a)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["seeds"]:
        sys.exit(seeds_main(sys.argv[2:]))
    sys.exit(main(["bench", "sr", *sys.argv[1:]]))
