"""restoration.dose: the dose of stored projections and their restoration in stacks."""
import numpy as np
import pytest

from xinstrument.profiles import find_profile
from xinstrument.restoration import Restorer
from xinstrument.restoration.dose import (
    DoseMetadataError,
    plan_stored_doses,
    restore_with_dose,
)

N = 5


def _settings(**over):
    s = {"exposure_s": np.full(N, 0.5), "voltage_kv": np.full(N, 70.0),
         "current_ua": np.full(N, 50.0), "theta_deg": np.zeros(N),
         "frames_averaged": np.array([1, 1, 4, 4, 1]), "flat_frames_averaged": np.full(N, 8)}
    s.update(over)
    return s


def _quanta(exposure_s, voltage_kv, current_ua, theta_deg):
    return exposure_s * current_ua / 50.0      # a detector linear in exposure x current


def test_a_stack_of_mixed_doses_restores_as_frame_by_frame():
    restorer = Restorer(find_profile("sim-gos134"), "wiener", device="cpu")
    rng = np.random.default_rng(0)
    stack = (0.5 + 0.05 * rng.standard_normal((N, 48, 48))).astype(np.float32)
    exposure = np.array([0.5, 0.5, 0.5, 1.0, 1.0])
    plan = plan_stored_doses(_settings(exposure_s=exposure), "wiener", where="scan.h5",
                             flat_dose_ratio=_quanta, model="a linear detector")
    assert plan.effective(2) == pytest.approx(2.0) and plan.effective(4) == pytest.approx(1.0)
    together = plan.restore(restorer, stack, 0)
    apart = [restore_with_dose(restorer, f, int(n), d)
             for f, n, d in zip(stack, plan.frames_averaged, plan.dose_ratio)]
    np.testing.assert_allclose(together, np.stack(apart), rtol=0, atol=1e-6)
    # the stack's later frames keep their own doses when it starts further in
    np.testing.assert_allclose(plan.restore(restorer, stack[2:], 2), np.stack(apart[2:]),
                               rtol=0, atol=1e-6)
    assert restorer.options == {}                               # options restored after each call
    md = plan.metadata()
    assert md["frames_averaged"] == [1, 1, 4, 4, 1] and md["flat_frames_averaged"] == [8] * N
    assert md["effective_dose_ratio"] == pytest.approx([0.5, 0.5, 2.0, 4.0, 1.0])


def test_missing_fields_are_named_for_dose_methods_only():
    bare = _settings(current_ua=np.array([50.0, np.nan, 50.0, 50.0, np.nan]))
    with pytest.raises(DoseMetadataError, match=r"scan\.h5: .*current_ua .*2 of 5 projections, "
                                                r"first: projection 1"):
        plan_stored_doses(bare, "pnp_hqs", where="scan.h5", flat_dose_ratio=_quanta)
    no_count = _settings(frames_averaged=np.array([1, 0, 1, 1, 1]))
    with pytest.raises(DoseMetadataError, match="frames_averaged.*--frames-averaged"):
        plan_stored_doses(no_count, "wiener", where="scan.h5", flat_dose_ratio=_quanta)
    with pytest.raises(DoseMetadataError, match="no model here.*--dose-ratio"):
        plan_stored_doses(_settings(), "dc_diffusion", where="scan.h5", no_model="no model here")
    # the user's values replace what the file lacks
    plan = plan_stored_doses(no_count, "wiener", where="scan.h5", frames_averaged=2,
                             dose_ratio=0.25)
    assert plan.effective(1) == pytest.approx(0.5) and plan.source.startswith("given")
    for method in ("inverse", "unet", "sr_x2"):
        plan = plan_stored_doses(no_count, method, where="scan.h5")
        assert plan.metadata()["dose_ratio"] is None and plan.effective(0) is None


@pytest.mark.parametrize(("kw", "text"), [({"dose_ratio": 0.0}, "dose_ratio"),
                                          ({"dose_ratio": float("inf")}, "dose_ratio"),
                                          ({"frames_averaged": 0}, "frames_averaged"),
                                          ({"frames_averaged": 1.5}, "frames_averaged")])
def test_bad_user_values_are_refused(kw, text):
    with pytest.raises(ValueError, match=text):
        plan_stored_doses(_settings(), "inverse", where="scan.h5", **kw)
