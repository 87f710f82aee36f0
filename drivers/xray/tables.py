"""Data tables for Hamamatsu microfocus tubes: states, models, wire dialects, error codes.

Model and dialect differences live here as data; the driver and the emulator both read these
tables, so adding a tube model or a firmware dialect is a table entry, not new code paths.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class TubeState(enum.IntEnum):
    """Controller state as reported by ``STS`` (numeric dialect code = enum value)."""

    WARMUP_NEEDED = 0
    WARMING_UP = 1
    STANDBY = 2
    XRAY_ON = 3
    OVERLOAD = 4
    NOT_READY = 5
    SELF_TEST = 6


@dataclass(frozen=True)
class TubeLimits:
    """Operating envelope of a tube model (setpoints outside it are refused before sending)."""

    kv_min: float
    kv_max: float
    ua_min: float
    ua_max: float
    max_power_w_by_focus: dict[int, float]

    def check(self, voltage_kv: float, current_ua: float, focus_mode: int,
              device: str = "X-ray tube") -> None:
        """Raise :class:`TubeLimitError` naming the violated limit; return None when safe."""
        if focus_mode not in self.max_power_w_by_focus:
            raise TubeLimitError(
                f"{device}: focus mode {focus_mode!r} is not one of "
                f"{sorted(self.max_power_w_by_focus)}")
        if not (self.kv_min <= voltage_kv <= self.kv_max):
            raise TubeLimitError(f"{device}: voltage {voltage_kv:g} kV outside the tube limit "
                                 f"{self.kv_min:g}..{self.kv_max:g} kV")
        if not (self.ua_min <= current_ua <= self.ua_max):
            raise TubeLimitError(f"{device}: current {current_ua:g} uA outside the tube limit "
                                 f"{self.ua_min:g}..{self.ua_max:g} uA")
        power_w = voltage_kv * current_ua * 1e-3
        p_max = self.max_power_w_by_focus[focus_mode]
        if power_w > p_max * (1 + 1e-9):
            raise TubeLimitError(
                f"{device}: {voltage_kv:g} kV x {current_ua:g} uA = {power_w:.3g} W exceeds the "
                f"{p_max:g} W power limit of focus mode {focus_mode}")


class TubeLimitError(ValueError):
    """A setpoint outside the model's envelope (raised before anything is sent)."""


@dataclass(frozen=True)
class FocusMode:
    focal_spot_um: float
    max_power_w: float


@dataclass(frozen=True)
class TubeModel:
    name: str
    kv_min: float
    kv_max: float
    ua_min: float
    ua_max: float
    focus_modes: dict[int, FocusMode]
    source: str

    @property
    def limits(self) -> TubeLimits:
        return TubeLimits(self.kv_min, self.kv_max, self.ua_min, self.ua_max,
                          {m: f.max_power_w for m, f in self.focus_modes.items()})


MODELS: dict[str, TubeModel] = {
    # 130 kV / 300 uA / 39 W class; focus modes small 5 um @ 4 W, middle 20 um @ 16 W,
    # large 40 um @ 39 W; 40 kV and 10 uA lower bounds as on the data sheet class.
    "L9181-02": TubeModel(
        "L9181-02", kv_min=40.0, kv_max=130.0, ua_min=10.0, ua_max=300.0,
        focus_modes={0: FocusMode(5.0, 4.0), 1: FocusMode(20.0, 16.0), 2: FocusMode(40.0, 39.0)},
        source="Hamamatsu microfocus X-ray source L9181-02 data sheet class (130 kV, 300 uA, 39 W)"),
    # 150 kV / 500 uA / 75 W class. The per-mode power split below is the small/middle/large
    # pattern of this class; check it against the unit's own data sheet before relying on it.
    "L12161-07": TubeModel(
        "L12161-07", kv_min=40.0, kv_max=150.0, ua_min=10.0, ua_max=500.0,
        focus_modes={0: FocusMode(7.0, 10.0), 1: FocusMode(20.0, 30.0),
                     2: FocusMode(50.0, 75.0)},
        source="Hamamatsu microfocus X-ray source L12161-07 data sheet class (150 kV, 500 uA, 75 W)"),
}


@dataclass(frozen=True)
class Reply:
    """A reply format of the text dialect: ``fmt`` is what the controller prints (the emulator
    formats it with ``str.format``), ``pattern`` the regular expression the driver matches, with
    the same named fields (``kv`` in kV, ``ua`` in uA, ``word``, ``code``, ``a``, ``b``)."""

    fmt: str
    pattern: str


@dataclass(frozen=True)
class Dialect:
    """One firmware's wire conventions.

    ``kv_per_count`` / ``ua_per_count``: physical value of one count on the wire.
    ``state_words``: text replies to ``STS`` (text dialect); None means ``STS <code>``.
    ``interlock_words``: text replies to ``SIN``; None means ``SIN <0|1>`` (1 = closed).
    ``commands``: the commands this firmware understands (others are refused before sending).
    ``replies``: per-command reply formats (text dialect); None means the numeric convention,
    the command echoed with integer fields.
    ``identify``: the command that names the model (None: the firmware has none).
    ``error_reply``: regular expression of a refused command (group ``code`` if it has one).
    ``focus_commands``: focus mode -> command selecting it (None: ``CFS n``).
    """

    name: str
    baudrate: int
    kv_per_count: float
    ua_per_count: float
    commands: frozenset[str]
    state_words: dict[str, TubeState] | None = None
    interlock_words: dict[str, bool] | None = None
    eol: bytes = b"\r"
    error_prefix: str = "ERR"
    kv_decimals: int = 0
    extra: dict = field(default_factory=dict)
    replies: dict[str, Reply] | None = None
    identify: str | None = "TYP"
    error_reply: str = r"ERR (?P<code>[0-9]{1,3})"
    focus_commands: dict[int, str] | None = None

    def kv_to_wire(self, voltage_kv: float) -> str:
        return str(int(round(voltage_kv / self.kv_per_count)))

    def ua_to_wire(self, current_ua: float) -> str:
        return str(int(round(current_ua / self.ua_per_count)))

    def state_word(self, state: TubeState) -> str:
        assert self.state_words is not None
        return next(w for w, s in self.state_words.items() if s is state)


_ALL = frozenset(["STS", "SAR", "SVI", "SHV", "SCU", "SPV", "SPC", "HIV", "CUR", "XON", "XOF", "WUP", "SWS", "SWE", "CFS", "SIN", "SNR", "SPH", "SER", "RST", "TYP"])

# The older text dialect, after a public transcript of a real controller ("Micro Focus X-Ray
# Controller, Version 1.03p"; the facts are in shared/protocols/microfocus-text-dialect.md and
# tests/drivers/data/). Replies the transcript shows are marked "seen"; the others are this
# product's reading, listed as unverified in drivers/README.md.
TEXT_CONTROL = frozenset(["HIV", "CUR", "PHV", "PCU", "AGN", "XON", "XOF", "CXT", "RST", "CFL",
                          "CFS"])
TEXT_STATUS = frozenset(["STX", "SHV", "SCU", "SPV", "SPC", "SOV", "SIN", "SAG", "STS", "SRB",
                         "SRL", "DAG", "SER", "HLP"])
_KV = r"(?P<kv>[0-9]{1,3}\.[0-9])kV"
_UA = r"(?P<ua>[0-9]{1,3})uA"
TEXT_REPLIES: dict[str, Reply] = {
    "STX": Reply("X-RAY {word}", r"X-RAY (?P<word>ON|OFF)"),              # seen: X-RAY OFF
    "SHV": Reply("HIV {kv:.1f}kV", "HIV " + _KV),                          # seen: HIV 0.0kV
    "SCU": Reply("CUR {ua:.0f}uA", "CUR " + _UA),                          # seen: CUR 0uA
    "SPV": Reply("PHV {kv:.1f}kV", "PHV " + _KV),                          # seen: PHV 90.0kV
    "SPC": Reply("PCU {ua:.0f}uA", "PCU " + _UA),                          # seen: PCU 2uA
    "SOV": Reply("{word}", r"(?P<word>NORMAL|OVER)"),                      # seen: NORMAL
    "SIN": Reply("INTER LOCK {word}", r"INTER LOCK (?P<word>ON|OFF)"),     # seen: ... ON
    "SAG": Reply("AGING {word}", r"AGING (?P<word>ON|OFF)"),               # seen: AGING OFF
    "STS": Reply("{word}", r"(?P<word>NOT READY|STANDBY)"),                # seen: both
    "SRB": Reply("{word}", r"(?P<word>READY|NOT READY)"),                  # seen: READY
    "SRL": Reply("{word}", r"(?P<word>LOCAL|REMOTE)"),                     # seen: both
    "DAG": Reply("AGING {a} {b} {word}",                                   # seen: AGING 3 1 YET
                 r"AGING (?P<a>[0-9]{1,2}) (?P<b>[0-9]{1,2}) (?P<word>YET|DONE)"),
    "SER": Reply("ERR {code}", r"ERR (?P<code>[0-9]{1,3})"),               # seen: ERR 0
    "RST": Reply("NORMAL", r"NORMAL"),                                     # seen
    "XON": Reply("XON", r"XON"),                                           # seen (or ERROR)
    "XOF": Reply("XOF", r"XOF"),                                           # seen
    # set commands: the transcript shows no reply; the echo of the command is this reading
    "HIV": Reply("HIV {arg}", r"HIV [0-9]{1,4}"),
    "CUR": Reply("CUR {arg}", r"CUR [0-9]{1,3}"),
    "PHV": Reply("PHV {arg}", r"PHV [0-9]{1,4}"),
    "PCU": Reply("PCU {arg}", r"PCU [0-9]{1,3}"),
    "AGN": Reply("AGN {a} {b}", r"AGN [0-9]{1,2} [0-9]{1,2}"),
    "CFS": Reply("CFS", r"CFS"),
    "CFL": Reply("CFL", r"CFL"),
    "CXT": Reply("CXT", r"CXT"),
    "HLP": Reply("{word}", r"(?P<word>.+)"),
}

DIALECTS: dict[str, Dialect] = {
    # Newer controllers: 38400 8N1, CR, integer kV and uA, numeric status codes.
    "numeric": Dialect("numeric", baudrate=38400, kv_per_count=1.0, ua_per_count=1.0,
                       commands=_ALL),
    # Older controllers: 9600 8N1, CR, voltage set in 0.1 kV counts (HIV 0-1300), replies as
    # text with units glued to the numbers, warm-up called aging (AGN/SAG/DAG), a front-panel
    # REMOTE/LOCAL key (SRL), no model query, "ERROR" for a refused command.
    "text": Dialect(
        "text", baudrate=9600, kv_per_count=0.1, ua_per_count=1.0,
        commands=TEXT_CONTROL | TEXT_STATUS,
        state_words={"NOT READY": TubeState.NOT_READY, "STANDBY": TubeState.STANDBY},
        interlock_words={"INTER LOCK ON": True, "INTER LOCK OFF": False},
        replies=TEXT_REPLIES, identify=None, error_reply=r"ERROR",
        focus_commands={0: "CFS", 1: "CFL"},
        extra={"aging_default": (3, 1)}),
}

# Codes of "ERR n" command-error replies.
COMMAND_ERRORS: dict[int, str] = {
    1: "unknown command",
    2: "malformed parameter",
    3: "parameter out of range",
    4: "not allowed in the present state",
    5: "interlock open",
}

# Device fault codes reported by SER (0 = no error).
DEVICE_ERRORS: dict[int, str] = {
    1: "overload (tube current trip / arc)",
    2: "interlock opened during emission",
    3: "communication watchdog expired",
    4: "warm-up interrupted",
    5: "high-voltage fault",
}


def model(name: str) -> TubeModel:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown X-ray tube model {name!r}; known: {sorted(MODELS)}") from None


def dialect(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown X-ray tube dialect {name!r}; known: {sorted(DIALECTS)}") \
            from None
