"""Super-resolution through the product: Restorer, `xinstrument restore`, `xinstrument train --task sr`."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from xinstrument.cli import main
from xinstrument.profiles import DetectorProfile, find_profile, repo_profiles_dir
from xinstrument.restoration import Restorer, available_methods
from xinstrument.restoration.superres import SRNet, SuperResolver, pack_sr_weights
from xinstrument.storage import ScanReader, ScanWriter

LENS = "sim-yag200-5x"
PX = 48


def _copy_profile(tmp_path, name="lens", drop_sr=True, drop_esf=False) -> DetectorProfile:
    """A copy of the shipped lens profile; by default without its SR weights."""
    dst = tmp_path / name
    shutil.copytree(repo_profiles_dir() / LENS, dst)
    toml = (dst / "profile.toml").read_text()
    lines = toml.splitlines()
    if drop_sr:
        lines = [ln for ln in lines if not ln.startswith("sr_x")]
        for f in (dst / "weights").glob("sr_x*"):
            f.unlink()
    if drop_esf:
        lines = [ln for ln in lines if not ln.startswith("esf_sigma_um")]
    (dst / "profile.toml").write_text("\n".join(lines) + "\n")
    return DetectorProfile.load(dst)


def _small_sr(profile: DetectorProfile, factor: int, stored_as: str | None = None) -> DetectorProfile:
    torch.manual_seed(factor)
    net = SRNet(factor, channels=6, layers=2)
    with torch.no_grad():        # a non-trivial head so the network differs from bicubic
        net.head.weight.normal_(0, 0.05)
    profile.save_weights(stored_as or f"sr_x{factor}", pack_sr_weights(net))
    return DetectorProfile.load(profile.path)


@pytest.fixture
def lens_x2(tmp_path):
    return _small_sr(_copy_profile(tmp_path), 2)


def test_restorer_runs_sr_with_scale_and_finer_pixel(lens_x2):
    assert "sr_x2" in available_methods(lens_x2) and "sr_x4" not in available_methods(lens_x2)
    frame = np.random.default_rng(0).uniform(0.4, 1.0, (40, 56)).astype(np.float32)
    r = Restorer(lens_x2, "sr_x2", device="cpu")
    out = r.restore(frame)
    assert out.shape == (80, 112) == r.output_shape(frame.shape)
    assert r.scale == 2
    assert r.output_pixel_size_um == pytest.approx(lens_x2.pixel_size_um / 2)
    np.testing.assert_allclose(out, SuperResolver(lens_x2, 2, device="cpu").restore(frame), atol=1e-5)
    assert r.restore(np.stack([frame, frame])).shape == (2, 80, 112)
    assert r.frames_restored == 3 and np.isfinite(r.latency_s)
    # tiles of the live path (smallest tile) give the whole-frame result
    tiled = Restorer(lens_x2, "sr_x2", device="cpu", tile=128, overlap=40)
    big = np.random.default_rng(1).uniform(0.4, 1.0, (150, 170)).astype(np.float32)
    np.testing.assert_allclose(tiled.restore(big), SuperResolver(lens_x2, 2, device="cpu", tile=512).restore(big),
                               atol=1e-4)
    w = Restorer(lens_x2, "wiener", device="cpu")
    assert w.scale == 1 and w.output_pixel_size_um == pytest.approx(lens_x2.pixel_size_um)
    assert w.output_shape((40, 56)) == (40, 56)


def test_factor_without_weights_names_factor_and_what_the_profile_has(lens_x2, tmp_path):
    with pytest.raises(ValueError, match=r"no super-resolution weights for factor 4.*has sr_x2"):
        Restorer(lens_x2, "sr_x4", device="cpu")
    with pytest.raises(ValueError, match=r"factor 3 .*not supported.*has sr_x2"):
        Restorer(lens_x2, "sr_x3", device="cpu")
    bare = _copy_profile(tmp_path, "bare")
    with pytest.raises(ValueError, match="no SR weights"):
        Restorer(bare, "sr_x2", device="cpu")


def test_weights_of_another_factor_or_kind_are_refused(tmp_path):
    prof = _small_sr(_copy_profile(tmp_path), 4, stored_as="sr_x2")   # x4 net filed as sr_x2
    with pytest.raises(ValueError, match="trained for SR factor 4, not 2"):
        Restorer(prof, "sr_x2", device="cpu")
    prof.save_weights("sr_x2", prof.load_weights("unet"))            # a U-Net filed as sr_x2
    with pytest.raises(ValueError, match="not super-resolution weights"):
        Restorer(DetectorProfile.load(prof.path), "sr_x2", device="cpu")


# ------------------------------------------------------------------------------ xinstrument restore
def _lens_scan(path, n_proj=2, pixel_um=1.3):
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:PX, :PX]
    scene = (0.5 + 0.3 * ((xx // 6 + yy // 6) % 2)).astype(np.float32)
    with ScanWriter(path, (PX, PX), "float32", metadata={"pixel_size_um": pixel_um,
                                                         "corrected": True}) as w:
        w.append(np.full((PX, PX), 100.0, np.float32), image_key=2)
        w.append(np.full((PX, PX), 2000.0, np.float32), image_key=1)
        for i in range(n_proj):
            w.append(scene + 0.01 * rng.standard_normal((PX, PX)).astype(np.float32),
                     image_key=0, theta_deg=float(i))
    return path


def test_restore_cli_super_resolves_into_a_finer_grid(lens_x2, tmp_path, capsys):
    src = _lens_scan(tmp_path / "in.h5")
    out = tmp_path / "out.h5"
    assert main(["restore", str(src), "--profile", str(lens_x2.path), "--method", "sr_x2",
                 "--out", str(out), "--device", "cpu"]) == 0
    assert "x2 finer grid (0.65 um pixels)" in capsys.readouterr().out
    with ScanReader(src) as a, ScanReader(out) as b:
        expected = Restorer(lens_x2, "sr_x2", device="cpu").restore(a.projections)
        assert b.frame_shape == (PX, PX)
        assert b.restored_shape == (2 * PX, 2 * PX)
        assert b.restored_scale == 2
        assert b.restored_pixel_size_um == pytest.approx(0.65)
        assert b.pixel_size_um == pytest.approx(1.3)
        assert b.metadata["restoration"]["scale"] == 2
        assert b.metadata["restoration"]["output_pixel_size_um"] == pytest.approx(0.65)
        np.testing.assert_allclose(b.restored, expected, atol=1e-5)
        assert list(b.restored_metadata["method"]) == ["sr_x2", "sr_x2"]


def test_restore_cli_sr_factor_without_weights_is_one_line(lens_x2, tmp_path, capsys):
    src = _lens_scan(tmp_path / "in.h5")
    assert main(["restore", str(src), "--profile", str(lens_x2.path), "--method", "sr_x4",
                 "--out", str(tmp_path / "o.h5")]) == 2
    err = capsys.readouterr().err
    assert "factor 4" in err and "sr_x2" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.h5").exists()


# ------------------------------------------------------------------------------ xinstrument train
TINY = ["--steps", "2", "--patch", "32", "--batch", "2", "--pool-images", "2", "--pool-px", "64",
        "--channels", "4", "--layers", "1", "--threads", "1", "--device", "cpu"]


def test_train_task_sr_saves_weights_record_and_restore_uses_them(tmp_path, capsys):
    prof = _copy_profile(tmp_path)
    assert main(["train", "--profile", str(prof.path), "--task", "sr", "--factor", "2", *TINY]) == 0
    rec = json.loads((prof.path / "weights" / "sr_x2.json").read_text())
    assert rec["factor"] == 2 and rec["steps"] == 2 and rec["bench"] == "lens-yag"
    assert rec["blur_sigma_lr_px"] == pytest.approx(prof.esf_sigma_um / prof.pixel_size_um)
    assert np.isfinite(rec["val_psnr_db"]) and np.isfinite(rec["val_bicubic_psnr_db"])
    fresh = find_profile(str(prof.path))
    assert "sr_x2" in fresh.weights and "unet" in fresh.weights       # other weights kept
    out = Restorer(fresh, "sr_x2", device="cpu").restore(np.full((20, 24), 0.8, np.float32))
    assert out.shape == (40, 48) and np.isfinite(out).all()


def test_train_task_sr_on_user_hr_images(tmp_path):
    prof = _copy_profile(tmp_path)
    rng = np.random.default_rng(3)
    hr = np.clip(0.7 + 0.2 * rng.standard_normal((3, 64, 64)), 0, 1).astype(np.float32)
    np.save(tmp_path / "hr.npy", hr)
    assert main(["train", "--profile", str(prof.path), "--task", "sr", "--factor", "4",
                 "--hr-images", str(tmp_path / "hr.npy"), "--downsample", "area", *TINY]) == 0
    rec = json.loads((prof.path / "weights" / "sr_x4.json").read_text())
    assert rec["downsample"] == "area"
    assert "user HR images" in rec["hr_source"] and rec["factor"] == 4
    assert Restorer(find_profile(str(prof.path)), "sr_x4", device="cpu").scale == 4


def test_train_task_sr_on_training_families_records_them(tmp_path):
    prof = _copy_profile(tmp_path)
    assert main(["train", "--profile", str(prof.path), "--task", "sr", "--factor", "2",
                 "--hr-families", "fibres,powders", *TINY]) == 0
    rec = json.loads((prof.path / "weights" / "sr_x2.json").read_text())
    assert rec["hr_families"] == ["fibres", "powders"]
    assert "families fibres, powders" in rec["hr_source"]


def test_sr_hr_source_draws_only_the_named_training_families():
    from xinstrument.sim.hr_source import twin_hr_source
    src = twin_hr_source(2, "lens-yag", families=("fibres",))
    a, b = src(np.random.default_rng(1), 2, 32), src(np.random.default_rng(1), 2, 32)
    assert a.shape == (2, 32, 32) and np.array_equal(a, b)      # seeded
    assert np.ptp(a[0]) > 0.01                                   # structure, not a flat field
    with pytest.raises(ValueError, match="held-out families"):
        twin_hr_source(2, "lens-yag", families=("fibres", "foam"))


@pytest.mark.parametrize(("extra", "message"), [
    (["--factor", "2", "--hr-families", "pcb,siemens_star"], "held-out families ['siemens_star']"),
    (["--factor", "2", "--hr-families", "pcb,wood"], "unknown sample family 'wood'"),
    (["--factor", "3"], "SR factor must be one of (2, 4), got 3"),
    ([], "--task sr needs --factor"),
    (["--factor", "2", "--method", "unet"], "does not fit --task sr"),
    (["--factor", "2", "--hr-images", "missing.npy"], "no such file"),
])
def test_train_task_sr_bad_options_are_one_line(tmp_path, capsys, extra, message):
    prof = _copy_profile(tmp_path)
    assert main(["train", "--profile", str(prof.path), "--task", "sr", *extra, *TINY]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (prof.path / "weights" / "sr_x2.pt").exists()


def test_train_task_sr_without_esf_sigma_is_a_clear_error(tmp_path, capsys):
    prof = _copy_profile(tmp_path, drop_esf=True)
    assert prof.esf_sigma_um is None
    assert main(["train", "--profile", str(prof.path), "--task", "sr", "--factor", "2", *TINY]) == 2
    err = capsys.readouterr().err
    assert "has no esf_sigma_um" in err and "Traceback" not in err


def test_train_task_restore_still_needs_a_method(tmp_path, capsys):
    assert main(["train", "--profile", LENS, "--steps", "1"]) == 2
    assert "--method is required" in capsys.readouterr().err
