"""Devices and plans for the xinstrument IOC (see the package docstring)."""
from __future__ import annotations

import math
from collections.abc import Generator
from pathlib import Path
from typing import Any

from ophyd_async.core import (
    DetectorTriggerLogic,
    StandardReadable,
    StandardReadableFormat,
    StaticFilenameProvider,
    StaticPathProvider,
    UUIDFilenameProvider,
)
from ophyd_async.epics.adcore import (
    ADAcquireLogic,
    ADBaseIO,
    ADWriterFactory,
    AreaDetector,
    prepare_exposures,
    trigger_info_from_num_images,
)
from ophyd_async.epics.core import epics_signal_r, epics_signal_rw, epics_signal_rw_rbv
from ophyd_async.epics.motor import Motor

# PV Access by default: a put the IOC refuses raises in the plan. Over Channel Access,
# ophyd-async 0.21 loses that error: aioca's CANothing is falsy, and the retry wrapper around
# SignalW.set stores it in a concurrent.futures.Future whose result() only raises a truthy
# exception. The IOC reports the failure either way (put-callback status, WRITE alarm,
# StatusMessage_RBV); protocol="ca" remains for sites without PV Access.
DEFAULT_PROTOCOL = "pva"


def _pvs(prefix: str, protocol: str | None) -> str:
    if protocol not in ("pva", "ca", None):
        raise ValueError(f"protocol must be 'pva' or 'ca', got {protocol!r}")
    return f"{protocol}://{prefix}" if protocol else prefix


def focus_motor(prefix: str, name: str = "", protocol: str = DEFAULT_PROTOCOL) -> Motor:
    """The focus stage (``<prefix>FOCUS:Z``, a motor record), in um."""
    return Motor(f"{_pvs(prefix, protocol)}FOCUS:Z", name=name)


def rotation_motor(prefix: str, name: str = "", protocol: str = DEFAULT_PROTOCOL) -> Motor:
    """The sample rotation (``<prefix>ROT:Theta``, a motor record), in degrees."""
    return Motor(f"{_pvs(prefix, protocol)}ROT:Theta", name=name)


class XrayTube(StandardReadable):
    """The microfocus tube: ``voltage`` (kV) and ``current`` (uA) setpoints with their
    readbacks, ``xray_on``, and the measured output as read signals.

    ``bps.mv(tube.voltage, 60)`` completes when the tube has taken the setpoint; a value the
    IOC refuses (out of range, over the focus mode's power, NaN) raises in the plan."""

    def __init__(self, prefix: str, name: str = "", protocol: str = DEFAULT_PROTOCOL) -> None:
        p = f"{_pvs(prefix, protocol)}TUBE:"
        with self.add_children_as_readables(StandardReadableFormat.HINTED_SIGNAL):
            self.voltage_actual = epics_signal_r(float, p + "VoltageActual_RBV")
            self.current_actual = epics_signal_r(float, p + "CurrentActual_RBV")
        with self.add_children_as_readables():
            self.power_actual = epics_signal_r(float, p + "PowerActual_RBV")
            self.xray_on_rbv = epics_signal_r(bool, p + "XrayOn_RBV")
        with self.add_children_as_readables(StandardReadableFormat.CONFIG_SIGNAL):
            self.voltage = epics_signal_rw_rbv(float, p + "Voltage")
            self.current = epics_signal_rw_rbv(float, p + "Current")
        self.xray_on = epics_signal_rw(bool, p + "XrayOn")
        self.interlock_closed = epics_signal_r(bool, p + "Interlock_RBV")
        self.error_code = epics_signal_r(int, p + "Error_RBV")
        self.fault_reset = epics_signal_rw(bool, p + "FaultReset")
        self.warm_up = epics_signal_rw(bool, p + "WarmUp")
        super().__init__(name=name)


class _InternalTrigger(DetectorTriggerLogic):
    """The camera runs on its own clock: N frames per trigger in Multiple mode."""

    def __init__(self, driver: ADBaseIO) -> None:
        self.driver = driver

    async def prepare_internal(self, num: int, livetime: float, deadtime: float):
        await prepare_exposures(self.driver, num, livetime, deadtime)

    async def default_trigger_info(self):
        return await trigger_info_from_num_images(self.driver)


class XCamera(AreaDetector[ADBaseIO]):
    """The bench camera as a StandardDetector: ``CAM:`` (ADBase driver) with the ``HDF1:``
    file plugin writing to ``directory`` (a folder the IOC can write; on one machine the
    same path). Each stage writes one file, named ``filename`` or a fresh UUID."""

    def __init__(self, prefix: str, directory: str | Path, filename: str | None = None,
                 name: str = "", protocol: str = DEFAULT_PROTOCOL) -> None:
        names = StaticFilenameProvider(filename) if filename else UUIDFilenameProvider()
        path = StaticPathProvider(names, Path(directory))
        full = _pvs(prefix, protocol)
        driver = ADBaseIO(f"{full}CAM:")
        super().__init__(driver, full, ADWriterFactory.hdf(path, writer_suffix="HDF1:"),
                         acquire_logic=ADAcquireLogic(driver),
                         trigger_logic=_InternalTrigger(driver), name=name)


def focus_scan(camera, motor, start_um: float, stop_um: float, step_um: float = 1.0,
               md: dict[str, Any] | None = None) -> Generator:
    """A 1 um-class focus scan: ``camera`` at each focus position from start to stop; the
    sharpest frame is found from the file afterwards (``xinstrument.acquisition.focus``)."""
    from bluesky.plans import scan
    if not step_um > 0 or not math.isfinite(step_um):
        raise ValueError(f"step_um must be a positive number, got {step_um!r}")
    num = round(abs(stop_um - start_um) / step_um) + 1
    return (yield from scan([camera], motor, start_um, stop_um, num,
                            md={"plan_name": "focus_scan", **(md or {})}))


def tomosynthesis(camera, rotation, arc_deg: float, n_angles: int, centre_deg: float = 0.0,
                  md: dict[str, Any] | None = None) -> Generator:
    """Projections over ``arc_deg`` centred on ``centre_deg`` (limited-angle tomography),
    then back to the centre."""
    import bluesky.plan_stubs as bps
    from bluesky.plans import scan
    if n_angles < 2:
        raise ValueError(f"n_angles must be >= 2, got {n_angles}")
    if not arc_deg > 0:
        raise ValueError(f"arc_deg must be > 0, got {arc_deg}")
    half = 0.5 * arc_deg
    uid = yield from scan([camera], rotation, centre_deg - half, centre_deg + half, n_angles,
                          md={"plan_name": "tomosynthesis", "arc_deg": arc_deg,
                              "centre_deg": centre_deg, **(md or {})})
    yield from bps.mv(rotation, centre_deg)
    return uid
