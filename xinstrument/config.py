"""Instrument configuration (TOML): which drivers, ports or URLs, line settings, limits, profile.

A port of ``"sim"`` means: start the protocol emulator of that device on a loopback port and
drive it with the real driver, so the simulated bench runs the code path a real bench runs.

Every key is checked on load for type, range and consistency with the rest (a site kV limit
inside the tube model's envelope, a stage velocity inside its plausible range, ...); the first
problem is one :class:`~xinstrument.errors.ConfigError` naming the file, the section and the
key. Shipped examples: ``xinstrument/configs/`` (:func:`example_config_path`), among them
``real-bench.toml`` for a Hamamatsu + PI + pco bench and ``simulated-bench.toml``.

Example::

    [tube]
    driver = "hamamatsu"        # Hamamatsu microfocus command set
    port = "/dev/ttyUSB0"       # or "socket://192.0.2.10:4001", or "sim"
    dialect = "numeric"         # or "text" for older controllers (9600 baud)
    model = "L9181-02"
    baudrate = 38400            # optional: the dialect's rate by default
    kv_max = 60.0               # optional site limits, inside the model's envelope
    ua_max = 200.0

    [focus_stage]
    driver = "pi_gcs"
    port = "/dev/ttyUSB1"
    baudrate = 115200
    axis = "1"
    controller_unit = "mm"      # PI stages report mm; the axis is driven in um
    soft_limits_um = [0.0, 400.0]
    velocity_limits_um_s = [1.0, 5000.0]
    reference_on_connect = true # FRF at connect; without it an unreferenced axis is an error

    [rotation_stage]            # optional: tomosynthesis axis (degrees)
    driver = "pi_gcs"
    port = "sim"
    axis = "1"
    soft_limits_deg = [-30.0, 30.0]

    [camera]
    driver = "pco"              # or "simulated"
    interface = "USB 3.0"       # pco interface name, optional
    pixel_size_um = 6.5
    exposure_s = 1.0

    [simulation]                # used when any device is "sim"
    bench = "lens-yag"          # or "panel-gos"
    sensor_px = 1024
    sample = "pcb"
    seed = 0

    [restoration]
    profile = "sim-yag200-5x"
    method = "wiener"
"""
from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ConfigError

_SECTIONS = {"tube", "focus_stage", "rotation_stage", "camera", "simulation", "restoration",
             "storage"}

# Standard serial line speeds (termios); a controller set to anything else is a typo.
BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
# pyserial URL schemes a bench may use (serial-to-Ethernet servers, RFC 2217, tests).
_URL_SCHEMES = ("socket", "rfc2217", "loop", "spy", "alt", "hwgrep")
# Units of the controller a stage axis can report, and their size in the axis unit.
_UNIT_SCALE = {"um": {"um": 1.0, "mm": 1000.0, "nm": 1e-3}, "deg": {"deg": 1.0}}
SIM_SAMPLES = ("pcb", "pcb-layers", "chart", "edge", "bars", "open")
SIM_BENCHES = ("lens-yag", "panel-gos")
_DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:[0-9]{1,2})?)$")
_GCS_AXIS_RE = re.compile(r"^[A-Za-z0-9_]{1,8}$")


@dataclass
class TubeConfig:
    driver: str = "hamamatsu"
    port: str = "sim"
    dialect: str = "numeric"
    model: str = "L9181-02"
    baudrate: int | None = None          # None: the dialect's (38400 numeric, 9600 text)
    kv_max: float | None = None          # site limits inside the model's envelope
    ua_max: float | None = None
    timeout_s: float = 1.0               # per exchange (nothing extends it)
    watchdog_s: float | None = 5.0       # controller watchdog the heartbeat must beat
    ramp_allowance_s: float = 5.0        # output settling time before readbacks must match
    retries: int = 1
    warmup_timeout_s: float = 1800.0     # upper bound of a warm-up (aging) run

    def driver_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`drivers.xray.HamamatsuTube` (besides the URL)."""
        kw: dict[str, Any] = {"dialect": self.dialect, "model": self.model,
                              "timeout_s": self.timeout_s, "watchdog_s": self.watchdog_s,
                              "retries": self.retries, "baudrate": self.baudrate,
                              "ramp_allowance_s": self.ramp_allowance_s}
        if self.kv_max is not None or self.ua_max is not None:
            from drivers.xray.tables import TubeLimits
            from drivers.xray.tables import model as tube_model
            m = tube_model(self.model).limits
            kv_max = m.kv_max if self.kv_max is None else self.kv_max
            ua_max = m.ua_max if self.ua_max is None else self.ua_max
            kw["limits"] = TubeLimits(m.kv_min, kv_max, m.ua_min, ua_max,
                                      dict(m.max_power_w_by_focus))
        return kw


@dataclass
class StageConfig:
    driver: str = "pi_gcs"
    port: str = "sim"
    axis: str = "1"
    soft_limits: tuple[float, float] | None = None   # in ``unit``
    unit: str = "um"                     # set by the section: um (focus), deg (rotation)
    velocity: float | None = None        # ``unit``/s, set at connect when given
    baudrate: int = 115200
    timeout_s: float = 1.0
    controller_unit: str | None = None   # what the controller reports (PI stages: mm)
    velocity_limits: tuple[float, float] | None = None   # plausible ``unit``/s range
    max_wait_s: float = 120.0            # upper bound of any move or reference wait
    reference_on_connect: bool | None = None   # None: only for emulated ("sim") axes

    @property
    def scale(self) -> float:
        """Axis unit per controller unit (1000 for a PI stage in mm driven in um). An
        emulated axis works in the axis unit."""
        if self.port == "sim" or self.controller_unit is None:
            return 1.0
        return _UNIT_SCALE[self.unit][self.controller_unit]

    @property
    def references_on_connect(self) -> bool:
        """Whether connecting may run a reference move (``FRF``) on an unreferenced axis."""
        if self.reference_on_connect is None:
            return self.port == "sim"
        return self.reference_on_connect

    def controller_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`drivers.stage.GcsController` (besides the URL)."""
        return {"baudrate": self.baudrate, "timeout_s": self.timeout_s}

    def axis_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`drivers.stage.GcsAxis` (besides controller, axis)."""
        return {"unit": self.unit, "soft_limits": self.soft_limits, "scale": self.scale,
                "velocity_limits": self.velocity_limits, "max_wait_s": self.max_wait_s}


@dataclass
class CameraConfig:
    driver: str = "simulated"
    exposure_s: float = 1.0
    serial: int | None = None          # pco: camera serial number, when several are attached
    interface: str | None = None       # pco: "USB 3.0", "Camera Link ME4", "CLHS", ...
    pixel_size_um: float | None = None  # pco: sensor pitch (the SDK does not report it)


@dataclass
class SimulationConfig:
    bench: str = "lens-yag"
    sensor_px: int = 1024
    sample: str = "pcb"
    seed: int = 0
    warmup_duration_s: float = 2.0


@dataclass
class RestorationConfig:
    profile: str | None = "sim-yag200-5x"
    method: str = "wiener"
    device: str | None = None


@dataclass
class InstrumentConfig:
    tube: TubeConfig = field(default_factory=TubeConfig)
    focus_stage: StageConfig = field(default_factory=lambda: StageConfig(
        soft_limits=(0.0, 400.0)))
    rotation_stage: StageConfig | None = None
    camera: CameraConfig = field(default_factory=CameraConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    restoration: RestorationConfig = field(default_factory=RestorationConfig)
    storage: dict[str, Any] = field(default_factory=dict)   # read by the storage layer
    source_path: Path | None = None

    @property
    def uses_simulation(self) -> bool:
        ports = [self.tube.port, self.focus_stage.port]
        if self.rotation_stage is not None:
            ports.append(self.rotation_stage.port)
        return "sim" in ports or self.camera.driver == "simulated"

    @classmethod
    def simulated(cls, bench: str = "lens-yag", sensor_px: int = 1024, sample: str = "pcb",
                  seed: int = 0, rotation: bool = True) -> InstrumentConfig:
        """The built-in simulated bench: every device emulated, real drivers."""
        profile = {"lens-yag": "sim-yag200-5x", "panel-gos": "sim-gos134"}.get(bench)
        if profile is None:
            raise ConfigError(f"unknown simulated bench {bench!r}; choose lens-yag or panel-gos")
        cfg = cls(simulation=SimulationConfig(bench=bench, sensor_px=sensor_px, sample=sample,
                                              seed=seed),
                  restoration=RestorationConfig(profile=profile),
                  focus_stage=StageConfig(soft_limits=(0.0, 400.0), reference_on_connect=True))
        if rotation:
            cfg.rotation_stage = StageConfig(port="sim", unit="deg", soft_limits=(-45.0, 45.0),
                                             reference_on_connect=True)
        if bench == "panel-gos":
            cfg.camera.exposure_s = 0.05
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> InstrumentConfig:
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a folder, not a TOML file") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}: "
                              f"{data[exc.start:exc.start + 1]!r})") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        return cls.from_dict(raw, source=path)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: Path | None = None) -> InstrumentConfig:
        where = f"config {source}" if source else "config"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a table of sections, got {type(raw).__name__}")
        unknown = set(raw) - _SECTIONS
        if unknown:
            raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}; "
                              f"known: {sorted(_SECTIONS)}")
        cfg = cls(source_path=source)
        if "tube" in raw:
            cfg.tube = _build(TubeConfig, raw["tube"], f"{where} [tube]", required=("port",))
        if "focus_stage" in raw:
            cfg.focus_stage = _stage(raw["focus_stage"], f"{where} [focus_stage]", "um",
                                     default_limits=(0.0, 400.0))
        if "rotation_stage" in raw:
            cfg.rotation_stage = _stage(raw["rotation_stage"], f"{where} [rotation_stage]", "deg")
        cfg.camera = _build(CameraConfig, raw.get("camera", {}), f"{where} [camera]")
        cfg.simulation = _build(SimulationConfig, raw.get("simulation", {}),
                                f"{where} [simulation]")
        cfg.restoration = _build(RestorationConfig, raw.get("restoration", {}),
                                 f"{where} [restoration]")
        storage = raw.get("storage", {})
        if not isinstance(storage, dict):
            raise ConfigError(f"{where} [storage]: expected a table, got "
                              f"{type(storage).__name__}")
        cfg.storage = dict(storage)
        cfg.validate(where)
        return cfg

    # --- validation --------------------------------------------------------------------------
    def validate(self, where: str = "config") -> None:
        """Check every value for type, range and consistency; raise one ConfigError naming the
        section and key of the first problem."""
        _check_tube(self.tube, f"{where} [tube]")
        _check_stage(self.focus_stage, f"{where} [focus_stage]")
        if self.rotation_stage is not None:
            _check_stage(self.rotation_stage, f"{where} [rotation_stage]")
        _check_camera(self.camera, f"{where} [camera]")
        _check_simulation(self.simulation, f"{where} [simulation]")
        _check_restoration(self.restoration, f"{where} [restoration]")


def example_config_path(name: str) -> Path:
    """Path of a shipped example config (``real-bench``, ``simulated-bench``, ...)."""
    folder = resources.files("xinstrument") / "configs"
    names = sorted(p.name.removesuffix(".toml") for p in folder.iterdir()
                   if p.name.endswith(".toml"))
    if name not in names:
        raise ConfigError(f"no example config {name!r}; shipped: {', '.join(names)}")
    return Path(str(folder / f"{name}.toml"))


def example_configs() -> list[Path]:
    folder = resources.files("xinstrument") / "configs"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml"))


# --- building sections -----------------------------------------------------------------------
def _build(kind, raw: Any, where: str, required: tuple[str, ...] = ()):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {type(raw).__name__}")
    names = {f.name for f in fields(kind)}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    missing = [k for k in required if k not in raw]
    if missing:
        raise ConfigError(f"{where}: {missing[0]} is required in this section (a device "
                          f"section must say where the device is, e.g. port = \"/dev/ttyUSB0\" "
                          f"or \"sim\")")
    obj = kind()
    for key, value in raw.items():
        setattr(obj, key, value)
    return obj


def _stage(raw: Any, where: str, unit: str, default_limits=None) -> StageConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {type(raw).__name__}")
    raw = dict(raw)
    limits = raw.pop(f"soft_limits_{unit}", None)
    vlimits = raw.pop(f"velocity_limits_{unit}_s", None)
    for key in ("soft_limits", "velocity_limits", "unit"):
        if key in raw:
            raise ConfigError(f"{where}: unknown key {key!r}; this axis is in {unit}: use "
                              + (f"{key}_{unit}" if key == "soft_limits" else
                                 f"velocity_limits_{unit}_s" if key == "velocity_limits" else
                                 "the section name to choose the unit"))
    cfg = _build(StageConfig, raw, where, required=("port",))
    cfg.unit = unit
    limits = limits if limits is not None else default_limits
    if limits is not None:
        cfg.soft_limits = _pair(where, f"soft_limits_{unit}", limits, unit)
    if vlimits is not None:
        cfg.velocity_limits = _pair(where, f"velocity_limits_{unit}_s", vlimits, f"{unit}/s",
                                    positive=True)
    return cfg


# --- checks ----------------------------------------------------------------------------------
def _fail(where: str, key: str, message: str, value: Any) -> ConfigError:
    return ConfigError(f"{where}: {key} {message}, got {value!r}")


def _str(where: str, key: str, v: Any, choices: tuple[str, ...] | None = None,
         optional: bool = False) -> None:
    if v is None and optional:
        return
    if not isinstance(v, str):
        raise _fail(where, key, "must be a string", v)
    if not v.strip():
        raise _fail(where, key, "must not be empty", v)
    if choices is not None and v not in choices:
        raise _fail(where, key, f"must be one of {', '.join(choices)}", v)


def _number(where: str, key: str, v: Any, *, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, integer: bool = False, optional: bool = False,
            unit: str = "") -> None:
    if v is None and optional:
        return
    kind = "a whole number" if integer else "a number"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or \
            (integer and not isinstance(v, int)):
        raise _fail(where, key, f"must be {kind}" + (f" ({unit})" if unit else ""), v)
    if not math.isfinite(v):
        raise _fail(where, key, "must be finite", v)
    u = f" {unit}" if unit else ""
    too_low = lo is not None and (v <= lo if lo_open else v < lo)
    too_high = hi is not None and v > hi
    if too_low or too_high:
        def f(x: float) -> str:
            return str(x) if isinstance(x, int) else f"{x:g}"
        if lo is not None and hi is not None:
            rng = f"in {f(lo)}..{f(hi)}{u}" + (f" and above {f(lo)}" if lo_open else "")
        elif lo is not None:
            rng = f"{'>' if lo_open else '>='} {f(lo)}{u}"
        else:
            rng = f"<= {f(hi)}{u}"
        raise _fail(where, key, f"must be {rng}", v)


def _pair(where: str, key: str, v: Any, unit: str, positive: bool = False
          ) -> tuple[float, float]:
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
            or not all(math.isfinite(x) for x in v) or v[0] >= v[1]
            or (positive and v[0] <= 0)):
        need = "0 < low < high" if positive else "low < high"
        raise _fail(where, key, f"must be [low, high] in {unit} with {need}, finite", v)
    return float(v[0]), float(v[1])


def _port(where: str, v: Any) -> None:
    _str(where, "port", v)
    if v == "sim" or v.startswith("/dev/") or re.fullmatch(r"COM[0-9]{1,3}", v):
        return
    scheme, sep, rest = v.partition("://")
    if not sep:
        raise _fail(where, "port", "must be \"sim\", a serial device (/dev/ttyUSB0, COM3) or "
                    "a pyserial URL (socket://HOST:PORT)", v)
    if scheme not in _URL_SCHEMES:
        raise _fail(where, "port", f"has an unknown URL scheme {scheme!r} (known: "
                    f"{', '.join(_URL_SCHEMES)})", v)
    if scheme in ("socket", "rfc2217"):
        host, colon, port = rest.split("?", 1)[0].rstrip("/").rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise _fail(where, "port", f"must be {scheme}://HOST:PORT with PORT 1..65535", v)


def _coerce_floats(obj, names: tuple[str, ...]) -> None:
    for n in names:
        v = getattr(obj, n)
        if isinstance(v, int) and not isinstance(v, bool):
            setattr(obj, n, float(v))


def _check_tube(t: TubeConfig, where: str) -> None:
    from drivers.xray.tables import DIALECTS, MODELS
    _str(where, "driver", t.driver, ("hamamatsu",))
    _port(where, t.port)
    _str(where, "dialect", t.dialect, tuple(DIALECTS))
    _str(where, "model", t.model, tuple(MODELS))
    m = MODELS[t.model]
    _number(where, "baudrate", t.baudrate, integer=True, optional=True)
    if t.baudrate is not None and t.baudrate not in BAUD_RATES:
        raise _fail(where, "baudrate", f"must be a standard rate ({', '.join(map(str, BAUD_RATES))})",
                    t.baudrate)
    _number(where, "kv_max", t.kv_max, lo=m.kv_min, hi=m.kv_max, optional=True,
            unit=f"kV (the {m.name} envelope)")
    _number(where, "ua_max", t.ua_max, lo=m.ua_min, hi=m.ua_max, optional=True,
            unit=f"uA (the {m.name} envelope)")
    _number(where, "timeout_s", t.timeout_s, lo=0.0, hi=60.0, lo_open=True, unit="s")
    _number(where, "watchdog_s", t.watchdog_s, lo=0.0, hi=600.0, lo_open=True, optional=True,
            unit="s")
    _number(where, "ramp_allowance_s", t.ramp_allowance_s, lo=0.0, hi=120.0, unit="s")
    _number(where, "retries", t.retries, lo=0, hi=5, integer=True)
    _number(where, "warmup_timeout_s", t.warmup_timeout_s, lo=0.0, hi=7200.0, lo_open=True,
            unit="s")
    _coerce_floats(t, ("kv_max", "ua_max", "timeout_s", "watchdog_s", "ramp_allowance_s",
                       "warmup_timeout_s"))
    if t.watchdog_s is not None and t.watchdog_s < t.timeout_s:
        raise _fail(where, "watchdog_s", f"must be at least timeout_s ({t.timeout_s:g} s): the "
                    "heartbeat could not feed a watchdog shorter than one exchange",
                    t.watchdog_s)


def _check_stage(s: StageConfig, where: str) -> None:
    _str(where, "driver", s.driver, ("pi_gcs",))
    _port(where, s.port)
    _str(where, "axis", s.axis)
    if not _GCS_AXIS_RE.match(s.axis):
        raise _fail(where, "axis", "must be a GCS axis identifier (1-8 letters, digits, _)",
                    s.axis)
    u = s.unit
    if u not in _UNIT_SCALE:
        raise _fail(where, "unit", f"must be one of {', '.join(_UNIT_SCALE)}", u)
    _number(where, "baudrate", s.baudrate, integer=True)
    if s.baudrate not in BAUD_RATES:
        raise _fail(where, "baudrate", f"must be a standard rate ({', '.join(map(str, BAUD_RATES))})",
                    s.baudrate)
    _number(where, "timeout_s", s.timeout_s, lo=0.0, hi=60.0, lo_open=True, unit="s")
    _number(where, "max_wait_s", s.max_wait_s, lo=0.0, hi=3600.0, lo_open=True, unit="s")
    _str(where, "controller_unit", s.controller_unit, tuple(_UNIT_SCALE[u]), optional=True)
    if s.reference_on_connect is not None and not isinstance(s.reference_on_connect, bool):
        raise _fail(where, "reference_on_connect", "must be true or false",
                    s.reference_on_connect)
    if s.soft_limits is not None:
        s.soft_limits = _pair(where, f"soft_limits_{u}", s.soft_limits, u)
    if s.velocity_limits is not None:
        s.velocity_limits = _pair(where, f"velocity_limits_{u}_s", s.velocity_limits, f"{u}/s",
                                  positive=True)
    _number(where, "velocity", s.velocity, lo=0.0, lo_open=True, optional=True, unit=f"{u}/s")
    _coerce_floats(s, ("velocity", "timeout_s", "max_wait_s"))
    if s.velocity is not None and s.velocity_limits is not None and \
            not s.velocity_limits[0] <= s.velocity <= s.velocity_limits[1]:
        lo, hi = s.velocity_limits
        raise _fail(where, "velocity", f"must lie inside velocity_limits_{u}_s "
                    f"[{lo:g}, {hi:g}] {u}/s", s.velocity)


def _check_camera(c: CameraConfig, where: str) -> None:
    from drivers.camera.pco_adapter import PCO_INTERFACES
    _str(where, "driver", c.driver, ("simulated", "pco"))
    _number(where, "exposure_s", c.exposure_s, lo=0.0, hi=3600.0, lo_open=True, unit="s")
    _number(where, "serial", c.serial, lo=0, integer=True, optional=True)
    _str(where, "interface", c.interface, PCO_INTERFACES, optional=True)
    _number(where, "pixel_size_um", c.pixel_size_um, lo=0.0, hi=100.0, lo_open=True,
            optional=True, unit="um")
    _coerce_floats(c, ("exposure_s", "pixel_size_um"))
    if c.driver != "pco":
        for key in ("serial", "interface", "pixel_size_um"):
            if getattr(c, key) is not None:
                raise _fail(where, key, f"applies to driver = \"pco\" only (driver is "
                            f"{c.driver!r})", getattr(c, key))


def _check_simulation(s: SimulationConfig, where: str) -> None:
    _str(where, "bench", s.bench, SIM_BENCHES)
    _number(where, "sensor_px", s.sensor_px, lo=16, hi=4096, integer=True, unit="px")
    _str(where, "sample", s.sample, SIM_SAMPLES)
    _number(where, "seed", s.seed, lo=0, hi=2**32 - 1, integer=True)
    _number(where, "warmup_duration_s", s.warmup_duration_s, lo=0.0, hi=3600.0, lo_open=True,
            unit="s")
    _coerce_floats(s, ("warmup_duration_s",))


def _check_restoration(r: RestorationConfig, where: str) -> None:
    _str(where, "profile", r.profile, optional=True)
    _str(where, "method", r.method)
    _str(where, "device", r.device, optional=True)
    if r.device is not None and not _DEVICE_RE.match(r.device):
        raise _fail(where, "device", "must be cpu, cuda, cuda:N or mps", r.device)
