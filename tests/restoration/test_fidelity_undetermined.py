"""Fidelity report, the undetermined map: a clean restoration of a held-out sample is not
marked undetermined wholesale (the map is specific), an invented null-space texture turns its
tile undetermined while the consistency map cannot see it, and the thresholds' calibration."""
import numpy as np
import pytest
import torch

from xinstrument.bench_fidelity import family_frames
from xinstrument.profiles import find_profile
from xinstrument.restoration import Restorer
from xinstrument.restoration.dose import restore_with_dose
from xinstrument.restoration.fidelity_report import (
    FidelityReporter,
    calibrate_undetermined,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def star_wiener():
    """A twin frame of the held-out Siemens star on the shipped YAG profile, its truth and its
    Wiener restoration at the frame's dose."""
    prof = find_profile("sim-yag200-5x")
    frame = family_frames(prof, "siemens_star", [7311], 128, 1)[0]
    restorer = Restorer(prof, "wiener", device="cpu")
    x = np.asarray(restore_with_dose(restorer, frame.measured, 1, frame.dose_ratio), np.float32)
    return prof, frame, x


def test_clean_wiener_is_mostly_determined_and_a_null_space_fake_is_not(star_wiener):
    prof, frame, x = star_wiener
    rep = FidelityReporter(prof, device="cpu")
    kw = {"dose_ratio": frame.dose_ratio, "frames_averaged": 1,
          "flat_frames_averaged": frame.flat_frames_averaged, "method": "wiener"}
    clean = rep.check(frame.measured, x, **kw)
    # calibrated thresholds: the profile's, not the uncalibrated fallback
    assert np.isfinite(clean.undetermined_threshold)
    assert "wiener" in clean.undetermined_source or "real samples" in clean.undetermined_source
    # Wiener puts little in the null band: the map marks few clean tiles (the rule "band above
    # the detection floor" marked every one of them)
    assert clean.undetermined_fraction <= 0.1, clean.undetermined_fraction
    # an invented fine texture (a checkerboard at Nyquist, which the screen does not pass) in a
    # tile the clean report calls determined
    inner = np.isfinite(clean.consistency.tile_chi2) & ~clean.undetermined
    inner[[0, -1], :] = inner[:, [0, -1]] = False
    i, j = np.argwhere(inner)[0]
    ry, rx = clean.consistency.tile_edges
    cy, cx = (ry[i] + ry[i + 1]) // 2, (rx[j] + rx[j + 1]) // 2
    yy, xx = np.mgrid[:12, :12]
    amplitude = 2.0 * clean.undetermined_threshold * float(clean.consistency.noise_tile_sigma[i, j])
    faked = x.copy()
    faked[cy - 6:cy + 6, cx - 6:cx + 6] += amplitude * ((yy + xx) % 2 * 2 - 1)
    fake = rep.check(frame.measured, faked, **kw)
    assert fake.undetermined[i, j] and not clean.undetermined[i, j]
    assert fake.null_local_z[i, j] > 1.5 * clean.undetermined_threshold
    # ... where the data cannot see it: the consistency map does not flag the tile
    assert not fake.consistency.flagged[i, j]
    # the rest of the map is unchanged by it (a local statistic)
    others = np.ones_like(fake.undetermined)
    others[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2] = False
    np.testing.assert_array_equal(fake.undetermined[others], clean.undetermined[others])


def test_threshold_is_the_smaller_of_the_method_and_the_real_samples(star_wiener):
    prof, frame, x = star_wiener
    table = {"forward_model_undetermined": 3.0, "quiet_undetermined": 1.5,
             "painter_undetermined": 6.0}
    rep = FidelityReporter(prof, device="cpu", uncertainty=table)
    assert rep.undetermined_threshold("quiet")[0] == 1.5
    # a method that ordinarily paints more null-band detail than real samples hold is judged
    # against the real samples
    thr, why = rep.undetermined_threshold("painter")
    assert thr == 3.0 and "real samples" in why and "6" in why
    assert rep.undetermined_threshold("unknown")[0] == 3.0
    bare = FidelityReporter(prof, device="cpu", uncertainty={})
    assert np.isnan(bare.undetermined_threshold("wiener")[0])
    # the rule follows the threshold: a lower one marks at least the same tiles
    kw = {"dose_ratio": frame.dose_ratio, "frames_averaged": 1,
          "flat_frames_averaged": frame.flat_frames_averaged}
    low = rep.check(frame.measured, x, method="quiet", **kw)
    high = rep.check(frame.measured, x, method="painter", **kw)
    assert (low.undetermined >= high.undetermined).all()
    np.testing.assert_array_equal(low.undetermined, low.null_local_z > 1.5)


def test_calibrated_threshold_is_each_familys_conformal_quantile(star_wiener):
    prof, frame, x = star_wiener
    rep = FidelityReporter(prof, device="cpu")
    kw = {"dose_ratio": frame.dose_ratio, "frames_averaged": 1,
          "flat_frames_averaged": frame.flat_frames_averaged, "method": "wiener"}
    reports = [rep.check(frame.measured, x, **kw), rep.check(frame.measured, frame.truth, **kw)]
    cal = calibrate_undetermined(reports, groups=["wiener", "truth"], quantile=0.9)
    per_group = []
    for r in reports:
        z = np.sort(r.null_local_z[np.isfinite(r.null_local_z)])
        per_group.append(z[int(np.ceil((z.size + 1) * 0.9)) - 1])
    assert cal["threshold"] == pytest.approx(max(per_group))
    # no calibration family has more than 10 % of its tiles above it
    assert max(cal["group_share"].values()) <= 0.1
    with pytest.raises(ValueError, match="quantile"):
        calibrate_undetermined(reports, quantile=1.0)
