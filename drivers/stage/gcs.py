"""PI GCS 2.0 ASCII driver (C-863 / C-884 / E-873 class controllers) over serial or TCP.

Conventions of the protocol (PI GCS 2.0 command reference):

* commands and replies end with LF; a multi-line reply ends every line but the last with a
  space before the LF;
* set commands (``SVO``, ``FRF``, ``MOV``, ``MVR``, ``VEL``) answer nothing; their success is
  read with ``ERR?``, which this driver sends after every set command in the same transaction;
* queries answer ``<axis>=<value>`` per axis;
* single-byte commands: ``#5`` (0x05) motion bitmask in hex, ``#7`` (0x07) controller ready
  (``B1`` ready, ``B0`` busy), ``#24`` (0x18) stop all axes (leaves error 10).
"""
from __future__ import annotations

import logging
import math
import re
import time

from ..transport import (
    GCS_FRAMING,
    ProtocolError,
    SerialSettings,
    Transport,
    TransportError,
    TransportTimeout,
)

log = logging.getLogger(__name__)

# PI GCS error codes used by this driver (PI GCS 2.0 error code list).
GCS_ERRORS: dict[int, str] = {
    0: "no error",
    1: "parameter syntax error",
    2: "unknown command",
    3: "command too long",
    5: "unallowable move attempted on unreferenced axis, or move attempted with servo off",
    7: "position out of limits",
    8: "velocity out of limits",
    10: "controller was stopped by command",
    15: "invalid axis identifier",
    17: "parameter out of range",
}
E_STOPPED = 10

_FLOAT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_AXIS = re.compile(r"^[A-Za-z0-9_]{1,8}$")


class GcsError(RuntimeError):
    """The controller reported an error code after a command."""

    def __init__(self, message: str, code: int, command: str) -> None:
        super().__init__(message)
        self.code = code
        self.command = command


class StageLimitError(ValueError):
    """A target outside the axis limits (refused before sending)."""


class StageTimeout(TimeoutError):
    """An axis did not reach its target or finish referencing in time (it was stopped)."""


# --- parsers (pure; property-tested with random input) ------------------------------------
def _perr(device: str, command: str, lines: list[str], why: str) -> ProtocolError:
    return ProtocolError(f"{device}: reply {lines!r} to {command!r} {why}", device=device,
                         command=command, received="\n".join(lines).encode())


def parse_axis_values(lines: list[str], axes: list[str], command: str,
                      device: str = "PI GCS controller") -> dict[str, str]:
    """Parse ``axis=value`` lines; every requested axis must appear exactly once."""
    out: dict[str, str] = {}
    for line in lines:
        body = line.removesuffix(" ")
        ax, sep, val = body.partition("=")
        if not sep or not _AXIS.match(ax) or not val or val != val.strip():
            raise _perr(device, command, lines, "is not of the form axis=value")
        if ax in out:
            raise _perr(device, command, lines, f"names axis {ax!r} twice")
        out[ax] = val
    if sorted(out) != sorted(axes):
        raise _perr(device, command, lines, f"should answer axes {axes}")
    return out


def parse_float(text: str, command: str, device: str = "PI GCS controller") -> float:
    if not _FLOAT.match(text):
        raise _perr(device, command, [text], "is not a number")
    v = float(text)
    if not math.isfinite(v):
        raise _perr(device, command, [text], "is not finite")
    return v


def parse_bool(text: str, command: str, device: str = "PI GCS controller") -> bool:
    if text not in ("0", "1"):
        raise _perr(device, command, [text], "is not 0 or 1")
    return text == "1"


def parse_error_code(lines: list[str], device: str = "PI GCS controller") -> int:
    if len(lines) != 1 or not re.fullmatch(r"-?[0-9]{1,6}", lines[0]):
        raise _perr(device, "ERR?", lines, "is not an error code")
    return int(lines[0])


def parse_motion_mask(lines: list[str], device: str = "PI GCS controller") -> int:
    text = lines[0] if len(lines) == 1 else ""
    if text.lower().startswith("0x"):
        text = text[2:]
    if not re.fullmatch(r"[0-9A-Fa-f]{1,8}", text):
        raise _perr(device, "#5", lines, "is not a hexadecimal motion bitmask")
    return int(text, 16)


def parse_ready(lines: list[str], device: str = "PI GCS controller") -> bool:
    if len(lines) != 1 or lines[0] not in ("B0", "B1", "0xB0", "0xB1"):
        raise _perr(device, "#7", lines, "is not B0/B1")
    return lines[0].endswith("B1")


def _num(v: float) -> str:
    return f"{v:.9g}"


# --- controller ----------------------------------------------------------------------------
class GcsController:
    """One PI GCS controller on a serial port (115200 8N1 by default) or TCP socket URL."""

    def __init__(self, url: str, timeout_s: float = 1.0, baudrate: int = 115200,
                 retries: int = 1) -> None:
        self.name = f"PI GCS controller at {url}"
        self._transport = Transport(url, device=self.name, framing=GCS_FRAMING,
                                    settings=SerialSettings(baudrate=baudrate),
                                    timeout_s=timeout_s, retries=retries)
        self._axes: list[str] = []
        self.idn = ""

    def connect(self) -> None:
        """Open the link, identify the controller, list its axes, clear a stale error."""
        self._transport.open()
        try:
            self.idn = self.query("*IDN?")[0]
            self._axes = [ln.rstrip() for ln in self.query("SAI?")]
            if not self._axes or not all(_AXIS.match(a) for a in self._axes):
                raise _perr(self.name, "SAI?", self._axes, "is not a list of axis identifiers")
            stale = self.error()
            if stale:
                log.info("%s: cleared error %d left from before connect", self.name, stale)
        except BaseException:
            self._transport.close()
            raise

    def close(self) -> None:
        self._transport.close()

    def reconnect(self) -> None:
        self._transport.close()
        self.connect()

    def __enter__(self) -> GcsController:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def axes(self) -> list[str]:
        return list(self._axes)

    def _check_axis(self, axis_id: str) -> None:
        if axis_id not in self._axes:
            raise ValueError(f"{self.name}: no axis {axis_id!r}; the controller has "
                             f"{self._axes}")

    def error(self) -> int:
        """Read and clear the controller's error code (``ERR?``)."""
        return parse_error_code(self._transport.query("ERR?"), self.name)

    def command(self, cmd: str, *, allowed_errors: tuple[int, ...] = ()) -> None:
        """Send a set command and check ``ERR?`` in the same transaction."""
        with self._transport.transaction():
            self._transport.send(cmd)
            code = self.error()
        if code and code not in allowed_errors:
            raise GcsError(f"{self.name}: {cmd!r} failed with error {code} "
                           f"({GCS_ERRORS.get(code, 'unknown error')})", code, cmd)

    def query(self, cmd: str, timeout_s: float | None = None) -> list[str]:
        """Send a query and return its reply lines (continuation spaces stripped)."""
        with self._transport.transaction():
            try:
                lines = self._transport.query(cmd, timeout_s=timeout_s)
            except TransportTimeout as exc:
                # GCS answers a rejected query with silence: ERR? tells why
                try:
                    code = self.error()
                except TransportError:
                    raise exc from None
                if code:
                    raise GcsError(f"{self.name}: {cmd!r} got no reply; controller error "
                                   f"{code} ({GCS_ERRORS.get(code, 'unknown error')})",
                                   code, cmd) from exc
                raise
        return [ln.removesuffix(" ") for ln in lines]

    def query_axes(self, cmd: str, axes: list[str]) -> dict[str, str]:
        for a in axes:
            self._check_axis(a)
        lines = self.query(f"{cmd} {' '.join(axes)}")
        return parse_axis_values(lines, axes, cmd, self.name)

    def motion_mask(self) -> int:
        """``#5``: bit i set while axis i (in :attr:`axes` order) moves."""
        return parse_motion_mask(self._transport.query(b"\x05", terminate=False), self.name)

    def ready(self) -> bool:
        """``#7``: True when the controller is ready for commands."""
        return parse_ready(self._transport.query(b"\x07", terminate=False), self.name)

    def stop_all(self) -> None:
        """``#24``: stop every axis now; the expected error 10 is read and cleared."""
        with self._transport.transaction():
            self._transport.send(b"\x18", terminate=False)
            code = self.error()
        if code not in (0, E_STOPPED):
            raise GcsError(f"{self.name}: stop left error {code} "
                           f"({GCS_ERRORS.get(code, 'unknown error')})", code, "#24")


class GcsAxis:
    """One axis of a GCS controller in a physical unit.

    Parameters
    ----------
    controller : GcsController
    axis_id : str
        GCS axis identifier ("1", "Z", ...).
    unit : str
        Unit of positions in this API ("um" for the focus axis, "deg" for rotation).
    soft_limits : (float, float), optional
        Site travel limits in ``unit``; the effective limits are their intersection with the
        controller's ``TMN?``/``TMX?``.
    scale : float
        ``unit`` per controller unit (1000 for a controller configured in mm driven in um).
    velocity_limits : (float, float), optional
        Plausible velocity range in ``unit``/s (from the stage data sheet). Expected move
        times use the controller's ``VEL?`` only inside this range: a controller that reports
        1e-30 cannot make a move wait for 1e14 s. Velocities set outside it are refused.
    max_wait_s : float
        Upper bound of every wait (move, reference), whatever the expected time says.
    """

    SETTLE_S = 2.0    # settling margin added to every expected move time

    def __init__(self, controller: GcsController, axis_id: str, unit: str = "um",
                 soft_limits: tuple[float, float] | None = None, scale: float = 1.0,
                 velocity_limits: tuple[float, float] | None = None,
                 max_wait_s: float = 120.0) -> None:
        self.ctl = controller
        self.axis_id = str(axis_id)
        self.unit = unit
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"axis {axis_id}: scale must be a positive number, got {scale!r}")
        self.scale = float(scale)
        if soft_limits is not None:
            lo, hi = (float(v) for v in soft_limits)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"axis {axis_id}: soft_limits must be (min, max) with "
                                 f"min < max, got {soft_limits!r}")
            soft_limits = (lo, hi)
        self.soft_limits = soft_limits
        if velocity_limits is not None:
            vlo, vhi = (float(v) for v in velocity_limits)
            if not (math.isfinite(vlo) and math.isfinite(vhi) and 0 < vlo < vhi):
                raise ValueError(f"axis {axis_id}: velocity_limits must be (min, max) with "
                                 f"0 < min < max, got {velocity_limits!r}")
            velocity_limits = (vlo, vhi)
        self.velocity_limits = velocity_limits
        if not (isinstance(max_wait_s, (int, float)) and math.isfinite(max_wait_s)
                and max_wait_s > 0):
            raise ValueError(f"axis {axis_id}: max_wait_s must be a positive number of "
                             f"seconds, got {max_wait_s!r}")
        self.max_wait_s = float(max_wait_s)
        self._hw_limits: tuple[float, float] | None = None
        self.name = f"axis {self.axis_id} of {controller.name}"

    # --- readbacks
    def _value(self, cmd: str) -> str:
        return self.ctl.query_axes(cmd, [self.axis_id])[self.axis_id]

    @property
    def position(self) -> float:
        """Current position in ``unit``; a readback far outside the controller's travel range
        (by more than the range itself, once ``TMN?``/``TMX?`` are known) is a protocol
        error, not a position."""
        raw = self._value("POS?")
        pos = parse_float(raw, "POS?", self.name) * self.scale
        if self._hw_limits is not None:
            lo, hi = self._hw_limits
            span = hi - lo
            if not lo - span <= pos <= hi + span:
                raise ProtocolError(f"{self.name}: position readback {raw!r} ({pos:g} "
                                    f"{self.unit}) is implausible for a travel of {lo:g}..{hi:g} "
                                    f"{self.unit}", device=self.name, command="POS?",
                                    received=raw.encode())
        return pos

    @property
    def target(self) -> float:
        return parse_float(self._value("MOV?"), "MOV?", self.name) * self.scale

    @property
    def on_target(self) -> bool:
        return parse_bool(self._value("ONT?"), "ONT?", self.name)

    @property
    def referenced(self) -> bool:
        return parse_bool(self._value("FRF?"), "FRF?", self.name)

    @property
    def servo(self) -> bool:
        return parse_bool(self._value("SVO?"), "SVO?", self.name)

    @servo.setter
    def servo(self, on: bool) -> None:
        self.ctl.command(f"SVO {self.axis_id} {int(bool(on))}")

    @property
    def is_moving(self) -> bool:
        self.ctl._check_axis(self.axis_id)
        return bool(self.ctl.motion_mask() >> self.ctl.axes.index(self.axis_id) & 1)

    @property
    def limits(self) -> tuple[float, float]:
        """Effective travel (min, max) in ``unit``: controller limits within soft limits."""
        if self._hw_limits is None:
            lo = parse_float(self._value("TMN?"), "TMN?", self.name) * self.scale
            hi = parse_float(self._value("TMX?"), "TMX?", self.name) * self.scale
            self._hw_limits = (lo, hi)
        lo, hi = self._hw_limits
        if self.soft_limits is not None:
            lo, hi = max(lo, self.soft_limits[0]), min(hi, self.soft_limits[1])
        return lo, hi

    @property
    def velocity(self) -> float:
        """Velocity in ``unit``/s."""
        return parse_float(self._value("VEL?"), "VEL?", self.name) * self.scale

    @velocity.setter
    def velocity(self, value: float) -> None:
        v = self._finite("velocity", value)
        if v <= 0:
            raise ValueError(f"{self.name}: velocity must be > 0 {self.unit}/s, got {value!r}")
        if self.velocity_limits is not None and not \
                self.velocity_limits[0] <= v <= self.velocity_limits[1]:
            lo, hi = self.velocity_limits
            raise StageLimitError(f"{self.name}: velocity {v:g} {self.unit}/s outside the "
                                  f"configured range {lo:g}..{hi:g} {self.unit}/s")
        self.ctl.command(f"VEL {self.axis_id} {_num(v / self.scale)}")

    # --- motion
    def _finite(self, what: str, value: float) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{self.name}: {what} must be a number, got {value!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"{self.name}: {what} must be finite, got {value!r}")
        return v

    def _check_target(self, target: float) -> None:
        lo, hi = self.limits
        if target < lo:
            raise StageLimitError(f"{self.name}: target {target:g} {self.unit} below the lower "
                                  f"limit {lo:g} {self.unit}")
        if target > hi:
            raise StageLimitError(f"{self.name}: target {target:g} {self.unit} above the upper "
                                  f"limit {hi:g} {self.unit}")

    def reference(self, timeout_s: float | None = None) -> None:
        """Servo on, reference move (``FRF``), wait until referenced (at most
        :attr:`max_wait_s`)."""
        timeout_s = self.max_wait_s if timeout_s is None else min(timeout_s, self.max_wait_s)
        if not self.servo:
            self.servo = True
        self.ctl.command(f"FRF {self.axis_id}")
        deadline = time.monotonic() + timeout_s
        while not self.referenced:
            if time.monotonic() > deadline:
                self.stop()
                raise StageTimeout(f"{self.name}: reference move not finished after "
                                   f"{timeout_s} s (stopped)")
            time.sleep(0.02)

    def move_to(self, target: float, wait: bool = True, timeout_s: float | None = None) -> None:
        """Absolute move in ``unit``; refused before sending if outside :attr:`limits`."""
        t = self._finite("target", target)
        self._check_target(t)
        start = self.position if wait else None
        self.ctl.command(f"MOV {self.axis_id} {_num(t / self.scale)}")
        if wait:
            assert start is not None
            self.wait_on_target(timeout_s if timeout_s is not None
                                else self._expected_s(abs(t - start)))

    def move_by(self, delta: float, wait: bool = True, timeout_s: float | None = None) -> None:
        """Relative move from the present target; refused if it would leave :attr:`limits`."""
        d = self._finite("delta", delta)
        self._check_target(self.target + d)
        self.ctl.command(f"MVR {self.axis_id} {_num(d / self.scale)}")
        if wait:
            self.wait_on_target(timeout_s if timeout_s is not None
                                else self._expected_s(abs(d)))

    def _expected_s(self, distance: float) -> float:
        """Twice the nominal travel time plus settling, bounded by :attr:`max_wait_s`; the
        controller's velocity counts only inside the configured plausible range."""
        v = self.velocity
        if self.velocity_limits is not None:
            lo, hi = self.velocity_limits
            if not lo <= v <= hi:
                log.warning("%s: controller reports velocity %g %s/s, outside the configured "
                            "%g..%g; timing the move with %g", self.name, v, self.unit, lo, hi,
                            min(max(v, lo), hi))
                v = min(max(v, lo), hi)
        if not v > 0:
            return self.max_wait_s
        return min(2.0 * distance / v + self.SETTLE_S, self.max_wait_s)

    def wait_on_target(self, timeout_s: float, poll_s: float = 0.02) -> None:
        """Poll ``ONT?`` until on target; on timeout stop the axis and raise StageTimeout."""
        timeout_s = min(float(timeout_s), self.max_wait_s)
        deadline = time.monotonic() + timeout_s
        while not self.on_target:
            if time.monotonic() > deadline:
                pos = self.position
                self.stop()
                raise StageTimeout(f"{self.name}: not on target after {timeout_s:.3g} s "
                                   f"(at {pos:g} {self.unit}); axis stopped")
            time.sleep(poll_s)

    def stop(self) -> None:
        """Stop motion now (``#24``, which stops every axis of the controller)."""
        self.ctl.stop_all()
