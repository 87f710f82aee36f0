"""Qt side of the Instrument: its events as Qt signals, its long calls in worker threads.

The Instrument calls its listeners from whatever thread does the work (a stream stage, a scan, a
warm-up). :class:`InstrumentBridge` re-emits each event as a Qt signal, which Qt queues into the
GUI thread, so widgets are only ever touched there. Blocking Instrument calls run through
:meth:`InstrumentBridge.run` on a thread pool; their result or exception comes back as a signal.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

from PyQt6.QtCore import QObject, QRunnable, QThreadPool, QTimer, pyqtSignal

log = logging.getLogger("xinstrument.gui")


class _TaskSignals(QObject):
    done = pyqtSignal(object)
    failed = pyqtSignal(object)


class _Task(QRunnable):
    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__()
        self.setAutoDelete(False)
        self.fn = fn
        self.signals = _TaskSignals()

    def run(self) -> None:
        try:
            result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - every failure is shown to the operator
            log.debug("task failed:\n%s", traceback.format_exc())
            self.signals.failed.emit(exc)
        else:
            self.signals.done.emit(result)


def is_abort_text(text: str) -> bool:
    """True for a message that reports an abort the operator asked for."""
    t = text.lower().rstrip(". ")
    return "aborted" in t and ("operator" in t or "aborted after" in t or t.endswith("aborted"))


def is_abort(exc: BaseException) -> bool:
    """True for the end of an operation the operator asked for (STOP, Esc, Abort): an outcome,
    shown as such, not an error."""
    names = {c.__name__ for c in type(exc).__mro__}
    if names & {"ScanAborted", "PlanAborted", "FocusScanAborted"}:
        return True
    return is_abort_text(str(exc))


def describe_error(exc: BaseException) -> str:
    """One line for the operator: the message, and the device's error code where it has one."""
    text = str(exc) or type(exc).__name__
    code = getattr(exc, "code", None)
    if isinstance(code, int) and f"{code}" not in text:
        text = f"{text} (device error {code})"
    return text


class InstrumentBridge(QObject):
    """Instrument events as signals; worker threads for blocking calls; periodic snapshots.

    Signals carry the Instrument's payloads unchanged (see ``Instrument.subscribe``), except
    ``error``, which is a text line, and ``state``, which is the snapshot dict.
    """

    state = pyqtSignal(dict)
    frame = pyqtSignal(object)
    focus = pyqtSignal(object)
    progress = pyqtSignal(str, float)
    log_line = pyqtSignal(str)
    error = pyqtSignal(str)

    def __init__(self, instrument, poll_ms: int = 500, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.instrument = instrument
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(4)
        self._tasks: set[_Task] = set()
        self._latest_frame = None
        self._frame_lock = threading.Lock()
        self.frames_seen = 0
        self._snapshot_pending = False
        self._closed = False
        self._abort_lines: deque[float] = deque(maxlen=50)   # when "aborted" was logged
        self.log_line.connect(self._note_line)
        self._unsubscribe = instrument.subscribe(self._on_event)
        self.poll_timer = QTimer(self)
        self.poll_timer.setInterval(poll_ms)
        self.poll_timer.timeout.connect(self.refresh)
        if poll_ms > 0:
            self.poll_timer.start()

    # --- events (any thread) -------------------------------------------------------------------
    def _on_event(self, kind: str, payload: Any) -> None:
        if self._closed:
            return
        if kind == "frame":
            # only a reference is stored: the display timer picks the latest one, so a slow
            # display never holds up the pipeline and intermediate frames are simply skipped
            with self._frame_lock:
                self._latest_frame = payload
                self.frames_seen += 1
            self.frame.emit(payload)
        elif kind == "state":
            if isinstance(payload, dict):
                self.state.emit(payload)
        elif kind == "focus":
            self.focus.emit(payload)
        elif kind == "progress":
            what, fraction = payload
            self.progress.emit(str(what), float(fraction))
        elif kind == "log":
            self.log_line.emit(str(payload))
        elif kind == "error":
            text = str(payload)
            if is_abort_text(text):
                # an outcome the operator asked for: one log line (the engine's, when it
                # logged the end of its plan), never an error
                self._log_abort_once(text)
            else:
                self.error.emit(text)

    def take_latest_frame(self):
        """The newest frame since the last call (None if nothing new)."""
        with self._frame_lock:
            f, self._latest_frame = self._latest_frame, None
        return f

    # --- work in threads -----------------------------------------------------------------------
    def run(self, fn: Callable[[], Any], done: Callable[[Any], None] | None = None,
            failed: Callable[[BaseException], None] | None = None, what: str = "") -> _Task:
        """Run ``fn()`` on the pool; ``done(result)`` or ``failed(exc)`` run in the GUI thread.

        A failure is always reported on the ``error`` signal too (with ``what`` as context)."""
        task = _Task(fn)

        def _finish(_=None) -> None:
            self._tasks.discard(task)

        def _failed(exc: BaseException) -> None:
            _finish()
            if not self._closed:
                if is_abort(exc):
                    # one log line, no error banner: the operator asked for it. The engine
                    # logs how its plans end; the line is added only where nothing said it
                    self._log_abort_once(f"{what or 'operation'} aborted")
                else:
                    self.error.emit(f"{what}: {describe_error(exc)}" if what
                                    else describe_error(exc))
            if failed is not None:
                failed(exc)

        def _done(result: Any) -> None:
            _finish()
            if done is not None:
                done(result)

        task.signals.done.connect(_done)
        task.signals.failed.connect(_failed)
        self._tasks.add(task)
        self.pool.start(task)
        return task

    def _note_line(self, line: str) -> None:
        if "aborted" in line:
            self._abort_lines.append(time.monotonic())

    def _log_abort_once(self, line: str, window_s: float = 3.0) -> None:
        t0 = time.monotonic()

        def check() -> None:
            if self._closed or any(t > t0 - window_s for t in self._abort_lines):
                return
            self.log_line.emit(line)

        QTimer.singleShot(300, check)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def refresh(self) -> None:
        """Read a snapshot in a worker (it talks to the devices) and emit ``state``."""
        if self._snapshot_pending or self._closed:
            return
        self._snapshot_pending = True

        def done(snap) -> None:
            self._snapshot_pending = False
            if isinstance(snap, dict) and not self._closed:
                self.state.emit(snap)

        def failed(_exc) -> None:
            self._snapshot_pending = False

        self.run(self.instrument.snapshot, done, failed, what="status")

    def close(self, timeout_s: float = 15.0) -> None:
        self.poll_timer.stop()
        self._closed = True
        self._unsubscribe()
        self.pool.waitForDone(int(timeout_s * 1000))
