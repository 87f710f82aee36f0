"""The per-family restoration benchmark scores each method as a user would run it: at a dose
other than the profile's calibration, the physics-in-the-loop methods are told that dose."""
from __future__ import annotations

import numpy as np
import pytest

from xinstrument.family_bench import family_benchmark, speed_table
from xinstrument.profiles import find_profile
from xinstrument.restoration.metrics import psnr
from xinstrument.restoration.physics import DetectorPhysics
from xinstrument.restoration.pnp import pnp_restore
from xinstrument.sim.families import EVAL_SEED_BASE, FAMILIES, measurement_pairs


def test_physics_in_the_loop_methods_are_scored_at_the_frames_dose():
    dose = 0.2
    prof = find_profile("sim-yag200-5x")
    b = family_benchmark(prof, families=["pcb"], n_per_family=1, size_px=48, dose_ratio=dose,
                         methods=["pnp_hqs"])
    assert b.dose_ratio == dose and not b.methods["pnp_hqs"].error
    # the same frame restored by hand with its dose, and at the calibration dose
    phys = DetectorPhysics.from_profile(prof)
    seed = EVAL_SEED_BASE + 1000 * (FAMILIES.index("pcb") + 1)      # the benchmark's seed
    lr, hr = measurement_pairs(phys, "pcb", 1, 48, seed, dose_ratio=dose, bench="lens-yag")
    at_dose = float(np.mean(psnr(pnp_restore(lr[0], prof, dose_ratio=dose), hr[0], 1.0)))
    at_calibration = float(np.mean(psnr(pnp_restore(lr[0], prof), hr[0], 1.0)))
    assert at_dose > at_calibration + 0.5             # the dose matters at this noise
    assert b.methods["pnp_hqs"].per_family["pcb"]["psnr_db"] == pytest.approx(at_dose, abs=1e-3)


def test_speed_table_times_its_references_whatever_methods_are_chosen(capsys):
    from xinstrument.cli import main

    rows = dict(speed_table(find_profile("sim-yag200-5x"), 64, ["pnp_hqs"]))
    assert set(rows) == {"pnp_hqs", "wiener", "skimage wiener"} and min(rows.values()) > 0
    # the CLI prints every chosen method against both references
    assert main(["bench", "restoration", "--profile", "sim-yag200-5x", "--families", "pcb",
                 "--per-family", "1", "--family-px", "32", "--method", "pnp_hqs", "--speed",
                 "--speed-px", "64"]) == 0
    out = capsys.readouterr().out
    assert "of skimage wiener" in out and "pnp_hqs" in out.split("frames/s at 64x64")[1]
