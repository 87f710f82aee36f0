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
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InstrumentError, UserError

log = logging.getLogger("xinstrument.scans")

# Largest difference accepted between a commanded and a read-back angle: a PI rotation stage in
# closed loop settles to well under 0.001 deg (ONT? true); 0.01 deg is 0.2 um of lateral shift
# at 1 mm above the screen with the 30 mm tube circle of the simulated bench.
ANGLE_TOLERANCE_DEG = 0.01


class PlanError(UserError):
    """A scan plan that cannot be run as written."""


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
    """A tomosynthesis scan on an :class:`xinstrument.instrument.Instrument`.

    ``progress(ScanProgress)`` is called after every averaged frame; the instrument also emits
    ("progress", ("tomosynthesis", fraction)) and log events with the time left.
    """

    def __init__(self, instrument, plan: TomoPlan,
                 progress: Callable[[ScanProgress], None] | None = None) -> None:
        self.inst = instrument
        self.plan = plan
        self.progress_cb = progress
        self._run_gate = threading.Event()
        self._run_gate.set()
        self._abort_requested = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.result: TomoResult | None = None
        self.state = "idle"
        self._frames_done = 0
        self._frames_total = 0
        self._active_s = 0.0
        self._t_resume = 0.0
        self._angles_done = 0
        self._theta: float | None = None

    # ------------------------------------------------------------------ control
    def pause(self) -> None:
        """Hold before the next averaged frame (X-rays stay on for tube stability)."""
        self._run_gate.clear()

    def resume(self) -> None:
        self._run_gate.set()

    @property
    def paused(self) -> bool:
        return not self._run_gate.is_set()

    def abort(self) -> None:
        """Stop at the next frame boundary; the file is closed as incomplete."""
        self._abort_requested.set()
        self.inst.abort()
        self._run_gate.set()

    def start(self) -> "TomoScan":
        """Run in a background thread; ``wait()`` returns the result or raises."""
        if self._thread is not None:
            raise InstrumentError("this scan was already started")

        def target():
            try:
                self.run()
            except BaseException as exc:  # re-raised by wait()
                self._error = exc

        self._thread = threading.Thread(target=target, name="xinstrument-tomo", daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout_s: float | None = None) -> TomoResult:
        if self._thread is None:
            raise InstrumentError("scan not started")
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise InstrumentError(f"scan still running after {timeout_s} s")
        if self._error is not None:
            raise self._error
        assert self.result is not None
        return self.result

    # ------------------------------------------------------------------ helpers
    def _aborted(self) -> bool:
        return self._abort_requested.is_set() or self.inst._abort.is_set()

    def _checkpoint(self) -> None:
        if self._aborted():
            raise _Abort()
        if not self._run_gate.is_set():
            self._active_s += time.monotonic() - self._t_resume
            self.state = "paused"
            self.inst._log("tomosynthesis paused")
            self._report("paused")
            while not self._run_gate.wait(0.1):
                if self._aborted():
                    raise _Abort()
            if self._aborted():
                raise _Abort()
            self.state = "running"
            self._t_resume = time.monotonic()
            self.inst._log("tomosynthesis resumed")

    def _elapsed(self) -> float:
        return self._active_s + (time.monotonic() - self._t_resume if self.state == "running"
                                 else 0.0)

    def _report(self, phase: str) -> None:
        total = max(self._frames_total, 1)
        elapsed = self._elapsed()
        done = self._frames_done
        left = elapsed / done * (total - done) if done else float("nan")
        p = ScanProgress(phase=phase, fraction=done / total, frames_done=done,
                         frames_total=self._frames_total, angle_index=self._angles_done,
                         n_angles=len(self._angles), theta_deg=self._theta, elapsed_s=elapsed,
                         time_left_s=left)
        self.inst._emit("progress", ("tomosynthesis", p.fraction))
        if self.progress_cb is not None:
            self.progress_cb(p)

    def _grab(self, n: int):
        self._checkpoint()
        try:
            data, frames = self.inst.grab_average(n)
        except InstrumentError:
            if self._aborted():
                raise _Abort() from None
            raise
        self._frames_done += n
        return data, frames

    def _geometry(self, shape):
        from ..recon.geometry import TomoGeometry
        g = dict(self.plan.geometry)
        twin = getattr(self.inst, "twin", None)
        kind = g.pop("kind", "tube")
        if twin is not None:
            cfg = twin.config
            base = dict(source_detector_mm=cfg.source_detector_mm,
                        source_object_mm=cfg.source_object_mm,
                        pixel_um=cfg.pixel_at_screen_um)
            base.update(g)
            g = base
        missing = [k for k in ("source_detector_mm", "source_object_mm", "pixel_um")
                   if k not in g]
        if missing:
            raise PlanError(f"the plan's [geometry] must give {', '.join(missing)} on this bench")
        pixel_um = float(g.pop("pixel_um"))
        try:
            return TomoGeometry(kind=kind, pixel_mm=pixel_um / 1000, rows=int(shape[0]),
                                cols=int(shape[1]), **g)
        except ValueError as exc:
            raise PlanError(f"geometry: {exc}") from None

    # ------------------------------------------------------------------ the scan
    def run(self) -> TomoResult:
        from ..acquisition.correction import FlatFieldCorrector, build_defect_map
        from ..storage import ScanWriter

        inst, plan = self.inst, self.plan
        if not inst.connected:
            raise InstrumentError("instrument is not connected: call connect() first")
        if inst.rotation_axis is None:
            raise PlanError("this bench has no rotation stage: tomosynthesis needs one "
                            "([rotation_stage] in the instrument config)")
        self._angles = plan.validate(tuple(inst.rotation_axis.limits))
        if (plan.darks == 0 and inst.dark is None) or (plan.flats == 0 and inst.flat is None):
            which = "flats" if plan.flats == 0 and inst.flat is None else "darks"
            raise PlanError(f"missing {which}: set {which} >= 1 in the plan, or take "
                            f"{which} on the instrument before the scan")
        shape = tuple(inst.camera.frame_shape)
        geometry = self._geometry(shape)
        geometry.check_angles(self._angles, [0.0])
        n_ref = int(plan.reference_frames or plan.frames_per_angle)
        n_series = 1 + ((len(self._angles) - 1) // plan.flats_every if plan.flats_every else 0)
        self._frames_total = (len(self._angles) * plan.frames_per_angle
                              + plan.darks * n_ref + plan.flats * n_ref * n_series)
        out = Path(plan.out)
        restorer = None
        with inst.operation("tomosynthesis"):
            if plan.exposure_s is not None:
                inst.set_exposure_s(plan.exposure_s)
            if plan.voltage_kv is not None:
                inst.set_voltage_kv(plan.voltage_kv)
            if plan.current_ua is not None:
                inst.set_current_ua(plan.current_ua)
            if plan.restore:
                restorer = inst.restorer(plan.restoration_method)
            profile_name = getattr(inst.profile, "name", "") or ""
            meta = {"instrument": "xinstrument", "title": plan.title, "scan": "tomosynthesis",
                    "plan": plan.to_dict(), "pixel_size_um": geometry.pixel_mm * 1000,
                    "profile": profile_name if plan.restore else None}
            writer = ScanWriter(out, shape, "float32", metadata=meta, restored=plan.restore,
                                overwrite=plan.overwrite)
            self.state = "running"
            self._t_resume = time.monotonic()
            thetas: list[float] = []
            reason = None
            try:
                writer.set_attrs(**geometry.to_attrs())
                exposure = float(inst.exposure_s)
                # --- darks
                if plan.darks:
                    self.inst.tube.xray_off()
                    time.sleep(0.1)
                    dark_frames = []
                    for _ in range(plan.darks):
                        d, _f = self._grab(n_ref)
                        dark_frames.append(d)
                        writer.append(d, image_key=2, voltage_kv=0.0, current_ua=0.0,
                                      exposure_s=exposure, frames_averaged=n_ref)
                        self._report("darks")
                    dark = np.mean(dark_frames, axis=0).astype(np.float32)
                    inst.xray_on()
                else:
                    dark = inst.dark
                    writer.append(dark, image_key=2, voltage_kv=0.0, current_ua=0.0,
                                  exposure_s=exposure)
                if inst.tube.state.name != "XRAY_ON":
                    inst.xray_on()
                st = inst.tube_status()

                def flat_series():
                    if plan.flats == 0:
                        writer.append(inst.flat, image_key=1, voltage_kv=st.voltage_kv,
                                      current_ua=st.current_ua, exposure_s=exposure)
                        return inst.flat
                    frames = []
                    inst.set_sample_in(False)
                    try:
                        for _ in range(plan.flats):
                            f, _ = self._grab(n_ref)
                            frames.append(f)
                            writer.append(f, image_key=1, voltage_kv=st.voltage_kv,
                                          current_ua=st.current_ua, exposure_s=exposure,
                                          frames_averaged=n_ref,
                                          theta_deg=float(inst.rotation_deg))
                            self._report("flats")
                    finally:
                        inst.set_sample_in(True)
                    return np.mean(frames, axis=0).astype(np.float32)

                def corrector_for(flat):
                    return FlatFieldCorrector(dark, flat, defect_map=build_defect_map(dark, flat))

                corrector = corrector_for(flat_series())
                # --- projections
                for i, theta in enumerate(self._angles):
                    if plan.flats_every and i > 0 and i % plan.flats_every == 0:
                        corrector = corrector_for(flat_series())
                    self._checkpoint()
                    inst.move_rotation_deg(float(theta))
                    measured = float(inst.rotation_deg)
                    if abs(measured - theta) > ANGLE_TOLERANCE_DEG:
                        raise InstrumentError(f"rotation stage reads {measured:.4f} deg after a "
                                              f"move to {theta:.4f} deg")
                    if plan.settle_s:
                        time.sleep(plan.settle_s)
                    self._theta = measured
                    raw, frames = self._grab(plan.frames_per_angle)
                    ctx = inst.frame_context(frames, plan.frames_per_angle)
                    idx = writer.append(raw, image_key=0, theta_deg=measured,
                                        voltage_kv=ctx["voltage_kv"],
                                        current_ua=ctx["current_ua"],
                                        exposure_s=ctx["exposure_s"],
                                        frames_averaged=plan.frames_per_angle,
                                        focus_z_um=ctx["focus_z_um"],
                                        timestamp_s=ctx["timestamp_s"])
                    thetas.append(measured)
                    corrected = corrector(raw)
                    restored = None
                    if restorer is not None:
                        restored = restorer.restore(corrected)
                        writer.append_restored(restored, source_index=idx,
                                               method=restorer.method, profile=profile_name)
                    self._angles_done = i + 1
                    self._emit_frame(corrected, restored, ctx, measured, restorer, raw)
                    self._report("projections")
                    left = self._progress_left()
                    inst._log(f"tomosynthesis: projection {i + 1}/{len(self._angles)} at "
                              f"{measured:+.3f} deg, ~{left:.0f} s left")
                if plan.return_to_deg is not None:
                    inst.move_rotation_deg(float(plan.return_to_deg))
            except _Abort:
                reason = "aborted by the operator"
            except BaseException as exc:
                reason = f"{type(exc).__name__}: {exc}"
                self._finish(writer, thetas, geometry, complete=False, reason=reason)
                raise
            complete = reason is None
            result = self._finish(writer, thetas, geometry, complete=complete, reason=reason)
        if not complete:
            raise ScanAborted(f"tomosynthesis aborted after {len(thetas)} of "
                              f"{len(self._angles)} projections; {out} is marked incomplete",
                              result)
        return result

    def _progress_left(self) -> float:
        done = max(self._frames_done, 1)
        return self._elapsed() / done * (self._frames_total - self._frames_done)

    def _emit_frame(self, corrected, restored, ctx, theta, restorer, raw=None) -> None:
        from ..instrument import AveragedFrame
        fr = AveragedFrame(data=corrected, corrected=True, restored=restored,
                           restoration_method=restorer.method if restorer else None, raw=raw,
                           **{**ctx, "theta_deg": theta})
        self.inst.last_frame = fr
        self.inst._emit("frame", fr)

    def _finish(self, writer, thetas, geometry, complete: bool, reason: str | None) -> TomoResult:
        elapsed = self._elapsed()
        self.state = "done" if complete else "aborted"
        try:
            writer.set_attrs(tomo_complete_projections=len(thetas),
                             tomo_planned_projections=int(len(self._angles)))
        except Exception:  # noqa: BLE001 - closing the file matters more than this note
            log.exception("could not record projection counts")
        writer.close(complete=complete, reason=reason)
        self.result = TomoResult(path=Path(self.plan.out), theta_deg=np.array(thetas),
                                 n_projections=len(thetas), complete=complete, reason=reason,
                                 elapsed_s=elapsed, geometry=geometry)
        self._report("done" if complete else "aborted")
        self.inst._log(f"tomosynthesis {'finished' if complete else 'stopped'}: {len(thetas)} "
                       f"projections in {elapsed:.1f} s -> {self.plan.out}"
                       + ("" if complete else f" (incomplete: {reason})"))
        return self.result


class _Abort(Exception):
    """Internal: unwind to the scan's abort handling."""


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
