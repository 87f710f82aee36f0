"""Tomosynthesis scan plans: darks, flats and averaged (optionally restored) projections over an arc.

Reads like the experiment::

    from xinstrument.scans import tomosynthesis
    result = tomosynthesis(inst, arc_deg=40, n_angles=41, frames_per_angle=10, darks=2,
                           flats=2, flats_every=10, restore=True, out="pcb_tomo.h5")

Every averaged frame goes to one HDF5 file (NeXus NXtomo + Data Exchange, ``ScanWriter``):
darks (image_key 2), flat series (image_key 1, one series before the scan and one after every
``flats_every`` angles) and projections (image_key 0) with the rotation stage's measured angle
as theta (deg); restored projections go to ``/entry/restored`` beside the measured ones. The
scan geometry (:class:`xinstrument.recon.TomoGeometry`) is stored as ``tomo_*`` attributes on
``/entry``, so ``xinstrument recon FILE`` needs nothing else. A scan that fails or is aborted
closes its file as incomplete with the reason; every frame written before stays readable.

For pause / resume / abort from another thread (GUI, IOC), run a :class:`TomoScan` with
``start()``; ``tomosynthesis()`` is the blocking form.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..acquisition.frame import ReferenceSet
from ..errors import InstrumentError
from ..recon.geometry import TomoGeometry
from .engine import PlanAborted, PlanError
from .plans import acquisition_layout

log = logging.getLogger("xinstrument.scans")

# Largest difference accepted between a commanded and a read-back angle: a PI rotation stage in
# closed loop settles to well under 0.001 deg (ONT? true); 0.01 deg is 0.2 um of lateral shift
# at 1 mm above the screen with the 30 mm tube circle of the simulated bench.
ANGLE_TOLERANCE_DEG = 0.01


class ScanAborted(InstrumentError):
    """The scan was aborted; ``result`` describes the incomplete file."""

    def __init__(self, message: str, result: "TomoResult") -> None:
        super().__init__(message)
        self.result = result


@dataclass
class TomoPlan:
    """What to measure. Angles come either from ``arc_deg`` + ``n_angles`` (+ ``centre_deg``)
    or from an explicit ``angles_deg`` list.

    Parameters
    ----------
    arc_deg : full arc (deg), centred on ``centre_deg``; the first and last angles are its ends.
    n_angles : number of projections (>= 2).
    angles_deg : explicit angles instead (strictly monotonic); with ``n_angles`` or ``arc_deg``
        also given they must agree.
    frames_per_angle : camera frames averaged per projection.
    darks, flats : averaged dark / flat frames per reference series (0: use the instrument's
        current references, which must exist).
    reference_frames : camera frames averaged per dark/flat frame (default frames_per_angle).
    flats_every : a new flat series after every that many projections (0: only before).
    restore : restore each corrected projection with the instrument's restorer
        (``restoration_method`` or the instrument's current method).
    exposure_s, voltage_kv, current_ua : set before the scan when given.
    settle_s : wait after each rotation move before exposing.
    return_to_deg : move the rotation stage there at the end (None: stay).
    geometry : overrides of the stored geometry (kind, source_object_mm, source_detector_mm,
        pixel_um, axis, axis_height_mm); required keys on a real bench, defaults from the twin.
    out : output HDF5 file; ``overwrite`` replaces an existing one.
    """

    arc_deg: float | None = None
    n_angles: int | None = None
    centre_deg: float = 0.0
    angles_deg: list[float] | None = None
    frames_per_angle: int = 10
    darks: int = 1
    flats: int = 1
    reference_frames: int | None = None
    flats_every: int = 0
    restore: bool = False
    restoration_method: str | None = None
    exposure_s: float | None = None
    voltage_kv: float | None = None
    current_ua: float | None = None
    settle_s: float = 0.0
    return_to_deg: float | None = 0.0
    geometry: dict[str, Any] = field(default_factory=dict)
    out: str | Path = "tomo.h5"
    overwrite: bool = False
    title: str = "tomosynthesis"

    # ------------------------------------------------------------------ validation
    def angles(self) -> np.ndarray:
        """The projection angles (deg), validated."""
        if self.angles_deg is not None:
            a = np.asarray(self.angles_deg, dtype=np.float64).ravel()
            if not np.all(np.isfinite(a)):
                raise PlanError("angles_deg contains a non-finite value")
            if a.size < 2:
                raise PlanError(f"tomosynthesis needs at least 2 angles, got {a.size}")
            d = np.diff(a)
            if not (np.all(d > 0) or np.all(d < 0)):
                raise PlanError("angles_deg must be strictly increasing or decreasing (no "
                                "repeats): " + ", ".join(f"{v:g}" for v in a))
            if self.n_angles is not None and self.n_angles != a.size:
                raise PlanError(f"inconsistent angles: n_angles = {self.n_angles} but "
                                f"angles_deg lists {a.size}")
            if self.arc_deg is not None and not math.isclose(abs(a[-1] - a[0]), self.arc_deg,
                                                             abs_tol=1e-6):
                raise PlanError(f"inconsistent angles: arc_deg = {self.arc_deg:g} but angles_deg "
                                f"spans {abs(a[-1] - a[0]):g} deg")
            return a
        if self.arc_deg is None or self.n_angles is None:
            raise PlanError("give arc_deg and n_angles, or an angles_deg list")
        if int(self.n_angles) != self.n_angles or self.n_angles < 2:
            raise PlanError(f"n_angles must be an integer >= 2, got {self.n_angles!r}")
        if not (math.isfinite(self.arc_deg) and self.arc_deg > 0):
            raise PlanError(f"arc_deg must be a positive number of degrees, got {self.arc_deg!r}")
        if self.arc_deg >= 180:
            raise PlanError(f"arc_deg {self.arc_deg:g} is not a tomosynthesis arc (< 180 deg)")
        half = self.arc_deg / 2
        return np.linspace(self.centre_deg - half, self.centre_deg + half, int(self.n_angles))

    def validate(self, limits_deg: tuple[float, float] | None = None) -> np.ndarray:
        """Check everything that can be checked before touching the devices; return angles."""
        a = self.angles()
        for name in ("frames_per_angle",):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise PlanError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("darks", "flats", "flats_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 0:
                raise PlanError(f"{name} must be an integer >= 0, got {v!r}")
        if self.reference_frames is not None and (int(self.reference_frames) !=
                                                  self.reference_frames or
                                                  self.reference_frames < 1):
            raise PlanError(f"reference_frames must be an integer >= 1, got "
                            f"{self.reference_frames!r}")
        if self.flats_every and self.flats == 0:
            raise PlanError("flats_every needs flats >= 1 (frames per flat series)")
        if self.settle_s < 0:
            raise PlanError(f"settle_s must be >= 0, got {self.settle_s}")
        if limits_deg is not None:
            lo, hi = limits_deg
            bad = a[(a < lo - 1e-9) | (a > hi + 1e-9)]
            if bad.size:
                raise PlanError(f"angles {bad.min():g}..{bad.max():g} deg lie outside the rotation "
                                f"axis limits [{lo:g}, {hi:g}] deg (arc {abs(a[-1] - a[0]):g} deg "
                                f"about {0.5 * (a[0] + a[-1]):g} deg)")
            if self.return_to_deg is not None and not lo <= self.return_to_deg <= hi:
                raise PlanError(f"return_to_deg {self.return_to_deg:g} outside the axis limits")
        unknown = set(self.geometry) - {"kind", "source_object_mm", "source_detector_mm",
                                        "pixel_um", "axis", "axis_height_mm", "centre_row_px",
                                        "centre_col_px"}
        if unknown:
            raise PlanError(f"unknown geometry key(s) {sorted(unknown)}")
        return a

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "plan") -> "TomoPlan":
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise PlanError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        try:
            return cls(**raw)
        except TypeError as exc:
            raise PlanError(f"{where}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        return d

    # ------------------------------------------------------------------ the engine's side
    kind = "tomosynthesis"

    def describe(self) -> str:
        return plan_summary(self)

    def check(self, inst) -> None:
        """Everything that can be refused before anything moves (angles within the rotation
        axis soft limits, references, restoration method, geometry)."""
        if not inst.has_rotation_stage:
            raise PlanError("this bench has no rotation stage: tomosynthesis needs one "
                            "([rotation_stage] in the instrument config)")
        angles = self.validate(inst.soft_limits("rotation"))
        if (self.darks == 0 and inst.dark is None) or (self.flats == 0 and inst.flat is None):
            which = "flats" if self.flats == 0 and inst.flat is None else "darks"
            raise PlanError(f"missing {which}: set {which} >= 1 in the plan, or take "
                            f"{which} on the instrument before the scan")
        if self.restore:
            inst.check_restoration(self.restoration_method, n_average=self.frames_per_angle)
        geometry = _geometry(inst, self, tuple(inst.camera.frame_shape))
        geometry.check_angles(angles, [0.0])
        if self.darks or self.flats:
            inst.check_tube_ready()

    def sink_layout(self, inst) -> dict[str, Any]:
        geometry = _geometry(inst, self, tuple(inst.camera.frame_shape))
        lay = acquisition_layout(inst, correct=True, restore=self.restore,
                                 n_average=self.frames_per_angle,
                                 pixel_size_um=geometry.pixel_mm * 1000,
                                 method=self.restoration_method)
        lay["metadata"].update(title=self.title, scan="tomosynthesis")
        return lay

    def run(self, ctx) -> "TomoResult":
        inst = ctx.instrument
        angles = self.validate(inst.soft_limits("rotation"))
        shape = tuple(inst.camera.frame_shape)
        geometry = _geometry(inst, self, shape)
        n_ref = int(self.reference_frames or self.frames_per_angle)
        n_series = 1 + ((len(angles) - 1) // self.flats_every if self.flats_every else 0)
        ctx.frames_total = (len(angles) * self.frames_per_angle
                            + self.darks * n_ref + self.flats * n_ref * n_series)
        if self.exposure_s is not None:
            inst.set_exposure_s(self.exposure_s)
        if self.voltage_kv is not None:
            inst.set_voltage_kv(self.voltage_kv)
        if self.current_ua is not None:
            inst.set_current_ua(self.current_ua)
        if ctx.sink is not None:
            ctx.sink.set_attrs(**geometry.to_attrs())
        thetas: list[float] = []
        self._run_state = (thetas, geometry, len(angles))
        ctx.detail = {"angle_index": 0, "n_angles": len(angles), "theta_deg": None,
                      "elapsed_s": 0.0}
        # --- references: darks once, a flat series before the scan and every flats_every
        if self.darks:
            ctx.phase = "darks"
            inst.xray_off()
            time.sleep(0.1)
            dark = ctx.acquire(1, n_average=self.darks * n_ref, correct=False, image_key=2,
                               record=False, publish=False)[0].data
        else:
            dark = inst.dark
        if not inst.xray_is_on:
            inst.xray_on()
        st = inst.tube_status()

        def references():
            if self.flats:
                ctx.phase = "flats"
                inst.set_sample_in(False)
                try:
                    flat = ctx.acquire(1, n_average=self.flats * n_ref, correct=False,
                                       image_key=1, record=False, publish=False)[0]
                finally:
                    inst.set_sample_in(True)
                flat_data, theta = flat.data, flat.theta_deg
            else:
                flat_data, theta = inst.flat, inst.rotation_deg
            return ReferenceSet(dark, flat_data,
                                dark_frames_averaged=max(1, self.darks * n_ref),
                                flat_frames_averaged=max(1, self.flats * n_ref),
                                exposure_s=inst.exposure_s, voltage_kv=st.voltage_kv,
                                current_ua=st.current_ua, theta_deg=theta)

        refs = references()
        # --- projections
        for i, theta in enumerate(angles):
            if self.flats_every and i > 0 and i % self.flats_every == 0:
                refs = references()
            ctx.checkpoint()
            inst.move_rotation_deg(float(theta))
            measured = float(inst.rotation_deg)
            if abs(measured - theta) > ANGLE_TOLERANCE_DEG:
                raise InstrumentError(f"rotation stage reads {measured:.4f} deg after a "
                                      f"move to {theta:.4f} deg")
            if self.settle_s:
                time.sleep(self.settle_s)
            ctx.phase = "projections"
            ctx.detail = {"angle_index": i, "n_angles": len(angles),
                          "theta_deg": measured, "elapsed_s": ctx.elapsed_s}
            frame = ctx.acquire(1, n_average=self.frames_per_angle, correct=True,
                                restore=self.restore, references=refs)[0]
            thetas.append(frame.theta_deg)
            ctx.detail = {**ctx.detail, "angle_index": i + 1, "elapsed_s": ctx.elapsed_s}
            ctx.progress("projections", **ctx.detail)
            ctx.log(f"tomosynthesis: projection {i + 1}/{len(angles)} at "
                    f"{frame.theta_deg:+.3f} deg")
        if self.return_to_deg is not None:
            inst.move_rotation_deg(float(self.return_to_deg))
        return None

    def finish_file(self, sink, value, state: str) -> None:
        thetas, _geometry_, n = getattr(self, "_run_state", ([], None, 0))
        sink.set_attrs(tomo_complete_projections=len(thetas), tomo_planned_projections=int(n))

    def after_run(self, result, value) -> "TomoResult":
        thetas, geometry, _n = getattr(self, "_run_state", ([], None, 0))
        return TomoResult(path=Path(self.out), theta_deg=np.array(thetas),
                          n_projections=len(thetas), complete=result.state == "finished",
                          reason=result.reason, elapsed_s=result.elapsed_s, geometry=geometry)


def _geometry(inst, plan: TomoPlan, shape):
    g = dict(plan.geometry)
    twin = inst.twin
    kind = g.pop("kind", "tube")
    if twin is not None:
        cfg = twin.config
        base = dict(source_detector_mm=cfg.source_detector_mm,
                    source_object_mm=cfg.source_object_mm,
                    pixel_um=cfg.pixel_at_screen_um)
        base.update(g)
        g = base
    missing = [k for k in ("source_detector_mm", "source_object_mm", "pixel_um") if k not in g]
    if missing:
        raise PlanError(f"the plan's [geometry] must give {', '.join(missing)} on this bench")
    pixel_um = float(g.pop("pixel_um"))
    try:
        return TomoGeometry(kind=kind, pixel_mm=pixel_um / 1000, rows=int(shape[0]),
                            cols=int(shape[1]), **g)
    except ValueError as exc:
        raise PlanError(f"geometry: {exc}") from None


@dataclass
class ScanProgress:
    """One progress report: where the scan is and how long it should still take."""

    phase: str                  # "darks", "flats", "projections", "paused", "done"
    fraction: float             # of camera frames
    frames_done: int
    frames_total: int
    angle_index: int            # projections written so far
    n_angles: int
    theta_deg: float | None
    elapsed_s: float            # active time (pauses excluded)
    time_left_s: float          # estimate from the frame rate so far (NaN before the first)


@dataclass
class TomoResult:
    path: Path
    theta_deg: np.ndarray       # measured angles of the projections written
    n_projections: int
    complete: bool
    reason: str | None
    elapsed_s: float
    geometry: Any


class TomoScan:
    """A tomosynthesis scan on an :class:`xinstrument.instrument.Instrument`: a handle that runs
    its :class:`TomoPlan` with the instrument's engine (``run()`` blocking, ``start()`` in the
    background) and turns the engine's progress into :class:`ScanProgress` reports.
    """

    def __init__(self, instrument, plan: TomoPlan,
                 progress: Callable[[ScanProgress], None] | None = None) -> None:
        self.inst = instrument
        self.plan = plan
        self.progress_cb = progress
        self._pause_first = False
        self._handle = None
        self.result: TomoResult | None = None
        self._angles_done = 0

    # ------------------------------------------------------------------ control
    def pause(self) -> None:
        """Hold before the next averaged frame (X-rays stay on for tube stability)."""
        if self._handle is None:
            self._pause_first = True
        else:
            self.inst.pause()

    def resume(self) -> None:
        self._pause_first = False
        self.inst.resume()

    @property
    def state(self) -> str:
        if self._handle is None:
            return "idle" if self.result is None else ("done" if self.result.complete
                                                       else "aborted")
        if not self._handle.done:
            return "paused" if self.inst.engine.state == "paused" else "running"
        return "done" if self.result is not None and self.result.complete else "aborted"

    @property
    def paused(self) -> bool:
        """Held (not merely asked to pause): no further frame comes until resume."""
        return (self._handle is not None and not self._handle.done
                and self.inst.engine.holding)

    def abort(self) -> None:
        """Stop at the next frame boundary; the file is closed as incomplete."""
        self.inst.abort()

    def _on_progress(self, p) -> None:
        if p.kind != "tomosynthesis":
            return
        d = p.detail
        self._angles_done = int(d.get("angle_index", self._angles_done))
        if self.progress_cb is not None:
            self.progress_cb(ScanProgress(
                phase=p.phase, fraction=p.fraction, frames_done=p.frames_done,
                frames_total=p.frames_total, angle_index=self._angles_done,
                n_angles=int(d.get("n_angles", 0)), theta_deg=d.get("theta_deg"),
                elapsed_s=float(d.get("elapsed_s", math.nan)), time_left_s=p.time_left_s))

    def run(self) -> TomoResult:
        """Run the scan to its end; raises PlanError before anything moves for a plan that
        cannot run, ScanAborted (with the result) when aborted."""
        unsub = self.inst.events.progress.connect(self._on_progress)
        try:
            self.result = self.inst.run(self.plan)
            return self.result
        except PlanAborted as exc:
            self.result = exc.result.value
            raise ScanAborted(str(exc), self.result) from None
        finally:
            unsub()

    def start(self) -> "TomoScan":
        """Run in a background thread; ``wait()`` returns the result or raises."""
        if self._handle is not None:
            raise InstrumentError("this scan was already started")
        unsub = self.inst.events.progress.connect(self._on_progress)
        try:
            self._handle = self.inst.start(self.plan, paused=self._pause_first)
        except BaseException:
            unsub()
            raise
        self._unsub = unsub
        return self

    def wait(self, timeout_s: float | None = None) -> TomoResult:
        if self._handle is None:
            raise InstrumentError("scan not started")
        try:
            self.result = self._handle.wait(timeout_s)
            return self.result
        except PlanAborted as exc:
            self.result = exc.result.value
            raise ScanAborted(str(exc), self.result) from None
        finally:
            if self._handle.done:
                self._unsub()


def tomosynthesis(instrument, *, arc_deg: float | None = None, n_angles: int | None = None,
                  out: str | Path = "tomo.h5",
                  progress: Callable[[ScanProgress], None] | None = None,
                  **plan_options) -> TomoResult:
    """Run a tomosynthesis scan and return its :class:`TomoResult` (blocking).

    Keyword arguments are those of :class:`TomoPlan`; raises :class:`PlanError` for a plan
    that cannot run, :class:`ScanAborted` when aborted (the file is kept, marked incomplete).
    """
    plan = TomoPlan(arc_deg=arc_deg, n_angles=n_angles, out=out, **plan_options)
    return TomoScan(instrument, plan, progress=progress).run()


def plan_summary(plan: TomoPlan) -> str:
    a = plan.angles()
    return (f"{a.size} projections from {a[0]:+g} to {a[-1]:+g} deg, "
            f"{plan.frames_per_angle} frames each, darks {plan.darks}, flats {plan.flats}"
            + (f" every {plan.flats_every} angles" if plan.flats_every else "")
            + (", restored" if plan.restore else "") + f" -> {plan.out}")


__all__ = ["PlanError", "ScanAborted", "ScanProgress", "TomoPlan", "TomoResult", "TomoScan",
           "plan_summary", "tomosynthesis"]
