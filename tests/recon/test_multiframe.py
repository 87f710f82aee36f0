"""Noise-matched multi-frame combination of registered projections (recon.multiframe)."""
import numpy as np
import pytest

from xinstrument.recon.multiframe import (
    combine_registered,
    noise_matched_transfer,
    prefilter_projections,
)

PAD = 8


def _grid(rows, cols, pad=PAD):
    fy = np.fft.fftfreq(rows + 2 * pad)[:, None]
    fx = np.fft.rfftfreq(cols + 2 * pad)[None, :]
    return fx, fy


def _blurred(image, otf, pad=PAD):
    """``image`` through ``otf`` (on the padded rfft2 grid), cropped back (periodic image)."""
    big = np.pad(image, pad, mode="wrap")
    out = np.fft.irfft2(np.fft.rfft2(big) * otf, s=big.shape)
    return out[pad:-pad, pad:-pad]


def _parallax_otfs(rows, cols, shifts_px, box_px):
    """Per projection: a sub-pixel shift along x and a box blur of ``box_px`` along x (as oblique
    incidence through a screen gives), times a common Gaussian."""
    fx, fy = _grid(rows, cols)
    common = np.exp(-2 * np.pi ** 2 * 0.8 ** 2 * (fx ** 2 + fy ** 2))
    return np.stack([common * np.exp(-2j * np.pi * fx * s) * np.sinc(fx * b)
                     for s, b in zip(shifts_px, box_px)])


def _periodic_scene(rows, cols, seed=0):
    """Smooth periodic scene (band-limited) so that wrap padding is exact."""
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft2(rng.standard_normal((rows, cols)))
    fy = np.fft.fftfreq(rows)[:, None]
    fx = np.fft.rfftfreq(cols)[None, :]
    spec *= np.hypot(fx, fy) < 0.3
    return 1.0 + 0.1 * np.fft.irfft2(spec, s=(rows, cols)) / 0.1


def test_transfer_at_least_the_mean_and_unit_dc():
    h = _parallax_otfs(32, 32, np.linspace(-1.5, 1.5, 7), np.abs(np.linspace(-2, 2, 7)))
    t = noise_matched_transfer(h)
    assert t[0, 0] == pytest.approx(1.0)
    assert np.all(t >= np.abs(h.mean(axis=0)) - 1e-12)
    # the shifts cancel the mean's contrast along x, not the combination's
    assert t[0, 8] > 1.5 * abs(h.mean(axis=0)[0, 8])


def test_equal_otfs_give_the_mean():
    # equal, real (zero-phase, positive) OTFs: nothing to gain, the combination is the mean
    rows = cols = 48
    scene = _periodic_scene(rows, cols)
    h = _parallax_otfs(rows, cols, [0.0] * 4, [0.0] * 4)
    frames = np.stack([_blurred(scene, hi) for hi in h])
    rng = np.random.default_rng(1)
    frames += 0.01 * rng.standard_normal(frames.shape)
    z = combine_registered(frames, h, pad_px=PAD)
    assert np.allclose(z, frames.mean(axis=0), atol=2e-5)


def test_recovers_what_the_mean_of_shifted_projections_blurs():
    rows = cols = 64
    scene = _periodic_scene(rows, cols, seed=3)
    shifts = np.linspace(-1.5, 1.5, 9)
    h = _parallax_otfs(rows, cols, shifts, np.zeros(9))     # pure shifts, |H_i| equal
    frames = np.stack([_blurred(scene, hi) for hi in h])
    target = _blurred(scene, np.abs(h[0]))                  # the transfer T = |H_i| unshifted
    z = combine_registered(frames, h, pad_px=PAD)
    err_mf = np.abs(z - target)[PAD:-PAD, PAD:-PAD].max()
    err_mean = np.abs(frames.mean(axis=0) - target)[PAD:-PAD, PAD:-PAD].max()
    assert err_mf < 0.05 * err_mean and err_mf < 5e-3


def test_noise_equals_the_means_noise():
    rows = cols = 96
    n = 9
    h = _parallax_otfs(rows, cols, np.linspace(-1.5, 1.5, n), np.abs(np.linspace(-2, 2, n)))
    rng = np.random.default_rng(7)
    sigma = 0.05
    frames = 1.0 + sigma * rng.standard_normal((n, rows, cols))
    z = combine_registered(frames, h, pad_px=PAD)
    mean = frames.mean(axis=0)
    inner = np.s_[PAD:-PAD, PAD:-PAD]
    assert np.std(z[inner]) == pytest.approx(np.std(mean[inner]), rel=0.08)
    assert np.std(mean[inner]) == pytest.approx(sigma / np.sqrt(n), rel=0.08)


def test_noisier_projection_weighs_less():
    h = _parallax_otfs(16, 16, [0.0, 1.0], [0.0, 0.0])
    nps = np.stack([np.ones(h.shape[1:]), 100 * np.ones(h.shape[1:])])
    t_weighted = noise_matched_transfer(h, nps)
    t_equal = noise_matched_transfer(h)
    # with the noisy projection down-weighted the transfer no longer gains from it...
    assert np.all(t_weighted <= np.sqrt(nps.sum(0) / 4 * (np.abs(h) ** 2 / nps).sum(0)) + 1e-12)
    # ...and equal white noise gives the rms of |H_i|
    assert np.allclose(t_equal, np.sqrt((np.abs(h) ** 2).mean(axis=0)))
    assert np.all(np.isfinite(t_weighted))


def test_bad_input_is_named():
    frames = np.ones((3, 20, 20))
    h = _parallax_otfs(20, 20, [0, 0, 0], [0, 0, 0])
    with pytest.raises(ValueError, match="otfs must be"):
        combine_registered(frames, h[:, :-1], pad_px=PAD)
    with pytest.raises(ValueError, match="frames must be"):
        combine_registered(frames[0], h, pad_px=PAD)
    with pytest.raises(ValueError, match="nps must be"):
        combine_registered(frames, h, nps=np.zeros(h.shape), pad_px=PAD)
    with pytest.raises(ValueError, match="pad_px"):
        combine_registered(frames, h, pad_px=40)


def test_prefiltered_projections_average_to_the_multiframe_slice():
    """The per-projection filters are the combination's shares: their mean is the multi-frame
    slice (frames of odd width, unequal noise, one projection far from the others)."""
    rng = np.random.default_rng(3)
    rows, cols = 24, 31
    frames = _periodic_scene(rows, cols)[None] + 0.05 * rng.standard_normal((4, rows, cols))
    h = _parallax_otfs(rows, cols, [-1.3, -0.4, 0.5, 1.7], [0.5, 0.0, 1.0, 2.5])
    nps = np.array([1.0, 2.0, 0.5, 3.0])[:, None, None] * np.ones(h.shape)
    pre = prefilter_projections(frames, h, nps, pad_px=PAD)
    assert pre.shape == frames.shape and pre.dtype == np.float32
    combined = combine_registered(frames, h, nps, pad_px=PAD)
    np.testing.assert_allclose(pre.mean(axis=0), combined, rtol=0, atol=1e-5)
    # each projection is filtered by its own share, not by the slice's transfer
    assert np.abs(pre[0] - pre[3]).max() > 10 * np.abs(pre.mean(axis=0) - combined).max()
    # equal real OTFs and noise: every filter is 1 (projections unchanged)
    same = _parallax_otfs(rows, cols, [0.0] * 4, [0.0] * 4)
    np.testing.assert_allclose(prefilter_projections(frames, same, pad_px=PAD), frames, atol=1e-5)


def test_prefilter_bad_input_is_named():
    frames = np.ones((3, 20, 20))
    h = _parallax_otfs(20, 20, [0, 0, 0], [0, 0, 0])
    with pytest.raises(ValueError, match="otfs must be"):
        prefilter_projections(frames, h[:2], pad_px=PAD)
    with pytest.raises(ValueError, match="frames must be"):
        prefilter_projections(frames[0], h, pad_px=PAD)
    with pytest.raises(ValueError, match="nps must be"):
        prefilter_projections(frames, h, nps=-np.ones(h.shape), pad_px=PAD)


def test_micro_bench_multiframe_slice_keeps_the_along_tilt_contrast():
    """On the 16x micro bench at +-20 deg the shift-and-add slice keeps a quarter of the 1 um
    group's normal-incidence transfer along the tilt; the multi-frame slice, with the same noise,
    keeps about two thirds of it, and across the tilt both are the normal-incidence MTF."""
    import sys
    from pathlib import Path

    from xinstrument.sim import micro_tomo_bench
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import sr_resolution_budget as budget

    cfg = micro_tomo_bench(sensor_px=32)
    r = budget.multiframe_slice_transfer(cfg, 20.0, 21, 3.0476, n_freq=41)
    f = r["frequency_x_cy_per_px"]
    f_1um = cfg.pixel_at_screen_um / (2 * 1.0 * cfg.geometric_magnification)
    along_mf = np.interp(f_1um, f, r["transfer"][0])
    along_saa = np.interp(f_1um, f, r["saa_transfer"][0])
    across_mf = np.interp(f_1um, f, r["transfer"][:, 0])
    across_saa = np.interp(f_1um, f, r["saa_transfer"][:, 0])
    assert along_mf > 2.5 * along_saa
    assert along_mf < across_mf
    assert across_mf == pytest.approx(across_saa, abs=0.01)
    assert r["transfer"][0, 0] == pytest.approx(1.0, abs=0.01)
