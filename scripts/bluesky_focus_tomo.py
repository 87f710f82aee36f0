"""A Bluesky session against an ``xinstrument ioc``: focus scan, then tomosynthesis.

    xinstrument ioc --prefix XI: &                  # the simulated bench, on loopback
    python scripts/bluesky_focus_tomo.py --prefix XI: --out /tmp/run1

Uses the shipped ophyd-async devices (xinstrument.bluesky): the tube is warmed up and switched
on, a focus scan steps FOCUS:Z around its position and writes every frame through the IOC's
HDF1: file plugin, the sharpest position is computed from the file with the product's own
focus metric, the stage goes there, and a tomosynthesis over ROT:Theta follows. Every file is
the instrument's HDF5 layout (frames at /entry/data/data). Keep CA/PVA on loopback
(``source shared/epics-loopback.env``) unless the IOC serves a network on purpose.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefix", default="XI:", help="the IOC's PV prefix (default XI:)")
    p.add_argument("--out", type=Path, required=True, help="folder for the files (must be "
                   "writable by the IOC; the same path on one machine)")
    p.add_argument("--range-um", type=float, default=20.0, help="focus scan range (default 20)")
    p.add_argument("--step-um", type=float, default=2.0, help="focus scan step (default 2)")
    p.add_argument("--arc-deg", type=float, default=30.0, help="tomosynthesis arc (default 30)")
    p.add_argument("--angles", type=int, default=11, help="projections (default 11)")
    p.add_argument("--voltage-kv", type=float, default=60.0)
    a = p.parse_args(argv)
    if not a.out.is_dir():
        print(f"error: --out {a.out} is not a folder", file=sys.stderr)
        return 2
    if not (a.range_um > 0 and a.step_um > 0 and a.arc_deg > 0 and a.angles >= 2):
        print("error: --range-um, --step-um, --arc-deg must be > 0 and --angles >= 2",
              file=sys.stderr)
        return 2
    from xinstrument.epics.network import configure
    configure()                       # loopback, before any EPICS client library loads

    import bluesky.plan_stubs as bps
    import h5py
    import numpy as np
    from bluesky import RunEngine
    from ophyd_async.core import init_devices

    from xinstrument.acquisition.focus import sharpness
    from xinstrument.bluesky import (
        XCamera,
        XrayTube,
        focus_motor,
        focus_scan,
        rotation_motor,
        tomosynthesis,
    )

    RE = RunEngine({}, call_returns_result=True)
    resources: list[dict] = []
    RE.subscribe(lambda name, doc: resources.append(doc) if name == "stream_resource" else None)
    with init_devices():
        cam = XCamera(a.prefix, a.out)
        tube = XrayTube(a.prefix)
        z = focus_motor(a.prefix)
        theta = rotation_motor(a.prefix)

    if not RE(bps.rd(tube.xray_on_rbv)).plan_result:
        RE(bps.mv(tube.warm_up, True))                 # completes when warm
    RE(bps.mv(tube.voltage, a.voltage_kv))
    RE(bps.mv(tube.xray_on, True))                     # completes when the output is stable
    centre = float(RE(bps.rd(z.user_readback)).plan_result)
    lo = float(RE(bps.rd(z.low_limit_travel)).plan_result)
    hi = float(RE(bps.rd(z.high_limit_travel)).plan_result)
    start = max(lo, centre - 0.5 * a.range_um)          # the scan stays inside HLM/LLM
    stop = min(hi, start + a.range_um)
    RE(focus_scan(cam, z, start, stop, a.step_um))
    path = Path(resources[-1]["uri"].removeprefix("file://localhost"))
    with h5py.File(path, "r") as f:
        frames = f["/entry/data/data"][...]
    positions = np.linspace(start, stop, len(frames))
    scores = [sharpness(frame, "hf_energy") for frame in frames]
    best = float(positions[int(np.argmax(scores))])
    print(f"focus scan -> {path}: sharpest at {best:.1f} um")
    RE(bps.mv(z, best))
    RE(tomosynthesis(cam, theta, a.arc_deg, a.angles))
    print(f"tomosynthesis -> {resources[-1]['uri']}")
    RE(bps.mv(tube.xray_on, False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
