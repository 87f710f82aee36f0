"""`xinstrument bench fidelity --undetermined-roc`: the undetermined map's trade-off between the
clean tiles it marks and the null-space fakes it covers, measured on the report's own statistic
(recomputed per pixel, checked against the report), and where a fake's energy lies."""
import numpy as np
import pytest
import torch

from xinstrument.bench_fidelity import (
    _clean_share_at_coverage,
    _coverage_at_clean,
    fake_null_part,
    family_frames,
    fidelity_benchmark,
    format_undetermined_roc,
    inject_fake,
    null_band_maps,
    undetermined_roc,
    window_rms_max,
    window_scores,
)
from xinstrument.cli import main
from xinstrument.profiles import find_profile
from xinstrument.restoration import Restorer
from xinstrument.restoration.dose import restore_with_dose
from xinstrument.restoration.fidelity_report import FidelityReporter

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def star_wiener():
    """A held-out Siemens star frame on the shipped YAG profile, its Wiener restoration and the
    clean report."""
    prof = find_profile("sim-yag200-5x")
    frame = family_frames(prof, "siemens_star", [7311], 128, 1)[0]
    x = np.asarray(restore_with_dose(Restorer(prof, "wiener", device="cpu"), frame.measured, 1,
                                     frame.dose_ratio), np.float32)
    rep = FidelityReporter(prof, device="cpu")
    kw = {"dose_ratio": frame.dose_ratio, "frames_averaged": 1,
          "flat_frames_averaged": frame.flat_frames_averaged}
    return rep, frame, x, kw, rep.check(frame.measured, x, method="wiener", **kw)


def test_per_pixel_maps_reproduce_the_reports_statistic(star_wiener):
    rep, frame, x, kw, clean = star_wiener
    maps = null_band_maps(rep.guard, frame.measured, x, clean.consistency, forward="mtf_ratio",
                          **kw)
    z = window_scores(maps, (3, 8))
    tested = np.isfinite(clean.null_local_z)
    assert tested.any()
    np.testing.assert_allclose(z[8][tested], clean.null_local_z[tested], rtol=1e-4, atol=1e-6)
    # a different window is a different statistic
    assert not np.allclose(z[3][tested], z[8][tested])


def test_a_strong_crack_is_null_band_and_marked_a_clean_tile_is_not(star_wiener):
    rep, frame, x, kw, clean = star_wiener
    tile = (2, 2)                       # the 32 px tile holding (64, 64)
    assert not clean.undetermined[tile]
    maps = null_band_maps(rep.guard, frame.measured, x, clean.consistency, forward="mtf_ratio",
                          **kw)
    xf, fake = inject_fake(x, "crack", (64, 64), 0.3, np.random.default_rng(1))
    uf, share = fake_null_part(rep.guard, maps, fake)
    # a one-pixel crack lies mostly where transfer x SNR < 1 ...
    assert share > 0.5
    faked = rep.check(frame.measured, xf, method="wiener", **kw)
    # ... where the data cannot see it, and the map marks its tile
    assert not faked.consistency.flagged[tile]
    assert faked.undetermined[tile]
    alone = window_rms_max(uf ** 2 / maps.den, maps.tile_edges, 8)[tile]
    assert alone > clean.undetermined_threshold
    # a weak one (0.02 transmission) adds far less than the threshold and is not marked
    xw, weak = inject_fake(x, "crack", (64, 64), 0.02, np.random.default_rng(1))
    uw, _ = fake_null_part(rep.guard, maps, weak)
    assert window_rms_max(uw ** 2 / maps.den, maps.tile_edges, 8)[tile] < \
        0.5 * clean.undetermined_threshold
    assert not rep.check(frame.measured, xw, method="wiener", **kw).undetermined[tile]


def test_clean_share_at_coverage_and_coverage_at_clean_share():
    clean = np.arange(100, dtype=float) / 100           # 0.00 .. 0.99
    faked = np.linspace(0.5, 1.5, 11)                   # 0.5, 0.6, ... 1.5
    m, share = _clean_share_at_coverage(clean, faked, 0.9)
    # one of the 11 fakes (under 10 %) may stay unmarked: the threshold sits just below the
    # second lowest, and the clean scores from 0.60 up lie above it
    assert np.mean(faked > m) >= 0.9 and 0.5 < m < 0.6 and share == pytest.approx(0.40)
    assert _coverage_at_clean(clean, faked, 0.1) == pytest.approx(np.mean(faked > 0.89))


@pytest.mark.slow
def test_roc_option_runs_and_its_marked_shares_fall_with_the_threshold(tmp_path):
    b = fidelity_benchmark(["sim-yag200-5x"], families=("siemens_star",), size_px=96, seeds=1,
                           averaging=(1,), methods=["wiener"], fakes_per_frame=2, cache=tmp_path,
                           undetermined_roc=True, train_seeds=1, cost=False)
    assert b.roc_check_sigma < 1e-3 and not b.cost
    cal = b.multiscale["sim-yag200-5x"]
    # the 8 px window's training threshold is the rule the profile's stored one came from
    assert set(cal.window_thresholds) == {"truth", "wiener"}
    roc = undetermined_roc(b)
    every = next(e for e in roc if e["methods"] == "every")
    assert every["clean_tiles"] > 0 and every["fakes"]["all"] > 0
    for stat in ("single", "multi"):
        c = every["curves"][stat]
        assert np.all(np.diff(c["clean"]) <= 0) and np.all(np.diff(c["all"]) <= 0)
        at = every["at_coverage"][f"{stat}_all"]
        fakes = np.asarray([f[f"score_{stat}_after"] for r in b.rows for f in r.fakes
                            if r.method == "wiener" and f["signature_sigma"] <= 5])
        assert np.mean(fakes > at["multiplier"]) >= 0.9
    text = format_undetermined_roc(b, roc)
    assert "clean tiles marked for 90 % coverage" in text and "matched filter" in text
    assert main(["bench", "fidelity", "--undetermined-roc", "--family", "nope"]) == 2
