"""X-ray tube drivers (Hamamatsu microfocus sources)."""
from ..transport import ProtocolError, TransportClosed, TransportError, TransportTimeout
from .hamamatsu import (
                        HamamatsuTextTube,
                        HamamatsuTube,
                        TubeCommandError,
                        TubeError,
                        TubeFault,
                        TubeStatus,
                        all_xray_off,
                        parse_ints,
                        parse_reply,
                        parse_state,
)
from .tables import DIALECTS, MODELS, Dialect, TubeLimitError, TubeLimits, TubeModel, TubeState

__all__ = ["DIALECTS", "MODELS", "Dialect", "HamamatsuTextTube", "HamamatsuTube", "ProtocolError", "TransportClosed",
           "TransportError", "TransportTimeout", "TubeCommandError", "TubeError", "TubeFault",
           "TubeLimitError", "TubeLimits", "TubeModel", "TubeState", "TubeStatus",
           "all_xray_off", "parse_ints", "parse_reply", "parse_state"]
