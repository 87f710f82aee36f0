"""Camera interface and adapters (simulated sCMOS, PCO)."""
from .base import BufferMode, Camera, CameraError, CameraStatus, Frame, FrameTimeout, TriggerMode

__all__ = ["BufferMode", "Camera", "CameraError", "CameraStatus", "Frame", "FrameTimeout",
           "TriggerMode"]
