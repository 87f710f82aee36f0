"""Protocol-exact device emulators (loopback TCP or pty) for tests and the digital twin."""
from ._server import LINK_FAULTS, EmulatorBase
from .gcs import AxisSpec, GcsEmulator
from .tube import TubeEmulator

__all__ = ["LINK_FAULTS", "AxisSpec", "EmulatorBase", "GcsEmulator", "TubeEmulator"]
