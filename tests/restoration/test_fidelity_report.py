"""Fidelity report: the noise model's beam-hardening exponent is measured back, the null-space
band follows the dose, invented null-space detail marks its tile undetermined, the calibrated
band covers the error, the policy's action, the HDF5 layout, and bad input gets no verdict."""
import dataclasses

import numpy as np
import pytest
import torch
from conftest import make_scene

from xinstrument.errors import UserError
from xinstrument.restoration.fidelity import (
    FidelityGuard,
    fit_noise_hardening,
    hdf5_extras_layout,
)
from xinstrument.restoration.fidelity_report import (
    FidelityInputError,
    FidelityReporter,
    calibrate_uncertainty,
    tile_rms,
)
from xinstrument.restoration.physics import DetectorPhysics

torch.set_num_threads(1)


def _frames(profile, n, size=128, dose_ratio=1.0, seed=0, beta=0.0, repeats=1):
    """(hr, lr): scenes and thick frames whose quantum noise variance goes as T^(1 - beta)."""
    rng = np.random.default_rng(seed)
    phys = DetectorPhysics.from_profile(profile)
    gen = torch.Generator().manual_seed(seed + 1)
    hr = np.stack([make_scene(rng, size) for _ in range(n)])
    blurred = phys.blur(torch.from_numpy(hr))
    lr = []
    for _ in range(repeats):
        noise = phys.colored_noise(tuple(hr.shape), gen)
        lr.append((blurred + torch.sqrt(blurred.clamp(min=1e-6) ** (1 - beta) / dose_ratio)
                   * noise).numpy())
    return hr, np.stack(lr, 1) if repeats > 1 else lr[0]


def test_noise_hardening_exponent_is_measured_back(profile):
    hr, stacks = _frames(profile, 3, beta=0.4, repeats=6, seed=4)
    guard = FidelityGuard(profile, tile_px=16, device="cpu")
    fit = fit_noise_hardening(guard, list(stacks), dose_ratio=1.0)
    assert fit["beta"] == pytest.approx(0.4, abs=0.08)
    assert abs(fit["ratio_median_after"] - 1) < abs(fit["ratio_median_before"] - 1)
    # with the exponent the truth passes; without it, the frames' noise is under-predicted
    lr = stacks[:, 0]
    good = FidelityGuard(profile, tile_px=16, device="cpu", noise_hardening_exponent=fit["beta"])
    chi_good = np.mean([good.check(y, x, dose_ratio=1.0).reduced_chi2 for y, x in zip(lr, hr)])
    chi_bad = np.mean([guard.check(y, x, dose_ratio=1.0).reduced_chi2 for y, x in zip(lr, hr)])
    assert abs(chi_good - 1) < 0.05 and chi_bad > chi_good + 0.1
    with pytest.raises(ValueError, match="n >= 4"):
        fit_noise_hardening(guard, stacks[0, :2], dose_ratio=1.0)


def test_null_space_band_shrinks_with_dose(profile):
    hr, _ = _frames(profile, 1)
    guard = FidelityGuard(profile, tile_px=32, device="cpu")
    fracs = []
    for dose in (0.25, 4.0, 64.0):
        _, lr = _frames(profile, 1, dose_ratio=dose)
        r = guard.check(lr[0], hr[0], dose_ratio=dose, null_space=True)
        assert r.null_rms.shape == r.tile_chi2.shape and np.isfinite(r.null_rms).any()
        fracs.append(r.null_band_fraction)
    # more quanta: the data determine more of the spectrum
    assert fracs[0] > fracs[1] > fracs[2]


def test_invented_null_space_detail_marks_its_tile_undetermined(profile):
    # a scene seen through a thin screen (its edges blurred, as a restoration aims at)
    phys = DetectorPhysics.from_profile(profile)
    hr = phys.blur(torch.from_numpy(_frames(profile, 1, seed=2)[0])).numpy()
    lr = (phys.blur(torch.from_numpy(hr)) + torch.sqrt(phys.blur(torch.from_numpy(hr)))
          * phys.colored_noise(hr.shape, torch.Generator().manual_seed(3))).numpy()
    rep = FidelityReporter(profile, tile_px=32, device="cpu", tolerance={}, uncertainty={})
    clean = rep.check(lr[0], hr[0], dose_ratio=1.0)
    inner = np.zeros_like(clean.undetermined)
    inner[1:-1, 1:-1] = True
    i, j = np.argwhere(inner & ~clean.undetermined)[0]    # a tile the data determine
    sl = (slice(32 * i, 32 * i + 32), slice(32 * j, 32 * j + 32))
    # a fine checkerboard texture (Nyquist): the detector passes almost none of it
    faked = hr[0].copy()
    yy, xx = np.mgrid[:32, :32]
    faked[sl] += 0.15 * ((yy + xx) % 2 * 2 - 1)
    rep2 = rep.check(lr[0], faked, dose_ratio=1.0)
    assert rep2.undetermined[i, j]
    assert rep2.null_rms[i, j] > 3 * clean.null_rms[i, j]
    # the data cannot see it: the consistency map does not flag it
    assert not rep2.consistency.flagged[i, j]
    # a bright disc the detector does pass is flagged by the consistency map
    disc = hr[0].copy()
    disc[sl] += 0.3 * ((yy - 16) ** 2 + (xx - 16) ** 2 <= 16)
    assert rep.check(lr[0], disc, dose_ratio=1.0).consistency.flagged[i, j]


def test_calibrated_band_covers_held_out_errors(profile):
    rep = FidelityReporter(profile, tile_px=16, device="cpu", tolerance={}, uncertainty={})
    phys_blur = DetectorPhysics.from_profile(profile)

    def sharpened(lr):
        # a crude restoration: the measurement, sharpened (its error holds detail and noise)
        return lr + 0.5 * (lr - phys_blur.blur(torch.from_numpy(lr)).numpy())

    hr, lr = _frames(profile, 4, seed=10)
    outs = list(sharpened(lr))
    reports = [rep.check(y, xi, dose_ratio=1.0, method="sharpen") for y, xi in zip(lr, outs)]
    truths = list(hr)
    cal = calibrate_uncertainty(reports, truths, outs, method="sharpen", groups=["a", "a", "b", "b"])
    assert cal["coverage"] >= 0.9 and min(cal["group_coverage"].values()) >= 0.9
    assert set(cal["coefficients"]) == {f"sharpen_{t}" for t in
                                        ("null", "detail", "excess", "noise", "spread", "edge")}
    rep.uncertainty = cal["coefficients"]
    inside, width, err2 = [], [], []
    hr, lr = _frames(profile, 4, seed=20)         # other scenes, other noise
    for y, t, xi in zip(lr, hr, sharpened(lr)):
        r = rep.check(y, xi, dose_ratio=1.0, method="sharpen")
        c = r.consistency
        e = tile_rms(xi - t, c.tile_edges, c.border_px)
        ok = np.isfinite(e) & np.isfinite(r.uncertainty)
        inside += list(e[ok] <= r.uncertainty[ok])
        width += list(r.uncertainty[ok])
        err2 += list(e[ok] ** 2)
        assert r.uncertainty_source == "calibrated for sharpen"
    assert np.mean(inside) >= 0.8
    assert np.mean(width) / np.sqrt(np.mean(err2)) < 3


def test_policy_action_and_hdf5_layout(profile):
    hr, lr = _frames(profile, 1, seed=5)
    rep = FidelityReporter(profile, tile_px=32, device="cpu", tolerance={"wiener": 0.0},
                           uncertainty={"wiener_unseen_false_alarm": 0.0})
    ok = rep.check(lr[0], hr[0], dose_ratio=1.0, method="wiener")
    assert ok.verdict == "consistent" and ok.action == "accept"
    assert ok.summary()["method_accepted"] == 1 and ok.hdf5_extras()["method_accepted"] == 1.0
    faked = hr[0].copy()
    faked[40:60, 40:60] += 0.4
    bad = rep.check(lr[0], faked, dose_ratio=1.0, method="wiener")
    assert bad.verdict == "inconsistent" and bad.action == "flag"
    # the report of an accepted fallback's consistent restoration: "fall back"
    fallback = dataclasses.replace(ok, fell_back=True, replaced=bad)
    assert fallback.action == "fall back" and fallback.summary()["action_code"] == 2
    # a fallback whose own restoration is inconsistent is flagged, not passed off
    assert dataclasses.replace(bad, fell_back=True).action == "flag"
    strict = dataclasses.replace(ok, max_undetermined_fraction=0.0,
                                 undetermined=np.ones_like(ok.undetermined))
    assert strict.action == "flag"
    extras = ok.hdf5_extras()
    layout = hdf5_extras_layout(rep.tile_grid(lr[0].shape))
    assert set(extras) == set(layout)
    for k, shape in layout.items():
        assert np.shape(extras[k]) == shape, k
    # attributes of the consistency check read through the report
    assert ok.flagged is ok.consistency.flagged and ok.reduced_chi2 == ok.consistency.reduced_chi2
    assert "undetermined" in ok.message and "action: accept" in ok.message
    # a bare consistency result fills the same HDF5 keys
    bare = FidelityGuard(profile, tile_px=32, device="cpu").check(lr[0], hr[0], dose_ratio=1.0)
    assert set(bare.hdf5_extras()) == set(layout)
    assert bare.hdf5_extras()["method_accepted"] == -1      # it judges no method: no claim


def test_bad_input_gets_an_error_and_no_verdict(profile):
    hr, lr = _frames(profile, 1, seed=6)
    rep = FidelityReporter(profile, tile_px=32, device="cpu")
    kw = {"method": "wiener", "dose_ratio": 1.0, "frames_averaged": 1}
    with pytest.raises(FidelityInputError, match="neither the measured 128x128"):
        rep.report(lr[0], hr[0][:, :100], **kw)
    with pytest.raises(FidelityInputError, match="does not match the measured pixel"):
        rep.report(lr[0], hr[0], measured_pixel_um=1.3, restored_pixel_um=0.65, **kw)
    with pytest.raises(FidelityInputError, match="dose is unknown"):
        rep.report(lr[0], hr[0], method="wiener", dose_ratio=None, frames_averaged=1)
    with pytest.raises(FidelityInputError, match="averaging is unknown"):
        rep.report(lr[0], hr[0], method="wiener", dose_ratio=1.0, frames_averaged=None)
    good = rep.report(lr[0], hr[0], measured_pixel_um=1.3, restored_pixel_um=1.3, **kw)
    assert good.verdict == "consistent"
    no_nnps = dataclasses.replace(profile)
    no_nnps.nnps_lr = None          # (the stand-in fills a missing curve on construction)
    with pytest.raises(FidelityInputError, match="no noise model") as exc:
        FidelityReporter(no_nnps)
    assert isinstance(exc.value, UserError)
    # the policy's path without a dose: said, never judged
    r = rep.check(lr[0], hr[0], dose_ratio=None)
    assert r.verdict == "no verdict" and r.action == "flag" and np.isnan(r.uncertainty).all()
