"""`xinstrument bench` on tiny sizes: the table is produced from measurements, errors are clear."""
from __future__ import annotations

import re

import numpy as np
import pytest

from xinstrument.bench import restoration_benchmark, twin_test_set
from xinstrument.cli import main
from xinstrument.errors import UserError
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


def test_a_specialist_outside_its_dose_range_is_listed_as_not_run():
    # the PCB test set is at the calibration dose; the shipped specialist is trained at ~0.15
    res = restoration_benchmark(find_profile("sim-gos134"), n_test=1, size_px=64, speed_px=64,
                                methods=["wiener", "specialist_pcb"], reps=1)
    assert [r.method for r in res.rows][-1] == "wiener"
    assert len(res.skipped) == 1 and res.skipped[0].startswith("specialist_pcb (dose ratio 1 ")
    assert "outside the range" in res.skipped[0]


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


# --- bench sr ------------------------------------------------------------------------------------
def _lens_with_small_sr(tmp_path):
    import shutil

    import torch

    from xinstrument.profiles import DetectorProfile, repo_profiles_dir
    from xinstrument.restoration.superres import SRNet, pack_sr_weights

    dst = tmp_path / "lens"
    shutil.copytree(repo_profiles_dir() / "sim-yag200-5x", dst)
    toml = (dst / "profile.toml").read_text().splitlines()
    (dst / "profile.toml").write_text("\n".join(ln for ln in toml if not ln.startswith("unet")) + "\n")
    prof = DetectorProfile.load(dst)
    torch.manual_seed(0)
    prof.save_weights("sr_x2", pack_sr_weights(SRNet(2, channels=4, layers=1)))
    return DetectorProfile.load(dst)


def test_sr_bench_measures_every_method_on_the_fine_grid(tmp_path):
    from xinstrument.bench import format_sr_table, sr_benchmark

    prof = _lens_with_small_sr(tmp_path)
    res = sr_benchmark(prof, 2, chart_px=1024, pcb_px=64, pcb_samples=1, frames=1, device="cpu")
    assert list(res.chart) == ["raw", "bicubic", "wiener+bicubic", "sr_x2",
                               "reference screen, camera px, noise-free", "truth (fine grid)"]
    assert res.output_pixel_um == pytest.approx(res.pixel_um / 2)
    # the truth on the fine grid resolves finer groups than the raw camera frame
    assert res.chart["truth (fine grid)"]["finest_resolved_um"] < res.chart["raw"]["finest_resolved_um"]
    raw_1um = [g for g in res.chart["raw"]["groups"] if g["width_um"] == 1.0]
    assert all(not g["resolved"] and "below 2 px" in g["note"] for g in raw_1um)
    for k in ("raw", "bicubic", "wiener+bicubic", "sr_x2"):
        p, s = res.chart_scores[k]
        assert np.isfinite(p) and 0 < s <= 1 and len(res.pcb_scores[k]) == 1
    assert set(res.seconds) == {"bicubic", "wiener+bicubic", "sr_x2"}
    assert all(t > 0 for t in res.seconds.values())
    text = format_sr_table(res)
    assert re.search(r"^bicubic .* 1\.0$", text, re.M)


def test_sr_bench_on_tomosynthesis_slices_and_charts_without_their_finest_bars(tmp_path):
    import shutil

    import torch

    from xinstrument.bench import format_sr_table, sr_benchmark
    from xinstrument.profiles import DetectorProfile, repo_profiles_dir
    from xinstrument.restoration.superres import SRNet, pack_sr_weights

    dst = tmp_path / "micro"
    shutil.copytree(repo_profiles_dir() / "sim-micro-16x-sr", dst)
    prof = DetectorProfile.load(dst)
    torch.manual_seed(0)            # a small network in place of the shipped one: speed only
    prof.save_weights("sr_x2", pack_sr_weights(SRNet(2, channels=4, layers=1)))
    prof = DetectorProfile.load(dst)
    res = sr_benchmark(prof, 2, chart_px=256, pcb_px=64, pcb_samples=1, frames=1,
                       exposure_s=16.0, device="cpu", half_arc_deg=20.0, n_angles=3,
                       invented_bars=True)
    assert (res.half_arc_deg, res.n_angles) == (20.0, 3)
    # oblique incidence blurs the slice along the tilt: vertical 1 um bars lose more contrast
    one = {g["orientation"]: g for g in res.chart["raw"]["groups"] if g["width_um"] == 1.0}
    assert one["vertical"]["ctf"] < 0.8 * one["horizontal"]["ctf"]
    assert len(res.invented) == 2
    for variant, per_method in res.invented.items():
        assert set(per_method) >= {"raw", "bicubic", "sr_x2", "truth (fine grid)"}
        for g in per_method["truth (fine grid)"]:       # the variant has no bars there
            assert g["ctf"] < 0.05 and not g["resolved"], (variant, g)
    text = format_sr_table(res)
    assert "where the bars were" in text and "tomosynthesis slices: 3 projections" in text
    with pytest.raises(UserError, match="half arc"):
        sr_benchmark(prof, 2, chart_px=64, half_arc_deg=20.0, n_angles=1, device="cpu")


def test_bench_sr_factor_without_weights_is_a_user_error(tmp_path, capsys):
    prof = _lens_with_small_sr(tmp_path)
    assert main(["bench", "sr", "--profile", str(prof.path), "--factor", "4", "--chart-px", "64",
                 "--pcb-samples", "1", "--pcb-px", "64", "--frames", "1"]) == 2
    err = capsys.readouterr().err
    assert "factor 4" in err and "sr_x2" in err and "Traceback" not in err


def test_sr_slice_multiframe_keeps_the_along_tilt_bars_the_mean_blurs():
    """`bench sr --arc-deg` builds the slices the profile's SR weights expect: the multi-frame
    slice (each projection weighted by its own OTF) of the same projections as the shift-and-add
    mean keeps more of the 1 um bars along the tilt (vertical bars), about as much across it."""
    from xinstrument.bench import SR_OVERSAMPLE, _chart_table, _sr_slice
    from xinstrument.restoration.superres import centred_config
    from xinstrument.sim import micro_tomo_bench
    from xinstrument.sim.bench import MICRO_CHART_WIDTHS_UM
    from xinstrument.sim.samples import chart_groups, resolution_chart

    cfg = centred_config(micro_tomo_bench(sensor_px=256, oversample=SR_OVERSAMPLE))
    chart = resolution_chart(cfg.fov_mm, MICRO_CHART_WIDTHS_UM)
    angles = np.linspace(-20.0, 20.0, 5)
    saa = _sr_slice(cfg, chart, 900_000, 16.0, 1, angles, "saa")
    mf = _sr_slice(cfg, chart, 900_000, 16.0, 1, angles, "multiframe")
    assert saa.shape == mf.shape and np.abs(mf - saa).max() > 0.02
    px = cfg.pixel_at_object_um / 1000
    tab = _chart_table({"saa": (saa, px), "multiframe": (mf, px)},
                       chart_groups(cfg.fov_mm, MICRO_CHART_WIDTHS_UM))
    one = {k: {g["orientation"]: g["ctf"] for g in t["groups"] if g["width_um"] == 1.0}
           for k, t in tab.items()}
    assert one["multiframe"]["vertical"] > 1.3 * one["saa"]["vertical"], one
    # (0.28 vs 0.09 along, 0.62 vs 0.68 across at this seed)
    assert one["multiframe"]["horizontal"] > 0.85 * one["saa"]["horizontal"], one
    with pytest.raises(UserError, match="slice reconstruction"):
        _sr_slice(cfg, chart, 900_000, 16.0, 1, angles[:2], "sirt")
