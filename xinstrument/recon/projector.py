"""Matched ray-driven projector / back-projector for plane-stack (tomosynthesis) volumes, on torch.

The volume is a stack of slices at heights h_k, each standing for a slab of thickness dz_k
(attenuation coefficient in 1/mm, constant within the slab). For a detector pixel at angle
theta the ray from the source to the pixel crosses slice k at a point given by the plane's
homography (:meth:`TomoGeometry.detector_to_plane`); the slice is sampled there by bilinear
interpolation, and the ray's path through the slab is dz_k times the pixel's obliquity factor
(:meth:`TomoGeometry.path_factor`):

    p_theta(pixel) = pathfactor_theta(pixel) * sum_k dz_k * mu_k(H_theta,k(pixel))

This is a ray-driven projector with plane-by-plane (Joseph-type) interpolation, exact for the
plane geometry of tomosynthesis. ``adjoint`` is its exact transpose (the transpose of bilinear
sampling, ``grid_sampler_2d_backward``), so SIRT/SART built on the pair converge to a
least-squares solution. ``backmap`` is the pixel-driven back-mapping used by shift-and-add and
filtered back-projection: every voxel takes the value of the projection where it projects.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import ReconGrid, TomoGeometry


def default_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when available, else CPU (DESIGN.md section 9); an explicit choice wins."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def slab_thicknesses_mm(heights_mm: np.ndarray) -> np.ndarray:
    """Thickness each slice stands for: half the distance to each neighbour (the end slices
    take their one neighbour's spacing). A single slice has no thickness to infer."""
    h = np.asarray(heights_mm, dtype=np.float64)
    if h.size < 2:
        raise ValueError("slab thickness needs at least two slice heights")
    edges = np.concatenate([[h[0] - (h[1] - h[0]) / 2], (h[1:] + h[:-1]) / 2,
                            [h[-1] + (h[-1] - h[-2]) / 2]])
    return np.diff(edges)


_BASE_CACHE: dict = {}


def _base(rows: int, cols: int, device, dtype) -> torch.Tensor:
    """Homogeneous pixel coordinates (col, row, 1), [rows * cols, 3], cached per shape."""
    key = (rows, cols, str(device), dtype)
    if key not in _BASE_CACHE:
        if len(_BASE_CACHE) > 8:
            _BASE_CACHE.clear()
        r, c = torch.meshgrid(torch.arange(rows, device=device, dtype=dtype),
                              torch.arange(cols, device=device, dtype=dtype), indexing="ij")
        _BASE_CACHE[key] = torch.stack([c.reshape(-1), r.reshape(-1),
                                        torch.ones(rows * cols, device=device, dtype=dtype)], 1)
    return _BASE_CACHE[key]


def _grid_from_matrices(mats: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Sampling grid [k, rows, cols, 2] from 3x3 matrices [k, 3, 3] applied to (col, row, 1)
    (one batched matrix product, then the projective division)."""
    base = _base(rows, cols, mats.device, mats.dtype)
    q = torch.matmul(base, mats.transpose(1, 2))          # [k, rows * cols, 3]
    g = q[..., :2] / q[..., 2:3]
    return g.view(-1, rows, cols, 2)


def _sample_adjoint(values: torch.Tensor, grid: torch.Tensor, out_hw: tuple[int, int]
                    ) -> torch.Tensor:
    """Transpose of ``grid_sample(input, grid)`` (bilinear, zero padding) applied to
    ``values`` [k, 1, H, W]; returns [k, 1, *out_hw]."""
    k = values.shape[0]
    shape_only = torch.zeros((1, 1, 1, 1), device=values.device, dtype=values.dtype) \
        .expand(k, 1, *out_hw)
    grad_input, _ = torch.ops.aten.grid_sampler_2d_backward(
        values.contiguous(), shape_only, grid, 0, 0, False, [True, False])
    return grad_input


class PlaneProjector:
    """Forward projector and its adjoint for one scan geometry, angle set and slice stack.

    Parameters
    ----------
    geometry : TomoGeometry of the scan.
    theta_deg : projection angles (deg), one per projection.
    heights_mm : slice heights above the sample base (mm), increasing.
    grid : lateral voxel grid of every slice.
    slab_mm : thickness each slice stands for; default :func:`slab_thicknesses_mm`.
    device : torch device (default: CUDA if available).
    planes_per_batch : slices sampled per grid_sample call (memory: planes x frame x 8 bytes).

    Arrays are in the "axis = y" orientation (see :class:`TomoGeometry`); the reconstruction
    functions transpose "axis = x" frames on the way in and out.
    """

    def __init__(self, geometry: TomoGeometry, theta_deg, heights_mm, grid: ReconGrid,
                 slab_mm=None, device=None, planes_per_batch: int = 8) -> None:
        self.geometry = geometry
        self.theta_deg = np.asarray(theta_deg, dtype=np.float64).ravel()
        self.heights_mm = np.asarray(heights_mm, dtype=np.float64).ravel()
        if self.theta_deg.size < 1 or self.heights_mm.size < 1:
            raise ValueError("a projector needs at least one angle and one slice height")
        self.grid = grid
        self.device = default_device(device)
        self.batch = max(1, int(planes_per_batch))
        self.det_shape = geometry.canonical_shape
        if slab_mm is None:
            slab_mm = slab_thicknesses_mm(self.heights_mm) if self.heights_mm.size > 1 \
                else np.ones(1)
        self.slab_mm = np.asarray(slab_mm, dtype=np.float64).ravel()
        if self.slab_mm.shape != self.heights_mm.shape or not np.all(self.slab_mm > 0):
            raise ValueError("slab_mm must give one positive thickness per slice")
        geometry.check_angles(self.theta_deg, self.heights_mm)
        rows, cols = self.det_shape
        p = geometry.pixel_to_detector_mm()
        n_plane = grid.plane_to_normalised()
        vox = grid.voxel_to_plane()
        # detector normalised coordinates (align_corners=False) from detector mm
        n_det = np.array([[2.0 / cols, 0, 1.0 / cols - 1.0], [0, 2.0 / rows, 1.0 / rows - 1.0],
                          [0, 0, 1.0]]) @ np.linalg.inv(p)
        fwd, back = [], []
        for t in self.theta_deg:
            fwd.append([n_plane @ geometry.detector_to_plane(t, h) @ p for h in self.heights_mm])
            back.append([n_det @ geometry.plane_to_detector(t, h) @ vox
                         for h in self.heights_mm])
        f32 = dict(device=self.device, dtype=torch.float32)
        # homographies are well conditioned in double; the grids are built in float32
        self._fwd = torch.tensor(np.array(fwd), **f32)       # [A, K, 3, 3]
        self._back = torch.tensor(np.array(back), **f32)     # [A, K, 3, 3]
        self._path = torch.stack([torch.from_numpy(geometry.path_factor(t))
                                  for t in self.theta_deg]).to(**f32)   # [A, rows, cols]
        self._dz = torch.tensor(self.slab_mm, **f32)

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        return (self.heights_mm.size, self.grid.rows, self.grid.cols)

    @property
    def projection_shape(self) -> tuple[int, int, int]:
        return (self.theta_deg.size, *self.det_shape)

    def _chunks(self):
        k = self.heights_mm.size
        for s in range(0, k, self.batch):
            yield slice(s, min(s + self.batch, k))

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """Line integrals [A, rows, cols] of ``volume`` [K, grid rows, grid cols] (1/mm)."""
        vol = volume.to(self.device, torch.float32).unsqueeze(1)
        rows, cols = self.det_shape
        out = torch.zeros(self.projection_shape, device=self.device, dtype=torch.float32)
        for a in range(self.theta_deg.size):
            acc = torch.zeros((rows, cols), device=self.device, dtype=torch.float32)
            for sl in self._chunks():
                g = _grid_from_matrices(self._fwd[a, sl], rows, cols)
                s = F.grid_sample(vol[sl], g, mode="bilinear", padding_mode="zeros",
                                  align_corners=False)
                acc += torch.einsum("k,khw->hw", self._dz[sl], s[:, 0])
            out[a] = acc * self._path[a]
        return out

    def adjoint(self, projections: torch.Tensor) -> torch.Tensor:
        """Exact transpose of :meth:`forward`: [A, rows, cols] -> [K, grid rows, grid cols]."""
        proj = projections.to(self.device, torch.float32)
        rows, cols = self.det_shape
        out = torch.zeros(self.volume_shape, device=self.device, dtype=torch.float32)
        for a in range(self.theta_deg.size):
            weighted = proj[a] * self._path[a]
            for sl in self._chunks():
                g = _grid_from_matrices(self._fwd[a, sl], rows, cols)
                vals = (self._dz[sl].view(-1, 1, 1) * weighted).unsqueeze(1)
                out[sl] += _sample_adjoint(vals, g, (self.grid.rows, self.grid.cols))[:, 0]
        return out

    def backmap(self, projections: torch.Tensor, normal_incidence: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel-driven back-mapping: every voxel takes each projection's value where it
        projects (bilinear). Returns (sum over angles [K, gr, gc], number of angles that see
        each voxel [K, gr, gc]). ``normal_incidence`` divides by the obliquity factor first, so
        a flat slab gives the same value at every angle."""
        proj = projections.to(self.device, torch.float32)
        if normal_incidence:
            proj = proj / self._path
        ones = torch.ones((1, 1, *self.det_shape), device=self.device, dtype=torch.float32)
        total = torch.zeros(self.volume_shape, device=self.device, dtype=torch.float32)
        count = torch.zeros_like(total)
        for a in range(self.theta_deg.size):
            img = proj[a].view(1, 1, *self.det_shape)
            for sl in self._chunks():
                k = sl.stop - sl.start
                g = _grid_from_matrices(self._back[a, sl], self.grid.rows, self.grid.cols)
                total[sl] += F.grid_sample(img.expand(k, -1, -1, -1), g, mode="bilinear",
                                           padding_mode="zeros", align_corners=False)[:, 0]
                count[sl] += F.grid_sample(ones.expand(k, -1, -1, -1), g, mode="bilinear",
                                           padding_mode="zeros", align_corners=False)[:, 0]
        return total, count
