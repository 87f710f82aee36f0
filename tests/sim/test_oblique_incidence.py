"""Oblique incidence: with the tube off the screen normal (tube-rotation tomosynthesis), each
depth of the screen sees the beam's entry point shifted by z tan(theta), so the screen blurs
along the tilt by its depth distribution and not across it."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from xinstrument.calibration.mtf import slanted_edge_mtf
from xinstrument.sim import Twin, micro_tomo_bench
from xinstrument.sim.detector import oblique_parallax_shift_mm
from xinstrument.sim.samples import HalfPlane, Layer, Sample

THETA_DEG = 20.0
FREQS_CY_PX = np.array([0.05, 0.1, 0.15, 0.2, 0.25])


def _edge_mtf(cfg, theta_deg: float, edge_angle_deg: float) -> np.ndarray:
    """Slanted-edge MTF of a noise-free frame with the tube at ``theta_deg``; the tungsten edge
    is placed where its projection crosses the field centre."""
    probe = Twin(cfg, sample="open")
    mag, shift_mm = probe.layer_projection(0.0, theta_deg)
    edge = Layer("tungsten", 0.0, [HalfPlane(-shift_mm / mag, 0.0, edge_angle_deg, 0.002)],
                 name="edge")
    twin = Twin(cfg, sample=Sample("edge", [edge]), seed=0)
    st = dataclasses.replace(twin.fixed_state, theta_deg=theta_deg)
    img = twin.noise_free_transmission("thick", state=st)
    res = slanted_edge_mtf(img.astype(np.float64), cfg.pixel_at_screen_um, name="edge")
    return np.interp(FREQS_CY_PX, res.frequency_cy_per_px, res.mtf)


@pytest.fixture(scope="module")
def bench():
    return micro_tomo_bench(sensor_px=96)


def test_oblique_beam_blurs_along_the_tilt_by_the_depth_distribution(bench):
    twin = Twin(bench, sample="open")
    z_um, w = twin.depth_weights(twin.fixed_state.voltage_kv, "thick")
    f_mm = FREQS_CY_PX / (bench.pixel_at_screen_um / 1000)
    shift = oblique_parallax_shift_mm(z_um, THETA_DEG)
    parallax = np.abs((w[None, :] * np.exp(-2j * np.pi * f_mm[:, None] * shift[None, :])).sum(1))
    assert parallax[-1] < 0.5        # a 5 um film at 20 deg: a real loss at 1 um periods
    along_0 = _edge_mtf(bench, 0.0, 4.0)           # edge across x: MTF along x
    along_t = _edge_mtf(bench, THETA_DEG, 4.0)
    across_0 = _edge_mtf(bench, 0.0, 86.0)         # edge across y: MTF along y
    across_t = _edge_mtf(bench, THETA_DEG, 86.0)
    # near the box's first zero (0.22 cy/px) the edge estimate itself is uncertain by a few %
    np.testing.assert_allclose(along_t[:3], (along_0 * parallax)[:3], atol=0.03)
    np.testing.assert_allclose(along_t[3:], (along_0 * parallax)[3:], atol=0.05)
    np.testing.assert_allclose(across_t, across_0, atol=0.03)
    assert along_t[-2] < 0.5 * across_t[-2]


def test_normal_incidence_is_unchanged_and_the_sense_follows_the_tube(bench):
    twin = Twin(bench, sample="open")
    z_um, _ = twin.depth_weights(50.0, "thick")
    # deeper quanta land further from the source side, as higher layers project
    assert np.all(np.diff(oblique_parallax_shift_mm(z_um, THETA_DEG)) < 0)
    assert np.all(np.diff(oblique_parallax_shift_mm(z_um, -THETA_DEG)) > 0)
    np.testing.assert_array_equal(oblique_parallax_shift_mm(z_um, 0.0), 0.0)
    _, shift_high = twin.layer_projection(1.0, THETA_DEG)
    _, shift_low = twin.layer_projection(0.0, THETA_DEG)
    assert shift_high < shift_low
