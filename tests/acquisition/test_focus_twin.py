"""The default focus metric against the digital twin's best focus (what bench focus measures
in full over every sample family)."""
import numpy as np
import pytest

from xinstrument.acquisition.focus import DEFAULT_METRIC, METRICS
from xinstrument.bench_focus import _peak
from xinstrument.sim import Twin, lens_bench, panel_bench


def test_default_metric_focuses_the_thick_screen_where_it_is_sharpest():
    """On the thick screen the metrics disagree by microns (a skewed depth distribution of the
    light): the default lands within 1 um of the twin's best focus, normalized variance ~20 um
    deeper, which on a 40-80 um range is the range's edge."""
    twin = Twin(lens_bench(sensor_px=128), sample="pcb", seed=3)
    best = twin.best_focus_um("thick")
    stages = np.arange(best - 6.0, best + 6.001, 0.5)
    imgs = [twin.noise_free_transmission("thick", stage_um=float(z)) for z in stages]
    offset = {n: _peak(stages, np.array([METRICS[n](im) for im in imgs])) - best for n in METRICS}
    assert abs(offset[DEFAULT_METRIC]) <= 1.0
    assert offset["normalized_variance"] >= 5.9   # beyond this sweep: far deeper
    assert abs(offset["brenner"]) > 2.0


def test_panel_bench_has_no_focus_axis():
    with pytest.raises(ValueError, match="no focus axis"):
        Twin(panel_bench(sensor_px=64), sample="pcb").best_focus_um("thick")
