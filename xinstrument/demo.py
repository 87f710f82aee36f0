"""`xinstrument demo`: the whole measurement on the simulated bench, end to end.

Warm up the tube, take darks and flats, run a coarse-then-fine focus scan (lens-coupled bench),
acquire averaged frames of a PCB through the thick scintillator, correct them, restore them with
the best method the profile offers, write everything to an HDF5 file (NXtomo + Data Exchange) with
a PNG figure beside it, and print a summary scored against the twin's ground truth.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import InstrumentConfig
from .errors import UserError
from .instrument import Instrument
from .progress import ProgressBar

# Preference order of restoration methods for the demo, from `xinstrument bench restoration` on
# the held-out twin set (sim-yag200-5x SSIM: unet 0.961, wiener 0.937, sde 0.943, cold 0.943;
# sim-gos134: unet 0.929, wiener 0.919): the U-Net when the profile ships its weights, else Wiener,
# which every profile with a noise model supports.
METHOD_PREFERENCE = ("unet", "wiener", "inverse")


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
    fidelity: dict | None = None     # the last frame's fidelity summary (FidelityResult.summary)
    fidelity_message: str = ""
    fell_back: int = 0               # frames the guard re-restored with the classical method


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
    from .storage import ScanWriter

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
    if method is None:
        method = next(m for m in METHOD_PREFERENCE if m in methods)
    if method.startswith("sr_x"):
        raise UserError(f"--method {method}: the demo scores restorations on the camera grid; "
                        "measure super-resolution with `xinstrument bench sr`")
    inst.set_restoration(method)
    # every restored frame is checked against its measurement; a frame that disagrees is
    # re-restored with Wiener and says so in the file
    inst.set_fidelity_policy(True, fallback_method="wiener" if "wiener" in methods else None)
    guard = inst.fidelity_guard
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

        from .restoration.fidelity import hdf5_extras_layout
        writer = ScanWriter(h5_path, (sensor_px, sensor_px), "float32", restored=True,
                            restored_extras=hdf5_extras_layout(
                                guard.tile_grid((sensor_px, sensor_px))),
                            metadata={"instrument": "xinstrument simulated bench",
                                      "bench": bench, "sample": twin.sample.description,
                                      # the detector's pixel (at the screen), as the profile
                                      # and every other writer give it; the sample-plane pixel
                                      # (cone-beam magnification) is recorded beside it
                                      "pixel_size_um": twin.config.pixel_at_screen_um,
                                      "sample_pixel_size_um": twin.config.pixel_at_object_um,
                                      "profile": prof.name, "restoration_method": method,
                                      "seed": seed})
        try:
            writer.append(inst.dark, image_key=2, exposure_s=inst.exposure_s,
                          frames_averaged=n_ref, voltage_kv=0.0, current_ua=0.0)
            writer.append(inst.flat, image_key=1, exposure_s=inst.exposure_s,
                          frames_averaged=n_ref, voltage_kv=kv, current_ua=ua)
            corrected, restored, fell_back, fid = [], [], 0, None
            restorer = inst.restorer()
            bar = ProgressBar("acquire", n_frames)
            t0 = time.monotonic()
            restore_s = 0.0
            for i in range(n_frames):
                fr = inst.acquire(n_average, correct=True)
                t1 = time.monotonic()
                rest = restorer.restore(fr.data)
                restore_s += time.monotonic() - t1
                rest, used, fid = inst.check_fidelity(
                    fr.data, rest, method, frames_averaged=n_average, exposure_s=fr.exposure_s,
                    voltage_kv=fr.voltage_kv, current_ua=fr.current_ua)
                fell_back += int(fid.fell_back)
                idx = writer.append(fr.data, image_key=0, theta_deg=fr.theta_deg,
                                    voltage_kv=fr.voltage_kv, current_ua=fr.current_ua,
                                    exposure_s=fr.exposure_s, frames_averaged=n_average,
                                    focus_z_um=fr.focus_z_um, timestamp_s=fr.timestamp_s)
                writer.append_restored(rest, source_index=idx, method=used, profile=prof.name,
                                       extras=fid.hdf5_extras())
                corrected.append(fr.data)
                restored.append(rest)
                bar.update(i + 1)
            bar.close()
            elapsed = time.monotonic() - t0
            if curve is not None:
                writer.write_array("analysis/focus_curve", curve.as_array(),
                                   {"columns": "position_um, metric", "metric": "hf_energy",
                                    "best_position_um": float(best),
                                    "twin_true_optimum_um": float(truth)})
            gt = twin.ground_truth()
            writer.write_array("analysis/ground_truth", gt,
                               {"what": "noise-free thin-screen image from the digital twin"})
        except BaseException as exc:
            writer.close(complete=False, reason=f"{type(exc).__name__}: {exc}")
            raise
        writer.close(complete=True)
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
                        fell_back=fell_back)
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
