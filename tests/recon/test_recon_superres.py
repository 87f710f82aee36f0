"""`xinstrument recon --super-resolve`: slices on a finer grid, recorded in the scan file."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from twin_scans import write_twin_scan

from xinstrument.cli import main
from xinstrument.profiles import DetectorProfile, repo_profiles_dir
from xinstrument.recon import read_reconstruction
from xinstrument.restoration import Restorer
from xinstrument.restoration.superres import SRNet, pack_sr_weights
from xinstrument.sim import tomo
from xinstrument.sim.bench import Twin, lens_bench
from xinstrument.sim.samples import pcb_layers

PX = 48


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tomo")
    bench = lens_bench(PX)
    twin = Twin(bench, sample="open", seed=2)
    twin.sample = pcb_layers(4 * bench.fov_mm, seed=2)   # a field this small holds no layout
    theta = np.linspace(-3, 3, 5)
    proj = tomo.projections(twin, theta, "thin")
    return write_twin_scan(tmp / "tomo.h5", bench, theta, proj)


@pytest.fixture(scope="module")
def lens_x2(tmp_path_factory):
    dst = tmp_path_factory.mktemp("prof") / "lens"
    shutil.copytree(repo_profiles_dir() / "sim-yag200-5x", dst)
    prof = DetectorProfile.load(dst)
    torch.manual_seed(0)
    net = SRNet(2, channels=6, layers=2)
    with torch.no_grad():
        net.head.weight.normal_(0, 0.05)
    prof.save_weights("sr_x2", pack_sr_weights(net))
    return DetectorProfile.load(dst)


def test_recon_super_resolves_every_slice_onto_a_finer_grid(scan_file, lens_x2, capsys):
    args = ["recon", str(scan_file), "--method", "saa", "--heights", "0:1.6:3", "--device", "cpu",
            "--in-place"]
    assert main(args) == 0
    assert main([*args, "--super-resolve", "sr_x2", "--profile", str(lens_x2.path)]) == 0
    assert "super-resolved sr_x2" in capsys.readouterr().out
    base, h0, a0 = read_reconstruction(scan_file, "saa")
    sr, h1, a1 = read_reconstruction(scan_file, "saa_sr_x2")
    np.testing.assert_array_equal(h0, h1)
    assert sr.shape == (base.shape[0], 2 * base.shape[1], 2 * base.shape[2])
    assert a1["voxel_mm"] == pytest.approx(a0["voxel_mm"] / 2)
    assert a1["param_sr_voxel_mm"] == pytest.approx(a0["voxel_mm"] / 2)
    assert a1["param_sr_scale"] == 2 and a1["param_super_resolution"] == "sr_x2"
    assert (a1["grid_rows"], a1["grid_cols"]) == (2 * a0["grid_rows"], 2 * a0["grid_cols"])
    # the same extent: the finer grid starts at the same outer edge
    assert a1["x0_mm"] == pytest.approx(a0["x0_mm"]) and a1["y0_mm"] == pytest.approx(a0["y0_mm"])
    # each slice is the network's output of the affinely mapped slice, mapped back
    k = 1
    s = base[k]
    lo, hi = np.percentile(s, [0.5, 99.5])
    gain = (0.3 - 1.0) / (hi - lo)
    t = (1.0 + (s - lo) * gain).astype(np.float32)
    expected = lo + (Restorer(lens_x2, "sr_x2", device="cpu").restore(t) - 1.0) / gain
    np.testing.assert_allclose(sr[k], expected, rtol=1e-4, atol=1e-4 * np.abs(s).max())
    # block means of the SR slice follow the slice (super-resolution keeps the coarse content)
    blocks = sr[k].reshape(base.shape[1], 2, base.shape[2], 2).mean(axis=(1, 3))
    assert np.corrcoef(blocks[4:-4, 4:-4].ravel(), s[4:-4, 4:-4].ravel())[0, 1] > 0.95


@pytest.mark.parametrize(("extra", "message"), [
    (["--super-resolve", "sr_x2"], "needs --profile"),
    (["--super-resolve", "sr_x4", "--profile", "PROFILE"], "factor 4"),
    (["--super-resolve", "wiener", "--profile", "PROFILE"], "takes a super-resolution method"),
    (["--profile", "PROFILE"], "only used with --super-resolve"),
])
def test_recon_super_resolve_bad_input_is_one_line(scan_file, lens_x2, capsys, extra, message):
    extra = [str(lens_x2.path) if e == "PROFILE" else e for e in extra]
    assert main(["recon", str(scan_file), "--method", "saa", "--heights", "0:1:2",
                 "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_recon_super_resolve_refuses_a_profile_of_another_pixel(scan_file, tmp_path, capsys):
    dst = tmp_path / "gos"
    shutil.copytree(repo_profiles_dir() / "sim-gos134", dst)
    prof = DetectorProfile.load(dst)
    prof.save_weights("sr_x2", pack_sr_weights(SRNet(2, channels=4, layers=1)))
    assert main(["recon", str(scan_file), "--method", "saa", "--heights", "0:1:2", "--device",
                 "cpu", "--super-resolve", "sr_x2", "--profile", str(dst)]) == 2
    assert "does not match profile" in capsys.readouterr().err
