"""TIFF export reads back bit-exact with tifffile."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from xinstrument.storage import ScanWriter, StorageError, export_tiff

SHAPE = (20, 30)
KEYS = [2, 1, 0, 0, 0]


@pytest.fixture
def scan(tmp_path):
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 65536, SHAPE, dtype=np.uint32).astype(np.uint16) for _ in KEYS]
    restored = [rng.normal(0, 1, SHAPE).astype(np.float32) for _ in range(2)]
    path = tmp_path / "scan.h5"
    with ScanWriter(path, SHAPE, "uint16", restored=True,
                    metadata={"pixel_size_um": 6.5}) as w:
        for i, (fr, key) in enumerate(zip(frames, KEYS)):
            w.append(fr, image_key=key, theta_deg=10.0 * i, voltage_kv=80.0)
        w.append_restored(restored[0], source_index=2, method="wiener", profile="p1")
        w.append_restored(restored[1], source_index=3, method="wiener", profile="p1")
    return path, frames, restored


def test_multipage_projections_bit_exact(scan, tmp_path):
    path, frames, _ = scan
    out = export_tiff(path, tmp_path / "proj.tif")
    assert out == [tmp_path / "proj.tif"]
    stack = tifffile.imread(out[0])
    assert stack.dtype == np.uint16
    assert stack.tobytes() == np.stack(frames[2:]).tobytes()
    with tifffile.TiffFile(out[0]) as tif:
        assert len(tif.pages) == 3
        md = json.loads(tif.pages[1].description)
        assert md["index"] == 3 and md["theta_deg"] == 30.0 and md["image_key"] == 0
        xres = tif.pages[0].tags["XResolution"].value
        assert xres[0] / xres[1] == pytest.approx(1e4 / 6.5, rel=1e-6)


def test_single_pages_and_restored(scan, tmp_path):
    path, frames, restored = scan
    out = export_tiff(path, tmp_path / "darks", which="darks", multipage=False)
    assert [p.name for p in out] == ["darks_00000.tif"]
    assert tifffile.imread(out[0]).tobytes() == frames[0].tobytes()
    out = export_tiff(path, tmp_path / "rest.tif", which="restored")
    back = tifffile.imread(out[0])
    assert back.dtype == np.float32 and back.tobytes() == np.stack(restored).tobytes()
    with tifffile.TiffFile(out[0]) as tif:
        assert json.loads(tif.pages[1].description)["source_index"] == 3
    out = export_tiff(path, tmp_path / "all.tif", which="all")
    assert tifffile.imread(out[0]).tobytes() == np.stack(frames).tobytes()


def test_export_bad_input(scan, tmp_path):
    path, _, _ = scan
    with pytest.raises(ValueError, match="which"):
        export_tiff(path, tmp_path / "x.tif", which="sinogram")
    export_tiff(path, tmp_path / "x.tif")
    with pytest.raises(StorageError, match="x.tif.*exists"):
        export_tiff(path, tmp_path / "x.tif")
    export_tiff(path, tmp_path / "x.tif", overwrite=True)
    with pytest.raises(StorageError, match="nope.h5"):
        export_tiff(tmp_path / "nope.h5", tmp_path / "y.tif")
    plain = tmp_path / "plain.h5"
    with ScanWriter(plain, SHAPE, "uint16") as w:
        w.append(np.zeros(SHAPE, np.uint16))
    with pytest.raises(ValueError, match="no restored frames"):
        export_tiff(plain, tmp_path / "z.tif", which="restored")
