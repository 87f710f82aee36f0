"""Settable soft limits (Z_HLM/Z_LLM, Theta_HLM/Theta_LLM) and their effect on moves and scans."""
from __future__ import annotations

import time

import pytest


@pytest.fixture(scope="module")
def ca(ioc_factory, tube_emulator, make_ca):
    return make_ca(ioc_factory(tube_emulator[1]))


def ctrl_limits(ca, name):
    c = ca.pv(name, form="ctrl").get_ctrlvars(timeout=5)
    return c["lower_ctrl_limit"], c["upper_ctrl_limit"]


def test_limits_within_the_travel_narrow_the_moves(ca):
    ca.put("FOCUS:Z", 100.0)
    ca.put("FOCUS:Z_HLM", 300.0)      # put-callback: returns when the limit is in force
    ca.put("FOCUS:Z_LLM", 50.0)
    assert ca.get("FOCUS:Z_HLM") == pytest.approx(300.0)
    assert ca.get("FOCUS:Z_LLM") == pytest.approx(50.0)
    assert ctrl_limits(ca, "FOCUS:Z") == pytest.approx((50.0, 300.0), abs=1e-6)
    ca.put("FOCUS:Z", 350.0)          # inside the 400 um travel, beyond the soft limit
    msg = ca.get("StatusMessage_RBV", as_string=True)
    assert "soft limits 50..300" in msg and "refused" in msg
    assert ca.get("FOCUS:Z") == pytest.approx(100.0)
    time.sleep(0.4)
    assert ca.get("FOCUS:Z_RBV") == pytest.approx(100.0, abs=0.01)
    ca.put("FOCUS:Z", 20.0)
    assert ca.get("FOCUS:Z_RBV") == pytest.approx(100.0, abs=0.01)
    ca.put("FOCUS:Z", 299.0)          # inside: moves
    assert ca.get("FOCUS:Z_RBV") == pytest.approx(299.0, abs=0.01)
    ca.put("FOCUS:Z_HLM", 400.0)      # back to the full travel
    ca.put("FOCUS:Z", 350.0)
    assert ca.get("FOCUS:Z_RBV") == pytest.approx(350.0, abs=0.01)
    assert ctrl_limits(ca, "FOCUS:Z") == pytest.approx((50.0, 400.0), abs=1e-6)


@pytest.mark.parametrize("name, value, reason", [
    ("FOCUS:Z_HLM", 450.0, "outside the stage travel 0..400"),
    ("FOCUS:Z_LLM", -5.0, "outside the stage travel 0..400"),
    ("FOCUS:Z_HLM", 40.0, "not above the low limit 50"),
    ("FOCUS:Z_LLM", 400.0, "not below the high limit 400"),
    ("ROT:Theta_HLM", 60.0, "outside the stage travel -45..45"),
])
def test_bad_limits_are_rejected_and_readbacks_stay_true(ca, name, value, reason):
    before = ca.get(name)
    ca.put(name, value)
    msg = ca.get("StatusMessage_RBV", as_string=True)
    assert reason in msg and "refused" in msg, msg
    assert ca.get(name) == pytest.approx(before)


def test_rotation_limits_bound_the_moves_and_the_tomosynthesis_arc(ca, tmp_path):
    ca.put("ROT:Theta_LLM", -10.0)
    ca.put("ROT:Theta_HLM", 10.0)
    assert ctrl_limits(ca, "ROT:Theta") == pytest.approx((-10.0, 10.0), abs=1e-6)
    ca.put("ROT:Theta", 20.0)
    assert "refused" in ca.get("StatusMessage_RBV", as_string=True)
    assert ca.get("ROT:Theta_RBV") == pytest.approx(0.0, abs=0.01)
    ca.put("HDF1:FilePath", str(tmp_path))
    ca.put("SCAN:TomoFileName", "wide.h5")
    ca.put("SCAN:TomoArc", 30.0)     # inside the -45..45 travel, beyond -10..10
    ca.put("SCAN:TomoNumAngles", 3)
    ca.put("SCAN:TomoStart", 1)
    assert ca.get("SCAN:TomoState_RBV", as_string=True) == "Rejected"
    assert "[-10, 10]" in ca.get("SCAN:TomoMessage_RBV", as_string=True)
    assert not (tmp_path / "wide.h5").exists()
    ca.put("ROT:Theta_LLM", -45.0)
    ca.put("ROT:Theta_HLM", 45.0)
    ca.put("ROT:Theta", 20.0)
    assert ca.get("ROT:Theta_RBV") == pytest.approx(20.0, abs=0.01)
