"""ophyd-async devices for an ``xinstrument ioc`` (the bench's EPICS IOC), for Bluesky plans.

Clients of the IOC's PVs only: the devices work against any xinstrument IOC on the network
(or on loopback), with stock ophyd-async classes wherever the IOC follows a facility
convention:

* :func:`focus_motor`, :func:`rotation_motor`: ``ophyd_async.epics.motor.Motor`` on the
  motor-record axes ``FOCUS:Z`` and ``ROT:Theta``;
* :class:`XrayTube`: the tube's setpoints, readbacks and measured values; ``set()`` (and
  ``bps.mv``) of a voltage completes when the tube has taken it, and a refused value raises;
* :class:`XCamera`: the camera as an areaDetector ``StandardDetector`` (``CAM:`` driver)
  writing HDF5 files through the IOC's ``HDF1:`` file plugin.

Example (``scripts/bluesky_focus_tomo.py`` runs a focus scan and a tomosynthesis)::

    from bluesky import RunEngine
    from bluesky.plans import scan
    from ophyd_async.core import init_devices
    from xinstrument.bluesky import XCamera, focus_motor

    RE = RunEngine()
    with init_devices():
        cam = XCamera("XI:", "/data/run1")
        z = focus_motor("XI:")
    RE(scan([cam], z, 50, 60, 11))
"""
from .devices import (
    XCamera,
    XrayTube,
    focus_motor,
    focus_scan,
    rotation_motor,
    tomosynthesis,
)

__all__ = [
    "XCamera",
    "XrayTube",
    "focus_motor",
    "focus_scan",
    "rotation_motor",
    "tomosynthesis",
]
