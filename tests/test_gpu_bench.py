"""scripts/gpu_bench.py: bad requests are one clear line (exit 2) and leave the CPU usable; on
the CPU the whole script runs, checks each fast path before timing it and writes its JSON."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_bench.py"


def run(*args, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_one_clear_line(tmp_path):
    p = run("--device", "cuda", "--out", str(tmp_path))
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr
    assert "no CUDA GPU" in p.stderr and "--device cpu" in p.stderr
    assert not (tmp_path / "gpu_bench.json").exists()


def test_frame_size_that_cannot_fit_is_refused(tmp_path):
    p = run("--device", "cpu", "--size", "2000000", "--out", str(tmp_path))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "--size 2000000" in p.stderr and "GiB" in p.stderr
    p = run("--device", "cpu", "--methods", "magic", "--quick", "--out", str(tmp_path))
    assert p.returncode == 2 and "unknown ['magic']" in p.stderr


@pytest.mark.slow
def test_quick_cpu_run_checks_then_times_and_writes_json(tmp_path):
    p = run("--device", "cpu", "--quick", "--methods", "inverse,unet,sr_x4",
            "--skip", "training,fidelity", "--out", str(tmp_path), "--seed", "7", timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1].startswith("total")      # the table comes last
    result = json.loads((tmp_path / "gpu_bench.json").read_text())
    rows = {(r["method"], r.get("precision")): r for r in result["methods"]}
    inv = rows["inverse", "fp32"]
    assert inv["status"] == "ok" and inv["check"]["passed"]
    assert inv["check"]["reference"] == "cpu-float64" and inv["check"]["rel_rms_error"] < 1e-4
    assert inv["frames_per_s"] > 0 and inv["transform_floor_ms"] > 0
    unet = rows["unet", "fp32"]
    assert unet["status"] == "ok" and unet["check"]["rel_rms_error"] < 1e-4
    assert rows["unet", "fp16"]["error_vs_fp32"] > 0                   # measured, not assumed
    # no shipped profile has sr_x4 weights: reported, not dropped
    assert rows["sr_x4", None]["status"] == "skipped" and "weights" in rows["sr_x4", None]["reason"]
    pipe = result["pipeline"]
    assert pipe["status"] == "ok" and pipe["recorded_frames"] == pipe["outputs"]
    assert pipe["frames_restored"] + pipe["frames_not_restored"] == pipe["outputs"]
    assert result["training"]["status"] == "skipped"
