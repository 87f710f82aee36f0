"""Real-time stage: classical methods, tiling, bad input."""
import numpy as np
import pytest
import torch

from xinstrument.restoration import Restorer, available_methods, tiled_apply, wiener


def test_available_methods(profile):
    # no weights in this profile: the classical methods, and the plug-and-play ones whose
    # denoiser ships with the package
    assert available_methods(profile) == ["wiener", "inverse", "richardson_lucy", "pnp_hqs",
                                          "dc_diffusion"]
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


# ---------------------------------------------------------------- the GPU-ready hot path
from xinstrument.profiles import find_profile
from xinstrument.restoration.stage import (
    AMP_MAX_REL_RMS,
    PRECISIONS,
    relative_rms_error,
)


@pytest.fixture(scope="module")
def shipped():
    """A shipped simulated profile with real trained weights (unet, cold diffusion, sr_x2)."""
    return find_profile("sim-yag200-5x")


def _frames(seed, b, h, w):
    rng = np.random.default_rng(seed)
    return (0.55 + 0.2 * rng.standard_normal((b, h, w))).astype(np.float32)


def test_tiled_equals_untiled_with_fixed_batches_and_scale_no_seams():
    """Fixed-shape batches (the last batch padded) and an up-sampling fn: same blend, no seam.
    The error is checked per pixel, so a tile-border artefact anywhere would fail."""
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(1, 4, 5, padding=2, padding_mode="reflect")
    shuffle = torch.nn.PixelShuffle(2)            # 2x super-resolution-like: 4 channels -> 2x2

    def fn(t):
        with torch.no_grad():
            return shuffle(conv(t[:, None]))[:, 0]

    seen = []

    def counting(t):
        seen.append(t.shape[0])
        return fn(t)

    x = torch.rand(2, 150, 170)
    whole = fn(x)
    tiled = tiled_apply(counting, x, tile=64, overlap=16, batch=3, scale=2, fixed_batch=True)
    assert tiled.shape == (2, 300, 340)
    assert set(seen) == {3}                         # every call had the same batch shape
    np.testing.assert_allclose(tiled.numpy(), whole.numpy(), atol=2e-5)
    with pytest.raises(RuntimeError, match="expected"):
        tiled_apply(lambda t: t[..., :-1], x, tile=64, overlap=16)


@pytest.mark.parametrize("method", ["wiener", "inverse", "richardson_lucy"])
def test_stream_equals_restore_and_the_float64_reference(method, profile, scene_pair):
    _, lr = scene_pair
    r = Restorer(profile, method, device="cpu")
    whole = r.restore(lr)
    streamed = np.stack(list(r.stream(list(lr), depth=2)))
    np.testing.assert_array_equal(streamed, whole)
    ref = r.reference(lr)
    assert ref.dtype == np.float64 and ref.shape == lr.shape
    assert relative_rms_error(whole, ref) < 1e-5
    # batches stream as batches
    batches = list(r.stream([lr[:2], lr[:2][::-1]]))
    assert batches[0].shape == (2, *lr.shape[1:])
    np.testing.assert_allclose(batches[1], whole[:2][::-1], atol=1e-6)


@pytest.mark.parametrize("method", ["unet", "cold_diffusion", "sr_x2"])
def test_networks_fast_path_matches_float64_reference(method, shipped):
    x = _frames(2, 1, 136, 144)                     # 2 x 2 tiles of 128 px
    r = Restorer(shipped, method, device="cpu", tile=128, overlap=32, batch=3,
                 steps=2 if method == "cold_diffusion" else None)
    out = np.stack(list(r.stream(list(x))))
    assert out.shape == (1, 136 * r.scale, 144 * r.scale)
    np.testing.assert_allclose(out, r.restore(x), atol=1e-5)
    ref = r.reference(x)
    assert r.reference_dtype == "float64"
    assert relative_rms_error(out, ref) < 1e-5
    # the reference is a real float64 evaluation, not the fast path again
    assert 0 < np.abs(out - ref).max()


def test_mixed_precision_is_checked_against_float32(shipped):
    x = _frames(3, 1, 96, 96)
    fp32 = Restorer(shipped, "unet", device="cpu", tile=128).restore(x)
    bf16 = Restorer(shipped, "unet", device="cpu", tile=128, precision="bf16").restore(x)
    err = relative_rms_error(bf16, fp32)
    assert 0 < err < 0.05                          # bfloat16 has an 8-bit mantissa
    # "auto" (the CUDA default) keeps the lowest precision within AMP_MAX_REL_RMS of float32
    r = Restorer(shipped, "unet", device="cpu", tile=128)
    assert r.precision == "fp32"                   # the CPU default
    r.precision = "auto"
    auto = r.restore(x)
    assert r.precision in PRECISIONS and set(r.precision_errors) >= {"fp16"}
    if r.precision != "fp32":
        assert r.precision_errors[r.precision] <= AMP_MAX_REL_RMS
    assert relative_rms_error(auto, fp32) <= max(AMP_MAX_REL_RMS, 1e-6)
    with pytest.raises(ValueError, match="float32 only"):
        Restorer(shipped, "wiener", device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        Restorer(shipped, "unet", device="cpu", precision="fp8")


def test_compile_is_off_on_the_cpu(shipped):
    r = Restorer(shipped, "unet", device="cpu", compile_mode="reduce-overhead", tile=128)
    assert r._runner is r._model and not r._compiled
    r.warm_up((96, 112))
    assert r.frames_restored == 0                  # warm-up is not counted as work


def test_stream_bad_input(profile, scene_pair):
    _, lr = scene_pair
    r = Restorer(profile, "inverse", device="cpu")
    with pytest.raises(ValueError, match="stream started with"):
        list(r.stream([lr[0], lr[0][:, :-1]]))
    bad = lr[1].copy()
    bad[5, 5] = np.nan
    gen = r.stream([lr[0], bad, lr[0]], depth=1)
    assert next(gen).shape == lr[0].shape          # results before the bad frame are handed off
    with pytest.raises(FloatingPointError, match="non-finite"):
        next(gen)
    with pytest.raises(TypeError, match="dtype"):
        list(r.stream([lr[0].astype(np.complex64)]))
    with pytest.raises(ValueError, match="depth"):
        list(r.stream([lr[0]], depth=0))
    # the CPU path stays usable after a refused input
    assert np.isfinite(r.restore(lr[0])).all()


def test_live_one_frame_buffers_are_reused_and_give_the_restore_result(profile, scene_pair):
    """The CUDA live path of restore() (pinned one-frame buffers kept across calls) runs the
    same loop; on the CPU it is exercised directly."""
    _, lr = scene_pair
    r = Restorer(profile, "wiener", device="cpu")
    first = next(r._stream([lr[0]], 1, r._live_slots, account=False))
    buffers = r._live_buffers
    again = next(r._stream([lr[1]], 1, r._live_slots, account=False))
    assert r._live_buffers is buffers                      # same shape: no new allocation
    np.testing.assert_array_equal(first, r.restore(lr[0]))
    np.testing.assert_array_equal(again, r.restore(lr[1]))
    next(r._stream([lr[0][:64]], 1, r._live_slots, account=False))
    assert r._live_buffers is not buffers                  # a new frame shape: new buffers
