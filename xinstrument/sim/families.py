"""Named sample families for training and held-out evaluation of restoration.

Each family is a procedural generator with a seed that builds a :class:`~.samples.Sample`
(materials, shapes, thicknesses in mm) at the pixel size of a bench, so every family is imaged
through the same physics as the PCB: polychromatic Beer-Lambert with the materials' tabulated
attenuation, the screens' absorption and blur, in the twin (:class:`~.bench.Twin`).

Feature sizes are set in pixels of the bench (1 px up to a third of the field), so the families
exercise the frequencies a restorer must recover at every bench. Contrast is set physically: the
material (and, for continuous fields, the thickness range) is chosen so that the transmission
through the thickest structure lies between about 0.15 and 0.9 at the bench's spectrum.

The split is fixed here and enforced: :func:`training_source` refuses held-out families, so no
training run sees a Siemens star, a foam, polygon leaves or the grain texture.

=================  =========  =====================================================================
family             split      what it is
=================  =========  =====================================================================
pcb                training   the twin's multilayer PCB (traces, vias, pads, BGA balls with voids)
dead_leaves        training   occluding discs with power-law radii (p(r) ~ r^-3; Lee et al. 2001)
charts             training   bar groups (line pairs) of random pitch and orientation
fibres             training   random cylindrical rods (wires, fibres) in projection
powders            training   packed spheres of log-normal radii in several layers
fractal_texture    training   smooth Gaussian field with power-law spectrum f^-beta, beta 2.5-4
mix                training   layers of two or three of the training families above
siemens_star       held-out   Siemens stars (18-72 spokes), the classic resolution target
polygon_leaves     held-out   occluding rotated rectangles and squares (dead leaves of polygons)
foam               held-out   Voronoi cell walls of one or two foam layers (metal / polymer foam)
grain_texture      held-out   stationary oriented band-pass texture (wood / rolled-metal grain)
=================  =========  =====================================================================
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .materials import SAMPLE_MATERIALS
from .samples import Disc, Layer, Rect, Sample, Sphere, pcb

__all__ = [
    "FAMILIES",
    "HELD_OUT_FAMILIES",
    "TRAINING_FAMILIES",
    "FamilyImage",
    "check_training_families",
    "family_sample",
    "measurement_pairs",
    "render_family",
    "training_hr_source",
    "training_source",
]

TRAINING_FAMILIES: tuple[str, ...] = ("pcb", "dead_leaves", "charts", "fibres", "powders",
                                      "fractal_texture", "mix")
HELD_OUT_FAMILIES: tuple[str, ...] = ("siemens_star", "polygon_leaves", "foam", "grain_texture")
# Stationary textures (Wiener with the right spectrum is near the least-squares optimum there).
TEXTURE_FAMILIES: tuple[str, ...] = ("fractal_texture", "grain_texture")

# Transmission through the thickest structure of a sample: drawn in this range so that contrast
# spans weak (0.9) to strong (0.15) absorbers, the range of the bench's PCBs and charts.
TRANSMISSION_RANGE = (0.15, 0.9)
# Materials a family may be made of (keys of materials.SAMPLE_MATERIALS).
FAMILY_MATERIALS = ("polymer", "aluminium", "glass", "copper", "solder", "tungsten")
# Seeds of evaluation renders start here; training sources draw seeds below it.
EVAL_SEED_BASE = 10 ** 6


# --- shapes not in samples.py ---------------------------------------------------------------------
def _index_range(axis: np.ndarray, lo: float, hi: float) -> tuple[int, int]:
    return int(np.searchsorted(axis, lo, "left")), int(np.searchsorted(axis, hi, "right"))


@dataclass(frozen=True)
class OcclusionField:
    """Occluding opaque-looking objects ("dead leaves"): objects are drawn back to front and each
    replaces what lies beneath it with its own thickness (coverage-weighted at its edge).

    ``items`` are ``(shape, thickness_mm)`` with shapes of unit thickness (Disc, Rect)."""

    items: tuple
    background_mm: float = 0.0

    def bbox(self):
        return (-np.inf, -np.inf, np.inf, np.inf)

    def render(self, x, y, px):
        xs, ys = np.asarray(x).ravel(), np.asarray(y).ravel()
        out = np.full((ys.size, xs.size), self.background_mm, np.float32)
        for shape, t in self.items:
            x0, y0, x1, y1 = shape.bbox()
            c0, c1 = _index_range(xs, x0 - 2 * px, x1 + 2 * px)
            r0, r1 = _index_range(ys, y0 - 2 * px, y1 + 2 * px)
            if c1 <= c0 or r1 <= r0:
                continue
            cov = shape.render(xs[None, c0:c1], ys[r0:r1, None], px).astype(np.float32)
            sub = out[r0:r1, c0:c1]
            sub += cov * (np.float32(t) - sub)
        return out


@dataclass(frozen=True)
class Rod:
    """Solid cylinder of radius r between two points, seen side-on: chord length
    2 sqrt(r^2 - d^2) at distance d from its axis (a fibre or wire)."""

    x0: float
    y0: float
    x1: float
    y1: float
    radius: float

    def bbox(self):
        r = self.radius
        return (min(self.x0, self.x1) - r, min(self.y0, self.y1) - r,
                max(self.x0, self.x1) + r, max(self.y0, self.y1) + r)

    def render(self, x, y, px):
        dx, dy = self.x1 - self.x0, self.y1 - self.y0
        length2 = max(dx * dx + dy * dy, 1e-30)
        t = np.clip(((x - self.x0) * dx + (y - self.y0) * dy) / length2, 0, 1)
        d = np.hypot(x - (self.x0 + t * dx), y - (self.y0 + t * dy))
        # chord averaged over the pixel: evaluate at d and d +- px/3 (rods of 1-2 px radius)
        r2 = self.radius ** 2
        acc = 0.0
        for off in (-px / 3, 0.0, px / 3):
            acc = acc + np.sqrt(np.clip(r2 - (d + off) ** 2, 0, None))
        return 2.0 * acc / 3.0


@dataclass(frozen=True)
class StarField:
    """Siemens star: ``spokes`` absorbing sectors of thickness t inside radius R about (cx, cy),
    edge coverage from the arc distance r |sin(N theta)| / N to the nearest spoke edge."""

    cx: float
    cy: float
    radius: float
    spokes: int
    thickness: float
    phase: float = 0.0

    def bbox(self):
        return (self.cx - self.radius, self.cy - self.radius,
                self.cx + self.radius, self.cy + self.radius)

    def render(self, x, y, px):
        dx, dy = x - self.cx, y - self.cy
        r = np.hypot(dx, dy)
        theta = np.arctan2(dy, dx) + self.phase
        signed = r * np.sin(self.spokes * theta) / self.spokes
        cov = np.clip(0.5 + signed / px, 0, 1) * np.clip(0.5 - (r - self.radius) / px, 0, 1)
        # the centre, where spokes are narrower than a pixel, averages to half coverage
        centre = np.clip(r * 2 * np.pi / (2 * self.spokes) / px, 0, 1)
        return self.thickness * (centre * cov + (1 - centre) * 0.5 *
                                 np.clip(0.5 - (r - self.radius) / px, 0, 1))


@dataclass(frozen=True)
class WaveField:
    """Continuous thickness field: a sum of plane waves, mapped to 0..thickness by a clipped
    affine map of +-2.5 analytic standard deviations (independent of the grid it is sampled on).
    Each wave is integrated over the pixel (sinc of its frequency across the pixel)."""

    fx: tuple
    fy: tuple
    amp: tuple
    phase: tuple
    thickness: float

    def bbox(self):
        return (-np.inf, -np.inf, np.inf, np.inf)

    def render(self, x, y, px):
        xs, ys = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
        out = np.zeros((ys.size, xs.size), np.float64)
        for fx, fy, a, ph in zip(self.fx, self.fy, self.amp, self.phase):
            # cos(u + v) = cos u cos v - sin u sin v: separable, two outer products per wave
            u = 2 * np.pi * fx * xs + ph
            v = 2 * np.pi * fy * ys
            aa = a * np.sinc(fx * px) * np.sinc(fy * px)
            out += aa * (np.cos(v)[:, None] * np.cos(u)[None, :]
                         - np.sin(v)[:, None] * np.sin(u)[None, :])
        std = math.sqrt(0.5 * float(np.sum(np.square(self.amp))))
        return (self.thickness * np.clip(0.5 + out / (5 * std), 0, 1)).astype(np.float32)


@dataclass(frozen=True)
class VoronoiWalls:
    """Foam in projection: cell walls where a point is nearly equidistant from its two nearest
    cell centres (d2 - d1 < wall width), with a wall's chord profile, plus thin cell faces."""

    seeds: np.ndarray = field(compare=False)
    wall_mm: float = 0.0
    thickness: float = 0.0
    face_fraction: float = 0.1

    def bbox(self):
        return (-np.inf, -np.inf, np.inf, np.inf)

    def render(self, x, y, px):
        from scipy.spatial import cKDTree

        xs, ys = np.asarray(x).ravel(), np.asarray(y).ravel()
        pts = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
        d, _ = cKDTree(self.seeds).query(pts, k=2)
        # (d2 - d1) / 2 is the distance to the bisector between the two nearest centres
        dist = 0.5 * (d[:, 1] - d[:, 0]).reshape(ys.size, xs.size)
        half = self.wall_mm / 2
        acc = 0.0
        for off in (-px / 3, 0.0, px / 3):
            acc = acc + np.sqrt(np.clip(1 - ((dist + off) / half) ** 2, 0, None))
        wall = acc / 3.0
        return (self.thickness * (self.face_fraction + (1 - self.face_fraction) * wall)
                ).astype(np.float32)


# --- material choice ----------------------------------------------------------------------------
def _mu_per_mm(material: str, energy_kev: float) -> float:
    return float(SAMPLE_MATERIALS[material].linear_attenuation_per_mm(np.array([energy_kev]))[0])


def _material_for(path_mm: float, energy_kev: float, rng: np.random.Generator,
                  choices: Sequence[str] = FAMILY_MATERIALS) -> tuple[str, float]:
    """A material whose transmission through ``path_mm`` falls in :data:`TRANSMISSION_RANGE`
    at ``energy_kev`` (random among those that do; else the closest), and that transmission."""
    lo, hi = TRANSMISSION_RANGE
    trans = {m: math.exp(-_mu_per_mm(m, energy_kev) * path_mm) for m in choices}
    ok = [m for m, t in trans.items() if lo <= t <= hi]
    if ok:
        m = ok[int(rng.integers(len(ok)))]
    else:
        m = min(trans, key=lambda k: abs(math.log(max(trans[k], 1e-12)) - math.log(0.5)))
    return m, trans[m]


def _field_material(energy_kev: float, rng: np.random.Generator, max_mm: float
                    ) -> tuple[str, float]:
    """Material and thickness (mm) of a continuous field whose thickest point transmits a
    random fraction in :data:`TRANSMISSION_RANGE`; the thickness is at most ``max_mm``."""
    target = float(np.exp(rng.uniform(*np.log(TRANSMISSION_RANGE))))
    order = list(FAMILY_MATERIALS)
    rng.shuffle(order)
    for m in order:
        t = -math.log(target) / _mu_per_mm(m, energy_kev)
        if t <= max_mm:
            return m, t
    m = "tungsten"
    return m, -math.log(target) / _mu_per_mm(m, energy_kev)


# --- generators: (fov_mm, pixel_mm, energy_kev, rng) -> Sample ---------------------------------------
def _dead_leaves(fov_mm, px, e_kev, rng, polygons=False, name="dead_leaves"):
    r_min, r_max = 1.0 * px, fov_mm / 3
    material, t_max = _field_material(e_kev, rng, max_mm=fov_mm)
    # radii from p(r) ~ r^-3 on [r_min, r_max] (scale-invariant occlusion model) by inversion
    n = int(min(3000, 40 * (fov_mm / px) ** 0.9))
    u = rng.random(n)
    radii = 1.0 / np.sqrt(1 / r_min ** 2 - u * (1 / r_min ** 2 - 1 / r_max ** 2))
    half = fov_mm / 2 + r_max * 0.5
    items = []
    for r in radii:
        cx, cy = rng.uniform(-half, half, 2)
        t = float(rng.uniform(0, t_max))
        if polygons:
            aspect = float(np.exp(rng.uniform(-0.7, 0.7)))
            shape = Rect(cx, cy, 2 * r * aspect, 2 * r / aspect, 1.0, float(rng.uniform(0, 180)))
        else:
            shape = Disc(cx, cy, float(r), 1.0)
        items.append((shape, t))
    layer = Layer(material, 0.0, [OcclusionField(tuple(items), float(rng.uniform(0, t_max)))],
                  name=name)
    return Sample(name, [layer], description=f"{name}: {n} objects of {material}, "
                  f"radii {r_min * 1e3:.2g}-{r_max * 1e3:.3g} um")


def _charts(fov_mm, px, e_kev, rng):
    widths_px = np.exp(rng.uniform(np.log(1.0), np.log(12.0), int(rng.integers(6, 14))))
    path = float(np.median(widths_px)) * px * float(rng.uniform(0.2, 2.0))
    material, _ = _material_for(path, e_kev, rng, ("copper", "solder", "tungsten", "aluminium"))
    layer = Layer(material, 0.0, name="bar groups")
    for w_px in widths_px:
        w = float(w_px) * px
        n_bars = int(rng.integers(3, 6))
        length = float(rng.uniform(5, 15)) * w + 4 * px
        cx, cy = rng.uniform(-fov_mm / 2, fov_mm / 2, 2)
        ang = float(rng.choice([0.0, 90.0, 45.0, rng.uniform(0, 180)]))
        a = np.deg2rad(ang)
        for k in range(n_bars):
            off = (2 * k - (n_bars - 1)) * w
            layer.shapes.append(Rect(cx + off * np.cos(a), cy + off * np.sin(a), w, length,
                                     path, ang))
    return Sample("charts", [layer], description=f"{len(widths_px)} bar groups of {material}")


def _siemens_star(fov_mm, px, e_kev, rng):
    n_stars = int(rng.integers(1, 4))
    path = float(rng.uniform(1, 6)) * px
    material, _ = _material_for(path, e_kev, rng, ("copper", "solder", "tungsten", "aluminium"))
    layer = Layer(material, 0.0, name="stars")
    for _ in range(n_stars):
        radius = float(rng.uniform(0.15, 0.5)) * fov_mm
        cx, cy = rng.uniform(-fov_mm / 3, fov_mm / 3, 2)
        layer.shapes.append(StarField(cx, cy, radius, int(rng.integers(9, 37)) * 2, path,
                                      float(rng.uniform(0, 2 * np.pi))))
    return Sample("siemens_star", [layer], description=f"{n_stars} Siemens stars of {material}")


def _fibres(fov_mm, px, e_kev, rng):
    r_med = float(np.exp(rng.uniform(np.log(1.0), np.log(6.0)))) * px
    material, _ = _material_for(2 * r_med, e_kev, rng)
    layer = Layer(material, 0.0, name="fibres")
    n = int(rng.integers(15, 60))
    theta0 = rng.uniform(0, np.pi)
    spread = rng.uniform(0.2, np.pi)     # from nearly aligned (a tow) to isotropic (felt)
    for _ in range(n):
        r = r_med * float(np.exp(rng.normal(0, 0.3)))
        cx, cy = rng.uniform(-fov_mm * 0.6, fov_mm * 0.6, 2)
        a = theta0 + rng.uniform(-spread / 2, spread / 2)
        length = float(rng.uniform(0.3, 1.5)) * fov_mm
        dx, dy = 0.5 * length * np.cos(a), 0.5 * length * np.sin(a)
        layer.shapes.append(Rod(cx - dx, cy - dy, cx + dx, cy + dy, r))
    return Sample("fibres", [layer], description=f"{n} {material} rods, radius ~{r_med * 1e3:.3g} um")


def _powders(fov_mm, px, e_kev, rng):
    r_med = float(np.exp(rng.uniform(np.log(1.5), np.log(14.0)))) * px
    material, _ = _material_for(2 * r_med, e_kev, rng)
    layers = []
    fill = float(rng.uniform(0.3, 0.6))          # projected area fraction per layer
    for li in range(int(rng.integers(1, 3))):
        layer = Layer(material, 0.01 * li, name=f"particles {li}")
        placed: list[tuple[float, float, float]] = []
        area = 0.0
        tries = 0
        while area < fill * fov_mm ** 2 * 1.2 and tries < 4000:
            tries += 1
            r = r_med * float(np.exp(rng.normal(0, 0.35)))
            cx, cy = rng.uniform(-fov_mm * 0.55, fov_mm * 0.55, 2)
            if any((cx - x) ** 2 + (cy - y) ** 2 < (r + q) ** 2 for x, y, q in placed[-400:]):
                continue                          # no interpenetration within a layer
            placed.append((cx, cy, r))
            area += np.pi * r * r
            layer.shapes.append(Sphere(cx, cy, r))
        layers.append(layer)
    return Sample("powders", layers, description=f"{material} spheres, radius ~{r_med * 1e3:.3g} um")


def _foam(fov_mm, px, e_kev, rng):
    cell = float(np.exp(rng.uniform(np.log(8.0), np.log(40.0)))) * px
    wall = float(rng.uniform(1.0, 3.0)) * px
    material, t = _field_material(e_kev, rng, max_mm=fov_mm)
    layers = []
    for li in range(int(rng.integers(1, 3))):
        n = max(4, int((1.3 * fov_mm / cell) ** 2))
        seeds = rng.uniform(-0.65 * fov_mm, 0.65 * fov_mm, (n, 2))
        layers.append(Layer(material, 0.01 * li, [VoronoiWalls(seeds, wall, t / (li + 1),
                                                               float(rng.uniform(0.0, 0.2)))],
                            name=f"foam {li}"))
    return Sample("foam", layers, description=f"{material} foam, cells ~{cell * 1e3:.3g} um")


def _waves(rng, n, f_lo, f_hi, beta, theta=None, spread=None, log_normal=None):
    if log_normal is None:
        f = np.exp(rng.uniform(np.log(f_lo), np.log(f_hi), n))
        # log-uniform |f| in 2-D: amplitude^2 ~ S(f) f^2 with S ~ f^-beta
        amp = f ** ((2.0 - beta) / 2)
    else:
        f0, sd = log_normal
        f = np.clip(f0 * np.exp(rng.normal(0, sd, n)), f_lo, f_hi)
        amp = np.ones(n)
    ang = rng.uniform(0, np.pi, n) if theta is None else theta + rng.normal(0, spread, n)
    return (tuple(f * np.cos(ang)), tuple(f * np.sin(ang)), tuple(amp),
            tuple(rng.uniform(0, 2 * np.pi, n)))


def _fractal_texture(fov_mm, px, e_kev, rng):
    beta = float(rng.uniform(2.5, 4.0))
    material, t = _field_material(e_kev, rng, max_mm=fov_mm)
    fx, fy, amp, ph = _waves(rng, 160, 0.5 / fov_mm, 0.5 / px, beta)
    layer = Layer(material, 0.0, [WaveField(fx, fy, amp, ph, t)], name="texture")
    return Sample("fractal_texture", [layer],
                  description=f"{material} fractal texture, beta {beta:.2f}")


def _grain_texture(fov_mm, px, e_kev, rng):
    material, t = _field_material(e_kev, rng, max_mm=fov_mm)
    f0 = float(np.exp(rng.uniform(np.log(1 / 24), np.log(1 / 4)))) / px
    fx, fy, amp, ph = _waves(rng, 120, 0.5 / fov_mm, 0.5 / px, 0.0, theta=rng.uniform(0, np.pi),
                             spread=float(rng.uniform(0.05, 0.4)), log_normal=(f0, 0.35))
    layer = Layer(material, 0.0, [WaveField(fx, fy, amp, ph, t)], name="grain")
    return Sample("grain_texture", [layer],
                  description=f"{material} grain texture, period ~{1e3 / f0:.3g} um")


def _pcb(fov_mm, px, e_kev, rng):
    # the twin's PCB at 1-3x the field (the range of the seed papers' training source)
    return pcb(fov_mm * float(rng.uniform(1.0, 3.0)), int(rng.integers(2 ** 31)))


def _mix(fov_mm, px, e_kev, rng):
    parts = rng.choice([n for n in TRAINING_FAMILIES if n not in ("mix", "pcb")],
                       size=int(rng.integers(2, 4)), replace=False)
    layers, uniform = [], {}
    for name in parts:
        s = _GENERATORS[str(name)](fov_mm, px, e_kev, rng)
        layers.extend(s.layers)
        for k, v in s.uniform_mm.items():
            uniform[k] = uniform.get(k, 0.0) + v
    return Sample("mix", layers, description="mix of " + ", ".join(map(str, parts)),
                  uniform_mm=uniform)


_GENERATORS: dict[str, Callable[..., Sample]] = {
    "pcb": _pcb,
    "dead_leaves": _dead_leaves,
    "charts": _charts,
    "fibres": _fibres,
    "powders": _powders,
    "fractal_texture": _fractal_texture,
    "mix": _mix,
    "siemens_star": _siemens_star,
    "polygon_leaves": lambda f, p, e, r: _dead_leaves(f, p, e, r, True, "polygon_leaves"),
    "foam": _foam,
    "grain_texture": _grain_texture,
}
FAMILIES: tuple[str, ...] = tuple(_GENERATORS)
assert set(FAMILIES) == set(TRAINING_FAMILIES) | set(HELD_OUT_FAMILIES)
assert not set(TRAINING_FAMILIES) & set(HELD_OUT_FAMILIES)


def _check_family(name: str) -> None:
    if name not in _GENERATORS:
        raise ValueError(f"unknown sample family {name!r}; families are {', '.join(FAMILIES)}")


def check_training_families(names: Sequence[str]) -> tuple[str, ...]:
    """Validate a list of families for training: known, and none of them held out."""
    names = tuple(names)
    if not names:
        raise ValueError("no training families given")
    for n in names:
        _check_family(n)
    held = [n for n in names if n in HELD_OUT_FAMILIES]
    if held:
        raise ValueError(f"held-out families {held} may not be used for training; training "
                         f"families are {', '.join(TRAINING_FAMILIES)}")
    return names


def _mean_energy_kev(twin) -> float:
    """Mean energy of the quanta absorbed by the thick screen (what the contrast is seen at)."""
    e, fluence = twin.spectrum(twin.fixed_state.voltage_kv)
    w = fluence * twin.config.screen("thick").absorption(e)
    return float((w * e).sum() / w.sum())


def family_sample(name: str, fov_mm: float, pixel_mm: float, seed: int,
                  energy_kev: float = 30.0) -> Sample:
    """The sample of family ``name`` for a field ``fov_mm`` wide seen with pixels ``pixel_mm``
    (both at the sample), materials chosen for contrast at ``energy_kev``."""
    _check_family(name)
    if not (fov_mm > 0 and pixel_mm > 0 and fov_mm >= 4 * pixel_mm):
        raise ValueError(f"field {fov_mm} mm and pixel {pixel_mm} mm: need field >= 4 pixels > 0")
    rng = np.random.default_rng([int(seed), FAMILIES.index(name)])
    return _GENERATORS[name](float(fov_mm), float(pixel_mm), float(energy_kev), rng)


@dataclass
class FamilyImage:
    """One rendered sample: ``transmission`` the ideal (unblurred, pixel-integrated)
    polychromatic transmission, ``thickness_mm`` per material, ``truth`` the thin-screen
    noise-free image (what restoration aims at), ``thick`` the thick-screen noise-free image."""

    family: str
    seed: int
    bench: str
    pixel_um: float
    transmission: np.ndarray
    thickness_mm: dict[str, np.ndarray]
    truth: np.ndarray
    thick: np.ndarray
    description: str = ""


_TWINS: dict[tuple[str, int], Any] = {}


def _twin(bench: str, size_px: int):
    from .bench import BENCHES, Twin

    if bench not in BENCHES:
        raise ValueError(f"unknown twin bench {bench!r}; choose from {', '.join(BENCHES)}")
    key = (bench, int(size_px))
    if key not in _TWINS:
        if len(_TWINS) > 4:
            _TWINS.pop(next(iter(_TWINS)))
        _TWINS[key] = Twin(BENCHES[bench](sensor_px=int(size_px)), sample="open", seed=0)
    return _TWINS[key]


def render_family(name: str, shape: int | tuple[int, int], seed: int, *, bench: str = "lens-yag",
                  with_thick: bool = False) -> FamilyImage:
    """Render family ``name`` with ``seed`` on a square sensor of ``shape`` pixels of ``bench``.

    The sample goes through the twin: polychromatic Beer-Lambert at the bench's calibration
    voltage, screen absorption and the thin (and with ``with_thick`` the thick) screen's blur at
    best focus. Thickness maps are on the padded camera grid cropped to the sensor.
    """
    size = int(shape if np.isscalar(shape) else shape[0])
    if not np.isscalar(shape) and (len(shape) != 2 or int(shape[0]) != int(shape[1])):
        raise ValueError(f"render_family renders square frames, got shape {shape}")
    if size < 16:
        raise ValueError(f"frame side must be >= 16 px, got {size}")
    twin = _twin(bench, size)
    cfg = twin.config
    px_mm = cfg.pixel_at_object_um / 1000
    sample = family_sample(name, cfg.fov_mm, px_mm, seed, _mean_energy_kev(twin))
    twin.sample = sample
    st = twin.fixed_state
    q, _ = twin._quanta_maps(st.voltage_kv, "thick", True)
    q0, _ = twin._quanta_maps(st.voltage_kv, "thick", False)
    transmission = twin._crop(q / float(q0.mean())).astype(np.float32)
    thickness = {m: twin._crop(t).copy() for m, t in twin._thickness_maps().items()}
    truth = twin.ground_truth()
    thick = twin.noise_free_transmission("thick") if with_thick else np.empty((0, 0), np.float32)
    return FamilyImage(name, int(seed), bench, float(cfg.pixel_at_screen_um), transmission,
                       thickness, truth.astype(np.float32), thick, sample.description)


def training_source(families: Sequence[str] = TRAINING_FAMILIES, benches: Sequence[str] = (
        "lens-yag", "panel-gos")) -> Callable[[np.random.Generator, int, int], np.ndarray]:
    """An HR source ``(rng, count, patch_px) -> (count, patch_px, patch_px)`` of thin-screen
    truths of the training families (families and benches drawn at random). Refuses any
    held-out family; seeds stay below :data:`EVAL_SEED_BASE`."""
    fams = check_training_families(families)

    def source(rng: np.random.Generator, count: int, patch_px: int) -> np.ndarray:
        out = np.empty((count, patch_px, patch_px), np.float32)
        for k in range(count):
            fam = fams[int(rng.integers(len(fams)))]
            bench = benches[int(rng.integers(len(benches)))]
            out[k] = render_family(fam, patch_px, int(rng.integers(EVAL_SEED_BASE)),
                                   bench=bench).truth
        return out

    return source


def training_hr_source(seed: int = 0, bench: str = "lens-yag",
                       families: Sequence[str] = TRAINING_FAMILIES, pool_images: int = 96,
                       pool_px: int = 256) -> Callable[[np.random.Generator, int, int], np.ndarray]:
    """HR source factory for the trainers (``scripts/train_profile_weights.py --hr-source
    xinstrument.sim.families:training_hr_source``): a pool of ``pool_images`` thin-screen truths
    of the training ``families`` (``pool_px`` square, rendered once on ``bench`` from ``seed``)
    from which the returned source ``(rng, count, patch_px)`` cuts random patches.

    Rendering a twin image costs far more than a training step, so a fixed pool with random
    crops, flips and rotations keeps CPU training short. The seed picks the images; it is
    deterministic. Held-out families are refused (:func:`check_training_families`).
    """
    from xinstrument.restoration.training import pooled_source

    # an unknown bench is refused by render_family with the benches' names
    return pooled_source(training_source(families, benches=(bench,)), pool_images, pool_px,
                         int(seed))


def measurement_pairs(physics: Any, name: str, count: int, size_px: int, seed: int, *,
                      dose_ratio: float = 1.0, bench: str = "lens-yag"
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(thick measurement, thin truth) pairs of family ``name`` for a detector profile.

    The truth is the twin's thin-screen image; the measurement is the profile's own forward
    model (``physics.degrade``: MTF-ratio blur and NNPS-shaped quantum noise at
    ``dose_ratio`` times the calibration dose), as a user would synthesise a test with the
    profile. ``physics`` is a :class:`xinstrument.restoration.DetectorPhysics`. Seeds are
    ``seed + i`` (evaluation uses seeds from :data:`EVAL_SEED_BASE` on).
    """
    import torch

    if not (isinstance(dose_ratio, (int, float)) and math.isfinite(dose_ratio) and dose_ratio > 0):
        raise ValueError(f"dose_ratio must be a finite number > 0, got {dose_ratio!r}")
    truth = np.stack([render_family(name, size_px, seed + i, bench=bench).truth
                      for i in range(int(count))])
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        lr = physics.degrade(torch.from_numpy(truth), gen, float(dose_ratio))
    return lr.numpy().astype(np.float32), truth
