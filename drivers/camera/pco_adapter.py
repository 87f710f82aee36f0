"""Adapter from PCO's ``pco`` Python package (pco.Camera, pco >= 2.0) to :class:`Camera`.

The ``pco`` package is imported only when a :class:`PcoCamera` is created; without it the error
says how to install it. Points of the pco API this adapter relies on (check them against the
installed pco version, see drivers/README.md):

* ``pco.Camera(interface=..., serial=...)`` opens a camera; ``close()`` releases it;
* ``cam.exposure_time`` (s); ``cam.configuration = {...}`` sets only the keys given:
  ``"roi"`` as ``(x0, y0, x1, y1)`` 1-based inclusive in *binned* sensor pixels,
  ``"binning"`` as ``(horizontal, vertical, "sum")``, ``"trigger"`` (``"auto sequence"``,
  ``"software trigger"``, ``"external exposure start & software trigger"``);
* ``cam.description`` with ``"max width"``, ``"max height"``, ``"bit resolution"``,
  ``"min exposure time"`` and ``"max exposure time"`` (s);
* ``cam.record(number_of_images, mode)`` with modes ``"sequence non blocking"``,
  ``"ring buffer"``, ``"fifo"`` (at least 4 images); ``cam.stop()``; a software trigger is
  ``cam.sdk.force_trigger()`` (``{"triggered": "successful"}``);
* ``cam.wait_for_new_image(delay=..., timeout=...)`` (raises ``TimeoutError``);
  ``cam.recorded_image_count``;
* ``cam.image(image_index)`` -> ``(array, meta)`` with ``meta["recorder image number"]``
  (1-based count of images the recorder took). In fifo mode index 0 is the oldest unread image
  and reading it frees the slot; in ring-buffer mode index ``k % buffer`` holds image ``k``.

These are the calls ``pco`` 2.6 accepts: tests/drivers/test_pco_real_api.py runs this adapter on
the real ``pco.Camera`` with only the package's native-library bindings replaced by a fake
camera.
"""
from __future__ import annotations

import importlib
import threading
import time
from types import ModuleType
from typing import Any

import numpy as np

from .base import BufferMode, Camera, CameraError, CameraStatus, Frame, TriggerMode

# Interface names pco.Camera(interface=...) accepts (pco 2.x, ``pco.Camera.__init__``).
PCO_INTERFACES = ("FireWire", "Camera Link MTX", "GenICam", "Camera Link NAT", "GigE", "USB 2.0",
                  "Camera Link ME4", "USB 3.0", "CLHS")

_RECORD_MODES = {BufferMode.SEQUENCE: "sequence non blocking", BufferMode.RING: "ring buffer",
                 BufferMode.FIFO: "fifo"}
_TRIGGERS = {TriggerMode.INTERNAL: "auto sequence", TriggerMode.SOFTWARE: "software trigger",
             TriggerMode.EXTERNAL: "external exposure start & software trigger"}


def import_pco() -> ModuleType:
    """Import the ``pco`` package or raise a CameraError telling how to get it."""
    try:
        return importlib.import_module("pco")
    except ImportError as exc:
        raise CameraError("PCO camera: the 'pco' Python package is not installed; install it "
                          "with `pip install pco` (or `pip install xinstrument[pco]`) and the "
                          "PCO drivers for the camera interface") from exc


class PcoCamera(Camera):
    """A PCO sCMOS camera (pco.edge class) through the ``pco`` package.

    Parameters
    ----------
    interface, serial : optional
        Passed to ``pco.Camera`` to select one camera among several.
    pixel_size_um : float
        Sensor pixel pitch (pco.edge 4.2: 6.5 um, from its data sheet); the pco API does not
        report it.
    pco_module : module, optional
        The ``pco`` module to use (default: imported on first use).
    """

    name = "pco"

    def __init__(self, interface: str | None = None, serial: int | None = None,
                 pixel_size_um: float = 6.5, pco_module: ModuleType | None = None) -> None:
        pco = pco_module if pco_module is not None else import_pco()
        kwargs: dict[str, Any] = {}
        if interface is not None:
            kwargs["interface"] = interface
        if serial is not None:
            kwargs["serial"] = serial
        try:
            self._cam = pco.Camera(**kwargs)
        except Exception as exc:   # the pco SDK raises plain exceptions with SDK text
            raise CameraError(f"PCO camera {kwargs or ''}: cannot open: {exc}") from exc
        desc = self._cam.description
        try:
            self._sensor = (int(desc["max height"]), int(desc["max width"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CameraError(f"PCO camera: description lacks the sensor size "
                              f"('max width'/'max height'): {desc!r}") from exc
        self._bit_depth = int(desc.get("bit resolution", 16))
        self.name = f"pco {desc.get('type', 'camera')} #{desc.get('serial', '?')}"
        if not pixel_size_um > 0:
            raise CameraError(f"{self.name}: pixel_size_um must be > 0, got {pixel_size_um!r}")
        self._pixel_size_um = float(pixel_size_um)
        self._trigger = TriggerMode.INTERNAL
        self._roi = (0, 0) + self._sensor       # unbinned (row0, col0, rows, cols)
        self._bin = 1
        self._mode = BufferMode.FIFO
        self._buffer = 64
        self._n_frames: int | None = None
        self._running = False
        self._next_index = 0            # sequence/ring: next recorder index to read
        self._last_number: int | None = None
        self._delivered = 0
        self._skipped = 0
        self._lock = threading.RLock()

    # --- static
    @property
    def sensor_shape(self) -> tuple[int, int]:
        return self._sensor

    @property
    def pixel_size_um(self) -> float:
        return self._pixel_size_um

    @property
    def bit_depth(self) -> int:
        return self._bit_depth

    # --- settings
    def _sdk(self, what: str, fn, *args):
        try:
            return fn(*args)
        except CameraError:
            raise
        except Exception as exc:
            raise CameraError(f"{self.name}: {what} failed: {exc}") from exc

    def _idle(self, what: str) -> None:
        if self._running:
            raise CameraError(f"{self.name}: stop the acquisition before changing {what}")

    @property
    def exposure_s(self) -> float:
        return float(self._cam.exposure_time)

    @exposure_s.setter
    def exposure_s(self, value: float) -> None:
        v = float(value)
        desc = self._cam.description
        lo = float(desc.get("min exposure time", 1e-6))
        hi = float(desc.get("max exposure time", 100.0))
        if not (lo <= v <= hi):
            raise CameraError(f"{self.name}: exposure {value} s outside {lo:g} .. {hi:g} s")
        self._sdk("setting the exposure time", setattr, self._cam, "exposure_time", v)

    @property
    def roi(self) -> tuple[int, int, int, int]:
        """(row0, col0, rows, cols) in unbinned sensor pixels (read back from the camera)."""
        x0, y0, x1, y1 = self._sdk("reading the ROI", lambda: self._cam.configuration["roi"])
        b = self.binning
        return ((int(y0) - 1) * b, (int(x0) - 1) * b, (int(y1) - int(y0) + 1) * b,
                (int(x1) - int(x0) + 1) * b)

    @roi.setter
    def roi(self, value: tuple[int, int, int, int]) -> None:
        self._idle("the ROI")
        r0, c0, rows, cols = (int(v) for v in value)
        R, C = self._sensor
        if r0 < 0 or c0 < 0 or rows < 1 or cols < 1 or r0 + rows > R or c0 + cols > C:
            raise CameraError(f"{self.name}: ROI {value} does not fit the {R}x{C} sensor")
        self._apply_geometry((r0, c0, rows, cols), self._bin)

    @property
    def binning(self) -> int:
        h, v, *_ = self._sdk("reading the binning", lambda: self._cam.configuration["binning"])
        if int(h) != int(v):
            raise CameraError(f"{self.name}: asymmetric binning {h}x{v} is not supported")
        return int(h)

    @binning.setter
    def binning(self, value: int) -> None:
        self._idle("binning")
        if int(value) not in (1, 2, 4):
            raise CameraError(f"{self.name}: binning must be 1, 2 or 4, got {value}")
        self._apply_geometry(self._roi, int(value))

    def _apply_geometry(self, roi: tuple[int, int, int, int], b: int) -> None:
        """Binning and ROI together: the SDK's ROI is in binned pixels, so it changes with
        the binning. The unbinned ROI is kept, shrunk to whole binned pixels."""
        r0, c0, rows, cols = roi
        x0, y0 = c0 // b + 1, r0 // b + 1
        x1, y1 = (c0 + cols) // b, (r0 + rows) // b
        if x1 < x0 or y1 < y0:
            raise CameraError(f"{self.name}: ROI {roi} is smaller than one {b}x{b} binned pixel")
        self._configure(binning=(b, b, "sum"), roi=(x0, y0, x1, y1))
        self._roi, self._bin = roi, b

    @property
    def trigger_mode(self) -> TriggerMode:
        return self._trigger

    @trigger_mode.setter
    def trigger_mode(self, value: TriggerMode) -> None:
        self._idle("the trigger mode")
        mode = TriggerMode(value)
        self._configure(trigger=_TRIGGERS[mode])
        self._trigger = mode

    def _configure(self, **items: Any) -> None:
        # pco.Camera.configuration sets only the keys it is given
        self._sdk(f"configuring {sorted(items)}", setattr, self._cam, "configuration", items)

    # --- acquisition
    def setup(self, buffer_mode: BufferMode = BufferMode.FIFO, buffer_frames: int = 64,
              n_frames: int | None = None) -> None:
        self._idle("the recorder setup")
        mode = BufferMode(buffer_mode)
        if buffer_frames < 1:
            raise CameraError(f"{self.name}: buffer_frames must be >= 1, got {buffer_frames}")
        if mode is BufferMode.SEQUENCE and (n_frames is None or n_frames < 1):
            raise CameraError(f"{self.name}: sequence mode needs n_frames >= 1")
        if mode is BufferMode.FIFO and buffer_frames < 4:
            raise CameraError(f"{self.name}: the pco fifo recorder needs >= 4 buffer frames, "
                              f"got {buffer_frames}")
        self._mode, self._buffer = mode, int(buffer_frames)
        self._n_frames = n_frames

    def start(self) -> None:
        with self._lock:
            if self._running:
                return
            count = self._n_frames if self._mode is BufferMode.SEQUENCE else self._buffer
            self._next_index = 0
            self._last_number = None
            self._delivered = 0
            self._skipped = 0
            self._sdk("starting the recorder", self._cam.record, count, _RECORD_MODES[self._mode])
            self._running = True

    def stop(self) -> None:
        with self._lock:
            if self._running:
                self._sdk("stopping the recorder", self._cam.stop)
            self._running = False

    def close(self) -> None:
        self.stop()
        self._sdk("closing the camera", self._cam.close)

    def software_trigger(self) -> None:
        if self._trigger is not TriggerMode.SOFTWARE:
            raise CameraError(f"{self.name}: software_trigger() needs trigger mode 'software'")
        ret = self._sdk("software trigger", self._cam.sdk.force_trigger)
        if ret.get("triggered") != "successful":
            raise CameraError(f"{self.name}: software trigger not accepted ({ret}); is the "
                              "recorder running?")

    def _available(self) -> int:
        count = int(self._cam.recorded_image_count)
        if self._mode is BufferMode.FIFO:
            return count            # fifo: images waiting in the fifo
        return count - self._next_index

    def wait_for_frame(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            if self._available() > 0:
                return True
        while time.monotonic() < deadline:
            remaining = deadline - time.monotonic()
            try:
                self._cam.wait_for_new_image(delay=True, timeout=max(remaining, 1e-3))
            except TimeoutError:
                return self._available() > 0
            except Exception as exc:
                raise CameraError(f"{self.name}: waiting for an image failed: {exc}") from exc
            with self._lock:
                if self._available() > 0:
                    return True
        return False

    def _frame(self, index: int) -> Frame:
        data, meta = self._sdk(f"reading image {index}", self._cam.image, index)
        data = np.asarray(data)
        try:
            number = int(meta["recorder image number"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CameraError(f"{self.name}: image metadata lacks 'recorder image number': "
                              f"{meta!r}") from exc
        if self._last_number is not None:
            if number <= self._last_number:
                raise CameraError(f"{self.name}: recorder image number went from "
                                  f"{self._last_number} to {number}")
            self._skipped += number - self._last_number - 1   # gap = frames lost
        elif number > 1:
            self._skipped += number - 1
        self._last_number = number
        self._delivered += 1
        return Frame(data=data, frame_number=number, timestamp_s=time.time(),
                     exposure_s=self.exposure_s, metadata={"pco": dict(meta)})

    def read_new(self) -> list[Frame]:
        with self._lock:
            frames: list[Frame] = []
            count = int(self._cam.recorded_image_count)
            if self._mode is BufferMode.FIFO:
                for _ in range(count):
                    frames.append(self._frame(0))
                return frames
            if self._mode is BufferMode.RING and count - self._next_index > self._buffer:
                # the ring overwrote images we had not read yet: skip to the oldest kept one
                self._next_index = count - self._buffer
            while self._next_index < count:
                idx = self._next_index % self._buffer if self._mode is BufferMode.RING \
                    else self._next_index
                frames.append(self._frame(idx))
                self._next_index += 1
            return frames

    def status(self) -> CameraStatus:
        with self._lock:
            count = int(self._cam.recorded_image_count)
            if self._mode is BufferMode.FIFO:
                unread, acquired = count, self._delivered + self._skipped + count
            else:
                unread = min(count - self._next_index, self._buffer)
                acquired = count
            return CameraStatus(acquired=acquired, unread=unread, skipped=self._skipped,
                                buffer_size=self._buffer, running=self._running)
