"""The uncertainty band's calibration rules (calibrate_uncertainty): the conformal quantile per
group and stratum (dose), and the unseen-family margin limited by the widest group's width."""
import numpy as np
import pytest
import torch
from conftest import make_scene

from xinstrument.restoration.fidelity_report import (
    UNCERTAINTY_TERMS,
    FidelityReporter,
    band_features,
    calibrate_uncertainty,
    tile_rms,
)
from xinstrument.restoration.physics import DetectorPhysics

torch.set_num_threads(1)


def _calibration_set(profile, n, seed):
    """Reports of a crude restoration (the measurement, sharpened) of ``n`` scenes, their
    truths and restorations."""
    rng = np.random.default_rng(seed)
    phys = DetectorPhysics.from_profile(profile)
    hr = np.stack([make_scene(rng, 64) for _ in range(n)])
    blurred = phys.blur(torch.from_numpy(hr))
    noise = phys.colored_noise(tuple(hr.shape), torch.Generator().manual_seed(seed + 1))
    lr = (blurred + torch.sqrt(blurred.clamp(min=1e-6)) * noise).numpy()
    outs = lr + 0.5 * (lr - phys.blur(torch.from_numpy(lr)).numpy())
    rep = FidelityReporter(profile, tile_px=16, device="cpu", tolerance={}, uncertainty={})
    reports = [rep.check(y, x, dose_ratio=1.0, method="sharpen") for y, x in zip(lr, outs)]
    return reports, list(hr), list(outs)


def _coverage(coefficients, reports, truths, outs):
    """Share of tiles whose rms error lies inside the band with ``coefficients``."""
    c = np.array([coefficients[f"sharpen_{k}"] for k in UNCERTAINTY_TERMS])
    inside = []
    for r, t, x in zip(reports, truths, outs):
        res = r.consistency
        e = tile_rms(x - t, res.tile_edges, res.border_px)
        band = np.sqrt(band_features(res, r.spread_rms) ** 2 @ c)
        ok = np.isfinite(e) & np.isfinite(band) & (e > 0)
        inside += list(e[ok] <= band[ok] * (1 + 1e-9))
    return float(np.mean(inside))


def test_conformal_quantile_holds_per_stratum(profile):
    reports, truths, outs = _calibration_set(profile, 6, seed=30)
    # the second stratum (say, more exposures averaged) errs more than its band's terms say:
    # its truth carries detail that the restoration misses and the terms do not see
    rng = np.random.default_rng(31)
    truths = [t + (0.0 if i < 3 else 0.02 * rng.standard_normal(t.shape))
              for i, t in enumerate(truths)]
    strata = [1, 1, 1, 16, 16, 16]
    pooled = calibrate_uncertainty(reports, truths, outs, method="sharpen",
                                   leave_one_group_out=False)
    split = calibrate_uncertainty(reports, truths, outs, method="sharpen", strata=strata,
                                  leave_one_group_out=False)
    # pooled, the stratum that errs more falls short; per stratum, every one holds 90 %
    assert _coverage(pooled["coefficients"], reports[3:], truths[3:], outs[3:]) < 0.9
    assert set(split["stratum_coverage"]) == {"all @ 1", "all @ 16"}
    assert min(split["stratum_coverage"].values()) >= 0.9
    assert _coverage(split["coefficients"], reports[3:], truths[3:], outs[3:]) >= 0.9
    with pytest.raises(ValueError, match="strata"):
        calibrate_uncertainty(reports, truths, outs, method="sharpen", strata=[1, 16])


def test_margin_never_widens_any_group_beyond_the_limit(profile):
    reports, truths, outs = _calibration_set(profile, 6, seed=40)
    rng = np.random.default_rng(41)
    # group c errs more than its terms say: leaving it out, the others' band misses it
    truths = [t + (0.0 if i < 4 else 0.015 * rng.standard_normal(t.shape))
              for i, t in enumerate(truths)]
    groups = ["a", "a", "b", "b", "c", "c"]
    free = calibrate_uncertainty(reports, truths, outs, method="sharpen", groups=groups,
                                 max_width_ratio=None)
    assert free["lofo_margin"] > 1.05
    widest = max(free["group_width_ratio"].values())
    # a limit the pooled width meets but the widest group does not
    assert free["width_ratio"] < widest
    limit = 0.5 * (free["width_ratio"] + widest)
    capped = calibrate_uncertainty(reports, truths, outs, method="sharpen", groups=groups,
                                   max_width_ratio=limit)
    # the limit binds inside the margin's range: the margin shrinks but stays above 1, and
    # the widest group sits exactly at the limit
    assert free["lofo_margin"] > capped["lofo_margin"] > 1.0
    assert max(capped["group_width_ratio"].values()) == pytest.approx(limit, rel=1e-6)
    # the calibration groups' own coverage is kept whatever the limit
    assert min(capped["group_coverage"].values()) >= 0.9


def test_calibration_script_fits_the_band_over_every_averaging(profile, capsys):
    """scripts/calibrate_fidelity.py's band: the calibration and stress frames together, the
    conformal quantile per family and averaging; --band-only and --undetermined-only exclude
    each other."""
    import importlib.util
    from pathlib import Path

    from xinstrument.bench_fidelity import FrameSet

    script = Path(__file__).resolve().parents[2] / "scripts" / "calibrate_fidelity.py"
    spec = importlib.util.spec_from_file_location("calibrate_fidelity", script)
    cal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cal)
    phys = DetectorPhysics.from_profile(profile)
    sets = []
    for i, fam in enumerate(("a", "b", "c")):
        truth = make_scene(np.random.default_rng(50 + i), 64)[None].astype(np.float32)
        for n in (1, 16):
            g = torch.Generator().manual_seed(60 + 2 * i + n)
            y = phys.degrade(torch.from_numpy(truth), g, float(n)).numpy()
            out = y + 0.5 * (y - phys.blur(torch.from_numpy(y)).numpy())
            sets.append(FrameSet(fam, n, None, 1.0, y, truth, {"sharpen": out},
                                 {"sharpen": 0.0}))
    rep = FidelityReporter(profile, tile_px=16, device="cpu", tolerance={}, uncertainty={})
    coefs = cal.band(rep, sets, "sharpen")
    assert set(coefs) == {f"sharpen_{t}" for t in UNCERTAINTY_TERMS}
    printed = capsys.readouterr().out
    assert "at 1, 16 exposures" in printed and "unseen-family margin" in printed
    # the band it wrote covers every family at every averaging
    for s in sets:
        reports = [rep.check(y, x, dose_ratio=s.dose_ratio, frames_averaged=s.frames_averaged,
                             method="sharpen") for y, x in zip(s.measured, s.restored["sharpen"])]
        assert _coverage(coefs, reports, list(s.truth), list(s.restored["sharpen"])) >= 0.9
    with pytest.raises(SystemExit):
        cal.main(["--band-only", "--undetermined-only", "--dry-run"])
