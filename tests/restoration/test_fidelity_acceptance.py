"""The policy's acceptance figure (scripts/calibrate_fidelity.py): a method's predicted false-alarm
rate on unseen families comes from training families left out of its calibration, at the
calibration averagings and under a stress averaging, beyond the forward model's own flags."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from xinstrument.bench_fidelity import FrameSet
from xinstrument.restoration.fidelity import FORWARD_MODEL_TOLERANCE_KEY, FidelityGuard
from xinstrument.restoration.physics import DetectorPhysics

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "calibrate_fidelity.py"


@pytest.fixture(scope="module")
def cal():
    spec = importlib.util.spec_from_file_location("calibrate_fidelity", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _scene(n: int = 128, bars: float = 0.0) -> np.ndarray:
    hr = np.full((n, n), 0.6, np.float32)
    cols = np.arange(32)
    hr[16:48, 16:48] += bars * (((cols // 6) % 2)[None, :] - 0.5)
    return hr


def _set(profile, family: str, averaged: int, truth: np.ndarray, measured_scene: np.ndarray,
         restored: np.ndarray, seed: int) -> FrameSet:
    phys = DetectorPhysics.from_profile(profile)
    g = torch.Generator().manual_seed(seed)
    y = phys.degrade(torch.from_numpy(measured_scene[None]), g, float(averaged)).numpy()
    return FrameSet(family, averaged, None, 1.0, y, truth[None], {"erase": restored[None]},
                    {"erase": 0.0})


def test_stress_averaging_exposes_a_method_that_removes_detail_the_data_hold(cal, profile):
    """Faint bars erased by the restoration: below the noise at 1 exposure (nothing flagged,
    the plain leave-one-family-out figure is 0), above it at the stress averaging."""
    guard = FidelityGuard(profile, tolerance={FORWARD_MODEL_TOLERANCE_KEY: 0.0}, device="cpu")
    truth = _scene(bars=0.005)
    erased = _scene()
    fams = ("a", "b")
    plain = {f: [_set(profile, f, 1, truth, truth, erased, i)] for i, f in enumerate(fams)}
    stress = {f: [_set(profile, f, cal.STRESS_AVERAGING, truth, truth, erased, 10 + i)]
              for i, f in enumerate(fams)}
    need = {f: 0.0 for f in fams}
    out = cal.unseen_false_alarm(guard, plain, stress, "erase", "erase", need, 0.0, 4.0)
    assert all(v[0] == 0.0 for v in out.values()), out
    assert all(v[1] > 0.01 for v in out.values()), out
    # without stress frames the figure is the plain one alone (NaN under stress)
    only = cal.unseen_false_alarm(guard, plain, {}, "erase", "erase", need, 0.0, 4.0)
    assert all(v[0] == 0.0 and np.isnan(v[1]) for v in only.values())


def test_tiles_the_forward_model_fails_do_not_count_against_a_method(cal, profile):
    """The measurement holds bars the 'truth' lacks (a model mismatch): the truth and a
    restoration equal to it are flagged there; beyond the model's flags, the method is clean."""
    guard = FidelityGuard(profile, tolerance={FORWARD_MODEL_TOLERANCE_KEY: 0.0}, device="cpu")
    truth = _scene()
    s = _set(profile, "a", 4, truth, _scene(bars=0.25), truth, 3)
    assert cal.flagged_share(guard, [s], "erase", "erase", 0.0) > 0.05
    assert cal.flagged_share(guard, [s], "erase", "erase", 0.0, beyond_model=True) == 0.0
