#!/usr/bin/env python3
"""Calibrate the two simulated detectors end to end from twin acquisitions, like an operator.

    python scripts/calibrate_sim_profiles.py [--out DIR] [--sensor-px 512] [--only NAME]

For each simulated bench (lens-coupled YAG:Ce 200 um with a 20 um reference; GOS 134.55 mg/cm^2
panel with a 33.91 mg/cm^2 reference) it acquires on the digital twin, for each screen at its
own best focus: darks, flats and frames of the tungsten slanted edge and of a PCB, and stores
them as raw uint16 frames in xinstrument scan files (HDF5). It then runs the operator's tools on
those files:

    xinstrument calibrate mtf  --thin EDGE_THIN.h5 --thick EDGE_THICK.h5 --flat-correct ...
    xinstrument calibrate psf  --thin PCB_THIN.h5  --thick PCB_THICK.h5  --flat-correct ...
    xinstrument calibrate nnps EDGE_THICK.h5 --dataset /exchange/data_white --dark-dataset ...

which write the profile (MTFs, ratio, PSF from the ratio, ESF sigma, NNPS, noise sigma; the
Richardson-Lucy PSF goes to psf_rl.npy, or into the profile with --psf rl) and PNG plots into
``--out/NAME``; finally it compares each
calibrated profile with the shipped, model-based one in profiles/ (which it never modifies).

The ADU-per-quantum factor for the NNPS comes from the twin's dose model (mean dark-subtracted
flat signal over the expected absorbed quanta per pixel), as a real bench's would come from a
photon-transfer or dosimetry measurement.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xinstrument.calibration.psf import normalized_cross_correlation
from xinstrument.cli import main as xinstrument_main
from xinstrument.profiles import DetectorProfile
from xinstrument.sim import Twin, lens_bench, panel_bench
from xinstrument.storage import ScanReader, ScanWriter

BENCHES = {
    "sim-yag200-5x": {
        "factory": lens_bench, "exposure_s": 1.0, "detector_id": "sim-lens-yag200-5x-na04",
        "description": "Simulated lens-coupled bench: YAG:Ce 200 um, 5x NA 0.4 objective, pco.edge-class "
                       "sCMOS (1.3 um pixels); reference YAG:Ce 20 um; calibrated from twin acquisitions",
    },
    "sim-gos134": {
        "factory": panel_bench, "exposure_s": 0.05, "detector_id": "sim-panel-gos134-99um",
        "description": "Simulated CMOS panel: Gd2O2S:Tb 134.55 mg/cm2 on 99 um pixels; reference "
                       "Gd2O2S:Tb 33.91 mg/cm2; calibrated from twin acquisitions",
    },
    # A screen thickness no restoration network was trained for: plug-and-play restoration and
    # data-consistent diffusion run on it from this calibration alone.
    "sim-yag100-5x": {
        "factory": lambda sensor_px: lens_bench(sensor_px=sensor_px, thick_um=100.0),
        "exposure_s": 1.0, "detector_id": "sim-lens-yag100-5x-na04",
        "description": "Simulated lens-coupled bench: YAG:Ce 100 um, 5x NA 0.4 objective, pco.edge-class "
                       "sCMOS (1.3 um pixels); reference YAG:Ce 20 um; calibrated from twin acquisitions",
    },
}
# Frames per acquisition: averaging 32 edge frames brings the edge MTF noise at Nyquist to about
# 0.01; 16 flats give the NNPS about 10^3 ROI spectra at 128 px.
N_DARK, N_FLAT, N_EDGE, N_SCENE = 8, 16, 32, 16


def acquire(twin: Twin, which: str, sample: str, path: Path, exposure_s: float,
            pixel_um: float) -> Path:
    """Darks, flats and sample frames through screen ``which`` into one scan file (raw uint16)."""
    cfg = twin.config
    if cfg.kind == "lens":   # the operator focuses each screen (focus scan) before calibrating
        twin.set_state(stage_um=twin.best_focus_um(which, twin.fixed_state.voltage_kv))
    twin.sample = sample
    shape = (cfg.sensor.rows, cfg.sensor.cols)
    meta = {"instrument": "xinstrument digital twin", "pixel_size_um": pixel_um, "sample": sample,
            "scintillator": f"{which} screen"}
    with ScanWriter(path, shape, "uint16", metadata=meta, swmr=False, compression="lzf",
                    overwrite=True) as w:
        def put(n: int, key: int) -> None:
            for _ in range(n):
                frame, m = twin.render(exposure_s, which=which)
                w.append(frame, image_key=key, voltage_kv=m["voltage_kv"], current_ua=m["current_ua"],
                         exposure_s=exposure_s, frames_averaged=1, focus_z_um=m["stage_um"])

        twin.set_state(xray_on=False)
        put(N_DARK, 2)
        twin.set_state(xray_on=True, sample_in=False)
        put(N_FLAT, 1)
        twin.set_state(sample_in=True)
        put(N_EDGE if sample == "edge" else N_SCENE, 0)
    return path


def run(argv: list[str]) -> None:
    print("  $ xinstrument " + " ".join(argv))
    rc = xinstrument_main(argv)
    if rc != 0:
        raise SystemExit(f"xinstrument {' '.join(argv[:2])} failed (exit {rc})")


def calibrate(name: str, out: Path, sensor_px: int, seed: int, psf_source: str = "ratio") -> DetectorProfile:
    spec = BENCHES[name]
    cfg = spec["factory"](sensor_px=sensor_px)
    twin = Twin(cfg, sample="open", seed=seed)
    pixel_um = cfg.pixel_at_screen_um
    exposure_s = spec["exposure_s"]
    folder = out / name
    data = out / f"{name}-acquisitions"
    data.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files = {(which, sample): acquire(twin, which, sample, data / f"{sample}-{which}.h5", exposure_s, pixel_um)
             for which in ("thin", "thick") for sample in ("edge", "pcb")}
    print(f"{name}: acquired {len(files)} scan files in {time.perf_counter() - t0:.1f} s ({data})")

    # The edge crosses the field centre at ~3 deg from the column axis.
    c = sensor_px // 2
    h_rows, h_cols = min(128, c - 8), min(64, c - 8)
    edge_roi = [str(v) for v in (c - h_rows, c - h_cols, 2 * h_rows, 2 * h_cols)]
    if folder.exists():
        for f in ("profile.toml", "arrays.npz"):
            (folder / f).unlink(missing_ok=True)
    screen = (lambda t: f"YAG:Ce,{t:g}um") if cfg.kind == "lens" else (lambda d: f"Gd2O2S:Tb,{d:g}mg/cm2")
    thick_screen = screen(cfg.thick_um if cfg.kind == "lens" else cfg.thick_mg_cm2)
    thin_screen = screen(cfg.thin_um if cfg.kind == "lens" else cfg.thin_mg_cm2)
    mtf_cmd = ["calibrate", "mtf", "--thin", str(files["thin", "edge"]), "--thick", str(files["thick", "edge"]),
               "--flat-correct", "--roi", *edge_roi, "--profile", str(folder),
               "--scintillator", thick_screen, "--reference", thin_screen,
               "--detector-id", spec["detector_id"], "--description", spec["description"]]
    if cfg.kind == "lens":
        mtf_cmd += ["--magnification", str(cfg.lens.magnification),
                    "--numerical-aperture", str(cfg.lens.numerical_aperture)]
    run(mtf_cmd)
    ratio_psf = DetectorProfile.load(folder).psf

    rl_npy = folder / "psf_rl.npy"
    run(["calibrate", "psf", "--thin", str(files["thin", "pcb"]), "--thick", str(files["thick", "pcb"]),
         "--flat-correct", "--profile", str(folder), "--save-npy", str(rl_npy)]
        + ([] if psf_source == "rl" else ["--no-store"]))

    # NNPS of the thick screen from its flats (the flats of the thick edge acquisition).
    twin.set_state(xray_on=True, sample_in=False)     # dose model of the flat field
    with ScanReader(files["thick", "edge"]) as r:
        flat_adu = float((r.flats.astype(float).mean(axis=0) - r.darks.astype(float).mean(axis=0)).mean())
    quanta = float(twin.expected_quanta("thick", exposure_s=exposure_s).mean())
    roi = min(128, sensor_px // 2)
    run(["calibrate", "nnps", str(files["thick", "edge"]), "--dataset", "/exchange/data_white",
         "--dark-dataset", "/exchange/data_dark", "--adu-per-quantum", f"{flat_adu / quanta:.6g}",
         "--roi-size", str(roi), "--profile", str(folder)])
    prof = DetectorProfile.load(folder)
    prof._ratio_psf = ratio_psf  # type: ignore[attr-defined]  # for the comparison only
    prof._rl_psf = np.load(rl_npy)  # type: ignore[attr-defined]
    return prof


def _mtf50(freq: np.ndarray, mtf: np.ndarray) -> float:
    below = np.flatnonzero(mtf < 0.5)
    if below.size == 0:
        return float("nan")
    i = below[0]
    return float(freq[i - 1] + (mtf[i - 1] - 0.5) * (freq[i] - freq[i - 1]) / (mtf[i - 1] - mtf[i]))


def compare(cal: DetectorProfile, ref: DetectorProfile) -> list[str]:
    """Lines of the comparison table: calibrated (from acquisitions) vs shipped (from the model)."""
    f = cal.frequency_cy_per_px
    if not np.allclose(f, ref.frequency_cy_per_px):
        raise SystemExit("calibrated and shipped profiles use different frequency grids")
    to_mm = 1000.0 / cal.pixel_size_um
    lines = []
    for label, a, b in (("MTF thin (HR)", cal.mtf_hr, ref.mtf_hr), ("MTF thick (LR)", cal.mtf_lr, ref.mtf_lr),
                        ("MTF ratio", cal.mtf_ratio, ref.mtf_ratio)):
        d = np.abs(a - b)
        lines.append(f"  {label:15s} max |diff| to Nyquist {d.max():.4f} (rms {np.sqrt(np.mean(d ** 2)):.4f})")
    for label, a, b in (("thin", cal.mtf_hr, ref.mtf_hr), ("thick", cal.mtf_lr, ref.mtf_lr)):
        m_cal, m_ref = _mtf50(f, a) * to_mm, _mtf50(f, b) * to_mm
        lines.append(f"  MTF50 {label:5s}     calibrated {m_cal:7.2f} cy/mm, shipped {m_ref:7.2f} cy/mm "
                     f"({100 * (m_cal / m_ref - 1):+.1f} %)")
    ratio_psf = getattr(cal, "_ratio_psf", None)
    if ratio_psf is not None and ratio_psf.shape == ref.psf.shape:
        lines.append(f"  PSF NCC         from measured ratio vs shipped {normalized_cross_correlation(ratio_psf, ref.psf):.4f}")
    rl_psf = getattr(cal, "_rl_psf", None)
    if rl_psf is not None and rl_psf.shape == ref.psf.shape:
        lines.append(f"  PSF NCC         RL-extracted vs shipped        {normalized_cross_correlation(rl_psf, ref.psf):.4f}")
        if ratio_psf is not None:
            lines.append(f"  PSF NCC         RL-extracted vs measured ratio {normalized_cross_correlation(rl_psf, ratio_psf):.4f}")
    lines.append(f"  profile PSF     {cal.calibration.get('psf_source', '?')}")
    if cal.nnps_lr is not None and ref.nnps_lr is not None:
        band = (f >= 0.05) & (f <= 0.45)
        # compare at equal dose: NNPS scales as 1/quanta
        r = (cal.nnps_lr[band] * cal.nnps_mean_signal) / (ref.nnps_lr[band] * ref.nnps_mean_signal)
        lines.append(f"  NNPS ratio      calibrated/shipped at equal dose, 0.05-0.45 cy/px: median {np.median(r):.3f} "
                     f"(range {r.min():.3f}..{r.max():.3f}); mean signal {cal.nnps_mean_signal:.1f} vs "
                     f"{ref.nnps_mean_signal:.1f} quanta/px")
    if cal.esf_sigma_um is not None and ref.esf_sigma_um is not None:
        lines.append(f"  ESF sigma       calibrated {cal.esf_sigma_um:.3f} um, shipped {ref.esf_sigma_um:.3f} um")
    if cal.noise_sigma is not None and ref.noise_sigma is not None:
        lines.append(f"  noise sigma     calibrated {cal.noise_sigma:.4f}, shipped {ref.noise_sigma:.4f} "
                     "(shipped: one raw flat incl. fixed pattern)")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "calibrated-profiles",
                   help="output folder for profiles, plots and acquisitions (default: "
                   "<tmp>/calibrated-profiles; never the shipped profiles/)")
    p.add_argument("--sensor-px", type=int, default=512, help="simulated sensor size (default 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=sorted(BENCHES))
    p.add_argument("--psf", choices=["ratio", "rl"], default="ratio",
                   help="PSF stored in the profile: from the measured MTF ratio (default; it matches "
                   "the transfer model closer, see the comparison) or by Richardson-Lucy extraction")
    a = p.parse_args(argv)
    out = a.out.resolve()
    if out == (ROOT / "profiles").resolve() or (ROOT / "profiles").resolve() in out.parents:
        p.error("--out must not be the shipped profiles/ folder")
    if a.sensor_px < 128:
        p.error("--sensor-px must be at least 128 (edge ROI and NNPS ROIs)")
    report = []
    for name in BENCHES:
        if a.only and name != a.only:
            continue
        t0 = time.perf_counter()
        cal = calibrate(name, out, a.sensor_px, a.seed, a.psf)
        report.append(f"{name}: calibrated from acquisitions ({time.perf_counter() - t0:.0f} s) -> {out / name}")
        if (ROOT / "profiles" / name).is_dir():     # a screen without a shipped model profile
            report += compare(cal, DetectorProfile.load(ROOT / "profiles" / name))
    print("\n".join(["", "comparison with the shipped (model-based) profiles:"] + report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
