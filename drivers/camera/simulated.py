"""Simulated sCMOS camera adapter.

The adapter behaves like a real recorder (exposure-limited frame rate, ring/FIFO/sequence buffers,
frame counter, skipped-frame accounting, software trigger); the pixels come from a ``render``
hook supplied by the digital twin, so this module knows nothing about the physics.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Protocol

import numpy as np

from .base import BufferMode, Camera, CameraError, CameraStatus, Frame, TriggerMode


class RenderHook(Protocol):
    def __call__(self, exposure_s: float, roi: tuple[int, int, int, int], binning: int,
                 frame_number: int) -> tuple[np.ndarray, dict]:
        """Return (uint16 frame of the ROI/binning shape, metadata snapshot)."""


class SimulatedCamera(Camera):
    """sCMOS twin adapter. ``max_fps`` is the sensor's full-frame readout limit
    (pco.edge 4.2: 100 frames/s at 2048 x 2048, from its data sheet)."""

    def __init__(self, render: RenderHook, sensor_shape: tuple[int, int] = (2048, 2048),
                 pixel_size_um: float = 6.5, bit_depth: int = 16, max_fps: float = 100.0,
                 name: str = "sim-sCMOS") -> None:
        self.name = name
        self._render = render
        self._sensor_shape = (int(sensor_shape[0]), int(sensor_shape[1]))
        self._pixel_size_um = float(pixel_size_um)
        self._bit_depth = int(bit_depth)
        self.max_fps = float(max_fps)
        self._exposure_s = 0.1
        self._roi = (0, 0, *self._sensor_shape)
        self._binning = 1
        self._trigger = TriggerMode.INTERNAL
        self._mode = BufferMode.FIFO
        self._capacity = 64
        self._n_frames: int | None = None
        self._buf: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._trig = threading.Semaphore(0)
        self._frame_number = 0
        self._acquired = 0
        self._skipped = 0
        self._error: BaseException | None = None

    # --- properties
    @property
    def sensor_shape(self) -> tuple[int, int]:
        return self._sensor_shape

    @property
    def pixel_size_um(self) -> float:
        return self._pixel_size_um

    @property
    def bit_depth(self) -> int:
        return self._bit_depth

    @property
    def exposure_s(self) -> float:
        return self._exposure_s

    @exposure_s.setter
    def exposure_s(self, value: float) -> None:
        value = float(value)
        if not (1e-5 <= value <= 60.0):
            raise CameraError(f"{self.name}: exposure {value} s outside 1e-05 .. 60 s")
        self._exposure_s = value

    @property
    def roi(self) -> tuple[int, int, int, int]:
        return self._roi

    @roi.setter
    def roi(self, value: tuple[int, int, int, int]) -> None:
        r0, c0, rows, cols = (int(v) for v in value)
        R, C = self._sensor_shape
        if r0 < 0 or c0 < 0 or rows < 1 or cols < 1 or r0 + rows > R or c0 + cols > C:
            raise CameraError(f"{self.name}: ROI {value} does not fit the {R}x{C} sensor")
        self._roi = (r0, c0, rows, cols)

    @property
    def binning(self) -> int:
        return self._binning

    @binning.setter
    def binning(self, value: int) -> None:
        if int(value) not in (1, 2, 4):
            raise CameraError(f"{self.name}: binning must be 1, 2 or 4, got {value}")
        self._binning = int(value)

    @property
    def trigger_mode(self) -> TriggerMode:
        return self._trigger

    @trigger_mode.setter
    def trigger_mode(self, value: TriggerMode) -> None:
        self._trigger = TriggerMode(value)
        if self._trigger is TriggerMode.EXTERNAL:
            raise CameraError(f"{self.name}: no external trigger input on the simulated camera")

    @property
    def frame_period_s(self) -> float:
        """Exposure or readout, whichever is longer (rolling shutter, overlapped readout)."""
        rows = self._roi[2]
        readout_s = (rows / self._sensor_shape[0]) / self.max_fps
        return max(self._exposure_s, readout_s)

    # --- acquisition
    def setup(self, buffer_mode: BufferMode = BufferMode.FIFO, buffer_frames: int = 64,
              n_frames: int | None = None) -> None:
        if self.running:
            raise CameraError(f"{self.name}: stop the acquisition before setup()")
        mode = BufferMode(buffer_mode)
        if buffer_frames < 1:
            raise CameraError(f"{self.name}: buffer_frames must be >= 1")
        if mode is BufferMode.SEQUENCE and (n_frames is None or n_frames < 1):
            raise CameraError(f"{self.name}: sequence mode needs n_frames >= 1")
        self._mode, self._capacity, self._n_frames = mode, int(buffer_frames), n_frames
        with self._cond:
            self._buf.clear()
        self._acquired = 0
        self._skipped = 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._error = None
        self._trig = threading.Semaphore(0)
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-readout", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._trig.release()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5.0)
        self._thread = None
        with self._cond:
            self._cond.notify_all()

    def software_trigger(self) -> None:
        if self._trigger is not TriggerMode.SOFTWARE:
            raise CameraError(f"{self.name}: software_trigger() needs trigger mode 'software'")
        self._trig.release()

    def _run(self) -> None:
        next_t = time.monotonic()
        try:
            while not self._stop.is_set():
                if self._trigger is TriggerMode.SOFTWARE:
                    self._trig.acquire()
                    if self._stop.is_set():
                        break
                    next_t = time.monotonic()
                self._frame_number += 1
                data, meta = self._render(self._exposure_s, self._roi, self._binning,
                                          self._frame_number)
                period = self.frame_period_s
                next_t += period
                delay = next_t - time.monotonic()
                if delay > 0:
                    # the sensor cannot deliver before the exposure/readout period has passed
                    if self._stop.wait(delay):
                        break
                else:
                    next_t = time.monotonic()
                frame = Frame(data=data, frame_number=self._frame_number,
                              timestamp_s=time.time(), exposure_s=self._exposure_s, metadata=meta)
                with self._cond:
                    if len(self._buf) >= self._capacity:
                        if self._mode is BufferMode.RING:
                            self._buf.popleft()
                            self._skipped += 1
                        else:  # FIFO/sequence overflow: the new frame is lost
                            self._skipped += 1
                            self._acquired += 1
                            self._cond.notify_all()
                            continue
                    self._buf.append(frame)
                    self._acquired += 1
                    self._cond.notify_all()
                if self._mode is BufferMode.SEQUENCE and self._acquired >= (self._n_frames or 0):
                    break
        except BaseException as exc:  # reported to the reader instead of dying silently
            self._error = exc
            with self._cond:
                self._cond.notify_all()

    def wait_for_frame(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._buf:
                if self._error is not None:
                    raise CameraError(f"{self.name}: frame source failed: {self._error!r}") \
                        from self._error
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (not self.running and not self._buf):
                    return False
                self._cond.wait(min(remaining, 0.05))
            return True

    def read_new(self) -> list[Frame]:
        with self._cond:
            frames = list(self._buf)
            self._buf.clear()
        return frames

    def status(self) -> CameraStatus:
        with self._cond:
            unread = len(self._buf)
        return CameraStatus(acquired=self._acquired, unread=unread, skipped=self._skipped,
                            buffer_size=self._capacity, running=self.running)

