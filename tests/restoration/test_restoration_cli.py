"""`xinstrument restore` and `xinstrument train` end to end on tiny files (CPU, seconds)."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from xinstrument.cli import main
from xinstrument.profiles import find_profile
from xinstrument.restoration import Restorer
from xinstrument.sim.families import TRAINING_FAMILIES
from xinstrument.storage import ScanReader, ScanWriter

GOS = "sim-gos134"
PX = 64


def _scan(path, n_proj=2, pixel_um=99.0, corrected=True, nan=False):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:PX, :PX]
    scene = (0.4 + 0.4 * ((xx // 8 + yy // 8) % 2)).astype(np.float32)
    dark = np.full((PX, PX), 100.0, np.float32)
    flat = np.full((PX, PX), 2100.0, np.float32)
    with ScanWriter(path, (PX, PX), "float32", metadata={"pixel_size_um": pixel_um,
                                                         "corrected": corrected}) as w:
        w.append(dark, image_key=2)
        w.append(flat, image_key=1)
        for i in range(n_proj):
            t = scene + 0.01 * rng.standard_normal((PX, PX)).astype(np.float32)
            if nan and i == 1:
                t[3, 3] = np.nan
            w.append(t if corrected else dark + t * (flat - dark), image_key=0,
                     theta_deg=float(i), voltage_kv=70.0)
    return path


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_restore_writes_a_new_file_and_leaves_the_input_alone(tmp_path):
    src = _scan(tmp_path / "in.h5")
    before = _digest(src)
    out = tmp_path / "out.h5"
    # the stand-in scan records no exposure or current: Wiener is told the dose
    assert main(["restore", str(src), "--profile", GOS, "--method", "wiener", "--out", str(out),
                 "--device", "cpu", "--dose-ratio", "1"]) == 0
    assert _digest(src) == before
    with ScanReader(src) as a, ScanReader(out) as b:
        np.testing.assert_array_equal(a.projections, b.projections)
        np.testing.assert_array_equal(a.flats, b.flats)
        np.testing.assert_array_equal(a.darks, b.darks)
        np.testing.assert_array_equal(a.theta_deg, b.theta_deg)
        restored = b.restored
        md = b.restored_metadata
        assert b.metadata["restoration"]["method"] == "wiener"
        assert b.metadata["restoration"]["effective_dose_ratio"] == [1.0, 1.0]
        expected = Restorer(find_profile(GOS), "wiener", device="cpu").restore(a.projections)
    assert restored.shape == (2, PX, PX)
    np.testing.assert_allclose(restored, expected, atol=1e-5)
    assert list(md["method"]) == ["wiener", "wiener"]
    assert list(md["profile"]) == [GOS, GOS]
    assert list(md["source_index"]) == [2, 3]


def test_restore_corrects_raw_frames_with_the_stored_references(tmp_path):
    raw = _scan(tmp_path / "raw.h5", corrected=False)
    cor = _scan(tmp_path / "cor.h5", corrected=True)
    for f in (raw, cor):
        assert main(["restore", str(f), "--profile", GOS, "--method", "inverse",
                     "--out", str(f.with_suffix(".out.h5")), "--device", "cpu"]) == 0
    with ScanReader(raw.with_suffix(".out.h5")) as a, ScanReader(cor.with_suffix(".out.h5")) as b:
        np.testing.assert_allclose(a.restored, b.restored, atol=1e-4)


@pytest.mark.parametrize(("case", "message"), [
    ("missing", "no such file"),
    ("profile", "no such profile"),
    ("pixel", "does not match profile"),
    ("nan", "NaN"),
    ("exists", "exists"),
])
def test_restore_user_errors_are_one_line(tmp_path, capsys, case, message):
    src = _scan(tmp_path / "in.h5", pixel_um=1.3 if case == "pixel" else 99.0, nan=case == "nan")
    out = tmp_path / "out.h5"
    if case == "exists":
        out.write_bytes(b"x")
    args = ["restore", str(tmp_path / "nope.h5" if case == "missing" else src),
            "--profile", "no-such-profile" if case == "profile" else GOS,
            "--method", "inverse", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_restore_learned_method_without_weights_is_refused(tmp_path, capsys):
    prof = tmp_path / "bare"
    shutil.copytree(find_profile(GOS).path, prof)
    shutil.rmtree(prof / "weights", ignore_errors=True)
    toml = (prof / "profile.toml").read_text()
    (prof / "profile.toml").write_text(toml.split("[weights]")[0] + "[weights]\n")
    src = _scan(tmp_path / "in.h5")
    assert main(["restore", str(src), "--profile", str(prof), "--method", "unet",
                 "--out", str(tmp_path / "o.h5")]) == 2
    err = capsys.readouterr().err
    assert "cannot run 'unet'" in err and "available: wiener, inverse, richardson_lucy" in err
    assert not (tmp_path / "o.h5").exists()


def test_train_saves_weights_and_record_that_restore_then_uses(tmp_path, capsys):
    prof = tmp_path / "p"
    shutil.copytree(find_profile(GOS).path, prof)
    assert main(["train", "--profile", str(prof), "--method", "unet", "--steps", "3",
                 "--patch", "32", "--batch", "2", "--pool-images", "2", "--pool-px", "64",
                 "--threads", "1", "--device", "cpu"]) == 0
    rec = json.loads((prof / "weights" / "unet.json").read_text())
    assert rec["steps"] == 3 and rec["seed"] == 0 and rec["bench"] == "panel-gos"
    assert tuple(rec["hr_families"]) == TRAINING_FAMILIES      # the broad prior, not PCB only
    assert np.isfinite(rec["val_psnr_db"]) and 0 < rec["val_ssim"] <= 1
    assert "unet" in find_profile(str(prof)).weights
    src = _scan(tmp_path / "in.h5", n_proj=1)
    assert main(["restore", str(src), "--profile", str(prof), "--method", "unet",
                 "--out", str(tmp_path / "o.h5"), "--device", "cpu"]) == 0
    with ScanReader(tmp_path / "o.h5") as r:
        assert r.restored.shape == (1, PX, PX) and np.isfinite(r.restored).all()


def test_train_restore_on_named_families_records_them_and_refuses_held_out_ones(tmp_path, capsys):
    from xinstrument.restoration.cli import train_profile

    prof = tmp_path / "p"
    shutil.copytree(find_profile(GOS).path, prof)
    before = (prof / "weights" / "unet.pt").read_bytes()
    assert main(["train", "--profile", str(prof), "--method", "unet", "--steps", "1",
                 "--hr-families", "pcb,siemens_star", "--threads", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "held-out families ['siemens_star']" in err and "Traceback" not in err
    assert (prof / "weights" / "unet.pt").read_bytes() == before       # nothing written

    # the named families go into the record
    rec = train_profile(find_profile(str(prof)), "unet", steps=2, patch=32, batch=2,
                        pool_images=2, pool_px=64, threads=1, device="cpu",
                        hr_families=["fibres"])
    assert rec["hr_families"] == ["fibres"]
    assert (prof / "weights" / "unet.pt").read_bytes() != before


def test_train_rejects_bad_options(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--profile", GOS, "--method", "nope", "--steps", "1"])
    with pytest.raises(SystemExit):
        main(["train", "--profile", GOS, "--method", "unet", "--steps", "0"])


def test_a_failure_mid_file_leaves_no_output(tmp_path, monkeypatch):
    from xinstrument.errors import UserError
    from xinstrument.restoration import stage
    from xinstrument.restoration.cli import restore_file

    calls = []
    real = stage.Restorer.restore

    def flaky(self, frame):
        calls.append(1)
        if len(calls) == 2:
            raise FloatingPointError("inverse produced non-finite output")
        return real(self, frame)

    monkeypatch.setattr(stage.Restorer, "restore", flaky)
    src = _scan(tmp_path / "in.h5", n_proj=3)
    with pytest.raises(UserError, match="frame 3: inverse produced non-finite"):
        restore_file(src, tmp_path / "o.h5", find_profile(GOS), "inverse", device="cpu")
    assert not (tmp_path / "o.h5").exists()
