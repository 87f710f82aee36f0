"""Instrument configuration (TOML): which drivers, ports or URLs, dialects, limits and profile.

A port of ``"sim"`` means: start the protocol emulator of that device on a loopback port and
drive it with the real driver, so the simulated bench runs the code path a real bench runs.

Example (the built-in simulated bench is ``InstrumentConfig.simulated()``)::

    [tube]
    driver = "hamamatsu"        # Hamamatsu microfocus command set
    port = "/dev/ttyUSB0"       # or "socket://192.0.2.10:4001", or "sim"
    dialect = "numeric"         # or "text" for older controllers
    model = "L9181-02"
    kv_max = 60.0               # optional site limits, tighter than the model's
    ua_max = 200.0

    [focus_stage]
    driver = "pi_gcs"
    port = "sim"
    axis = "1"
    soft_limits_um = [0.0, 400.0]

    [rotation_stage]            # optional: tomosynthesis axis (degrees)
    driver = "pi_gcs"
    port = "sim"
    axis = "1"
    soft_limits_deg = [-30.0, 30.0]

    [camera]
    driver = "simulated"        # or "pco"
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

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

_SECTIONS = {"tube", "focus_stage", "rotation_stage", "camera", "simulation", "restoration",
             "storage"}


@dataclass
class TubeConfig:
    driver: str = "hamamatsu"
    port: str = "sim"
    dialect: str = "numeric"
    model: str = "L9181-02"
    kv_max: float | None = None
    ua_max: float | None = None
    timeout_s: float = 1.0
    watchdog_s: float | None = 5.0


@dataclass
class StageConfig:
    driver: str = "pi_gcs"
    port: str = "sim"
    axis: str = "1"
    soft_limits: tuple[float, float] | None = None
    unit: str = "um"
    velocity: float | None = None


@dataclass
class CameraConfig:
    driver: str = "simulated"
    exposure_s: float = 1.0
    serial: int | None = None          # pco: camera serial number, when several are attached


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
    source_path: Path | None = None

    @property
    def uses_simulation(self) -> bool:
        ports = [self.tube.port, self.focus_stage.port]
        if self.rotation_stage is not None:
            ports.append(self.rotation_stage.port)
        return "sim" in ports or self.camera.driver == "simulated"

    @classmethod
    def simulated(cls, bench: str = "lens-yag", sensor_px: int = 1024, sample: str = "pcb",
                  seed: int = 0, rotation: bool = True) -> "InstrumentConfig":
        """The built-in simulated bench: every device emulated, real drivers."""
        profile = {"lens-yag": "sim-yag200-5x", "panel-gos": "sim-gos134"}.get(bench)
        if profile is None:
            raise ConfigError(f"unknown simulated bench {bench!r}; choose lens-yag or panel-gos")
        cfg = cls(simulation=SimulationConfig(bench=bench, sensor_px=sensor_px, sample=sample,
                                              seed=seed),
                  restoration=RestorationConfig(profile=profile))
        if rotation:
            cfg.rotation_stage = StageConfig(port="sim", unit="deg", soft_limits=(-45.0, 45.0))
        if bench == "panel-gos":
            cfg.camera.exposure_s = 0.05
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "InstrumentConfig":
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        return cls.from_dict(raw, source=path)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: Path | None = None) -> "InstrumentConfig":
        where = f"config {source}" if source else "config"
        unknown = set(raw) - _SECTIONS
        if unknown:
            raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}; "
                              f"known: {sorted(_SECTIONS)}")
        cfg = cls(source_path=source)
        cfg.tube = _build(TubeConfig, raw.get("tube", {}), f"{where} [tube]")
        cfg.focus_stage = _stage(raw.get("focus_stage", {}), f"{where} [focus_stage]", "um",
                                 default_limits=(0.0, 400.0))
        if "rotation_stage" in raw:
            cfg.rotation_stage = _stage(raw["rotation_stage"], f"{where} [rotation_stage]", "deg")
        cfg.camera = _build(CameraConfig, raw.get("camera", {}), f"{where} [camera]")
        cfg.simulation = _build(SimulationConfig, raw.get("simulation", {}),
                                f"{where} [simulation]")
        cfg.restoration = _build(RestorationConfig, raw.get("restoration", {}),
                                 f"{where} [restoration]")
        if cfg.tube.driver != "hamamatsu":
            raise ConfigError(f"{where} [tube]: unknown driver {cfg.tube.driver!r} "
                              "(known: hamamatsu)")
        if cfg.tube.dialect not in ("numeric", "text"):
            raise ConfigError(f"{where} [tube]: dialect must be 'numeric' or 'text', "
                              f"got {cfg.tube.dialect!r}")
        if cfg.camera.driver not in ("simulated", "pco"):
            raise ConfigError(f"{where} [camera]: unknown driver {cfg.camera.driver!r} "
                              "(known: simulated, pco)")
        if cfg.camera.exposure_s <= 0:
            raise ConfigError(f"{where} [camera]: exposure_s must be > 0, "
                              f"got {cfg.camera.exposure_s}")
        if cfg.simulation.bench not in ("lens-yag", "panel-gos"):
            raise ConfigError(f"{where} [simulation]: unknown bench {cfg.simulation.bench!r}")
        if not 16 <= cfg.simulation.sensor_px <= 4096:
            raise ConfigError(f"{where} [simulation]: sensor_px must be 16..4096, "
                              f"got {cfg.simulation.sensor_px}")
        return cfg


def _build(kind, raw: dict, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {type(raw).__name__}")
    names = kind.__dataclass_fields__
    unknown = set(raw) - set(names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    obj = kind()
    for key, value in raw.items():
        default = getattr(obj, key)
        if isinstance(default, bool) or (default is not None and not isinstance(value, type(default))
                                         and not (isinstance(default, float)
                                                  and isinstance(value, int))):
            if default is not None and not isinstance(value, type(default)):
                raise ConfigError(f"{where}: {key} must be {type(default).__name__}, "
                                  f"got {value!r}")
        setattr(obj, key, float(value) if isinstance(default, float) else value)
    return obj


def _stage(raw: dict, where: str, unit: str, default_limits=None) -> StageConfig:
    raw = dict(raw)
    limits = raw.pop(f"soft_limits_{unit}", None)
    cfg = _build(StageConfig, raw, where)
    cfg.unit = unit
    limits = limits if limits is not None else default_limits
    if limits is not None:
        if (not isinstance(limits, (list, tuple)) or len(limits) != 2
                or not all(isinstance(v, (int, float)) for v in limits) or limits[0] >= limits[1]):
            raise ConfigError(f"{where}: soft_limits_{unit} must be [low, high] with low < high, "
                              f"got {limits!r}")
        cfg.soft_limits = (float(limits[0]), float(limits[1]))
    return cfg
