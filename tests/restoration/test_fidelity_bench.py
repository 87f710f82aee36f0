"""`xinstrument bench fidelity` on a small held-out set: fakes, signatures, targets, bad input."""
import numpy as np
import pytest

from xinstrument.bench_fidelity import fidelity_benchmark, format_fidelity_bench, inject_fake
from xinstrument.cli import main


def test_fakes_have_their_contrast_and_shape():
    rng = np.random.default_rng(0)
    x = np.full((64, 64), 0.5, np.float32)
    for kind, n_px in (("disc", 25), ("crack", 25)):
        xf, fake = inject_fake(x, kind, (32, 32), 0.1, rng)
        assert np.isclose(np.abs(fake).max(), 0.1) and np.allclose(xf - x, fake)
        assert abs(int((fake > 0.05).sum()) - n_px) <= 6, kind
    xf, fake = inject_fake(x + np.eye(64, dtype=np.float32), "removed", (32, 32), 1.0, rng)
    assert np.abs(xf[28:37, 28:37] - xf[28:37, 28:37].mean()).max() < 1e-6   # detail erased
    with pytest.raises(ValueError, match="unknown fake kind"):
        inject_fake(x, "blob", (32, 32), 0.1, rng)


@pytest.mark.slow
def test_benchmark_on_a_small_held_out_set(tmp_path):
    b = fidelity_benchmark(["sim-yag200-5x"], families=("siemens_star",), size_px=96, seeds=1,
                           averaging=(1,), methods=["wiener"], fakes_per_frame=2, cost_px=96,
                           cache=tmp_path)
    rows = {r.method: r for r in b.rows}
    assert set(rows) == {"truth", "wiener"}
    row = rows["wiener"]
    assert row.family == "siemens_star" and row.tiles > 0
    # the noise-free truth (forward and noise model alone) raises no false alarm here
    assert rows["truth"].false_alarm == 0 and rows["truth"].frames_accepted == 1
    assert 0 <= row.false_alarm <= 1 and 0 <= row.coverage <= 1 and row.width_ratio > 0
    # fakes the detector passes (signature above 5 sigma of the tile statistic) are seen by
    # the consistency map or, where the method's tolerance hides them, by the uncertainty map
    strong = [f for f in row.fakes if f["signature_sigma"] > 5]
    assert strong and all(f["flagged"] or f["undetermined"] for f in strong)
    # signatures grow with contrast
    discs = sorted((f["contrast"], f["signature_sigma"]) for f in row.fakes if f["kind"] == "disc")
    assert discs[-1][1] > discs[0][1]
    # the undetermined map's specificity is reported beside its detection: the Wiener
    # restoration's clean tiles are not all undetermined (the rule "band above the detection
    # floor" marked every one), and the bench says whether each fake turned its tile
    assert row.undetermined < 0.5
    assert all({"undetermined_before", "within_band"} <= set(f) for f in row.fakes)
    text = format_fidelity_bench(b)
    for line in ("false alarms <= 1 %", "fakes above 5 sigma flagged", "coverage >= 90 %",
                 "cost <= one extra transform pair", "clean tiles undetermined",
                 "turned undetermined by the fake"):
        assert line in text
    assert b.cost[0]["floor_pairs"] in (1.5, 2.5)
    assert b.cost[0]["report_over_pair"] > 0
    assert list(tmp_path.glob("*.npz"))          # frames and restorations kept for a rerun


def test_bad_arguments_are_one_line_errors(capsys):
    assert main(["bench", "fidelity", "--family", "nope"]) == 2
    assert "unknown sample family nope" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["bench", "fidelity", "--size", "10"])
    assert exc.value.code == 2
