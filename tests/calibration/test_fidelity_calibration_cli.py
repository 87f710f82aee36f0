"""`xinstrument calibrate fidelity`: the guard's tolerance from a recorded scan of ordinary frames."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from xinstrument.cli import main
from xinstrument.config import InstrumentConfig
from xinstrument.instrument import Instrument
from xinstrument.profiles import find_profile

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A scan with restored frames and one without, and the camera's ADU per quantum."""
    out = tmp_path_factory.mktemp("fidelity")
    cfg = InstrumentConfig.simulated(sensor_px=128, sample="pcb", seed=5)
    cfg.simulation.warmup_duration_s = 0.2
    cfg.camera.exposure_s = 0.2
    with Instrument(cfg) as inst:
        inst.warm_up()
        inst.set_voltage_kv(50)
        inst.set_current_ua(80)
        inst.xray_on()
        inst.take_darks(2)
        inst.take_flats(4)
        inst.set_restoration("wiener")
        inst.record(out / "ordinary.h5", n_frames=6, n_average=1, restore=True)
        inst.record(out / "plain.h5", n_frames=1, n_average=1, restore=False)
        st = dataclasses.replace(inst._world_state(), sample_in=False, xray_on=True)
        quanta = float(inst.twin.expected_quanta("thick", st, inst.exposure_s).mean())
        adu_per_quantum = float((inst.flat - inst.dark).mean()) / quanta
    return out, adu_per_quantum


def test_tolerance_of_the_recorded_method_goes_into_the_profile(recorded, tmp_path, capsys):
    out, g = recorded
    prof_dir = tmp_path / "prof"
    shutil.copytree(ROOT / "profiles" / "sim-yag200-5x", prof_dir)
    before = dict(find_profile(str(prof_dir)).fidelity_tolerance)
    rc = main(["calibrate", "fidelity", str(out / "ordinary.h5"), "--adu-per-quantum", f"{g:.6g}",
               "--profile", str(prof_dir)])
    captured = capsys.readouterr()
    text = captured.out
    assert rc == 0, captured.err
    assert "wiener" in text and "held-out tile false-alarm rate" in text
    prof = find_profile(str(prof_dir))
    assert 0 <= prof.fidelity_tolerance["wiener"] < 2
    # other methods' tolerances are kept
    assert {k: v for k, v in prof.fidelity_tolerance.items() if k != "wiener"} == \
        {k: v for k, v in before.items() if k != "wiener"}


def test_scan_without_restorations_is_refused(recorded, tmp_path, capsys):
    out, g = recorded
    prof_dir = tmp_path / "prof"
    shutil.copytree(ROOT / "profiles" / "sim-yag200-5x", prof_dir)
    rc = main(["calibrate", "fidelity", str(out / "plain.h5"), "--adu-per-quantum", f"{g:.6g}",
               "--profile", str(prof_dir)])
    assert rc == 2 and "no restored frames" in capsys.readouterr().err
    rc = main(["calibrate", "fidelity", str(tmp_path / "missing.h5"), "--adu-per-quantum", "1",
               "--profile", str(prof_dir)])
    assert rc == 2 and "missing.h5" in capsys.readouterr().err
