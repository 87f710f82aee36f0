"""The dose a restoration's noise model is told, once, for the live path and for stored scans.

Wiener, plug-and-play and data-consistent diffusion weigh the data against the profile's noise
power ``NNPS_LR(f) * T / dose_ratio``, with ``dose_ratio`` the detected quanta per pixel of the
frame's flat over the profile's ``nnps_mean_signal``. A frame averaged from N exposures holds
N times the quanta of one: its dose is one exposure's times N. Told one exposure's (or the
calibration dose), an average of N frames is regularised for N times its noise: over-smoothed
and departing from the data (simulated bench, PCB, 8 frames averaged: plug-and-play's reduced
chi-square 1.56 without the dose, 0.72 with it).

The acquisition (:mod:`xinstrument.instrument`) and the offline restorations (``xinstrument
restore``, ``xinstrument batch restore``) both go through :func:`restore_with_dose`, and a
stored scan's frames get their dose from :func:`plan_stored_doses`. One exposure's dose comes,
in both, from

- the measured flat (:func:`measured_flat_dose_ratio`), whenever the profile records its
  detector's ADU per detected quantum (``[calibration] nnps_adu_per_quantum``, written by
  ``xinstrument calibrate nnps``): the mean of flat minus dark of the reference that corrected
  the frame, scaled to the frame's exposure and tube current, over that factor and the
  profile's ``nnps_mean_signal``. It is preferred to any model because it is what the detector
  recorded with the source as it was (tube output drifts and ages, a screen yellows); on the
  simulated bench it agrees with the twin's model (tests/restoration/test_measured_dose.py);
- else, on the simulated bench and for profiles calibrated on it, the digital twin's detected
  quanta (:func:`twin_flat_dose_ratio`).
"""
from __future__ import annotations

import dataclasses
import math
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["DOSE_METHODS", "DoseMetadataError", "DosePlan", "FlatReference", "check_dose_overrides",
           "effective_dose_ratio", "measured_flat_dose_ratio", "needs_dose", "plan_stored_doses",
           "restore_with_dose", "twin_flat_dose_ratio"]

# Restorers whose noise model takes the frame's dose (``dose_ratio=`` of classical.wiener,
# pnp.pnp_restore, dc_diffusion.dc_diffusion_restore, specialist.specialist_restore); the
# fidelity calibration restores its frames with their dose times the frames averaged
# (bench_fidelity.restore_all).
DOSE_METHODS = ("wiener", "pnp_hqs", "dc_diffusion", "specialist_pcb")


class DoseMetadataError(ValueError):
    """A stored scan lacks what the dose of its frames needs (the message names it)."""


def needs_dose(method: str) -> bool:
    """True when ``method``'s noise model takes the frame's dose."""
    return method in DOSE_METHODS


def effective_dose_ratio(dose_ratio: float | None, frames_averaged: int) -> float:
    """The dose of a frame of ``frames_averaged`` exposures at ``dose_ratio`` each (None: the
    profile's calibration dose, 1): averaging N frames divides the noise variance by N."""
    return (1.0 if dose_ratio is None else float(dose_ratio)) * max(1, int(frames_averaged))


_LOCK = threading.Lock()
_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _lock_of(restorer: Any) -> threading.Lock:
    # one lock per restorer: its options are swapped for the call, and a restorer may be shared
    # by threads (a Dask worker's cached restorer, the live view and the fidelity fallback);
    # kept beside it, not on it, so the restorer still pickles
    with _LOCK:
        try:
            return _LOCKS.setdefault(restorer, threading.Lock())
        except TypeError:       # not weakly referenceable: one lock for all of them
            return _LOCK_ALL


_LOCK_ALL = threading.Lock()


def restore_with_dose(restorer: Any, frame: np.ndarray, frames_averaged: int,
                      dose_ratio: float | None) -> np.ndarray:
    """``restorer.restore(frame)`` with the noise of a frame (or a stack of frames sharing it)
    of ``frames_averaged`` exposures at ``dose_ratio`` each (None: the profile's calibration
    dose, 1). Methods outside :data:`DOSE_METHODS` restore as they are."""
    if restorer.method not in DOSE_METHODS or not hasattr(restorer, "options"):
        return restorer.restore(frame)
    effective = effective_dose_ratio(dose_ratio, frames_averaged)
    with _lock_of(restorer):
        saved = restorer.options
        restorer.options = {**saved, "dose_ratio": effective}
        try:
            return restorer.restore(frame)
        finally:
            restorer.options = saved


def twin_flat_dose_ratio(twin: Any, state: Any, exposure_s: float, voltage_kv: float,
                         current_ua: float, mean_signal: float) -> float | None:
    """Detected quanta per pixel of one exposure's open-beam flat on the digital twin ``twin``
    (world state ``state`` at ``voltage_kv`` and ``current_ua``; the screen's obliquity from its
    ``theta_deg``) over the profile's ``nnps_mean_signal``; None when a setting is unknown."""
    values = (exposure_s, voltage_kv, current_ua)
    if mean_signal is None or not all(v is not None and math.isfinite(float(v)) for v in values) \
            or not float(exposure_s) > 0:
        return None
    st = dataclasses.replace(state, sample_in=False, xray_on=True, current_ua=float(current_ua),
                             voltage_kv=float(voltage_kv))
    quanta = twin.expected_quanta("thick", st, float(exposure_s))
    return float(quanta.mean()) / float(mean_signal)


# ---------------------------------------------------------------------- measured flat
# Flat and frame must share the tube voltage: the detected quanta per unit exposure x current
# follow the spectrum, which no linear scaling carries over. 1 %: the tube's set-point
# resolution and read-back jitter, far below a deliberate change of voltage.
VOLTAGE_MATCH_REL = 0.01
ADU_PER_QUANTUM_KEY = "nnps_adu_per_quantum"


@dataclasses.dataclass(frozen=True)
class FlatReference:
    """The flat-field reference that corrected a frame, as recorded: ``level_adu`` the mean of
    flat minus dark in ADU (stored flats are averages of their exposures, so this is one
    exposure's) and the exposure, tube current and voltage the flat was taken at."""

    level_adu: float
    exposure_s: float
    current_ua: float
    voltage_kv: float


def _finite_positive(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        return False


def measured_flat_dose_ratio(flat: FlatReference | None, adu_per_quantum: float | None,
                             mean_signal: float | None, exposure_s: float, voltage_kv: float,
                             current_ua: float, *, what: str = "the frame") -> float:
    """One exposure's dose of a frame at ``exposure_s``, ``voltage_kv`` and ``current_ua`` from
    the flat that corrected it: ``flat.level_adu / adu_per_quantum`` detected quanta per pixel,
    times ``(exposure_s current_ua) / (flat exposure x flat current)`` (the quanta are linear in
    both), over the profile's ``mean_signal`` (``nnps_mean_signal``, quanta per pixel).

    Raises DoseMetadataError naming what is missing or wrong (``what`` says which frame): no
    reference, flat minus dark not positive, a profile without the ADU per quantum or the
    NNPS mean signal, a flat or frame setting unknown, flat and frame at different voltages.
    """
    if not _finite_positive(adu_per_quantum):
        raise DoseMetadataError(
            f"the profile records no ADU per detected quantum ([calibration] "
            f"{ADU_PER_QUANTUM_KEY}, got {adu_per_quantum!r}; 'xinstrument calibrate nnps "
            "--adu-per-quantum G' writes it), so a measured flat cannot give the dose")
    if not _finite_positive(mean_signal):
        raise DoseMetadataError(f"the profile has no nnps_mean_signal (got {mean_signal!r}): "
                                "measure its NNPS ('xinstrument calibrate nnps')")
    if flat is None:
        raise DoseMetadataError(f"{what} has no dark and flat reference, so its dose cannot be "
                                "measured: take references (darks and flats) first")
    if not (math.isfinite(flat.level_adu) and flat.level_adu > 0):
        raise DoseMetadataError(
            f"{what}: the flat minus the dark of its reference is {flat.level_adu:.4g} ADU on "
            "average, not positive (a flat taken without X-rays, or a dark with them): retake "
            "the references")
    for name, value, whose in (("exposure_s", flat.exposure_s, "its flat reference"),
                               ("current_ua", flat.current_ua, "its flat reference"),
                               ("voltage_kv", flat.voltage_kv, "its flat reference"),
                               ("exposure_s", exposure_s, "it"), ("current_ua", current_ua, "it"),
                               ("voltage_kv", voltage_kv, "it")):
        if not _finite_positive(value):
            raise DoseMetadataError(f"{what}: {whose} records no {name} (got {value!r}); the "
                                    "measured dose scales the flat to the frame's settings")
    if abs(float(voltage_kv) - flat.voltage_kv) > VOLTAGE_MATCH_REL * flat.voltage_kv:
        raise DoseMetadataError(
            f"{what} was taken at {float(voltage_kv):g} kV and its flat at {flat.voltage_kv:g} kV: "
            "the quanta per exposure follow the spectrum, so the flat gives no dose at another "
            "voltage: take flats at the frame's voltage")
    scale = (float(exposure_s) * float(current_ua)) / (flat.exposure_s * flat.current_ua)
    return float(flat.level_adu / float(adu_per_quantum) * scale / float(mean_signal))


# ---------------------------------------------------------------------- stored scans
# per-frame fields of a scan file (storage.layout.FRAME_FIELDS) and where they are stored
FIELD_PATHS = {"exposure_s": "/entry/instrument/detector/count_time",
               "voltage_kv": "/entry/instrument/source/voltage",
               "current_ua": "/entry/instrument/source/current",
               "frames_averaged": "/entry/instrument/detector/frames_averaged"}


@dataclasses.dataclass
class DosePlan:
    """The dose each projection of a stored scan is restored with.

    ``dose_ratio``: one exposure's (NaN: not used / unknown); ``frames_averaged``: exposures in
    each projection (0: unknown, not used); ``flat_frames_averaged``: exposures in the flat
    reference that corrected it (0: unknown); ``source``: where the dose came from."""

    method: str
    dose_ratio: np.ndarray
    frames_averaged: np.ndarray
    flat_frames_averaged: np.ndarray
    source: str

    @property
    def uses_dose(self) -> bool:
        return needs_dose(self.method)

    def effective(self, k: int) -> float | None:
        """Dose the noise model of projection ``k`` is told (None: the method takes none)."""
        if not self.uses_dose:
            return None
        return effective_dose_ratio(float(self.dose_ratio[k]), int(self.frames_averaged[k]))

    def in_order(self, restorer: Any, per_frame: bool = False
                 ) -> Callable[[np.ndarray], np.ndarray]:
        """A ``restore_scan`` callback: it receives stacks of consecutive projections from the
        first on and restores each with its dose (``per_frame``: one frame per call)."""
        done = 0

        def restore(stack: np.ndarray) -> np.ndarray:
            nonlocal done
            if per_frame:
                out = np.stack([self.restore(restorer, f, done + i) for i, f in enumerate(stack)])
            else:
                out = self.restore(restorer, stack, done)
            done += len(stack)
            return out
        return restore

    def restore(self, restorer: Any, stack: np.ndarray, first: int) -> np.ndarray:
        """Restore projections ``first .. first + len(stack) - 1`` (a stack, or one frame for
        ``first``), runs of equal dose in one call each."""
        if not self.uses_dose:
            return np.asarray(restorer.restore(stack))
        if stack.ndim == 2:
            return np.asarray(restore_with_dose(restorer, stack, int(self.frames_averaged[first]),
                                                float(self.dose_ratio[first])))
        out, k = [], 0
        while k < len(stack):
            j = k + 1
            key = (float(self.dose_ratio[first + k]), int(self.frames_averaged[first + k]))
            while j < len(stack) and (float(self.dose_ratio[first + j]),
                                      int(self.frames_averaged[first + j])) == key:
                j += 1
            rest = restore_with_dose(restorer, stack[k:j], key[1], key[0])
            out.append(np.asarray(rest).reshape(j - k, *np.shape(rest)[-2:]))
            k = j
        return np.concatenate(out)

    def metadata(self) -> dict[str, Any]:
        """What the output's ``restoration`` metadata records (per projection)."""
        def ints(a):
            return [int(v) for v in a]
        used = self.uses_dose
        return {"dose_source": self.source,
                "dose_ratio": [float(v) for v in self.dose_ratio] if used else None,
                "frames_averaged": ints(self.frames_averaged),
                "effective_dose_ratio": ([self.effective(k) for k in range(len(self.dose_ratio))]
                                         if used else None),
                "flat_frames_averaged": ints(self.flat_frames_averaged)}

    def identity(self) -> list:
        """What the restoration depends on (batch checksums)."""
        return [self.method, self.source, [float(v) for v in self.dose_ratio],
                [int(v) for v in self.frames_averaged]]


def check_dose_overrides(frames_averaged: int | None, dose_ratio: float | None) -> None:
    """ValueError unless the user's ``frames_averaged`` (an integer >= 1) and ``dose_ratio`` (a
    finite number > 0) are None or valid."""
    _check_positive("frames_averaged", frames_averaged, integer=True)
    _check_positive("dose_ratio", dose_ratio)


def _check_positive(name: str, value: float | None, integer: bool = False) -> None:
    if value is None:
        return
    ok = (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1) \
        if integer else (isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
                         and math.isfinite(float(value)) and float(value) > 0)
    if not ok:
        what = "an integer >= 1" if integer else "a finite number > 0"
        raise ValueError(f"{name} must be {what}, got {value!r}")


def plan_stored_doses(settings: dict[str, np.ndarray], method: str, *, where: str,
                      frames_averaged: int | None = None, dose_ratio: float | None = None,
                      flat_dose_ratio: Callable[[float, float, float, float], float | None]
                      | None = None, model: str = "",
                      no_model: str = "",
                      flat_references: list[FlatReference | None] | None = None,
                      adu_per_quantum: float | None = None,
                      mean_signal: float | None = None) -> DosePlan:
    """The dose of each projection of a stored scan (``settings``: per-projection
    ``exposure_s``, ``voltage_kv``, ``current_ua``, ``theta_deg``, ``frames_averaged``,
    ``flat_frames_averaged``, as :func:`xinstrument.storage.stored.load_corrected` gives them).

    ``frames_averaged`` / ``dose_ratio`` (one exposure's): the user's values for every
    projection, else the file's frame counts and ``flat_dose_ratio(exposure_s, voltage_kv,
    current_ua, theta_deg)`` (the detector model ``model`` names; None when the profile has
    none: ``no_model`` says why). ``flat_references`` (one per projection: the flat that
    corrected it, None where it has none) replaces the model: each projection's dose is then
    :func:`measured_flat_dose_ratio` with ``adu_per_quantum`` and ``mean_signal``. A method that
    takes the dose and a file that lacks what it needs raise :class:`DoseMetadataError` naming
    ``where`` and the missing fields; methods that take no dose never do.
    """
    check_dose_overrides(frames_averaged, dose_ratio)
    n = len(settings["frames_averaged"])
    need = needs_dose(method)
    flat_n = np.asarray(settings.get("flat_frames_averaged", np.zeros(n)), dtype=np.int64)
    stored_n = np.asarray(settings["frames_averaged"], dtype=np.int64)
    if frames_averaged is not None:
        counts = np.full(n, int(frames_averaged), np.int64)
    else:
        counts = np.where(stored_n >= 1, stored_n, 0)
        missing = np.flatnonzero(counts < 1)
        if need and missing.size:
            raise DoseMetadataError(
                f"{where}: {missing.size} of {n} projections lack frames_averaged "
                f"({FIELD_PATHS['frames_averaged']}, first: projection {int(missing[0])}); "
                f"{method} needs the frame's dose, so how many exposures each projection "
                "averages: give --frames-averaged N")
    if not need:
        return DosePlan(method, np.full(n, np.nan), counts, flat_n, f"not used by {method}")
    if dose_ratio is not None:
        doses = np.full(n, float(dose_ratio))
        return DosePlan(method, doses, counts, flat_n,
                        f"given: {float(dose_ratio):g} per exposure"
                        + ("" if frames_averaged is None else f", {int(frames_averaged)} frames "
                           "averaged given"))
    if flat_dose_ratio is None and flat_references is None:
        raise DoseMetadataError(
            f"{where}: the dose of the projections is unknown: {no_model or 'no detector model'}; "
            f"{method} needs it: give --dose-ratio R (detected quanta per pixel of one "
            "exposure's flat over the profile's nnps_mean_signal)")
    fields = ("exposure_s", "voltage_kv", "current_ua")
    bad = {}
    for name in fields:
        v = np.asarray(settings[name], dtype=np.float64)
        idx = np.flatnonzero(~(np.isfinite(v) & (v > 0)))
        if idx.size:
            bad[name] = idx
    if bad:
        text = ", ".join(f"{k} ({FIELD_PATHS[k]}; {v.size} of {n} projections, first: "
                         f"projection {int(v[0])})" for k, v in bad.items())
        raise DoseMetadataError(
            f"{where}: the projections lack {text}; {method} needs the frame's dose from "
            f"them: give --dose-ratio R (detected quanta per pixel of one exposure's flat over "
            "the profile's nnps_mean_signal)")
    doses = np.empty(n)
    if flat_references is not None:
        if len(flat_references) != n:
            raise ValueError(f"flat_references: {len(flat_references)} for {n} projections")
        for k, ref in enumerate(flat_references):
            try:
                doses[k] = measured_flat_dose_ratio(
                    ref, adu_per_quantum, mean_signal, float(settings["exposure_s"][k]),
                    float(settings["voltage_kv"][k]), float(settings["current_ua"][k]),
                    what=f"projection {k}")
            except DoseMetadataError as exc:
                raise DoseMetadataError(f"{where}: {exc}; or give --dose-ratio R") from None
        return DosePlan(method, doses, counts, flat_n,
                        f"measured flat (flat minus dark of each projection's reference, "
                        f"{float(adu_per_quantum):g} ADU per quantum) at its exposure and current"
                        + ("" if frames_averaged is None else
                           f"; {int(frames_averaged)} frames averaged given"))
    memo: dict[tuple, float | None] = {}
    theta = np.asarray(settings.get("theta_deg", np.zeros(n)), dtype=np.float64)
    for k in range(n):
        key = (float(settings["exposure_s"][k]), float(settings["voltage_kv"][k]),
               float(settings["current_ua"][k]), float(np.nan_to_num(theta[k])))
        if key not in memo:
            memo[key] = flat_dose_ratio(*key)
        if memo[key] is None or not memo[key] > 0:
            raise DoseMetadataError(f"{where}: projection {k}: {model or 'the detector model'} "
                                    f"gives no dose at exposure {key[0]:g} s, {key[1]:g} kV, "
                                    f"{key[2]:g} uA; give --dose-ratio R")
        doses[k] = memo[key]
    return DosePlan(method, doses, counts, flat_n,
                    f"{model or 'detector model'} at each projection's exposure, voltage and "
                    "current" + ("" if frames_averaged is None else
                                 f"; {int(frames_averaged)} frames averaged given"))
