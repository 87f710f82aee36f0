#!/usr/bin/env python3
"""Calibrate the literature's micro-tomosynthesis bench into the profile ``sim-micro-16x-sr``.

    python scripts/make_micro_sr_profile.py [--out profiles] [--sensor-px 256] [--frames 16]

The bench of shared/papers/003 as the twin models it (``micro-tomo-16x``: 16x lens coupling,
0.406 um pixels, 5 um YAG:Ce film, 1 um film as the reference screen, 50 kV / 1 mA tube with a
40 um spot). As paper 003 calibrates its bench, and through ``xinstrument calibrate`` as a user
would on a real one:

* a tungsten slanted edge imaged through the working and the reference screens (frames averaged,
  dark- and flat-corrected by the stored references) -> ``calibrate mtf``: slanted-edge MTFs,
  their ratio and PSF, and the ESF -> LSF -> Gaussian sigma of the working screen;
* flat fields at the operating exposure -> ``calibrate nnps``: NNPS and the background noise
  sigma of one corrected frame (the relative sigma of the flat after the fixed pattern is
  removed), which SR training adds to its inputs.

The operating exposure (16 s at 1 mA, about 150 absorbed quanta per pixel) is where
scripts/sr_resolution_budget.py --bench micro-tomo-16x puts the 1 um group's fundamental about
ten times above the noise of its bar-count region; it is recorded as calibration.exposure_s.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xinstrument.cli import main as cli_main  # noqa: E402
from xinstrument.profiles import find_profile  # noqa: E402
from xinstrument.sim import Twin, micro_tomo_bench  # noqa: E402
from xinstrument.sim.samples import slanted_edge  # noqa: E402

NAME = "sim-micro-16x-sr"
EXPOSURE_S = 16.0          # operating exposure at 1 mA (see the module docstring)
EDGE_EXPOSURE_S = 16.0
EDGE_ANGLE_DEG = 4.0       # ISO 12233: a few degrees


def bench(sensor_px: int):
    return micro_tomo_bench(sensor_px=sensor_px)


def _write_scan(path: Path, twin: Twin, which: str, frames: int, exposure_s: float,
                sample_in: bool = True) -> None:
    """Data Exchange file: ``frames`` sample (or flat) frames, the dark and flat references."""
    twin.set_state(xray_on=False)
    darks = np.stack([twin.render(exposure_s, which=which)[0] for _ in range(frames)])
    twin.set_state(xray_on=True, sample_in=False)
    flats = np.stack([twin.render(exposure_s, which=which)[0] for _ in range(frames)])
    twin.set_state(sample_in=sample_in)
    data = np.stack([twin.render(exposure_s, which=which)[0] for _ in range(frames)])
    with h5py.File(path, "w") as f:
        f["/exchange/data"] = data
        f["/exchange/data_dark"] = darks
        f["/exchange/data_white"] = flats


def adu_per_quantum(twin: Twin, which: str = "thick") -> float:
    """ADU per absorbed X-ray quantum: electrons per keV x mean absorbed energy / gain."""
    cfg = twin.config
    _, e_mean = twin._quanta_maps(twin.fixed_state.voltage_kv, which, False)
    return float(cfg.electrons_per_kev(which) * e_mean.mean() / cfg.sensor.gain_e_per_adu)


def build(out: Path, sensor_px: int, frames: int, seed: int = 0, work: Path | None = None):
    cfg = bench(sensor_px)
    folder = out / NAME
    tmp = tempfile.TemporaryDirectory(prefix="micro-sr-") if work is None else None
    work = Path(tmp.name) if tmp is not None else work
    try:
        edge = Twin(cfg, sample=slanted_edge(EDGE_ANGLE_DEG), seed=seed)
        px = f"{cfg.pixel_at_screen_um:.6g}"
        for which in ("thick", "thin"):
            edge.set_state(stage_um=edge.best_focus_um(which, edge.fixed_state.voltage_kv))
            _write_scan(work / f"edge_{which}.h5", edge, which, frames, EDGE_EXPOSURE_S)
        weights = {}
        if (folder / "profile.toml").exists():   # keep trained weights already in the profile
            weights = dict(find_profile(str(folder)).weights)
            (folder / "profile.toml").unlink()
        lens = cfg.lens
        rc = cli_main([
            "calibrate", "mtf", "--thin", str(work / "edge_thin.h5"),
            "--thick", str(work / "edge_thick.h5"), "--flat-correct", "--pixel-size-um", px,
            "--profile", str(folder), "--scintillator", f"YAG:Ce,{cfg.thick_um:g}um",
            "--reference", f"YAG:Ce,{cfg.thin_um:g}um", "--detector-id", "sim-micro-16x-na042",
            "--description", ("Simulated lens-coupled micro-tomosynthesis bench (shared/papers/"
                              "003): YAG:Ce 5 um film, 20x objective with 160 mm tube lens (16x, "
                              "NA 0.42), pco.edge-class sCMOS (0.406 um pixels); reference "
                              "YAG:Ce 1 um"),
            "--magnification", f"{lens.magnification:g}",
            "--numerical-aperture", f"{lens.numerical_aperture:g}"])
        if rc != 0:
            raise RuntimeError(f"calibrate mtf failed ({rc})")
        flats = Twin(cfg, sample="open", seed=seed + 1)
        flats.set_state(stage_um=flats.best_focus_um("thick", flats.fixed_state.voltage_kv))
        _write_scan(work / "flats.h5", flats, "thick", frames, EXPOSURE_S, sample_in=False)
        rc = cli_main([
            "calibrate", "nnps", str(work / "flats.h5"), "--dark-dataset", "/exchange/data_dark",
            "--adu-per-quantum", f"{adu_per_quantum(flats):.6g}", "--pixel-size-um", px,
            "--roi-size", str(min(128, sensor_px // 2)), "--profile", str(folder)])
        if rc != 0:
            raise RuntimeError(f"calibrate nnps failed ({rc})")
    finally:
        if tmp is not None:
            tmp.cleanup()
    prof = find_profile(str(folder))
    st = flats.fixed_state
    prof.calibration = {**prof.calibration, "voltage_kv": float(st.voltage_kv),
                        "current_ua": float(st.current_ua), "source": "digital twin",
                        "bench": cfg.name, "exposure_s": EXPOSURE_S,
                        "edge_exposure_s": EDGE_EXPOSURE_S, "frames_per_measurement": frames,
                        "focal_spot_fwhm_um": float(cfg.focal_spot_fwhm_um),
                        "sr_frames_averaged": 1,
                        "mtf_thin_source": (f"twin: tungsten slanted edge {EDGE_ANGLE_DEG:g} deg, "
                                            f"reference screen, {frames} x {EDGE_EXPOSURE_S:g} s"),
                        "mtf_thick_source": (f"twin: tungsten slanted edge {EDGE_ANGLE_DEG:g} deg, "
                                             f"working screen, {frames} x {EDGE_EXPOSURE_S:g} s"),
                        "nnps_source": f"twin: open field, {frames} x {EXPOSURE_S:g} s"}
    prof.weights = weights
    prof.save(folder)
    return prof


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "profiles")
    p.add_argument("--sensor-px", type=int, default=256)
    p.add_argument("--frames", type=int, default=16, help="frames per edge / flat measurement")
    p.add_argument("--work", type=Path, default=None, help="keep the twin's frames here")
    a = p.parse_args(argv)
    prof = build(a.out, a.sensor_px, a.frames, work=a.work)
    # the slices' transfers for `train --task sr --blur slice`, as the shipped profile holds
    # them: shift-and-add (slice_transfer.npz), then the multi-frame slices the shipped sr_x2
    # takes, which the profile then names; 21 projections of 64 s / 21 each
    sys.path.insert(0, str(ROOT / "scripts"))
    from sr_resolution_budget import SLICE_ANGLES, store_slice_transfer
    store_slice_transfer(Path(prof.path), 20.0, SLICE_ANGLES, 64.0 / SLICE_ANGLES)
    store_slice_transfer(Path(prof.path), 20.0, SLICE_ANGLES, 64.0 / SLICE_ANGLES,
                         recon="multiframe")
    prof = find_profile(str(prof.path))
    print(f"{NAME}: pixel {prof.pixel_size_um:.4f} um; ESF sigma {prof.esf_sigma_um:.3f} um; "
          f"noise sigma {prof.noise_sigma:.4f} per {EXPOSURE_S:g} s frame; "
          f"{prof.nnps_mean_signal:.1f} quanta/px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
