"""Procedural samples for the digital twin, described in physical units.

A sample is a list of layers; each layer sits at a height above the sample base (mm, toward the
source) and holds shapes of one material. Shapes are rasterised onto any pixel grid as projected
thickness (mm along the beam), with analytic edge coverage for anti-aliasing, so the same sample
can be imaged at any magnification, and later at any tomosynthesis angle.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

COPPER_1OZ_MM = 0.035      # 1 oz/ft^2 copper foil (IPC-4562)
BOARD_THICKNESS_MM = 1.6   # standard FR4 board (IPC-2221)


@dataclass(frozen=True)
class Grid:
    """Pixel grid in the sample plane: pixel centres x = x0 + (col + 0.5) * pixel_mm."""

    rows: int
    cols: int
    pixel_mm: float
    x0_mm: float
    y0_mm: float

    @classmethod
    def centred(cls, rows: int, cols: int, pixel_mm: float) -> "Grid":
        return cls(rows, cols, pixel_mm, -cols * pixel_mm / 2, -rows * pixel_mm / 2)

    def scaled(self, factor: float) -> "Grid":
        """The same pixels seen at another magnification (factor > 1: object appears larger)."""
        return Grid(self.rows, self.cols, self.pixel_mm / factor, self.x0_mm / factor,
                    self.y0_mm / factor)

    def projected(self, magnification: float, shift_x_mm: float) -> "Grid":
        """Detector pixels mapped back onto a plane imaged with ``magnification`` and displaced
        laterally by ``shift_x_mm`` on the detector (oblique cone beam)."""
        return Grid(self.rows, self.cols, self.pixel_mm / magnification,
                    (self.x0_mm - shift_x_mm) / magnification, self.y0_mm / magnification)


# --- shapes: each returns projected thickness (mm) inside a bounding box
@dataclass(frozen=True)
class Segment:
    """A trace: capsule of width w between two points, thickness t (flat copper foil)."""
    x0: float
    y0: float
    x1: float
    y1: float
    width: float
    thickness: float

    def bbox(self):
        r = self.width / 2
        return (min(self.x0, self.x1) - r, min(self.y0, self.y1) - r,
                max(self.x0, self.x1) + r, max(self.y0, self.y1) + r)

    def render(self, x, y, px):
        dx, dy = self.x1 - self.x0, self.y1 - self.y0
        length2 = dx * dx + dy * dy
        t = np.clip(((x - self.x0) * dx + (y - self.y0) * dy) / max(length2, 1e-30), 0, 1)
        d = np.hypot(x - (self.x0 + t * dx), y - (self.y0 + t * dy)) - self.width / 2
        return self.thickness * _coverage(d, px)


@dataclass(frozen=True)
class Rect:
    """Axis-aligned (optionally rotated) rectangle of uniform thickness."""
    cx: float
    cy: float
    w: float
    h: float
    thickness: float
    angle_deg: float = 0.0

    def bbox(self):
        r = 0.5 * np.hypot(self.w, self.h)
        return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)

    def render(self, x, y, px):
        a = np.deg2rad(self.angle_deg)
        u = (x - self.cx) * np.cos(a) + (y - self.cy) * np.sin(a)
        v = -(x - self.cx) * np.sin(a) + (y - self.cy) * np.cos(a)
        qx, qy = np.abs(u) - self.w / 2, np.abs(v) - self.h / 2
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
        inside = np.minimum(np.maximum(qx, qy), 0)
        return self.thickness * _coverage(outside + inside, px)


@dataclass(frozen=True)
class Disc:
    """Flat disc (pad), or a ring when inner > 0 (via barrel seen along its axis)."""
    cx: float
    cy: float
    radius: float
    thickness: float
    inner: float = 0.0

    def bbox(self):
        return (self.cx - self.radius, self.cy - self.radius,
                self.cx + self.radius, self.cy + self.radius)

    def render(self, x, y, px):
        r = np.hypot(x - self.cx, y - self.cy)
        out = _coverage(r - self.radius, px)
        if self.inner > 0:
            out = out - _coverage(r - self.inner, px)
        return self.thickness * out


@dataclass(frozen=True)
class Sphere:
    """Solid sphere (BGA ball); negative ``sign`` subtracts (a void inside a ball)."""
    cx: float
    cy: float
    radius: float
    sign: float = 1.0

    def bbox(self):
        return (self.cx - self.radius, self.cy - self.radius,
                self.cx + self.radius, self.cy + self.radius)

    def render(self, x, y, px):
        r2 = (x - self.cx) ** 2 + (y - self.cy) ** 2
        return self.sign * 2.0 * np.sqrt(np.clip(self.radius ** 2 - r2, 0, None))


@dataclass(frozen=True)
class HalfPlane:
    """Everything on one side of a line through (cx, cy) at angle (slanted edge), thickness t."""
    cx: float
    cy: float
    angle_deg: float
    thickness: float

    def bbox(self):
        return (-np.inf, -np.inf, np.inf, np.inf)

    def render(self, x, y, px):
        a = np.deg2rad(self.angle_deg)
        d = (x - self.cx) * np.cos(a) + (y - self.cy) * np.sin(a)
        return self.thickness * _coverage(d, px)


def _coverage(signed_distance, px):
    """Fraction of a pixel inside a shape from the signed distance of its centre (box filter of
    a straight edge; exact for edges aligned to the grid, within a few % otherwise)."""
    return np.clip(0.5 - signed_distance / px, 0.0, 1.0)


@dataclass
class Layer:
    material: str                    # key of materials.SAMPLE_MATERIALS
    height_mm: float                 # above the sample base, toward the source
    shapes: list = field(default_factory=list)
    name: str = ""


@dataclass
class Sample:
    name: str
    layers: list[Layer]
    description: str = ""
    uniform_mm: dict[str, float] = field(default_factory=dict)  # material -> slab thickness

    def thickness_maps(self, grid: Grid, magnification_of_height=None,
                       projection_of_height=None, path_factor: float = 1.0
                       ) -> dict[str, np.ndarray]:
        """Projected thickness (mm) per material on ``grid`` (float32).

        ``magnification_of_height(h)`` gives the relative magnification of a layer at height h
        against the sample base (cone beam); default 1 (parallel projection). Alternatively
        ``projection_of_height(h) -> (magnification, shift_x_mm)`` maps a detector-plane
        ``grid`` onto the layer for an oblique source position (tomosynthesis). ``path_factor``
        scales path lengths (1/cos of the beam obliquity for flat layers).
        """
        maps: dict[str, np.ndarray] = {}
        for layer in self.layers:
            if projection_of_height is not None:
                m, shift = projection_of_height(layer.height_mm)
                g = grid.projected(float(m), float(shift))
            else:
                factor = 1.0 if magnification_of_height is None else \
                    float(magnification_of_height(layer.height_mm))
                g = grid.scaled(factor)
            out = maps.setdefault(layer.material, np.zeros((grid.rows, grid.cols), np.float32))
            for shape in layer.shapes:
                _rasterise(shape, g, out)
        for material, t in self.uniform_mm.items():
            maps.setdefault(material, np.zeros((grid.rows, grid.cols), np.float32))
            maps[material] += np.float32(t)
        for m in maps.values():
            np.clip(m, 0, None, out=m)
            if path_factor != 1.0:
                m *= np.float32(path_factor)
        return maps


def _rasterise(shape, g: Grid, out: np.ndarray) -> None:
    x0, y0, x1, y1 = shape.bbox()
    pad = 2 * g.pixel_mm
    c0 = 0 if not np.isfinite(x0) else max(int(np.floor((x0 - pad - g.x0_mm) / g.pixel_mm)), 0)
    c1 = g.cols if not np.isfinite(x1) else min(int(np.ceil((x1 + pad - g.x0_mm) / g.pixel_mm)),
                                                g.cols)
    r0 = 0 if not np.isfinite(y0) else max(int(np.floor((y0 - pad - g.y0_mm) / g.pixel_mm)), 0)
    r1 = g.rows if not np.isfinite(y1) else min(int(np.ceil((y1 + pad - g.y0_mm) / g.pixel_mm)),
                                                g.rows)
    if c1 <= c0 or r1 <= r0:
        return
    x = (g.x0_mm + (np.arange(c0, c1, dtype=np.float32) + 0.5) * g.pixel_mm)[None, :]
    y = (g.y0_mm + (np.arange(r0, r1, dtype=np.float32) + 0.5) * g.pixel_mm)[:, None]
    out[r0:r1, c0:c1] += shape.render(x, y, g.pixel_mm).astype(np.float32)


# --- procedural samples --------------------------------------------------------------------------
def pcb(fov_mm: float, seed: int = 0, n_layers: int = 4) -> Sample:
    """Multilayer PCB patch: traces 10-200 um wide, vias, pads, BGA balls with voids, copper
    layers at their heights in a 1.6 mm FR4 board.

    Feature sizes follow the field of view (s = fov / 2.5 mm): a 2.5 mm field shows 0.5 mm pitch
    BGA balls and 100-300 um vias; narrower micro-imaging fields show flip-chip micro-bumps and
    micro-vias of proportionally smaller size, so every field contains several structures.
    """
    rng = np.random.default_rng(seed)
    s = fov_mm / 2.5
    s_feat = max(s, 0.15)
    half = fov_mm / 2
    heights = np.linspace(0.0, BOARD_THICKNESS_MM, n_layers)
    layers = [Layer("copper", float(h), name=f"copper L{i + 1}") for i, h in enumerate(heights)]
    max_width = min(0.200 * max(s, 1.0), fov_mm / 5)
    for layer in layers:
        n_traces = int(rng.integers(10, 18))
        for _ in range(n_traces):
            width = float(np.exp(rng.uniform(np.log(0.010), np.log(max(max_width, 0.011)))))
            x, y = rng.uniform(-half * 1.2, half * 1.2, 2)
            for _seg in range(int(rng.integers(2, 5))):      # Manhattan / 45-degree routing
                direction = rng.integers(0, 8) * np.pi / 4
                length = rng.uniform(0.1, 0.8) * fov_mm
                x1, y1 = x + length * np.cos(direction), y + length * np.sin(direction)
                layer.shapes.append(Segment(x, y, x1, y1, width, COPPER_1OZ_MM))
                x, y = x1, y1
    top = layers[-1]
    vias = Layer("copper", BOARD_THICKNESS_MM / 2, name="via barrels")
    for _ in range(int(rng.integers(4, 9))):
        cx, cy = rng.uniform(-half, half, 2)
        drill = rng.uniform(0.1, 0.3) * s_feat
        plating = min(0.025, drill / 4)                      # IPC class 2 barrel plating
        # the barrel wall seen along the beam: copper ring as thick as the board
        vias.shapes.append(Disc(cx, cy, drill / 2 + plating, BOARD_THICKNESS_MM, inner=drill / 2))
        top.shapes.append(Disc(cx, cy, drill / 2 + 0.1 * s_feat, COPPER_1OZ_MM, inner=drill / 2))
    for _ in range(int(rng.integers(3, 7))):                 # SMD pads
        top.shapes.append(Rect(*rng.uniform(-half, half, 2), rng.uniform(0.15, 0.5) * s_feat,
                               rng.uniform(0.1, 0.3) * s_feat, COPPER_1OZ_MM,
                               float(rng.choice([0.0, 90.0]))))
    balls = Layer("solder", BOARD_THICKNESS_MM + 0.2 * s_feat, name="BGA balls")
    pitch = 0.5 * s_feat                                      # 0.5 mm pitch BGA at s = 1
    ball_r = 0.15 * s_feat
    bx0, by0 = rng.uniform(-half, 0, 2)
    n_b = int(rng.integers(2, 5))
    for i in range(n_b):
        for j in range(n_b):
            cx, cy = bx0 + i * pitch, by0 + j * pitch
            balls.shapes.append(Sphere(cx, cy, ball_r))
            if rng.random() < 0.6:                            # voids: gas bubbles in the joint
                vr = ball_r * rng.uniform(0.08, 0.35)
                off = (ball_r - vr) * rng.uniform(0, 0.8)
                ang = rng.uniform(0, 2 * np.pi)
                balls.shapes.append(Sphere(cx + off * np.cos(ang), cy + off * np.sin(ang), vr,
                                           sign=-1.0))
    return Sample("pcb", [*layers, vias, balls],
                  description=f"procedural {n_layers}-layer PCB, seed {seed}",
                  uniform_mm={"fr4": BOARD_THICKNESS_MM})


def pcb_layers(fov_mm: float, seed: int = 0, n_layers: int = 4, extent_mm: float | None = None,
               balls: bool = True) -> Sample:
    """Multilayer PCB for tomosynthesis: like :func:`pcb` (same feature sizes for the field),
    but the copper of every layer, the vias and the BGA balls spread over a board region
    ``extent_mm`` wide (default 3 fields), so that structure stays in view when an oblique tube
    shifts the layers by up to a field width (tube-rotation tomosynthesis, shared/papers/003).
    Every copper layer gets its own traces and pads, so the layers differ in-plane and each
    can be scored against its own ground truth. Feature counts per field are about half of
    :func:`pcb`'s per layer (four stacked layers over one field would otherwise leave a few %
    transmission at 50 kV) and scale with the board area."""
    rng = np.random.default_rng([seed, 7])
    s = fov_mm / 2.5
    s_feat = max(s, 0.15)
    extent = float(extent_mm) if extent_mm is not None else 3.0 * fov_mm
    if not extent >= fov_mm:
        raise ValueError(f"extent_mm ({extent}) must be at least the field of view ({fov_mm})")
    half = extent / 2
    area = (extent / fov_mm) ** 2
    heights = np.linspace(0.0, BOARD_THICKNESS_MM, n_layers)
    layers = [Layer("copper", float(h), name=f"copper L{i + 1}") for i, h in enumerate(heights)]
    max_width = min(0.200 * max(s, 1.0), fov_mm / 5)
    for layer in layers:
        for _ in range(int(rng.integers(4, 8) * area)):
            width = float(np.exp(rng.uniform(np.log(0.010), np.log(max(max_width, 0.011)))))
            x, y = rng.uniform(-half, half, 2)
            for _seg in range(int(rng.integers(2, 5))):      # Manhattan / 45-degree routing
                direction = rng.integers(0, 8) * np.pi / 4
                length = rng.uniform(0.1, 0.8) * fov_mm
                x1, y1 = x + length * np.cos(direction), y + length * np.sin(direction)
                layer.shapes.append(Segment(x, y, x1, y1, width, COPPER_1OZ_MM))
                x, y = x1, y1
        for _ in range(int(rng.integers(1, 3) * area)):      # SMD / inner-layer pads
            layer.shapes.append(Rect(*rng.uniform(-half, half, 2),
                                     rng.uniform(0.15, 0.5) * s_feat,
                                     rng.uniform(0.1, 0.3) * s_feat, COPPER_1OZ_MM,
                                     float(rng.choice([0.0, 90.0]))))
    vias = Layer("copper", BOARD_THICKNESS_MM / 2, name="via barrels")
    for _ in range(int(rng.integers(1, 4) * area)):
        cx, cy = rng.uniform(-half, half, 2)
        drill = rng.uniform(0.1, 0.3) * s_feat
        plating = min(0.025, drill / 4)                      # IPC class 2 barrel plating
        vias.shapes.append(Disc(cx, cy, drill / 2 + plating, BOARD_THICKNESS_MM, inner=drill / 2))
        layers[-1].shapes.append(Disc(cx, cy, drill / 2 + 0.1 * s_feat, COPPER_1OZ_MM,
                                      inner=drill / 2))      # annular ring on the top layer
    out = [*layers, vias]
    if balls:
        ball_layer = Layer("solder", BOARD_THICKNESS_MM + 0.2 * s_feat, name="BGA balls")
        pitch = 0.5 * s_feat                                  # 0.5 mm pitch BGA at s = 1
        ball_r = 0.15 * s_feat
        bx0, by0 = rng.uniform(-half, half - 3 * pitch, 2)
        for i in range(3):
            for j in range(3):
                ball_layer.shapes.append(Sphere(bx0 + i * pitch, by0 + j * pitch, ball_r))
        out.append(ball_layer)
    return Sample("pcb-layers", out,
                  description=f"procedural {n_layers}-layer PCB over {extent:g} mm, seed {seed}",
                  uniform_mm={"fr4": BOARD_THICKNESS_MM})


CHART_LINE_WIDTHS_UM = (15.0, 10.0, 8.0, 6.0, 5.0, 4.0, 3.0, 2.5, 2.0, 1.5, 1.0)
CHART_ABSORBER_UM = 1.0  # tungsten absorber of micro-focus resolution charts (JIMA RT RC type)


def resolution_chart(fov_mm: float, line_widths_um=CHART_LINE_WIDTHS_UM, n_bars: int = 3,
                     absorber_um: float = CHART_ABSORBER_UM) -> Sample:
    """Line-pair groups (bars of width w separated by w) from 15 um down to 1 um, horizontal
    and vertical, laid out across the field."""
    layer = Layer("tungsten", 0.0, name="chart")
    groups = chart_groups(fov_mm, line_widths_um, n_bars)
    for g in groups:
        w = g["width_mm"]
        for k in range(n_bars):
            off = (2 * k - (n_bars - 1)) * w
            if g["orientation"] == "vertical":
                layer.shapes.append(Rect(g["cx"] + off, g["cy"], w, g["length_mm"],
                                         absorber_um / 1000))
            else:
                layer.shapes.append(Rect(g["cx"], g["cy"] + off, g["length_mm"], w,
                                         absorber_um / 1000))
    return Sample("chart", [layer], description="resolution chart, line widths "
                  + ", ".join(f"{w:g}" for w in line_widths_um) + " um")


def chart_groups(fov_mm: float, line_widths_um=CHART_LINE_WIDTHS_UM, n_bars: int = 3) -> list:
    """Geometry of the chart's groups (centres, sizes), for CTF measurement and tests."""
    n = len(line_widths_um)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    cell = fov_mm / max(cols, rows) * 0.9
    groups = []
    for i, w_um in enumerate(line_widths_um):
        r, c = divmod(i, cols)
        cx = (c - (cols - 1) / 2) * cell
        cy = (r - (rows - 1) / 2) * cell
        w = w_um / 1000
        length = min(cell * 0.35, max(10 * w, 0.02))
        groups.append(dict(width_um=w_um, width_mm=w, cx=cx - cell * 0.22, cy=cy,
                           length_mm=length, orientation="vertical"))
        groups.append(dict(width_um=w_um, width_mm=w, cx=cx + cell * 0.22, cy=cy,
                           length_mm=length, orientation="horizontal"))
    return groups


def slanted_edge(angle_deg: float = 3.0, thickness_mm: float = 0.1) -> Sample:
    """Tungsten plate whose edge crosses the field centre, tilted by 2-5 degrees (ISO 12233)."""
    if not (0.5 <= abs(angle_deg) <= 15):
        raise ValueError(f"slanted edge angle {angle_deg} deg outside 0.5..15 deg")
    layer = Layer("tungsten", 0.0, [HalfPlane(0.0, 0.0, angle_deg, thickness_mm)], name="edge")
    return Sample("edge", [layer], description=f"tungsten edge {thickness_mm * 1000:g} um, "
                  f"{angle_deg:g} deg")


def bar_pattern(fov_mm: float, line_widths_um=(20, 15, 10, 8, 6, 5, 4, 3), n_bars: int = 5,
                thickness_um: float = 5.0) -> Sample:
    """Tungsten bar groups (5 bars each) along one row, for CTF measurement."""
    layer = Layer("tungsten", 0.0, name="bars")
    n = len(line_widths_um)
    cell = fov_mm / n
    for i, w_um in enumerate(line_widths_um):
        w = w_um / 1000
        cx = -fov_mm / 2 + (i + 0.5) * cell
        for k in range(n_bars):
            layer.shapes.append(Rect(cx + (2 * k - (n_bars - 1)) * w, 0.0, w, fov_mm * 0.4,
                                     thickness_um / 1000))
    return Sample("bars", [layer], description="tungsten bar groups " +
                  ", ".join(f"{w:g}" for w in line_widths_um) + " um")


def open_field() -> Sample:
    return Sample("open", [], description="no sample (flat field)")


def translated(sample: Sample, dx_mm: float, dy_mm: float = 0.0) -> Sample:
    """``sample`` moved by (``dx_mm``, ``dy_mm``) in its own plane (every layer, every shape).
    Shapes without a position (procedural fields) cannot be moved: TypeError naming them."""
    layers = []
    for layer in sample.layers:
        shapes = []
        for sh in layer.shapes:
            if hasattr(sh, "cx"):
                shapes.append(dataclasses.replace(sh, cx=sh.cx + dx_mm, cy=sh.cy + dy_mm))
            elif isinstance(sh, Segment):
                shapes.append(dataclasses.replace(sh, x0=sh.x0 + dx_mm, x1=sh.x1 + dx_mm,
                                                  y0=sh.y0 + dy_mm, y1=sh.y1 + dy_mm))
            else:
                raise TypeError(f"cannot translate a {type(sh).__name__} shape of layer "
                                f"{layer.name!r}")
        layers.append(dataclasses.replace(layer, shapes=shapes))
    return dataclasses.replace(sample, layers=layers)


def make_sample(name: str, fov_mm: float, seed: int = 0) -> Sample:
    """Sample by name: pcb, pcb-layers, chart, edge, bars, open."""
    if name == "pcb":
        return pcb(fov_mm, seed)
    if name == "chart":
        return resolution_chart(fov_mm)
    if name == "edge":
        return slanted_edge()
    if name == "bars":
        return bar_pattern(fov_mm)
    if name == "open":
        return open_field()
    if name == "pcb-layers":
        return pcb_layers(fov_mm, seed)
    raise ValueError(f"unknown sample {name!r}; choose pcb, pcb-layers, chart, edge, bars or "
                     "open")
