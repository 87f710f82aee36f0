"""`xinstrument recon --super-resolve` with weights trained on multi-frame slices: the scan's
projections are filtered with the twin bench's per-projection OTFs before shift-and-add."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from twin_scans import write_twin_scan

from xinstrument.cli import main
from xinstrument.profiles import DetectorProfile, repo_profiles_dir
from xinstrument.recon import read_reconstruction
from xinstrument.restoration.superres import SRNet, pack_sr_weights
from xinstrument.sim import tomo
from xinstrument.sim.bench import MICRO_CHART_WIDTHS_UM, Twin, micro_tomo_bench
from xinstrument.sim.samples import resolution_chart

PX = 48
EXPOSURE_S = 3.05


@pytest.fixture(scope="module")
def micro_scan(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("micro")
    bench = micro_tomo_bench(PX)
    twin = Twin(bench, sample=resolution_chart(4 * bench.fov_mm, MICRO_CHART_WIDTHS_UM), seed=3)
    theta = np.linspace(-20, 20, 5)
    proj = tomo.projections(twin, theta, "thick")
    path = write_twin_scan(tmp / "micro.h5", bench, theta, proj, EXPOSURE_S)
    return path, twin.sample.layers[0].height_mm


def _micro_profile(folder, drop_bench=False, reconstruction=None):
    shutil.copytree(repo_profiles_dir() / "sim-micro-16x-sr", folder)
    toml = folder / "profile.toml"
    text = toml.read_text()
    if drop_bench:       # a real detector: no twin bench, so no per-angle OTFs
        assert 'bench = "micro-tomo-16x"\n' in text
        text = text.replace('bench = "micro-tomo-16x"\n', "")
    if reconstruction:
        text = text.replace('slice_reconstruction = "multiframe"',
                            f'slice_reconstruction = "{reconstruction}"')
    toml.write_text(text)
    prof = DetectorProfile.load(folder)
    torch.manual_seed(0)            # a small network in place of the shipped one: speed only
    prof.save_weights("sr_x2", pack_sr_weights(SRNet(2, channels=4, layers=1)))
    return DetectorProfile.load(folder)


def test_recon_super_resolve_builds_the_multiframe_slices_the_weights_expect(micro_scan,
                                                                             tmp_path, capsys):
    path, height = micro_scan
    heights = f"{height:g},{height + 0.002:g}"
    mf = _micro_profile(tmp_path / "mf")
    saa = _micro_profile(tmp_path / "saa", reconstruction="saa")
    base = ["recon", str(path), "--method", "saa", "--heights", heights, "--device", "cpu"]
    assert main([*base, "--super-resolve", "sr_x2", "--profile", str(mf.path),
                 "--out", str(tmp_path / "mf.h5")]) == 0
    assert "multiframe slices" in capsys.readouterr().out
    assert main([*base, "--super-resolve", "sr_x2", "--profile", str(saa.path),
                 "--out", str(tmp_path / "saa.h5")]) == 0
    s_mf, _, a_mf = read_reconstruction(tmp_path / "mf.h5", "saa_sr_x2")
    s_saa, _, a_saa = read_reconstruction(tmp_path / "saa.h5", "saa_sr_x2")
    assert a_mf["param_slice_reconstruction"] == "multiframe"
    assert a_saa["param_slice_reconstruction"] == "saa"
    assert s_mf.shape == s_saa.shape == (2, 2 * PX, 2 * PX)
    # same network, other slices: the filtered projections change what it is given
    assert np.abs(s_mf - s_saa).max() > 1e-3 * np.abs(s_saa).max()
    assert np.corrcoef(s_mf[0].ravel(), s_saa[0].ravel())[0, 1] > 0.8


def test_multiframe_weights_need_saa_and_a_twin_bench(micro_scan, tmp_path, capsys):
    path, height = micro_scan
    mf = _micro_profile(tmp_path / "mf")
    args = ["recon", str(path), "--heights", f"{height:g},{height + 0.002:g}", "--device", "cpu",
            "--super-resolve", "sr_x2"]
    args += ["--out", str(tmp_path / "out.h5")]
    assert main([*args, "--method", "sirt", "--profile", str(mf.path)]) == 2
    err = capsys.readouterr().err
    assert "multi-frame slices" in err and "--method saa" in err and "Traceback" not in err
    real = _micro_profile(tmp_path / "real", drop_bench=True)
    assert main([*args, "--method", "saa", "--profile", str(real.path)]) == 2
    err = capsys.readouterr().err
    assert "per-projection OTFs of the scan are unknown" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.h5"))
