"""The EPICS IOC: PVs mapped onto the Instrument API, in facility conventions.

A thin client of :class:`xinstrument.instrument.Instrument`. The PVs live in one table
(:mod:`xinstrument.epics.pvdb`) served over Channel Access (caproto) and PV Access (p4p):

* ``X_RBV`` is the readback of setpoint ``X``; measured values have their own PVs
  (``TUBE:VoltageActual_RBV``). Setpoints follow the instrument (a trip sets ``TUBE:XrayOn``
  to 0; a setpoint changed by another client shows).
* A put the instrument refuses fails as a put: the client's put-callback reports an error, the
  PV goes to a MAJOR WRITE alarm and ``StatusMessage_RBV`` names the value asked for and the
  limit. Put-completion finishes when the action has finished (a move, an acquisition).
* Axes are motor records (``FOCUS:Z.VAL``, ``.RBV``, ``.DMOV`` ...): every move put ends with
  ``DMOV`` back at 1 and a true readback; a refused move pulses ``DMOV`` and leaves the
  readback in a MINOR alarm so motor clients report the failure instead of waiting.
* The camera is an areaDetector driver (``CAM:``, ADBase PVs), with an NDStdArrays plugin
  (``image1:``), an NDFileHDF5 plugin (``HDF1:``) recording to HDF5, and ``Pva1:Image``
  (NTNDArray over PV Access).

Blocking instrument calls run in worker threads; the event loop only awaits them, so it keeps
serving puts (stop, abort) while a move or an acquisition runs.

PV names and semantics: docs/epics.md (generated from :func:`InstrumentIOC.table`).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import importlib.metadata
import inspect
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..acquisition.frame import Frame
from ..acquisition.pipeline import CallbackSink
from ..restoration import registry
from ..scans.plans import Series
from ..scans.tomo import PlanError, ScanAborted, TomoPlan, TomoScan
from ..storage.sink import RecordingSink
from ..storage.writer import DEFAULT_COMPRESSION
from .frames import fit_image, image_elements
from .pvdb import INVALID, MAJOR, MINOR, NO_ALARM, PV, PutRefused, PVTable

log = logging.getLogger("xinstrument.epics")

DETECTOR_STATES = ("Idle", "Acquire", "Readout", "Correct", "Saving", "Aborting", "Error",
                   "Waiting", "Initializing", "Disconnected", "Aborted")
IMAGE_MODES = ("Single", "Multiple", "Continuous")
TRIGGER_MODES = ("Internal",)
DATA_TYPES = ("Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
              "Float32", "Float64")
COLOR_MODES = ("Mono", "Bayer", "RGB1", "RGB2", "RGB3", "YUV444", "YUV422", "YUV421")
FILE_WRITE_MODES = ("Single", "Capture", "Stream")
NO_YES = ("No", "Yes")
DISABLE_ENABLE = ("Disable", "Enable")
TUBE_STATES = ("WARMUP_NEEDED", "WARMING_UP", "STANDBY", "XRAY_ON", "OVERLOAD", "NOT_READY",
               "SELF_TEST")
_TUBE_STATE_SEVERITY = {"WARMUP_NEEDED": MINOR, "OVERLOAD": MAJOR, "NOT_READY": MINOR,
                        "SELF_TEST": MINOR}
TOMO_STATES = ("Idle", "Darks", "Flats", "Projections", "Paused", "Done", "Aborted", "Failed",
               "Rejected")
_TOMO_STATE_SEVERITY = {"Aborted": MINOR, "Failed": MAJOR, "Rejected": MAJOR}
POLL_S = 0.25
MOVE_POLL_S = 0.05
MAX_MESSAGE = 256
# RESTORE:FidelityMethodAccepted_RBV (FidelityReport.method_accepted True / False / None; no
# report: the guard is off)
ACCEPTED_STATES = ("No", "Yes", "Not calibrated", "No check")
# the areaDetector release whose PV interface the camera, image1: and HDF1: follow
AD_CORE_VERSION = "3.12.1"
CAM_PORT = "XICAM"
MOTOR_FIELDS_DOC = "motor record"


class InstrumentIOC:
    """PVs of one Instrument under ``prefix``: build, then :meth:`start` in a running loop
    (``xinstrument.epics.server.run_ioc`` does both). :meth:`stop` ends the threads; it does
    not disconnect the instrument (the owner does, which switches X-rays off)."""

    def __init__(self, instrument, prefix: str = "XI:", workers: int = 4) -> None:
        if not instrument.connected:
            raise RuntimeError("connect the instrument before building its IOC")
        self.inst = instrument
        self.prefix = prefix
        self.table = PVTable(prefix)
        self.table.on_refused = self._on_refused
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="xi-ioc")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._poll_thread: threading.Thread | None = None
        self._acq_stop = threading.Event()
        self._acquiring = False
        self._moving: dict[str, int] = {"focus": 0, "rotation": 0}
        self._axes: dict[str, dict[str, Any]] = {}
        self._writer = None
        self._writer_lock = threading.Lock()
        self._writer_restored = False
        self._writer_rshape: tuple[int, int] | None = None
        self._capture_done: asyncio.Event | None = None
        self._counter = 0
        self._publish_lock = threading.Lock()
        self._captured = 0
        self._not_stored = 0
        self._heartbeat = 0
        self._last_frame = None
        self._rate_t: list[float] = []
        self._tomo = None
        self._tomo_abort = False
        self._xray_requested = False
        self._unsubscribe: Callable[[], None] | None = None
        self._build()

    # --- helpers -------------------------------------------------------------------------------
    async def _run(self, fn: Callable, *args, **kw) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kw))

    def _message(self, text: str, error: bool = False) -> None:
        (log.error if error else log.info)("%s", text)
        self.status_msg.set(text[:MAX_MESSAGE - 1], severity=MINOR if error else NO_ALARM,
                            status="STATE" if error else 0)

    def _on_refused(self, pv: PV, raw, why: str) -> None:
        shown = raw if not isinstance(raw, np.ndarray) or raw.size <= 4 else f"<{raw.size} values>"
        if isinstance(shown, (np.ndarray, np.generic)):
            shown = shown.tolist()
        if why.startswith(pv.name):
            why = why[len(pv.name):].lstrip(": ")
        self._message(f"{pv.name} <- {shown!r} refused: {why}", error=True)

    def pv(self, name: str, kind: str, value, doc: str, on_put=None, **kw) -> PV:
        return self.table.add(PV(name, kind, value, doc=doc, on_put=on_put, **kw))

    def ro(self, name: str, kind: str, value, doc: str, **kw) -> PV:
        return self.pv(name, kind, value, doc, **kw)

    def pair(self, name: str, kind: str, value, doc: str, apply=None, **kw) -> tuple[PV, PV]:
        """Setpoint ``name`` and its readback ``name_RBV``. ``apply(value)`` (sync, in a worker
        thread) carries the setting out and returns the value in force (None: as asked)."""
        rbv = self.ro(f"{name}_RBV", kind, value, f"readback of {self.prefix}{name}",
                      **{k: v for k, v in kw.items() if k in ("units", "precision", "choices",
                                                               "length", "limits", "group")})

        async def on_put(v):
            result = await self._run(apply, v) if apply is not None else None
            result = v if result is None else result
            rbv.set(result)
            return result
        sp = self.pv(name, kind, value, doc, on_put=on_put, **kw)
        return sp, rbv

    def fixed(self, name: str, kind: str, value, doc: str, rbv: bool = True, **kw) -> PV:
        """A setting this instrument has only one value of: puts of that value succeed, others
        are refused with the reason."""
        async def on_put(v):
            if v != sp.value:
                shown = sp.enum_string() if kind == "enum" else sp.value
                raise PutRefused(f"{sp.name}: only {shown!r} is supported ({doc})")
        sp = self.pv(name, kind, value, doc, on_put=on_put, **kw)
        if rbv:
            self.ro(f"{name}_RBV", kind, value, f"readback of {self.prefix}{name}",
                    **{k: v for k, v in kw.items() if k in ("units", "precision", "choices",
                                                             "length", "group")})
        return sp

    # --- records -------------------------------------------------------------------------------
    def _build(self) -> None:
        inst = self.inst
        self.heartbeat = self.ro("Heartbeat_RBV", "int", 0, "counts up once a second while "
                                 "the IOC serves", group="IOC")
        self.status_msg = self.ro("StatusMessage_RBV", "char", "", "last action or refusal, "
                                  "with the value asked for and the limit; MINOR alarm after a "
                                  "refusal", length=MAX_MESSAGE, group="IOC")
        self.busy = self.ro("Busy_RBV", "string", "", "the instrument operation running "
                            "(any client), empty when idle", group="IOC")
        self._build_tube()
        self._build_motor("FOCUS:Z", "focus", "um", 3, inst.move_focus_um,
                          "focus stage (axial)")
        if inst.has_rotation_stage:
            self._build_motor("ROT:Theta", "rotation", "deg", 3,
                              inst.move_rotation_deg, "sample rotation (tomosynthesis)")
        self._build_camera()
        self._build_image_plugin()
        self._build_hdf()
        self._build_restoration()
        self._build_scans()

    # --- tube ----------------------------------------------------------------------------------
    def _build_tube(self) -> None:
        inst = self.inst
        lim = inst.tube_limits
        cfg = inst.config.tube
        kv_hi = min(lim.kv_max, cfg.kv_max) if cfg.kv_max is not None else lim.kv_max
        ua_hi = min(lim.ua_max, cfg.ua_max) if cfg.ua_max is not None else lim.ua_max
        self.kv_range = (float(lim.kv_min), float(kv_hi))
        self.ua_range = (float(lim.ua_min), float(ua_hi))
        st = inst.tube_status()
        self.focus_modes = sorted(lim.max_power_w_by_focus)
        spots = inst.tube_focus_modes
        g = "Tube"

        def check_power(kv, ua, mode) -> None:
            try:
                lim.check(kv, ua, mode)
            except ValueError as exc:
                raise PutRefused(str(exc)) from None

        async def on_kv(v):
            check_power(v, self.ua.value, self.focus_modes[self.focus_mode.value])
            await self._run(inst.set_voltage_kv, v)
            got = inst.tube_setpoints[0]
            self.kv_rbv.set(got)
            self.poll_soon()
            return got

        async def on_ua(v):
            check_power(self.kv.value, v, self.focus_modes[self.focus_mode.value])
            await self._run(inst.set_current_ua, v)
            got = inst.tube_setpoints[1]
            self.ua_rbv.set(got)
            self.poll_soon()
            return got

        async def on_mode(i):
            check_power(self.kv.value, self.ua.value, self.focus_modes[i])
            await self._run(inst.set_focus_mode, self.focus_modes[i])
            self.focus_mode_rbv.set(i)
            self.poll_soon()

        async def on_xray(v):
            if v:
                if not self.interlock_rbv.value:
                    raise PutRefused("X-rays on refused: interlock open (TUBE:Interlock_RBV)")
                self._xray_requested = True
                try:
                    await self._run(inst.xray_on)
                except Exception:
                    self._xray_requested = False
                    raise
            else:
                self._xray_requested = False
                self.xray.set(0)          # asked for: not a trip when the poll sees it off
                await self._run(inst.xray_off)
            self.xray_rbv.set(int(bool(v)))
            await self._run(self.poll_once)

        async def on_warmup(v):
            if v:
                state = TUBE_STATES[self.state_rbv.value]
                if state not in ("WARMUP_NEEDED", "STANDBY", "WARMING_UP"):
                    raise PutRefused(f"warm-up refused in state {state}")
                try:
                    await self._run(inst.warm_up)
                finally:
                    await self._run(self.poll_once)
            return 0

        async def on_reset(v):
            if v:
                await self._run(self._reset_fault)
            return 0

        kw_kv = {"units": "kV", "precision": 1, "limits": self.kv_range, "group": g}
        self.kv = self.pv("TUBE:Voltage", "float", st.voltage_setpoint_kv,
                          "tube voltage setpoint; refused beyond the limits or the focus mode's "
                          "power", on_put=on_kv, **kw_kv)
        self.kv_rbv = self.ro("TUBE:Voltage_RBV", "float", st.voltage_setpoint_kv,
                              "voltage setpoint in force (the tube's SPV)", **kw_kv)
        self.kv_act = self.ro("TUBE:VoltageActual_RBV", "float", st.voltage_kv,
                              "measured output voltage (0 with X-rays off)", units="kV",
                              precision=1, limits=(0.0, self.kv_range[1]), group=g)
        kw_ua = {"units": "uA", "precision": 1, "limits": self.ua_range, "group": g}
        self.ua = self.pv("TUBE:Current", "float", st.current_setpoint_ua,
                          "tube current setpoint; refused beyond the limits or the focus mode's "
                          "power", on_put=on_ua, **kw_ua)
        self.ua_rbv = self.ro("TUBE:Current_RBV", "float", st.current_setpoint_ua,
                              "current setpoint in force (the tube's SPC)", **kw_ua)
        self.ua_act = self.ro("TUBE:CurrentActual_RBV", "float", st.current_ua,
                              "measured output current (0 with X-rays off)", units="uA",
                              precision=1, limits=(0.0, self.ua_range[1]), group=g)
        self.power_act = self.ro("TUBE:PowerActual_RBV", "float", 0.0, "measured output "
                                 "power", units="W", precision=2,
                                 limits=(0.0, float(max(lim.max_power_w_by_focus.values()))),
                                 group=g)
        labels = tuple(f"{m}: {spots[m].focal_spot_um:g} um" if m in spots else str(m)
                       for m in self.focus_modes)
        self.focus_mode = self.pv("TUBE:FocusMode", "enum", self.focus_modes.index(
            st.focus_mode), "focus mode (focal spot); refused if the power exceeds its limit",
            on_put=on_mode, choices=labels, group=g)
        self.focus_mode_rbv = self.ro("TUBE:FocusMode_RBV", "enum", self.focus_modes.index(
            st.focus_mode), "focus mode in force", choices=labels, group=g)
        self.xray = self.pv("TUBE:XrayOn", "enum", 0, "X-rays on (completes when the output "
                            "has reached the setpoints) / off; goes to Off by itself on a trip",
                            on_put=on_xray, choices=("Off", "On"), group=g)
        self.xray_rbv = self.ro("TUBE:XrayOn_RBV", "enum", 0, "X-ray output on", choices=(
            "Off", "On"), group=g)
        self.warmup = self.pv("TUBE:WarmUp", "enum", 0, "1: run the warm-up; completes when it "
                              "has finished", on_put=on_warmup, choices=("Done", "Warm up"),
                              group=g)
        self.warmup_rbv = self.ro("TUBE:WarmUpProgress_RBV", "float", 0.0, "warm-up progress",
                                  units="%", limits=(0.0, 100.0), group=g)
        self.state_rbv = self.ro("TUBE:State_RBV", "enum", 0, "tube controller state",
                                 choices=TUBE_STATES, group=g)
        self.interlock_rbv = self.ro("TUBE:Interlock_RBV", "enum", 1, "door interlock "
                                     "(Open: MAJOR alarm, X-rays cannot go on)",
                                     choices=("Open", "Closed"), group=g)
        self.error_rbv = self.ro("TUBE:Error_RBV", "int", 0, "latched fault code (0: none; -1 "
                                 "tube not responding; -2 the driver switched X-rays off: "
                                 "implausible readback or link fault, see ErrorText_RBV)",
                                 group=g)
        self.error_text_rbv = self.ro("TUBE:ErrorText_RBV", "char", "", "latched fault text",
                                      length=MAX_MESSAGE, group=g)
        self.fault_reset = self.pv("TUBE:FaultReset", "enum", 0, "1: clear latched faults "
                                   "(overload; re-open a lost link); X-rays stay off",
                                   on_put=on_reset, choices=("Done", "Reset"), group=g)

    def _reset_fault(self) -> None:
        self.inst.reset_tube_fault()
        self.poll_once()
        if self.error_rbv.value:
            raise PutRefused(f"fault {self.error_rbv.value} still latched after reset: "
                             f"{self.error_text_rbv.value}")
        self._message("tube faults reset")

    # --- axes as motor records -----------------------------------------------------------------
    def _build_motor(self, base: str, key: str, egu: str, prec: int,
                     move: Callable[[float], None], what: str) -> None:
        """Motor-record fields of ``base`` (user = DIR-signed dial + OFF). HLM/LLM are the
        axis's soft limits (the driver enforces them before a command is sent)."""
        g = f"Axis {base}"
        # the controller's travel bounds HLM/LLM; the soft limits in force start them
        inst = self.inst
        travel = inst.travel_limits(key)
        soft = inst.soft_limits(key)
        pos = inst.axis_position(key)
        m: dict[str, Any] = {"travel": travel, "egu": egu, "off": 0.0, "dir": 0,
                             "set": 0, "stop_req": False}
        self._axes[key] = m

        def sign() -> int:
            return -1 if m["dir"] else 1

        def user(dial: float) -> float:
            return sign() * dial + m["off"]

        def dial_of(u: float) -> float:
            return (u - m["off"]) * sign()

        def user_limits() -> tuple[float, float]:
            a, b = user(m["dlo"]), user(m["dhi"])
            return (min(a, b), max(a, b))
        m["dlo"], m["dhi"] = soft
        m["user"], m["dial_of"], m["user_limits"] = user, dial_of, user_limits

        def f(field: str, kind: str, value, doc: str, on_put=None, **kw) -> PV:
            kw.setdefault("group", g)
            return self.pv(f"{base}.{field}", kind, value, doc, on_put=on_put, **kw)

        num = {"units": egu, "precision": prec}
        val = f("VAL", "float", pos, f"{what}: user setpoint; the put completes when the move "
                "has ended (DMOV 1)", on_put=lambda v: self._on_move(key, v), store=False,
                limits=soft, enforce_limits=False, **num)
        self.table.alias(base, val)
        rbv = f("RBV", "float", pos, "user readback (where the axis is, also after a stop)",
                **num)
        dval = f("DVAL", "float", pos, "dial setpoint", on_put=lambda v: self._on_move(
            key, user(v)), store=False, **num)
        drbv = f("DRBV", "float", pos, "dial readback", **num)
        dmov = f("DMOV", "int", 1, "done moving: 0 during every move put, 1 when it has ended "
                 "(a refused or stopped move included)")
        movn = f("MOVN", "int", 0, "moving")
        m_stop = f("STOP", "int", 0, "1: stop now (the move put completes, readback true)",
                   on_put=lambda v: self._on_stop(key, v))
        spmg = f("SPMG", "enum", 3, "Stop / Pause / Move / Go: Stop and Pause stop the axis",
                 choices=("Stop", "Pause", "Move", "Go"),
                 on_put=lambda v: self._on_stop(key, 1 if v < 2 else 0))

        async def on_limit(which: str, v: float):
            d = dial_of(v)
            lo_t, hi_t = travel
            if not lo_t - 1e-9 <= d <= hi_t + 1e-9:
                raise PutRefused(f"{base}.{which} {v:g} {egu} outside the stage travel "
                                 f"{user(lo_t):g}..{user(hi_t):g} {egu}")
            ulo, uhi = user_limits()
            if which == "HLM" and not v > ulo:
                raise PutRefused(f"{base}.HLM {v:g} {egu} not above the low limit {ulo:g} {egu}")
            if which == "LLM" and not v < uhi:
                raise PutRefused(f"{base}.LLM {v:g} {egu} not below the high limit {uhi:g} {egu}")
            # user limit -> dial limit; with DIR reversed the user high limit is the dial low one
            if (which == "HLM") != bool(m["dir"]):
                await self._run(self._set_soft, key, m["dlo"], d)
            else:
                await self._run(self._set_soft, key, d, m["dhi"])
            self._message(f"{base} soft limits now {user_limits()[0]:g}..{user_limits()[1]:g} "
                          f"{egu}")

        async def on_dial_limit(which: str, v: float):
            await on_limit("HLM" if (which == "DHLM") != bool(m["dir"]) else "LLM", user(v))

        hlm = f("HLM", "float", soft[1], "user high soft limit (within the travel); moves beyond "
                "are refused", on_put=lambda v: on_limit("HLM", v), store=False, **num)
        llm = f("LLM", "float", soft[0], "user low soft limit", on_put=lambda v: on_limit(
            "LLM", v), store=False, **num)
        dhlm = f("DHLM", "float", soft[1], "dial high soft limit",
                 on_put=lambda v: on_dial_limit("DHLM", v), store=False, **num)
        dllm = f("DLLM", "float", soft[0], "dial low soft limit",
                 on_put=lambda v: on_dial_limit("DLLM", v), store=False, **num)
        hls = f("HLS", "int", 0, "at the high limit of travel")
        lls = f("LLS", "int", 0, "at the low limit of travel")
        lvio = f("LVIO", "int", 0, "1: the last move asked for a target outside the soft limits")
        tdir = f("TDIR", "int", 1, "direction of the last move (1 positive)")

        async def on_velo(v):
            if not v > 0:
                raise PutRefused(f"{base}.VELO {v:g} {egu}/s: must be > 0")
            if v > vmax.value:
                raise PutRefused(f"{base}.VELO {v:g} {egu}/s above VMAX {vmax.value:g} {egu}/s")
            return float(await self._run(inst.set_axis_velocity, key, v))
        vlim = inst.axis_velocity_limits(key)
        velo0 = inst.axis_velocity(key)
        vmax_v = vlim[1] if vlim else velo0 * 10.0
        velo = f("VELO", "float", velo0, "velocity", on_put=on_velo,
                 units=f"{egu}/s", precision=prec)
        vmax = f("VMAX", "float", vmax_v, "highest velocity the controller accepts",
                 units=f"{egu}/s", precision=prec)
        f("VBAS", "float", 0.0, "base velocity (the controller ramps from rest)",
                 units=f"{egu}/s", precision=prec)

        async def on_accl(v):
            if not v > 0:
                raise PutRefused(f"{base}.ACCL {v:g} s: must be > 0")
        f("ACCL", "float", 0.1, "acceleration time to VELO, used by clients to plan fly scans; "
          "the controller applies its own ramp", on_put=on_accl, units="s", precision=3)
        f("EGU", "string", egu, "engineering units")
        f("PREC", "int", prec, "display precision")
        f("DESC", "string", what[:39], "description")

        def recompute():
            """User-coordinate readbacks and limits after OFF/DIR changed."""
            d = float(drbv.value)
            rbv.set(user(d))
            val.set(user(d))
            ulo, uhi = user_limits()
            hlm.set(uhi)
            llm.set(ulo)
            val.set_limits(ulo, uhi)

        async def on_off(v):
            m["off"] = float(v)
            recompute()

        async def on_dir(v):
            m["dir"] = int(v)
            recompute()

        m["offpv"] = f("OFF", "float", 0.0, "user offset: user = DIR-signed dial + OFF",
                       on_put=on_off, **num)
        f("DIR", "enum", 0, "user direction", on_put=on_dir, choices=("Pos", "Neg"))
        f("FOFF", "enum", 0, "offset-freeze switch", on_put=self._stored,
          choices=("Variable", "Frozen"))

        async def on_set(v):
            m["set"] = int(v)
        f("SET", "enum", 0, "Use / Set: in Set, a VAL put redefines the user position (OFF) "
          "without moving", on_put=on_set, choices=("Use", "Set"))
        for name, doc in (("HOMF", ("home forward: the stage is referenced at connection; a "
                                    "put of 1 is refused")), ("HOMR", "home reverse (see HOMF)")):
            f(name, "int", 0, doc, on_put=functools.partial(self._refuse_home, base))
        res = 10.0 ** -max(prec, 1)
        f("MRES", "float", res, "motor resolution (closed-loop controller: the readback's "
          "resolution)", units=egu, precision=prec + 2)
        f("ERES", "float", res, "encoder resolution", units=egu, precision=prec + 2)
        f("RDBD", "float", res * 10, "retry deadband: on-target window of the controller",
          units=egu, precision=prec + 1)
        f("UREV", "float", 1.0, "units per revolution (linear/rotary closed-loop axis)",
          units=egu, precision=prec)
        f("SREV", "int", round(1.0 / res), "steps per revolution (1/MRES)")
        f("OUT", "string", inst.axis_controller_name(key)[:39], "controller axis")
        msta = f("MSTA", "int", 0, "status bits (bit 2 done, bit 10 moving, bit 9 problem)")
        for alias, field in (("_RBV", "RBV"), ("_DMOV", "DMOV"), ("_STOP", "STOP"),
                             ("_VELO", "VELO"), ("_HLM", "HLM"), ("_LLM", "LLM"),
                             ("_MOVN", "MOVN")):
            self.table.alias(base + alias, self.table.pvs[f"{self.prefix}{base}.{field}"])
        m.update(val=val, rbv=rbv, dval=dval, drbv=drbv, dmov=dmov, movn=movn, stop=m_stop,
                 spmg=spmg, hlm=hlm, llm=llm, dhlm=dhlm, dllm=dllm, hls=hls, lls=lls,
                 lvio=lvio, tdir=tdir, velo=velo, msta=msta, base=base)

    async def _stored(self, v):
        return None

    async def _refuse_home(self, base: str, v):
        if v:
            raise PutRefused(f"{base}: homing is not offered (the stage is referenced when the "
                             "instrument connects)")

    def _set_soft(self, key: str, dlo: float, dhi: float) -> None:
        m = self._axes[key]
        # the Instrument's one implementation (kept across restarts)
        dlo, dhi = (float(x) for x in self.inst.set_soft_limits(key, dlo, dhi))
        m["dlo"], m["dhi"] = dlo, dhi
        ulo, uhi = m["user_limits"]()
        m["hlm"].set(uhi)
        m["llm"].set(ulo)
        m["dhlm"].set(dhi)
        m["dllm"].set(dlo)
        m["val"].set_limits(ulo, uhi)

    def _axis_readback(self, key: str) -> float:
        m = self._axes[key]
        d = self.inst.axis_position(key)
        m["drbv"].set(d)
        # a refused or failed move's alarm stays on the readback until the next move
        m["rbv"].set(m["user"](d), *m.get("rbv_alarm", (NO_ALARM, 0)))
        lo_t, hi_t = m["travel"]
        m["hls"].set(int(d >= hi_t - 1e-6))
        m["lls"].set(int(d <= lo_t + 1e-6))
        return d

    async def _on_move(self, key: str, target: float):
        m = self._axes[key]
        base, egu = m["base"], m["egu"]
        if m["set"]:
            # Set mode: the user position becomes target, nothing moves (OFF absorbs it)
            d = await self._run(self._axis_readback, key)
            m["off"] = target - (-1 if m["dir"] else 1) * d
            m["offpv"].set(m["off"])
            m["val"].set(target)
            m["rbv"].set(target)
            ulo, uhi = m["user_limits"]()
            m["hlm"].set(uhi)
            m["llm"].set(ulo)
            m["val"].set_limits(ulo, uhi)
            self._message(f"{base}: position redefined as {target:g} {egu} (OFF "
                          f"{m['off']:g})")
            return
        dial = m["dial_of"](target)
        self._moving[key] += 1
        m["dmov"].set(0)
        m["movn"].set(1)
        m["msta"].set(1 << 10)
        m["stop_req"] = False
        m["rbv_alarm"] = (NO_ALARM, 0)
        m["lvio"].set(0)
        m["val"].set(target)
        refused: str | None = None
        failed: str | None = None
        try:
            ulo, uhi = m["user_limits"]()
            if not ulo <= target <= uhi:
                m["lvio"].set(1)
                refused = (f"{base}: target {target:g} {egu} outside the soft limits "
                           f"{ulo:g}..{uhi:g} {egu}")
            else:
                m["tdir"].set(int(dial >= float(m["drbv"].value)))
                fut = self._run(self._move_and_watch, key, dial)
                await fut
        except PutRefused as exc:
            refused = str(exc)
        except Exception as exc:  # noqa: BLE001 - a failed move fails the put, readback true
            failed = f"{base} move to {target:g} {egu} failed: {exc}"
        finally:
            with contextlib.suppress(Exception):
                d = await self._run(self._axis_readback, key)
            where = float(m["rbv"].value)
            if refused or failed:
                # the setpoint tells the truth too: where the axis is
                m["val"].set(where)
                m["rbv_alarm"] = (MINOR, "SOFT" if refused else "STATE")
                m["rbv"].set(where, *m["rbv_alarm"])
                m["msta"].set(1 << 9 | 1 << 1)
            else:
                m["msta"].set(1 << 1)
            self._moving[key] -= 1
            m["movn"].set(0)
            m["dmov"].set(1)
        if refused:
            raise PutRefused(refused)
        if failed:
            raise PutRefused(failed)
        if m["stop_req"] and abs(where - target) > 1e-3:
            m["val"].set(where)
            self._message(f"{base} stopped at {where:g} {egu} (target {target:g} {egu})")
        else:
            self._message(f"{base} on target at {where:g} {egu}")

    def _move_and_watch(self, key: str, dial: float) -> None:
        """The move (in a worker), the readback published while it runs; returns when the
        axis is on target or has been stopped."""
        m = self._axes[key]
        inst = self.inst
        mover = self.inst.move_focus_um if key == "focus" else self.inst.move_rotation_deg
        start = float(m["drbv"].value)
        mover(dial, wait=False)
        velocity = max(float(m["velo"].value), 1e-9)
        deadline = time.monotonic() + abs(dial - start) / velocity + 10.0
        while True:
            time.sleep(MOVE_POLL_S)
            self._axis_readback(key)
            if m["stop_req"]:
                return
            if inst.axis_on_target(key):
                return
            if time.monotonic() > deadline:
                where = inst.axis_position(key)
                inst.stop_axis(key)
                raise TimeoutError(f"not on target in time (at {where:g} {m['egu']}); "
                                   "axis stopped")

    async def _on_stop(self, key: str, v):
        if not v:
            return 0
        m = self._axes[key]
        m["stop_req"] = True
        await self._run(self.inst.stop_axis, key)
        return 0

    # --- camera (areaDetector ADBase) ----------------------------------------------------------
    def _build_camera(self) -> None:
        inst = self.inst
        rows, cols = inst.frame_shape
        self.shape = (rows, cols)
        self.image_elements = image_elements((rows, cols))
        g = "Camera (areaDetector ADBase, prefix CAM:)"
        c = "CAM:"
        exp = float(inst.exposure_s)

        def kw(**k):
            k.setdefault("group", g)
            return k

        self.acquire = self.pv(c + "Acquire", "enum", 0, "1: acquire ImageMode frames; the put "
                               "completes when the acquisition has ended; 0 stops it",
                               on_put=self._on_acquire, store=False,
                               choices=("Done", "Acquire"), group=g)
        self.acquire_rbv = self.ro(c + "Acquire_RBV", "enum", 0, "acquiring",
                                   choices=("Done", "Acquire"), group=g)

        def set_exposure(v):
            inst.set_exposure_s(v)
            return float(inst.exposure_s)
        self.acq_time, self.acq_time_rbv = self.pair(
            c + "AcquireTime", "float", exp, "exposure time per camera frame", set_exposure,
            **kw(units="s", precision=4, limits=(1e-6, 3600.0)))
        self.acq_period, self.acq_period_rbv = self.pair(
            c + "AcquirePeriod", "float", 0.0, "time between published frames (0: as fast as "
            "exposure and averaging allow)", None, **kw(units="s", precision=4,
                                                       limits=(0.0, 3600.0)))
        self.num_images, self.num_images_rbv = self.pair(
            c + "NumImages", "int", 1, "frames per acquisition in Multiple mode", None,
            **kw(limits=(1, 1_000_000)))
        self.num_images_counter = self.ro(c + "NumImagesCounter_RBV", "int", 0, "frames of the "
                                          "running acquisition so far", group=g)
        self.num_average, self.num_average_rbv = self.pair(
            c + "NumAverage", "int", 1, "camera frames averaged into each published frame", None,
            **kw(limits=(1, 10_000)))
        self.num_exposures, _ = self.pair(
            c + "NumExposures", "int", 1, "camera frames per published frame (areaDetector's "
            "name; the same setting as NumAverage)", self._set_average_from_exposures,
            **kw(limits=(1, 10_000)))
        self.num_exposures_counter = self.ro(c + "NumExposuresCounter_RBV", "int", 0,
                                             "camera frames of the frame in progress", group=g)
        self.image_mode, self.image_mode_rbv = self.pair(
            c + "ImageMode", "enum", 0, "Single / Multiple (NumImages) / Continuous", None,
            **kw(choices=IMAGE_MODES))
        self.fixed(c + "TriggerMode", "enum", 0, "frames are triggered by the camera's own "
                   "clock", **kw(choices=TRIGGER_MODES))
        self.counter, self.counter_rbv = self.pair(
            c + "ArrayCounter", "int", 0, "published frames (a put resets the count)", None,
            **kw())
        self.array_rate = self.ro(c + "ArrayRate_RBV", "float", 0.0, "published frames per "
                                  "second", units="Hz", precision=2, group=g)
        self.size_x = self.ro(c + "ArraySizeX_RBV", "int", cols, "columns of the published "
                              "image", group=g)
        self.size_y = self.ro(c + "ArraySizeY_RBV", "int", rows, "rows of the published image",
                              group=g)
        self.ro(c + "ArraySizeZ_RBV", "int", 0, "third dimension (0: a 2-D mono image)", group=g)
        self.array_size = self.ro(c + "ArraySize_RBV", "int", rows * cols * 4,
                                  "bytes of the published image", group=g)
        for i, v in enumerate((cols, rows, 0)):
            setattr(self, f"cam_size{i}", self.ro(f"{c}ArraySize{i}_RBV", "int", v,
                                                  f"size of dimension {i}", group=g))
        self.ro(c + "MaxSizeX_RBV", "int", cols, "sensor columns", group=g)
        self.ro(c + "MaxSizeY_RBV", "int", rows, "sensor rows", group=g)
        cam = inst.camera_info
        binning = cam["binning"]
        self.fixed(c + "MinX", "int", 0, "region of interest: the full sensor is read", **kw())
        self.fixed(c + "MinY", "int", 0, "region of interest: the full sensor is read", **kw())
        self.fixed(c + "SizeX", "int", cols * binning, "region of interest: the full sensor "
                   "is read", **kw())
        self.fixed(c + "SizeY", "int", rows * binning, "region of interest: the full sensor "
                   "is read", **kw())
        self.bin_x, self.bin_x_rbv = self.pair(
            c + "BinX", "int", 1, "binning of the published image (BinX and BinY are one "
            "setting: square bins)", functools.partial(self._set_binning, "x"),
            **kw(limits=(1, 16)))
        self.bin_y, self.bin_y_rbv = self.pair(
            c + "BinY", "int", 1, "binning of the published image (see BinX)",
            functools.partial(self._set_binning, "y"), **kw(limits=(1, 16)))
        self.fixed(c + "ReverseX", "enum", 0, "the image is not mirrored", **kw(choices=NO_YES))
        self.fixed(c + "ReverseY", "enum", 0, "the image is not mirrored", **kw(choices=NO_YES))
        self.fixed(c + "DataType", "enum", DATA_TYPES.index("Float32"), "published frames are "
                   "averaged and corrected: 32-bit float", **kw(choices=DATA_TYPES))
        self.fixed(c + "ColorMode", "enum", 0, "monochrome sensor", **kw(choices=COLOR_MODES))
        self.fixed(c + "Gain", "float", 1.0, "the sCMOS runs at its fixed conversion gain",
                   **kw(precision=2))
        self.fixed(c + "FrameType", "enum", 0, "frames are measured frames; references are "
                   "taken with TakeDarks / TakeFlats", **kw(choices=("Normal", "Background",
                                                                        "FlatField")))
        self.array_callbacks, _ = self.pair(
            c + "ArrayCallbacks", "enum", 1, "Enable: frames go to the image and file plugins",
            None, **kw(choices=DISABLE_ENABLE))
        self.det_state = self.ro(c + "DetectorState_RBV", "enum", 0, "detector state",
                                 choices=DETECTOR_STATES, group=g)
        self.cam_status = self.ro(c + "StatusMessage_RBV", "char", "Idle", "camera status text",
                                  length=MAX_MESSAGE, group=g)
        self.time_remaining = self.ro(c + "TimeRemaining_RBV", "float", 0.0, "estimated time "
                                      "left in the acquisition", units="s", precision=2, group=g)
        for pv_name, value, doc in (
                ("Manufacturer_RBV", cam["manufacturer"], "camera maker"),
                ("Model_RBV", cam["model"], "camera model"),
                ("SerialNumber_RBV", cam["serial_number"], "serial number"),
                ("FirmwareVersion_RBV", cam["firmware_version"], "firmware"),
                ("SDKVersion_RBV", "", "camera SDK version"),
                ("DriverVersion_RBV", _version(), "xinstrument version"),
                ("ADCoreVersion_RBV", AD_CORE_VERSION, ("areaDetector release whose PV "
                                                        "interface this IOC follows")),
                ("PortName_RBV", CAM_PORT, "the driver's port, NDArrayPort of the plugins")):
            self.ro(c + pv_name, "string", value[:39], doc, group=g)
        self.fixed(c + "Temperature", "float", cam["temperature_setpoint_c"],
                   "sensor temperature setpoint (fixed by the camera's cooling)",
                   **kw(units="C", precision=1))
        self.cam_temp = self.ro(c + "TemperatureActual", "float", math.nan,
                                "sensor temperature as the camera reports it (NaN, INVALID "
                                "alarm: it does not)", units="C", precision=1, group=g)
        self.cam_temp.set(math.nan, INVALID, "UDF")
        for nm, doc in (("StringToServer_RBV", "last command string (none: no string port)"),
                        ("StringFromServer_RBV", "last reply string (none)")):
            self.ro(c + nm, "char", "", doc, length=MAX_MESSAGE, group=g)
        self.fixed(c + "ShutterMode", "enum", 0, "the tube's X-ray output is the shutter "
                   "(TUBE:XrayOn)", **kw(choices=("None", "EPICS PV", "Detector output")))

        async def on_shutter(v):
            await self.table.client_put(self.xray, v)
            return int(v)
        self.shutter = self.pv(c + "ShutterControl", "enum", 0, "Open / Close the X-ray "
                               "output (the same as TUBE:XrayOn)", on_put=on_shutter,
                               choices=("Close", "Open"), group=g)
        self.shutter_rbv = self.ro(c + "ShutterControl_RBV", "enum", 0, "X-ray output on",
                                   choices=("Close", "Open"), group=g)
        self.shutter_status = self.ro(c + "ShutterStatus_RBV", "enum", 0, "X-ray output on",
                                      choices=("Closed", "Open"), group=g)
        for nm in ("ShutterOpenDelay", "ShutterCloseDelay"):
            self.fixed(c + nm, "float", 0.0, "the X-ray output settles before TUBE:XrayOn "
                       "completes", **kw(units="s", precision=3))
        for nm, doc in (("ShutterOpenEPICS", "EPICS shutter: not used (ShutterMode None)"),
                        ("ShutterCloseEPICS", "EPICS shutter: not used"),
                        ("ShutterControlEPICS", "EPICS shutter: not used"),
                        ("ShutterFanout", "EPICS shutter: not used")):
            self.fixed(c + nm, "int", 0, doc, rbv=False, **kw())
        self.ro(c + "ShutterStatusEPICS_RBV", "enum", 0, "EPICS shutter: not used",
                choices=("Closed", "Open"), group=g)
        self._plugin_common(c, g, cam_driver=True)
        self.dropped = self.ro(c + "DroppedFrames_RBV", "int", 0, "camera frames the driver "
                               "skipped (not read in time)", group=g)
        self.binning = self.pv(c + "ImageBinning", "int", 1, "older name of BinX/BinY",
                               on_put=self._on_image_binning, limits=(1, 16), group=g)
        self.image = self.pv(c + "Image", "ndarray", np.zeros((rows, cols), np.float32),
                             "latest frame, row-major ArraySizeY_RBV x ArraySizeX_RBV (CA: "
                             "float32 waveform; PVA: NTNDArray)", length=self.image_elements,
                             group=g)
        self.array_binning = self.ro(c + "ArrayBinning_RBV", "int", 1, "binning of the "
                                     "published image (requested, or more to fit)", group=g)
        self.image_scale = self.ro(c + "ImageScale_RBV", "float", 1.0, "published pixels per "
                                   "sensor pixel before binning (super-resolution > 1)",
                                   precision=2, group=g)
        self.corrected_rbv = self.ro(c + "Corrected_RBV", "enum", 0, "frames are "
                                     "dark/flat corrected", choices=("Raw", "Corrected"),
                                     group=g)
        self.take_darks = self.pv(c + "TakeDarks", "enum", 0, "1: take the dark reference "
                                  "(NumAverage frames, X-rays off); completes when done",
                                  on_put=functools.partial(self._on_reference, "dark"),
                                  choices=("Done", "Busy"), group=g)
        self.take_flats = self.pv(c + "TakeFlats", "enum", 0, "1: take the flat reference "
                                  "(sample out); completes when done",
                                  on_put=functools.partial(self._on_reference, "flat"),
                                  choices=("Done", "Busy"), group=g)
        self.references_rbv = self.ro(c + "References_RBV", "enum", 0, "references held",
                                      choices=("None", "Dark", "Flat", "Dark+Flat"), group=g)
        self.pva_image = self.pv("Pva1:Image", "ndarray", np.zeros((rows, cols), np.float32),
                                 "latest frame as NTNDArray (uniqueId = ArrayCounter), PV "
                                 "Access only (the areaDetector NDPluginPva name)",
                                 pva_only=True, group="PV Access image (NDPluginPva)")

    def _plugin_common(self, p: str, g: str, cam_driver: bool = False) -> None:
        """NDArray pool and queue PVs every areaDetector port has; this IOC hands frames
        from the acquisition thread to the plugins directly, with no pool or queue."""
        for nm, doc in (("PoolAllocBuffers", "NDArray pool buffers allocated (no pool: 0)"),
                        ("PoolFreeBuffers", "free pool buffers (no pool: 0)"),
                        ("PoolMaxBuffers", "pool buffer limit (no pool: 0)"),
                        ("PoolUsedBuffers", "pool buffers in use (no pool: 0)")):
            self.ro(p + nm, "int", 0, doc, group=g)
        for nm, doc in (("PoolMaxMem", "pool memory limit (no pool: 0)"),
                        ("PoolUsedMem", "pool memory in use (no pool: 0)")):
            self.ro(p + nm, "float", 0.0, doc, units="MB", group=g)
        self.pv(p + "NDAttributesFile", "char", "", "NDAttributes XML file (attributes are "
                "stored from the instrument's own state; a file name is kept, not read)",
                on_put=self._stored, length=MAX_MESSAGE, group=g)
        self.ro(p + "AsynIO", "int", 0, "asyn record of the port (none: 0)", group=g)
        if cam_driver:
            self.fixed(p + "WaitForPlugins", "enum", 1, "plugins run in the acquisition thread: "
                       "a frame is in every enabled plugin before the next starts",
                       rbv=False, choices=NO_YES, group=g)
            self.ro(p + "ReadStatus", "int", 0, "status read request (statuses are polled)",
                    group=g)
            self.ro(p + "UniqueId_RBV", "int", 0, "unique id of the last frame", group=g)

    def _set_average_from_exposures(self, v: int) -> int:
        self.num_average.set(v)
        self.num_average_rbv.set(v)
        return v

    def _set_binning(self, which: str, v: int) -> int:
        for rec in (self.bin_x, self.bin_x_rbv, self.bin_y, self.bin_y_rbv, self.binning):
            rec.set(v)
        return v

    async def _on_image_binning(self, v):
        self._set_binning("x", v)

    async def _on_reference(self, kind: str, v):
        if not v:
            return 0
        if self._acquiring:
            raise PutRefused(f"{kind} reference refused: an acquisition is running (Acquire 0 "
                             "first)")
        fn = self.inst.take_darks if kind == "dark" else self.inst.take_flats
        self.det_state.set(DETECTOR_STATES.index("Acquire"))
        try:
            await self._run(fn, int(self.num_average.value))
            self._message(f"{kind} reference taken ({self.num_average.value} frames)")
        finally:
            self.det_state.set(DETECTOR_STATES.index("Idle"))
            await self._run(self.poll_once)
        return 0

    # --- image1: (NDStdArrays) -----------------------------------------------------------------
    def _build_image_plugin(self) -> None:
        p, g = "image1:", "Image plugin (areaDetector NDStdArrays, prefix image1:)"
        rows, cols = self.shape
        self.img_data = self.pv(p + "ArrayData", "ndarray", np.zeros((rows, cols), np.float32),
                                "latest frame as a float32 waveform (row-major ArraySize1 x "
                                "ArraySize0)", length=self.image_elements, ca_only=True, group=g)
        self.img = self._plugin_pvs(p, g, "NDPluginStdArrays")

    def _plugin_pvs(self, p: str, g: str, plugin_type: str) -> dict[str, PV]:
        rows, cols = self.shape
        out: dict[str, PV] = {}
        out["enable"], _ = self.pair(p + "EnableCallbacks", "enum", 1, "Enable: the plugin "
                                     "receives frames", None, choices=DISABLE_ENABLE, group=g)
        self.fixed(p + "BlockingCallbacks", "enum", 1, "the plugin runs in the acquisition "
                   "thread", choices=NO_YES, group=g)
        out["counter"], out["counter_rbv"] = self.pair(p + "ArrayCounter", "int", 0, "frames "
                                                       "this plugin received", None, group=g)
        out["rate"] = self.ro(p + "ArrayRate_RBV", "float", 0.0, "frames per second",
                              units="Hz", precision=2, group=g)
        self.fixed(p + "NDArrayPort", "string", CAM_PORT, "source port: the camera",
                   group=g)
        self.fixed(p + "NDArrayAddress", "int", 0, "source address", group=g)
        self.fixed(p + "QueueSize", "int", 1, "frames go to the plugin synchronously",
                   group=g)
        for nm, doc, v in (("QueueFree", "free queue slots", 1), ("QueueUse", "queue in use", 0),
                           ("DroppedArrays_RBV", "frames the plugin dropped", 0),
                           ("UniqueId_RBV", "unique id of the last frame", 0),
                           ("NDimensions_RBV", "dimensions of the last frame", 2)):
            out[nm] = self.ro(p + nm, "int", v, doc, group=g)
        self.pv(p + "DroppedArrays", "int", 0, "frames dropped (a put resets)",
                on_put=self._stored, group=g)
        self.ro(p + "QueueFreeLow", "int", 0, "queue low-water alarm level", group=g)
        self.ro(p + "QueueUseHIGH", "int", 1, "queue HIGH alarm level", group=g)
        self.ro(p + "QueueUseHIHI", "int", 1, "queue HIHI alarm level", group=g)
        self.fixed(p + "MinCallbackTime", "float", 0.0, "every frame is passed on", units="s",
                   group=g)
        out["ts"] = self.ro(p + "TimeStamp_RBV", "float", 0.0, "time stamp of the last frame",
                            units="s", precision=3, group=g)
        for i, v in enumerate((cols, rows, 0)):
            out[f"size{i}"] = self.ro(f"{p}ArraySize{i}_RBV", "int", v, f"size of dimension "
                                      f"{i} of the last frame", group=g)
        out["dims"] = self.ro(p + "Dimensions_RBV", "array", [cols, rows, 0], "sizes of the "
                              "last frame's dimensions", length=3, group=g)
        for i in range(3):
            self.ro(f"{p}Dim{i}SA", "array", [cols, rows, 0][i:i + 1], f"size of dimension "
                    f"{i}", length=1, group=g)
        self.ro(p + "ArraySizeX_RBV", "int", cols, "columns of the last frame", group=g)
        self.ro(p + "ArraySizeY_RBV", "int", rows, "rows of the last frame", group=g)
        self.ro(p + "ArraySizeZ_RBV", "int", 0, "third dimension (0)", group=g)
        self.ro(p + "DataType_RBV", "enum", DATA_TYPES.index("Float32"), "data type of the "
                "last frame", choices=DATA_TYPES, group=g)
        self.ro(p + "ColorMode_RBV", "enum", 0, "colour mode of the last frame",
                choices=COLOR_MODES, group=g)
        self.ro(p + "BayerPattern_RBV", "enum", 0, "Bayer pattern (mono: RGGB unused)",
                choices=("RGGB", "GBRG", "GRBG", "BGGR"), group=g)
        self.ro(p + "PluginType_RBV", "string", plugin_type, "plugin type", group=g)
        self.ro(p + "PortName_RBV", "string", p.rstrip(":").upper(), "the plugin's port",
                group=g)
        self.ro(p + "ADCoreVersion_RBV", "string", AD_CORE_VERSION, "areaDetector release "
                "whose PV interface this plugin follows", group=g)
        self.ro(p + "DriverVersion_RBV", "string", _version(), "xinstrument version", group=g)
        self._plugin_common(p, g)
        return out

    def _plugin_frame(self, pl: dict[str, PV], data: np.ndarray, uid: int, ts: float) -> None:
        rows, cols = data.shape
        pl["counter"].set(pl["counter"].value + 1)
        pl["counter_rbv"].set(pl["counter"].value)
        pl["UniqueId_RBV"].set(uid)
        pl["ts"].set(ts)
        if (pl["size0"].value, pl["size1"].value) != (cols, rows):
            pl["size0"].set(cols)
            pl["size1"].set(rows)
            pl["dims"].set([cols, rows, 0])
        pl["rate"].set(self.array_rate.value)

    # --- HDF1: (NDFileHDF5) --------------------------------------------------------------------
    def _build_hdf(self) -> None:
        p, g = "HDF1:", "File plugin (areaDetector NDFileHDF5, prefix HDF1:)"
        self.hdf = self._plugin_pvs(p, g, "NDFileHDF5")

        async def on_path(v):
            path = Path(v).expanduser() if v else Path.cwd()
            depth = int(self.create_dir.value)
            if not path.is_dir() and depth < 0:
                missing = [q for q in [path, *path.parents] if not q.exists()]
                if len(missing) <= -depth:
                    await self._run(path.mkdir, parents=True, exist_ok=True)
            exists = path.is_dir()
            self.path_exists.set(int(exists))
            text = str(path).rstrip("/") + "/"
            self.file_path_rbv.set(text)
            if not exists:
                self._message(f"HDF1:FilePath {v!r}: the folder does not exist", error=True)
            return v
        cwd = str(Path.cwd()).rstrip("/") + "/"
        self.file_path = self.pv(p + "FilePath", "char", cwd, "folder of the file (a trailing "
                                 "/ is added in FilePath_RBV)", on_put=on_path,
                                 length=MAX_MESSAGE, group=g)
        self.file_path_rbv = self.ro(p + "FilePath_RBV", "char", cwd, "folder in force",
                                     length=MAX_MESSAGE, group=g)
        self.path_exists = self.ro(p + "FilePathExists_RBV", "enum", 1, "the folder exists",
                                   choices=NO_YES, group=g)
        self.create_dir, _ = self.pair(p + "CreateDirectory", "int", 0, "N < 0: a FilePath put "
                                       "creates up to -N missing folder levels", None,
                                       limits=(-32, 0), group=g)
        self.file_name, _ = self.pair(p + "FileName", "char", "xinstrument", "file name (the "
                                      "%s of FileTemplate)", self._check_name,
                                      length=MAX_MESSAGE, group=g)
        self.file_number, _ = self.pair(p + "FileNumber", "int", 0, "file number (the %d of "
                                        "FileTemplate); AutoIncrement adds 1 per file", None,
                                        limits=(0, 2**31 - 1), group=g)
        self.file_template, _ = self.pair(p + "FileTemplate", "char", "%s%s_%6.6d.h5",
                                          "printf template of path, name and number",
                                          self._check_template, length=MAX_MESSAGE, group=g)
        self.auto_increment, _ = self.pair(p + "AutoIncrement", "enum", 1, "Yes: FileNumber "
                                           "+1 after each file", None, choices=NO_YES, group=g)
        self.auto_save, _ = self.pair(p + "AutoSave", "enum", 0, "Single mode: Yes writes every "
                                      "frame to its own file", None, choices=NO_YES, group=g)
        self.write_mode, _ = self.pair(p + "FileWriteMode", "enum", 2, "Single: one frame per "
                                       "file; Capture and Stream: frames appended to one file "
                                       "while Capture is 1 (written as they arrive)", None,
                                       choices=FILE_WRITE_MODES, group=g)
        self.num_capture, _ = self.pair(p + "NumCapture", "int", 0, "frames to capture "
                                        "(0: until Capture 0)", None, limits=(0, 2**31 - 1),
                                        group=g)
        self.num_captured = self.ro(p + "NumCaptured_RBV", "int", 0, "frames in the open file",
                                    group=g)
        self.capture = self.pv(p + "Capture", "enum", 0, "1: open the file and capture; the "
                               "put completes when the capture has ended (NumCapture reached "
                               "or Capture 0)", on_put=self._on_capture, store=False,
                               choices=("Done", "Capture"), group=g)
        self.capture_rbv = self.ro(p + "Capture_RBV", "enum", 0, "capturing",
                                   choices=("Done", "Capture"), group=g)
        self.full_name = self.ro(p + "FullFileName_RBV", "char", "", "the file being (or last) "
                                 "written", length=MAX_MESSAGE, group=g)
        self.write_file, _ = self.pair(p + "WriteFile", "enum", 0, "Single mode: 1 writes the "
                                       "latest frame to a new file", self._write_single,
                                       choices=("Done", "Write"), group=g)
        self.read_file, _ = self.pair(p + "ReadFile", "enum", 0, "reading files back is not "
                                      "offered: a put of 1 is refused", self._refuse_read,
                                      choices=("Done", "Read"), group=g)
        self.write_status = self.ro(p + "WriteStatus", "enum", 0, "last write", choices=(
            "Write OK", "Write error"), group=g)
        self.write_message = self.ro(p + "WriteMessage", "char", "", "last write error",
                                     length=MAX_MESSAGE, group=g)
        self.fixed(p + "FileFormat", "enum", 0, "HDF5 (NeXus NXtomo + Data Exchange)",
                   choices=("HDF5",), group=g)
        self.fixed(p + "DeleteDriverFile", "enum", 0, "the driver writes no files",
                   choices=NO_YES, group=g)
        self.swmr, _ = self.pair(p + "SWMRMode", "enum", 1, "files are written in SWMR mode "
                                 "(readers may follow)", self._swmr_only, choices=("Off", "On"),
                                 group=g)
        self.ro(p + "SWMRSupported_RBV", "enum", 1, "SWMR supported", choices=NO_YES, group=g)
        self.ro(p + "SWMRActive_RBV", "enum", 0, "the open file is in SWMR mode",
                choices=("Off", "On"), group=g)
        self.lazy_open, _ = self.pair(p + "LazyOpen", "enum", 1, "the frame size is known "
                                      "before the first frame: the file opens at Capture",
                                      None, choices=NO_YES, group=g)
        self.fixed(p + "PositionMode", "enum", 0, "frames are appended in arrival order",
                   choices=("Off", "On"), group=g)
        comp_choices = ("None", "N-bit", "szip", "zlib", "Blosc", "BSLZ4", "LZ4", "JPEG")
        comp_i = {"gzip": 3, "szip": 2}.get(DEFAULT_COMPRESSION or "", 0)
        self.fixed(p + "Compression", "enum", comp_i, "the HDF5 writer's own lossless setting "
                   f"({DEFAULT_COMPRESSION or 'uncompressed'})", choices=comp_choices, group=g)
        self.fixed(p + "NumExtraDims", "int", 0, "frames form one stack", group=g)
        for nm in ("N", "X", "Y"):
            self.fixed(f"{p}ExtraDimSize{nm}", "int", 1, "no extra dimensions", group=g)
            self.ro(f"{p}ExtraDimName{nm}_RBV", "string", "", "no extra dimensions", group=g)
        for nm, v, doc in (("NumRowChunks", self.shape[0], "chunk: one frame"),
                           ("NumColChunks", self.shape[1], "chunk: one frame"),
                           ("NumFramesChunks", 1, "chunk: one frame"),
                           ("BoundaryAlign", 0, "no alignment"),
                           ("BoundaryThreshold", 1, "no alignment"),
                           ("NumDataBits", 0, "no N-bit packing"),
                           ("DataBitsOffset", 0, "no N-bit packing"),
                           ("SZipNumPixels", 16, "szip not used"),
                           ("ZLevel", 4, "deflate level of the writer")):
            self.fixed(p + nm, "int", v, doc, group=g)
        self.fixed(p + "ChunkSizeAuto", "enum", 1, "chunks are one frame", choices=NO_YES,
                   group=g)
        self.fixed(p + "NumFramesFlush", "int", 1, "every frame is flushed (SWMR)", group=g)
        self.pv(p + "FlushNow", "enum", 0, "1: flush the open file", on_put=self._flush,
                choices=("Done", "Flush"), group=g)
        self.fixed(p + "StoreAttr", "enum", 1, "instrument state stored with every frame",
                   choices=NO_YES, group=g)
        self.fixed(p + "StorePerform", "enum", 0, "no performance datasets", choices=NO_YES,
                   group=g)
        self.pair(p + "XMLFileName", "char", "", "layout XML (the NeXus layout is fixed; a name "
                  "is kept, not read)", None, length=MAX_MESSAGE, group=g)
        self.ro(p + "RunTime", "float", 0.0, "seconds the last write took", units="s",
                precision=4, group=g)
        self.ro(p + "IOSpeed", "float", 0.0, "write speed of the last frame", units="MB/s",
                precision=1, group=g)
        self.pv(p + "FileNumber_Sync", "int", 0, "ophyd's FileNumber synchronisation (a put "
                "sets FileNumber)", on_put=self._file_number_sync, group=g)
        self.pv(p + "FileNumber_write", "int", 0, "ophyd's FileNumber write (a put sets "
                "FileNumber)", on_put=self._file_number_sync, group=g)
        self.ro(p + "ArraySize0", "int", self.shape[1], "columns of the last frame (ophyd-async "
                "reads it without _RBV)", group=g)
        self.ro(p + "ArraySize1", "int", self.shape[0], "rows of the last frame", group=g)
        self._hdf_size_plain = (self.table.lookup(self.prefix + p + "ArraySize0"),
                                self.table.lookup(self.prefix + p + "ArraySize1"))

    async def _file_number_sync(self, v):
        self.file_number.set(v)
        self.table.lookup(self.file_number.name + "_RBV").set(v)

    def _check_name(self, v: str) -> str:
        if "/" in v or "\0" in v:
            raise PutRefused(f"HDF1:FileName {v!r}: a name without folders (FilePath holds "
                             "the folder)")
        return v

    def _check_template(self, v: str) -> str:
        try:
            _format_template(v, "/tmp/", "name", 1)
        except (TypeError, ValueError) as exc:
            raise PutRefused(f"HDF1:FileTemplate {v!r} does not format path, name and number "
                             f"(%s%s_%d...): {exc}") from None
        return v

    def _swmr_only(self, v: int) -> int:
        if not v:
            raise PutRefused("HDF1:SWMRMode Off refused: live files are always written in SWMR "
                             "mode so that readers may follow")
        return v

    def _refuse_read(self, v: int) -> int:
        if v:
            raise PutRefused("HDF1:ReadFile: reading files into the plugin is not offered")
        return 0

    async def _flush(self, v):
        with self._writer_lock:
            w = self._writer
        flush = getattr(getattr(w, "writer", w), "flush", None) if w is not None else None
        if callable(flush):
            await self._run(flush)
        return 0

    def _next_path(self) -> Path:
        return Path(_format_template(self.file_template.value, str(self.file_path_rbv.value),
                                     self.file_name.value, int(self.file_number.value)))

    def _bump_number(self) -> None:
        if self.auto_increment.value:
            n = int(self.file_number.value) + 1
            self.file_number.set(n)
            self.table.lookup(self.file_number.name + "_RBV").set(n)

    def _write_single(self, v: int) -> int:
        if not v:
            return 0
        frame = self._last_frame
        if frame is None:
            raise PutRefused("HDF1:WriteFile: no frame acquired yet")
        self._write_one(frame)
        return 0

    def _write_one(self, frame) -> None:
        path = self._next_path()
        if path.exists():
            raise PutRefused(f"HDF1: {path} exists: choose another FileName or FileNumber")
        t0 = time.perf_counter()
        w = self._sink(path, frame)
        try:
            w.write(frame)
        finally:
            w.close()
        self._wrote(path, time.perf_counter() - t0, frame.data.nbytes)
        self._bump_number()

    def _wrote(self, path: Path, dt_s: float, nbytes: int) -> None:
        self.full_name.set(str(path))
        self.table.lookup(self.prefix + "HDF1:RunTime").set(dt_s)
        self.table.lookup(self.prefix + "HDF1:IOSpeed").set(nbytes / 1e6 / max(dt_s, 1e-9))
        self.write_status.set(0)

    async def _on_capture(self, value):
        if not value:
            self.capture.set(0)
            await self._run(self._close_writer, "Capture 0")
            return
        if self.write_mode.value == 0:
            raise PutRefused("HDF1:Capture refused in FileWriteMode Single (use WriteFile or "
                             "AutoSave)")
        if not self.path_exists.value:
            raise PutRefused(f"HDF1:Capture refused: folder {self.file_path_rbv.value} does "
                             "not exist")
        if self._writer is not None:
            raise PutRefused("HDF1:Capture refused: a capture is already running")
        self._capture_done = asyncio.Event()
        path = await self._run(self._open_writer)
        self.capture.set(1)
        self.capture_rbv.set(1)
        self._message(f"capturing to {path}")
        await self._capture_done.wait()

    def _sink(self, path: Path, frame=None):
        """The product's one recording sink for ``path``: raw counts, with the corrected and
        restored frames and the references that corrected them beside them."""
        restore = bool(self.restore_enable.value) if frame is None else \
            frame.restored is not None
        scale = None
        if restore:
            r = self.inst.restorer()
            scale = int(getattr(r, "scale", 1) or 1)
        corrected = self._references() is not None if frame is None else bool(frame.corrected)
        self._writer_rshape = (self.shape[0] * scale, self.shape[1] * scale) if scale else None
        self._writer_restored = scale is not None
        return RecordingSink(path, self.shape, raw_dtype="float32", corrected=corrected,
                             restored_scale=scale,
                             metadata={"instrument": "xinstrument", "source": "epics",
                                       "title": f"EPICS capture {path.name}"})

    def _references(self):
        """The instrument's dark/flat references (None until both exist)."""
        refs = getattr(self.inst, "references", None)
        if inspect.ismethod(refs):
            refs = refs()
        if refs is None and not hasattr(self.inst, "references"):
            refs = self.inst.corrector
        return refs

    def _open_writer(self) -> Path:
        with self._writer_lock:
            path = self._next_path()
            if path.exists():
                raise PutRefused(f"HDF1:Capture refused: {path} exists (choose another "
                                 "FileName or FileNumber)")
            try:
                self._writer = self._sink(path)
            except Exception as exc:
                self.write_status.set(1, MINOR, "WRITE")
                self.write_message.set(str(exc)[:MAX_MESSAGE - 1])
                raise
            self._captured = 0
            self._not_stored = 0
            self.num_captured.set(0)
            self.full_name.set(str(path))
            self.table.lookup(self.prefix + "HDF1:SWMRActive_RBV").set(1)
            self._bump_number()         # as NDPluginFile: the number of the next file
            return path

    def _close_writer(self, why: str = "") -> None:
        with self._writer_lock:
            w, self._writer = self._writer, None
        if w is not None:
            w.close()
            self.table.lookup(self.prefix + "HDF1:SWMRActive_RBV").set(0)
            skipped = (f"; {self._not_stored} restoration(s) of another size not stored"
                       if self._not_stored else "")
            self._message(f"capture closed ({why}): {self._captured} frame(s) in "
                          f"{self.full_name.value}{skipped}", error=bool(self._not_stored))
        self.capture.set(0)
        self.capture_rbv.set(0)
        done = self._capture_done
        if done is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(done.set)

    def _save(self, frame, uid: int, ts: float) -> None:
        if not self.hdf["enable"].value:
            return
        self._plugin_frame(self.hdf, frame.data, uid, ts)
        for pv_, v in zip(self._hdf_size_plain, (frame.data.shape[1], frame.data.shape[0])):
            if pv_.value != v:
                pv_.set(v)
        if self.write_mode.value == 0:
            if self.auto_save.value:
                try:
                    self._write_one(frame)
                except Exception as exc:  # noqa: BLE001 - reported; acquisition goes on
                    self.write_status.set(1, MINOR, "WRITE")
                    self.write_message.set(str(exc)[:MAX_MESSAGE - 1])
            return
        close = False
        with self._writer_lock:
            w = self._writer
            if w is None:
                return
            t0 = time.perf_counter()
            if frame.restored is not None and (not self._writer_restored or tuple(
                    frame.restored.shape) != self._writer_rshape):
                # the method (or its output size) changed during the capture: the measured
                # frame is stored, the restoration can be repeated from it
                self._not_stored += 1
                frame = _without_restoration(frame)
            if frame.corrected and not w.writer.has_corrected:
                frame = _uncorrected(frame)
            try:
                w.write(frame)
            except Exception as exc:  # noqa: BLE001 - reported; the acquisition goes on
                self.write_status.set(1, MINOR, "WRITE")
                self.write_message.set(str(exc)[:MAX_MESSAGE - 1])
                self._message(f"HDF1: frame not written: {exc}", error=True)
                return
            self._captured += 1
            n_cap = int(self.num_capture.value)
            close = n_cap > 0 and self._captured >= n_cap
            dt = time.perf_counter() - t0
        self.num_captured.set(self._captured)
        self._wrote(Path(self.full_name.value), dt, frame.data.nbytes)
        if close:
            self._close_writer(f"{self._captured} frame(s) captured")

    # --- restoration ---------------------------------------------------------------------------
    def _build_restoration(self) -> None:
        inst = self.inst
        g = "Restoration"
        self.methods = registry.methods()      # the one table of methods, all of them
        current = (inst.restoration_method if inst.restoration_method in self.methods
                   else self.methods[0])
        self.restore_enable = self.pv("RESTORE:Enable", "enum", 0, "restore corrected frames "
                                      "in the acquisition", on_put=self._stored,
                                      choices=("Off", "On"), group=g)

        async def on_method(i):
            await self._run(inst.set_restoration, self.methods[i])

        async def on_profile(v):
            await self._run(inst.load_profile, v or None)

        async def on_guard(v):
            await self._run(inst.set_fidelity_policy, bool(v))
        self.restore_method = self.pv("RESTORE:Method", "enum", self.methods.index(current),
                                      "restoration method", on_put=on_method,
                                      choices=self.methods, group=g)
        self.restore_profile = self.pv("RESTORE:Profile", "char",
                                       inst.config.restoration.profile or "",
                                       "detector profile (name or folder)", on_put=on_profile,
                                       length=MAX_MESSAGE, group=g)
        self.restore_fps = self.ro("RESTORE:Fps_RBV", "float", 0.0, "restoration frames per "
                                   "second", units="frames/s", precision=2, group=g)
        self.restore_latency = self.ro("RESTORE:Latency_RBV", "float", 0.0, "restoration "
                                       "latency", units="s", precision=4, group=g)
        self.consistency = self.ro("RESTORE:Consistency_RBV", "float", math.nan, "reduced "
                                   "chi-square of the restored frame against the measurement "
                                   "(INVALID when no check ran)", precision=3,
                                   allow_nonfinite=True, group=g)
        self.flagged = self.ro("RESTORE:FlaggedFraction_RBV", "float", math.nan, "fraction of "
                               "pixels the fidelity guard flagged", precision=4,
                               limits=(0.0, 1.0), allow_nonfinite=True, group=g)
        self.fell_back = self.ro("RESTORE:FellBack_RBV", "enum", 0, "the guard replaced the "
                                 "restoration by its fallback", choices=("No", "Fell back"),
                                 group=g)
        self.undetermined = self.ro("RESTORE:Undetermined_RBV", "float", math.nan, "share of "
                                    "tiles whose restored detail the data cannot determine "
                                    "(INVALID when no check ran)", precision=4,
                                    limits=(0.0, 1.0), allow_nonfinite=True, group=g)
        self.uncertainty = self.ro("RESTORE:Uncertainty_RBV", "float", math.nan, "mean "
                                   "half-width of the 90 % band of the restoration error, in "
                                   "transmission units (INVALID when no check ran)",
                                   precision=4, allow_nonfinite=True, group=g)
        self.fid_action = self.ro("RESTORE:FidelityAction_RBV", "enum", 0, "what the guard "
                                  "did with the last restored frame", choices=(
                                      "accept", "flag", "fall back"), group=g)
        self.fid_verdict = self.ro("RESTORE:FidelityVerdict_RBV", "enum", 2, "consistency of "
                                   "the last restored frame with the measurement",
                                   choices=("consistent", "inconsistent", "no verdict"),
                                   group=g)
        self.fid_accepted = self.ro("RESTORE:FidelityMethodAccepted_RBV", "enum", 3,
                                    "whether the profile's calibrated fidelity policy accepts "
                                    "the method chosen for the last restored frame (before any "
                                    "fallback); Not calibrated: the profile has no acceptance "
                                    "calibration, nothing is accepted; No check: no fidelity "
                                    "report (guard off)", choices=ACCEPTED_STATES,
                                    group=g)
        self.fid_reason = self.ro("RESTORE:FidelityMethodReason_RBV", "char", "", "why the "
                                  "policy accepts the method or not (the calibration figure), "
                                  "or that it is not calibrated", length=MAX_MESSAGE, group=g)
        self.guard = self.pv("RESTORE:Guard", "enum", 0, "fidelity guard on restored frames",
                             on_put=on_guard, choices=("Off", "On"), group=g)

    # --- scans ---------------------------------------------------------------------------------
    def _build_scans(self) -> None:
        inst = self.inst
        lo, hi = inst.soft_limits("focus")
        g = "Scans"
        self.focus_start = self.pv("SCAN:FocusStart", "enum", 0, "1: focus scan around the "
                                   "current Z; completes when it has finished",
                                   on_put=self._on_focus_scan, choices=("Done", "Scanning"),
                                   group=g)
        self.focus_range = self.pv("SCAN:FocusRange", "float", min(40.0, hi - lo), "scan range "
                                   "around the current Z", on_put=self._positive, units="um",
                                   precision=2, limits=(0.0, hi - lo), group=g)
        self.focus_step = self.pv("SCAN:FocusStep", "float", 2.0, "scan step",
                                  on_put=self._positive, units="um", precision=2,
                                  limits=(0.0, hi - lo), group=g)
        self.focus_frames = self.pv("SCAN:FocusFramesPerStep", "int", 2, "frames averaged per "
                                    "step", on_put=self._stored, limits=(1, 1000), group=g)
        self.focus_best = self.ro("SCAN:FocusBest_RBV", "float", math.nan, "best focus of the "
                                  "last scan", units="um", precision=2, allow_nonfinite=True,
                                  group=g)
        self.scan_abort = self.pv("SCAN:Abort", "int", 0, "1: abort the acquisition, scan or "
                                  "move in progress", on_put=self._on_abort, group=g)
        self._build_tomo()

    async def _positive(self, v):
        if not v > 0:
            raise PutRefused(f"{v:g}: must be > 0")

    def _build_tomo(self) -> None:
        g = "Tomosynthesis"
        st = self._stored
        t = "SCAN:Tomo"
        self.tomo_start = self.pv(t + "Start", "enum", 0, "1: run the tomosynthesis plan; "
                                  "completes when it has ended", on_put=self._on_tomo,
                                  store=False, choices=("Done", "Scanning"), group=g)
        self.tomo_pause = self.pv(t + "Pause", "enum", 0, "Pause before the next frame / Run",
                                  on_put=self._on_tomo_pause, choices=("Run", "Pause"), group=g)
        # plan values are checked when a scan starts (PlanError), so a rejected plan says why
        self.tomo_arc = self.pv(t + "Arc", "float", 20.0, "arc", on_put=st, units="deg",
                                precision=3, group=g)
        self.tomo_centre = self.pv(t + "Centre", "float", 0.0, "arc centre", on_put=st,
                                   units="deg", precision=3, group=g)
        self.tomo_n = self.pv(t + "NumAngles", "int", 21, "projections", on_put=st, group=g)
        self.tomo_frames = self.pv(t + "FramesPerAngle", "int", 10, "frames averaged per "
                                   "projection", on_put=st, group=g)
        self.tomo_darks = self.pv(t + "Darks", "int", 1, "dark frames", on_put=st, group=g)
        self.tomo_flats = self.pv(t + "Flats", "int", 1, "flat frames", on_put=st, group=g)
        self.tomo_flats_every = self.pv(t + "FlatsEvery", "int", 0, "flats every N angles (0: "
                                        "once)", on_put=st, group=g)
        self.tomo_restore = self.pv(t + "Restore", "enum", 0, "restore projections",
                                    on_put=st, choices=("Off", "On"), group=g)
        self.tomo_file = self.pv(t + "FileName", "char", "tomo.h5", "file name in "
                                 "HDF1:FilePath", on_put=st, length=MAX_MESSAGE, group=g)
        # 0: from the bench model (simulated bench); a real bench needs all three
        self.tomo_sod = self.pv(t + "SourceObject", "float", 0.0, "source-object distance (0: "
                                "bench model)", on_put=st, units="mm", precision=3, group=g)
        self.tomo_sdd = self.pv(t + "SourceDetector", "float", 0.0, "source-detector distance "
                                "(0: bench model)", on_put=st, units="mm", precision=3, group=g)
        self.tomo_pixel = self.pv(t + "PixelSize", "float", 0.0, "detector pixel (0: bench "
                                  "model)", on_put=st, units="um", precision=4, group=g)
        self.tomo_progress = self.ro(t + "Progress_RBV", "float", 0.0, "progress", units="%",
                                     precision=1, limits=(0.0, 100.0), group=g)
        self.tomo_index = self.ro(t + "AngleIndex_RBV", "int", 0, "projection index", group=g)
        self.tomo_time_left = self.ro(t + "TimeLeft_RBV", "float", math.nan, "estimated time "
                                      "left", units="s", precision=1, allow_nonfinite=True,
                                      group=g)
        self.tomo_state = self.ro(t + "State_RBV", "enum", 0, "scan state", choices=TOMO_STATES,
                                  group=g)
        self.tomo_message = self.ro(t + "Message_RBV", "char", "", "scan message",
                                    length=MAX_MESSAGE, group=g)
        self.tomo_full_name = self.ro(t + "FullFileName_RBV", "char", "", "the scan's file",
                                      length=MAX_MESSAGE, group=g)

    # --- acquisition ---------------------------------------------------------------------------
    def _stop_requested(self) -> bool:
        return self._acq_stop.is_set()

    async def _on_acquire(self, value):
        if not value:
            self._acq_stop.set()
            return
        if self._acquiring:
            raise PutRefused("CAM:Acquire 1 refused: already acquiring")
        if self._tomo is not None:
            raise PutRefused("CAM:Acquire 1 refused: a tomosynthesis scan is running")
        self._acq_stop.clear()
        self._acquiring = True
        self.acquire.set(1)
        self.acquire_rbv.set(1)
        mode = IMAGE_MODES[self.image_mode.value]
        n_images = {"Single": 1, "Multiple": int(self.num_images.value),
                    "Continuous": None}[mode]
        n_avg = int(self.num_average.value)
        self.cam_status.set("Acquiring")
        try:
            await self._run(self._acquire_loop, n_images, n_avg)
            self.det_state.set(DETECTOR_STATES.index("Idle"))
            self.cam_status.set("Idle")
        except Exception as exc:  # noqa: BLE001 - any failure ends the acquisition, fails the put
            aborted = "abort" in str(exc).lower()
            self.det_state.set(DETECTOR_STATES.index("Aborted" if aborted else "Error"))
            self.cam_status.set(f"{'Aborted' if aborted else 'Error'}: {exc}"[:MAX_MESSAGE - 1])
            raise PutRefused(f"acquisition {'aborted' if aborted else 'failed'}: {exc}") \
                from None
        finally:
            self._acquiring = False
            self.time_remaining.set(0.0)
            self.acquire_rbv.set(0)
            self.acquire.set(0)

    def _acquire_loop(self, n_images: int | None, n_avg: int) -> None:
        """ImageMode Single / Multiple / Continuous as one Series plan through the engine
        (AcquirePeriod paces it); each averaged frame reaches the image PVs and the file
        plugin from a sink of that plan."""
        done = 0
        period = float(self.acq_period.value)
        self.num_images_counter.set(0)

        def on_frame(frame) -> None:
            nonlocal done
            done += 1
            self.num_images_counter.set(done)
            self.num_exposures_counter.set(int(frame.frames_averaged))
            if n_images is not None:
                per = max(period, float(self.acq_time.value) * n_avg)
                self.time_remaining.set((n_images - done) * per)
            if self.array_callbacks.value:
                self._publish(frame)
                self.det_state.set(DETECTOR_STATES.index("Acquire"))

        correct = self._references() is not None
        plan = Series(n_frames=n_images, n_average=n_avg, correct=correct,
                      restore=bool(self.restore_enable.value) and correct, period_s=period)
        # a finite series and a file plugin get every frame; a live view the latest ones
        sink = CallbackSink(on_frame, name="epics",
                            lossless=n_images is not None or bool(self.hdf["enable"].value))
        self.det_state.set(DETECTOR_STATES.index("Acquire"))
        handle = self.inst.start(plan, sinks=[sink])
        while not handle.done:
            if self._acq_stop.wait(0.05):
                self.inst.stop()           # Acquire 0: the frame in progress is kept
                break
        handle.wait()
        self._message(f"acquired {done} frame(s) of {n_avg} averaged")

    def _publish(self, frame) -> None:
        """Frame -> camera readbacks, image PVs, image1: and HDF1:."""
        src = frame.restored if frame.restored is not None else frame.data
        scale = src.shape[1] / frame.data.shape[1]
        data, factor = fit_image(np.asarray(src), int(self.bin_x.value), self.image_elements)
        now = time.time()
        self._rate_t = [t for t in self._rate_t if now - t < 2.0] + [now]
        rate = (len(self._rate_t) - 1) / max(self._rate_t[-1] - self._rate_t[0], 1e-9) \
            if len(self._rate_t) > 1 else 0.0
        with self._publish_lock:
            self._counter = int(self.counter.value) + 1
            uid = self._counter
            rows, cols = data.shape
            if (self.size_x.value, self.size_y.value) != (cols, rows):
                for rec, v in ((self.size_x, cols), (self.size_y, rows), (self.cam_size0, cols),
                               (self.cam_size1, rows), (self.array_size, rows * cols * 4)):
                    rec.set(v)
            self.array_binning.set(factor)
            self.image_scale.set(float(scale))
            self.corrected_rbv.set(int(frame.corrected))
            self.image.set(data, unique_id=uid)
            self.pva_image.set(data, unique_id=uid)
            self.table.lookup(self.prefix + "CAM:UniqueId_RBV").set(uid)
            self.array_rate.set(rate)
            if self.img["enable"].value:
                self.img_data.set(data, unique_id=uid)
                self._plugin_frame(self.img, data, uid, now)
            self._last_frame = frame
            self.det_state.set(DETECTOR_STATES.index("Saving"))
            self._save(frame, uid, now)
            # the counter last: a client that sees it finds the frame in every plugin
            self.counter.set(uid)
            self.counter_rbv.set(uid)
        fid = frame.fidelity
        summary = fid.summary() if hasattr(fid, "summary") else {}
        for rec, key in ((self.consistency, "reduced_chi2"), (self.flagged, "flagged_fraction")):
            v = summary.get(key, getattr(fid, key, None) if fid is not None else None)
            if v is None or not math.isfinite(float(v)):
                rec.set(math.nan, INVALID, "UDF")
            else:
                rec.set(float(v))
        self.fell_back.set(int(bool(summary.get("fell_back", getattr(fid, "fell_back", False)))))
        for rec, key in ((self.undetermined, "undetermined_fraction"),
                         (self.uncertainty, "uncertainty_mean")):
            v = summary.get(key)
            if v is None or not math.isfinite(float(v)):
                rec.set(math.nan, INVALID, "UDF")
            else:
                rec.set(float(v))
        action = summary.get("action_code")
        if action is None and isinstance(summary.get("action"), str):
            action = {"accept": 0, "flag": 1, "fall back": 2}.get(summary["action"])
        if action in (0, 1, 2):
            self.fid_action.set(int(action), MINOR if action else NO_ALARM,
                                "STATE" if action else 0)
        verdict = summary.get("verdict")
        self.fid_verdict.set({"consistent": 0, "inconsistent": 1}.get(verdict, 2),
                             MINOR if verdict == "inconsistent" else NO_ALARM,
                             "STATE" if verdict == "inconsistent" else 0)
        self._publish_acceptance(fid)
        if frame.restoration_method is not None:
            with contextlib.suppress(Exception):
                r = self.inst.restorer(frame.restoration_method)
                self.restore_fps.set(float(r.frames_per_second))
                self.restore_latency.set(float(r.latency_s))

    def _publish_acceptance(self, fid) -> None:
        """The policy's word on the method chosen for this frame: the report of the restoration
        a fallback replaced, else the frame's own (FidelityReport.method_accepted: True, False,
        None for a profile without the acceptance calibration)."""
        chosen = getattr(fid, "replaced", None) or fid
        code = getattr(chosen, "method_accepted_code", None)
        if code is None:                    # no report (guard off) or a bare consistency check
            self.fid_accepted.set(ACCEPTED_STATES.index("No check"), INVALID, "UDF")
            self.fid_reason.set("")
            return
        state = {1: "Yes", 0: "No", -1: "Not calibrated"}[int(code)]
        self.fid_accepted.set(ACCEPTED_STATES.index(state), NO_ALARM if code == 1 else MINOR,
                              0 if code == 1 else "STATE")
        self.fid_reason.set(str(getattr(chosen, "acceptance", "") or ""))

    # --- focus scan ----------------------------------------------------------------------------
    async def _on_focus_scan(self, value):
        if not value:
            return 0
        m = self._axes["focus"]
        inst = self.inst
        lo, hi = m["dlo"], m["dhi"]
        centre = float(m["drbv"].value)
        half = 0.5 * float(self.focus_range.value)
        start, stop = max(lo, centre - half), min(hi, centre + half)
        step = float(self.focus_step.value)
        self._moving["focus"] += 1
        m["dmov"].set(0)
        m["movn"].set(1)
        self.focus_start.set(1)
        try:
            curve = await self._run(inst.focus_scan, start, stop, step,
                                    int(self.focus_frames.value))
            self.focus_best.set(float(curve.best_position_um))
            self._message(f"focus scan {start:g}..{stop:g} um: best "
                          f"{curve.best_position_um:.2f} um")
        finally:
            with contextlib.suppress(Exception):
                await self._run(self._axis_readback, "focus")
                m["val"].set(float(m["rbv"].value))
            self._moving["focus"] -= 1
            m["movn"].set(0)
            m["dmov"].set(1)
        return 0

    # --- tomosynthesis -------------------------------------------------------------------------
    def _tomo_plan(self):
        """The plan the Tomo PVs describe, checked as far as possible without the devices."""
        geometry = {key: float(rec.value) for key, rec in (
            ("source_object_mm", self.tomo_sod), ("source_detector_mm", self.tomo_sdd),
            ("pixel_um", self.tomo_pixel)) if float(rec.value) > 0}
        centre = float(self.tomo_centre.value)
        name = str(self.tomo_file.value)
        out = Path(str(self.file_path_rbv.value)) / name
        plan = TomoPlan(arc_deg=float(self.tomo_arc.value), n_angles=int(self.tomo_n.value),
                        centre_deg=centre, frames_per_angle=int(self.tomo_frames.value),
                        darks=int(self.tomo_darks.value), flats=int(self.tomo_flats.value),
                        flats_every=int(self.tomo_flats_every.value),
                        restore=bool(self.tomo_restore.value), return_to_deg=centre,
                        geometry=geometry, out=out, title="tomosynthesis (EPICS)")
        if not self.inst.has_rotation_stage:
            raise PlanError("this bench has no rotation stage: tomosynthesis needs one")
        m = self._axes["rotation"]
        plan.validate((m["dlo"], m["dhi"]))
        if not name or Path(name).name != name:
            raise PlanError(f"SCAN:TomoFileName must be a file name without folders, got "
                            f"{name!r}")
        if not out.parent.is_dir():
            raise PlanError(f"output folder {out.parent} (HDF1:FilePath) does not exist")
        if out.exists():
            raise PlanError(f"{out} exists: choose another SCAN:TomoFileName")
        if self.inst.busy:
            raise PlanError(f"instrument busy with {self.inst.busy!r}")
        if self._acquiring:
            raise PlanError("an acquisition is running (CAM:Acquire 0 first)")
        return plan

    def _tomo_finished(self, state: str, text: str) -> None:
        error = state in ("Failed", "Rejected", "Aborted")
        self.tomo_message.set(text[:MAX_MESSAGE - 1],
                              severity=_TOMO_STATE_SEVERITY.get(state, NO_ALARM),
                              status="STATE" if error else 0)
        self.tomo_state.set(TOMO_STATES.index(state),
                            severity=_TOMO_STATE_SEVERITY.get(state, NO_ALARM),
                            status="STATE" if error else 0)
        self._message(text, error=state in ("Failed", "Rejected"))

    def _tomo_report(self, p) -> None:
        self.tomo_progress.set(100.0 * p.fraction)
        self.tomo_index.set(int(p.angle_index))
        self.tomo_time_left.set(float(p.time_left_s))
        phase = p.phase.capitalize()
        scan = self._tomo
        if scan is not None and scan.paused:
            phase = "Paused"     # a frame finishing after the pause request does not unpause
        if phase in ("Darks", "Flats", "Projections", "Paused"):
            self.tomo_state.set(TOMO_STATES.index(phase))

    def _on_frame_event(self, kind: str, payload) -> None:
        """Projections of a running tomosynthesis scan go to the image PVs."""
        if kind == "frame" and self._tomo is not None and isinstance(payload, Frame):
            with contextlib.suppress(Exception):
                self._publish(payload)

    async def _on_tomo(self, value):
        if not value:
            return
        try:
            plan = self._tomo_plan()
        except PlanError as exc:
            self._tomo_finished("Rejected", f"tomosynthesis rejected: {exc}")
            raise PutRefused(f"tomosynthesis rejected: {exc}") from None
        self.tomo_start.set(1)
        self.tomo_full_name.set(str(plan.out))
        self.tomo_progress.set(0.0)
        self.tomo_index.set(0)
        self.tomo_time_left.set(math.nan)
        self.tomo_state.set(TOMO_STATES.index("Darks" if plan.darks else "Flats"))
        self.tomo_message.set(f"tomosynthesis running -> {plan.out}")
        self._tomo_abort = False
        scan = TomoScan(self.inst, plan, progress=self._tomo_report)
        self._tomo = scan
        failure = None
        try:
            result = await self._run(lambda: scan.start().wait())
        except PlanError as exc:
            self._tomo_finished("Rejected", f"tomosynthesis rejected: {exc}")
            failure = f"tomosynthesis rejected: {exc}"
        except ScanAborted as exc:
            self._tomo_finished("Aborted", str(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the client; the IOC serves on
            if self._tomo_abort:
                self._tomo_finished("Aborted", f"tomosynthesis aborted: {exc}")
            else:
                self._tomo_finished("Failed", f"tomosynthesis failed: {exc}")
                failure = f"tomosynthesis failed: {exc}"
        else:
            self.tomo_progress.set(100.0)
            self._tomo_finished("Done", f"tomosynthesis done: {result.n_projections} "
                                f"projections in {result.elapsed_s:.1f} s -> {result.path}")
        finally:
            self._tomo = None
            self.tomo_pause.set(0)
            self.tomo_start.set(0)
            with contextlib.suppress(Exception):
                await self._run(self.poll_once)
        if failure:
            raise PutRefused(failure)

    async def _on_tomo_pause(self, value):
        scan = self._tomo
        if scan is None:
            if value:
                raise PutRefused("SCAN:TomoPause: no tomosynthesis scan running")
            return
        if value:
            scan.pause()
            self._message("tomosynthesis pauses before the next frame")

            def held() -> None:          # the state says Paused once the engine holds
                deadline = time.monotonic() + 60.0
                while self._tomo is scan and time.monotonic() < deadline:
                    if getattr(scan, "paused", False):
                        self.tomo_state.set(TOMO_STATES.index("Paused"))
                        return
                    time.sleep(0.05)
            await self._run(held)
        else:
            scan.resume()
            if self.tomo_state.value == TOMO_STATES.index("Paused"):
                self.tomo_state.set(TOMO_STATES.index("Projections"))
            self._message("tomosynthesis resumed")

    async def _on_abort(self, value):
        if not value:
            return 0
        self._acq_stop.set()
        scan = self._tomo
        if scan is not None:
            self._tomo_abort = True
            await self._run(scan.abort)
            self._message("abort requested: tomosynthesis stops at the next frame")
            return 0
        for m in self._axes.values():
            m["stop_req"] = True
        await self._run(self.inst.abort)
        await self._run(self.inst.stop_motion)
        self._message("abort requested")
        return 0

    # --- polling -------------------------------------------------------------------------------
    def poll_soon(self) -> None:
        self._pool.submit(self.poll_once)

    def poll_once(self) -> None:
        """Copy one Instrument.snapshot() into the readbacks; missing parts raise alarms."""
        snap = self.inst.snapshot()
        busy = snap.get("busy") or ""
        if busy != self.busy.value:
            self.busy.set(busy)
        tube = snap.get("tube")
        if tube is None:
            for rec in (self.kv_act, self.ua_act, self.power_act, self.xray_rbv,
                        self.state_rbv, self.interlock_rbv, self.warmup_rbv):
                rec.set_alarm(INVALID, "COMM")
            self.error_rbv.set(-1, INVALID, "COMM")
            self.error_text_rbv.set("tube not responding", INVALID, "COMM")
            self._follow_xray(False)
        else:
            on = tube["state"] == "XRAY_ON"
            self.kv_act.set(tube["voltage_kv"])
            self.ua_act.set(tube["current_ua"])
            self.power_act.set(tube["power_w"])
            self.xray_rbv.set(int(on))
            self.shutter_rbv.set(int(on))
            self.shutter_status.set(int(on))
            sev = _TUBE_STATE_SEVERITY.get(tube["state"], NO_ALARM)
            self.state_rbv.set(TUBE_STATES.index(tube["state"]), sev, "STATE" if sev else 0)
            closed = bool(tube["interlock_closed"])
            self.interlock_rbv.set(int(closed), NO_ALARM if closed else MAJOR,
                                   0 if closed else "STATE")
            if tube["focus_mode"] in self.focus_modes:
                i = self.focus_modes.index(tube["focus_mode"])
                self.focus_mode_rbv.set(i)
                if self.focus_mode.value != i:
                    self.focus_mode.set(i)
            wp = tube.get("warmup_progress")
            self.warmup_rbv.set(100.0 * wp if wp is not None else 0.0)
            # setpoints follow the tube (other clients, the controller's own limits)
            for sp, rbv, key in ((self.kv, self.kv_rbv, "voltage_setpoint_kv"),
                                 (self.ua, self.ua_rbv, "current_setpoint_ua")):
                v = float(tube[key])
                rbv.set(v)
                if abs(sp.value - v) > 1e-6 and sp.severity == NO_ALARM:
                    sp.set(v)
            self._follow_xray(on)
            code = tube["error_code"]
            fault = self.inst.tube_fault   # the driver switched X-rays off
            if code:
                self.error_rbv.set(int(code), MAJOR, "STATE")
                self.error_text_rbv.set(f"{code}: {tube['error_text']}"[:MAX_MESSAGE - 1],
                                        MAJOR, "STATE")
            elif fault is not None:
                self.error_rbv.set(-2, MAJOR, "STATE")
                self.error_text_rbv.set(f"driver fault: {fault}"[:MAX_MESSAGE - 1], MAJOR,
                                        "STATE")
            else:
                self.error_rbv.set(0)
                self.error_text_rbv.set("")
        for key in self._axes:
            if not self._moving[key]:
                with contextlib.suppress(Exception):
                    self._axis_readback(key)
                    m = self._axes[key]
                    on_t = self.inst.axis_on_target(key)
                    if m["dmov"].value != int(on_t):
                        m["dmov"].set(int(on_t))
                        m["movn"].set(int(not on_t))
        refs = snap.get("references", {})
        self.references_rbv.set(int(bool(refs.get("dark"))) + 2 * int(bool(refs.get("flat"))))
        cam = snap.get("camera")
        if cam is None:
            self.det_state.set(DETECTOR_STATES.index("Disconnected"), INVALID, "COMM")
        else:
            if self.dropped.value != int(cam["skipped"]):
                self.dropped.set(int(cam["skipped"]))
            exp = float(cam["exposure_s"])
            if self.acq_time_rbv.value != exp:
                self.acq_time_rbv.set(exp)

    def _follow_xray(self, on: bool) -> None:
        """XrayOn follows a trip: the output went off without a client asking."""
        if not on and self.xray.value == 1:
            self._xray_requested = False
            self.xray.set(0)
            self.shutter.set(0)
            fault = self.inst.tube_fault
            why = f": {fault}" if fault is not None else " (trip, interlock or fault)"
            self._message(f"X-rays went off without a request{why}; TUBE:XrayOn is 0",
                          error=True)
        elif on and self.xray.value == 0:
            self.xray.set(1)          # switched on by another client (GUI, script)
            self.shutter.set(1)

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
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """In the server's event loop (after the servers are built): poll thread, heartbeat."""
        self._loop = loop
        self.table.loop = loop
        self.poll_once()
        self._poll_thread = threading.Thread(target=self._poll_loop, daemon=True,
                                             name="xi-ioc-poll")
        self._poll_thread.start()
        self._unsubscribe = self.inst.subscribe(self._on_frame_event)
        loop.create_task(self._heartbeat_loop())

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
            self._close_writer("IOC stopping")
        if self._poll_thread is not None:
            self._poll_thread.join(timeout=5.0)
        self._pool.shutdown(wait=False, cancel_futures=True)


def _without_restoration(frame):
    return dataclasses.replace(frame, restored=None, restoration_method=None)


def _uncorrected(frame):
    """A corrected frame for a file laid out without corrected frames (references taken
    during the capture): its raw counts are stored."""
    return dataclasses.replace(frame, data=frame.raw, corrected=False)


def _format_template(template: str, path: str, name: str, number: int) -> str:
    """areaDetector's FileTemplate: a printf format taking path, name and number in that
    order; a template may use fewer of them (C's sprintf ignores the rest)."""
    n = len(re.findall(r"%(?!%)[-+ #0-9.]*[a-zA-Z]", template))
    if n > 3:
        raise ValueError("more than three conversions (path, name, number)")
    return template % (path, name, number)[:n] if n else template.replace("%%", "%")


def _version() -> str:
    try:
        return importlib.metadata.version("xinstrument")
    except Exception:  # noqa: BLE001 - not installed as a distribution (source tree)
        return os.environ.get("XINSTRUMENT_VERSION", "0")
