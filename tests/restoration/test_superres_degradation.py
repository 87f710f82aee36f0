"""The measured-MTF-ratio blur of the SR degradation (``blur="mtf_ratio"``)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from xinstrument.restoration.superres import (SRDegradation, SuperResolutionError, area_downsample,
                                              bicubic_downsample)


@dataclass
class RatioProfile:
    name: str = "ratio-stand-in"
    pixel_size_um: float = 1.3
    esf_sigma_um: float | None = None
    noise_sigma: float | None = 0.01
    frequency_cy_per_px: np.ndarray = field(default_factory=lambda: np.linspace(0, 0.5, 65))
    mtf_ratio: np.ndarray = None

    def __post_init__(self):
        if self.mtf_ratio is None:     # a Gaussian ratio of sigma 0.8 LR px
            self.mtf_ratio = np.exp(-2 * np.pi ** 2 * 0.8 ** 2 * self.frequency_cy_per_px ** 2)


def test_transfer_follows_the_profile_table_and_its_gaussian_tail():
    prof = RatioProfile()
    d = SRDegradation.from_profile(prof, 2, blur="mtf_ratio")
    h = d.transfer_hr((128, 128)).numpy()
    f_hr = np.fft.rfftfreq(128)                  # HR cy/px along x; LR cy/px = 2 x
    expected = np.exp(-2 * np.pi ** 2 * 0.8 ** 2 * (2 * f_hr) ** 2)
    np.testing.assert_allclose(h[0], expected, atol=2e-3)   # table inside, fitted tail outside
    assert h[0, 0] == pytest.approx(1.0)
    # a tabulated ratio that is not Gaussian is followed exactly up to the LR Nyquist
    bumpy = RatioProfile(mtf_ratio=np.clip(1 - 1.5 * np.linspace(0, 0.5, 65), 0.2, 1))
    hb = SRDegradation.from_profile(bumpy, 2, blur="mtf_ratio").transfer_hr((128, 128)).numpy()
    inside = 2 * f_hr <= 0.5
    np.testing.assert_allclose(hb[0, inside], np.interp(2 * f_hr[inside], bumpy.frequency_cy_per_px,
                                                        bumpy.mtf_ratio), atol=1e-6)
    assert np.all(np.diff(hb[0, ~inside]) <= 1e-7) and hb[0, -1] < hb[0, inside][-1]


def test_mtf_ratio_degradation_blurs_before_downsampling_and_keeps_the_mean():
    prof = RatioProfile()
    d = SRDegradation.from_profile(prof, 2, blur="mtf_ratio")
    assert d.blur_sigma_lr_px == 0.0 and d.transfer is not None
    hr = torch.ones(2, 64, 64) * 0.7
    hr[:, :, 30:34] = 0.4                                         # a bar
    lr = d(hr, noise=False)
    assert lr.shape == (2, 32, 32)
    plain = bicubic_downsample(hr, 2)
    assert float(lr.mean()) == pytest.approx(float(plain.mean()), abs=2e-3)
    assert float(lr.min()) > float(plain.min()) + 0.02               # the bar lost contrast


def test_mtf_ratio_blur_needs_no_esf_sigma_but_the_arrays():
    SRDegradation.from_profile(RatioProfile(), 4, blur="mtf_ratio")          # esf_sigma_um is None
    with pytest.raises(SuperResolutionError, match="no esf_sigma_um"):
        SRDegradation.from_profile(RatioProfile(), 2)
    with pytest.raises(SuperResolutionError, match="needs the profile's frequency_cy_per_px"):
        SRDegradation.from_profile(RatioProfile(frequency_cy_per_px=None, mtf_ratio=np.ones(3)), 2,
                                   blur="mtf_ratio")
    with pytest.raises(SuperResolutionError, match="blur must be one of"):
        SRDegradation.from_profile(RatioProfile(), 2, blur="box")
    with pytest.raises(SuperResolutionError, match="downsample must be one of"):
        SRDegradation.from_profile(RatioProfile(), 2, blur="mtf_ratio", downsample="nearest")
    with pytest.raises(SuperResolutionError, match="transfer must be"):
        SRDegradation(2, 0.0, 0.0, transfer=((0.0, 0.2, 0.1, 0.5), (1.0, 0.9, 0.8, 0.7)))


def _amplitude(row: np.ndarray, f_cy_per_px: float) -> float:
    x = np.arange(row.size)
    a = np.stack([np.ones(row.size), np.cos(2 * np.pi * f_cy_per_px * x),
                  np.sin(2 * np.pi * f_cy_per_px * x)], 1)
    c = np.linalg.lstsq(a, row.astype(np.float64), rcond=None)[0]
    return float(np.hypot(c[1], c[2]))


def test_area_downsampling_integrates_camera_pixels_and_keeps_their_aliasing():
    # a fine-grid grating at 0.35 cy/HR px = 0.7 cy/LR px, above the LR Nyquist frequency
    f_hr = 0.35
    x = np.arange(128)
    hr = torch.from_numpy(np.tile(0.5 + 0.2 * np.cos(2 * np.pi * f_hr * x), (4, 32, 1))
                          .astype(np.float32))
    area = area_downsample(hr, 2)
    np.testing.assert_allclose(area.numpy(), hr.numpy().reshape(4, 16, 2, 64, 2).mean((2, 4)),
                               atol=1e-6)
    alias = 1 - 2 * f_hr                               # LR cy/px where the grating lands
    # a 2-px box passes cos(pi f) of the modulation, aliased or not: what a camera records
    assert _amplitude(area[0, 8].numpy(), alias) == pytest.approx(0.2 * np.cos(np.pi * f_hr),
                                                                  rel=0.02)
    # the anti-aliased bicubic decimation removes most of it: a network trained on it never
    # sees the aliasing of real frames
    assert _amplitude(bicubic_downsample(hr, 2)[0, 8].numpy()[8:-8], alias) < \
        0.5 * _amplitude(area[0, 8].numpy()[8:-8], alias)
    d = SRDegradation.from_profile(RatioProfile(), 2, blur="mtf_ratio", downsample="area")
    ones = torch.full((1, 32, 32), 0.6)
    assert torch.allclose(d(ones, noise=False), torch.full((1, 16, 16), 0.6), atol=1e-5)
