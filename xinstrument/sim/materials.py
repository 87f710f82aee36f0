"""X-ray attenuation of the materials on the bench.

Mass attenuation coefficients mu/rho (cm^2/g, total with coherent scattering) tabulated from the
NIST XCOM photon cross-section database (Berger et al., NIST Standard Reference Database 8) and the
NIST X-ray mass attenuation tables (Hubbell & Seltzer, NISTIR 5632), rounded to 3-4 digits.
K absorption edges appear as two entries at the same energy (below, above). L edges of W, Gd and
Pb below 16 keV are smoothed over: the bench spectra are filtered so that photons below ~12 keV
contribute little. Interpolation is linear in log(mu/rho) against log(E) between table points.

Compound values are mass-fraction weighted sums of the elements (mixture rule).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# energy (keV) -> mu/rho (cm^2/g); elements
_TABLES: dict[str, list[tuple[float, float]]] = {
    "Be": [(5, 2.89), (10, 0.6466), (15, 0.307), (20, 0.2251), (30, 0.1792), (40, 0.164),
           (50, 0.1554), (60, 0.1493), (80, 0.1401), (100, 0.1328), (150, 0.119)],
    "Al": [(5, 193.4), (10, 26.23), (15, 7.955), (20, 3.441), (30, 1.128), (40, 0.5685),
           (50, 0.3681), (60, 0.2778), (80, 0.2018), (100, 0.1704), (150, 0.1378)],
    "Cu": [(5, 158.9), (8.979, 45.0), (8.979, 278.4), (10, 215.9), (15, 74.05), (20, 33.79),
           (30, 10.92), (40, 4.862), (50, 2.613), (60, 1.593), (80, 0.763), (100, 0.4584),
           (150, 0.2217)],
    "Sn": [(5, 688.0), (10, 137.0), (15, 46.0), (20, 21.5), (29.2, 7.7), (29.2, 46.5),
           (30, 43.4), (40, 20.4), (50, 11.4), (60, 7.08), (80, 3.31), (100, 1.86), (150, 0.71)],
    "W": [(5, 536.0), (10, 96.91), (12.1, 200.0), (15, 138.9), (20, 65.73), (30, 22.73),
          (40, 10.67), (50, 5.949), (60, 3.713), (69.525, 2.552), (69.525, 11.23),
          (80, 7.81), (100, 4.438), (150, 1.581)],
    "Y": [(5, 516.0), (10, 80.0), (15, 26.5), (17.038, 19.0), (17.038, 131.0), (20, 85.0),
          (30, 28.6), (40, 13.2), (50, 7.3), (60, 4.5), (80, 2.1), (100, 1.2), (150, 0.47)],
    "Gd": [(5, 690.0), (10, 170.0), (15, 62.0), (20, 30.6), (30, 10.5), (40, 5.0),
           (50.239, 2.75), (50.239, 14.8), (60, 9.5), (80, 4.6), (100, 2.65), (150, 0.95)],
    "O": [(5, 33.5), (10, 5.952), (15, 1.836), (20, 0.8651), (30, 0.3779), (40, 0.2585),
          (50, 0.2132), (60, 0.1907), (80, 0.1678), (100, 0.1551), (150, 0.1361)],
    "S": [(5, 268.0), (10, 39.4), (15, 12.0), (20, 5.2), (30, 1.67), (40, 0.80),
          (50, 0.49), (60, 0.35), (80, 0.24), (100, 0.19), (150, 0.15)],
    "Si": [(5, 245.0), (10, 33.89), (15, 10.34), (20, 4.464), (30, 1.436), (40, 0.7012),
           (50, 0.4385), (60, 0.3207), (80, 0.2228), (100, 0.1835), (150, 0.1448)],
    "C": [(5, 14.5), (10, 2.373), (15, 0.8071), (20, 0.4420), (30, 0.2562), (40, 0.2076),
          (50, 0.1871), (60, 0.1753), (80, 0.161), (100, 0.1514), (150, 0.1347)],
    "H": [(5, 0.4), (10, 0.3854), (15, 0.3764), (20, 0.3695), (30, 0.3570), (40, 0.3458),
          (50, 0.3355), (60, 0.3260), (80, 0.3091), (100, 0.2944), (150, 0.2651)],
}


@dataclass(frozen=True)
class Material:
    """A material: mass fractions of elements and density (g/cm^3)."""

    name: str
    composition: tuple[tuple[str, float], ...]
    density_g_cm3: float

    def mass_attenuation_cm2_g(self, energy_kev: np.ndarray) -> np.ndarray:
        energy_kev = np.asarray(energy_kev, dtype=np.float64)
        out = np.zeros_like(energy_kev)
        for element, fraction in self.composition:
            out += fraction * _element_mu_rho(element, energy_kev)
        return out

    def linear_attenuation_per_mm(self, energy_kev: np.ndarray) -> np.ndarray:
        """mu (1/mm) = mu/rho (cm^2/g) * rho (g/cm^3) / 10."""
        return self.mass_attenuation_cm2_g(energy_kev) * self.density_g_cm3 / 10.0


def _element_mu_rho(element: str, energy_kev: np.ndarray) -> np.ndarray:
    try:
        table = _TABLES[element]
    except KeyError:
        raise KeyError(f"no attenuation table for element {element!r}") from None
    e = np.array([p[0] for p in table])
    mu = np.array([p[1] for p in table])
    out = np.empty_like(energy_kev)
    log_e = np.log(np.clip(energy_kev, e[0], e[-1]))
    # Walk the table segment by segment so that duplicated edge energies stay sharp steps.
    for i in range(len(e) - 1):
        lo, hi = e[i], e[i + 1]
        if hi == lo:
            continue
        sel = (energy_kev >= lo) & (energy_kev <= hi) if i == 0 else \
            (energy_kev > lo) & (energy_kev <= hi)
        if i == 0:
            sel |= energy_kev < lo
        if i == len(e) - 2:
            sel |= energy_kev > hi
        w = (log_e[sel] - np.log(lo)) / (np.log(hi) - np.log(lo))
        out[sel] = np.exp((1 - w) * np.log(mu[i]) + w * np.log(mu[i + 1]))
    return out


def _by_mass(formula: dict[str, float]) -> tuple[tuple[str, float], ...]:
    """Mass fractions from atom counts (standard atomic weights, IUPAC 2021)."""
    weights = {"H": 1.008, "C": 12.011, "O": 15.999, "Al": 26.982, "Si": 28.085, "S": 32.06,
               "Cu": 63.546, "Y": 88.906, "Sn": 118.71, "Gd": 157.25, "W": 183.84, "Be": 9.012}
    masses = {el: n * weights[el] for el, n in formula.items()}
    total = sum(masses.values())
    return tuple((el, m / total) for el, m in masses.items())


# Densities: CRC Handbook of Chemistry and Physics (97th ed.); FR4 and SAC305 from typical
# laminate / solder data sheets (FR4 1.85 g/cm^3: 60 wt% E-glass (~SiO2) in epoxy; SAC305
# Sn96.5Ag3.0Cu0.5, 7.4 g/cm^3, Ag approximated by Sn at these energies).
COPPER = Material("copper", (("Cu", 1.0),), 8.96)
TUNGSTEN = Material("tungsten", (("W", 1.0),), 19.3)
SOLDER = Material("solder SAC305", (("Sn", 0.995), ("Cu", 0.005)), 7.4)
FR4 = Material("FR4", tuple((el, 0.6 * f) for el, f in _by_mass({"Si": 1, "O": 2}))
               + tuple((el, 0.4 * f) for el, f in _by_mass({"C": 18, "H": 20, "O": 3})), 1.85)
BERYLLIUM = Material("beryllium", (("Be", 1.0),), 1.848)
ALUMINIUM = Material("aluminium", (("Al", 1.0),), 2.699)
YAG = Material("YAG:Ce", _by_mass({"Y": 3, "Al": 5, "O": 12}), 4.56)
GOS = Material("Gd2O2S:Tb", _by_mass({"Gd": 2, "O": 2, "S": 1}), 7.34)

# Sample materials of the broad families (sim/families.py): soda-lime glass approximated by
# fused silica (2.2 g/cm^3, CRC), epoxy polymer C18H20O3 at 1.2 g/cm^3 (typical cured epoxy).
GLASS = Material("glass (SiO2)", _by_mass({"Si": 1, "O": 2}), 2.2)
POLYMER = Material("epoxy polymer", _by_mass({"C": 18, "H": 20, "O": 3}), 1.2)

SAMPLE_MATERIALS: dict[str, Material] = {
    "copper": COPPER, "tungsten": TUNGSTEN, "solder": SOLDER, "fr4": FR4,
    "aluminium": ALUMINIUM, "glass": GLASS, "polymer": POLYMER,
}
