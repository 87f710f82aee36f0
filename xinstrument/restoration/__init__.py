"""Restoration of thick-scintillator frames toward thin-scintillator resolution.

Pure functions and small classes over arrays/tensors: classical deconvolution (Wiener,
MTF-ratio inverse, Richardson-Lucy), one U-Net family for the learned methods, their forward
operators and samplers, training, the real-time :class:`Restorer` stage and quality metrics.
"""
from .classical import (
    mtf_ratio_inverse,
    power_law_signal_fit,
    richardson_lucy,
    wiener,
    wiener_filter,
)
from .metrics import high_frequency_psd_gain, psnr, radial_psd, ssim
from .physics import DetectorPhysics
from .stage import (
    CLASSICAL_METHODS,
    LEARNED_METHODS,
    METHODS,
    Restorer,
    available_methods,
    tiled_apply,
)

__all__ = [
    "CLASSICAL_METHODS",
    "LEARNED_METHODS",
    "METHODS",
    "DetectorPhysics",
    "Restorer",
    "available_methods",
    "high_frequency_psd_gain",
    "mtf_ratio_inverse",
    "power_law_signal_fit",
    "psnr",
    "radial_psd",
    "richardson_lucy",
    "ssim",
    "tiled_apply",
    "wiener",
    "wiener_filter",
]
