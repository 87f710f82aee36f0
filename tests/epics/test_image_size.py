"""Images of any size on CAM:Image: sizes always describe the elements published."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from xinstrument.epics.frames import MAX_IMAGE_ELEMENTS, fit_image, image_elements

HELPER = Path(__file__).with_name("upsampling_ioc.py")


def test_an_image_that_fits_is_published_as_it_is():
    data = np.arange(64 * 48, dtype=np.float64).reshape(64, 48)
    out, factor = fit_image(data, 1, 64 * 48)
    assert factor == 1 and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, data.astype(np.float32))


@pytest.mark.parametrize("shape, binning, max_elements, factor, out_shape", [
    ((256, 256), 1, 16384, 2, (128, 128)),     # a 4x super-resolved 64 px frame
    ((256, 256), 4, 16384, 4, (64, 64)),       # the client's binning, when larger, wins
    ((100, 37), 1, 1000, 2, (50, 18)),         # odd sizes: the partial block is dropped
    ((512, 512), 1, 16384, 4, (128, 128)),
])
def test_larger_images_are_binned_until_they_fit(shape, binning, max_elements, factor,
                                                 out_shape):
    rng = np.random.default_rng(1)
    data = rng.normal(size=shape)
    out, f = fit_image(data, binning, max_elements)
    assert (f, out.shape) == (factor, out_shape)
    assert out.size <= max_elements
    r, c = out_shape
    expect = data[:r * f, :c * f].reshape(r, f, c, f).mean(axis=(1, 3))
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-6)


def test_waveform_room_and_bad_images():
    assert image_elements((64, 64)) == 4 * 64 * 64                  # a 2x frame at full size
    assert image_elements((2048, 2048)) == MAX_IMAGE_ELEMENTS
    assert image_elements((8192, 8192)) == 8192 * 8192              # never below the sensor
    with pytest.raises(ValueError, match="2-D"):
        fit_image(np.zeros(10), 1, 100)


@pytest.fixture(scope="module")
def ca(ioc_factory, tube_emulator, make_ca):
    ca = make_ca(ioc_factory(tube_emulator[1], program=[str(HELPER)]))
    ca.put("TUBE:WarmUp", 1, timeout=30)
    ca.put("TUBE:Voltage", 60)
    ca.put("TUBE:Current", 50)
    ca.put("CAM:NumAverage", 2)
    ca.put("CAM:TakeDarks", 1, timeout=60)
    ca.put("TUBE:XrayOn", 1)
    ca.put("CAM:TakeFlats", 1, timeout=60)
    ca.put("RESTORE:Method", "wiener")
    ca.put("CAM:ImageMode", 0)
    return ca


def published(ca) -> np.ndarray:
    rows, cols = ca.get("CAM:ArraySizeY_RBV"), ca.get("CAM:ArraySizeX_RBV")
    img = ca.get("CAM:Image")
    assert img.size == rows * cols                # a client can always reshape
    return img.reshape(rows, cols)


def test_super_resolved_frames_are_published_binned_to_fit(ca):
    ca.put("RESTORE:Enable", 1)
    ca.put("CAM:Acquire", 1, timeout=60)
    assert ca.get("CAM:ImageScale_RBV") == pytest.approx(4.0)
    # 256 x 256 restored pixels, binned by 2 into the 4 x (64 x 64)-element waveform
    assert ca.get("CAM:ArrayBinning_RBV") == 2
    img = published(ca)
    assert img.shape == (128, 128)
    # each sensor pixel became a 4 x 4 block, so 2 x 2 blocks of the binned image are equal:
    # true only if rows and columns are where ArraySize says
    np.testing.assert_allclose(img[0::2, 0::2], img[1::2, 1::2], rtol=1e-5, atol=1e-6)
    assert np.abs(np.diff(img[0::2, 0::2], axis=1)).max() > 0
    ca.put("CAM:ImageBinning", 4)
    ca.put("CAM:Acquire", 1, timeout=60)
    assert published(ca).shape == (64, 64) and ca.get("CAM:ArrayBinning_RBV") == 4
    ca.put("CAM:ImageBinning", 1)
    ca.put("RESTORE:Enable", 0)
    ca.put("CAM:Acquire", 1, timeout=60)
    assert published(ca).shape == (64, 64)
    assert ca.get("CAM:ArrayBinning_RBV") == 1 and ca.get("CAM:ImageScale_RBV") == 1


def test_capture_keeps_super_resolved_frames_on_their_grid(ca, tmp_path, wait_for):
    ca.put("RESTORE:Enable", 1)
    ca.put("HDF1:FilePath", str(tmp_path))
    ca.put("HDF1:FileName", "sr")
    ca.put("HDF1:FileTemplate", "%s%s.h5")
    capture = ca.pv("HDF1:Capture")
    capture.put(1, use_complete=True)         # completes when the capture ends
    # opening the capture loads the restorer and creates the file: seconds on a loaded machine
    assert wait_for(lambda: ca.get("HDF1:Capture_RBV") == 1, 60), (
        ca.get("HDF1:Capture_RBV"), ca.get("HDF1:FullFileName_RBV", as_string=True),
        ca.get("HDF1:NumCaptured_RBV"), ca.get("StatusMessage_RBV", as_string=True))
    ca.put("CAM:Acquire", 1, timeout=60)
    ca.put("HDF1:Capture", 0)
    assert wait_for(lambda: capture.put_complete, 60)
    ca.put("RESTORE:Enable", 0)
    assert "not stored" not in ca.get("StatusMessage_RBV", as_string=True)
    from xinstrument.storage import ScanReader
    with ScanReader(tmp_path / "sr.h5") as r:
        # the recording sink stores the dark and flat that corrected the frame beside it
        keys = sorted(int(k) for k in r.frame_metadata["image_key"])
        assert keys == [0, 1, 2] and r.n_restored == 1
    with h5py.File(tmp_path / "sr.h5", "r") as f:
        assert f["/entry/restored/data"].shape == (1, 256, 256)
        assert f["/entry/restored"].attrs["scale"] == 4
