"""The seed papers' networks as shipped: trained on the broad training families (never a
held-out one), and free of the horizontal / vertical cross-hatch that PCB-only training gave
(the PCB's Manhattan geometry learned as the prior turns noise in flat regions into streaks
along the pixel axes)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xinstrument.family_bench import axis_anisotropy, periodic_peak_ratio
from xinstrument.profiles import find_profile
from xinstrument.restoration import Restorer
from xinstrument.restoration.physics import DetectorPhysics
from xinstrument.sim.families import HELD_OUT_FAMILIES, TRAINING_FAMILIES, training_hr_source

torch.set_num_threads(1)

SEED_NETWORKS = [("sim-yag200-5x", m) for m in ("unet", "cold_diffusion", "sde")] + \
    [("sim-gos134", m) for m in ("unet", "cold_diffusion", "sde", "sr3")]
# Isotropic noise gives an axis/diagonal power ratio of 1 (inputs: 0.99-1.05). On flats like
# these the PCB-trained cold diffusion and SDE networks of the YAG profile gave 4-6; those trained
# on the training families give 0.83-1.27 over three noise seeds (192 px; at 128 px the frame
# border lifts the SDE's to 1.4).
MAX_AXIS_ANISOTROPY = 1.5
# The target: no peak at 2/4/8/16 px periods above 3x the local spectral floor.
MAX_PERIODIC_PEAK = 3.0


def _flats(profile, size_px: int = 192, transmission: float = 0.8) -> np.ndarray:
    phys = DetectorPhysics.from_profile(profile)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        return phys.degrade(torch.full((2, size_px, size_px), transmission), gen, 1.0).numpy()


@pytest.mark.parametrize("profile_name, method", SEED_NETWORKS)
def test_restored_flat_fields_have_no_cross_hatch(profile_name, method):
    profile = find_profile(profile_name)
    flats = _flats(profile)
    assert axis_anisotropy(flats) < 1.2          # the input noise itself is isotropic
    out = np.asarray(Restorer(profile, method, device="cpu").restore(flats))
    assert out.shape == flats.shape and np.isfinite(out).all()
    assert axis_anisotropy(out) < MAX_AXIS_ANISOTROPY, f"{profile_name} {method}: cross-hatch"
    assert periodic_peak_ratio(out) < MAX_PERIODIC_PEAK, f"{profile_name} {method}: periodic peak"


@pytest.mark.parametrize("profile_name, method", SEED_NETWORKS)
def test_shipped_records_name_the_training_families_only(profile_name, method):
    profile = find_profile(profile_name)
    rec = json.loads((profile.path / "weights" / f"{method}.json").read_text())
    assert rec["method"] == method and rec["profile"] == profile_name
    assert rec["hr_source"] == "xinstrument.sim.families:training_hr_source"
    assert set(rec["families"]) <= set(TRAINING_FAMILIES)
    assert not set(rec["families"]) & set(HELD_OUT_FAMILIES)
    assert rec["cpu_s"] > 0 and rec["threads"] == 1
    assert (profile.path / "weights" / f"{method}.pt").stat().st_size < 2_000_000


def test_training_hr_source_is_seeded_and_refuses_held_out_families():
    a = training_hr_source(seed=3, bench="panel-gos", pool_images=2, pool_px=32)
    b = training_hr_source(seed=3, bench="panel-gos", pool_images=2, pool_px=32)
    pa, pb = a(np.random.default_rng(0), 3, 16), b(np.random.default_rng(0), 3, 16)
    assert pa.shape == (3, 16, 16) and np.array_equal(pa, pb)
    assert 0 < pa.min() and pa.max() <= 1.01
    with pytest.raises(ValueError, match="held-out"):
        training_hr_source(seed=0, families=("pcb", "siemens_star"), pool_images=1, pool_px=32)
    with pytest.raises(ValueError, match="bench"):
        training_hr_source(seed=0, bench="no-such-bench", pool_images=1, pool_px=32)


def test_gradient_clipping_bounds_each_step(profile):
    """A clipped run starts from the same loss (same initialisation and batch) and then differs
    from the unclipped one (its gradients are cut to a norm of 1e-6); bad values are refused."""
    from conftest import make_scene

    from xinstrument.restoration import train

    rng = np.random.default_rng(0)
    imgs = np.stack([make_scene(rng, 64) for _ in range(2)])
    kw = {"patch": 32, "batch": 2, "steps": 6, "lr": 1e-3, "seed": 7, "base_channels": 8,
          "depth": 2, "save_to_profile": False}
    free = train("sde", profile, imgs, **kw)
    clipped = train("sde", profile, imgs, grad_clip=1e-6, **kw)
    assert free.losses[0] == clipped.losses[0] and free.losses != clipped.losses
    for bad in (0.0, -1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="grad_clip"):
            train("sde", profile, imgs, grad_clip=bad, **kw)
