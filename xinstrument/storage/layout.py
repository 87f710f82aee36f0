"""Where everything lives in an xinstrument HDF5 file (NeXus NXtomo + Data Exchange).

One physical copy of every measured frame is kept, in write order, at
``/entry/instrument/detector/data`` with its NXtomo ``image_key``. Data Exchange readers get
``/exchange/data|data_white|data_dark`` as virtual datasets mapping onto those frames (built
when the file is finalised: at ``close()`` or by :func:`xinstrument.storage.recover`), so frames
are never written twice. Restored frames live at ``/entry/restored/data`` and are hard-linked to
``/exchange/data_restored`` from the start.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMAT_NAME = "xinstrument-scan"
# 2: every stack says whether it is corrected (@corrected); measured frames are always the raw
# (averaged) camera signal; corrected frames live in their own stack with their references.
FORMAT_VERSION = 2

ENTRY = "/entry"
DETECTOR = "/entry/instrument/detector"
SOURCE = "/entry/instrument/source"
SAMPLE = "/entry/sample"
NXDATA = "/entry/data"
RESTORED = "/entry/restored"
CORRECTED = "/entry/corrected"
FOCUS_CURVE = "/entry/focus_curve"
EXCHANGE = "/exchange"
DATA = DETECTOR + "/data"
# Commit counters: [measured frames, restored frames] fully flushed. A frame counts for readers
# only once this is updated, so a follower or a crash never sees a half-written frame.
PROGRESS = "/entry/xi_progress"
METADATA_JSON = "/entry/xi_metadata"

IMAGE_KEY_PROJECTION = 0
IMAGE_KEY_FLAT = 1
IMAGE_KEY_DARK = 2
IMAGE_KEYS = {"projections": IMAGE_KEY_PROJECTION, "flats": IMAGE_KEY_FLAT,
              "darks": IMAGE_KEY_DARK}
EXCHANGE_NAMES = {IMAGE_KEY_PROJECTION: "data", IMAGE_KEY_FLAT: "data_white",
                  IMAGE_KEY_DARK: "data_dark"}

# Longest method / profile name stored per restored frame (fixed-length strings are SWMR-safe).
NAME_BYTES = 128


@dataclass(frozen=True)
class FrameField:
    """A per-frame scalar stored beside the detector data."""

    name: str       # keyword in ScanWriter.append and key in ScanReader.frame_metadata
    path: str       # HDF5 path
    dtype: str
    units: str | None
    fill: float | int


FRAME_FIELDS: tuple[FrameField, ...] = (
    FrameField("image_key", DETECTOR + "/image_key", "int32", None, -1),
    FrameField("theta_deg", SAMPLE + "/rotation_angle", "float64", "deg", np.nan),
    FrameField("voltage_kv", SOURCE + "/voltage", "float64", "kV", np.nan),
    FrameField("current_ua", SOURCE + "/current", "float64", "uA", np.nan),
    FrameField("exposure_s", DETECTOR + "/count_time", "float64", "s", np.nan),
    FrameField("frames_averaged", DETECTOR + "/frames_averaged", "int32", None, 0),
    FrameField("focus_z_um", SAMPLE + "/focus_z", "float64", "um", np.nan),
    FrameField("timestamp_s", DETECTOR + "/timestamp", "float64", "s", np.nan),
)
FIELD_BY_NAME = {f.name: f for f in FRAME_FIELDS}

CORRECTED_FIELDS = ("source_index", "dark_index", "flat_index")
RESTORED_SOURCE_INDEX = RESTORED + "/source_index"
RESTORED_METHOD = RESTORED + "/method"
RESTORED_PROFILE = RESTORED + "/profile"
RESTORED_EXTRAS = RESTORED + "/extras"
# Names under /entry/restored that are not user extras.
RESTORED_RESERVED = {"data", "source_index", "method", "profile", "extras"}

META_CHUNK_ROWS = 1024
