"""The restoration-method registry: one table saying what each method is and needs.

Every part of the product that has to know something about a method (the real-time stage, the
samplers, the fidelity guard, the CLI choices, the GUI menus, the IOC's method PV, the recording
sink's restored-frame shape) asks this table instead of comparing names. The shipped methods
are listed at the end of this module, so that every client sees all of them without importing
torch; a user's own method is one :func:`register` call::

    register(MethodSpec("my_tv", kind="classical", needs_nnps=True,
                        description="total-variation deconvolution"))

Pure: no torch, devices or Qt are imported here, so clients can list methods cheaply.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KINDS",
    "MethodSpec",
    "UnknownMethodError",
    "available",
    "get",
    "is_registered",
    "methods",
    "register",
    "scale_of",
]

# What a method is; decides how the stage runs it (whole frame, tiled network, sampler loop).
KINDS = ("classical", "regression", "diffusion", "super_resolution", "plug_and_play")


class UnknownMethodError(ValueError):
    """A method name that is not in the registry (the message lists the known ones)."""


@dataclass(frozen=True)
class MethodSpec:
    """What one restoration method is and needs.

    Attributes
    ----------
    name : the name users type (CLI ``--method``, GUI menu, IOC PV, HDF5 ``method``).
    kind : one of :data:`KINDS`.
    needs_weights : trained weights must be in the profile (``profile.weights[name]``).
    needs_nnps : the profile's LR noise power spectrum is used (Wiener, SDE noise, guard).
    needs_psf : the profile's measured PSF is used (Richardson-Lucy).
    scale : output pixels per input pixel along each axis (N for super-resolution by N).
    sampler : name of the sampler in :mod:`xinstrument.restoration.samplers` (None: the method
        is one network call or a closed-form filter).
    forward_model : the operator the method inverts, checked by the fidelity guard:
        ``"mtf_ratio"`` (Fourier multiplier MTF_LR / MTF_HR) or ``"psf"`` (measured PSF).
    steps_default : default sampler steps / iterations (None: not iterative).
    description : one line for menus and ``--help``.
    """

    name: str
    kind: str
    needs_weights: bool = False
    needs_nnps: bool = False
    needs_psf: bool = False
    scale: int = 1
    sampler: str | None = None
    forward_model: str = "mtf_ratio"
    steps_default: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"method name {self.name!r} must be lower-case letters, digits, _")
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name}: kind {self.kind!r} is not one of {KINDS}")
        if int(self.scale) != self.scale or self.scale < 1:
            raise ValueError(f"method {self.name}: scale must be an integer >= 1")
        if self.forward_model not in ("mtf_ratio", "psf"):
            raise ValueError(f"method {self.name}: forward_model must be 'mtf_ratio' or 'psf'")

    @property
    def learned(self) -> bool:
        return self.needs_weights

    @property
    def super_resolving(self) -> bool:
        return self.scale > 1

    def available_with(self, profile: Any) -> bool:
        """True when ``profile`` carries what this method needs."""
        if self.needs_weights and self.name not in (getattr(profile, "weights", None) or {}):
            return False
        if self.needs_nnps and getattr(profile, "nnps_lr", None) is None:
            return False
        if self.needs_psf and getattr(profile, "psf", None) is None:
            return False
        return True


_LOCK = threading.Lock()
_TABLE: dict[str, MethodSpec] = {}


def register(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add ``spec`` to the table; a second registration of a name needs ``replace=True``."""
    with _LOCK:
        if spec.name in _TABLE and not replace and _TABLE[spec.name] != spec:
            raise ValueError(f"restoration method {spec.name!r} is already registered")
        _TABLE[spec.name] = spec
    return spec


def get(name: str) -> MethodSpec:
    """The spec of ``name``; UnknownMethodError naming the known methods otherwise."""
    spec = _TABLE.get(str(name))
    if spec is None:
        raise UnknownMethodError(f"unknown restoration method {name!r}; known: "
                                 f"{', '.join(_TABLE)}")
    return spec


def is_registered(name: str) -> bool:
    return str(name) in _TABLE


def methods(kind: str | tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Registered names in registration order, optionally only of ``kind`` (or kinds)."""
    kinds = (kind,) if isinstance(kind, str) else kind
    return tuple(n for n, s in _TABLE.items() if kinds is None or s.kind in kinds)


def available(profile: Any) -> list[str]:
    """Methods that can run with ``profile`` (its arrays and weights)."""
    return [n for n, s in _TABLE.items() if s.available_with(profile)]


def scale_of(name: str) -> int:
    """Output pixels per input pixel of ``name`` (1 for deblurring)."""
    return get(name).scale


# --- the shipped methods ----------------------------------------------------------------------
# Step defaults follow restoration.samplers.DEFAULT_STEPS and classical.richardson_lucy.
for _spec in (
    MethodSpec("wiener", "classical", needs_nnps=True,
               description="Wiener deconvolution of the MTF ratio with the measured NNPS"),
    MethodSpec("inverse", "classical",
               description="regularised inverse of the MTF ratio"),
    MethodSpec("richardson_lucy", "classical", needs_psf=True, forward_model="psf",
               steps_default=8,
               description="Richardson-Lucy deconvolution with the measured PSF"),
    MethodSpec("unet", "regression", needs_weights=True,
               description="U-Net regression (one network call)"),
    MethodSpec("cold_diffusion", "diffusion", needs_weights=True, sampler="cold_sample",
               description="cold-diffusion deblurring, cold sampling"),
    MethodSpec("sde", "diffusion", needs_weights=True, needs_nnps=True,
               sampler="sde_ddim_sample",
               description="physics-informed SDE in Fourier space, DDIM-style sampling"),
    MethodSpec("sr3", "diffusion", needs_weights=True, sampler="sr3_ddim_sample",
               description="conditional diffusion (SR3-like), DDIM sampling"),
    MethodSpec("sr_x2", "super_resolution", needs_weights=True, scale=2,
               description="super-resolution by 2 below the camera pixel"),
    MethodSpec("sr_x4", "super_resolution", needs_weights=True, scale=4,
               description="super-resolution by 4 below the camera pixel"),
    # plug-and-play: the shared denoiser ships with the package, so only the profile's NNPS
    # is needed; iteration / step defaults are read by pnp.py and dc_diffusion.py from here
    MethodSpec("pnp_hqs", "plug_and_play", needs_nnps=True, steps_default=6,
               description="plug-and-play half-quadratic splitting: MTF ratio and NNPS in "
                           "closed form, shared learned denoiser prior"),
    MethodSpec("dc_diffusion", "plug_and_play", needs_nnps=True, steps_default=10,
               description="data-consistent diffusion (DiffPIR): shared denoiser prior, MTF "
                           "ratio and NNPS proximal step; several samples give a per-pixel "
                           "spread"),
    # opt-in: a network that knows the sample class, trained per profile and dose range by
    # scripts/train_specialist.py; it paints circuit-board structure into other samples
    MethodSpec("specialist_pcb", "regression", needs_weights=True, needs_nnps=True,
               description="PCB specialist: Wiener, then a U-Net trained on circuit boards for "
                           "this detector and dose range (opt-in: not for other samples)"),
):
    register(_spec)
