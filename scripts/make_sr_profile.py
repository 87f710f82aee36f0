#!/usr/bin/env python3
"""Build the simulated lens-coupled super-resolution profile ``sim-yag20-5x-sr`` from the twin.

    python scripts/make_sr_profile.py [--out profiles] [--frames 256]

The situation of shared/papers/003: a thin screen behind a microscope objective, the camera
pixel coarser than the detail wanted. Here: YAG:Ce 20 um working screen behind the bench's 5x
NA 0.4 objective (1.3 um pixels at the screen, Nyquist 385 lp/mm), YAG:Ce 5 um reference
(the fine-grid ground truth of SR training). The 200 um screen of ``sim-yag200-5x`` carries
too little modulation at 500 lp/mm for any restoration (scripts/sr_resolution_budget.py).

Same pattern as scripts/make_sim_profiles.py (its arrays are reused code, not regenerated):
MTFs of both screens at best focus from the twin's transfer model, their ratio and PSF, the
working screen's NNPS from twin flats, the edge's ESF -> LSF Gaussian sigma. The super-
resolution noise sigma is measured, as paper 003 does, on the background of the frames SR runs
on: flat-field corrected frames averaged over ``--frames`` exposures (recorded as
``calibration.sr_frames_averaged``), because a thin screen needs that averaging for 1 um bars to
stand above the noise.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from make_sim_profiles import measure_nnps, transfer_arrays, update_nnps  # noqa: E402

from xinstrument.acquisition.correction import FlatFieldCorrector  # noqa: E402
from xinstrument.calibration.mtf import esf_gaussian_sigma  # noqa: E402
from xinstrument.profiles import DetectorProfile, find_profile  # noqa: E402
from xinstrument.restoration.superres import background_noise_sigma  # noqa: E402
from xinstrument.sim import Twin, lens_bench  # noqa: E402

NAME = "sim-yag20-5x-sr"
WORKING_UM = 20.0       # YAG:Ce working screen (the lens bench's thin reference)
REFERENCE_UM = 5.0      # thinner reference: the HR target of SR training
EXPOSURE_S = 1.0        # the lens bench's calibration exposure (bench.CAL_EXPOSURE_S)


def bench(sensor_px: int):
    return lens_bench(sensor_px=sensor_px, thick_um=WORKING_UM, thin_um=REFERENCE_UM)


def build(out: Path, sensor_px: int, frames: int, seed: int = 0) -> DetectorProfile:
    cfg = bench(sensor_px)
    twin = Twin(cfg, sample="open", seed=seed)
    st = twin.fixed_state
    pixel_um = cfg.pixel_at_screen_um
    arrays = transfer_arrays(twin)
    # temporal NNPS of the working screen (fixed pattern removed, as flat-field correction does)
    nnps_lr, quanta, _ = measure_nnps(twin, arrays["frequency_cy_per_px"])

    edge_twin = Twin(cfg, sample="edge", seed=seed)
    edge_twin.set_state(stage_um=edge_twin.best_focus_um("thick", st.voltage_kv))
    edge = edge_twin.noise_free_transmission("thick")
    c = sensor_px // 2
    sig = esf_gaussian_sigma(edge[c - 48:c + 48, c - 48:c + 48], pixel_um)

    # background of an averaged, flat/dark corrected frame; references averaged as many times
    # (fewer flats would leave their own noise as a fixed pattern that averaging cannot remove)
    twin.set_state(xray_on=False)
    darks = np.stack([twin.render(EXPOSURE_S)[0] for _ in range(frames)])
    twin.set_state(xray_on=True, sample_in=False)
    ref_flats = np.stack([twin.render(EXPOSURE_S)[0] for _ in range(frames)])
    corr = FlatFieldCorrector.from_series(darks, ref_flats)
    avg = np.mean([corr(twin.render(EXPOSURE_S)[0]) for _ in range(frames)], axis=0)
    noise_sigma = background_noise_sigma(avg[c - 64:c + 64, c - 64:c + 64])

    folder = out / NAME
    weights = {}
    if (folder / "profile.toml").exists():     # keep trained weights already in the profile
        weights = dict(find_profile(str(folder)).weights)
    prof = DetectorProfile(
        name=NAME, detector_id="sim-lens-yag20-5x-na04-sr",
        description=("Simulated lens-coupled bench for super-resolution: YAG:Ce 20 um, 5x NA 0.4 "
                     "objective, pco.edge-class sCMOS (1.3 um pixels); reference YAG:Ce 5 um"),
        pixel_size_um=float(pixel_um),
        scintillator={"material": "YAG:Ce", "thickness_um": WORKING_UM},
        reference={"material": "YAG:Ce", "thickness_um": REFERENCE_UM},
        optics={"magnification": cfg.lens.magnification,
                "numerical_aperture": cfg.lens.numerical_aperture},
        calibration={"voltage_kv": float(st.voltage_kv), "current_ua": float(st.current_ua),
                     "focus_mode": int(st.focus_mode), "source": "digital twin",
                     "date": datetime.date.today().isoformat(), "exposure_s": EXPOSURE_S,
                     "sr_frames_averaged": int(frames)},
        **arrays, nnps_lr=nnps_lr, nnps_mean_signal=quanta, esf_sigma_um=float(sig.sigma_um),
        noise_sigma=float(noise_sigma), weights=weights)
    prof.save(folder)
    return prof


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "profiles")
    p.add_argument("--sensor-px", type=int, default=512)
    p.add_argument("--frames", type=int, default=256, help="frames averaged by SR's input frames")
    p.add_argument("--nnps-only", action="store_true",
                   help="re-measure only the NNPS of the existing profile")
    a = p.parse_args(argv)
    if a.nnps_only:
        update_nnps(NAME, a.out, a.sensor_px, factory=bench)
        return 0
    prof = build(a.out, a.sensor_px, a.frames)
    i50 = lambda m: float(np.interp(0.5, m[::-1], prof.frequency_cy_per_px[::-1]))  # noqa: E731
    print(f"{NAME}: MTF50 reference {i50(prof.mtf_hr):.3f} cy/px, working {i50(prof.mtf_lr):.3f} "
          f"cy/px; ESF sigma {prof.esf_sigma_um:.2f} um; noise sigma {prof.noise_sigma:.4f} "
          f"({a.frames} frames averaged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
