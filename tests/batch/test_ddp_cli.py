"""``python -m xinstrument.batch.ddp``: the distributed trainer learns from the same HR pool as
``xinstrument train`` (the twin's training families) and refuses held-out families."""
from __future__ import annotations

import shutil

import pytest

from xinstrument.batch.ddp import main
from xinstrument.profiles import find_profile


def test_ddp_trainer_refuses_held_out_families_and_writes_nothing(tmp_path, capsys):
    prof = tmp_path / "p"
    shutil.copytree(find_profile("sim-gos134").path, prof)
    before = (prof / "weights" / "unet.pt").read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(["--profile", str(prof), "--method", "unet", "--steps", "1",
              "--hr-families", "pcb,foam"])
    assert exc.value.code == 2
    assert "held-out families ['foam']" in capsys.readouterr().err
    assert (prof / "weights" / "unet.pt").read_bytes() == before


def test_ddp_trainer_trains_on_named_training_families(tmp_path, monkeypatch):
    from xinstrument.sim import families

    prof = tmp_path / "p"
    shutil.copytree(find_profile("sim-gos134").path, prof)
    seen = []
    real = families.training_source

    def spy(names=families.TRAINING_FAMILIES, **kw):
        seen.append(tuple(names))
        return real(names, **kw)

    monkeypatch.setattr(families, "training_source", spy)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert main(["--profile", str(prof), "--method", "unet", "--steps", "1", "--patch", "32",
                 "--batch", "2", "--pool-images", "2", "--pool-px", "64", "--device", "cpu",
                 "--hr-families", "fibres,powders"]) == 0
    assert seen == [("fibres", "powders")]
