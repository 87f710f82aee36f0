"""Driver for Hamamatsu microfocus X-ray sources (L9181 / L12161 class controllers).

Safety rules implemented here:

* every setpoint (kV, uA and their power in the present focus mode) is checked against the
  model table *before* anything is sent; the error names the violated limit;
* X-rays are switched off on a driver fault (timeout, garbage, lost connection), on
  :meth:`HamamatsuTube.close`, at interpreter exit (``atexit``) and on SIGTERM/SIGINT (the
  handlers chain to whatever was installed before);
* a heartbeat thread polls the state and outputs (``SAR``, or ``STS`` + ``SHV``/``SCU``) while
  connected, which keeps the controller's communication watchdog fed and detects a dead link
  or an implausible output within one heartbeat period;
* every link or protocol violation (timeout, over-long line, flood, garbage, a value outside
  its range such as ``SWE 250``) sends ``XOF`` at once, before any retry;
* readbacks are checked for plausibility: outside the model's envelope at any time, or far
  from the setpoint once the output has had ``ramp_allowance_s`` to settle, is a
  :class:`TubeFault` (X-rays off, reason logged).
"""
from __future__ import annotations

import atexit
import logging
import math
import os
import re
import signal
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from ..transport import CR_FRAMING, ProtocolError, SerialSettings, Transport, TransportError
from .tables import COMMAND_ERRORS, DEVICE_ERRORS, Dialect, TubeLimitError, TubeLimits, TubeState
from .tables import dialect as get_dialect
from .tables import model as get_model

log = logging.getLogger(__name__)


class TubeError(RuntimeError):
    """The tube refused a command or is in a state that does not allow it."""


class TubeFault(TubeError):
    """An implausible readback or a device fault: X-rays were switched off."""


class TubeCommandError(TubeError):
    """The controller answered ``ERR n``."""

    def __init__(self, message: str, code: int, command: str) -> None:
        super().__init__(message)
        self.code = code
        self.command = command


@dataclass
class TubeStatus:
    state: TubeState
    voltage_kv: float               # actual output
    current_ua: float               # actual output
    voltage_setpoint_kv: float
    current_setpoint_ua: float
    focus_mode: int
    interlock_closed: bool
    warmup_progress: float | None   # 0..1; None where the dialect cannot report it
    error_code: int | None          # first latched device fault, None when clear
    error_text: str | None

    @property
    def power_w(self) -> float:
        return self.voltage_kv * self.current_ua * 1e-3


_ERR_RE = re.compile(r"^ERR ([0-9]{1,3})$")
_INT_RE = re.compile(r"^-?[0-9]{1,7}$")


def parse_reply(dialect: Dialect, command: str, line: str, device: str = "X-ray tube"
                ) -> list[str]:
    """Split a reply to ``command`` into its value fields.

    Raises :class:`TubeCommandError` for an ``ERR n`` reply and :class:`ProtocolError` for
    anything that is not a well-formed reply to this command.
    """
    if line.startswith(dialect.error_prefix):
        m = _ERR_RE.match(line)
        if m is None:
            raise ProtocolError(f"{device}: malformed error reply to {command!r}: {line!r}",
                                device=device, command=command, received=line.encode())
        code = int(m.group(1))
        text = COMMAND_ERRORS.get(code, "unknown error code")
        raise TubeCommandError(f"{device}: {command!r} refused with ERR {code} ({text})",
                               code, command)
    if command == "STS" and dialect.state_words is not None:
        if line not in dialect.state_words:
            raise ProtocolError(f"{device}: unknown status word in reply to STS: {line!r}",
                                device=device, command=command, received=line.encode())
        return [line]
    if command == "SIN" and dialect.interlock_words is not None:
        if line not in dialect.interlock_words:
            raise ProtocolError(f"{device}: unknown interlock reply to SIN: {line!r}",
                                device=device, command=command, received=line.encode())
        return [line]
    tokens = line.split(" ")
    if tokens[0] != command or any(t == "" for t in tokens):
        raise ProtocolError(f"{device}: reply {line!r} does not answer {command!r}",
                            device=device, command=command, received=line.encode())
    return tokens[1:]


def parse_ints(fields: list[str], n: int | None, command: str, line: str,
               device: str = "X-ray tube") -> list[int]:
    """Integers of a reply; ``n`` is the exact count expected (None: one or more)."""
    if (n is not None and len(fields) != n) or (n is None and not fields) or \
            not all(_INT_RE.match(f) for f in fields):
        want = f"{n} integer(s)" if n is not None else "integers"
        raise ProtocolError(f"{device}: reply {line!r} to {command!r} should carry {want}",
                            device=device, command=command, received=line.encode())
    return [int(f) for f in fields]


def parse_state(dialect: Dialect, fields: list[str], line: str, device: str = "X-ray tube"
                ) -> TubeState:
    if dialect.state_words is not None:
        return dialect.state_words[fields[0]]
    (code,) = parse_ints(fields[:1], 1, "STS", line, device)
    try:
        return TubeState(code)
    except ValueError:
        raise ProtocolError(f"{device}: unknown state code {code} in {line!r}", device=device,
                            command="STS", received=line.encode()) from None


# --- process-exit safety -------------------------------------------------------------------
_LIVE: weakref.WeakSet[HamamatsuTube] = weakref.WeakSet()
_HOOK_LOCK = threading.Lock()
_HOOKS_INSTALLED = False
_PREV_HANDLERS: dict[int, object] = {}


def all_xray_off() -> None:
    """Switch off every connected tube of this process (exit and signal path)."""
    for tube in list(_LIVE):
        tube._emergency_off("process exit")


def _on_signal(signum: int, frame) -> None:
    all_xray_off()
    prev = _PREV_HANDLERS.get(signum, signal.SIG_DFL)
    if callable(prev):
        prev(signum, frame)
    elif prev == signal.SIG_IGN:
        return
    elif signum == signal.SIGINT:
        raise KeyboardInterrupt
    else:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_exit_hooks() -> None:
    global _HOOKS_INSTALLED
    with _HOOK_LOCK:
        if _HOOKS_INSTALLED:
            return
        atexit.register(all_xray_off)
        # signal handlers can only be installed from the main thread
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                prev = signal.getsignal(signum)
                if prev is _on_signal:
                    continue
                _PREV_HANDLERS[signum] = prev
                signal.signal(signum, _on_signal)
        else:
            log.warning("X-ray tube connected from a non-main thread: no SIGTERM/SIGINT hook "
                        "installed (atexit and the controller watchdog still apply)")
        _HOOKS_INSTALLED = True


# --- driver --------------------------------------------------------------------------------
class HamamatsuTube:
    """Hamamatsu microfocus X-ray source on a serial port or pyserial URL.

    Parameters
    ----------
    url : str
        ``/dev/ttyUSB0``, ``COM3`` or ``socket://host:port``.
    dialect : str
        Firmware dialect, an entry of :data:`drivers.xray.tables.DIALECTS`.
    model : str
        Tube model, an entry of :data:`drivers.xray.tables.MODELS` (checked against ``TYP``).
    timeout_s : float
        Reply timeout per command.
    watchdog_s : float or None
        Controller watchdog period the heartbeat must beat; the heartbeat polls ``STS`` at a
        third of it (at most every second). None: heartbeat every second.
    limits : TubeLimits, optional
        Site limits narrower than the model's (they must lie inside the model envelope).
    heartbeat : bool
        Run the heartbeat thread (disable only to test the controller-side watchdog).
    baudrate : int, optional
        Serial line speed (default: the dialect's, 38400 numeric / 9600 text).
    ramp_allowance_s : float
        Time after X-ray on or a setpoint change during which the output may still be ramping;
        afterwards a readback far from the setpoint is a fault.
    """

    # Readback tolerances: a supply regulates kV to within about a percent and the emission
    # current to a few percent; these margins only catch the implausible, not drift.
    KV_TOLERANCE = (2.0, 0.05)      # (absolute kV, fraction of the setpoint), the larger applies
    UA_TOLERANCE = (5.0, 0.10)
    ENVELOPE_MARGIN = 1.05          # readbacks above 105 % of the model maximum are impossible
    EMERGENCY_CONFIRM_S = 0.5       # how long the emergency XOF waits for its echo

    def __new__(cls, url: str = "", dialect: str = "numeric", *args, **kwargs):
        # the text dialect's command set differs in shape (text replies, aging, remote key):
        # its own class, chosen by the dialect table
        if cls is HamamatsuTube and get_dialect(dialect).replies is not None:
            cls = HamamatsuTextTube
        return super().__new__(cls)

    def __init__(self, url: str, dialect: str = "numeric", model: str = "L9181-02",
                 timeout_s: float = 1.0, watchdog_s: float | None = 5.0,
                 limits: TubeLimits | None = None, heartbeat: bool = True,
                 retries: int = 1, baudrate: int | None = None,
                 ramp_allowance_s: float = 5.0) -> None:
        self.dialect = get_dialect(dialect)
        self.model = get_model(model)
        self.name = f"X-ray tube {self.model.name} at {url}"
        self._limits = self._validate_limits(limits) if limits is not None else self.model.limits
        if watchdog_s is not None and not (watchdog_s > 0):
            raise ValueError(f"{self.name}: watchdog_s must be > 0 or None, got {watchdog_s!r}")
        self.watchdog_s = watchdog_s
        self.heartbeat_s = min(1.0, watchdog_s / 3.0) if watchdog_s else 1.0
        if not (ramp_allowance_s >= 0 and math.isfinite(ramp_allowance_s)):
            raise ValueError(f"{self.name}: ramp_allowance_s must be >= 0, got "
                             f"{ramp_allowance_s!r}")
        self.ramp_allowance_s = float(ramp_allowance_s)
        self._transport = Transport(url, device=self.name, framing=CR_FRAMING,
                                    settings=SerialSettings(
                                        baudrate=baudrate or self.dialect.baudrate),
                                    timeout_s=timeout_s, retries=retries,
                                    on_fault=self._on_link_violation)
        self._heartbeat_enabled = heartbeat
        self._hb_thread: threading.Thread | None = None
        self._hb_stop = threading.Event()
        self._connected = False
        self._fault: BaseException | None = None
        self._kv_set = self.model.kv_min
        self._ua_set = self.model.ua_min
        self._focus = min(self.model.focus_modes)
        self._in_emergency = threading.Lock()
        self._changed_at = time.monotonic()     # last XON or setpoint change (ramp start)
        self._last_off: tuple[float, bool] | None = None   # (time, confirmed) of emergency XOF

    def _validate_limits(self, lim: TubeLimits) -> TubeLimits:
        m = self.model.limits
        ok = (m.kv_min <= lim.kv_min <= lim.kv_max <= m.kv_max and
              m.ua_min <= lim.ua_min <= lim.ua_max <= m.ua_max and
              all(k in m.max_power_w_by_focus and 0 < p <= m.max_power_w_by_focus[k]
                  for k, p in lim.max_power_w_by_focus.items()) and lim.max_power_w_by_focus)
        if not ok:
            raise TubeLimitError(f"{self.name}: configured limits {lim} are not inside the "
                                 f"{self.model.name} envelope {m}")
        return lim

    # --- connection
    def connect(self) -> None:
        """Open the link, check the model, read the setpoints, start the heartbeat."""
        self._transport.open()
        try:
            typ = self._fields("TYP")
            if " ".join(typ) != self.model.name:
                raise TubeError(f"{self.name}: controller reports model {' '.join(typ)!r}, "
                                f"configured {self.model.name!r}; refusing to use the wrong "
                                "limit table")
            self._kv_set = self._kv("SPV")
            self._ua_set = self._ua("SPC")
            (self._focus,) = self._ints("CFS", 1)
            self._changed_at = time.monotonic()
        except BaseException:
            self._transport.close()
            raise
        self._fault = None
        self._connected = True
        _LIVE.add(self)
        _install_exit_hooks()
        if self._heartbeat_enabled:
            self._hb_stop.clear()
            self._hb_thread = threading.Thread(target=self._heartbeat, daemon=True,
                                               name=f"{self.model.name}-heartbeat")
            self._hb_thread.start()

    def close(self) -> None:
        """Switch X-rays off, stop the heartbeat and release the port; idempotent."""
        self._hb_stop.set()
        if self._connected:
            since = time.monotonic() - self._last_off[0] if self._last_off else math.inf
            if since < 1.0 and self._last_off[1]:
                log.info("%s: X-ray off was confirmed %.2f s ago; closing", self.name, since)
            elif since < 5.0:
                # a fault just sent XOF; on a bad link a full exchange would only add delay
                self._emergency_off("close after a link fault")
            else:
                try:
                    self.xray_off()
                except (TransportError, TubeError) as exc:
                    log.error("%s: X-ray off at close failed (%s); the controller watchdog "
                              "applies", self.name, exc)
        self._connected = False
        t = self._hb_thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=2.0 + self._transport.timeout_s)
        self._hb_thread = None
        self._transport.close()
        _LIVE.discard(self)

    def __enter__(self) -> HamamatsuTube:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._connected and self._transport.is_open

    @property
    def fault(self) -> BaseException | None:
        """Last link fault seen (None after a clean connect)."""
        return self._fault

    def _heartbeat(self) -> None:
        while not self._hb_stop.wait(self.heartbeat_s):
            try:
                self._poll_outputs()
            except (TransportError, TubeError) as exc:
                if self._hb_stop.is_set():
                    return
                log.error("%s: heartbeat failed: %s", self.name, exc)

    def _poll_outputs(self) -> tuple[TubeState, float, float]:
        """State and actual outputs, checked for plausibility (heartbeat and status)."""
        if "SAR" in self.dialect.commands:
            fields = self._fields("SAR", retries=0)
            line = " ".join(["SAR", *fields])
            st_code, kv_c, ua_c = self._parsed(parse_ints, fields, 3, "SAR", line, self.name)
            state = self._parsed(parse_state, self.dialect, [str(st_code)], line, self.name)
            kv = kv_c * self.dialect.kv_per_count
            ua = ua_c * self.dialect.ua_per_count
        else:
            fields = self._fields("STS", retries=0)
            state = self._parsed(parse_state, self.dialect, fields, " ".join(fields), self.name)
            if state in (TubeState.XRAY_ON, TubeState.WARMING_UP):
                kv, ua = self._kv("SHV"), self._ua("SCU")
            else:
                kv = ua = 0.0
        self._check_outputs(kv, ua, state)
        return state, kv, ua

    def _check_outputs(self, voltage_kv: float, current_ua: float,
                       state: TubeState | None = None) -> None:
        """Raise :class:`TubeFault` (X-rays off first) for an implausible readback."""
        m = self.model
        why = None
        if not -0.5 <= voltage_kv <= m.kv_max * self.ENVELOPE_MARGIN:
            why = (f"voltage readback {voltage_kv:g} kV outside the {m.name} envelope "
                   f"0..{m.kv_max:g} kV")
        elif not -0.5 <= current_ua <= m.ua_max * self.ENVELOPE_MARGIN:
            why = (f"current readback {current_ua:g} uA outside the {m.name} envelope "
                   f"0..{m.ua_max:g} uA")
        elif state is TubeState.XRAY_ON and \
                time.monotonic() - self._changed_at > self.ramp_allowance_s:
            tol_kv = max(self.KV_TOLERANCE[0], self.KV_TOLERANCE[1] * self._kv_set)
            tol_ua = max(self.UA_TOLERANCE[0], self.UA_TOLERANCE[1] * self._ua_set)
            if abs(voltage_kv - self._kv_set) > tol_kv:
                why = (f"voltage readback {voltage_kv:g} kV is {voltage_kv - self._kv_set:+g} kV "
                       f"from the setpoint {self._kv_set:g} kV (tolerance {tol_kv:g} kV)")
            elif abs(current_ua - self._ua_set) > tol_ua:
                why = (f"current readback {current_ua:g} uA is {current_ua - self._ua_set:+g} "
                       f"uA from the setpoint {self._ua_set:g} uA (tolerance {tol_ua:g} uA)")
        if why is not None:
            self._emergency_off(f"implausible readback: {why}")
            self._fault = TubeFault(f"{self.name}: {why}; X-rays switched off")
            raise self._fault

    def _parsed(self, parser, *args):
        """Run a reply parser; a malformed value is a protocol fault (X-rays off)."""
        try:
            return parser(*args)
        except ProtocolError as exc:
            self._on_fault(exc)
            raise

    # --- exchanges
    def _fields(self, command: str, *args: str, retries: int | None = None) -> list[str]:
        if command not in self.dialect.commands:
            raise TubeError(f"{self.name}: the {self.dialect.name!r} dialect has no "
                            f"{command!r} command")
        line = " ".join((command, *args))

        def validate(lines: list[str]) -> None:
            try:
                parse_reply(self.dialect, command, lines[0], self.name)
            except TubeCommandError:
                pass

        def stale(reply: str) -> bool:
            # a late reply to an earlier command: another command's echo or a status word
            head = reply.split(" ", 1)[0]
            if head != command and head in self.dialect.commands:
                return True
            return command != "STS" and reply in (self.dialect.state_words or {}) or \
                command != "SIN" and reply in (self.dialect.interlock_words or {})

        try:
            reply = self._transport.query(line, validate=validate, retries=retries,
                                          stale=stale)[0]
        except TransportError as exc:
            self._on_fault(exc)
            raise
        return parse_reply(self.dialect, command, reply, self.name)

    def _ints(self, command: str, n: int | None, *args: str) -> list[int]:
        fields = self._fields(command, *args)
        return self._parsed(parse_ints, fields, n, command, " ".join((command, *fields)),
                            self.name)

    def _kv(self, command: str) -> float:
        return self._ints(command, 1)[0] * self.dialect.kv_per_count

    def _ua(self, command: str) -> float:
        return self._ints(command, 1)[0] * self.dialect.ua_per_count

    def _on_link_violation(self, exc: TransportError) -> None:
        # called by the transport on every failed attempt, before any retry
        self._fault = exc
        last = self._last_off
        if last is not None and time.monotonic() - last[0] < 0.5:
            return      # XOF went out a moment ago (nothing since can have switched X-rays on)
        self._emergency_off(f"link fault: {exc}")

    def _on_fault(self, exc: BaseException) -> None:
        self._fault = exc
        last = self._last_off
        if last is not None and time.monotonic() - last[0] < 1.0:
            return      # the transport's fault hook sent XOF for this very fault
        self._emergency_off(f"fault: {exc}")

    def _emergency_off(self, why: str) -> None:
        """XOF now, outside the normal error path: write first, then look for the echo within
        :attr:`EMERGENCY_CONFIRM_S`. Never raises."""
        if not self._in_emergency.acquire(blocking=False):
            return   # already in progress (a fault during the emergency XOF itself)
        confirmed = False
        try:
            log.error("%s: switching X-rays off (%s)", self.name, why)
            t = self._transport
            with t.transaction():
                try:
                    t._buf.clear()          # whatever was pending is not the XOF echo
                    t.write("XOF")          # reopens a connection dropped by the fault
                    deadline = time.monotonic() + self.EMERGENCY_CONFIRM_S
                    for _ in range(t.framing.max_stale_lines):
                        if t.read_line(command="XOF", deadline=deadline) == "XOF":
                            confirmed = True
                            break
                    if not confirmed:
                        log.error("%s: emergency XOF sent, no echo among the replies",
                                  self.name)
                except TransportError as exc:
                    log.error("%s: emergency XOF sent but not confirmed (%s); the controller "
                              "watchdog applies", self.name, exc)
        finally:
            self._last_off = (time.monotonic(), confirmed)
            self._in_emergency.release()

    # --- limits and setpoints
    @property
    def limits(self) -> TubeLimits:
        return self._limits

    @limits.setter
    def limits(self, lim: TubeLimits) -> None:
        """Replace the site limits (validated inside the model envelope); setpoints already
        sent stay until the next command, which is checked against the new limits."""
        self._limits = self._validate_limits(lim)

    @staticmethod
    def _finite(name: str, value: float) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a number, got {value!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {value!r}")
        return v

    def set_voltage_kv(self, voltage_kv: float) -> None:
        """Set the tube voltage; refused before sending if outside the kV or power limit."""
        v = self._finite(f"{self.name}: voltage_kv", voltage_kv)
        wire = self.dialect.kv_to_wire(v)
        v_wire = int(wire) * self.dialect.kv_per_count
        self._limits.check(v_wire, self._ua_set, self._focus, self.name)
        self._changed_at = time.monotonic()   # before sending: the heartbeat may
        # read the ramping output before this call returns
        self._fields("HIV", wire)
        self._kv_set = v_wire
        self._changed_at = time.monotonic()

    def set_current_ua(self, current_ua: float) -> None:
        """Set the tube current; refused before sending if outside the uA or power limit."""
        i = self._finite(f"{self.name}: current_ua", current_ua)
        wire = self.dialect.ua_to_wire(i)
        i_wire = int(wire) * self.dialect.ua_per_count
        self._limits.check(self._kv_set, i_wire, self._focus, self.name)
        self._changed_at = time.monotonic()   # before sending: the heartbeat may
        # read the ramping output before this call returns
        self._fields("CUR", wire)
        self._ua_set = i_wire
        self._changed_at = time.monotonic()

    def set_focus_mode(self, mode: int) -> None:
        """Select the focus mode; refused if the present setpoints exceed its power limit."""
        if isinstance(mode, bool) or not isinstance(mode, int):
            raise TypeError(f"{self.name}: focus mode must be an int, got {mode!r}")
        self._limits.check(self._kv_set, self._ua_set, mode, self.name)
        self._changed_at = time.monotonic()   # before sending: the heartbeat may
        # read the ramping output before this call returns
        self._fields("CFS", str(mode))
        self._focus = mode
        self._changed_at = time.monotonic()

    @property
    def voltage_setpoint_kv(self) -> float:
        return self._kv("SPV")

    @property
    def current_setpoint_ua(self) -> float:
        return self._ua("SPC")

    # --- readbacks
    @property
    def state(self) -> TubeState:
        fields = self._fields("STS")
        return self._parsed(parse_state, self.dialect, fields, " ".join(fields), self.name)

    @property
    def voltage_kv(self) -> float:
        """Actual output voltage (0 when X-rays are off)."""
        kv = self._kv("SHV")
        self._check_outputs(kv, 0.0)
        return kv

    @property
    def current_ua(self) -> float:
        """Actual output current (0 when X-rays are off)."""
        ua = self._ua("SCU")
        self._check_outputs(0.0, ua)
        return ua

    @property
    def power_w(self) -> float:
        if "SVI" in self.dialect.commands:
            kv_c, ua_c = self._ints("SVI", 2)
            kv, ua = kv_c * self.dialect.kv_per_count, ua_c * self.dialect.ua_per_count
            self._check_outputs(kv, ua)
            return kv * ua * 1e-3
        return self.voltage_kv * self.current_ua * 1e-3

    @property
    def interlock_closed(self) -> bool:
        fields = self._fields("SIN")
        if self.dialect.interlock_words is not None:
            return self.dialect.interlock_words[fields[0]]
        (v,) = self._parsed(parse_ints, fields, 1, "SIN", " ".join(["SIN", *fields]), self.name)
        if v not in (0, 1):
            exc = ProtocolError(f"{self.name}: SIN reply {v} is not 0 or 1", device=self.name,
                                command="SIN", received=str(v).encode())
            self._on_fault(exc)
            raise exc
        return bool(v)

    @property
    def focus_mode(self) -> int:
        (mode,) = self._ints("CFS", 1)
        return mode

    @property
    def warmup_progress(self) -> float:
        """Warm-up progress 0..1. Dialects without ``SWE`` report 0 until warm-up is done."""
        if "SWE" in self.dialect.commands:
            (pct,) = self._ints("SWE", 1)
            if not 0 <= pct <= 100:
                exc = ProtocolError(f"{self.name}: warm-up progress {pct}% outside 0..100",
                                    device=self.name, command="SWE", received=str(pct).encode())
                self._on_fault(exc)
                raise exc
            return pct / 100.0
        st = self.state
        return 0.0 if st in (TubeState.WARMUP_NEEDED, TubeState.WARMING_UP) else 1.0

    def errors(self) -> list[tuple[int, str]]:
        """Latched device faults as (code, text); empty when clear."""
        codes = self._ints("SER", None)
        return [(c, DEVICE_ERRORS.get(c, "unknown device error")) for c in codes if c != 0]

    def status(self) -> TubeStatus:
        """One consistent snapshot of state, outputs, setpoints, interlock and faults."""
        if "SAR" in self.dialect.commands:
            state, kv, ua = self._poll_outputs()
        else:
            state = self.state
            kv, ua = self._kv("SHV"), self._ua("SCU")
            self._check_outputs(kv, ua, state)
        progress: float | None
        if "SWE" in self.dialect.commands:
            progress = self.warmup_progress
        else:
            progress = None if state is TubeState.WARMING_UP else (
                0.0 if state is TubeState.WARMUP_NEEDED else 1.0)
        errs = self.errors()
        return TubeStatus(
            state=state, voltage_kv=kv, current_ua=ua,
            voltage_setpoint_kv=self._kv("SPV"), current_setpoint_ua=self._ua("SPC"),
            focus_mode=self.focus_mode, interlock_closed=self.interlock_closed,
            warmup_progress=progress,
            error_code=errs[0][0] if errs else None, error_text=errs[0][1] if errs else None)

    # --- actions
    def xray_on(self) -> None:
        """Switch X-rays on at the present setpoints (checked against the limits again)."""
        self._limits.check(self._kv_set, self._ua_set, self._focus, self.name)
        try:
            self._changed_at = time.monotonic()   # before sending: the heartbeat may
            # read the ramping output before this call returns
            self._fields("XON")
            self._changed_at = time.monotonic()
            self._last_off = None
        except TubeCommandError as exc:
            if exc.code == 5:
                raise TubeError(f"{self.name}: X-ray on refused: interlock open") from exc
            if exc.code == 4:
                raise TubeError(f"{self.name}: X-ray on refused in state "
                                f"{self.state.name}") from exc
            raise

    def xray_off(self) -> None:
        """X-rays off; a failed exchange has already re-sent XOF as an emergency.

        Within 5 s of a link fault the link is not trusted with a full exchange: XOF goes out
        as an emergency write, confirmed by its echo within :attr:`EMERGENCY_CONFIRM_S`.
        """
        last = self._last_off
        if last is not None and time.monotonic() - last[0] < 5.0:
            self._emergency_off("X-ray off requested on a faulted link")
            if not self._last_off[1]:
                raise TubeError(f"{self.name}: X-ray off sent after a link fault but not "
                                "confirmed; the controller watchdog applies")
            return
        self._fields("XOF", retries=0)

    def start_warm_up(self) -> None:
        try:
            self._fields("WUP")
        except TubeCommandError as exc:
            raise TubeError(f"{self.name}: warm-up refused ({exc}); state "
                            f"{self.state.name}") from exc

    def warm_up(self, progress_cb: Callable[[float], None] | None = None,
                timeout_s: float = 3600.0, poll_s: float = 0.2) -> None:
        """Run the warm-up to completion, reporting progress 0..1 to ``progress_cb``.

        Raises :class:`TubeError` if the warm-up is interrupted (interlock, overload) and
        :class:`TimeoutError` if it does not finish within ``timeout_s``.
        """
        if self.state in (TubeState.WARMUP_NEEDED, TubeState.STANDBY):
            self.start_warm_up()
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.state
            if state is TubeState.STANDBY:
                if progress_cb is not None:
                    progress_cb(1.0)
                return
            if state is not TubeState.WARMING_UP:
                raise TubeError(f"{self.name}: warm-up ended in state {state.name}; "
                                f"device errors {self.errors()}")
            if progress_cb is not None:
                progress_cb(self.warmup_progress)
            if time.monotonic() > deadline:
                self.xray_off()
                raise TimeoutError(f"{self.name}: warm-up not finished after {timeout_s} s")
            time.sleep(poll_s)

    def reset_overload(self) -> None:
        """Clear an overload and the latched device faults (``RST``)."""
        self._fields("RST")

    def reconnect(self) -> None:
        """Re-open the link after a fault and re-read the setpoints."""
        self._hb_stop.set()
        t = self._hb_thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=2.0 + self._transport.timeout_s)
        self._transport.close()
        self._connected = False
        self.connect()


class HamamatsuTextTube(HamamatsuTube):
    """The older text dialect ("Micro Focus X-Ray Controller" firmware, 9600 baud).

    Created by ``HamamatsuTube(url, dialect="text")``. Replies follow
    :data:`drivers.xray.tables.TEXT_REPLIES`: units glued to the numbers (``HIV 50.0kV``),
    warm-up called aging (``AGN a b`` runs the programme ``DAG`` says is due, ``SAG`` tells
    whether it runs), a front-panel REMOTE/LOCAL key (``SRL``: control commands are refused
    here, before sending, while the unit is in LOCAL; ``XOF`` is always sent), and ``ERROR``
    for a refused command. The firmware has no model query: the configured model's limits are
    trusted (checked on the data sheet by the user). The controller state is composed from
    ``STX`` (emission), ``SAG`` (aging), ``SOV`` (overload), ``STS`` and ``DAG``.
    """

    # --- exchanges
    def _match(self, command: str, *args: str, retries: int | None = None) -> dict[str, str]:
        if command not in self.dialect.commands:
            raise TubeError(f"{self.name}: the {self.dialect.name!r} dialect has no "
                            f"{command!r} command")
        assert self.dialect.replies is not None
        reply_re = re.compile(self.dialect.replies[command].pattern)
        error_re = re.compile(self.dialect.error_reply)
        line = " ".join((command, *args))

        def validate(lines: list[str]) -> None:
            if reply_re.fullmatch(lines[0]) is None and error_re.fullmatch(lines[0]) is None:
                raise ProtocolError(f"{self.name}: reply {lines[0]!r} does not answer "
                                    f"{line!r}", device=self.name, command=line,
                                    received=lines[0].encode())

        try:
            reply = self._transport.query(line, validate=validate, retries=retries)[0]
        except TransportError as exc:
            self._on_fault(exc)
            raise
        if error_re.fullmatch(reply) is not None:
            raise TubeCommandError(f"{self.name}: {line!r} refused ({reply})", 0, command)
        m = reply_re.fullmatch(reply)
        assert m is not None
        return m.groupdict()

    def _fields(self, command: str, *args: str, retries: int | None = None) -> list[str]:
        return list(self._match(command, *args, retries=retries).values())

    def _word(self, command: str) -> str:
        return self._match(command)["word"]

    def _kv(self, command: str) -> float:
        return float(self._match(command)["kv"])

    def _ua(self, command: str) -> float:
        return float(self._match(command)["ua"])

    # --- connection
    def connect(self) -> None:
        """Open the link, read the presets and the REMOTE/LOCAL key, start the heartbeat."""
        self._transport.open()
        try:
            remote = self._word("SRL")
            self._kv_set = self._kv("SPV")
            self._ua_set = self._ua("SPC")
            self._changed_at = time.monotonic()
        except BaseException:
            self._transport.close()
            raise
        if remote != "REMOTE":
            log.warning("%s: the controller is in LOCAL (front-panel key); it can be read but "
                        "not controlled until switched to REMOTE", self.name)
        log.info("%s: this firmware has no model query; using the configured %s limits",
                 self.name, self.model.name)
        self._fault = None
        self._connected = True
        _LIVE.add(self)
        _install_exit_hooks()
        if self._heartbeat_enabled:
            self._hb_stop.clear()
            self._hb_thread = threading.Thread(target=self._heartbeat, daemon=True,
                                               name=f"{self.model.name}-heartbeat")
            self._hb_thread.start()

    @property
    def remote(self) -> bool:
        """True when the front-panel key is at REMOTE (the PC may control the unit)."""
        return self._word("SRL") == "REMOTE"

    def _require_remote(self, what: str) -> None:
        if not self.remote:
            raise TubeError(f"{self.name}: {what} refused: the controller is in LOCAL "
                            "(front-panel key); switch it to REMOTE")

    # --- readbacks
    @property
    def state(self) -> TubeState:
        if self._word("STX") == "ON":
            return TubeState.XRAY_ON
        if self._word("SAG") == "ON":
            return TubeState.WARMING_UP
        if self._word("SOV") != "NORMAL":
            return TubeState.OVERLOAD
        assert self.dialect.state_words is not None
        st = self.dialect.state_words[self._word("STS")]
        if st is TubeState.NOT_READY and self._match("DAG")["word"] == "YET":
            return TubeState.WARMUP_NEEDED
        return st

    @property
    def voltage_kv(self) -> float:
        kv = self._kv("SHV")
        self._check_outputs(kv, 0.0)
        return kv

    @property
    def current_ua(self) -> float:
        ua = self._ua("SCU")
        self._check_outputs(0.0, ua)
        return ua

    @property
    def power_w(self) -> float:
        return self.voltage_kv * self.current_ua * 1e-3

    @property
    def voltage_setpoint_kv(self) -> float:
        return self._kv("SPV")

    @property
    def current_setpoint_ua(self) -> float:
        return self._ua("SPC")

    @property
    def interlock_closed(self) -> bool:
        assert self.dialect.interlock_words is not None
        return self.dialect.interlock_words["INTER LOCK " + self._word("SIN")]

    @property
    def focus_mode(self) -> int:
        return self._focus          # the firmware has no focus query: the last one selected

    @property
    def ready(self) -> bool:
        """``SRB``: the controller is ready to emit."""
        return self._word("SRB") == "READY"

    @property
    def warmup_progress(self) -> float:
        """1 when no aging is due, 0 while it is due or running (the firmware reports no
        progress)."""
        if self._word("SAG") == "ON":
            return 0.0
        return 0.0 if self._match("DAG")["word"] == "YET" else 1.0

    def errors(self) -> list[tuple[int, str]]:
        code = int(self._match("SER")["code"])
        return [(code, DEVICE_ERRORS.get(code, "unknown device error"))] if code else []

    def _poll_outputs(self) -> tuple[TubeState, float, float]:
        state = self.state
        kv = ua = 0.0
        if state is TubeState.XRAY_ON:
            kv, ua = self._kv("SHV"), self._ua("SCU")
        self._check_outputs(kv, ua, state)
        return state, kv, ua

    def status(self) -> TubeStatus:
        state, kv, ua = self._poll_outputs()
        due = self._match("DAG")["word"] == "YET"
        progress = None if state is TubeState.WARMING_UP else (0.0 if due else 1.0)
        errs = self.errors()
        return TubeStatus(
            state=state, voltage_kv=kv, current_ua=ua,
            voltage_setpoint_kv=self._kv("SPV"), current_setpoint_ua=self._ua("SPC"),
            focus_mode=self._focus, interlock_closed=self.interlock_closed,
            warmup_progress=progress,
            error_code=errs[0][0] if errs else None, error_text=errs[0][1] if errs else None)

    # --- setpoints and actions
    def set_voltage_kv(self, voltage_kv: float) -> None:
        self._require_remote("setting the voltage")
        super().set_voltage_kv(voltage_kv)

    def set_current_ua(self, current_ua: float) -> None:
        self._require_remote("setting the current")
        super().set_current_ua(current_ua)

    def set_focus_mode(self, mode: int) -> None:
        """Select a focus mode by its command (``CFS`` small, ``CFL`` large)."""
        if isinstance(mode, bool) or not isinstance(mode, int):
            raise TypeError(f"{self.name}: focus mode must be an int, got {mode!r}")
        commands = self.dialect.focus_commands or {}
        if mode not in commands:
            raise TubeLimitError(f"{self.name}: the text dialect selects focus modes "
                                 f"{sorted(commands)} ({', '.join(commands.values())}), not "
                                 f"{mode!r}")
        self._limits.check(self._kv_set, self._ua_set, mode, self.name)
        self._require_remote("selecting the focus mode")
        self._changed_at = time.monotonic()   # before sending: the heartbeat may
        # read the ramping output before this call returns
        self._match(commands[mode])
        self._focus = mode
        self._changed_at = time.monotonic()

    def xray_on(self) -> None:
        self._limits.check(self._kv_set, self._ua_set, self._focus, self.name)
        self._require_remote("X-ray on")
        try:
            self._changed_at = time.monotonic()   # before sending: the heartbeat may
            # read the ramping output before this call returns
            self._match("XON")
            self._changed_at = time.monotonic()
            self._last_off = None
        except TubeCommandError as exc:
            why = []
            if not self.interlock_closed:
                why.append("interlock open")
            st = self.state
            if st is not TubeState.STANDBY:
                why.append(f"state {st.name}")
            raise TubeError(f"{self.name}: X-ray on refused (ERROR)"
                            + (f": {', '.join(why)}" if why else "")) from exc

    def start_warm_up(self) -> None:
        """Start the aging programme ``DAG`` reports (``AGN a b``)."""
        self._require_remote("aging")
        dag = self._match("DAG")
        try:
            self._match("AGN", dag["a"], dag["b"])
        except TubeCommandError as exc:
            raise TubeError(f"{self.name}: aging refused ({exc}); state "
                            f"{self.state.name}") from exc
