"""Per-family restoration benchmark: every method on training and held-out sample families.

For each profile the twin renders noise-free thin-screen truths of every sample family (seeds
from :data:`xinstrument.sim.families.EVAL_SEED_BASE`, a block no training source draws from) and
the profile's own forward model makes the thick measurements (MTF-ratio blur + NNPS-shaped
quantum noise at the chosen dose), as a user would test a restorer with the profile.
Per family and method: PSNR, SSIM, high-frequency PSD gain (restored / input, 0.25-0.5 cy/px;
the truth's own gain is its reference). Per method: MTF50 gain on a slanted edge, HF NNPS ratio of
restored flat fields (restored / input), the largest periodic peak at 2, 4, 8, 16 px periods over
the local spectral floor in restored flats, and the fidelity guard's reduced chi-square with no
tolerance. ``operating_point`` sets the dose so that the input SSIM on the PCB family is about
0.75 (the operating point of shared/papers/000). Speed (:func:`speed_table`): frames/s at
2048 x 2048 for each method with Wiener and scikit-image measured in the same run.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FamilyBench", "axis_anisotropy", "family_benchmark", "format_family_table", "operating_point_dose",
           "periodic_peak_ratio", "restoration_bounds", "speed_table"]

HF_BAND = (0.25, 0.5)
PERIODS_PX = (2, 4, 8, 16)
OPERATING_SSIM = 0.75
FLAT_TRANSMISSION = 0.8


def periodic_peak_ratio(frames: np.ndarray, periods_px=PERIODS_PX, half_width: int = 6) -> float:
    """Largest ratio, over periods p and both axes, of the row/column-averaged power at
    frequency 1/p to the median power of its neighbours (+-``half_width`` bins, the peak's own
    bin +-1 excluded). Flat fields of a restorer that prints a grid show ratios >> 1."""
    worst = 0.0
    for f in np.asarray(frames, np.float64).reshape(-1, *np.shape(frames)[-2:]):
        f = f - f.mean()
        for axis in (0, 1):
            spec = np.abs(np.fft.rfft(f, axis=1 - axis)) ** 2
            p = spec.mean(axis=axis)
            n = f.shape[1 - axis]
            for per in periods_px:
                k = round(n / per)
                if k >= p.size or k < 2:
                    continue
                lo, hi = max(1, k - half_width), min(p.size, k + half_width + 1)
                neigh = np.r_[p[lo:max(lo, k - 1)], p[min(hi, k + 2):hi]]
                if neigh.size == 0:
                    continue
                worst = max(worst, float(p[k] / max(np.median(neigh), 1e-30)))
    return worst


def axis_anisotropy(frames: np.ndarray, band_cy_per_px=(0.1, 0.45), half_angle_deg=10.0) -> float:
    """Mean power within +-``half_angle_deg`` of the horizontal and vertical frequency axes over
    that within the same angle of the diagonals, in ``band_cy_per_px``, of Hann-windowed frames.
    Isotropic noise gives 1; a restorer that turns noise into horizontal / vertical streaks (a
    cross-hatch) gives > 1."""
    frames = np.asarray(frames, np.float64).reshape(-1, *np.shape(frames)[-2:])
    h, w = frames.shape[-2:]
    win = np.hanning(h)[:, None] * np.hanning(w)[None, :]
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    r = np.hypot(fx, fy)
    ang = np.degrees(np.arctan2(np.abs(fy), np.abs(fx)))          # 0..90
    band = (r >= band_cy_per_px[0]) & (r <= band_cy_per_px[1])
    axis = band & ((ang <= half_angle_deg) | (ang >= 90 - half_angle_deg))
    diag = band & (np.abs(ang - 45) <= half_angle_deg)
    p = np.mean([np.abs(np.fft.fft2((f - f.mean()) * win)) ** 2 for f in frames], axis=0)
    return float(p[axis].mean() / p[diag].mean())


@dataclass
class MethodScores:
    per_family: dict[str, dict[str, float]] = field(default_factory=dict)
    mtf50_gain: float = math.nan
    nnps_hf_ratio: float = math.nan
    periodic_peak: float = math.nan
    anisotropy: float = math.nan
    reduced_chi2: float = math.nan
    seconds_per_frame: float = math.nan
    error: str = ""


@dataclass
class FamilyBench:
    profile: str
    bench: str
    dose_ratio: float
    size_px: int
    n_per_family: int
    families: list[str]
    held_out: list[str]
    methods: dict[str, MethodScores]
    truth_hf_gain: dict[str, float]
    input_ssim_pcb: float = math.nan
    notes: list[str] = field(default_factory=list)
    bounds: dict[str, dict[str, tuple[float, float, float]]] = field(default_factory=dict)


def _methods_for(profile: Any, phys: Any, dose: float, wanted: list[str] | None,
                 specialist_dose: float | None = None
                 ) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    from skimage import restoration as skr

    from .restoration import Restorer, available_methods, wiener
    from .restoration.dc_diffusion import dc_diffusion_restore
    from .restoration.pnp import pnp_restore

    f, r, n = profile.frequency_cy_per_px, profile.mtf_ratio, profile.nnps_lr
    psf = np.asarray(profile.psf, np.float64)
    psf = psf / psf.sum()
    out: dict[str, Callable] = {
        "LR input": lambda x: x,
        "skimage wiener": lambda x: skr.wiener(x.astype(np.float64), psf, 1e-2, clip=False),
        "wiener": lambda x: wiener(x, f, r, n, dose_ratio=dose),
        "pnp_hqs": lambda x: pnp_restore(x, profile, dose_ratio=dose),
        "dc_diffusion": lambda x: dc_diffusion_restore(x, profile, dose_ratio=dose),
    }
    if "specialist_pcb" in available_methods(profile):
        from .restoration.specialist import specialist_restore
        d_spec = dose if specialist_dose is None else specialist_dose
        out["specialist_pcb"] = lambda x: specialist_restore(x, profile, dose_ratio=d_spec)
    for m in available_methods(profile):
        # the physics-in-the-loop methods above are told the frames' dose; a Restorer here
        # would restore them at the profile's calibration dose
        if m in out or m == "inverse" or m.startswith("sr_"):
            continue
        kw = {"steps": 8} if m == "richardson_lucy" else {}
        rest = Restorer(profile, m, device="cpu", **kw)
        out[m] = rest.restore
    if wanted:
        keep = {"LR input", "wiener", *wanted}
        out = {k: v for k, v in out.items() if k in keep}
    return out


def operating_point_dose(phys: Any, bench: str, size_px: int = 128, n: int = 3,
                         target_ssim: float = OPERATING_SSIM) -> tuple[float, float]:
    """Dose ratio at which the thick input's SSIM on the PCB family is ``target_ssim``
    (bisection in log dose over 1e-3..1e4); returns (dose, SSIM reached). When blur alone keeps
    the SSIM below the target, the highest dose is returned with its SSIM."""
    import torch

    from .restoration.metrics import ssim
    from .sim.families import EVAL_SEED_BASE, render_family

    truth = np.stack([render_family("pcb", size_px, EVAL_SEED_BASE + 500 + i, bench=bench).truth
                      for i in range(n)])
    t = torch.from_numpy(truth)

    def s_at(dose: float) -> float:
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            lr = phys.degrade(t, g, dose).numpy()
        return float(np.mean(ssim(lr, truth, 1.0)))

    lo, hi = math.log(1e-3), math.log(1e4)
    if s_at(math.exp(hi)) < target_ssim:
        return math.exp(hi), s_at(math.exp(hi))
    for _ in range(18):
        mid = 0.5 * (lo + hi)
        if s_at(math.exp(mid)) < target_ssim:
            lo = mid
        else:
            hi = mid
    d = math.exp(0.5 * (lo + hi))
    return d, s_at(d)


# Weights of the total-variation references, in units of the noise level the step is told; each
# bound row reports the best of them against the truth (an oracle choice, as a bound must be).
TV_WEIGHTS = (0.5, 1.0, 1.5, 2.0)
TV_HQS_ITERATIONS = 8


def _tv(frames: np.ndarray, weight: float | np.ndarray) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    w = np.broadcast_to(np.asarray(weight, np.float64), (len(frames),))
    return np.stack([denoise_tv_chambolle(f.astype(np.float64), weight=float(wi))
                     for f, wi in zip(frames, w)]).astype(np.float32)


def restoration_bounds(phys: Any, lr: np.ndarray, hr: np.ndarray, dose: float,
                       pad_px: int = 32) -> dict[str, tuple[float, float, float]]:
    """References on ``lr`` (thick frames of the truths ``hr`` at ``dose``), as
    (PSNR dB, SSIM, high-frequency PSD gain as a fraction of the truth's) against the truth;
    references that know the truth, not methods:

    - the input without its noise (blur only) and the truth with the input's noise (no blur).
      The second is the denoising problem; with the MTF ratio R <= 1 it is at least as
      informative as the measurement (blurring it by R and adding noise of power N (1 - R^2)
      gives frames distributed as the measurement), so no restorer of ``lr`` should beat the
      best denoiser of it;
    - the linear oracle: the Wiener filter built with each frame's own truth periodogram, the
      least-squares optimum of all linear shift-invariant restorations of that frame;
    - total-variation HQS: the product's closed-form data step with a total-variation (ROF,
      Chambolle) prior in place of the learned denoiser, a piecewise-constant prior suited to
      circuit boards; and total variation on the denoising problem. Both take the best of
      :data:`TV_WEIGHTS` against the truth.
    """
    import torch

    from .restoration._fourier import crop_frames, pad_frames
    from .restoration.metrics import high_frequency_psd_gain, psnr, ssim
    from .restoration.pnp import PNP_DEFAULTS, DataStep, noise_sigma

    def hf_gain(out: np.ndarray) -> float:
        return float(np.mean([high_frequency_psd_gain(o, i, HF_BAND) for o, i in zip(out, lr)]))

    truth_hf = hf_gain(np.asarray(hr, np.float32))

    def score(out: np.ndarray) -> tuple[float, float, float]:
        return (float(np.mean(psnr(out, hr, 1.0))), float(np.mean(ssim(out, hr, 1.0))),
                hf_gain(out) / truth_hf)

    x = torch.from_numpy(np.asarray(lr, np.float32))
    t = torch.from_numpy(np.asarray(hr, np.float32))
    shape = tuple(x.shape[-2:])
    gen = torch.Generator().manual_seed(13)
    with torch.no_grad():
        blurred = phys.blur(t)
        noise = phys.colored_noise(tuple(t.shape), gen)
        denoising = (t + torch.sqrt(blurred.clamp(min=0) / dose) * noise).numpy()
        yp = pad_frames(x, pad_px, fast=True)
        mean_t = x.mean(dim=(-2, -1))
        data = DataStep.build(phys, yp, mean_t, dose)
        oracle = data.empirical_wiener(pad_frames(t, pad_px, fast=True), smooth_bins=1)
        oracle = crop_frames(oracle, pad_px, shape).numpy()
        s_noise = noise_sigma(phys, mean_t, dose).numpy()
    out = {"thick input": score(np.asarray(lr, np.float32)),
           "input without noise (blur only)": score(blurred.numpy()),
           "truth with the input's noise (denoising problem)": score(denoising),
           "linear oracle (Wiener with the truth's own spectrum)": score(oracle)}
    out["total variation on the denoising problem (best weight)"] = max(
        (score(_tv(denoising, c * s_noise)) for c in TV_WEIGHTS), key=lambda r: r[1])

    lam = PNP_DEFAULTS["lam"]
    sched = np.geomspace(PNP_DEFAULTS["sigma_start"],
                         float(s_noise.mean()) * PNP_DEFAULTS["sigma_end_factor"], TV_HQS_ITERATIONS)

    def tv_hqs(c: float) -> np.ndarray:
        z = yp
        for s in sched:
            xk = data(z, float(s), lam)
            level = data.residual_sigma(torch.full((len(x),), float(s)), lam).numpy()
            z = torch.from_numpy(_tv(xk.numpy(), c * level))
        return crop_frames(z, pad_px, shape).numpy()

    out["total-variation HQS on the measurement (best weight)"] = max(
        (score(tv_hqs(c)) for c in TV_WEIGHTS), key=lambda r: r[1])
    return out


def family_benchmark(profile: Any, *, families: list[str] | None = None, n_per_family: int = 3,
                     size_px: int = 128, dose_ratio: float | None = 1.0,
                     operating_point: bool = False, methods: list[str] | None = None,
                     bench: str | None = None, bounds: bool | None = None,
                     progress=None) -> FamilyBench:
    """Score every method on every family for ``profile`` (see the module docstring).
    ``bounds`` adds :func:`restoration_bounds` on every family's frames (default: on the PCB
    family's with ``operating_point``, none without)."""
    import torch

    from .restoration.cli import bench_for_profile
    from .restoration.fidelity import FidelityGuard
    from .restoration.metrics import high_frequency_psd_gain, psnr, ssim
    from .restoration.pnp import check_physics
    from .sim.families import (
        EVAL_SEED_BASE,
        FAMILIES,
        HELD_OUT_FAMILIES,
        measurement_pairs,
    )
    from .sim.samples import slanted_edge

    say = progress or (lambda m: None)
    bench = bench or bench_for_profile(profile)
    phys = check_physics(profile, "the family benchmark")
    notes = []
    fams = list(families or FAMILIES)
    for fam in fams:
        if fam not in FAMILIES:
            raise ValueError(f"unknown sample family {fam!r}; families are {', '.join(FAMILIES)}")
    if operating_point:
        dose, s_reached = operating_point_dose(phys, bench, size_px)
        notes.append(f"operating point: dose ratio {dose:.4g} gives input SSIM {s_reached:.3f} "
                     f"on held-out PCB frames")
    else:
        dose = float(dose_ratio)
    fns = _methods_for(profile, phys, dose, methods)
    res = {m: MethodScores() for m in fns}
    guard = FidelityGuard(profile, tolerance=0.0)
    bound_rows: dict[str, dict[str, tuple[float, float]]] = {}
    truth_hf: dict[str, float] = {}
    for fam in fams:
        say(f"{profile.name}: family {fam}")
        seed = EVAL_SEED_BASE + 1000 * (FAMILIES.index(fam) + 1)
        lr, hr = measurement_pairs(phys, fam, n_per_family, size_px, seed, dose_ratio=dose,
                                   bench=bench)
        truth_hf[fam] = float(np.mean([high_frequency_psd_gain(h, x, HF_BAND)
                                       for h, x in zip(hr, lr)]))
        if bounds or (bounds is None and operating_point and fam == "pcb"):
            say(f"{profile.name}: references on {fam}")
            bound_rows[fam] = restoration_bounds(phys, lr, hr, dose)
        for m, fn in fns.items():
            sc = res[m]
            if sc.error:
                continue
            try:
                t0 = time.perf_counter()
                out = np.stack([np.asarray(fn(x), np.float32) for x in lr])
                dt = (time.perf_counter() - t0) / len(lr)
            except ValueError as exc:
                sc.error = str(exc)
                continue
            sc.seconds_per_frame = dt if math.isnan(sc.seconds_per_frame) else \
                0.5 * (sc.seconds_per_frame + dt)
            sc.per_family[fam] = {
                "psnr_db": float(np.mean(psnr(out, hr, 1.0))),
                "ssim": float(np.mean(ssim(out, hr, 1.0))),
                "hf_psd_gain": float(np.mean([high_frequency_psd_gain(o, x, HF_BAND)
                                              for o, x in zip(out, lr)])),
            }
            if m != "LR input":     # consistency with the data, family by family
                sc.per_family[fam]["reduced_chi2"] = float(np.mean(
                    [guard.check(x, o, dose_ratio=dose).reduced_chi2 for x, o in zip(lr, out)]))
    # per method: edge, flats, periodic artefacts, consistency with the data
    say(f"{profile.name}: edge, flats, fidelity")
    from .sim.families import _twin
    twin = _twin(bench, max(size_px, 96))
    twin.sample = slanted_edge()
    edge_hr = twin.ground_truth()[None]
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        edge_lr = phys.degrade(torch.from_numpy(edge_hr), g, dose).numpy()
        flats_hr = np.full((2, 2 * size_px, 2 * size_px), FLAT_TRANSMISSION, np.float32)
        flats = phys.degrade(torch.from_numpy(flats_hr), g, dose).numpy()
    from .bench import _hf_nnps, _mtf50
    pix = float(getattr(profile, "pixel_size_um", 1.0))
    mtf_in = _mtf50(edge_lr[0], pix)
    nnps_in = _hf_nnps(flats)
    pcb_lr, _ = measurement_pairs(phys, "pcb", 2, size_px, EVAL_SEED_BASE + 900, dose_ratio=dose,
                                  bench=bench)
    for m, fn in fns.items():
        sc = res[m]
        if sc.error:
            continue
        try:
            sc.mtf50_gain = _mtf50(np.asarray(fn(edge_lr[0]), np.float32), pix) / mtf_in
            rf = np.stack([np.asarray(fn(f), np.float32) for f in flats])
            sc.nnps_hf_ratio = _hf_nnps(rf) / nnps_in
            sc.periodic_peak = periodic_peak_ratio(rf)
            sc.anisotropy = axis_anisotropy(rf)
            chi = [guard.check(x, np.asarray(fn(x), np.float32), dose_ratio=dose).reduced_chi2
                   for x in pcb_lr]
            sc.reduced_chi2 = float(np.mean(chi))
        except ValueError as exc:
            sc.error = str(exc)
    input_ssim_pcb = res["LR input"].per_family.get("pcb", {}).get("ssim", math.nan)
    return FamilyBench(profile.name, bench, dose, size_px, n_per_family, fams,
                       [f for f in fams if f in HELD_OUT_FAMILIES], res, truth_hf,
                       input_ssim_pcb, notes, bound_rows)


def format_family_table(b: FamilyBench) -> str:
    from .sim.families import HELD_OUT_FAMILIES
    lines = [(f"per-family restoration: profile {b.profile} (twin bench {b.bench}), dose ratio "
              f"{b.dose_ratio:.4g}, {b.n_per_family} frames of {b.size_px} px per family "
              f"(held-out seeds); truth = noise-free thin screen"), *b.notes,
             "held-out families: " + ", ".join(b.held_out), ""]
    meths = list(b.methods)
    head = f"{'family':<16} {'metric':<8} " + " ".join(f"{m[:14]:>14}" for m in meths)
    lines.append(head)
    for fam in b.families:
        tag = fam + (" *" if fam in HELD_OUT_FAMILIES else "")
        for key, lab, fmt in (("psnr_db", "PSNR", "{:14.2f}"), ("ssim", "SSIM", "{:14.4f}"),
                              ("hf_psd_gain", "HF PSD x", "{:14.2f}"),
                              ("reduced_chi2", "chi2_red", "{:14.2f}")):
            vals = []
            for m in meths:
                v = b.methods[m].per_family.get(fam, {}).get(key)
                vals.append(fmt.format(v) if v is not None else f"{'-':>14}")
            extra = f"   truth x{b.truth_hf_gain[fam]:.2f}" if key == "hf_psd_gain" else ""
            lines.append(f"{tag if lab == 'PSNR' else '':<16} {lab:<8} " + " ".join(vals) + extra)
    lines.append("")
    for key, lab, fmt in (("mtf50_gain", "MTF50 x", "{:14.2f}"),
                          ("nnps_hf_ratio", "NNPS_HF x", "{:14.2f}"),
                          ("periodic_peak", "peak/flr", "{:14.2f}"),
                          ("anisotropy", "axis/diag", "{:14.2f}"),
                          ("reduced_chi2", "chi2_red", "{:14.3f}"),
                          ("seconds_per_frame", "s/frame", "{:14.3f}")):
        vals = [fmt.format(getattr(b.methods[m], key)) for m in meths]
        lines.append(f"{'all':<16} {lab:<8} " + " ".join(vals))
    for m in meths:
        if b.methods[m].error:
            lines.append(f"{m}: not scored: {b.methods[m].error}")
    for fam, rows in b.bounds.items():
        lines.append("")
        lines.append(f"references on the {fam} frames (they know the truth; neither methods nor "
                     "bounds: a network trained on the family, as specialist_pcb, can pass "
                     "them):")
        for k, (p_db, s_, hf) in rows.items():
            lines.append(f"  {k:<56} PSNR {p_db:6.2f}  SSIM {s_:.4f}  HF PSD {hf:.2f} of "
                         "truth's")
    lines.append("(* held out: never seen by any training run; peak/flr: largest spectral peak at "
                 "2/4/8/16 px periods over the local floor in restored flats; chi2_red: fidelity "
                 "guard's reduced chi-square against the noise, no tolerance; per family on its "
                 "frames, under all on other PCB frames)")
    return "\n".join(lines)


SPEED_REFERENCES = ("wiener", "skimage wiener")


def speed_table(profile: Any, size_px: int = 2048, methods: list[str] | None = None,
                progress=None) -> list[tuple[str, float]]:
    """Frames/s of each method on one ``size_px`` square frame on this machine, Wiener and
    scikit-image's Wiener measured in the same run (one warm-up call on a small corner)."""
    from .restoration.pnp import check_physics

    say = progress or (lambda m: None)
    phys = check_physics(profile, "the speed benchmark")
    # the references every ratio is printed against are timed whatever methods are chosen
    from .restoration import available_methods
    from .restoration.specialist import trained_dose_ratio
    # its speed does not depend on the dose; timed inside the range it was trained for
    spec_dose = (trained_dose_ratio(profile, "specialist_pcb")
                 if "specialist_pcb" in available_methods(profile) else None)
    fns = _methods_for(profile, phys, 1.0, [*methods, *SPEED_REFERENCES] if methods else None,
                       specialist_dose=spec_dose)
    fns.pop("LR input", None)
    rng = np.random.default_rng(3)
    frame = (0.6 + 0.02 * rng.standard_normal((size_px, size_px))).astype(np.float32)
    out = []
    for m, fn in fns.items():
        say(f"timing {m} at {size_px} px")
        fn(frame[:128, :128])
        t0 = time.perf_counter()
        fn(frame)
        out.append((m, 1.0 / (time.perf_counter() - t0)))
    return out


def add_arguments(r) -> None:
    """Options of ``xinstrument bench restoration`` for the per-family table and speed."""
    r.add_argument("--families", nargs="?", const="all", default=None, metavar="LIST",
                   help="per-family table (training and held-out sample families) instead of "
                   "the PCB test set; optional comma-separated families (default all)")
    r.add_argument("--per-family", type=int, default=3, help="frames per family (--families)")
    r.add_argument("--family-px", type=int, default=128, help="frame side for --families")
    r.add_argument("--dose-ratio", type=float, default=1.0,
                   help="dose of the --families frames relative to the profile's calibration")
    r.add_argument("--operating-point", action="store_true",
                   help="with --families: set the dose so that the input SSIM on the PCB family "
                   "is about 0.75")
    r.add_argument("--bounds", action="store_true", default=None,
                   help="with --families: also what each family's data allow (blur-only and "
                   "noise-only inputs, the linear oracle, total-variation references); on the "
                   "PCB family by default with --operating-point")
    r.add_argument("--speed", action="store_true",
                   help="with --families: also frames/s of every method at --speed-px")


def run(a, profile_names: list[str]) -> int:
    """``xinstrument bench restoration --families``: the per-family table for each profile."""
    import sys

    from .errors import UserError
    from .profiles import find_profile
    from .sim.families import FAMILIES

    fams = None if a.families in (None, "all") else [f.strip() for f in a.families.split(",")]
    bad = [f for f in fams or [] if f not in FAMILIES]
    if bad:
        raise UserError(f"unknown sample famil{'y' if len(bad) == 1 else 'ies'} "
                        f"{', '.join(bad)}; choose from {', '.join(FAMILIES)}")
    if not (a.dose_ratio > 0 and math.isfinite(a.dose_ratio)):
        raise UserError(f"--dose-ratio must be a finite number > 0, got {a.dose_ratio}")
    import torch

    # one thread per process: on a shared CPU more threads oversubscribe it (5x slower measured)
    if a.device in (None, "cpu") and not torch.cuda.is_available():
        torch.set_num_threads(1)
    say = lambda msg: print(f"  {msg}", file=sys.stderr, flush=True)
    for name in profile_names:
        prof = find_profile(name)
        try:
            res = family_benchmark(prof, families=fams, n_per_family=a.per_family,
                                   size_px=a.family_px, dose_ratio=a.dose_ratio,
                                   operating_point=a.operating_point, methods=a.method,
                                   bounds=a.bounds, progress=say)
        except ValueError as exc:
            raise UserError(f"profile {prof.name!r}: {exc}") from None
        print(format_family_table(res))
        if a.speed:
            rows = speed_table(prof, a.speed_px, a.method, progress=say)
            ref = dict(rows)
            print(f"\nframes/s at {a.speed_px}x{a.speed_px} on this machine (same run):")
            for m, fps in rows:
                print(f"  {m:<16} {fps:9.4f}   x{fps / ref['wiener']:.3g} of wiener, "
                      f"x{fps / ref['skimage wiener']:.3g} of skimage wiener")
        print()
    return 0
