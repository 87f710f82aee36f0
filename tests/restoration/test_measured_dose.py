"""The dose of a frame measured from the flat that corrected it (profiles that record their
detector's ADU per quantum): the pure function, `xinstrument restore` / `batch restore` of scan
files written by the product's writer, and the live path, which on the simulated bench agrees
with the digital twin's model."""
from __future__ import annotations

import dataclasses
import shutil
import tomllib

import numpy as np
import pytest
import torch

from xinstrument.cli import main
from xinstrument.errors import InstrumentError
from xinstrument.profiles import DetectorProfile, find_profile
from xinstrument.restoration.dose import (
    DoseMetadataError,
    FlatReference,
    measured_flat_dose_ratio,
    twin_flat_dose_ratio,
)
from xinstrument.storage import ScanReader, ScanWriter

torch.set_num_threads(1)
PX = 48
DARK_ADU, FLAT_ADU = 100.0, 2100.0          # flat minus dark: 2000 ADU
FLAT = {"exposure_s": 1.0, "current_ua": 80.0, "voltage_kv": 50.0}
PROJ = {"exposure_s": 0.5, "current_ua": 40.0, "voltage_kv": 50.0}


def test_measured_dose_scales_the_flat_to_the_frame_and_names_what_is_missing():
    flat = FlatReference(2000.0, 1.0, 80.0, 50.0)
    # 2000 ADU / 10 ADU per quantum = 200 quanta at 1 s x 80 uA; the frame gets a quarter
    assert measured_flat_dose_ratio(flat, 10.0, 100.0, 0.5, 50.0, 40.0) == pytest.approx(0.5)
    assert measured_flat_dose_ratio(flat, 10.0, 100.0, 1.0, 50.2, 80.0) == pytest.approx(2.0)
    cases = [((None, 10.0, 100.0), "no dark and flat reference"),
             ((FlatReference(-3.0, 1.0, 80.0, 50.0), 10.0, 100.0), "not positive"),
             ((FlatReference(0.0, 1.0, 80.0, 50.0), 10.0, 100.0), "not positive"),
             ((flat, None, 100.0), "nnps_adu_per_quantum"),
             ((flat, 10.0, None), "nnps_mean_signal"),
             ((FlatReference(2000.0, float("nan"), 80.0, 50.0), 10.0, 100.0),
              "flat reference records no exposure_s")]
    for args, text in cases:
        with pytest.raises(DoseMetadataError, match=text):
            measured_flat_dose_ratio(*args, 0.5, 50.0, 40.0, what="projection 3")
    with pytest.raises(DoseMetadataError, match="at 60 kV and its flat at 50 kV"):
        measured_flat_dose_ratio(flat, 10.0, 100.0, 0.5, 60.0, 40.0)
    with pytest.raises(DoseMetadataError, match="records no current_ua"):
        measured_flat_dose_ratio(flat, 10.0, 100.0, 0.5, 50.0, float("nan"))


@pytest.fixture
def profile_dir(tmp_path):
    """A copy of the shipped profile made by `xinstrument calibrate` (it records its ADU per
    quantum)."""
    dst = tmp_path / "yag100"
    shutil.copytree(find_profile("sim-yag100-5x").path, dst)
    return dst


def _raw_scan(path, flats_at=FLAT, n_proj=3, frames_averaged=2):
    """Raw uint16 darks, flats and projections as the acquisition records them."""
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:PX, :PX]
    scene = 0.4 + 0.4 * ((xx // 8 + yy // 8) % 2)
    scale = (PROJ["exposure_s"] * PROJ["current_ua"]) / (FLAT["exposure_s"] * FLAT["current_ua"])
    with ScanWriter(path, (PX, PX), "uint16", metadata={"pixel_size_um": 1.3}, swmr=False) as w:
        for _ in range(2):
            w.append(np.full((PX, PX), DARK_ADU, np.uint16), image_key=2, exposure_s=flats_at["exposure_s"])
        for _ in range(2):
            w.append(np.full((PX, PX), FLAT_ADU, np.uint16), image_key=1, **flats_at)
        for i in range(n_proj):
            raw = DARK_ADU + (FLAT_ADU - DARK_ADU) * scale * scene + rng.normal(0, 5, (PX, PX))
            w.append(np.rint(raw).astype(np.uint16), image_key=0, theta_deg=float(i),
                     frames_averaged=frames_averaged, **PROJ)
    return path


def _restore(src, out, profile, *extra):
    return main(["restore", str(src), "--profile", str(profile), "--method", "wiener", "--out",
                 str(out), "--device", "cpu", *extra])


def test_restore_takes_each_projection_s_dose_from_its_flat(profile_dir, tmp_path):
    prof = DetectorProfile.load(profile_dir)
    adu = prof.calibration["nnps_adu_per_quantum"]
    src = _raw_scan(tmp_path / "scan.h5")
    out = tmp_path / "out.h5"
    assert _restore(src, out, profile_dir) == 0
    with ScanReader(out) as r:
        md = r.metadata["restoration"]
    # 2000 ADU of flat at 1 s x 80 uA; projections at 0.5 s x 40 uA, 2 exposures each
    one = (FLAT_ADU - DARK_ADU) / adu * 0.25 / prof.nnps_mean_signal
    assert md["dose_ratio"] == pytest.approx([one] * 3, rel=1e-6)
    assert md["effective_dose_ratio"] == pytest.approx([2 * one] * 3, rel=1e-6)
    assert "measured flat" in md["dose_source"]
    # the user's dose still replaces it
    out2 = tmp_path / "given.h5"
    assert _restore(src, out2, profile_dir, "--dose-ratio", "0.3") == 0
    with ScanReader(out2) as r:
        assert r.metadata["restoration"]["dose_ratio"] == [0.3] * 3


def test_batch_restore_takes_the_same_measured_dose(profile_dir, tmp_path):
    from xinstrument.batch import run_local_loop

    src = _raw_scan(tmp_path / "a.h5")
    single = tmp_path / "single.h5"
    assert _restore(src, single, profile_dir) == 0
    # the batch task every worker runs, here in one process
    rep = run_local_loop([src], DetectorProfile.load(profile_dir), "wiener",
                         out_dir=tmp_path / "out", device="cpu")
    assert [r.status for r in rep.results] == ["done"]
    with ScanReader(rep.results[0].output) as b, ScanReader(single) as a:
        assert b.metadata["restoration_dose"]["dose_ratio"] == pytest.approx(
            a.metadata["restoration"]["dose_ratio"], rel=1e-9)
        np.testing.assert_allclose(b.restored, a.restored, atol=1e-5)


def _refused(capsys, src, out, profile, *extra):
    rc = _restore(src, out, profile, *extra)
    err = capsys.readouterr().err
    assert rc != 0 and not out.exists()
    return err


def test_what_the_measured_dose_lacks_is_named_and_nothing_is_written(profile_dir, tmp_path,
                                                                         capsys):
    # a flat at another voltage
    src = _raw_scan(tmp_path / "kv.h5", flats_at={**FLAT, "voltage_kv": 70.0})
    err = _refused(capsys, src, tmp_path / "o1.h5", profile_dir)
    assert "taken at 50 kV and its flat at 70 kV" in err and "--dose-ratio" in err
    # projections stored corrected, without the references that corrected them
    cor = tmp_path / "cor.h5"
    with ScanWriter(cor, (PX, PX), "float32", metadata={"pixel_size_um": 1.3, "corrected": True},
                    swmr=False) as w:
        w.append(np.full((PX, PX), 0.5, np.float32), image_key=0, frames_averaged=1, **PROJ)
    err = _refused(capsys, cor, tmp_path / "o2.h5", profile_dir)
    assert "projection 0 has no dark and flat reference" in err
    # a flat without its exposure
    src = _raw_scan(tmp_path / "noexp.h5", flats_at={**FLAT, "exposure_s": float("nan")})
    err = _refused(capsys, src, tmp_path / "o3.h5", profile_dir)
    assert "flat reference records no exposure_s" in err
    # a profile without the ADU per quantum (and not calibrated on the twin): both routes named
    text = (profile_dir / "profile.toml").read_text()
    (profile_dir / "profile.toml").write_text(
        "\n".join(ln for ln in text.splitlines() if not ln.startswith("nnps_adu_per_quantum")) + "\n")
    assert "nnps_adu_per_quantum" not in tomllib.loads((profile_dir / "profile.toml").read_text())["calibration"]
    err = _refused(capsys, _raw_scan(tmp_path / "ok.h5"), tmp_path / "o4.h5", profile_dir)
    assert "nnps_adu_per_quantum" in err and "digital twin" in err and "--dose-ratio" in err
    assert _restore(tmp_path / "ok.h5", tmp_path / "o5.h5", profile_dir, "--dose-ratio", "0.3") == 0


# ------------------------------------------------------------------ simulated bench
EXPOSURE_S = 0.5


@pytest.fixture(scope="module")
def bench_profile(tmp_path_factory):
    """sim-yag200-5x given its detector's ADU per quantum as scripts/calibrate_sim_profiles.py
    measures it: a twin's mean dark-subtracted flat over its expected quanta, at 1 s (another
    exposure, sensor size and seed than the scan below)."""
    from xinstrument.sim import Twin, lens_bench

    twin = Twin(lens_bench(sensor_px=96), sample="open", seed=21)
    twin.set_state(xray_on=False)
    dark = np.mean([twin.render(1.0)[0] for _ in range(4)], 0, dtype=np.float64)
    twin.set_state(xray_on=True, sample_in=False)
    flat = np.mean([twin.render(1.0)[0] for _ in range(4)], 0, dtype=np.float64)
    adu = float((flat - dark).mean()) / float(twin.expected_quanta("thick", exposure_s=1.0).mean())
    dst = tmp_path_factory.mktemp("bench") / "yag200-measured"
    shutil.copytree(find_profile("sim-yag200-5x").path, dst)
    prof = DetectorProfile.load(dst)
    prof.calibration = {**prof.calibration, "nnps_adu_per_quantum": adu}
    prof.save(dst)
    return dst


def test_simulated_bench_measured_and_model_doses_agree(bench_profile, tmp_path):
    from simulated_bench import bench_at_focus

    inst = bench_at_focus(64, 7, EXPOSURE_S, 8)
    try:
        inst.load_profile(str(bench_profile))
        mean_signal = inst.profile.nnps_mean_signal
        st = inst.twin.fixed_state
        doses = {}
        for exposure in (EXPOSURE_S, 2 * EXPOSURE_S):   # the flat was taken at EXPOSURE_S
            measured = inst.frame_dose_ratio(exposure)
            state = dataclasses.replace(inst._world_state(), theta_deg=0.0)
            model = twin_flat_dose_ratio(inst.twin, state, exposure, st.voltage_kv, st.current_ua,
                                         mean_signal)
            assert measured == pytest.approx(model, rel=0.03)      # 0.04 % at 0.5 s and 1 s
            doses[exposure] = measured
        assert doses[2 * EXPOSURE_S] == pytest.approx(2 * doses[EXPOSURE_S], rel=1e-9)
        scan = tmp_path / "bench.h5"
        inst.record(scan, n_frames=1, n_average=2)
    finally:
        inst.disconnect()
    out = tmp_path / "restored.h5"
    assert _restore(scan, out, bench_profile) == 0
    with ScanReader(out) as r:
        md = r.metadata["restoration"]
    assert "measured flat" in md["dose_source"]
    assert md["dose_ratio"][0] == pytest.approx(doses[EXPOSURE_S], rel=1e-3)   # the same flat


def test_live_dose_without_references_is_refused_by_name(bench_profile, caplog):
    from simulated_bench import bench_at_focus

    inst = bench_at_focus(64, 7, EXPOSURE_S, 2)
    try:
        inst.load_profile(str(bench_profile))
        inst.set_restoration("wiener", device="cpu")
        inst.set_fidelity_policy(True, fallback_method=None)
        fr = inst.acquire(1, restore=True)
        assert fr.fidelity.normalised
        kv, ua = inst.twin.fixed_state.voltage_kv, inst.twin.fixed_state.current_ua
        # a frame at another voltage than its flat: the guard gives no verdict, and says why
        _, _, rep = inst.check_fidelity(fr.data, fr.restored, "wiener", frames_averaged=1,
                                        exposure_s=EXPOSURE_S, voltage_kv=kv + 10, current_ua=ua)
        assert not rep.normalised
        assert "its flat at" in caplog.text
        inst.dark, inst.flat = None, None
        with pytest.raises(InstrumentError, match="no dark and flat reference"):
            inst.frame_dose_ratio(EXPOSURE_S)
    finally:
        inst.disconnect()
