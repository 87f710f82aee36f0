"""PcoCamera adapter against a test double of the ``pco`` package API (pco.Camera)."""
import sys
import types

import numpy as np
import pytest

from drivers.camera import BufferMode, CameraError, TriggerMode
from drivers.camera.pco_adapter import PcoCamera, import_pco


class FakePcoCamera:
    """Double of pco.Camera: recorder fed by ``expose(n)``; records calls."""

    def __init__(self, **kw):
        self.kw = kw
        self.description = {"serial": 1234, "type": "pco.edge", "max width": 64,
                            "max height": 48, "bit resolution": 16,
                            "min exposure time": 1e-5, "max exposure time": 10.0}
        self.configuration = {"roi": (1, 1, 64, 48), "binning": (1, 1, "binning"),
                              "trigger": "auto sequence"}
        self.exposure_time = 0.01
        self.calls = []
        self.mode = None
        self.buffer = 0
        self.images = []     # ring/sequence storage
        self.fifo = []
        self.taken = 0

    def record(self, number_of_images=1, mode="sequence"):
        self.calls.append(("record", number_of_images, mode))
        self.mode, self.buffer, self.images, self.fifo, self.taken = \
            mode, number_of_images, [None] * number_of_images, [], 0

    def expose(self, n):
        for _ in range(n):
            self.taken += 1
            img = (np.full((48, 64), self.taken, np.uint16),
                   {"recorder image number": self.taken})
            if self.mode == "fifo":
                if len(self.fifo) < self.buffer:
                    self.fifo.append(img)
            elif self.mode == "ring buffer":
                self.images[(self.taken - 1) % self.buffer] = img
            elif self.taken <= self.buffer:
                self.images[self.taken - 1] = img

    @property
    def recorded_image_count(self):
        if self.mode == "fifo":
            return len(self.fifo)
        return self.taken if self.mode == "ring buffer" else min(self.taken, self.buffer)

    def image(self, image_index=0):
        if self.mode == "fifo":
            return self.fifo.pop(0)
        return self.images[image_index]

    def wait_for_new_image(self, delay=True, timeout=None):
        raise TimeoutError("no image")

    def sw_trigger(self):
        self.calls.append(("sw_trigger",))

    def stop(self):
        self.calls.append(("stop",))

    def close(self):
        self.calls.append(("close",))


@pytest.fixture
def cam():
    mod = types.SimpleNamespace(Camera=FakePcoCamera)
    c = PcoCamera(pco_module=mod)
    yield c
    c.close()


def test_static_properties_and_settings(cam):
    assert cam.sensor_shape == (48, 64) and cam.bit_depth == 16 and cam.pixel_size_um == 6.5
    cam.roi = (8, 4, 16, 32)
    assert cam._cam.configuration["roi"] == (5, 9, 36, 24)     # 1-based inclusive x0,y0,x1,y1
    assert cam.roi == (8, 4, 16, 32)
    cam.binning = 2
    assert cam.binning == 2 and cam.frame_shape == (8, 16)
    cam.trigger_mode = TriggerMode.SOFTWARE
    assert cam._cam.configuration["trigger"] == "software trigger"
    cam.exposure_s = 0.5
    assert cam.exposure_s == 0.5
    with pytest.raises(CameraError, match="exposure 20"):
        cam.exposure_s = 20
    with pytest.raises(CameraError, match="does not fit"):
        cam.roi = (40, 0, 16, 64)
    with pytest.raises(CameraError, match="binning"):
        cam.binning = 3


def test_sequence_mode_and_frame_numbers(cam):
    cam.setup(BufferMode.SEQUENCE, buffer_frames=5, n_frames=5)
    cam.start()
    assert cam._cam.calls[-1] == ("record", 5, "sequence non blocking")
    cam._cam.expose(3)
    assert cam.wait_for_frame(0.01)
    frames = cam.read_new()
    assert [f.frame_number for f in frames] == [1, 2, 3]
    assert int(frames[2].data[0, 0]) == 3
    cam._cam.expose(2)
    assert [f.frame_number for f in cam.read_new()] == [4, 5]
    st = cam.status()
    assert (st.acquired, st.unread, st.skipped) == (5, 0, 0)
    cam.stop()
    assert not cam.wait_for_frame(0.01)


def test_ring_buffer_overrun_counts_skipped(cam):
    cam.setup(BufferMode.RING, buffer_frames=4)
    cam.start()
    assert cam._cam.calls[-1] == ("record", 4, "ring buffer")
    cam._cam.expose(10)                 # 6 images overwritten before being read
    frames = cam.read_new()
    assert [f.frame_number for f in frames] == [7, 8, 9, 10]
    assert cam.status().skipped == 6


def test_fifo_mode(cam):
    cam.setup(BufferMode.FIFO, buffer_frames=8)
    cam.trigger_mode = TriggerMode.SOFTWARE
    cam.start()
    cam.software_trigger()
    assert ("sw_trigger",) in cam._cam.calls
    cam._cam.expose(3)
    assert cam.status().unread == 3
    assert [f.frame_number for f in cam.read_new()] == [1, 2, 3]
    assert cam.status().unread == 0 and cam.status().acquired == 3


def test_settings_refused_while_running(cam):
    cam.setup(BufferMode.FIFO)
    cam.start()
    with pytest.raises(CameraError, match="stop the acquisition"):
        cam.roi = (0, 0, 8, 8)


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pco", None)
    with pytest.raises(CameraError, match="pip install pco"):
        import_pco()
    with pytest.raises(CameraError, match="not installed"):
        PcoCamera()
