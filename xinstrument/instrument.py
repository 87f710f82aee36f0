"""The Instrument: the one API that the GUI, the EPICS IOC, the CLI and scripts use.

It owns the devices (tube, focus stage, optional rotation stage, camera), the calibration state
(dark, flat, defect map), the detector profile and the restoration stage. In simulation mode it
starts the protocol emulators on loopback ports, connects the real drivers to them, and lets the
digital twin read the emulators' physical state to render camera frames.

Every acquisition is a plan (:mod:`xinstrument.scans.plans`, :class:`xinstrument.scans.TomoPlan`)
run by the instrument's engine (``run(plan)``, ``start(plan)``, ``pause()``, ``resume()``,
``abort()``) through the frame pipeline into the recording sink; the convenience methods
(``acquire``, ``record``, ``take_darks``, ``focus_scan``...) build those plans. Long operations
hold the operation lock, so a GUI and an IOC in one process cannot interleave two acquisitions.
Clients follow the typed signals of ``events`` (:class:`xinstrument.scans.events.EngineEvents`);
``subscribe(callback)`` still delivers them as ``callback(kind, payload)`` with kinds "state",
"frame", "focus", "progress", "log", "error".

Safety lives here and in the drivers: the site kV / uA limits are handed to the tube driver's
own limit check; each axis has soft limits (config, then ``set_soft_limits`` from any client),
enforced by the stage driver before a move is sent and kept across restarts in a state file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from drivers.camera.base import Camera, CameraError
from drivers.camera.simulated import SimulatedCamera
from drivers.stage import GcsAxis, GcsController, GcsError, StageLimitError
from drivers.transport import TransportError
from drivers.xray import HamamatsuTube, TubeError, TubeLimitError
from drivers.xray.tables import model as tube_model

from .acquisition.frame import Frame, ReferenceSet
from .acquisition.pipeline import LiveView
from .config import InstrumentConfig
from .errors import InstrumentError, UserError
from .restoration import registry
from .restoration.dose import (
    ADU_PER_QUANTUM_KEY,
    DOSE_METHODS,
    DoseMetadataError,
    FlatReference,
    effective_dose_ratio,
    measured_flat_dose_ratio,
    twin_flat_dose_ratio,
)
from .restoration.dose import restore_with_dose as _restore_with_dose
from .scans.engine import Engine, PlanError, RunHandle
from .scans.events import EngineEvents

log = logging.getLogger("xinstrument")

Listener = Callable[[str, Any], None]


# What the devices raise, for clients that report device faults without importing drivers.
DEVICE_ERRORS: tuple[type[BaseException], ...] = (CameraError, TransportError, TubeError,
                                                  TubeLimitError, GcsError, StageLimitError)

# The one frame type; the name the API used before plans existed.
AveragedFrame = Frame


class Instrument:
    """The bench. ``state_file``: where axis soft limits set at run time are kept across
    restarts (default: none for the simulated bench, ``$XINSTRUMENT_STATE_DIR`` or
    ``~/.local/state/xinstrument`` / ``limits.json`` for a real one)."""

    def __init__(self, config: InstrumentConfig | None = None,
                 state_file: str | Path | None = None) -> None:
        self.config = config or InstrumentConfig.simulated()
        self.events = EngineEvents()
        self.engine = Engine(self)
        self._refset: ReferenceSet | None = None
        self._handle: RunHandle | None = None
        self.state_file = Path(state_file) if state_file is not None else self._default_state()
        self._soft_limits: dict[str, tuple[float, float]] = self._load_limits()
        self.tube = None
        self.focus_axis = None
        self.rotation_axis = None
        self.camera: Camera | None = None
        self.twin = None
        self._emulators: list = []
        self._controllers: list = []
        self._listeners: list[Listener] = []
        self._op_lock = threading.Lock()   # plain lock: a stream's supervisor thread releases it
        self._operation: str | None = None
        self._abort = threading.Event()
        self.dark: np.ndarray | None = None
        self.flat: np.ndarray | None = None
        self.corrector = None
        self.profile = None
        self._restorers: dict[tuple, Any] = {}
        self.restoration_method: str = self.config.restoration.method
        self.restoration_steps: int | None = None       # sampler steps / RL iterations
        self.restoration_device: str | None = self.config.restoration.device
        self.flat_frames_averaged: int | None = None    # frames in the flat reference
        # tube output and angle while the flat was taken (recorded beside it in scan files)
        self.flat_conditions: dict[str, float] = {}
        self.dark_frames_averaged: int | None = None
        self.last_frame: AveragedFrame | None = None
        self._fidelity: dict[str, Any] | None = None    # set_fidelity_policy; None = off
        self.connected = False
        self.pipeline = None
        self.live = None
        self._stream_thread: threading.Thread | None = None
        self._stream_error: BaseException | None = None
        self.last_stream_stats = None
        # legacy listeners (subscribe) receive the typed signals as (kind, payload)
        ev = self.events
        ev.frame_ready.connect(lambda f: self._emit("frame", f))
        ev.progress.connect(lambda p: self._emit("progress", (p.kind, p.fraction)))
        ev.focus_point.connect(lambda pos, value: self._emit("focus", (pos, value)))
        ev.state_changed.connect(lambda st: self._emit("state", st))
        ev.log.connect(lambda msg: self._emit("log", msg))

    # --- events --------------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Register ``listener(kind, payload)``; returns a function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _emit(self, kind: str, payload: Any = None) -> None:
        for fn in list(self._listeners):
            try:
                fn(kind, payload)
            except Exception:  # a broken client must not break the instrument
                log.exception("event listener failed on %s", kind)

    def log_message(self, message: str, level: int = logging.INFO) -> None:
        """Log ``message`` and publish it on ``events.log``."""
        log.log(level, message)
        self.events.log.emit(message)

    _log = log_message

    def publish_state(self) -> None:
        """Publish ``snapshot()`` on ``events.state_changed``."""
        self.events.state_changed.emit(self.snapshot())

    def publish_frame(self, frame: Frame) -> None:
        """Make ``frame`` the latest and publish it on ``events.frame_ready``."""
        self.last_frame = frame
        self.events.frame_ready.emit(frame)

    # --- plans ---------------------------------------------------------------------------------
    def run(self, plan):
        """Run ``plan`` to its end (blocking) and return its value; refused plans raise
        PlanError before anything moves, aborted ones PlanAborted (file kept, incomplete)."""
        self._require()
        return self.engine.run(plan)

    def start(self, plan, sinks=(), paused: bool = False) -> RunHandle:
        """Run ``plan`` in the background; ``wait()`` on the handle for its value.
        ``paused``: hold it before its first frame until ``resume()``."""
        self._require()
        self._handle = self.engine.start(plan, sinks=sinks, paused=paused)
        return self._handle

    def stop(self) -> None:
        """End the running open-ended plan (a continuous or paced series) cleanly after the
        frame in progress; its file is complete."""
        self.engine.stop()

    def pause(self) -> None:
        """Hold the running plan at its next frame boundary."""
        self.engine.pause()

    def resume(self) -> None:
        self.engine.resume()

    # --- connection ----------------------------------------------------------------------------
    def connect(self) -> "Instrument":
        if self.connected:
            return self
        cfg = self.config
        try:
            tube_url = self._port(cfg.tube.port, "tube")
            self.tube = HamamatsuTube(tube_url, dialect=cfg.tube.dialect, model=cfg.tube.model,
                                      timeout_s=cfg.tube.timeout_s,
                                      watchdog_s=cfg.tube.watchdog_s,
                                      limits=self._site_tube_limits(),
                                      baudrate=cfg.tube.baudrate, retries=cfg.tube.retries,
                                      ramp_allowance_s=cfg.tube.ramp_allowance_s)
            self.tube.connect()
            self.focus_axis = self._connect_axis(cfg.focus_stage, "focus", GcsController, GcsAxis)
            if cfg.rotation_stage is not None:
                self.rotation_axis = self._connect_axis(cfg.rotation_stage, "rotation",
                                                        GcsController, GcsAxis)
            self.camera = self._connect_camera()
            self.camera.exposure_s = cfg.camera.exposure_s
        except BaseException:
            self.disconnect()
            raise
        self.connected = True
        self._log(f"connected: tube {cfg.tube.model} ({cfg.tube.port}), focus stage "
                  f"({cfg.focus_stage.port}), camera {self.camera.name}")
        self.publish_state()
        return self

    def _port(self, port: str, device: str, axes=None) -> str:
        if port != "sim":
            return port
        from drivers.emulators import AxisSpec, GcsEmulator, TubeEmulator

        if device == "tube":
            emu = TubeEmulator(model=self.config.tube.model, dialect=self.config.tube.dialect,
                               warmup_duration_s=self.config.simulation.warmup_duration_s)
            self.tube_emulator = emu
        else:
            spec = AxisSpec(**axes)
            emu = GcsEmulator(axes={"1": spec})
            setattr(self, f"{device}_emulator", emu)
        self._emulators.append(emu)
        return emu.serve_tcp("127.0.0.1", 0)

    def _connect_axis(self, scfg, device, controller_cls, axis_cls):
        if scfg.unit == "um":
            lo, hi = scfg.soft_limits or (0.0, 400.0)
            # PIFOC-class objective scanner: 400 um travel, fast closed-loop piezo
            spec = dict(unit="um", min=lo, max=hi, velocity_per_s=400.0, initial=lo)
        else:
            lo, hi = scfg.soft_limits or (-45.0, 45.0)
            spec = dict(unit="deg", min=lo, max=hi, velocity_per_s=20.0, initial=0.0)
        url = self._port(scfg.port, device, spec)
        ctrl = controller_cls(url, **scfg.controller_kwargs())
        ctrl.connect()
        self._controllers.append(ctrl)
        axis = axis_cls(ctrl, scfg.axis, unit=scfg.unit,
                        soft_limits=self._soft_limits.get(device, scfg.soft_limits),
                        scale=scfg.scale, velocity_limits=scfg.velocity_limits,
                        max_wait_s=scfg.max_wait_s)
        if not axis.referenced:
            if not scfg.references_on_connect:
                # a reference run crosses the whole travel: only when the config allows it
                raise InstrumentError(
                    f"{device} axis {scfg.axis} is not referenced and the config does not allow "
                    f"a reference move (reference_on_connect = false); reference it with the "
                    f"optics clear, or set reference_on_connect = true in [{device}_stage]")
            self._log(f"{device} axis {scfg.axis}: referencing (FRF)")
            axis.reference()
        if scfg.velocity is not None:
            axis.velocity = scfg.velocity
        return axis

    def _connect_camera(self) -> Camera:
        cfg = self.config
        if cfg.camera.driver == "pco":
            from drivers.camera.pco_adapter import PcoCamera
            return PcoCamera(interface=cfg.camera.interface, serial=cfg.camera.serial,
                             **({"pixel_size_um": cfg.camera.pixel_size_um}
                                if cfg.camera.pixel_size_um is not None else {}))
        from .sim import BENCHES, Twin, WorldState

        sim = cfg.simulation
        bench = BENCHES[sim.bench](sensor_px=sim.sensor_px)
        self.twin = Twin(bench, sample=sim.sample, seed=sim.seed, state=self._world_state)
        self._sample_in = True
        self._world_cls = WorldState
        s = bench.sensor
        return SimulatedCamera(self.twin.camera_hook("thick"), (s.rows, s.cols), s.pixel_um,
                               s.bit_depth, s.max_fps, name=f"sim-{sim.bench}")

    def _world_state(self):
        """The physical world the simulated camera sees: read from the emulators."""
        emu = getattr(self, "tube_emulator", None)
        stage = getattr(self, "focus_emulator", None)
        st = self._world_cls()
        if emu is not None:
            st.xray_on = bool(emu.xray_on)
            st.voltage_kv = float(emu.output_voltage_kv) if st.xray_on else \
                float(self.twin.fixed_state.voltage_kv)
            st.current_ua = float(emu.output_current_ua)
            st.focus_mode = int(emu.focus_mode)
        if stage is not None:
            st.stage_um = float(stage.position("1"))
        rot = getattr(self, "rotation_emulator", None)
        if rot is not None:
            st.theta_deg = float(rot.position("1"))
        st.sample_in = self._sample_in
        return st

    def disconnect(self) -> None:
        """X-rays off first, then close everything; safe to call more than once."""
        if self.engine.current is not None:
            with contextlib.suppress(Exception):
                self.engine.abort("instrument disconnected")
                if self._handle is not None:
                    self._handle._done.wait(10.0)
        with contextlib.suppress(Exception):
            if self.camera is not None:
                self.camera.close()
        if self.tube is not None:
            try:
                self.tube.xray_off()
            except Exception as exc:
                log.error("could not confirm X-rays off on disconnect: %s", exc)
            with contextlib.suppress(Exception):
                self.tube.close()
        for ctrl in self._controllers:
            with contextlib.suppress(Exception):
                ctrl.close()
        for emu in self._emulators:
            with contextlib.suppress(Exception):
                emu.close()
        self._controllers.clear()
        self._emulators.clear()
        was = self.connected
        self.connected = False
        if was:
            self._log("disconnected (X-rays off)")

    def __enter__(self) -> "Instrument":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.disconnect()

    def _require(self) -> None:
        if not self.connected:
            raise InstrumentError("instrument is not connected: call connect() first")

    @contextlib.contextmanager
    def operation(self, name: str):
        """Exclusive long operation (acquisition, scan); refuses to start a second one."""
        if not self._op_lock.acquire(blocking=False):
            raise InstrumentError(f"instrument busy with {self._operation!r}; cannot start {name!r}")
        self._operation = name
        self._abort.clear()
        try:
            yield
        except BaseException as exc:
            self._emit("error", f"{name}: {exc}")
            raise
        finally:
            self._operation = None
            self._op_lock.release()

    @property
    def busy(self) -> str | None:
        return self._operation

    def abort(self) -> None:
        """Ask the running plan to stop at the next frame boundary."""
        self._abort.set()
        self.engine.abort("aborted by the operator")
        self._log("abort requested")

    @property
    def pipeline(self):
        """The pipeline of the running plan's current acquisition (None between them)."""
        return self.engine.pipeline

    @pipeline.setter
    def pipeline(self, value) -> None:   # set to None by the constructor only
        pass

    # --- safety: soft limits and tube limits ---------------------------------------------------
    def _default_state(self) -> Path | None:
        ports = [self.config.tube.port, self.config.focus_stage.port]
        if all(p == "sim" for p in ports):
            return None       # the twin starts from its config every time
        base = os.environ.get("XINSTRUMENT_STATE_DIR") or str(
            Path.home() / ".local" / "state" / "xinstrument")
        return Path(base) / "limits.json"

    def _load_limits(self) -> dict[str, tuple[float, float]]:
        if self.state_file is None or not self.state_file.exists():
            return {}
        try:
            raw = json.loads(self.state_file.read_text())
            out = {k: (float(v[0]), float(v[1])) for k, v in raw.get("soft_limits", {}).items()}
        except (OSError, ValueError, TypeError, IndexError, AttributeError) as exc:
            raise UserError(f"instrument state file {self.state_file} is unreadable ({exc}); "
                            "fix or delete it") from None
        return {k: v for k, v in out.items() if k in ("focus", "rotation") and v[0] < v[1]}

    def _save_limits(self) -> None:
        if self.state_file is None:
            return
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"soft_limits": {k: list(v) for k, v in
                                                       self._soft_limits.items()}}, indent=1))
            os.replace(tmp, self.state_file)
        except OSError as exc:
            raise InstrumentError(f"cannot save the soft limits to {self.state_file}: "
                                  f"{exc.strerror or exc}") from None

    def _axis(self, name: str):
        axis = {"focus": self.focus_axis, "rotation": self.rotation_axis}.get(name)
        if name not in ("focus", "rotation"):
            raise UserError(f"unknown axis {name!r}: focus or rotation")
        if axis is None:
            raise InstrumentError(f"no {name} stage configured" if self.connected else
                                  "instrument is not connected: call connect() first")
        return axis

    def soft_limits(self, axis: str) -> tuple[float, float]:
        """The effective travel (low, high) of ``axis`` ("focus" um, "rotation" deg): the
        soft limits within the controller's travel."""
        return tuple(float(v) for v in self._axis(axis).limits)  # type: ignore[return-value]

    def travel_limits(self, axis: str) -> tuple[float, float]:
        """The controller's travel of ``axis`` (what soft limits must lie within)."""
        ax = self._axis(axis)
        saved = ax.soft_limits
        ax.soft_limits = None
        try:
            return tuple(float(v) for v in ax.limits)  # type: ignore[return-value]
        finally:
            ax.soft_limits = saved

    def axis_position(self, axis: str) -> float:
        """Position of ``axis`` ("focus" um, "rotation" deg) as the controller reads it."""
        return float(self._axis(axis).position)

    def axis_on_target(self, axis: str) -> bool:
        """The last move of ``axis`` has ended on its target."""
        return bool(self._axis(axis).on_target)

    def axis_velocity(self, axis: str) -> float:
        return float(self._axis(axis).velocity)

    def axis_velocity_limits(self, axis: str) -> tuple[float, float] | None:
        """(lowest, highest) velocity the controller accepts, when the driver knows them."""
        lim = getattr(self._axis(axis), "velocity_limits", None)
        return None if lim is None else (float(lim[0]), float(lim[1]))

    def set_axis_velocity(self, axis: str, velocity: float) -> float:
        """Set the velocity of ``axis`` (unit per s); the driver refuses values outside its
        velocity limits. Returns the velocity in force."""
        ax = self._axis(axis)
        ax.velocity = float(velocity)
        return float(ax.velocity)

    def stop_axis(self, axis: str) -> None:
        """Stop ``axis`` where it is (the other axes keep moving)."""
        self._axis(axis).stop()
        self.publish_state()

    def set_soft_limits(self, axis: str, low: float, high: float) -> tuple[float, float]:
        """Set the soft limits of ``axis`` (from config, CLI, GUI or EPICS alike): they must lie
        inside the controller's travel; the stage driver refuses moves beyond them before
        sending; kept across restarts in ``state_file``. Returns the effective limits."""
        ax = self._axis(axis)
        try:
            lo, hi = float(low), float(high)
        except (TypeError, ValueError):
            raise UserError(f"{axis} soft limits must be numbers, got {low!r}, {high!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise UserError(f"{axis} soft limits must be finite with low < high, got "
                            f"{lo:g}, {hi:g}")
        hw_lo, hw_hi = self.travel_limits(axis)
        if lo < hw_lo - 1e-9 or hi > hw_hi + 1e-9:
            raise UserError(f"{axis} soft limits [{lo:g}, {hi:g}] exceed the controller travel "
                            f"[{hw_lo:g}, {hw_hi:g}]")
        ax.soft_limits = (lo, hi)
        self._soft_limits[axis] = (lo, hi)
        self._save_limits()
        self._log(f"{axis} soft limits set to [{lo:g}, {hi:g}]")
        self.publish_state()
        return self.soft_limits(axis)

    def _site_tube_limits(self):
        """The tube model's envelope narrowed by the site kV / uA limits of the config: the
        driver checks every setpoint against it before sending."""
        lim = tube_model(self.config.tube.model).limits
        kv_max, ua_max = self.config.tube.kv_max, self.config.tube.ua_max
        return dataclasses.replace(lim, kv_max=min(lim.kv_max, kv_max or lim.kv_max),
                                   ua_max=min(lim.ua_max, ua_max or lim.ua_max))

    def set_site_limits(self, kv_max: float | None = None, ua_max: float | None = None):
        """Narrow (or widen, within the tube model) the site kV / uA limits; the tube driver
        enforces them before sending any setpoint. Returns the effective limits."""
        for name, v in (("kv_max", kv_max), ("ua_max", ua_max)):
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise UserError(f"site {name} must be a positive number, got {v!r}")
        if kv_max is not None:
            self.config.tube.kv_max = float(kv_max)
        if ua_max is not None:
            self.config.tube.ua_max = float(ua_max)
        lim = self._site_tube_limits()
        if self.tube is not None:
            try:
                self.tube.limits = lim
            except TubeLimitError as exc:
                raise UserError(str(exc)) from None
        self._log(f"site tube limits: {lim.kv_max:g} kV, {lim.ua_max:g} uA")
        return lim

    @property
    def tube_limits(self):
        """The limits the tube driver enforces (model envelope within the site limits)."""
        return self.tube.limits if self.tube is not None else self._site_tube_limits()

    def _check_abort(self, what: str) -> None:
        if self._abort.is_set():
            raise InstrumentError(f"{what} aborted by the operator")

    # --- tube ----------------------------------------------------------------------------------
    def reset_tube_fault(self) -> None:
        """Clear a latched tube fault: reconnect a link that failed, then reset the
        controller's overload latch (X-rays stay off; switching on is a separate command)."""
        self._require()
        tube = self.tube
        if getattr(tube, "fault", None) is not None or not getattr(tube, "connected", True):
            tube.reconnect()
        tube.reset_overload()
        self._log("tube fault reset")
        self.publish_state()

    @property
    def tube_focus_modes(self) -> dict:
        """Focus mode number -> its spec (spot size, highest power) for the configured tube."""
        return dict(tube_model(self.config.tube.model).focus_modes)

    @property
    def tube_setpoints(self) -> tuple[float, float]:
        """(kV, uA) setpoints the tube driver last sent (no exchange with the controller)."""
        self._require()
        return float(self.tube.voltage_setpoint_kv), float(self.tube.current_setpoint_ua)

    @property
    def tube_fault(self) -> BaseException | None:
        """The link or protocol fault that made the tube driver switch X-rays off (None when
        none is latched)."""
        return getattr(self.tube, "fault", None) if self.tube is not None else None

    @property
    def camera_info(self) -> dict[str, Any]:
        """What the connected camera says of itself (driver class, maker, model, serial,
        firmware, binning, cooling setpoint), for facility clients."""
        self._require()
        cam = self.camera
        name = type(cam).__name__
        return {"driver": name, "model": str(getattr(cam, "model", None) or name),
                "manufacturer": "xinstrument" if "Sim" in name else
                str(getattr(cam, "manufacturer", "PCO")),
                "serial_number": str(getattr(cam, "serial_number", "")),
                "firmware_version": str(getattr(cam, "firmware_version", "")),
                "binning": int(getattr(cam, "binning", 1) or 1),
                "temperature_setpoint_c": float(getattr(cam, "temperature_setpoint_c", 20.0)
                                                or 20.0)}

    def axis_controller_name(self, axis: str) -> str:
        """The controller's name of ``axis`` (its axis identifier on the controller)."""
        return str(getattr(self._axis(axis), "name", axis))

    @property
    def camera_name(self) -> str:
        """The camera's name as its driver gives it (the configured driver before connect)."""
        return str(getattr(self.camera, "name", None) or self.config.camera.driver)

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(rows, cols) of the camera's frames with the present ROI and binning."""
        self._require()
        return tuple(int(x) for x in self.camera.frame_shape)  # type: ignore[return-value]

    def tube_status(self):
        self._require()
        return self.tube.status()

    def warm_up(self, progress: Callable[[float], None] | None = None,
                timeout_s: float | None = None) -> None:
        """Run the tube warm-up; bounded by ``timeout_s`` (default: the config's
        ``[tube] warmup_timeout_s``)."""
        if timeout_s is None:
            timeout_s = self.config.tube.warmup_timeout_s
        self._require()
        with self.operation("warm-up"):
            self._log("tube warm-up started")
            self.tube.warm_up(progress_cb=lambda p: (progress and progress(p),
                                                     self._emit("progress", ("warm-up", p))),
                              timeout_s=timeout_s)
            self._log("tube warm-up finished")
        self.publish_state()

    def set_voltage_kv(self, voltage_kv: float) -> None:
        self._require()
        try:
            self.tube.set_voltage_kv(voltage_kv)
        except TubeLimitError as exc:
            raise UserError(f"tube voltage {voltage_kv} kV refused: {exc}") from None
        self.publish_state()

    def set_current_ua(self, current_ua: float) -> None:
        self._require()
        try:
            self.tube.set_current_ua(current_ua)
        except TubeLimitError as exc:
            raise UserError(f"tube current {current_ua} uA refused: {exc}") from None
        self.publish_state()

    def set_focus_mode(self, mode: int) -> None:
        self._require()
        self.tube.set_focus_mode(mode)
        self.publish_state()

    def xray_on(self, settle_s: float = 0.3) -> None:
        self._require()
        self.tube.xray_on()
        self._wait_tube_output(settle_s)
        self.publish_state()

    def xray_off(self) -> None:
        """Always allowed, also while another operation runs."""
        if self.tube is None:
            return
        self.tube.xray_off()
        self.publish_state()

    @property
    def xray_is_on(self) -> bool:
        return self.tube is not None and self.tube.state.name == "XRAY_ON"

    def check_tube_ready(self) -> None:
        """Refuse (PlanError) when X-rays cannot be switched on: tube not warmed up, faulted."""
        self._require()
        st = self.tube.status()
        if st.state.name in ("WARMUP_NEEDED", "WARMING_UP", "PREHEAT", "NOT_READY", "ERROR",
                             "OVERLOAD"):
            raise PlanError(f"the tube is not ready for X-rays ({st.state.name.lower()}): "
                            "warm it up or clear its fault first")

    def _wait_tube_output(self, settle_s: float, timeout_s: float = 10.0) -> None:
        """Wait until the tube output has reached its setpoints (ramping), then settle."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            st = self.tube.status()
            if (abs(st.voltage_kv - st.voltage_setpoint_kv) <= 0.5
                    and abs(st.current_ua - st.current_setpoint_ua) <= 1.0):
                break
            time.sleep(0.05)
        time.sleep(settle_s)

    # --- stages --------------------------------------------------------------------------------
    @property
    def focus_position_um(self) -> float:
        self._require()
        return float(self.focus_axis.position)

    def move_focus_um(self, position_um: float, wait: bool = True) -> None:
        self._require()
        self.focus_axis.move_to(position_um, wait=wait)
        self.publish_state()

    @property
    def rotation_deg(self) -> float:
        self._require()
        if self.rotation_axis is None:
            raise InstrumentError("no rotation stage configured")
        return float(self.rotation_axis.position)

    def move_rotation_deg(self, angle_deg: float, wait: bool = True) -> None:
        self._require()
        if self.rotation_axis is None:
            raise InstrumentError("no rotation stage configured")
        self.rotation_axis.move_to(angle_deg, wait=wait)
        self.publish_state()

    def stop_motion(self) -> None:
        for axis in (self.focus_axis, self.rotation_axis):
            if axis is not None:
                with contextlib.suppress(Exception):
                    axis.stop()

    # --- sample (flats need the sample out of the beam) ----------------------------------------
    def set_sample_in(self, inside: bool) -> None:
        if self.twin is None:
            raise InstrumentError("no sample translation is configured on this bench: move the "
                                  "sample by hand and take flats with sample_out=False")
        self._sample_in = bool(inside)

    def set_sample(self, name: str, seed: int | None = None) -> None:
        """Simulation only: put another procedural sample on the twin's sample stage."""
        if self.twin is None:
            raise InstrumentError("set_sample is only available on the simulated bench")
        from .sim import make_sample
        self.twin.sample = make_sample(name, self.twin.config.fov_mm,
                                       self.twin.seed if seed is None else seed)

    # --- camera and acquisition ----------------------------------------------------------------
    def set_exposure_s(self, exposure_s: float) -> None:
        self._require()
        self.camera.exposure_s = exposure_s

    @property
    def exposure_s(self) -> float:
        self._require()
        return float(self.camera.exposure_s)

    @property
    def camera_dtype(self) -> str:
        """Storage dtype of single raw camera frames (uint16 up to 16-bit sensors)."""
        bits = int(getattr(self.camera, "bit_depth", 16) or 16)
        return "uint16" if bits <= 16 else "uint32"

    @property
    def pixel_size_um(self) -> float | None:
        """Detector pixel at the scintillator: the profile's, else the twin's, else the
        camera's."""
        if self.profile is not None and getattr(self.profile, "pixel_size_um", None):
            return float(self.profile.pixel_size_um)
        if self.twin is not None:
            return float(self.twin.config.pixel_at_screen_um)
        px = getattr(self.camera, "pixel_size_um", None)
        return float(px) if px else None

    @property
    def has_rotation_stage(self) -> bool:
        return self.rotation_axis is not None

    @property
    def can_move_sample(self) -> bool:
        return self.twin is not None

    # --- references ----------------------------------------------------------------------------
    @property
    def references(self) -> ReferenceSet | None:
        """The current dark + flat reference set (None until both exist)."""
        if self.dark is None or self.flat is None:
            return None
        rs = self._refset
        if rs is None or rs.dark is not self.dark or rs.flat is not self.flat:
            rs = ReferenceSet(self.dark, self.flat,
                              dark_frames_averaged=int(self.dark_frames_averaged or 1),
                              flat_frames_averaged=int(self.flat_frames_averaged or 1),
                              exposure_s=float(self.camera.exposure_s) if self.camera else
                              math.nan, **self.flat_conditions)
            self.dark, self.flat = rs.dark, rs.flat
            self._refset = rs
        return rs

    def install_references(self, refs: ReferenceSet) -> None:
        """Make ``refs`` the references that correct every following frame."""
        self._refset = refs
        self.dark, self.flat = refs.dark, refs.flat
        self.dark_frames_averaged = refs.dark_frames_averaged
        self.flat_frames_averaged = refs.flat_frames_averaged
        self.corrector = refs.corrector
        self._log(f"references: dark of {refs.dark_frames_averaged} frames (mean "
                  f"{refs.dark.mean():.1f} ADU), flat of {refs.flat_frames_averaged} frames "
                  f"(mean {refs.flat.mean():.1f} ADU), {int(refs.defect_map.sum())} defective "
                  "pixels")

    def take_darks(self, n_frames: int = 10) -> np.ndarray:
        """Average ``n_frames`` with X-rays off; the result becomes the dark reference."""
        frame = self.run(SingleReference(which="dark", n_frames=n_frames))
        return frame.data

    def take_flats(self, n_frames: int = 10, sample_out: bool = True) -> np.ndarray:
        """Average ``n_frames`` with X-rays on and the sample out of the beam."""
        frame = self.run(SingleReference(which="flat", n_frames=n_frames,
                                         sample_out=sample_out))
        return frame.data

    def take_references(self, dark_frames: int = 10, flat_frames: int = 10,
                        sample_out: bool = True, out=None, overwrite: bool = False):
        """Darks and flats in one plan (optionally recorded to ``out``)."""
        return self.run(References(dark_frames=dark_frames, flat_frames=flat_frames,
                                   sample_out=sample_out, out=out, overwrite=overwrite))

    def _update_corrector(self) -> None:
        refs = self.references
        self.corrector = refs.corrector if refs is not None else None
        if refs is not None:
            self._log(f"flat-field correction ready ({int(refs.defect_map.sum())} defective "
                      "pixels)")

    def acquire(self, n_average: int = 1, correct: bool = True,
                restore: bool = False, out=None, overwrite: bool = False) -> Frame:
        """One averaged frame (a Snap plan); corrected to transmission when ``correct``."""
        return self.run(Snap(n_average=n_average, correct=correct, restore=restore, out=out,
                             overwrite=overwrite))

    # --- restoration for plans -----------------------------------------------------------------
    def check_restoration(self, method: str | None = None, n_average: int | None = None) -> None:
        """Refuse (PlanError) when ``method`` (default: the current one) cannot run, or, given
        the frames averaged, would refuse every frame at the present settings (a specialist
        outside its trained dose range): said before a plan opens its file or takes an
        exposure."""
        try:
            if self.profile is None:
                self.load_profile()
            spec = registry.get(method or self.restoration_method)
        except (UserError, registry.UnknownMethodError) as exc:
            raise PlanError(f"restoration: {exc}") from None
        if not spec.available_with(self.profile):
            raise PlanError(f"restoration method {spec.name!r} cannot run with profile "
                            f"{self.profile.name}: it needs "
                            + ", ".join(n for n, f in (("weights", spec.needs_weights),
                                                       ("an NNPS", spec.needs_nnps),
                                                       ("a PSF", spec.needs_psf)) if f))
        if n_average is not None:
            why = self.stream_restorer(method=method).refusal(n_average)
            if why:
                raise PlanError(f"restoration refuses these frames: {why}")

    def stream_restorer(self, follow: bool = False, method: str | None = None) -> "_RestoreFn":
        """The pipeline's restoration stage with ``method`` (default: the current one) and the
        fidelity policy; ``follow``: pick up method changes from frame to frame (live view)."""
        return _RestoreFn(self, guarded=self._fidelity is not None, follow=follow,
                          method=method)

    def live_sink(self) -> LiveView:
        """A fresh live-view ring buffer for the next acquisition (``live_frame()`` reads it)."""
        self.live = LiveView(capacity=2)
        return self.live

    # --- streaming (live view and recording through the acquisition pipeline) ------------------
    def start_stream(self, n_average: int = 1, correct: bool = True, restore: bool = False,
                     record_path=None, n_outputs: int | None = None, metadata: dict | None = None,
                     sinks=(), overwrite: bool = False) -> None:
        """Run the camera continuously through averaging, correction, optional restoration, a
        live view (``live_frame()``), an optional recording and "frame" events (a Series plan
        in the background). Returns at once; ``stop_stream()`` ends it, ``wait_stream()`` waits
        for ``n_outputs`` frames."""
        if n_average < 1:
            raise UserError(f"frames to average must be >= 1, got {n_average}")
        plan = Series(n_frames=n_outputs, n_average=n_average, correct=correct, restore=restore,
                      out=record_path, overwrite=overwrite, metadata=dict(metadata or {}))
        if self.engine.current is not None or self._op_lock.locked():
            raise InstrumentError(f"instrument busy with {self._operation!r}; cannot stream")
        self._stream_error = None
        self.start(plan, sinks=sinks)
        self._log(f"stream started ({'recording' if record_path else 'live'}, {n_average} "
                  "frames averaged)")

    def stop_stream(self, timeout_s: float = 30.0):
        """Stop streaming cleanly (a partial average is written with its true count)."""
        self.engine.stop()
        return self.wait_stream(timeout_s)

    def wait_stream(self, timeout_s: float | None = None):
        """Wait for the stream to end; re-raise its error; return its statistics."""
        h = self._handle
        if h is None:
            return self.last_stream_stats
        if not h._done.wait(timeout_s):
            raise InstrumentError(f"stream still running after {timeout_s} s")
        if h.error is not None:
            err, h.error = h.error, None
            raise InstrumentError(f"stream failed: {err}") from err
        return self.last_stream_stats

    def live_frame(self):
        """Latest processed frame of the running plan (Frame) or None."""
        return self.live.latest() if self.live is not None else None

    def record(self, path, n_frames: int, n_average: int = 1, correct: bool = True,
               restore: bool = False, metadata: dict | None = None, overwrite: bool = False):
        """Record ``n_frames`` averaged frames to ``path`` through the pipeline; blocks."""
        if n_frames < 1:
            raise UserError(f"frames to record must be >= 1, got {n_frames}")
        return self.run(Series(n_frames=n_frames, n_average=n_average, correct=correct,
                               restore=restore, out=path, overwrite=overwrite,
                               metadata=dict(metadata or {})))

    # --- focus ---------------------------------------------------------------------------------
    def focus_scan(self, start_um: float | None = None, stop_um: float | None = None,
                   step_um: float = 1.0, frames_per_step: int = 1, metric: str = "hf_energy",
                   coarse_step_um: float | None = None, move_to_best: bool = True,
                   roi: tuple[int, int, int, int] | None = None, out=None,
                   overwrite: bool = False):
        """Step the focus axis in ``step_um`` steps, score sharpness, fit the peak (a FocusScan
        plan). With ``coarse_step_um`` a coarse scan over start..stop (default: the axis
        travel) comes first, then a fine scan in ``step_um`` steps around its optimum."""
        return self.run(FocusScan(start_um=start_um, stop_um=stop_um, step_um=step_um,
                                  frames_per_step=frames_per_step, metric=metric,
                                  coarse_step_um=coarse_step_um, move_to_best=move_to_best,
                                  roi=roi, out=out, overwrite=overwrite))

    # --- profile and restoration ---------------------------------------------------------------
    def load_profile(self, name_or_path: str | None = None):
        from .profiles import find_profile
        name = name_or_path or self.config.restoration.profile
        if not name:
            raise UserError("no detector profile configured: give one with --profile")
        self.profile = find_profile(name)
        self._restorers.clear()
        self._log(f"profile {self.profile.name} loaded ({self.profile.detector_id})")
        if self._fidelity is not None:
            # the policy is the profile's: its calibration, acceptance and fallback follow it
            settings = dict(self._fidelity["settings"])
            if settings["nnps_lr"] is not None:     # measured on the previous detector
                settings["nnps_lr"] = None
                self._log("fidelity policy: the NNPS given for the previous profile is dropped",
                          logging.WARNING)
            for fallback in dict.fromkeys((settings["fallback_method"], "auto")):
                try:
                    self.set_fidelity_policy(True, **{**settings, "fallback_method": fallback})
                    break
                except UserError as exc:    # a fallback refused there, or no noise model
                    error = exc
                    self._log(f"fidelity policy with profile {self.profile.name}: {exc}",
                              logging.WARNING)
            else:
                self._fidelity = None
                self._log(f"fidelity guard off: {error}", logging.WARNING)
        return self.profile

    def set_fidelity_policy(self, enabled: bool, max_reduced_chi2: float | None = None,
                            fallback_method: str | None = "auto", *, tile_px: int = 32,
                            false_alarm_rate: float = 1e-3, dose_ratio: float | None = None,
                            flat_frames_averaged: int | None = None,
                            nnps_lr: np.ndarray | None = None) -> None:
        """Check every frame restored by ``acquire(restore=True)`` and by the stream against its
        measurement; the report (:class:`~xinstrument.restoration.fidelity_report.FidelityReport`)
        goes to ``frame.fidelity``.

        A frame falls back when the check finds it inconsistent (at most ``false_alarm_rate``
        of consistent frames are), its reduced chi-square exceeds ``max_reduced_chi2`` (if
        given), or the profile's calibrated policy does not accept its method: the measurement
        is restored again with the fallback, whose restoration gets its own report (``fell_back``
        True, ``replaced`` the report of the restoration it replaced, ``fallback_reason`` why).

        ``fallback_method``: "auto" takes the classical method the profile's policy accepts
        with the best calibration figures (:meth:`FidelityReporter.choose_fallback`); a method
        name must be classical and accepted by the policy (else a UserError naming the method,
        the profile and the reason); None never falls back. Without an accepted fallback a
        failing frame is kept and flagged, with the reason. A profile without the acceptance
        calibration accepts nothing: its frames are flagged and never fall back.

        ``dose_ratio``: quanta per pixel of the flat over the profile's ``nnps_mean_signal``;
        None takes it from the digital twin on the simulated bench, otherwise the guard reports
        unnormalised residuals and never falls back. ``flat_frames_averaged``: frames in the
        flat reference (its noise enters the check).
        """
        if not enabled:
            self._fidelity = None
            self._log("fidelity guard off")
            return
        from .restoration import CLASSICAL_METHODS
        from .restoration.fidelity_report import FidelityReporter
        if self.profile is None:
            self.load_profile()
        if fallback_method is not None and fallback_method != "auto" \
                and fallback_method not in CLASSICAL_METHODS:
            raise UserError(f"fallback method must be classical ({', '.join(CLASSICAL_METHODS)}), "
                            f"'auto' or None, got {fallback_method!r}")
        if max_reduced_chi2 is not None and not (np.isfinite(max_reduced_chi2)
                                                 and max_reduced_chi2 > 0):
            raise UserError(f"max_reduced_chi2 must be a positive number or None, got {max_reduced_chi2!r}")
        # the fidelity report: consistency and null-space uncertainty maps, verdict, action
        guard = FidelityReporter(self.profile, tile_px, false_alarm_rate, nnps_lr=nnps_lr,
                                 device=self.config.restoration.device)
        runnable = [m for m in CLASSICAL_METHODS if registry.get(m).available_with(self.profile)]
        name = self.profile.name
        if fallback_method == "auto":
            fallback, why = guard.choose_fallback(runnable)
        elif fallback_method is not None:
            if fallback_method not in runnable:
                raise UserError(f"fallback method {fallback_method!r} cannot run with profile "
                                f"{name}; it can run: {', '.join(runnable) or 'none'}")
            ok, reason = guard.accepts(fallback_method)
            if ok is not True:
                best, _ = guard.choose_fallback(runnable)
                said = ("is not calibrated, so it accepts no fallback" if ok is None
                        else "does not accept it")
                raise UserError(
                    f"fallback method {fallback_method!r} refused: the fidelity policy of "
                    f"profile {name} {said} ({reason}); "
                    + (f"the classical method it accepts with the best figures is {best!r} "
                       "(fallback_method='auto' takes it)" if best else
                       "fallback_method=None keeps failing frames and flags them"))
            fallback, why = fallback_method, reason
        else:
            fallback, why = None, "no fallback configured"
        self._fidelity = {"guard": guard, "max_reduced_chi2": max_reduced_chi2,
                          "fallback_method": fallback, "fallback_why": why,
                          "dose_ratio": dose_ratio, "flat_frames_averaged": flat_frames_averaged,
                          "settings": {"max_reduced_chi2": max_reduced_chi2,
                                       "fallback_method": fallback_method, "tile_px": tile_px,
                                       "false_alarm_rate": false_alarm_rate,
                                       "dose_ratio": dose_ratio,
                                       "flat_frames_averaged": flat_frames_averaged,
                                       "nnps_lr": nnps_lr}}
        self._log(f"fidelity guard on (tiles {tile_px} px, false-alarm rate {false_alarm_rate:g}, "
                  f"max reduced chi2 {max_reduced_chi2}, fallback "
                  f"{fallback or 'none'}: {why})")

    @property
    def fidelity_guard(self):
        """The FidelityReporter of the current policy, or None when the guard is off."""
        return None if self._fidelity is None else self._fidelity["guard"]

    @property
    def fidelity_fallback(self) -> str | None:
        """The fallback method of the current policy (None: failing frames are kept, flagged)."""
        return None if self._fidelity is None else self._fidelity["fallback_method"]

    @property
    def fidelity_fallback_reason(self) -> str:
        """Why the current policy has that fallback (or none); "" when the guard is off."""
        return "" if self._fidelity is None else self._fidelity["fallback_why"]

    def frame_dose_ratio(self, exposure_s: float, voltage_kv: float | None = None,
                         current_ua: float | None = None) -> float | None:
        """Detected quanta per pixel of one exposure's flat over the profile's
        ``nnps_mean_signal`` at these settings (the tube's present ones where none are given):
        the fidelity policy's ``dose_ratio`` when one was given; else, when the profile records
        its ADU per quantum (``nnps_adu_per_quantum``), measured from the current flat and dark
        reference (restoration.dose.measured_flat_dose_ratio; InstrumentError naming what is
        missing); else the digital twin's on the simulated bench; else None (unknown)."""
        pol = self._fidelity
        if pol is not None and pol["dose_ratio"] is not None:
            return float(pol["dose_ratio"])
        mean_signal = getattr(self.profile, "nnps_mean_signal", None)
        adu = (getattr(self.profile, "calibration", None) or {}).get(ADU_PER_QUANTUM_KEY)
        if adu is not None:         # the measured flat: what this detector recorded
            tube = None
            if voltage_kv is None or current_ua is None:
                with contextlib.suppress(Exception):
                    tube = self.tube.status()
            kv = voltage_kv if voltage_kv is not None else getattr(tube, "voltage_kv", None)
            ua = current_ua if current_ua is not None else getattr(tube, "current_ua", None)
            try:
                return measured_flat_dose_ratio(self._flat_reference(), adu, mean_signal,
                                                exposure_s, kv, ua)
            except DoseMetadataError as exc:
                raise InstrumentError(f"dose with profile {self.profile.name}: {exc}") from None
        if self.twin is None or mean_signal is None:
            return None
        st = self._world_state()
        kv = st.voltage_kv if voltage_kv is None else voltage_kv
        ua = st.current_ua if current_ua is None else current_ua
        # simulated bench: detected quanta per pixel of the flat at this frame's settings (the
        # offline restore computes a stored frame's dose with the same function)
        return twin_flat_dose_ratio(self.twin, st, exposure_s, kv, ua, mean_signal)

    def _flat_reference(self) -> FlatReference | None:
        """The current references' flat minus dark (mean ADU) and the settings the flat was
        taken at (None without references)."""
        refs = self.references
        if refs is None:
            return None
        level = float(np.mean(refs.flat, dtype=np.float64) - np.mean(refs.dark, dtype=np.float64))
        return FlatReference(level, float(refs.exposure_s), float(refs.current_ua),
                             float(refs.voltage_kv))

    def restore_frame(self, frame: np.ndarray, method: str | None = None, *,
                      frames_averaged: int = 1, dose_ratio: float | None = None) -> np.ndarray:
        """Restore a measured frame with its noise: methods whose noise model takes the dose
        (:data:`DOSE_METHODS`) get ``dose_ratio`` (one exposure's; None: the profile's
        calibration dose) times ``frames_averaged`` (averaging N frames divides the noise
        variance by N). The fidelity policy's calibration restored its frames this way."""
        r = self.restorer(method)
        return _restore_with_dose(r, frame, frames_averaged, dose_ratio)

    def check_fidelity(self, measured: np.ndarray, restored: np.ndarray, method: str, *,
                       frames_averaged: int, exposure_s: float, voltage_kv: float,
                       current_ua: float):
        """Run the fidelity policy on one restored frame: returns ``(restored, method, report)``,
        with the fallback's restoration, its method and its report when the frame failed."""
        from .restoration.fidelity import forward_model_for
        pol = self._fidelity
        if pol is None:
            raise InstrumentError("the fidelity guard is off: call set_fidelity_policy first")
        try:
            dose = self.frame_dose_ratio(exposure_s, voltage_kv, current_ua)
        except InstrumentError as exc:      # no verdict rather than a wrong one; said once
            dose = None
            if pol.get("dose_error") != str(exc):
                pol["dose_error"] = str(exc)
                self._log(f"fidelity guard without the frame's noise level: {exc}",
                          logging.WARNING)
        guard = pol["guard"]
        flat_n = pol["flat_frames_averaged"] or self.flat_frames_averaged

        def check(x, m):
            return guard.check(measured, x, dose_ratio=dose, frames_averaged=int(frames_averaged),
                               flat_frames_averaged=flat_n, forward=forward_model_for(m),
                               method=m)

        result = check(restored, method)
        reasons = []
        if result.normalised and not result.consistent:
            reasons.append(f"{int(result.flagged.sum())} of "
                           f"{int(np.isfinite(result.tile_chi2).sum())} tiles flagged, "
                           f"{int(result.strong_tiles.sum())} beyond the frame-wise threshold "
                           f"(false-alarm rate {result.expected_false_alarm_rate:g} per frame)")
        if result.normalised and result.method_accepted is False:
            # the policy does not accept this method with this profile (FidelityReporter.accepts)
            reasons.append(result.acceptance)
        limit = pol["max_reduced_chi2"]
        if result.normalised and limit is not None and result.reduced_chi2 > limit:
            reasons.append(f"reduced chi2 {result.reduced_chi2:.3f} > {limit:g}")
        fallback = pol["fallback_method"]
        if reasons:
            text = f"{method} restoration disagrees with the measurement: " + "; ".join(reasons)
            if fallback is not None and fallback != method:
                out = self.restore_frame(measured, fallback, frames_averaged=int(frames_averaged),
                                         dose_ratio=dose)
                label = fallback
                if result.scale > 1:
                    # keep the super-resolved grid: the fallback, bicubic-interpolated onto it
                    from .restoration.superres import bicubic_upsample
                    out = bicubic_upsample(out, result.scale)
                    label = f"{fallback}+bicubic_x{result.scale}"
                # the delivered frame is the fallback's: its report is the frame's report
                replaced, result = result, check(out, fallback)
                # kept for its verdict and tile maps; its pixel map (H x W) would double the
                # memory of every kept frame that fell back
                replaced.consistency.map = None
                result.fell_back, result.replaced = True, replaced
                result.fallback_reason = f"{text}; restored with {label} instead"
                restored, method = out, label
                text = result.fallback_reason
                if result.action != "fall back":
                    text += f"; the fallback's restoration is flagged too: {result.message}"
            else:
                result.kept_reason = (f"kept and flagged: no accepted fallback "
                                      f"({pol['fallback_why']})")
                text += f"; {result.kept_reason}"
            self._log(f"fidelity guard: {text}", logging.WARNING)
        elif result.normalised and result.method_accepted is None:
            self._log(f"fidelity guard: {method}: {result.policy_text}", logging.WARNING)
        return restored, method, result

    def set_restoration(self, method: str, steps: int | None = None,
                        device: str | None = None) -> None:
        """Choose the restoration method; ``steps``: sampler steps of diffusion methods (or
        Richardson-Lucy iterations), None for the method's default; ``device``: "cpu", "cuda",
        "cuda:N" or None (CUDA when present)."""
        from .restoration import available_methods
        if self.profile is None:
            self.load_profile()
        methods = available_methods(self.profile)
        if method not in methods:
            raise UserError(f"restoration method {method!r} is not available with profile "
                            f"{self.profile.name}; available: {', '.join(methods)}")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                                  or steps < 1):
            raise UserError(f"restoration steps must be a positive integer or None, got {steps!r}")
        device = self._check_device(device)
        self.restoration_method = method
        self.restoration_steps = steps
        self.restoration_device = device
        self._log(f"restoration: {method}"
                  + (f", {steps} steps" if steps is not None else "")
                  + (f", on {device}" if device else ""))

    @staticmethod
    def _check_device(device: str | None) -> str | None:
        if device is None or device == "":
            return None
        import torch
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise UserError(f"restoration device {device!r} is not a torch device "
                            f"(use cpu, cuda or cuda:N)") from exc
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise UserError(f"restoration device {device!r}: no CUDA GPU on this machine")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise UserError(f"restoration device {device!r}: this machine has "
                                f"{torch.cuda.device_count()} CUDA GPU(s)")
        elif dev.type != "cpu":
            raise UserError(f"restoration device {device!r} is not supported (use cpu or cuda)")
        return str(dev)

    def restorer(self, method: str | None = None):
        """The cached Restorer for ``method`` (default: the current one) with the current
        profile, steps and device."""
        from .restoration import Restorer
        if self.profile is None:
            self.load_profile()
        method = method or self.restoration_method
        key = (method, self.profile.name, self.restoration_steps, self.restoration_device)
        if key not in self._restorers:
            self._restorers[key] = Restorer(self.profile, method, device=self.restoration_device,
                                            steps=self.restoration_steps)
        return self._restorers[key]

    def restore(self, frame: np.ndarray, method: str | None = None) -> np.ndarray:
        return self.restorer(method).restore(frame)

    # --- state for polling clients -------------------------------------------------------------
    def snapshot(self) -> dict:
        """Everything a client displays, in one thread-safe read (no exceptions)."""
        out: dict[str, Any] = {"connected": self.connected, "busy": self._operation}
        if not self.connected:
            return out
        with contextlib.suppress(Exception):
            st = self.tube.status()
            out["tube"] = dict(state=st.state.name, voltage_kv=st.voltage_kv,
                               current_ua=st.current_ua, voltage_setpoint_kv=st.voltage_setpoint_kv,
                               current_setpoint_ua=st.current_setpoint_ua,
                               power_w=st.voltage_kv * st.current_ua * 1e-3,
                               focus_mode=st.focus_mode, interlock_closed=st.interlock_closed,
                               warmup_progress=st.warmup_progress, error_code=st.error_code,
                               error_text=st.error_text)
        with contextlib.suppress(Exception):
            out["focus_um"] = float(self.focus_axis.position)
            out["focus_on_target"] = bool(self.focus_axis.on_target)
        if self.rotation_axis is not None:
            with contextlib.suppress(Exception):
                out["rotation_deg"] = float(self.rotation_axis.position)
        with contextlib.suppress(Exception):
            cs = self.camera.status()
            out["camera"] = dict(acquired=cs.acquired, skipped=cs.skipped, running=cs.running,
                                 exposure_s=self.camera.exposure_s, shape=self.camera.frame_shape)
        out["references"] = dict(dark=self.dark is not None, flat=self.flat is not None)
        out["profile"] = self.profile.name if self.profile is not None else None
        out["restoration_method"] = self.restoration_method
        out["restoration_steps"] = self.restoration_steps
        out["restoration_device"] = self.restoration_device
        r = self._restorers.get((self.restoration_method, out["profile"],
                                 self.restoration_steps, self.restoration_device))
        if r is not None:
            out["restoration_fps"] = float(getattr(r, "frames_per_second", 0.0) or 0.0)
            out["restoration_latency_s"] = float(getattr(r, "latency_s", 0.0) or 0.0)
        if self.pipeline is not None:
            with contextlib.suppress(Exception):
                st = self.pipeline.stats()
                out["stream"] = dict(running=self.pipeline.running,
                                     camera_dropped=st.camera_dropped,
                                     stages={k: dict(out=v.frames_out, dropped=v.dropped,
                                                     fps=v.frames_per_s)
                                             for k, v in st.stages.items()})
        return out


class _RestoreFn:
    """A Restorer as the pipeline's frame -> frame callable, carrying method and profile.

    With ``follow`` (a live view that records nothing) every frame uses the instrument's current
    restoration settings, so a method chosen while the view runs applies from the next frame. A
    recording keeps the restorer it started with: one method per file. A new setting that
    cannot serve the running stream (it fails to load, or changes the frame size) leaves the
    stream on its restorer and is reported once."""

    def __init__(self, inst: Instrument, guarded: bool = False, follow: bool = False,
                 method: str | None = None) -> None:
        self._inst = inst
        self._restorer = inst.restorer(method)
        follow = follow and method is None
        self._follow = follow
        self._refused: tuple | None = None
        self._dose_warning: str | None = None
        self.method = self._restorer.method
        self.profile = inst.profile.name
        self.scale = int(getattr(self._restorer, "scale", 1))     # super-resolution factor
        self.output_pixel_size_um = getattr(self._restorer, "output_pixel_size_um", None)
        if guarded:    # the pipeline runs the fidelity policy after each restore
            self.check_fidelity = functools.partial(_check_processed, inst)

    def _current(self):
        inst = self._inst
        if not self._follow or inst.profile is None or inst.profile.name != self.profile:
            return self._restorer
        key = (inst.restoration_method, inst.restoration_steps, inst.restoration_device)
        if key == self._refused:
            return self._restorer
        try:
            r = inst.restorer()
        except Exception as exc:  # the stream must go on with what it has
            reason = f"{key[0]} failed to load: {exc}"
        else:
            if int(getattr(r, "scale", 1)) == self.scale:
                self._restorer = r
                return r
            reason = (f"{key[0]} changes the frame size (x{getattr(r, 'scale', 1)}); restart the "
                      "live view to use it")
        self._refused = key
        inst._log(f"live view keeps restoring with {self._restorer.method}: {reason}",
                  logging.WARNING)
        return self._restorer

    def _exposure_dose(self, method: str) -> float | None:
        """One exposure's dose for ``method`` (None: not a dose method, or unknown: the
        calibration dose)."""
        if method not in DOSE_METHODS:
            return None
        inst = self._inst
        try:
            return inst.frame_dose_ratio(float(inst.camera.exposure_s))
        except Exception as exc:  # noqa: BLE001  the stream goes on at the calibration dose
            if str(exc) != self._dose_warning:      # said once, not per frame
                self._dose_warning = str(exc)
                inst._log(f"{method} restores at the profile's calibration dose: {exc}",
                          logging.WARNING)
            return None

    def refusal(self, n_average: int) -> str | None:
        """Why the method would refuse every frame of an acquisition averaging ``n_average``
        exposures at the present settings (a specialist outside the dose range it was trained
        for), said before the first exposure; None when it takes them."""
        from .restoration.specialist import dose_refusal
        r = self._current()
        if r.method not in DOSE_METHODS:
            return None
        one = self._exposure_dose(r.method)
        if one is not None and not one > 0:
            return None     # no beam at these settings yet: the frames' own check decides
        return dose_refusal(self._inst.profile, r.method, effective_dose_ratio(one, n_average))

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        r = self._current()
        inst = self._inst
        # the frame's noise: frames averaged by the running acquisition, one exposure's dose
        pipe = getattr(inst.engine, "_pipeline", None)
        n = int(getattr(pipe, "n_average", 1) or 1)
        out = _restore_with_dose(r, frame, n, self._exposure_dose(r.method))
        self.method = r.method      # read by the pipeline right after this call, same thread
        return out


# DOSE_METHODS and _restore_with_dose: xinstrument.restoration.dose (the offline restore's too)


def _check_processed(inst: Instrument, item) -> None:
    """Fidelity policy on a pipeline frame (acquisition.pipeline.ProcessedFrame)."""
    m = item.metadata
    item.restored, item.restoration_method, item.fidelity = inst.check_fidelity(
        item.data, item.restored, item.restoration_method,
        frames_averaged=item.frames_averaged, exposure_s=item.exposure_s,
        voltage_kv=float(m.get("voltage_kv", np.nan)), current_ua=float(m.get("current_ua", np.nan)))


from .scans.plans import FocusScan, References, Series, SingleReference, Snap  # noqa: E402
