"""The EPICS IOC: PVs mapped onto the Instrument API (pythonSoftIOC, Channel Access + PV Access).

A thin client of :class:`xinstrument.instrument.Instrument`. Records hold no instrument logic:
a put calls the matching Instrument method, a poll thread copies ``Instrument.snapshot()`` into
the readbacks. Blocking instrument calls run in worker threads; the asyncio dispatcher loop
only awaits them, so it stays free to serve puts (stop, abort) while a move or an acquisition
runs. Output records that start an action are "blocking" records: the put-callback (caput -c,
ophyd ``put_complete``) finishes when the action has finished.

The network configuration (:mod:`xinstrument.epics.network`) must be applied before this
module is imported, because importing it loads the EPICS libraries.

PV names and semantics: docs/epics.md.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import functools
import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from softioc import alarm, builder, fields, imports

from .frames import fit_image, image_elements

log = logging.getLogger("xinstrument.epics")

DETECTOR_STATES = ("Idle", "Acquire", "Readout", "Correct", "Saving", "Aborting", "Error",
                   "Waiting", "Initializing", "Disconnected", "Aborted")
IMAGE_MODES = ("Single", "Multiple", "Continuous")
TUBE_STATES = ("WARMUP_NEEDED", "WARMING_UP", "STANDBY", "XRAY_ON", "OVERLOAD", "NOT_READY",
               "SELF_TEST")
_TUBE_STATE_SEVERITY = {"WARMUP_NEEDED": "MINOR", "OVERLOAD": "MAJOR", "NOT_READY": "MINOR",
                        "SELF_TEST": "MINOR"}
TOMO_STATES = ("Idle", "Darks", "Flats", "Projections", "Paused", "Done", "Aborted", "Failed",
               "Rejected")
_TOMO_STATE_SEVERITY = {"Aborted": "MINOR", "Failed": "MAJOR", "Rejected": "MAJOR"}
POLL_S = 0.25
MAX_MESSAGE = 256


def _outward(lo: float, hi: float) -> tuple[float, float]:
    """Drive limits a hair (1e-12 relative, at least 1e-9) outside the true limits.

    ao records clamp a put to DRVL..DRVH before device support sees it, which would turn a
    put of 1300 kV into 130 kV. With the limits just outside, a put beyond them is clamped to
    a value outside the true range, which validation then rejects, while clients still read
    the true limits (to far below display precision) as control limits."""
    return (lo - max(abs(lo) * 1e-12, 1e-9), hi + max(abs(hi) * 1e-12, 1e-9))


def _put_field(record_name: str, field: str, value: float) -> None:
    """Write a record field without processing the record (a processed setpoint would move)."""
    data = (ctypes.c_char * 40)()
    data.value = repr(float(value)).encode()
    imports.db_put_field_process(f"{record_name}.{field}", fields.DBF_STRING,
                                 ctypes.addressof(data), 1, False)


def _sev(severity: str) -> int:
    return {"NO_ALARM": alarm.NO_ALARM, "MINOR": alarm.MINOR_ALARM, "MAJOR": alarm.MAJOR_ALARM,
            "INVALID": alarm.INVALID_ALARM}[severity]


class InstrumentIOC:
    """PVs of one Instrument under ``prefix``.

    Create it (records are built in the constructor), then ``builder.LoadDatabase()`` and
    ``softioc.iocInit(dispatcher)``, then :meth:`start`. :meth:`stop` ends the threads; it
    does not disconnect the instrument (the owner does, which switches X-rays off).
    """

    def __init__(self, instrument, prefix: str = "XI:", workers: int = 4) -> None:
        if not instrument.connected:
            raise RuntimeError("connect the instrument before building its IOC")
        self.inst = instrument
        self.prefix = prefix
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="xi-ioc")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._poll_thread: threading.Thread | None = None
        self._acq_stop = threading.Event()
        self._moving: dict[str, int] = {"focus": 0, "rotation": 0}
        self._soft: dict[str, tuple[float, float]] = {}   # settable soft limits per axis
        self._writer = None
        self._writer_lock = threading.Lock()
        self._writer_restored = False
        self._writer_rshape: tuple[int, int] | None = None
        self._counter = 0
        self._publish_lock = threading.Lock()
        self._captured = 0
        self._not_stored = 0            # restored frames the capture file could not hold
        self._heartbeat = 0
        self._tomo = None               # the running TomoScan
        self._tomo_abort = False
        self._unsubscribe: Callable[[], None] | None = None
        self._handlers: dict[str, Callable] = {}
        self._names: dict[int, str] = {}
        self._build()

    # --- helpers -------------------------------------------------------------------------------
    def _n(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def _run(self, fn: Callable, *args, **kw) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kw))

    def _message(self, text: str, error: bool = False) -> None:
        (log.error if error else log.info)("%s", text)
        self.status_msg.set(text[:MAX_MESSAGE - 1],
                            severity=alarm.MINOR_ALARM if error else alarm.NO_ALARM,
                            alarm=alarm.STATE_ALARM if error else alarm.NO_ALARM)

    def _action(self, what: str, fn: Callable, record=None, revert: Callable[[], Any] | None = None,
                after: Callable[[], None] | None = None):
        """An on_update handler running ``fn(value)`` in a worker thread. On failure the
        setpoint goes back to ``revert()`` (the device's true value) and the error is reported
        in StatusMessage_RBV."""
        async def handler(value):
            try:
                await self._run(fn, value)
            except Exception as exc:  # noqa: BLE001 - reported to the client; the IOC serves on
                self._message(f"{what} {value!r} refused: {exc}", error=True)
                if record is not None and revert is not None:
                    with contextlib.suppress(Exception):
                        record.set(await self._run(revert), process=False)
            else:
                self._message(f"{what} {value!r}: done")
            finally:
                if after is not None:
                    with contextlib.suppress(Exception):
                        await self._run(after)
        return handler

    # --- records -------------------------------------------------------------------------------
    def _build(self) -> None:
        inst = self.inst
        n = self._n
        self.heartbeat = builder.longIn(n("Heartbeat_RBV"), initial_value=0)
        self.status_msg = builder.longStringIn(n("StatusMessage_RBV"), initial_value="",
                                               length=MAX_MESSAGE)
        self.busy = builder.stringIn(n("Busy_RBV"), initial_value="")
        self._build_tube()
        self._build_axis("FOCUS:", "Z", "focus", inst.focus_axis, "um", 3, inst.move_focus_um)
        if inst.rotation_axis is not None:
            self._build_axis("ROT:", "Theta", "rotation", inst.rotation_axis, "deg", 3,
                             inst.move_rotation_deg)
        self._build_camera()
        self._build_hdf()
        self._build_restoration()
        self._build_scans()

    def _build_tube(self) -> None:
        inst, n = self.inst, self._n
        lim = inst.tube.limits
        cfg = inst.config.tube
        kv_hi = min(lim.kv_max, cfg.kv_max) if cfg.kv_max is not None else lim.kv_max
        ua_hi = min(lim.ua_max, cfg.ua_max) if cfg.ua_max is not None else lim.ua_max
        self.kv_range = (lim.kv_min, kv_hi)
        self.ua_range = (lim.ua_min, ua_hi)
        st = inst.tube_status()
        self._tube_sp = {"kv": st.voltage_setpoint_kv, "ua": st.current_setpoint_ua,
                         "focus": st.focus_mode}
        self.focus_modes = sorted(lim.max_power_w_by_focus)
        spots = inst.tube.model.focus_modes

        def check(kv=None, ua=None, mode=None) -> bool:
            kv = self._tube_sp["kv"] if kv is None else kv
            ua = self._tube_sp["ua"] if ua is None else ua
            mode = self._tube_sp["focus"] if mode is None else mode
            if not (self.kv_range[0] <= kv <= self.kv_range[1]
                    and self.ua_range[0] <= ua <= self.ua_range[1]):
                self._message(f"tube setpoint {kv:g} kV / {ua:g} uA outside "
                              f"{self.kv_range[0]:g}..{self.kv_range[1]:g} kV, "
                              f"{self.ua_range[0]:g}..{self.ua_range[1]:g} uA: rejected",
                              error=True)
                return False
            try:
                lim.check(kv, ua, mode)
            except ValueError as exc:
                self._message(f"rejected: {exc}", error=True)
                return False
            return True

        def set_kv(v):
            inst.set_voltage_kv(v)
            self._tube_sp["kv"] = inst.tube.voltage_setpoint_kv

        def set_ua(v):
            inst.set_current_ua(v)
            self._tube_sp["ua"] = inst.tube.current_setpoint_ua

        def set_mode(index):
            inst.set_focus_mode(self.focus_modes[index])
            self._tube_sp["focus"] = self.focus_modes[index]

        lo, hi = _outward(*self.kv_range)
        self.kv = self._out("aOut", "TUBE:Voltage", initial_value=st.voltage_setpoint_kv,
                               EGU="kV", PREC=1, DRVL=lo, DRVH=hi, LOPR=self.kv_range[0],
                               HOPR=self.kv_range[1], always_update=True,
                               blocking=True, validate=lambda r, v: check(kv=v))
        lo, hi = _outward(*self.ua_range)
        self.ua = self._out("aOut", "TUBE:Current", initial_value=st.current_setpoint_ua,
                               EGU="uA", PREC=1, DRVL=lo, DRVH=hi, LOPR=self.ua_range[0],
                               HOPR=self.ua_range[1], always_update=True,
                               blocking=True, validate=lambda r, v: check(ua=v))
        self.kv_rbv = builder.aIn(n("TUBE:Voltage_RBV"), EGU="kV", PREC=1,
                                  LOPR=0, HOPR=self.kv_range[1])
        self.ua_rbv = builder.aIn(n("TUBE:Current_RBV"), EGU="uA", PREC=1,
                                  LOPR=0, HOPR=self.ua_range[1])
        self.power_rbv = builder.aIn(n("TUBE:Power_RBV"), EGU="W", PREC=2, LOPR=0,
                                     HOPR=max(lim.max_power_w_by_focus.values()))
        labels = [f"{m}: {spots[m].focal_spot_um:g} um" if m in spots else str(m)
                  for m in self.focus_modes]
        self.focus_mode = self._out(
            "mbbOut", "TUBE:FocusMode", *labels,
            initial_value=self.focus_modes.index(st.focus_mode), blocking=True, always_update=True,
            validate=lambda r, v: 0 <= v < len(self.focus_modes) and check(
                mode=self.focus_modes[v]))
        self.focus_mode_rbv = builder.mbbIn(n("TUBE:FocusMode_RBV"), *labels)
        self.xray = self._out("boolOut", "TUBE:XrayOn", ZNAM="Off", ONAM="On", initial_value=0,
                                    blocking=True, always_update=True)
        self.xray_rbv = builder.boolIn(n("TUBE:XrayOn_RBV"), ZNAM="Off", ONAM="On",
                                       OSV="MINOR")
        self.warmup = self._out("boolOut", "TUBE:WarmUp", ZNAM="Done", ONAM="Warming up",
                                      initial_value=0, blocking=True, always_update=True)
        self.warmup_rbv = builder.aIn(n("TUBE:WarmUpProgress_RBV"), EGU="%", PREC=0, LOPR=0,
                                      HOPR=100)
        self.state_rbv = builder.mbbIn(n("TUBE:State_RBV"), *[
            (s, _TUBE_STATE_SEVERITY[s]) if s in _TUBE_STATE_SEVERITY else s
            for s in TUBE_STATES])
        self.interlock_rbv = builder.boolIn(n("TUBE:Interlock_RBV"), ZNAM="Open",
                                            ONAM="Closed", ZSV="MAJOR")
        self.error_rbv = builder.longIn(n("TUBE:Error_RBV"), initial_value=0)
        self.error_text_rbv = builder.longStringIn(n("TUBE:ErrorText_RBV"), initial_value="",
                                                   length=MAX_MESSAGE)

        async def on_kv(v):
            await self._action("tube voltage", set_kv, self.kv,
                               lambda: inst.tube.voltage_setpoint_kv, self.poll_once)(v)

        async def on_ua(v):
            await self._action("tube current", set_ua, self.ua,
                               lambda: inst.tube.current_setpoint_ua, self.poll_once)(v)

        async def on_mode(v):
            await self._action("focus mode", set_mode, self.focus_mode,
                               lambda: self.focus_modes.index(inst.tube.focus_mode),
                               self.poll_once)(v)

        async def on_xray(v):
            fn = inst.xray_on if v else inst.xray_off
            await self._action("X-rays " + ("on" if v else "off"), lambda _: fn(), self.xray,
                               lambda: int(inst.tube.state.name == "XRAY_ON"),
                               self.poll_once)(v)

        async def on_warmup(v):
            if not v:
                return
            await self._action("warm-up", lambda _: inst.warm_up(), None, None,
                               self.poll_once)(v)
            self.warmup.set(0, process=False)

        for rec, fn in ((self.kv, on_kv), (self.ua, on_ua), (self.focus_mode, on_mode),
                        (self.xray, on_xray), (self.warmup, on_warmup)):
            self._bind(rec, fn)

    def _out(self, kind: str, name: str, *args, **kw):
        """Output record ``builder.<kind>`` named ``prefix + name``, whose puts go to the
        handler bound to it with :meth:`_bind`."""
        name = self._n(name)
        ctor = getattr(builder, kind)
        async def on_update(value):
            handler = self._handlers.get(name)
            if handler is not None:
                await handler(value)
        rec = ctor(name, *args, on_update=on_update, **kw)
        self._names[id(rec)] = name
        return rec

    def _bind(self, record, handler) -> None:
        """Make ``handler(value)`` (async) the action of a put to ``record``."""
        self._handlers[self._names[id(record)]] = handler

    def _build_axis(self, group: str, field: str, key: str, axis, egu: str, prec: int,
                    move: Callable[[float], None]) -> None:
        n = self._n
        travel = tuple(float(x) for x in axis.limits)
        self._soft[key] = travel
        pos = float(axis.position)
        base = f"{group}{field}"

        def valid(v) -> bool:
            lo, hi = self._soft[key]
            if not lo <= v <= hi:
                self._message(f"{base}: target {v:g} {egu} outside the soft limits "
                              f"{lo:g}..{hi:g} {egu}: rejected", error=True)
                return False
            return True

        def valid_limit(which: str, v) -> bool:
            lo, hi = self._soft[key]
            if not travel[0] <= v <= travel[1]:
                why = f"outside the stage travel {travel[0]:g}..{travel[1]:g} {egu}"
            elif which == "HLM" and not v > lo:
                why = f"not above the low limit {lo:g} {egu}"
            elif which == "LLM" and not v < hi:
                why = f"not below the high limit {hi:g} {egu}"
            else:
                return True
            self._message(f"{base}_{which} {v:g} {egu} {why}: rejected", error=True)
            return False

        dlo, dhi = _outward(*travel)
        sp = self._out("aOut", base, initial_value=pos, EGU=egu, PREC=prec, DRVL=dlo, DRVH=dhi,
                       LOPR=travel[0], HOPR=travel[1], always_update=True, blocking=True,
                       validate=lambda r, v: valid(v))
        rbv = builder.aIn(n(f"{base}_RBV"), initial_value=pos, EGU=egu, PREC=prec,
                          LOPR=travel[0], HOPR=travel[1])
        dmov = builder.boolIn(n(f"{base}_DMOV"), initial_value=1, ZNAM="Moving", ONAM="Done")
        stop = self._out("Action", f"{base}_STOP", ZNAM="", ONAM="Stop", initial_value=0)
        velo = self._out("aOut", f"{base}_VELO", initial_value=float(axis.velocity),
                            EGU=f"{egu}/s", PREC=prec, DRVL=0.0, blocking=True,
                            validate=lambda r, v: v > 0)
        # blocking: a put completes once the new limit is in force for the next move
        hlm = self._out("aOut", f"{base}_HLM", initial_value=travel[1], EGU=egu, PREC=prec,
                        DRVL=dlo, DRVH=dhi, LOPR=travel[0], HOPR=travel[1], blocking=True,
                        validate=lambda r, v: valid_limit("HLM", v))
        llm = self._out("aOut", f"{base}_LLM", initial_value=travel[0], EGU=egu, PREC=prec,
                        DRVL=dlo, DRVH=dhi, LOPR=travel[0], HOPR=travel[1], blocking=True,
                        validate=lambda r, v: valid_limit("LLM", v))
        setattr(self, f"{key}_rec", {"sp": sp, "rbv": rbv, "dmov": dmov, "stop": stop, "velo": velo,
                                         "hlm": hlm, "llm": llm, "axis": axis, "egu": egu})

        def set_limit(which: str, v: float) -> None:
            lo, hi = self._soft[key]
            lo, hi = (lo, float(v)) if which == "HLM" else (float(v), hi)
            self._soft[key] = (lo, hi)
            # control limits of the setpoint follow; DRVL/DRVH a hair outside (see _outward)
            name = self._names[id(sp)]
            for fld, val in zip(("DRVL", "DRVH", "LOPR", "HOPR"), (*_outward(lo, hi), lo, hi)):
                _put_field(name, fld, val)
            self._message(f"{base} soft limits now {lo:g}..{hi:g} {egu}")

        def limit_handler(which: str):
            async def on(v):
                set_limit(which, v)
            return on

        self._bind(hlm, limit_handler("HLM"))
        self._bind(llm, limit_handler("LLM"))

        async def on_move(v):
            self._moving[key] += 1
            dmov.set(0)
            try:
                await self._run(move, v)
                self._message(f"{base} on target at {v:g} {egu}")
            except Exception as exc:  # noqa: BLE001 - reported to the client; the IOC serves on
                self._message(f"{base} move to {v:g} {egu} failed: {exc}", error=True)
            finally:
                with contextlib.suppress(Exception):
                    p = await self._run(lambda: float(axis.position))
                    rbv.set(p)
                self._moving[key] -= 1
                dmov.set(1)

        async def on_stop(v):
            await self._run(axis.stop)
            self._message(f"{base}: stopped")

        async def on_velo(v):
            await self._action(f"{base} velocity", lambda x: setattr(axis, "velocity", x), velo,
                               lambda: float(axis.velocity))(v)

        self._bind(sp, on_move)
        self._bind(stop, on_stop)
        self._bind(velo, on_velo)

    def _build_camera(self) -> None:
        inst, n = self.inst, self._n
        rows, cols = inst.camera.frame_shape
        self.shape = (rows, cols)
        exp = inst.exposure_s
        self.acquire = self._out("boolOut", "CAM:Acquire", ZNAM="Done", ONAM="Acquire",
                                       initial_value=0, blocking=True, always_update=True)
        self.acquire_rbv = builder.boolIn(n("CAM:Acquire_RBV"), ZNAM="Done", ONAM="Acquiring")
        self.acq_time = self._out("aOut", "CAM:AcquireTime", initial_value=exp, EGU="s", PREC=4,
                                     blocking=True, validate=lambda r, v: v > 0)
        self.acq_time_rbv = builder.aIn(n("CAM:AcquireTime_RBV"), initial_value=exp, EGU="s",
                                        PREC=4)
        self.num_images = self._out("longOut", "CAM:NumImages", initial_value=1, DRVL=1,
                                          DRVH=1_000_000)
        self.num_images_rbv = builder.longIn(n("CAM:NumImages_RBV"), initial_value=1)
        self.num_average = self._out("longOut", "CAM:NumAverage", initial_value=1, DRVL=1,
                                           DRVH=10_000)
        self.num_average_rbv = builder.longIn(n("CAM:NumAverage_RBV"), initial_value=1)
        self.image_mode = self._out("mbbOut", "CAM:ImageMode", *IMAGE_MODES, initial_value=0)
        self.image_mode_rbv = builder.mbbIn(n("CAM:ImageMode_RBV"), *IMAGE_MODES)
        self.counter = builder.longIn(n("CAM:ArrayCounter_RBV"), initial_value=0)
        self.size_x = builder.longIn(n("CAM:ArraySizeX_RBV"), initial_value=cols)
        self.size_y = builder.longIn(n("CAM:ArraySizeY_RBV"), initial_value=rows)
        self.det_state = builder.mbbIn(n("CAM:DetectorState_RBV"), *[
            (s, "MAJOR") if s in ("Error", "Disconnected") else s for s in DETECTOR_STATES])
        self.dropped = builder.longIn(n("CAM:DroppedFrames_RBV"), initial_value=0)
        self.binning = self._out("longOut", "CAM:ImageBinning", initial_value=1, DRVL=1, DRVH=16)
        self.image_elements = image_elements((rows, cols))
        self.image = builder.WaveformIn(n("CAM:Image"), length=self.image_elements,
                                        datatype=np.float32)
        self.array_binning = builder.longIn(n("CAM:ArrayBinning_RBV"), initial_value=1)
        self.image_scale = builder.aIn(n("CAM:ImageScale_RBV"), initial_value=1.0, PREC=2)
        self.corrected_rbv = builder.boolIn(n("CAM:Corrected_RBV"), ZNAM="Raw",
                                            ONAM="Corrected")
        self.take_darks = self._out("boolOut", "CAM:TakeDarks", ZNAM="Done", ONAM="Busy",
                                    initial_value=0, blocking=True, always_update=True)
        self.take_flats = self._out("boolOut", "CAM:TakeFlats", ZNAM="Done", ONAM="Busy",
                                    initial_value=0, blocking=True, always_update=True)
        self.references_rbv = builder.mbbIn(n("CAM:References_RBV"), "None", "Dark", "Flat",
                                            "Dark+Flat")

        def reference(kind, record):
            fn = inst.take_darks if kind == "dark" else inst.take_flats

            async def on(v):
                if not v:
                    return
                self.det_state.set(DETECTOR_STATES.index("Acquire"))
                await self._action(f"{kind} reference", lambda _: fn(
                    int(self.num_average.get())), None, None, self.poll_once)(v)
                self.det_state.set(DETECTOR_STATES.index("Idle"))
                record.set(0, process=False)
            return on

        self._bind(self.take_darks, reference("dark", self.take_darks))
        self._bind(self.take_flats, reference("flat", self.take_flats))

        def copy(src, dst):
            async def on(v):
                dst.set(v)
            return on

        self._bind(self.num_images, copy(self.num_images, self.num_images_rbv))
        self._bind(self.num_average, copy(self.num_average, self.num_average_rbv))
        self._bind(self.image_mode, copy(self.image_mode, self.image_mode_rbv))

        async def on_time(v):
            await self._action("exposure", inst.set_exposure_s, self.acq_time,
                               lambda: inst.exposure_s, self.poll_once)(v)

        self._bind(self.acq_time, on_time)
        self._bind(self.acquire, self._on_acquire)

    def _build_hdf(self) -> None:
        n = self._n
        self.file_path = self._out("longStringOut", "HDF:FilePath", initial_value=str(Path.cwd()),
                                               length=MAX_MESSAGE)
        self.file_name = self._out("longStringOut", "HDF:FileName",
                                               initial_value="xinstrument.h5",
                                               length=MAX_MESSAGE)
        self.full_name = builder.longStringIn(n("HDF:FullFileName_RBV"), initial_value="",
                                              length=MAX_MESSAGE)
        self.capture = self._out("boolOut", "HDF:Capture", ZNAM="Done", ONAM="Capture",
                                       initial_value=0, blocking=True)
        self.capture_rbv = builder.boolIn(n("HDF:Capture_RBV"), ZNAM="Done", ONAM="Capturing")
        self.num_captured = builder.longIn(n("HDF:NumCaptured_RBV"), initial_value=0)
        self._bind(self.capture, self._on_capture)

    def _build_restoration(self) -> None:
        from ..restoration.stage import METHODS
        inst, n = self.inst, self._n
        self.methods = list(METHODS)
        current = inst.restoration_method if inst.restoration_method in METHODS else METHODS[0]
        self.restore_enable = self._out("boolOut", "RESTORE:Enable", ZNAM="Off", ONAM="On",
                                              initial_value=0)
        self.restore_method = self._out("mbbOut", "RESTORE:Method", *self.methods,
                                             initial_value=self.methods.index(current),
                                             blocking=True)
        self.restore_profile = self._out(
            "longStringOut", "RESTORE:Profile",
            initial_value=inst.config.restoration.profile or "", length=MAX_MESSAGE)
        self.restore_fps = builder.aIn(n("RESTORE:Fps_RBV"), EGU="frames/s", PREC=2)
        self.restore_latency = builder.aIn(n("RESTORE:Latency_RBV"), EGU="s", PREC=4)
        self.consistency = builder.aIn(n("RESTORE:Consistency_RBV"), PREC=3)
        self.flagged = builder.aIn(n("RESTORE:FlaggedFraction_RBV"), PREC=4, LOPR=0, HOPR=1)
        self.fell_back = builder.boolIn(n("RESTORE:FellBack_RBV"), ZNAM="No", ONAM="Fell back",
                                        OSV="MINOR")
        self.guard = self._out("boolOut", "RESTORE:Guard", ZNAM="Off", ONAM="On",
                               initial_value=0, blocking=True, always_update=True)

        async def on_method(v):
            await self._action("restoration method", lambda i: inst.set_restoration(
                self.methods[i]), self.restore_method,
                lambda: self.methods.index(inst.restoration_method))(v)

        async def on_profile(v):
            await self._action("profile", inst.load_profile, None, None)(v)

        async def on_guard(v):
            await self._action("fidelity guard " + ("on" if v else "off"),
                               lambda x: inst.set_fidelity_policy(bool(x)), self.guard,
                               lambda: 0 if v else 1)(v)

        self._bind(self.restore_method, on_method)
        self._bind(self.guard, on_guard)
        self._bind(self.restore_profile, on_profile)

    def _build_scans(self) -> None:
        inst, n = self.inst, self._n
        lo, hi = inst.focus_axis.limits
        self.focus_start = self._out("boolOut", "SCAN:FocusStart", ZNAM="Done", ONAM="Scanning",
                                           initial_value=0, blocking=True, always_update=True)
        self.focus_range = self._out("aOut", "SCAN:FocusRange", initial_value=min(40.0, hi - lo),
                                        EGU="um", PREC=2, DRVL=0.0, DRVH=hi - lo,
                                        validate=lambda r, v: v > 0)
        self.focus_step = self._out("aOut", "SCAN:FocusStep", initial_value=2.0, EGU="um",
                                       PREC=2, DRVL=0.0, DRVH=hi - lo,
                                       validate=lambda r, v: v > 0)
        self.focus_frames = self._out("longOut", "SCAN:FocusFramesPerStep", initial_value=2,
                                            DRVL=1, DRVH=1000)
        self.focus_best = builder.aIn(n("SCAN:FocusBest_RBV"), EGU="um", PREC=2)
        self.scan_abort = self._out("Action", "SCAN:Abort", ZNAM="", ONAM="Abort",
                                         initial_value=0)
        self._bind(self.focus_start, self._on_focus_scan)
        self._bind(self.scan_abort, self._on_abort)
        self._build_tomo()

    def _build_tomo(self) -> None:
        """Tomosynthesis (xinstrument.scans.tomo.TomoScan) with its plan from PVs."""
        n = self._n
        self.tomo_start = self._out("boolOut", "SCAN:TomoStart", ZNAM="Done", ONAM="Scanning",
                                    initial_value=0, blocking=True, always_update=True)
        self.tomo_pause = self._out("boolOut", "SCAN:TomoPause", ZNAM="Run", ONAM="Pause",
                                    initial_value=0, always_update=True)
        # plan values are checked when a scan starts (PlanError), so a rejected plan says why
        self.tomo_arc = self._out("aOut", "SCAN:TomoArc", initial_value=20.0, EGU="deg", PREC=3)
        self.tomo_centre = self._out("aOut", "SCAN:TomoCentre", initial_value=0.0, EGU="deg",
                                     PREC=3)
        self.tomo_n = self._out("longOut", "SCAN:TomoNumAngles", initial_value=21)
        self.tomo_frames = self._out("longOut", "SCAN:TomoFramesPerAngle", initial_value=10)
        self.tomo_darks = self._out("longOut", "SCAN:TomoDarks", initial_value=1)
        self.tomo_flats = self._out("longOut", "SCAN:TomoFlats", initial_value=1)
        self.tomo_flats_every = self._out("longOut", "SCAN:TomoFlatsEvery", initial_value=0)
        self.tomo_restore = self._out("boolOut", "SCAN:TomoRestore", ZNAM="Off", ONAM="On",
                                      initial_value=0)
        self.tomo_file = self._out("longStringOut", "SCAN:TomoFileName",
                                   initial_value="tomo.h5", length=MAX_MESSAGE)
        # 0: from the bench model (simulated bench); a real bench needs all three
        self.tomo_sod = self._out("aOut", "SCAN:TomoSourceObject", initial_value=0.0, EGU="mm",
                                  PREC=3)
        self.tomo_sdd = self._out("aOut", "SCAN:TomoSourceDetector", initial_value=0.0,
                                  EGU="mm", PREC=3)
        self.tomo_pixel = self._out("aOut", "SCAN:TomoPixelSize", initial_value=0.0, EGU="um",
                                    PREC=4)
        self.tomo_progress = builder.aIn(n("SCAN:TomoProgress_RBV"), initial_value=0.0, EGU="%",
                                         PREC=1, LOPR=0, HOPR=100)
        self.tomo_index = builder.longIn(n("SCAN:TomoAngleIndex_RBV"), initial_value=0)
        self.tomo_time_left = builder.aIn(n("SCAN:TomoTimeLeft_RBV"), EGU="s", PREC=1)
        self.tomo_state = builder.mbbIn(n("SCAN:TomoState_RBV"), *[
            (s, _TOMO_STATE_SEVERITY[s]) if s in _TOMO_STATE_SEVERITY else s
            for s in TOMO_STATES])
        self.tomo_message = builder.longStringIn(n("SCAN:TomoMessage_RBV"), initial_value="",
                                                 length=MAX_MESSAGE)
        self.tomo_full_name = builder.longStringIn(n("SCAN:TomoFullFileName_RBV"),
                                                   initial_value="", length=MAX_MESSAGE)
        self._bind(self.tomo_start, self._on_tomo)
        self._bind(self.tomo_pause, self._on_tomo_pause)

    # --- actions -------------------------------------------------------------------------------
    def _stop_requested(self) -> bool:
        """Acquire=0 arriving while the Acquire record is busy is held by EPICS until the put
        completes; the record's VAL already holds it, so the loop reads it between frames."""
        if self._acq_stop.is_set():
            return True
        with contextlib.suppress(Exception):
            return self.acquire.get_field("VAL") == "Done"
        return False

    async def _on_acquire(self, value):
        if not value:
            self._acq_stop.set()
            return
        self._acq_stop.clear()
        self.acquire_rbv.set(1)
        mode = IMAGE_MODES[self.image_mode.get()]
        n_images = {"Single": 1, "Multiple": int(self.num_images.get()),
                    "Continuous": None}[mode]
        n_avg = int(self.num_average.get())
        try:
            await self._run(self._acquire_loop, n_images, n_avg)
            self.det_state.set(DETECTOR_STATES.index("Idle"))
        except Exception as exc:  # noqa: BLE001 - reported to the client; the IOC serves on
            aborted = "abort" in str(exc).lower()
            self.det_state.set(DETECTOR_STATES.index("Aborted" if aborted else "Error"))
            self._message(f"acquisition {'aborted' if aborted else 'failed'}: {exc}",
                          error=not aborted)
        finally:
            self.acquire_rbv.set(0)
            self.acquire.set(0, process=False)

    def _acquire_loop(self, n_images: int | None, n_avg: int) -> None:
        inst = self.inst
        done = 0
        while n_images is None or done < n_images:
            if done and self._stop_requested():
                break
            correct = inst.corrector is not None
            restore = bool(self.restore_enable.get()) and correct
            self.det_state.set(DETECTOR_STATES.index("Acquire"))
            frame = inst.acquire(n_avg, correct=correct, restore=restore)
            self.det_state.set(DETECTOR_STATES.index("Readout"))
            self._publish(frame)
            done += 1
            if self._writer is not None:
                self.det_state.set(DETECTOR_STATES.index("Saving"))
                self._save(frame)
        self._message(f"acquired {done} frame(s) of {n_avg} averaged")

    def _publish(self, frame) -> None:
        """Frame -> image PVs. The sizes describe exactly the elements published, whatever the
        source shape (binned on request, super-resolved, binned further to fit)."""
        src = frame.restored if frame.restored is not None else frame.data
        # super-resolving methods return more pixels per sensor pixel than they were given
        scale = src.shape[1] / frame.data.shape[1]
        data, factor = fit_image(np.asarray(src), int(self.binning.get()), self.image_elements)
        with self._publish_lock:  # sizes and pixels of one image go out together
            self.size_y.set(data.shape[0])
            self.size_x.set(data.shape[1])
            self.array_binning.set(factor)
            self.image_scale.set(float(scale))
            self.image.set(data.ravel())
            self.corrected_rbv.set(int(frame.corrected))
            self._counter += 1
            self.counter.set(self._counter)
        fid = frame.fidelity
        summary = fid.summary() if hasattr(fid, "summary") else {}
        for rec, key in ((self.consistency, "reduced_chi2"), (self.flagged, "flagged_fraction")):
            v = summary.get(key, getattr(fid, key, None) if fid is not None else None)
            if v is None or not math.isfinite(float(v)):
                # no check ran, or the guard could not normalise the residuals
                rec.set(math.nan, severity=alarm.INVALID_ALARM, alarm=alarm.UDF_ALARM)
            else:
                rec.set(float(v))
        fell_back = int(bool(summary.get("fell_back", getattr(fid, "fell_back", False))))
        self.fell_back.set(fell_back)
        if frame.restoration_method is not None:
            with contextlib.suppress(Exception):
                r = self.inst.restorer(frame.restoration_method)
                self.restore_fps.set(float(r.frames_per_second))
                self.restore_latency.set(float(r.latency_s))

    async def _on_capture(self, value):
        if value:
            try:
                path = await self._run(self._open_writer)
                self.full_name.set(str(path))
                self.capture_rbv.set(1)
                self._message(f"capturing to {path}")
            except Exception as exc:  # noqa: BLE001 - reported to the client; the IOC serves on
                self._message(f"capture refused: {exc}", error=True)
                self.capture.set(0, process=False)
        else:
            await self._run(self._close_writer)
            self.capture_rbv.set(0)

    def _open_writer(self) -> Path:
        from ..storage import ScanWriter
        with self._writer_lock:
            if self._writer is not None:
                return Path(self.full_name.get())
            path = Path(self.file_path.get()) / self.file_name.get()
            restored = bool(self.restore_enable.get())
            rshape = None
            if restored:
                # super-resolving methods store their frames on their own, finer grid
                r = self.inst.restorer()
                scale = int(getattr(r, "scale", 1) or 1)
                rshape = (self.shape[0] * scale, self.shape[1] * scale)
            self._writer = ScanWriter(path, self.shape, "float32", restored=restored,
                                      restored_shape=rshape,
                                      metadata={"instrument": "xinstrument", "source": "epics"})
            self._writer_rshape = rshape
            self._writer_restored = restored
            self._captured = 0
            self._not_stored = 0
            self.num_captured.set(0)
            return path

    def _close_writer(self) -> None:
        with self._writer_lock:
            w, self._writer = self._writer, None
        if w is not None:
            w.close()
            skipped = (f"; {self._not_stored} restoration(s) of another size not stored"
                       if self._not_stored else "")
            self._message(f"capture closed: {self._captured} frame(s) in "
                          f"{self.full_name.get()}{skipped}", error=bool(self._not_stored))

    def _save(self, frame) -> None:
        with self._writer_lock:
            w = self._writer
            if w is None:
                return
            idx = w.append(frame.data.astype(np.float32), image_key=0, theta_deg=frame.theta_deg,
                           voltage_kv=frame.voltage_kv, current_ua=frame.current_ua,
                           exposure_s=frame.exposure_s, frames_averaged=frame.frames_averaged,
                           focus_z_um=frame.focus_z_um, timestamp_s=frame.timestamp_s)
            if (self._writer_restored and frame.restored is not None
                    and tuple(frame.restored.shape) != self._writer_rshape):
                # the method changed its output size during the capture; the measured frame is
                # stored, the restoration can be repeated from it
                self._not_stored += 1
                self._message(f"captured frame {idx}: its {frame.restored.shape[1]} x "
                              f"{frame.restored.shape[0]} restoration does not fit the capture "
                              f"file's {self._writer_rshape[1]} x {self._writer_rshape[0]} "
                              "restored frames and is not stored; the measured frame is",
                              error=True)
            elif self._writer_restored and frame.restored is not None:
                w.append_restored(frame.restored, source_index=idx,
                                  method=frame.restoration_method,
                                  profile=self.inst.profile.name if self.inst.profile else "")
            self._captured += 1
        self.num_captured.set(self._captured)

    async def _on_focus_scan(self, value):
        if not value:
            return
        rec = self.focus_rec
        inst = self.inst
        lo, hi = self._soft["focus"]
        centre = float(rec["rbv"].get())
        half = 0.5 * float(self.focus_range.get())
        start, stop = max(lo, centre - half), min(hi, centre + half)
        step = float(self.focus_step.get())
        self._moving["focus"] += 1
        rec["dmov"].set(0)
        try:
            curve = await self._run(inst.focus_scan, start, stop, step,
                                    int(self.focus_frames.get()))
            self.focus_best.set(float(curve.best_position_um))
            self._message(f"focus scan {start:g}..{stop:g} um: best "
                          f"{curve.best_position_um:.2f} um")
        except Exception as exc:  # noqa: BLE001 - reported to the client; the IOC serves on
            self._message(f"focus scan failed: {exc}", error=True)
        finally:
            with contextlib.suppress(Exception):
                p = await self._run(lambda: float(inst.focus_axis.position))
                rec["rbv"].set(p)
                rec["sp"].set(p, process=False)
            self._moving["focus"] -= 1
            rec["dmov"].set(1)
            self.focus_start.set(0, process=False)

    # --- tomosynthesis -------------------------------------------------------------------------
    def _tomo_plan(self):
        """The plan the Tomo PVs describe, checked as far as possible without the devices."""
        from ..scans.tomo import PlanError, TomoPlan
        geometry = {key: float(rec.get()) for key, rec in (
            ("source_object_mm", self.tomo_sod), ("source_detector_mm", self.tomo_sdd),
            ("pixel_um", self.tomo_pixel)) if float(rec.get()) > 0}
        centre = float(self.tomo_centre.get())
        out = Path(self.file_path.get()) / self.tomo_file.get()
        plan = TomoPlan(arc_deg=float(self.tomo_arc.get()), n_angles=int(self.tomo_n.get()),
                        centre_deg=centre, frames_per_angle=int(self.tomo_frames.get()),
                        darks=int(self.tomo_darks.get()), flats=int(self.tomo_flats.get()),
                        flats_every=int(self.tomo_flats_every.get()),
                        restore=bool(self.tomo_restore.get()), return_to_deg=centre,
                        geometry=geometry, out=out, title="tomosynthesis (EPICS)")
        if self.inst.rotation_axis is None:
            raise PlanError("this bench has no rotation stage: tomosynthesis needs one")
        plan.validate(self._soft["rotation"])   # the IOC's soft limits, inside the travel
        if not self.tomo_file.get() or Path(self.tomo_file.get()).name != self.tomo_file.get():
            raise PlanError(f"SCAN:TomoFileName must be a file name without folders, got "
                            f"{self.tomo_file.get()!r}")
        if not out.parent.is_dir():
            raise PlanError(f"output folder {out.parent} (HDF:FilePath) does not exist")
        if out.exists():
            raise PlanError(f"{out} exists: choose another SCAN:TomoFileName")
        if self.inst.busy:
            raise PlanError(f"instrument busy with {self.inst.busy!r}")
        return plan

    def _tomo_finished(self, state: str, text: str) -> None:
        error = state in ("Failed", "Rejected", "Aborted")
        sev = _sev(_TOMO_STATE_SEVERITY.get(state, "NO_ALARM"))
        self.tomo_message.set(text[:MAX_MESSAGE - 1], severity=sev,
                              alarm=alarm.STATE_ALARM if error else alarm.NO_ALARM)
        self.tomo_state.set(TOMO_STATES.index(state))
        self._message(text, error=state in ("Failed", "Rejected"))

    def _tomo_report(self, p) -> None:
        """ScanProgress from the scan thread -> readbacks."""
        self.tomo_progress.set(100.0 * p.fraction)
        self.tomo_index.set(int(p.angle_index))
        self.tomo_time_left.set(float(p.time_left_s))
        phase = p.phase.capitalize()
        if phase in ("Darks", "Flats", "Projections", "Paused"):
            self.tomo_state.set(TOMO_STATES.index(phase))

    def _on_frame_event(self, kind: str, payload) -> None:
        """Projections of a running tomosynthesis scan go to the image PVs."""
        from ..instrument import AveragedFrame
        if kind == "frame" and self._tomo is not None and isinstance(payload, AveragedFrame):
            self._publish(payload)

    async def _on_tomo(self, value):
        from ..scans.tomo import PlanError, ScanAborted, TomoScan
        if not value:
            return
        try:
            try:
                plan = self._tomo_plan()
            except PlanError as exc:
                self._tomo_finished("Rejected", f"tomosynthesis rejected: {exc}")
                return
            self.tomo_full_name.set(str(plan.out))
            self.tomo_progress.set(0.0)
            self.tomo_index.set(0)
            self.tomo_time_left.set(math.nan)
            self.tomo_state.set(TOMO_STATES.index("Darks" if plan.darks else "Flats"))
            self.tomo_message.set(f"tomosynthesis running -> {plan.out}")
            self._tomo_abort = False
            scan = TomoScan(self.inst, plan, progress=self._tomo_report)
            self._tomo = scan
            try:
                result = await self._run(lambda: scan.start().wait())
            except PlanError as exc:        # found only with the devices (references, geometry)
                self._tomo_finished("Rejected", f"tomosynthesis rejected: {exc}")
            except ScanAborted as exc:
                self._tomo_finished("Aborted", str(exc))
            except Exception as exc:  # noqa: BLE001 - reported to the client; the IOC serves on
                if self._tomo_abort:
                    self._tomo_finished("Aborted", f"tomosynthesis aborted: {exc}")
                else:
                    self._tomo_finished("Failed", f"tomosynthesis failed: {exc}")
            else:
                self.tomo_progress.set(100.0)
                self._tomo_finished("Done", f"tomosynthesis done: {result.n_projections} "
                                    f"projections in {result.elapsed_s:.1f} s -> {result.path}")
        finally:
            self._tomo = None
            self.tomo_pause.set(0, process=False)
            self.tomo_start.set(0, process=False)
            with contextlib.suppress(Exception):
                await self._run(self.poll_once)

    async def _on_tomo_pause(self, value):
        scan = self._tomo
        if scan is None:
            if value:
                self._message("SCAN:TomoPause: no tomosynthesis scan running: rejected",
                              error=True)
                self.tomo_pause.set(0, process=False)
            return
        if value:
            scan.pause()
            self._message("tomosynthesis pauses before the next frame")
        else:
            scan.resume()
            self._message("tomosynthesis resumed")

    async def _on_abort(self, value):
        self._acq_stop.set()
        scan = self._tomo
        if scan is not None:
            # at the next frame boundary; the short rotation step in progress finishes, so the
            # file closes as aborted rather than with a stage error
            self._tomo_abort = True
            await self._run(scan.abort)
            self._message("abort requested: tomosynthesis stops at the next frame")
            return
        await self._run(self.inst.abort)
        await self._run(self.inst.stop_motion)
        self._message("abort requested")

    # --- polling -------------------------------------------------------------------------------
    def poll_once(self) -> None:
        """Copy one Instrument.snapshot() into the readbacks; missing parts raise alarms."""
        snap = self.inst.snapshot()
        self.busy.set(snap.get("busy") or "")
        tube = snap.get("tube")
        tube_recs = (self.kv_rbv, self.ua_rbv, self.power_rbv, self.xray_rbv, self.state_rbv,
                     self.interlock_rbv, self.focus_mode_rbv, self.warmup_rbv)
        if tube is None:
            for rec in tube_recs:
                rec.set_alarm(alarm.INVALID_ALARM, alarm.COMM_ALARM)
            self.error_rbv.set(-1, severity=alarm.INVALID_ALARM, alarm=alarm.COMM_ALARM)
            self.error_text_rbv.set("tube not responding", severity=alarm.INVALID_ALARM,
                                    alarm=alarm.COMM_ALARM)
        else:
            self.kv_rbv.set(tube["voltage_kv"])
            self.ua_rbv.set(tube["current_ua"])
            self.power_rbv.set(tube["power_w"])
            self.xray_rbv.set(int(tube["state"] == "XRAY_ON"))
            self.state_rbv.set(TUBE_STATES.index(tube["state"]))
            self.interlock_rbv.set(int(bool(tube["interlock_closed"])))
            if tube["focus_mode"] in self.focus_modes:
                self.focus_mode_rbv.set(self.focus_modes.index(tube["focus_mode"]))
            wp = tube.get("warmup_progress")
            self.warmup_rbv.set(100.0 * wp if wp is not None else math.nan)
            self._tube_sp.update(kv=tube["voltage_setpoint_kv"], ua=tube["current_setpoint_ua"],
                                 focus=tube["focus_mode"])
            code = tube["error_code"]
            if code:
                self.error_rbv.set(int(code), severity=alarm.MAJOR_ALARM, alarm=alarm.STATE_ALARM)
                self.error_text_rbv.set(f"{code}: {tube['error_text']}"[:MAX_MESSAGE - 1],
                                        severity=alarm.MAJOR_ALARM, alarm=alarm.STATE_ALARM)
            else:
                self.error_rbv.set(0)
                self.error_text_rbv.set("")
        self._poll_axis("focus", snap.get("focus_um"), snap.get("focus_on_target"))
        if self.inst.rotation_axis is not None:
            on = None
            with contextlib.suppress(Exception):
                on = bool(self.inst.rotation_axis.on_target)
            self._poll_axis("rotation", snap.get("rotation_deg"), on)
        refs = snap.get("references", {})
        self.references_rbv.set(int(bool(refs.get("dark"))) + 2 * int(bool(refs.get("flat"))))
        cam = snap.get("camera")
        if cam is None:
            self.det_state.set(DETECTOR_STATES.index("Disconnected"),
                               severity=alarm.INVALID_ALARM, alarm=alarm.COMM_ALARM)
        else:
            self.dropped.set(int(cam["skipped"]))
            self.acq_time_rbv.set(float(cam["exposure_s"]))

    def _poll_axis(self, key: str, pos, on_target) -> None:
        rec = getattr(self, f"{key}_rec", None)
        if rec is None:
            return
        if pos is None:
            rec["rbv"].set_alarm(alarm.INVALID_ALARM, alarm.COMM_ALARM)
            return
        rec["rbv"].set(float(pos))
        if not self._moving[key]:
            # moves started elsewhere (GUI, scans) show as well
            rec["dmov"].set(int(bool(on_target)) if on_target is not None else 1)

    def _poll_loop(self) -> None:
        failing = False
        while not self._stop.wait(POLL_S):
            try:
                self.poll_once()
                failing = False
            except Exception as exc:   # keep serving; say so once per failure episode
                if not failing:
                    log.exception("poll failed")
                    self._message(f"poll failed: {exc}", error=True)
                failing = True

    async def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(1.0)
            self._heartbeat += 1
            self.heartbeat.set(self._heartbeat)

    # --- life cycle ----------------------------------------------------------------------------
    def start(self, dispatcher) -> None:
        """After iocInit: start the poll thread and the heartbeat."""
        self._loop = dispatcher.loop
        self.poll_once()
        self._poll_thread = threading.Thread(target=self._poll_loop, daemon=True,
                                             name="xi-ioc-poll")
        self._poll_thread.start()
        self._unsubscribe = self.inst.subscribe(self._on_frame_event)
        asyncio.run_coroutine_threadsafe(self._heartbeat_loop(), self._loop)

    def stop(self) -> None:
        self._stop.set()
        self._acq_stop.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
        scan = self._tomo
        with contextlib.suppress(Exception):
            if scan is not None:
                scan.abort()
                scan.wait(30.0)     # its file is closed, marked incomplete
        with contextlib.suppress(Exception):
            self.inst.abort()
        with contextlib.suppress(Exception):
            self._close_writer()
        if self._poll_thread is not None:
            self._poll_thread.join(timeout=5.0)
        self._pool.shutdown(wait=False, cancel_futures=True)

