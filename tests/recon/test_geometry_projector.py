"""Geometry against the twin's own projection law, storage round trip, matched projector pair."""
import numpy as np
import pytest
import torch

from xinstrument.recon import GeometryError, PlaneProjector, ReconGrid, TomoGeometry
from xinstrument.sim.bench import Twin, lens_bench


def test_tube_geometry_matches_the_twin_layer_projection():
    bench = lens_bench(64)
    g = TomoGeometry.from_bench(bench)
    twin = Twin(bench, sample="open")
    for theta in (-20.0, 0.0, 7.5):
        for h in (0.0, 0.8, 1.6):
            m, shift = twin.layer_projection(h, theta)
            q = g.plane_to_detector(theta, h) @ np.array([0.1, -0.05, 1.0])
            assert q[:2] / q[2] == pytest.approx([m * 0.1 + shift, -m * 0.05], rel=1e-9)


def test_geometry_attrs_round_trip_and_errors():
    g = TomoGeometry(kind="sample", source_detector_mm=30, source_object_mm=29,
                     pixel_mm=0.0013, rows=32, cols=48, axis_height_mm=0.8)
    assert TomoGeometry.from_attrs(g.to_attrs()) == g
    with pytest.raises(GeometryError, match="missing"):
        TomoGeometry.from_attrs({"tomo_kind": "tube"})
    with pytest.raises(GeometryError, match="smaller"):
        TomoGeometry(kind="tube", source_detector_mm=30, source_object_mm=31, pixel_mm=1e-3,
                     rows=4, cols=4)
    with pytest.raises(GeometryError, match="kind"):
        TomoGeometry(kind="helical", source_detector_mm=30, source_object_mm=29, pixel_mm=1e-3,
                     rows=4, cols=4)


@pytest.mark.parametrize("kind", ["tube", "sample"])
def test_adjoint_is_the_transpose_of_the_projector(kind):
    g = TomoGeometry(kind=kind, source_detector_mm=30, source_object_mm=29, pixel_mm=0.0013,
                     rows=24, cols=32, axis_height_mm=0.8)
    theta, heights = np.linspace(-5, 5, 4), np.linspace(0, 1.6, 5)
    op = PlaneProjector(g, theta, heights, ReconGrid.for_scan(g, theta, heights))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(op.volume_shape, generator=gen)
    y = torch.rand(op.projection_shape, generator=gen)
    lhs = float((op.forward(x).double() * y.double()).sum())
    rhs = float((x.double() * op.adjoint(y).double()).sum())
    assert lhs == pytest.approx(rhs, rel=1e-5)


def test_a_uniform_slab_projects_to_its_thickness_times_obliquity():
    g = TomoGeometry(kind="tube", source_detector_mm=30, source_object_mm=29, pixel_mm=0.0013,
                     rows=16, cols=16)
    heights = np.linspace(0, 1.0, 11)
    theta = np.array([0.0, 10.0])
    op = PlaneProjector(g, theta, heights, ReconGrid.for_scan(g, theta, heights))
    p = op.forward(torch.full(op.volume_shape, 2.0))        # mu = 2 / mm over 1.1 mm of slabs
    assert float(p[0].mean()) == pytest.approx(2.0 * 1.1, rel=1e-3)
    assert float(p[1].mean()) == pytest.approx(2.0 * 1.1 / np.cos(np.deg2rad(10)), rel=2e-3)
