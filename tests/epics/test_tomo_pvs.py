"""Tomosynthesis over Channel Access: TomoStart runs a small scan on the simulated bench."""
from __future__ import annotations

import time

import pytest

from xinstrument.storage import ScanReader


@pytest.fixture(scope="module")
def ca(ioc_factory, tube_emulator, make_ca, tmp_path_factory):
    ca = make_ca(ioc_factory(tube_emulator[1]))
    ca.put("TUBE:WarmUp", 1, timeout=30)
    ca.put("TUBE:Voltage", 60)
    ca.put("TUBE:Current", 50)
    ca.put("HDF1:FilePath", str(tmp_path_factory.mktemp("tomo")))
    return ca


def small_plan(ca, name, n_angles=5, arc_deg=4.0, frames=2):
    ca.put("SCAN:TomoFileName", name)
    ca.put("SCAN:TomoArc", arc_deg)
    ca.put("SCAN:TomoCentre", 0.0)
    ca.put("SCAN:TomoNumAngles", n_angles)
    ca.put("SCAN:TomoFramesPerAngle", frames)
    ca.put("SCAN:TomoDarks", 1)
    ca.put("SCAN:TomoFlats", 1)
    return ca


def output(ca, name):
    from pathlib import Path
    return Path(ca.get("HDF1:FilePath", as_string=True)) / name


def test_tomo_start_completes_when_the_scan_has_ended(ca):
    small_plan(ca, "done.h5")
    progress: list[tuple[float, float]] = []
    mon = ca.pv("SCAN:TomoProgress_RBV",
                callback=lambda value=None, **kw: progress.append((time.monotonic(), value)))
    n0 = ca.get("CAM:ArrayCounter_RBV")
    time.sleep(0.2)
    ca.put("SCAN:TomoStart", 1, timeout=120)   # put-callback: returns when the scan has ended
    t_done = time.monotonic()
    time.sleep(0.3)
    mon.clear_callbacks()
    assert ca.get("SCAN:TomoState_RBV", as_string=True) == "Done"
    assert ca.get("SCAN:TomoStart") == 0
    running = [v for _, v in progress if 0 < v < 100]
    assert len(running) >= 3, progress            # it moved through the scan
    assert progress[-1][1] == pytest.approx(100.0)
    t_100 = next(t for t, v in progress if v >= 100)
    assert t_100 <= t_done                        # 100 % came before the put completed
    assert ca.get("SCAN:TomoAngleIndex_RBV") == 5
    msg = ca.get("SCAN:TomoMessage_RBV", as_string=True)
    assert "5 projections" in msg and ca.severity("SCAN:TomoMessage_RBV") == 0
    path = output(ca, "done.h5")
    assert ca.get("SCAN:TomoFullFileName_RBV", as_string=True) == str(path)
    from scanfile_checks import check_scan_file
    check_scan_file(path)                 # the file as every client writes it
    with ScanReader(path) as r:
        assert r.complete
        assert list(r.frame_metadata["image_key"]) == [2, 1, 0, 0, 0, 0, 0]
        assert r.theta_deg == pytest.approx([-2, -1, 0, 1, 2], abs=0.01)
    # the projections were published as images while the scan ran
    assert ca.get("CAM:ArrayCounter_RBV") == n0 + 5
    assert ca.get("ROT:Theta_RBV") == pytest.approx(0.0, abs=0.01)   # back at the arc centre


def test_abort_ends_the_scan_with_an_incomplete_file(ca, wait_for):
    small_plan(ca, "aborted.h5", n_angles=40, arc_deg=20.0, frames=3)
    start = ca.pv("SCAN:TomoStart")
    start.put(1, use_complete=True)
    try:
        _pause_resume_abort(ca, start, wait_for)
    finally:          # a failure here must not leave a scan running into the next tests
        if not start.put_complete:
            ca.put("SCAN:TomoPause", 0)
            ca.put("SCAN:Abort", 1)
            wait_for(lambda: start.put_complete, 60)


def _pause_resume_abort(ca, start, wait_for):
    # (the state tells a running scan's index from the last scan's)
    assert wait_for(lambda: ca.get("SCAN:TomoState_RBV", as_string=True) == "Projections"
                    and ca.get("SCAN:TomoAngleIndex_RBV") >= 2, 60)
    assert not start.put_complete
    ca.put("SCAN:TomoPause", 1)                   # holds before the next frame
    assert wait_for(lambda: ca.get("SCAN:TomoState_RBV", as_string=True) == "Paused", 30)
    held = ca.get("SCAN:TomoAngleIndex_RBV")
    time.sleep(0.6)
    assert ca.get("SCAN:TomoAngleIndex_RBV") == held and not start.put_complete
    ca.put("SCAN:TomoPause", 0)
    assert wait_for(lambda: ca.get("SCAN:TomoAngleIndex_RBV") > held, 20)
    ca.put("SCAN:Abort", 1)
    assert wait_for(lambda: start.put_complete, 30), "TomoStart did not complete after Abort"
    assert ca.get("SCAN:TomoState_RBV", as_string=True) == "Aborted"
    msg = ca.get("SCAN:TomoMessage_RBV", as_string=True)
    assert "aborted" in msg and "incomplete" in msg
    assert ca.severity("SCAN:TomoMessage_RBV") == 1
    with ScanReader(output(ca, "aborted.h5")) as r:
        assert not r.complete
        assert 2 <= int((r.frame_metadata["image_key"] == 0).sum()) < 40
    assert ca.get("SCAN:TomoProgress_RBV") < 100


@pytest.mark.parametrize("change, reason", [
    ({"SCAN:TomoNumAngles": 1}, "n_angles"),
    ({"SCAN:TomoArc": 120.0}, "outside the rotation axis limits"),   # travel is -45..45 deg
    ({"SCAN:TomoFileName": "done.h5"}, "exists"),
])
def test_a_plan_that_cannot_run_is_rejected_without_starting(ca, change, reason):
    small_plan(ca, "rejected.h5")
    for name, value in change.items():
        ca.put(name, value)
    n0 = ca.get("CAM:ArrayCounter_RBV")
    t0 = time.monotonic()
    ca.put("SCAN:TomoStart", 1, timeout=30)
    assert time.monotonic() - t0 < 5
    assert ca.get("SCAN:TomoState_RBV", as_string=True) == "Rejected"
    msg = ca.get("SCAN:TomoMessage_RBV", as_string=True)
    assert "rejected" in msg and reason in msg, msg
    assert ca.severity("SCAN:TomoMessage_RBV") == 2
    assert ca.get("SCAN:TomoStart") == 0
    assert not output(ca, "rejected.h5").exists()
    assert ca.get("CAM:ArrayCounter_RBV") == n0
