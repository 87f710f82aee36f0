"""Every plan kind, through the engine, writes a file that real readers accept unchanged.

The checks on each file are in ``tests/scanfile_checks.py``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from scanfile_checks import check_scan_file

from xinstrument.cli import main
from xinstrument.config import InstrumentConfig
from xinstrument.instrument import Instrument
from xinstrument.scans import (
    FocusScan,
    MTFMeasurement,
    NNPSMeasurement,
    PlanAborted,
    PlanError,
    References,
    Series,
    SingleReference,
    Snap,
    TomoPlan,
)
from xinstrument.storage import ScanReader, StorageError


# ----------------------------------------------------------------------------- the bench
@pytest.fixture(scope="module")
def inst():
    # the resolution chart: mostly open beam, so transmission spans 0..1 (a PCB at 50 kV is
    # nearly opaque and its noise crosses zero)
    cfg = InstrumentConfig.simulated(sensor_px=64, sample="chart", seed=2)
    cfg.simulation.warmup_duration_s = 0.2
    cfg.camera.exposure_s = 0.05
    i = Instrument(cfg).connect()
    i.warm_up()
    i.set_voltage_kv(50)
    i.set_current_ua(80)
    i.xray_on()
    i.run(References(dark_frames=4, flat_frames=4))
    yield i
    i.disconnect()


def test_snap_series_and_raw_series_files(inst, tmp_path):
    frame = inst.run(Snap(n_average=2, out=tmp_path / "snap.h5"))
    assert frame.corrected and frame.references is inst.references
    check_scan_file(tmp_path / "snap.h5", nxdata=("/entry/data", "/entry/corrected"))
    stats = inst.run(Series(n_frames=3, n_average=2, out=tmp_path / "series.h5"))
    assert stats.camera_dropped == 0
    info = check_scan_file(tmp_path / "series.h5")
    assert info["keys"] == [2, 1, 0, 0, 0]        # references once, before the frames
    inst.run(Series(n_frames=3, correct=False, out=tmp_path / "raw.h5"))
    with ScanReader(tmp_path / "raw.h5") as r:
        assert r.dtype == np.uint16 and not r.is_corrected("measured") and not r.has_corrected
        assert list(r.frame_metadata["image_key"]) == [0, 0, 0]


def test_references_plans_record_their_frames(inst, tmp_path):
    refs = inst.run(References(dark_frames=3, flat_frames=3, out=tmp_path / "refs.h5"))
    assert inst.references is refs and inst.xray_is_on
    info = check_scan_file(tmp_path / "refs.h5")
    assert info["keys"] == [2, 1]
    inst.run(SingleReference(which="flat", n_frames=2, series=2, out=tmp_path / "f.h5"))
    with ScanReader(tmp_path / "f.h5") as r:
        assert list(r.frame_metadata["image_key"]) == [1, 1]
    inst.run(References(dark_frames=4, flat_frames=4))


def test_focus_scan_file_has_frames_with_z_and_the_curve(inst, tmp_path):
    curve = inst.run(FocusScan(start_um=50, stop_um=56, step_um=2, frames_per_step=2,
                               out=tmp_path / "focus.h5"))
    check_scan_file(tmp_path / "focus.h5", nxdata=("/entry/data", "/entry/focus_curve"))
    with h5py.File(tmp_path / "focus.h5", "r") as f:
        g = f["/entry/focus_curve"]
        assert g.attrs["signal"] == "metric" and list(g.attrs["axes"]) == ["position"]
        np.testing.assert_allclose(g["position"][()], curve.positions_um)
        # the optimum with its uncertainty (NaN only where the metric gives no noise estimate)
        assert g.attrs["best_position_um"] == curve.best_position_um
        np.testing.assert_equal(g.attrs["best_position_sd_um"], curve.best_position_sd_um)
        z = f["/entry/sample/focus_z"][()][f["/entry/instrument/detector/image_key"][()] == 0]
    assert set(np.round(z)) == set(np.round(curve.positions_um))


def test_nnps_measurement(inst, tmp_path):
    r = inst.run(NNPSMeasurement(n_frames=4, roi_size_px=16, out=tmp_path / "nnps.h5"))
    assert r.nnps_mm2.size and np.all(np.isfinite(r.nnps_mm2))
    with h5py.File(tmp_path / "nnps.h5", "r") as f:
        assert f["/entry/nnps"].attrs["signal"] == "nnps"
        assert list(f["/entry/instrument/detector/image_key"][()]) == [1, 1, 1, 1, 2, 1]



def test_mtf_measurement(tmp_path):
    # the edge's blurred transition spans ~16 px: a 128 px frame leaves plateaus either side
    cfg = InstrumentConfig.simulated(sensor_px=128, sample="edge", seed=2)
    cfg.simulation.warmup_duration_s = 0.2
    cfg.camera.exposure_s = 0.05
    with Instrument(cfg) as i:
        i.warm_up()
        i.set_voltage_kv(50)
        i.set_current_ua(80)
        i.xray_on()
        i.move_focus_um(i.twin.best_focus_um("thick", 50))     # in focus: a sharp edge
        i.run(References(dark_frames=4, flat_frames=4))
        m = i.run(MTFMeasurement(n_average=4, roi=(16, 112, 16, 112), out=tmp_path / "mtf.h5"))
    assert 0 < m.mtf50_cy_per_px < 0.5
    check_scan_file(tmp_path / "mtf.h5", nxdata=("/entry/data", "/entry/mtf"))


def test_tomosynthesis_with_super_resolution_and_the_fidelity_guard(inst, tmp_path):
    inst.set_restoration("sr_x2")
    inst.set_fidelity_policy(True)
    try:
        res = inst.run(TomoPlan(arc_deg=2, n_angles=3, frames_per_angle=2, restore=True,
                                out=tmp_path / "tomo.h5"))
    finally:
        inst.set_fidelity_policy(False)
        inst.set_restoration("wiener")
    assert res.complete and res.n_projections == 3
    check_scan_file(tmp_path / "tomo.h5",
                    nxdata=("/entry/data", "/entry/corrected", "/entry/restored"))
    with ScanReader(tmp_path / "tomo.h5") as r:
        assert r.restored.shape == (3, 128, 128) and r.restored_scale == 2
        assert r.restored_pixel_size_um == pytest.approx(r.pixel_size_um / 2)
        assert set(r.restored_metadata["method"]) <= {"sr_x2", "inverse+bicubic_x2"}
        extras = r.restored_extras
        assert extras["consistency"].shape[0] == 3 and np.isfinite(extras["reduced_chi2"]).all()


def test_batch_restore_super_resolution(inst, tmp_path):
    from xinstrument.batch import run_batch
    from xinstrument.profiles import find_profile
    inst.run(Series(n_frames=2, n_average=2, out=tmp_path / "in.h5"))
    rep = run_batch([tmp_path / "in.h5"], find_profile("sim-yag200-5x"), "sr_x2",
                    out_dir=tmp_path / "out")
    assert rep.ok, rep.table()
    out = Path(rep.results[0].output)
    check_scan_file(out, nxdata=("/entry/data", "/entry/corrected", "/entry/restored"))
    with ScanReader(out) as r:
        assert r.restored.shape == (2, 128, 128) and r.restored_scale == 2
        assert list(r.restored_metadata["method"]) == ["sr_x2", "sr_x2"]


def test_pause_resume_and_abort_any_plan(inst, tmp_path):
    h = inst.start(Series(n_frames=None, out=tmp_path / "live.h5"))
    time.sleep(0.5)
    inst.pause()
    t = time.monotonic()
    while inst.pipeline is None or not inst.pipeline.paused:
        assert time.monotonic() - t < 10
        time.sleep(0.02)
    n = inst.pipeline.stats().stages["camera"].frames_out
    time.sleep(0.5)
    assert inst.pipeline.stats().stages["camera"].frames_out == n    # held at a boundary
    assert inst.engine.state == "paused"
    inst.resume()
    time.sleep(0.3)
    inst.abort()
    with pytest.raises(PlanAborted, match="incomplete"):
        h.wait(30)
    with ScanReader(tmp_path / "live.h5") as r:
        assert not r.complete and "aborted" in r.reason and r.n_frames > n
    assert inst.busy is None


def test_a_paced_series_keeps_its_period_and_stop_ends_it_with_a_complete_file(inst, tmp_path):
    frames = inst.run(Series(n_frames=3, period_s=0.4, keep=True))
    starts = np.diff([f.timestamp_s for f in frames])
    assert len(frames) == 3 and np.all(starts > 0.35), starts     # one frame per period
    h = inst.start(Series(n_frames=None, period_s=0.3, out=tmp_path / "paced.h5"))
    time.sleep(1.0)
    inst.stop()
    h.wait(30)
    with ScanReader(tmp_path / "paced.h5") as r:
        assert r.complete and 2 <= r.n_frames - 2 <= 5           # darks and flats first
    with pytest.raises(PlanError, match="period_s"):
        inst.run(Series(n_frames=1, period_s=float("nan")))


def test_refused_plans_move_nothing_and_keep_the_tube_as_it_was(inst, tmp_path):
    existing = tmp_path / "taken.h5"
    existing.write_bytes(b"keep")
    z = inst.focus_position_um
    cases = [
        (Series(n_frames=1, out=existing), "exists"),
        (Series(n_frames=1, out=tmp_path / "missing" / "x.h5"), "does not exist"),
        (FocusScan(start_um=-50, stop_um=10), "soft limits"),
        (TomoPlan(arc_deg=100, n_angles=3, out=tmp_path / "t.h5"), "outside the rotation"),
        (TomoPlan(arc_deg=2, n_angles=3, restore=True, restoration_method="nope",
                  out=tmp_path / "t.h5"), "unknown restoration method"),
        (Snap(n_average=0), "n_average"),
    ]
    for plan, message in cases:
        with pytest.raises(PlanError, match=message):
            inst.run(plan)
    saved = inst.dark
    inst.dark = None
    try:
        with pytest.raises(PlanError, match="no dark/flat references"):
            inst.run(Series(n_frames=1, out=tmp_path / "n.h5"))
    finally:
        inst.dark = saved
    assert existing.read_bytes() == b"keep" and not (tmp_path / "t.h5").exists()
    assert inst.focus_position_um == pytest.approx(z) and inst.xray_is_on


def test_soft_limits_one_implementation_kept_across_restarts(tmp_path):
    state = tmp_path / "state.json"
    cfg = InstrumentConfig.simulated(sensor_px=64)
    cfg.simulation.warmup_duration_s = 0.2
    with Instrument(cfg, state_file=state) as i:
        assert i.set_soft_limits("focus", 20, 120) == (20, 120)
        with pytest.raises(Exception, match="limit"):
            i.move_focus_um(150)                     # refused by the stage driver
        with pytest.raises(Exception, match="controller travel"):
            i.set_soft_limits("focus", -10, 120)
    assert json.loads(state.read_text())["soft_limits"]["focus"] == [20, 120]
    with Instrument(cfg, state_file=state) as i:     # a restart keeps them
        assert i.soft_limits("focus") == (20, 120)


def test_cli_acquire_file_passes_the_reader_checks(tmp_path):
    out = tmp_path / "cli.h5"
    assert main(["acquire", str(out), "--frames", "2", "--average", "2", "--references", "2",
                 "--sensor-px", "64", "--exposure-s", "0.05", "--kv", "50", "--ua", "80"]) == 0
    check_scan_file(out, nxdata=("/entry/data", "/entry/corrected"))


def test_old_files_that_do_not_say_are_refused(tmp_path):
    from xinstrument.storage import ScanWriter
    path = tmp_path / "old.h5"
    with ScanWriter(path, (8, 8), "float32") as w:
        w.append(np.ones((8, 8), np.float32))
    with h5py.File(path, "r+") as f:       # as written before the attribute existed
        del f["/entry/instrument/detector/data"].attrs["corrected"]
    with ScanReader(path) as r, pytest.raises(StorageError, match="refusing to guess"):
        r.is_corrected("measured")
