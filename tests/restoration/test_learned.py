"""Forward operators match their equations; samplers with a perfect predictor return x0;
networks train; weights round-trip through a profile; the stage runs learned methods tiled."""
import numpy as np
import pytest
import torch

from xinstrument.restoration import (
    Restorer,
    build_model,
    cold_degrade,
    cold_sample,
    cosine_alpha_bar,
    pack_weights,
    radial_psd,
    sde_ddim_sample,
    sde_forward,
    sde_transfer,
    sr3_ddim_sample,
    sr3_forward,
    train,
    unet_from_weights,
)
from xinstrument.restoration.physics import DetectorPhysics
from xinstrument.restoration.samplers import from_model_range, to_model_range

torch.set_num_threads(1)


@pytest.fixture
def phys(profile):
    return DetectorPhysics.from_profile(profile)


def test_cold_forward_endpoints(phys):
    x0 = torch.rand(2, 32, 32)
    xb = phys.blur(x0)
    torch.testing.assert_close(cold_degrade(x0, xb, 0.0), x0)
    torch.testing.assert_close(cold_degrade(x0, xb, 1.0), xb)
    torch.testing.assert_close(cold_degrade(x0, xb, 0.25), 0.75 * x0 + 0.25 * xb)


def test_cold_sampling_with_perfect_predictor_returns_x0(phys):
    x0 = torch.rand(2, 48, 48)
    y = phys.blur(x0)  # D_1(x0) = x_b

    def oracle(x, t):
        return x0[:, None]

    out = cold_sample(oracle, y, phys.blur, steps=7)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_cold_sampling_removes_the_input_noise_with_a_perfect_predictor(phys):
    # Noisy thick frame: the residual y - blur(x0) is noise, which must not reach the output.
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, 48, 48, generator=g)
    noise = 0.05 * torch.randn(2, 48, 48, generator=g)
    y = phys.blur(x0) + noise

    def oracle(x, t):
        return x0[:, None]

    out = cold_sample(oracle, y, phys.blur, steps=5)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_sde_transfer_and_noise_spectrum(phys):
    shape = (64, 64)
    ratio = phys.ratio_rfft(shape)
    torch.testing.assert_close(sde_transfer(ratio, 0.0, 1)[0], torch.ones_like(ratio))
    torch.testing.assert_close(sde_transfer(ratio, 1.0, 1)[0], ratio.clamp(1e-4, 1))
    # x0 = 0: x_s is pure noise whose power spectrum must be Sigma_s = q (1 - B_s^2).
    q = torch.full_like(ratio, 1e-3)
    gen = torch.Generator().manual_seed(0)
    xs = sde_forward(torch.zeros(64, *shape), 0.5, ratio, q, gen)
    power = (torch.fft.rfft2(xs).abs() ** 2).mean(0) / (shape[0] * shape[1])
    sigma = q * (1 - sde_transfer(ratio, 0.5, 1)[0] ** 2)
    band = (sigma > 2e-4)
    rel = (power[band] / sigma[band]).mean()
    assert rel == pytest.approx(1.0, rel=0.05)
    # s = 0: B = 1 and Sigma = 0, x0 comes back unchanged.
    x0 = torch.rand(2, *shape)
    torch.testing.assert_close(sde_forward(x0, 0.0, ratio, q, gen), x0, atol=1e-5, rtol=0)


def test_sde_sampling_with_perfect_predictor_returns_x0(phys):
    shape = (40, 40)
    x0 = torch.rand(2, *shape)
    ratio = phys.ratio_rfft(shape)
    gen = torch.Generator().manual_seed(1)
    y = sde_forward(x0, 1.0, ratio, torch.full_like(ratio, 1e-3), gen)

    def oracle(x, t):
        assert x.shape[1] == 2
        return x0[:, None]

    for steps in (1, 5):
        torch.testing.assert_close(sde_ddim_sample(oracle, y, ratio, steps), x0, atol=1e-5, rtol=0)


def test_sr3_forward_and_ddim_with_perfect_noise_predictor():
    x0 = to_model_range(torch.rand(2, 24, 24))
    eps = torch.randn(2, 24, 24, generator=torch.Generator().manual_seed(3))
    assert float(cosine_alpha_bar(torch.tensor(0.0))) > 0.9999
    assert float(cosine_alpha_bar(torch.tensor(1.0))) < 1e-4
    z1 = sr3_forward(x0, 1.0, eps)
    torch.testing.assert_close(z1, eps, atol=1e-2, rtol=0)
    # An ideal noise predictor (the noise that makes z consistent with x0) gives x0 back
    # from any start, through the DDIM updates.
    gen = torch.Generator().manual_seed(3)

    def oracle(z, t):
        ab = cosine_alpha_bar(t)[:, None, None]
        return ((z[:, 0] - torch.sqrt(ab) * x0) / torch.sqrt(1 - ab))[:, None]

    out = sr3_ddim_sample(oracle, torch.zeros(2, 24, 24), 4, gen)
    torch.testing.assert_close(out, from_model_range(x0), atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["unet", "cold_diffusion", "sde", "sr3"])
def test_network_shapes_and_weight_round_trip(method):
    torch.manual_seed(0)
    model = build_model(method, base_channels=8, depth=3)
    for p in model.head.parameters():
        torch.nn.init.normal_(p, std=0.1)  # make the output depend on the weights
    c = model.config["in_channels"]
    x = torch.rand(2, c, 37, 50)
    t = torch.tensor([0.1, 0.9]) if model.config["time_conditioning"] else None
    out = model(x, t)
    assert out.shape == (2, 1, 37, 50)
    rebuilt, m = unet_from_weights(pack_weights(model, method))
    assert m == method
    torch.testing.assert_close(rebuilt(x, t), out)
    assert sum(p.numel() for p in build_model(method).parameters()) * 4 < 4e6  # a few MB


def test_network_bad_input():
    model = build_model("sde", base_channels=8, depth=2)
    with pytest.raises(ValueError, match="expects"):
        model(torch.rand(1, 1, 16, 16), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="needs t"):
        model(torch.rand(1, 2, 16, 16))
    with pytest.raises(ValueError, match="no network"):
        build_model("wiener")
    with pytest.raises(ValueError, match="not a restoration U-Net"):
        unet_from_weights({"conv.weight": torch.zeros(1)})


def _hr_images():
    from conftest import make_scene

    rng = np.random.default_rng(0)
    return np.stack([make_scene(rng, 96) for _ in range(4)])


@pytest.mark.parametrize("method", ["unet", "cold_diffusion", "sde", "sr3"])
def test_tiny_network_trains_and_loss_falls(method, profile):
    imgs = _hr_images()
    reports = []
    res = train(
        method, profile, imgs, patch=32, batch=4, steps=40, lr=2e-3, seed=0, base_channels=8,
        depth=2, val_source=imgs, val_patches=4, steps_per_epoch=20, sample_steps=2,
        progress=reports.append,
    )
    first, last = np.mean(res.losses[:8]), np.mean(res.losses[-8:])
    assert last < first, (first, last)
    assert len(res.validation) == 2 and "val_ssim" in res.validation[-1]
    assert reports[-1]["step"] == 40 and "val_psnr_db" in reports[-1]
    assert method in profile.weights


def test_training_is_deterministic_and_checkpoints(profile, tmp_path):
    imgs = _hr_images()
    kw = {"patch": 32, "batch": 2, "steps": 5, "lr": 1e-3, "seed": 7, "base_channels": 8, "depth": 2,
          "save_to_profile": False}
    a = train("cold_diffusion", profile, imgs, checkpoint_dir=tmp_path, **kw)
    b = train("cold_diffusion", profile, imgs, **kw)
    for k in a.weights:
        torch.testing.assert_close(a.weights[k], b.weights[k], rtol=0, atol=0)
    assert a.losses == b.losses
    assert (tmp_path / "cold_diffusion_latest.pt").is_file()
    c = train("cold_diffusion", profile, imgs, **{**kw, "seed": 8})
    assert c.losses != a.losses


def test_training_bad_input(profile):
    imgs = _hr_images()
    with pytest.raises(ValueError, match="unknown learned method"):
        train("wiener", profile, imgs, steps=1)
    with pytest.raises(ValueError, match="steps"):
        train("unet", profile, imgs, steps=0)
    with pytest.raises(TypeError, match="hr_source"):
        train("unet", profile, 42, steps=1)
    with pytest.raises(ValueError, match="smaller than patch"):
        train("unet", profile, imgs, patch=128, batch=1, steps=1)
    profile.nnps_lr = None
    with pytest.raises(ValueError, match="nnps"):
        train("unet", profile, imgs, steps=1)


@pytest.mark.parametrize("method", ["unet", "sde"])
def test_restorer_runs_learned_method_tiled(method, profile, scene_pair):
    torch.manual_seed(0)
    model = build_model(method, base_channels=8, depth=2)
    profile.save_weights(method, pack_weights(model, method))
    _, lr = scene_pair
    r = Restorer(profile, method, device="cpu", steps=2, tile=128, overlap=16)
    big = np.tile(lr[0], (2, 2))[:200, :230]
    out = r.restore(big)
    assert out.shape == big.shape and np.isfinite(out).all()
    # A freshly initialised network is the identity (zero head + residual); tiling keeps it exact.
    if method == "unet":
        np.testing.assert_allclose(out, big, atol=1e-6)
    assert r.frames_per_second > 0
    profile.weights["sr3"] = "weights/sr3.pt"
    profile._stored["sr3"] = pack_weights(model, method)
    with pytest.raises(ValueError, match="trained for"):
        Restorer(profile, "sr3", device="cpu")


def test_radial_psd_import_smoke():
    f, p = radial_psd(np.random.default_rng(0).random((16, 16)))
    assert f.shape == p.shape
