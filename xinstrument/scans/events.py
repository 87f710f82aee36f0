"""Typed signals of the engine: what clients (GUI, IOC, CLI, scripts) subscribe to.

A :class:`Signal` is declared with the types of its arguments and checks them when emitted, so
a client never has to guess what a payload is. Callbacks run in the emitting thread (the
engine's or the pipeline's); a GUI re-posts them to its own thread (Qt queued signals). A
callback that raises is logged and never breaks the acquisition.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..acquisition.frame import Frame

__all__ = ["EngineEvents", "PlanInfo", "PlanResult", "Progress", "Signal"]

log = logging.getLogger("xinstrument.events")


class Signal:
    """A typed signal: ``connect(fn)``, ``disconnect(fn)``, ``emit(*args)``.

    ``Signal(Frame)`` emits one Frame; ``Signal(float, float)`` two floats; ``Signal()`` none.
    ``connect`` returns a function that disconnects.
    """

    def __init__(self, *types: type, name: str = "") -> None:
        self.types = types
        self.name = name
        self._slots: list[Callable[..., Any]] = []
        self._lock = threading.Lock()

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = self.name or name

    def connect(self, fn: Callable[..., Any]) -> Callable[[], None]:
        if not callable(fn):
            raise TypeError(f"signal {self.name}: {fn!r} is not callable")
        with self._lock:
            self._slots.append(fn)
        return lambda: self.disconnect(fn)

    def disconnect(self, fn: Callable[..., Any]) -> None:
        with self._lock:
            if fn in self._slots:
                self._slots.remove(fn)

    def emit(self, *args: Any) -> None:
        if len(args) != len(self.types) or not all(
                a is None or isinstance(a, t) for a, t in zip(args, self.types)):
            raise TypeError(f"signal {self.name} takes ({', '.join(t.__name__ for t in self.types)})"
                            f", got ({', '.join(type(a).__name__ for a in args)})")
        with self._lock:
            slots = list(self._slots)
        for fn in slots:
            try:
                fn(*args)
            except Exception:  # a broken client must not break the instrument
                log.exception("callback of signal %s failed", self.name)

    def __len__(self) -> int:
        return len(self._slots)


@dataclass(frozen=True)
class PlanInfo:
    """Which plan runs: its kind, a one-line description and its output file (or None)."""

    kind: str
    description: str
    out: str | None = None


@dataclass(frozen=True)
class Progress:
    """Where a plan stands: ``fraction`` of its camera frames, the phase it is in."""

    kind: str                  # plan kind ("tomosynthesis", "focus", "series", "warm-up", ...)
    fraction: float            # 0..1
    phase: str = ""            # "darks", "flats", "projections", "paused", ...
    frames_done: int = 0
    frames_total: int = 0
    time_left_s: float = float("nan")
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class PlanResult:
    """How a plan ended: ``state`` "finished", "aborted" or "failed"; ``value`` is the plan's
    own result (frames, a focus curve, a TomoResult...); ``path`` the file it wrote."""

    info: PlanInfo
    state: str
    value: Any = None
    path: str | None = None
    reason: str | None = None
    elapsed_s: float = 0.0
    frames: int = 0


class EngineEvents:
    """The instrument's signals (``Instrument.events``)."""

    plan_started = Signal(PlanInfo)
    frame_ready = Signal(Frame)
    progress = Signal(Progress)
    focus_point = Signal(float, float)            # position_um, metric value
    plan_finished = Signal(PlanResult)
    plan_failed = Signal(PlanResult)
    plan_aborted = Signal(PlanResult)
    state_changed = Signal(dict)                  # Instrument.snapshot()
    log = Signal(str)

    def __init__(self) -> None:
        # one Signal object per instance (class attributes only declare them)
        for name, sig in vars(type(self)).items():
            if isinstance(sig, Signal):
                setattr(self, name, Signal(*sig.types, name=name))
