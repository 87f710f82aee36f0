"""Tomosynthesis reconstruction on torch: shift-and-add, limited-arc filtered back-projection, SIRT.

All three take flat-field corrected projections (transmission I/I0) or line integrals
(-ln I/I0), the angles and the :class:`TomoGeometry`, and return slices at the requested
heights above the sample base on a :class:`ReconGrid`:

* ``saa`` (shift-and-add): each projection is mapped onto the plane at height h (magnified and
  shifted so that plane registers) and the projections are averaged. In-plane structure adds
  up, other planes are smeared along the tube's motion. Units: line integral at normal
  incidence (dimensionless; mu * thickness).
* ``fbp``: the projections are filtered along the direction of tube motion with a ramp (which
  undoes the 1/|f| weighting of back-projection), kept from vanishing at low frequencies by a
  floor (the limited arc measures almost nothing of the lowest frequencies, and a pure ramp
  would leave only edges), apodised with a Hann window, then back-mapped as in ``saa`` and
  summed with the angular step: mu ~ dtheta * sum_theta q_theta, the parallel-beam FBP
  restricted to the arc. Units: 1/mm, but not quantitative (missing-cone data).
* ``sirt``: simultaneous iterative reconstruction with the matched ray-driven projector pair
  (:class:`PlaneProjector`): x <- max(0, x + lambda C A^T R (p - A x)), R = 1/A1, C = 1/A^T 1
  (Gilbert 1972; the form used by ASTRA and TIGRE). Units: attenuation coefficient, 1/mm, each
  slice standing for a slab as thick as the slice spacing.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .geometry import ReconGrid, TomoGeometry
from .projector import PlaneProjector, default_device

METHODS = ("saa", "fbp", "sirt")
UNITS = {"saa": "1 (line integral at normal incidence)", "fbp": "1/mm", "sirt": "1/mm"}
# Transmission floor before the logarithm: a fully opaque pixel of a 16-bit detector reads ~1e-4
# of the flat after correction (1 ADU in ~1e4 above the dark); below that the log is noise only.
TRANSMISSION_FLOOR = 1e-4


class ReconError(ValueError):
    """Reconstruction inputs that do not fit together."""


@dataclass
class Reconstruction:
    """Slices [K, rows, cols] (detector orientation) at ``heights_mm`` on ``grid``."""

    slices: np.ndarray
    heights_mm: np.ndarray
    grid: ReconGrid
    method: str
    units: str
    coverage: np.ndarray            # [K, rows, cols]: number of projections seeing each voxel
    n_projections: int
    elapsed_s: float
    params: dict[str, Any] = field(default_factory=dict)

    def slice_at(self, height_mm: float) -> np.ndarray:
        """The slice nearest ``height_mm``."""
        return self.slices[int(np.argmin(np.abs(self.heights_mm - height_mm)))]

    def attrs(self) -> dict[str, Any]:
        out = {"method": self.method, "units": self.units, "heights_mm": self.heights_mm,
               "n_projections": self.n_projections, "elapsed_s": self.elapsed_s}
        out.update(self.grid.to_attrs())
        for k, v in self.params.items():
            out[f"param_{k}"] = v
        return out


def line_integrals(transmission: np.ndarray, floor: float = TRANSMISSION_FLOOR) -> np.ndarray:
    """-ln(T) with T clipped to [floor, inf) (non-finite pixels become 0: no attenuation)."""
    t = np.asarray(transmission, dtype=np.float32)
    out = -np.log(np.clip(np.nan_to_num(t, nan=1.0, posinf=1.0, neginf=floor), floor, None))
    return out.astype(np.float32)


def parse_heights(text: str) -> np.ndarray:
    """``"0,0.53,1.6"`` (list, mm) or ``"0:1.6:64"`` (start:stop:count, inclusive) -> heights."""
    text = text.strip()
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError
            start, stop, n = float(parts[0]), float(parts[1]), int(parts[2])
            if n < 1:
                raise ValueError
            return np.linspace(start, stop, n)
        return np.array([float(v) for v in text.split(",") if v.strip()])
    except ValueError:
        raise ReconError(f"heights {text!r}: give mm values 'h1,h2,...' or 'start:stop:count' "
                         "(e.g. 0:1.6:64)") from None


def ramp_filter(n: int, pixel_mm: float, floor_fraction: float = 0.05,
                cutoff_fraction: float = 1.0) -> np.ndarray:
    """Limited-arc FBP filter on an rfft grid of ``n`` samples: max(|f|, floor * f_N) in
    cycles/mm, times a Hann window reaching 0 at cutoff * f_N (f_N = Nyquist)."""
    f = np.fft.rfftfreq(n, d=pixel_mm)
    f_nyq = 0.5 / pixel_mm
    h = np.maximum(f, floor_fraction * f_nyq)
    fc = cutoff_fraction * f_nyq
    window = np.where(f < fc, 0.5 * (1 + np.cos(np.pi * f / fc)), 0.0)
    return (h * window).astype(np.float32)


def _filter_rows(p: torch.Tensor, pixel_mm: float, floor_fraction: float,
                 cutoff_fraction: float) -> torch.Tensor:
    """Filter along the last axis (the tube's direction of motion), edge-padded to twice the
    width so the circular convolution does not wrap."""
    w = p.shape[-1]
    pad = w // 2
    x = torch.nn.functional.pad(p, (pad, pad), mode="replicate")
    n = x.shape[-1]
    h = torch.from_numpy(ramp_filter(n, pixel_mm, floor_fraction, cutoff_fraction)).to(p.device)
    y = torch.fft.irfft(torch.fft.rfft(x, dim=-1) * h, n=n, dim=-1)
    return y[..., pad:pad + w]


def _validate(projections: np.ndarray, theta_deg: np.ndarray, geometry: TomoGeometry,
              heights_mm: np.ndarray) -> None:
    if projections.ndim != 3:
        raise ReconError(f"projections must be a stack [n, rows, cols], got shape "
                         f"{projections.shape}")
    if projections.shape[0] != theta_deg.size:
        raise ReconError(f"{projections.shape[0]} projections but {theta_deg.size} angles")
    if projections.shape[0] < 2:
        raise ReconError("tomosynthesis needs at least 2 projections at different angles")
    if np.unique(np.round(theta_deg, 6)).size < 2:
        raise ReconError("all projections were taken at the same angle: no depth information")
    if not np.all(np.isfinite(theta_deg)):
        raise ReconError("projection angles contain NaN or infinity")
    if tuple(projections.shape[1:]) != (geometry.rows, geometry.cols):
        raise ReconError(f"projections are {projections.shape[1]}x{projections.shape[2]} px but "
                         f"the geometry is for {geometry.rows}x{geometry.cols} px frames")
    if heights_mm.size < 1 or not np.all(np.isfinite(heights_mm)):
        raise ReconError("give at least one finite slice height")
    if heights_mm.size > 1 and not np.all(np.diff(heights_mm) > 0):
        raise ReconError("slice heights must be strictly increasing")


def reconstruct(projections: np.ndarray, theta_deg, geometry: TomoGeometry, heights_mm,
                method: str = "sirt", *, grid: ReconGrid | None = None,
                transmission: bool = True, iterations: int = 20, relaxation: float = 1.0,
                nonnegative: bool = True, floor_fraction: float = 0.05,
                cutoff_fraction: float = 1.0, device=None, planes_per_batch: int = 8,
                progress: Callable[[int, int], None] | None = None) -> Reconstruction:
    """Reconstruct slices at ``heights_mm`` (mm above the sample base).

    Parameters
    ----------
    projections : [n, rows, cols] flat-field corrected transmission (``transmission=True``)
        or line integrals.
    theta_deg : angle of each projection (deg).
    method : "saa", "fbp" or "sirt".
    grid : lateral grid; default ``ReconGrid.for_scan(..., cover="union")`` for sirt (every
        measured ray is modelled) and ``cover="detector"`` for saa/fbp.
    iterations, relaxation, nonnegative : SIRT settings (relaxation lambda in (0, 2)).
    floor_fraction, cutoff_fraction : FBP filter (see :func:`ramp_filter`).
    progress : ``progress(done, total)`` after each SIRT iteration / each method step.
    """
    if method not in METHODS:
        raise ReconError(f"unknown reconstruction method {method!r}; choose from "
                         f"{', '.join(METHODS)}")
    theta = np.asarray(theta_deg, dtype=np.float64).ravel()
    heights = np.atleast_1d(np.asarray(heights_mm, dtype=np.float64))
    proj = np.asarray(projections)
    _validate(proj, theta, geometry, heights)
    if method == "sirt":
        if heights.size < 2:
            raise ReconError("sirt models the sample as a stack of slabs: give at least 2 heights")
        if not (isinstance(iterations, int) and iterations >= 1):
            raise ReconError(f"iterations must be a positive integer, got {iterations!r}")
        if not 0 < relaxation < 2:
            raise ReconError(f"relaxation must lie in (0, 2), got {relaxation}")
    if method == "fbp" and not (0 <= floor_fraction <= 1 and 0 < cutoff_fraction <= 1):
        raise ReconError("fbp needs 0 <= floor_fraction <= 1 and 0 < cutoff_fraction <= 1")
    try:
        geometry.check_angles(theta, heights)
    except ValueError as exc:
        raise ReconError(str(exc)) from None
    if grid is None:
        grid = ReconGrid.for_scan(geometry, theta, heights,
                                  cover="union" if method == "sirt" else "detector")
    dev = default_device(device)
    t0 = time.perf_counter()
    li = line_integrals(proj) if transmission else np.asarray(proj, dtype=np.float32)
    if geometry.axis == "x":
        li = np.ascontiguousarray(np.swapaxes(li, 1, 2))
    p = torch.from_numpy(np.ascontiguousarray(li)).to(dev)
    op = PlaneProjector(geometry, theta, heights, grid, device=dev,
                        planes_per_batch=planes_per_batch)
    params: dict[str, Any] = {}
    with torch.no_grad():
        if method == "saa":
            total, count = op.backmap(p)
            vol = torch.where(count > 0.5, total / count.clamp_min(1e-6), torch.zeros_like(total))
        elif method == "fbp":
            q = _filter_rows(p, geometry.pixel_mm, floor_fraction, cutoff_fraction)
            total, count = op.backmap(q)
            order = np.sort(theta)
            step_rad = math.radians(float(np.mean(np.diff(order))))
            # voxels seen by fewer angles get the sum rescaled to the full angle count
            vol = torch.where(count > 0.5, total * (theta.size / count.clamp_min(1e-6)),
                              torch.zeros_like(total)) * step_rad
            params = {"floor_fraction": floor_fraction, "cutoff_fraction": cutoff_fraction}
        else:
            vol, count = _sirt(op, p, iterations, relaxation, nonnegative, progress)
            params = {"iterations": iterations, "relaxation": relaxation,
                      "nonnegative": nonnegative}
        if method != "sirt":
            count = count.round()
    slices = vol.cpu().numpy()
    coverage = count.cpu().numpy()
    if geometry.axis == "x":
        slices = np.ascontiguousarray(np.swapaxes(slices, 1, 2))
        coverage = np.ascontiguousarray(np.swapaxes(coverage, 1, 2))
    if progress is not None and method != "sirt":
        progress(1, 1)
    return Reconstruction(slices=slices, heights_mm=heights, grid=grid, method=method,
                          units=UNITS[method], coverage=coverage, n_projections=int(theta.size),
                          elapsed_s=time.perf_counter() - t0, params=params)


def _sirt(op: PlaneProjector, p: torch.Tensor, iterations: int, relaxation: float,
          nonnegative: bool, progress) -> tuple[torch.Tensor, torch.Tensor]:
    ones_v = torch.ones(op.volume_shape, device=op.device)
    row_sum = op.forward(ones_v)
    col_sum = op.adjoint(torch.ones(op.projection_shape, device=op.device))
    r = torch.where(row_sum > 1e-8, 1.0 / row_sum.clamp_min(1e-8), torch.zeros_like(row_sum))
    c = torch.where(col_sum > 1e-8, 1.0 / col_sum.clamp_min(1e-8), torch.zeros_like(col_sum))
    # rays that cross no voxel carry no information about the volume
    x = torch.zeros(op.volume_shape, device=op.device)
    for it in range(iterations):
        residual = (p - op.forward(x)) * r
        x += relaxation * c * op.adjoint(residual)
        if nonnegative:
            x.clamp_(min=0)
        if progress is not None:
            progress(it + 1, iterations)
    # coverage: how many projections see each voxel (for masks and scoring)
    _, count = op.backmap(torch.ones(op.projection_shape, device=op.device),
                          normal_incidence=False)
    return x, count.round()
