"""Frame pipeline: counts, averaging, drops, abort, stage errors, stalled camera, HDF5."""
import threading
import time

import numpy as np
import pytest

from drivers.camera.base import TriggerMode
from drivers.camera.simulated import SimulatedCamera
from xinstrument.acquisition.correction import FlatFieldCorrector
from xinstrument.acquisition.pipeline import (
    AcquisitionPipeline,
    CallbackSink,
    CameraStalled,
    LiveView,
    MemorySink,
    PipelineError,
)

SHAPE = (32, 48)


def ramp_camera(shape=SHAPE, max_fps=2000.0, exposure_s=1e-3, zinger_frames=(), **meta):
    """Frame n is filled with 100 + n (so averages are checkable); zinger_frames get a spike."""

    def render(exposure_s, roi, binning, frame_number):
        data = np.full((roi[2], roi[3]), 100 + frame_number, np.uint16)
        if frame_number in zinger_frames:
            data[3, 4] = 60000
        return data, {"voltage_kv": 50.0, "current_ua": 80.0, "stage_um": 12.5, **meta}

    cam = SimulatedCamera(render, sensor_shape=shape, max_fps=max_fps)
    cam.exposure_s = exposure_s
    return cam


def test_counts_and_averages():
    cam = ramp_camera()
    sink, live = MemorySink(), LiveView(capacity=2)
    pipe = AcquisitionPipeline(cam, n_average=4, sinks=[sink, live], n_outputs=5)
    stats = pipe.run(timeout_s=20)
    assert stats.state == "completed"
    assert [it.index for it in sink.items] == [0, 1, 2, 3, 4]
    for it in sink.items:
        numbers = np.arange(it.first_frame_number, it.last_frame_number + 1)
        assert numbers.size == it.frames_averaged == 4
        assert it.data.dtype == np.float32
        assert np.all(it.data == 100 + numbers.mean())
        assert it.metadata["voltage_kv"] == 50.0
    assert stats.stages["camera"].frames_out == 20
    assert stats.stages["average"].frames_in == 20 and stats.stages["average"].frames_out == 5
    assert stats.stages["sink:memory"].frames_out == 5
    assert stats.camera_dropped == 0 and all(s.dropped == 0 for s in stats.stages.values())
    assert sink.closed == (True, None)
    assert live.latest() is not None and live.latest().index == 4 and len(live.frames()) == 2
    assert stats.latency_s["live"]["max"] >= stats.latency_s["live"]["mean"] > 0
    assert stats.stages["camera"].mb_per_s > 0 and "latency camera->live" in stats.table()
    assert not cam.running


def test_correction_and_restoration_stages():
    cam = ramp_camera()
    dark = np.full(SHAPE, 50.0)
    flat = np.full(SHAPE, 250.0)

    class Restorer:
        method, profile = "wiener", "yag200"

        def __call__(self, frame):
            return frame * 2.0

    sink = MemorySink()
    stats = AcquisitionPipeline(cam, n_average=2, corrector=FlatFieldCorrector(dark, flat),
                                restorer=Restorer(), sinks=[sink], n_outputs=3).run(timeout_s=20)
    assert list(stats.stages) == ["camera", "average", "correct", "restore", "sink:memory"]
    for it in sink.items:
        raw_mean = 100 + (it.first_frame_number + it.last_frame_number) / 2
        assert np.allclose(it.data, (raw_mean - 50) / 200)
        assert np.allclose(it.restored, 2 * it.data)
        assert (it.restoration_method, it.restoration_profile) == ("wiener", "yag200")
        assert it.display is it.restored


def test_zinger_rejection_in_the_pipeline():
    cam = ramp_camera(zinger_frames={2, 7})
    plain, robust = MemorySink(), MemorySink()
    AcquisitionPipeline(cam, n_average=5, sinks=[plain], n_outputs=2).run(timeout_s=20)
    cam2 = ramp_camera(zinger_frames={2, 7})
    AcquisitionPipeline(cam2, n_average=5, reject_outliers=True, sinks=[robust],
                        n_outputs=2).run(timeout_s=20)
    assert plain.items[0].data[3, 4] > 10000
    for it in robust.items:
        # the ramp itself is the "signal": the spike is gone, the mean of the others remains
        assert abs(it.data[3, 4] - np.median(it.data)) <= 3
        assert it.data[0, 0] == 100 + (it.first_frame_number + it.last_frame_number) / 2


def test_slow_live_sink_drops_are_counted_and_storage_loses_nothing():
    cam = ramp_camera(max_fps=2000, exposure_s=1e-3)
    seen = []

    def slow_display(item):
        time.sleep(0.03)
        seen.append(item.index)

    store = MemorySink()
    pipe = AcquisitionPipeline(cam, sinks=[store, CallbackSink(slow_display, name="epics")],
                               n_outputs=60, queue_frames=2)
    stats = pipe.run(timeout_s=30)
    live = stats.stages["sink:epics"]
    assert [it.index for it in store.items] == list(range(60))
    assert live.dropped > 0
    assert live.frames_out + live.dropped == 60 == len(seen) + live.dropped
    assert seen == sorted(seen) and seen[-1] == 59  # the latest frame is always delivered
    assert stats.stages["sink:memory"].dropped == 0 and stats.camera_dropped == 0


def test_camera_overflow_under_back_pressure_is_counted():
    cam = ramp_camera(max_fps=5000, exposure_s=2e-4)
    store = MemorySink(delay_s=0.01)  # lossless sink slower than the camera
    pipe = AcquisitionPipeline(cam, sinks=[store], n_outputs=40, queue_frames=1,
                               camera_buffer_frames=2)
    stats = pipe.run(timeout_s=30)
    assert len(store.items) == 40
    assert stats.camera_skipped > 0
    # the camera also counts overflows after the last frame the run needed
    assert stats.camera_skipped >= stats.frame_number_gaps > 0
    numbers = [it.first_frame_number for it in store.items]
    assert numbers[-1] - numbers[0] + 1 - 40 == stats.frame_number_gaps
    assert "frame-number gaps" in stats.table()


def test_abort_mid_run_is_clean_and_idempotent():
    cam = ramp_camera(max_fps=500, exposure_s=2e-3)
    store, live = MemorySink(), LiveView()
    pipe = AcquisitionPipeline(cam, n_average=2, sinks=[store, live])
    pipe.start()
    pipe.start()  # no-op
    assert live.wait_for_new(3, timeout_s=10) is not None
    pipe.abort("operator pressed abort")
    pipe.abort()
    stats = pipe.wait(timeout_s=10)
    pipe.stop()
    assert stats.state == "aborted" and not pipe.running and not cam.running
    assert store.closed == (False, "operator pressed abort")
    assert live.closed
    n = len(store.items)
    time.sleep(0.1)
    assert len(store.items) == n >= 4


def test_graceful_stop_keeps_every_acquired_frame():
    cam = ramp_camera(max_fps=500, exposure_s=2e-3)
    store = MemorySink()
    with AcquisitionPipeline(cam, n_average=5, sinks=[store]) as pipe:
        time.sleep(0.15)
    stats = pipe.wait(timeout_s=10)
    assert stats.state == "stopped" and store.closed == (True, None)
    assert sum(it.frames_averaged for it in store.items) == stats.stages["camera"].frames_out
    numbers = [n for it in store.items
               for n in range(it.first_frame_number, it.last_frame_number + 1)]
    assert numbers == list(range(1, len(numbers) + 1))


def test_error_in_a_stage_stops_the_run_and_names_it():
    cam = ramp_camera()
    calls = []

    def bad_corrector(frame):
        calls.append(1)
        if len(calls) == 3:
            raise FloatingPointError("flat reference corrupted")
        return frame

    store = MemorySink()
    pipe = AcquisitionPipeline(cam, corrector=bad_corrector, sinks=[store])
    pipe.start()
    with pytest.raises(PipelineError, match="stage 'correct' failed: FloatingPointError: flat "
                                            "reference corrupted") as err:
        pipe.wait(timeout_s=10)
    assert err.value.stage == "correct"
    assert isinstance(err.value.__cause__, FloatingPointError)
    assert len(store.items) == 2 and store.closed[0] is False
    assert "correct" in store.closed[1]
    assert pipe.stats().state == "failed" and not cam.running


def test_error_in_a_sink_is_reported():
    cam = ramp_camera()

    def broken(item):
        raise OSError(28, "No space left on device")

    pipe = AcquisitionPipeline(cam, sinks=[CallbackSink(broken, name="disk", lossless=True)],
                               n_outputs=10)
    with pytest.raises(PipelineError, match="stage 'sink:disk' failed: OSError"):
        pipe.run(timeout_s=10)


def test_camera_that_stops_delivering_gives_a_clear_error():
    cam = ramp_camera()
    cam.trigger_mode = TriggerMode.SOFTWARE
    store = MemorySink()
    pipe = AcquisitionPipeline(cam, sinks=[store], frame_timeout_s=0.4)
    pipe.start()
    for _ in range(3):
        cam.software_trigger()
    t0 = time.monotonic()
    with pytest.raises(PipelineError, match=r"stage 'camera' failed: CameraStalled: .*no frame "
                                            r"for 0\.\d s .* after 3 frames") as err:
        pipe.wait(timeout_s=10)
    assert time.monotonic() - t0 < 5
    assert isinstance(err.value.__cause__, CameraStalled)
    assert len(store.items) == 3  # what arrived before the stall is kept


def test_camera_render_failure_is_reported():
    def render(exposure_s, roi, binning, frame_number):
        if frame_number > 2:
            raise RuntimeError("sensor readout failed")
        return np.zeros((roi[2], roi[3]), np.uint16), {}

    cam = SimulatedCamera(render, sensor_shape=SHAPE, max_fps=1000)
    cam.exposure_s = 1e-3
    with pytest.raises(PipelineError, match="stage 'camera'.*sensor readout failed"):
        AcquisitionPipeline(cam, sinks=[MemorySink()], n_outputs=10).run(timeout_s=10)


def test_stalled_sink_is_reported_not_a_hang():
    cam = ramp_camera()
    release = threading.Event()

    def stuck(item):
        release.wait(1.5)

    pipe = AcquisitionPipeline(cam, sinks=[CallbackSink(stuck, name="pv", lossless=True)],
                               n_outputs=5, stage_timeout_s=0.3)
    t0 = time.monotonic()
    with pytest.raises(PipelineError, match="stage 'sink:pv' failed: TimeoutError: stalled"):
        pipe.run(timeout_s=10)
    release.set()
    assert time.monotonic() - t0 < 8


def test_bad_configuration_is_rejected():
    cam = ramp_camera()
    with pytest.raises(ValueError, match="averaging count"):
        AcquisitionPipeline(cam, n_average=0)
    with pytest.raises(ValueError, match="at least 3"):
        AcquisitionPipeline(cam, n_average=2, reject_outliers=True)
    with pytest.raises(ValueError, match="unique"):
        AcquisitionPipeline(cam, sinks=[MemorySink(), MemorySink()])
    with pytest.raises(ValueError, match="n_outputs"):
        AcquisitionPipeline(cam, n_outputs=0)
    with pytest.raises(TypeError, match="corrector"):
        AcquisitionPipeline(cam, corrector="flat.h5")
    with pytest.raises(RuntimeError, match="not started"):
        AcquisitionPipeline(cam).wait()


def test_hdf5_sink_writes_readable_frames(tmp_path):
    import h5py

    from xinstrument.acquisition.pipeline import HDF5Sink

    cam = ramp_camera()
    path = tmp_path / "scan.h5"
    sink = HDF5Sink(path, metadata={"title": "pipeline test"})
    stats = AcquisitionPipeline(cam, n_average=3, restorer=lambda f: f + 1, sinks=[sink],
                                n_outputs=4).run(timeout_s=20)
    assert stats.stages["sink:hdf5"].frames_out == 4 and sink.frames_written == 4
    with h5py.File(path, "r") as f:
        frames = f["/entry/data/data"][()]
        restored = f["/entry/restored/data"][()]
        averaged = f["/entry/instrument/detector/frames_averaged"][()]
        voltage = f["/entry/instrument/source/voltage"][()]
        focus = f["/entry/sample/focus_z"][()]
        source_index = f["/entry/restored/source_index"][()]
    assert frames.shape == restored.shape == (4, *SHAPE)
    for k in range(4):  # frames 3k+1..3k+3 of the ramp
        assert np.allclose(frames[k], 100 + 3 * k + 2.0)
    assert np.allclose(restored, frames + 1)
    assert list(averaged) == [3] * 4 and list(source_index) == [0, 1, 2, 3]
    assert np.allclose(voltage, 50.0) and np.allclose(focus, 12.5)
