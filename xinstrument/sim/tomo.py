"""Tomosynthesis on the digital twin: projections at tube angles and per-layer ground truth.

The twin already renders a layered sample with the tube at any angle on its circle about the
scintillator centre (``WorldState.theta_deg``, ``Twin.layer_projection``), with the same
physics as every other frame. This module adds what scoring a reconstruction needs:

* :func:`projections` - noise-free, flat-normalised projections (thick or thin screen) at a set
  of angles (what an ideal scan would measure), for tests and benchmarks without the devices;
* :func:`layer_truth` - each copper layer's own projected thickness rendered on the
  reconstruction grid, i.e. the in-plane structure a slice at that layer's height should show;
* :func:`layer_correlations` - Pearson correlation of slices against every layer's truth over
  the voxels every projection sees.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .bench import Twin
from .samples import Grid, Sample


def copper_layers(sample: Sample) -> list:
    """The sample's copper layers (planar wiring levels), lowest first."""
    out = [layer for layer in sample.layers
           if layer.material == "copper" and layer.name.startswith("copper L")]
    return sorted(out, key=lambda layer: layer.height_mm)


def projections(twin: Twin, theta_deg, which: str = "thick", voltage_kv: float | None = None
                ) -> np.ndarray:
    """Noise-free flat-normalised transmission [n, rows, cols] with the tube at each angle."""
    base = twin.state_provider()
    out = []
    for t in np.atleast_1d(theta_deg):
        st = dataclasses.replace(base, theta_deg=float(t), sample_in=True, xray_on=True)
        if voltage_kv is not None:
            st.voltage_kv = float(voltage_kv)
        out.append(twin.noise_free_transmission(which, state=st))
    return np.stack(out).astype(np.float32)


def layer_truth(sample: Sample, grid, layers=None) -> np.ndarray:
    """Projected thickness (mm) of each layer's own shapes on ``grid`` [n_layers, rows, cols].

    ``grid`` is any object with rows, cols, voxel_mm (or pixel_mm), x0_mm, y0_mm in the sample
    frame (a recon ``ReconGrid`` or a samples ``Grid``); ``layers`` default
    :func:`copper_layers`."""
    layers = copper_layers(sample) if layers is None else list(layers)
    pixel = getattr(grid, "voxel_mm", None) or grid.pixel_mm
    g = Grid(int(grid.rows), int(grid.cols), float(pixel), float(grid.x0_mm), float(grid.y0_mm))
    out = np.zeros((len(layers), g.rows, g.cols), np.float32)
    for i, layer in enumerate(layers):
        maps = Sample("truth", [layer]).thickness_maps(g)
        for m in maps.values():
            out[i] += m
    return out


def layer_correlations(slices: np.ndarray, truths: np.ndarray, mask: np.ndarray | None = None
                       ) -> np.ndarray:
    """Pearson correlation matrix C[i, j] of slice i against truth j over ``mask``.

    Slices are signed like attenuation (copper bright); a perfect layer separation gives a
    matrix whose every row peaks on its diagonal."""
    s = np.asarray(slices, dtype=np.float64)
    t = np.asarray(truths, dtype=np.float64)
    if s.shape[1:] != t.shape[1:]:
        raise ValueError(f"slices {s.shape[1:]} and truths {t.shape[1:]} are on different grids")
    m = np.ones(s.shape[1:], bool) if mask is None else np.asarray(mask, bool)
    if m.sum() < 16:
        raise ValueError("fewer than 16 voxels to score: the mask is (almost) empty")
    out = np.zeros((s.shape[0], t.shape[0]))
    for i in range(s.shape[0]):
        a = s[i][m] - s[i][m].mean()
        for j in range(t.shape[0]):
            b = t[j][m] - t[j][m].mean()
            den = np.sqrt((a * a).sum() * (b * b).sum())
            out[i, j] = float((a * b).sum() / den) if den > 0 else 0.0
    return out


def full_coverage_mask(coverage: np.ndarray, n_projections: int, margin_px: int = 2
                       ) -> np.ndarray:
    """Voxels of one slice seen by every projection, shrunk by ``margin_px`` (interpolation
    edge)."""
    m = np.asarray(coverage) >= n_projections - 0.01
    if margin_px > 0 and m.any():
        from scipy.ndimage import binary_erosion
        m = binary_erosion(m, iterations=margin_px)
    return m
