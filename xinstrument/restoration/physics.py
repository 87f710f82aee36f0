"""Detector physics used by every restoration method: MTF-ratio blur and the thick detector's
quantum noise, taken from a calibration profile.

Degradation (paper 001 eq. 1): ``x_b = F^-1[(MTF_LR / MTF_HR) . F{x_0}]``. Noise: the thick
detector's noise power at local transmission T and relative dose d (detected quanta of the flat
divided by the profile's ``nnps_mean_signal``) is ``NNPS_LR(f) * T / d`` in transmission^2 px^2
(quantum noise: variance proportional to quanta, normalised by the flat's quanta squared).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._fourier import _check_curve, crop_frames, pad_frames, radial_transfer_rfft2

__all__ = ["DetectorPhysics"]

# Frames are blurred with reflect padding this wide (the ratio's kernel is a few px wide).
BLUR_PAD_PX = 16


@dataclass(frozen=True)
class DetectorPhysics:
    """The arrays of a :class:`~xinstrument.profiles.DetectorProfile` that restoration needs.

    Attributes
    ----------
    frequency_cy_per_px, mtf_ratio : radial grid (0..>=0.5 cy/px) and MTF_LR / MTF_HR on it.
    nnps_lr : thick-detector NNPS (px^2) on the same grid, or None.
    nnps_mean_signal : mean detected quanta per pixel of the flat where NNPS was measured.
    psf : odd 2-D kernel with thick = thin (*) psf, normalised to sum 1.
    """

    frequency_cy_per_px: np.ndarray
    mtf_ratio: np.ndarray
    nnps_lr: np.ndarray | None
    nnps_mean_signal: float | None
    psf: np.ndarray

    def __post_init__(self) -> None:
        _check_curve(self.frequency_cy_per_px, self.mtf_ratio, "mtf_ratio")
        if np.any(np.asarray(self.mtf_ratio) < 0):
            raise ValueError("mtf_ratio: negative values")
        if self.nnps_lr is not None:
            _check_curve(self.frequency_cy_per_px, self.nnps_lr, "nnps_lr")
            if np.any(np.asarray(self.nnps_lr) < 0):
                raise ValueError("nnps_lr: negative noise power")
        if self.nnps_mean_signal is not None and not (
            math.isfinite(self.nnps_mean_signal) and self.nnps_mean_signal > 0
        ):
            raise ValueError(f"nnps_mean_signal must be > 0, got {self.nnps_mean_signal!r}")
        psf = np.asarray(self.psf, dtype=np.float64)
        if psf.ndim != 2 or psf.shape[0] % 2 == 0 or psf.shape[1] % 2 == 0:
            raise ValueError(f"psf: must be 2-D with odd sides, got {psf.shape}")
        if not np.isfinite(psf).all() or np.any(psf < 0) or psf.sum() <= 0:
            raise ValueError("psf: must be finite, non-negative and not all zero")

    @classmethod
    def from_profile(cls, profile: Any) -> DetectorPhysics:
        """Take the arrays from a DetectorProfile (or any object with the same attributes)."""
        missing = [
            a for a in ("frequency_cy_per_px", "mtf_ratio", "psf") if getattr(profile, a, None) is None
        ]
        if missing:
            raise ValueError(f"profile {getattr(profile, 'name', '?')!r} lacks {missing}")
        nnps = getattr(profile, "nnps_lr", None)
        mean_signal = getattr(profile, "nnps_mean_signal", None)
        return cls(
            frequency_cy_per_px=np.asarray(profile.frequency_cy_per_px, dtype=np.float64),
            mtf_ratio=np.asarray(profile.mtf_ratio, dtype=np.float64),
            nnps_lr=None if nnps is None else np.asarray(nnps, dtype=np.float64),
            nnps_mean_signal=None if mean_signal is None else float(mean_signal),
            psf=np.asarray(profile.psf, dtype=np.float64),
        )

    @property
    def has_noise_model(self) -> bool:
        return self.nnps_lr is not None and self.nnps_mean_signal is not None

    def ratio_rfft(self, shape: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
        """MTF ratio on the rfft2 grid of ``shape`` (float32)."""
        return radial_transfer_rfft2(self.frequency_cy_per_px, self.mtf_ratio, shape, device, "mtf_ratio")

    def nnps_rfft(self, shape: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
        """Thick-detector NNPS (px^2) on the rfft2 grid of ``shape`` (float32)."""
        if self.nnps_lr is None:
            raise ValueError("this profile has no NNPS (nnps_lr); the noise model is unavailable")
        return radial_transfer_rfft2(self.frequency_cy_per_px, self.nnps_lr, shape, device, "nnps_lr")

    def blur(self, x: torch.Tensor, pad_px: int = BLUR_PAD_PX) -> torch.Tensor:
        """``x_b = F^-1[ratio . F{x}]`` for (B, H, W) tensors, reflect-padded (paper 001 eq. 1)."""
        xp = pad_frames(x, pad_px, fast=True)
        shape = tuple(xp.shape[-2:])
        ratio = self.ratio_rfft(shape, x.device).to(x.dtype)
        out = torch.fft.irfft2(torch.fft.rfft2(xp) * ratio, s=shape)
        return crop_frames(out, pad_px, tuple(x.shape[-2:]))

    def colored_noise(
        self, shape: tuple[int, int, int], generator: torch.Generator, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Gaussian noise with power spectrum NNPS_LR(f) (flat at calibration dose), (B, H, W)."""
        white = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        amp = torch.sqrt(self.nnps_rfft(tuple(shape[-2:]), device))
        return torch.fft.irfft2(torch.fft.rfft2(white) * amp, s=tuple(shape[-2:]))

    def degrade(
        self, hr: torch.Tensor, generator: torch.Generator, dose_ratio: torch.Tensor | float = 1.0
    ) -> torch.Tensor:
        """Synthesise thick-detector frames from noise-free thin-detector frames (B, H, W).

        Blur with the MTF ratio, then add quantum noise whose local variance follows the blurred
        transmission (Poisson-like: variance ~ T / dose) and whose spectrum is the NNPS.
        """
        if not self.has_noise_model:
            raise ValueError("this profile has no NNPS / nnps_mean_signal; cannot synthesise noise")
        xb = self.blur(hr)
        noise = self.colored_noise(tuple(hr.shape), generator, hr.device)
        d = torch.as_tensor(dose_ratio, dtype=hr.dtype, device=hr.device).reshape(-1, 1, 1)
        return xb + torch.sqrt(xb.clamp(min=0) / d) * noise
