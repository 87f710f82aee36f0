"""Super-resolution: degradation model, network shapes, training, weights/factor checks, bar count."""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from xinstrument.profiles import DetectorProfile, repo_profiles_dir
from xinstrument.restoration.superres import (
    SRDegradation,
    SRNet,
    SuperResolutionError,
    SuperResolver,
    background_noise_sigma,
    bar_group_contrast_at_centres,
    bicubic_downsample,
    bicubic_upsample,
    count_bars,
    gaussian_blur,
    measure_bar_group,
    pack_sr_weights,
    sr_method,
    sr_net_from_weights,
    train_sr,
)


@dataclass
class SRProfile:
    """Stand-in with the DetectorProfile attributes super-resolution reads."""

    name: str = "sr-stand-in"
    pixel_size_um: float = 1.3
    esf_sigma_um: float | None = 2.6          # 2 LR px
    noise_sigma: float | None = 0.02
    weights: dict = field(default_factory=dict)
    path: Path | None = None
    _stored: dict = field(default_factory=dict)

    def load_weights(self, method):
        return {k: v.clone() for k, v in self._stored[method].items()}

    def save_weights(self, method, state_dict):
        self._stored[method] = {k: v.detach().clone() for k, v in state_dict.items()}
        self.weights[method] = f"weights/{method}.pt"


def bars_image(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Bright background with dark bar groups of random width and orientation."""
    img = np.ones((size, size), np.float32)
    for _ in range(4):
        w = int(rng.integers(1, 5))
        y0, x0 = rng.integers(0, size - 8 * w, 2)
        for k in range(3):
            if rng.random() < 0.5:
                img[y0:y0 + 6 * w, x0 + 2 * k * w:x0 + (2 * k + 1) * w] = 0.6
            else:
                img[y0 + 2 * k * w:y0 + (2 * k + 1) * w, x0:x0 + 6 * w] = 0.6
    return img


# ----------------------------------------------------------------------------- degradation
def test_degradation_from_profile_uses_esf_sigma_in_lr_pixels():
    d = SRDegradation.from_profile(SRProfile(), 2)
    assert d.factor == 2
    assert d.blur_sigma_lr_px == pytest.approx(2.0)
    assert d.noise_sigma == pytest.approx(0.02)


def test_degradation_shapes_and_order():
    d = SRDegradation(4, 1.5, 0.0)
    hr = torch.rand(3, 64, 48)
    lr = d(hr, torch.Generator().manual_seed(0))
    assert lr.shape == (3, 16, 12)
    expected = gaussian_blur(bicubic_downsample(hr, 4), 1.5)
    assert torch.allclose(lr, expected)
    with pytest.raises(ValueError, match="multiple of the SR factor"):
        d(torch.rand(1, 30, 32))


def test_gaussian_blur_has_requested_sigma():
    x = torch.zeros(1, 65, 65)
    x[0, 32, 32] = 1.0
    y = gaussian_blur(x, 3.0)[0]
    assert float(y.sum()) == pytest.approx(1.0, rel=1e-4)
    r = torch.arange(65, dtype=torch.float32) - 32
    var_x = float((y.sum(0) * r**2).sum())
    assert np.sqrt(var_x) == pytest.approx(3.0, rel=0.02)


def test_degradation_noise_sigma():
    d = SRDegradation(2, 0.0, 0.05, noise_scale_range=(1.0, 1.0))
    lr = d(torch.full((4, 128, 128), 0.5), torch.Generator().manual_seed(1))
    assert float((lr - 0.5).std()) == pytest.approx(0.05, rel=0.03)
    d2 = SRDegradation(2, 0.0, 0.05)
    stds = (d2(torch.full((64, 32, 32), 0.5), torch.Generator().manual_seed(2)) - 0.5).std(dim=(1, 2))
    lo, hi = d2.noise_scale_range
    assert float(stds.min()) > 0.05 * lo * 0.85 and float(stds.max()) < 0.05 * hi * 1.15
    assert float(stds.max() / stds.min()) > 1.5          # the scale really varies per image


def test_background_noise_sigma_from_region_with_gradient():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:80, :100]
    region = 0.9 + 1e-3 * xx - 5e-4 * yy + rng.normal(0, 0.017, (80, 100))
    assert background_noise_sigma(region) == pytest.approx(0.017, rel=0.06)
    d = SRDegradation.from_profile(SRProfile(noise_sigma=None), 2, background=region)
    assert d.noise_sigma == pytest.approx(0.017, rel=0.06)
    with pytest.raises(ValueError, match="no noise spread"):
        background_noise_sigma(np.ones((16, 16)))


def test_missing_esf_sigma_is_a_clear_error():
    with pytest.raises(SuperResolutionError, match="esf_sigma_um"):
        SRDegradation.from_profile(SRProfile(esf_sigma_um=None), 2)
    with pytest.raises(SuperResolutionError, match="noise"):
        SRDegradation.from_profile(SRProfile(noise_sigma=None), 2)


def test_unsupported_factor_is_a_clear_error():
    for bad in (3, 1, 2.0, True):
        with pytest.raises(SuperResolutionError, match="SR factor"):
            sr_method(bad)
    with pytest.raises(SuperResolutionError):
        SRDegradation.from_profile(SRProfile(), 3)


# ----------------------------------------------------------------------------- network
@pytest.mark.parametrize("factor", [2, 4])
def test_transposed_conv_output_size(factor):
    net = SRNet(factor, channels=4, layers=2)
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in net.modules()) == {2: 1, 4: 2}[factor]
    x = torch.rand(2, 1, 13, 17)
    y = net(x)
    assert y.shape == (2, 1, 13 * factor, 17 * factor)
    # zero-initialised head: an untrained network is the bicubic baseline
    assert np.allclose(y[:, 0].detach().numpy(), bicubic_upsample(x[:, 0].numpy(), factor), atol=1e-6)


def test_weights_record_factor_and_reject_another():
    net = SRNet(4, channels=4, layers=2)
    state = pack_sr_weights(net)
    assert int(state["meta.factor"]) == 4
    assert sr_net_from_weights(state, 4).factor == 4
    with pytest.raises(SuperResolutionError, match="trained for SR factor 4, not 2"):
        sr_net_from_weights(state, 2)
    with pytest.raises(SuperResolutionError, match="not super-resolution weights"):
        sr_net_from_weights({k: v for k, v in state.items() if k != "meta.kind"})


# ----------------------------------------------------------------------------- training
def test_training_loss_falls_on_a_tiny_run():
    from conftest import make_scene

    rng = np.random.default_rng(0)
    images = np.stack([make_scene(rng, 96) for _ in range(6)])
    held_out = np.stack([make_scene(rng, 96) for _ in range(2)])
    prof = SRProfile(esf_sigma_um=1.3, noise_sigma=0.005)
    torch.set_num_threads(1)
    kw = {"patch": 32, "batch": 8, "channels": 8, "layers": 3}
    res = train_sr(prof, 2, images, steps=100, seed=0, val_source=held_out, steps_per_epoch=50, **kw)
    # The untrained network is exactly bicubic (zero head), so the held-out loss at step 0 is the
    # bicubic one; after training it must be clearly lower (higher PSNR) on the same fixed batch.
    final = res.validation[-1]
    assert final["val_psnr_db"] > final["val_bicubic_psnr_db"] + 0.3
    assert res.validation[-1]["val_psnr_db"] > res.validation[0]["val_psnr_db"]
    assert np.mean(res.losses[-20:]) < np.mean(res.losses[:20])
    assert "sr_x2" in prof.weights and int(prof._stored["sr_x2"]["meta.factor"]) == 2
    # same seed, same run (deterministic on the CPU)
    a = train_sr(SRProfile(), 2, images, steps=3, seed=1, save_to_profile=False, **kw)
    b = train_sr(SRProfile(), 2, images, steps=3, seed=1, save_to_profile=False, **kw)
    assert a.losses == b.losses


def test_train_rejects_patch_not_multiple_of_factor():
    with pytest.raises(ValueError, match="multiple of the SR factor"):
        train_sr(SRProfile(), 4, np.ones((1, 64, 64), np.float32), steps=1, patch=30)


# ----------------------------------------------------------------------------- inference
@pytest.fixture
def saved_profile(tmp_path):
    """A copy of the shipped lens profile with small SR x2 weights written through save_weights."""
    src = repo_profiles_dir() / "sim-yag200-5x"
    dst = tmp_path / "sim-yag200-5x"
    shutil.copytree(src, dst)
    prof = DetectorProfile.load(dst)
    torch.manual_seed(0)
    net = SRNet(2, channels=6, layers=2)
    with torch.no_grad():        # a non-trivial head so the network differs from bicubic
        net.head.weight.normal_(0, 0.05)
    prof.save_weights("sr_x2", pack_sr_weights(net))
    return DetectorProfile.load(dst)


def test_super_resolver_shape_pixel_and_tiling(saved_profile):
    rng = np.random.default_rng(5)
    frame = rng.uniform(0.5, 1.0, (70, 90)).astype(np.float32)
    whole = SuperResolver(saved_profile, 2, device="cpu", tile=256)
    out = whole.restore(frame)
    assert out.shape == (140, 180) and out.dtype == np.float32
    assert whole.output_pixel_size_um == pytest.approx(saved_profile.pixel_size_um / 2)
    assert not np.allclose(out, bicubic_upsample(frame, 2), atol=1e-3)
    tiled = SuperResolver(saved_profile, 2, device="cpu", tile=32, overlap=12, batch=3).restore(frame)
    assert np.abs(tiled - out).max() < 1e-4
    batch = whole.restore(np.stack([frame, frame[::-1].copy()]))
    assert batch.shape == (2, 140, 180)
    assert np.allclose(batch[0], out, atol=1e-5)


def test_super_resolver_wrong_factor_is_a_clear_error(saved_profile, tmp_path):
    with pytest.raises(SuperResolutionError, match=r"no super-resolution weights for factor 4.*sr_x2"):
        SuperResolver(saved_profile, 4)
    # weights stored under sr_x2 but trained for x4
    saved_profile.save_weights("sr_x2", pack_sr_weights(SRNet(4, channels=4, layers=1)))
    fresh = DetectorProfile.load(saved_profile.path)
    with pytest.raises(SuperResolutionError, match="trained for SR factor 4, not 2"):
        SuperResolver(fresh, 2)


# ----------------------------------------------------------------------------- bar count
def square_wave(n_bars: int, width_px: int, margin_bars: int = 2, low: float = 0.7) -> np.ndarray:
    unit = [1.0] * width_px + [low] * width_px
    core = unit * n_bars + [1.0] * width_px
    pad = [1.0] * (margin_bars * width_px)
    return np.convolve(np.array(pad + core + pad), np.ones(3) / 3, mode="same")


def test_count_bars_accepts_the_true_count():
    assert count_bars(square_wave(3, 4), 8.0, 3) == (3, 2, True)
    noisy = square_wave(3, 4) + np.random.default_rng(0).normal(0, 0.01, square_wave(3, 4).size)
    assert count_bars(noisy, 8.0, 3)[2]


def test_count_bars_catches_invented_and_missing_bars():
    found, gaps, ok = count_bars(square_wave(5, 4), 8.0, 3)     # two invented bars
    assert (found, gaps, ok) == (5, 4, False)
    assert not count_bars(square_wave(2, 4), 8.0, 3)[2]         # a bar missing
    assert not count_bars(np.ones(30), 8.0, 3)[2]               # nothing there
    # bars at the wrong spacing (twice the expected period) are not the group
    assert not count_bars(square_wave(3, 8), 8.0, 3)[2]


def test_measure_bar_group_flags_sub_nyquist_and_invented_bars():
    px_mm = 0.001
    group = {"width_um": 4.0, "width_mm": 0.004, "cx": 0.0, "cy": 0.0, "length_mm": 0.04, "orientation": "vertical"}
    img = np.ones((80, 80), np.float32)
    cols = np.arange(80) + 0.5 - 40                       # pixel centres in um
    for k in (-1, 0, 1):
        img[:, np.abs(cols - 8 * k) < 2] = 0.6
    r = measure_bar_group(img, group, px_mm)
    assert r.resolved and r.bars_found == 3 and r.ctf > 0.1
    for k in (-2, 2):                                     # invent two extra bars beside the group
        img[:, np.abs(cols - 8 * k) < 2] = 0.6
    r = measure_bar_group(img, group, px_mm)
    assert not r.resolved and not r.bar_count_ok and r.bars_found > 3
    fine = dict(group, width_um=0.8, width_mm=0.0008)     # period 1.6 px: beyond Nyquist
    r = measure_bar_group(img, fine, px_mm)
    assert not r.resolved and "Nyquist" in r.note


def test_reference_contrast_at_known_centres_ignores_ripple_inside_wide_bars():
    px_mm = 0.001
    group = {"width_um": 16.0, "width_mm": 0.016, "cx": 0.0, "cy": 0.0, "length_mm": 0.06,
             "orientation": "horizontal"}
    img = np.ones((160, 160), np.float32)
    rows = np.arange(160) + 0.5 - 80                      # pixel centres in um
    for k in (-1, 0, 1):
        img[np.abs(rows - 32 * k) < 8] = 0.9
    truth = 0.1 / 1.9
    assert bar_group_contrast_at_centres(img, group, px_mm) == pytest.approx(truth, rel=1e-6)
    # ripple across bars and gaps (as a restoration leaves): the extrema a peak search takes
    # are the ripple's; the means over the known bar and gap centres are not
    rippled = img + 0.03 * np.cos(2 * np.pi * rows / 5.0)[:, None].astype(np.float32)
    assert bar_group_contrast_at_centres(rippled, group, px_mm) == pytest.approx(truth, rel=0.1)
    with pytest.raises(ValueError, match="too fine"):
        bar_group_contrast_at_centres(img, dict(group, width_um=1.0, width_mm=0.001), px_mm)
