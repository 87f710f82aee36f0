"""Fitting published images into the fixed-length ``CAM:Image`` waveform.

EPICS waveforms have a fixed maximum element count (NELM), while the published image may be
raw, binned on request, or super-resolved by a restoration method (2x or 4x per axis). The
image is binned by whole factors until it fits, so ``ArraySizeY_RBV x ArraySizeX_RBV`` always
equals the element count a client receives and the image reshapes row-major without guessing.
Importing this module does not load EPICS.
"""
from __future__ import annotations

import numpy as np

# Room per axis over the sensor size: a 2x super-resolved frame is published at full
# resolution, a 4x one binned by 2.
SCALE_ROOM_PER_AXIS = 2
# 64 MiB of float32: below the 100 MB EPICS_CA_MAX_ARRAY_BYTES the IOC configures.
MAX_IMAGE_ELEMENTS = 1 << 24


def image_elements(sensor_shape: tuple[int, int]) -> int:
    """NELM of the image waveform for a sensor of ``sensor_shape`` (rows, cols)."""
    rows, cols = (int(n) for n in sensor_shape)
    full = rows * cols
    return max(full, min(full * SCALE_ROOM_PER_AXIS ** 2, MAX_IMAGE_ELEMENTS))


def bin_mean(data: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks; trailing rows/columns that do not fill a block are
    dropped (as areaDetector's binning does)."""
    if factor == 1:
        return data
    r, c = (data.shape[0] // factor) * factor, (data.shape[1] // factor) * factor
    return data[:r, :c].reshape(r // factor, factor, c // factor, factor).mean(axis=(1, 3))


def fit_image(data: np.ndarray, binning: int, max_elements: int) -> tuple[np.ndarray, int]:
    """The image to publish and the bin factor applied to ``data``.

    ``binning`` (the client's request, >= 1) is the smallest factor used; larger whole factors
    are taken until the image has at most ``max_elements`` pixels. Returns a C-contiguous
    float32 (rows, cols) array.
    """
    if data.ndim != 2 or min(data.shape) < 1:
        raise ValueError(f"an image must be a non-empty 2-D array, got shape {data.shape}")
    if max_elements < 1:
        raise ValueError(f"max_elements must be >= 1, got {max_elements}")
    rows, cols = data.shape
    factor = max(1, int(binning))
    while (rows // factor) * (cols // factor) > max_elements:
        factor += 1
    factor = min(factor, rows, cols)   # at least one pixel survives
    out = bin_mean(data, factor)
    if out.size > max_elements:
        raise ValueError(f"a {rows} x {cols} image cannot be binned into {max_elements} elements")
    return np.ascontiguousarray(out, dtype=np.float32), factor
