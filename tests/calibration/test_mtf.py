"""Slanted-edge MTF (ISO 12233:2023 e-SFR) against the analytic answer, and its refusals."""
from __future__ import annotations

import math

import numpy as np
import pytest

from xinstrument.calibration.bench_metrology import (
    SIGMAS_PX,
    SWEEP_ANGLES_DEG,
    analytic_edge_mtf,
    analytic_mtf50,
    noisy_rms,
    render_slanted_edge,
    render_supersampled,
    rendering_error,
    roi_shape,
    score_edge,
    sweep,
)
from xinstrument.calibration.mtf import (
    STANDARD,
    EdgeNotFoundError,
    esf_gaussian_sigma,
    slanted_edge_mtf,
)


def test_rendering_is_exact() -> None:
    """The closed-form pixel integral agrees with brute-force supersampling to the latter's own
    error (midpoint rule, ~1/n^2), far below the 0.003 MTF tolerance."""
    assert rendering_error((24, 32), 5.0, 0.7, 32) < 2e-5
    assert rendering_error((24, 32), 5.0, 0.7, 64) < 5e-6  # shrinks 4x with 2x the samples
    assert rendering_error((24, 48), 40.0, 2.0, 64) < 2e-6
    # the near-vertical branch (Gauss-Legendre along rows) matches too
    exact = render_slanted_edge((16, 24), 0.01, 0.7, 0.0, 1.0)
    assert np.abs(exact - render_supersampled((16, 24), 0.01, 0.7, 64, 0.0, 1.0)).max() < 5e-6


def test_angle_sweep_meets_the_targets() -> None:
    """Noise-free, sigma 0.7 / 1 / 2 px, every angle 2-10 deg in 0.25 deg steps: max |MTF error|
    to Nyquist <= 0.003 and |MTF50 error| <= 0.4 %; at 20 and 40 deg <= 0.005 and <= 1 %."""
    scores = sweep(SIGMAS_PX, SWEEP_ANGLES_DEG)
    assert len(scores) == 3 * 33
    for s in scores:
        assert s.max_abs_error <= 0.003, s
        assert abs(s.mtf50_rel_error) <= 0.004, s
        assert s.measured_angle_deg == pytest.approx(s.angle_deg, abs=0.01)
    for s in sweep(SIGMAS_PX, (20.0, 40.0, -40.0, 44.0)):
        assert s.max_abs_error <= 0.005, s
        assert abs(s.mtf50_rel_error) <= 0.01, s


def test_noisy_mtf50_rms_within_the_reference_range() -> None:
    """Gaussian noise sd 0.01 on a 0.8 step, 30 seeds: MTF50 RMS error no worse than the
    reference implementation's 0.46-1.67 % on the same edges (a sample of the nine)."""
    assert noisy_rms(0.7, 2.0, 30) <= 0.0167
    assert noisy_rms(1.0, 5.0, 30) <= 0.0167
    assert noisy_rms(2.0, 10.0, 30) <= 0.0167


def test_result_names_standard_method_and_angle() -> None:
    img = render_slanted_edge((96, 96), -4.0, 1.0)
    r = slanted_edge_mtf(img, pixel_size_um=6.5)
    assert r.standard == STANDARD and "ISO 12233" in r.standard and "edition 4" in r.standard
    assert "projection along rows" in r.method and "1/cos" in r.method
    assert r.edge_angle_deg == pytest.approx(-4.0, abs=0.01)
    assert r.rows_used <= 96 and r.rows_used * math.tan(math.radians(4.0)) == pytest.approx(
        round(r.rows_used * math.tan(math.radians(4.0))), abs=0.5)
    assert "4.00 deg" in r.summary() and STANDARD in r.summary()
    rec = r.record("mtf_thin")
    assert rec["mtf_thin_standard"] == STANDARD and rec["mtf_thin_edge_angle_deg"] == pytest.approx(-4.0, abs=0.01)
    assert r.mtf50_cy_per_mm == pytest.approx(r.mtf50_cy_per_px * 1000 / 6.5)
    np.testing.assert_allclose(r.frequency_cy_per_mm, r.frequency_cy_per_px * 1000 / 6.5)
    assert r.warnings == []


@pytest.mark.parametrize("tilt_deg, transpose", [(30.0, False), (-30.0, True), (5.0, True), (44.0, True)])
def test_any_orientation(tilt_deg: float, transpose: bool) -> None:
    """An edge nearer the rows (the transposed image) is measured along the columns; the tilt is
    reported from the nearer pixel axis."""
    img = render_slanted_edge((96, 224), tilt_deg, 1.0)
    r = slanted_edge_mtf(img.T if transpose else img, 1.0)
    assert r.orientation == ("horizontal" if transpose else "vertical")
    assert r.edge_angle_deg == pytest.approx(tilt_deg, abs=0.01)
    assert r.mtf50_cy_per_px == pytest.approx(analytic_mtf50(tilt_deg, 1.0), rel=0.005)


def test_falling_edge_and_counts() -> None:
    img = render_slanted_edge((128, 128), 5.0, 1.0, low=5000.0, high=1000.0)
    r = slanted_edge_mtf(np.rint(img).astype(np.uint16), 6.5)
    assert r.mtf50_cy_per_px == pytest.approx(analytic_mtf50(5.0, 1.0), rel=0.005)
    assert r.contrast == pytest.approx(4000 / 6000, rel=0.01)


def test_poisson_noise_mtf50_within_3_percent() -> None:
    rng = np.random.default_rng(12233)
    expected = analytic_mtf50(5.0, 1.0)
    for _ in range(5):
        clean = render_slanted_edge((128, 128), 5.0, 1.0, low=1000.0, high=5000.0)
        r = slanted_edge_mtf(rng.poisson(clean).astype(np.uint16), pixel_size_um=6.5)
        assert r.mtf50_cy_per_px == pytest.approx(expected, rel=0.03)


def test_roi_window_option_matches_within_bias() -> None:
    img = render_slanted_edge((128, 128), 5.0, 2.0)
    a = slanted_edge_mtf(img, 1.0)
    b = slanted_edge_mtf(img, 1.0, lsf_window="roi")
    assert a.mtf50_cy_per_px == pytest.approx(b.mtf50_cy_per_px, rel=0.003)
    assert "sized to the LSF" in a.method and "over the ROI" in b.method
    with pytest.raises(ValueError, match="lsf_window"):
        slanted_edge_mtf(img, 1.0, lsf_window="tukey")


def test_low_contrast_warns_and_still_measures() -> None:
    img = render_slanted_edge((128, 128), 5.0, 1.0, low=0.9, high=1.0)
    r = slanted_edge_mtf(img, 6.5)
    assert any("contrast" in w for w in r.warnings) and r.contrast == pytest.approx(0.1 / 1.9, rel=0.02)
    assert r.mtf50_cy_per_px == pytest.approx(analytic_mtf50(5.0, 1.0), rel=0.005)


def test_mild_shading_warns() -> None:
    img = render_slanted_edge((128, 128), 5.0, 1.0) * (1 + 0.05 * np.arange(128) / 127)[None, :]
    r = slanted_edge_mtf(img, 1.0)
    assert any("plateau changes" in w for w in r.warnings)


def test_esf_gaussian_sigma() -> None:
    for sigma in (0.8, 2.0):
        g = esf_gaussian_sigma(render_slanted_edge((100, 80), 5.0, sigma), pixel_size_um=1.3)
        assert g.sigma_px == pytest.approx(sigma, rel=0.03)
        assert g.sigma_um == pytest.approx(g.sigma_px * 1.3)


# ------------------------------------------------------------------------------ refusals
def _ramp(noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.arange(128)[None, :] * np.ones((128, 1))
    return 1000.0 * (1 + 0.05 * x / 127) + rng.normal(0, noise, (128, 128))


@pytest.mark.parametrize("noise", [0.0, 5.0])
def test_flat_field_with_shading_ramp_is_refused(noise: float) -> None:
    with pytest.raises(EdgeNotFoundError, match="shading ramp or flat field"):
        slanted_edge_mtf(_ramp(noise), 6.5)


def test_no_edge_two_edges_and_a_bar_are_refused() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(EdgeNotFoundError, match="no edge found"):
        slanted_edge_mtf(rng.normal(100, 5, (64, 64)), 6.5)
    bar = render_slanted_edge((128, 128), 5.0, 1.0, offset_px=-20) - render_slanted_edge(
        (128, 128), 5.0, 1.0, offset_px=20) + 0.5
    with pytest.raises(EdgeNotFoundError, match="no edge found.*a bar, a line or two edges"):
        slanted_edge_mtf(bar, 6.5)
    steps = render_slanted_edge((128, 128), 5.0, 1.0, offset_px=-25) + render_slanted_edge(
        (128, 128), 5.0, 1.0, offset_px=25)
    with pytest.raises(EdgeNotFoundError, match="more than one edge|second edge"):
        slanted_edge_mtf(steps, 6.5)
    shaded = render_slanted_edge((128, 128), 5.0, 1.0) * (1 + 0.3 * np.arange(128) / 127)[None, :]
    with pytest.raises(EdgeNotFoundError, match="plateau changes"):
        slanted_edge_mtf(shaded, 6.5)


def test_clipped_edges_are_refused() -> None:
    rng = np.random.default_rng(1)
    clean = render_slanted_edge((128, 128), 5.0, 1.0)
    with pytest.raises(EdgeNotFoundError, match="bright side is clipped"):
        slanted_edge_mtf(np.minimum(clean, 0.66), 6.5)  # noise-free, cut inside the transition
    with pytest.raises(EdgeNotFoundError, match="bright side is clipped"):
        slanted_edge_mtf(np.minimum(clean + rng.normal(0, 0.01, clean.shape), 0.88), 6.5)
    with pytest.raises(EdgeNotFoundError, match="dark side is clipped"):
        slanted_edge_mtf(np.maximum(clean + rng.normal(0, 0.01, clean.shape), 0.11), 6.5)
    counts = np.clip(rng.poisson(clean * 80000), 0, 65535).astype(np.uint16)
    with pytest.raises(EdgeNotFoundError, match="saturation level 65535"):
        slanted_edge_mtf(counts, 6.5)
    with pytest.raises(EdgeNotFoundError, match="saturation level 60000"):
        slanted_edge_mtf(clean * 70000, 6.5, saturation_level=60000)


def test_tilt_and_row_count_are_checked() -> None:
    with pytest.raises(EdgeNotFoundError, match=r"tilt \+0.50 deg is below 1 deg"):
        slanted_edge_mtf(render_slanted_edge((128, 128), 0.5, 1.0), 6.5)
    with pytest.raises(EdgeNotFoundError, match="too few rows"):
        slanted_edge_mtf(render_slanted_edge((20, 128), 1.5, 1.0), 6.5)
    r = slanted_edge_mtf(render_slanted_edge((40, 128), 1.5, 1.0), 6.5)  # one phase cycle: fine
    assert r.rows_used >= 38
    # tan = 1 and 1/2: every row on the same one or two sub-pixel phases
    with pytest.raises(EdgeNotFoundError, match="only 1 of the 4 sub-pixel phases"):
        slanted_edge_mtf(render_slanted_edge((96, 256), 45.0, 1.0), 6.5)
    with pytest.raises(EdgeNotFoundError, match="only 2 of the 4 sub-pixel phases"):
        slanted_edge_mtf(render_slanted_edge((96, 224), math.degrees(math.atan(0.5)), 1.0), 6.5)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="too small"):
        slanted_edge_mtf(np.ones((8, 64)), 6.5)
    with pytest.raises(TypeError, match="dtype"):
        slanted_edge_mtf(np.ones((64, 64), dtype=complex), 6.5)
    with pytest.raises(TypeError, match="dtype"):
        slanted_edge_mtf(np.ones((64, 64), dtype=bool), 6.5)
    img = render_slanted_edge((64, 64), 5.0, 1.0)
    img[3, 4] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf \(first at row 3, col 4\)"):
        slanted_edge_mtf(img, 6.5)
    with pytest.raises(ValueError, match="pixel_size_um"):
        slanted_edge_mtf(render_slanted_edge((64, 64), 5.0, 1.0), -1.0)
    with pytest.raises(ValueError, match="2-D"):
        slanted_edge_mtf(np.ones((4, 64, 64)), 6.5)


def test_score_edge_uses_the_projected_aperture() -> None:
    """The reference the bench scores against is the Gaussian times the projected pixel: a
    measurement scored against the Gaussian alone would be off by the sinc (0.36 at Nyquist)."""
    img = render_slanted_edge(roi_shape(5.0), 5.0, 0.7)
    s = score_edge(img, 5.0, 0.7)
    r = slanted_edge_mtf(img, 1.0)
    k = r.frequency_cy_per_px <= 0.5
    gauss = np.exp(-2 * np.pi**2 * 0.49 * r.frequency_cy_per_px[k] ** 2)
    assert np.abs(r.mtf[k] - gauss).max() > 0.05 > s.max_abs_error
    assert analytic_edge_mtf(0.0, 5.0, 0.7) == 1.0
