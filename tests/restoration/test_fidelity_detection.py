"""Fidelity report, detection: the window statistic holds its false-alarm rate on noise and
finds a small invented feature the tile statistic dilutes; the tolerance comes from the
measurement, so a feature cannot widen its own null variance; the policy accepts a method only
on its measured consistency on unseen families; the band's leave-one-family-out margin."""
import numpy as np
import pytest
import torch
from conftest import make_scene
from scipy import stats

from xinstrument.restoration.fidelity import FidelityGuard
from xinstrument.restoration.fidelity_report import (
    FidelityReporter,
    calibrate_uncertainty,
    detection_floor,
)
from xinstrument.restoration.physics import DetectorPhysics

torch.set_num_threads(1)


def _pairs(profile, n, size=128, seed=0):
    rng = np.random.default_rng(seed)
    hr = np.stack([make_scene(rng, size) for _ in range(n)])
    gen = torch.Generator().manual_seed(seed + 1)
    lr = DetectorPhysics.from_profile(profile).degrade(torch.from_numpy(hr), gen, 1.0).numpy()
    return hr, lr


def _disc(shape, cy, cx, radius_px):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return np.clip(radius_px + 0.5 - np.hypot(yy - cy, xx - cx), 0, 1).astype(np.float32)


def _signature(guard, res, fake, tile):
    """Forward-model signature of ``fake`` in ``tile``: sum (A fake)^2 / var over the null
    standard deviation of the tile statistic, sqrt(2 c k)."""
    ry, rx = res.tile_edges
    i, j = tile
    af = guard.reblur(fake)[0].numpy()[ry[i]:ry[i + 1], rx[j]:rx[j + 1]]
    var = res.noise_tile_sigma[i, j] ** 2
    return float(np.sum(af ** 2) / var / np.sqrt(2 * res.correlation_factor * af.size))


def test_window_test_holds_its_false_alarm_rate_on_noise(profile):
    alpha = 0.05
    guard = FidelityGuard(profile, tile_px=32, false_alarm_rate=alpha, border_px=0, device="cpu")
    assert guard.window_px == 8
    hr, lr = _pairs(profile, 16, seed=30)
    res = [guard.check(y, x, dose_ratio=1.0) for y, x in zip(lr, hr)]
    flagged = sum(int(r.flagged.sum()) for r in res)
    tiles = sum(r.flagged.size for r in res)
    # both tests together: each tile flagged with probability <= alpha
    assert flagged <= stats.binom.ppf(0.999, tiles, alpha), (flagged, tiles)
    local = sum(int((r.local_chi2 > r.local_threshold).sum()) for r in res)
    assert local <= stats.binom.ppf(0.999, tiles, alpha / 2)
    # the frame decision keeps its family-wise rate
    assert sum(not r.consistent for r in res) <= stats.binom.ppf(0.999, len(res), alpha)


def test_window_test_finds_a_small_fake_the_tile_dilutes(profile):
    hr, lr = _pairs(profile, 6, seed=31)
    with_w = FidelityGuard(profile, tile_px=32, border_px=0, device="cpu")
    tile_only = FidelityGuard(profile, tile_px=32, border_px=0, device="cpu", window_px=0)
    shape = hr[0].shape
    shape_px = _disc(shape, 52, 45, 2)
    found = {"window": 0, "tile": 0}
    sigs = []
    for y, x in zip(lr, hr):
        clean = with_w.check(y, x, dose_ratio=1.0)
        unit = _signature(with_w, clean, shape_px, (1, 1))
        contrast = np.sqrt(6.0 / unit)           # a 6 sigma signature of the tile statistic
        fake = x + contrast * shape_px
        sigs.append(_signature(with_w, clean, contrast * shape_px, (1, 1)))
        found["window"] += bool(with_w.check(y, fake, dose_ratio=1.0).flagged[1, 1])
        found["tile"] += bool(tile_only.check(y, fake, dose_ratio=1.0).flagged[1, 1])
    assert np.allclose(sigs, 6.0, rtol=1e-3)
    assert found["window"] == len(lr) and found["tile"] < found["window"], found


def test_a_fake_cannot_widen_its_own_tolerance(profile):
    hr, lr = _pairs(profile, 1, seed=32)
    guard = FidelityGuard(profile, tile_px=32, border_px=0, device="cpu",
                          tolerance={"sharp": 3.0})
    fake = hr[0] + 0.3 * _disc(hr[0].shape, 80, 80, 3)
    r = guard.check(lr[0], fake, dose_ratio=1.0, method="sharp")
    clean = guard.check(lr[0], hr[0], dose_ratio=1.0, method="sharp")
    assert r.flagged[2, 2] and not clean.flagged.any()
    # the tested variance is the measurement's: the same with and without the fake
    np.testing.assert_allclose(r.test_tile_sigma, clean.test_tile_sigma, rtol=1e-4)
    assert (clean.test_tile_sigma >= clean.noise_tile_sigma - 1e-9).all()


def test_detection_floor_is_a_five_sigma_signature(profile):
    hr, lr = _pairs(profile, 1, seed=33)
    rep = FidelityReporter(profile, tile_px=32, border_px=0, device="cpu", tolerance={},
                           uncertainty={})
    res = rep.check(lr[0], hr[0], dose_ratio=1.0).consistency
    floor = detection_floor(res)
    # a flat offset over one tile (passed by the blur: A delta = delta inside) at the floor
    k = 32 * 32
    sig = floor[1, 2] ** 2 * k / res.noise_tile_sigma[1, 2] ** 2 / np.sqrt(
        2 * res.correlation_factor * k)
    assert sig == pytest.approx(5.0, rel=1e-4)


def test_policy_accepts_only_methods_consistent_on_unseen_families(profile):
    hr, lr = _pairs(profile, 1, seed=34)
    table = {"good_unseen_false_alarm": 0.004, "bad_unseen_false_alarm": 0.05,
             "loose_unseen_false_alarm": 0.0}
    tolerance = {"forward_model": 0.2, "good": 0.1, "bad": 0.1, "loose": 0.5}
    rep = FidelityReporter(profile, tile_px=32, device="cpu", tolerance=tolerance,
                           uncertainty=table)
    good = rep.check(lr[0], hr[0], dose_ratio=1.0, method="good")
    assert good.verdict == "consistent" and good.method_accepted and good.action == "accept"
    # a method's tolerance is never below the forward model's
    assert good.consistency.tolerance == 0.2
    bad = rep.check(lr[0], hr[0], dose_ratio=1.0, method="bad")
    assert bad.verdict == "consistent" and not bad.method_accepted and bad.action == "flag"
    assert "5.0 %" in bad.message and bad.summary()["method_accepted"] == 0
    # consistent on unseen families only thanks to a tolerance beyond the model's own mismatch
    loose = rep.check(lr[0], hr[0], dose_ratio=1.0, method="loose")
    assert not loose.method_accepted and "beyond the forward model" in loose.acceptance
    unknown = rep.check(lr[0], hr[0], dose_ratio=1.0, method="other")
    assert not unknown.method_accepted and "never measured" in unknown.acceptance
    # a policy without a limit accepts every method, and says so
    ok, why = FidelityReporter(profile, device="cpu", uncertainty=table,
                               max_unseen_false_alarm=None).accepts("bad")
    assert ok is True and "no limit" in why
    # a profile without the figures claims nothing either way: not calibrated, flagged
    bare = FidelityReporter(profile, device="cpu", uncertainty={})
    assert bare.accepts("bad") == (None, "profile stand-in has no fidelity calibration; run "
                                         "scripts/calibrate_fidelity.py")
    assert not bare.calibrated and rep.calibrated
    plain = bare.check(lr[0], hr[0], dose_ratio=1.0, method="good")
    assert plain.verdict == "consistent" and plain.method_accepted is None
    assert plain.action == "flag" and plain.summary()["method_accepted"] == -1
    assert "policy not calibrated" in plain.message
    # ... also when its tolerances predate the acceptance figures
    profile.fidelity_tolerance = tolerance
    old = FidelityReporter(profile, device="cpu", uncertainty={})
    assert old.accepts("good")[0] is None and "predates" in old.accepts("good")[1]


def test_band_margin_for_an_unseen_family(profile):
    rep = FidelityReporter(profile, tile_px=16, device="cpu", tolerance={}, uncertainty={})
    phys = DetectorPhysics.from_profile(profile)
    reports, truths, outs, groups = [], [], [], []
    for g, gain in (("a", 0.5), ("b", 0.5), ("c", 0.5), ("d", 1.5)):
        hr, lr = _pairs(profile, 2, seed=40 + len(groups))
        for y, t in zip(lr, hr):
            x = y + gain * (y - phys.blur(torch.from_numpy(y[None]))[0].numpy())
            reports.append(rep.check(y, x, dose_ratio=1.0, method="sharpen"))
            truths.append(t)
            outs.append(x)
            groups.append(g)
    one = calibrate_uncertainty(reports, truths, outs, method="sharpen", groups=groups,
                                leave_one_group_out=False)
    lofo = calibrate_uncertainty(reports, truths, outs, method="sharpen", groups=groups)
    assert one["lofo_margin"] == 1.0 and lofo["lofo_margin"] > 1.0
    assert min(lofo["group_coverage"].values()) >= 0.9
    # the family with larger errors is the one an unseen family resembles: the band left
    # fitted without it would not cover it, the margin does
    assert lofo["width_ratio"] > one["width_ratio"]
    # the margin never widens the band beyond twice the calibration tiles' rms error
    assert lofo["width_ratio"] <= max(2.0, one["width_ratio"]) + 1e-6
    capped = calibrate_uncertainty(reports, truths, outs, method="sharpen", groups=groups,
                                   max_width_ratio=one["width_ratio"])
    assert capped["width_ratio"] == pytest.approx(one["width_ratio"], rel=1e-6)
    assert min(capped["group_coverage"].values()) >= 0.9


@pytest.mark.parametrize("shape, window_px", [((200, 173), 8), ((97, 130), 16), ((64, 64), 9)])
def test_window_maxima_are_those_of_every_window(shape, window_px):
    from xinstrument.restoration.fidelity import _tile_edges, _window_max

    z2 = np.random.default_rng(5).random(shape).astype(np.float32)
    ry, rx = _tile_edges(shape[0], 32), _tile_edges(shape[1], 32)
    best, count = _window_max(torch.from_numpy(z2), ry, rx, window_px)
    ref = np.full(best.shape, -np.inf)
    ref_count = np.zeros(best.shape, int)
    step = window_px // 2
    for y0 in range(0, shape[0] - window_px + 1, step):
        for x0 in range(0, shape[1] - window_px + 1, step):
            i = min(np.searchsorted(ry, y0 + window_px / 2, "right") - 1, best.shape[0] - 1)
            j = min(np.searchsorted(rx, x0 + window_px / 2, "right") - 1, best.shape[1] - 1)
            mean = z2[y0:y0 + window_px, x0:x0 + window_px].astype(np.float64).mean()
            ref[i, j] = max(ref[i, j], mean)
            ref_count[i, j] += 1
    np.testing.assert_allclose(best, ref, rtol=1e-5)
    np.testing.assert_array_equal(count, ref_count)
