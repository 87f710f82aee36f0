"""Pixel sampling of the digital twin: structure finer than the camera's Nyquist frequency.

A camera pixel integrates the image the optics formed; structure above the pixel's Nyquist
frequency appears at its alias frequency with the modulation the optics left at its *true*
frequency. The twin's ``oversample`` path renders that way; the direct path (rasterise on the
camera grid, then blur) is exact only below Nyquist."""
import dataclasses

import numpy as np
import pytest

from xinstrument.sim.bench import Twin, lens_bench
from xinstrument.sim.samples import Layer, Rect, Sample

# thin tungsten: transmission is linear in thickness (mu t < 0.5 %), so the modulation of two
# gratings compares through the system MTF alone
T_MM = 0.2e-3
FINE_PERIOD_UM = 2.0       # 1 um lines: above the Nyquist frequency of 1.26 um object pixels
COARSE_PERIOD_UM = 8.0


def _grating(period_um: float, cx_mm: float, n: int, height_mm: float) -> list[Rect]:
    p = period_um / 1000
    return [Rect(cx_mm + (i - n / 2) * p, 0.0, p / 2, height_mm, T_MM) for i in range(n)]


def _bench(oversample: int):
    cfg = lens_bench(128, thick_um=20.0, oversample=oversample)
    half = cfg.fov_mm / 2
    shapes = (_grating(FINE_PERIOD_UM, -half / 2, int(0.8 * half * 1000 / FINE_PERIOD_UM), half)
              + _grating(COARSE_PERIOD_UM, half / 2, int(0.8 * half * 1000 / COARSE_PERIOD_UM), half))
    return Twin(cfg, Sample("gratings", [Layer("tungsten", 0.0, shapes, "gratings")]), seed=3)


def _amplitude(profile: np.ndarray, f_cy_per_px: float) -> float:
    """Least-squares amplitude of a sinusoid of known frequency (plus offset) in ``profile``."""
    x = np.arange(profile.size)
    a = np.stack([np.ones_like(x, dtype=float), np.cos(2 * np.pi * f_cy_per_px * x),
                  np.sin(2 * np.pi * f_cy_per_px * x)], 1)
    c = np.linalg.lstsq(a, profile.astype(np.float64), rcond=None)[0]
    return float(np.hypot(c[1], c[2]))


def _modulations(tw: Twin) -> tuple[float, float, float, float]:
    """(fine grating at its alias, coarse grating at its own frequency) in the noise-free image,
    and the frequencies (cy/mm at the screen) they come from."""
    cfg = tw.config
    img = tw.noise_free_transmission("thick")
    n = img.shape[0]
    rows = slice(n // 2 - 16, n // 2 + 16)
    p_screen_mm = cfg.pixel_at_screen_um / 1000
    m = cfg.geometric_magnification
    out = []
    for period_um, cols in ((FINE_PERIOD_UM, slice(8, n // 2 - 8)),
                            (COARSE_PERIOD_UM, slice(n // 2 + 8, n - 8))):
        f_screen = 1000.0 / (period_um * m)                 # cy/mm at the screen
        f_px = f_screen * p_screen_mm
        alias = abs(f_px - round(f_px))                     # where the camera grid puts it
        out += [_amplitude(img[rows, cols].mean(0), alias), f_screen]
    return tuple(out)


def test_fine_structure_aliases_with_the_optics_at_its_true_frequency():
    tw = _bench(4)
    fine, f_fine, coarse, f_coarse = _modulations(tw)
    mtf = tw.mtf(np.array([f_fine, f_coarse]), "thick")    # optics x focal spot x pixel aperture
    predicted = mtf[0] / mtf[1]
    assert f_fine * tw.config.pixel_at_screen_um / 1000 > 0.5     # really above Nyquist
    assert fine / coarse == pytest.approx(predicted, rel=0.1)
    # the direct path blurs the already aliased pattern, at the alias frequency's higher MTF
    direct = _modulations(_bench(1))
    assert direct[0] / direct[2] > 1.5 * predicted


def test_oversampled_frames_keep_dose_mean_and_noise():
    tw1, tw4 = _bench(1), _bench(4)
    q1, q4 = tw1.expected_quanta(), tw4.expected_quanta()
    assert q4.sum() == pytest.approx(q1.sum(), rel=1e-3)
    assert tw4.noise_free_transmission().mean() == pytest.approx(
        tw1.noise_free_transmission().mean(), rel=1e-3)
    # frames: the same mean image, and Poisson + read noise as the direct path predicts
    for tw in (tw1, tw4):
        tw.set_state(stage_um=tw.best_focus_um())
    a, b = (tw4.render(1.0)[0].astype(float) for _ in range(2))
    good = ~tw4.hot_pixels
    mean = ((a + b) / 2 - tw4.offset_map_adu)[good].mean()
    assert (a - b)[good].var() / 2 == pytest.approx(tw4.predicted_variance_adu(mean), rel=0.06)
    ref = np.mean([tw1.render(1.0)[0].astype(float) for _ in range(2)], 0)
    assert mean == pytest.approx((ref - tw1.offset_map_adu)[good].mean(), rel=2e-3)


@pytest.mark.parametrize("bad", [0, 9, 2.5, True])
def test_bad_oversample_is_refused(bad):
    cfg = dataclasses.replace(lens_bench(64), oversample=bad)
    with pytest.raises(ValueError, match="oversample"):
        Twin(cfg, sample="open")
