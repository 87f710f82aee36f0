#!/usr/bin/env python3
"""Build the shipped detector profiles of the two simulated benches from the digital twin.

    python scripts/make_sim_profiles.py [--out profiles] [--sensor-px 512]

For each bench (lens-coupled YAG:Ce 200 um with a 20 um reference; GOS 134.55 mg/cm^2 panel
with a 33.91 mg/cm^2 reference) it:
  * takes the thin and thick system MTFs at the calibration conditions (each screen at its own
    best focus) from the twin's transfer model, and their regularised ratio;
  * derives the PSF (thick = thin (*) psf) from the ratio on a fine 2-D grid, truncated to 61 x 61;
  * measures the thick screen's NNPS from twin flat-field frames with the IEC 62220-1 NNPS tool,
    so the noise model comes through the same path a real detector's does, with the pixel fixed
    pattern removed from the flat stack as ``xinstrument calibrate nnps`` does (flat-field
    correction removes it from images, so restoration and the fidelity guard must not count it);
  * measures the edge's Gaussian PSF sigma (ESF -> LSF -> fit) and the background noise sigma.
Learned-model weights are added by scripts/train_profile_weights.py, which keeps this file's
arrays untouched. ``--nnps-only`` re-measures only the NNPS of existing profiles (everything else,
weights included, stays as it is).
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xinstrument.calibration.mtf import esf_gaussian_sigma  # noqa: E402
from xinstrument.calibration.nnps import nnps, remove_fixed_pattern, resample_curve  # noqa: E402
from xinstrument.profiles import DetectorProfile, find_profile  # noqa: E402
from xinstrument.sim import Twin, lens_bench, panel_bench  # noqa: E402

PROFILES = {
    "sim-yag200-5x": dict(factory=lens_bench, detector_id="sim-lens-yag200-5x-na04",
                          description="Simulated lens-coupled bench: YAG:Ce 200 um, 5x NA 0.4 "
                                      "objective, pco.edge-class sCMOS (1.3 um pixels); "
                                      "reference YAG:Ce 20 um"),
    "sim-gos134": dict(factory=panel_bench, detector_id="sim-panel-gos134-99um",
                       description="Simulated CMOS panel: Gd2O2S:Tb 134.55 mg/cm2 on 99 um "
                                   "pixels; reference Gd2O2S:Tb 33.91 mg/cm2"),
}
RATIO_FLOOR = 1e-3      # MTF_HR below this: the ratio is held (no information to divide by)
PSF_SIZE_PX = 61        # odd truncation window (shared/papers/004 truncates to 60 x 60)


def psf_from_ratio(freq: np.ndarray, ratio: np.ndarray, size: int = PSF_SIZE_PX,
                   grid: int = 512) -> np.ndarray:
    """Kernel whose transfer function is the radial ``ratio`` (cycles/pixel), truncated."""
    fy = np.fft.fftfreq(grid)[:, None]
    fx = np.fft.fftfreq(grid)[None, :]
    h = np.interp(np.hypot(fx, fy), freq, ratio)
    k = np.fft.fftshift(np.real(np.fft.ifft2(h)))
    c = grid // 2
    r = size // 2
    k = k[c - r:c + r + 1, c - r:c + r + 1]
    k = np.clip(k, 0, None)                      # a scintillator spreads light, never subtracts
    return (k / k.sum()).astype(np.float64)


NNPS_FLATS = 8          # flats in the NNPS stack (the fixed pattern is their mean)


def measure_nnps(twin: Twin, freq: np.ndarray) -> tuple[np.ndarray, float, list[np.ndarray]]:
    """Temporal NNPS (px^2, on ``freq``) of the thick screen from twin flats at its best focus,
    the flat's detected quanta per pixel, and the dark-subtracted flats."""
    cfg, st = twin.config, twin.fixed_state
    if cfg.kind == "lens":
        twin.set_state(stage_um=twin.best_focus_um("thick", st.voltage_kv))
    exposure_s = 1.0 if cfg.kind == "lens" else 0.05
    flats = [twin.render(exposure_s)[0].astype(np.float64) - twin.offset_map_adu
             for _ in range(NNPS_FLATS)]
    res = nnps(remove_fixed_pattern(np.stack(flats)), cfg.pixel_at_screen_um,
               roi_size_px=min(128, cfg.sensor.rows // 2))
    nnps_lr = np.clip(resample_curve(res.frequency_cy_per_px, res.nnps_px2, freq), 0, None)
    quanta = float(twin.expected_quanta("thick", exposure_s=exposure_s).mean())
    return nnps_lr, quanta, flats


def update_nnps(name: str, out: Path, sensor_px: int, seed: int = 0,
                factory=None) -> DetectorProfile:
    """Re-measure only the NNPS of an existing profile (``factory``: its bench, default the
    one in PROFILES)."""
    folder = out / name
    prof = find_profile(str(folder))
    factory = factory or PROFILES[name]["factory"]
    twin = Twin(factory(sensor_px=sensor_px), sample="open", seed=seed)
    old = prof.nnps_lr
    prof.nnps_lr, prof.nnps_mean_signal, _ = measure_nnps(twin, prof.frequency_cy_per_px)
    prof.calibration = {**prof.calibration, "nnps_date": datetime.date.today().isoformat(),
                        "nnps_fixed_pattern_removed": True}
    prof.save(folder)
    if old is not None:
        print(f"{name}: new NNPS / old NNPS {float(np.mean(prof.nnps_lr / np.maximum(old, 1e-30))):.3f} "
              "on average")
    return prof


def transfer_arrays(twin: Twin) -> dict[str, np.ndarray]:
    """Frequency grid (cy/px), thin (HR) and thick (LR) system MTFs at the twin's calibration
    conditions, their regularised ratio and the PSF derived from it."""
    st = twin.fixed_state
    freq = np.linspace(0.0, 0.5, 129)
    f_mm = freq * 1000.0 / twin.config.pixel_at_screen_um
    kw = dict(voltage_kv=st.voltage_kv, current_ua=st.current_ua, focus_mode=st.focus_mode)
    mtf_hr = twin.mtf(f_mm, "thin", **kw)
    mtf_lr = twin.mtf(f_mm, "thick", **kw)
    ratio = np.where(mtf_hr > RATIO_FLOOR, mtf_lr / np.maximum(mtf_hr, RATIO_FLOOR), 0.0)
    ratio = np.clip(np.minimum.accumulate(ratio), 0.0, 1.0)   # monotone, physical
    return dict(frequency_cy_per_px=freq, mtf_hr=mtf_hr, mtf_lr=mtf_lr, mtf_ratio=ratio,
                psf=psf_from_ratio(freq, ratio))


def build(name: str, out: Path, sensor_px: int, seed: int = 0) -> DetectorProfile:
    spec = PROFILES[name]
    cfg = spec["factory"](sensor_px=sensor_px)
    twin = Twin(cfg, sample="open", seed=seed)
    st = twin.fixed_state
    pixel_um = cfg.pixel_at_screen_um
    arrays = transfer_arrays(twin)
    freq = arrays["frequency_cy_per_px"]

    nnps_lr, quanta, flats = measure_nnps(twin, freq)

    # Gaussian sigma of the edge (super-resolution degradation model) and background noise
    edge_twin = Twin(cfg, sample="edge", seed=seed)
    if cfg.kind == "lens":
        edge_twin.set_state(stage_um=edge_twin.best_focus_um("thick", st.voltage_kv))
    edge = edge_twin.noise_free_transmission("thick")
    c = sensor_px // 2
    sig = esf_gaussian_sigma(edge[c - 48:c + 48, c - 48:c + 48], pixel_um)
    flat_t = flats[0] / flats[0].mean()
    noise_sigma = float(np.std(flat_t[8:-8, 8:-8]))

    scint = ({"material": "YAG:Ce", "thickness_um": cfg.thick_um} if cfg.kind == "lens" else
             {"material": "Gd2O2S:Tb", "areal_density_mg_cm2": cfg.thick_mg_cm2})
    ref = ({"material": "YAG:Ce", "thickness_um": cfg.thin_um} if cfg.kind == "lens" else
           {"material": "Gd2O2S:Tb", "areal_density_mg_cm2": cfg.thin_mg_cm2})
    optics = ({"magnification": cfg.lens.magnification,
               "numerical_aperture": cfg.lens.numerical_aperture} if cfg.kind == "lens" else {})
    folder = out / name
    weights = {}
    if (folder / "profile.toml").exists():   # keep trained weights already in the profile
        try:
            weights = dict(find_profile(str(folder)).weights)
        except Exception:
            weights = {}
    prof = DetectorProfile(
        name=name, detector_id=spec["detector_id"], description=spec["description"],
        pixel_size_um=float(pixel_um), scintillator=scint, reference=ref, optics=optics,
        calibration={"voltage_kv": float(st.voltage_kv), "current_ua": float(st.current_ua),
                     "focus_mode": int(st.focus_mode), "source": "digital twin",
                     "date": datetime.date.today().isoformat()},
        **arrays, nnps_lr=nnps_lr, nnps_mean_signal=quanta, esf_sigma_um=float(sig.sigma_um),
        noise_sigma=noise_sigma, weights=weights)
    prof.save(folder)
    return prof


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "profiles")
    p.add_argument("--sensor-px", type=int, default=512)
    p.add_argument("--only", choices=sorted(PROFILES))
    p.add_argument("--nnps-only", action="store_true",
                   help="re-measure only the NNPS of the existing profiles")
    a = p.parse_args(argv)
    for name in PROFILES:
        if a.only and name != a.only:
            continue
        prof = (update_nnps if a.nnps_only else build)(name, a.out, a.sensor_px)
        i50 = lambda m: float(np.interp(0.5, m[::-1], prof.frequency_cy_per_px[::-1]))  # noqa
        print(f"{name}: MTF50 thin {i50(prof.mtf_hr):.3f} cy/px, thick {i50(prof.mtf_lr):.3f} "
              f"cy/px; ratio at Nyquist {prof.mtf_ratio[-1]:.3f}; ESF sigma "
              f"{prof.esf_sigma_um:.2f} um; NNPS(0.25) {np.interp(0.25, prof.frequency_cy_per_px, prof.nnps_lr):.2e} px^2 "
              f"at {prof.nnps_mean_signal:.0f} quanta/px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
