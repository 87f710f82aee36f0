"""The stored MTF ratio of two measured edges: a monotone fit, not the noisy quotient.

Synthetic slanted edges with known MTFs: the thin screen blurs by a Gaussian of 0.7 px, the thick
one puts a quarter of its light through the same blur and the rest through a 1.2 px wider one
(the depth-weighted superposition of shared/papers/004 eq. 1-2), so the true ratio is
0.25 + 0.75 exp(-2 pi^2 1.2^2 f^2) whatever the pixel aperture.
"""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from xinstrument.calibration.mtf import slanted_edge_mtf
from xinstrument.calibration.psf import fit_mtf_ratio
from xinstrument.cli import main
from xinstrument.profiles import DetectorProfile

from .synthetic import slanted_edge

SHAPE = (256, 128)
ANGLE_DEG = 3.0
THIN_SIGMA_PX = 0.7
WIDER_SIGMA_PX = 1.2
SHARP_FRACTION = 0.25
PIXEL_UM = 1.3


def _edges(noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    thin = slanted_edge(SHAPE, ANGLE_DEG, THIN_SIGMA_PX, 0.1, 1.0)
    wide = slanted_edge(SHAPE, ANGLE_DEG, float(np.hypot(THIN_SIGMA_PX, WIDER_SIGMA_PX)), 0.1, 1.0)
    thick = SHARP_FRACTION * thin + (1 - SHARP_FRACTION) * wide
    rng = np.random.default_rng(seed)
    return thin + rng.normal(0, noise, SHAPE), thick + rng.normal(0, noise, SHAPE)


def _true_ratio(f: np.ndarray) -> np.ndarray:
    return SHARP_FRACTION + (1 - SHARP_FRACTION) * np.exp(-2 * np.pi**2 * WIDER_SIGMA_PX**2 * f**2)


def _lsf_tail(f: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """One-sided sum of |LSF| beyond m px, as the fidelity guard sizes its border from it."""
    n = 1024
    lsf = np.fft.irfft(np.interp(np.fft.rfftfreq(n), f, ratio), n)
    one_side = np.abs(lsf[1:n // 2])
    return np.cumsum(one_side[::-1])[::-1]


def test_edge_mtf_noise_sd_is_the_spread_of_repeated_measurements() -> None:
    clean = slanted_edge(SHAPE, ANGLE_DEG, 0.8, 0.2, 1.0)
    rng = np.random.default_rng(3)
    grid = np.linspace(0, 0.4, 81)
    mtfs, sds = [], []
    for _ in range(30):
        r = slanted_edge_mtf(clean + rng.normal(0, 0.01, SHAPE), PIXEL_UM)
        mtfs.append(np.interp(grid, r.frequency_cy_per_px, r.mtf))
        sds.append(np.interp(grid, r.frequency_cy_per_px, r.mtf_sd))
    spread = np.std(mtfs, axis=0, ddof=1)
    predicted = np.mean(sds, axis=0)
    band = grid >= 0.1            # the MTF is far above its noise up to 0.4 cy/px here
    assert np.all(predicted[band] / spread[band] > 0.6) and np.all(predicted[band] / spread[band] < 1.6)
    assert 0.8 < np.median(predicted[band] / spread[band]) < 1.25


def test_calibrate_mtf_stores_a_monotone_ratio_within_the_noise_of_the_truth(tmp_path, capsys) -> None:
    thin, thick = _edges(noise=0.005, seed=0)
    tifffile.imwrite(tmp_path / "thin.tif", thin.astype(np.float32))
    tifffile.imwrite(tmp_path / "thick.tif", thick.astype(np.float32))
    folder = tmp_path / "profile"
    rc = main(["calibrate", "mtf", "--thin", str(tmp_path / "thin.tif"), "--thick", str(tmp_path / "thick.tif"),
               "--pixel-size-um", str(PIXEL_UM), "--profile", str(folder), "--plot", str(tmp_path / "m.png"),
               "--scintillator", "YAG:Ce,100um", "--reference", "YAG:Ce,20um"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    prof = DetectorProfile.load(folder)
    f, ratio = prof.frequency_cy_per_px, prof.mtf_ratio
    truth = _true_ratio(f)
    high = f >= 0.3
    # the plain quotient of these edges misses the truth by 0.05-0.18 above 0.3 cy/px and rises
    # towards Nyquist by 0.09-0.22 (seeds 0-3); the fit stays within 0.01
    assert np.abs(ratio - truth)[high].max() < 0.015
    assert ratio[0] == 1.0 and np.all(np.diff(ratio) <= 1e-12)
    # a wiggling ratio spreads its LSF: the quotient's tail beyond 8 px is 0.03-0.07, the truth's 1e-4
    assert _lsf_tail(f, ratio)[8] < 0.005
    cal = prof.calibration
    assert "Gaussian" in cal["mtf_ratio_fit"]
    assert 0.2 < cal["mtf_ratio_reliable_to_cy_per_px"] < 0.5
    assert cal["mtf_ratio_fit_reduced_chi2"] < 2.0
    assert cal["mtf_ratio_sharp_fraction"] == pytest.approx(SHARP_FRACTION, abs=0.02)
    assert "measurement reliable to" in out.out


def test_fit_mtf_ratio_refuses_an_edge_drowned_in_noise() -> None:
    f = np.linspace(0, 0.5, 65)
    hr = np.exp(-2 * np.pi**2 * 0.7**2 * f**2)
    lr = np.where(f < 0.01, 1.0, 0.001)
    with pytest.raises(ValueError, match="above its noise at fewer than 3"):
        fit_mtf_ratio(f, lr, hr, np.full_like(f, 0.01), np.full_like(f, 0.01))
    with pytest.raises(ValueError, match="equal length"):
        fit_mtf_ratio(f, lr[:-1], hr, np.full_like(f, 0.01), np.full_like(f, 0.01))
    with pytest.raises(ValueError, match="NaN"):
        fit_mtf_ratio(f, np.where(f > 0.4, np.nan, hr), hr, np.full_like(f, 0.01), np.full_like(f, 0.01))
