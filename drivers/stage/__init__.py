"""Stage drivers (PI GCS ASCII controllers)."""
from ..transport import ProtocolError, TransportClosed, TransportError, TransportTimeout
from .gcs import (
                  GCS_ERRORS,
                  GcsAxis,
                  GcsController,
                  GcsError,
                  StageLimitError,
                  StageTimeout,
                  parse_axis_values,
                  parse_bool,
                  parse_error_code,
                  parse_float,
                  parse_motion_mask,
                  parse_ready,
)

__all__ = ["GCS_ERRORS", "GcsAxis", "GcsController", "GcsError", "ProtocolError",
           "StageLimitError", "StageTimeout", "TransportClosed", "TransportError",
           "TransportTimeout", "parse_axis_values", "parse_bool", "parse_error_code",
           "parse_float", "parse_motion_mask", "parse_ready"]
