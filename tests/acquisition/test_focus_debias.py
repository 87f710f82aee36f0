"""Noise-bias correction of the focus metrics with a pair of half-averages."""
import numpy as np
import pytest

from xinstrument.acquisition.focus import brenner_gradient, high_frequency_energy, normalized_variance


@pytest.mark.parametrize("metric", [normalized_variance, brenner_gradient, high_frequency_energy])
def test_pair_removes_noise_bias(metric):
    rng = np.random.default_rng(1)
    y, x = np.mgrid[:128, :128]
    structure = 1.0 + 0.05 * np.sin(2 * np.pi * x / 6.0) * np.cos(2 * np.pi * y / 9.0)
    clean = metric(structure)
    noisy = [structure + 0.05 * rng.standard_normal(structure.shape) for _ in range(2)]
    plain = metric(0.5 * (noisy[0] + noisy[1]))
    debiased = np.mean([metric(np.stack([structure + 0.05 * rng.standard_normal(structure.shape)
                                         for _ in range(2)])) for _ in range(20)])
    assert plain > 1.3 * clean                      # the noise floor inflates the plain metric
    assert debiased == pytest.approx(clean, rel=0.08)
    pure_noise = np.stack([1 + 0.05 * rng.standard_normal((128, 128)) for _ in range(2)])
    assert abs(metric(pure_noise)) < 0.2 * metric(pure_noise[0])
