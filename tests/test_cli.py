"""The `xinstrument` command: the demo end to end and clear errors for bad input."""
import subprocess
import sys

import h5py
import numpy as np
import pytest

from xinstrument.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "xinstrument.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def test_demo_end_to_end(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path), "--sensor-px", "160", "--frames", "1",
               "--average", "4", "--exposure-s", "0.2", "--seed", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    h5 = list(tmp_path.glob("demo-*.h5"))
    png = list(tmp_path.glob("demo-*.png"))
    assert len(h5) == 1 and len(png) == 1 and png[0].stat().st_size > 10_000
    for key in ("HDF5 file", "best focus", "SSIM", "PSNR", "frames/s"):
        assert key in out
    with h5py.File(h5[0], "r") as f:
        assert f["entry"].attrs["xi_complete"]
        keys = f["entry/instrument/detector/image_key"][()]
        assert sorted(keys.tolist()) == [0, 1, 2]
        assert f["entry/restored/data"].shape[0] == 1
        curve = f["entry/focus_curve"]          # NXdata that silx and nexusformat plot
        assert curve.attrs["NX_class"] == "NXdata" and curve.attrs["signal"] == "metric"
        assert curve["metric"].shape == curve["position"].shape and curve["metric"].size >= 5
        assert np.isfinite(curve.attrs["best_position_um"])
        # the fidelity guard's tile map and summary beside the restored frame
        extras = f["entry/restored/extras"]
        assert extras["consistency"].shape[0] == 1 and np.isfinite(extras["reduced_chi2"][0])
        assert extras["fell_back"][0] in (0.0, 1.0)
    assert "fidelity guard" in out
    # restored is closer to the ground truth than the input, per the summary line
    line = next(s for s in out.splitlines() if "SSIM" in s)
    ssim_in, ssim_out = float(line.split()[2]), float(line.split()[-1])
    assert ssim_out > ssim_in


def test_help_explains_options():
    r = run_cli("demo", "--help")
    assert r.returncode == 0
    for opt in ("--out", "--sensor-px", "--frames", "--seed"):
        assert opt in r.stdout


@pytest.mark.parametrize("args, message", [
    (["demo", "--sensor-px", "10"], "sensor size must be 64..4096"),
    (["demo", "--frames", "zero"], "expected a whole number"),
    (["demo", "--bogus"], "unrecognized arguments"),
    (["demo", "--profile", "no-such-profile"], "no-such-profile"),
])
def test_bad_input_is_a_clear_error_without_traceback(tmp_path, args, message):
    r = run_cli(*args, "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert not list((tmp_path / "o").glob("*.h5")) if (tmp_path / "o").exists() else True


def test_output_folder_that_is_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli("demo", "--out", str(blocker), cwd=tmp_path)
    assert r.returncode == 2 and "is not a folder" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("demo", "--out", str(blocker / "sub"), cwd=tmp_path)
    assert r.returncode == 2 and "cannot create output folder" in r.stderr


def test_broken_profile_is_refused_before_any_file(tmp_path):
    prof = tmp_path / "broken"
    prof.mkdir()
    (prof / "profile.toml").write_text("schema_version = 99\n")
    out = tmp_path / "out"
    r = run_cli("demo", "--profile", str(prof), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2 and "schema" in r.stderr.lower()
    assert not list(out.glob("*")) if out.exists() else True


def test_acquire_darks_flats_focus_commands(tmp_path, capsys):
    from xinstrument.storage import ScanReader
    common = ["--sensor-px", "64", "--exposure-s", "0.05"]
    assert main(["darks", str(tmp_path / "d.h5"), "--average", "2", *common]) == 0
    assert main(["flats", str(tmp_path / "f.h5"), "--average", "2", "--series", "2",
                 *common]) == 0
    assert main(["acquire", str(tmp_path / "a.h5"), "--frames", "2", "--average", "2",
                 "--references", "2", *common]) == 0
    with ScanReader(tmp_path / "d.h5") as r:
        assert r.darks.shape == (1, 64, 64) and r.complete
        dark_mean = float(r.darks.mean())
    with ScanReader(tmp_path / "f.h5") as r:
        assert r.flats.shape == (2, 64, 64) and float(r.flats.mean()) > dark_mean + 8
    with ScanReader(tmp_path / "a.h5") as r:
        assert r.projections.shape == (2, 64, 64) and not r.is_corrected("measured")
        assert r.darks.shape == r.flats.shape == (1, 64, 64)  # raw counts beside references
        assert r.is_corrected("corrected") and r.corrected.shape == (2, 64, 64)
        assert 0 < float(r.corrected.mean()) < 1.5             # corrected: transmission
        expect = (r.projections - r.darks[0]) / (r.flats[0] - r.darks[0])
        assert float(np.median(np.abs(r.corrected - expect))) < 1e-4
    assert main(["acquire", str(tmp_path / "a.h5"), *common]) == 2   # exists, no --overwrite
    assert "exists" in capsys.readouterr().err
    rc = main(["focus", "--start-um", "50", "--stop-um", "60", "--step-um", "2",
               "--frames-per-step", "2", *common])
    assert rc == 0 and "best focus" in capsys.readouterr().out
