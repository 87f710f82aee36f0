"""``xinstrument bench focus``: which sharpness metric finds the twin's focus, measured.

For each screen of the lens-coupled bench and each sample (the pcb and chart samples and every
procedural family of xinstrument.sim.families), the stage is stepped through the twin's best
focus (the position maximising the integral of MTF^2 f df, what a power-spectrum metric sees on a
structure-rich sample) on noise-free frames; each metric's optimum is reported as an offset from
that best focus. Then the default metric runs real focus scans (noisy frames, flat-field
corrected, 1 um steps, Gaussian peak fit) and the result is compared with the same optimum.
A contact-coupled panel has no focus axis: the panel bench is reported as such.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from .acquisition.focus import DEFAULT_METRIC, METRICS, FocusError, fit_peak, focus_scan

SPAN_UM = 8.0       # noise-free sweep: best focus +- SPAN_UM
SWEEP_STEP_UM = 0.25
TARGET_UM = 0.5     # a focus scan with the default metric lands within this of the optimum


def _samples(cfg, seed: int):
    from .sim.families import FAMILIES, family_sample
    from .sim.samples import make_sample
    out = [("pcb (samples)", make_sample("pcb", cfg.fov_mm, seed)),
           ("chart (samples)", make_sample("chart", cfg.fov_mm, seed))]
    out += [(f, family_sample(f, cfg.fov_mm, cfg.pixel_at_object_um / 1000, seed)) for f in FAMILIES]
    return out


def _peak(stages: np.ndarray, values: np.ndarray) -> float:
    i = int(np.argmax(values))
    if i in (0, len(values) - 1):
        return float(stages[i])
    y0, y1, y2 = values[i - 1:i + 2]
    d = y0 - 2 * y1 + y2
    return float(stages[i] + 0.5 * (stages[1] - stages[0]) * (y0 - y2) / d) if d < 0 else float(stages[i])


def _predicted_sd(steps: np.ndarray, noise_free: np.ndarray, step_sd: np.ndarray) -> float:
    """Standard deviation of the Gaussian fit's centre expected from the curve's shape (the fit
    of the noise-free curve: width, height) and each step's metric sd: the Cramer-Rao form
    sqrt((J^T W J)^-1) at the noise-free fit, J the model's Jacobian over the fit window,
    W = 1 / sd^2. Independent of one scan's noise, so it says what a dose can do."""
    centre, p = fit_peak(steps, noise_free)
    if p.get("model") != "gaussian":
        return float("nan")
    w = (steps >= p["window_lo_um"] - 1e-9) & (steps <= p["window_hi_um"] + 1e-9)
    z, sd = steps[w], step_sd[w]
    amp, sig = p["amplitude"], p["sigma_um"]
    g = np.exp(-0.5 * ((z - centre) / sig) ** 2)
    jac = np.column_stack([g, amp * g * (z - centre) / sig ** 2,
                           amp * g * (z - centre) ** 2 / sig ** 3, np.ones_like(z)])
    info = jac.T @ (jac / sd[:, None] ** 2)
    try:
        return float(np.sqrt(np.linalg.inv(info)[1, 1]))
    except np.linalg.LinAlgError:
        return float("inf")


class _TwinAxis:
    def __init__(self, twin) -> None:
        self.twin = twin

    @property
    def position_um(self) -> float:
        return float(self.twin.fixed_state.stage_um)

    def move_to(self, position_um: float, wait: bool = True) -> None:
        self.twin.set_state(stage_um=float(position_um))


def _acquirer(twin, which: str, exposure_s: float, rng: np.random.Generator):
    """acquire(n): two flat-field corrected half-averages of n twin frames (debiased metrics)."""
    twin.set_state(xray_on=False)
    dark = np.mean([twin.render(exposure_s, which=which, rng=rng)[0] for _ in range(4)], axis=0)
    twin.set_state(xray_on=True, sample_in=False)
    flat = np.mean([twin.render(exposure_s, which=which, rng=rng)[0] for _ in range(16)], axis=0) - dark
    twin.set_state(sample_in=True)
    gain = flat.mean() / np.maximum(flat, 1e-6)

    def acquire(n: int) -> np.ndarray:
        frames = [(twin.render(exposure_s, which=which, rng=rng)[0] - dark) * gain for _ in range(n)]
        return np.stack([np.mean(frames[k::2], axis=0) for k in (0, 1)])

    return acquire


def run(sensor_px: int = 128, seed: int = 3, frames_per_step: int = 4, scans: bool = True,
        exposure_s: float = 1.0, repeats: int = 1) -> int:
    from .sim import Twin, lens_bench, panel_bench

    t0 = time.monotonic()
    cfg = lens_bench(sensor_px=sensor_px)
    samples = _samples(cfg, seed)
    twin = Twin(cfg, sample=samples[0][1], seed=seed)
    names = list(METRICS)
    print(f"focus metrics on the twin (lens-yag, {sensor_px} px, seed {seed}); offsets of each "
          "metric's optimum from the twin's best focus, noise-free frames")
    worst: dict[str, dict[str, float]] = {}
    own: dict[tuple[str, str], float] = {}   # default metric's noise-free optimum
    for which in ("thick", "thin"):
        best = twin.best_focus_um(which)
        stages = np.arange(best - SPAN_UM, best + SPAN_UM + 1e-9, SWEEP_STEP_UM)
        print(f"\n{which} screen ({cfg.screen(which).thickness_um:g} um): best focus {best:.2f} um")
        print(f"  {'sample':18s}" + "".join(f"{n:>21s}" for n in names))
        worst[which] = {n: 0.0 for n in names}
        for label, smp in samples:
            twin.sample = smp
            imgs = [twin.noise_free_transmission(which, stage_um=float(z)) for z in stages]
            offs = []
            for n in names:
                vals = np.array([METRICS[n](im) for im in imgs])
                off = _peak(stages, vals) - best
                edge = abs(off) >= SPAN_UM - 1e-6
                offs.append(f"{'>' if edge else ''}{off:+.2f} um")
                if n == DEFAULT_METRIC:
                    own[(which, label)] = best + off
                worst[which][n] = max(worst[which][n], abs(off))
            print(f"  {label:18s}" + "".join(f"{o:>21s}" for o in offs))
        print(f"  {'max |offset|':18s}" + "".join(f"{worst[which][n]:>18.2f} um" for n in names))
    print(f"\ndefault metric: {DEFAULT_METRIC} (the smallest max |offset| on the thick screen)")

    if scans:
        print(f"\nfocus scans with {DEFAULT_METRIC}: noisy frames ({frames_per_step} x {exposure_s:g} s "
              f"per step, flat-field corrected), 1 um steps over best focus +-{SPAN_UM:g} um, Gaussian "
              f"fit weighted by each step's metric sd, {repeats} scan(s) per case")
        print("  found: the scan's optimum - the metric's noise-free optimum (worst of the repeats);"
              " 2 sd: the scan's own uncertainty (2 x the weighted fit's sd, median of the repeats); "
              "bias: the same fit on the noise-free curve at the scan's steps (the curve's "
              "asymmetry); rise/noise: the metric's drop 3 um off the optimum over one step's metric "
              "sd; 2 sd pred: expected from the noise-free curve's shape and the measured step sd; "
              f"frames: frames per step for |bias| + 2 sd pred <= {TARGET_UM} um (sd ~ 1/sqrt(frames)),"
              " '-' where the bias alone exceeds it")
        print(f"  {'sample':18s}{'screen':>7s}{'found':>9s}{'2 sd':>10s}{'bias':>8s}{'rise/noise':>11s}"
              f"{'2 sd pred':>11s}{'frames':>9s}{'within':>8s}{'warned':>8s}")
        misses = misses_best = unwarned = 0
        stats: dict[str, list[tuple[float, float, float, float]]] = {"thick": [], "thin": []}
        needs: dict[str, list[tuple[str, float]]] = {"thick": [], "thin": []}
        for which in ("thick", "thin"):
            best = twin.best_focus_um(which)
            steps = np.arange(best - SPAN_UM, best + SPAN_UM + 1e-9, 1.0)
            for label, smp in samples:
                twin.sample = smp
                opt = own[(which, label)]
                nf = np.array([METRICS[DEFAULT_METRIC](twin.noise_free_transmission(which, stage_um=float(z)))
                               for z in steps])
                bias = fit_peak(steps, nf)[0] - opt
                errs, sds, step_sd, warned = [], [], [], False
                for rep in range(repeats):
                    twin.set_state(stage_um=best - SPAN_UM)
                    rng = np.random.default_rng(seed + 17 + 1000 * rep)
                    acquire = _acquirer(twin, which, exposure_s, rng)
                    curve = focus_scan(_TwinAxis(twin), acquire, best - SPAN_UM, best + SPAN_UM, 1.0,
                                       frames_per_step, DEFAULT_METRIC, tolerance_um=TARGET_UM)
                    errs.append(curve.best_position_um - opt)
                    sds.append(curve.best_position_sd_um)
                    step_sd.append(curve.metric_sd)
                    warned |= bool(curve.warnings)
                    misses_best += abs(curve.best_position_um - best) > TARGET_UM
                err = max(errs, key=abs)
                sd = float(np.nanmedian(sds))
                noise = np.median(np.array(step_sd), axis=0)
                pred = _predicted_sd(steps, nf, noise)
                for e, s_fit in zip(errs, sds):
                    stats[which].append((e, s_fit, bias, pred))
                drop = float(nf.max() - np.interp(opt + 3.0, steps, nf))
                rise = drop / float(np.median(noise))
                room = TARGET_UM - abs(bias)
                need = frames_per_step * (2 * pred / room) ** 2 if room > 0 else np.inf
                needs[which].append((label, need))
                ok = all(abs(e) <= TARGET_UM for e in errs)
                misses += sum(abs(e) > TARGET_UM for e in errs)
                unwarned += (not ok) and not warned

                def um(x: float) -> str:
                    return f"{x:.2f}um" if x < 100 else ">100um"
                need_txt = "-" if not np.isfinite(need) else (f"{need:.0f}" if need < 1e5 else ">1e5")
                print(f"  {label:18s}{which:>7s}{err:>+7.2f}um{um(2 * sd):>10s}{bias:>+6.2f}um"
                      f"{rise:>11.2f}{um(2 * pred):>11s}{need_txt:>9s}{'yes' if ok else 'NO':>8s}"
                      f"{'yes' if warned else '':>8s}")
        n = repeats * 2 * len(samples)
        print(f"  {misses} of {n} scans outside +-{TARGET_UM} um of the metric's noise-free optimum "
              f"({unwarned} cases missed without a warning), {misses_best} outside +-{TARGET_UM} um "
              "of the best focus")
        for which, st in stats.items():
            e, s_fit, b, pred = (np.array([x[k] for x in st]) for k in range(4))
            fin = np.isfinite(pred) & (pred > 0) & (pred < SPAN_UM)
            z_pred = (e[fin] - b[fin]) / pred[fin]
            fit_ok = np.isfinite(s_fit) & (s_fit > 0) & (s_fit < SPAN_UM)
            z_fit = (e[fit_ok] - b[fit_ok]) / s_fit[fit_ok]
            need = np.array([x[1] for x in needs[which]])
            worst = max(needs[which], key=lambda x: x[1])
            print(f"  {which}: rms error {np.sqrt(np.mean(e ** 2)):.2f} um; (error - bias) / sd, rms "
                  f"(1 where the sd is right): {np.sqrt(np.mean(z_pred ** 2)):.2f} for the predicted sd "
                  f"({int(fin.sum())} scans), {np.sqrt(np.mean(z_fit ** 2)):.2f} for the scan's own "
                  f"({int(fit_ok.sum())} scans)")
            print(f"  {which}: frames per step for +-{TARGET_UM} um at {exposure_s:g} s each: median "
                  f"{np.median(need):.0f}, worst " + ("unreachable (the fit's bias)" if not np.isfinite(worst[1])
                                                     else f"{worst[1]:.0f}") + f" ({worst[0]})")
    try:
        Twin(panel_bench(sensor_px=64), sample="pcb").best_focus_um("thick")
    except ValueError as exc:
        print(f"\npanel-gos: {exc} (nothing to scan)")
    print(f"\n{time.monotonic() - t0:.0f} s")
    return 0


def _cmd(a: argparse.Namespace) -> int:
    try:
        return run(a.sensor_px, a.seed, a.frames_per_step, not a.no_scans, a.exposure_s, a.repeats)
    except FocusError as exc:
        raise SystemExit(f"xinstrument bench focus: {exc}") from None


def register(bench_subparsers) -> None:
    from .cliargs import positive_int
    f = bench_subparsers.add_parser(
        "focus", help="focus metrics against the twin's best focus, every sample family",
        description="Offsets of each sharpness metric's optimum from the twin's best focus on "
        "both screens of the lens bench and every sample family (noise-free), then focus scans "
        "with the default metric on noisy frames.")
    f.add_argument("--sensor-px", type=positive_int, default=128, help="twin sensor side (default 128)")
    f.add_argument("--seed", type=int, default=3, help="sample seed (default 3)")
    f.add_argument("--frames-per-step", type=positive_int, default=4,
                   help="frames per focus step in the scans (default 4)")
    f.add_argument("--exposure-s", type=float, default=1.0, help="exposure per frame (default 1 s)")
    f.add_argument("--repeats", type=positive_int, default=1,
                   help="noisy scans per screen and sample, each with its own noise (default 1)")
    f.add_argument("--no-scans", action="store_true", help="the noise-free table only")
    f.set_defaults(func=_cmd)
