"""`xinstrument bench`: measured quality and speed of the product's stages.

``bench restoration`` scores every restoration method a profile can run on a held-out test set
rendered by the digital twin (PCB samples with seeds the training source never uses, real
noisy thick-screen frames, flat/dark corrected, against the noise-free thin-screen truth), with
the LR input and scikit-image's Wiener / Richardson-Lucy as references measured in the same run.
``bench sr`` compares super-resolution with bicubic and deblur-only restoration on held-out twin
resolution-chart and PCB frames (finest group resolved, PSNR/SSIM on the fine grid, time).
``bench acquisition`` and ``bench storage`` run the pipeline and HDF5 write benchmarks.
"""
from __future__ import annotations

import argparse
import dataclasses
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

__all__ = ["RestorationBench", "SRBench", "format_restoration_table", "format_sr_table",
           "register", "restoration_benchmark", "sr_benchmark", "twin_test_set"]

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

    from .restoration import Restorer, available_methods, registry
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

    from .restoration.specialist import dose_refusal
    for m in wanted:
        # the test frames are at the calibration dose: a specialist trained for another dose
        # range is listed as not run, with its reason
        why = dose_refusal(profile, m, 1.0)
        if why:
            skipped.append(f"{m} ({why})")
            continue
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
            # one network call (no sampler): no steps to sweep
            step_list = [None] if registry.get(m).sampler is None else list(speed_steps)
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
        lines.append(f"not run (profile has no weights / arrays, or refuses these frames): "
                     f"{', '.join(b.skipped)}")
    return "\n".join(lines)


# --- super-resolution ----------------------------------------------------------------------------
# Held-out SR test samples use seeds from here on (training pools draw theirs from seeded
# generators; the validation pool of `xinstrument train --task sr` starts at seed + 10 000).
SR_TEST_SEED = 900_000
# CTF reference: the chart's widest groups, resolved by every method
SR_BORDER_LR_PX = 8
# The chart's finest bars (1 um, a 2 um period) lie above the Nyquist frequency of 1.3 um camera
# pixels: the twin renders them on a 4x finer grid, blurs them there and integrates each camera
# pixel, so the frames alias as a camera's do (0.33 um sub-pixels; 2x gave CTFs within 3 %).
SR_OVERSAMPLE = 4


def _sr_acquire(twin, exposure_s: float, frames: int) -> np.ndarray:
    """Dark/flat corrected frame averaged over ``frames`` exposures at the working screen's best
    focus; references averaged as often (at least 16), so their noise does not stay behind as a
    fixed pattern."""
    from .acquisition.correction import FlatFieldCorrector
    refs = max(16, frames)
    twin.set_state(stage_um=twin.best_focus_um("thick", twin.fixed_state.voltage_kv))
    twin.set_state(xray_on=False)
    darks = np.stack([twin.render(exposure_s)[0] for _ in range(refs)])
    twin.set_state(xray_on=True, sample_in=False)
    flats = np.stack([twin.render(exposure_s)[0] for _ in range(refs)])
    twin.set_state(sample_in=True)
    corr = FlatFieldCorrector.from_series(darks, flats)
    acc = np.zeros(darks.shape[1:], np.float64)
    for _ in range(frames):
        acc += corr(twin.render(exposure_s)[0])
    return (acc / frames).astype(np.float32)


def _sr_projections(cfg, sample, seed: int, exposure_s: float, frames: int,
                    angles_deg) -> np.ndarray:
    """The projections [n, rows, cols] of a tomosynthesis slice at the height of ``sample``'s one
    layer: each dark/flat corrected with references taken at its own tube angle and registered
    on that layer. The field follows the layer's projection at each angle, as a region of
    interest on a large sensor would, so the registration is exact and the projections keep
    what the screen, optics and oblique incidence leave (the best a reconstruction can do)."""
    from .sim import Twin
    from .sim.samples import translated
    height = sample.layers[0].height_mm
    probe = Twin(cfg, sample="open")
    mag0, shift0 = probe.layer_projection(height, 0.0)
    out = []
    for j, theta in enumerate(angles_deg):
        mag, shift = probe.layer_projection(height, float(theta))
        twin = Twin(cfg, sample=translated(sample, -(shift - shift0) / mag), seed=seed + 7919 * j)
        twin.set_state(theta_deg=float(theta))
        out.append(_sr_acquire(twin, exposure_s, frames))
    return np.stack(out)


# slice reconstructions of `bench sr --arc-deg` (profile [calibration] slice_reconstruction: the
# slices its SR weights were trained on)
SR_SLICE_RECONSTRUCTIONS = ("saa", "multiframe")


def _sr_slice(cfg, sample, seed: int, exposure_s: float, frames: int, angles_deg,
              reconstruction: str = "saa") -> np.ndarray:
    """Tomosynthesis slice of the projections of :func:`_sr_projections`: ``saa`` averages them
    (shift-and-add); ``multiframe`` combines them with each projection's own OTF and noise from
    the twin (:func:`~xinstrument.recon.multiframe.combine_registered`; the same noise as the
    mean, a higher transfer along the tilt)."""
    if reconstruction not in SR_SLICE_RECONSTRUCTIONS:
        raise UserError(f"slice reconstruction must be one of {', '.join(SR_SLICE_RECONSTRUCTIONS)}"
                        f", got {reconstruction!r}")
    proj = _sr_projections(cfg, sample, seed, exposure_s, frames, angles_deg)
    if reconstruction == "saa":
        return proj.astype(np.float64).mean(axis=0).astype(np.float32)
    from .recon.multiframe import combine_registered
    from .sim.slice_transfer import MULTIFRAME_PAD_PX, multiframe_weights
    # the frames average `frames` exposures: the noise of each shrinks alike, so the weights
    # of one exposure's noise model hold (up to the sensor's share)
    otfs, nps = multiframe_weights(cfg, proj.shape[1:], angles_deg, exposure_s, MULTIFRAME_PAD_PX)
    return combine_registered(proj, otfs, nps, pad_px=MULTIFRAME_PAD_PX)


def _chart_without(chart, width_um: float, flat_patch: bool):
    """``chart`` with the bars of its ``width_um`` groups removed, or (``flat_patch``) replaced
    by one patch over the group's extent of the bars' mean projected thickness: no bars to find,
    the same mean absorption."""
    import dataclasses as dc

    from .sim.samples import Rect
    layer = chart.layers[0]
    w_mm = width_um / 1000
    keep = [sh for sh in layer.shapes if not (isinstance(sh, Rect) and min(sh.w, sh.h) == w_mm)]
    bars = [sh for sh in layer.shapes if isinstance(sh, Rect) and min(sh.w, sh.h) == w_mm]
    if flat_patch:
        groups: dict[tuple, list] = {}
        for b in bars:          # the bars of one group share their long axis
            key = (round(b.cy, 9),) if b.w == w_mm else (round(b.cx, 9),)
            groups.setdefault(key + (b.w == w_mm,), []).append(b)
        for gb in groups.values():
            vertical = gb[0].w == w_mm
            xs = [b.cx for b in gb] if vertical else [b.cy for b in gb]
            extent = max(xs) - min(xs) + w_mm
            t = gb[0].thickness * len(gb) * w_mm / extent
            cx, cy = ((float(np.mean(xs)), gb[0].cy) if vertical else (gb[0].cx, float(np.mean(xs))))
            size = (extent, gb[0].h) if vertical else (gb[0].w, extent)
            keep.append(Rect(cx, cy, size[0], size[1], t))
    name = f"{chart.name} ({width_um:g} um {'flat patch' if flat_patch else 'removed'})"
    return dc.replace(chart, name=name, layers=[dc.replace(layer, shapes=keep)])


def _chart_table(images: dict[str, tuple[np.ndarray, float]], groups: list[dict]) -> dict:
    """Per image: CTF of every group against the widest groups' contrast (at the known bar and
    gap centres: :func:`bar_group_contrast_at_centres`), bar counts, and the
    finest line width such that it and every coarser width resolve in both orientations."""
    from .restoration.superres import bar_group_contrast_at_centres, measure_bar_group
    widest = max(g["width_um"] for g in groups)
    out = {}
    for name, (img, pixel_mm) in images.items():
        ref = float(np.mean([bar_group_contrast_at_centres(img, g, pixel_mm)
                             for g in groups if g["width_um"] == widest]))
        rows = [measure_bar_group(img, g, pixel_mm, reference_contrast=ref) for g in groups]
        by_width: dict[float, list] = {}
        for r in rows:
            by_width.setdefault(r.width_um, []).append(r)
        limit = None
        for w in sorted(by_width, reverse=True):
            if not all(r.resolved for r in by_width[w]):
                break
            limit = w
        out[name] = {"reference_contrast": ref, "finest_resolved_um": limit,
                     "resolved_widths_um": sorted(w for w, rs in by_width.items()
                                                  if all(r.resolved for r in rs)),
                     "groups": [dataclasses_asdict(r) for r in rows]}
    return out


def dataclasses_asdict(obj) -> dict:
    from dataclasses import asdict
    return asdict(obj)


@dataclass
class SRBench:
    profile: str
    factor: int
    device: str
    frames: int
    exposure_s: float
    chart_px: int
    pixel_um: float             # camera pixel at the object (chart line widths are at the object)
    output_pixel_um: float
    chart: dict                 # method -> _chart_table entry
    chart_scores: dict          # method -> (PSNR dB, SSIM) on the chart frame
    pcb_scores: dict            # method -> list of (PSNR dB, SSIM), one per held-out PCB frame
    seconds: dict               # method -> restoration wall time of the chart frame, s
    notes: list[str] = field(default_factory=list)
    half_arc_deg: float = 0.0   # frames are tomosynthesis slices over +-half_arc_deg (0: frames)
    n_angles: int = 1
    # chart variant -> method -> the finest group's measurements where its bars were taken out
    invented: dict = field(default_factory=dict)
    slice_reconstruction: str = ""   # slices: "saa" or "multiframe" (profile calibration)


def _sr_training_record(profile: Any, method: str) -> dict:
    """The training record (``weights/<method>.json``) of the profile's SR weights, {} if none."""
    import json
    folder = getattr(profile, "path", None)
    path = Path(folder) / "weights" / f"{method}.json" if folder else None
    try:
        return json.loads(path.read_text()) if path and path.is_file() else {}
    except (OSError, ValueError):
        return {}


def sr_benchmark(profile: Any, factor: int = 2, *, chart_px: int = 1024, pcb_px: int = 256,
                 pcb_samples: int = 4, frames: int | None = None, exposure_s: float = 1.0,
                 seed: int = SR_TEST_SEED, device: str | None = None,
                 half_arc_deg: float = 0.0, n_angles: int = 1, invented_bars: bool = False,
                 progress=None) -> SRBench:
    """Super-resolution against bicubic and deblur-only restoration on held-out twin frames.

    The twin bench has ``profile``'s screens (working screen imaged, reference screen = truth).
    Frames: resolution chart (``chart_px`` camera px) and ``pcb_samples`` PCB frames, averaged
    over ``frames`` exposures (default: the profile's ``calibration.sr_frames_averaged``, else
    1), flat/dark corrected. Every method is compared on the ``factor`` x finer grid of the
    twin's fine-grid ground truth (noise-free reference screen rendered with ``factor`` x
    smaller camera pixels): raw (its own grid for the CTF, pixel replication for PSNR/SSIM),
    bicubic, deblur-only (wiener; unet when the profile has weights) then bicubic, and
    ``sr_x<factor>``; the truth and the noise-free reference screen on the camera grid are
    measured too (the CTF ceiling and the camera pixel's own limit).

    ``half_arc_deg`` > 0: every frame is a tomosynthesis slice at the chart's height of
    ``n_angles`` projections over +-``half_arc_deg`` (:func:`_sr_slice`), each ``frames`` x
    ``exposure_s``. ``invented_bars``: the chart is also imaged with its finest groups removed
    and with their bars replaced by a flat patch, and every method is measured where the bars
    were (a method that paints bars there invents them).
    """
    import torch

    from .restoration import Restorer, psnr, ssim
    from .restoration._fourier import default_device
    from .restoration.cli import bench_for_profile, bench_kw_for_profile
    from .restoration.superres import bicubic_upsample, centred_config, fine_grid_config, sr_method
    from .sim import BENCHES, Twin, make_sample
    from .sim.bench import MICRO_CHART_WIDTHS_UM
    from .sim.samples import CHART_LINE_WIDTHS_UM, chart_groups, resolution_chart

    say = progress or (lambda msg: None)
    method = sr_method(factor)
    dev = default_device(device)
    try:
        sr = Restorer(profile, method, device=dev)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    bench = bench_for_profile(profile)
    if bench not in ("lens-yag", "micro-tomo-16x"):
        raise UserError(f"profile {profile.name!r}: the SR benchmark images the resolution chart on "
                        f"a lens-coupled bench; this profile's bench is {bench!r}")
    kw = bench_kw_for_profile(profile, bench)
    if frames is None:
        frames = int((getattr(profile, "calibration", None) or {}).get("sr_frames_averaged", 1))
    if frames < 1:
        raise UserError(f"frames averaged must be >= 1, got {frames}")
    if not (0.0 <= half_arc_deg <= 45.0) or n_angles < 1 or (half_arc_deg > 0) != (n_angles > 1):
        raise UserError(f"tomosynthesis slices need a half arc in (0, 45] deg with >= 2 angles "
                        f"(or 0 deg and 1 angle for plain frames), got +-{half_arc_deg:g} deg and "
                        f"{n_angles} angle(s)")
    angles = np.linspace(-half_arc_deg, half_arc_deg, n_angles) if n_angles > 1 else np.zeros(1)
    # slices are reconstructed as the profile's SR weights expect them
    recon = str((getattr(profile, "calibration", None) or {}).get("slice_reconstruction", "saa"))
    if recon not in SR_SLICE_RECONSTRUCTIONS:
        raise UserError(f"profile {profile.name!r}: [calibration] slice_reconstruction must be one "
                        f"of {', '.join(SR_SLICE_RECONSTRUCTIONS)}, got {recon!r}")
    recon = recon if n_angles > 1 else ""

    def acquire(cfg_, sample, seed_):
        if n_angles == 1:
            return _sr_acquire(Twin(cfg_, sample=sample, seed=seed_), exposure_s, frames)
        return _sr_slice(cfg_, sample, seed_, exposure_s, frames, angles, recon)
    deblur = {"wiener": Restorer(profile, "wiener", device=dev)}
    if "unet" in (getattr(profile, "weights", None) or {}):
        deblur["unet"] = Restorer(profile, "unet", device=dev)
    f = factor

    def bicubic(x):
        return bicubic_upsample(x, f)

    fns = {"bicubic": bicubic}
    for name, r in deblur.items():
        fns[f"{name}+bicubic"] = (lambda r: lambda x: bicubic_upsample(r.restore(x), f))(r)
    fns[method] = sr.restore
    seconds: dict[str, float] = {}

    def run_all(frame: np.ndarray, timed: bool) -> dict[str, np.ndarray]:
        out = {"raw": frame}
        for name, fn in fns.items():
            fn(frame[:64, :64])                      # warm-up: plans, caches, allocations
            t0 = time.perf_counter()
            out[name] = np.asarray(fn(frame), np.float32)
            if timed:
                seconds[name] = time.perf_counter() - t0
        return out

    cfg = centred_config(BENCHES[bench](sensor_px=chart_px, oversample=SR_OVERSAMPLE, **kw))
    fine = fine_grid_config(cfg, f)
    # the micro bench's chart: the groups the literature reports (3, 2, 1.5, 1 um)
    widths = {"micro-tomo-16x": MICRO_CHART_WIDTHS_UM}.get(bench, CHART_LINE_WIDTHS_UM)
    chart = resolution_chart(cfg.fov_mm, widths)
    groups = chart_groups(cfg.fov_mm, widths)
    say(f"chart: {chart_px} px, {frames} frame(s) averaged"
        + (f", {recon} slices of {n_angles} projections over +-{half_arc_deg:g} deg"
           if n_angles > 1 else ""))
    twin = Twin(cfg, sample=chart, seed=seed)
    # Wiener's noise model at the dose of these frames: quanta of the flat over the profile's
    # NNPS level, times the frames averaged (256-frame averages hold 1/256 of one frame's noise)
    nnps_level = getattr(profile, "nnps_mean_signal", None)
    if nnps_level:
        open_beam = dataclasses.replace(twin.fixed_state, sample_in=False, xray_on=True)
        quanta = float(twin.expected_quanta("thick", open_beam, exposure_s).mean())
        deblur["wiener"].options = {"dose_ratio": n_angles * frames * quanta / float(nnps_level)}
        say(f"wiener dose ratio {deblur['wiener'].options['dose_ratio']:.4g}")
    frame = acquire(cfg, chart, seed)
    truth = Twin(fine, sample=chart, seed=seed).ground_truth()
    ref_camera = twin.ground_truth()
    say("restoring the chart")
    outs = run_all(frame, timed=True)
    px_lr, px_hr = cfg.pixel_at_object_um / 1000, fine.pixel_at_object_um / 1000
    images = {k: (v, px_lr if k == "raw" else px_hr) for k, v in outs.items()}
    images["reference screen, camera px, noise-free"] = (ref_camera, px_lr)
    images["truth (fine grid)"] = (truth, px_hr)
    table = _chart_table(images, groups)
    b = SR_BORDER_LR_PX * f

    def scores(outputs: dict, gt: np.ndarray) -> dict:
        res = {}
        for k, v in outputs.items():
            img = np.kron(v, np.ones((f, f), np.float32)) if k == "raw" else v
            res[k] = (float(psnr(img[b:-b, b:-b], gt[b:-b, b:-b], 1.0)),
                      float(ssim(img[b:-b, b:-b], gt[b:-b, b:-b], 1.0)))
        return res

    chart_scores = scores(outs, truth)
    pcfg = centred_config(BENCHES[bench](sensor_px=pcb_px, oversample=SR_OVERSAMPLE, **kw))
    pfine = fine_grid_config(pcfg, f)
    pcb_scores: dict[str, list] = {}
    for i in range(pcb_samples):
        say(f"PCB frame {i + 1}/{pcb_samples}")
        sample = make_sample("pcb", pcfg.fov_mm * 2.0, seed + 1 + i)
        if n_angles > 1:       # the slice of the top copper layer (one layer at its height)
            top = max(sample.layers, key=lambda layer: layer.height_mm)
            sample = dataclasses.replace(sample, layers=[top])
        fr = acquire(pcfg, sample, seed + 1 + i)
        gt = Twin(pfine, sample=sample, seed=seed + 1 + i).ground_truth()
        for k, v in scores(run_all(fr, timed=False), gt).items():
            pcb_scores.setdefault(k, []).append(v)
    invented: dict[str, dict] = {}
    if invented_bars:
        finest = min(widths)
        for flat in (False, True):
            variant = _chart_without(chart, finest, flat)
            say(f"chart: {variant.name}")
            outs_v = run_all(acquire(cfg, variant, seed + 100 + int(flat)), timed=False)
            imgs_v = {k: (v, px_lr if k == "raw" else px_hr) for k, v in outs_v.items()}
            imgs_v["truth (fine grid)"] = (Twin(fine, sample=variant, seed=seed).ground_truth(),
                                           px_hr)
            tab_v = _chart_table(imgs_v, groups)
            invented[variant.name] = {
                k: [g for g in t["groups"] if g["width_um"] == finest] for k, t in tab_v.items()}
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    notes = []
    trained = _sr_training_record(profile, method)
    if trained.get("blur") == "slice":
        arc, proj = trained.get("slice_half_arc_deg"), trained.get("slice_projections")
        notes.append(f"{method} trained on the transfer of slices of {proj} projections over "
                     f"+-{arc:g} deg" + ("" if (n_angles > 1 and math.isclose(arc, half_arc_deg)
                                                 and proj == n_angles)
                                          else "; these frames are not such slices"))
    elif trained.get("blur") and n_angles > 1:
        notes.append(f"{method} trained on the {trained['blur']} blur of single frames, not on "
                     "the transfer of slices")
    if n_angles > 1:
        notes.append(f"frames are tomosynthesis slices: {n_angles} projections over "
                     f"+-{half_arc_deg:g} deg, each {frames} x {exposure_s:g} s, registered on the "
                     "chart's plane and "
                     + ("averaged (shift-and-add, slice_reconstruction saa)" if recon == "saa" else
                        "combined with each projection's OTF and noise from the twin (multi-frame "
                        "slice, slice_reconstruction multiframe)")
                     + "; vertical bars (v) are modulated along the tilt")
    return SRBench(profile.name, f, str(dev), frames, exposure_s, chart_px,
                   cfg.pixel_at_object_um, fine.pixel_at_object_um, table, chart_scores,
                   pcb_scores, seconds, notes, float(half_arc_deg), int(n_angles), invented,
                   recon)


def format_sr_table(b: SRBench) -> str:
    lines = [
        f"super-resolution benchmark: profile {b.profile}, x{b.factor}, device {b.device}",
        (f"held-out twin frames: chart {b.chart_px} camera px, {b.frames} x {b.exposure_s:g} s "
         f"averaged; pixel at the object {b.pixel_um:.3f} um -> {b.output_pixel_um:.3f} um"
         + (f"; {b.slice_reconstruction} slices of {b.n_angles} projections over "
            f"+-{b.half_arc_deg:g} deg" if b.slice_reconstruction else "")),
        ("resolved = CTF > 0.10 (vs the widest groups) and exactly 3 bars, 2 gaps, even spacing, "
         "in both orientations; finest = it and every coarser group resolve"),
        "",
        (f"{'method':<40} {'finest':>7} {'1 um CTF v/h':>13} {'1 um bars':>9} "
         f"{'chart PSNR/SSIM':>16} {'PCB PSNR/SSIM':>15} {'time s':>8} {'x bicubic':>9}"),
    ]
    t_bic = b.seconds.get("bicubic")
    for k, t in b.chart.items():
        one = [g for g in t["groups"] if g["width_um"] == 1.0]
        ctf = "/".join("-" if g["ctf"] is None else f"{g['ctf']:.2f}" for g in one)
        bars = "/".join(str(g["bars_found"]) for g in one)
        fin = "none" if t["finest_resolved_um"] is None else f"{t['finest_resolved_um']:g} um"
        cs = b.chart_scores.get(k)
        ps = b.pcb_scores.get(k)
        cs_s = f"{cs[0]:.2f}/{cs[1]:.3f}" if cs else "-"
        ps_s = (f"{np.mean([s[0] for s in ps]):.2f}/{np.mean([s[1] for s in ps]):.3f}"
                if ps else "-")
        sec = b.seconds.get(k)
        sec_s = "-" if sec is None else f"{sec:.3f}"
        ratio = "-" if sec is None or not t_bic else f"{sec / t_bic:.1f}"
        lines.append(f"{k:<40} {fin:>7} {ctf:>13} {bars:>9} {cs_s:>16} {ps_s:>15} {sec_s:>8} "
                     f"{ratio:>9}")
    widths = sorted({g["width_um"] for t in b.chart.values() for g in t["groups"]}, reverse=True)
    lines += ["", "per-group CTF v/h (* resolved):",
              f"{'method':<40} " + " ".join(f"{w:>10g}" for w in widths)]
    for k, t in b.chart.items():
        cells = []
        for w in widths:
            gs = [g for g in t["groups"] if g["width_um"] == w]
            c = "/".join("-" if g["ctf"] is None else f"{g['ctf']:.2f}" for g in gs)
            cells.append(f"{c}{'*' if all(g['resolved'] for g in gs) else ' '}")
        lines.append(f"{k:<40} " + " ".join(f"{c:>10}" for c in cells))
    for variant, per_method in b.invented.items():
        lines += ["", f"{variant}: where the bars were, bars found v/h, CTF v/h, verdict "
                  "(bars invented: 3 evenly spaced bars with CTF >= 0.05)"]
        for k, gs in per_method.items():
            bars = "/".join(str(g["bars_found"]) for g in gs)
            ctf = "/".join("-" if g["ctf"] is None else f"{g['ctf']:.3f}" for g in gs)
            invented = any(g["bar_count_ok"] and (g["ctf"] or 0.0) >= 0.05 for g in gs)
            lines.append(f"  {k:<40} {bars:>7} {ctf:>13}  "
                         f"{'BARS INVENTED' if invented else 'no bars'}")
    lines.extend(b.notes)
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------------
from .cliargs import positive_int as _positive_int
from .cliargs import size_px as _size_px
from .cliargs import torch_device as _torch_device


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
    if a.families is not None or a.operating_point:
        from . import family_bench
        return family_bench.run(a, names)
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


def _cmd_sr(a: argparse.Namespace) -> int:
    import json

    import torch

    from .profiles import find_profile
    if a.threads:
        torch.set_num_threads(a.threads)
    prof = find_profile(a.profile)
    res = sr_benchmark(prof, a.factor, chart_px=a.chart_px, pcb_px=a.pcb_px,
                       pcb_samples=a.pcb_samples, frames=a.frames, exposure_s=a.exposure_s,
                       device=a.device, half_arc_deg=a.arc_deg, n_angles=a.angles,
                       invented_bars=a.invented_bars,
                       progress=lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
    print(format_sr_table(res))
    if a.json:
        a.json.write_text(json.dumps(dataclasses_asdict(res), indent=1, default=float))
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
    r.add_argument("--device", type=_torch_device, default=None, help="cuda, cpu (default: cuda if present)")
    from .family_bench import add_arguments as _family_arguments
    _family_arguments(r)
    r.set_defaults(func=_cmd_restoration)

    sr = bs.add_parser("sr", help="super-resolution vs bicubic and deblur-only on twin charts",
                       description="Finest resolution-chart group resolved (CTF > 10 %% with a "
                       "bar-count check), PSNR/SSIM against the twin's fine-grid ground truth "
                       "and restoration time relative to bicubic, for the raw frame, bicubic, "
                       "deblur-only restoration then bicubic, and the profile's sr_x<factor> "
                       "network, on held-out twin frames.")
    sr.add_argument("--profile", default="sim-yag20-5x-sr", help="profile name or folder")
    sr.add_argument("--factor", type=_positive_int, default=2, help="SR factor (2 or 4)")
    sr.add_argument("--chart-px", type=_size_px, default=1024, help="chart frame side, camera px")
    sr.add_argument("--pcb-px", type=_size_px, default=256, help="PCB frame side, camera px")
    sr.add_argument("--pcb-samples", type=_positive_int, default=4, help="held-out PCB frames")
    sr.add_argument("--frames", type=_positive_int, default=None,
                    help="exposures averaged per frame (default: the profile's "
                    "calibration.sr_frames_averaged, else 1)")
    sr.add_argument("--exposure-s", type=float, default=1.0, help="exposure per frame, s")
    sr.add_argument("--arc-deg", type=float, default=0.0,
                    help="tomosynthesis slices over +-ARC deg of tube rotation instead of frames, "
                         "reconstructed as the profile's SR weights expect ([calibration] "
                         "slice_reconstruction: saa, the default, or multiframe)")
    sr.add_argument("--angles", type=_positive_int, default=1,
                    help="projections per slice (with --arc-deg)")
    sr.add_argument("--invented-bars", action="store_true",
                    help="also image the chart with its finest groups removed and replaced by a "
                    "flat patch, and measure every method where the bars were")
    sr.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    sr.add_argument("--device", type=_torch_device, default=None, help="cuda, cpu (default: cuda if present)")
    sr.add_argument("--json", type=Path, default=None, help="also write the full results here")
    sr.set_defaults(func=_cmd_sr)

    s = bs.add_parser("storage", help="HDF5 write speed against the raw disk")
    s.add_argument("--dir", type=Path, default=None, help="folder on the disk under test")
    s.add_argument("--shape", type=_size_px, default=2048,
                   help="frame size in pixels, square (default 2048, the sCMOS)")
    s.add_argument("--frames", type=_positive_int, default=32,
                   help="frames written per run (default 32)")
    s.add_argument("--dtype", choices=["uint16", "float32"], default="uint16",
                   help="stored sample type: raw uint16 or corrected float32 (default uint16)")
    s.set_defaults(func=_cmd_storage)

    from .bench_focus import register as _register_focus
    from .calibration.bench_metrology import register as _register_metrology
    _register_metrology(bs)
    _register_focus(bs)

    q = bs.add_parser("acquisition", help="acquisition pipeline on the simulated sCMOS")
    q.add_argument("--seconds", type=float, default=3.0, help="camera time per run")
    q.add_argument("--shape", type=_size_px, default=2048,
                   help="simulated sensor size in pixels, square (default 2048)")
    q.add_argument("--dir", type=Path, default=None,
                   help="folder for the recorded file (default: a temporary folder)")
    q.set_defaults(func=_cmd_acquisition)

    from .bench_fidelity import register_bench as register_fidelity_bench
    register_fidelity_bench(bs)
