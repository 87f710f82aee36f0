"""The focus optimum's statistical uncertainty: each step's metric sd from its own pair of
half-averages, the weighted peak fit's sd, and the warning that says how many frames it needs."""
import numpy as np
import pytest
from scipy import ndimage

from xinstrument.acquisition.focus import (
    fit_peak,
    focus_scan,
    high_frequency_energy,
    high_frequency_energy_sd,
)


@pytest.mark.parametrize("amplitude, noise_blur_px", [(0.0, 0.0), (0.05, 0.0), (0.2, 1.0)])
def test_metric_sd_from_one_pair_matches_the_scatter(amplitude, noise_blur_px):
    """White or blurred noise (the quanta blurred by the screen), with and without structure:
    the sd each pair predicts for itself is the sd of the metric over 200 pairs within 20 %
    (measured over 400 pairs: 1.01, 1.02, 1.09)."""
    rng = np.random.default_rng(5)
    structure = 1.0 + amplitude * ndimage.gaussian_filter(rng.standard_normal((48, 48)), 1.0)

    def pair():
        n = [0.05 * rng.standard_normal((48, 48)) for _ in range(2)]
        if noise_blur_px:
            n = [3 * ndimage.gaussian_filter(q, noise_blur_px) for q in n]
        return np.stack([structure + q for q in n])

    pairs = [pair() for _ in range(200)]
    values = np.array([high_frequency_energy(p) for p in pairs])
    predicted = np.median([high_frequency_energy_sd(p) for p in pairs])
    assert predicted == pytest.approx(values.std(ddof=1), rel=0.2)
    assert np.isnan(high_frequency_energy_sd(pairs[0][0]))  # one frame: no noise estimate


def test_fit_sd_matches_the_scatter_of_the_optimum():
    """Gaussian curve (sigma 4 um) with known per-step noise: the weighted fit's centre sd is
    the scatter of the centre over 150 noisy curves within 20 %; without sigma the residuals
    stand in for it (within 35 %)."""
    rng = np.random.default_rng(2)
    z = np.arange(-8.0, 8.01, 1.0)
    truth = 0.3 + np.exp(-0.5 * ((z - 0.37) / 4.0) ** 2)
    sd = np.full(z.size, 0.02)
    found, reported, unweighted = [], [], []
    for _ in range(150):
        v = truth + sd * rng.standard_normal(z.size)
        c, p = fit_peak(z, v, sigma=sd)
        found.append(c)
        reported.append(p["centre_sd_um"])
        unweighted.append(fit_peak(z, v)[1]["centre_sd_um"])
    assert np.mean(found) == pytest.approx(0.37, abs=0.05)
    assert np.median(reported) == pytest.approx(np.std(found), rel=0.20)
    assert np.median(unweighted) == pytest.approx(np.std(found), rel=0.35)
    # a step without a noise estimate: the residuals are used, nothing fails
    c, p = fit_peak(z, truth, sigma=np.r_[sd[:-1], np.nan])
    assert c == pytest.approx(0.37, abs=0.02) and p["centre_sd_um"] < 0.01


class _Stage:
    def __init__(self) -> None:
        self.position_um = 0.0

    def move_to(self, position_um: float, wait: bool = True) -> None:
        self.position_um = float(position_um)


def _pair_acquirer(stage, photons: float, seed: int = 0):
    """Pairs of half-averages of a blurred texture, blur growing with |z - 1.3 um|."""
    rng = np.random.default_rng(seed)
    sample = 1.0 + 0.3 * ndimage.gaussian_filter(np.random.default_rng(9).random((48, 48)), 0.8)

    def acquire(n: int) -> np.ndarray:
        sigma = np.hypot(0.7, 0.3 * (stage.position_um - 1.3))
        img = ndimage.gaussian_filter(sample, sigma, mode="reflect") * photons
        frames = rng.poisson(img, (n, *img.shape)) / photons
        return np.stack([frames[0::2].mean(axis=0), frames[1::2].mean(axis=0)])

    return acquire


def test_scan_reports_the_optimum_sd_and_warns_with_the_frames_it_needs():
    stage = _Stage()
    bright = focus_scan(stage, _pair_acquirer(stage, 20000.0), -6.0, 8.0, 1.0, 4)
    assert np.all(bright.metric_sd > 0) and bright.metric_sd.shape == bright.metric_values.shape
    assert 0 < bright.best_position_sd_um < 0.25
    assert abs(bright.best_position_um - 1.3) < 0.5
    assert not any("uncertain" in w for w in bright.warnings)
    dim = focus_scan(stage, _pair_acquirer(stage, 1000.0, seed=2), -6.0, 8.0, 1.0, 2)
    assert 0.25 < dim.best_position_sd_um < 7.0
    (warning,) = [w for w in dim.warnings if "uncertain" in w]
    need = int(warning.split("average about ")[1].split()[0])
    assert need == int(np.ceil(2 * (2 * dim.best_position_sd_um / 0.5) ** 2))
    assert "now 2" in warning
    # a looser tolerance accepts the same curve's uncertainty
    loose = focus_scan(stage, _pair_acquirer(stage, 1000.0, seed=2), -6.0, 8.0, 1.0, 2,
                       tolerance_um=2 * dim.best_position_sd_um + 0.5)
    assert not any("uncertain" in w for w in loose.warnings)
    # almost no signal: the fit's uncertainty exceeds the range, the optimum is undetermined
    dark = focus_scan(stage, _pair_acquirer(stage, 100.0, seed=1), -6.0, 8.0, 1.0, 2)
    assert any("poorly determined, not at all by the curve" in w for w in dark.warnings)


def test_predicted_sd_from_the_curve_shape_matches_the_scatter():
    """What bench focus predicts from a noise-free curve and each step's sd (the Cramer-Rao
    form of the Gaussian fit) is the scatter of the fitted optimum over 300 noisy curves
    within 20 %; four times the frames (half the sd) halve it."""
    from xinstrument.bench_focus import _predicted_sd

    rng = np.random.default_rng(8)
    z = np.arange(-8.0, 8.01, 1.0)
    truth = 0.2 + np.exp(-0.5 * ((z + 0.6) / 3.0) ** 2)
    sd = np.full(z.size, 0.03)
    found = [fit_peak(z, truth + sd * rng.standard_normal(z.size), sigma=sd)[0] for _ in range(300)]
    predicted = _predicted_sd(z, truth, sd)
    assert predicted == pytest.approx(np.std(found), rel=0.2)
    assert _predicted_sd(z, truth, sd / 2) == pytest.approx(predicted / 2, rel=1e-6)
