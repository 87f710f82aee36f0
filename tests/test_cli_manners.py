"""The command line's manners: help for every flag, one rule for where outputs go, refusals
before any device moves, no NaN in time estimates, flags named in messages."""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xinstrument.cli import build_parser, main, user_message


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


def test_every_flag_of_every_command_has_help():
    missing = []
    commands = 0
    for path, parser in _walk(build_parser()):
        commands += 1
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction,
                                   argparse._SubParsersAction)):
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"xinstrument {' '.join(path)} "
                               f"{'/'.join(action.option_strings) or action.dest}")
    assert commands > 15
    assert not missing, "flags without help text:\n" + "\n".join(missing)


def test_a_progress_bar_never_shows_nan():
    from xinstrument.progress import ProgressBar
    out = io.StringIO()
    bar = ProgressBar("x", 10, stream=out)
    for k in range(11):
        bar.update(k)
    bar.close()
    text = out.getvalue()
    assert "nan" not in text.lower() and "not known yet" in text and "done in" in text


def test_messages_name_the_cli_flag_not_the_api_argument():
    from xinstrument.storage import StorageError
    assert "pass --overwrite" in user_message(
        StorageError(Path("a.h5"), "file exists; pass overwrite=True to replace it"))


def test_acquire_refuses_an_existing_file_before_touching_the_tube(tmp_path, capsys,
                                                                   monkeypatch):
    target = tmp_path / "x.h5"
    target.write_bytes(b"keep me")
    from xinstrument import cli

    def no_instrument(_a):
        raise AssertionError("the instrument was created for a refused output")
    monkeypatch.setattr(cli, "_instrument", no_instrument)
    for cmd in (["acquire", str(target)], ["darks", str(target)], ["flats", str(target)],
                ["focus", "--start-um", "1", "--stop-um", "2", "--out", str(target)]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert "exists; pass --overwrite" in err and err.count("\n") == 1, err
    assert target.read_bytes() == b"keep me"


def _scan(path: Path, pixel_um: float = 99.0) -> Path:
    from xinstrument.storage import ScanWriter
    rng = np.random.default_rng(0)
    with ScanWriter(path, (32, 32), "float32", swmr=False,
                    metadata={"pixel_size_um": pixel_um, "corrected": True}) as w:
        w.append(np.full((32, 32), 100, np.float32), image_key=2)
        w.append(np.full((32, 32), 2000, np.float32), image_key=1)
        w.append((0.5 + 0.1 * rng.random((32, 32))).astype(np.float32), image_key=0)
    return path


def test_restore_writes_to_the_working_directory_with_the_shared_name(tmp_path, monkeypatch):
    src_dir, work = tmp_path / "data", tmp_path / "work"
    src_dir.mkdir()
    work.mkdir()
    src = _scan(src_dir / "run7.h5")
    before = src.read_bytes()
    monkeypatch.chdir(work)
    assert main(["restore", str(src), "--profile", "sim-gos134", "--method", "wiener",
                 "--device", "cpu", "--dose-ratio", "1"]) == 0
    assert (work / "run7_restored-wiener.h5").is_file()
    assert sorted(p.name for p in src_dir.iterdir()) == ["run7.h5"]   # nothing beside it
    assert src.read_bytes() == before
    # batch restore: the same name, in the working directory by default
    from xinstrument.batch.tasks import output_path_for
    assert output_path_for(src, work, "wiener").name == "run7_restored-wiener.h5"


def test_the_demo_file_restores_with_its_own_profile(tmp_path, monkeypatch):
    """The demo records the detector pixel (the profile's), not the sample-plane one."""
    from xinstrument.profiles import find_profile
    from xinstrument.sim.bench import lens_bench
    cfg = lens_bench(sensor_px=64)
    assert cfg.pixel_at_screen_um == pytest.approx(find_profile("sim-yag200-5x").pixel_size_um)
    assert cfg.pixel_at_object_um != pytest.approx(cfg.pixel_at_screen_um, rel=0.01)


def test_plan_output_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    from xinstrument.scans.cli import load_plan_file
    plans = tmp_path / "plans"
    plans.mkdir()
    plan = plans / "p.toml"
    plan.write_text('[scan]\narc_deg = 4\nn_angles = 3\nout = "x.h5"\n')
    monkeypatch.chdir(tmp_path)
    p, _bench, _recon = load_plan_file(plan)
    assert Path(p.out) == tmp_path / "x.h5"


def test_library_info_logs_are_quiet_without_verbose():
    code = ("import logging, sys; from xinstrument.cli import _configure_logging; "
            "_configure_logging(int(sys.argv[1])); "
            "logging.getLogger('distributed.scheduler').info('noise'); "
            "logging.getLogger('distributed').warning('kept'); "
            "logging.getLogger('drivers.xray.hamamatsu').error("
            "'%s: switching X-rays off (%s)', 'tube', 'process exit'); "
            "logging.getLogger('drivers.xray.hamamatsu').error('tube: emergency XOF not "
            "confirmed (x)')")
    quiet = subprocess.run([sys.executable, "-c", code, "0"], capture_output=True, text=True,
                           check=False)
    loud = subprocess.run([sys.executable, "-c", code, "1"], capture_output=True, text=True,
                          check=False)
    assert "noise" not in quiet.stderr and "kept" in quiet.stderr
    assert "switching X-rays off" not in quiet.stderr and "not confirmed" in quiet.stderr
    assert "noise" in loud.stderr and "switching X-rays off" in loud.stderr
