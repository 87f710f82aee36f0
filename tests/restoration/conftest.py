"""Synthetic detector and scenes for restoration tests: a Gaussian MTF ratio (thick = thin
blurred by a Gaussian of SIGMA_PX), its matching PSF and blurred quantum noise."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

SIGMA_PX = 2.0
NNPS_PX2 = 1e-4
MEAN_SIGNAL = 5000.0


@dataclass
class StandInProfile:
    """Minimal object with the DetectorProfile attributes restoration reads."""

    name: str = "stand-in"
    pixel_size_um: float = 6.5
    frequency_cy_per_px: np.ndarray = field(default_factory=lambda: np.linspace(0, 0.5, 129))
    mtf_ratio: np.ndarray = None
    psf: np.ndarray = None
    nnps_lr: np.ndarray | None = None
    nnps_mean_signal: float | None = MEAN_SIGNAL
    weights: dict = field(default_factory=dict)
    path: Path | None = None
    _stored: dict = field(default_factory=dict)

    def __post_init__(self):
        f = self.frequency_cy_per_px
        if self.mtf_ratio is None:
            self.mtf_ratio = np.exp(-2 * np.pi**2 * SIGMA_PX**2 * f**2)
        if self.psf is None:
            yy, xx = np.mgrid[-7:8, -7:8]
            k = np.exp(-(xx**2 + yy**2) / (2 * SIGMA_PX**2))
            self.psf = k / k.sum()
        if self.nnps_lr is None:
            # Thick-screen quantum noise is blurred by the screen itself (NPS ~ MTF^2) over a
            # small white floor (secondary quanta, read noise).
            self.nnps_lr = NNPS_PX2 * (0.9 * self.mtf_ratio**2 + 0.1)

    def load_weights(self, method):
        if method not in self.weights:
            raise KeyError(f"no weights for {method!r}")
        return {k: v.clone() for k, v in self._stored[method].items()}

    def save_weights(self, method, state_dict):
        self._stored[method] = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
        self.weights[method] = f"weights/{method}.pt"


def make_scene(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """PCB-like transmission image: a background with rectangles (traces) and disks (vias)."""
    img = np.full((size, size), 0.85)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(12):
        y0, x0 = rng.integers(0, size - 8, 2)
        h, w = rng.integers(2, 30, 2)
        img[y0:y0 + h, x0:x0 + w] = rng.uniform(0.2, 0.7)
    for _ in range(8):
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(2, 7)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0.1, 0.5)
    return img.astype(np.float32)


@pytest.fixture
def profile() -> StandInProfile:
    return StandInProfile()


@pytest.fixture
def scene_pair(profile):
    """(hr, lr) batch of 2 scenes: lr = ratio-blurred hr + NNPS-shaped noise at the calibration dose."""
    from xinstrument.restoration.physics import DetectorPhysics

    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    hr = np.stack([make_scene(rng), make_scene(rng)])
    phys = DetectorPhysics.from_profile(profile)
    gen = torch.Generator().manual_seed(2)
    lr = phys.degrade(torch.from_numpy(hr), gen).numpy()
    return hr, lr
