"""Microfocus tungsten X-ray source: spectrum, flux and focal spot.

Spectrum: Kramers' law for the bremsstrahlung continuum, dN/dE proportional to Z (E0 - E) / E
(H. A. Kramers, Phil. Mag. 46 (1923) 836), with the absolute scale from the conversion efficiency
eta = k Z V, k = 1.1e-9 1/V (e.g. Curry, Dowdey & Murry, Christensen's Physics of Diagnostic
Radiology, 4th ed., ch. 2), emitted isotropically (heel effect neglected on the small fields of a
microfocus bench), then filtered by the beryllium exit window and any added filter (Beer-Lambert).
Characteristic W L lines (8.4-11.3 keV) are not modelled: the window and the sample remove most of
them.

Focal spot: microfocus tubes defocus the electron beam as target power rises to protect the
target; the table below follows the Hamamatsu L9181-02 class data sheet (5 um at 4 W in small
focus mode, 20 um at 16 W, 40 um at 39 W).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .materials import ALUMINIUM, BERYLLIUM

ELECTRON_CHARGE_C = 1.602176634e-19
KEV_J = 1.602176634e-16
KRAMERS_K_PER_V = 1.1e-9
TUNGSTEN_Z = 74

# (max power W, focal spot um) per focus mode, Hamamatsu L9181-02 class data sheet.
FOCAL_SPOT_TABLE: dict[int, tuple[tuple[float, float], ...]] = {
    0: ((4.0, 5.0), (8.0, 8.0), (16.0, 20.0)),     # small focus
    1: ((4.0, 8.0), (16.0, 20.0), (39.0, 40.0)),   # large focus
}


@dataclass(frozen=True)
class SourceSettings:
    voltage_kv: float
    current_ua: float
    focus_mode: int = 0
    window_be_mm: float = 0.2       # L9181-02 class: 200 um beryllium exit window
    filter_al_mm: float = 0.0


def energy_grid_kev(voltage_kv: float, step_kev: float = 1.0, min_kev: float = 5.0) -> np.ndarray:
    """Bin centres from min_kev to the kVp."""
    if voltage_kv <= min_kev:
        raise ValueError(f"tube voltage {voltage_kv} kV is below the {min_kev} keV grid start")
    edges = np.arange(min_kev, voltage_kv + 1e-9, step_kev)
    if edges[-1] < voltage_kv:
        edges = np.append(edges, voltage_kv)
    return 0.5 * (edges[1:] + edges[:-1])


def spectrum_photons_per_s_sr(settings: SourceSettings, energy_kev: np.ndarray,
                              bin_width_kev: float = 1.0) -> np.ndarray:
    """Photons per second per steradian in each energy bin, after window and filter."""
    v_kv, i_ua = settings.voltage_kv, settings.current_ua
    e = np.asarray(energy_kev, dtype=np.float64)
    shape = np.clip(v_kv - e, 0.0, None) / e                        # Kramers dN/dE shape
    # Normalise so that the emitted energy equals eta * V * I (isotropic, 4 pi sr).
    power_w = KRAMERS_K_PER_V * TUNGSTEN_Z * (v_kv * 1e3) ** 2 * i_ua * 1e-6
    energy_per_shape = np.sum(shape * e * KEV_J) * bin_width_kev
    n = shape * bin_width_kev * power_w / (4 * np.pi * energy_per_shape)
    n = n * np.exp(-BERYLLIUM.linear_attenuation_per_mm(e) * settings.window_be_mm)
    if settings.filter_al_mm > 0:
        n = n * np.exp(-ALUMINIUM.linear_attenuation_per_mm(e) * settings.filter_al_mm)
    return n


def focal_spot_um(power_w: float, focus_mode: int = 0) -> float:
    """Focal spot diameter (FWHM, um) at a target power, interpolated in the data-sheet table."""
    try:
        table = FOCAL_SPOT_TABLE[int(focus_mode)]
    except KeyError:
        raise ValueError(f"unknown focus mode {focus_mode}; known: {sorted(FOCAL_SPOT_TABLE)}") \
            from None
    p = np.array([t[0] for t in table])
    s = np.array([t[1] for t in table])
    return float(np.interp(max(power_w, 0.0), p, s, left=s[0], right=s[-1]))
