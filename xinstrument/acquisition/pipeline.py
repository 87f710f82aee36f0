"""Frame pipeline: camera -> averaging -> correction -> restoration -> sinks.

Each stage runs in its own thread and hands frames on through a bounded queue, so numpy/torch
work in one stage overlaps the others (they release the GIL). Lossless sinks (HDF5) apply
back-pressure: when they fall behind, the queues fill, the reader stops draining the camera and
the camera's own buffer absorbs the burst; if that overflows, the camera counts skipped frames
and the pipeline reports them (frame-number gaps). Lossy sinks (live view, EPICS image) never
block: when their queue is full the oldest waiting frame is dropped and counted.

Any exception in a stage stops the whole run; :meth:`AcquisitionPipeline.wait` re-raises it as
:class:`PipelineError` naming the stage. A camera that stops delivering raises
:class:`CameraStalled` after ``frame_timeout_s``. Sinks are closed in every case, with
``complete=False`` and the reason when the run did not finish normally, so everything written
before a fault stays readable.
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np

from drivers.camera.base import BufferMode, Camera
from drivers.camera.base import Frame as CameraFrame

from .averaging import FrameAverager, average_frames
from .frame import Frame, ReferenceSet

__all__ = [
    "AcquisitionPipeline",
    "CallbackSink",
    "CameraStalled",
    "HDF5Sink",
    "LiveView",
    "MemorySink",
    "PipelineError",
    "PipelineStats",
    "ProcessedFrame",
    "Sink",
    "StageStats",
]

_END = object()  # end-of-stream marker passed down the queues on a graceful finish


class PipelineError(RuntimeError):
    """A stage failed or stalled; ``stage`` names it and ``__cause__`` is the original error."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"acquisition stopped: stage '{stage}' {message}")
        self.stage = stage


class CameraStalled(RuntimeError):
    """The camera delivered no frame within the timeout (or stopped acquiring by itself)."""


# The pipeline's output is the product's one Frame type (kept under its former name too).
ProcessedFrame = Frame


@runtime_checkable
class Sink(Protocol):
    """Receives every ProcessedFrame (lossless) or the latest ones (lossy), in its own thread."""

    name: str
    lossless: bool

    def write(self, item: Frame) -> None: ...

    def close(self, complete: bool, reason: str | None) -> None: ...


# ----------------------------------------------------------------------------------- sinks
class MemorySink:
    """Keeps every frame in a list (tests, short scripted acquisitions)."""

    def __init__(self, name: str = "memory", lossless: bool = True,
                 delay_s: float = 0.0) -> None:
        self.name, self.lossless, self.delay_s = name, lossless, float(delay_s)
        self.items: list[ProcessedFrame] = []
        self.closed: tuple[bool, str | None] | None = None

    def write(self, item: ProcessedFrame) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        self.items.append(item)

    def close(self, complete: bool, reason: str | None) -> None:
        self.closed = (complete, reason)


class CallbackSink:
    """Calls ``fn(item)`` for each frame, e.g. to post it to an EPICS image PV. Lossy by
    default: a slow consumer sees the latest frames, the rest are counted as dropped."""

    def __init__(self, fn: Callable[[ProcessedFrame], None], name: str = "callback",
                 lossless: bool = False) -> None:
        if not callable(fn):
            raise TypeError(f"CallbackSink needs a callable, got {type(fn).__name__}")
        self.fn, self.name, self.lossless = fn, name, bool(lossless)

    def write(self, item: ProcessedFrame) -> None:
        self.fn(item)

    def close(self, complete: bool, reason: str | None) -> None:
        pass


class LiveView:
    """Ring buffer holding only the latest ``capacity`` frames for a display.

    Thread-safe: the pipeline writes, a GUI timer calls :meth:`latest` or :meth:`wait_for_new`.
    """

    lossless = False

    def __init__(self, capacity: int = 2, name: str = "live") -> None:
        if capacity < 1:
            raise ValueError(f"live-view capacity must be >= 1, got {capacity}")
        self.name = name
        self._ring: collections.deque[ProcessedFrame] = collections.deque(maxlen=capacity)
        self._cond = threading.Condition()
        self._count = 0
        self.closed = False

    @property
    def frames_received(self) -> int:
        return self._count

    def write(self, item: ProcessedFrame) -> None:
        with self._cond:
            self._ring.append(item)
            self._count += 1
            self._cond.notify_all()

    def latest(self) -> ProcessedFrame | None:
        with self._cond:
            return self._ring[-1] if self._ring else None

    def frames(self) -> list[ProcessedFrame]:
        with self._cond:
            return list(self._ring)

    def wait_for_new(self, after_count: int, timeout_s: float) -> ProcessedFrame | None:
        """Block until more than ``after_count`` frames have arrived; None on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._count <= after_count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed:
                    return None
                self._cond.wait(remaining)
            return self._ring[-1]

    def close(self, complete: bool, reason: str | None) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class HDF5Sink:
    """Records every frame through the recording sink (:class:`xinstrument.storage.sink.
    RecordingSink`, the one writer of scan files) for a pipeline run outside the engine
    (benchmarks, scripts that build their own pipeline).

    The file is laid out on the first frame, when its shape, whether it is corrected, the
    restoration scale and the fidelity report's shape are known. ``references``: (frame,
    image_key, frames_averaged) of the dark (2) and flat (1) that corrected the frames, for a
    corrector that is not a ReferenceSet. ``raw_dtype``: storage dtype of the camera counts
    (default: float32 for averages, the camera's dtype for single frames). Lossless: the
    pipeline back-pressures instead of dropping.
    """

    lossless = True

    def __init__(self, path: str | Path, metadata: dict | None = None, image_key: int = 0,
                 compression: str | None = "default", overwrite: bool = False,
                 swmr: bool = True, name: str = "hdf5", references=(),
                 raw_dtype: str | None = None) -> None:
        if image_key not in (0, 1, 2):
            raise ValueError(f"image_key must be 0 (projection), 1 (flat) or 2 (dark), got "
                             f"{image_key!r}")
        self.path = Path(path)
        self.metadata = dict(metadata or {})
        self.image_key, self.compression, self.overwrite, self.swmr = (
            int(image_key), compression, bool(overwrite), bool(swmr))
        self.name = name
        self.raw_dtype = raw_dtype
        refs = {int(k): (np.asarray(f, np.float32), int(n or 1)) for f, k, n in references
                if f is not None}
        self.references = (ReferenceSet(refs[2][0], refs[1][0], dark_frames_averaged=refs[2][1],
                                        flat_frames_averaged=refs[1][1])
                           if 1 in refs and 2 in refs else None)
        self.sink = None
        self.frames_written = 0
        self.bytes_written = 0

    def _open(self, item: Frame) -> None:
        # storage sits beside acquisition and imports its Frame: imported here so neither
        # package needs the other half-initialised
        from ..storage.sink import RecordingSink
        fid = item.fidelity if item.restored is not None else None
        layout = None
        if fid is not None and hasattr(fid, "tile_chi2"):
            from ..restoration.fidelity import hdf5_extras_layout
            layout = hdf5_extras_layout(fid.tile_chi2.shape)
        raw = item.measured_adu
        dtype = self.raw_dtype or ("float32" if raw.dtype.kind == "f" else raw.dtype)
        self.sink = RecordingSink(
            self.path, tuple(raw.shape), raw_dtype=dtype, corrected=item.corrected,
            restored_scale=(item.restored.shape[0] // raw.shape[0]
                            if item.restored is not None else None),
            restored_pixel_size_um=item.restored_pixel_size_um, fidelity_layout=layout,
            metadata=self.metadata, overwrite=self.overwrite, swmr=self.swmr,
            compression=self.compression)

    def write(self, item: Frame) -> None:
        if self.sink is None:
            self._open(item)
        if item.corrected and item.references is None:
            if self.references is None:
                raise ValueError("corrected frames need their references: pass references= "
                                 "(dark and flat) or correct with a ReferenceSet")
            item.references = self.references
        if item.image_key == 0:
            item.image_key = self.image_key
        self.sink.write(item)
        self.bytes_written = self.sink.bytes_written
        self.frames_written += 1

    @property
    def writer(self):
        """The ScanWriter underneath (None before the first frame)."""
        return None if self.sink is None else self.sink.writer

    def close(self, complete: bool, reason: str | None) -> None:
        if self.sink is not None and not self.sink.closed:
            self.sink.close(complete=complete, reason=reason)


# ----------------------------------------------------------------------------------- stats
@dataclass
class StageStats:
    name: str
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    dropped_at_pause: int = 0     # camera frames past the boundary a pause stopped at
    bytes_out: int = 0
    busy_s: float = 0.0
    elapsed_s: float = 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames_out / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_out / 1e6 / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class PipelineStats:
    state: str                                   # idle, running, completed, stopped, aborted, failed
    elapsed_s: float
    stages: dict[str, StageStats]
    frame_number_gaps: int                       # frames missing from the device counter
    camera_skipped: int                          # the camera's own overflow count
    latency_s: dict[str, dict[str, float]]       # per sink: mean, p50, p95, max (frame -> sink)
    error: str | None = None
    # live restoration (acquisition.live_restoration): frames restored in time, frames
    # passed on unrestored because the restorer was busy, restorations that came too late for
    # the recording (sent to live views only)
    frames_restored: int = 0
    frames_not_restored: int = 0
    restored_late: int = 0

    @property
    def restored_per_s(self) -> float:
        return self.frames_restored / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def camera_dropped(self) -> int:
        return max(self.frame_number_gaps, self.camera_skipped)

    def table(self) -> str:
        header = (f"{'stage':<14}{'in':>8}{'out':>8}{'dropped':>9}{'frames/s':>10}"
                  f"{'MB/s':>10}{'busy %':>8}")
        lines = [header]
        for s in self.stages.values():
            busy = 100.0 * s.busy_s / s.elapsed_s if s.elapsed_s > 0 else 0.0
            lines.append(f"{s.name:<14}{s.frames_in:>8}{s.frames_out:>8}{s.dropped:>9}"
                         f"{s.frames_per_s:>10.1f}{s.mb_per_s:>10.1f}{busy:>8.0f}")
        for name, lat in self.latency_s.items():
            if lat:
                lines.append(f"latency camera->{name}: mean {1e3 * lat['mean']:.1f} ms, "
                             f"p95 {1e3 * lat['p95']:.1f} ms, max {1e3 * lat['max']:.1f} ms")
        if "restore" in self.stages:
            lines.append(f"restoration: {self.frames_restored} of {self.stages['restore'].frames_in} "
                         f"frames restored ({self.restored_per_s:.1f} frames/s), "
                         f"{self.frames_not_restored} recorded unrestored (restorer busy), "
                         f"{self.restored_late} late restorations to live views only")
        lines.append(f"camera: {self.frame_number_gaps} frame-number gaps, "
                     f"{self.camera_skipped} skipped by the camera buffer; state {self.state}"
                     + (f"; error: {self.error}" if self.error else ""))
        return "\n".join(lines)


class _Stage:
    """Counters of one stage; written only by its own thread."""

    def __init__(self, name: str) -> None:
        self.stats = StageStats(name)
        self.busy_since: float | None = None   # monotonic time the current call began
        self.thread: threading.Thread | None = None
        self.latency: collections.deque[float] = collections.deque(maxlen=4096)


# -------------------------------------------------------------------------------- pipeline
class AcquisitionPipeline:
    """Camera -> averaging -> correction -> restoration -> sinks, one thread per stage.

    Parameters
    ----------
    camera : a drivers.camera Camera, configured (exposure, ROI, binning) but not started
    n_average : raw frames per output frame (>= 1)
    reject_outliers : outlier-rejecting mean (zingers); needs n_average >= 3
    corrector : callable raw-average -> corrected frame (e.g. FlatFieldCorrector), or None
    restorer : callable frame -> restored frame, or None. Its ``method`` / ``profile``
        attributes (if any) are stored with the restored frames. It runs in its own worker and
        never holds up the camera: when it falls behind (more than ``restore_backlog_frames``
        waiting) the waiting frames are recorded unrestored and the newest is restored next; a
        restoration with ``restore_max_lag_frames`` newer frames behind it is recorded without
        it (and shown late in live views). Lossy sinks get restored frames only.
    sinks : HDF5Sink, LiveView, CallbackSink, ... (anything with name, lossless, write, close)
    n_outputs : stop after this many output frames; None runs until stop()/abort()
    queue_frames : capacity of each inter-stage queue
    camera_buffer_frames : camera FIFO depth (absorbs bursts while sinks back-pressure)
    frame_timeout_s : no camera frame for this long is an error (default 2 s + 3 exposures)
    stage_timeout_s : a single stage call (e.g. a sink write) taking longer is reported as a
        stall and aborts the run; None disables the watchdog
    emit_partial : on stop(), output the incomplete last group (its frames_averaged says how
        many frames it holds) instead of discarding acquired frames
    """

    def __init__(self, camera: Camera, *, n_average: int = 1, reject_outliers: bool = False,
                 z_threshold: float = 5.0,
                 corrector: Callable[[np.ndarray], np.ndarray] | None = None,
                 restorer: Callable[[np.ndarray], np.ndarray] | None = None,
                 sinks: Iterable[Sink] = (), n_outputs: int | None = None,
                 queue_frames: int = 4, camera_buffer_frames: int = 32,
                 frame_timeout_s: float | None = None, stage_timeout_s: float | None = 60.0,
                 emit_partial: bool = True, image_key: int = 0,
                 restore_backlog_frames: int = 2, restore_max_lag_frames: int = 32) -> None:
        # validates n_average / reject_outliers with a clear message
        self._averager = FrameAverager(n_average, reject_outliers, z_threshold)
        if n_outputs is not None and (int(n_outputs) != n_outputs or n_outputs < 1):
            raise ValueError(f"n_outputs must be an integer >= 1 or None, got {n_outputs!r}")
        if queue_frames < 1 or camera_buffer_frames < 1:
            raise ValueError("queue_frames and camera_buffer_frames must be >= 1")
        for fn, what in ((corrector, "corrector"), (restorer, "restorer")):
            if fn is not None and not callable(fn):
                raise TypeError(f"{what} must be callable frame -> frame, got {type(fn).__name__}")
        self.sinks = list(sinks)
        names = [s.name for s in self.sinks]
        for s in self.sinks:
            if not all(hasattr(s, a) for a in ("name", "lossless", "write", "close")):
                raise TypeError(f"{s!r} is not a sink (needs name, lossless, write, close)")
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique, got {names}")
        self.camera = camera
        self.n_average = int(n_average)
        self.corrector, self.restorer = corrector, restorer
        self.n_outputs = None if n_outputs is None else int(n_outputs)
        self.queue_frames = int(queue_frames)
        self.camera_buffer_frames = int(camera_buffer_frames)
        self.frame_timeout_s = (float(frame_timeout_s) if frame_timeout_s is not None
                                else 2.0 + 3.0 * float(camera.exposure_s))
        self.stage_timeout_s = stage_timeout_s
        self.emit_partial = bool(emit_partial)
        # restoration never holds up the camera: see _run_restore
        for name, v in (("restore_backlog_frames", restore_backlog_frames),
                        ("restore_max_lag_frames", restore_max_lag_frames)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if restore_max_lag_frames <= restore_backlog_frames:
            raise ValueError("restore_max_lag_frames must exceed restore_backlog_frames")
        self.restore_backlog_frames = restore_backlog_frames
        self.restore_max_lag_frames = restore_max_lag_frames
        self._live_restoration = None
        if image_key not in (0, 1, 2) or isinstance(image_key, bool):
            raise ValueError(f"image_key must be 0 (projection), 1 (flat) or 2 (dark), got "
                             f"{image_key!r}")
        self.image_key = int(image_key)    # what the output frames are, for the sinks
        self._pause_req = threading.Event()
        self._resume_evt = threading.Event()
        self._paused = threading.Event()

        self._lock = threading.Lock()
        self._started = False
        self._stop_req = threading.Event()
        self._abort = threading.Event()
        self._done = threading.Event()
        self._error: tuple[str, BaseException] | None = None
        self._end_state = "idle"
        self._t0 = self._t1 = 0.0
        self._gaps = 0
        self._camera_skipped = 0
        self._stages: dict[str, _Stage] = {}
        self._abort_reason = "aborted"
        self._fail_seen: float | None = None

    # ------------------------------------------------------------------ control
    @property
    def running(self) -> bool:
        return self._started and not self._done.is_set()

    def start(self) -> None:
        """Arm the camera and start all stage threads. A second call is a no-op; a finished
        pipeline cannot be restarted (make a new one)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        self._end_state = "running"
        names = ["camera", "average"]
        if self.corrector is not None:
            names.append("correct")
        if self.restorer is not None:
            names.append("restore")
        names += [f"sink:{s.name}" for s in self.sinks]
        self._stages = {n: _Stage(n) for n in names}
        map_stages = [n for n in names if n != "camera" and not n.startswith("sink:")]
        queues = {n: queue.Queue(maxsize=self.queue_frames) for n in map_stages}
        self._sink_queues = {s.name: queue.Queue(maxsize=self.queue_frames) for s in self.sinks}
        self._t0 = time.monotonic()
        try:
            self.camera.setup(BufferMode.FIFO, buffer_frames=self.camera_buffer_frames)
            self.camera.start()
        except BaseException:
            self._end_state = "failed"
            self._done.set()
            self._close_sinks_now(False, "camera failed to start")
            raise
        workers: list[tuple[str, Callable[[], None]]] = [
            ("camera", lambda: self._read_camera(queues["average"]))]
        for i, name in enumerate(map_stages):
            out_q = queues[map_stages[i + 1]] if i + 1 < len(map_stages) else None
            workers.append((name, lambda n=name, q=out_q: (
                self._run_restore(queues[n]) if n == "restore" else self._run_map(n, queues[n], q))))
        for s in self.sinks:
            workers.append((f"sink:{s.name}", lambda s=s: self._run_sink(s)))
        for name, target in workers:
            st = self._stages[name]
            st.thread = threading.Thread(target=self._guard, args=(name, target),
                                         name=f"acq-{name}", daemon=True)
        for name, _ in workers:
            self._stages[name].thread.start()
        threading.Thread(target=self._supervise, name="acq-supervisor", daemon=True).start()

    def pause(self) -> None:
        """Hold at the next averaged-frame boundary: the camera stops after the last frame of
        the current group (frames it took beyond it are discarded, not counted as drops) and
        restarts on :meth:`resume`."""
        self._resume_evt.clear()
        self._pause_req.set()

    def resume(self) -> None:
        self._pause_req.clear()
        self._resume_evt.set()

    @property
    def paused(self) -> bool:
        """True while the camera is held at a frame boundary."""
        return self._paused.is_set()

    def stop(self) -> None:
        """Stop acquiring; frames already taken from the camera still flow to the sinks."""
        self._stop_req.set()

    def abort(self, reason: str = "aborted by the operator") -> None:
        """Stop at once; frames still in the processing stages are discarded (those already
        queued to a lossless sink are written), sinks are closed as incomplete.
        Idempotent, and a no-op after the run has finished."""
        if self._done.is_set() or self._abort.is_set():
            return
        with self._lock:
            if self._error is None:
                self._abort_reason = reason
        self._abort.set()
        self._resume_evt.set()
        self._stop_camera()

    def wait(self, timeout_s: float | None = None) -> PipelineStats:
        """Wait for the run to end and return its statistics.

        Raises PipelineError (naming the stage) if a stage failed or stalled, TimeoutError if
        the run is still going after ``timeout_s``.
        """
        if not self._started:
            raise RuntimeError("pipeline was not started")
        if not self._done.wait(timeout_s):
            raise TimeoutError(f"acquisition still running after {timeout_s} s "
                               f"(n_outputs={self.n_outputs}); call stop() or abort()")
        if self._error is not None:
            stage, exc = self._error
            raise PipelineError(stage, f"failed: {type(exc).__name__}: {exc}") from exc
        return self.stats()

    def run(self, timeout_s: float | None = None) -> PipelineStats:
        """start() + wait(); on an exception in the caller (e.g. KeyboardInterrupt) abort."""
        self.start()
        try:
            return self.wait(timeout_s)
        except BaseException:
            self.abort("interrupted")
            raise

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort(f"{exc_type.__name__} in the controlling code")
        else:
            self.stop()
        self._done.wait(30.0)

    def stats(self) -> PipelineStats:
        now = self._t1 if self._done.is_set() else time.monotonic()
        elapsed = max(0.0, now - self._t0) if self._started else 0.0
        stages = {}
        for name, st in self._stages.items():
            s = StageStats(**{**st.stats.__dict__, "elapsed_s": elapsed})
            stages[name] = s
        latency = {}
        for s in self.sinks:
            samples = np.array(self._stages[f"sink:{s.name}"].latency) if self._stages else []
            latency[s.name] = ({} if len(samples) == 0 else {
                "mean": float(samples.mean()), "p50": float(np.percentile(samples, 50)),
                "p95": float(np.percentile(samples, 95)), "max": float(samples.max())})
        err = None
        if self._error is not None:
            err = f"{self._error[0]}: {type(self._error[1]).__name__}: {self._error[1]}"
        live = self._live_restoration
        restored = {} if live is None else {
            "frames_restored": live.frames_restored,
            "frames_not_restored": live.frames_not_restored, "restored_late": live.restored_late}
        return PipelineStats(self._end_state, elapsed, stages, self._gaps, self._camera_skipped,
                             latency, err, **restored)

    # ------------------------------------------------------------------ internals
    def _stop_camera(self) -> None:
        try:
            self.camera.stop()
        except Exception as exc:  # noqa: BLE001 - recorded, the run is ending anyway
            self._fail("camera", exc)

    def _fail(self, stage: str, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = (stage, exc)
        self._abort.set()

    def _guard(self, name: str, target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - every stage error ends the run, reported
            self._fail(name, exc)
            self._stop_camera()

    def _supervise(self) -> None:
        """Joins the workers, watches for stalled stages, closes the sinks' fate."""
        threads = [st.thread for st in self._stages.values()]
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.05)
                if not t.is_alive():
                    continue
                break
            if self.stage_timeout_s is not None and self._error is None:
                now = time.monotonic()
                for name, st in self._stages.items():
                    since = st.busy_since
                    if since is not None and now - since > self.stage_timeout_s:
                        self._fail(name, TimeoutError(
                            f"stalled: one call has been running for {now - since:.1f} s "
                            f"(stage_timeout_s={self.stage_timeout_s})"))
                        self._stop_camera()
            if self._error is not None and self._stalled_past_grace():
                break  # a stuck thread cannot be killed; report instead of hanging
        self._t1 = time.monotonic()
        if self._error is not None:
            self._end_state = "failed"
        elif self._abort.is_set():
            self._end_state = "aborted"
        elif self._stop_req.is_set():
            self._end_state = "stopped"
        else:
            self._end_state = "completed"
        self._done.set()

    def _stalled_past_grace(self) -> bool:
        grace_s = 5.0
        if self._fail_seen is None:
            self._fail_seen = time.monotonic()
        return time.monotonic() - self._fail_seen > grace_s

    def _put(self, q: queue.Queue, item: Any) -> bool:
        """Blocking put that gives up when the run is aborted (back-pressure, not a hang)."""
        while not self._abort.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue) -> Any:
        while not self._abort.is_set():
            try:
                return q.get(timeout=0.05)
            except queue.Full:  # pragma: no cover - get never raises Full
                continue
            except queue.Empty:
                continue
        return None

    # -- camera reader
    def _read_camera(self, out_q: queue.Queue) -> None:
        st = self._stages["camera"]
        cam = self.camera
        target = None if self.n_outputs is None else self.n_outputs * self.n_average
        last_number: int | None = None
        last_frame_t = time.monotonic()
        stopped = False
        try:
            while not self._abort.is_set():
                if target is not None and st.stats.frames_out >= target:
                    break
                if self._stop_req.is_set() and not stopped:
                    cam.stop()   # frames already in the camera buffer are still read below
                    stopped = True
                if stopped:
                    pending = cam.read_new()
                    if not pending:
                        break
                elif cam.wait_for_frame(0.05):
                    pending = cam.read_new()
                else:
                    idle = time.monotonic() - last_frame_t
                    if self._abort.is_set():
                        break
                    if not cam.status().running and not self._stop_req.is_set():
                        raise CameraStalled(
                            f"{cam.name} stopped acquiring by itself after "
                            f"{st.stats.frames_in} frames")
                    if idle > self.frame_timeout_s:
                        raise CameraStalled(
                            f"{cam.name} delivered no frame for {idle:.1f} s "
                            f"(frame_timeout_s={self.frame_timeout_s:.1f}) after "
                            f"{st.stats.frames_in} frames")
                    continue
                last_frame_t = time.monotonic()
                at_boundary = False
                for frame in pending:
                    if at_boundary:
                        st.stats.dropped_at_pause = st.stats.dropped_at_pause + 1
                        continue
                    st.stats.frames_in += 1
                    if last_number is not None and frame.frame_number > last_number + 1:
                        self._gaps += frame.frame_number - last_number - 1
                    last_number = frame.frame_number
                    if target is not None and st.stats.frames_out >= target:
                        continue  # surplus read in the same batch after the last needed frame
                    if not self._put(out_q, frame):
                        return
                    st.stats.frames_out += 1
                    st.stats.bytes_out += frame.data.nbytes
                    if self._pause_req.is_set() and st.stats.frames_out % self.n_average == 0:
                        at_boundary = True
                self._camera_skipped = cam.status().skipped
                if at_boundary and not stopped:
                    self._hold(cam, st)
                    last_number = None       # numbering across a pause is not a gap
                    last_frame_t = time.monotonic()
                st.stats.dropped = max(self._gaps, self._camera_skipped)
        finally:
            try:
                cam.stop()
                self._camera_skipped = max(self._camera_skipped, cam.status().skipped)
            finally:
                st.stats.dropped = max(self._gaps, self._camera_skipped)
        self._put(out_q, _END)

    def _hold(self, cam: Camera, st: _Stage) -> None:
        """Paused at a group boundary: stop the camera, wait for resume (or abort/stop)."""
        cam.stop()
        st.stats.dropped_at_pause += len(cam.read_new())
        self._camera_skipped = max(self._camera_skipped, cam.status().skipped)
        self._paused.set()
        try:
            while not (self._resume_evt.wait(0.05) or self._abort.is_set()
                       or self._stop_req.is_set()):
                pass
        finally:
            self._paused.clear()
        if not (self._abort.is_set() or self._stop_req.is_set()):
            cam.start()

    # -- averaging / correction / restoration
    def _run_map(self, name: str, in_q: queue.Queue, out_q: queue.Queue | None) -> None:
        st = self._stages[name]
        group: list[CameraFrame] = []
        index = 0
        while True:
            item = self._get(in_q)
            if item is None:
                return  # aborted
            if item is _END:
                if name == "average" and group and self.emit_partial:
                    out = self._finish_group(group, partial=True, index=index)
                    self._emit(st, out, out_q)
                self._emit(st, _END, out_q)
                return
            st.stats.frames_in += 1
            st.busy_since = time.monotonic()
            if name == "average":
                frame: CameraFrame = item
                group.append(frame)
                avg = self._averager.add(frame.data)
                result = None
                if avg is not None:
                    result = self._make_output(group, avg, index)
                    index += 1
                    group = []
            elif name == "correct":
                result = item
                result.raw = item.data
                result.data = np.asarray(self.corrector(item.data), dtype=np.float32)
                result.corrected = True
                if isinstance(self.corrector, ReferenceSet):
                    result.references = self.corrector
            else:  # restore (the live path is _run_restore)
                result = self._restore_one(item)
            st.stats.busy_s += time.monotonic() - st.busy_since
            st.busy_since = None
            if result is not None and not self._emit(st, result, out_q):
                return

    def _restore_one(self, result: Frame) -> Frame:
        result.restored = np.asarray(self.restorer(result.data), dtype=np.float32)
        result.restoration_method = str(getattr(self.restorer, "method",
                                                type(self.restorer).__name__))
        profile = getattr(self.restorer, "profile", "")
        result.restoration_profile = str(getattr(profile, "name", profile))
        result.restoration_scale = int(getattr(self.restorer, "scale", 1) or 1)
        result.restored_pixel_size_um = getattr(self.restorer, "output_pixel_size_um", None)
        check = getattr(self.restorer, "check_fidelity", None)
        if check is not None:     # fills result.fidelity; may re-restore with a fallback
            check(result)
        return result

    def _run_restore(self, in_q: queue.Queue) -> None:
        """Restoration off the camera's path: frames keep being taken from the queue while a
        worker thread restores (:class:`.live_restoration.LiveRestoration`). While the restorer keeps up
        every frame is restored; when it falls behind, waiting frames go on unrestored and the
        newest is restored next. Lossless sinks (the recording) get every frame in order, with
        its restoration when it has one; lossy sinks (live view, events) get restored frames."""
        from .live_restoration import LiveRestoration
        st = self._stages["restore"]

        def busy(since: float | None) -> None:      # the watchdog sees a stuck restorer
            if since is None and st.busy_since is not None:
                st.stats.busy_s += time.monotonic() - st.busy_since
            st.busy_since = since

        live = LiveRestoration(self._restore_one, backlog_frames=self.restore_backlog_frames,
                               max_lag_frames=self.restore_max_lag_frames, on_busy=busy)
        self._live_restoration = live
        ending = False
        try:
            while not self._abort.is_set():
                for item, route in live.poll():
                    if not self._emit(st, item, None, route):
                        return
                st.stats.dropped = live.frames_not_restored    # passed on without restoration
                if ending and live.finished:
                    self._emit(st, _END, None)
                    return
                if ending or not live.accepting:
                    live.wait(0.05)
                    continue
                try:
                    item = in_q.get(timeout=0.05 if live.idle else 0.002)
                except queue.Empty:
                    continue
                if item is _END:
                    ending = True
                else:
                    st.stats.frames_in += 1
                    live.push(item)
        finally:
            live.close()

    def _finish_group(self, group: list[CameraFrame], partial: bool, index: int) -> ProcessedFrame:
        """Average an incomplete last group (on stop) so no acquired frame is discarded."""
        reject = self._averager.reject_outliers and len(group) >= 3
        avg = average_frames([f.data for f in group], reject_outliers=reject,
                             z_threshold=self._averager.z_threshold)
        self._averager.reset()
        return self._make_output(group, avg, index)

    def _make_output(self, group: list[CameraFrame], avg: np.ndarray, index: int) -> ProcessedFrame:
        last = group[-1]
        return Frame(index=index, data=avg, first_frame_number=group[0].frame_number,
                     last_frame_number=last.frame_number, frames_averaged=len(group),
                     frame_numbers=[f.frame_number for f in group],
                     timestamp_s=last.timestamp_s, exposure_s=last.exposure_s,
                     image_key=self.image_key, metadata=dict(last.metadata))

    def _emit(self, st: _Stage, item: Any, out_q: queue.Queue | None, route: str = "all") -> bool:
        """Pass ``item`` on; at the last stage ``route`` picks the sinks: "all", "lossless"
        (recording only: a frame the busy restorer skipped) or "lossy" (live views only)."""
        if out_q is not None:
            ok = self._put(out_q, item)
            if ok and item is not _END:
                st.stats.frames_out += 1
                st.stats.bytes_out += item.data.nbytes
            return ok
        # last processing stage: fan out to the sinks
        for s in self.sinks:
            q = self._sink_queues[s.name]
            if item is not _END and route != "all" and s.lossless != (route == "lossless"):
                continue
            if item is _END or s.lossless:
                if not self._put(q, item):
                    return False
                continue
            while True:  # lossy: replace the oldest waiting frame instead of blocking
                try:
                    q.put_nowait(item)
                    break
                except queue.Full:
                    try:
                        q.get_nowait()
                        self._stages[f"sink:{s.name}"].stats.dropped += 1
                    except queue.Empty:
                        pass
        if item is not _END and route != "lossy":
            st.stats.frames_out += 1
            st.stats.bytes_out += item.data.nbytes
        return True

    # -- sinks
    def _run_sink(self, sink: Sink) -> None:
        st = self._stages[f"sink:{sink.name}"]
        q = self._sink_queues[sink.name]
        complete, reason = False, None
        try:
            while True:
                item = self._get(q)
                if item is None:
                    # aborted or another stage failed: frames already handed to a lossless
                    # sink (at most queue_frames) are still written, so nothing done is lost
                    if sink.lossless:
                        self._drain_into(sink, st, q)
                    return
                if item is _END:
                    complete = True
                    return
                self._write_one(sink, st, item)
        except BaseException as exc:
            reason = f"sink '{sink.name}' failed: {type(exc).__name__}: {exc}"
            raise
        finally:
            if reason is None and not complete:
                reason = self._incomplete_reason()
            try:
                sink.close(complete, None if complete else reason)
            except Exception as exc:  # noqa: BLE001 - a failed close is a stage failure too
                self._fail(f"sink:{sink.name}", exc)

    def _write_one(self, sink: Sink, st: _Stage, item: ProcessedFrame) -> None:
        st.stats.frames_in += 1
        st.busy_since = time.monotonic()
        sink.write(item)
        st.stats.busy_s += time.monotonic() - st.busy_since
        st.busy_since = None
        st.latency.append(time.time() - item.timestamp_s)
        st.stats.frames_out += 1
        st.stats.bytes_out += item.data.nbytes + (
            item.restored.nbytes if item.restored is not None else 0)

    def _drain_into(self, sink: Sink, st: _Stage, q: queue.Queue) -> None:
        while True:
            try:
                item = q.get_nowait()
            except queue.Empty:
                return
            if item is not _END:
                self._write_one(sink, st, item)

    def _incomplete_reason(self) -> str:
        if self._error is not None:
            stage, exc = self._error
            return f"stage '{stage}' failed: {type(exc).__name__}: {exc}"
        return self._abort_reason

    def _close_sinks_now(self, complete: bool, reason: str) -> None:
        for s in self.sinks:
            try:
                s.close(complete, reason)
            except Exception:  # noqa: BLE001, S110 - the start failure is what gets raised
                pass
