"""Shared Fourier-domain helpers: input checking, padding, radial transfer functions on rfft2 grids.

Conventions used throughout :mod:`xinstrument.restoration`:

- images are float32 tensors of shape (B, H, W) in transmission units (flat = 1);
- spectra use the unnormalised ``torch.fft.rfft2``; a power spectrum is ``|X|^2 / (H W)`` so that
  white noise of variance s^2 has power s^2 at every frequency, i.e. power spectra are in
  transmission^2 * px^2, the same units as NPS(f) = NNPS(f) * mean^2 with a 1-px pitch.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "as_batch",
    "crop_frames",
    "default_device",
    "float64_reference",
    "pad_frames",
    "radial_frequency_rfft2",
    "radial_transfer_rfft2",
    "restore_type",
    "trusted_frames",
]

# Opt-in switches of as_batch, per thread/task: the real-time stage's reference and hot path.
_KEEP_FLOAT64: contextvars.ContextVar[bool] = contextvars.ContextVar("keep_float64", default=False)
_TRUSTED: contextvars.ContextVar[bool] = contextvars.ContextVar("trusted_frames", default=False)


@contextlib.contextmanager
def float64_reference() -> Iterator[None]:
    """Inside, :func:`as_batch` keeps float64 input in float64 (the CPU float64 reference that a
    fast path is checked against); elsewhere every frame becomes float32."""
    token = _KEEP_FLOAT64.set(True)
    try:
        yield
    finally:
        _KEEP_FLOAT64.reset(token)


@contextlib.contextmanager
def trusted_frames() -> Iterator[None]:
    """Inside, :func:`as_batch` skips its non-finite check: on a GPU that reduction is a
    device-to-host synchronisation per call. The caller checks the output instead."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def default_device(device: str | torch.device | None = None) -> torch.device:
    """The device to compute on: ``device`` if given, else CUDA when present, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_batch(
    frames: Any, name: str = "frames", device: str | torch.device | None = None
) -> tuple[torch.Tensor, bool]:
    """Check ``frames`` and return a float32 (B, H, W) tensor plus whether the input was 2-D.

    Raises ``TypeError`` for non-array input or a non-real dtype and ``ValueError`` for a wrong
    number of dimensions, an empty frame or non-finite values.
    """
    if isinstance(frames, torch.Tensor):
        tensor = frames.detach()
    elif isinstance(frames, np.ndarray):
        if frames.dtype.kind not in "fiu" or frames.dtype == np.bool_:
            raise TypeError(f"{name}: dtype {frames.dtype} is not a real numeric type")
        tensor = torch.from_numpy(np.ascontiguousarray(frames))
    else:
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(frames).__name__}")
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name}: dtype {tensor.dtype} is not a real numeric type")
    if tensor.ndim not in (2, 3):
        raise ValueError(f"{name}: expected shape (H, W) or (B, H, W), got {tuple(tensor.shape)}")
    if min(tensor.shape) == 0:
        raise ValueError(f"{name}: empty array of shape {tuple(tensor.shape)}")
    single = tensor.ndim == 2
    if single:
        tensor = tensor.unsqueeze(0)
    dtype = torch.float64 if (_KEEP_FLOAT64.get() and tensor.dtype == torch.float64) else torch.float32
    tensor = tensor.to(device=default_device(device) if device is not None else tensor.device,
                       dtype=dtype)
    if _TRUSTED.get():
        return tensor, single
    # A NaN or inf anywhere makes the sum non-finite: one reduction instead of a mask pass;
    # only a non-finite sum (or a finite-value overflow) pays for the per-pixel check.
    if not bool(torch.isfinite(tensor.sum())) and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name}: {bad} non-finite values (NaN or inf)")
    return tensor, single


def restore_type(result: torch.Tensor, like: Any, single: bool) -> Any:
    """Return ``result`` as the caller's type: numpy in -> numpy out, tensor in -> tensor out."""
    if single:
        result = result[0]
    if isinstance(like, np.ndarray):
        return result.detach().cpu().numpy().astype(np.float32, copy=False)
    return result


def radial_frequency_rfft2(
    shape: tuple[int, int], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Radial frequency (cycles/pixel) of every bin of the rfft2 grid of an image of ``shape``.

    Cached per shape and device (the real-time stage sees the same frame size every call);
    callers must not modify the returned tensor in place.
    """
    return _radial_frequency(int(shape[0]), int(shape[1]), str(torch.device(device)))


@lru_cache(maxsize=16)
def _radial_frequency(h: int, w: int, device: str) -> torch.Tensor:
    fy = torch.fft.fftfreq(h, device=device, dtype=torch.float64)
    fx = torch.fft.rfftfreq(w, device=device, dtype=torch.float64)
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def fast_fft_size(n: int) -> int:
    """Smallest integer >= n whose prime factors are 2, 3 and 5 (fast for every FFT library;
    a large prime factor, e.g. 2078 = 2 x 1039, makes an FFT several times slower)."""
    m = max(int(n), 1)
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _check_curve(frequency_cy_per_px: Any, values: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(frequency_cy_per_px, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if f.ndim != 1 or v.ndim != 1 or f.shape != v.shape or f.size < 2:
        raise ValueError(
            f"{name}: frequency and values must be 1-D of equal length >= 2, got {f.shape} and {v.shape}"
        )
    if not (np.isfinite(f).all() and np.isfinite(v).all()):
        raise ValueError(f"{name}: non-finite values in the radial curve")
    if np.any(np.diff(f) <= 0):
        raise ValueError(f"{name}: frequency_cy_per_px must be strictly increasing")
    if f[0] > 0 or f[-1] < 0.5:
        raise ValueError(
            f"{name}: frequency grid must cover 0..0.5 cy/px, covers {f[0]:.3g}..{f[-1]:.3g}"
        )
    return f, v


def radial_transfer_rfft2(
    frequency_cy_per_px: Any,
    values: Any,
    shape: tuple[int, int],
    device: torch.device | str = "cpu",
    name: str = "curve",
) -> torch.Tensor:
    """Interpolate a 1-D radial curve onto the rfft2 grid of an image of ``shape``.

    Linear interpolation in radial frequency (cycles/pixel); the corners beyond the last grid
    point (up to 0.707 cy/px) take the last value, since the curves are measured to Nyquist only.
    Returns float32 of shape (H, W // 2 + 1).
    """
    f, v = _check_curve(frequency_cy_per_px, values, name)
    return _transfer(f.tobytes(), v.tobytes(), int(shape[0]), int(shape[1]), str(torch.device(device)))


@lru_cache(maxsize=32)
def _transfer(f_bytes: bytes, v_bytes: bytes, h: int, w: int, device: str) -> torch.Tensor:
    f = np.frombuffer(f_bytes, dtype=np.float64)
    v = np.frombuffer(v_bytes, dtype=np.float64)
    radius = _radial_frequency(h, w, device)
    ft = torch.as_tensor(f.copy(), device=device)
    vt = torch.as_tensor(v.copy(), device=device)
    r = radius.clamp(max=float(f[-1])).reshape(-1)
    idx = torch.searchsorted(ft, r, right=True).clamp(1, ft.numel() - 1)
    f0, f1 = ft[idx - 1], ft[idx]
    wgt = (r - f0) / (f1 - f0)
    out = vt[idx - 1] * (1 - wgt) + vt[idx] * wgt
    return out.reshape(radius.shape).to(torch.float32)


def pad_frames(
    frames: torch.Tensor, pad_px: int, mode: str = "reflect", fast: bool = False
) -> torch.Tensor:
    """Pad (B, H, W) frames by ``pad_px`` on every side; with ``fast`` the bottom/right get a
    few more pixels so that each side becomes a :func:`fast_fft_size`.

    ``reflect`` mirrors about the edge pixel; where the frame is too small for that, edge values
    are repeated instead (``replicate``), which is the other boundary the FFT methods accept.
    Undo with :func:`crop_frames` (pad_px and the original size).
    """
    if pad_px < 0:
        raise ValueError(f"pad_px must be >= 0, got {pad_px}")
    if mode not in ("reflect", "replicate"):
        raise ValueError(f"padding mode must be 'reflect' or 'replicate', got {mode!r}")
    h, w = frames.shape[-2:]
    extra_h = fast_fft_size(h + 2 * pad_px) - h - 2 * pad_px if fast else 0
    extra_w = fast_fft_size(w + 2 * pad_px) - w - 2 * pad_px if fast else 0
    if pad_px == 0 and extra_h == 0 and extra_w == 0:
        return frames
    if mode == "reflect" and max(pad_px + extra_h, pad_px + extra_w) >= min(h, w):
        mode = "replicate"
    pads = (pad_px, pad_px + extra_w, pad_px, pad_px + extra_h)
    return F.pad(frames.unsqueeze(1), pads, mode=mode).squeeze(1)


def crop_frames(frames: torch.Tensor, pad_px: int, size: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`pad_frames`: the (H, W) = ``size`` window starting at ``pad_px``."""
    return frames[..., pad_px:pad_px + size[0], pad_px:pad_px + size[1]]
