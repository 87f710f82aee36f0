"""ScanWriter / ScanReader: layout as an outside h5py reader sees it, round trips, bad input."""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from xinstrument.storage import ScanReader, ScanWriter, StorageError

SHAPE = (24, 40)
KEYS = [2, 2, 1, 1, 0, 0, 0, 0, 0, 1]


def _frames(n: int, dtype: str = "uint16", seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return [rng.normal(100.0, 30.0, SHAPE).astype(dtype) for _ in range(n)]
    return [rng.integers(0, 65536, SHAPE, dtype=np.uint32).astype(dtype) for _ in range(n)]


def _record(path, frames, *, compression="default", restored=False, extras=None, swmr=True):
    md = {"instrument": "bench-A", "pixel_size_um": 6.5, "profile": "yag200",
          "sample": "pcb-3", "title": "focus run", "nested": {"a": [1, 2]}}
    with ScanWriter(path, SHAPE, frames[0].dtype, metadata=md, compression=compression,
                    restored=restored, restored_extras=extras, swmr=swmr) as w:
        theta = 0.0
        for i, (frame, key) in enumerate(zip(frames, KEYS)):
            if key == 0:
                theta += 0.5
            w.append(frame, image_key=key, theta_deg=theta if key == 0 else 0.0,
                     voltage_kv=60.0 + i, current_ua=100.0 + i, exposure_s=0.05 * (i + 1),
                     frames_averaged=i + 1, focus_z_um=-3.0 + i, timestamp_s=1000.0 + i)
    return md


def test_layout_as_plain_h5py_reader_sees_it(tmp_path):
    path = tmp_path / "scan.h5"
    frames = _frames(len(KEYS))
    _record(path, frames)
    with h5py.File(path, "r") as f:
        # @default chain from the root to an NXdata whose @signal is a 3-D dataset
        entry = f[f.attrs["default"]]
        assert entry.attrs["NX_class"] == "NXentry"
        nxdata = entry[entry.attrs["default"]]
        assert nxdata.attrs["NX_class"] == "NXdata"
        signal = nxdata[nxdata.attrs["signal"]]
        assert isinstance(signal, h5py.Dataset) and signal.shape == (len(KEYS), *SHAPE)
        assert list(nxdata.attrs["axes"]) == ["rotation_angle", ".", "."]
        assert nxdata["rotation_angle"].shape == (len(KEYS),)
        assert entry["definition"][()] == b"NXtomo"

        inst = entry["instrument"]
        assert inst.attrs["NX_class"] == "NXinstrument"
        src = inst["source"]
        assert src.attrs["NX_class"] == "NXsource"
        assert src["voltage"].attrs["units"] == "kV"
        assert src["current"].attrs["units"] == "uA"
        np.testing.assert_array_equal(src["voltage"][:], 60.0 + np.arange(len(KEYS)))
        det = inst["detector"]
        assert det.attrs["NX_class"] == "NXdetector"
        np.testing.assert_array_equal(det["image_key"][:], KEYS)
        assert det["data"].chunks == (1, *SHAPE)
        assert det["x_pixel_size"][()] == 6.5 and det["x_pixel_size"].attrs["units"] == "um"
        assert det["y_pixel_size"][()] == 6.5
        assert det["count_time"].attrs["units"] == "s"
        np.testing.assert_array_equal(det["frames_averaged"][:], np.arange(1, len(KEYS) + 1))
        assert det["timestamp"].attrs["units"] == "s"
        sample = entry["sample"]
        assert sample.attrs["NX_class"] == "NXsample"
        assert sample["rotation_angle"].attrs["units"] == "deg"
        assert sample["focus_z"].attrs["units"] == "um"
        assert entry.attrs["xi_complete"]
        assert "end_time" in entry and "start_time" in entry

        # Data Exchange view
        keys = np.array(KEYS)
        ex = f["exchange"]
        np.testing.assert_array_equal(ex["data"][:], np.stack(frames)[keys == 0])
        np.testing.assert_array_equal(ex["data_white"][:], np.stack(frames)[keys == 1])
        np.testing.assert_array_equal(ex["data_dark"][:], np.stack(frames)[keys == 2])
        np.testing.assert_array_equal(ex["theta"][:], 0.5 * np.arange(1, 6))
        assert ex["theta"].attrs["units"] == "deg"


@pytest.mark.parametrize("compression", ["default", None, "gzip", "lzf"])
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_round_trip_bit_exact(tmp_path, compression, dtype):
    path = tmp_path / "scan.h5"
    frames = _frames(len(KEYS), dtype)
    if dtype == "float32":
        frames[4][0, 0] = np.nan
        frames[5][1, 1] = -np.inf
    md = _record(path, frames, compression=compression)
    with h5py.File(path, "r") as f:
        ds = f["/entry/instrument/detector/data"]
        assert ds.chunks == (1, *SHAPE)
        if compression in ("gzip", "lzf"):
            assert ds.compression == compression
        stored = ds[:]
    # Bit-exact: compare the raw bytes, NaN payloads included.
    assert stored.tobytes() == np.stack(frames).tobytes()
    keys = np.array(KEYS)
    with ScanReader(path) as r:
        assert r.complete and r.reason is None
        assert r.n_frames == len(KEYS)
        assert r.metadata == md
        assert r.pixel_size_um == 6.5
        assert r.projections.tobytes() == np.stack(frames)[keys == 0].tobytes()
        assert r.flats.tobytes() == np.stack(frames)[keys == 1].tobytes()
        assert r.darks.tobytes() == np.stack(frames)[keys == 2].tobytes()
        np.testing.assert_array_equal(r.theta_deg, 0.5 * np.arange(1, 6))
        fm = r.frame_metadata
        np.testing.assert_array_equal(fm["image_key"], KEYS)
        np.testing.assert_allclose(fm["exposure_s"], 0.05 * np.arange(1, len(KEYS) + 1))
        np.testing.assert_array_equal(fm["focus_z_um"], -3.0 + np.arange(len(KEYS)))
        np.testing.assert_array_equal(fm["timestamp_s"], 1000.0 + np.arange(len(KEYS)))
        np.testing.assert_array_equal(fm["current_ua"], 100.0 + np.arange(len(KEYS)))
        seen = list(r.frames(image_key=1))
        assert [i for i, _, _ in seen] == [2, 3, 9]
        assert seen[-1][1].tobytes() == frames[9].tobytes()
        assert seen[-1][2]["voltage_kv"] == 69.0 and seen[-1][2]["image_key"] == 1
        assert r.restored is None and r.restored_metadata == {} and r.restored_extras == {}


def test_restored_frames_extras_and_arrays(tmp_path):
    path = tmp_path / "restored.h5"
    frames = _frames(3, "float32")
    with ScanWriter(path, SHAPE, "float32",
                    restored_extras={"consistency": SHAPE, "summary": ()}) as w:
        for fr in frames:
            w.append(fr, image_key=0)
        w.append_restored(frames[0] * 2, source_index=0, method="wiener", profile="yag200",
                          extras={"consistency": frames[1], "summary": 0.25})
        w.append_restored(frames[2] * 2, source_index=2, method="cold-diffusion",
                          profile="yag200-v2", extras={"summary": 0.5})
        w.write_array("analysis/focus_curve", np.array([[0.0, 1.0], [1.0, 3.0]]),
                      attrs={"metric": "brenner", "units": "um"})
        w.set_attrs(operator="lab", best_focus_um=1.25)
        # Deferred in SWMR mode; still invisible until close.
        assert w.n_restored == 2
    with ScanReader(path) as r:
        np.testing.assert_array_equal(r.restored, np.stack([frames[0] * 2, frames[2] * 2]))
        meta = r.restored_metadata
        np.testing.assert_array_equal(meta["source_index"], [0, 2])
        assert meta["method"] == ["wiener", "cold-diffusion"]
        assert meta["profile"] == ["yag200", "yag200-v2"]
        ex = r.restored_extras
        np.testing.assert_array_equal(ex["consistency"][0], frames[1])
        assert np.isnan(ex["consistency"][1]).all()  # not given for the second frame
        np.testing.assert_array_equal(ex["summary"], np.array([0.25, 0.5], dtype="float32"))
        np.testing.assert_array_equal(r.read_array("analysis/focus_curve"),
                                      [[0.0, 1.0], [1.0, 3.0]])
        assert r.array_attrs("analysis/focus_curve")["metric"] == "brenner"
        assert r.metadata["operator"] == "lab" and r.metadata["best_focus_um"] == 1.25
    with h5py.File(path, "r") as f:
        assert f["/entry/restored"].attrs["NX_class"] == "NXdata"
        assert f["/entry/restored"].attrs["signal"] == "data"
        assert f["/exchange/data_restored"].shape == (2, *SHAPE)
        assert f["/entry/analysis"].attrs["NX_class"] == "NXcollection"
        assert f["/entry"].attrs["operator"] == "lab"


def test_without_swmr_arrays_written_immediately(tmp_path):
    path = tmp_path / "plain.h5"
    w = ScanWriter(path, SHAPE, "uint16", swmr=False)
    w.append(_frames(1)[0])
    w.write_array("analysis/x", np.arange(4))
    with h5py.File(path, "r") as f:  # same process: shares the open file
        np.testing.assert_array_equal(f["/entry/analysis/x"][:], np.arange(4))
    w.close()
    with ScanReader(path) as r:
        assert r.complete and r.n_frames == 1


def test_exception_in_with_block_marks_incomplete(tmp_path):
    path = tmp_path / "aborted.h5"
    frames = _frames(2)
    with pytest.raises(RuntimeError, match="stage fault"), \
            ScanWriter(path, SHAPE, "uint16") as w:
        w.append(frames[0])
        w.append(frames[1], image_key=1)
        raise RuntimeError("stage fault")
    with ScanReader(path) as r:
        assert not r.complete
        assert "RuntimeError: stage fault" in r.reason
        assert r.n_frames == 2
        np.testing.assert_array_equal(r.flats[0], frames[1])
    with h5py.File(path, "r") as f:
        assert not f["/entry"].attrs["xi_complete"]


def test_close_is_idempotent_and_closed_writer_refuses(tmp_path):
    path = tmp_path / "c.h5"
    w = ScanWriter(path, SHAPE, "uint16")
    w.append(_frames(1)[0])
    w.close(complete=False, reason="operator abort")
    w.close()  # no effect: stays incomplete
    with ScanReader(path) as r:
        assert not r.complete and r.reason == "operator abort"
    with pytest.raises(StorageError, match="closed"):
        w.append(_frames(1)[0])


def test_overwrite_refused_then_allowed(tmp_path):
    path = tmp_path / "exists.h5"
    with ScanWriter(path, SHAPE, "uint16") as w:
        w.append(_frames(1)[0])
    with pytest.raises(StorageError, match="exists.h5.*file exists"):
        ScanWriter(path, SHAPE, "uint16")
    with ScanReader(path) as r:  # the refused writer did not touch it
        assert r.n_frames == 1
    with ScanWriter(path, SHAPE, "uint16", overwrite=True) as w:
        pass
    with ScanReader(path) as r:
        assert r.n_frames == 0 and r.projections.shape == (0, *SHAPE)


def test_missing_folder_gives_storage_error(tmp_path):
    path = tmp_path / "no" / "such" / "scan.h5"
    with pytest.raises(StorageError, match=r"scan\.h5.*does not exist"):
        ScanWriter(path, SHAPE, "uint16")


def test_parent_is_a_file_gives_storage_error(tmp_path):
    (tmp_path / "plainfile").write_text("x")
    with pytest.raises(StorageError, match="scan.h5"):
        ScanWriter(tmp_path / "plainfile" / "scan.h5", SHAPE, "uint16")


@pytest.mark.parametrize("bad, match", [
    (np.zeros((24, 41), "uint16"), r"shape \(24, 41\).*\(24, 40\)"),
    (np.full(SHAPE, 1.5, "float32"), "float32.*cannot be stored losslessly"),
    (np.full(SHAPE, 70000, "int64"), "outside the range"),
])
def test_bad_frames_rejected_and_nothing_lost(tmp_path, bad, match):
    path = tmp_path / "bad.h5"
    good = _frames(1)[0]
    with ScanWriter(path, SHAPE, "uint16") as w:
        w.append(good)
        with pytest.raises(ValueError, match=match):
            w.append(bad)
        w.append(np.full(SHAPE, 7, "int64"))  # in range: converted losslessly
    with ScanReader(path) as r:
        assert r.n_frames == 2
        np.testing.assert_array_equal(r.frame(0), good)
        assert (r.frame(1) == 7).all()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="frame_shape"):
        ScanWriter(tmp_path / "a.h5", (0, 3))
    with pytest.raises(ValueError, match="compression"):
        ScanWriter(tmp_path / "a.h5", SHAPE, compression="zstd")
    with pytest.raises(ValueError, match="restored extra"):
        ScanWriter(tmp_path / "a.h5", SHAPE, restored_extras={"data": ()})
    with pytest.raises(TypeError, match="metadata"):
        ScanWriter(tmp_path / "a.h5", SHAPE, metadata={"x": object()})
    with ScanWriter(tmp_path / "b.h5", SHAPE, "float32", restored_extras={"s": ()}) as w:
        with pytest.raises(ValueError, match="image_key"):
            w.append(np.zeros(SHAPE), image_key=3)
        with pytest.raises(ValueError, match="frames_averaged"):
            w.append(np.zeros(SHAPE), frames_averaged=0)
        with pytest.raises(ValueError, match="source_index"):
            w.append_restored(np.zeros(SHAPE), source_index=0, method="m", profile="p")
        w.append(np.zeros(SHAPE))
        with pytest.raises(ValueError, match="not declared"):
            w.append_restored(np.zeros(SHAPE), source_index=0, method="m", profile="p",
                              extras={"other": 1.0})
        with pytest.raises(ValueError, match="bytes"):
            w.append_restored(np.zeros(SHAPE), source_index=0, method="m" * 200, profile="p")
        with pytest.raises(ValueError, match="reserved"):
            w.write_array("instrument/x", np.zeros(2))
        with pytest.raises(ValueError, match="relative path"):
            w.write_array("/abs", np.zeros(2))
    with ScanWriter(tmp_path / "c.h5", SHAPE) as w, \
            pytest.raises(StorageError, match="without restored frames"):
        w.append_restored(np.zeros(SHAPE), source_index=0, method="m", profile="p")


def test_reader_rejects_non_scan_files(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(StorageError, match="junk.h5.*not an HDF5 file"):
        ScanReader(junk)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(StorageError, match="other.h5.*not an xinstrument scan file"):
        ScanReader(other)
    with pytest.raises(StorageError, match="missing.h5.*does not exist"):
        ScanReader(tmp_path / "missing.h5")


def test_nan_defaults_for_unknown_conditions(tmp_path):
    path = tmp_path / "n.h5"
    with ScanWriter(path, SHAPE, "uint16") as w:
        w.append(_frames(1)[0], image_key=2)
    with ScanReader(path) as r:
        fm = r.frame_metadata
        assert math.isnan(fm["voltage_kv"][0]) and fm["frames_averaged"][0] == 1
        assert fm["timestamp_s"][0] > 1.6e9  # wall clock when not given
        assert r.theta_deg.shape == (0,)
