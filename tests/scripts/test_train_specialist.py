"""scripts/train_specialist.py: trains through the profile's forward model and stores weights the
stage loads, with the dose range and detector they were trained for."""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import train_specialist as ts

from xinstrument.profiles import find_profile

SMALL = ["--steps", "4", "--pool", "3", "--size-px", "48", "--patch-px", "32", "--batch", "2",
         "--base-channels", "4", "--depth", "2", "--eval-every", "2", "--validation-frames", "1"]


@pytest.fixture
def profile_dir(tmp_path):
    dst = tmp_path / "gos"
    shutil.copytree(find_profile("sim-gos134").path, dst)
    return dst


def test_trains_and_stores_weights_the_stage_runs_at_their_dose(profile_dir):
    from xinstrument.restoration import Restorer
    from xinstrument.restoration.dose import restore_with_dose

    assert ts.main(["--profile", str(profile_dir), "--dose-ratio", "0.3", "--dose-spread", "2",
                    *SMALL]) == 0
    prof = find_profile(profile_dir)
    assert prof.weights[ts.METHOD] == f"weights/{ts.METHOD}.pt"
    rec = json.loads((profile_dir / "weights" / f"{ts.METHOD}.json").read_text())
    assert rec["dose_ratio_range"] == pytest.approx([0.15, 0.6])
    assert rec["detector_id"] == prof.detector_id and rec["family"] == "pcb"
    assert [r["step"] for r in rec["curve"]] == [0, 2, 4]
    assert all(math.isfinite(r["validation"]["ssim"]) for r in rec["curve"])

    r = Restorer(prof, ts.METHOD, device="cpu")
    frame = np.full((48, 48), 0.6, np.float32)
    assert restore_with_dose(r, frame, 1, 0.3).shape == (48, 48)
    with pytest.raises(ValueError, match=r"outside the range .*0\.15\.\.0\.6"):
        restore_with_dose(r, frame, 1, 0.7)


def test_dry_run_writes_nothing_and_defaults_to_the_operating_point(profile_dir, capsys):
    before = sorted(p.name for p in (profile_dir / "weights").iterdir())
    toml = (profile_dir / "profile.toml").read_text()
    assert ts.main(["--profile", str(profile_dir), "--dry-run", *SMALL]) == 0
    assert sorted(p.name for p in (profile_dir / "weights").iterdir()) == before
    assert (profile_dir / "profile.toml").read_text() == toml
    assert "(operating point)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["--profile", "no-such-profile"], "no-such-profile"),
    (["--profile", "sim-gos134", "--dose-ratio", "0"], "--dose-ratio must be a finite number > 0"),
    (["--profile", "sim-gos134", "--dose-spread", "0.5"], "--dose-spread must be"),
    (["--profile", "sim-gos134", "--steps", "0"], "--steps must be >= 1"),
    (["--profile", "sim-gos134", "--size-px", "64", "--patch-px", "96"], "larger than the frames"),
    (["--profile", "sim-gos134", "--seed", "70"], "validation block"),
])
def test_bad_options_get_a_clear_error(argv, words, capsys):
    with pytest.raises(SystemExit):
        ts.parse(argv)
    assert words in capsys.readouterr().err
