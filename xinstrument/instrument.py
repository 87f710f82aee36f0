"""The Instrument: the one API that the GUI, the EPICS IOC, the CLI and scripts use.

It owns the devices (tube, focus stage, optional rotation stage, camera), the calibration state
(dark, flat, defect map), the detector profile and the restoration stage. In simulation mode it
starts the protocol emulators on loopback ports, connects the real drivers to them, and lets the
digital twin read the emulators' physical state to render camera frames.

Every public method is thread-safe; long operations hold the instrument's operation lock, so a
GUI and an IOC in one process cannot interleave two acquisitions. Clients follow progress through
``subscribe(callback)`` events: ``callback(kind, payload)`` with kinds "state", "frame", "focus",
"progress", "log", "error".
"""
from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from drivers.camera.base import Camera
from drivers.camera.simulated import SimulatedCamera

from .config import InstrumentConfig
from .errors import InstrumentError, UserError

log = logging.getLogger("xinstrument")

Listener = Callable[[str, Any], None]


@dataclass
class AveragedFrame:
    """An averaged (and optionally corrected/restored) frame with its acquisition context."""

    data: np.ndarray                 # float32; ADU when raw, transmission when corrected
    frames_averaged: int
    exposure_s: float
    voltage_kv: float
    current_ua: float
    focus_z_um: float
    theta_deg: float
    timestamp_s: float
    frame_numbers: list[int] = field(default_factory=list)
    corrected: bool = False
    restored: np.ndarray | None = None
    restoration_method: str | None = None
    fidelity: Any = None             # restoration.fidelity result for the restored frame, if run
    raw: np.ndarray | None = None    # the averaged frame before correction (when corrected)


class Instrument:
    def __init__(self, config: InstrumentConfig | None = None) -> None:
        self.config = config or InstrumentConfig.simulated()
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
        self.dark_frames_averaged: int | None = None
        self.last_frame: AveragedFrame | None = None
        self._fidelity: dict[str, Any] | None = None    # set_fidelity_policy; None = off
        self.connected = False
        self.pipeline = None
        self.live = None
        self._stream_thread: threading.Thread | None = None
        self._stream_error: BaseException | None = None
        self.last_stream_stats = None

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

    def _log(self, message: str, level: int = logging.INFO) -> None:
        log.log(level, message)
        self._emit("log", message)

    # --- connection ----------------------------------------------------------------------------
    def connect(self) -> "Instrument":
        if self.connected:
            return self
        from drivers.stage import GcsAxis, GcsController
        from drivers.xray import HamamatsuTube

        cfg = self.config
        try:
            tube_url = self._port(cfg.tube.port, "tube")
            self.tube = HamamatsuTube(tube_url, dialect=cfg.tube.dialect, model=cfg.tube.model,
                                      timeout_s=cfg.tube.timeout_s,
                                      watchdog_s=cfg.tube.watchdog_s)
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
        self._emit("state", self.snapshot())
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
        ctrl = controller_cls(url)
        ctrl.connect()
        self._controllers.append(ctrl)
        axis = axis_cls(ctrl, scfg.axis, unit=scfg.unit, soft_limits=scfg.soft_limits)
        if not axis.referenced:
            self._log(f"{device} axis {scfg.axis}: referencing (FRF)")
            axis.reference()
        if scfg.velocity is not None:
            axis.velocity = scfg.velocity
        return axis

    def _connect_camera(self) -> Camera:
        cfg = self.config
        if cfg.camera.driver == "pco":
            from drivers.camera.pco_adapter import PcoCamera
            return PcoCamera(serial=cfg.camera.serial)
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
        if self.pipeline is not None and self.pipeline.running:
            with contextlib.suppress(Exception):
                self.pipeline.abort("instrument disconnected")
                self.wait_stream(10.0)
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
        """Ask the running operation to stop at the next frame boundary."""
        self._abort.set()
        if self.pipeline is not None and self.pipeline.running:
            self.pipeline.abort("aborted by the operator")
        self._log("abort requested")

    def _check_abort(self, what: str) -> None:
        if self._abort.is_set():
            raise InstrumentError(f"{what} aborted by the operator")

    # --- tube ----------------------------------------------------------------------------------
    def tube_status(self):
        self._require()
        return self.tube.status()

    def warm_up(self, progress: Callable[[float], None] | None = None,
                timeout_s: float = 1800.0) -> None:
        self._require()
        with self.operation("warm-up"):
            self._log("tube warm-up started")
            self.tube.warm_up(progress_cb=lambda p: (progress and progress(p),
                                                     self._emit("progress", ("warm-up", p))),
                              timeout_s=timeout_s)
            self._log("tube warm-up finished")
        self._emit("state", self.snapshot())

    def set_voltage_kv(self, voltage_kv: float) -> None:
        self._require()
        kv_max = self.config.tube.kv_max
        if kv_max is not None and voltage_kv > kv_max:
            raise UserError(f"tube voltage {voltage_kv} kV above the site limit {kv_max} kV")
        self.tube.set_voltage_kv(voltage_kv)
        self._emit("state", self.snapshot())

    def set_current_ua(self, current_ua: float) -> None:
        self._require()
        ua_max = self.config.tube.ua_max
        if ua_max is not None and current_ua > ua_max:
            raise UserError(f"tube current {current_ua} uA above the site limit {ua_max} uA")
        self.tube.set_current_ua(current_ua)
        self._emit("state", self.snapshot())

    def set_focus_mode(self, mode: int) -> None:
        self._require()
        self.tube.set_focus_mode(mode)
        self._emit("state", self.snapshot())

    def xray_on(self, settle_s: float = 0.3) -> None:
        self._require()
        self.tube.xray_on()
        self._wait_tube_output(settle_s)
        self._emit("state", self.snapshot())

    def xray_off(self) -> None:
        """Always allowed, also while another operation runs."""
        if self.tube is None:
            return
        self.tube.xray_off()
        self._emit("state", self.snapshot() if self.connected else None)

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
        self._emit("state", self.snapshot())

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
        self._emit("state", self.snapshot())

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

    def grab_average(self, n_frames: int) -> tuple[np.ndarray, list]:
        """Grab ``n_frames`` raw frames and average them (float32); returns the average and the
        camera frames (for metadata). For scans that hold ``operation`` themselves."""
        from .acquisition.averaging import average_frames
        if n_frames < 1:
            raise UserError(f"frames to average must be >= 1, got {n_frames}")
        frames = self.camera.grab(n_frames)
        self._check_abort("acquisition")
        return average_frames([f.data for f in frames]).astype(np.float32), frames

    def frame_context(self, frames, n: int) -> dict:
        """Metadata of an averaged frame (exposure, tube readings, stage positions, time)."""
        meta = frames[-1].metadata if frames else {}
        return dict(frames_averaged=n, exposure_s=float(self.camera.exposure_s),
                    voltage_kv=float(meta.get("voltage_kv", np.nan)),
                    current_ua=float(meta.get("current_ua", np.nan)),
                    focus_z_um=float(self.focus_axis.position) if self.focus_axis else np.nan,
                    theta_deg=float(self.rotation_axis.position) if self.rotation_axis else 0.0,
                    timestamp_s=time.time(), frame_numbers=[f.frame_number for f in frames])

    def take_darks(self, n_frames: int = 10) -> np.ndarray:
        """Average ``n_frames`` with X-rays off; the result becomes the dark reference."""
        self._require()
        with self.operation("darks"):
            was_on = self.tube.state.name == "XRAY_ON"
            self.tube.xray_off()
            time.sleep(0.1)
            dark, _ = self.grab_average(n_frames)
            self.dark = dark
            self.dark_frames_averaged = int(n_frames)
            self._update_corrector()
            if was_on:
                self.xray_on()
            self._log(f"dark reference: {n_frames} frames, mean {dark.mean():.1f} ADU")
            return dark

    def take_flats(self, n_frames: int = 10, sample_out: bool = True) -> np.ndarray:
        """Average ``n_frames`` with X-rays on and the sample out of the beam."""
        self._require()
        with self.operation("flats"):
            if self.tube.state.name != "XRAY_ON":
                raise InstrumentError("flats need X-rays on: switch the tube on first")
            if sample_out:
                self.set_sample_in(False)
            try:
                flat, _ = self.grab_average(n_frames)
            finally:
                if sample_out:
                    self.set_sample_in(True)
            self.flat = flat
            self.flat_frames_averaged = int(n_frames)
            self._update_corrector()
            self._log(f"flat reference: {n_frames} frames, mean {flat.mean():.1f} ADU")
            return flat

    def _update_corrector(self) -> None:
        from .acquisition.correction import FlatFieldCorrector, build_defect_map
        if self.dark is None or self.flat is None:
            self.corrector = None
            return
        defects = build_defect_map(self.dark, self.flat)
        self.corrector = FlatFieldCorrector(self.dark, self.flat, defect_map=defects)
        self._log(f"flat-field correction ready ({int(defects.sum())} defective pixels)")

    def acquire(self, n_average: int = 1, correct: bool = True,
                restore: bool = False) -> AveragedFrame:
        """One averaged frame; corrected to transmission if references exist (or required)."""
        self._require()
        with self.operation("acquire"):
            data, frames = self.grab_average(n_average)
            ctx = self.frame_context(frames, n_average)
            frame = AveragedFrame(data=data, **ctx)
            if correct:
                if self.corrector is None:
                    raise InstrumentError("no dark/flat references: take darks and flats first, "
                                          "or acquire with correct=False")
                frame.raw = data
                frame.data = self.corrector(data)
                frame.corrected = True
            if restore:
                if not frame.corrected:
                    raise InstrumentError("restoration works on flat-field corrected frames")
                frame.restored = self.restore(frame.data)
                frame.restoration_method = self.restoration_method
                if self._fidelity is not None:    # set_fidelity_policy: check, maybe fall back
                    frame.restored, frame.restoration_method, frame.fidelity = \
                        self.check_fidelity(frame.data, frame.restored, frame.restoration_method,
                                            frames_averaged=frame.frames_averaged,
                                            exposure_s=frame.exposure_s,
                                            voltage_kv=frame.voltage_kv,
                                            current_ua=frame.current_ua)
            self.last_frame = frame
            self._emit("frame", frame)
            return frame

    # --- streaming (live view and recording through the acquisition pipeline) ------------------
    def start_stream(self, n_average: int = 1, correct: bool = True, restore: bool = False,
                     record_path=None, n_outputs: int | None = None, metadata: dict | None = None,
                     sinks=(), overwrite: bool = False) -> None:
        """Run the camera continuously through averaging, correction, optional restoration, a
        live view (``live_frame()``), an optional HDF5 recording and "frame" events. Returns at
        once; ``stop_stream()`` ends it, ``wait_stream()`` waits for ``n_outputs`` frames."""
        from .acquisition.pipeline import AcquisitionPipeline, CallbackSink, HDF5Sink, LiveView
        self._require()
        if n_average < 1:
            raise UserError(f"frames to average must be >= 1, got {n_average}")
        if correct and self.corrector is None:
            raise InstrumentError("no dark/flat references: take darks and flats first, or "
                                  "stream with correct=False")
        if not self._op_lock.acquire(blocking=False):
            raise InstrumentError(f"instrument busy with {self._operation!r}; cannot stream")
        self._operation = "recording" if record_path else "live"
        self._abort.clear()
        try:
            self.live = LiveView(capacity=2)
            all_sinks = [self.live, CallbackSink(lambda item: self._emit("frame", item),
                                                 name="events"), *sinks]
            if record_path is not None:
                meta = {"instrument": "xinstrument", "n_average": n_average,
                        "profile": self.profile.name if (restore and self.profile) else None}
                if restore and self.profile is not None:
                    # the profile's pixel (at the scintillator); restored frames of a
                    # super-resolving method get it divided by their scale in the file
                    meta["pixel_size_um"] = float(self.profile.pixel_size_um)
                meta.update(metadata or {})
                # the references that corrected these frames go first (image_key 2, 1), so
                # the file can be re-corrected and its dose known
                refs = ([(self.dark, 2, self.dark_frames_averaged),
                         (self.flat, 1, self.flat_frames_averaged)] if correct else [])
                all_sinks.append(HDF5Sink(record_path, metadata=meta, overwrite=overwrite,
                                          references=refs))
            self.pipeline = AcquisitionPipeline(
                self.camera, n_average=n_average, corrector=self.corrector if correct else None,
                restorer=(_RestoreFn(self, guarded=self._fidelity is not None,
                                     follow=record_path is None)
                          if restore else None),
                sinks=all_sinks,
                n_outputs=n_outputs)
            self.pipeline.start()
        except BaseException:
            self._operation = None
            self._op_lock.release()
            raise
        self._stream_error = None
        self._stream_thread = threading.Thread(target=self._supervise_stream, daemon=True,
                                               name="xinstrument-stream")
        self._stream_thread.start()
        self._log(f"stream started ({self._operation}, {n_average} frames averaged)")

    def _supervise_stream(self) -> None:
        try:
            self.last_stream_stats = self.pipeline.wait()
        except BaseException as exc:
            self._stream_error = exc
            self._emit("error", f"stream: {exc}")
        finally:
            self._operation = None
            self._op_lock.release()
            self._emit("state", self.snapshot() if self.connected else None)

    def stop_stream(self, timeout_s: float = 30.0):
        """Stop streaming cleanly (a partial average is written with its true count)."""
        if self.pipeline is not None and self.pipeline.running:
            self.pipeline.stop()
        return self.wait_stream(timeout_s)

    def wait_stream(self, timeout_s: float | None = None):
        """Wait for the stream to end; re-raise its error; return its statistics."""
        t = self._stream_thread
        if t is not None:
            t.join(timeout_s)
            if t.is_alive():
                raise InstrumentError(f"stream still running after {timeout_s} s")
        if self._stream_error is not None:
            err, self._stream_error = self._stream_error, None
            raise InstrumentError(f"stream failed: {err}") from err
        return self.last_stream_stats

    def live_frame(self):
        """Latest processed frame of the stream (ProcessedFrame: data, restored, ...) or None."""
        return self.live.latest() if self.live is not None else None

    def record(self, path, n_frames: int, n_average: int = 1, correct: bool = True,
               restore: bool = False, metadata: dict | None = None, overwrite: bool = False):
        """Record ``n_frames`` averaged frames to ``path`` through the pipeline; blocks."""
        if n_frames < 1:
            raise UserError(f"frames to record must be >= 1, got {n_frames}")
        self.start_stream(n_average, correct, restore, record_path=path, n_outputs=n_frames,
                          metadata=metadata, overwrite=overwrite)
        return self.wait_stream()

    # --- focus ---------------------------------------------------------------------------------
    def focus_scan(self, start_um: float | None = None, stop_um: float | None = None,
                   step_um: float = 1.0, frames_per_step: int = 1, metric: str = "hf_energy",
                   coarse_step_um: float | None = None, move_to_best: bool = True,
                   roi: tuple[int, int, int, int] | None = None):
        """Step the focus axis in ``step_um`` steps, score sharpness, fit the peak.

        With ``coarse_step_um`` a coarse scan over start..stop (default: the axis travel) comes
        first, then a fine scan in ``step_um`` steps around its optimum."""
        from .acquisition.focus import coarse_fine_focus, focus_scan
        self._require()
        with self.operation("focus scan"):
            corr = self.corrector

            def acquire(n: int) -> np.ndarray:
                # two independent half-averages let the metric remove the noise bias
                if n >= 2:
                    frames = self.camera.grab(n)
                    self._check_abort("focus scan")
                    halves = [np.mean([f.data for f in frames[k::2]], axis=0, dtype=np.float64)
                              .astype(np.float32) for k in (0, 1)]
                    return np.stack([corr(h) if corr is not None else h for h in halves])
                data, _ = self.grab_average(n)
                return corr(data) if corr is not None else data

            def progress(i, n, pos, value):
                self._emit("progress", ("focus", (i + 1) / n))
                self._emit("focus", (pos, value))

            axis = _UmAxis(self.focus_axis)
            common = dict(frames_per_step=frames_per_step, metric=metric, progress=progress,
                          abort=self._abort, roi=roi, move_to_best=move_to_best)
            if coarse_step_um:
                lo, hi = (start_um, stop_um) if start_um is not None and stop_um is not None \
                    else self.focus_axis.limits
                curve = coarse_fine_focus(axis, acquire, centre_um=0.5 * (lo + hi),
                                          coarse_half_range_um=0.5 * (hi - lo),
                                          coarse_step_um=coarse_step_um, fine_step_um=step_um,
                                          **common)
            else:
                if start_um is None or stop_um is None:
                    raise UserError("focus scan needs start_um and stop_um (or coarse_step_um)")
                curve = focus_scan(axis, acquire, start_um, stop_um, step_um, **common)
            self._log(f"focus scan: best focus {curve.best_position_um:.2f} um ({metric})")
            self._emit("state", self.snapshot())
            return curve

    # --- profile and restoration ---------------------------------------------------------------
    def load_profile(self, name_or_path: str | None = None):
        from .profiles import find_profile
        name = name_or_path or self.config.restoration.profile
        if not name:
            raise UserError("no detector profile configured: give one with --profile")
        self.profile = find_profile(name)
        self._restorers.clear()
        self._log(f"profile {self.profile.name} loaded ({self.profile.detector_id})")
        return self.profile

    def set_fidelity_policy(self, enabled: bool, max_reduced_chi2: float | None = None,
                            fallback_method: str | None = "wiener", *, tile_px: int = 32,
                            false_alarm_rate: float = 1e-3, dose_ratio: float | None = None,
                            flat_frames_averaged: int | None = None,
                            nnps_lr: np.ndarray | None = None) -> None:
        """Check every frame restored by ``acquire(restore=True)`` against its measurement
        (:class:`~xinstrument.restoration.fidelity.FidelityGuard`); the result goes to
        ``AveragedFrame.fidelity``.

        A frame falls back to ``fallback_method`` (None: never) when the guard finds it
        inconsistent (``result.consistent`` False: at most ``false_alarm_rate`` of consistent
        frames are), or its reduced chi-square exceeds ``max_reduced_chi2`` (if given); ``restoration_method`` then names the fallback and the
        result carries ``fell_back=True`` and the reason. ``dose_ratio``: quanta per pixel of the
        flat over the profile's ``nnps_mean_signal``; None takes it from the digital twin on the
        simulated bench, otherwise the guard reports unnormalised residuals and never falls back.
        ``flat_frames_averaged``: frames in the flat reference (its noise enters the check).
        """
        if not enabled:
            self._fidelity = None
            self._log("fidelity guard off")
            return
        from .restoration import CLASSICAL_METHODS
        from .restoration.fidelity_report import FidelityReporter
        if self.profile is None:
            self.load_profile()
        if fallback_method is not None and fallback_method not in CLASSICAL_METHODS:
            raise UserError(f"fallback method must be classical ({', '.join(CLASSICAL_METHODS)}), "
                            f"got {fallback_method!r}")
        if max_reduced_chi2 is not None and not (np.isfinite(max_reduced_chi2)
                                                 and max_reduced_chi2 > 0):
            raise UserError(f"max_reduced_chi2 must be a positive number or None, got {max_reduced_chi2!r}")
        # the fidelity report: consistency and null-space uncertainty maps, verdict, action
        guard = FidelityReporter(self.profile, tile_px, false_alarm_rate, nnps_lr=nnps_lr,
                                 device=self.config.restoration.device)
        self._fidelity = {"guard": guard, "max_reduced_chi2": max_reduced_chi2,
                          "fallback_method": fallback_method, "dose_ratio": dose_ratio,
                          "flat_frames_averaged": flat_frames_averaged}
        self._log(f"fidelity guard on (tiles {tile_px} px, false-alarm rate {false_alarm_rate:g}, "
                  f"max reduced chi2 {max_reduced_chi2}, fallback {fallback_method})")

    @property
    def fidelity_guard(self):
        """The FidelityReporter of the current policy, or None when the guard is off."""
        return None if self._fidelity is None else self._fidelity["guard"]

    def check_fidelity(self, measured: np.ndarray, restored: np.ndarray, method: str, *,
                       frames_averaged: int, exposure_s: float, voltage_kv: float,
                       current_ua: float):
        """Run the fidelity policy on one restored frame: returns ``(restored, method, result)``,
        with the fallback restoration and its method when the frame failed the check."""
        from .restoration.fidelity import forward_model_for
        pol = self._fidelity
        if pol is None:
            raise InstrumentError("the fidelity guard is off: call set_fidelity_policy first")
        dose = pol["dose_ratio"]
        mean_signal = getattr(self.profile, "nnps_mean_signal", None)
        if dose is None and self.twin is not None and mean_signal is not None \
                and np.isfinite(voltage_kv) and np.isfinite(current_ua):
            # simulated bench: detected quanta per pixel of the flat at this frame's settings
            import dataclasses
            st = dataclasses.replace(self._world_state(), sample_in=False, xray_on=True,
                                     current_ua=current_ua, voltage_kv=voltage_kv)
            quanta = self.twin.expected_quanta("thick", st, exposure_s)
            dose = float(quanta.mean()) / float(mean_signal)
        result = pol["guard"].check(measured, restored, dose_ratio=dose,
                                    frames_averaged=int(frames_averaged),
                                    flat_frames_averaged=(pol["flat_frames_averaged"]
                                                          or self.flat_frames_averaged),
                                    forward=forward_model_for(method), method=method)
        reasons = []
        if result.normalised and not result.consistent:
            reasons.append(f"{int(result.flagged.sum())} of "
                           f"{int(np.isfinite(result.tile_chi2).sum())} tiles flagged, "
                           f"{int(result.strong_tiles.sum())} beyond the frame-wise threshold "
                           f"(false-alarm rate {result.expected_false_alarm_rate:g} per frame)")
        limit = pol["max_reduced_chi2"]
        if result.normalised and limit is not None and result.reduced_chi2 > limit:
            reasons.append(f"reduced chi2 {result.reduced_chi2:.3f} > {limit:g}")
        fallback = pol["fallback_method"]
        if reasons:
            text = f"{method} restoration disagrees with the measurement: " + "; ".join(reasons)
            if fallback is not None and fallback != method:
                result.fell_back = True
                restored = self.restore(measured, fallback)
                if result.scale > 1:
                    # keep the super-resolved grid: the fallback, bicubic-interpolated onto it
                    from .restoration.superres import bicubic_upsample
                    restored = bicubic_upsample(restored, result.scale)
                    fallback = f"{fallback}+bicubic_x{result.scale}"
                result.fallback_reason = f"{text}; restored with {fallback} instead"
                method = fallback
                text = result.fallback_reason
            self._log(f"fidelity guard: {text}", logging.WARNING)
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


class _UmAxis:
    """Adapts a GCS axis (position property) to the focus-scan axis protocol."""

    def __init__(self, axis) -> None:
        self._axis = axis

    @property
    def position_um(self) -> float:
        return float(self._axis.position)

    def move_to(self, position_um: float, wait: bool = True) -> None:
        self._axis.move_to(position_um, wait=wait)


class _RestoreFn:
    """A Restorer as the pipeline's frame -> frame callable, carrying method and profile.

    With ``follow`` (a live view that records nothing) every frame uses the instrument's current
    restoration settings, so a method chosen while the view runs applies from the next frame. A
    recording keeps the restorer it started with: one method per file. A new setting that
    cannot serve the running stream (it fails to load, or changes the frame size) leaves the
    stream on its restorer and is reported once."""

    def __init__(self, inst: Instrument, guarded: bool = False, follow: bool = False) -> None:
        self._inst = inst
        self._restorer = inst.restorer()
        self._follow = follow
        self._refused: tuple | None = None
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

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        r = self._current()
        out = r.restore(frame)
        self.method = r.method      # read by the pipeline right after this call, same thread
        return out


def _check_processed(inst: Instrument, item) -> None:
    """Fidelity policy on a pipeline frame (acquisition.pipeline.ProcessedFrame)."""
    m = item.metadata
    item.restored, item.restoration_method, item.fidelity = inst.check_fidelity(
        item.data, item.restored, item.restoration_method,
        frames_averaged=item.frames_averaged, exposure_s=item.exposure_s,
        voltage_kv=float(m.get("voltage_kv", np.nan)), current_ua=float(m.get("current_ua", np.nan)))
