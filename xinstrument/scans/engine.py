"""The engine: runs any plan on the instrument, one at a time, through the frame pipeline into
the recording sink.

A plan is data (:mod:`.plans`); the engine checks it (everything that can be refused is
refused before a motor moves or the tube switches on), takes the instrument's operation lock,
opens the plan's scan file, hands the plan a :class:`RunContext`, and reports through the
instrument's typed signals (``Instrument.events``). ``pause()``, ``resume()`` and ``abort()``
act at the next frame boundary, from any thread; ``stop()`` ends an open-ended series cleanly.

User plans follow the :class:`Plan` protocol: ``kind``, ``out``, ``describe()``,
``check(instrument)`` and ``run(ctx)``; they acquire with ``ctx.acquire(...)`` and
``ctx.take_references(...)``, move with the instrument's public methods, and call
``ctx.checkpoint()`` between steps.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..acquisition.frame import Frame, ReferenceSet
from ..acquisition.pipeline import AcquisitionPipeline, CallbackSink, MemorySink
from ..errors import InstrumentError, UserError
from ..storage.errors import StorageError
from ..storage.sink import RecordingSink, check_target
from .events import PlanInfo, PlanResult, Progress

if TYPE_CHECKING:
    from ..instrument import Instrument

__all__ = ["Engine", "Plan", "PlanAborted", "PlanError", "RunContext", "RunHandle"]

log = logging.getLogger("xinstrument.engine")


class PlanError(UserError, InstrumentError):
    """A plan that cannot run as written or on the instrument as it is (refused before
    anything moves): a user error for the CLI, an instrument error for API callers."""


class PlanAborted(InstrumentError):
    """The plan was aborted; ``result`` says how far it got (its file is marked incomplete)."""

    def __init__(self, message: str, result: PlanResult) -> None:
        super().__init__(message)
        self.result = result


class _Abort(Exception):
    """Internal: unwind a plan to the engine's abort handling."""


@runtime_checkable
class Plan(Protocol):
    """What the engine runs. ``out``: scan file or None; ``overwrite``: replace it."""

    kind: str

    def describe(self) -> str: ...

    def check(self, inst: "Instrument") -> None: ...

    def run(self, ctx: "RunContext") -> Any: ...


class RunContext:
    """What a running plan may use: acquisition through the pipeline, references, the file,
    progress and checkpoints. Moves and tube settings go through ``ctx.instrument``."""

    def __init__(self, engine: "Engine", plan: Any, sink: RecordingSink | None) -> None:
        self.engine = engine
        self.instrument = engine.inst
        self.plan = plan
        self.sink = sink
        self.frames_done = 0
        self.frames_total = 0
        self.n_outputs = 0
        self._restorer = None
        self.extra_sinks: list = []
        self.phase = ""                      # what automatic progress reports say
        self.detail: dict[str, Any] = {}
        self._active_s = 0.0
        self._t_resume = time.monotonic()

    # ------------------------------------------------------------------ flow control
    def checkpoint(self) -> None:
        """A frame boundary: raise on abort, hold while paused."""
        eng = self.engine
        if eng._abort.is_set():
            raise _Abort()
        if eng._pause.is_set():
            self._active_s += time.monotonic() - self._t_resume
            eng._paused.set()
            self.instrument.log_message(f"{self.plan.kind} paused")
            self.progress(phase="paused")
            while eng._pause.is_set() and not eng._abort.is_set():
                time.sleep(0.05)
            eng._paused.clear()
            if eng._abort.is_set():
                raise _Abort()
            self._t_resume = time.monotonic()
            self.instrument.log_message(f"{self.plan.kind} resumed")

    @property
    def stop_requested(self) -> bool:
        """``Engine.stop()`` was called: an open-ended plan ends after its current frame."""
        return self.engine._stop.is_set()

    def wait_s(self, seconds: float) -> bool:
        """Wait between frames (a paced series): True when a stop ended the wait; aborts and
        pauses act during it as at any frame boundary."""
        deadline = time.monotonic() + max(0.0, float(seconds))
        while True:
            self.checkpoint()
            if self.stop_requested:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.engine._stop.wait(min(left, 0.05))

    @property
    def elapsed_s(self) -> float:
        paused = self.engine._paused.is_set()
        return self._active_s + (0.0 if paused else time.monotonic() - self._t_resume)

    def progress(self, phase: str = "", **detail: Any) -> None:
        total = max(self.frames_total, 1)
        done = self.frames_done
        left = self.elapsed_s / done * (total - done) if done else math.nan
        p = Progress(kind=self.plan.kind, fraction=min(1.0, done / total), phase=phase,
                     frames_done=done, frames_total=self.frames_total, time_left_s=left,
                     detail=detail)
        self.instrument.events.progress.emit(p)

    def log(self, message: str) -> None:
        self.instrument.log_message(message)

    # ------------------------------------------------------------------ acquisition
    def restorer(self):
        """The restoration callable of this run (one method per run and file: the plan's
        ``restoration_method`` or the instrument's current one)."""
        if self._restorer is None:
            follow = bool(getattr(self.plan, "follow_restoration", False))
            self._restorer = self.instrument.stream_restorer(
                follow=follow, method=getattr(self.plan, "restoration_method", None))
        return self._restorer

    def acquire(self, n_outputs: int | None = 1, *, n_average: int = 1, correct: bool = True,
                restore: bool = False, image_key: int = 0, record: bool = True,
                references: ReferenceSet | None = None, keep: bool = True,
                live: bool = True, publish: bool = True) -> list[Frame]:
        """Run ``n_outputs`` averaged frames (None: until ``Engine.stop()``) through the
        pipeline: average ``n_average`` camera frames, correct with ``references`` (default
        the instrument's), restore, record into the plan's file, publish (frame_ready, live
        view). Returns the frames when ``keep``."""
        self.checkpoint()
        inst = self.instrument
        refs = None
        if correct:
            refs = references or inst.references
            if refs is None:
                raise PlanError("no dark/flat references: take references first (References "
                                "plan) or acquire uncorrected")
        if restore and not correct:
            raise PlanError("restoration works on flat-field corrected frames")
        sinks: list = []
        kept = MemorySink(name="plan") if keep else None
        if kept is not None:
            sinks.append(kept)
        if live:
            sinks.append(inst.live_sink())
        sinks.append(CallbackSink(self._published if publish else self._counted,
                                  name="events", lossless=n_outputs is not None))
        if record and self.sink is not None:
            sinks.append(self.sink.as_pipeline_sink())
        sinks.extend(self.extra_sinks)
        pipe = AcquisitionPipeline(inst.camera, n_average=n_average, corrector=refs,
                                   restorer=self.restorer() if restore else None, sinks=sinks,
                                   n_outputs=n_outputs, image_key=image_key)
        eng = self.engine
        with eng._lock:
            if eng._abort.is_set():
                raise _Abort()
            eng._pipeline = pipe
            if eng._pause.is_set():
                pipe.pause()
            if eng._stop.is_set() and n_outputs is None:
                pipe.stop()          # stop() came before this open-ended acquisition began
        try:
            pipe.start()
            stats = pipe.wait()
        except BaseException:
            pipe.abort("plan failed")
            if eng._abort.is_set():
                raise _Abort() from None
            raise
        finally:
            with eng._lock:
                eng._pipeline = None
        inst.last_stream_stats = stats
        if eng._abort.is_set() or stats.state == "aborted":
            raise _Abort()
        return list(kept.items) if kept is not None else []

    def _counted(self, frame: Frame) -> None:
        self.frames_done += frame.frames_averaged
        self.n_outputs += 1
        self.progress(phase=self.phase or (("darks", "flats")[frame.image_key - 1]
                                           if frame.image_key else "frames"), **self.detail)

    def _published(self, frame: Frame) -> None:
        self.instrument.publish_frame(frame)
        self._counted(frame)

    def take_references(self, dark_frames: int, flat_frames: int, *, sample_out: bool = True,
                        record: bool = True, install: bool = True) -> ReferenceSet:
        """Average ``dark_frames`` with X-rays off and ``flat_frames`` with X-rays on and the
        sample out of the beam; return the set (recorded in the file when ``record``, made the
        instrument's current references when ``install``)."""
        inst = self.instrument
        exposure = inst.exposure_s
        was_on = inst.xray_is_on
        inst.xray_off()
        time.sleep(0.1)
        dark = self.acquire(1, n_average=dark_frames, correct=False, image_key=2,
                            record=False)[0]
        inst.xray_on()
        st = inst.tube_status()
        moved = False
        if sample_out:
            inst.set_sample_in(False)
            moved = True
        try:
            flat = self.acquire(1, n_average=flat_frames, correct=False, image_key=1,
                                record=False)[0]
        finally:
            if moved:
                inst.set_sample_in(True)
        if not was_on and not getattr(self.plan, "keep_xray_on", False):
            inst.xray_off()
        refs = ReferenceSet(dark.data, flat.data, dark_frames_averaged=dark_frames,
                            flat_frames_averaged=flat_frames, exposure_s=exposure,
                            voltage_kv=st.voltage_kv, current_ua=st.current_ua,
                            theta_deg=flat.theta_deg)
        if record and self.sink is not None:
            self.sink.write_references(refs)
        if install:
            inst.install_references(refs)
        return refs


class RunHandle:
    """A plan running in the background: ``wait()`` returns its value or raises."""

    def __init__(self, engine: "Engine", plan: Any) -> None:
        self.engine, self.plan = engine, plan
        self.result: PlanResult | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self.thread: threading.Thread | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout_s: float | None = None) -> Any:
        if not self._done.wait(timeout_s):
            raise InstrumentError(f"{self.plan.kind} still running after {timeout_s} s")
        if self.error is not None:
            raise self.error
        return self.result.value if self.result is not None else None


class Engine:
    """Runs plans on one instrument; owned by it (``Instrument.engine``)."""

    def __init__(self, instrument: "Instrument") -> None:
        self.inst = instrument
        self._lock = threading.Lock()
        self._pause = threading.Event()
        self._paused = threading.Event()
        self._abort = threading.Event()
        self._stop = threading.Event()
        self._pipeline: AcquisitionPipeline | None = None
        self.current: Any = None
        self.handle: RunHandle | None = None

    # ------------------------------------------------------------------ control
    @property
    def state(self) -> str:
        """"idle", "running" or "paused"."""
        if self.current is None:
            return "idle"
        return "paused" if self._pause.is_set() else "running"

    @property
    def holding(self) -> bool:
        """True while the running plan is actually held: at a checkpoint, or with the camera
        stopped at a frame boundary (a pause request lets the frame in progress finish)."""
        if self._paused.is_set():
            return True
        pipe = self._pipeline       # one reference read; progress callbacks may hold no lock
        return pipe is not None and pipe.paused

    def pause(self) -> None:
        """Hold the running plan at its next frame boundary (X-rays stay on for stability)."""
        if self.current is None:
            raise InstrumentError("no plan is running")
        self._pause.set()
        with self._lock:
            if self._pipeline is not None:
                self._pipeline.pause()

    def resume(self) -> None:
        self._pause.clear()
        with self._lock:
            if self._pipeline is not None:
                self._pipeline.resume()

    def abort(self, reason: str = "aborted by the operator") -> None:
        """Stop the running plan at the next frame boundary; its file is marked incomplete."""
        self._abort.set()
        self._pause.clear()
        with self._lock:
            if self._pipeline is not None:
                self._pipeline.abort(reason)

    def stop(self) -> None:
        """End an open-ended acquisition cleanly (the partial average is kept)."""
        self._stop.set()
        with self._lock:
            if self._pipeline is not None:
                self._pipeline.stop()

    @property
    def pipeline(self) -> AcquisitionPipeline | None:
        return self._pipeline

    # ------------------------------------------------------------------ running
    def check(self, plan: Any) -> None:
        """Everything that can be refused before anything moves."""
        if not isinstance(plan, Plan):
            raise PlanError(f"{type(plan).__name__} is not a plan (needs kind, describe(), "
                            "check(instrument), run(ctx))")
        if not self.inst.connected:
            raise InstrumentError("instrument is not connected: call connect() first")
        out = getattr(plan, "out", None)
        if out is not None:
            try:
                check_target(out, bool(getattr(plan, "overwrite", False)))
            except StorageError as exc:
                raise PlanError(f"{plan.kind}: output {exc}") from None
        plan.check(self.inst)

    def run(self, plan: Any, sinks=()) -> Any:
        """Run ``plan`` to the end in this thread; returns its value. Raises PlanError (refused,
        nothing moved), PlanAborted (aborted; file kept, marked incomplete) or the failure."""
        self.check(plan)
        with self.inst.operation(plan.kind):
            return self._run_locked(plan, None, sinks)

    def start(self, plan: Any, sinks=(), paused: bool = False) -> RunHandle:
        """Run ``plan`` in a background thread; returns a handle (``wait()``). ``sinks``:
        extra pipeline sinks of this run (e.g. an EPICS image PV)."""
        self.check(plan)
        handle = RunHandle(self, plan)
        ready = threading.Event()
        err: list[BaseException] = []

        def target() -> None:
            locked = False
            try:
                with self.inst.operation(plan.kind):
                    locked = True
                    ready.set()
                    self._run_locked(plan, handle, sinks, paused)
            except BaseException as exc:
                if locked:
                    handle.error = exc          # re-raised by wait()
                else:
                    err.append(exc)             # the lock was busy: raised by start()
            finally:
                handle._done.set()
                ready.set()

        handle.thread = threading.Thread(target=target, name=f"xinstrument-{plan.kind}",
                                         daemon=True)
        self.handle = handle
        handle.thread.start()
        ready.wait()
        if err:
            raise err[0]
        return handle

    def _open_sink(self, plan: Any) -> RecordingSink | None:
        out = getattr(plan, "out", None)
        if out is None:
            return None
        layout = plan.sink_layout(self.inst) if hasattr(plan, "sink_layout") else {}
        meta = {"instrument": "xinstrument", "plan_kind": plan.kind,
                "plan": plan.to_dict() if hasattr(plan, "to_dict") else plan.describe()}
        meta.update(layout.pop("metadata", {}))
        try:
            return RecordingSink(out, tuple(self.inst.camera.frame_shape), metadata=meta,
                                 overwrite=bool(getattr(plan, "overwrite", False)), **layout)
        except StorageError as exc:
            raise PlanError(f"{plan.kind}: output {exc}") from None

    def _run_locked(self, plan: Any, handle: RunHandle | None = None, sinks=(),
                    paused: bool = False) -> Any:
        inst = self.inst
        self._abort.clear()
        self._stop.clear()
        self._pause.clear()
        if paused:
            self._pause.set()
        self._paused.clear()
        info = PlanInfo(kind=plan.kind, description=plan.describe(),
                        out=None if getattr(plan, "out", None) is None else str(plan.out))
        sink = self._open_sink(plan)
        ctx = RunContext(self, plan, sink)
        ctx.extra_sinks = list(sinks)
        self.current = plan
        t0 = time.monotonic()
        inst.events.plan_started.emit(info)
        inst.log_message(f"{plan.kind} started: {info.description}")
        state, reason, value, error = "finished", None, None, None
        try:
            value = plan.run(ctx)
        except _Abort:
            state, reason = "aborted", "aborted by the operator"
        except BaseException as exc:
            state, reason, error = "failed", f"{type(exc).__name__}: {exc}", exc
            # a failed plan leaves the tube safe
            try:
                inst.xray_off()
            except Exception as off_exc:  # noqa: BLE001 - reported beside the failure
                log.error("could not confirm X-rays off after a failed plan: %s", off_exc)
        finally:
            self.current = None
            self._pause.clear()
        if sink is not None:
            try:
                if hasattr(plan, "finish_file"):
                    plan.finish_file(sink, value, state)
                sink.close(complete=state == "finished", reason=reason)
            except Exception as exc:  # noqa: BLE001 - the plan's own failure comes first
                if error is None:
                    state, reason, error = "failed", f"{type(exc).__name__}: {exc}", exc
        result = PlanResult(info=info, state=state, value=value, reason=reason,
                            path=info.out, elapsed_s=time.monotonic() - t0,
                            frames=ctx.n_outputs)
        if handle is not None:
            handle.result = result
        signal = {"finished": inst.events.plan_finished, "aborted": inst.events.plan_aborted,
                  "failed": inst.events.plan_failed}[state]
        signal.emit(result)
        inst.log_message(f"{plan.kind} {state}" + (f": {reason}" if reason else "")
                         + (f" -> {info.out}" if info.out else ""),
                         logging.INFO if state == "finished" else logging.WARNING)
        inst.publish_state()
        if hasattr(plan, "after_run"):
            value = plan.after_run(result, value)
            result.value = value
        if error is not None:
            raise error
        if state == "aborted":
            raise PlanAborted(f"{plan.kind} aborted after {ctx.n_outputs} frames"
                              + (f"; {info.out} is kept, marked incomplete" if info.out else ""),
                              result)
        return value
