"""Live restoration never holds up the camera: a slow restorer is fed the newest frames, every
raw frame is still recorded (in order, in a real HDF5 file), and the rate is reported."""
import threading
import time

import numpy as np
import pytest

from drivers.camera.simulated import SimulatedCamera
from xinstrument.acquisition.correction import FlatFieldCorrector
from xinstrument.acquisition.live_restoration import LiveRestoration
from xinstrument.acquisition.pipeline import (
    AcquisitionPipeline,
    HDF5Sink,
    LiveView,
    MemorySink,
    PipelineError,
)
from xinstrument.storage import ScanReader

SHAPE = (48, 64)


def ramp_camera(fps=200.0):
    def render(exposure_s, roi, binning, frame_number):
        return np.full((roi[2], roi[3]), 1000 + frame_number, np.uint16), {"voltage_kv": 50.0}

    cam = SimulatedCamera(render, sensor_shape=SHAPE, max_fps=fps)
    cam.exposure_s = 1.0 / fps
    return cam


class SlowRestorer:
    """frame -> frame + 1 after ``delay_s``; remembers which frames it saw."""

    method, profile = "slow", "test-profile"

    def __init__(self, delay_s):
        self.delay_s = delay_s
        self.seen = []

    def __call__(self, frame):
        self.seen.append(float(frame.mean()))
        time.sleep(self.delay_s)
        return frame + 1.0


DARK = np.full(SHAPE, 100.0, np.float32)
FLAT = np.full(SHAPE, 2100.0, np.float32)


def corrector():
    return FlatFieldCorrector(DARK, FLAT)


def as_transmission(frame):
    """A recorded frame as transmission, whether the file keeps it corrected or as ADU."""
    a = np.asarray(frame, np.float64)
    return (a - 100.0) / 2000.0 if a.mean() > 10 else a


def test_slow_restorer_never_drops_camera_frames_and_recording_gets_every_frame(tmp_path):
    n_out = 40
    # 10 restorations/s against 50 outputs/s: restoring every frame would take 4 s while the
    # camera delivers its 80 frames in 0.8 s, far more than its 32-frame buffer holds
    slow = SlowRestorer(0.1)
    live = LiveView(capacity=64)
    path = tmp_path / "live.h5"
    stats = AcquisitionPipeline(ramp_camera(100.0), n_average=2, corrector=corrector(),
                                restorer=slow,
                                sinks=[HDF5Sink(path, references=[(DARK, 2, 1), (FLAT, 1, 1)]), live],
                                n_outputs=n_out, camera_buffer_frames=32).run(timeout_s=60)
    assert stats.state == "completed"
    assert stats.camera_dropped == 0 and stats.stages["camera"].frames_out == 2 * n_out
    assert stats.frames_restored + stats.frames_not_restored == n_out
    assert 0 < stats.frames_restored < n_out // 2        # restored at a lower rate ...
    assert stats.restored_per_s > 0 and "restoration:" in stats.table()
    with ScanReader(path) as rec:
        projections = np.array([as_transmission(p) for p in rec.projections])
        restored = rec.restored
        source = rec.restored_metadata["source_index"]
        sources = np.array([as_transmission(rec.frame(int(i))) for i in source])
    assert projections.shape[0] == n_out                  # ... and every frame recorded
    frame_numbers = (projections.mean(axis=(1, 2)) * 2000 + 100 - 1000) * 2   # first + last
    assert np.all(np.diff(frame_numbers) > 0)             # in acquisition order
    assert len(source) == stats.frames_restored and np.all(np.diff(source) > 0)
    np.testing.assert_allclose(restored, sources + 1.0, atol=1e-4)
    # latest first: when behind, the restorer skipped frames instead of working through a backlog
    assert np.max(np.diff(source)) >= 3
    # live views get restored frames only
    assert all(it.restored is not None for it in live.frames())


def test_a_restorer_that_keeps_up_restores_every_frame():
    sink = MemorySink()
    stats = AcquisitionPipeline(ramp_camera(100.0), n_average=1, corrector=corrector(),
                                restorer=SlowRestorer(0.0), sinks=[sink],
                                n_outputs=12).run(timeout_s=30)
    assert stats.frames_restored == 12 and stats.frames_not_restored == 0
    assert [it.index for it in sink.items] == list(range(12))
    assert all(np.allclose(it.restored, it.data + 1) for it in sink.items)
    assert {it.restoration_profile for it in sink.items} == {"test-profile"}


def test_a_failing_restorer_stops_the_run_naming_the_stage(tmp_path):
    def broken(frame):
        raise RuntimeError("out of ideas")

    sink = MemorySink()
    pipe = AcquisitionPipeline(ramp_camera(), corrector=corrector(), restorer=broken,
                               sinks=[sink], n_outputs=5)
    with pytest.raises(PipelineError, match="'restore'.*out of ideas"):
        pipe.run(timeout_s=30)
    assert sink.closed[0] is False


def test_policy_latest_first_and_late_restorations_go_to_live_views_only():
    gate = threading.Event()

    def restore_item(item):
        if item.index > 0:                   # frame 0 (the warm-up) is quick, then stuck
            gate.wait(5)
        item.restored = item.data + 1
        return item

    class Item:
        def __init__(self, i):
            self.index, self.data, self.restored = i, np.full((2, 2), float(i)), None

    pol = LiveRestoration(restore_item, backlog_frames=2, max_lag_frames=4)

    def drain(until, routes):
        deadline = time.monotonic() + 5
        while not until() and time.monotonic() < deadline:
            pol.wait(0.05)
            routes += [(it.index, r) for it, r in pol.poll()]

    routes = []
    pol.push(Item(0))
    routes += [(it.index, r) for it, r in pol.poll()]
    drain(lambda: pol.finished, routes)
    assert routes == [(0, "all")]
    t0 = time.perf_counter()
    for i in range(1, 9):                    # the restorer is stuck on frame 1
        pol.push(Item(i))
        routes += [(it.index, r) for it, r in pol.poll()]
    assert time.perf_counter() - t0 < 0.5    # pushing never waited for the restorer
    # frame 1 was passed on unrestored once 4 newer frames waited; older waiting frames too
    assert routes[1] == (1, "lossless")
    assert all(r == "lossless" for _, r in routes[1:])
    assert pol.pending >= 1                  # the newest waits for the restorer
    gate.set()
    drain(lambda: pol.finished, routes)
    pol.close()
    assert (1, "lossy") in routes            # frame 1's late restoration: live views only
    assert routes[-1] == (8, "all")          # then the newest frame, restored
    assert [i for i, r in routes if r != "lossy"] == list(range(9))    # in order, all of them
    assert pol.restored_late == 1 and pol.frames_restored == 2
    assert pol.frames_not_restored == 7
    with pytest.raises(ValueError, match="must exceed"):
        LiveRestoration(restore_item, backlog_frames=4, max_lag_frames=4)
