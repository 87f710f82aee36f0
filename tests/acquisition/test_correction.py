"""Dark/flat correction, defect maps, averaging and drift registration."""
import numpy as np
import pytest
from scipy import ndimage

from xinstrument.acquisition.averaging import FrameAverager, average_frames, mean_rejecting_outliers
from xinstrument.acquisition.correction import (
    CorrectionError,
    DriftRegistrar,
    FlatFieldCorrector,
    average_series,
    build_defect_map,
    estimate_shift,
    find_hot_pixels,
    flat_field,
    fourier_shift,
    replace_defects,
    subtract_dark,
)

SHAPE = (256, 256)


class Detector:
    """Known per-pixel gain and offset maps, Poisson shot noise, Gaussian read noise,
    16-bit quantisation. Gain is in DN per incident photon (conversion 1 e-/DN)."""

    def __init__(self, seed: int = 1, gain_rms: float = 0.06, offset_dn: float = 100.0,
                 offset_rms_dn: float = 4.0, read_noise_dn: float = 6.0):
        self.rng = np.random.default_rng(seed)
        self.gain = 1.0 + gain_rms * self.rng.standard_normal(SHAPE)
        # smooth illumination shading on top of the pixel gain
        yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]] / SHAPE[0]
        self.gain *= 1.0 - 0.2 * ((yy - 0.5) ** 2 + (xx - 0.5) ** 2)
        self.offset = offset_dn + offset_rms_dn * self.rng.standard_normal(SHAPE)
        self.read_noise_dn = read_noise_dn

    def frame(self, photons: float | np.ndarray) -> np.ndarray:
        signal = self.rng.poisson(self.gain * photons)
        noisy = signal + self.offset + self.read_noise_dn * self.rng.standard_normal(SHAPE)
        return np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)

    def series(self, photons: float, n: int) -> np.ndarray:
        return np.stack([self.frame(photons) for _ in range(n)])


@pytest.mark.parametrize("transmission", [1.0, 0.4])
def test_residual_nonuniformity_reaches_the_poisson_limit(transmission):
    """Corrected T = (r - D)/(F - D), with D, F averages of n_d darks and n_f flats and r a
    single frame. Linearising about the true values (S = gain * I0 the flat signal):
        dT = [n_r - T n_F - (1 - T) n_D] / S
        var(T) = [var_r + T^2 var_F + (1 - T)^2 var_D] / S^2
    with var_r = T S + s^2, var_F = (S + s^2)/n_f, var_D = s^2/n_d, s^2 = read noise^2 +
    1/12 (quantisation). Averaged over pixels (S varies with the gain map) this is the floor a
    perfect correction reaches; the measured spatial variance must match it within a few %."""
    det = Detector()
    photons, n_d, n_f = 4000.0, 4, 6
    darks, flats = det.series(0.0, n_d), det.series(photons, n_f)
    raw = det.frame(photons * transmission)

    corrector = FlatFieldCorrector(average_series(darks), average_series(flats))
    t = corrector(raw)
    assert t.dtype == np.float32

    s2 = det.read_noise_dn ** 2 + 1.0 / 12.0
    S = det.gain * photons
    var_r = transmission * S + s2
    var_f = (S + s2) / n_f
    var_d = s2 / n_d
    expected_var = np.mean((var_r + transmission ** 2 * var_f
                            + (1 - transmission) ** 2 * var_d) / S ** 2)
    measured_var = float(t.var(dtype=np.float64))
    assert measured_var == pytest.approx(expected_var, rel=0.04)
    assert float(t.mean()) == pytest.approx(transmission, abs=3e-3)

    # without the flat division the gain map dominates by far: the test can tell them apart
    uncorrected = subtract_dark(raw, average_series(darks)) / (photons * np.mean(det.gain))
    assert uncorrected.var() > 5 * expected_var


def test_rescale_returns_display_units():
    det = Detector(seed=2)
    dark = average_series(det.series(0.0, 3))
    flat = average_series(det.series(1000.0, 3))
    raw = det.frame(500.0)
    t = flat_field(raw, dark, flat)
    counts = flat_field(raw, dark, flat, rescale=True)
    assert np.allclose(counts, t * float((flat - dark).mean()), rtol=1e-5)
    assert float(counts.mean()) == pytest.approx(500.0 * det.gain.mean(), rel=0.01)


def test_flats_not_brighter_than_darks_is_a_clear_error():
    dark = np.full(SHAPE, 100.0)
    flat = np.full(SHAPE, 1000.0)
    flat[5, 7] = 100.0
    flat[200, 3] = 50.0
    with pytest.raises(CorrectionError) as err:
        FlatFieldCorrector(dark, flat)
    msg = str(err.value)
    assert "2 of 65536" in msg and "(row 5, col 7)" in msg and "(row 200, col 3)" in msg
    # the same pixels in the defect map are acceptable: they get interpolated
    defects = np.zeros(SHAPE, bool)
    defects[5, 7] = defects[200, 3] = True
    out = FlatFieldCorrector(dark, flat, defect_map=defects)(np.full(SHAPE, 550.0))
    assert np.allclose(out, 0.5)


def test_tube_off_flats_rejected():
    det = Detector(seed=3)
    darks = det.series(0.0, 3)
    with pytest.raises(CorrectionError, match="not brighter than dark"):
        FlatFieldCorrector(average_series(darks), average_series(det.series(0.0, 3)))


def test_shape_mismatches_are_named():
    with pytest.raises(CorrectionError, match=r"dark \(4, 4\), flat \(4, 5\)"):
        FlatFieldCorrector(np.zeros((4, 4)), np.ones((4, 5)))
    fc = FlatFieldCorrector(np.zeros((4, 4)), np.ones((4, 4)))
    with pytest.raises(CorrectionError, match=r"frame shape \(8, 8\)"):
        fc(np.ones((8, 8)))
    with pytest.raises(CorrectionError, match="2-D"):
        FlatFieldCorrector(np.zeros((2, 4, 4)), np.ones((2, 4, 4)))
    with pytest.raises(CorrectionError, match="non-finite"):
        FlatFieldCorrector(np.zeros((4, 4)), np.full((4, 4), np.nan))


def test_averaging_count_below_one_is_rejected():
    with pytest.raises(ValueError, match="at least 1 frame"):
        average_series([])
    with pytest.raises(ValueError, match=">= 1"):
        FrameAverager(0)
    with pytest.raises(ValueError, match="at least 3"):
        FrameAverager(2, reject_outliers=True)
    with pytest.raises(ValueError, match="different shapes"):
        average_series([np.zeros((2, 2)), np.zeros((3, 3))])


def test_defect_map_finds_hot_dead_and_hot_pixels_are_replaced():
    det = Detector(seed=4)
    darks = det.series(0.0, 5)
    hot = [(10, 10), (100, 37), (255, 0)]
    for r, c in hot:
        darks[:, r, c] += 3000
    flats = det.series(1000.0, 5).astype(np.float64)
    dead = [(50, 50), (51, 50), (0, 200)]
    for r, c in dead:
        flats[:, r, c] = darks[:, r, c] + 30   # nearly no response
    # random-telegraph pixel: normal mean, jumps between frames
    darks[::2, 70, 80] += 400
    defects = build_defect_map(average_series(darks), average_series(flats),
                               dark_series=darks)
    found = set(map(tuple, np.argwhere(defects)))
    assert set(hot) <= found and set(dead) <= found and (70, 80) in found
    assert len(found) < 20  # ordinary pixels with 6 % gain spread are not flagged

    corrector = FlatFieldCorrector.from_series(darks, flats)
    raw = det.frame(700.0)
    for r, c in hot:
        raw[r, c] += 3000
    t = corrector(raw)
    for r, c in hot + dead:
        assert abs(t[r, c] - 0.7) < 0.2, (r, c, t[r, c])


def test_replace_defects_uses_good_neighbours_only():
    img = np.arange(100, dtype=np.float32).reshape(10, 10)
    mask = np.zeros((10, 10), bool)
    mask[4:7, 4:7] = True  # 3x3 cluster: the centre needs a 5x5 window
    img[mask] = 1e6
    out = replace_defects(img, mask)
    assert out[mask].max() < 100
    assert out[5, 5] == pytest.approx(55.0)  # symmetric ring around the centre
    assert np.array_equal(out[~mask], img[~mask])
    with pytest.raises(CorrectionError, match="every pixel"):
        replace_defects(img, np.ones((10, 10), bool))


def test_hot_pixels_from_a_single_dark():
    dark = np.random.default_rng(0).normal(100, 3, SHAPE)
    dark[3, 4] = 200
    assert np.argwhere(find_hot_pixels(dark)).tolist() == [[3, 4]]


def test_outlier_rejecting_mean_removes_zingers():
    rng = np.random.default_rng(5)
    truth = 1000.0
    stack = rng.poisson(truth, (10, 64, 64)).astype(np.uint16)
    zingers = [(0, 5, 5), (3, 20, 40), (9, 63, 0), (4, 5, 5)]
    for k, r, c in zingers:
        stack[k, r, c] = 60000
    plain = average_frames(stack)
    robust, rejected = mean_rejecting_outliers(stack)
    assert plain[5, 5] > 10000
    assert np.abs(robust - truth).max() < 6 * np.sqrt(truth / 8)
    assert len(zingers) <= rejected < 0.002 * stack.size
    # without zingers the robust mean keeps the noise reduction of the plain mean
    clean = rng.poisson(truth, (10, 64, 64))
    assert np.std(average_frames(clean, reject_outliers=True)) < 1.1 * np.sqrt(truth / 10)

    avg = FrameAverager(10, reject_outliers=True)
    outs = avg.extend(list(stack) + list(stack[:3]))
    assert len(outs) == 1 and avg.pending == 3
    assert np.allclose(outs[0], robust)


def test_frame_averager_plain_mean_is_exact():
    frames = [np.full((4, 4), v, np.uint16) for v in (1, 2, 3, 65535)]
    avg = FrameAverager(2)
    outs = avg.extend(frames)
    assert [float(o[0, 0]) for o in outs] == [1.5, 32769.0]


@pytest.mark.parametrize("shift", [(2.3, -1.7), (-0.4, 0.25), (7.0, 3.55)])
def test_drift_registration_subpixel(shift):
    rng = np.random.default_rng(6)
    ref = ndimage.gaussian_filter(rng.normal(size=(192, 160)), 2.5) + 5.0
    moved = fourier_shift(ref, shift) + rng.normal(0, 0.005, ref.shape)
    est = estimate_shift(ref, moved)
    assert est == pytest.approx((-shift[0], -shift[1]), abs=0.06)
    reg = DriftRegistrar()
    reg(ref)
    aligned = reg(moved)
    inner = np.s_[16:-16, 16:-16]
    residual = (aligned - ref)[inner].std()
    assert residual < 1.5 * 0.005  # down to the added noise
    assert residual < 0.8 * (moved - ref)[inner].std()
    assert reg.shifts[1] == est


def test_drift_registration_rejects_featureless_frames():
    with pytest.raises(CorrectionError, match="featureless"):
        estimate_shift(np.ones((32, 32)), np.ones((32, 32)))
