"""The sample-class specialist: Wiener plus a network that learned one class through the profile's
forward model; its weights carry what it was trained for and frames outside that are refused."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from xinstrument.profiles import find_profile
from xinstrument.restoration import Restorer, available_methods, registry
from xinstrument.restoration.dose import restore_with_dose
from xinstrument.restoration.physics import DetectorPhysics
from xinstrument.restoration.specialist import (
    build_network,
    load_specialist,
    make_batch,
    pack_specialist,
    specialist_restore,
    train_specialist,
    wiener_at_dose,
)

METHOD = "specialist_pcb"
DOSE = 0.2
RANGE = (0.16, 0.25)


def _boards(n: int, size: int, seed: int) -> np.ndarray:
    """Piecewise-constant 'boards': rectangles of a few transmission levels on a substrate."""
    rng = np.random.default_rng(seed)
    out = np.full((n, size, size), 0.85, np.float32)
    for img in out:
        for _ in range(12):
            y, x = rng.integers(0, size - 4, 2)
            h, w = rng.integers(2, size // 3, 2)
            img[y:y + h, x:x + w] = rng.choice([0.3, 0.5, 0.7])
    return out


@pytest.fixture
def profile(tmp_path):
    dst = tmp_path / "yag"
    shutil.copytree(find_profile("sim-yag200-5x").path, dst)
    return find_profile(dst)


def _save(profile, model, dose_range=RANGE, detector=None, method=METHOD):
    profile.save_weights(method, pack_specialist(model, METHOD, dose_range,
                                                 detector or profile.detector_id))
    return find_profile(profile.path)


def _noisy(profile, truth, dose, seed=5):
    phys = DetectorPhysics.from_profile(profile)
    with torch.no_grad():
        return phys.degrade(torch.from_numpy(truth), torch.Generator().manual_seed(seed),
                            dose).numpy()


def test_untrained_specialist_is_the_wiener_filter_and_the_stage_runs_it_tiled(profile):
    prof = _save(profile, build_network(8, 2))
    assert METHOD in available_methods(prof) and registry.get(METHOD).needs_weights
    truth = _boards(1, 160, 1)
    lr = _noisy(prof, truth, DOSE)[0]
    phys = DetectorPhysics.from_profile(prof)
    w = wiener_at_dose(phys, torch.from_numpy(lr)[None], DOSE)[0].numpy()
    # zero head: the network adds nothing to the Wiener output it is given
    np.testing.assert_allclose(specialist_restore(lr, prof, dose_ratio=DOSE), w, atol=1e-6)

    # the stage: tiles of 128 px over a 160 px frame, the dose given per frame by the engine
    r = Restorer(prof, METHOD, device="cpu", tile=128, overlap=32)
    np.testing.assert_allclose(restore_with_dose(r, lr, 1, DOSE), w, atol=1e-5)
    # the stage's correctness reference (the GPU benchmark's) runs the same tiling and dose
    told = Restorer(prof, METHOD, device="cpu", tile=128, overlap=32,
                    options={"dose_ratio": DOSE})
    np.testing.assert_allclose(told.reference(lr), told.restore(lr), atol=1e-5)


def test_training_lowers_the_error_and_the_trained_net_is_used_tiled_as_whole(profile):
    phys = DetectorPhysics.from_profile(profile)
    pool = _boards(8, 48, 2)
    x, t = make_batch(phys, pool, np.random.default_rng(99), torch.Generator().manual_seed(99),
                      8, 24, DOSE)
    assert x.shape == (8, 2, 24, 24) and t.shape == (8, 1, 24, 24)
    untrained = build_network(8, 2)

    def fixed_mse(model):
        with torch.no_grad():
            return float(torch.mean((model(x) - t) ** 2))

    torch.set_num_threads(1)
    calls = []
    model, rec = train_specialist(phys, pool, RANGE, steps=60, batch=4, patch_px=24, seed=0,
                                  base_channels=8, depth=2, lr=3e-3, eval_every=30,
                                  evaluate=lambda m: calls.append(m.training) or {})
    # 60 tiny steps take a few % off the Wiener filter's error on a batch it never trained on
    assert fixed_mse(model) < 0.98 * fixed_mse(untrained)
    assert [r["step"] for r in rec["curve"]] == [0, 30, 60] and calls == [False] * 3
    assert len(rec["loss_blocks"]) == 2

    prof = _save(profile, model)
    lr = _noisy(prof, _boards(1, 256, 3), DOSE)[0]
    whole = specialist_restore(lr, prof, dose_ratio=DOSE, tile=512)
    tiled = specialist_restore(lr, prof, dose_ratio=DOSE, tile=128, overlap=48)
    assert not np.allclose(whole, wiener_at_dose(phys, torch.from_numpy(lr)[None], DOSE)[0].numpy(),
                           atol=1e-4)
    # overlap wider than the receptive field's influence: tiles agree with the whole frame
    assert np.abs(tiled - whole).max() < 2e-3


def test_dose_outside_the_trained_range_is_refused_naming_it(profile):
    prof = _save(profile, build_network(8, 2))
    lr = _noisy(prof, _boards(1, 64, 4), 1.0)[0]
    with pytest.raises(ValueError, match=r"dose ratio 1 is outside the range .*0\.16\.\.0\.25"):
        specialist_restore(lr, prof, dose_ratio=1.0)
    # a stage without a dose restores at the calibration dose: refused the same way
    r = Restorer(prof, METHOD, device="cpu")
    with pytest.raises(ValueError, match="outside the range"):
        r.restore(lr)
    # a stage told a dose outside the range is refused when it is made
    with pytest.raises(ValueError, match="outside the range"):
        Restorer(prof, METHOD, device="cpu", options={"dose_ratio": 0.05})


def test_weights_of_another_network_or_detector_are_refused(profile, tmp_path):
    profile.weights.pop(METHOD, None)        # a profile nobody trained a specialist for
    with pytest.raises(ValueError, match="no weights for 'specialist_pcb'.*train_specialist"):
        Restorer(profile, METHOD, device="cpu")
    # the profile's U-Net regression weights stored under the specialist's name
    shutil.copy(profile.path / profile.weights["unet"], profile.path / "weights" / "x.pt")
    profile.weights[METHOD] = "weights/x.pt"
    with pytest.raises(ValueError, match="trained for 'unet'"):
        specialist_restore(np.full((32, 32), 0.5, np.float32), profile, dose_ratio=DOSE)
    # specialist weights trained for another detector
    prof = _save(profile, build_network(8, 2), detector="sim-lens-gos-other")
    with pytest.raises(ValueError, match="trained for detector 'sim-lens-gos-other'"):
        Restorer(prof, METHOD, device="cpu")
    # plain U-Net weights without the specialist's records
    from xinstrument.restoration.networks import pack_weights
    prof.save_weights(METHOD, pack_weights(build_network(8, 2), METHOD))
    with pytest.raises(ValueError, match="lack the trained dose range"):
        load_specialist(find_profile(prof.path))


def test_frames_of_another_pixel_size_and_profiles_without_noise_model(profile):
    prof = _save(profile, build_network(8, 2))
    frame = np.full((32, 32), 0.5, np.float32)
    with pytest.raises(ValueError, match="pixel size 0.65 um differs"):
        specialist_restore(frame, prof, dose_ratio=DOSE, pixel_size_um=0.65)
    prof.nnps_lr = None
    with pytest.raises(ValueError, match="NNPS"):
        specialist_restore(frame, prof, dose_ratio=DOSE)
    with pytest.raises(ValueError, match="range must be"):
        pack_specialist(build_network(8, 2), METHOD, (0.3, 0.1), "x")


@pytest.mark.parametrize("name", ["sim-yag200-5x", "sim-gos134"])
def test_shipped_specialist_covers_the_operating_point_and_beats_wiener_on_pcbs(name):
    from xinstrument.family_bench import operating_point_dose
    from xinstrument.restoration.cli import bench_for_profile
    from xinstrument.restoration.metrics import ssim
    from xinstrument.restoration.specialist import dose_refusal, trained_dose_ratio
    from xinstrument.sim.families import EVAL_SEED_BASE, measurement_pairs

    prof = find_profile(name)
    spec = load_specialist(prof)
    assert spec.detector_id == prof.detector_id and spec.family == "pcb"
    phys = DetectorPhysics.from_profile(prof)
    bench = bench_for_profile(prof)
    dose, _ = operating_point_dose(phys, bench, 128)
    lo, hi = spec.dose_ratio_range
    assert lo < dose < hi and trained_dose_ratio(prof, METHOD) == pytest.approx(dose, rel=1e-3)
    assert dose_refusal(prof, METHOD, dose) is None and dose_refusal(prof, "wiener", 1.0) is None
    assert "outside the range" in dose_refusal(prof, METHOD, 1.0)
    # held-out PCB frames (a seed block no benchmark or training uses) at the operating point
    lr, hr = measurement_pairs(phys, "pcb", 2, 96, EVAL_SEED_BASE + 60_000, dose_ratio=dose,
                               bench=bench)
    out = specialist_restore(lr, prof, dose_ratio=dose)
    w = wiener_at_dose(phys, torch.from_numpy(lr), dose).numpy()
    assert np.mean(ssim(out, hr, 1.0)) > np.mean(ssim(w, hr, 1.0)) + 0.02


def test_fidelity_benchmark_runs_specialists_only_when_named():
    from xinstrument.bench_fidelity import bench_methods

    prof = find_profile("sim-yag200-5x")
    assert METHOD in available_methods(prof)
    assert METHOD not in bench_methods(prof) and "pnp_hqs" in bench_methods(prof)
    assert bench_methods(prof, [METHOD, "wiener"]) == ["wiener", METHOD]


def test_the_guard_flags_the_specialist_on_a_sample_class_it_never_learned():
    from xinstrument.restoration.cli import bench_for_profile
    from xinstrument.restoration.fidelity import FidelityGuard
    from xinstrument.restoration.specialist import trained_dose_ratio
    from xinstrument.sim.families import EVAL_SEED_BASE, measurement_pairs

    prof = find_profile("sim-gos134")
    phys = DetectorPhysics.from_profile(prof)
    dose = trained_dose_ratio(prof, METHOD)
    guard = FidelityGuard(prof)          # the forward model's tolerance: no calibration of its own
    verdicts = {}
    for fam in ("pcb", "fibres"):
        lr, _ = measurement_pairs(phys, fam, 1, 128, EVAL_SEED_BASE + 71_000, dose_ratio=dose,
                                  bench=bench_for_profile(prof))
        out = specialist_restore(lr[0], prof, dose_ratio=dose)
        verdicts[fam] = guard.check(lr[0], out, dose_ratio=dose, method=METHOD)
    # circuit boards: consistent with the data; fibres painted as a board: far from it
    assert verdicts["pcb"].consistent and verdicts["pcb"].reduced_chi2 < 1.0
    assert not verdicts["fibres"].consistent and verdicts["fibres"].reduced_chi2 > 3.0
    assert verdicts["fibres"].flagged_fraction > 0.5
