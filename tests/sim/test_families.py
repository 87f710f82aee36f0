"""Sample families of the twin: named, seeded, rendered through the twin's physics, with a
held-out split that training refuses."""
import numpy as np
import pytest

from xinstrument.restoration.physics import DetectorPhysics
from xinstrument.sim import families as fam


def test_split_is_disjoint_and_covers_every_family():
    assert set(fam.TRAINING_FAMILIES) | set(fam.HELD_OUT_FAMILIES) == set(fam.FAMILIES)
    assert not set(fam.TRAINING_FAMILIES) & set(fam.HELD_OUT_FAMILIES)
    assert len(fam.HELD_OUT_FAMILIES) >= 2
    assert "pcb" in fam.TRAINING_FAMILIES and "siemens_star" in fam.HELD_OUT_FAMILIES


@pytest.mark.parametrize("name", fam.FAMILIES)
def test_every_family_renders_with_contrast_and_is_seeded(name):
    a = fam.render_family(name, 48, 11, bench="panel-gos")
    b = fam.render_family(name, 48, 11, bench="panel-gos")
    c = fam.render_family(name, 48, 12, bench="panel-gos")
    assert a.truth.shape == (48, 48) and a.transmission.shape == (48, 48)
    assert np.array_equal(a.truth, b.truth)
    assert not np.array_equal(a.truth, c.truth)
    assert 0 < a.transmission.min() and a.transmission.max() <= 1.0 + 1e-5
    assert a.transmission.std() > 0.01          # visible structure
    assert a.thickness_mm and all(t.shape == (48, 48) for t in a.thickness_mm.values())


def test_transmission_is_beer_lambert_of_the_thickness_maps():
    img = fam.render_family("powders", 48, 3, bench="panel-gos")
    (t,) = list(img.thickness_mm.values())
    # thicker material transmits less, monotonically (polychromatic Beer-Lambert)
    order = np.argsort(t.ravel())
    tr = img.transmission.ravel()[order]
    assert tr[0] > tr[-1] and t.ravel()[order][-1] > 0
    assert np.corrcoef(t.ravel(), -np.log(img.transmission.ravel()))[0, 1] > 0.99


def test_training_source_refuses_held_out_families():
    for held in fam.HELD_OUT_FAMILIES:
        with pytest.raises(ValueError, match="held-out"):
            fam.training_source(("pcb", held))
    with pytest.raises(ValueError, match="unknown sample family"):
        fam.training_source(("pcb", "moon"))
    src = fam.training_source(("powders", "charts"), benches=("panel-gos",))
    out = src(np.random.default_rng(0), 2, 32)
    assert out.shape == (2, 32, 32) and np.isfinite(out).all()


def test_measurement_pairs_use_the_profile_forward_model():
    from pathlib import Path

    from xinstrument.profiles import DetectorProfile

    root = Path(__file__).resolve().parents[2]
    phys = DetectorPhysics.from_profile(DetectorProfile.load(root / "profiles" / "sim-gos134"))
    lr, hr = fam.measurement_pairs(phys, "siemens_star", 2, 64, fam.EVAL_SEED_BASE, dose_ratio=4.0,
                                   bench="panel-gos")
    assert lr.shape == hr.shape == (2, 64, 64)
    # the measurement is blurrier than the truth and noisy around it
    g = lambda x: np.abs(np.diff(x, axis=-1)).mean()
    blur_only = fam.measurement_pairs(phys, "siemens_star", 2, 64, fam.EVAL_SEED_BASE,
                                      dose_ratio=1e8, bench="panel-gos")[0]
    assert g(blur_only) < g(hr)
    assert 0.001 < float(np.std(lr - blur_only)) < 0.2
    with pytest.raises(ValueError, match="dose_ratio"):
        fam.measurement_pairs(phys, "foam", 1, 32, 0, dose_ratio=0.0)
