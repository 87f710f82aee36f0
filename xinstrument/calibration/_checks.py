"""Input checks shared by the calibration functions: every bad array is a clear ValueError."""
from __future__ import annotations

import numpy as np


def as_image(
    image: object,
    name: str = "image",
    min_shape: tuple[int, int] = (1, 1),
) -> np.ndarray:
    """Return ``image`` as a finite float64 2-D array or raise a ValueError naming the fault.

    Accepts integer and floating dtypes; refuses bool, complex, object and string arrays because
    they are not detector counts.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype == np.bool_ or not (
        np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    ):
        raise TypeError(f"{name} must have an integer or floating dtype (detector counts), got dtype {image.dtype}")
    if image.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, cols), got shape {image.shape}")
    if image.shape[0] < min_shape[0] or image.shape[1] < min_shape[1]:
        raise ValueError(
            f"{name} is too small: shape {image.shape}, need at least {min_shape[0]}x{min_shape[1]} pixels"
        )
    out = np.asarray(image, dtype=np.float64)
    if not np.all(np.isfinite(out)):
        bad = np.argwhere(~np.isfinite(out))[0]
        raise ValueError(f"{name} contains NaN/inf (first at row {bad[0]}, col {bad[1]})")
    return out


def positive(value: object, name: str) -> float:
    """Return ``value`` as a positive finite float or raise a ValueError naming it."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v
