"""The one frame type of the product, and the reference set that corrected it.

A :class:`Frame` is what every plan produces and every client receives (``frame_ready``
signal, live view, recording sink, EPICS image PV): one averaged frame with everything needed
to interpret it (device frame numbers, times, exposure, tube kV / uA, focus z, rotation angle,
whether it is flat-field corrected and by which references, the restoration method, scale and
pixel, the fidelity report).
"""
from __future__ import annotations

import itertools
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .correction import FlatFieldCorrector, build_defect_map

__all__ = ["Frame", "ReferenceSet"]

_ids = itertools.count(1)
_ids_lock = threading.Lock()


def _next_id() -> int:
    with _ids_lock:
        return next(_ids)


@dataclass(eq=False)
class ReferenceSet:
    """Dark and flat references (averaged ADU) and the correction they define.

    ``id`` is unique in the process: the recording sink writes each set once and stores, beside
    every corrected frame, the file indices of the dark and flat that corrected it.
    """

    dark: np.ndarray
    flat: np.ndarray
    dark_frames_averaged: int = 1
    flat_frames_averaged: int = 1
    exposure_s: float = math.nan
    voltage_kv: float = math.nan          # tube output while the flat was taken
    current_ua: float = math.nan
    theta_deg: float = 0.0
    defect_map: np.ndarray | None = None
    id: int = field(default_factory=_next_id)
    _corrector: FlatFieldCorrector | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.dark = np.asarray(self.dark, dtype=np.float32)
        self.flat = np.asarray(self.flat, dtype=np.float32)
        if self.dark.shape != self.flat.shape or self.dark.ndim != 2:
            raise ValueError(f"dark {self.dark.shape} and flat {self.flat.shape} must be two "
                             "frames of one shape")
        if self.defect_map is None:
            self.defect_map = build_defect_map(self.dark, self.flat)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.dark.shape)  # type: ignore[return-value]

    @property
    def corrector(self) -> FlatFieldCorrector:
        """(raw - dark) / (flat - dark) with the defect map: raw ADU -> transmission."""
        if self._corrector is None:
            self._corrector = FlatFieldCorrector(self.dark, self.flat,
                                                 defect_map=self.defect_map)
        return self._corrector

    def correct(self, raw: np.ndarray) -> np.ndarray:
        return np.asarray(self.corrector(raw), dtype=np.float32)

    __call__ = correct      # a ReferenceSet is the pipeline's corrector


@dataclass(eq=False)
class Frame:
    """One averaged frame and its acquisition context.

    ``data`` is float32 transmission when ``corrected`` (``raw`` then holds the averaged ADU it
    came from), averaged ADU otherwise. ``restored`` is ``restoration_scale`` times larger per
    axis for super-resolving methods. ``fidelity`` is the fidelity guard's report (its own
    object; stored by the sink as given).
    """

    data: np.ndarray
    index: int = 0                          # output counter within its plan, 0-based
    frames_averaged: int = 1
    exposure_s: float = math.nan
    timestamp_s: float = math.nan           # epoch time of the last camera frame of the group
    voltage_kv: float = math.nan            # tube readback with the last frame
    current_ua: float = math.nan
    focus_z_um: float = math.nan
    theta_deg: float = 0.0
    first_frame_number: int = -1            # device frame numbers of the averaged group
    last_frame_number: int = -1
    frame_numbers: list[int] = field(default_factory=list)
    image_key: int = 0                      # NXtomo: 0 projection, 1 flat, 2 dark
    corrected: bool = False
    references: ReferenceSet | None = None  # what corrected it
    raw: np.ndarray | None = None           # the averaged ADU before correction
    restored: np.ndarray | None = None
    restoration_method: str | None = None
    restoration_profile: str | None = None
    restoration_scale: int = 1
    restored_pixel_size_um: float | None = None
    fidelity: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)   # last camera frame's snapshot

    def __post_init__(self) -> None:
        if self.frame_numbers and self.first_frame_number < 0:
            self.first_frame_number = int(self.frame_numbers[0])
            self.last_frame_number = int(self.frame_numbers[-1])
        m = self.metadata
        for name, keys in (("voltage_kv", ("voltage_kv",)), ("current_ua", ("current_ua",)),
                           ("focus_z_um", ("focus_z_um", "stage_um"))):
            if math.isnan(getattr(self, name)):
                for k in keys:
                    v = m.get(k)
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        setattr(self, name, float(v))
                        break
        v = m.get("theta_deg")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and self.theta_deg == 0.0:
            self.theta_deg = float(v)

    @property
    def display(self) -> np.ndarray:
        """What a live view shows: the restored frame if there is one."""
        return self.restored if self.restored is not None else self.data

    @property
    def measured_adu(self) -> np.ndarray:
        """The averaged camera signal (ADU) of this frame, corrected or not."""
        return self.raw if (self.corrected and self.raw is not None) else self.data
