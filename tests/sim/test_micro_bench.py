"""The literature's lens-coupled micro-tomosynthesis bench (16x, 0.406 um pixels) and its
shipped calibration profile."""
from __future__ import annotations

import math

import numpy as np
import pytest

from xinstrument.profiles import find_profile
from xinstrument.sim import BENCHES, Twin, micro_tomo_bench
from xinstrument.sim.bench import MICRO_CHART_WIDTHS_UM
from xinstrument.sim.samples import chart_groups, resolution_chart

PROFILE = "sim-micro-16x-sr"


def test_bench_geometry_is_the_papers():
    cfg = BENCHES["micro-tomo-16x"](sensor_px=64)
    # 20x objective made for f = 200 mm behind a 160 mm tube lens: 16x; 6.5 um / 16 = 0.406 um
    assert cfg.lens.magnification == pytest.approx(20 * 160 / 200)
    assert cfg.pixel_at_screen_um == pytest.approx(0.40625)
    assert 0.4 <= cfg.lens.numerical_aperture <= 0.5
    twin = Twin(cfg, sample="open")
    st = twin.fixed_state
    assert (st.voltage_kv, st.current_ua) == (50.0, 1000.0)
    # the bench's own 40 um spot, not the Hamamatsu power table: the penumbra does not follow
    # the current
    f = np.array([500.0])
    assert twin._spot_mtf(f, 50, 1000, 0) == pytest.approx(twin._spot_mtf(f, 50, 100, 1))
    sigma_mm = 40.0 * (50.0 / 49.5 - 1) / 2.3548 / 1000
    assert twin._spot_mtf(f, 50, 1000, 0)[0] == pytest.approx(
        math.exp(-2 * (math.pi * sigma_mm * 500) ** 2))


def _minima(profile: np.ndarray) -> np.ndarray:
    """Sub-pixel positions of the local minima (bars absorb), parabola through three samples."""
    i = np.flatnonzero((profile[1:-1] < profile[:-2]) & (profile[1:-1] <= profile[2:])) + 1
    y0, y1, y2 = profile[i - 1], profile[i], profile[i + 1]
    return i + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)


@pytest.mark.parametrize("orientation", ["vertical", "horizontal"])
def test_chart_groups_render_at_their_periods(orientation):
    cfg = micro_tomo_bench(sensor_px=256)     # the 3 um group needs a 100 um field
    twin = Twin(cfg, sample=resolution_chart(cfg.fov_mm, MICRO_CHART_WIDTHS_UM), seed=0)
    img = twin.noise_free_transmission("thick")
    p_obj_mm = cfg.pixel_at_object_um / 1000
    n = cfg.sensor.rows
    for g in chart_groups(cfg.fov_mm, MICRO_CHART_WIDTHS_UM):
        if g["orientation"] != orientation:
            continue
        r, c = g["cy"] / p_obj_mm + n / 2, g["cx"] / p_obj_mm + n / 2
        half_across = int(math.ceil(4 * g["width_mm"] / p_obj_mm))
        half_along = max(1, int(0.3 * g["length_mm"] / p_obj_mm))
        if orientation == "vertical":
            band = img[int(r) - half_along:int(r) + half_along + 1,
                       int(c) - half_across:int(c) + half_across + 1]
            profile = band.mean(axis=0)
        else:
            band = img[int(r) - half_across:int(r) + half_across + 1,
                       int(c) - half_along:int(c) + half_along + 1]
            profile = band.mean(axis=1)
        mins = _minima(profile.astype(np.float64))
        period_px = 2 * g["width_um"] * cfg.geometric_magnification / cfg.pixel_at_screen_um
        assert len(mins) == 3, (g["width_um"], profile)
        assert np.diff(mins).mean() == pytest.approx(period_px, rel=0.08), g["width_um"]
        # the bars are centred where the chart puts them
        centre = c if orientation == "vertical" else r      # pixel i spans [i, i + 1)
        assert mins.mean() == pytest.approx(half_across + centre - int(centre) - 0.5, abs=0.5)
        assert profile.max() - profile.min() > 0.01           # bars, not a grey patch


def test_frames_are_camera_frames_of_the_bench():
    cfg = micro_tomo_bench(sensor_px=64)
    twin = Twin(cfg, sample="open", seed=3)
    twin.set_state(stage_um=twin.best_focus_um("thick", 50.0), sample_in=False)
    frame, meta = twin.render(16.0)
    assert frame.shape == (64, 64) and frame.dtype == np.uint16
    assert (meta["voltage_kv"], meta["current_ua"]) == (50.0, 1000.0)
    # about 10 absorbed quanta per pixel per second in the 5 um film at 1 mA, 50 mm
    q = float(twin.expected_quanta(exposure_s=1.0).mean())
    assert 3 < q < 30


def test_shipped_profile_loads_and_matches_the_bench():
    prof = find_profile(PROFILE)
    cfg = micro_tomo_bench(sensor_px=64)
    assert prof.pixel_size_um == pytest.approx(cfg.pixel_at_screen_um)
    assert prof.scintillator["thickness_um"] == pytest.approx(cfg.thick_um)
    assert prof.optics["magnification"] == pytest.approx(16.0)
    assert prof.calibration["bench"] == "micro-tomo-16x"
    # measured slanted-edge MTF of the working screen against the twin's transfer model
    twin = Twin(cfg, sample="open")
    stage = twin.best_focus_um("thick", 50.0)
    f_cy_px = np.array([0.1, 0.2, 0.3])
    model = twin.mtf(f_cy_px / (cfg.pixel_at_screen_um / 1000), "thick", stage, 50.0, 1000.0, 0)
    measured = np.interp(f_cy_px, prof.frequency_cy_per_px, prof.mtf_lr)
    assert np.abs(measured - model).max() < 0.08, (measured, model)
    # ESF -> LSF Gaussian sigma: a fraction of a micrometre, consistent with MTF50
    assert 0.25 < prof.esf_sigma_um < 0.55
    # background noise of one corrected frame at the calibration exposure against the twin's
    # noise model (quantum + optical quanta + dark + read noise)
    exposure_s = float(prof.calibration["exposure_s"])
    twin.set_state(stage_um=stage, sample_in=False)
    g = float(prof.calibration["nnps_adu_per_quantum"])
    mean_adu = float(twin.expected_quanta(exposure_s=exposure_s).mean()) * g
    var = float(np.mean(twin.predicted_variance_adu(np.float64(mean_adu), exposure_s=exposure_s)))
    assert prof.noise_sigma == pytest.approx(math.sqrt(var) / mean_adu, rel=0.15)
