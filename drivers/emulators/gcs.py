"""PI GCS 2.0 motion controller emulator (ASCII, LF framing).

Implements the subset a focus/rotation bench uses, with PI's reply conventions: queries answer
``<axis>=<value>`` per line, multi-line replies end every line but the last with a space before
LF, set commands answer nothing and leave an error code for ``ERR?``, single-byte commands
``#5`` (motion bitmask, hex), ``#7`` (controller ready: ``B1``) and ``#24`` (stop all, sets
error 10). Errors for unparseable queries give no reply, as the controllers do, and are read with
``ERR?``.

Error codes are PI GCS numbers (PI GCS 2.0 error code list): 1 parameter syntax, 2 unknown
command, 5 move without reference or with servo off, 7 position out of limits, 10 controller
stopped by command, 15 invalid axis identifier, 17 parameter out of range.

The physical axis position moves at the configured velocity; :meth:`GcsEmulator.position` is
the true position now (what the twin uses for the focus distance and the rotation angle).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

from ._server import EmulatorBase

E_SYNTAX, E_UNKNOWN, E_NO_REF_OR_SERVO, E_OUT_OF_LIMITS = 1, 2, 5, 7
E_STOPPED, E_INVALID_AXIS, E_OUT_OF_RANGE = 10, 15, 17

IDN = "(c)2024 Physik Instrumente (PI) GmbH & Co. KG, C-863 emulator, 0, 1.0.0"
GCS_SYNTAX_VERSION = "2.0"

_FLOAT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


@dataclass
class AxisSpec:
    """One emulated axis: travel range and velocity in its unit (um or deg)."""

    unit: str
    min: float
    max: float
    velocity_per_s: float
    initial: float = 0.0
    referenced: bool = False
    reference_position: float | None = None   # where FRF lands; default: 0 clipped into range

    def __post_init__(self) -> None:
        if not self.min < self.max:
            raise ValueError(f"axis travel min {self.min} must be < max {self.max}")
        if not self.velocity_per_s > 0:
            raise ValueError(f"axis velocity must be > 0, got {self.velocity_per_s}")
        if not self.min <= self.initial <= self.max:
            raise ValueError(f"axis initial position {self.initial} outside "
                             f"{self.min}..{self.max}")


class _Axis:
    def __init__(self, spec: AxisSpec, now: float) -> None:
        self.spec = spec
        self.servo = False
        self.referenced = spec.referenced
        self.velocity = spec.velocity_per_s
        self.p0 = spec.initial
        self.target = spec.initial
        self.t0 = now
        self.referencing = False

    def pos(self, now: float) -> float:
        d = self.target - self.p0
        travel = self.velocity * max(0.0, now - self.t0)
        if travel >= abs(d):
            return self.target
        return self.p0 + (travel if d > 0 else -travel)

    def moving(self, now: float) -> bool:
        return self.pos(now) != self.target

    def start(self, target: float, now: float) -> None:
        self.p0 = self.pos(now)
        self.target = target
        self.t0 = now

    def halt(self, now: float) -> None:
        self.p0 = self.target = self.pos(now)
        self.t0 = now
        self.referencing = False


class GcsEmulator(EmulatorBase):
    """Emulated PI GCS controller with the given axes (ids as GCS axis names, e.g. "1", "Z")."""

    name = "PI GCS emulator"
    eol = b"\n"
    control_bytes = frozenset({5, 7, 24})

    def __init__(self, axes: dict[str, AxisSpec]) -> None:
        super().__init__()
        if not axes:
            raise ValueError(f"{self.name}: at least one axis is needed")
        now = time.monotonic()
        for ax in axes:
            if not re.fullmatch(r"[A-Za-z0-9_]{1,8}", ax):
                raise ValueError(f"{self.name}: axis id {ax!r} is not a GCS axis identifier")
        self._axes = {ax: _Axis(spec, now) for ax, spec in axes.items()}
        self._error = 0
        self.commands_received: list[str] = []

    # --- physical state
    def position(self, axis_id: str) -> float:
        with self._lock:
            return self._axis(axis_id).pos(time.monotonic())

    def is_moving(self, axis_id: str) -> bool:
        with self._lock:
            return self._axis(axis_id).moving(time.monotonic())

    def _axis(self, axis_id: str) -> _Axis:
        try:
            return self._axes[axis_id]
        except KeyError:
            raise KeyError(f"{self.name}: no axis {axis_id!r}; axes: {list(self._axes)}") \
                from None

    @property
    def last_error(self) -> int:
        with self._lock:
            return self._error

    # --- protocol
    def _set_error(self, code: int) -> None:
        if self._error == 0:     # GCS keeps the first error until ERR? reads it
            self._error = code

    def _handle(self, command: bytes) -> bytes | None:
        with self._lock:
            now = time.monotonic()
            self._finish_references(now)
            if len(command) == 1 and command[0] in self.control_bytes:
                self.commands_received.append(f"#{command[0]}")
                return self._control(command[0], now)
            try:
                text = command.decode("ascii").strip()
            except UnicodeDecodeError:
                self._set_error(E_UNKNOWN)
                return None
            self.commands_received.append(text)
            parts = text.split()
            if not parts:
                return None
            cmd, args = parts[0].upper(), parts[1:]
            handler = _COMMANDS.get(cmd)
            if handler is None:
                self._set_error(E_UNKNOWN)
                return None
            lines = handler(self, args, now)
            if lines is None:
                return None
            return (" \n".join(lines) + "\n").encode("ascii")

    def _control(self, byte: int, now: float) -> bytes | None:
        if byte == 5:
            mask = 0
            for i, ax in enumerate(self._axes.values()):
                if ax.moving(now):
                    mask |= 1 << i
            return f"{mask:X}\n".encode()
        if byte == 7:
            return b"B1\n"
        for ax in self._axes.values():   # 24: stop all axes
            ax.halt(now)
        self._set_error(E_STOPPED)
        return None

    def _finish_references(self, now: float) -> None:
        for ax in self._axes.values():
            if ax.referencing and not ax.moving(now):
                ax.referencing = False
                ax.referenced = True

    def _axes_args(self, args: list[str]) -> list[str] | None:
        names = args or list(self._axes)
        if any(a not in self._axes for a in names):
            self._set_error(E_INVALID_AXIS)
            return None
        return names

    def _pairs(self, args: list[str]) -> list[tuple[str, str]] | None:
        if not args or len(args) % 2:
            self._set_error(E_SYNTAX)
            return None
        pairs = list(zip(args[::2], args[1::2]))
        if any(a not in self._axes for a, _ in pairs):
            self._set_error(E_INVALID_AXIS)
            return None
        if any(not _FLOAT.match(v) for _, v in pairs):
            self._set_error(E_SYNTAX)
            return None
        return pairs

    def _query(self, args, fmt) -> list[str] | None:
        names = self._axes_args(args)
        if names is None:
            return None
        return [f"{a}={fmt(self._axes[a])}" for a in names]

    # set commands (no reply)
    def _svo(self, args, now):
        pairs = self._pairs(args)
        if pairs is None:
            return
        if any(v not in ("0", "1") for _, v in pairs):
            self._set_error(E_OUT_OF_RANGE)
            return
        for a, v in pairs:
            ax = self._axes[a]
            ax.servo = v == "1"
            if not ax.servo:
                ax.halt(now)
        return

    def _frf(self, args, now):
        names = self._axes_args(args)
        if names is None:
            return
        for a in names:
            ax = self._axes[a]
            if not ax.servo:
                self._set_error(E_NO_REF_OR_SERVO)
                return
        for a in names:
            ax = self._axes[a]
            ref = ax.spec.reference_position
            if ref is None:
                ref = min(max(0.0, ax.spec.min), ax.spec.max)
            ax.referenced = False
            ax.referencing = True
            ax.start(ref, now)
        return

    def _move(self, args, now, relative: bool):
        pairs = self._pairs(args)
        if pairs is None:
            return
        plan = []
        for a, v in pairs:
            ax = self._axes[a]
            if not ax.servo or not ax.referenced:
                self._set_error(E_NO_REF_OR_SERVO)
                return
            target = (ax.target + float(v)) if relative else float(v)
            if not ax.spec.min <= target <= ax.spec.max:
                self._set_error(E_OUT_OF_LIMITS)
                return
            plan.append((ax, target))
        for ax, target in plan:
            ax.start(target, now)
        return

    def _mov(self, args, now):
        return self._move(args, now, relative=False)

    def _mvr(self, args, now):
        return self._move(args, now, relative=True)

    def _vel(self, args, now):
        pairs = self._pairs(args)
        if pairs is None:
            return
        if any(not 0 < float(v) <= self._axes[a].spec.velocity_per_s * 10 for a, v in pairs):
            self._set_error(E_OUT_OF_RANGE)
            return
        for a, v in pairs:
            ax = self._axes[a]
            ax.start(ax.target, now)      # re-base the ongoing move at the new speed
            ax.velocity = float(v)
        return

    def _stp(self, args, now):
        return self._control(24, now)

    def _hlt(self, args, now):
        names = self._axes_args(args)
        if names is None:
            return
        for a in names:
            self._axes[a].halt(now)
        self._set_error(E_STOPPED)
        return

    # queries
    def _pos_q(self, args, now):
        return self._query(args, lambda ax: f"{ax.pos(now):.6f}")

    def _mov_q(self, args, now):
        return self._query(args, lambda ax: f"{ax.target:.6f}")

    def _ont_q(self, args, now):
        return self._query(args, lambda ax: int(not ax.moving(now)))

    def _svo_q(self, args, now):
        return self._query(args, lambda ax: int(ax.servo))

    def _frf_q(self, args, now):
        return self._query(args, lambda ax: int(ax.referenced))

    def _tmn_q(self, args, now):
        return self._query(args, lambda ax: f"{ax.spec.min:.6f}")

    def _tmx_q(self, args, now):
        return self._query(args, lambda ax: f"{ax.spec.max:.6f}")

    def _vel_q(self, args, now):
        return self._query(args, lambda ax: f"{ax.velocity:.6f}")

    def _err_q(self, args, now):
        code, self._error = self._error, 0
        return [str(code)]

    def _sai_q(self, args, now):
        return list(self._axes)

    def _idn_q(self, args, now):
        return [IDN]

    def _csv_q(self, args, now):
        # GCS syntax version: PIPython asks it first to choose its GCS 2.0 command set
        return [GCS_SYNTAX_VERSION]


_COMMANDS = {
    "SVO": GcsEmulator._svo, "FRF": GcsEmulator._frf, "MOV": GcsEmulator._mov,
    "MVR": GcsEmulator._mvr, "VEL": GcsEmulator._vel, "STP": GcsEmulator._stp,
    "HLT": GcsEmulator._hlt,
    "POS?": GcsEmulator._pos_q, "MOV?": GcsEmulator._mov_q, "ONT?": GcsEmulator._ont_q,
    "SVO?": GcsEmulator._svo_q, "FRF?": GcsEmulator._frf_q, "TMN?": GcsEmulator._tmn_q,
    "TMX?": GcsEmulator._tmx_q, "VEL?": GcsEmulator._vel_q, "ERR?": GcsEmulator._err_q,
    "SAI?": GcsEmulator._sai_q, "*IDN?": GcsEmulator._idn_q, "CSV?": GcsEmulator._csv_q,
}
