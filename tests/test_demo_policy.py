"""The demo and the fidelity policy: it restores with a method the profile's policy accepts, and
a method the policy does not accept is replaced by the accepted classical fallback, saying so."""
import h5py
import numpy as np
import pytest

from xinstrument.demo import METHOD_PREFERENCE, choose_method, run_demo
from xinstrument.profiles import find_profile
from xinstrument.restoration import available_methods
from xinstrument.restoration.fidelity_report import FidelityReporter


@pytest.mark.parametrize("name, method, accepted", [
    ("sim-yag200-5x", "pnp_hqs", True),       # the U-Net and Wiener are not accepted there
    ("sim-gos134", "pnp_hqs", True),
    ("sim-yag20-5x-sr", "pnp_hqs", None),     # no fidelity calibration: the first it can run
])
def test_the_demo_takes_the_first_method_the_policy_accepts(name, method, accepted):
    prof = find_profile(name)
    guard = FidelityReporter(prof, device="cpu")
    methods = available_methods(prof)
    assert choose_method(guard, methods) == method
    assert guard.accepts(method)[0] is accepted
    # every method ranked before it is refused by this profile's policy, or not available
    for m in METHOD_PREFERENCE[:METHOD_PREFERENCE.index(method)]:
        assert m not in methods or guard.accepts(m)[0] is not True


@pytest.mark.slow
def test_a_method_the_policy_does_not_accept_falls_back_to_the_accepted_one(tmp_path):
    r = run_demo(tmp_path, sensor_px=96, n_frames=1, n_average=2, exposure_s=0.5, seed=2,
                 method="unet", print_fn=lambda *a: None)
    assert r.fallback_method == "inverse" and r.fell_back == 1
    assert r.fidelity["method"] == "inverse" and r.fidelity["replaced_method"] == "unet"
    assert r.fidelity["method_accepted"] == 1
    lines = "\n".join(r.fidelity_lines())
    assert "unet is not accepted with profile sim-yag200-5x" in lines
    assert "1 of 1 frames re-restored with inverse" in lines
    with h5py.File(r.h5_path, "r") as f:
        assert f["entry/restored/method"][0] == b"inverse"
        extras = f["entry/restored/extras"]
        assert extras["fell_back"][0] == 1 and extras["method_accepted"][0] == 1
        assert np.isfinite(extras["reduced_chi2"][0])
