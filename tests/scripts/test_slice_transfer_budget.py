"""The slice transfer against the analytic arc budget of scripts/sr_resolution_budget.py."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from xinstrument.sim import micro_tomo_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import sr_resolution_budget as budget


def test_slice_transfer_matches_the_arc_budget_along_and_across_the_tilt():
    rows = budget.slice_transfer_check(micro_tomo_bench(sensor_px=32), (10.0, 20.0, 30.0), 21)
    tol = budget.SLICE_BUDGET_TOLERANCE
    for r in rows:
        for key in ("along_2um", "along_1um", "across_2um", "across_1um"):
            assert r[f"slice_{key}"] == pytest.approx(r[f"budget_{key}"], abs=tol), (r, key)
        assert r["slice_along_1um"] < 0.7 * r["slice_across_1um"]
    # the budget's own along-tilt figures at the 1 um group (21 projections): 0.272, 0.110, 0.083
    along = [r["slice_along_1um"] for r in rows]
    assert along == pytest.approx([0.272, 0.110, 0.083], abs=tol)
    assert along[0] > along[1] > along[2]
