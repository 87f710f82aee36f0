"""scripts/op_point_reference.py: its frames are the family benchmark's, and its training learns."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import op_point_reference as ref

from xinstrument.restoration.specialist import build_network, make_batch

SIZE_PX = 32
PROFILE = "sim-yag200-5x"


@pytest.fixture(scope="module")
def setup():
    return ref.load_setup(PROFILE, SIZE_PX)


def test_bench_frames_and_dose_are_the_family_benchmarks(setup):
    from xinstrument.family_bench import family_benchmark

    res = family_benchmark(setup.profile, families=["pcb"], n_per_family=2, size_px=SIZE_PX,
                           operating_point=True, methods=["wiener"], bounds=False)
    assert res.dose_ratio == pytest.approx(setup.dose, rel=1e-9)
    frames = ref.bench_frames(setup, SIZE_PX, n=2)
    got = ref.evaluate(None, setup, [frames])["bench"]
    want = res.methods["wiener"].per_family["pcb"]
    assert got["ssim"] == pytest.approx(want["ssim"], abs=1e-6)
    assert got["psnr_db"] == pytest.approx(want["psnr_db"], abs=1e-4)
    assert ref.score(frames.lr, frames.hr)["ssim"] == pytest.approx(res.input_ssim_pcb, abs=1e-6)


def test_training_lowers_the_loss_and_starts_from_the_wiener_filter(setup):
    pool = ref.render_truths(setup.bench, SIZE_PX, ref.TRAIN_SEED_BASE + np.arange(6))
    frames = ref.bench_frames(setup, SIZE_PX, n=2)
    # the untrained network (zero head) is the Wiener filter exactly
    untrained = build_network(8, 2)
    np.testing.assert_allclose(ref.restore(untrained, setup, frames.lr),
                               ref.restore(None, setup, frames.lr), atol=1e-6)

    x, t = make_batch(setup.phys, pool, np.random.default_rng(99),
                      torch.Generator().manual_seed(99), 8, 24, setup.dose)
    assert x.shape == (8, 2, 24, 24) and t.shape == (8, 1, 24, 24)

    def fixed_mse(model):
        with torch.no_grad():
            return float(torch.mean((model(x) - t) ** 2))

    before = fixed_mse(untrained)
    torch.set_num_threads(1)
    model, rec = ref.train(setup, pool, steps=60, batch=4, patch_px=24, seed=0, base_channels=8,
                           depth=2, lr=3e-3, eval_every=30, sets=[frames])
    # 60 tiny steps take about 5 % off the Wiener filter's error on a batch it never trained on
    # (a network that does not learn, or learns the wrong target, stays at or above it)
    assert fixed_mse(model) < 0.98 * before
    assert [r["step"] for r in rec["curve"]] == [0, 30, 60]
    for row in rec["curve"]:
        assert math.isfinite(row["bench"]["ssim"]) and math.isfinite(row["bench"]["psnr_db"])
    assert rec["curve"][0]["bench"] == ref.evaluate(None, setup, [frames])["bench"]


@pytest.mark.parametrize("argv, words", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--size-px", "64", "--patch-px", "96"], "larger than the frames"),
    (["--profiles", "no-such-profile"], "no-such-profile"),
    (["--seed", "70"], "validation block"),
    (["--families", "pcb,siemens_star"], "held-out families ['siemens_star'] may not be used"),
    (["--families", ","], "--families: no family named"),
    (["--eval-family", "no_such"], "--eval-family: unknown family 'no_such'"),
    (["--dose-ratio", "-1"], "--dose-ratio must be a finite number > 0"),
    (["--bench-frames", "0"], "--bench-frames must be >= 1"),
])
def test_bad_options_get_a_clear_error(argv, words, capsys):
    with pytest.raises(SystemExit):
        ref.parse(argv)
    assert words in capsys.readouterr().err


def test_pool_takes_the_named_families_in_turn(setup):
    seeds = ref.TRAIN_SEED_BASE + np.arange(2)
    pcb = ref.render_truths(setup.bench, SIZE_PX, seeds)
    mixed = ref.render_truths(setup.bench, SIZE_PX, seeds, ("pcb", "fibres"))
    assert mixed.shape == pcb.shape == (2, SIZE_PX, SIZE_PX)
    np.testing.assert_array_equal(mixed[0], pcb[0])      # seed 0: the PCB in both
    assert np.abs(mixed[1] - pcb[1]).max() > 0.05        # seed 1: a fibre sample, not a PCB
    assert ref.parse(["--families", "pcb, fibres"]).family_list == ("pcb", "fibres")


def test_any_family_at_any_dose_is_scored_on_the_family_benchmarks_frames(setup):
    import dataclasses

    from xinstrument.family_bench import family_benchmark

    res = family_benchmark(setup.profile, families=["siemens_star"], n_per_family=2,
                           size_px=SIZE_PX, dose_ratio=1.0, methods=["wiener"])
    at_one = dataclasses.replace(setup, dose=1.0)
    frames = ref.bench_frames(at_one, SIZE_PX, n=2, family="siemens_star")
    got = ref.evaluate(None, at_one, [frames])["bench"]
    want = res.methods["wiener"].per_family["siemens_star"]
    assert got["psnr_db"] == pytest.approx(want["psnr_db"], abs=1e-4)
    assert ref.parse(["--eval-family", "siemens_star"]).eval_family == "siemens_star"
