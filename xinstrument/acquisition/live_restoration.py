"""Non-blocking restoration of a live frame stream: the policy of the acquisition pipeline's
restoration stage, kept free of torch so the pipeline imports nothing heavy for it.

The restorer runs in a worker thread; the pipeline's thread keeps taking frames from the camera
side and decides, frame by frame, where each goes (see :class:`LiveRestoration`).
"""
from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["LiveRestoration"]


@dataclasses.dataclass
class _Held:
    item: Any
    state: str = "new"            # new, busy, done, skip
    restored_item: Any = None


class LiveRestoration:
    """Non-blocking restoration of a live frame stream: the policy of the pipeline's
    restoration stage, independent of the camera and the sinks.

    ``push(item)`` never waits for the restorer; ``poll()`` returns the decisions made since
    the last call, in order, as ``(item, route)`` with route ``"all"`` (restored in time: every
    sink), ``"lossless"`` (not restored: the recording gets the frame without a restoration)
    or ``"lossy"`` (a late restoration of a frame already passed on: live displays only).
    Items are objects with a ``data`` array; the worker thread restores a shallow copy
    (``dataclasses.replace`` for dataclasses) through ``restore_item(copy)``, which fills it.

    Every frame is restored while at most ``backlog_frames`` frames wait; when more wait, the
    restorer has fallen behind: all waiting frames but the newest go on unrestored and the
    newest is restored next (latest first). A frame whose restoration has ``max_lag_frames``
    newer frames waiting behind it goes on unrestored, and its restoration, when done, goes
    to the lossy route only. The first restoration (warm-up, compilation) is always waited for;
    meanwhile ``accepting`` is False once ``max_lag_frames`` frames wait, so the caller stops
    taking frames (the camera buffer absorbs them) rather than holding them all in memory.
    An exception in ``restore_item`` is re-raised by the next ``poll()``.
    """

    def __init__(self, restore_item: Callable[[Any], Any], backlog_frames: int = 2,
                 max_lag_frames: int = 32, on_busy: Callable[[float | None], None] | None = None) -> None:
        if not callable(restore_item):
            raise TypeError("restore_item must be callable")
        for name, v in (("backlog_frames", backlog_frames), ("max_lag_frames", max_lag_frames)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if max_lag_frames <= backlog_frames:
            raise ValueError(f"max_lag_frames ({max_lag_frames}) must exceed backlog_frames "
                             f"({backlog_frames})")
        self._restore_item = restore_item
        self.backlog_frames = backlog_frames
        self.max_lag_frames = max_lag_frames
        self._on_busy = on_busy
        self._held: deque[_Held] = deque()
        self._busy: _Held | None = None
        self._abandoned = False       # the frame being restored was already passed on
        self._first_done = False
        self._cond = threading.Condition()
        self._job: _Held | None = None
        self._result: tuple[_Held, Any, BaseException | None] | None = None
        self._closed = False
        self.frames_in = 0
        self.frames_restored = 0
        self.frames_not_restored = 0
        self.restored_late = 0
        self._thread = threading.Thread(target=self._work, name="live-restoration", daemon=True)
        self._thread.start()

    # -- worker
    def _work(self) -> None:
        while True:
            with self._cond:
                while self._job is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._job
            item = job.item
            cp = dataclasses.replace(item) if dataclasses.is_dataclass(item) else copy.copy(item)
            err: BaseException | None = None
            if self._on_busy is not None:
                self._on_busy(time.monotonic())
            try:
                out = self._restore_item(cp)
                cp = cp if out is None else out
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                err = exc
            finally:
                if self._on_busy is not None:
                    self._on_busy(None)
            with self._cond:
                self._job = None
                self._result = (job, cp, err)
                self._cond.notify_all()

    # -- caller side
    @property
    def idle(self) -> bool:
        return self._busy is None

    @property
    def pending(self) -> int:
        """Frames taken in and not yet passed on."""
        return len(self._held)

    @property
    def accepting(self) -> bool:
        return self._first_done or len(self._held) < self.max_lag_frames

    def push(self, item: Any) -> None:
        if self._closed:
            raise RuntimeError("live restoration is closed")
        self._held.append(_Held(item))
        self.frames_in += 1

    def wait(self, timeout_s: float) -> None:
        """Block until the worker has a result or ``timeout_s`` passes."""
        with self._cond:
            if self._result is None and self._busy is not None:
                self._cond.wait(timeout_s)

    def poll(self) -> list[tuple[Any, str]]:
        out: list[tuple[Any, str]] = []
        with self._cond:
            res, self._result = self._result, None
        if res is not None:
            entry, cp, err = res
            self._busy = None
            if err is not None:
                raise err
            self._first_done = True
            if self._abandoned:
                self._abandoned = False
                self.restored_late += 1
                out.append((cp, "lossy"))
            else:
                entry.state, entry.restored_item = "done", cp
                self.frames_restored += 1
        new = [e for e in self._held if e.state == "new"]
        if len(new) > self.backlog_frames:      # fallen behind: only the newest will be restored
            for e in new[:-1]:
                e.state = "skip"
            new = new[-1:]
        if self._busy is None and new:
            pick = new[0]
            pick.state = "busy"
            self._busy = pick
            with self._cond:
                self._job = pick
                self._cond.notify_all()
        self._pass_on(out)
        if (self._first_done and self._held and self._held[0].state == "busy"
                and len(self._held) > self.max_lag_frames):
            e = self._held.popleft()
            self._abandoned = True
            self.frames_not_restored += 1
            out.append((e.item, "lossless"))
            self._pass_on(out)
        return out

    def _pass_on(self, out: list[tuple[Any, str]]) -> None:
        while self._held and self._held[0].state in ("done", "skip"):
            e = self._held.popleft()
            if e.state == "done":
                out.append((e.restored_item, "all"))
            else:
                self.frames_not_restored += 1
                out.append((e.item, "lossless"))

    @property
    def finished(self) -> bool:
        """Nothing held and nothing being restored."""
        return not self._held and self._busy is None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
