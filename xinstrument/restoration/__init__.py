"""Restoration of thick-scintillator frames toward thin-scintillator resolution.

Pure functions and small classes over arrays/tensors: classical deconvolution (Wiener,
MTF-ratio inverse, Richardson-Lucy), one U-Net family for the learned methods, their forward
operators and samplers, training, super-resolution below the camera pixel (:mod:`.superres`),
the real-time :class:`Restorer` stage and quality metrics.
"""
from .classical import (
    mtf_ratio_inverse,
    power_law_signal_fit,
    richardson_lucy,
    wiener,
    wiener_filter,
)
from .diffusion import cold_degrade, cosine_alpha_bar, sde_forward, sde_transfer, sr3_forward
from .metrics import high_frequency_psd_gain, psnr, radial_psd, ssim
from .networks import UNet, build_model, pack_weights, unet_from_weights
from .physics import DetectorPhysics
from .samplers import (
    cold_sample,
    make_restore_fn,
    regression_sample,
    sde_ddim_sample,
    sr3_ddim_sample,
    time_grid,
)
from .stage import (
    CLASSICAL_METHODS,
    LEARNED_METHODS,
    METHODS,
    SR_METHODS,
    Restorer,
    available_methods,
    sr_factor,
    tiled_apply,
)
from .training import TrainResult, crop_source, pooled_source, train

__all__ = [
    "CLASSICAL_METHODS",
    "LEARNED_METHODS",
    "METHODS",
    "SR_METHODS",
    "DetectorPhysics",
    "Restorer",
    "TrainResult",
    "UNet",
    "available_methods",
    "build_model",
    "cold_degrade",
    "cold_sample",
    "cosine_alpha_bar",
    "crop_source",
    "high_frequency_psd_gain",
    "make_restore_fn",
    "mtf_ratio_inverse",
    "pack_weights",
    "pooled_source",
    "power_law_signal_fit",
    "psnr",
    "radial_psd",
    "regression_sample",
    "richardson_lucy",
    "sde_ddim_sample",
    "sde_forward",
    "sde_transfer",
    "sr3_ddim_sample",
    "sr3_forward",
    "sr_factor",
    "ssim",
    "tiled_apply",
    "time_grid",
    "train",
    "unet_from_weights",
    "wiener",
    "wiener_filter",
]
