"""The digital twin of an imaging bench: source -> sample -> scintillator -> optics -> sensor.

``Twin`` renders camera frames from the physical state of the world (tube output, focus stage
position), which in simulation mode is read from the protocol emulators that the real drivers talk
to. Everything that does not change between frames of one state (spectrum, projected sample,
transfer functions, fixed-pattern maps) is cached; per frame only the quantum noise, the
scintillator blur of that noise and the sensor noise are computed.

Signal chain per pixel (units in brackets):
  absorbed X-ray quanta n ~ Poisson(Q) [quanta], Q from the spectrum, sample and screen;
  deposited energy n * E_mean(x) [keV], blurred by the depth-integrated screen/optics OTF;
  photo-electrons ~ Poisson(energy * light yield * collection * QE * (1 + PRNU)) [e-];
  + dark current ~ Poisson [e-], + read noise ~ Normal [e-];
  ADU = e- / gain + offset (+ DSNU), clipped to the bit depth.
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.fft as sfft

from . import detector as det
from .materials import SAMPLE_MATERIALS
from .samples import Grid, Sample, make_sample
from .source import SourceSettings, energy_grid_kev, focal_spot_um, spectrum_photons_per_s_sr


@dataclass(frozen=True)
class BenchConfig:
    """Geometry and detector of a simulated bench."""

    name: str = "lens-yag"
    kind: str = "lens"                        # "lens" (lens-coupled) or "panel" (contact screen)
    thick_um: float = 200.0                   # lens: YAG thickness of the working (LR) screen
    thin_um: float = 20.0                     # lens: YAG thickness of the reference (HR) screen
    thick_mg_cm2: float = 134.55              # panel: GOS areal densities (shared/papers/001)
    thin_mg_cm2: float = 33.91
    lens: det.LensCoupling = det.LensCoupling()
    sensor: det.SensorModel = det.SensorModel()
    source_object_mm: float = 29.0            # source to sample base (1 mm above the screen:
    #                                           tube-rotation tomosynthesis needs a small gap)
    source_detector_mm: float = 30.0          # source to scintillator
    pad_px: int = 48                          # margin rendered around the field (blur tails)
    filter_al_mm: float = 0.25                # added beam filter: removes the soft photons that
    #                                           a 1.6 mm board would absorb anyway (dose, contrast)
    focal_spot_fwhm_um: float | None = None   # a tube with its own fixed spot (not the
    #                                           Hamamatsu power table of sim/source.py)
    tube_voltage_kv: float | None = None      # operating point of the bench's tube (default
    tube_current_ua: float | None = None      #   world state); None: the lens/panel defaults
    oversample: int = 1                       # sample rendered on an N x finer grid, blurred
    #   there by the optics, then integrated over each camera pixel: the camera samples what the
    #   optics pass, aliasing included. 1: rasterised on the camera grid (area coverage) and
    #   blurred there - fast, and exact for structure below the camera's Nyquist frequency only
    #   (finer structure aliases before the blur, at the alias frequency's higher MTF).

    @property
    def pixel_at_screen_um(self) -> float:
        if self.kind == "lens":
            return self.sensor.pixel_um / self.lens.magnification
        return self.sensor.pixel_um

    @property
    def geometric_magnification(self) -> float:
        return self.source_detector_mm / self.source_object_mm

    @property
    def pixel_at_object_um(self) -> float:
        return self.pixel_at_screen_um / self.geometric_magnification

    @property
    def fov_mm(self) -> float:
        return self.sensor.cols * self.pixel_at_object_um / 1000

    def screen(self, which: str = "thick") -> det.Scintillator:
        if which not in ("thick", "thin"):
            raise ValueError(f"screen must be 'thick' or 'thin', got {which!r}")
        if self.kind == "lens":
            return det.yag(self.thick_um if which == "thick" else self.thin_um)
        return det.gos(self.thick_mg_cm2 if which == "thick" else self.thin_mg_cm2)

    def electrons_per_kev(self, which: str = "thick") -> float:
        scint = self.screen(which)
        coupling = (self.lens.collection_efficiency() if self.kind == "lens"
                    else det.GOS_CONTACT_COLLECTION)
        return scint.light_yield_per_kev * coupling * self.sensor.qe


def lens_bench(sensor_px: int = 2048, **kw) -> BenchConfig:
    """YAG:Ce 200 um (20 um reference) behind a 5x NA 0.4 objective on a pco.edge-class sCMOS
    (shared/papers/004): 1.3 um pixels at the screen."""
    return BenchConfig(name="lens-yag", kind="lens",
                       sensor=det.SensorModel(rows=sensor_px, cols=sensor_px), **kw)


def panel_bench(sensor_px: int = 512, **kw) -> BenchConfig:
    """Gd2O2S:Tb 134.55 mg/cm^2 (33.91 reference) on a 99 um CMOS panel at 70 kV geometry
    (shared/papers/001)."""
    # large-pixel CMOS panel: ~2 Me- full well at 99 um (Teledyne Dalsa Rad-icon / Varex class
    # data sheets), 16-bit ADC spanning it (32 e-/ADU), read noise ~150 e-
    sensor = det.SensorModel(rows=sensor_px, cols=sensor_px, pixel_um=99.0, qe=0.6,
                             gain_e_per_adu=32.0, read_noise_e=150.0, dark_current_e_per_s=500.0,
                             full_well_e=2.0e6, max_fps=30.0, dsnu_e=50.0)
    kw.setdefault("source_object_mm", 450.0)
    kw.setdefault("source_detector_mm", 500.0)
    kw.setdefault("pad_px", 64)
    return BenchConfig(name="panel-gos", kind="panel", sensor=sensor, **kw)


# Lens-coupled micro-tomosynthesis bench of shared/papers/003 (Jeong et al.): Petrick
# P030-24-12F100W tube at 50 kVp / 1 mA (50 W), focal spot 30-55 um; 20x infinity-corrected
# objective designed for f = 200 mm with a 160 mm tube lens (16x); pco.edge 4.2 (6.5 um pixels)
# -> 0.406 um at the scintillator. The paper names no screen: a 5 um YAG:Ce single-crystal film
# grown by liquid-phase epitaxy on an undoped YAG substrate, the thin screens of micrometre
# X-ray imaging (Koch et al., J. Opt. Soc. Am. A 15 (1998) 1940; Martin & Koch, J. Synchrotron
# Rad. 13 (2006) 180, the paper's ref. 2); the substrate does not scintillate and is not modelled.
# Its reference (SR training target) is a 1 um film. The objective: NA 0.42, the NA of the
# 20x plan-apochromats made for 200 mm tube lenses (Mitutoyo M Plan Apo 20x).
MICRO_MAGNIFICATION = 20.0 * 160.0 / 200.0
MICRO_NA = 0.42
MICRO_SCREEN_UM = 5.0
MICRO_REFERENCE_UM = 1.0
MICRO_FOCAL_SPOT_UM = 40.0         # mid-range of the paper's 30-55 um
MICRO_VOLTAGE_KV = 50.0
MICRO_CURRENT_UA = 1000.0
MICRO_CHART_WIDTHS_UM = (3.0, 2.0, 1.5, 1.0)   # the chart groups the paper reports


def micro_tomo_bench(sensor_px: int = 256, **kw) -> BenchConfig:
    """The literature's lens-coupled micro-tomosynthesis bench (shared/papers/003): 16x lens
    coupling (0.406 um pixels), 5 um YAG:Ce film, 50 kVp / 1 mA tube with a 40 um spot. The
    tube rotates on a 50 mm circle about the screen centre; the chart sits 0.5 mm above the
    screen (its substrate side on the film's protective window). Rendered 4x oversampled: the
    camera integrates the optics' image over each pixel."""
    kw.setdefault("lens", det.LensCoupling(magnification=MICRO_MAGNIFICATION,
                                           numerical_aperture=MICRO_NA))
    kw.setdefault("thick_um", MICRO_SCREEN_UM)
    kw.setdefault("thin_um", MICRO_REFERENCE_UM)
    kw.setdefault("source_object_mm", 49.5)
    kw.setdefault("source_detector_mm", 50.0)
    kw.setdefault("pad_px", 32)
    kw.setdefault("focal_spot_fwhm_um", MICRO_FOCAL_SPOT_UM)
    kw.setdefault("tube_voltage_kv", MICRO_VOLTAGE_KV)
    kw.setdefault("tube_current_ua", MICRO_CURRENT_UA)
    kw.setdefault("oversample", 4)
    return BenchConfig(name="micro-tomo-16x", kind="lens",
                       sensor=det.SensorModel(rows=sensor_px, cols=sensor_px), **kw)


BENCHES: dict[str, Callable[..., BenchConfig]] = {"lens-yag": lens_bench, "panel-gos": panel_bench,
                                                  "micro-tomo-16x": micro_tomo_bench}


@dataclass
class WorldState:
    """Physical state the camera sees. In simulation mode it is read from the emulators."""

    voltage_kv: float = 50.0
    current_ua: float = 80.0
    xray_on: bool = True
    focus_mode: int = 0
    stage_um: float = 56.0
    sample_in: bool = True
    theta_deg: float = 0.0        # tube angle about the scintillator centre (tomosynthesis)


StateProvider = Callable[[], WorldState]


@dataclass
class _Optics:
    otf_rfft: np.ndarray      # (Hp, Wp//2+1) float32 system OTF on the padded grid
    stage_um: float


class Twin:
    """Renders frames, ground truth and calibration quantities of one bench.

    ``state`` is a callable returning the current :class:`WorldState` (from the emulators in
    simulation mode); a fixed WorldState is used when none is given.
    """

    def __init__(self, config: BenchConfig | None = None, sample: Sample | str = "pcb",
                 seed: int = 0, state: StateProvider | None = None) -> None:
        self.config = config or lens_bench()
        k = self.config.oversample
        if not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 1 <= k <= 8):
            raise ValueError(f"bench oversample must be an integer 1..8, got {k!r}")
        self.seed = int(seed)
        self._fixed_state = WorldState()
        if self.config.kind == "panel":     # GOS panel operated at 70 kV (shared/papers/001)
            self._fixed_state.voltage_kv, self._fixed_state.current_ua = 70.0, 50.0
        if self.config.tube_voltage_kv is not None:
            self._fixed_state.voltage_kv = float(self.config.tube_voltage_kv)
        if self.config.tube_current_ua is not None:
            self._fixed_state.current_ua = float(self.config.tube_current_ua)
        self.state_provider: StateProvider = state or (lambda: self._fixed_state)
        self._lock = threading.RLock()
        self._rng = np.random.default_rng(self.seed + 1)
        self._cache: dict = {}
        self.sample = sample  # via setter
        self._fixed_pattern()

    # --- state
    @property
    def fixed_state(self) -> WorldState:
        return self._fixed_state

    def set_state(self, **kw) -> None:
        """Change the fixed world state (only when no external state provider is attached)."""
        for k, v in kw.items():
            if not hasattr(self._fixed_state, k):
                raise AttributeError(f"unknown world state field {k!r}")
            setattr(self._fixed_state, k, v)

    @property
    def sample(self) -> Sample:
        return self._sample

    @sample.setter
    def sample(self, value: Sample | str) -> None:
        if isinstance(value, str):
            value = make_sample(value, self.config.fov_mm, self.seed)
        with self._lock:
            self._sample = value
            # optics, fixed pattern and best focus do not depend on the sample
            self._cache = {k: v for k, v in self._cache.items() if k[0] in ("otf", "fp", "best")}

    # --- geometry helpers
    @property
    def padded_shape(self) -> tuple[int, int]:
        p = self.config.pad_px
        return (sfft.next_fast_len(self.config.sensor.rows + 2 * p, real=True),
                sfft.next_fast_len(self.config.sensor.cols + 2 * p, real=True))

    def _grid(self, k: int = 1) -> Grid:
        """Padded camera grid at the sample base, each pixel split into k x k."""
        hp, wp = self.padded_shape
        return Grid.centred(hp * k, wp * k, self.config.pixel_at_object_um / 1000 / k)

    def _crop(self, a: np.ndarray) -> np.ndarray:
        hp, wp = self.padded_shape
        s = self.config.sensor
        r0, c0 = (hp - s.rows) // 2, (wp - s.cols) // 2
        return a[..., r0:r0 + s.rows, c0:c0 + s.cols]

    # --- cached physics
    def spectrum(self, voltage_kv: float, current_ua: float = 1.0, focus_mode: int = 0):
        """Energy bins (keV) and photons/s per mm^2 at the screen per bin."""
        e = energy_grid_kev(voltage_kv)
        n_sr = spectrum_photons_per_s_sr(SourceSettings(voltage_kv, current_ua, focus_mode,
                                                        filter_al_mm=self.config.filter_al_mm), e)
        return e, n_sr / self.config.source_detector_mm ** 2

    def _quanta_maps(self, voltage_kv: float, which: str, sample_in: bool, theta_deg: float = 0.0,
                     k: int = 1):
        """Absorbed quanta per pixel per s per uA and mean deposited energy (keV) per quantum,
        on the padded grid (each camera pixel split into k x k)."""
        theta_deg = round(float(theta_deg), 4) if sample_in else 0.0
        key = ("q", round(voltage_kv, 2), which, sample_in, theta_deg, k)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        e, fluence_mm2 = self.spectrum(voltage_kv, 1.0)
        pixel_area_mm2 = (self.config.pixel_at_screen_um / 1000 / k) ** 2
        scint = self.config.screen(which)
        absorbed_per_bin = fluence_mm2 * pixel_area_mm2 * scint.absorption(e)   # quanta/s/uA
        hp, wp = self.padded_shape
        hp, wp = hp * k, wp * k
        if sample_in and self._sample.layers + [0] and (self._sample.layers or
                                                        self._sample.uniform_mm):
            thick = self._thickness_maps(theta_deg, k)
            q = np.zeros((hp, wp), np.float32)
            edep = np.zeros((hp, wp), np.float32)
            # group energy bins to bound the cost (polychromatic Beer-Lambert)
            for sl in _bin_groups(len(e), 16):
                w_q = absorbed_per_bin[sl]
                if w_q.sum() <= 0:
                    continue
                e_mean = float((w_q * e[sl]).sum() / w_q.sum())
                mu = np.zeros((hp, wp), np.float32)
                for mat, t in thick.items():
                    mu_mm = float(np.average(SAMPLE_MATERIALS[mat].linear_attenuation_per_mm(
                        e[sl]), weights=w_q))
                    mu += np.float32(mu_mm) * t
                tr = np.exp(-mu)
                q += np.float32(w_q.sum()) * tr
                edep += np.float32(w_q.sum() * e_mean) * tr
        else:
            q = np.full((hp, wp), absorbed_per_bin.sum(), np.float32)
            edep = np.full((hp, wp), (absorbed_per_bin * e).sum(), np.float32)
        e_mean_map = np.divide(edep, q, out=np.zeros_like(q), where=q > 0)
        with self._lock:
            if k > 1:       # fine maps are large: keep only the latest few
                for old in [c for c in self._cache if c[0] == "q" and c[-1] > 1][:-2]:
                    del self._cache[old]
            self._cache[key] = (q, e_mean_map)
        return q, e_mean_map

    def _camera_maps(self, voltage_kv: float, which: str, sample_in: bool, theta_deg: float = 0.0):
        """:meth:`_quanta_maps` on the padded camera grid; with ``oversample`` the fine maps
        summed over each camera pixel (energy weighted for the mean energy)."""
        k = self.config.oversample
        if k == 1 or not sample_in:
            return self._quanta_maps(voltage_kv, which, sample_in, theta_deg)
        key = ("qcam", round(voltage_kv, 2), which, round(float(theta_deg), 4))
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        q_f, e_f = self._quanta_maps(voltage_kv, which, True, theta_deg, k)
        q = _bin_sum(q_f, k)
        e_mean = np.divide(_bin_sum(q_f * e_f, k), q, out=np.zeros_like(q), where=q > 0)
        with self._lock:
            self._cache[key] = (q, e_mean)
        return q, e_mean

    def _blurred_energy(self, voltage_kv: float, spectral: str, which: str, sample_in: bool,
                        theta_deg: float, stage_um: float, current_ua: float, focus_mode: int
                        ) -> np.ndarray:
        """Noise-free absorbed energy (keV per s per uA) of screen ``spectral`` blurred by the
        optics of screen ``which``, on the padded camera grid. With ``oversample`` k the blur
        acts on the k x finer grid and each camera pixel then integrates its k x k sub-pixels
        (the pixel aperture itself); otherwise blur and pixel aperture act on the camera grid."""
        k = self.config.oversample if sample_in else 1
        if k == 1:
            q, e_mean = self._quanta_maps(voltage_kv, spectral, sample_in, theta_deg)
            otf = self._otf_grid(which, stage_um, voltage_kv, current_ua, focus_mode,
                                 theta_deg=theta_deg if sample_in else 0.0)
            return sfft.irfft2(sfft.rfft2(q * e_mean, workers=2) * otf, s=q.shape, workers=2)
        key = ("blur", round(voltage_kv, 2), spectral, which, round(float(theta_deg), 4),
               round(stage_um, 3), round(current_ua, 1), focus_mode)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        q_f, e_f = self._quanta_maps(voltage_kv, spectral, True, theta_deg, k)
        otf = self._otf_grid(which, stage_um, voltage_kv, current_ua, focus_mode, k, theta_deg)
        fine = sfft.irfft2(sfft.rfft2(q_f * e_f, workers=2) * otf, s=q_f.shape, workers=2)
        out = _bin_sum(fine.astype(np.float32), k)
        with self._lock:
            for old in [c for c in self._cache if c[0] == "blur"][:-3]:
                del self._cache[old]
            self._cache[key] = out
        return out

    def _thickness_maps(self, theta_deg: float = 0.0, k: int = 1) -> dict[str, np.ndarray]:
        key = ("thick", self._sample.name, id(self._sample), theta_deg, k)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        if theta_deg == 0.0:
            sod = self.config.source_object_mm
            maps = self._sample.thickness_maps(
                self._grid(k), magnification_of_height=lambda h: sod / (sod - h))
        else:
            maps = self._sample.thickness_maps(
                self._detector_grid(k), projection_of_height=lambda h: self.layer_projection(
                    h, theta_deg), path_factor=1.0 / np.cos(np.deg2rad(theta_deg)))
        with self._lock:
            # projections at many angles: keep the cache bounded
            old = [c for c in self._cache if c[0] == "thick" and (c[3] != 0.0 or c[4] > 1)]
            for c in old[:-4]:
                del self._cache[c]
            self._cache[key] = maps
        return maps

    def _detector_grid(self, k: int = 1) -> Grid:
        hp, wp = self.padded_shape
        return Grid.centred(hp * k, wp * k, self.config.pixel_at_screen_um / 1000 / k)

    def layer_projection(self, height_mm: float, theta_deg: float) -> tuple[float, float]:
        """Magnification and lateral shift (mm, on the scintillator, along x) of a sample layer
        ``height_mm`` above the sample base when the tube sits at ``theta_deg`` on a circle of
        radius SDD about the scintillator centre (tube-rotation micro-tomosynthesis,
        shared/papers/003). A point (x, H) above the detector projects to
        x_d = x * Zs / (Zs - H) - Xs * H / (Zs - H), with the source at (Xs, Zs)."""
        cfg = self.config
        r = cfg.source_detector_mm
        a = np.deg2rad(theta_deg)
        xs, zs = r * np.sin(a), r * np.cos(a)
        h_det = (cfg.source_detector_mm - cfg.source_object_mm) + height_mm
        if not zs > h_det:
            raise ValueError(f"tube angle {theta_deg} deg puts the source below a sample layer")
        return zs / (zs - h_det), -xs * h_det / (zs - h_det)

    def depth_weights(self, voltage_kv: float, which: str = "thick"):
        e, fl = self.spectrum(voltage_kv)
        return self.config.screen(which).depth_weights(e, fl)

    def mtf(self, f_cy_per_mm: np.ndarray, which: str = "thick", stage_um: float | None = None,
            voltage_kv: float = 50.0, current_ua: float = 80.0, focus_mode: int = 0,
            include_pixel: bool = True) -> np.ndarray:
        """Radial system MTF at the screen plane: screen (+optics) x focal-spot penumbra x pixel
        aperture (along one axis)."""
        f = np.abs(np.asarray(f_cy_per_mm, dtype=np.float64))
        cfg = self.config
        z, k = self.depth_weights(voltage_kv, which)
        if cfg.kind == "lens":
            if stage_um is None:
                stage_um = self.best_focus_um(which, voltage_kv)
            screen = det.lens_coupled_otf(f, cfg.screen(which), cfg.lens, stage_um, z, k)
        else:
            screen = det.contact_screen_otf(f, cfg.screen(which), z, k)
        out = screen * self._spot_mtf(f, voltage_kv, current_ua, focus_mode)
        if include_pixel:
            out = out * np.sinc(f * cfg.pixel_at_screen_um / 1000)
        return out

    def _spot_mtf(self, f_cy_per_mm, voltage_kv, current_ua, focus_mode):
        m = self.config.geometric_magnification
        spot_um = (self.config.focal_spot_fwhm_um if self.config.focal_spot_fwhm_um is not None
                   else focal_spot_um(voltage_kv * current_ua * 1e-3, focus_mode))
        sigma_mm = spot_um * (m - 1) / 2.3548 / 1000     # penumbra at the screen, FWHM -> sigma
        return np.exp(-2 * (np.pi * sigma_mm * f_cy_per_mm) ** 2)

    def best_focus_um(self, which: str = "thick", voltage_kv: float = 50.0) -> float:
        """Stage position that maximises the image's high-frequency energy, the integral of
        MTF(f)^2 f df up to Nyquist (what a power-spectrum focus metric measures on a
        structure-rich sample). Lens-coupled benches only."""
        cfg = self.config
        if cfg.kind != "lens":
            raise ValueError("a contact-screen panel has no focus axis")
        key = ("best", which, round(voltage_kv, 2))
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        nyq = 500.0 / cfg.pixel_at_screen_um
        f = np.linspace(0, nyq, 256)
        z, k = self.depth_weights(voltage_kv, which)
        scint = cfg.screen(which)

        def sharpness(s):
            o = det.lens_coupled_otf(f, scint, cfg.lens, s, z, k)
            return float(np.sum(o ** 2 * f))

        lo = cfg.lens.stage_at_entrance_face_um - 5
        hi = lo + scint.thickness_um / cfg.lens.refractive_index + 10
        grid = np.linspace(lo, hi, 81)
        best = grid[int(np.argmax([sharpness(s) for s in grid]))]
        step = grid[1] - grid[0]
        a, b = best - step, best + step
        for _ in range(40):     # golden-section refinement
            c, d = b - 0.618 * (b - a), a + 0.618 * (b - a)
            if sharpness(c) > sharpness(d):
                b = d
            else:
                a = c
        best = 0.5 * (a + b)
        with self._lock:
            self._cache[key] = best
        return best

    def focus_truth_um(self, metric: Callable[[np.ndarray], float], which: str = "thick",
                       span_um: float = 12.0, step_um: float = 0.25) -> float:
        """Stage position maximising ``metric`` on noise-free images of the current sample.

        A thick screen's depth distribution is skewed, so 'best focus' depends on the metric
        (high frequencies favour the in-focus layer near the entrance face, low frequencies the
        mean depth); this is the truth a focus scan with that metric should find.
        """
        centre = self.best_focus_um(which, self.state_provider().voltage_kv)
        stages = np.arange(centre - span_um, centre + span_um + 1e-9, step_um)
        values = np.array([metric(self.noise_free_transmission(which, stage_um=s))
                           for s in stages])
        i = int(np.argmax(values))
        if 0 < i < len(stages) - 1:   # parabola through the three best samples
            y0, y1, y2 = values[i - 1:i + 2]
            denom = y0 - 2 * y1 + y2
            if denom < 0:
                return float(stages[i] + 0.5 * step_um * (y0 - y2) / denom)
        return float(stages[i])

    def _otf_grid(self, which: str, stage_um: float, voltage_kv: float, current_ua: float,
                  focus_mode: int, k: int = 1, theta_deg: float = 0.0) -> np.ndarray:
        """System OTF on the padded rfft2 grid (pixel aperture separable, the rest radial).
        ``k`` > 1: the optics alone (no pixel aperture) on the k x finer grid. With the tube at
        ``theta_deg`` the beam crosses the screen obliquely: each depth's light is offset along
        x by its parallax (:func:`~.detector.oblique_parallax_shift_mm`), which makes the OTF
        complex and anisotropic."""
        theta_deg = round(float(theta_deg), 4)
        key = ("otf", which, round(stage_um, 3), round(voltage_kv, 2),
               round(current_ua, 1), focus_mode, k, theta_deg)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        hp, wp = self.padded_shape
        hp, wp = hp * k, wp * k
        p_mm = self.config.pixel_at_screen_um / 1000 / k
        fy = sfft.fftfreq(hp, d=p_mm)[:, None]
        fx = sfft.rfftfreq(wp, d=p_mm)[None, :]
        fr = np.hypot(fx, fy)
        # evaluate the radial part on a fine 1-D grid and interpolate (the depth integral is costly)
        f1 = np.linspace(0, fr.max() * 1.0001, 2048)
        if theta_deg == 0.0:
            radial = self.mtf(f1, which, stage_um if self.config.kind == "lens" else None,
                              voltage_kv, current_ua, focus_mode, include_pixel=False)
            otf = np.interp(fr, f1, radial).astype(np.float32)
        else:
            z, w, per_depth = self._depth_otfs(f1, which, stage_um, voltage_kv)
            spot = self._spot_mtf(f1, voltage_kv, current_ua, focus_mode)
            shift_mm = det.oblique_parallax_shift_mm(z, theta_deg)
            otf = np.zeros(fr.shape, np.complex64)
            for wj, rj, sj in zip(w, per_depth, shift_mm):
                if wj > 0:
                    ramp = np.exp(-2j * np.pi * fx * sj).astype(np.complex64)
                    otf += np.float32(wj) * np.interp(fr, f1, rj * spot).astype(np.float32) * ramp
        if k == 1:
            otf = otf * (np.sinc(fx * p_mm) * np.sinc(fy * p_mm)).astype(np.float32)
        with self._lock:
            if len([c for c in self._cache if c[0] == "otf"]) > 16 or k > 1:
                for c in [c for c in self._cache if c[0] == "otf" and (c[6] > 1 or k == 1)]:
                    del self._cache[c]
            self._cache[key] = otf
        return otf

    def _depth_otfs(self, f_cy_per_mm: np.ndarray, which: str, stage_um: float,
                    voltage_kv: float):
        """Depths (um), deposited-energy weights and each depth's screen (+optics) OTF
        [n_depths, n_f] of screen ``which``; their weighted sum is the radial screen OTF of
        :meth:`mtf` without the focal spot."""
        cfg = self.config
        z, w = self.depth_weights(voltage_kv, which)
        if cfg.kind == "lens":
            return z, w, det.lens_coupled_depth_otfs(f_cy_per_mm, cfg.lens, stage_um, z)
        return z, w, det.contact_screen_depth_otfs(f_cy_per_mm, cfg.screen(which), z)

    def _fixed_pattern(self) -> None:
        s = self.config.sensor
        rng = np.random.default_rng(self.seed + 12345)
        self.gain_map = (1 + s.prnu * rng.standard_normal((s.rows, s.cols))).astype(np.float32)
        self.offset_map_adu = (s.offset_adu + s.dsnu_e / s.gain_e_per_adu *
                               rng.standard_normal((s.rows, s.cols))).astype(np.float32)
        self.dark_map_e_per_s = np.full((s.rows, s.cols), s.dark_current_e_per_s, np.float32)
        hot = rng.random((s.rows, s.cols)) < s.hot_pixel_fraction
        self.dark_map_e_per_s[hot] *= s.hot_pixel_dark_factor
        self.hot_pixels = hot

    # --- rendering
    def expected_quanta(self, which: str = "thick", state: WorldState | None = None,
                        exposure_s: float = 1.0) -> np.ndarray:
        """Mean absorbed X-ray quanta per pixel for one exposure (noise-free, unblurred)."""
        st = state or self.state_provider()
        if not st.xray_on:
            return np.zeros((self.config.sensor.rows, self.config.sensor.cols), np.float32)
        q, _ = self._camera_maps(st.voltage_kv, which, st.sample_in, st.theta_deg)
        return self._crop(q) * np.float32(st.current_ua * exposure_s)

    def render(self, exposure_s: float, roi: tuple[int, int, int, int] | None = None,
               binning: int = 1, frame_number: int = 0, which: str = "thick",
               rng: np.random.Generator | None = None) -> tuple[np.ndarray, dict]:
        """One camera frame (uint16) and the state snapshot it was taken in."""
        cfg, s = self.config, self.config.sensor
        st = dataclasses.replace(self.state_provider())
        rng = rng or self._rng
        e_per_kev = cfg.electrons_per_kev(which)
        if st.xray_on and st.current_ua > 0:
            q, e_mean = self._camera_maps(st.voltage_kv, which, st.sample_in, st.theta_deg)
            dose = np.float32(st.current_ua * exposure_s)
            n = rng.poisson(q * dose).astype(np.float32)
            # the beam meets the screen at the tube angle, flats and sample frames alike
            otf = self._otf_grid(which, st.stage_um, st.voltage_kv, st.current_ua, st.focus_mode,
                                 theta_deg=st.theta_deg)
            if cfg.oversample > 1 and st.sample_in:
                # mean image from the fine grid; the quantum fluctuations (zero mean) blurred on
                # the camera grid, as in the direct path - the blur is linear, so the sum is the
                # blurred image of the detected quanta
                energy = (n - q * dose) * e_mean
                blurred = sfft.irfft2(sfft.rfft2(energy, workers=2) * otf, s=energy.shape,
                                      workers=2)
                blurred += dose * self._blurred_energy(
                    st.voltage_kv, which, which, True, st.theta_deg, st.stage_um, st.current_ua,
                    st.focus_mode)
            else:
                energy = n * e_mean
                blurred = sfft.irfft2(sfft.rfft2(energy, workers=2) * otf, s=energy.shape,
                                      workers=2)
            mean_e = self._crop(blurred) * np.float32(e_per_kev) * self.gain_map
            np.clip(mean_e, 0, None, out=mean_e)
        else:
            mean_e = np.zeros((s.rows, s.cols), np.float32)
        mean_e += self.dark_map_e_per_s * np.float32(exposure_s)
        electrons = rng.poisson(mean_e).astype(np.float32)
        electrons += np.float32(s.read_noise_e) * rng.standard_normal(electrons.shape,
                                                                        np.float32)
        np.minimum(electrons, s.full_well_e, out=electrons)
        adu = electrons / np.float32(s.gain_e_per_adu) + self.offset_map_adu
        adu = np.clip(np.rint(adu), 0, 2 ** s.bit_depth - 1).astype(np.uint16)
        if roi is not None:
            r0, c0, rows, cols = roi
            adu = adu[r0:r0 + rows, c0:c0 + cols]
        if binning > 1:
            h, w = (adu.shape[0] // binning) * binning, (adu.shape[1] // binning) * binning
            adu = adu[:h, :w].reshape(h // binning, binning, w // binning, binning) \
                .sum(axis=(1, 3)).clip(0, 2 ** s.bit_depth - 1).astype(np.uint16)
        meta = {"voltage_kv": st.voltage_kv if st.xray_on else 0.0,
                "current_ua": st.current_ua if st.xray_on else 0.0, "xray_on": st.xray_on,
                "focus_mode": st.focus_mode, "stage_um": st.stage_um, "focus_z_um": st.stage_um,
                "sample_in": st.sample_in, "theta_deg": st.theta_deg, "screen": which}
        return adu, meta

    def camera_hook(self, which: str = "thick"):
        """Render hook for drivers.camera.simulated.SimulatedCamera."""
        def hook(exposure_s, roi, binning, frame_number):
            return self.render(exposure_s, roi, binning, frame_number, which)
        return hook

    # --- truth and predictions
    def noise_free_transmission(self, which: str = "thick", state: WorldState | None = None,
                                stage_um: float | None = None,
                                spectral_screen: str | None = None) -> np.ndarray:
        """Flat-normalised noise-free image with the blur of screen ``which``.

        ``spectral_screen`` selects whose energy response weights the transmission (default: the
        same screen). Thin and thick screens absorb different parts of the spectrum, so their
        transmission images differ slightly (beam hardening) besides the blur.
        """
        st = state or self.state_provider()
        spectral = spectral_screen or which
        q0, e0 = self._quanta_maps(st.voltage_kv, spectral, False)
        if stage_um is None:
            stage_um = (self.best_focus_um(which, st.voltage_kv) if self.config.kind == "lens"
                        else st.stage_um)
        signal = self._blurred_energy(st.voltage_kv, spectral, which, True, st.theta_deg,
                                      stage_um, st.current_ua, st.focus_mode)
        flat = float((q0 * e0).mean())
        return (self._crop(signal) / flat).astype(np.float32)

    def ground_truth(self, state: WorldState | None = None) -> np.ndarray:
        """What restoration of thick-screen frames aims at: the noise-free, flat-normalised image
        with the thin (reference) screen's blur at its best focus and the thick screen's spectral
        response. The MTF-ratio model (x_b = F^-1[MTF_LR/MTF_HR F{x_0}], DESIGN.md section 1)
        maps blur only, so the target keeps the contrast the thick screen measures."""
        return self.noise_free_transmission("thin", state, spectral_screen="thick")

    def predicted_variance_adu(self, mean_signal_adu: np.ndarray, which: str = "thick",
                               exposure_s: float = 1.0, state: WorldState | None = None):
        """Per-pixel variance predicted by the noise model for a flat field of the given mean
        signal (offset removed): quantum noise transferred through the blur (sum of the squared
        PSF), secondary (optical) quanta, dark current and read noise."""
        cfg, s = self.config, self.config.sensor
        st = state or self.state_provider()
        otf = self._otf_grid("thick" if which == "thick" else "thin", st.stage_um,
                             st.voltage_kv, st.current_ua, st.focus_mode)
        hp, wp = self.padded_shape
        # sum of squared PSF = mean of |OTF|^2 over the full 2-D frequency grid (Parseval)
        weight = np.ones(otf.shape[1])
        weight[1:(wp - 1) // 2 + 1] = 2.0
        psf_sq_sum = float((otf.astype(np.float64) ** 2 * weight).sum() / (hp * wp))
        _, e_mean = self._quanta_maps(st.voltage_kv, which, False)
        e_bar = float(e_mean.mean())
        g = cfg.electrons_per_kev(which) * e_bar / s.gain_e_per_adu     # ADU per absorbed quantum
        signal_e = mean_signal_adu * s.gain_e_per_adu
        var_e = (signal_e * g * s.gain_e_per_adu * psf_sq_sum            # X-ray quantum noise
                 + signal_e                                              # optical quanta (Poisson)
                 + s.dark_current_e_per_s * exposure_s + s.read_noise_e ** 2)
        return var_e / s.gain_e_per_adu ** 2


def _bin_sum(a: np.ndarray, k: int) -> np.ndarray:
    """Sum over k x k blocks: fine sub-pixels into camera pixels."""
    h, w = a.shape
    return a.reshape(h // k, k, w // k, k).sum(axis=(1, 3), dtype=np.float64).astype(np.float32)


def _bin_groups(n: int, n_groups: int) -> list[slice]:
    edges = np.linspace(0, n, min(n, n_groups) + 1).astype(int)
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


@dataclass
class HRSource:
    """Noise-free thin-screen (HR) images of random samples for training restoration models."""

    bench: str = "lens-yag"
    size_px: int = 256
    seed: int = 0
    samples: tuple[str, ...] = ("pcb", "pcb", "pcb", "chart", "bars", "edge")
    _count: int = field(default=0, init=False)

    def __call__(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self._count])
        self._count += 1
        cfg = BENCHES[self.bench](sensor_px=self.size_px)
        name = self.samples[int(rng.integers(len(self.samples)))]
        twin = Twin(cfg, sample="open", seed=int(rng.integers(2 ** 31)))
        kv = float(rng.uniform(40, 60)) if cfg.kind == "lens" else float(rng.uniform(60, 80))
        twin.set_state(voltage_kv=kv)
        twin.sample = make_sample(name, cfg.fov_mm * float(rng.uniform(1.0, 3.0)),
                                  int(rng.integers(2 ** 31)))
        return twin.ground_truth()


def hr_patches(rng: np.random.Generator, count: int, patch_px: int,
               bench: str = "lens-yag") -> np.ndarray:
    """Training HR source: ``count`` noise-free thin-screen patches (float32, transmission) of
    random procedural samples, each rendered on its own small twin."""
    out = np.empty((count, patch_px, patch_px), np.float32)
    src = HRSource(bench=bench, size_px=patch_px, seed=int(rng.integers(2 ** 31)))
    for i in range(count):
        out[i] = src()
    return out


def hr_patches_gos(rng: np.random.Generator, count: int, patch_px: int) -> np.ndarray:
    return hr_patches(rng, count, patch_px, bench="panel-gos")
