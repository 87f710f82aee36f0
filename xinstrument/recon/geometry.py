"""Tomosynthesis geometry: where the source, the sample planes and the detector pixels are.

Frames and units
----------------
* Detector plane z = 0 (the scintillator), lengths in mm. A detector pixel (row r, col c) sits
  at u = (c - centre_col_px) * pixel_mm, v = (r - centre_row_px) * pixel_mm; the rotation
  centre projects onto (centre_row_px, centre_col_px), by default the frame centre, which is
  also what the digital twin renders (xinstrument/sim/samples.py ``Grid.centred``).
* The rotation axis is parallel to the detector rows' direction y ("axis = y"), so the source
  (or the sample) swings along x, the column direction; "axis = x" swaps rows and columns.
* Heights ``height_mm`` are measured above the object reference plane (the sample base), which
  lies ``source_detector_mm - source_object_mm`` above the detector at theta = 0. Slices are
  planes of constant height in the sample's own frame.

Kinds
-----
``tube``: the tube rotates on a circle of radius SDD about the scintillator centre while
sample and detector stay still (lens-coupled micro-tomosynthesis, shared/papers/003). The
source is at (SDD sin theta, 0, SDD cos theta). Every sample plane maps onto the detector by a
magnification and an x shift (an affine map).

``sample``: source at (0, 0, SDD) and detector fixed; the sample turns about an axis parallel
to y at ``axis_height_mm`` above the sample base. The angle is signed so that the source appears
at +theta in the sample frame, the same sense as the tube geometry. Planes map onto the detector
by a homography.

Both are handled by one description: per angle, the source position S and the detector pixel
positions D(u, v) expressed in the sample frame; the ray from S to D crosses the plane z = h at
a point that is a projective function of (u, v). ``detector_to_plane`` returns that 3x3 matrix.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

KINDS = ("tube", "sample")
AXES = ("y", "x")
ATTR_PREFIX = "tomo_"


class GeometryError(ValueError):
    """An inconsistent or incomplete geometry."""


def _rot_y(angle_rad: float) -> np.ndarray:
    """Rotation about y mapping the z axis onto (sin a, 0, cos a)."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclass(frozen=True)
class TomoGeometry:
    """Geometry of a tomosynthesis scan (see the module docstring for frames and signs).

    Parameters
    ----------
    kind : "tube" (tube rotates about the scintillator centre) or "sample" (sample rotates).
    source_detector_mm : source to scintillator distance (tube kind: the radius of the tube's
        circle).
    source_object_mm : source to the object reference plane (sample base) at theta = 0.
    pixel_mm : detector pixel pitch at the scintillator (camera pixel / optical magnification
        for lens-coupled detectors, times binning).
    rows, cols : detector frame shape.
    centre_row_px, centre_col_px : continuous pixel index where the rotation centre projects
        (default: frame centre, (n - 1) / 2).
    axis : "y" (default; the source moves along the columns) or "x".
    axis_height_mm : sample kind only: height of the rotation axis above the sample base.
    """

    kind: str
    source_detector_mm: float
    source_object_mm: float
    pixel_mm: float
    rows: int
    cols: int
    centre_row_px: float | None = None
    centre_col_px: float | None = None
    axis: str = "y"
    axis_height_mm: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise GeometryError(f"geometry kind must be one of {KINDS}, got {self.kind!r}")
        if self.axis not in AXES:
            raise GeometryError(f"rotation axis must be 'y' or 'x', got {self.axis!r}")
        for name in ("source_detector_mm", "source_object_mm", "pixel_mm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise GeometryError(f"{name} must be a positive number, got {v!r}")
        if not self.source_object_mm < self.source_detector_mm:
            raise GeometryError(f"source_object_mm ({self.source_object_mm}) must be smaller than "
                                f"source_detector_mm ({self.source_detector_mm}): the sample lies "
                                "between source and detector")
        for name in ("rows", "cols"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise GeometryError(f"{name} must be a positive integer, got {v!r}")
        if self.centre_row_px is None:
            object.__setattr__(self, "centre_row_px", (self.rows - 1) / 2)
        if self.centre_col_px is None:
            object.__setattr__(self, "centre_col_px", (self.cols - 1) / 2)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_bench(cls, bench: Any, frame_shape: tuple[int, int] | None = None,
                   binning: int = 1, kind: str = "tube") -> "TomoGeometry":
        """From a simulated bench (``xinstrument.sim.BenchConfig``): its SOD, SDD and pixel."""
        rows, cols = frame_shape or (bench.sensor.rows, bench.sensor.cols)
        return cls(kind=kind, source_detector_mm=float(bench.source_detector_mm),
                   source_object_mm=float(bench.source_object_mm),
                   pixel_mm=float(bench.pixel_at_screen_um) * binning / 1000.0,
                   rows=int(rows), cols=int(cols))

    @property
    def object_plane_z_mm(self) -> float:
        """Height of the sample base above the detector (theta = 0)."""
        return self.source_detector_mm - self.source_object_mm

    @property
    def magnification(self) -> float:
        """Geometric magnification of the sample base at theta = 0."""
        return self.source_detector_mm / self.source_object_mm

    @property
    def pixel_at_object_mm(self) -> float:
        return self.pixel_mm / self.magnification

    # ------------------------------------------------------------------ storage
    def to_attrs(self) -> dict[str, Any]:
        """Flat attributes (``tomo_*``) for an HDF5 object or ``ScanWriter.set_attrs``."""
        out: dict[str, Any] = {}
        for k, v in asdict(self).items():
            out[ATTR_PREFIX + k] = v
        out[ATTR_PREFIX + "units"] = json.dumps({"source_detector_mm": "mm",
                                                 "source_object_mm": "mm", "pixel_mm": "mm",
                                                 "axis_height_mm": "mm",
                                                 "centre_row_px": "px", "centre_col_px": "px"})
        return out

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "TomoGeometry":
        """Inverse of :meth:`to_attrs` (accepts HDF5 attrs or ``ScanReader.metadata``)."""
        required = ("kind", "source_detector_mm", "source_object_mm", "pixel_mm", "rows", "cols")
        kw: dict[str, Any] = {}
        for f in fields(cls):
            key = ATTR_PREFIX + f.name
            if key in attrs:
                v = attrs[key]
                if isinstance(v, bytes):
                    v = v.decode("utf-8")
                if isinstance(v, np.generic):
                    v = v.item()
                kw[f.name] = v
        missing = [ATTR_PREFIX + k for k in required if k not in kw]
        if missing:
            raise GeometryError(f"no tomosynthesis geometry stored (missing {', '.join(missing)})")
        for name in ("rows", "cols"):
            kw[name] = int(kw[name])
        return cls(**kw)

    # ------------------------------------------------------------------ projection maths
    def _frame(self, theta_deg: float) -> tuple[np.ndarray, np.ndarray]:
        """Source position S (3,) and the affine map M (3x3) taking detector (u, v, 1) in mm to
        the sample-frame point of that detector position, at angle ``theta_deg``."""
        a = math.radians(theta_deg)
        r = self.source_detector_mm
        if self.kind == "tube":
            s = _rot_y(a) @ np.array([0.0, 0.0, r])
            m = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
            return s, m
        pivot = np.array([0.0, 0.0, self.object_plane_z_mm + self.axis_height_mm])
        rot = _rot_y(a)
        s = rot @ (np.array([0.0, 0.0, r]) - pivot) + pivot
        m = np.zeros((3, 3))
        m[:, 0] = rot[:, 0]
        m[:, 1] = rot[:, 1]
        m[:, 2] = rot @ (-pivot) + pivot
        return s, m

    def detector_to_plane(self, theta_deg: float, height_mm: float) -> np.ndarray:
        """3x3 matrix H: [x w, y w, w] = H [u, v, 1] maps a detector position (mm) to where the
        ray from the source to it crosses the plane at ``height_mm`` (sample frame, mm).
        Both positions are in the "axis = y" frame (see :meth:`pixel_to_detector_mm`)."""
        s, m = self._frame(theta_deg)
        z = self.object_plane_z_mm + float(height_mm)
        e3 = np.array([0.0, 0.0, 1.0])
        w_row = m[2] - s[2] * e3
        x_row = s[0] * w_row + (z - s[2]) * (m[0] - s[0] * e3)
        y_row = s[1] * w_row + (z - s[2]) * (m[1] - s[1] * e3)
        return np.stack([x_row, y_row, w_row])

    def plane_to_detector(self, theta_deg: float, height_mm: float) -> np.ndarray:
        """Inverse of :meth:`detector_to_plane` (plane point -> detector position, mm)."""
        s, _ = self._frame(theta_deg)
        if not s[2] > self.object_plane_z_mm + float(height_mm):
            raise GeometryError(f"at {theta_deg:g} deg the source is not above the plane at "
                                f"height {height_mm:g} mm")
        return np.linalg.inv(self.detector_to_plane(theta_deg, height_mm))

    def pixel_to_detector_mm(self) -> np.ndarray:
        """3x3 affine: [u, v, 1] = P [col', row', 1] in the "axis = y" frame, where (row', col')
        are pixel indices after transposing "axis = x" frames (see :meth:`canonical`)."""
        p = self.pixel_mm
        if self.axis == "y":
            cc, cr = self.centre_col_px, self.centre_row_px
        else:
            cc, cr = self.centre_row_px, self.centre_col_px
        return np.array([[p, 0.0, -cc * p], [0.0, p, -cr * p], [0.0, 0.0, 1.0]])

    @property
    def canonical_shape(self) -> tuple[int, int]:
        """Frame shape in the "axis = y" frame (rows and cols swapped for axis = x)."""
        return (self.rows, self.cols) if self.axis == "y" else (self.cols, self.rows)

    def path_factor(self, theta_deg: float) -> np.ndarray:
        """Ray length per unit of height through a sample slab, per detector pixel (>= 1),
        shape ``canonical_shape``: |D - S| / |D_z - S_z|."""
        s, m = self._frame(theta_deg)
        rows, cols = self.canonical_shape
        p = self.pixel_to_detector_mm()
        c = np.arange(cols, dtype=np.float64)
        r = np.arange(rows, dtype=np.float64)
        u = (p[0, 0] * c + p[0, 2])[None, :]
        v = (p[1, 1] * r + p[1, 2])[:, None]
        d = [m[i, 0] * u + m[i, 1] * v + m[i, 2] - s[i] for i in range(3)]
        return (np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) / np.abs(d[2])).astype(np.float32)

    def check_angles(self, theta_deg, heights_mm) -> None:
        """Raise GeometryError when a plane would sit at or beyond the source."""
        for t in np.atleast_1d(theta_deg):
            for h in (float(np.min(heights_mm)), float(np.max(heights_mm))):
                self.plane_to_detector(float(t), h)


@dataclass(frozen=True)
class ReconGrid:
    """Lateral voxel grid of every slice (sample frame, "axis = y" orientation): voxel centres
    x = x0_mm + (col + 0.5) * voxel_mm, y = y0_mm + (row + 0.5) * voxel_mm."""

    rows: int
    cols: int
    voxel_mm: float
    x0_mm: float
    y0_mm: float

    def __post_init__(self) -> None:
        if int(self.rows) != self.rows or int(self.cols) != self.cols or \
                self.rows < 1 or self.cols < 1:
            raise GeometryError(f"grid size must be positive integers, got {self.rows}x{self.cols}")
        if not self.voxel_mm > 0:
            raise GeometryError(f"voxel_mm must be positive, got {self.voxel_mm}")

    @classmethod
    def centred(cls, rows: int, cols: int, voxel_mm: float) -> "ReconGrid":
        return cls(int(rows), int(cols), float(voxel_mm), -cols * voxel_mm / 2,
                   -rows * voxel_mm / 2)

    @classmethod
    def for_scan(cls, geometry: TomoGeometry, theta_deg, heights_mm, cover: str = "union",
                 voxel_mm: float | None = None, max_cols: int | None = None) -> "ReconGrid":
        """Grid for a scan: voxel = detector pixel at the sample base (default).

        ``cover="detector"``: the detector's footprint on the sample base at theta = 0.
        ``cover="union"``: every voxel any projection sees at any of ``heights_mm`` (the
        iterative method needs it so that no measured ray crosses unmodelled sample)."""
        if cover not in ("union", "detector"):
            raise GeometryError(f"cover must be 'union' or 'detector', got {cover!r}")
        vox = float(voxel_mm or geometry.pixel_at_object_mm)
        rows, cols = geometry.canonical_shape
        if cover == "detector":
            p = geometry.pixel_mm / vox
            return cls.centred(int(round(rows / p)) or 1, int(round(cols / p)) or 1, vox)
        p = geometry.pixel_to_detector_mm()
        corners = np.array([[-0.5, -0.5, 1], [cols - 0.5, -0.5, 1], [-0.5, rows - 0.5, 1],
                            [cols - 0.5, rows - 0.5, 1]], dtype=np.float64).T
        pts = []
        for t in np.atleast_1d(theta_deg):
            for h in np.atleast_1d(heights_mm):
                q = geometry.detector_to_plane(float(t), float(h)) @ (p @ corners)
                pts.append(q[:2] / q[2])
        pts = np.concatenate(pts, axis=1)
        x0, x1 = float(pts[0].min()), float(pts[0].max())
        y0, y1 = float(pts[1].min()), float(pts[1].max())
        ncols = int(math.ceil((x1 - x0) / vox))
        nrows = int(math.ceil((y1 - y0) / vox))
        if max_cols is not None and ncols > max_cols:
            xc = 0.5 * (x0 + x1)
            ncols = max_cols
            x0 = xc - ncols * vox / 2
        return cls(nrows, ncols, vox, x0, y0)

    def to_attrs(self) -> dict[str, Any]:
        return {"grid_rows": self.rows, "grid_cols": self.cols, "voxel_mm": self.voxel_mm,
                "x0_mm": self.x0_mm, "y0_mm": self.y0_mm}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "ReconGrid":
        return cls(int(attrs["grid_rows"]), int(attrs["grid_cols"]), float(attrs["voxel_mm"]),
                   float(attrs["x0_mm"]), float(attrs["y0_mm"]))

    def plane_to_normalised(self) -> np.ndarray:
        """3x3 affine taking plane mm (x, y, 1) to torch grid_sample coordinates
        (align_corners=False: -1 and 1 are the outer voxel edges)."""
        sx = 2.0 / (self.cols * self.voxel_mm)
        sy = 2.0 / (self.rows * self.voxel_mm)
        return np.array([[sx, 0.0, -1.0 - sx * self.x0_mm], [0.0, sy, -1.0 - sy * self.y0_mm],
                         [0.0, 0.0, 1.0]])

    def voxel_to_plane(self) -> np.ndarray:
        """3x3 affine: plane mm (x, y, 1) of voxel (col, row, 1) centres."""
        v = self.voxel_mm
        return np.array([[v, 0.0, self.x0_mm + 0.5 * v], [0.0, v, self.y0_mm + 0.5 * v],
                         [0.0, 0.0, 1.0]])
