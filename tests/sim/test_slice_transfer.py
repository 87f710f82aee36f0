"""Transfer of shift-and-add tomosynthesis slices (xinstrument.sim.slice_transfer)."""
from __future__ import annotations

import numpy as np
import pytest

from xinstrument.sim import Twin, micro_tomo_bench
from xinstrument.sim.slice_transfer import shift_and_add_otf, twin_slice_transfer

F_RADIAL = np.linspace(0.0, 3000.0, 301)      # cy/mm


def test_one_depth_over_a_symmetric_arc_is_the_cosine_of_its_parallax():
    z_um, theta = 4.0, 20.0
    radial = np.exp(-F_RADIAL / 2000.0)[None, :]
    fx = np.linspace(0, 1500, 31)[None, :]
    fy = np.zeros((1, 1))
    h = shift_and_add_otf(fx, fy, F_RADIAL, radial, [1.0], [z_um], [-theta, theta])
    shift_mm = z_um * np.tan(np.deg2rad(theta)) / 1000
    expected = np.exp(-fx / 2000.0) * np.cos(2 * np.pi * fx * shift_mm)
    np.testing.assert_allclose(h.real, expected, atol=1e-9)
    np.testing.assert_allclose(h.imag, 0.0, atol=1e-12)
    # across the tilt the parallax does nothing: the radial OTF itself
    hy = shift_and_add_otf(np.zeros((1, 1)), fx.T, F_RADIAL, radial, [1.0], [z_um],
                           [-theta, theta])
    np.testing.assert_allclose(hy.real[:, 0], np.exp(-fx[0] / 2000.0), atol=1e-9)


def test_one_tilted_projection_only_translates():
    radial = np.ones((2, F_RADIAL.size))
    fx = np.linspace(0, 1500, 31)[None, :]
    h = shift_and_add_otf(fx, np.zeros((1, 1)), F_RADIAL, radial, [1.0, 0.0], [3.0, 5.0], [15.0])
    np.testing.assert_allclose(np.abs(h), 1.0, atol=1e-12)       # a pure phase ramp


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="n_depths"):
        shift_and_add_otf(np.zeros((1, 1)), np.zeros((1, 1)), F_RADIAL, np.ones((2, 5)),
                          [0.5, 0.5], [1, 2], [0.0])
    with pytest.raises(ValueError, match="exceed"):
        shift_and_add_otf(np.full((1, 1), 5000.0), np.zeros((1, 1)), F_RADIAL,
                          np.ones((1, F_RADIAL.size)), [1.0], [1.0], [0.0])


def test_micro_bench_slice_is_blurred_along_the_tilt_only():
    twin = Twin(micro_tomo_bench(sensor_px=32), sample="open")
    res = twin_slice_transfer(twin, 20.0, 21, f_max_cy_per_px=1.0, n_freq=81)
    f = res["frequency_x_cy_per_px"]
    t = res["transfer"]
    assert t[0, 0] == pytest.approx(1.0, abs=1e-9)
    # along the tilt (x) the averaged parallax lowers the transfer; across (y) it does not
    at = lambda row: np.interp(0.2, f, row)       # the 1 um group's fundamental, ~0.2 cy/px
    along, across = at(t[0, :]), at(t[:, 0])
    assert along < 0.5 * across
    # across the tilt: the working screen's normal-incidence MTF over the reference's
    kv = twin.fixed_state.voltage_kv
    f_mm = 0.2 / (twin.config.pixel_at_screen_um / 1000)
    ratio = (twin.mtf([f_mm], "thick", twin.best_focus_um("thick", kv), kv, 1000.0,
                      include_pixel=False)
             / twin.mtf([f_mm], "thin", twin.best_focus_um("thin", kv), kv, 1000.0,
                        include_pixel=False))[0]
    assert across == pytest.approx(ratio, rel=0.02)
    # a wider arc blurs more along the tilt and the same across it
    wide = twin_slice_transfer(twin, 30.0, 21, f_max_cy_per_px=1.0, n_freq=81)["transfer"]
    assert at(wide[0, :]) < along
    assert at(wide[:, 0]) == pytest.approx(across, abs=1e-9)


def test_slice_transfer_is_what_twin_slices_of_a_slanted_edge_measure():
    """Noise-free slices of a tungsten edge (the projections registered on the edge's plane, as
    ``bench._sr_slice`` makes them), ISO 12233 slanted-edge MTF in both orientations, against
    the slice transfer's MTF (pixel aperture included)."""
    import dataclasses

    from xinstrument.calibration.mtf import slanted_edge_mtf
    from xinstrument.sim.samples import HalfPlane, Layer, Sample, translated

    cfg = micro_tomo_bench(sensor_px=64)
    angles = np.linspace(-20.0, 20.0, 5)
    probe = Twin(cfg, sample="open")
    res = twin_slice_transfer(probe, 20.0, 5, f_max_cy_per_px=1.0, n_freq=81)
    freqs = np.array([0.1, 0.15, 0.2, 0.25])
    _, s0 = probe.layer_projection(0.0, 0.0)
    measured = {}
    for edge_deg, side in ((4.0, "along"), (94.0, "across")):
        acc = 0.0
        for theta in angles:
            mag, s = probe.layer_projection(0.0, theta)
            edge = Layer("tungsten", 0.0, [HalfPlane(0.0, 0.0, edge_deg, 0.002)], name="edge")
            twin = Twin(cfg, sample=translated(Sample("edge", [edge]), -(s - s0) / mag), seed=0)
            st = dataclasses.replace(twin.fixed_state, theta_deg=float(theta))
            acc = acc + twin.noise_free_transmission("thick", state=st).astype(np.float64)
        img = acc / len(angles)
        m = slanted_edge_mtf(img if side == "along" else img.T, cfg.pixel_at_screen_um, name=side)
        measured[side] = np.interp(freqs, m.frequency_cy_per_px, m.mtf)
        predicted = np.interp(freqs, res["frequency_x_cy_per_px"], res[f"mtf_{side}_tilt"])
        np.testing.assert_allclose(measured[side], predicted, atol=0.03)
    assert np.all(measured["along"] < measured["across"] - 0.05)
