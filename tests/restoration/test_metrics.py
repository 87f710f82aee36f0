"""Metrics against scikit-image and closed forms."""
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from xinstrument.restoration import high_frequency_psd_gain, psnr, radial_psd, ssim


def test_ssim_matches_skimage_gaussian():
    rng = np.random.default_rng(0)
    ref = rng.random((64, 70))
    x = ref + 0.1 * rng.standard_normal(ref.shape)
    expected = structural_similarity(
        x, ref, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )
    assert ssim(x, ref, 1.0) == pytest.approx(expected, abs=1e-10)
    value, smap = ssim(x, ref, 1.0, return_map=True)
    assert value == pytest.approx(expected, abs=1e-10)
    _, sk_map = structural_similarity(
        x, ref, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
        full=True,
    )
    np.testing.assert_allclose(smap, sk_map, atol=1e-10)


def test_ssim_batched_and_identity():
    rng = np.random.default_rng(1)
    ref = rng.random((3, 32, 32))
    np.testing.assert_allclose(ssim(ref, ref, 1.0), 1.0)
    x = ref + 0.05
    per = ssim(x, ref, 1.0)
    assert per.shape == (3,)
    assert per[1] == pytest.approx(ssim(x[1], ref[1], 1.0))


def test_psnr_matches_skimage_and_closed_form():
    rng = np.random.default_rng(2)
    ref = rng.random((40, 40))
    x = ref + 0.01
    assert psnr(x, ref, 1.0) == pytest.approx(40.0, abs=1e-9)
    y = ref + 0.02 * rng.standard_normal(ref.shape)
    assert psnr(y, ref, 1.0) == pytest.approx(peak_signal_noise_ratio(ref, y, data_range=1.0))


def test_radial_psd_of_white_noise_is_its_variance():
    rng = np.random.default_rng(3)
    noise = 0.1 * rng.standard_normal((8, 128, 128))
    f, p = radial_psd(noise)
    assert f[0] > 0 and f[-1] == pytest.approx(0.5)
    assert np.mean(p) == pytest.approx(0.01, rel=0.02)


def test_high_frequency_psd_gain():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((64, 64))
    assert high_frequency_psd_gain(3 * a, a) == pytest.approx(9.0)
    with pytest.raises(ValueError, match="band"):
        high_frequency_psd_gain(a, a, band_cy_per_px=(0.4, 0.3))


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_metric_bad_input(fn):
    a = np.zeros((16, 16))
    with pytest.raises(ValueError, match="shapes differ"):
        fn(a, np.zeros((16, 15)), 1.0)
    with pytest.raises(ValueError, match="data_range"):
        fn(a, a, 0)
    with pytest.raises(ValueError, match="non-finite"):
        fn(np.full((16, 16), np.nan), a, 1.0)
