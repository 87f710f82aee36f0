"""Restored frames on their own grid (super-resolution): shape, scale and pixel size in the file,
through ScanWriter, ScanReader, TIFF export and the pipeline's HDF5 sink."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from xinstrument.acquisition.pipeline import HDF5Sink, ProcessedFrame
from xinstrument.storage import ScanReader, ScanWriter, export_tiff


def _frame(shape, value=0.5):
    return np.full(shape, value, np.float32)


@pytest.mark.parametrize("swmr", [True, False])
def test_restored_dataset_has_its_own_shape_scale_and_pixel(tmp_path, swmr):
    path = tmp_path / "sr.h5"
    with ScanWriter(path, (16, 20), metadata={"pixel_size_um": 1.3}, restored_shape=(32, 40),
                    swmr=swmr) as w:
        assert w.restored_shape == (32, 40)
        i = w.append(_frame((16, 20)))
        w.append_restored(np.arange(32 * 40, dtype=np.float32).reshape(32, 40), source_index=i,
                          method="sr_x2", profile="p")
        with pytest.raises(ValueError, match=r"shape \(16, 20\).*\(32, 40\)"):
            w.append_restored(_frame((16, 20)), source_index=i, method="sr_x2", profile="p")
    with ScanReader(path) as r:
        assert r.frame_shape == (16, 20)
        assert r.restored_shape == (32, 40)
        assert r.restored.shape == (1, 32, 40)
        assert r.restored[0, 1, 0] == 40.0
        assert r.restored_scale == 2
        assert r.restored_pixel_size_um == pytest.approx(0.65)
        assert r.pixel_size_um == pytest.approx(1.3)
        assert r.complete


def test_same_shape_restoration_has_scale_one_and_the_detector_pixel(tmp_path):
    path = tmp_path / "deblur.h5"
    with ScanWriter(path, (8, 8), metadata={"pixel_size_um": 6.5}, restored=True) as w:
        w.append_restored(_frame((8, 8)), source_index=w.append(_frame((8, 8))),
                          method="wiener", profile="p")
    with ScanReader(path) as r:
        assert r.restored_shape == (8, 8) and r.restored_scale == 1
        assert r.restored_pixel_size_um == pytest.approx(6.5)
    plain = tmp_path / "plain.h5"
    with ScanWriter(plain, (8, 8)) as w:
        w.append(_frame((8, 8)))
    with ScanReader(plain) as r:
        assert r.restored_shape is None and r.restored_scale is None
        assert r.restored_pixel_size_um is None


def test_explicit_restored_pixel_and_non_integer_ratio(tmp_path):
    path = tmp_path / "explicit.h5"
    with ScanWriter(path, (8, 8), restored_shape=(24, 24), restored_pixel_size_um=0.4) as w:
        w.append_restored(_frame((24, 24)), source_index=w.append(_frame((8, 8))),
                          method="sr", profile="p")
    with ScanReader(path) as r:
        assert r.restored_scale == 3 and r.restored_pixel_size_um == pytest.approx(0.4)
    crop = tmp_path / "crop.h5"
    with ScanWriter(crop, (8, 8), metadata={"pixel_size_um": 1.0}, restored_shape=(12, 16)) as w:
        w.append(_frame((8, 8)))
    with ScanReader(crop) as r:      # no single integer scale: no pixel size is invented
        assert r.restored_scale is None and r.restored_pixel_size_um is None


@pytest.mark.parametrize(("kw", "message"), [
    ({"restored_shape": (0, 4)}, "two positive sizes"),
    ({"restored_shape": (4,)}, "two positive sizes"),
    ({"restored_shape": "big"}, "must be \\(rows, cols\\)"),
    ({"restored_shape": (8, 8), "restored_pixel_size_um": -1.0}, "positive number of um"),
    ({"restored_shape": (8, 8), "restored_pixel_size_um": "x"}, "positive number of um"),
])
def test_bad_restored_grid_arguments_are_clear_errors(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        ScanWriter(tmp_path / "bad.h5", (4, 4), **kw)
    assert not (tmp_path / "bad.h5").exists()


def test_tiff_export_of_sr_frames_carries_the_finer_pixel(tmp_path):
    path = tmp_path / "sr.h5"
    with ScanWriter(path, (8, 8), metadata={"pixel_size_um": 2.0}, restored_shape=(32, 32)) as w:
        w.append_restored(_frame((32, 32)), source_index=w.append(_frame((8, 8))),
                          method="sr_x4", profile="p")
    out = tmp_path / "r.tif"
    export_tiff(path, out, "restored")
    with tifffile.TiffFile(out) as t:
        page = t.pages[0]
        assert page.shape == (32, 32)
        num, den = page.tags["XResolution"].value
        assert num / den == pytest.approx(1e4 / 0.5)     # pixels per cm at 0.5 um


def test_hdf5_sink_creates_the_restored_dataset_from_the_first_restored_frame(tmp_path):
    path = tmp_path / "live.h5"
    sink = HDF5Sink(path, metadata={"pixel_size_um": 1.3})
    for k in range(3):
        item = ProcessedFrame(index=k, data=_frame((10, 12), 0.5 + k), first_frame_number=k,
                              last_frame_number=k, frames_averaged=1, timestamp_s=1.0 + k,
                              exposure_s=0.1, restored=_frame((20, 24), 10.0 + k),
                              restoration_method="sr_x2", restoration_profile="lens")
        sink.write(item)
    sink.close(True, None)
    with ScanReader(path) as r:
        assert r.n_frames == 3 and r.n_restored == 3
        assert r.restored_shape == (20, 24) and r.restored_scale == 2
        assert r.restored_pixel_size_um == pytest.approx(0.65)
        np.testing.assert_array_equal(r.restored[:, 0, 0], [10.0, 11.0, 12.0])
        assert list(r.restored_metadata["method"]) == ["sr_x2"] * 3
