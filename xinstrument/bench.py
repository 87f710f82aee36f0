"""`xinstrument bench`: measured quality and speed of the product's stages.

``bench restoration`` scores every restoration method a profile can run on a held-out test set
rendered by the digital twin (PCB samples with seeds the training source never uses, real
noisy thick-screen frames, flat/dark corrected, against the noise-free thin-screen truth), with
the LR input and scikit-image's Wiener / Richardson-Lucy as references measured in the same run.
``bench acquisition`` and ``bench storage`` run the pipeline and HDF5 write benchmarks.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

__all__ = ["RestorationBench", "format_restoration_table", "register", "restoration_benchmark",
           "twin_test_set"]

# Test samples use seeds from here on: the training source (xinstrument.sim.bench.HRSource) draws
# its own seeds from a seeded generator, so a fixed disjoint block keeps the two sets apart.
TEST_SEED_BASE = 10 ** 6
# Calibration exposures of the shipped profiles (scripts/make_sim_profiles.py): frames at this
# exposure have the noise level the profile's NNPS describes (dose ratio 1).
CAL_EXPOSURE_S = {"lens": 1.0, "panel": 0.05}
# Flats and darks averaged for the correction of the test frames (references are averaged in
# routine use so that they add little noise).
N_REFERENCES = 8
# High-frequency band for the PSD gain and NNPS ratio: the upper half of the spectrum, where the
# thick screen loses the detail (paper 004 evaluates its PSD gain there).
HF_BAND_CY_PER_PX = (0.25, 0.5)
# scikit-image references. Wiener balance = the regularisation of the product's MTF-ratio
# inverse (1e-2: gain capped at 5x), so both regularised inverses have the same strength;
# Richardson-Lucy uses the 8 iterations of paper 004 like the product's RL.
SKIMAGE_WIENER_BALANCE = 1e-2
RL_ITERATIONS = 8


@dataclass
class TestSet:
    """Held-out frames: ``lr`` noisy thick (transmission), ``hr`` noise-free thin truth, an edge
    frame, and flat-field noise frames (transmission ~ 1)."""

    lr: np.ndarray
    hr: np.ndarray
    edge_lr: np.ndarray
    edge_hr: np.ndarray
    flats: np.ndarray
    pixel_um: float
    bench: str


def _corrected(twin, exposure_s: float, rng: np.random.Generator):
    """Take averaged darks and flats on ``twin``; return a function rendering one flat/dark
    corrected thick frame (transmission) of the sample."""
    twin.set_state(xray_on=False)
    dark = np.mean([twin.render(exposure_s, rng=rng)[0] for _ in range(N_REFERENCES)], axis=0)
    twin.set_state(xray_on=True, sample_in=False)
    flat = np.mean([twin.render(exposure_s, rng=rng)[0] for _ in range(N_REFERENCES)], axis=0)
    twin.set_state(sample_in=True)
    gain = 1.0 / np.maximum(flat - dark, 1.0)

    def frame() -> np.ndarray:
        return ((twin.render(exposure_s, rng=rng)[0] - dark) * gain).astype(np.float32)

    return frame


def twin_test_set(bench: str, n_test: int, size_px: int, n_flats: int = 4,
                  seed: int = TEST_SEED_BASE) -> TestSet:
    """Render the held-out set on the twin: ``n_test`` PCB frames (seeds ``seed + i``), one
    slanted edge and ``n_flats`` flat-field frames, all at the profile's calibration dose."""
    from .sim import BENCHES, Twin, make_sample

    if bench not in BENCHES:
        raise UserError(f"unknown twin bench {bench!r}; choose from {', '.join(BENCHES)}")
    cfg = BENCHES[bench](sensor_px=size_px)
    exposure_s = CAL_EXPOSURE_S[cfg.kind]
    lr, hr = [], []
    for i in range(n_test):
        s = seed + i
        rng = np.random.default_rng(s)
        twin = Twin(cfg, sample="open", seed=s)
        # PCBs at 1-3x the field of view, the range of the training source (larger features).
        twin.sample = make_sample("pcb", cfg.fov_mm * float(rng.uniform(1.0, 3.0)), s)
        if cfg.kind == "lens":
            twin.set_state(stage_um=twin.best_focus_um("thick", twin.fixed_state.voltage_kv))
        frame = _corrected(twin, exposure_s, rng)
        lr.append(frame())
        hr.append(twin.ground_truth())
    rng = np.random.default_rng(seed + n_test)
    twin = Twin(cfg, sample=make_sample("edge", cfg.fov_mm, seed), seed=seed + n_test)
    if cfg.kind == "lens":
        twin.set_state(stage_um=twin.best_focus_um("thick", twin.fixed_state.voltage_kv))
    frame = _corrected(twin, exposure_s, rng)
    edge_lr, edge_hr = frame(), twin.ground_truth()
    twin.sample = make_sample("open", cfg.fov_mm, seed)
    frame = _corrected(twin, exposure_s, rng)
    flats = np.stack([frame() for _ in range(n_flats)])
    return TestSet(np.stack(lr), np.stack(hr), edge_lr, edge_hr, flats,
                   float(cfg.pixel_at_screen_um), bench)


def _mtf50(img: np.ndarray, pixel_um: float) -> float:
    from .calibration.mtf import slanted_edge_mtf
    try:
        r = slanted_edge_mtf(img, pixel_um)
    except ValueError:
        return math.nan
    return math.nan if r.mtf50_cy_per_px is None else float(r.mtf50_cy_per_px)


def _hf_nnps(frames: np.ndarray) -> float:
    """Mean NNPS (px^2) of flat frames in the high-frequency band."""
    from .restoration.metrics import radial_psd
    lo, hi = HF_BAND_CY_PER_PX
    vals = []
    for f in frames:
        m = float(f.mean())
        freq, psd = radial_psd(f)
        band = (freq >= lo) & (freq <= hi)
        vals.append(psd[band].mean() / m ** 2)
    return float(np.mean(vals))


@dataclass
class Row:
    method: str
    psnr_db: tuple[float, float] = (math.nan, math.nan)
    ssim: tuple[float, float] = (math.nan, math.nan)
    mtf50_gain: float = math.nan
    hf_psd_gain: float = math.nan
    nnps_hf_ratio: float = math.nan
    fps: dict[str, float] = field(default_factory=dict)    # label -> frames/s
    speed_note: str = ""


@dataclass
class RestorationBench:
    profile: str
    bench: str
    device: str
    n_test: int
    size_px: int
    speed_px: int
    mtf50_lr_cy_per_px: float
    mtf50_hr_cy_per_px: float
    rows: list[Row]
    skipped: list[str]


def _timed(fn, frame: np.ndarray, reps: int, warm_px: int | None = None) -> float:
    """Frames/s of ``fn(frame)``: one warm-up call (plans, caches; on a ``warm_px`` corner when
    given, enough for a network whose cost is per pixel), then ``reps`` timed calls."""
    fn(frame if warm_px is None else frame[:warm_px, :warm_px])
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(frame)
    return reps / (time.perf_counter() - t0)


def _n_tiles(px: int, tile: int, overlap: int) -> int:
    from .restoration.stage import _tile_starts
    t = min(tile, px)
    return len(_tile_starts(px, t, t - overlap if t < px else t)) ** 2


def restoration_benchmark(profile: Any, *, n_test: int = 4, size_px: int = 256,
                          speed_px: int = 2048, learned_speed_px: int | None = None,
                          speed_steps: tuple[int, ...] = (2, 10), device: str | None = None,
                          reps: int = 2, methods: list[str] | None = None,
                          progress=None) -> RestorationBench:
    """Quality and speed of every method ``profile`` can run (see module docstring).

    ``learned_speed_px``: frame side at which learned methods are timed (default ``speed_px``
    on CUDA, 512 on the CPU, where a 2048 x 2048 diffusion frame takes minutes); their 2048 x
    2048 rate is then scaled by the number of tiles and marked as an estimate.
    """
    import torch
    from skimage import restoration as skr

    from .restoration import Restorer, available_methods
    from .restoration._fourier import default_device
    from .restoration.cli import bench_for_profile
    from .restoration.metrics import high_frequency_psd_gain, psnr, ssim

    say = progress or (lambda msg: None)
    dev = default_device(device)
    bench = bench_for_profile(profile)
    usable = available_methods(profile)
    wanted = methods or usable
    skipped = [m for m in wanted if m not in usable]
    wanted = [m for m in wanted if m in usable]
    say(f"rendering {n_test} held-out {bench} frames of {size_px} px")
    ts = twin_test_set(bench, n_test, size_px)
    psf = np.asarray(profile.psf, np.float64)
    psf /= psf.sum()
    rng = np.random.default_rng(TEST_SEED_BASE - 1)
    speed_frame = (0.5 + 0.05 * rng.standard_normal((speed_px, speed_px))).astype(np.float32)
    if learned_speed_px is None:
        learned_speed_px = speed_px if dev.type == "cuda" else min(speed_px, 512)
    mtf_lr = _mtf50(ts.edge_lr, ts.pixel_um)
    mtf_hr = _mtf50(ts.edge_hr, ts.pixel_um)
    nnps_lr = _hf_nnps(ts.flats)

    def score(name: str, fn) -> Row:
        out = np.stack([fn(x) for x in ts.lr]).astype(np.float32)
        p = np.asarray(psnr(out, ts.hr, 1.0))
        s = np.asarray(ssim(out, ts.hr, 1.0))
        row = Row(name, (float(p.mean()), float(p.std())), (float(s.mean()), float(s.std())))
        if name != "LR input":
            row.mtf50_gain = _mtf50(fn(ts.edge_lr), ts.pixel_um) / mtf_lr
            row.hf_psd_gain = float(np.mean([high_frequency_psd_gain(o, x, HF_BAND_CY_PER_PX)
                                             for o, x in zip(out, ts.lr)]))
            row.nnps_hf_ratio = _hf_nnps(np.stack([fn(f) for f in ts.flats])) / nnps_lr
        else:
            row.mtf50_gain, row.hf_psd_gain, row.nnps_hf_ratio = 1.0, 1.0, 1.0
        return row

    rows = [score("LR input", lambda x: x)]
    sk_w = lambda x: skr.wiener(x.astype(np.float64), psf, SKIMAGE_WIENER_BALANCE, clip=False)
    sk_rl = lambda x: skr.richardson_lucy(x.astype(np.float64), psf, num_iter=RL_ITERATIONS,
                                          clip=False)
    for name, fn in (("skimage wiener", sk_w), ("skimage richardson_lucy", sk_rl)):
        say(f"scoring {name}")
        row = score(name, fn)
        say(f"timing {name} at {speed_px} px")
        row.fps[f"{speed_px}"] = _timed(fn, speed_frame, 1)
        rows.append(row)
    sk_fps = {"wiener": rows[1].fps[f"{speed_px}"], "inverse": rows[1].fps[f"{speed_px}"],
              "richardson_lucy": rows[2].fps[f"{speed_px}"]}

    for m in wanted:
        say(f"scoring {m}")
        r = Restorer(profile, m, device=dev, steps=RL_ITERATIONS if m == "richardson_lucy" else None)
        row = score(m, r.restore)
        if m in sk_fps:
            row.fps[f"{speed_px}"] = _timed(r.restore, speed_frame, reps)
            row.speed_note = f"x{row.fps[f'{speed_px}'] / sk_fps[m]:.1f} vs skimage " \
                             f"{'richardson_lucy' if m == 'richardson_lucy' else 'wiener'}"
        else:
            small = speed_frame[:learned_speed_px, :learned_speed_px]
            scale = _n_tiles(learned_speed_px, r.tile, r.overlap) / _n_tiles(speed_px, r.tile,
                                                                              r.overlap)
            step_list = [None] if m == "unet" else list(speed_steps)
            for k in step_list:
                rk = r if k is None else Restorer(profile, m, device=dev, steps=k)
                say(f"timing {m}" + ("" if k is None else f" at {k} steps")
                    + f" on {learned_speed_px} px")
                fps = _timed(rk.restore, small, 1, warm_px=64) * scale
                row.fps["1" if k is None else f"{k} steps"] = fps
            if learned_speed_px != speed_px:
                row.speed_note = (f"est. from {learned_speed_px} px frames x tile count")
        rows.append(row)
        del r
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return RestorationBench(profile.name, bench, str(dev), n_test, size_px, speed_px, mtf_lr,
                            mtf_hr, rows, skipped)


def format_restoration_table(b: RestorationBench) -> str:
    lines = [
        f"restoration benchmark: profile {b.profile} (twin bench {b.bench}), device {b.device}",
        (f"held-out set: {b.n_test} PCB frames {b.size_px} px (seeds >= {TEST_SEED_BASE}), "
         "slanted edge, flat-field noise frames; truth = noise-free thin screen"),
        (f"MTF50 thick input {b.mtf50_lr_cy_per_px:.3f} cy/px, thin truth "
         f"{b.mtf50_hr_cy_per_px:.3f} cy/px (gain of the truth x"
         f"{b.mtf50_hr_cy_per_px / b.mtf50_lr_cy_per_px:.2f})"),
        (f"HF band {HF_BAND_CY_PER_PX[0]}-{HF_BAND_CY_PER_PX[1]} cy/px; NNPS ratio = restored "
         "flat NNPS / input NNPS there (< 1: no noise blow-up)"),
        "",
        (f"{'method':<24} {'PSNR dB':>14} {'SSIM':>15} {'MTF50 x':>8} {'HF PSD x':>9} "
         f"{'NNPS_HF x':>10}  frames/s at {b.speed_px}x{b.speed_px}"),
    ]
    for r in b.rows:
        fps = ", ".join(f"{v:.3g}" + ("" if k == f"{b.speed_px}" or k == "1" else f" ({k})")
                        for k, v in r.fps.items()) or "-"
        if r.speed_note:
            fps += f"  [{r.speed_note}]"
        lines.append(f"{r.method:<24} {r.psnr_db[0]:6.2f} +- {r.psnr_db[1]:4.2f} "
                     f"{r.ssim[0]:6.4f} +- {r.ssim[1]:.3f} {r.mtf50_gain:8.2f} "
                     f"{r.hf_psd_gain:9.2f} {r.nnps_hf_ratio:10.2f}  {fps}")
    if b.skipped:
        lines.append(f"not run (profile has no weights / arrays): {', '.join(b.skipped)}")
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------------
from .cliargs import positive_int as _positive_int
from .cliargs import size_px as _size_px


def _steps_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected step counts like 2,10, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"step counts must be >= 1, got {text!r}")
    return vals


def _cmd_restoration(a: argparse.Namespace) -> int:
    from .profiles import find_profile
    from .restoration.stage import METHODS
    names = a.profile or ["sim-yag200-5x", "sim-gos134"]
    if a.method:
        bad = [m for m in a.method if m not in METHODS]
        if bad:
            raise UserError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    for name in names:
        prof = find_profile(name)
        res = restoration_benchmark(
            prof, n_test=a.n_test, size_px=a.size, speed_px=a.speed_px,
            learned_speed_px=a.learned_speed_px, speed_steps=a.speed_steps, device=a.device,
            methods=a.method, progress=lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
        print(format_restoration_table(res))
        print()
    return 0


def _cmd_storage(a: argparse.Namespace) -> int:
    from .storage import benchmark_write
    folder = a.dir or Path(tempfile.gettempdir())
    if not folder.is_dir():
        raise UserError(f"{folder}: benchmark folder does not exist")
    r = benchmark_write(folder, (a.shape, a.shape), a.frames, a.dtype)
    print(f"storage benchmark in {folder}: {r['n_frames']} frames {a.shape}x{a.shape} {r['dtype']}, "
          f"raw disk {r['raw_mb_s']:.0f} MB/s")
    for name, v in r["results"].items():
        mark = "  (default)" if name == r["default"] else ""
        print(f"  {name:<6} {v['mb_s']:8.0f} MB/s  x{v['ratio_to_raw']:.2f} of raw  "
              f"compression x{v['compression_ratio']:.2f}{mark}")
    return 0


def _cmd_acquisition(a: argparse.Namespace) -> int:
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_acquisition.py"
    if not script.is_file():
        raise UserError(f"{script}: acquisition benchmark script not found (source checkout needed)")
    spec = importlib.util.spec_from_file_location("xinstrument_bench_acquisition", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    argv = ["--seconds", str(a.seconds), "--shape", str(a.shape)]
    if a.dir:
        argv += ["--dir", str(a.dir)]
    return int(mod.main(argv) or 0)


def register(sub) -> None:
    p = sub.add_parser("bench", help="measured quality and speed benchmarks")
    bs = p.add_subparsers(dest="bench_command", metavar="BENCH")
    bs.required = True

    r = bs.add_parser("restoration", help="restoration methods on a held-out twin test set",
                      description="PSNR, SSIM (mean +- sd), MTF50 gain, high-frequency PSD gain, "
                      "high-frequency NNPS ratio and frames/s of every method a profile can run, "
                      "with the thick input and scikit-image wiener / richardson_lucy measured "
                      "in the same run.")
    r.add_argument("--profile", action="append", help="profile name or folder (repeatable; "
                   "default both shipped simulated profiles)")
    r.add_argument("--method", action="append", help="only these methods (repeatable)")
    r.add_argument("--n-test", type=_positive_int, default=4, help="held-out PCB frames")
    r.add_argument("--size", type=_size_px, default=256, help="test frame side, px")
    r.add_argument("--speed-px", type=_size_px, default=2048, help="frame side for speed")
    r.add_argument("--learned-speed-px", type=_size_px, default=None,
                   help="frame side at which learned methods are timed (default: --speed-px on "
                   "CUDA, 512 on the CPU, scaled to --speed-px by tile count)")
    r.add_argument("--speed-steps", type=_steps_list, default=(2, 10),
                   help="diffusion step counts to time, comma separated (default 2,10)")
    r.add_argument("--device", default=None, help="cuda, cpu (default: cuda if present)")
    r.set_defaults(func=_cmd_restoration)

    s = bs.add_parser("storage", help="HDF5 write speed against the raw disk")
    s.add_argument("--dir", type=Path, default=None, help="folder on the disk under test")
    s.add_argument("--shape", type=_size_px, default=2048)
    s.add_argument("--frames", type=_positive_int, default=32)
    s.add_argument("--dtype", choices=["uint16", "float32"], default="uint16")
    s.set_defaults(func=_cmd_storage)

    q = bs.add_parser("acquisition", help="acquisition pipeline on the simulated sCMOS")
    q.add_argument("--seconds", type=float, default=3.0, help="camera time per run")
    q.add_argument("--shape", type=_size_px, default=2048)
    q.add_argument("--dir", type=Path, default=None)
    q.set_defaults(func=_cmd_acquisition)
