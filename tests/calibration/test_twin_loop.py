"""Closing the loop on the digital twin: what the calibration tools measure on twin acquisitions
agrees with the twin's own transfer and noise models."""
from __future__ import annotations

import numpy as np
import pytest

from xinstrument.calibration.mtf import slanted_edge_mtf
from xinstrument.calibration.nnps import nnps, remove_fixed_pattern
from xinstrument.sim import Twin, lens_bench, panel_bench

# Tolerances, from runs of these acquisitions over seeds (32 averaged edge frames, 192-px ESF):
# max |diff| 0.018-0.020 and MTF50 +2.2..+2.7 % (the 1/48 cy/px frequency resolution of the ESF
# smooths the thick lens screen's steep drop near MTF50 = 0.04 cy/px); twice that as the bound.
MTF_MAX_ABS_DIFF = 0.04
MTF50_REL_TOL = 0.05
# The NNPS integral matched the noise model within ~1.5 % over seeds; 5 % leaves room for the
# statistics of 8 flats of 256 px.
NNPS_VARIANCE_REL_TOL = 0.05


def _corrected_edge(twin: Twin, which: str, exposure_s: float, n_frames: int) -> np.ndarray:
    """Dark/flat-corrected mean of ``n_frames`` edge frames, as an operator acquires them."""
    twin.set_state(xray_on=False)
    dark = np.mean([twin.render(exposure_s, which=which)[0] for _ in range(4)], axis=0)
    twin.set_state(xray_on=True, sample_in=False)
    flat = np.mean([twin.render(exposure_s, which=which)[0] for _ in range(16)], axis=0) - dark
    twin.set_state(sample_in=True)
    raw = np.mean([twin.render(exposure_s, which=which)[0] for _ in range(n_frames)], axis=0) - dark
    return raw / flat * flat.mean()


def _mtf50(f: np.ndarray, m: np.ndarray) -> float:
    i = int(np.flatnonzero(m < 0.5)[0])
    return float(f[i - 1] + (m[i - 1] - 0.5) * (f[i] - f[i - 1]) / (m[i - 1] - m[i]))


def test_thick_lens_screen_edge_mtf_matches_the_twin_model() -> None:
    """The slanted edge's measured blur is the PSF the twin renders with (screen, optics, focal
    spot, pixel): measured MTF within MTF_MAX_ABS_DIFF of twin.mtf up to Nyquist."""
    cfg = lens_bench(sensor_px=256)
    twin = Twin(cfg, sample="edge", seed=5)
    twin.set_state(stage_um=twin.best_focus_um("thick"))
    img = _corrected_edge(twin, "thick", 1.0, 32)
    r = slanted_edge_mtf(img[64:192, 32:224], cfg.pixel_at_screen_um)
    assert r.edge_angle_deg == pytest.approx(-3.0, abs=0.1)   # the twin's edge is tilted 3 deg
    k = r.frequency_cy_per_px <= 0.5
    f_mm = r.frequency_cy_per_mm[k]
    model = twin.mtf(f_mm, "thick", stage_um=twin.fixed_state.stage_um)
    assert np.abs(r.mtf[k] - model).max() < MTF_MAX_ABS_DIFF
    assert r.mtf50_cy_per_px == pytest.approx(_mtf50(r.frequency_cy_per_px[k], model), rel=MTF50_REL_TOL)
    # The comparison discriminates: the thin screen's model is far from this measurement.
    thin_model = twin.mtf(f_mm, "thin")
    assert np.abs(r.mtf[k] - thin_model).max() > 0.3


@pytest.mark.parametrize("factory, exposure_s", [(lens_bench, 1.0), (panel_bench, 0.05)])
def test_nnps_of_twin_flats_integrates_to_the_noise_model_variance(factory, exposure_s) -> None:
    """Parseval: the NNPS integrated over the 2-D frequency band is the relative pixel variance
    var/mean^2, which the twin's noise model predicts (quantum noise through the blur, optical
    quanta, dark current, read noise)."""
    cfg = factory(sensor_px=256)
    twin = Twin(cfg, sample="open", seed=7)
    if cfg.kind == "lens":
        twin.set_state(stage_um=twin.best_focus_um("thick"))
    twin.set_state(xray_on=False)
    dark = np.mean([twin.render(exposure_s)[0] for _ in range(4)], axis=0)
    twin.set_state(xray_on=True)
    flats = np.stack([twin.render(exposure_s)[0] - dark for _ in range(8)])
    res = nnps(remove_fixed_pattern(flats), cfg.pixel_at_screen_um, roi_size_px=128)
    n = res.roi_size_px
    measured = float(res.nnps_2d_px2.sum()) / n**2          # integral over (-0.5, 0.5)^2 cy/px
    mean = float(flats.mean())
    predicted = float(twin.predicted_variance_adu(np.array(mean), "thick", exposure_s=exposure_s)) / mean**2
    assert measured == pytest.approx(predicted, rel=NNPS_VARIANCE_REL_TOL)
    # and the 1-D curve falls with frequency: the screen blurs the quantum noise
    assert res.nnps_px2[1] > 2 * res.nnps_px2[-1]


def test_fixed_pattern_removal_keeps_the_temporal_variance() -> None:
    rng = np.random.default_rng(1)
    pattern = 100.0 * (1 + 0.05 * rng.standard_normal((64, 64)))
    stack = pattern + 2.0 * rng.standard_normal((6, 64, 64))
    out = remove_fixed_pattern(stack)
    assert out.mean() == pytest.approx(stack.mean())
    assert out.var() == pytest.approx(4.0, rel=0.05)                   # pattern variance (25) gone
    with pytest.raises(ValueError, match="at least 2 flats"):
        remove_fixed_pattern(stack[:1])
