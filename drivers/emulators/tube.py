"""Hamamatsu microfocus X-ray tube controller emulator.

A protocol-exact state machine behind a loopback TCP port or a pty, and the physical X-ray
source of the digital twin: :attr:`TubeEmulator.xray_on`, :attr:`output_voltage_kv`,
:attr:`output_current_ua` and :attr:`focus_mode` are what the anode does *now*.

State is advanced lazily from the monotonic clock on every command and every read of the
physical outputs (ramps, warm-up, watchdog), so no ticking thread is needed and every observer
sees a consistent state.

Wire format (both dialects, CR-terminated; kV counts per the dialect table):

=========  ======================  ===============================================
command    reply                   meaning
=========  ======================  ===============================================
STS        ``STS n`` / state word  controller state (:class:`TubeState`)
SAR        ``SAR n kV uA``         state and actual outputs
SVI        ``SVI kV uA``           actual outputs
SHV, SCU   ``SHV kV``/``SCU uA``   actual voltage / current
SPV, SPC   ``SPV kV``/``SPC uA``   preset voltage / current
HIV n      ``HIV n``               set voltage
CUR n      ``CUR n``               set current
CFS [n]    ``CFS n``               set (or read) focus mode
XON, XOF   ``XON`` / ``XOF``       X-rays on / off
WUP        ``WUP``                 start warm-up
SWS        ``SWS m``               warm-up mode the controller chose (1 short, 2 long)
SWE        ``SWE p``               warm-up progress in percent
SIN        ``SIN 0|1`` / words     interlock (1 = closed)
SNR        ``SNR r``               not-ready reason (0 ready, 1 preheat, 2 self test,
                                   3 overload reset needed)
SPH        ``SPH 0|1``             preheat in progress
SER        ``SER c [c ...]``       latched device faults (0 = none)
RST        ``RST``                 clear overload and latched faults
TYP        ``TYP model``           model name
=========  ======================  ===============================================
Command errors reply ``ERR n`` (codes in :data:`drivers.xray.tables.COMMAND_ERRORS`).

The text dialect answers as the transcript of a real older controller shows
(:data:`drivers.xray.tables.TEXT_REPLIES`): ``STX`` -> ``X-RAY OFF``, ``SHV`` -> ``HIV 0.0kV``,
``SPV`` -> ``PHV 90.0kV``, ``SAG``/``DAG``/``AGN`` for the warm-up ("aging"), ``SRL`` for the
front-panel REMOTE/LOCAL key (control commands answer ``ERROR`` in LOCAL), ``SER`` -> ``ERR 0``,
``RST`` -> ``NORMAL``, ``XON`` -> ``XON`` or ``ERROR``, ``XOF`` -> ``XOF`` always.
"""
from __future__ import annotations

import re
import time

from ..xray.tables import TubeState
from ..xray.tables import dialect as get_dialect
from ..xray.tables import model as get_model
from ._server import EmulatorBase

DEVICE_FAULTS = ("overload", "interlock_open")

# Ramp rates of the high-voltage supply and the emission regulation: the tube reaches a new
# setpoint within about a second, as microfocus supplies do.
KV_RAMP_KV_PER_S = 200.0
UA_RAMP_UA_PER_S = 1000.0

_NUM = re.compile(r"^[0-9]{1,6}$")


class TubeEmulator(EmulatorBase):
    """Emulated controller of a Hamamatsu microfocus tube.

    Parameters
    ----------
    model, dialect : str
        Entries of :data:`drivers.xray.tables.MODELS` / ``DIALECTS``.
    warmup_duration_s : float
        Length of the warm-up run.
    watchdog_s : float or None
        X-rays go off when no command arrives for this long while emitting (None: disabled).
    interlock_closed : bool
        Initial state of the door interlock.
    preheat_s, self_test_s : float
        Power-on self test, then filament preheat (state NOT_READY) before warm-up is possible.
    warmup_needed : bool
        False starts the controller already warmed up (STANDBY).
    """

    def __init__(self, model: str = "L9181-02", dialect: str = "numeric",
                 warmup_duration_s: float = 2.0, watchdog_s: float | None = 5.0,
                 interlock_closed: bool = True, *, preheat_s: float = 0.0,
                 self_test_s: float = 0.0, warmup_needed: bool = True) -> None:
        super().__init__()
        self.model = get_model(model)
        self.dialect = get_dialect(dialect)
        self.name = f"{self.model.name} emulator"
        self.eol = self.dialect.eol
        if warmup_duration_s <= 0:
            raise ValueError(f"{self.name}: warmup_duration_s must be > 0, got "
                             f"{warmup_duration_s!r}")
        if watchdog_s is not None and watchdog_s <= 0:
            raise ValueError(f"{self.name}: watchdog_s must be > 0 or None, got {watchdog_s!r}")
        self.warmup_duration_s = float(warmup_duration_s)
        self.watchdog_s = watchdog_s
        self._interlock = bool(interlock_closed)
        now = time.monotonic()
        self._t = now
        self._self_test_end = now + max(0.0, self_test_s)
        self._preheat_end = self._self_test_end + max(0.0, preheat_s)
        self._warmed = not warmup_needed
        self._warmup_start: float | None = None
        self._emitting = False
        self._overload = False
        self._errors: list[int] = []
        self._kv_set = self.model.kv_min
        self._ua_set = self.model.ua_min
        self._focus = min(self.model.focus_modes)
        self._kv_out = 0.0
        self._ua_out = 0.0
        self._last_cmd = now
        self.commands_received: list[str] = []
        self.remote = True                  # text dialect: front-panel REMOTE/LOCAL key
        self.aging_programme = tuple(self.dialect.extra.get("aging_default", (3, 1)))

    # --- physical state (thread-safe, what the twin reads)
    @property
    def xray_on(self) -> bool:
        with self._lock:
            self._update()
            return self._emitting or self._warmup_start is not None

    @property
    def output_voltage_kv(self) -> float:
        with self._lock:
            self._update()
            return self._kv_out

    @property
    def output_current_ua(self) -> float:
        with self._lock:
            self._update()
            return self._ua_out

    @property
    def focus_mode(self) -> int:
        with self._lock:
            return self._focus

    @property
    def focal_spot_um(self) -> float:
        with self._lock:
            return self.model.focus_modes[self._focus].focal_spot_um

    @property
    def state(self) -> TubeState:
        with self._lock:
            self._update()
            return self._state()

    @property
    def interlock_closed(self) -> bool:
        with self._lock:
            return self._interlock

    @property
    def errors(self) -> list[int]:
        with self._lock:
            self._update()
            return list(self._errors)

    # --- fault hooks
    def known_faults(self) -> tuple[str, ...]:
        return super().known_faults() + DEVICE_FAULTS

    def inject(self, fault: str, **kw) -> None:
        """Link faults (see :class:`EmulatorBase`) plus ``overload`` (tube trips, needs RST)
        and ``interlock_open`` (door opened)."""
        if fault == "overload":
            with self._lock:
                self._update()
                self._overload = True
                self._emit_off()
                self._latch(1)
            return
        if fault == "interlock_open":
            self.open_interlock()
            return
        super().inject(fault, **kw)

    def open_interlock(self) -> None:
        with self._lock:
            self._update()
            self._interlock = False
            if self._emitting or self._warmup_start is not None:
                if self._warmup_start is not None:
                    self._warmup_start = None
                    self._latch(4)
                else:
                    self._latch(2)
                self._emit_off()

    def close_interlock(self) -> None:
        with self._lock:
            self._interlock = True

    def _on_disconnect(self) -> None:
        # losing the controlling application is treated like the watchdog: beam off
        with self._lock:
            self._update()
            if self._emitting:
                self._emit_off()
                self._latch(3)

    # --- state machine
    def _latch(self, code: int) -> None:
        if code not in self._errors:
            self._errors.append(code)

    def _emit_off(self) -> None:
        self._emitting = False
        self._kv_out = 0.0
        self._ua_out = 0.0

    def _state(self) -> TubeState:
        now = self._t
        if now < self._self_test_end:
            return TubeState.SELF_TEST
        if now < self._preheat_end:
            return TubeState.NOT_READY
        if self._overload:
            return TubeState.OVERLOAD
        if self._warmup_start is not None:
            return TubeState.WARMING_UP
        if not self._warmed:
            return TubeState.WARMUP_NEEDED
        return TubeState.XRAY_ON if self._emitting else TubeState.STANDBY

    def _warmup_fraction(self) -> float:
        if self._warmup_start is None:
            return 1.0 if self._warmed else 0.0
        return min(1.0, (self._t - self._warmup_start) / self.warmup_duration_s)

    def _update(self) -> None:
        now = time.monotonic()
        dt = max(0.0, now - self._t)
        self._t = now
        if (self.watchdog_s is not None and self._emitting
                and now - self._last_cmd > self.watchdog_s):
            self._emit_off()
            self._latch(3)
        if self._warmup_start is not None:
            frac = self._warmup_fraction()
            if frac >= 1.0:
                self._warmup_start = None
                self._warmed = True
                self._kv_out = self._ua_out = 0.0
            else:
                # warm-up conditions the tube by emitting at a voltage stepped up to maximum
                self._kv_out = self.model.kv_min + frac * (self.model.kv_max - self.model.kv_min)
                self._ua_out = self.model.ua_min
            return
        if self._emitting:
            self._kv_out = _ramp(self._kv_out, self._kv_set, KV_RAMP_KV_PER_S * dt)
            self._ua_out = _ramp(self._ua_out, self._ua_set, UA_RAMP_UA_PER_S * dt)

    # --- protocol
    def _handle(self, command: bytes) -> bytes | None:
        try:
            text = command.decode("ascii").strip()
        except UnicodeDecodeError:
            return self._err(1)
        with self._lock:
            self._update()
            self._last_cmd = self._t
            self.commands_received.append(text)
            parts = text.split()
            if not parts:
                return self._err(1)
            cmd, args = parts[0], parts[1:]
            if cmd not in self.dialect.commands:
                return self._err(1)
            if self.dialect.replies is not None:
                reply = self._text_command(cmd, args)
            else:
                handler = getattr(self, f"_cmd_{cmd.lower()}")
                reply = handler(args)
            return (reply + "\r").encode("ascii")

    def _err(self, code: int) -> bytes:
        if self.dialect.replies is not None:
            return b"ERROR\r"
        return f"{self.dialect.error_prefix} {code}\r".encode("ascii")

    # --- text dialect
    def set_local(self, local: bool = True) -> None:
        """Turn the front-panel key: LOCAL refuses control commands (XOF still works)."""
        with self._lock:
            self.remote = not local

    def _text_command(self, cmd: str, args: list[str]) -> str:
        """One command of the text dialect; the reply formats come from the dialect table."""
        assert self.dialect.replies is not None
        fmt = self.dialect.replies[cmd].fmt
        status = {
            "STX": lambda: {"word": "ON" if self._emitting else "OFF"},
            "SHV": lambda: {"kv": self._kv_out},
            "SCU": lambda: {"ua": self._ua_out},
            "SPV": lambda: {"kv": self._kv_set},
            "SPC": lambda: {"ua": self._ua_set},
            "SOV": lambda: {"word": "OVER" if self._overload else "NORMAL"},
            "SIN": lambda: {"word": "ON" if self._interlock else "OFF"},
            "SAG": lambda: {"word": "ON" if self._warmup_start is not None else "OFF"},
            "STS": lambda: {"word": "STANDBY" if self._state() in (
                TubeState.STANDBY, TubeState.XRAY_ON) else "NOT READY"},
            "SRB": lambda: {"word": "READY" if self._state() is TubeState.STANDBY
                            and self._interlock else "NOT READY"},
            "SRL": lambda: {"word": "REMOTE" if self.remote else "LOCAL"},
            "DAG": lambda: {"a": self.aging_programme[0], "b": self.aging_programme[1],
                            "word": "DONE" if self._warmed else "YET"},
            "SER": lambda: {"code": self._errors[0] if self._errors else 0},
            "HLP": lambda: {"word": "HIV_0-1300 CUR_0-300 PHV_0-1300 PCU_0-300 AGN_N_N XON "
                            "XOF CXT RST CFL CFS STX SHV SCU SPV SPC SOV SIN SAG STS SRB SRL "
                            "DAG SER"},
        }
        if cmd in status:
            return "ERROR" if args else fmt.format(**status[cmd]())
        if cmd == "XOF":            # always obeyed, also in LOCAL and when already off
            return "ERROR" if args else self._cmd_xof(args)
        if not self.remote:
            return "ERROR"
        if cmd in ("HIV", "PHV", "CUR", "PCU"):
            reply = (self._cmd_hiv if cmd in ("HIV", "PHV") else self._cmd_cur)(args)
            return "ERROR" if reply.startswith("ERR") else fmt.format(arg=args[0])
        if cmd == "XON":
            return "ERROR" if self._cmd_xon(args).startswith("ERR") else "XON"
        if cmd == "RST":
            return "ERROR" if self._cmd_rst(args).startswith("ERR") else "NORMAL"
        if cmd == "AGN":
            if len(args) != 2 or not all(_NUM.match(a) for a in args):
                return "ERROR"
            if self._cmd_wup([]).startswith("ERR"):
                return "ERROR"
            self.aging_programme = (int(args[0]), int(args[1]))
            return fmt.format(a=args[0], b=args[1])
        if cmd in ("CFS", "CFL"):
            modes = {c: m for m, c in (self.dialect.focus_commands or {}).items()}
            if args or modes.get(cmd) not in self.model.focus_modes:
                return "ERROR"
            return "ERROR" if self._cmd_cfs([str(modes[cmd])]).startswith("ERR") else cmd
        return "ERROR" if args else fmt      # CXT: accepted, no modelled effect

    def _kv(self, v: float) -> str:
        return self.dialect.kv_to_wire(v)

    def _ua(self, v: float) -> str:
        return self.dialect.ua_to_wire(v)

    @staticmethod
    def _one_int(args: list[str]) -> int | None:
        if len(args) != 1 or not _NUM.match(args[0]):
            return None
        return int(args[0])

    def _no_args(self, args: list[str], reply: str) -> str:
        return reply if not args else "ERR 2"

    def _cmd_sts(self, args: list[str]) -> str:
        st = self._state()
        if self.dialect.state_words is not None:
            return self._no_args(args, self.dialect.state_word(st))
        return self._no_args(args, f"STS {int(st)}")

    def _cmd_sar(self, args):
        return self._no_args(args, f"SAR {int(self._state())} {self._kv(self._kv_out)} "
                                   f"{self._ua(self._ua_out)}")

    def _cmd_svi(self, args):
        return self._no_args(args, f"SVI {self._kv(self._kv_out)} {self._ua(self._ua_out)}")

    def _cmd_shv(self, args):
        return self._no_args(args, f"SHV {self._kv(self._kv_out)}")

    def _cmd_scu(self, args):
        return self._no_args(args, f"SCU {self._ua(self._ua_out)}")

    def _cmd_spv(self, args):
        return self._no_args(args, f"SPV {self._kv(self._kv_set)}")

    def _cmd_spc(self, args):
        return self._no_args(args, f"SPC {self._ua(self._ua_set)}")

    def _cmd_hiv(self, args):
        n = self._one_int(args)
        if n is None:
            return "ERR 2"
        kv = n * self.dialect.kv_per_count
        m = self.model
        if not (m.kv_min <= kv <= m.kv_max) or \
                kv * self._ua_set * 1e-3 > m.focus_modes[self._focus].max_power_w + 1e-9:
            return "ERR 3"
        self._kv_set = kv
        return f"HIV {args[0]}"

    def _cmd_cur(self, args):
        n = self._one_int(args)
        if n is None:
            return "ERR 2"
        ua = n * self.dialect.ua_per_count
        m = self.model
        if not (m.ua_min <= ua <= m.ua_max) or \
                self._kv_set * ua * 1e-3 > m.focus_modes[self._focus].max_power_w + 1e-9:
            return "ERR 3"
        self._ua_set = ua
        return f"CUR {args[0]}"

    def _cmd_cfs(self, args):
        if not args:
            return f"CFS {self._focus}"
        n = self._one_int(args)
        if n is None:
            return "ERR 2"
        if n not in self.model.focus_modes or \
                self._kv_set * self._ua_set * 1e-3 > self.model.focus_modes[n].max_power_w + 1e-9:
            return "ERR 3"
        self._focus = n
        return f"CFS {n}"

    def _cmd_xon(self, args):
        if args:
            return "ERR 2"
        if not self._interlock:
            return "ERR 5"
        if self._state() not in (TubeState.STANDBY, TubeState.XRAY_ON):
            return "ERR 4"
        self._emitting = True
        return "XON"

    def _cmd_xof(self, args):
        if args:
            return "ERR 2"
        if self._warmup_start is not None:
            self._warmup_start = None
            self._latch(4)
        self._emit_off()
        return "XOF"

    def _cmd_wup(self, args):
        if args:
            return "ERR 2"
        if not self._interlock:
            return "ERR 5"
        if self._state() not in (TubeState.WARMUP_NEEDED, TubeState.STANDBY):
            return "ERR 4"
        self._warmup_start = self._t
        return "WUP"

    def _cmd_sws(self, args):
        # long warm-up before first use after power-on, short otherwise
        return self._no_args(args, f"SWS {1 if self._warmed else 2}")

    def _cmd_swe(self, args):
        return self._no_args(args, f"SWE {int(100 * self._warmup_fraction())}")

    def _cmd_sin(self, args):
        if self.dialect.interlock_words is not None:
            word = next(w for w, v in self.dialect.interlock_words.items()
                        if v == self._interlock)
            return self._no_args(args, word)
        return self._no_args(args, f"SIN {int(self._interlock)}")

    def _cmd_snr(self, args):
        st = self._state()
        reason = {TubeState.NOT_READY: 1, TubeState.SELF_TEST: 2, TubeState.OVERLOAD: 3}
        return self._no_args(args, f"SNR {reason.get(st, 0)}")

    def _cmd_sph(self, args):
        return self._no_args(args, f"SPH {int(self._state() is TubeState.NOT_READY)}")

    def _cmd_ser(self, args):
        codes = " ".join(str(c) for c in self._errors) or "0"
        return self._no_args(args, f"SER {codes}")

    def _cmd_rst(self, args):
        if args:
            return "ERR 2"
        self._overload = False
        self._errors.clear()
        return "RST"

    def _cmd_typ(self, args):
        return self._no_args(args, f"TYP {self.model.name}")


def _ramp(value: float, target: float, step: float) -> float:
    if abs(target - value) <= step:
        return target
    return value + step if target > value else value - step
