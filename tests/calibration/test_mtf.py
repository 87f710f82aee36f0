"""Slanted-edge MTF and ESF sigma against analytic answers."""
from __future__ import annotations

import numpy as np
import pytest

from tests.calibration.synthetic import edge_mtf_analytic, slanted_edge
from xinstrument.calibration.mtf import EdgeNotFoundError, esf_gaussian_sigma, slanted_edge_mtf


def true_mtf50(angle_deg: float, sigma_px: float) -> float:
    f = np.linspace(0, 1, 200001)
    return float(f[np.argmax(edge_mtf_analytic(f, angle_deg, sigma_px) < 0.5)])


@pytest.mark.parametrize("sigma_px, angle_deg", [(0.5, 2.0), (0.8, 5.0), (1.5, 8.0), (1.5, -4.0)])
def test_noise_free_edge_matches_analytic(sigma_px: float, angle_deg: float) -> None:
    img = slanted_edge((100, 80), angle_deg, sigma_px)
    r = slanted_edge_mtf(img, pixel_size_um=6.5)
    assert r.edge_angle_deg == pytest.approx(angle_deg, abs=0.05)
    k = r.frequency_cy_per_px <= 0.5
    expected = edge_mtf_analytic(r.frequency_cy_per_px[k], angle_deg, sigma_px)
    assert np.abs(r.mtf[k] - expected).max() < 0.01
    assert r.mtf50_cy_per_px == pytest.approx(true_mtf50(angle_deg, sigma_px), rel=0.01)
    assert r.mtf50_cy_per_mm == pytest.approx(r.mtf50_cy_per_px * 1000 / 6.5)
    np.testing.assert_allclose(r.frequency_cy_per_mm, r.frequency_cy_per_px * 1000 / 6.5)
    assert r.warnings == []


def test_horizontal_edge_and_wide_blur() -> None:
    img = slanted_edge((100, 200), 5.0, 3.0).T  # edge along columns -> horizontal
    r = slanted_edge_mtf(img, pixel_size_um=1.3)
    assert r.orientation == "horizontal"
    assert r.mtf50_cy_per_px == pytest.approx(true_mtf50(5.0, 3.0), rel=0.01)


def test_poisson_noise_mtf50_within_3_percent() -> None:
    rng = np.random.default_rng(12233)
    expected = true_mtf50(5.0, 1.0)
    for _ in range(5):
        clean = slanted_edge((128, 128), 5.0, 1.0, low=1000.0, high=5000.0)
        noisy = rng.poisson(clean).astype(np.uint16)
        r = slanted_edge_mtf(noisy, pixel_size_um=6.5)
        assert r.mtf50_cy_per_px == pytest.approx(expected, rel=0.03)


def test_warnings_for_low_contrast_and_angle() -> None:
    r = slanted_edge_mtf(slanted_edge((100, 80), 5.0, 1.0, low=0.9, high=1.0), 6.5)
    assert any("contrast" in w for w in r.warnings) and r.contrast == pytest.approx(0.1 / 1.9, rel=0.02)
    r = slanted_edge_mtf(slanted_edge((100, 80), 14.0, 1.0), 6.5)
    assert any("outside 1-10 deg" in w for w in r.warnings)


def test_esf_gaussian_sigma() -> None:
    for sigma in (0.8, 2.0):
        g = esf_gaussian_sigma(slanted_edge((100, 80), 5.0, sigma), pixel_size_um=1.3)
        assert g.sigma_px == pytest.approx(sigma, rel=0.03)
        assert g.sigma_um == pytest.approx(g.sigma_px * 1.3)


def test_bad_input() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(EdgeNotFoundError, match="no edge found"):
        slanted_edge_mtf(rng.normal(100, 5, (64, 64)), 6.5)
    with pytest.raises(ValueError, match="too small"):
        slanted_edge_mtf(np.ones((8, 64)), 6.5)
    with pytest.raises(TypeError, match="dtype"):
        slanted_edge_mtf(np.ones((64, 64), dtype=complex), 6.5)
    with pytest.raises(TypeError, match="dtype"):
        slanted_edge_mtf(np.ones((64, 64), dtype=bool), 6.5)
    img = slanted_edge((64, 64), 5.0, 1.0)
    img[3, 4] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf \(first at row 3, col 4\)"):
        slanted_edge_mtf(img, 6.5)
    with pytest.raises(ValueError, match="pixel_size_um"):
        slanted_edge_mtf(slanted_edge((64, 64), 5.0, 1.0), -1.0)
    with pytest.raises(ValueError, match="2-D"):
        slanted_edge_mtf(np.ones((4, 64, 64)), 6.5)
