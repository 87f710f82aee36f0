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
    # each family's consistency with its own frames: the guard's reduced chi2 of that restoration
    from xinstrument.restoration.fidelity import FidelityGuard
    chi2 = FidelityGuard(prof, tolerance=0.0).check(
        lr[0], pnp_restore(lr[0], prof, dose_ratio=dose), dose_ratio=dose).reduced_chi2
    assert b.methods["pnp_hqs"].per_family["pcb"]["reduced_chi2"] == pytest.approx(chi2, rel=1e-4)
    assert "reduced_chi2" not in b.methods["LR input"].per_family["pcb"]


def test_the_specialist_is_scored_inside_its_dose_range_and_refused_outside():
    prof = find_profile("sim-gos134")
    inside = family_benchmark(prof, families=["pcb"], n_per_family=1, size_px=48,
                              dose_ratio=0.15, methods=["specialist_pcb"])
    assert not inside.methods["specialist_pcb"].error
    assert inside.methods["specialist_pcb"].per_family["pcb"]["ssim"] > \
        inside.methods["wiener"].per_family["pcb"]["ssim"]
    outside = family_benchmark(prof, families=["pcb"], n_per_family=1, size_px=48,
                               methods=["specialist_pcb"])
    assert "outside the range" in outside.methods["specialist_pcb"].error


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


def test_bounds_are_references_that_know_the_truth():
    from xinstrument.family_bench import restoration_bounds
    from xinstrument.restoration import wiener

    prof = find_profile("sim-yag200-5x")
    phys = DetectorPhysics.from_profile(prof)
    lr, hr = measurement_pairs(phys, "pcb", 1, 48, 700321, dose_ratio=0.2, bench="lens-yag")
    b = restoration_bounds(phys, lr, hr, 0.2)
    assert b["thick input"][0] == pytest.approx(float(np.mean(psnr(lr, hr, 1.0))), abs=1e-3)
    # the least-squares optimum over linear filters of this frame beats the product's Wiener
    w = np.asarray(wiener(lr[0], prof.frequency_cy_per_px, prof.mtf_ratio, prof.nnps_lr,
                          dose_ratio=0.2))
    assert b["linear oracle (Wiener with the truth's own spectrum)"][0] > float(psnr(w, hr[0], 1.0))
    # removing the blur from the problem leaves a problem the prior solves far better
    assert (b["total variation on the denoising problem (best weight)"][1]
            > b["total-variation HQS on the measurement (best weight)"][1])
    # the blur (MTF ratio < 1 in 0.25-0.5 cy/px) takes high-frequency power from the truth
    assert 0.2 < b["input without noise (blur only)"][2] < 0.9
    # without noise the denoising problem is the truth and the blur-only input is the input
    lr_clean, _ = measurement_pairs(phys, "pcb", 1, 48, 700321, dose_ratio=1e9, bench="lens-yag")
    c = restoration_bounds(phys, lr_clean, hr, 1e9)
    assert c["truth with the input's noise (denoising problem)"][0] > 60
    assert c["truth with the input's noise (denoising problem)"][2] == pytest.approx(1, abs=0.01)
    assert c["input without noise (blur only)"][0] == pytest.approx(c["thick input"][0], abs=0.05)


def test_operating_point_prints_the_bounds(capsys):
    from xinstrument.cli import main

    assert main(["bench", "restoration", "--profile", "sim-yag200-5x", "--families", "pcb",
                 "--per-family", "1", "--family-px", "32", "--method", "wiener",
                 "--bounds"]) == 0
    out = capsys.readouterr().out
    assert "references on the pcb frames" in out and "linear oracle" in out
    assert main(["bench", "restoration", "--profile", "sim-yag200-5x", "--families", "pcb",
                 "--per-family", "1", "--family-px", "32", "--method", "wiener"]) == 0
    assert "linear oracle" not in capsys.readouterr().out
