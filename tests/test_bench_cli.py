"""`xinstrument bench` on tiny sizes: the table is produced from measurements, errors are clear."""
from __future__ import annotations

import re

import numpy as np

from xinstrument.bench import restoration_benchmark, twin_test_set
from xinstrument.cli import main
from xinstrument.profiles import find_profile


def test_test_set_is_rendered_from_held_out_seeds_and_is_noisy_thick():
    ts = twin_test_set("panel-gos", 2, 64)
    assert ts.lr.shape == ts.hr.shape == (2, 64, 64)
    assert not np.allclose(ts.lr[0], ts.lr[1])       # different samples
    # flat/dark corrected flats sit at transmission 1 with quantum noise on them
    assert abs(float(ts.flats.mean()) - 1.0) < 0.02 and float(ts.flats.std()) > 1e-3
    assert float(np.abs(ts.lr - ts.hr).mean()) > 1e-3


def test_restoration_bench_scores_methods_against_input_and_skimage():
    res = restoration_benchmark(find_profile("sim-gos134"), n_test=2, size_px=96, speed_px=128,
                                methods=["wiener", "inverse"], reps=1)
    rows = {r.method: r for r in res.rows}
    assert list(rows) == ["LR input", "skimage wiener", "skimage richardson_lucy", "wiener",
                          "inverse"]
    for r in res.rows:
        assert np.isfinite(r.psnr_db[0]) and 0 < r.ssim[0] <= 1
    assert rows["LR input"].hf_psd_gain == 1.0
    # deconvolution adds high-frequency power; the Wiener filter beats the blurred input
    assert rows["inverse"].hf_psd_gain > 1.0
    assert rows["wiener"].psnr_db[0] > rows["LR input"].psnr_db[0]
    for m in ("wiener", "inverse"):
        assert rows[m].fps["128"] > 0 and "vs skimage" in rows[m].speed_note


def test_bench_restoration_command_prints_a_table(capsys):
    assert main(["bench", "restoration", "--profile", "sim-gos134", "--method", "inverse",
                 "--n-test", "1", "--size", "64", "--speed-px", "64"]) == 0
    out = capsys.readouterr().out
    assert "skimage richardson_lucy" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("inverse"))
    assert re.search(r"\d+\.\d+ \+- \d+\.\d+", line)


def test_bench_unknown_method_and_profile_are_user_errors(capsys):
    assert main(["bench", "restoration", "--method", "magic", "--size", "64"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["bench", "restoration", "--profile", "nope", "--size", "64"]) == 2
    assert "no such profile" in capsys.readouterr().err


def test_bench_storage_command(tmp_path, capsys):
    assert main(["bench", "storage", "--dir", str(tmp_path), "--shape", "64", "--frames", "2"]) == 0
    out = capsys.readouterr().out
    assert "raw disk" in out and "lzf" in out
    assert main(["bench", "storage", "--dir", str(tmp_path / "missing")]) == 2
