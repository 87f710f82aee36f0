"""Stock facility clients against the IOC on loopback: ophyd's AreaDetectorCam, ImagePlugin,
HDF5Plugin and EpicsMotor under a Bluesky RunEngine; the shipped ophyd-async devices; pyepics
put statuses for refused puts; p4p for NTNDArray; the IOC's sockets read from the OS."""
from __future__ import annotations

import ctypes
import importlib.util
import math
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

# checked without importing: ophyd and ophyd-async start Channel Access when imported, which
# must wait until the epics_ports fixture has put this run's ports in the environment
pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("ophyd", "ophyd_async", "bluesky", "aioca")),
    reason="ophyd, ophyd-async[ca,pva] and bluesky are in the dev extras: pip install -e .[dev]")

ECA_NORMAL = 1


@pytest.fixture(scope="module")
def ioc(ioc_factory, tube_emulator, epics):
    ioc = ioc_factory(tube_emulator[1])
    assert epics.caput(ioc.pv("TUBE:WarmUp"), 1, wait=True, timeout=30) == 1
    return ioc


@pytest.fixture(scope="module")
def ca(ioc, make_ca):
    return make_ca(ioc)


def _ophyd_detector(prefix: str, folder: Path):
    from ophyd import Component as Cpt
    from ophyd.areadetector.cam import AreaDetectorCam
    from ophyd.areadetector.detectors import DetectorBase
    from ophyd.areadetector.filestore_mixins import FileStoreHDF5IterativeWrite
    from ophyd.areadetector.plugins import HDF5Plugin, ImagePlugin
    from ophyd.areadetector.trigger_mixins import SingleTrigger

    class HDF5(HDF5Plugin, FileStoreHDF5IterativeWrite):
        pass

    class Detector(SingleTrigger, DetectorBase):
        cam = Cpt(AreaDetectorCam, "CAM:")
        image1 = Cpt(ImagePlugin, "image1:")
        hdf1 = Cpt(HDF5, "HDF1:", write_path_template=str(folder) + "/",
                   read_path_template=str(folder) + "/")

    det = Detector(prefix, name="xcam")
    det.hdf1.kind = "normal"
    return det


@pytest.fixture(scope="module")
def stock(ioc, epics, tmp_path_factory):
    """ophyd's stock classes on the IOC's prefixes, every signal connected."""
    from ophyd import EpicsMotor
    folder = tmp_path_factory.mktemp("ophyd-files")
    det = _ophyd_detector(ioc.prefix, folder)
    motor = EpicsMotor(ioc.pv("FOCUS:Z"), name="z")
    rot = EpicsMotor(ioc.pv("ROT:Theta"), name="theta")
    for dev in (det.cam, det.image1, det.hdf1, motor, rot):
        dev.wait_for_connection(all_signals=True, timeout=30)
    return det, motor, rot, folder


def test_stock_ophyd_classes_connect_every_signal(stock):
    det, motor, rot, _ = stock
    for dev in (det.cam, det.image1, det.hdf1, motor, rot):
        assert dev.connected, dev.name
    assert det.cam.manufacturer.get() and det.cam.model.get()
    assert det.cam.data_type.get(as_string=True) == "Float32"
    assert motor.egu == "um" and rot.egu == "deg"
    assert motor.limits == pytest.approx((0.0, 400.0))


def _run(plan):
    from bluesky import RunEngine
    RE = RunEngine({}, call_returns_result=True)
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(plan)
    return docs


def test_bluesky_scan_and_count_with_stock_ophyd_write_files(stock, ca):
    from bluesky.plans import count, scan
    det, motor, _, folder = stock
    docs = _run(scan([det], motor, 50, 60, 11))
    events = [d for n, d in docs if n == "event"]
    assert len(events) == 11
    zs = [e["data"]["z"] for e in events]
    assert zs == pytest.approx(np.linspace(50, 60, 11), abs=0.01)
    assert ca.get("FOCUS:Z.DMOV") == 1
    resources = [d for n, d in docs if n == "resource"]
    assert len(resources) == 1 and resources[0]["spec"] == "AD_HDF5"
    files = sorted(folder.glob("*.h5"))
    assert len(files) == 1
    with h5py.File(files[0], "r") as f:
        data = f["/entry/data/data"]
        assert data.shape == (11, 64, 64) and np.isfinite(data[...]).all()
    docs = _run(count([det], 3))
    assert len([d for n, d in docs if n == "event"]) == 3
    files = sorted(folder.glob("*.h5"), key=lambda p: p.stat().st_mtime)
    assert len(files) == 2
    with h5py.File(files[-1], "r") as f:
        assert f["/entry/data/data"].shape == (3, 64, 64)


def test_refused_moves_fail_the_status_within_a_second(stock, ca, epics):
    from ophyd.utils import LimitError
    _, motor, _, _ = stock
    motor.move(100.0, wait=True, timeout=30)
    # the limit changed by another client: the connected positioner sees it
    ca.put("FOCUS:Z.HLM", 120.0)
    t0 = time.monotonic()
    with pytest.raises((LimitError, Exception)):
        motor.move(150.0, wait=True, timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert ca.get("FOCUS:Z.RBV") == pytest.approx(100.0, abs=0.01)
    assert ca.get("FOCUS:Z.DMOV") == 1
    # a put beyond the limit straight to VAL (as a client that checks nothing): the move ends
    # at once with DMOV 0 -> 1, the readback in alarm and LVIO set
    seen: list[int] = []
    dmov = ca.pv("FOCUS:Z.DMOV", callback=lambda value=None, **kw: seen.append(int(value)))
    time.sleep(0.2)
    t0 = time.monotonic()
    assert epics.caput(ioc_name(ca, "FOCUS:Z.VAL"), 300.0, wait=True, timeout=5) == 1
    assert time.monotonic() - t0 < 1.0
    time.sleep(0.3)
    dmov.clear_callbacks()
    assert seen[-2:] == [0, 1], seen
    assert ca.get("FOCUS:Z.LVIO") == 1
    assert ca.severity("FOCUS:Z.RBV") >= 1
    assert "300" in ca.get("StatusMessage_RBV", as_string=True)
    ca.put("FOCUS:Z.HLM", 400.0)
    motor.move(101.0, wait=True, timeout=30)      # a good move clears the alarm
    assert ca.severity("FOCUS:Z.RBV") == 0 and ca.get("FOCUS:Z.LVIO") == 0


def ioc_name(ca, name: str) -> str:
    return ca.ioc.pv(name)


def test_a_stopped_move_says_where_it_stopped(stock, ca):
    _, motor, _, _ = stock
    motor.move(10.0, wait=True, timeout=30)
    ca.put("FOCUS:Z.VELO", 20.0)
    status = motor.move(300.0, wait=False)
    time.sleep(0.5)
    motor.stop()
    status.wait(10)
    where = ca.get("FOCUS:Z.RBV")
    assert 10.5 < where < 290.0
    assert ca.get("FOCUS:Z.DMOV") == 1
    assert ca.get("FOCUS:Z.VAL") == pytest.approx(where, abs=0.01)
    msg = ca.get("StatusMessage_RBV", as_string=True)
    assert f"stopped at {where:g}" in msg or "stopped at" in msg, msg
    ca.put("FOCUS:Z.VELO", 1000.0)


def test_set_mode_redefines_the_user_position_without_moving(stock, ca):
    _, motor, _, _ = stock
    motor.move(200.0, wait=True, timeout=30)
    motor.set_current_position(0.0)
    assert ca.get("FOCUS:Z.RBV") == pytest.approx(0.0, abs=0.01)
    assert ca.get("FOCUS:Z.DRBV") == pytest.approx(200.0, abs=0.01)
    assert ca.get("FOCUS:Z.OFF") == pytest.approx(-200.0, abs=0.01)
    assert ca.get("FOCUS:Z.HLM") == pytest.approx(200.0, abs=0.01)
    motor.move(5.0, wait=True, timeout=30)          # user 5 = dial 205
    assert ca.get("FOCUS:Z.DRBV") == pytest.approx(205.0, abs=0.01)
    ca.put("FOCUS:Z.OFF", 0.0)
    assert ca.get("FOCUS:Z.RBV") == pytest.approx(205.0, abs=0.01)


def _put_status(epics, pvname: str, value, as_string: bool = False) -> tuple[int, float]:
    """Put with a callback through libca (pyepics' own library) and return the status the
    server reported in the put-callback, and the seconds it took."""
    ca_mod, dbr = epics.ca, epics.dbr
    chid = ca_mod.create_channel(pvname, connect=True)
    assert ca_mod.connect_channel(chid, timeout=5)
    got: dict[str, int] = {}

    def on_put(args):
        got["status"] = int(args.status)
    cb = dbr.make_callback(on_put, dbr.event_handler_args)
    if as_string:
        ftype, data = dbr.STRING, (ctypes.c_char * 40)()
        data.value = str(value).encode()
    else:
        ftype, data = dbr.DOUBLE, (ctypes.c_double * 1)(float(value))
    t0 = time.monotonic()
    ret = ca_mod.libca.ca_array_put_callback(ftype, 1, chid, data, cb, None)
    assert ret == ECA_NORMAL
    while "status" not in got and time.monotonic() - t0 < 10:
        ca_mod.poll(evt=1e-3)
    assert "status" in got, f"no put-callback from {pvname}"
    return got["status"], time.monotonic() - t0


@pytest.mark.parametrize("name, value, as_string, words", [
    ("TUBE:Voltage", 500.0, False, ["500", "130"]),
    ("TUBE:Voltage", math.nan, False, ["nan"]),
    ("TUBE:Voltage", math.inf, False, ["inf"]),
    ("TUBE:Voltage", "fifty", True, ["fifty", "not a number"]),
    ("TUBE:Current", 300.0, False, ["300"]),
    ("CAM:AcquireTime", -1.0, False, ["-1"]),
    ("FOCUS:Z", 1000.0, False, ["1000", "400"]),
    ("FOCUS:Z.VELO", 0.0, False, ["must be > 0"]),
    ("HDF1:SWMRMode", 0, False, ["SWMR"]),
    ("CAM:DataType", 1, False, ["Float32"]),
])
def test_refused_puts_fail_as_puts_with_the_value_and_the_limit(
        ioc, ca, epics, tube_emulator, name, value, as_string, words):
    emu = tube_emulator[0]
    n_cmds = len([c for c in emu.commands_received if c.startswith(("HIV", "CUR", "XON"))])
    z = ca.get("FOCUS:Z.RBV")
    status, seconds = _put_status(epics, ioc.pv(name), value, as_string)
    assert status != ECA_NORMAL
    assert seconds < 1.0
    msg = ca.get("StatusMessage_RBV", as_string=True)
    assert all(w.lower() in msg.lower() for w in words), msg
    assert ca.severity(name) == 2                # MAJOR, WRITE alarm on the refused PV
    assert len([c for c in emu.commands_received
                if c.startswith(("HIV", "CUR", "XON"))]) == n_cmds
    assert ca.get("FOCUS:Z.RBV") == pytest.approx(z, abs=0.01)
    assert not emu.xray_on


def test_a_good_put_succeeds_and_clears_the_alarm(ioc, ca, epics):
    status, _ = _put_status(epics, ioc.pv("TUBE:Voltage"), 45.0)
    assert status == ECA_NORMAL
    assert ca.get("TUBE:Voltage_RBV") == pytest.approx(45.0)
    assert ca.severity("TUBE:Voltage") == 0


def test_wrong_state_puts_are_refused(ioc, ca, epics, tube_emulator, wait_for):
    emu = tube_emulator[0]
    emu.inject("interlock_open")
    assert wait_for(lambda: ca.get("TUBE:Interlock_RBV") == 0, 5)
    status, _ = _put_status(epics, ioc.pv("TUBE:XrayOn"), 1)
    assert status != ECA_NORMAL
    assert "interlock" in ca.get("StatusMessage_RBV", as_string=True)
    assert not emu.xray_on and ca.get("TUBE:XrayOn") == 0
    emu.close_interlock()
    assert wait_for(lambda: ca.get("TUBE:Interlock_RBV") == 1, 5)


def test_an_interlock_trip_puts_xray_on_back_to_0_and_reset_clears(ca, tube_emulator,
                                                                      wait_for):
    emu = tube_emulator[0]
    ca.put("TUBE:XrayOn", 1)
    assert emu.xray_on and ca.get("TUBE:XrayOn") == 1
    emu.inject("interlock_open")              # the door opens: the controller trips
    assert wait_for(lambda: not emu.xray_on, 5)
    assert wait_for(lambda: ca.get("TUBE:XrayOn") == 0, 5)    # the setpoint follows the trip
    assert ca.get("TUBE:XrayOn_RBV") == 0
    assert ca.severity("TUBE:Interlock_RBV") == 2
    emu.close_interlock()
    ca.put("TUBE:FaultReset", 1)
    assert wait_for(lambda: ca.get("TUBE:Error_RBV") == 0, 5)
    assert ca.severity("TUBE:Error_RBV") == 0


def test_pva_image_is_an_ntndarray_and_a_refused_pva_put_raises(ioc, ca, epics_ports):
    p4p_client = pytest.importorskip("p4p.client.thread")
    ca.put("CAM:ImageMode", 0)
    ca.put("CAM:Acquire", 1, timeout=60)
    ctx = p4p_client.Context("pva", conf={
        "EPICS_PVA_ADDR_LIST": "127.0.0.1", "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVA_BROADCAST_PORT": str(epics_ports["pva_bcast"]),
        "EPICS_PVA_SERVER_PORT": str(epics_ports["pva"])}, useenv=False)
    try:
        img = ctx.get(ioc.pv("Pva1:Image"), timeout=10)
        assert img.raw.getID() == "epics:nt/NTNDArray:1.0"
        assert img.shape == (64, 64) and np.isfinite(img).all()
        assert img.raw.uniqueId == ca.get("CAM:ArrayCounter_RBV")
        assert [d.size for d in img.raw.dimension] == [64, 64]
        t0 = time.monotonic()
        with pytest.raises(p4p_client.RemoteError, match="500"):
            ctx.put(ioc.pv("TUBE:Voltage"), 500.0, wait=True, timeout=5)
        assert time.monotonic() - t0 < 1.0
    finally:
        ctx.close()


def test_shipped_ophyd_async_devices_run_a_plan_and_write_through_the_plugin(ioc, ca, tmp_path):
    import bluesky.plan_stubs as bps
    from bluesky import RunEngine
    from bluesky.plans import count
    from ophyd_async.core import init_devices

    from xinstrument.bluesky import XCamera, XrayTube, focus_motor, focus_scan, rotation_motor

    RE = RunEngine({})
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    with init_devices(connect=True):
        cam = XCamera(ioc.prefix, tmp_path)          # a new file (UUID name) per run
        tube = XrayTube(ioc.prefix)
        z = focus_motor(ioc.prefix)
        theta = rotation_motor(ioc.prefix)
    RE(bps.mv(tube.voltage, 50.0, theta, 0.0))
    assert ca.get("TUBE:Voltage_RBV") == pytest.approx(50.0)
    RE(focus_scan(cam, z, 100.0, 104.0, 2.0))
    events = [d for n, d in docs if n == "event"]
    assert len(events) == 3
    res = [d for n, d in docs if n == "stream_resource"]
    assert res and res[0]["parameters"]["dataset"] == "/entry/data/data"
    path = Path(res[0]["uri"].removeprefix("file://localhost"))
    assert path.parent == tmp_path
    with h5py.File(path, "r") as f:
        assert f["/entry/data/data"].shape == (3, 64, 64)
    docs.clear()
    RE(count([cam], 2))
    assert len([d for n, d in docs if n == "event"]) == 2
    res = [d for n, d in docs if n == "stream_resource"]
    with h5py.File(Path(res[0]["uri"].removeprefix("file://localhost")), "r") as f:
        assert f["/entry/data/data"].shape == (2, 64, 64)
    # a refused setpoint raises in the plan, within a second, and nothing changes
    from bluesky.utils import FailedStatus
    t0 = time.monotonic()
    with pytest.raises((FailedStatus, Exception)):
        RE(bps.mv(tube.voltage, 500.0))
    assert time.monotonic() - t0 < 1.0
    assert ca.get("TUBE:Voltage_RBV") == pytest.approx(50.0)
    t0 = time.monotonic()
    with pytest.raises(FailedStatus):
        RE(bps.mv(z, 1000.0))
    assert time.monotonic() - t0 < 1.0
    assert ca.get("FOCUS:Z.DMOV") == 1


def _sockets(ioc):
    psutil = pytest.importorskip("psutil")
    conns = psutil.Process(ioc.proc.pid).net_connections(kind="inet")
    assert conns, "the IOC has no sockets"
    assert any(c.status == psutil.CONN_LISTEN for c in conns)
    return [(c.laddr.ip, c.laddr.port, "udp" if c.type == 2 else "tcp") for c in conns]


def test_every_socket_but_the_pva_search_listener_is_on_loopback(ioc, epics_ports):
    bound = _sockets(ioc)
    assert ("127.0.0.1", epics_ports["ca"], "tcp") in bound          # CA server
    assert ("127.0.0.1", epics_ports["ca"], "udp") in bound          # CA search
    assert ("127.0.0.1", epics_ports["pva"], "tcp") in bound         # PVA server
    others = [b for b in bound if b != ("0.0.0.0", epics_ports["pva_bcast"], "udp")]
    assert all(ip == "127.0.0.1" for ip, _, _ in others), others


@pytest.mark.xfail(strict=True, reason="pvxs (p4p's PV Access server) binds its UDP search "
                   "listener to 0.0.0.0 and filters datagrams by the interface they arrive on")
def test_no_socket_at_all_is_bound_beyond_loopback(ioc):
    bound = _sockets(ioc)
    assert all(ip == "127.0.0.1" for ip, _, _ in bound), bound


def _documented() -> tuple[list[str], list[str]]:
    """(names, PVA-only names) in docs/epics.md's generated PV reference."""
    import re

    from xinstrument.epics.docs import BEGIN, DOC, END
    text = DOC.read_text()
    table = text[text.index(BEGIN):text.index(END)]
    names, pva_only = [], []
    for line in table.splitlines():
        m = re.match(r"\| `([^`]+)` \|[^|]*\| ([^|]*) \|", line)
        if not m:
            continue
        names.append(m.group(1))
        if "PVA only" in m.group(2):
            pva_only.append(m.group(1))
        names += re.findall(r"`([^`]+)`", line.rsplit("(also ", 1)[1]) if "(also " in line else []
    return names, pva_only


def test_every_pv_is_documented_and_every_documented_pv_connects(ioc, epics):
    import re
    names, pva_only = _documented()
    served = int(re.search(r"ready, (\d+) PVs", ioc.output).group(1))
    assert len(set(names)) == len(names) == served
    pvs = [epics.PV(ioc.pv(n), auto_monitor=False) for n in names if n not in pva_only]
    missing = [p.pvname for p in pvs if not p.wait_for_connection(timeout=5)]
    assert missing == []


@pytest.mark.slow
def test_the_pv_reference_is_generated_from_the_ioc_table():
    from xinstrument.epics.docs import main
    assert main(["--check"]) == 0, "docs/epics.md is out of date: python -m xinstrument.epics.docs"


def test_an_ophyd_signal_with_rbv_completes_a_set_and_refuses_beyond_the_limits(ioc, ca):
    from ophyd import EpicsSignalWithRBV
    from ophyd.utils import LimitError
    # limits=True: ophyd checks the control limits the IOC serves (pyepics ignores the status of
    # a put-callback, so a stock EpicsSignal cannot see a refusal that happens in the IOC)
    kv = EpicsSignalWithRBV(ioc.pv("TUBE:Voltage"), name="kv", limits=True)
    kv.wait_for_connection(timeout=10)
    kv.set(47.0).wait(5)                      # Voltage_RBV is the setpoint's readback
    assert kv.get() == pytest.approx(47.0)
    assert kv.limits == pytest.approx((40.0, 130.0))
    t0 = time.monotonic()
    with pytest.raises(LimitError):
        kv.set(500.0).wait(5)
    assert time.monotonic() - t0 < 1.0
    assert ca.get("TUBE:Voltage_RBV") == pytest.approx(47.0)
