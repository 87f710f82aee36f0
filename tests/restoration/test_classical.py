"""Classical restoration: improves on the blurred input, matches scikit-image where the
definitions coincide, rejects bad input."""
import numpy as np
import pytest
import torch
from skimage.restoration import richardson_lucy as sk_rl
from skimage.restoration import uft
from skimage.restoration import wiener as sk_wiener

from xinstrument.restoration import (
    mtf_ratio_inverse,
    psnr,
    richardson_lucy,
    ssim,
    wiener,
    wiener_filter,
)
from xinstrument.restoration.physics import DetectorPhysics


def _scores(x, hr):
    return psnr(x, hr, 1.0), ssim(x, hr, 1.0)


@pytest.mark.parametrize("method", ["wiener", "inverse", "richardson_lucy"])
def test_each_method_improves_on_blurred_input(method, profile, scene_pair):
    hr, lr = scene_pair
    f, r = profile.frequency_cy_per_px, profile.mtf_ratio
    if method == "wiener":
        out = wiener(lr, f, r, profile.nnps_lr)
    elif method == "inverse":
        out = mtf_ratio_inverse(lr, f, r)
    else:
        out = richardson_lucy(lr, profile.psf, iterations=8)
    assert out.shape == lr.shape and out.dtype == np.float32
    p_in, s_in = _scores(lr, hr)
    p_out, s_out = _scores(out, hr)
    assert np.all(p_out > p_in + 1.0), (p_in, p_out)
    assert np.all(s_out > s_in + 0.005), (s_in, s_out)


def test_wiener_noise_model_beats_too_small_constant_nsr(profile, scene_pair):
    """The NNPS-based NSR suppresses noise that a weakly regularised inverse amplifies."""
    hr, lr = scene_pair
    f, r = profile.frequency_cy_per_px, profile.mtf_ratio
    w = wiener(lr, f, r, profile.nnps_lr)
    inv = mtf_ratio_inverse(lr, f, r, regularization=1e-4)
    assert np.all(psnr(w, hr, 1.0) > psnr(inv, hr, 1.0))


def test_wiener_noise_free_high_dose_approaches_truth(profile):
    """At 1e4 x the calibration dose the filter is nearly the plain inverse in the passband."""
    rng = np.random.default_rng(3)
    from conftest import make_scene

    hr = make_scene(rng)
    phys = DetectorPhysics.from_profile(profile)
    lr = phys.blur(torch.from_numpy(hr)[None])[0].numpy()
    out_hi = wiener(lr, profile.frequency_cy_per_px, profile.mtf_ratio, profile.nnps_lr, dose_ratio=1e4)
    out_lo = wiener(lr, profile.frequency_cy_per_px, profile.mtf_ratio, profile.nnps_lr, dose_ratio=1.0)
    assert psnr(out_hi, hr, 1.0) > psnr(out_lo, hr, 1.0) > psnr(lr, hr, 1.0)


def test_wiener_filter_matches_skimage_wiener():
    """Same filter definition (Laplacian regulariser, periodic boundary): agree to 1e-5."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-5:6, -5:6]
    psf = np.exp(-(xx**2 + yy**2) / (2 * 1.5**2))
    psf /= psf.sum()
    img = rng.random((64, 80))
    reg, _ = uft.laplacian(2, img.shape)
    ref = sk_wiener(img, psf, 0.05, clip=False)
    otf = uft.ir2tf(psf, img.shape, is_real=True)
    out = wiener_filter(img.astype(np.float32), otf, 0.05 * np.abs(reg) ** 2, pad_px=0)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_richardson_lucy_matches_skimage():
    """With a zero border wider than the PSF, zero-padded (scikit-image) and periodic
    convolution coincide; from iteration 1 any flat start gives the same iterates."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-5:6, -5:6]
    psf = np.exp(-(xx**2 + yy**2) / (2 * 1.5**2))
    psf /= psf.sum()
    img = np.zeros((96, 96))
    img[30:66, 30:66] = rng.random((36, 36))
    ref = sk_rl(img, psf, num_iter=10, clip=False)
    out = richardson_lucy(img.astype(np.float32), psf, iterations=10, pad_px=0)
    np.testing.assert_allclose(out, ref, atol=1e-5 * ref.max())


def test_richardson_lucy_damping_keeps_noise_down(profile, scene_pair):
    from scipy.ndimage import binary_erosion

    hr, lr = scene_pair
    plain = richardson_lucy(lr, profile.psf, iterations=30)
    damped = richardson_lucy(lr, profile.psf, iterations=30, damping_threshold=0.02)
    # Damping stops the fit of noise: less error on the flat background, still better than LR.
    background = np.stack([binary_erosion(h == np.float32(0.85), iterations=8) for h in hr])
    assert background.sum() > 1000
    err_plain = np.std((plain - hr)[background])
    err_damped = np.std((damped - hr)[background])
    assert err_damped < 0.8 * err_plain, (err_damped, err_plain)
    assert np.all(psnr(damped, hr, 1.0) > psnr(lr, hr, 1.0))


def test_torch_in_torch_out_and_batched_equals_single(profile, scene_pair):
    _, lr = scene_pair
    t = torch.from_numpy(lr)
    out_t = mtf_ratio_inverse(t, profile.frequency_cy_per_px, profile.mtf_ratio)
    assert isinstance(out_t, torch.Tensor) and out_t.shape == t.shape
    single = mtf_ratio_inverse(lr[1], profile.frequency_cy_per_px, profile.mtf_ratio)
    np.testing.assert_allclose(out_t[1].numpy(), single, atol=1e-6)
    w_b = wiener(lr, profile.frequency_cy_per_px, profile.mtf_ratio, profile.nnps_lr)
    w_1 = wiener(lr[0], profile.frequency_cy_per_px, profile.mtf_ratio, profile.nnps_lr)
    np.testing.assert_allclose(w_b[0], w_1, atol=1e-5)


def test_flat_field_is_preserved(profile):
    flat = np.ones((64, 64), np.float32)
    f, r = profile.frequency_cy_per_px, profile.mtf_ratio
    for out in (
        wiener(flat, f, r, profile.nnps_lr),
        mtf_ratio_inverse(flat, f, r),
        richardson_lucy(flat, profile.psf),
    ):
        np.testing.assert_allclose(out, 1.0, atol=1e-4)


@pytest.mark.parametrize(
    "frames, exc, text",
    [
        (np.full((8, 8), np.nan, np.float32), ValueError, "non-finite"),
        (np.zeros((2, 2, 8, 8), np.float32), ValueError, "shape"),
        (np.zeros((8, 8), np.complex64), TypeError, "dtype"),
        ([[1.0, 2.0]], TypeError, "numpy array or torch tensor"),
        (np.zeros((0, 8), np.float32), ValueError, "empty"),
    ],
)
def test_bad_frames_rejected(profile, frames, exc, text):
    with pytest.raises(exc, match=text):
        mtf_ratio_inverse(frames, profile.frequency_cy_per_px, profile.mtf_ratio)


def test_bad_parameters_rejected(profile):
    img = np.ones((32, 32), np.float32)
    f, r = profile.frequency_cy_per_px, profile.mtf_ratio
    with pytest.raises(ValueError, match="odd"):
        richardson_lucy(img, np.ones((4, 4)))
    with pytest.raises(ValueError, match="iterations"):
        richardson_lucy(img, profile.psf, iterations=0)
    with pytest.raises(ValueError, match="regularization"):
        mtf_ratio_inverse(img, f, r, regularization=-1)
    with pytest.raises(ValueError, match="NNPS"):
        wiener(img, f, r, None)
    with pytest.raises(ValueError, match="dose_ratio"):
        wiener(img, f, r, profile.nnps_lr, dose_ratio=0)
    with pytest.raises(ValueError, match="cover 0..0.5"):
        mtf_ratio_inverse(img, np.linspace(0, 0.3, 10), np.ones(10))
    with pytest.raises(ValueError, match="equal length"):
        mtf_ratio_inverse(img, f, r[:-1])
