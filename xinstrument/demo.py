"""`xinstrument demo`: the whole measurement on the simulated bench, end to end.

Warm up the tube, take darks and flats, run a coarse-then-fine focus scan (lens-coupled bench),
acquire averaged frames of a PCB through the thick scintillator, correct them, restore them with
the best method the profile offers and its fidelity policy accepts, write everything to an HDF5
file (NXtomo + Data Exchange) with a PNG figure beside it, and print a summary scored against the
twin's ground truth.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import InstrumentConfig
from .errors import UserError
from .instrument import Instrument
from .progress import ProgressBar
from .scans import PlanError
from .scans.plans import acquisition_layout

# Preference order of restoration methods for the demo, from `xinstrument bench restoration
# --families` (README, held-out sample families, SSIM): plug-and-play first (best on 3 of the 4
# held-out families of sim-yag200-5x and sim-gos134, 0.749-0.948), then the PCB-trained U-Net
# and Wiener (0.748-0.972), then the inverse. The demo takes the first one the profile can run
# and its fidelity policy accepts (a method it does not accept would be replaced on every frame);
# on a profile without the acceptance calibration, the first one it can run (the report then
# says the policy is not calibrated).
METHOD_PREFERENCE = ("pnp_hqs", "unet", "wiener", "inverse")


@dataclass
class DemoResult:
    h5_path: Path
    png_path: Path
    n_frames: int
    best_focus_um: float | None
    true_focus_um: float | None
    method: str
    ssim_input: float
    ssim_restored: float
    psnr_input: float
    psnr_restored: float
    frames_per_s: float
    restore_frames_per_s: float
    fidelity: dict | None = None     # the last frame's fidelity summary (FidelityReport.summary)
    fidelity_message: str = ""
    fell_back: int = 0               # frames the policy re-restored with its fallback
    flagged: int = 0                 # frames the policy flagged (kept, or a fallback that fails)
    fallback_method: str | None = None   # the policy's fallback (None: failing frames are kept)
    fallback_why: str = ""           # why that fallback (or none)
    method_why: str = ""             # why this method (the policy's acceptance of it)

    def fidelity_lines(self) -> list[str]:
        """The summary's fidelity lines: the policy on the method, what it did to the frames,
        and the last frame's report."""
        f = self.fidelity
        if f is None:
            return []
        out = [f"  fidelity policy  {self.method}: {self.method_why}"]
        fb = self.fallback_method or "none"
        out.append(f"  fallback         {fb} ({self.fallback_why})")
        verdict = {1: "consistent", 0: "NOT consistent", -1: "not normalised"}[f["consistent"]]
        judged = f.get("method") or self.method
        out.append(f"  fidelity guard   {judged}: {verdict}: reduced chi2 {f['reduced_chi2']:.3f} "
                   f"against the noise, {100 * f['flagged_fraction']:.1f} % of tiles flagged "
                   f"(last frame); {self.fell_back} of {self.n_frames} frames re-restored"
                   + (f" with {fb}" if self.fallback_method else " (no fallback)")
                   + f", {self.flagged} of {self.n_frames} flagged")
        if "undetermined_fraction" in f:
            out.append(f"  fidelity report  {100 * f['undetermined_fraction']:.0f} % of tiles "
                       f"undetermined by the data (more restored detail where transfer x SNR "
                       f"< 1 than the method or real samples ordinarily hold), uncertainty "
                       f"+-{f['uncertainty_mean']:.3g} (coverage {100 * f['coverage']:.0f} %); "
                       f"action: {f['action']}")
        return out


@dataclass(kw_only=True)
class DemoRecording:
    """The demo's recording as a user plan: ``n_frames`` corrected, restored and guarded frames
    through the engine into one file, with the focus curve and the twin's ground truth."""

    n_frames: int
    n_average: int
    out: Path
    curve: Any = None
    true_focus_um: float | None = None
    ground_truth: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)
    overwrite: bool = False
    kind = "demo"
    done = 0
    restore_s = 0.0

    def describe(self) -> str:
        return f"{self.n_frames} restored frames of {self.n_average}"

    def to_dict(self) -> dict:
        return {"n_frames": self.n_frames, "n_average": self.n_average, "out": str(self.out)}

    def check(self, inst: Instrument) -> None:
        if inst.references is None:
            raise PlanError("the demo records corrected frames: take references first")
        inst.check_restoration(n_average=self.n_average)

    def sink_layout(self, inst: Instrument) -> dict:
        lay = acquisition_layout(inst, correct=True, restore=True, n_average=self.n_average)
        lay["metadata"].update(self.metadata)
        return lay

    def run(self, ctx) -> list:
        ctx.frames_total = self.n_frames * self.n_average
        frames = []
        for _ in range(self.n_frames):     # one at a time: every frame gets its restoration
            frames.extend(ctx.acquire(1, n_average=self.n_average, correct=True, restore=True))
            st = ctx.instrument.last_stream_stats
            if st is not None and "restore" in st.stages:
                self.restore_s += st.stages["restore"].busy_s
            self.done = len(frames)
        return frames

    def finish_file(self, sink, frames, state: str) -> None:
        c = self.curve
        if c is not None:
            sink.write_focus_curve(c.positions_um, c.metric_values, metric=c.metric,
                                   best_position_um=c.best_position_um,
                                   attrs={"twin_true_optimum_um": float(self.true_focus_um)})
        if self.ground_truth is not None:
            sink.write_array("analysis/ground_truth", self.ground_truth,
                             {"what": "noise-free thin-screen image from the digital twin"})


def choose_method(guard: Any, methods: list[str]) -> str:
    """The demo's method: the first of :data:`METHOD_PREFERENCE` among ``methods`` (those the
    profile can run) that the fidelity policy (``guard``, a FidelityReporter) accepts; on a
    profile without the acceptance calibration, the first one it can run."""
    ranked = [m for m in METHOD_PREFERENCE if m in methods]
    if not ranked:
        raise UserError(f"the profile runs none of the demo's methods ({', '.join(METHOD_PREFERENCE)})")
    return next((m for m in ranked if guard.accepts(m)[0]), ranked[0])


def check_output_folder(out: Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"output folder {out} is not writable")
    return out


def run_demo(out: Path, sensor_px: int = 1024, n_frames: int = 3, n_average: int = 8,
             seed: int = 0, bench: str = "lens-yag", exposure_s: float | None = None,
             profile: str | None = None, method: str | None = None,
             print_fn=print) -> DemoResult:
    from .restoration import available_methods, psnr, ssim

    if not 64 <= sensor_px <= 4096:
        raise UserError(f"--sensor-px must be between 64 and 4096, got {sensor_px}")
    if n_frames < 1 or n_average < 1:
        raise UserError("--frames and --average must be >= 1")
    out = check_output_folder(out)
    cfg = InstrumentConfig.simulated(bench=bench, sensor_px=sensor_px, sample="pcb", seed=seed)
    if exposure_s is not None:
        if exposure_s <= 0:
            raise UserError(f"--exposure-s must be > 0, got {exposure_s}")
        cfg.camera.exposure_s = exposure_s
    if profile:
        cfg.restoration.profile = profile
    stamp = time.strftime("%Y%m%d-%H%M%S")
    h5_path = out / f"demo-{bench}-{stamp}.h5"
    png_path = h5_path.with_suffix(".png")

    inst = Instrument(cfg)
    prof = inst.load_profile()     # before any hardware: a broken profile stops us early
    methods = available_methods(prof)
    if method is not None and method.startswith("sr_x"):
        raise UserError(f"--method {method}: the demo scores restorations on the camera grid; "
                        "measure super-resolution with `xinstrument bench sr`")
    # every restored frame is checked against its measurement; a frame that disagrees, or whose
    # method the profile's policy does not accept, is restored again with the classical method
    # the policy accepts with the best calibration figures (none: kept and flagged), and the
    # file says so
    inst.set_fidelity_policy(True, fallback_method="auto")
    guard = inst.fidelity_guard
    if method is None:
        method = choose_method(guard, methods)
    method_why = guard.accepts(method)[1] or f"{method} accepted"
    inst.set_restoration(method)
    with inst:
        twin = inst.twin
        kv, ua = twin.fixed_state.voltage_kv, twin.fixed_state.current_ua
        bar = ProgressBar("warm-up")
        inst.warm_up(progress=bar.update)
        bar.close()
        inst.set_voltage_kv(kv)
        inst.set_current_ua(ua)
        inst.xray_on()
        print_fn(f"tube: {kv:g} kV, {ua:g} uA, X-rays on; sensor {sensor_px}x{sensor_px}, "
                 f"exposure {inst.exposure_s:g} s")
        n_ref = max(4, n_average)
        bar = ProgressBar("darks+flats")
        inst.take_darks(n_ref)
        bar.update(0.5)
        inst.take_flats(n_ref)
        bar.close()

        best = truth = None
        curve = None
        if twin.config.kind == "lens":
            from .acquisition.focus import high_frequency_energy
            centre = twin.best_focus_um("thick", kv)   # where an operator's coarse look lands
            coarse_lo, coarse_hi = round(centre) - 20.0, round(centre) + 20.0
            inst.move_focus_um(coarse_lo)
            bars = [ProgressBar("focus coarse"), ProgressBar("focus fine 1 um")]

            def on_progress(kind, payload):
                if kind == "progress" and payload[0] == "focus":
                    bars[0].update(payload[1])
                    if payload[1] >= 1.0 and len(bars) > 1:
                        bars.pop(0)

            unsub = inst.subscribe(on_progress)
            curve = inst.focus_scan(coarse_lo, coarse_hi, step_um=1.0, coarse_step_um=5.0,
                                    frames_per_step=3, metric="hf_energy")
            unsub()
            best = curve.best_position_um
            truth = twin.focus_truth_um(high_frequency_energy, span_um=8.0, step_um=0.5)

        gt = twin.ground_truth()
        recording = DemoRecording(
            n_frames=n_frames, n_average=n_average, out=h5_path, curve=curve,
            true_focus_um=truth, ground_truth=gt,
            metadata={"instrument": "xinstrument simulated bench", "bench": bench,
                      "sample": twin.sample.description,
                      # the detector's pixel (at the screen), as the profile and every other
                      # writer give it; the sample-plane pixel (cone-beam magnification) beside
                      # it
                      "pixel_size_um": twin.config.pixel_at_screen_um,
                      "sample_pixel_size_um": twin.config.pixel_at_object_um,
                      "profile": prof.name, "restoration_method": method, "seed": seed})
        bar = ProgressBar("acquire", n_frames)
        unsub = inst.events.frame_ready.connect(
            lambda f: bar.update(min(n_frames, recording.done + 1)))
        t0 = time.monotonic()
        try:
            frames = inst.run(recording)
        finally:
            unsub()
        bar.close()
        elapsed = time.monotonic() - t0
        restore_s = recording.restore_s
        corrected = [f.data for f in frames]
        restored = [f.restored for f in frames]
        fell_back = sum(int(bool(getattr(f.fidelity, "fell_back", False))) for f in frames)
        flagged = sum(int(getattr(f.fidelity, "action", "") == "flag") for f in frames)
        fid = frames[-1].fidelity
        inst.xray_off()

    rng = float(gt.max() - gt.min())
    inp, res = corrected[-1], restored[-1]
    s_in, map_in = ssim(inp, gt, data_range=rng, return_map=True)
    s_out, map_out = ssim(res, gt, data_range=rng, return_map=True)
    result = DemoResult(h5_path, png_path, n_frames, best, truth, method, float(s_in),
                        float(s_out), float(psnr(inp, gt, rng)), float(psnr(res, gt, rng)),
                        n_frames * n_average / elapsed,
                        n_frames / restore_s if restore_s > 0 else float("inf"),
                        fidelity=fid.summary() if fid is not None else None,
                        fidelity_message=fid.message if fid is not None else "",
                        fell_back=fell_back, flagged=flagged,
                        fallback_method=inst.fidelity_fallback,
                        fallback_why=inst.fidelity_fallback_reason, method_why=method_why)
    _figure(png_path, inp, res, gt, map_in, map_out, result)
    return result


def _figure(path: Path, inp, res, gt, map_in, map_out, r: DemoResult) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = np.percentile(gt, [0.5, 99.5])
    fig, ax = plt.subplots(2, 3, figsize=(13, 8.6), layout="constrained")
    for a, img, title in ((ax[0, 0], inp, f"thick screen, corrected\nSSIM {r.ssim_input:.3f}, "
                           f"PSNR {r.psnr_input:.1f} dB"),
                          (ax[0, 1], res, f"restored ({r.method})\nSSIM {r.ssim_restored:.3f}, "
                           f"PSNR {r.psnr_restored:.1f} dB"),
                          (ax[0, 2], gt, "ground truth\n(thin screen, noise-free)")):
        a.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        a.set_title(title)
        a.axis("off")
    for a, m, title in ((ax[1, 0], map_in, "SSIM map: input"),
                        (ax[1, 1], map_out, "SSIM map: restored")):
        im = a.imshow(m, cmap="viridis", vmin=0, vmax=1)
        a.set_title(title)
        a.axis("off")
    fig.colorbar(im, ax=ax[1, :2], shrink=0.9)
    c = gt.shape[0] // 2
    ax[1, 2].plot(inp[c], lw=0.8, label="input")
    ax[1, 2].plot(res[c], lw=0.8, label="restored")
    ax[1, 2].plot(gt[c], lw=0.8, label="truth", color="k")
    ax[1, 2].set_title("centre row profile")
    ax[1, 2].set_xlabel("pixel")
    ax[1, 2].set_ylabel("transmission")
    ax[1, 2].legend()
    fig.savefig(path, dpi=90)
    plt.close(fig)
