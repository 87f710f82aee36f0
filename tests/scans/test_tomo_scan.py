"""Tomosynthesis scans on the simulated bench: real drivers, emulated rotation axis, the twin."""
import threading
import time

import numpy as np
import pytest

from xinstrument.cli import main
from xinstrument.config import InstrumentConfig
from xinstrument.instrument import Instrument
from xinstrument.recon import TomoGeometry, load_scan, read_reconstruction
from xinstrument.scans import PlanError, ScanAborted, TomoPlan, TomoScan, tomosynthesis
from xinstrument.storage import ScanReader


@pytest.fixture(scope="module")
def inst():
    cfg = InstrumentConfig.simulated(sensor_px=64, sample="pcb-layers", seed=2)
    cfg.simulation.warmup_duration_s = 0.2
    cfg.camera.exposure_s = 0.1
    i = Instrument(cfg).connect()
    i.warm_up()
    i.set_voltage_kv(50)
    i.set_current_ua(80)
    i.xray_on()
    yield i
    i.disconnect()


def test_scan_stores_every_frame_with_its_angle_and_the_geometry(inst, tmp_path):
    events, shown = [], []
    unsub = inst.subscribe(lambda k, p: events.append(p) if k == "progress"
                           else shown.append(p) if k == "frame" else None)
    reports = []
    out = tmp_path / "t.h5"
    res = tomosynthesis(inst, arc_deg=2, n_angles=5, frames_per_angle=2, darks=1, flats=1,
                        flats_every=2, restore=True, restoration_method="wiener", out=out,
                        progress=reports.append)
    unsub()
    assert res.complete and res.n_projections == 5
    assert res.theta_deg == pytest.approx(np.linspace(-1, 1, 5), abs=1e-3)
    with ScanReader(out) as r:
        keys = r.frame_metadata["image_key"]
        assert list(keys) == [2, 1, 0, 0, 1, 0, 0, 1, 0]      # flat series every 2 angles
        assert r.theta_deg == pytest.approx(res.theta_deg)
        assert r.complete and r.n_restored == 5
        assert TomoGeometry.from_attrs(r.metadata) == res.geometry
        # each projection's frame event carries its raw average (as stored) and the corrected,
        # restored frame
        assert [f.theta_deg for f in shown] == pytest.approx(list(r.theta_deg))
        for f, stored in zip(shown, r.projections):
            assert f.corrected and f.restored is not None
            assert f.raw is not None and np.array_equal(f.raw, stored)
            assert float(f.raw.mean()) > 20 * float(f.data.mean())      # ADU vs transmission
    import h5py
    with h5py.File(out, "r") as f:
        assert f["/exchange/theta"][()] == pytest.approx(res.theta_deg)
        assert f["/exchange/data"].shape == (5, 64, 64)
    left = [p.time_left_s for p in reports if p.phase == "projections"]
    assert all(np.isfinite(left)) and left[-1] == 0 and left[0] > 0
    assert any(p[0] == "tomosynthesis" for p in events)
    data = load_scan(out)
    assert data.transmission.shape == (5, 64, 64)
    from xinstrument.sim.bench import WorldState
    truth = inst.twin.noise_free_transmission("thick", state=WorldState(theta_deg=0.0))
    assert float(data.transmission[2].mean()) == pytest.approx(float(truth.mean()), abs=0.01)
    assert inst.rotation_deg == pytest.approx(0.0, abs=1e-3)
    # recon --in-place writes the slices into the scan file
    assert main(["recon", str(out), "--method", "saa", "sirt", "--heights", "0:1.6:4",
                 "--iterations", "2", "--in-place"]) == 0
    slices, heights, attrs = read_reconstruction(out, "sirt")
    assert slices.shape[0] == 4 and heights == pytest.approx(np.linspace(0, 1.6, 4))
    assert attrs["units"] == "1/mm" and np.isfinite(slices).all()


def test_abort_leaves_a_valid_incomplete_file(inst, tmp_path):
    out = tmp_path / "a.h5"
    scan = TomoScan(inst, TomoPlan(arc_deg=4, n_angles=9, frames_per_angle=2, out=out))
    seen = threading.Event()
    scan.progress_cb = lambda p: seen.set() if p.angle_index >= 2 else None
    scan.start()
    assert seen.wait(60)
    scan.abort()
    with pytest.raises(ScanAborted, match="incomplete") as info:
        scan.wait(60)
    res = info.value.result
    assert not res.complete and 2 <= res.n_projections < 9
    with ScanReader(out) as r:
        assert not r.complete and "aborted" in r.reason
        assert r.theta_deg.size == res.n_projections
    assert inst.busy is None


def test_pause_holds_the_scan_and_resume_finishes_it(inst, tmp_path):
    scan = TomoScan(inst, TomoPlan(arc_deg=2, n_angles=3, frames_per_angle=1,
                                   out=tmp_path / "p.h5"))
    scan.pause()
    scan.start()
    time.sleep(1.0)
    assert scan.state == "paused" and scan._angles_done == 0
    scan.resume()
    assert scan.wait(60).complete


@pytest.mark.parametrize("kw, match", [
    (dict(arc_deg=40, n_angles=1), "n_angles"),
    (dict(arc_deg=100, n_angles=5), "outside the rotation axis limits"),
    (dict(angles_deg=[0, 1, 1, 2]), "strictly"),
    (dict(angles_deg=[0, 1, 2], n_angles=4), "inconsistent"),
    (dict(angles_deg=[0, 1, 2], arc_deg=3), "inconsistent"),
    (dict(arc_deg=10, n_angles=3, flats=0), "missing flats"),
])
def test_bad_plans_are_refused_before_anything_moves(inst, tmp_path, kw, match):
    saved = inst.flat
    inst.flat = None
    try:
        with pytest.raises(PlanError, match=match):
            tomosynthesis(inst, out=tmp_path / "x.h5", **kw)
    finally:
        inst.flat = saved
    assert not (tmp_path / "x.h5").exists()


def test_plan_file_errors_are_one_line(tmp_path, capsys):
    plan = tmp_path / "plan.toml"
    plan.write_text("[scan]\narc_deg = 4\nn_angles = 1\n")
    assert main(["scan", "tomo", str(plan)]) != 0
    assert "n_angles" in capsys.readouterr().err
    plan.write_text("[scan]\narc_deg = 4\nn_angle = 3\n")
    assert main(["scan", "tomo", str(plan)]) != 0
    assert "unknown key" in capsys.readouterr().err


def test_cli_tomosynthesis_file_passes_the_reader_checks(tmp_path):
    from scanfile_checks import check_scan_file
    plan = tmp_path / "plan.toml"
    plan.write_text('[bench]\nsensor_px = 64\nsample = "chart"\nseed = 1\nexposure_s = 0.05\n'
                    'warmup_duration_s = 0.2\n\n'
                    '[scan]\narc_deg = 4.0\nn_angles = 3\nframes_per_angle = 2\ndarks = 1\n'
                    'flats = 1\nvoltage_kv = 50\ncurrent_ua = 80\nrestore = true\n'
                    'restoration_method = "wiener"\n')
    out = tmp_path / "cli_tomo.h5"
    assert main(["scan", "tomo", str(plan), "--out", str(out)]) == 0
    info = check_scan_file(out, nxdata=("/entry/data", "/entry/corrected", "/entry/restored"))
    assert info["keys"].count(0) == 3
