"""Focus scans on a synthetic defocus model with a known optimum."""
import threading

import numpy as np
import pytest
from scipy import ndimage

from xinstrument.acquisition.focus import (
    FocusAxis,
    FocusError,
    FocusScanAborted,
    brenner_gradient,
    camera_acquirer,
    coarse_fine_focus,
    fit_peak,
    focus_scan,
    high_frequency_energy,
    normalized_variance,
)


class Stage:
    """Axial stage with finite resolution (0.1 um encoder) and a move log."""

    def __init__(self, position_um: float = 0.0):
        self._pos = position_um
        self.moves: list[float] = []

    @property
    def position_um(self) -> float:
        return self._pos

    def move_to(self, position_um: float, wait: bool = True) -> None:
        self.moves.append(position_um)
        self._pos = round(position_um, 1)


class DefocusBench:
    """Sample (bars + random texture) imaged with Gaussian blur
    sigma(z) = sqrt(sigma0^2 + (k |z - z0|)^2), Poisson noise, averaged over n frames."""

    def __init__(self, stage: Stage, z0_um: float, seed: int = 0, photons: float = 300.0,
                 k_px_per_um: float = 0.35):
        self.stage, self.z0_um, self.photons, self.k = stage, z0_um, photons, k_px_per_um
        self.rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:96, 0:96]
        bars = 0.5 + 0.3 * (np.sin(2 * np.pi * xx / 6.0) > 0) + 0.2 * ((yy // 8) % 2)
        texture = ndimage.gaussian_filter(self.rng.random((96, 96)), 0.7)
        self.sample = bars * (0.8 + 0.4 * texture)
        self.calls = 0

    def acquire(self, n_frames: int) -> np.ndarray:
        self.calls += 1
        sigma = np.hypot(0.6, self.k * (self.stage.position_um - self.z0_um))
        img = ndimage.gaussian_filter(self.sample, sigma, mode="reflect")
        frames = self.rng.poisson(img * self.photons, (n_frames, *img.shape))
        return frames.mean(axis=0)


def test_stage_satisfies_protocol():
    assert isinstance(Stage(), FocusAxis)


@pytest.mark.parametrize("metric", ["normalized_variance", "brenner", "hf_energy"])
@pytest.mark.parametrize("fit", ["gaussian", "parabola"])
def test_focus_scan_finds_true_optimum_within_1um(metric, fit):
    stage = Stage(30.0)
    # low light (15 photons/px/frame, 2 frames per step): noise-limited, as at a real bench
    bench = DefocusBench(stage, z0_um=37.4, seed=len(metric) + len(fit), photons=15.0)
    seen = []
    curve = focus_scan(stage, bench.acquire, 25.0, 50.0, step_um=1.0, frames_per_step=2,
                       metric=metric, fit=fit, progress=lambda *a: seen.append(a))
    assert abs(curve.best_position_um - 37.4) <= 1.0, curve.fit_params
    assert curve.positions_um.size == 26 == len(seen) == bench.calls
    assert seen[-1][:2] == (25, 26)
    assert np.allclose(np.diff(curve.positions_um), 1.0)
    assert not curve.peak_at_edge
    assert stage.position_um == pytest.approx(curve.best_position_um, abs=0.05)
    assert curve.final_position_um == stage.position_um
    # the metric really peaks: far from focus it is clearly lower
    assert curve.metric_values.max() > 1.3 * curve.metric_values[[0, -1]].max()
    assert curve.as_array().shape == (26, 2)


def test_coarse_then_fine():
    stage = Stage(0.0)
    bench = DefocusBench(stage, z0_um=-13.3, seed=11)
    curve = coarse_fine_focus(stage, bench.acquire, centre_um=0.0, coarse_half_range_um=40.0,
                              coarse_step_um=5.0, frames_per_step=4, metric="brenner")
    assert curve.coarse is not None and curve.coarse.positions_um.size == 17
    assert np.allclose(np.diff(curve.positions_um), 1.0)
    assert curve.positions_um.size == 21
    assert abs(curve.best_position_um + 13.3) <= 1.0
    assert abs(stage.position_um + 13.3) <= 1.0


def test_peak_on_edge_is_a_warning_with_advice():
    stage = Stage()
    bench = DefocusBench(stage, z0_um=43.0)
    curve = focus_scan(stage, bench.acquire, 30.0, 40.0, frames_per_step=2,
                       metric="normalized_variance")
    assert curve.peak_at_edge
    assert curve.best_position_um == pytest.approx(40.0, abs=0.6)
    assert len(curve.warnings) == 1
    assert "on the stop of the range 30..40 um" in curve.warnings[0]
    assert "widen the range (e.g. 35..45 um)" in curve.warnings[0]
    # the edge of the travel itself: the advice changes
    curve = focus_scan(stage, bench.acquire, 30.0, 40.0, frames_per_step=2,
                       metric="normalized_variance", limits_um=(0.0, 40.0))
    assert "end of the axis travel" in curve.warnings[0]


def test_flat_curve_is_a_warning():
    stage = Stage()
    flat = np.random.default_rng(0)
    curve = focus_scan(stage, lambda n: 100 + flat.normal(0, 1, (32, 32)), 0.0, 10.0)
    assert any("less than 3x its noise" in w for w in curve.warnings)


def test_range_outside_travel_is_refused_before_any_move():
    stage = Stage(5.0)
    acq = DefocusBench(stage, 0.0).acquire
    with pytest.raises(FocusError, match=r"stop 120 um outside the focus axis travel 0..100 um"):
        focus_scan(stage, acq, 10.0, 120.0, limits_um=(0.0, 100.0))
    with pytest.raises(FocusError, match=r"coarse focus pass: start -10 um and stop 110 um"):
        coarse_fine_focus(stage, acq, centre_um=50.0, coarse_half_range_um=60.0,
                          coarse_step_um=10.0, limits_um=(0.0, 100.0))
    assert stage.moves == []


def test_progress_runs_through_both_passes_and_the_fine_range_stays_in_travel():
    stage = Stage(0.0)
    bench = DefocusBench(stage, z0_um=1.0, seed=2)
    seen = []
    curve = coarse_fine_focus(stage, bench.acquire, centre_um=10.0, coarse_half_range_um=10.0,
                              coarse_step_um=5.0, frames_per_step=4, metric="brenner",
                              progress=lambda k, n, z, v: seen.append((k, n)),
                              limits_um=(0.0, 20.0))
    totals = {n for _, n in seen}
    assert totals == {5 + 21}  # one total for both passes
    assert [k for k, _ in seen] == sorted(k for k, _ in seen)  # monotonic through the fine pass
    assert seen[-1][0] == 25  # the bar reaches its end although the fine range was clipped at 0
    assert curve.positions_um.min() >= 0.0
    assert abs(curve.best_position_um - 1.0) <= 1.0


def test_default_metric_is_the_measured_one():
    from xinstrument.acquisition.focus import DEFAULT_METRIC, METRICS
    assert DEFAULT_METRIC == "hf_energy" == next(iter(METRICS))
    import inspect
    assert inspect.signature(focus_scan).parameters["metric"].default == DEFAULT_METRIC


def test_metrics_are_intensity_independent_and_prefer_sharp():
    rng = np.random.default_rng(3)
    sharp = 100 + 50 * (rng.random((64, 64)) > 0.5)
    blurred = ndimage.gaussian_filter(sharp.astype(float), 2.0)
    for fn in (normalized_variance, brenner_gradient, high_frequency_energy):
        assert fn(sharp) > fn(blurred)
        assert fn(3.0 * sharp) == pytest.approx(fn(sharp), rel=1e-9)


def test_fit_peak_subsample():
    z = np.arange(0.0, 21.0)
    v = 1.0 + 5.0 * np.exp(-0.5 * ((z - 8.37) / 3.0) ** 2)
    best, params = fit_peak(z, v, "gaussian")
    assert best == pytest.approx(8.37, abs=1e-3) and params["model"] == "gaussian"
    best_p, params_p = fit_peak(z, v, "parabola")
    assert best_p == pytest.approx(8.37, abs=0.15) and params_p["model"] == "parabola"


def test_bad_parameters_are_clear_errors():
    stage = Stage()
    acq = DefocusBench(stage, 0.0).acquire
    with pytest.raises(FocusError, match="step_um must be > 0"):
        focus_scan(stage, acq, 0, 10, step_um=0)
    with pytest.raises(FocusError, match="stop_um"):
        focus_scan(stage, acq, 10, 0)
    with pytest.raises(FocusError, match="at least 3"):
        focus_scan(stage, acq, 0, 1, step_um=1)
    with pytest.raises(FocusError, match="frames_per_step"):
        focus_scan(stage, acq, 0, 10, frames_per_step=0)
    with pytest.raises(FocusError, match="unknown sharpness metric 'sobel'"):
        focus_scan(stage, acq, 0, 10, metric="sobel")
    with pytest.raises(FocusError, match="step 0 .*mean is 0"):
        focus_scan(stage, lambda n: np.zeros((16, 16)), 0, 10)
    assert stage.position_um == 0.0  # returned to the start after the failure
    with pytest.raises(FocusError, match="2-D"):
        focus_scan(stage, lambda n: np.ones(16), 0, 10)


def test_abort_returns_partial_curve_and_restores_position():
    stage = Stage(5.0)
    bench = DefocusBench(stage, 0.0)
    abort = threading.Event()

    def progress(k, n, z, v):
        if k == 3:
            abort.set()

    with pytest.raises(FocusScanAborted) as err:
        focus_scan(stage, bench.acquire, -10, 10, frames_per_step=1, progress=progress,
                   abort=abort)
    assert err.value.curve.positions_um.size == 4
    assert stage.position_um == 5.0


def test_camera_acquirer_averages_and_corrects():
    from drivers.camera.simulated import SimulatedCamera

    def render(exposure_s, roi, binning, frame_number):
        return np.full((roi[2], roi[3]), 100 + frame_number, np.uint16), {}

    cam = SimulatedCamera(render, sensor_shape=(32, 32), max_fps=2000)
    cam.exposure_s = 1e-4
    acq = camera_acquirer(cam, corrector=lambda a: a / 2)
    out = acq(4)
    assert out.shape == (32, 32) and float(out[0, 0]) == pytest.approx((101 + 102 + 103 + 104) / 8)
