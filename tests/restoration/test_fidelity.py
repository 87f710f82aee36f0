"""Fidelity guard: noise-only residuals give reduced chi-square ~1 and the chosen false-alarm
rate; invented structure is flagged; no noise model -> raw residuals; the acquisition policy
falls back to the classical method."""
import numpy as np
import pytest
import torch
from conftest import make_scene
from scipy import ndimage, stats

from xinstrument.restoration.fidelity import (
    FidelityGuard,
    forward_model_for,
    sampler_uncertainty,
)
from xinstrument.restoration.physics import DetectorPhysics

torch.set_num_threads(1)


def _pairs(profile, n, size=128, dose_ratio=1.0, seed=0):
    """(hr, lr): noise-free scenes and thick frames from the profile's own forward/noise model."""
    rng = np.random.default_rng(seed)
    hr = np.stack([make_scene(rng, size) for _ in range(n)])
    gen = torch.Generator().manual_seed(seed + 1)
    lr = DetectorPhysics.from_profile(profile).degrade(torch.from_numpy(hr), gen, dose_ratio).numpy()
    return hr, lr


def _disc(shape, cy, cx, radius_px, contrast):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (contrast * ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius_px**2)).astype(np.float32)


def test_truth_passes_at_the_chosen_false_alarm_rate(profile):
    alpha = 0.05
    guard = FidelityGuard(profile, tile_px=16, false_alarm_rate=alpha, border_px=0, device="cpu")
    hr, lr = _pairs(profile, 8)
    results = [guard.check(y, x, dose_ratio=1.0) for y, x in zip(lr, hr)]
    flagged = sum(int(r.flagged.sum()) for r in results)
    tiles = sum(r.flagged.size for r in results)
    # a noise-only tile is flagged with probability <= alpha (tile test at alpha / 2, window
    # test at alpha / 2): flagged tiles inside the 99.9 % interval of Binomial(tiles, alpha / 2)
    # from below and of Binomial(tiles, alpha) from above
    assert stats.binom.interval(0.999, tiles, alpha / 2)[0] <= flagged, (flagged, tiles)
    assert flagged <= stats.binom.interval(0.999, tiles, alpha)[1], (flagged, tiles)
    chi2 = np.array([r.reduced_chi2 for r in results])
    c = results[0].correlation_factor
    sd = np.sqrt(2 * c / (128 * 128))            # sd of a frame's reduced chi-square
    assert np.all(np.abs(chi2 - 1) < 5 * sd), chi2
    r = results[0]
    assert r.normalised and r.consistent is True and r.map.shape == (128, 128)
    assert r.tile_chi2.shape == (8, 8) and r.flagged_fraction == r.flagged.mean()
    # the tile test holds half the rate (the window test the other half); its quantile is
    # near the two-moment (Satterthwaite) one and above it (heavier tail of coloured noise)
    nu = 16 * 16 / c
    satterthwaite = stats.chi2.isf(alpha / 2, nu) / nu
    assert satterthwaite <= r.threshold < 1.05 * satterthwaite
    assert abs(float(np.std(r.map)) - 1) < 0.05


def test_noise_scales_with_frames_averaged_and_dose(profile):
    guard = FidelityGuard(profile, tile_px=16, border_px=0, device="cpu")
    hr, lr = _pairs(profile, 1, dose_ratio=4.0, seed=3)   # 4x the quanta = 4 frames averaged
    assert guard.check(lr[0], hr[0], dose_ratio=1.0, frames_averaged=4).reduced_chi2 == \
        pytest.approx(1.0, abs=0.06)
    assert guard.check(lr[0], hr[0], dose_ratio=4.0).reduced_chi2 == pytest.approx(1.0, abs=0.06)
    q = 4.0 * profile.nnps_mean_signal
    assert guard.check(lr[0], hr[0], quanta_per_pixel=q).reduced_chi2 == pytest.approx(1.0, abs=0.06)
    # assuming 4x too much noise: chi2 ~ 1/4, never flagged (the test is one-sided)
    low = guard.check(lr[0], hr[0], dose_ratio=1.0)
    assert low.reduced_chi2 == pytest.approx(0.25, abs=0.03) and not low.flagged.any()


def test_invented_via_is_flagged_where_it_is(profile):
    guard = FidelityGuard(profile, tile_px=16, false_alarm_rate=1e-3, border_px=0, device="cpu")
    hr, lr = _pairs(profile, 1, seed=5)
    noise_sd = np.sqrt(profile.nnps_lr.mean() * 0.85)   # order of the per-pixel noise
    fake = hr[0] + _disc(hr[0].shape, 72, 40, 3, -8 * noise_sd)
    r = guard.check(lr[0], fake, dose_ratio=1.0)
    assert r.flagged[72 // 16, 40 // 16]
    assert r.flagged.sum() <= 4                # the via's tile and at most its neighbours
    assert r.consistent is False and r.tile_chi2[72 // 16, 40 // 16] > r.threshold
    assert "NOT consistent" in r.message


def test_crack_is_flagged(profile):
    guard = FidelityGuard(profile, tile_px=16, false_alarm_rate=1e-3, border_px=0, device="cpu")
    hr, lr = _pairs(profile, 1, seed=6)
    fake = hr[0].copy()
    fake[50, 20:60] -= 0.15                    # one-pixel crack, 40 px long
    r = guard.check(lr[0], fake, dose_ratio=1.0)
    assert r.flagged[50 // 16, 20 // 16:60 // 16].all()
    assert not r.flagged[96:, :].any()


def test_psf_forward_model_is_the_psf_convolution(profile):
    guard = FidelityGuard(profile, device="cpu")
    x = np.random.default_rng(0).random((96, 96)).astype(np.float32)
    ref = ndimage.convolve(x.astype(np.float64), profile.psf[::-1, ::-1], mode="reflect")
    got = guard.reblur(x, "psf")[0].numpy()
    np.testing.assert_allclose(got[8:-8, 8:-8], ref[8:-8, 8:-8], atol=1e-5)
    assert forward_model_for("richardson_lucy") == "psf"
    assert forward_model_for("wiener") == forward_model_for("sr3") == "mtf_ratio"


def test_frame_border_is_left_out(profile):
    guard = FidelityGuard(profile, tile_px=16, device="cpu")
    hr, lr = _pairs(profile, 1, seed=7)
    r = guard.check(lr[0], hr[0], dose_ratio=1.0)
    b = r.border_px
    assert 0 < b < 40
    assert np.isnan(r.map[:b]).all() and np.isfinite(r.map[b:-b, b:-b]).all()
    fixed = FidelityGuard(profile, tile_px=16, border_px=0, device="cpu").check(lr[0], hr[0], dose_ratio=1.0)
    assert fixed.border_px == 0 and np.isfinite(fixed.map).all()


def test_without_noise_model_reports_raw_residuals(profile):
    hr, lr = _pairs(profile, 1, seed=8)
    profile.nnps_lr = None
    guard = FidelityGuard(profile, tile_px=16, border_px=0, device="cpu")
    r = guard.check(lr[0], hr[0], dose_ratio=1.0)
    assert not r.normalised and r.consistent is None and not r.flagged.any()
    assert np.isnan(r.reduced_chi2) and np.isnan(r.threshold) and np.isnan(r.flagged_fraction)
    assert "cannot normalise" in r.message and "NNPS" in r.message
    resid = lr[0] - guard.reblur(hr[0])[0].numpy()
    np.testing.assert_allclose(r.map, resid, atol=1e-6)
    assert r.rms_residual == pytest.approx(float(np.sqrt(np.mean(resid.astype(np.float64) ** 2))), rel=1e-4)


def test_unknown_dose_cannot_normalise(profile):
    hr, lr = _pairs(profile, 1, seed=9)
    r = FidelityGuard(profile, tile_px=16, device="cpu").check(lr[0], hr[0])
    assert not r.normalised and "dose" in r.message


def test_bad_input(profile):
    guard = FidelityGuard(profile, tile_px=16, device="cpu")
    x = np.zeros((64, 64), np.float32)
    with pytest.raises(ValueError, match="integer multiple"):
        guard.check(x, np.zeros((64, 48), np.float32), dose_ratio=1.0)
    with pytest.raises(ValueError, match="integer multiple"):
        guard.check(x, np.zeros((128, 96), np.float32), dose_ratio=1.0)
    with pytest.raises(ValueError, match="tolerance"):
        FidelityGuard(profile, tolerance=-0.1)
    with pytest.raises(ValueError, match="not both"):
        guard.check(x, x, dose_ratio=1.0, quanta_per_pixel=10.0)
    with pytest.raises(ValueError, match="dose_ratio"):
        guard.check(x, x, dose_ratio=-1.0)
    with pytest.raises(ValueError, match="frames_averaged"):
        guard.check(x, x, dose_ratio=1.0, frames_averaged=0)
    with pytest.raises(ValueError, match="smaller than one tile"):
        guard.check(x[:8, :8], x[:8, :8], dose_ratio=1.0)
    with pytest.raises(ValueError, match="non-finite"):
        guard.check(np.full((64, 64), np.nan, np.float32), x, dose_ratio=1.0)
    with pytest.raises(ValueError, match="false_alarm_rate"):
        FidelityGuard(profile, false_alarm_rate=0.0)
    with pytest.raises(ValueError, match="forward model"):
        guard.reblur(x, "gaussian")


def test_sampler_uncertainty_from_a_function():
    frame = np.zeros((32, 32), np.float32)

    def fn(y, seed):
        return y + 0.1 * np.random.default_rng(seed).standard_normal(y.shape)

    u = sampler_uncertainty(fn, frame, variants=range(6), keep_samples=True)
    assert u.std.shape == frame.shape and u.samples.shape == (6, 32, 32)
    assert float(u.std.mean()) == pytest.approx(0.1, rel=0.1)
    assert u.cost_s > 0 and u.cost_relative > 1
    with pytest.raises(ValueError, match="at least 2"):
        sampler_uncertainty(fn, frame, variants=[0])
    with pytest.raises(ValueError, match="explicit variants"):
        sampler_uncertainty(fn, frame)


def test_sampler_uncertainty_of_an_sr3_restorer(profile):
    from xinstrument.restoration import Restorer, build_model, pack_weights

    torch.manual_seed(0)
    profile.save_weights("sr3", pack_weights(build_model("sr3", base_channels=8, depth=2), "sr3"))
    restorer = Restorer(profile, "sr3", device="cpu", steps=2, tile=128)
    _, lr = _pairs(profile, 1, size=64, seed=10)
    u = sampler_uncertainty(restorer, lr[0], variants=[0, 1, 2])
    assert u.variants == [0, 1, 2] and np.isfinite(u.std).all() and float(u.std.max()) > 0
    # the restorer's own sampler is untouched afterwards
    a, b = restorer.restore(lr[0]), restorer.restore(lr[0])
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="diffusion restorer"):
        sampler_uncertainty(Restorer(profile, "inverse", device="cpu"), lr[0])


# ------------------------------------------------------------------------- acquisition policy
# the test frames in ADU: dark 100, flat 100 + ADU_PER_T (the installed references)
ADU_PER_T = 20000.0


def _camera(frame):
    """A simulated sCMOS that delivers one fixed frame (transmission ``frame`` in ADU)."""
    from drivers.camera.simulated import SimulatedCamera

    adu = np.clip(np.rint(100.0 + ADU_PER_T * np.asarray(frame, np.float64)), 0, 65535)
    adu = adu.astype(np.uint16)

    def render(exposure_s, roi, binning, frame_number):
        return adu.copy(), {"voltage_kv": 50.0, "current_ua": 80.0, "xray_on": True}

    cam = SimulatedCamera(render, sensor_shape=adu.shape, max_fps=1000.0)
    cam.exposure_s = 0.01
    return cam


class _Inventing:
    """A restorer that adds a via that is not in the data."""

    method = "sr3"

    def __init__(self, truth):
        self.truth = truth

    def restore(self, frame):
        return self.truth + _disc(self.truth.shape, 64, 64, 3, -0.3)


def _instrument(profile, lr, hr):
    from xinstrument.instrument import Instrument

    inst = Instrument()
    inst.connected = True
    inst.camera = _camera(lr)
    # references that give back the transmission: dark 100 ADU, flat 100 + ADU_PER_T
    from xinstrument.acquisition.frame import ReferenceSet
    inst.install_references(ReferenceSet(np.full(lr.shape, 100.0),
                                         np.full(lr.shape, 100.0 + ADU_PER_T)))
    inst.profile = profile
    # the learned restorers are stand-ins injected below: their weights are never loaded, but
    # the plan checks that the profile names them
    profile.weights = {**profile.weights, "sr3": "sr3.pt", "sr_x2": "sr_x2.pt"}
    inst.restoration_method = "sr3"
    inst.restoration_device = "cpu"
    inst._restorers[_key(inst, "sr3")] = _Inventing(hr)
    _calibrate(profile)
    return inst


def _calibrate(profile, **unseen):
    """The stand-in's acceptance calibration: every method as consistent as the forward model
    (tolerance 0), with ``unseen`` (method=share) flagged on an unseen family (default 0)."""
    methods = ("sr3", "sr_x2", "wiener", "inverse", "richardson_lucy")
    profile.fidelity_tolerance = {"forward_model": 0.0, **{m: 0.0 for m in methods}}
    profile.fidelity_uncertainty = {f"{m}_unseen_false_alarm": float(unseen.get(m, 0.0))
                                    for m in methods}


def _key(inst, method):
    """The instrument's restorer cache key of ``method`` at its current steps and device."""
    return (method, inst.profile.name, inst.restoration_steps, inst.restoration_device)


def test_policy_falls_back_to_classical_when_the_restoration_invents(profile):
    hr, lr = _pairs(profile, 1, seed=11)
    inst = _instrument(profile, lr[0], hr[0])
    inst.set_fidelity_policy(True, max_reduced_chi2=None, fallback_method="wiener", tile_px=16,
                             dose_ratio=1.0)
    fr = inst.acquire(1, restore=True)
    assert fr.restoration_method == "wiener"
    # the frame's report judges the restoration delivered (the fallback's), and carries the
    # report of the one it replaced
    rep = fr.fidelity
    assert rep.fell_back and rep.method == "wiener" and rep.replaced.method == "sr3"
    assert rep.verdict == "consistent" and rep.method_accepted and rep.action == "fall back"
    assert "restored with wiener" in rep.fallback_reason
    assert rep.replaced.flagged[4, 4] and not rep.flagged.any()
    assert rep.summary()["replaced_method"] == "sr3"
    np.testing.assert_allclose(fr.restored, inst.restore(fr.data, "wiener"), atol=1e-6)

    inst.set_fidelity_policy(True, fallback_method=None, tile_px=16, dose_ratio=1.0)
    fr = inst.acquire(1, restore=True)
    assert fr.restoration_method == "sr3" and not fr.fidelity.fell_back
    assert fr.fidelity.consistent is False and fr.fidelity.action == "flag"
    assert "kept and flagged: no accepted fallback (no fallback configured)" in \
        fr.fidelity.message

    inst.set_fidelity_policy(False)
    assert inst.acquire(1, restore=True).fidelity is None


def test_policy_keeps_a_consistent_restoration(profile):
    hr, lr = _pairs(profile, 1, seed=12)
    inst = _instrument(profile, lr[0], hr[0])
    inst._restorers[_key(inst, "sr3")].restore = lambda frame: hr[0]
    inst.set_fidelity_policy(True, fallback_method="wiener", tile_px=16, dose_ratio=1.0)
    fr = inst.acquire(1, restore=True)
    assert fr.restoration_method == "sr3" and fr.fidelity.consistent
    assert not fr.fidelity.fell_back and fr.fidelity.fallback_reason is None
    # a reduced chi-square limit below the measured value forces the fallback
    inst.set_fidelity_policy(True, max_reduced_chi2=0.5, tile_px=16, dose_ratio=1.0)
    fr = inst.acquire(1, restore=True)
    assert fr.restoration_method == "wiener" and "reduced chi2" in fr.fidelity.fallback_reason


def test_policy_without_dose_never_falls_back(profile):
    hr, lr = _pairs(profile, 1, seed=13)
    inst = _instrument(profile, lr[0], hr[0])
    inst.set_fidelity_policy(True, max_reduced_chi2=1.0, tile_px=16)
    fr = inst.acquire(1, restore=True)
    assert not fr.fidelity.normalised and not fr.fidelity.fell_back
    assert fr.restoration_method == "sr3"


def _smoothed(frames, sigma_px=0.5):
    """A regularised 'restoration': the truth with a little detail removed."""
    return np.stack([ndimage.gaussian_filter(f, sigma_px, mode="reflect") for f in frames]).astype(np.float32)


def test_calibrated_tolerance_passes_smoothing_but_not_inventions(profile):
    from xinstrument.restoration.fidelity import calibrate_tolerance

    guard = FidelityGuard(profile, tile_px=16, false_alarm_rate=1e-3, border_px=0, device="cpu",
                          tolerance={})
    hr, lr = _pairs(profile, 8, seed=21)
    pairs = list(zip(lr, _smoothed(hr)))
    plain = [guard.check(y, x, dose_ratio=1.0, method="smooth") for y, x in pairs]
    assert sum(int(r.flagged.sum()) for r in plain) > 0      # smoothing fails the plain null model
    out = calibrate_tolerance(guard, pairs, method="smooth", dose_ratio=1.0)
    assert out["tolerance"] > 0 and out["flagged_after"] == 0 and out["flagged_before"] > 0
    assert guard.tolerances == {}                            # calibration leaves the guard as it was
    tuned = FidelityGuard(profile, tile_px=16, false_alarm_rate=1e-3, border_px=0, device="cpu",
                          tolerance={"smooth": out["tolerance"]})
    # held-out frames of the same method pass at about the false-alarm rate
    hr2, lr2 = _pairs(profile, 4, seed=22)
    held = [tuned.check(y, x, dose_ratio=1.0, method="smooth") for y, x in zip(lr2, _smoothed(hr2))]
    # conformal bound 1/(512 + 1) per tile: ~0.5 of these 256 tiles expected, 3 is far out
    assert out["held_out_rate_bound"] == pytest.approx(1 / 513)
    assert sum(int(r.flagged.sum()) for r in held) <= 3
    assert held[0].tolerance == out["tolerance"] and "smooth" in held[0].tolerance_source
    # an invented via on a held-out frame is still flagged where it is
    noise_sd = np.sqrt(profile.nnps_lr.mean() * 0.85)
    fake = _smoothed(hr2[:1])[0] + _disc(hr2[0].shape, 72, 40, 3, -8 * noise_sd)
    r = tuned.check(lr2[0], fake, dose_ratio=1.0, method="smooth")
    assert r.flagged[72 // 16, 40 // 16] and r.consistent is False


def test_tolerance_comes_from_the_profile_by_method(profile):
    profile.fidelity_tolerance = {"forward_model": 0.05, "unet": 0.3}
    guard = FidelityGuard(profile, device="cpu")
    assert guard.tolerance_for("unet") == (0.3, "calibrated for unet")
    eps, source = guard.tolerance_for("wiener")
    assert eps == 0.05 and "not calibrated" in source
    assert FidelityGuard(profile, tolerance=0.1, device="cpu").tolerance_for("unet")[0] == 0.1
    profile.fidelity_tolerance = {}
    assert FidelityGuard(profile, device="cpu").tolerance_for("unet") == (0.0, "none calibrated")


def test_calibration_refuses_frames_that_are_not_ordinary(profile):
    from xinstrument.restoration.fidelity import calibrate_tolerance

    guard = FidelityGuard(profile, tile_px=16, border_px=0, device="cpu", tolerance={})
    hr, lr = _pairs(profile, 1, seed=23)
    wrong = np.roll(hr[0], 9, axis=1)          # a restoration of another place
    with pytest.raises(ValueError, match="not ordinary"):
        calibrate_tolerance(guard, [(lr[0], wrong)], method="unet", dose_ratio=1.0,
                            max_tolerance=0.5)
    with pytest.raises(ValueError, match="at least one"):
        calibrate_tolerance(guard, [], method="unet", dose_ratio=1.0)


def test_super_resolved_restoration_is_binned_to_the_measured_grid(profile):
    guard = FidelityGuard(profile, tile_px=16, border_px=0, device="cpu", tolerance={})
    hr, lr = _pairs(profile, 1, seed=24)
    fine = np.kron(hr[0], np.ones((2, 2), np.float32))      # the truth on a 2x finer grid
    r = guard.check(lr[0], fine, dose_ratio=1.0, method="sr_x2")
    same = guard.check(lr[0], hr[0], dose_ratio=1.0)
    assert r.scale == 2 and r.map.shape == lr[0].shape
    assert r.reduced_chi2 == pytest.approx(same.reduced_chi2, rel=1e-4) and r.consistent


class _InventingSR(_Inventing):
    """A 2x super-resolving restorer that adds a via that is not in the data."""

    scale = 2
    method = "sr_x2"

    def restore(self, frame):
        return np.kron(super().restore(frame), np.ones((2, 2), np.float32))


def test_policy_falls_back_on_the_super_resolved_grid(profile):
    hr, lr = _pairs(profile, 1, seed=25)
    inst = _instrument(profile, lr[0], hr[0])
    inst.restoration_method = "sr_x2"
    inst._restorers[_key(inst, "sr_x2")] = _InventingSR(hr[0])
    inst.set_fidelity_policy(True, fallback_method="wiener", tile_px=16, dose_ratio=1.0)
    fr = inst.acquire(1, restore=True)
    assert fr.fidelity.scale == 2 and fr.fidelity.fell_back
    assert fr.restoration_method == "wiener+bicubic_x2"
    assert fr.restored.shape == (2 * lr[0].shape[0], 2 * lr[0].shape[1])
    assert fr.fidelity.replaced.flagged[64 // 16, 64 // 16]
    assert fr.fidelity.replaced.scale == 2 and fr.fidelity.method == "wiener"


def test_photon_starved_frames_are_not_normalised(profile):
    hr, lr = _pairs(profile, 1, seed=26)
    guard = FidelityGuard(profile, tile_px=16, border_px=0, device="cpu")
    starved = 2.0 / profile.nnps_mean_signal          # 2 quanta per pixel in the open beam
    r = guard.check(lr[0], hr[0], dose_ratio=starved)
    assert not r.normalised and r.consistent is None and "quanta per pixel" in r.message
    # averaging 8 such frames gives 16 quanta: normalised again
    assert guard.check(lr[0], hr[0], dose_ratio=starved, frames_averaged=8).normalised


def test_policy_falls_back_for_a_method_it_does_not_accept(profile):
    hr, lr = _pairs(profile, 1, seed=14)
    inst = _instrument(profile, lr[0], hr[0])
    inst._restorers[_key(inst, "sr3")].restore = lambda frame: hr[0]      # consistent frames
    # the profile's calibration: sr3 needed a tolerance beyond the forward model's
    profile.fidelity_tolerance = {"forward_model": 0.1, "sr3": 2.0, "wiener": 0.1}
    profile.fidelity_uncertainty = {"sr3_unseen_false_alarm": 0.0,
                                    "wiener_unseen_false_alarm": 0.0}
    inst.set_fidelity_policy(True, fallback_method="wiener", tile_px=16, dose_ratio=1.0)
    fr = inst.acquire(1, restore=True)
    replaced = fr.fidelity.replaced
    assert replaced.verdict == "consistent" and replaced.method_accepted is False
    assert fr.restoration_method == "wiener" and fr.fidelity.fell_back
    assert fr.fidelity.method_accepted is True and fr.fidelity.action == "fall back"
    assert "not accepted" in fr.fidelity.fallback_reason
    # accepted once its figures say so
    profile.fidelity_tolerance = {"forward_model": 0.1, "sr3": 0.05, "wiener": 0.1}
    inst.set_fidelity_policy(True, fallback_method="wiener", tile_px=16, dose_ratio=1.0)
    fr = inst.acquire(1, restore=True)
    assert fr.restoration_method == "sr3" and fr.fidelity.action == "accept"


def test_a_fallback_the_policy_does_not_accept_is_refused(profile):
    from xinstrument.errors import UserError

    hr, lr = _pairs(profile, 1, seed=15)
    inst = _instrument(profile, lr[0], hr[0])
    # Wiener consistent on the training families only with a tolerance beyond the model's
    profile.fidelity_tolerance = {"forward_model": 0.1, "sr3": 0.05, "wiener": 3.3,
                                  "inverse": 0.05}
    profile.fidelity_uncertainty = {"sr3_unseen_false_alarm": 0.0,
                                    "wiener_unseen_false_alarm": 0.0,
                                    "inverse_unseen_false_alarm": 0.0}
    with pytest.raises(UserError) as exc:
        inst.set_fidelity_policy(True, fallback_method="wiener", tile_px=16, dose_ratio=1.0)
    text = str(exc.value)
    assert "'wiener' refused" in text and "profile stand-in" in text
    assert "tolerance 3.3 against the model's 0.1" in text and "'inverse'" in text
    assert inst.fidelity_guard is None                      # the policy was not set
    # "auto" takes the accepted classical method (richardson_lucy has no figures: refused)
    inst.set_fidelity_policy(True, fallback_method="auto", tile_px=16, dose_ratio=1.0)
    assert inst.fidelity_fallback == "inverse"
    fr = inst.acquire(1, restore=True)                      # sr3 invents a via
    assert fr.restoration_method == "inverse" and fr.fidelity.fell_back
    assert fr.fidelity.method == "inverse" and fr.fidelity.method_accepted is True
    assert "restored with inverse" in fr.fidelity.fallback_reason


def test_without_an_accepted_fallback_the_frame_is_kept_and_flagged(profile):
    hr, lr = _pairs(profile, 1, seed=16)
    inst = _instrument(profile, lr[0], hr[0])
    _calibrate(profile, wiener=0.05, inverse=0.05, richardson_lucy=0.05)
    inst.set_fidelity_policy(True, fallback_method="auto", tile_px=16, dose_ratio=1.0)
    assert inst.fidelity_fallback is None
    assert "accepts no classical method" in inst.fidelity_fallback_reason
    fr = inst.acquire(1, restore=True)
    rep = fr.fidelity
    assert fr.restoration_method == "sr3" and not rep.fell_back
    assert rep.action == "flag" and rep.summary()["action_code"] == 1
    assert "kept and flagged: no accepted fallback" in rep.message
    assert "accepts no classical method" in rep.kept_reason


def test_the_best_accepted_classical_method_is_the_fallback(profile):
    hr, lr = _pairs(profile, 1, seed=17)
    inst = _instrument(profile, lr[0], hr[0])
    _calibrate(profile, wiener=0.004, inverse=0.0)
    inst.set_fidelity_policy(True, tile_px=16, dose_ratio=1.0)        # default: "auto"
    assert inst.fidelity_fallback == "inverse"
    assert "0.0 % of clean tiles" in inst.fidelity_fallback_reason
    _calibrate(profile, wiener=0.0, inverse=0.0)
    profile.fidelity_tolerance["inverse"] = 0.2        # ties broken by the smaller tolerance
    inst.set_fidelity_policy(True, tile_px=16, dose_ratio=1.0)
    assert inst.fidelity_fallback == "wiener"


def test_a_profile_without_calibration_claims_nothing(profile):
    from xinstrument.errors import UserError

    hr, lr = _pairs(profile, 1, seed=18)
    inst = _instrument(profile, lr[0], hr[0])
    inst._restorers[_key(inst, "sr3")].restore = lambda frame: hr[0]      # consistent frames
    profile.fidelity_tolerance = {}
    profile.fidelity_uncertainty = {}
    with pytest.raises(UserError, match="not calibrated, so it accepts no fallback"):
        inst.set_fidelity_policy(True, fallback_method="wiener", tile_px=16, dose_ratio=1.0)
    inst.set_fidelity_policy(True, tile_px=16, dose_ratio=1.0)
    assert inst.fidelity_fallback is None
    fr = inst.acquire(1, restore=True)
    rep = fr.fidelity
    # consistent with the data, but the policy vouches for nothing it was not calibrated for
    assert rep.verdict == "consistent" and rep.method_accepted is None
    assert rep.action == "flag" and fr.restoration_method == "sr3"
    assert rep.acceptance == ("profile stand-in has no fidelity calibration; run "
                              "scripts/calibrate_fidelity.py")
    assert "policy not calibrated: profile stand-in has no fidelity calibration" in rep.message
    s = rep.summary()
    assert s["method_accepted"] == -1 and s["action_code"] == 1
    assert rep.hdf5_extras()["method_accepted"] == -1.0
