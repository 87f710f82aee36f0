"""Target: on the twin, the slice at each copper layer's height correlates best with that layer."""
import numpy as np
import pytest

from xinstrument.recon import ReconError, ReconGrid, TomoGeometry, reconstruct
from xinstrument.sim import tomo
from xinstrument.sim.bench import Twin, lens_bench
from xinstrument.sim.samples import pcb_layers

HEIGHTS = np.linspace(-0.2, 1.8, 11)     # 0.2 mm slices: every copper layer near a slice


@pytest.fixture(scope="module")
def scan():
    bench = lens_bench(256)
    twin = Twin(bench, sample="open", seed=1)
    twin.sample = pcb_layers(bench.fov_mm, seed=1)
    theta = np.linspace(-3, 3, 9)           # a 0.33 mm field keeps every layer in view
    proj = tomo.projections(twin, theta, "thin")
    return twin, TomoGeometry.from_bench(bench), theta, proj


def _matrix(twin, rec, n_angles):
    layers = tomo.copper_layers(twin.sample)
    truth = tomo.layer_truth(twin.sample, rec.grid)
    rows = []
    for layer in layers:
        k = int(np.argmin(np.abs(rec.heights_mm - layer.height_mm)))
        mask = tomo.full_coverage_mask(rec.coverage[k], n_angles)
        rows.append(tomo.layer_correlations(rec.slices[k:k + 1], truth, mask)[0])
    return np.array(rows)


def test_sirt_separates_every_copper_layer(scan):
    twin, g, theta, proj = scan
    grid = ReconGrid.for_scan(g, theta, HEIGHTS)
    rec = reconstruct(proj, theta, g, HEIGHTS, "sirt", grid=grid, iterations=12)
    c = _matrix(twin, rec, theta.size)
    assert np.all(np.argmax(c, axis=1) == np.arange(4)), np.round(c, 3)
    assert np.all(np.diag(c) > 0.4), np.round(c, 3)


@pytest.mark.parametrize("method", ["saa", "fbp"])
def test_saa_and_fbp_recover_in_plane_structure(scan, method):
    twin, g, theta, proj = scan
    rec = reconstruct(proj, theta, g, HEIGHTS, method, grid=ReconGrid.for_scan(g, theta, HEIGHTS))
    c = _matrix(twin, rec, theta.size)
    # each layer's truth is recovered best at its own height (column-wise: out-of-plane layers
    # are smeared along the tube motion), and the diagonal beats the off-diagonal mean
    assert np.all(np.argmax(c, axis=0) == np.arange(4)), np.round(c, 3)
    off = (c.sum() - np.trace(c)) / 12
    assert np.trace(c) / 4 > off + 0.15, np.round(c, 3)


def test_reconstruction_refuses_bad_input(scan):
    _, g, theta, proj = scan
    with pytest.raises(ReconError, match="angles"):
        reconstruct(proj, theta[:-1], g, HEIGHTS, "saa")
    with pytest.raises(ReconError, match="same angle"):
        reconstruct(proj[:2], [1.0, 1.0], g, HEIGHTS, "saa")
    with pytest.raises(ReconError, match="increasing"):
        reconstruct(proj, theta, g, HEIGHTS[::-1], "saa")
    with pytest.raises(ReconError, match="unknown"):
        reconstruct(proj, theta, g, HEIGHTS, "art")
    with pytest.raises(ReconError, match="at least 2 heights"):
        reconstruct(proj, theta, g, [0.5], "sirt")
