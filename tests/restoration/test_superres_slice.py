"""SR degradation with the transfer of tomosynthesis slices (``blur="slice"``)."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from xinstrument.errors import UserError
from xinstrument.profiles import DetectorProfile, repo_profiles_dir
from xinstrument.restoration.superres import (
    SLICE_KEYS,
    SliceTransfer,
    SRDegradation,
    SuperResolutionError,
)

PROFILE = "sim-micro-16x-sr"


@pytest.fixture(scope="module")
def profile():
    return DetectorProfile.load(repo_profiles_dir() / PROFILE)


def _edge_width_lr_px(lr: np.ndarray, axis: int) -> float:
    """10-90 % rise distance (LR px) of the mean edge profile along ``axis``: the edge's blur,
    insensitive to the weak far ringing of a transfer cut at the objective's cutoff."""
    prof = lr.mean(axis=1 - axis).astype(np.float64)
    lo, hi = prof[:4].mean(), prof[-4:].mean()
    u = (prof - hi) / (lo - hi)          # 1 before the edge, 0 after it

    def crossing(level: float) -> float:      # first fall below ``level``, interpolated
        j = int(np.argmax(u < level))
        return j - 1 + (u[j - 1] - level) / (u[j - 1] - u[j])

    return float(crossing(0.1) - crossing(0.9))


def test_profile_holds_the_slice_transfer_of_its_bench(profile):
    # the shipped sr_x2 takes multi-frame slices (recon.multiframe); the shift-and-add slices'
    # transfer stays beside it
    assert profile.calibration["slice_reconstruction"] == "multiframe"
    st = SliceTransfer.from_profile(profile)
    assert (st.half_arc_deg, st.projections) == (20.0, 21)
    assert 0 < st.noise_sigma < profile.noise_sigma      # 21 projections averaged
    saa = np.load(profile.path / "slice_transfer.npz")["transfer"]
    at = lambda row: np.interp(0.2, st.frequency_x_cy_per_px, row)     # 1 um bars: 0.2 cy/px
    # shift-and-add: the projections' parallax phases cancel along the tilt
    assert at(saa[0, :]) < 0.5 * at(saa[:, 0])
    # the multi-frame slice keeps most of it at the same noise; across the tilt both are the
    # normal-incidence transfer
    assert at(st.transfer[0, :]) > 2.5 * at(saa[0, :])
    assert at(st.transfer[0, :]) < at(st.transfer[:, 0])
    assert at(st.transfer[:, 0]) == pytest.approx(at(saa[:, 0]), abs=0.01)
    rec = json.loads((profile.path / "weights" / "sr_x2.json").read_text())
    assert rec["blur"] == "slice" and rec["slice_reconstruction"] == "multiframe"
    assert rec["slice_transfer_file"] == profile.calibration["slice_transfer_file"]


def test_slice_blur_blurs_an_edge_more_along_the_tilt(profile):
    # the shift-and-add slices' transfer (slice_transfer.npz), which the parallax blurs most
    d = SRDegradation.from_profile(profile, 2, blur="slice", downsample="area")
    with np.load(profile.path / "slice_transfer.npz") as npz:
        saa = dataclasses.replace(d.slice_transfer, transfer=np.array(npz["transfer"]))
    d = dataclasses.replace(d, slice_transfer=saa)
    ratio = SRDegradation.from_profile(profile, 2, blur="mtf_ratio", downsample="area")
    hr = torch.ones(1, 128, 128)
    step_x = hr.clone()
    step_x[:, :, 64:] = 0.8           # intensity changes along x: the tilt
    step_y = step_x.transpose(1, 2).contiguous()
    along = _edge_width_lr_px(d(step_x, noise=False)[0].numpy()[16:-16, 16:-16], axis=1)
    across = _edge_width_lr_px(d(step_y, noise=False)[0].numpy()[16:-16, 16:-16], axis=0)
    normal = _edge_width_lr_px(ratio(step_x, noise=False)[0].numpy()[16:-16, 16:-16], axis=1)
    assert along > 1.3 * across
    assert along > 1.3 * normal
    # across the tilt the slice keeps the normal-incidence transfer (the profile's measured
    # MTF ratio, from a slanted edge on twin frames)
    assert across == pytest.approx(normal, rel=0.15)


def test_slice_blur_adds_the_slice_noise(profile):
    d = SRDegradation.from_profile(profile, 2, blur="slice", downsample="area")
    assert d.noise_sigma == pytest.approx(float(profile.calibration["slice_noise_sigma"]))
    lr = d(torch.ones(8, 64, 64), torch.Generator().manual_seed(0))
    s = float(lr.std())
    lo, hi = d.noise_scale_range
    assert lo * d.noise_sigma < s < hi * d.noise_sigma
    given = SRDegradation.from_profile(profile, 2, noise_sigma=0.05, blur="slice")
    assert given.noise_sigma == 0.05


@pytest.mark.parametrize("key", SLICE_KEYS)
def test_a_missing_slice_key_is_named(profile, key):
    cal = {k: v for k, v in profile.calibration.items() if k != key}
    bare = dataclasses.replace(profile, calibration=cal)
    with pytest.raises(SuperResolutionError, match=key):
        SRDegradation.from_profile(bare, 2, blur="slice")


def test_missing_slice_transfer_file_is_refused(profile, tmp_path):
    dst = tmp_path / PROFILE
    shutil.copytree(repo_profiles_dir() / PROFILE, dst)
    (dst / profile.calibration["slice_transfer_file"]).unlink()
    with pytest.raises(SuperResolutionError, match="slice_transfer_file"):
        SliceTransfer.from_profile(DetectorProfile.load(dst))


def test_training_without_the_slice_transfer_is_a_user_error(profile):
    from xinstrument.restoration.cli import train_sr_profile
    cal = {k: v for k, v in profile.calibration.items() if k != "slice_half_arc_deg"}
    bare = dataclasses.replace(profile, calibration=cal)
    with pytest.raises(UserError, match="slice_half_arc_deg"):
        train_sr_profile(bare, 2, steps=1, blur="slice", downsample="area")


def test_slice_transfer_table_is_checked():
    f = np.linspace(0, 1, 8)
    with pytest.raises(SuperResolutionError, match="shape"):
        SliceTransfer(f, f, np.ones((8, 7)), 20.0, 21)
    with pytest.raises(SuperResolutionError, match="projections"):
        SliceTransfer(f, f, np.ones((8, 8)), 20.0, 1)


def test_train_task_sr_blur_slice_records_the_slice(tmp_path):
    import json

    from xinstrument.cli import main
    dst = tmp_path / PROFILE
    shutil.copytree(repo_profiles_dir() / PROFILE, dst)
    tiny = ["--steps", "2", "--patch", "32", "--batch", "2", "--pool-images", "2", "--pool-px",
            "64", "--channels", "4", "--layers", "1", "--threads", "1", "--device", "cpu",
            "--hr-families", "pcb"]
    assert main(["train", "--profile", str(dst), "--task", "sr", "--factor", "2", "--blur",
                 "slice", "--downsample", "area", *tiny]) == 0
    rec = json.loads((dst / "weights" / "sr_x2.json").read_text())
    assert rec["blur"] == "slice"
    assert (rec["slice_half_arc_deg"], rec["slice_projections"]) == (20.0, 21)
    cal = DetectorProfile.load(dst).calibration
    assert rec["noise_sigma"] == pytest.approx(cal["slice_noise_sigma"])
    # the slices the weights take, as the profile's calibration names them
    assert rec["slice_reconstruction"] == cal["slice_reconstruction"] == "multiframe"
