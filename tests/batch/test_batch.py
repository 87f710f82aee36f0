"""Batch restore / recon on a local Dask cluster (worker processes on 127.0.0.1) and DDP
training equivalence (gloo, file store, world size 1)."""
import dataclasses
import functools
import hashlib
import os
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch

from xinstrument.batch import InputError, main, run_batch, run_local_loop, run_recon_batch
from xinstrument.batch.ddp import train_ddp
from xinstrument.profiles import find_profile
from xinstrument.recon import TomoGeometry, load_scan, parse_heights, reconstruct
from xinstrument.restoration import Restorer
from xinstrument.restoration.dose import restore_with_dose, twin_flat_dose_ratio
from xinstrument.restoration.training import train
from xinstrument.sim import Twin, lens_bench, tomo
from xinstrument.storage import ScanReader, ScanWriter

from . import _flaky

cloudpickle.register_pickle_by_value(_flaky)   # workers need not import the tests package

PROFILE = "sim-yag200-5x"
N_FILES, N_PROJ, PX = 3, 3, 128
THETA_DEG = np.linspace(-3, 3, N_PROJ)
# what the scans record of each projection: the dose of Wiener's noise model follows from it
EXPOSURE_S, VOLTAGE_KV, CURRENT_UA, N_AVERAGE = 0.5, 50.0, 80.0, 4


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def profile():
    return find_profile(PROFILE)


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    from xinstrument.batch import local_cluster
    cluster = local_cluster(n_workers=2)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Twin tomosynthesis scans through the thick screen: corrected transmission + noise."""
    folder = tmp_path_factory.mktemp("scans")
    bench = lens_bench(PX)
    geometry = TomoGeometry.from_bench(bench).to_attrs()
    files = []
    for seed in range(N_FILES):
        twin = Twin(bench, sample="pcb", seed=seed)
        proj = tomo.projections(twin, THETA_DEG, "thick")
        rng = np.random.default_rng(seed)
        path = folder / f"scan{seed}.h5"
        with ScanWriter(path, (PX, PX), "float32", swmr=False,
                        metadata={"corrected": True, "pixel_size_um": bench.pixel_at_screen_um,
                                  **geometry}) as w:
            w.append(np.ones((PX, PX), np.float32), image_key=1)
            for t, p in zip(THETA_DEG, proj):
                noisy = p + np.float32(0.01) * rng.standard_normal(p.shape, np.float32)
                w.append(noisy.astype(np.float32), theta_deg=float(t), exposure_s=EXPOSURE_S,
                         voltage_kv=VOLTAGE_KV, current_ua=CURRENT_UA, frames_averaged=N_AVERAGE)
        files.append(path)
    return files


def test_batch_restore_is_bit_identical_to_single_process_and_live_path(client, scans, profile,
                                                                        tmp_path):
    before = [_digest(f) for f in scans]
    rep = run_batch(scans, profile, "wiener", out_dir=tmp_path / "dask", client=client)
    assert rep.ok and [r.status for r in rep.results] == ["done"] * N_FILES, rep.table()
    assert rep.n_workers == 2 and rep.scheduler.startswith("tcp://127.0.0.1:")
    ref = run_local_loop(scans, profile, "wiener", out_dir=tmp_path / "loop")
    assert ref.ok, ref.table()
    live = Restorer(profile, "wiener", device="cpu")
    # the live path's dose of these frames: one exposure's on the bench that recorded them
    twin = Twin(lens_bench(PX), sample="pcb")
    doses = [twin_flat_dose_ratio(twin, dataclasses.replace(twin.fixed_state, theta_deg=float(t)),
                                  EXPOSURE_S, VOLTAGE_KV, CURRENT_UA, profile.nnps_mean_signal)
             for t in THETA_DEG]
    for f, r, q in zip(scans, rep.results, ref.results):
        with ScanReader(r.output) as a, ScanReader(q.output) as b, ScanReader(f) as src:
            assert a.complete and a.n_restored == N_PROJ
            assert np.array_equal(a.restored, b.restored)
            assert np.array_equal(a.projections, src.projections)
            assert np.array_equal(a.flats, src.flats)
            assert np.array_equal(a.theta_deg, src.theta_deg)
            assert list(a.restored_metadata["source_index"]) == [1, 2, 3]
            one_by_one = np.stack([restore_with_dose(live, p, N_AVERAGE, d)
                                   for p, d in zip(src.projections, doses)])
            assert np.array_equal(a.restored, one_by_one)        # the live path, frame by frame
            dose = a.metadata["restoration_dose"]
            assert dose["frames_averaged"] == [N_AVERAGE] * N_PROJ
            np.testing.assert_allclose(dose["dose_ratio"], doses, rtol=1e-12)
            assert not np.allclose(a.restored, live.restore(src.projections), atol=1e-3)
            assert not np.array_equal(a.restored, src.projections)
            assert a.metadata["batch_checksum"] == b.metadata["batch_checksum"]
    assert [_digest(f) for f in scans] == before                  # inputs never modified


def test_rerun_skips_complete_outputs_and_redoes_stale_ones(client, scans, profile, tmp_path):
    out = tmp_path / "out"
    first = run_batch(scans, profile, "inverse", out_dir=out, client=client)
    assert first.ok
    outputs = [Path(r.output) for r in first.results]
    stamps = [o.stat().st_mtime_ns for o in outputs]
    again = run_batch(scans, profile, "inverse", out_dir=out, client=client)
    assert [r.status for r in again.results] == ["skipped"] * N_FILES, again.table()
    assert [o.stat().st_mtime_ns for o in outputs] == stamps
    # a truncated output and one from other input data are both redone
    outputs[0].write_bytes(outputs[0].read_bytes()[:2000])
    other = tmp_path / "other.h5"
    other.write_bytes(outputs[2].read_bytes())
    os.replace(run_local_loop([scans[0]], profile, "inverse", out_dir=tmp_path / "x")
               .results[0].output, outputs[2])
    third = run_batch(scans, profile, "inverse", out_dir=out, client=client)
    assert [r.status for r in third.results] == ["done", "skipped", "done"], third.table()
    with ScanReader(outputs[2]) as a, ScanReader(other) as b:
        assert np.array_equal(a.restored, b.restored)
    forced = run_batch(scans[:1], profile, "inverse", out_dir=out, client=client, force=True)
    assert forced.results[0].status == "done"


def test_failed_task_is_retried_and_reported(client, scans, profile, tmp_path):
    task = functools.partial(_flaky.fail_once, marker_dir=str(tmp_path))
    rep = run_batch(scans[:2], profile, "wiener", out_dir=tmp_path / "o", client=client,
                    task=task, retries=2)
    assert rep.ok, rep.table()
    assert rep.retried_attempts == 2
    for r in rep.results:
        assert r.status == "done"
        assert len(r.retries) == 1 and "transient read failure" in r.retries[0]
    assert "retried after: ConnectionResetError" in rep.table()
    bad = run_batch(scans[:1], profile, "wiener", out_dir=tmp_path / "p", client=client,
                    task=_flaky.always_fail, retries=1)
    r = bad.results[0]
    assert r.status == "failed" and not bad.ok
    assert "failed after 1 retries" in r.error and "unreachable" in r.error
    assert len(r.retries) == 1                      # two attempts: one retried, the last failed
    assert not Path(r.output).exists()


def test_unreadable_inputs_reported_clearly_through_the_cli(client, scans, tmp_path, capsys):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"this is not HDF5")
    missing = tmp_path / "missing.h5"
    folder = tmp_path / "folder.h5"
    folder.mkdir()
    argv = ["batch", "restore", str(scans[0]), str(garbage), str(missing), str(folder),
            "--profile", PROFILE, "--method", "wiener", "--out", str(tmp_path / "out"),
            "--scheduler", client.scheduler.address]
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert "1 done" in text and "3 failed" in text
    assert f"{garbage}: not an HDF5 file" in text
    assert f"{missing}: input file does not exist" in text
    assert f"{folder}: input is a folder" in text
    assert main(["batch", "restore", str(scans[0]), "--profile", PROFILE, "--method", "sr3",
                 "--scheduler", client.scheduler.address]) == 2
    assert "cannot run 'sr3'" in capsys.readouterr().err


def _without_dose_metadata(src, dst, field):
    """A copy of ``src`` whose projections lack ``field`` (the fill of files that never
    recorded it)."""
    import h5py

    from xinstrument.storage.layout import FIELD_BY_NAME
    dst.write_bytes(src.read_bytes())
    spec = FIELD_BY_NAME[field]
    with h5py.File(dst, "r+") as f:
        keys = f[FIELD_BY_NAME["image_key"].path][()]
        ds = f[spec.path]
        values = ds[()]
        values[keys == 0] = spec.fill
        ds[...] = values
    return dst


@pytest.mark.parametrize("field", ["frames_averaged", "exposure_s", "current_ua"])
def test_batch_refuses_a_file_without_the_dose_metadata_unless_given(scans, profile, tmp_path,
                                                                     field):
    bare = _without_dose_metadata(scans[0], tmp_path / "bare.h5", field)
    rep = run_local_loop([bare], profile, "wiener", out_dir=tmp_path / "o")
    r = rep.results[0]
    assert r.status == "failed" and str(bare) in r.error and field in r.error, r.error
    assert not Path(r.output).exists()
    assert not list((tmp_path / "o").glob("*"))            # nothing written, no .partial either
    if field == "frames_averaged":
        return      # the output's copy of the frames cannot hold a frame count below 1
    # methods without a noise model go on as before
    assert run_local_loop([bare], profile, "inverse", out_dir=tmp_path / "i").ok
    # the user's values: the frames restore as the recorded ones do
    given = run_local_loop([bare], profile, "wiener", out_dir=tmp_path / "g",
                           frames_averaged=N_AVERAGE, dose_ratio=_dose(profile, scans[0]))
    ref = run_local_loop([scans[0]], profile, "wiener", out_dir=tmp_path / "r")
    assert given.ok and ref.ok, given.table()
    with ScanReader(given.results[0].output) as a, ScanReader(ref.results[0].output) as b:
        np.testing.assert_allclose(a.restored, b.restored, atol=1e-6)
        assert a.metadata["restoration_dose"]["dose_source"].startswith("given")


def _dose(profile, path):
    """The mean of the dose ratios the batch told Wiener for ``path``'s projections."""
    out = run_local_loop([path], profile, "wiener", out_dir=path.parent / "dose-probe")
    with ScanReader(out.results[0].output) as r:
        return float(np.mean(r.metadata["restoration_dose"]["dose_ratio"]))


def test_batch_dose_options_are_checked_and_change_the_checksum(scans, profile, tmp_path,
                                                                capsys):
    with pytest.raises(InputError, match="dose_ratio must be a finite number > 0"):
        run_batch(scans[:1], profile, "wiener", out_dir=tmp_path, dose_ratio=0.0)
    with pytest.raises(InputError, match="frames_averaged must be an integer >= 1"):
        run_batch(scans[:1], profile, "wiener", out_dir=tmp_path, frames_averaged=0)
    with pytest.raises(SystemExit):
        main(["batch", "restore", str(scans[0]), "--profile", PROFILE, "--method", "wiener",
              "--dose-ratio", "-1"])
    assert "--dose-ratio" in capsys.readouterr().err
    out = tmp_path / "o"
    first = run_local_loop(scans[:1], profile, "wiener", out_dir=out)
    again = run_local_loop(scans[:1], profile, "wiener", out_dir=out)
    other = run_local_loop(scans[:1], profile, "wiener", out_dir=out, frames_averaged=1)
    assert [first.results[0].status, again.results[0].status, other.results[0].status] == \
        ["done", "skipped", "done"]


def test_batch_recon_of_restored_outputs(client, scans, profile, tmp_path):
    restored = run_batch(scans[:2], profile, "wiener", out_dir=tmp_path / "r", client=client)
    files = [r.output for r in restored.results]
    rep = run_recon_batch(files, "saa", heights="0:1.2:4", restored=True,
                          out_dir=tmp_path / "recon", client=client)
    assert rep.ok, rep.table()
    data = load_scan(files[0], restored=True)
    direct = reconstruct(data.transmission, data.theta_deg, data.geometry,
                         parse_heights("0:1.2:4"), "saa")
    import h5py
    with h5py.File(rep.results[0].output, "r") as f:
        g = f["/entry/recon/saa_restored"]
        assert np.array_equal(g["slices"][()], direct.slices)
        assert g.attrs["batch_n_projections"] == N_PROJ
    again = run_recon_batch(files, "saa", heights="0:1.2:4", restored=True,
                            out_dir=tmp_path / "recon", client=client)
    assert [r.status for r in again.results] == ["skipped", "skipped"]
    # these inputs declare their measured frames corrected (metadata corrected=True), so the
    # measured projections reconstruct as they are, without references
    plain = run_recon_batch(scans[:1], "saa", out_dir=tmp_path / "recon", client=client)
    assert plain.ok, plain.table()


def test_train_ddp_world_size_1_equals_single_process(profile, tmp_path, monkeypatch):
    hr = np.random.default_rng(0).random((4, 48, 48)).astype(np.float32)
    kw = {"patch": 32, "batch": 4, "steps": 3, "device": "cpu", "base_channels": 4, "depth": 2,
          "save_to_profile": False}
    single = train("unet", profile, hr, seed=5, **kw)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    ddp = train_ddp("unet", profile, hr, seed=5, backend="gloo",
                    init_method=f"file://{tmp_path / 'store'}", **kw)
    assert not torch.distributed.is_initialized()
    assert ddp.losses == single.losses
    assert all(torch.equal(single.weights[k], ddp.weights[k]) for k in single.weights)
    other = train_ddp("unet", profile, hr, seed=6, backend="gloo",
                      init_method=f"file://{tmp_path / 'store2'}", **kw)
    assert not all(torch.equal(single.weights[k], other.weights[k]) for k in single.weights)
