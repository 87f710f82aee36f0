"""Every plan kind, through the engine, writes a file that real readers accept unchanged.

Checks on each file (``check_scan_file``):
- ``nxvalidate -a NXtomo``: no errors;
- nexusformat loads it and finds the default NXdata; silx sees every NXdata as valid;
- nxtomo (ESRF) loads the NXtomo entry: frames, image keys, angles, pixel size;
- Data Exchange: the PyPI package named ``dxchange`` is an unrelated placeholder, so the APS
  library's ``read_aps_32id`` + ``normalize`` are done here as they do it with h5py:
  ``/exchange/data``, ``data_white``, ``data_dark``, ``theta``;
  ``(data - mean(dark)) / (mean(white) - mean(dark))`` must be transmission in 0..1 (within the
  noise) and ``-log`` finite everywhere;
- every stack says whether it is corrected, and the corrected stack matches the raw frames and
  the references it names.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from xinstrument.cli import main
from xinstrument.config import InstrumentConfig
from xinstrument.instrument import Instrument
from xinstrument.scans import (FocusScan, MTFMeasurement, NNPSMeasurement, PlanAborted,
                               PlanError, References, Series, SingleReference, Snap, TomoPlan)
from xinstrument.storage import ScanReader, StorageError

NXVALIDATE = Path(sys.executable).with_name("nxvalidate")


# ----------------------------------------------------------------------------- file checks
def _nxvalidate_errors(path: Path) -> int:
    out = subprocess.run([str(NXVALIDATE), "-a", "NXtomo", "-e", str(path)],
                         capture_output=True, text=True, timeout=120, check=False)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    m = re.search(r"Total number of errors: (\d+)", text)
    assert m, text
    return int(m.group(1))


def _dxchange_normalised(path: Path):
    """What dxchange.read_aps_32id + dxchange/tomopy normalize give, done with h5py."""
    with h5py.File(path, "r") as f:
        ex = f["/exchange"]
        proj = ex["data"][...].astype(np.float32)
        flat = ex["data_white"][...].astype(np.float32)
        dark = ex["data_dark"][...].astype(np.float32)
        theta = np.deg2rad(ex["theta"][...])
    assert theta.shape[0] == proj.shape[0]
    if proj.shape[0] == 0:
        return None
    assert flat.shape[0] and dark.shape[0], "projections without white or dark fields"
    dark_m, flat_m = dark.mean(axis=0), flat.mean(axis=0)
    denom = flat_m - dark_m
    denom[denom < 1e-6] = 1e-6        # tomopy.normalize's cutoff of the denominator
    return (proj - dark_m) / denom


def check_scan_file(path: Path, *, nxdata=("/entry/data",)) -> dict:
    path = Path(path)
    assert _nxvalidate_errors(path) == 0
    from nexusformat.nexus import nxload
    root = nxload(str(path))
    default = root.get_default()
    assert default is not None and default.nxsignal is not None
    import silx.io
    from silx.io.nxdata import is_valid_nxdata
    with silx.io.open(str(path)) as f:
        for g in nxdata:
            assert is_valid_nxdata(f[g]), g
    from nxtomo import NXtomo
    nx = NXtomo().load(str(path), "entry")
    with ScanReader(path) as r:
        keys = r.frame_metadata["image_key"]
        assert [int(k.value) for k in nx.instrument.detector.image_key_control] == list(keys)
        assert not r.is_corrected("measured")          # the product records camera counts
        info = {"n": r.n_frames, "keys": list(keys), "metadata": r.metadata}
        if r.has_corrected and r.n_corrected:
            assert r.is_corrected("corrected")
            cm = r.corrected_metadata
            for k, (s, d, fl) in enumerate(zip(cm["source_index"], cm["dark_index"],
                                               cm["flat_index"])):
                assert keys[s] == 0 and keys[d] == 2 and keys[fl] == 1 and d < s and fl < s
                expect = (r.frame(int(s)) - r.frame(int(d))) / (r.frame(int(fl))
                                                                - r.frame(int(d)))
                # equal up to the defect map's replaced pixels
                assert np.median(np.abs(r.corrected[k] - expect)) < 1e-4
    t = _dxchange_normalised(path)
    if t is not None:
        # transmission in 0..1 within the noise. The noise of these small test frames (a few
        # 50 ms frames) is estimated from neighbouring-pixel differences; a file normalised
        # against the wrong references is off by far more (negative means, -log finite nowhere)
        assert np.isfinite(t).all()
        def sigma(mask):       # noise from horizontal neighbour differences, robust
            d = np.diff(t, axis=-1)[mask[..., 1:] & mask[..., :-1]]
            if d.size < 100:
                d = np.diff(t, axis=-1).ravel()
            return 1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2)

        s_open, s_dark = sigma(t > 0.5), sigma(t <= 0.5)     # open beam is the noisier
        lo, med, hi = np.percentile(t, [1, 50, 99])
        assert -4 * s_dark <= lo and 0.0 < med <= 1.0 and hi <= 1 + 4 * s_open, (
            lo, med, hi, s_dark, s_open)
        assert (t > 0).mean() > 0.9                    # -log finite but where noise crosses 0
    return info


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
    inst.set_fidelity_policy(True, fallback_method="wiener")
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
        assert set(r.restored_metadata["method"]) <= {"sr_x2", "wiener+bicubic_x2"}
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
