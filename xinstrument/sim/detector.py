"""Scintillator screens, coupling optics and the sCMOS sensor of the twin.

Two detector families (DESIGN.md section 5):

* Lens-coupled: a YAG:Ce crystal imaged by a microscope objective (5x, NA 0.4) onto the sCMOS.
  A light point born at depth z is defocused by |z - z_f| from the focal plane z_f, giving a blur
  disc of diameter s = 2 |z - z_f| tan(theta), sin(theta) = NA / n inside the crystal (geometric
  optics with refraction at the exit face; cf. shared/papers/004 section 2, which uses the same
  construction without refraction). The image is the depth integral of these discs weighted by
  the energy deposited at each depth, k(z) (shared/papers/004 eq. 1-2), times the lens's
  diffraction-limited OTF and the pixel aperture. The axial stage moves the objective and with it
  z_f, so a focus scan has a true optimum.
* Phosphor-coupled panel: Gd2O2S:Tb powder screen in contact with a CMOS sensor. A point emitting
  isotropically at height h above the sensor spreads as h / (2 pi (r^2 + h^2)^1.5), whose 2-D
  Fourier transform is exp(-2 pi f h); h is scaled by an effective light-spread factor that
  stands for optical absorption and scattering in the powder layer.

Everything here is radial: transfer functions are functions of spatial frequency (cycles/mm at
the scintillator) and are evaluated on any rfft2 grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import j1

from .materials import GOS, YAG, Material

YAG_REFRACTIVE_INDEX = 1.82        # YAG at 550 nm (Zelmon et al., Appl. Opt. 37 (1998) 4933)
YAG_EMISSION_NM = 550.0            # Ce3+ emission peak in YAG (Moszynski et al., NIM A 345 (1994))
YAG_LIGHT_YIELD_PER_KEV = 35.0     # photons/keV (Moszynski et al., NIM A 345 (1994) 461)
GOS_LIGHT_YIELD_PER_KEV = 60.0     # photons/keV for Gd2O2S:Tb (van Eijk, Phys. Med. Biol. 47 (2002))
GOS_PACKING_FRACTION = 0.5         # powder screens: ~50 % phosphor by volume (Swank, Appl. Opt. 12 (1973))
GOS_LIGHT_SPREAD_FACTOR = 0.35     # effective/geometric spread height; chosen so that the
#                                    34 mg/cm^2 screen's MTF50 is ~5 cy/mm, as for fine screens
#                                    of that weight (e.g. Lanex Fine class)
GOS_CONTACT_COLLECTION = 0.5       # fraction of light reaching the sensor through the exit face
PCO_EDGE_QE_550NM = 0.72           # pco.edge 4.2 data sheet, QE at 550 nm


@dataclass(frozen=True)
class Scintillator:
    name: str
    material: Material
    thickness_um: float                   # physical thickness
    packing_fraction: float = 1.0         # 1 for single crystals, ~0.5 for powder screens
    light_yield_per_kev: float = YAG_LIGHT_YIELD_PER_KEV

    @property
    def areal_density_mg_cm2(self) -> float:
        return self.thickness_um * 1e-4 * self.material.density_g_cm3 * self.packing_fraction * 1e3

    def mu_per_um(self, energy_kev: np.ndarray) -> np.ndarray:
        return self.material.linear_attenuation_per_mm(energy_kev) * self.packing_fraction / 1e3

    def absorption(self, energy_kev: np.ndarray) -> np.ndarray:
        """Fraction of incident photons absorbed (photo-absorption dominated; Beer-Lambert)."""
        return 1.0 - np.exp(-self.mu_per_um(energy_kev) * self.thickness_um)

    def depth_weights(self, energy_kev: np.ndarray, fluence: np.ndarray, n_slices: int = 64):
        """Depths (um, from the X-ray entrance face) and the normalised energy deposited in each
        slice, k(z) (shared/papers/004 eq. 2), for a spectrum ``fluence`` (photons per bin)."""
        edges = np.linspace(0.0, self.thickness_um, n_slices + 1)
        mu = self.mu_per_um(energy_kev)[None, :]
        absorbed = np.exp(-mu * edges[:-1, None]) - np.exp(-mu * edges[1:, None])
        k = (absorbed * (fluence * energy_kev)[None, :]).sum(axis=1)
        return 0.5 * (edges[1:] + edges[:-1]), k / k.sum()


def yag(thickness_um: float) -> Scintillator:
    return Scintillator(f"YAG:Ce {thickness_um:g} um", YAG, thickness_um)


def gos(areal_density_mg_cm2: float) -> Scintillator:
    thickness_um = areal_density_mg_cm2 / (GOS.density_g_cm3 * GOS_PACKING_FRACTION) * 10
    return Scintillator(f"Gd2O2S:Tb {areal_density_mg_cm2:g} mg/cm2", GOS, thickness_um,
                        GOS_PACKING_FRACTION, GOS_LIGHT_YIELD_PER_KEV)


@dataclass(frozen=True)
class LensCoupling:
    """Microscope objective imaging the scintillator's exit face onto the camera."""

    magnification: float = 5.0
    numerical_aperture: float = 0.4
    # stage position (um) at which the focal plane lies on the X-ray entrance face of the crystal;
    # moving the objective by d moves the focal plane by about n * d inside the crystal (paraxial).
    stage_at_entrance_face_um: float = 50.0
    refractive_index: float = YAG_REFRACTIVE_INDEX
    wavelength_nm: float = YAG_EMISSION_NM

    def focal_depth_um(self, stage_um: float) -> float:
        return (stage_um - self.stage_at_entrance_face_um) * self.refractive_index

    def collection_efficiency(self) -> float:
        """Fraction of isotropic light collected: NA^2 / (4 n^2) (small-angle solid angle inside
        the crystal; Koch et al., J. Opt. Soc. Am. A 15 (1998) 1940)."""
        return self.numerical_aperture ** 2 / (4 * self.refractive_index ** 2)

    def diffraction_otf(self, f_cy_per_mm: np.ndarray) -> np.ndarray:
        """Incoherent diffraction-limited OTF of a circular pupil, cutoff 2 NA / lambda."""
        fc = 2 * self.numerical_aperture / (self.wavelength_nm * 1e-6)
        nu = np.clip(np.abs(f_cy_per_mm) / fc, 0, 1)
        return (2 / np.pi) * (np.arccos(nu) - nu * np.sqrt(1 - nu ** 2))


def disc_otf(f_cy_per_mm: np.ndarray, diameter_mm: np.ndarray) -> np.ndarray:
    """OTF of a uniform disc of the given diameter: 2 J1(pi d f) / (pi d f)."""
    x = np.pi * np.asarray(diameter_mm) * np.asarray(f_cy_per_mm)
    small = np.abs(x) < 1e-6
    return np.where(small, 1.0 - x ** 2 / 8, 2 * j1(np.where(small, 1.0, x)) /
                    np.where(small, 1.0, x))


def lens_coupled_otf(f_cy_per_mm: np.ndarray, scint: Scintillator, lens: LensCoupling,
                     stage_um: float, depths_um: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Depth-integrated OTF of a lens-coupled screen (radial, at the scintillator plane)."""
    return np.asarray(k, np.float64) @ lens_coupled_depth_otfs(f_cy_per_mm, lens, stage_um,
                                                               depths_um)


def lens_coupled_depth_otfs(f_cy_per_mm: np.ndarray, lens: LensCoupling, stage_um: float,
                            depths_um: np.ndarray) -> np.ndarray:
    """OTF of the light from each depth of a lens-coupled screen [n_depths, n_f] (radial):
    the defocus disc of that depth (geometric, half-angle of the NA inside the crystal) times
    the objective's diffraction OTF."""
    f = np.asarray(f_cy_per_mm, dtype=np.float64)
    z_f = lens.focal_depth_um(stage_um)
    sin_t = lens.numerical_aperture / lens.refractive_index
    tan_t = sin_t / np.sqrt(1 - sin_t ** 2)
    diffraction = lens.diffraction_otf(f)
    return np.stack([disc_otf(f, 2 * abs(z - z_f) * tan_t * 1e-3) * diffraction
                     for z in np.atleast_1d(depths_um)])


def contact_screen_depth_otfs(f_cy_per_mm: np.ndarray, scint: Scintillator,
                              depths_um: np.ndarray,
                              spread_factor: float = GOS_LIGHT_SPREAD_FACTOR) -> np.ndarray:
    """OTF of the light from each depth of a powder screen on a sensor [n_depths, n_f]."""
    f = np.abs(np.asarray(f_cy_per_mm, dtype=np.float64))
    return np.stack([np.exp(-2 * np.pi * f * (scint.thickness_um - z) * spread_factor * 1e-3)
                     for z in np.atleast_1d(depths_um)])


def oblique_parallax_shift_mm(depths_um: np.ndarray, tilt_deg: float) -> np.ndarray:
    """Lateral offset (mm, along the tilt) of a quantum absorbed at each depth when the beam
    enters the screen at ``tilt_deg`` from its normal: z tan(tilt), away from the source side,
    the same sense in which a sample layer's projection moves with its height. X-rays are not
    refracted at the screen, so the offset follows the ray's own angle (the depth blur of
    oblique incidence; e.g. Mainprize et al., Med. Phys. 33 (2006) 3159 for indirect screens).
    """
    return -np.asarray(depths_um, np.float64) * np.tan(np.deg2rad(tilt_deg)) / 1000


def contact_screen_otf(f_cy_per_mm: np.ndarray, scint: Scintillator, depths_um: np.ndarray,
                       k: np.ndarray, spread_factor: float = GOS_LIGHT_SPREAD_FACTOR) -> np.ndarray:
    """Depth-integrated OTF of a powder screen on a sensor at its exit face."""
    return np.asarray(k, np.float64) @ contact_screen_depth_otfs(f_cy_per_mm, scint, depths_um,
                                                                 spread_factor)


@dataclass(frozen=True)
class SensorModel:
    """sCMOS/CMOS sensor. Defaults: pco.edge 4.2 data sheet typical values."""

    rows: int = 2048
    cols: int = 2048
    pixel_um: float = 6.5
    qe: float = PCO_EDGE_QE_550NM
    gain_e_per_adu: float = 0.46
    offset_adu: float = 100.0
    read_noise_e: float = 1.4          # rms (data sheet: 0.9 median, 1.4 rms)
    dark_current_e_per_s: float = 0.6
    full_well_e: float = 30000.0
    bit_depth: int = 16
    max_fps: float = 100.0
    prnu: float = 0.01                 # photo-response non-uniformity (rms, relative)
    dsnu_e: float = 0.3                # dark-signal non-uniformity of the offset (rms, e-)
    hot_pixel_fraction: float = 2e-4
    hot_pixel_dark_factor: float = 2000.0

    def __post_init__(self):
        if self.rows < 16 or self.cols < 16 or self.rows > 8192 or self.cols > 8192:
            raise ValueError(f"sensor size {self.rows}x{self.cols} outside 16..8192 pixels")
