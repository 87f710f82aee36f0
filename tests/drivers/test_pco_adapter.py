"""PcoCamera on the real ``pco`` package: ``pco.Camera`` runs unchanged, only its native-library
bindings (Sdk, Recorder, Convert) are a fake camera (tests/drivers/fake_pco_sdk.py), so every
call the adapter makes is one the real package accepts."""
import sys

import pytest

pytest.importorskip("pco")

import fake_pco_sdk as fake

from drivers.camera import BufferMode, CameraError, TriggerMode
from drivers.camera.pco_adapter import PcoCamera, import_pco


@pytest.fixture
def cam(monkeypatch):
    fake.install(monkeypatch)
    c = PcoCamera(interface="USB 3.0", pixel_size_um=6.5)
    yield c
    c.close()


def sensor():
    return fake.FakeSdk.instances[-1]


def test_opens_through_the_real_api(cam):
    assert cam.sensor_shape == fake.SENSOR and cam.bit_depth == 16 and cam.pixel_size_um == 6.5
    assert cam.name == f"pco pco.edge USB3 #{fake.SERIAL}"
    calls = [c[0] for c in sensor().calls]
    assert "scan_cameras" in calls and "open_camera_device" in calls and "arm_camera" in calls


def test_settings_reach_the_sdk(cam):
    cam.exposure_s = 0.05
    assert sensor().exposure == (50000, "us")
    assert cam.exposure_s == pytest.approx(0.05)
    with pytest.raises(CameraError, match="exposure 20"):
        cam.exposure_s = 20                   # the description says 10 s at most
    cam.roi = (8, 4, 16, 32)
    assert sensor().roi == [5, 9, 36, 24]     # 1-based inclusive x0, y0, x1, y1
    assert cam.roi == (8, 4, 16, 32)
    cam.binning = 2
    assert sensor().binning == (2, 2, "sum")
    assert sensor().roi == [3, 5, 18, 12]     # the SDK's ROI is in binned pixels
    assert cam.binning == 2 and cam.roi == (8, 4, 16, 32) and cam.frame_shape == (8, 16)
    cam.binning = 1
    assert sensor().roi == [5, 9, 36, 24]
    cam.trigger_mode = TriggerMode.SOFTWARE
    assert sensor().trigger == "software trigger"
    with pytest.raises(CameraError, match="does not fit"):
        cam.roi = (40, 0, 16, 64)
    with pytest.raises(CameraError, match="binning"):
        cam.binning = 3


def test_sequence_mode_and_frame_numbers(cam):
    cam.roi = (0, 0, 16, 32)
    cam.setup(BufferMode.SEQUENCE, buffer_frames=5, n_frames=5)
    cam.start()
    rec = sensor().recorder
    assert rec.kind == "sequence" and rec.buffer == 5
    rec.take(3)
    assert cam.wait_for_frame(0.5)
    frames = cam.read_new()
    assert [f.frame_number for f in frames] == [1, 2, 3]
    assert frames[2].data.shape == (16, 32) and int(frames[2].data[0, 0]) == 3
    rec.take(2)
    assert [f.frame_number for f in cam.read_new()] == [4, 5]
    st = cam.status()
    assert (st.acquired, st.unread, st.skipped) == (5, 0, 0)
    cam.stop()
    assert not cam.wait_for_frame(0.05)


def test_grab_uses_a_sequence(cam, monkeypatch):
    rec_take = []
    real_wait = cam._cam.wait_for_new_image

    def wait(delay=True, timeout=None):
        if not rec_take:                       # the sensor delivers on the first wait
            sensor().recorder.take(4)
            rec_take.append(4)
        return real_wait(delay=delay, timeout=timeout)

    monkeypatch.setattr(cam._cam, "wait_for_new_image", wait)
    frames = cam.grab(4, timeout_s=1.0)
    assert [f.frame_number for f in frames] == [1, 2, 3, 4]


def test_ring_buffer_overrun_counts_skipped(cam):
    cam.setup(BufferMode.RING, buffer_frames=4)
    cam.start()
    sensor().recorder.take(10)                 # 6 images overwritten before being read
    frames = cam.read_new()
    assert [f.frame_number for f in frames] == [7, 8, 9, 10]
    assert cam.status().skipped == 6


def test_fifo_and_software_trigger(cam):
    cam.trigger_mode = TriggerMode.SOFTWARE
    cam.setup(BufferMode.FIFO, buffer_frames=8)
    cam.start()
    for _ in range(3):
        cam.software_trigger()                 # pco: Camera.sdk.force_trigger()
    assert cam.status().unread == 3
    assert cam.wait_for_frame(0.5)
    assert [f.frame_number for f in cam.read_new()] == [1, 2, 3]
    assert cam.status().unread == 0 and cam.status().acquired == 3
    cam.stop()
    with pytest.raises(CameraError, match="not accepted"):
        cam.software_trigger()                 # the camera refuses when not recording


def test_fifo_needs_four_buffers_and_settings_refused_while_running(cam):
    with pytest.raises(CameraError, match=">= 4"):
        cam.setup(BufferMode.FIFO, buffer_frames=2)
    cam.setup(BufferMode.FIFO)
    cam.start()
    with pytest.raises(CameraError, match="stop the acquisition"):
        cam.roi = (0, 0, 8, 8)


def test_sdk_errors_become_camera_errors(cam):
    cam.setup(BufferMode.SEQUENCE, buffer_frames=2, n_frames=2)
    cam.start()
    with pytest.raises(CameraError, match="reading image 0"):
        cam._frame(0)                          # nothing recorded yet: the SDK refuses


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pco", None)
    with pytest.raises(CameraError, match="pip install pco"):
        import_pco()
    with pytest.raises(CameraError, match="not installed"):
        PcoCamera()


def test_the_fake_layer_is_as_strict_as_the_real_bindings(cam):
    """Calls the real package would refuse are refused here too (what the adapter used to do
    before it was checked against pco 2.6: a 'binning' mode, a camera-level sw_trigger)."""
    with pytest.raises(ValueError, match="binningmode='binning'"):
        cam._cam.sdk.set_binning(2, 2, "binning")
    with pytest.raises(TypeError):
        cam._cam.sdk.set_roi(1, 1, 8)
    assert not hasattr(cam._cam, "sw_trigger")
    with pytest.raises(KeyError, match="not a valid key"):
        cam._cam.configuration = {"region": (1, 1, 8, 8)}
