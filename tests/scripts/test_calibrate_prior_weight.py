"""The prior-weight calibration of scripts/calibrate_prior_weight.py: its choice rule, a real
(small) sweep through the profile's forward model, and its refusals."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import calibrate_prior_weight as cpw


def _scores(table):
    """{weight: {(dose, family): (psnr, ssim)}} -> the sweep's flat form."""
    return {(d, f, w): v for w, cells in table.items() for (d, f), v in cells.items()}


def test_rule_takes_the_best_mean_psnr_that_hurts_no_family():
    cells = {0.1: {(1.0, "pcb"): (30.0, 0.90), (1.0, "charts"): (31.0, 0.92)},
             # best mean PSNR, but one family loses 0.01 SSIM: refused
             0.3: {(1.0, "pcb"): (31.0, 0.91), (1.0, "charts"): (31.2, 0.91)},
             0.2: {(1.0, "pcb"): (30.5, 0.905), (1.0, "charts"): (31.1, 0.919)}}
    chosen, table = cpw.choose(_scores(cells), default=0.1)
    assert chosen == 0.2
    assert table[0.3][2] == pytest.approx(-0.01)
    assert table[0.2][0] == pytest.approx(30.8)
    # when every other weight hurts a family, the default stays
    cells[0.2][1.0, "charts"] = (31.1, 0.915)
    assert cpw.choose(_scores(cells), default=0.1)[0] == 0.1
    with pytest.raises(ValueError, match="default weight 0.5 must be among the candidates"):
        cpw.choose(_scores(cells), default=0.5)
    del cells[0.2][1.0, "pcb"]
    with pytest.raises(ValueError, match=r"weight 0.2 has no score for dose/family \(1.0, 'pcb'\)"):
        cpw.choose(_scores(cells), default=0.1)


def test_sweep_scores_every_cell_through_the_profiles_forward_model():
    from xinstrument.profiles import find_profile

    prof = find_profile("sim-gos134")
    scores = cpw.sweep(prof, (0.1, 0.2), (0.2,), ("pcb",), 1, 48, progress=lambda m: None)
    assert set(scores) == {(0.2, "pcb", 0.1), (0.2, "pcb", 0.2)}
    # a heavier prior changes the restoration; both are sensible restorations of the PCB
    (p1, s1), (p2, s2) = scores[0.2, "pcb", 0.1], scores[0.2, "pcb", 0.2]
    assert (p1, s1) != (p2, s2)
    assert 20 < min(p1, p2) and 0.6 < min(s1, s2) <= max(s1, s2) < 1
    with pytest.raises(ValueError, match="held-out"):
        cpw.sweep(prof, (0.1,), (1.0,), ("siemens_star",), 1, 48, progress=lambda m: None)


@pytest.mark.parametrize("argv, message", [
    (["--profile", "no-such-profile", "--dry-run"], "--profile no-such-profile"),
    (["--profile", "sim-gos134", "--weights", "0.1,heavy"], "--weights: expected comma"),
    (["--profile", "sim-gos134", "--doses", "1,-0.4"], "--doses: every value must be"),
    (["--profile", "sim-gos134", "--frames", "0"], "--frames must be 1..64"),
])
def test_bad_options_are_one_clear_error(argv, message):
    with pytest.raises(SystemExit, match=message):
        cpw.main(argv)
