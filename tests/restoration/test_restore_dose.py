"""`xinstrument restore` of averaged frames recorded by the real acquisition on the simulated bench:
each projection restored with its dose and frames averaged, as the live path restored it."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch
from simulated_bench import bench_at_focus

from xinstrument.cli import main
from xinstrument.restoration import Restorer
from xinstrument.storage import ScanReader
from xinstrument.storage.layout import FIELD_BY_NAME

torch.set_num_threads(1)
PROFILE = "sim-yag200-5x"
EXPOSURE_S = 0.5        # half the profile's calibration dose per exposure
N_AVERAGE = 8
METHODS = ("wiener", "pnp_hqs")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One 8-frame average per method, recorded and restored by the live path, and the live
    path's dose of one exposure."""
    folder = tmp_path_factory.mktemp("recorded")
    inst = bench_at_focus(64, 5, EXPOSURE_S, N_AVERAGE)
    try:
        inst.load_profile(PROFILE)
        files = {}
        for method in METHODS:
            inst.set_restoration(method, device="cpu")
            files[method] = folder / f"{method}.h5"
            inst.record(files[method], n_frames=1, n_average=N_AVERAGE, restore=True)
        dose = inst.frame_dose_ratio(EXPOSURE_S)
    finally:
        inst.disconnect()
    return files, dose


def _restore(src, out, method, *extra):
    return main(["restore", str(src), "--profile", PROFILE, "--method", method, "--out",
                 str(out), "--device", "cpu", *extra])


def _without(src, dst, field):
    """A copy of ``src`` whose projections lack ``field`` (the fill of a file that never
    recorded it)."""
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        keys = f[FIELD_BY_NAME["image_key"].path][()]
        ds = f[FIELD_BY_NAME[field].path]
        values = ds[()]
        values[keys == 0] = FIELD_BY_NAME[field].fill
        ds[...] = values
    return dst


@pytest.mark.parametrize("method", METHODS)
def test_offline_restore_equals_the_live_restoration_of_the_averaged_frame(recorded, tmp_path,
                                                                          method):
    files, dose = recorded
    out = tmp_path / "out.h5"
    assert _restore(files[method], out, method) == 0
    with ScanReader(files[method]) as live, ScanReader(out) as off:
        live_restored, corrected = live.restored, live.corrected
        assert live.restored_metadata["method"] == [method]      # no fallback in the file
        offline = off.restored
        md = off.metadata["restoration"]
    np.testing.assert_allclose(offline, live_restored, rtol=0, atol=1e-5)
    assert md["frames_averaged"] == [N_AVERAGE] and md["flat_frames_averaged"] == [N_AVERAGE]
    assert md["dose_ratio"] == [pytest.approx(dose, rel=1e-9)]
    assert md["effective_dose_ratio"] == [pytest.approx(N_AVERAGE * dose, rel=1e-9)]
    assert "digital twin" in md["dose_source"]
    # restored as one exposure at the calibration dose (as the offline path did), it differs
    doseless = Restorer(find_profile(PROFILE), method, device="cpu").restore(corrected[0])
    assert np.abs(doseless - offline[0]).max() > 0.02


def test_a_file_without_the_dose_metadata_is_refused_unless_given(recorded, tmp_path, capsys):
    files, dose = recorded
    for field in ("exposure_s", "current_ua", "voltage_kv"):
        bare = _without(files["wiener"], tmp_path / f"no-{field}.h5", field)
        out = tmp_path / f"out-{field}.h5"
        assert _restore(bare, out, "wiener") == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert str(bare) in err and field in err and "--dose-ratio" in err, err
        assert not out.exists()
    # a method without a noise model restores it as before
    assert _restore(bare, tmp_path / "inverse.h5", "inverse") == 0
    # the user's values: restored as the live path restored the recorded frame
    given = tmp_path / "given.h5"
    assert _restore(bare, given, "wiener", "--dose-ratio", repr(dose),
                    "--frames-averaged", str(N_AVERAGE)) == 0
    with ScanReader(files["wiener"]) as live, ScanReader(given) as off:
        np.testing.assert_allclose(off.restored, live.restored, rtol=0, atol=1e-5)
        md = off.metadata["restoration"]
    assert md["dose_source"].startswith("given") and md["frames_averaged"] == [N_AVERAGE]
    # the dose given for one exposure is multiplied by the frames averaged
    once = tmp_path / "once.h5"
    assert _restore(bare, once, "wiener", "--dose-ratio", repr(dose), "--frames-averaged",
                    "1") == 0
    with ScanReader(once) as a, ScanReader(given) as b:
        assert np.abs(a.restored - b.restored).max() > 0.02


def test_a_profile_without_a_dose_model_asks_for_the_dose(recorded, tmp_path, capsys):
    files, _ = recorded
    # calibrated from acquisitions (`xinstrument calibrate nnps` recorded its ADU per quantum):
    # the dose is measured from the file's flat
    measured = tmp_path / "measured.h5"
    assert main(["restore", str(files["wiener"]), "--profile", "sim-yag100-5x", "--method",
                 "wiener", "--out", str(measured), "--device", "cpu"]) == 0
    with ScanReader(measured) as r:
        md = r.metadata["restoration"]
    assert "measured flat" in md["dose_source"] and md["dose_ratio"][0] > 0
    # without that factor, and not calibrated on the twin: no dose here, and both routes named
    folder = tmp_path / "no-adu"
    shutil.copytree(find_profile("sim-yag100-5x").path, folder)
    text = (folder / "profile.toml").read_text()
    (folder / "profile.toml").write_text("".join(
        ln for ln in text.splitlines(keepends=True) if not ln.startswith("nnps_adu_per_quantum")))
    out = tmp_path / "out.h5"
    assert main(["restore", str(files["wiener"]), "--profile", str(folder), "--method",
                 "wiener", "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "not calibrated on the digital twin" in err and "--dose-ratio" in err
    assert "nnps_adu_per_quantum" in err
    assert not out.exists()


@pytest.mark.parametrize(("option", "value"), [("--dose-ratio", "0"), ("--dose-ratio", "nan"),
                                               ("--dose-ratio", "-2"),
                                               ("--frames-averaged", "0"),
                                               ("--frames-averaged", "2.5")])
def test_bad_dose_options_are_refused(recorded, tmp_path, capsys, option, value):
    files, _ = recorded
    out = tmp_path / "out.h5"
    with pytest.raises(SystemExit) as exc:
        _restore(files["wiener"], out, "wiener", option, value)
    assert exc.value.code == 2
    assert option in capsys.readouterr().err
    assert not out.exists()


def find_profile(name):
    from xinstrument.profiles import find_profile as find
    return find(name)


def test_the_specialist_restores_only_frames_of_its_dose_range(recorded, tmp_path, capsys):
    files, _ = recorded
    out = tmp_path / "spec.h5"
    # 8 exposures at half the calibration dose: 4x the calibration dose, far above the range
    assert _restore(files["wiener"], out, "specialist_pcb") != 0
    err = capsys.readouterr().err
    assert "outside the range" in err and "specialist_pcb" in err and "Traceback" not in err
    assert not out.exists()
    # told a dose whose 8-frame average lies inside the range, it restores
    assert _restore(files["wiener"], out, "specialist_pcb", "--dose-ratio", "0.025") == 0
    with ScanReader(out) as r:
        assert r.restored_metadata["method"] == ["specialist_pcb"]
        assert r.metadata["restoration"]["effective_dose_ratio"] == [pytest.approx(0.2)]


def test_the_live_path_refuses_a_specialist_before_its_first_exposure(tmp_path):
    inst = bench_at_focus(64, 6, 0.2, 2)       # one exposure: 0.2 of the calibration dose
    try:
        inst.load_profile(PROFILE)
        inst.set_restoration("specialist_pcb", device="cpu")
        inside = tmp_path / "inside.h5"
        inst.record(inside, n_frames=1, n_average=1, restore=True)
        with ScanReader(inside) as r:
            assert r.restored.shape == (1, 64, 64)
            assert r.restored_metadata["method"] == ["specialist_pcb"]
        # averaging 2 exposures doubles the dose, past the trained range: refused before the
        # plan opens its file or takes an exposure
        outside = tmp_path / "outside.h5"
        with pytest.raises(Exception, match="restoration refuses these frames: dose ratio 0.4"):
            inst.record(outside, n_frames=1, n_average=2, restore=True)
        assert not outside.exists()
    finally:
        inst.disconnect()
