"""The IOC in a subprocess on loopback, driven over Channel Access with pyepics.

Order matters within this module: the IOC is shared, and the last test pulls the tube's plug.
"""
from __future__ import annotations

import socket
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

TUBE = ["Voltage", "Voltage_RBV", "VoltageActual_RBV", "Current", "Current_RBV",
        "CurrentActual_RBV", "PowerActual_RBV", "FocusMode", "FocusMode_RBV", "XrayOn",
        "XrayOn_RBV", "WarmUp", "State_RBV", "Interlock_RBV", "Error_RBV", "ErrorText_RBV",
        "FaultReset"]
AXIS = ["", "_RBV", "_DMOV", "_STOP", "_VELO", "_HLM", "_LLM", ".VAL", ".RBV", ".DMOV",
        ".MOVN", ".STOP", ".HLM", ".LLM", ".VELO", ".EGU", ".DIR", ".OFF", ".SET"]
CAM = ["Acquire", "Acquire_RBV", "AcquireTime", "AcquireTime_RBV", "NumImages",
       "NumImages_RBV", "NumAverage", "NumAverage_RBV", "ImageMode", "ArrayCounter_RBV",
       "ArraySizeX_RBV", "ArraySizeY_RBV", "DetectorState_RBV", "Image", "DroppedFrames_RBV",
       "ArrayBinning_RBV", "ImageScale_RBV"]
HDF = ["FilePath", "FileName", "FileTemplate", "FullFileName_RBV", "FileWriteMode", "Capture",
       "Capture_RBV", "NumCapture", "NumCaptured_RBV"]
RESTORE = ["Enable", "Method", "Profile", "Fps_RBV", "Latency_RBV", "Consistency_RBV",
           "FlaggedFraction_RBV", "FellBack_RBV", "Guard", "FidelityMethodAccepted_RBV",
           "FidelityMethodReason_RBV"]
SCAN = ["FocusStart", "FocusRange", "FocusStep", "FocusBest_RBV", "Abort", "TomoStart",
        "TomoPause", "TomoArc", "TomoCentre", "TomoNumAngles", "TomoFramesPerAngle",
        "TomoDarks", "TomoFlats", "TomoFlatsEvery", "TomoRestore", "TomoFileName",
        "TomoSourceObject", "TomoSourceDetector", "TomoPixelSize", "TomoProgress_RBV",
        "TomoAngleIndex_RBV", "TomoTimeLeft_RBV", "TomoState_RBV", "TomoMessage_RBV",
        "TomoFullFileName_RBV"]
ALL_PVS = ([f"TUBE:{p}" for p in TUBE] + [f"FOCUS:Z{s}" for s in AXIS]
           + [f"ROT:Theta{s}" for s in AXIS] + [f"CAM:{p}" for p in CAM]
           + [f"HDF1:{p}" for p in HDF] + [f"RESTORE:{p}" for p in RESTORE]
           + [f"SCAN:{p}" for p in SCAN] + ["Heartbeat_RBV"])


@pytest.fixture(scope="module")
def ioc(ioc_factory, tube_emulator):
    return ioc_factory(tube_emulator[1])


@pytest.fixture(scope="module")
def ca(ioc, epics):
    """caget/caput bound to the IOC's prefix."""
    class CA:
        def get(self, name, **kw):
            v = epics.caget(ioc.pv(name), timeout=5, **kw)
            assert v is not None, f"{ioc.pv(name)} did not answer"
            return v

        def put(self, name, value, wait=True, timeout=30):
            assert epics.caput(ioc.pv(name), value, wait=wait, timeout=timeout) == 1, name

        def pv(self, name, **kw):
            pv = epics.PV(ioc.pv(name), **kw)
            assert pv.wait_for_connection(timeout=5), name
            return pv
    return CA()


def test_every_pv_connects_and_heartbeat_counts(ioc, epics, ca):
    pvs = [epics.PV(ioc.pv(n)) for n in ALL_PVS]
    missing = [p.pvname for p in pvs if not p.wait_for_connection(timeout=5)]
    assert missing == []
    h0 = ca.get("Heartbeat_RBV")
    time.sleep(2.2)
    assert ca.get("Heartbeat_RBV") >= h0 + 2


def _listening(port: int, proto: str) -> list[str]:
    """Local addresses (hex ip) of sockets on ``port`` in /proc/net/<proto>."""
    out = []
    for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
        local = line.split()[1]
        ip, p = local.split(":")
        if int(p, 16) == port:
            out.append(ip)
    return out


def test_ca_and_pva_servers_bind_loopback_only(ioc, epics_ports):
    loopback = "0100007F"
    for port in (epics_ports["ca"], epics_ports["pva"]):
        addrs = _listening(port, "tcp")
        assert addrs, f"no server on tcp port {port}"
        assert set(addrs) == {loopback}, addrs
    assert set(_listening(epics_ports["ca"], "udp")) == {loopback}
    # a PV Access server answers on its port: its first message starts with the PVA magic
    with socket.create_connection(("127.0.0.1", epics_ports["pva"]), timeout=5) as s:
        s.settimeout(5)
        header = s.recv(8)
    assert header[0] == 0xCA


def test_record_metadata(ca):
    v = ca.pv("TUBE:Voltage", form="ctrl")
    c = v.get_ctrlvars()
    assert c["units"] == "kV" and c["precision"] == 1
    assert c["lower_ctrl_limit"] == pytest.approx(40.0) and \
        c["upper_ctrl_limit"] == pytest.approx(130.0)
    z = ca.pv("FOCUS:Z", form="ctrl").get_ctrlvars()
    assert z["units"] == "um"
    assert (z["lower_ctrl_limit"], z["upper_ctrl_limit"]) == pytest.approx((0.0, 400.0), abs=1e-6)
    assert ca.get("FOCUS:Z_HLM") == pytest.approx(400.0)
    assert ca.get("ROT:Theta_LLM") == pytest.approx(-45.0)
    assert ca.pv("ROT:Theta", form="ctrl").get_ctrlvars()["units"] == "deg"
    assert ca.get("CAM:ArraySizeX_RBV") == 64 and ca.get("CAM:ArraySizeY_RBV") == 64


def test_voltage_put_changes_the_emulated_tube(ca, tube_emulator, wait_for):
    emu = tube_emulator[0]
    ca.put("TUBE:WarmUp", 1, timeout=30)      # completes when the warm-up has finished
    assert ca.get("TUBE:State_RBV", as_string=True) == "STANDBY" or \
        wait_for(lambda: ca.get("TUBE:State_RBV", as_string=True) == "STANDBY", 3)
    ca.put("TUBE:Voltage", 70)
    assert "HIV 70" in emu.commands_received
    ca.put("TUBE:XrayOn", 1)                  # completes when the output has reached the setpoint
    assert emu.xray_on
    assert emu.output_voltage_kv == pytest.approx(70.0, abs=0.5)
    assert ca.get("TUBE:Voltage_RBV") == pytest.approx(70.0)      # the setpoint in force
    assert wait_for(lambda: abs(ca.get("TUBE:VoltageActual_RBV") - 70.0) < 0.5, 5)
    assert wait_for(lambda: ca.get("TUBE:XrayOn_RBV") == 1, 5)
    assert ca.get("TUBE:PowerActual_RBV") == pytest.approx(
        70.0 * emu.output_current_ua * 1e-3, rel=0.05)


def test_out_of_limit_puts_are_rejected_and_readbacks_stay_true(ca, tube_emulator, wait_for):
    emu = tube_emulator[0]
    n_cmds = len([c for c in emu.commands_received if c.startswith(("HIV", "CUR"))])
    ca.put("TUBE:Voltage", 500)               # beyond the model's 130 kV
    assert ca.get("TUBE:Voltage") == pytest.approx(70.0)
    msg = ca.get("StatusMessage_RBV", as_string=True)
    assert "refused" in msg and "500" in msg and "130" in msg, msg
    ca.put("TUBE:Current", 300)               # inside 10..300 uA, but 21 W > 4 W in focus 0
    assert ca.get("TUBE:Current") == pytest.approx(10.0)
    assert "300" in ca.get("StatusMessage_RBV", as_string=True)
    assert len([c for c in emu.commands_received if c.startswith(("HIV", "CUR"))]) == n_cmds
    assert emu.output_voltage_kv == pytest.approx(70.0, abs=0.5)
    time.sleep(0.6)                           # a poll later the readbacks still tell the truth
    assert ca.get("TUBE:VoltageActual_RBV") == pytest.approx(70.0, abs=0.5)
    z = ca.get("FOCUS:Z_RBV")
    ca.put("FOCUS:Z", 1000)                   # beyond the 400 um travel
    assert ca.get("FOCUS:Z") == pytest.approx(z)
    time.sleep(0.5)
    assert ca.get("FOCUS:Z_RBV") == pytest.approx(z)
    ca.put("FOCUS:Z", -1)
    assert ca.get("FOCUS:Z_RBV") == pytest.approx(z)


@pytest.mark.parametrize("target", [250.0, 250.5])   # a long and a very short move
def test_z_put_completes_on_target_with_dmov_1_0_1(ca, target):
    events: list[int] = []
    dmov = ca.pv("FOCUS:Z_DMOV", callback=lambda value=None, **kw: events.append(int(value)))
    time.sleep(0.3)
    assert events[-1] == 1
    start = len(events) - 1
    ca.put("FOCUS:Z", target)                 # put-callback: returns when the move has finished
    assert ca.get("FOCUS:Z_RBV") == pytest.approx(target, abs=0.01)
    time.sleep(0.3)
    dmov.clear_callbacks()
    assert events[start:start + 3] == [1, 0, 1]
    assert ca.get("FOCUS:Z_DMOV") == 1


def test_rotation_put_completes_on_target(ca):
    t0 = time.monotonic()
    ca.put("ROT:Theta", 10.0)                 # 10 deg at 20 deg/s: about half a second
    assert time.monotonic() - t0 > 0.3
    assert ca.get("ROT:Theta_RBV") == pytest.approx(10.0, abs=0.01)


def test_acquire_produces_frames_and_array_counter_counts(ca):
    ca.put("CAM:AcquireTime", 0.01)
    ca.put("CAM:ImageMode", 1)                # Multiple
    ca.put("CAM:NumImages", 3)
    ca.put("CAM:NumAverage", 2)
    n0 = ca.get("CAM:ArrayCounter_RBV")
    ca.put("CAM:Acquire", 1, timeout=60)      # completes when the acquisition has ended
    assert ca.get("CAM:ArrayCounter_RBV") == n0 + 3
    assert ca.get("CAM:Acquire_RBV") == 0
    assert ca.get("CAM:DetectorState_RBV", as_string=True) == "Idle"
    img = ca.get("CAM:Image")
    assert img.size == 64 * 64 and np.isfinite(img).all() and img.std() > 0
    ca.put("CAM:ImageMode", 0)                # Single
    ca.put("CAM:Acquire", 1, timeout=60)
    assert ca.get("CAM:ArrayCounter_RBV") == n0 + 4
    ca.put("CAM:ImageBinning", 2)
    ca.put("CAM:Acquire", 1, timeout=60)
    assert ca.get("CAM:ArraySizeX_RBV") == 32 and ca.get("CAM:Image").size == 32 * 32
    ca.put("CAM:ImageBinning", 1)
    # no restoration ran: the fidelity readbacks say so with an invalid alarm
    fid = ca.pv("RESTORE:Consistency_RBV", form="time")
    assert fid.get_with_metadata(form="time")["severity"] == 3


def test_continuous_acquisition_stops_on_acquire_0(ca, wait_for):
    ca.put("CAM:ImageMode", 2)                # Continuous
    n0 = ca.get("CAM:ArrayCounter_RBV")
    acquire = ca.pv("CAM:Acquire")
    acquire.put(1, use_complete=True)
    time.sleep(1.0)
    assert not acquire.put_complete
    assert ca.get("CAM:Acquire_RBV") == 1
    ca.put("CAM:Acquire", 0, wait=False)
    assert wait_for(lambda: acquire.put_complete, 20), "Acquire=1 did not complete after 0"
    n1 = ca.get("CAM:ArrayCounter_RBV")
    assert n1 > n0 + 1
    assert wait_for(lambda: ca.get("CAM:Acquire_RBV") == 0, 5)
    time.sleep(0.5)
    assert ca.get("CAM:ArrayCounter_RBV") == n1   # stopped, not still running
    ca.put("CAM:ImageMode", 0)


def _start_capture(ca, folder, name: str, n_capture: int, wait_for):
    """HDF1 in Stream mode to ``folder/name.h5``; the returned Capture PV's put completes when
    the capture has ended (NumCapture frames, 0: until Capture 0)."""
    ca.put("HDF1:FilePath", str(folder))
    ca.put("HDF1:FileName", name)
    ca.put("HDF1:FileTemplate", "%s%s.h5")
    ca.put("HDF1:FileWriteMode", "Stream")
    ca.put("HDF1:NumCapture", n_capture)
    capture = ca.pv("HDF1:Capture")
    capture.put(1, use_complete=True)
    assert wait_for(lambda: ca.get("HDF1:Capture_RBV") == 1, 60)
    return capture


def test_hdf_capture_writes_acquired_frames(ca, tmp_path, wait_for):
    capture = _start_capture(ca, tmp_path, "capture", 0, wait_for)
    assert ca.get("HDF1:FullFileName_RBV", as_string=True) == str(tmp_path / "capture.h5")
    ca.put("CAM:ImageMode", 1)
    ca.put("CAM:NumImages", 2)
    ca.put("CAM:Acquire", 1, timeout=60)
    assert ca.get("HDF1:NumCaptured_RBV") == 2
    assert not capture.put_complete
    ca.put("HDF1:Capture", 0)
    assert wait_for(lambda: capture.put_complete, 10)
    with h5py.File(tmp_path / "capture.h5", "r") as f:
        shapes = [d.shape for d in _datasets(f) if d.ndim == 3 and d.shape[1:] == (64, 64)]
    assert (2, 64, 64) in shapes


def _datasets(group):
    for item in group.values():
        if isinstance(item, h5py.Dataset):
            yield item
        elif isinstance(item, h5py.Group):
            yield from _datasets(item)


def test_focus_scan_reports_best_focus(ca):
    ca.put("FOCUS:Z", 200.0)
    ca.put("SCAN:FocusRange", 8.0)
    ca.put("SCAN:FocusStep", 2.0)
    ca.put("SCAN:FocusStart", 1, timeout=120)  # busy until the scan has finished
    best = ca.get("SCAN:FocusBest_RBV")
    assert 196.0 <= best <= 204.0
    assert ca.get("SCAN:FocusStart") == 0
    assert ca.get("FOCUS:Z_DMOV") == 1


def test_references_and_restoration(ca):
    # enough quanta per pixel for the fidelity guard's noise model (>= 10 in the open beam)
    ca.put("CAM:AcquireTime", 0.5)
    ca.put("CAM:NumAverage", 2)
    ca.put("TUBE:XrayOn", 0)
    ca.put("CAM:TakeDarks", 1, timeout=60)    # busy until the dark reference exists
    ca.put("TUBE:XrayOn", 1)
    ca.put("CAM:TakeFlats", 1, timeout=60)
    assert ca.get("CAM:References_RBV", as_string=True) == "Dark+Flat"
    ca.put("RESTORE:Method", "wiener")
    ca.put("RESTORE:Enable", 1)
    ca.put("CAM:ImageMode", 0)
    ca.put("CAM:Acquire", 1, timeout=120)
    assert ca.get("CAM:Corrected_RBV") == 1
    assert ca.get("RESTORE:Latency_RBV") > 0
    assert np.isfinite(ca.get("RESTORE:Fps_RBV"))
    img = ca.get("CAM:Image")
    assert np.isfinite(img).all() and abs(np.median(img)) < 10   # transmission, not ADU
    for name in ("RESTORE:Consistency_RBV", "RESTORE:FlaggedFraction_RBV"):
        md = ca.pv(name).get_with_metadata(form="time")
        assert md["severity"] == 3 and np.isnan(md["value"])   # the guard is off: no check
    ca.put("RESTORE:Guard", 1)                # the fidelity guard checks every restored frame
    assert ca.get("RESTORE:Guard") == 1, ca.get("StatusMessage_RBV", as_string=True)
    ca.put("CAM:Acquire", 1, timeout=120)
    chi2 = ca.pv("RESTORE:Consistency_RBV").get_with_metadata(form="time")
    flagged = ca.pv("RESTORE:FlaggedFraction_RBV").get_with_metadata(form="time")
    # fed from AveragedFrame.fidelity.summary() of the frame just published
    assert chi2["severity"] == 0 and np.isfinite(chi2["value"]) and chi2["value"] >= 0
    assert flagged["severity"] == 0 and 0 <= flagged["value"] <= 1
    # the policy's word on the method chosen: Wiener needs a tolerance beyond the forward
    # model's with sim-yag200-5x, so it is not accepted and every frame falls back to the
    # classical method the policy accepts
    accepted = ca.pv("RESTORE:FidelityMethodAccepted_RBV").get_with_metadata(form="time")
    assert accepted["severity"] == 1
    assert ca.get("RESTORE:FidelityMethodAccepted_RBV", as_string=True) == "No"
    reason = ca.get("RESTORE:FidelityMethodReason_RBV", as_string=True)
    assert reason.startswith("wiener is not accepted with profile sim-yag200-5x"), reason
    assert "beyond the forward model" in reason
    assert ca.get("RESTORE:FellBack_RBV") == 1
    # a profile without the acceptance calibration claims nothing: "Not calibrated", flagged
    ca.put("RESTORE:Profile", "sim-yag20-5x-sr")
    try:
        ca.put("CAM:Acquire", 1, timeout=120)
        assert ca.get("RESTORE:FidelityMethodAccepted_RBV", as_string=True) == \
            "Not calibrated", ca.get("StatusMessage_RBV", as_string=True)
        assert ca.get("RESTORE:FidelityMethodReason_RBV", as_string=True) == (
            "profile sim-yag20-5x-sr has no fidelity calibration; run "
            "scripts/calibrate_fidelity.py")
        assert ca.get("RESTORE:FidelityAction_RBV", as_string=True) == "flag"
        assert ca.get("RESTORE:FellBack_RBV") == 0
    finally:
        ca.put("RESTORE:Profile", "sim-yag200-5x")
    ca.put("RESTORE:Guard", 0)
    ca.put("CAM:Acquire", 1, timeout=120)
    assert ca.pv("RESTORE:Consistency_RBV").get_with_metadata(form="time")["severity"] == 3
    assert ca.get("RESTORE:FidelityMethodAccepted_RBV", as_string=True) == "No check"
    assert ca.pv("RESTORE:FidelityMethodAccepted_RBV").get_with_metadata(
        form="time")["severity"] == 3
    with pytest.raises(ValueError):               # not one of the enum's choices
        ca.put("RESTORE:Method", "no-such-method")
    assert ca.get("RESTORE:Method", as_string=True) == "wiener"
    ca.put("RESTORE:Enable", 0)
    ca.put("CAM:AcquireTime", 0.01)


def test_a_corrected_restored_capture_passes_the_reader_checks(ca, tmp_path, wait_for):
    from scanfile_checks import check_scan_file
    assert ca.get("CAM:References_RBV", as_string=True) == "Dark+Flat"
    ca.put("CAM:AcquireTime", 0.5)
    ca.put("CAM:NumAverage", 2)
    ca.put("RESTORE:Method", "wiener")
    ca.put("RESTORE:Enable", 1)
    try:
        capture = _start_capture(ca, tmp_path, "corrected", 2, wait_for)
        ca.put("CAM:ImageMode", 1)
        ca.put("CAM:NumImages", 2)
        ca.put("CAM:Acquire", 1, timeout=120)
        assert wait_for(lambda: capture.put_complete, 30)
    finally:
        ca.put("HDF1:Capture", 0)
        ca.put("RESTORE:Enable", 0)
        ca.put("CAM:AcquireTime", 0.01)
        ca.put("CAM:ImageMode", 0)
    info = check_scan_file(tmp_path / "corrected.h5",
                           nxdata=("/entry/data", "/entry/corrected", "/entry/restored"))
    assert info["keys"].count(0) == 2 and 1 in info["keys"] and 2 in info["keys"]


def test_losing_the_tube_turns_xrays_off_and_raises_alarms(ca, tube_emulator, wait_for):
    emu = tube_emulator[0]
    ca.put("TUBE:XrayOn", 1)
    assert emu.xray_on
    emu.inject("disconnect")                  # the link is cut
    assert wait_for(lambda: not emu.xray_on, 5)
    assert wait_for(lambda: ca.get("TUBE:XrayOn_RBV") == 0, 10)
    err = ca.pv("TUBE:Error_RBV")
    assert wait_for(lambda: err.get_with_metadata(form="time")["severity"] >= 2, 10)
