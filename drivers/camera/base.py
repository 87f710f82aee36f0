"""Hardware-independent camera interface.

Every camera adapter (simulated sCMOS, PCO) implements :class:`Camera`. Frames carry the device's
own frame number so that dropped frames are detected from gaps, whichever adapter delivers them.
"""
from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class CameraError(RuntimeError):
    """A camera refused a setting or failed; the message names the camera and what went wrong."""


class FrameTimeout(CameraError):
    """No frame arrived within the requested time."""


class BufferMode(str, enum.Enum):
    SEQUENCE = "sequence"   # record N frames, then stop
    RING = "ring"           # overwrite the oldest frame when full (live view)
    FIFO = "fifo"           # keep every frame; overflow counts as skipped


class TriggerMode(str, enum.Enum):
    INTERNAL = "internal"   # free-running at the frame period
    SOFTWARE = "software"   # one frame per software_trigger()
    EXTERNAL = "external"   # hardware trigger input


@dataclass
class Frame:
    """One frame as the camera delivered it."""

    data: np.ndarray                 # (rows, cols), usually uint16
    frame_number: int                # device frame counter (gaps mean dropped frames)
    timestamp_s: float               # acquisition time (time.time() epoch seconds)
    exposure_s: float
    metadata: dict[str, Any] = field(default_factory=dict)  # state snapshot (kV, uA, stage z...)


@dataclass
class CameraStatus:
    acquired: int      # frames acquired since start
    unread: int        # frames in the buffer not yet read
    skipped: int       # frames lost (buffer overflow or detected frame-number gaps)
    buffer_size: int   # capacity of the buffer in frames
    running: bool


class Camera(abc.ABC):
    """Interface every camera adapter implements. Units: seconds, pixels, micrometres."""

    name: str = "camera"

    # --- static properties
    @property
    @abc.abstractmethod
    def sensor_shape(self) -> tuple[int, int]:
        """Full sensor size (rows, cols) in unbinned pixels."""

    @property
    @abc.abstractmethod
    def pixel_size_um(self) -> float:
        """Physical pixel pitch on the sensor (unbinned)."""

    @property
    @abc.abstractmethod
    def bit_depth(self) -> int: ...

    # --- settings
    @property
    @abc.abstractmethod
    def exposure_s(self) -> float: ...

    @exposure_s.setter
    @abc.abstractmethod
    def exposure_s(self, value: float) -> None: ...

    @property
    @abc.abstractmethod
    def roi(self) -> tuple[int, int, int, int]:
        """(row0, col0, rows, cols) in unbinned sensor pixels."""

    @roi.setter
    @abc.abstractmethod
    def roi(self, value: tuple[int, int, int, int]) -> None: ...

    @property
    @abc.abstractmethod
    def binning(self) -> int: ...

    @binning.setter
    @abc.abstractmethod
    def binning(self, value: int) -> None: ...

    @property
    @abc.abstractmethod
    def trigger_mode(self) -> TriggerMode: ...

    @trigger_mode.setter
    @abc.abstractmethod
    def trigger_mode(self, value: TriggerMode) -> None: ...

    @property
    def frame_period_s(self) -> float:
        """Time between frames when free-running; at least the exposure (drivers that know
        their readout time say more)."""
        return float(self.exposure_s)

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Shape of delivered frames after ROI and binning."""
        _, _, rows, cols = self.roi
        return rows // self.binning, cols // self.binning

    # --- acquisition
    @abc.abstractmethod
    def setup(self, buffer_mode: BufferMode = BufferMode.FIFO, buffer_frames: int = 64,
              n_frames: int | None = None) -> None:
        """Arm the recorder. ``n_frames`` is required for SEQUENCE mode."""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    def software_trigger(self) -> None: ...

    @abc.abstractmethod
    def wait_for_frame(self, timeout_s: float) -> bool:
        """Block until at least one unread frame is available; False on timeout."""

    @abc.abstractmethod
    def read_new(self) -> list[Frame]:
        """Return all unread frames, oldest first."""

    @abc.abstractmethod
    def status(self) -> CameraStatus: ...

    def close(self) -> None:
        """Release the camera; idempotent."""
        self.stop()

    # --- convenience
    def grab(self, n_frames: int = 1, timeout_s: float | None = None) -> list[Frame]:
        """Record exactly ``n_frames`` (sequence mode) and return them."""
        if n_frames < 1:
            raise CameraError(f"{self.name}: n_frames must be >= 1, got {n_frames}")
        timeout = timeout_s if timeout_s is not None else 10.0 + 3.0 * n_frames * self.exposure_s
        self.setup(BufferMode.SEQUENCE, buffer_frames=n_frames, n_frames=n_frames)
        self.start()
        frames: list[Frame] = []
        try:
            while len(frames) < n_frames:
                if not self.wait_for_frame(timeout):
                    raise FrameTimeout(
                        f"{self.name}: got {len(frames)} of {n_frames} frames, then none for "
                        f"{timeout:.1f} s")
                frames.extend(self.read_new())
        finally:
            self.stop()
        return frames[:n_frames]
