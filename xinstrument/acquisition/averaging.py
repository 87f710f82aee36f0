"""Frame averaging: plain mean and an outlier-rejecting mean that removes zingers.

Zingers are single-frame spikes from X-rays (or scattered secondaries) depositing directly in the
sensor; they hit one pixel in one frame, so a per-pixel robust statistic over the averaged series
rejects them while the mean of the remaining values keeps the full noise reduction.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["FrameAverager", "average_frames", "mean_rejecting_outliers"]

# 1.4826 * MAD estimates the standard deviation of a normal distribution
_MAD_TO_SIGMA = 1.4826


def _as_stack(frames: Sequence[np.ndarray] | np.ndarray, what: str = "frames") -> np.ndarray:
    if isinstance(frames, np.ndarray):
        stack = frames
        if stack.ndim == 2:
            stack = stack[None]
    else:
        frames = list(frames)
        if not frames:
            raise ValueError(f"{what}: averaging needs at least 1 frame, got 0")
        shapes = {np.shape(f) for f in frames}
        if len(shapes) != 1:
            raise ValueError(f"{what}: frames have different shapes {sorted(shapes)}")
        stack = np.stack([np.asarray(f) for f in frames])
    if stack.ndim != 3:
        raise ValueError(f"{what}: expected 2-D frames, got an array of shape {stack.shape}")
    if stack.shape[0] < 1:
        raise ValueError(f"{what}: averaging needs at least 1 frame, got 0")
    return stack


def mean_rejecting_outliers(frames: Sequence[np.ndarray] | np.ndarray, z_threshold: float = 5.0,
                            ) -> tuple[np.ndarray, int]:
    """Per-pixel mean after rejecting values far from the per-pixel median.

    The noise scale per pixel is the larger of the per-pixel MAD across frames and a floor:
    the median of that MAD scale over the whole frame (so a pixel whose few samples happen to
    agree does not reject ordinary noise). Values with ``|x - median| > z_threshold * scale``
    are excluded from the mean.

    Returns
    -------
    (mean as float32, number of rejected samples)
    """
    stack = _as_stack(frames)
    n = stack.shape[0]
    if n < 3:
        raise ValueError(f"outlier rejection needs at least 3 frames to tell a zinger from "
                         f"signal, got {n}")
    if not z_threshold > 0:
        raise ValueError(f"z_threshold must be > 0, got {z_threshold}")
    data = stack.astype(np.float32, copy=False)
    med = np.median(data, axis=0)
    dev = np.abs(data - med)
    scale = _MAD_TO_SIGMA * np.median(dev, axis=0)
    floor = float(np.median(scale))
    if floor <= 0:  # noiseless data: any deviation from the median would otherwise be "infinite"
        floor = float(np.finfo(np.float32).eps * max(1.0, float(np.abs(med).max())))
    np.maximum(scale, floor, out=scale)
    keep = dev <= z_threshold * scale
    n_keep = keep.sum(axis=0)
    total = np.where(keep, data, 0.0).sum(axis=0, dtype=np.float64)
    # the median is always kept (dev == 0 for the median sample with odd n), so n_keep >= 1
    out = np.where(n_keep > 0, total / np.maximum(n_keep, 1), med).astype(np.float32)
    return out, int(keep.size - int(n_keep.sum()))


def average_frames(frames: Sequence[np.ndarray] | np.ndarray, reject_outliers: bool = False,
                   z_threshold: float = 5.0) -> np.ndarray:
    """Average a series of frames (darks, flats, projections) to float32.

    Parameters
    ----------
    frames : sequence of 2-D arrays or a (n, rows, cols) array; n >= 1
    reject_outliers : use :func:`mean_rejecting_outliers` (needs n >= 3)
    """
    if reject_outliers:
        return mean_rejecting_outliers(frames, z_threshold)[0]
    stack = _as_stack(frames)
    return stack.mean(axis=0, dtype=np.float64).astype(np.float32)


class FrameAverager:
    """Accumulates frames one at a time and yields the average every ``n_frames`` frames.

    The plain mean keeps a float64 running sum (one frame of memory); the outlier-rejecting mean
    has to keep the ``n_frames`` frames of the group.
    """

    def __init__(self, n_frames: int, reject_outliers: bool = False,
                 z_threshold: float = 5.0) -> None:
        if int(n_frames) != n_frames or n_frames < 1:
            raise ValueError(f"averaging count must be an integer >= 1, got {n_frames!r}")
        if reject_outliers and n_frames < 3:
            raise ValueError(f"outlier rejection needs at least 3 frames per average, got "
                             f"{n_frames}")
        self.n_frames = int(n_frames)
        self.reject_outliers = bool(reject_outliers)
        self.z_threshold = float(z_threshold)
        self.rejected_samples = 0
        self._sum: np.ndarray | None = None
        self._kept: list[np.ndarray] = []
        self._count = 0

    def _accumulator_dtype(self, dtype: np.dtype) -> np.dtype:
        # integer sums are exact and cheaper than float64 (half the memory traffic for uint16)
        if dtype.kind == "u" and dtype.itemsize <= 2 and self.n_frames <= 65537:
            return np.dtype(np.uint32)
        if dtype.kind in "iu" and dtype.itemsize <= 4:
            return np.dtype(np.int64)
        return np.dtype(np.float64)

    @property
    def pending(self) -> int:
        """Frames accumulated toward the next average."""
        return self._count

    def reset(self) -> None:
        self._sum = None
        self._kept = []
        self._count = 0

    def add(self, frame: np.ndarray) -> np.ndarray | None:
        """Add one frame; return the float32 average when the group is complete, else None."""
        frame = np.asarray(frame)
        if frame.ndim != 2:
            raise ValueError(f"expected a 2-D frame, got shape {frame.shape}")
        ref = self._sum if self._sum is not None else (self._kept[0] if self._kept else None)
        if ref is not None and ref.shape != frame.shape:
            raise ValueError(f"frame shape {frame.shape} differs from the group's {ref.shape}")
        if self.reject_outliers:
            self._kept.append(frame)
        elif self._sum is None:
            self._sum = frame.astype(self._accumulator_dtype(frame.dtype))
        else:
            np.add(self._sum, frame, out=self._sum)
        self._count += 1
        if self._count < self.n_frames:
            return None
        if self.reject_outliers:
            out, rejected = mean_rejecting_outliers(self._kept, self.z_threshold)
            self.rejected_samples += rejected
        else:
            assert self._sum is not None
            out = np.divide(self._sum, self.n_frames, dtype=np.float32)
        self.reset()
        return out

    def extend(self, frames: Iterable[np.ndarray]) -> list[np.ndarray]:
        return [a for a in (self.add(f) for f in frames) if a is not None]
