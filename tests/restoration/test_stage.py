"""Real-time stage: classical methods, tiling, bad input."""
import numpy as np
import pytest
import torch

from xinstrument.restoration import Restorer, available_methods, tiled_apply, wiener


def test_available_methods(profile):
    assert available_methods(profile) == ["wiener", "inverse", "richardson_lucy"]
    profile.nnps_lr = None
    assert "wiener" not in available_methods(profile)
    profile.weights["unet"] = "weights/unet.pt"
    assert available_methods(profile)[-1] == "unet"


@pytest.mark.parametrize("method", ["wiener", "inverse", "richardson_lucy"])
def test_classical_restorer_runs_and_measures(method, profile, scene_pair):
    _, lr = scene_pair
    r = Restorer(profile, method, device="cpu")
    out = r.restore(lr)
    assert out.shape == lr.shape and out.dtype == np.float32
    one = r.restore(lr[0])
    assert one.shape == lr[0].shape
    assert r.frames_restored == 3 and r.latency_s > 0 and r.frames_per_second > 0
    if method == "wiener":
        np.testing.assert_allclose(
            out, wiener(lr, profile.frequency_cy_per_px, profile.mtf_ratio, profile.nnps_lr), atol=1e-6
        )


def test_tiled_equals_untiled_for_local_translation_equivariant_fn():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 1, 5, padding=2, padding_mode="reflect")

    def fn(t):
        with torch.no_grad():
            return conv(t[:, None])[:, 0]

    x = torch.rand(2, 300, 270)
    whole = fn(x)
    tiled = tiled_apply(fn, x, tile=128, overlap=24, batch=3)
    # Away from the frame border the 5x5 receptive field sees the same pixels in every tile.
    np.testing.assert_allclose(tiled.numpy(), whole.numpy(), atol=1e-5)


def test_restorer_bad_input(profile):
    r = Restorer(profile, "inverse", device="cpu")
    with pytest.raises(ValueError, match="non-finite"):
        r.restore(np.full((32, 32), np.nan, np.float32))
    with pytest.raises(ValueError, match="shape"):
        r.restore(np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        r.restore(np.zeros((32, 32), np.complex64))
    with pytest.raises(ValueError, match="unknown restoration method"):
        Restorer(profile, "magic")
    with pytest.raises(ValueError, match="no weights for 'unet'"):
        Restorer(profile, "unet", device="cpu")
    profile.nnps_lr = None
    with pytest.raises(ValueError, match="NNPS"):
        Restorer(profile, "wiener", device="cpu")
