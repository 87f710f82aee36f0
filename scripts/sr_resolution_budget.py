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
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xinstrument.acquisition.correction import FlatFieldCorrector  # noqa: E402
from xinstrument.sim.bench import Twin, lens_bench, micro_tomo_bench  # noqa: E402
from xinstrument.sim.samples import chart_groups  # noqa: E402
from xinstrument.sim.slice_transfer import (  # noqa: E402
    projection_noise_terms,
    projection_nps,
    projection_otfs,
)

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


# --------------------------------------------------------------------------------------------
# The literature's micro-tomosynthesis bench (shared/papers/003): per chart group
# --------------------------------------------------------------------------------------------
def _chart_transmission(twin: Twin) -> float:
    """Detected-energy weighted transmission of the chart's tungsten absorber (Beer-Lambert over
    the screen's absorbed spectrum)."""
    from xinstrument.sim.materials import TUNGSTEN
    from xinstrument.sim.samples import CHART_ABSORBER_UM
    cfg, st = twin.config, twin.fixed_state
    e, fl = twin.spectrum(st.voltage_kv)
    w = fl * cfg.screen("thick").absorption(e) * e
    t = np.exp(-TUNGSTEN.linear_attenuation_per_mm(e) * CHART_ABSORBER_UM / 1000)
    return float((w * t).sum() / w.sum())


def oblique_parallax_mtf(twin: Twin, f_cy_per_mm: np.ndarray, tilt_deg: float) -> np.ndarray:
    """MTF along the tilt of a screen hit at ``tilt_deg`` (tube-rotation tomosynthesis): a
    quantum absorbed at depth z lands z tan(tilt) aside (the twin renders it:
    ``sim.detector.oblique_parallax_shift_mm``), so the depth distribution k(z) becomes a line
    spread along the tilt. Its modulus only: one projection's mean shift is a translation."""
    return np.abs(_parallax_otf(twin, f_cy_per_mm, tilt_deg))


def _parallax_otf(twin: Twin, f_cy_per_mm, tilt_deg: float) -> np.ndarray:
    from xinstrument.sim.detector import oblique_parallax_shift_mm
    z, k = twin.depth_weights(twin.fixed_state.voltage_kv, "thick")
    x_mm = oblique_parallax_shift_mm(z, tilt_deg)
    f = np.asarray(f_cy_per_mm, dtype=np.float64)
    return (k[None, :] * np.exp(-2j * np.pi * f[:, None] * x_mm[None, :])).sum(axis=1)


def slice_parallax_mtf(twin: Twin, f_cy_per_mm: np.ndarray, angles_deg) -> np.ndarray:
    """Along-tilt MTF that oblique incidence leaves in a tomosynthesis slice: the mean of the
    projections' complex parallax OTFs. A reconstruction registers each projection on the
    screen's entrance face, so the depth-mean offset, which changes with the angle, is not
    registered: it blurs the slice as well as each projection's own spread."""
    return np.abs(np.mean([_parallax_otf(twin, f_cy_per_mm, a) for a in angles_deg], axis=0))


def micro_group_budget(cfg, k_rose: float = ROSE_SNR, exposure_s: float = 1.0,
                       measure_px: int = 96, seed: int = 0, tilt_deg: float = 0.0) -> dict:
    """Resolution budget of each chart group on the 16x bench: MTF factors at the group's
    fundamental, modulation, noise of the group's bar-count region at the dose of one exposure,
    and the dose at which the group's fundamental stands k_rose x above that noise.

    Noise: relative NNPS of a flat-field corrected frame (offset removed) at the bar frequency,
      NNPS(f) = T(f)^2 / q  +  1 / (q g)  +  (read^2 + dark t) / (q g)^2      [px^2]
    (q absorbed X-ray quanta per pixel, g photo-electrons per absorbed quantum, T the optics'
    MTF x pixel aperture that the quantum noise passes; cascaded-systems form, Cunningham in
    Handbook of Medical Imaging vol. 1 (SPIE 2000) ch. 2; aliasing and the Swank factor neglected).
    The least-squares amplitude of a known-frequency sinusoid over N pixels has variance
    2 NNPS(f) / N. The analytic per-pixel variance is checked against twin flats below.
    """
    from xinstrument.sim.bench import MICRO_CHART_WIDTHS_UM
    twin = Twin(cfg, sample="open", seed=seed)
    st = twin.fixed_state
    kv, ua = st.voltage_kv, st.current_ua
    stage = twin.best_focus_um("thick", kv)
    p_um = cfg.pixel_at_screen_um
    m_geo = cfg.geometric_magnification
    s = cfg.sensor
    q_px = float(twin.expected_quanta("thick", exposure_s=exposure_s).mean())   # open field
    _, e_mean = twin._quanta_maps(kv, "thick", False)
    g = cfg.electrons_per_kev("thick") * float(e_mean.mean())        # e- per absorbed quantum
    t_chart = _chart_transmission(twin)
    m0 = (1 - t_chart) / (1 + t_chart)
    groups = {gr["width_um"]: gr for gr in chart_groups(cfg.fov_mm, MICRO_CHART_WIDTHS_UM)
              if gr["orientation"] == "vertical"}
    rows = []
    for w_um in MICRO_CHART_WIDTHS_UM:
        f = 1000.0 / (2 * w_um * m_geo)                  # fundamental at the screen, lp/mm
        fa = np.array([f])
        diff = float(cfg.lens.diffraction_otf(fa)[0])
        optics = float(twin.mtf(fa, "thick", stage, kv, ua, st.focus_mode, include_pixel=False)[0])
        spot = float(twin._spot_mtf(fa, kv, ua, st.focus_mode)[0])
        screen = optics / (diff * spot)                  # depth-integrated defocus discs
        parallax = float(oblique_parallax_mtf(twin, fa, tilt_deg)[0])
        optics *= parallax
        pix = float(np.sinc(f * p_um / 1000))
        mtf = optics * pix
        amp = 4 / math.pi * m0 * mtf                      # fundamental amplitude / mean
        gr = groups[w_um]
        n_px = (ALONG_FRACTION * gr["length_mm"] * 1000 * m_geo / p_um) * (6 * w_um * m_geo / p_um)
        a_q, b_q = (optics * pix) ** 2 + 1 / g, (s.read_noise_e ** 2
                                                  + s.dark_current_e_per_s * exposure_s) / g ** 2
        nnps = a_q / q_px + b_q / q_px ** 2
        sigma_amp = math.sqrt(2 * nnps / n_px)
        snr = amp / sigma_amp
        # dose for SNR = k: amp^2 N / (2 (a/q + b/q^2)) = k^2  ->  c q^2 - a q - b = 0
        c = amp ** 2 * n_px / (2 * k_rose ** 2)
        q_need = (a_q + math.sqrt(a_q ** 2 + 4 * c * b_q)) / (2 * c)
        rows.append(dict(width_um=w_um, period_um=2 * w_um, lp_mm_object=1000 / (2 * w_um),
                         lp_mm_screen=f, period_px=2 * w_um * m_geo / p_um,
                         mtf_diffraction=diff, mtf_screen_defocus=screen, mtf_focal_spot=spot,
                         mtf_parallax=parallax,
                         mtf_pixel=pix, mtf_system=mtf, modulation_amplitude=amp,
                         pixels_in_region=n_px, nnps_px2=nnps, noise_amplitude=sigma_amp,
                         snr=snr, quanta_per_px_needed=q_need,
                         exposure_s_needed=q_need / q_px * exposure_s))
    out = dict(bench=cfg.name, pixel_at_screen_um=p_um, magnification=cfg.lens.magnification,
               numerical_aperture=cfg.lens.numerical_aperture,
               screen=cfg.screen("thick").name, focal_spot_fwhm_um=cfg.focal_spot_fwhm_um,
               chart_gap_mm=cfg.source_detector_mm - cfg.source_object_mm, tilt_deg=tilt_deg,
               voltage_kv=kv, current_ua=ua, best_focus_um=stage, exposure_s=exposure_s,
               quanta_per_px=q_px, electrons_per_quantum=g, chart_transmission=t_chart,
               chart_modulation=m0, rose_k=k_rose, groups=rows)
    if not measure_px:
        return out
    # analytic per-pixel variance vs twin flats (difference of two frames: no fixed pattern)
    mt = Twin(dataclasses.replace(cfg, sensor=dataclasses.replace(s, rows=measure_px,
                                                                  cols=measure_px)),
              sample="open", seed=seed)
    mt.set_state(stage_um=stage, sample_in=False)
    a = mt.render(exposure_s)[0].astype(np.float64) - mt.offset_map_adu
    b = mt.render(exposure_s)[0].astype(np.float64) - mt.offset_map_adu
    measured_var = float(np.var(a - b) / 2 / np.mean(0.5 * (a + b)) ** 2)
    fy = np.fft.fftfreq(128)[:, None]
    fx = np.fft.fftfreq(128)[None, :]
    fr_mm = np.hypot(fx, fy) / (p_um / 1000)
    t2 = (twin.mtf(fr_mm.ravel(), "thick", stage, kv, ua, st.focus_mode,
                   include_pixel=False).reshape(fr_mm.shape) * np.sinc(fx) * np.sinc(fy)) ** 2
    predicted_var = float(t2.mean()) / q_px + 1 / (q_px * g) + (
        s.read_noise_e ** 2 + s.dark_current_e_per_s * exposure_s) / (q_px * g) ** 2
    out.update(pixel_variance_measured=measured_var, pixel_variance_predicted=predicted_var)
    return out


# what the 1 um group needs if the bench differs from the nominal one (the paper gives neither
# its screen, its chart-to-screen gap nor its tomosynthesis angles)
SENSITIVITY = (
    ("nominal (5 um film, 0.5 mm gap, 0 deg)", {}, 0.0),
    ("tube at 10 deg (oblique parallax)", {}, 10.0),
    ("tube at 20 deg (oblique parallax)", {}, 20.0),
    ("chart 1 mm above the screen", {"source_object_mm": 49.0}, 0.0),
    ("chart 2 mm above the screen", {"source_object_mm": 48.0}, 0.0),
    ("focal spot 55 um", {"focal_spot_fwhm_um": 55.0}, 0.0),
    ("YAG:Ce 10 um film", {"thick_um": 10.0}, 0.0),
    ("YAG:Ce 20 um film", {"thick_um": 20.0}, 0.0),
    ("YAG:Ce 20 um film, tube at 20 deg", {"thick_um": 20.0}, 20.0),
    ("objective NA 0.3", {"lens": "na0.3"}, 0.0),
)


def micro_sensitivity(k_rose: float, exposure_s: float, sensor_px: int) -> list[dict]:
    out = []
    for label, changes, tilt in SENSITIVITY:
        kw = dict(changes)
        if kw.get("lens") == "na0.3":
            from xinstrument.sim.detector import LensCoupling
            kw["lens"] = LensCoupling(magnification=16.0, numerical_aperture=0.3)
        b = micro_group_budget(micro_tomo_bench(sensor_px=sensor_px, **kw), k_rose, exposure_s,
                               measure_px=0, tilt_deg=tilt)
        r = [g for g in b["groups"] if g["width_um"] == 1.0][0]
        out.append(dict(label=label, quanta_per_px=b["quanta_per_px"], **r))
    return out


def format_sensitivity(rows: list[dict], k_rose: float) -> str:
    lines = [f"1 um group (495 lp/mm at the screen) if the bench differs: system MTF, modulation "
             f"and the dose for SNR {k_rose:g}",
             f"{'variant':42s} {'quanta/px/s':>11s} {'MTF':>6s} {'parallax':>8s} {'ampl.':>7s} "
             f"{'quanta/px':>10s} {'s at 1 mA':>10s}"]
    for r in rows:
        lines.append(f"{r['label']:42s} {r['quanta_per_px']:11.2f} {r['mtf_system']:6.3f} "
                     f"{r['mtf_parallax']:8.3f} {r['modulation_amplitude']:7.4f} "
                     f"{r['quanta_per_px_needed']:10.0f} {r['exposure_s_needed']:10.0f}")
    return "\n".join(lines)


def format_micro_budget(b: dict) -> str:
    lines = [
        f"bench {b['bench']}: {b['magnification']:g}x NA {b['numerical_aperture']:g}, "
        f"{b['pixel_at_screen_um']:.3f} um pixels at the screen; {b['screen']}; "
        f"{b['voltage_kv']:g} kV {b['current_ua'] / 1000:g} mA, spot {b['focal_spot_fwhm_um']:g} um "
        f"FWHM, chart {b['chart_gap_mm']:g} mm above the screen; best focus {b['best_focus_um']:.2f} um",
        f"absorbed X-ray quanta per pixel in {b['exposure_s']:g} s: {b['quanta_per_px']:.2f}; "
        f"photo-electrons per quantum: {b['electrons_per_quantum']:.1f}; chart (1 um W) transmission "
        f"{b['chart_transmission']:.4f}, bar modulation {b['chart_modulation']:.4f}",
        f"per-pixel relative variance of a flat, one exposure: twin {b['pixel_variance_measured']:.4f}, "
        f"model {b['pixel_variance_predicted']:.4f}",
        "",
        "group  period  f_screen  period  MTF                                       modul.  region  "
        f"SNR in   dose for SNR {b['rose_k']:g}",
        " (um)   (um)   (lp/mm)    (px)  diffr. screen  spot  pixel  system        ampl.   (px)   "
        f"{b['exposure_s']:g} s    quanta/px  s at 1 mA",
    ]
    for r in b["groups"]:
        lines.append(
            f"{r['width_um']:5.1f} {r['period_um']:6.1f} {r['lp_mm_screen']:9.0f} {r['period_px']:7.2f}  "
            f"{r['mtf_diffraction']:6.3f} {r['mtf_screen_defocus']:6.3f} {r['mtf_focal_spot']:5.3f} "
            f"{r['mtf_pixel']:6.3f} {r['mtf_system']:7.3f}      {r['modulation_amplitude']:7.4f} "
            f"{r['pixels_in_region']:6.0f} {r['snr']:7.2f} {r['quanta_per_px_needed']:11.0f} "
            f"{r['exposure_s_needed']:10.0f}")
    return "\n".join(lines)


def micro_frame_check(exposures_s: list[float], seeds: int, sensor_px: int = 256) -> list[dict]:
    """The budget against twin frames: the chart (held-out seeds) imaged raw on the 16x bench at
    each exposure (flat/dark corrected with 16 references), each group measured by the bar
    count and the CTF (> 10 % of the 3 um group's contrast) in both orientations."""
    from xinstrument.bench import SR_TEST_SEED, _chart_table, _sr_acquire
    from xinstrument.restoration.superres import centred_config
    from xinstrument.sim.bench import MICRO_CHART_WIDTHS_UM
    from xinstrument.sim.samples import resolution_chart
    cfg = centred_config(micro_tomo_bench(sensor_px=sensor_px))
    groups = chart_groups(cfg.fov_mm, MICRO_CHART_WIDTHS_UM)
    chart = resolution_chart(cfg.fov_mm, MICRO_CHART_WIDTHS_UM)
    out = []
    for t in exposures_s:
        for i in range(seeds):
            twin = Twin(cfg, sample=chart, seed=SR_TEST_SEED + i)
            frame = _sr_acquire(twin, t, 1)
            tab = _chart_table({"raw": (frame, cfg.pixel_at_object_um / 1000)}, groups)["raw"]
            for g in tab["groups"]:
                out.append(dict(exposure_s=t, seed=SR_TEST_SEED + i, **g))
    return out


def format_frame_check(rows: list[dict]) -> str:
    lines = ["raw twin frames of the chart (held-out seeds): groups resolved (bar count 3 and "
             "CTF > 10 %) out of seeds x 2 orientations; mean CTF",
             "exposure (s)  " + "  ".join(f"{w:>12g} um" for w in sorted(
                 {r['width_um'] for r in rows}, reverse=True))]
    for t in sorted({r["exposure_s"] for r in rows}):
        cells = []
        for w in sorted({r["width_um"] for r in rows}, reverse=True):
            rs = [r for r in rows if r["exposure_s"] == t and r["width_um"] == w]
            ctf = np.mean([r["ctf"] for r in rs if r["ctf"] is not None] or [float("nan")])
            cells.append(f"{sum(r['resolved'] for r in rs):2d}/{len(rs):<2d} {ctf:6.3f}  ")
        lines.append(f"{t:12g}  " + "  ".join(cells))
    return "\n".join(lines)


# half-arcs (deg) of the tube's rotation about the screen centre: paper 003 does not give its own
ARCS_DEG = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0)
SLICE_ANGLES = 21


def micro_arc_budget(cfg, arcs_deg=ARCS_DEG, n_angles: int = SLICE_ANGLES,
                     k_rose: float = ROSE_SNR, slice_exposure_s: float = 64.0) -> list[dict]:
    """Per half-arc: the along-tilt MTF of a shift-and-add slice at the 2 and 1 um groups
    (system MTF x slice parallax) and the total dose (all projections, s at 1 mA) for SNR
    ``k_rose``; across the tilt (bars along the tilt axis) the slice keeps the normal-incidence
    MTF of :func:`micro_group_budget`. A slice of N projections carries their summed quanta.
    ``*_mf_*``: the same for the noise-matched multi-frame slice (``recon.multiframe``) of
    projections totalling ``slice_exposure_s``."""
    from xinstrument.recon.multiframe import noise_matched_transfer
    base = micro_group_budget(cfg, k_rose, 1.0, measure_px=0)
    twin = Twin(cfg, sample="open")
    p_mm = cfg.pixel_at_screen_um / 1000
    out = []
    for arc in arcs_deg:
        angles = np.linspace(-arc, arc, n_angles) if arc > 0 else np.zeros(1)
        row = {"half_arc_deg": arc, "n_angles": int(len(angles))}
        for g in base["groups"]:
            if g["width_um"] not in (2.0, 1.0):
                continue
            par = float(slice_parallax_mtf(twin, np.array([g["lp_mm_screen"]]), angles)[0])
            amp = g["modulation_amplitude"] * par
            # the dose for SNR k scales as 1 / amplitude^2 where quantum noise dominates
            need_s = g["exposure_s_needed"] / max(par, 1e-9) ** 2
            tag = f"{g['width_um']:g}um"
            # multi-frame slice (recon.multiframe): the same noise, transfer T of
            # noise_matched_transfer over the normal-incidence OTF (projections of the slice
            # exposure each; the NPS balance of X-ray and optical quanta depends on it)
            fa = np.array([g["lp_mm_screen"]])
            h = projection_otfs(twin, fa, np.zeros(1), angles)
            h0 = projection_otfs(twin, fa, np.zeros(1), [0.0])[0]
            nps = projection_nps(h, np.sinc(fa * p_mm),
                                 projection_noise_terms(cfg, slice_exposure_s / len(angles)))
            par_mf = float(noise_matched_transfer(h, nps)[0] / abs(h0[0]))
            row.update({f"parallax_mf_{tag}": par_mf,
                        f"mtf_along_mf_{tag}": g["mtf_system"] * par_mf,
                        f"dose_s_along_mf_{tag}": g["exposure_s_needed"] / max(par_mf, 1e-9) ** 2})
            row.update({f"parallax_{tag}": par, f"mtf_along_{tag}": g["mtf_system"] * par,
                        f"mtf_across_{tag}": g["mtf_system"], f"amplitude_along_{tag}": amp,
                        f"dose_s_along_{tag}": need_s, f"dose_s_across_{tag}": g["exposure_s_needed"]})
        out.append(row)
    return out


def format_arc_budget(rows: list[dict], k_rose: float) -> str:
    lines = [f"tomosynthesis slices (shift-and-add of {SLICE_ANGLES} projections over +-arc): "
             f"MTF and total dose (s at 1 mA) for SNR {k_rose:g}, along / across the tilt",
             f"{'+-arc':>6s} {'2 um along':>10s} {'across':>7s} {'1 um along':>10s} {'across':>7s}"
             f" {'dose 1 um along':>15s} {'across':>7s} | multi-frame: {'1 um along':>10s}"
             f" {'dose':>6s}"]
    for r in rows:
        lines.append(f"{r['half_arc_deg']:6g} {r['mtf_along_2um']:10.3f} {r['mtf_across_2um']:7.3f} "
                     f"{r['mtf_along_1um']:10.3f} {r['mtf_across_1um']:7.3f} "
                     f"{r['dose_s_along_1um']:15.0f} {r['dose_s_across_1um']:7.0f} | "
                     f"{'':13s}{r['mtf_along_mf_1um']:10.3f} {r['dose_s_along_mf_1um']:6.0f}")
    return "\n".join(lines)


def _shifted_chart(chart, dx_mm: float):
    """The chart moved by ``dx_mm`` along x (every shape of its one layer)."""
    from xinstrument.sim.samples import Layer, Sample
    layer = chart.layers[0]
    moved = Layer(layer.material, layer.height_mm,
                  [dataclasses.replace(sh, cx=sh.cx + dx_mm) for sh in layer.shapes],
                  name=layer.name)
    return Sample(chart.name, [moved], description=chart.description)


def micro_slice_check(half_arcs_deg: list[float], n_angles: int, total_exposure_s: float,
                      seeds: int, sensor_px: int = 256) -> list[dict]:
    """The arc budget against twin frames: tomosynthesis slices at the chart's height, made of
    ``n_angles`` projections over +-arc that share ``total_exposure_s`` (each dark/flat
    corrected with its own angle's references), measured by the bar count and the CTF in both
    orientations. The field follows the chart's projection at each angle (as a large sensor's
    region of interest would), so every projection is registered exactly on the entrance face:
    the slice keeps only what the screen and optics leave, oblique incidence included."""
    from xinstrument.bench import SR_TEST_SEED, _chart_table
    from xinstrument.acquisition.correction import FlatFieldCorrector
    from xinstrument.restoration.superres import centred_config
    from xinstrument.sim.bench import MICRO_CHART_WIDTHS_UM
    from xinstrument.sim.samples import resolution_chart
    cfg = centred_config(micro_tomo_bench(sensor_px=sensor_px))
    groups = chart_groups(cfg.fov_mm, MICRO_CHART_WIDTHS_UM)
    chart = resolution_chart(cfg.fov_mm, MICRO_CHART_WIDTHS_UM)
    out = []
    for arc in half_arcs_deg:
        angles = np.linspace(-arc, arc, n_angles) if arc > 0 else np.zeros(n_angles)
        t_each = total_exposure_s / len(angles)
        for i in range(seeds):
            acc = np.zeros((cfg.sensor.rows, cfg.sensor.cols))
            for j, theta in enumerate(angles):
                probe = Twin(cfg, sample="open")
                mag, shift_mm = probe.layer_projection(0.0, float(theta))
                twin = Twin(cfg, sample=_shifted_chart(chart, -shift_mm / mag),
                            seed=SR_TEST_SEED + 1000 * i + j)
                twin.set_state(theta_deg=float(theta),
                               stage_um=twin.best_focus_um("thick", twin.fixed_state.voltage_kv))
                twin.set_state(xray_on=False)
                darks = np.stack([twin.render(t_each)[0] for _ in range(4)])
                twin.set_state(xray_on=True, sample_in=False)
                flats = np.stack([twin.render(t_each)[0] for _ in range(16)])
                twin.set_state(sample_in=True)
                acc += FlatFieldCorrector.from_series(darks, flats)(twin.render(t_each)[0])
            img = (acc / len(angles)).astype(np.float32)
            tab = _chart_table({"raw": (img, cfg.pixel_at_object_um / 1000)}, groups)["raw"]
            for g in tab["groups"]:
                out.append(dict(half_arc_deg=arc, seed=SR_TEST_SEED + 1000 * i, **g))
    return out


def format_slice_check(rows: list[dict], total_exposure_s: float) -> str:
    lines = [f"twin tomosynthesis slices of the chart (held-out seeds, {total_exposure_s:g} s in "
             "all): groups resolved (bar count 3, CTF > 10 %) / seeds; mean CTF; "
             "vertical bars = modulation along the tilt",
             f"{'+-arc':>6s}  " + "  ".join(f"{w:g} um {o[:4]:>4s}".rjust(15) for w in (2.0, 1.0)
                                            for o in ("vertical", "horizontal"))]
    for arc in sorted({r["half_arc_deg"] for r in rows}):
        cells = []
        for w in (2.0, 1.0):
            for o in ("vertical", "horizontal"):
                rs = [r for r in rows if r["half_arc_deg"] == arc and r["width_um"] == w
                      and r["orientation"] == o]
                ctf = np.mean([r["ctf"] for r in rs if r["ctf"] is not None] or [float("nan")])
                cells.append(f"{sum(r['resolved'] for r in rs)}/{len(rs)} {ctf:6.3f}".rjust(15))
        lines.append(f"{arc:6g}  " + "  ".join(cells))
    return "\n".join(lines)


# slice transfer vs the arc budget: the budget multiplies the normal-incidence system MTF by the
# depth distribution's averaged parallax; the slice transfer couples each depth's defocus with its
# own parallax (as the twin renders). Measured difference at the 1 um group (21 projections):
# <= 0.006 up to +-20 deg, 0.012 at +-25/30 deg.
SLICE_BUDGET_TOLERANCE = 0.015


def slice_transfer_check(cfg, arcs_deg=ARCS_DEG, n_angles: int = SLICE_ANGLES) -> list[dict]:
    """Along/across-tilt MTF (pixel aperture included) of the slice transfer
    (:func:`xinstrument.sim.slice_transfer.twin_slice_transfer`) at the 2 and 1 um groups beside
    the arc budget's (:func:`micro_arc_budget`)."""
    from xinstrument.sim.slice_transfer import twin_slice_transfer
    twin = Twin(cfg, sample="open")
    budget = micro_arc_budget(cfg, [a for a in arcs_deg if a > 0], n_angles)
    out = []
    for b in budget:
        res = twin_slice_transfer(twin, b["half_arc_deg"], n_angles)
        row = {"half_arc_deg": b["half_arc_deg"], "n_angles": n_angles}
        for w in (2.0, 1.0):
            f_px = 1000.0 / (2 * w * cfg.geometric_magnification) * cfg.pixel_at_screen_um / 1000
            tag = f"{w:g}um"
            for side in ("along", "across"):
                row[f"slice_{side}_{tag}"] = float(np.interp(
                    f_px, res["frequency_x_cy_per_px"], res[f"mtf_{side}_tilt"]))
                row[f"budget_{side}_{tag}"] = b[f"mtf_{side}_{tag}"]
        out.append(row)
    return out


def format_slice_transfer_check(rows: list[dict]) -> str:
    lines = ["slice transfer (mean of the tilted projections' OTFs) vs the arc budget, MTF with "
             "the pixel aperture",
             f"{'+-arc':>6s} {'2 um along':>18s} {'1 um along':>18s} {'1 um across':>18s}",
             f"{'':6s} {'slice / budget':>18s} {'slice / budget':>18s} {'slice / budget':>18s}"]
    for r in rows:
        lines.append(f"{r['half_arc_deg']:6g} "
                     + " ".join(f"{r[f'slice_{k}']:8.3f} / {r[f'budget_{k}']:.3f}"
                                for k in ("along_2um", "along_1um", "across_1um")))
    return "\n".join(lines)


def slice_noise_sigma(cfg, half_arc_deg: float, n_angles: int, exposure_s: float,
                      seed: int = 0) -> float:
    """Noise sigma (flat-normalised) of an open-field slice made as ``bench._sr_slice`` makes
    them (each projection dark/flat corrected at its own angle, the projections averaged),
    measured with ``background_noise_sigma`` away from the frame border."""
    from xinstrument.bench import _sr_acquire
    from xinstrument.restoration.superres import background_noise_sigma
    angles = np.linspace(-half_arc_deg, half_arc_deg, n_angles)
    acc = None
    for j, theta in enumerate(angles):
        twin = Twin(cfg, sample="open", seed=seed + 7919 * j)
        twin.set_state(theta_deg=float(theta))
        fr = _sr_acquire(twin, exposure_s, 1).astype(np.float64)
        acc = fr if acc is None else acc + fr
    b = 8
    return float(background_noise_sigma((acc / n_angles)[b:-b, b:-b]))


# --------------------------------------------------------------------------------------------
# Multi-frame slices (xinstrument.recon.multiframe): each projection weighted by its own OTF
# --------------------------------------------------------------------------------------------
def multiframe_slice_transfer(cfg, half_arc_deg: float, n_angles: int, exposure_s: float,
                              f_max_cy_per_px: float = 2.0, n_freq: int = 161) -> dict:
    """Transfer of the noise-matched multi-frame slice (``recon.multiframe``) relative to the
    fine-grid ground truth, on the grid of ``sim.slice_transfer.twin_slice_transfer`` (LR cy/px,
    0 .. ``f_max_cy_per_px`` on both axes), with the shift-and-add slice's transfer beside it."""
    from xinstrument.recon.multiframe import noise_matched_transfer
    from xinstrument.sim.slice_transfer import twin_slice_transfer
    twin = Twin(cfg, sample="open")
    saa = twin_slice_transfer(twin, half_arc_deg, n_angles, f_max_cy_per_px, n_freq)
    f_px = saa["frequency_x_cy_per_px"]
    f_mm = f_px / (cfg.pixel_at_screen_um / 1000)
    angles = np.linspace(-half_arc_deg, half_arc_deg, int(n_angles))
    h = projection_otfs(twin, f_mm[None, :], f_mm[:, None], angles)
    pixel = np.sinc(f_px)[None, :] * np.sinc(f_px)[:, None]
    t = noise_matched_transfer(h, projection_nps(h, pixel, projection_noise_terms(cfg, exposure_s)))
    ref = saa["reference_mtf"]
    floor = 1e-4
    ratio = np.where(ref > floor, t / np.maximum(ref, floor), 0.0)
    # the ratio cannot exceed 1 where the working screen is blurrier than the reference; clip
    # the rounding of the table's far corner
    return {**saa, "slice_otf": t, "transfer": np.clip(ratio, 0.0, 1.0),
            "saa_transfer": saa["transfer"],
            "mtf_along_tilt": t[0, :] * np.sinc(f_px), "mtf_across_tilt": t[:, 0] * np.sinc(f_px),
            "reconstruction": "multiframe", "exposure_s": float(exposure_s)}


# profile file of the multi-frame slice transfer (beside sim.slice_transfer.SLICE_TRANSFER_FILE)
MULTIFRAME_TRANSFER_FILE = "slice_transfer_multiframe.npz"


def store_slice_transfer(folder: Path, half_arc_deg: float, n_angles: int, exposure_s: float,
                         sensor_px: int = 128, recon: str = "saa") -> dict:
    """Compute the micro bench's slice transfer and the slice noise at ``exposure_s`` per
    projection, write them into the profile ``folder`` (``slice_transfer.npz`` and the
    [calibration] keys of ``superres.SLICE_KEYS``) for ``train --task sr --blur slice``.
    ``recon="multiframe"``: the transfer of the noise-matched multi-frame slice
    (:func:`multiframe_slice_transfer`, ``slice_transfer_multiframe.npz``), which the
    [calibration] keys then name (``slice_reconstruction``); its noise is the shift-and-add
    slice's by construction, so the measured shift-and-add noise is stored for both."""
    if recon not in ("saa", "multiframe"):
        raise SystemExit(f"--store-recon must be saa or multiframe, got {recon!r}")
    from xinstrument.profiles import DetectorProfile
    from xinstrument.restoration.cli import bench_kw_for_profile
    from xinstrument.restoration.superres import SliceTransfer
    from xinstrument.sim.slice_transfer import (
        SLICE_TRANSFER_FILE,
        twin_slice_transfer,
        write_slice_transfer,
    )
    prof = DetectorProfile.load(folder)
    cfg = micro_tomo_bench(sensor_px=sensor_px, **bench_kw_for_profile(prof, "micro-tomo-16x"))
    if abs(cfg.pixel_at_screen_um - float(prof.pixel_size_um)) > 1e-6:
        raise SystemExit(f"{folder}: pixel {prof.pixel_size_um} um is not the micro bench's "
                         f"{cfg.pixel_at_screen_um} um")
    sigma = slice_noise_sigma(cfg, half_arc_deg, n_angles, exposure_s)
    if recon == "saa":
        res = twin_slice_transfer(Twin(cfg, sample="open"), half_arc_deg, n_angles)
        write_slice_transfer(folder, res)
        name, source = SLICE_TRANSFER_FILE, (
            "twin: mean of the tilted projections' OTFs (working screen at best focus, oblique "
            "parallax per depth, focal spot) over the reference screen's normal-incidence MTF "
            "(sim.slice_transfer); noise of an open-field slice of the same projections")
    else:
        res = multiframe_slice_transfer(cfg, half_arc_deg, n_angles, exposure_s)
        name, source = MULTIFRAME_TRANSFER_FILE, (
            "twin: noise-matched multi-frame slice (recon.multiframe: each projection weighted "
            "by conj(OTF)/NPS, transfer sqrt(N_mean sum |OTF_i|^2 / NPS_i)) over the reference "
            "screen's normal-incidence MTF; noise of an open-field shift-and-add slice of the "
            "same projections (the combination keeps it)")
        tmp = Path(folder) / (name + ".tmp.npz")
        np.savez(tmp, frequency_x_cy_per_px=res["frequency_x_cy_per_px"].astype(np.float64),
                 frequency_y_cy_per_px=res["frequency_y_cy_per_px"].astype(np.float64),
                 transfer=res["transfer"].astype(np.float32))
        tmp.replace(Path(folder) / name)
    prof.calibration.update({
        "slice_transfer_file": name, "slice_reconstruction": recon,
        "slice_half_arc_deg": float(half_arc_deg), "slice_projections": int(n_angles),
        "slice_exposure_s": float(exposure_s), "slice_noise_sigma": sigma,
        "slice_transfer_source": source,
    })
    prof._write_toml(prof.path)
    SliceTransfer.from_profile(DetectorProfile.load(folder))      # reads back
    return {"noise_sigma": sigma, **{k: res[k] for k in ("half_arc_deg", "n_angles")}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", choices=["lens-yag", "micro-tomo-16x"], default="lens-yag",
                   help="lens-yag: the 5x bench's screens; micro-tomo-16x: the literature's 16x "
                   "micro-tomosynthesis bench, per chart group (3, 2, 1.5, 1 um)")
    p.add_argument("--rose-k", type=float, default=ROSE_SNR, help="SNR a group needs (Rose: 5)")
    p.add_argument("--sensor-px", type=int, default=512)
    p.add_argument("--check-exposures", default="",
                   help="micro-tomo-16x: also image the chart raw at these exposures (s, comma "
                   "separated) and measure its groups")
    p.add_argument("--check-seeds", type=int, default=2, help="held-out chart seeds per exposure")
    p.add_argument("--slice-arcs", default="",
                   help="micro-tomo-16x: also make tomosynthesis slices of the chart over these "
                   "half-arcs (deg, comma separated) and measure their groups")
    p.add_argument("--slice-angles", type=int, default=SLICE_ANGLES,
                   help="projections per slice")
    p.add_argument("--slice-exposure-s", type=float, default=16.0,
                   help="exposure of all projections of a slice together (s at 1 mA)")
    p.add_argument("--frames", default="1,16,64,256", help="frame counts averaged")
    p.add_argument("--exposure-s", type=float, default=1.0, help="exposure per frame")
    p.add_argument("--json", type=Path)
    p.add_argument("--store-slice-transfer", type=Path, default=None, metavar="PROFILE_DIR",
                   help="micro-tomo-16x: write the slice transfer of --store-arc-deg / "
                   "--store-angles and the slice noise at --store-exposure-s per projection into "
                   "this profile folder (for train --task sr --blur slice), then stop")
    p.add_argument("--store-arc-deg", type=float, default=20.0, help="half arc of the stored slice")
    p.add_argument("--store-angles", type=int, default=SLICE_ANGLES,
                   help="projections of the stored slice")
    p.add_argument("--store-exposure-s", type=float, default=3.05,
                   help="exposure per projection of the stored slice's noise, s at 1 mA")
    p.add_argument("--store-recon", choices=["saa", "multiframe"], default="saa",
                   help="slices the stored transfer describes: shift-and-add, or the noise-matched "
                   "multi-frame combination (xinstrument.recon.multiframe)")
    a = p.parse_args(argv)
    if a.store_slice_transfer is not None:
        rows = slice_transfer_check(micro_tomo_bench(sensor_px=64))
        print(format_slice_transfer_check(rows))
        out = store_slice_transfer(a.store_slice_transfer, a.store_arc_deg, a.store_angles,
                                   a.store_exposure_s, recon=a.store_recon)
        print(f"stored ({a.store_recon}): +-{out['half_arc_deg']:g} deg, {out['n_angles']} projections, slice noise "
              f"sigma {out['noise_sigma']:.5f} at {a.store_exposure_s:g} s per projection")
        return 0
    if a.bench == "micro-tomo-16x":
        b = micro_group_budget(micro_tomo_bench(sensor_px=min(a.sensor_px, 256)), a.rose_k,
                               a.exposure_s)
        print(format_micro_budget(b))
        b["sensitivity_1um"] = micro_sensitivity(a.rose_k, a.exposure_s, min(a.sensor_px, 256))
        print()
        print(format_sensitivity(b["sensitivity_1um"], a.rose_k))
        b["arcs"] = micro_arc_budget(micro_tomo_bench(sensor_px=min(a.sensor_px, 256)),
                                     k_rose=a.rose_k)
        print()
        print(format_arc_budget(b["arcs"], a.rose_k))
        if a.slice_arcs:
            arcs = [float(x) for x in a.slice_arcs.split(",")]
            b["slice_check"] = micro_slice_check(arcs, a.slice_angles, a.slice_exposure_s,
                                                 a.check_seeds, min(a.sensor_px, 256))
            print()
            print(format_slice_check(b["slice_check"], a.slice_exposure_s))
        if a.check_exposures:
            b["frame_check"] = micro_frame_check(
                [float(x) for x in a.check_exposures.split(",")], a.check_seeds,
                min(a.sensor_px, 256))
            print()
            print(format_frame_check(b["frame_check"]))
        if a.json:
            a.json.write_text(json.dumps(b, indent=1))
        return 0
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
