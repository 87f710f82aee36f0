#!/usr/bin/env python3
"""What resolution can super-resolution honestly reach on a lens-coupled bench? MTF and noise budget.

    python scripts/sr_resolution_budget.py [--frames 1,16,64] [--json out.json]

For each screen (the working thick screen, the thin reference screen of the same bench) at its
best focus, from the digital twin's transfer model at the calibration conditions (50 kV, 80 uA):

* the system MTF at the scintillator plane (screen depth blur + objective diffraction + focal-spot
  penumbra), without and with the 1.3 um pixel aperture, at 250 lp/mm, 385 lp/mm (Nyquist of
  1.3 um pixels) and 500 lp/mm, and at the fundamental of the chart's 1 um line pairs;
* the contrast of the chart's bars (1 um tungsten) on a noise-free twin frame with a perfect
  detector, and the expected modulation of the 1 um group's fundamental after the MTF;
* the noise of a flat-field corrected frame (measured on twin flats at the calibration exposure)
  averaged over N frames (corrected with max(16, N) averaged flats and darks), and over the
  rows a bar-group profile averages;
* the resulting signal-to-noise ratio of the 1 um group's modulation in that profile.

A detail whose modulation is below the noise of the frame cannot be recovered by any network
without inventing it; an SNR of a few (Rose criterion: 5) is the least a bar count can trust.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xinstrument.acquisition.correction import FlatFieldCorrector  # noqa: E402
from xinstrument.sim.bench import Twin, lens_bench  # noqa: E402
from xinstrument.sim.samples import chart_groups  # noqa: E402

FREQS_LP_MM = (250.0, 385.0, 500.0)
# bar-group profiles average the central 60 % of the bar length (superres.bar_group_profile)
ALONG_FRACTION = 0.6
# Rose criterion: a feature needs an SNR of about 5 to be detected reliably
ROSE_SNR = 5.0


def screen_budget(cfg, which: str, frames: list[int], exposure_s: float, seed: int = 0) -> dict:
    twin = Twin(cfg, sample="open", seed=seed)
    st = twin.fixed_state
    kv = st.voltage_kv
    stage = twin.best_focus_um(which, kv)
    m_geo = cfg.geometric_magnification
    one_um = [g for g in chart_groups(cfg.fov_mm) if g["width_um"] == 1.0][0]
    # 1 um lines at the object are m_geo x wider at the screen
    f_chart = 1000.0 / (2 * one_um["width_um"] * m_geo)
    f = np.array([*FREQS_LP_MM, f_chart])
    kw = dict(stage_um=stage, voltage_kv=kv, current_ua=st.current_ua, focus_mode=st.focus_mode)
    mtf_nopix = twin.mtf(f, which, include_pixel=False, **kw)
    mtf_pix = twin.mtf(f, which, include_pixel=True, **kw)
    # noise of a corrected frame: references averaged (16 flats / darks), the frame itself single
    twin.set_state(stage_um=stage, xray_on=False)
    darks = np.stack([twin.render(exposure_s, which=which)[0] for _ in range(16)])
    twin.set_state(xray_on=True, sample_in=False)
    flats = np.stack([twin.render(exposure_s, which=which)[0] for _ in range(16)])
    corr = FlatFieldCorrector.from_series(darks, flats)
    c = cfg.sensor.rows // 2
    single = [corr(twin.render(exposure_s, which=which)[0])[c - 48:c + 48, c - 48:c + 48] for _ in range(4)]
    sigma_px = float(np.mean([np.std(s) for s in single]))
    rows_averaged = max(1, round(ALONG_FRACTION * one_um["length_mm"] * 1000 * m_geo / cfg.pixel_at_screen_um))
    return {
        "screen": which, "thickness_um": cfg.screen(which).thickness_um, "best_focus_um": stage,
        "frequencies_lp_mm": f.tolist(), "chart_1um_lp_mm_at_screen": f_chart,
        "mtf_without_pixel": mtf_nopix.tolist(), "mtf_with_pixel": mtf_pix.tolist(),
        "noise_sigma_single_frame": sigma_px, "rows_averaged_by_profile": rows_averaged,
        "exposure_s": exposure_s,
    }


def chart_contrast(cfg) -> float:
    """Michelson contrast of the 15 um bars on a perfect detector (no blur): the chart's own."""
    from xinstrument.sim.samples import resolution_chart
    twin = Twin(cfg, sample=resolution_chart(cfg.fov_mm), seed=0)
    q, e = twin._quanta_maps(twin.fixed_state.voltage_kv, "thick", True)
    q0, e0 = twin._quanta_maps(twin.fixed_state.voltage_kv, "thick", False)
    t = twin._crop(q * e) / float((q0 * e0).mean())
    lo, hi = float(np.percentile(t, 0.5)), float(np.percentile(t, 99.5))
    return (hi - lo) / (hi + lo)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sensor-px", type=int, default=512)
    p.add_argument("--frames", default="1,16,64,256", help="frame counts averaged")
    p.add_argument("--exposure-s", type=float, default=1.0, help="exposure per frame")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    frames = [int(x) for x in a.frames.split(",")]
    cfg = lens_bench(sensor_px=a.sensor_px)
    c0 = chart_contrast(cfg)
    # square wave of contrast C: fundamental amplitude 4/pi * C (relative to the mean)
    out = {"bench": "lens-yag (5x NA 0.4, 1.3 um pixels)", "chart_contrast": c0, "screens": []}
    print(f"chart (1 um W) contrast on a perfect detector: {c0:.3f}")
    for which in ("thick", "thin"):
        b = screen_budget(cfg, which, frames, a.exposure_s)
        amp = [4 / math.pi * c0 * m for m in b["mtf_with_pixel"]]
        b["modulation_amplitude"] = amp
        b["snr_1um_profile"] = {}
        print(f"\n{which} screen YAG {b['thickness_um']:g} um, best focus {b['best_focus_um']:.1f} um; "
              f"chart 1 um lines = {b['chart_1um_lp_mm_at_screen']:.0f} lp/mm at the screen")
        print("  f (lp/mm at screen)   " + "  ".join(f"{x:8.0f}" for x in b["frequencies_lp_mm"]))
        print("  MTF (optics+spot)     " + "  ".join(f"{x:8.4f}" for x in b["mtf_without_pixel"]))
        print("  MTF (+1.3 um pixel)   " + "  ".join(f"{x:8.4f}" for x in b["mtf_with_pixel"]))
        print("  bar modulation ampl.  " + "  ".join(f"{x:8.5f}" for x in amp))
        print(f"  noise sigma, single corrected frame ({a.exposure_s:g} s): {b['noise_sigma_single_frame']:.4f}; "
              f"profile averages {b['rows_averaged_by_profile']} rows")
        # the measured single frame carries the noise of its 16 averaged flats too; an N-frame
        # average corrected with max(16, N) flats keeps 1/N + 1/refs of the per-frame variance
        per_frame = b["noise_sigma_single_frame"] / math.sqrt(1 + 1 / 16)
        for n in frames:
            refs = max(16, n)
            noise = per_frame * math.sqrt((1 / n + 1 / refs) / b["rows_averaged_by_profile"])
            snr = amp[-1] / noise
            b["snr_1um_profile"][n] = snr
            print(f"  {n:4d} frames: profile noise {noise:.5f}, 1 um modulation SNR {snr:6.2f}"
                  f"{'  (>= Rose 5)' if snr >= ROSE_SNR else ''}")
        out["screens"].append(b)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
