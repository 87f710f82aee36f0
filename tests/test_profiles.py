"""DetectorProfile: round trip, validation of every field, safe weight loading, lookup."""
from __future__ import annotations

import pickle
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from xinstrument import profiles as prof
from xinstrument.profiles import (
    SCHEMA_VERSION,
    DetectorProfile,
    ProfileError,
    find_profile,
    list_profiles,
)


def gaussian_mtf(f_cy_per_px: np.ndarray, sigma_px: float) -> np.ndarray:
    return np.exp(-2 * np.pi**2 * sigma_px**2 * f_cy_per_px**2)


def make_profile(name: str = "test") -> DetectorProfile:
    f = np.linspace(0, 0.5, 65)
    hr, lr = gaussian_mtf(f, 0.6), gaussian_mtf(f, 2.0)
    y, x = np.mgrid[-7:8, -7:8]
    psf = np.exp(-(x**2 + y**2) / (2 * 1.9**2))
    psf /= psf.sum()
    return DetectorProfile(
        name=name,
        detector_id="sim-yag200",
        description="YAG:Ce 200 um behind 5x NA 0.4",
        pixel_size_um=1.3,
        scintillator={"material": "YAG:Ce", "thickness_um": 200.0},
        reference={"material": "YAG:Ce", "thickness_um": 20.0},
        optics={"magnification": 5.0, "numerical_aperture": 0.4},
        calibration={"voltage_kv": 50.0, "current_ua": 80.0, "source": "digital twin", "date": "2024-01-01"},
        frequency_cy_per_px=f,
        mtf_hr=hr,
        mtf_lr=lr,
        mtf_ratio=lr / hr,
        psf=psf,
        nnps_lr=np.full(f.size, 2e-4),
        nnps_mean_signal=5000.0,
        esf_sigma_um=2.6,
        noise_sigma=0.01,
    )


def test_round_trip(tmp_path: Path) -> None:
    p = make_profile()
    p.save(tmp_path / "yag200")
    q = DetectorProfile.load(tmp_path / "yag200")
    assert q.name == "yag200" and q.path == tmp_path / "yag200"
    assert q.detector_id == p.detector_id and q.pixel_size_um == 1.3
    assert q.scintillator == p.scintillator and q.reference == p.reference and q.optics == p.optics
    assert q.calibration == p.calibration
    for key in ("frequency_cy_per_px", "mtf_hr", "mtf_lr", "mtf_ratio", "psf", "nnps_lr"):
        np.testing.assert_array_equal(getattr(q, key), getattr(p, key))
    assert q.nnps_mean_signal == 5000.0 and q.esf_sigma_um == 2.6 and q.noise_sigma == 0.01
    data = tomllib.loads((tmp_path / "yag200" / "profile.toml").read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["detector"]["id"] == "sim-yag200" and data["arrays"]["file"] == "arrays.npz"
    # unit conversions
    np.testing.assert_allclose(q.frequency_cy_per_mm[-1], 0.5 * 1000 / 1.3)
    np.testing.assert_allclose(q.nnps_lr_mm2, 2e-4 * (1.3e-3) ** 2)
    assert "sim-yag200" in q.summary()


def test_toml_writer_escapes_strings(tmp_path: Path) -> None:
    p = make_profile()
    p.description = 'quote " backslash \\ newline \n tab \t'
    p.calibration["note"] = "ünïcode µm"
    p.save(tmp_path / "x")
    q = DetectorProfile.load(tmp_path / "x")
    assert q.description == p.description and q.calibration["note"] == "ünïcode µm"


def test_contact_panel_without_optics(tmp_path: Path) -> None:
    p = make_profile()
    p.optics = {}
    p.scintillator = {"material": "Gd2O2S:Tb", "areal_density_mg_cm2": 134.55}
    p.reference = {"material": "Gd2O2S:Tb", "areal_density_mg_cm2": 33.91}
    p.nnps_lr = None
    p.nnps_mean_signal = None
    p.save(tmp_path / "gos")
    q = DetectorProfile.load(tmp_path / "gos")
    assert q.optics == {} and q.nnps_lr is None and q.scintillator["areal_density_mg_cm2"] == 134.55


def test_mtf_ratio_2d_matches_radial_frequency() -> None:
    p = make_profile()
    r2 = p.mtf_ratio_2d((64, 48))
    assert r2.shape == (64, 25) and r2.dtype == np.float32
    assert r2[0, 0] == pytest.approx(1.0)
    # (row 0, col 12) is fx = 12/48 = 0.25 cy/px; (row 16, col 0) is fy = 16/64 = 0.25
    expected = np.interp(0.25, p.frequency_cy_per_px, p.mtf_ratio)
    assert r2[0, 12] == pytest.approx(expected, rel=1e-5)
    assert r2[16, 0] == pytest.approx(expected, rel=1e-5)
    assert r2[-16, 0] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ProfileError, match="shape"):
        p.mtf_ratio_2d((64,))
    with pytest.raises(ProfileError, match="shape"):
        p.mtf_ratio_2d((0, 5))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: setattr(p, "mtf_hr", np.r_[p.mtf_hr[:-1], np.nan]), "mtf_hr contains NaN"),
        (lambda p: setattr(p, "mtf_lr", p.mtf_lr[:-1]), r"mtf_lr has shape \(64,\), expected \(65,\)"),
        (lambda p: setattr(p, "mtf_lr", p.mtf_lr * 1.2), "mtf_lr has value .* above 1.05"),
        (lambda p: setattr(p, "mtf_ratio", -p.mtf_ratio), "mtf_ratio has value .* below 0"),
        (lambda p: setattr(p, "frequency_cy_per_px", p.frequency_cy_per_px[::-1].copy()), "must start at 0"),
        (lambda p: setattr(p, "frequency_cy_per_px", np.r_[0, 0.2, 0.1, np.linspace(0.3, 0.5, 62)]),
         "not strictly increasing"),
        (lambda p: setattr(p, "frequency_cy_per_px", np.linspace(0, 0.4, 65)), "must reach Nyquist"),
        (lambda p: setattr(p, "psf", p.psf[:-1, :-1]), "odd square"),
        (lambda p: setattr(p, "psf", p.psf[0]), "must be 2-D"),
        (lambda p: setattr(p, "psf", p.psf * 1.1), "psf sums to 1.1"),
        (lambda p: setattr(p, "nnps_lr", -p.nnps_lr), "nnps_lr has value .* below 0"),
        (lambda p: setattr(p, "nnps_mean_signal", None), "nnps_mean_signal is missing"),
        (lambda p: setattr(p, "pixel_size_um", -1.0), "pixel_size_um must be a positive"),
        (lambda p: setattr(p, "scintillator", {"material": "YAG:Ce"}), "thickness_um"),
        (lambda p: setattr(p, "optics", {"numerical_aperture": 2.0}), "above 1.6"),
        (lambda p: setattr(p, "mtf_hr", p.mtf_hr * 0.9), "mtf_hr must be 1 at zero frequency"),
        (lambda p: setattr(p, "pnp_prior_weight", 0.0), r"pnp_prior_weight must be a number in "
         r"\[0.01, 10\], got 0.0"),
        (lambda p: setattr(p, "pnp_prior_weight", "0.2"), "pnp_prior_weight must be a number"),
    ],
)
def test_validation_errors(tmp_path: Path, mutate, message: str) -> None:
    p = make_profile()
    mutate(p)
    with pytest.raises(ProfileError, match=message):
        p.validate()
    # a bad profile on disk is caught on load as well, with the folder path in the message
    good = make_profile()
    good.save(tmp_path / "p")
    arrays = dict(np.load(tmp_path / "p" / "arrays.npz"))
    for key in ("mtf_hr", "mtf_lr", "mtf_ratio", "psf", "frequency_cy_per_px", "nnps_lr"):
        if getattr(p, key) is not None:
            arrays[key] = getattr(p, key)
    np.savez(tmp_path / "p" / "arrays.npz", **arrays)
    if not message.startswith(("nnps_mean", "pixel", "thickness", "above 1.6", "pnp_prior")):
        with pytest.raises(ProfileError, match=str(tmp_path / "p")):
            DetectorProfile.load(tmp_path / "p")


def _rewrite_toml(folder: Path, old: str, new: str) -> None:
    t = folder / "profile.toml"
    text = t.read_text()
    assert old in text
    t.write_text(text.replace(old, new))


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="profile folder does not exist"):
        DetectorProfile.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProfileError, match="missing profile.toml"):
        DetectorProfile.load(tmp_path / "empty")

    make_profile().save(tmp_path / "p")
    _rewrite_toml(tmp_path / "p", f"schema_version = {SCHEMA_VERSION}", "schema_version = 99")
    with pytest.raises(ProfileError, match="unknown schema_version 99"):
        DetectorProfile.load(tmp_path / "p")
    _rewrite_toml(tmp_path / "p", "schema_version = 99", "")
    with pytest.raises(ProfileError, match="missing schema_version"):
        DetectorProfile.load(tmp_path / "p")

    make_profile().save(tmp_path / "q")
    arrays = dict(np.load(tmp_path / "q" / "arrays.npz"))
    del arrays["psf"]
    np.savez(tmp_path / "q" / "arrays.npz", **arrays)
    with pytest.raises(ProfileError, match="missing array 'psf'"):
        DetectorProfile.load(tmp_path / "q")
    (tmp_path / "q" / "arrays.npz").unlink()
    with pytest.raises(ProfileError, match="array file 'arrays.npz' not found"):
        DetectorProfile.load(tmp_path / "q")

    make_profile().save(tmp_path / "r")
    (tmp_path / "r" / "profile.toml").write_text("schema_version = [1\n")
    with pytest.raises(ProfileError, match="invalid TOML"):
        DetectorProfile.load(tmp_path / "r")

    make_profile().save(tmp_path / "s")
    _rewrite_toml(tmp_path / "s", 'file = "arrays.npz"', 'file = "../../etc/arrays.npz"')
    with pytest.raises(ProfileError, match="relative to the profile folder"):
        DetectorProfile.load(tmp_path / "s")


def test_prior_weight_round_trip_and_bad_value_on_disk(tmp_path: Path) -> None:
    p = make_profile()
    p.save(tmp_path / "a")
    assert "pnp_prior_weight" not in (tmp_path / "a" / "profile.toml").read_text()
    assert DetectorProfile.load(tmp_path / "a").pnp_prior_weight is None
    p.pnp_prior_weight = 0.2
    p.save(tmp_path / "a")
    assert DetectorProfile.load(tmp_path / "a").pnp_prior_weight == 0.2
    _rewrite_toml(tmp_path / "a", "pnp_prior_weight = 0.2", 'pnp_prior_weight = "heavy"')
    with pytest.raises(ProfileError, match=f"{tmp_path / 'a'}.*pnp_prior_weight must be a "
                       "number in .*got 'heavy'"):
        DetectorProfile.load(tmp_path / "a")


def test_weights_round_trip_and_copy(tmp_path: Path) -> None:
    p = make_profile()
    with pytest.raises(ProfileError, match="save the profile"):
        p.save_weights("unet", {"w": torch.ones(2)})
    p.save(tmp_path / "a")
    state = {"conv.weight": torch.randn(4, 1, 3, 3), "conv.bias": torch.zeros(4)}
    p.save_weights("unet", state)
    assert (tmp_path / "a" / "weights" / "unet.pt").is_file()
    q = DetectorProfile.load(tmp_path / "a")
    assert q.weights == {"unet": "weights/unet.pt"}
    loaded = q.load_weights("unet")
    assert set(loaded) == set(state) and torch.equal(loaded["conv.weight"], state["conv.weight"])
    # saving elsewhere carries the weight files along
    q.save(tmp_path / "b")
    assert torch.equal(DetectorProfile.load(tmp_path / "b").load_weights("unet")["conv.bias"], state["conv.bias"])
    with pytest.raises(ProfileError, match="no weights for method 'vdcn'"):
        q.load_weights("vdcn")
    with pytest.raises(ProfileError, match="name -> torch.Tensor"):
        q.save_weights("bad", {"w": np.ones(3)})
    with pytest.raises(ProfileError, match="plain identifier"):
        q.save_weights("../evil", {"w": torch.ones(1)})


class _Payload:
    """A pickled object that would run code if unpickled without restriction."""

    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_weights_that_are_not_plain_tensors_are_refused(tmp_path: Path, capsys) -> None:
    p = make_profile()
    p.save(tmp_path / "a")
    p.save_weights("unet", {"w": torch.ones(1)})
    with open(tmp_path / "a" / "weights" / "unet.pt", "wb") as fh:
        pickle.dump({"w": _Payload()}, fh)
    with pytest.raises(ProfileError, match="not a plain tensor file"):
        p.load_weights("unet")
    assert "this must never run" not in capsys.readouterr().out
    # a valid torch file that holds something other than a state dict
    torch.save([torch.ones(1)], tmp_path / "a" / "weights" / "unet.pt")
    with pytest.raises(ProfileError, match="expected a state dict"):
        p.load_weights("unet")
    (tmp_path / "a" / "weights" / "unet.pt").unlink()
    with pytest.raises(ProfileError, match="weights file for 'unet' not found"):
        DetectorProfile.load(tmp_path / "a")


def test_find_and_list(tmp_path: Path, monkeypatch) -> None:
    make_profile().save(tmp_path / "lib" / "alpha")
    make_profile().save(tmp_path / "lib2" / "beta")
    monkeypatch.setenv("XI_PROFILE_PATH", f"{tmp_path / 'lib'}:{tmp_path / 'lib2'}")
    names = list_profiles()
    assert "alpha" in names and "beta" in names
    assert find_profile("beta").path == tmp_path / "lib2" / "beta"
    assert find_profile(str(tmp_path / "lib" / "alpha")).name == "alpha"
    with pytest.raises(ProfileError, match="no such profile .*available: .*alpha"):
        find_profile("gamma")
    assert prof.repo_profiles_dir().name == "profiles"


def test_shipped_profiles_load() -> None:
    for name in list_profiles():
        if (prof.repo_profiles_dir() / name).is_dir():
            find_profile(name).validate()


# --- hostile and malformed profile folders ---------------------------------------------------
def _saved_with_weights(tmp_path: Path) -> Path:
    p = make_profile()
    p.save(tmp_path / "prof")
    p.save_weights("unet", {"w": torch.zeros(2)})
    return tmp_path / "prof"


def _set_toml(folder: Path, old: str, new: str) -> None:
    t = folder / "profile.toml"
    text = t.read_text()
    assert old in text
    t.write_text(text.replace(old, new))


def test_symlinked_weights_file_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    folder = _saved_with_weights(tmp_path)
    outside = tmp_path / "elsewhere.pt"
    torch.save({"w": torch.ones(2)}, outside)
    wfile = folder / DetectorProfile.load(folder).weights["unet"]
    wfile.unlink()
    wfile.symlink_to(outside)
    with pytest.raises(ProfileError, match="outside the profile folder"):
        DetectorProfile.load(folder)


def test_symlinked_weights_folder_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    folder = _saved_with_weights(tmp_path)
    wdir = folder / "weights"
    moved = tmp_path / "stolen-weights"
    wdir.rename(moved)
    wdir.symlink_to(moved, target_is_directory=True)
    with pytest.raises(ProfileError, match="weights.unet .* outside the profile folder"):
        DetectorProfile.load(folder)


def test_symlinked_arrays_and_toml_out_of_the_folder_are_refused(tmp_path: Path) -> None:
    folder = _saved_with_weights(tmp_path)
    moved = tmp_path / "arrays-elsewhere.npz"
    (folder / "arrays.npz").rename(moved)
    (folder / "arrays.npz").symlink_to(moved)
    with pytest.raises(ProfileError, match="arrays.file 'arrays.npz' resolves to .* outside"):
        DetectorProfile.load(folder)
    other = tmp_path / "other"
    make_profile().save(other)
    (other / "profile.toml").rename(tmp_path / "profile-elsewhere.toml")
    (other / "profile.toml").symlink_to(tmp_path / "profile-elsewhere.toml")
    with pytest.raises(ProfileError, match="profile.toml .* outside the profile folder"):
        DetectorProfile.load(other)


def test_symlink_inside_the_folder_is_fine(tmp_path: Path) -> None:
    folder = _saved_with_weights(tmp_path)
    (folder / "arrays.npz").rename(folder / "arrays-v1.npz")
    (folder / "arrays.npz").symlink_to("arrays-v1.npz")
    assert DetectorProfile.load(folder).load_weights("unet")["w"].shape == (2,)


def test_weights_swapped_for_a_link_after_load_are_refused(tmp_path: Path) -> None:
    folder = _saved_with_weights(tmp_path)
    p = DetectorProfile.load(folder)
    outside = tmp_path / "late.pt"
    torch.save({"w": torch.ones(2)}, outside)
    wfile = folder / p.weights["unet"]
    wfile.unlink()
    wfile.symlink_to(outside)
    with pytest.raises(ProfileError, match="outside the profile folder"):
        p.load_weights("unet")


def _npy_header_only(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()


def test_huge_declared_array_is_refused_before_allocating(tmp_path: Path) -> None:
    import zipfile
    folder = tmp_path / "prof"
    make_profile().save(folder)
    with zipfile.ZipFile(folder / "arrays.npz", "a") as zf:
        # 2**40 float64 declared in a few bytes: np.load would try to allocate 8 TiB
        zf.writestr("psf_big.npy", _npy_header_only((2**20, 2**20)))
    with pytest.raises(ProfileError, match=r"psf_big.*declares shape \(1048576, 1048576\)"):
        DetectorProfile.load(folder)


@pytest.mark.parametrize("content, message", [
    (b"\x00\x01 not a zip", "not an .npz array archive"),
    (b"", "not an .npz array archive"),
])
def test_arrays_file_that_is_not_a_zip(tmp_path: Path, content: bytes, message: str) -> None:
    folder = tmp_path / "prof"
    make_profile().save(folder)
    (folder / "arrays.npz").write_bytes(content)
    with pytest.raises(ProfileError, match=message):
        DetectorProfile.load(folder)


def test_malformed_npz_members(tmp_path: Path) -> None:
    import zipfile
    folder = tmp_path / "prof"
    make_profile().save(folder)
    good = (folder / "arrays.npz").read_bytes()
    with zipfile.ZipFile(folder / "arrays.npz", "a") as zf:
        zf.writestr("notes.txt", b"hello")
    with pytest.raises(ProfileError, match="unexpected member 'notes.txt'"):
        DetectorProfile.load(folder)
    (folder / "arrays.npz").write_bytes(good)
    with zipfile.ZipFile(folder / "arrays.npz", "a") as zf:
        zf.writestr("objs.npy", _npy_header_only((3,), "|O"))
    with pytest.raises(ProfileError, match="holds Python objects"):
        DetectorProfile.load(folder)
    (folder / "arrays.npz").write_bytes(good)
    with zipfile.ZipFile(folder / "arrays.npz", "a") as zf:
        zf.writestr("bad.npy", b"\x93NUMPY\x09\x00junk")
    with pytest.raises(ProfileError, match="bad.npy|cannot read arrays"):
        DetectorProfile.load(folder)
    (folder / "arrays.npz").write_bytes(good[: len(good) // 2])     # truncated archive
    with pytest.raises(ProfileError):
        DetectorProfile.load(folder)


def test_non_utf8_and_unreadable_profile_toml(tmp_path: Path) -> None:
    folder = tmp_path / "prof"
    make_profile().save(folder)
    t = folder / "profile.toml"
    t.write_bytes(t.read_bytes().replace(b"YAG:Ce 200 um", b"YAG:Ce 200 \xb5m"))
    with pytest.raises(ProfileError, match=r"profile.toml: not UTF-8 text \(byte \d+: b'\\xb5'\)"):
        DetectorProfile.load(folder)
    t.unlink()
    t.mkdir()
    with pytest.raises(ProfileError, match="missing profile.toml"):
        DetectorProfile.load(folder)


@pytest.mark.parametrize("old, new, message", [
    ('pixel_size_um = 1.3', 'pixel_size_um = "small"', "pixel_size_um"),
    ('pixel_size_um = 1.3', 'pixel_size_um = nan', "pixel_size_um"),
    ('pixel_size_um = 1.3', 'pixel_size_um = -1.3', "pixel_size_um"),
    ('schema_version = 1', 'schema_version = "1"', "schema_version"),
    ('schema_version = 1', 'schema_version = true', "schema_version"),
    ('[detector]', 'detector = 3\n[detector2]', "detector"),
])
def test_malformed_profile_values(tmp_path: Path, old: str, new: str, message: str) -> None:
    folder = tmp_path / "prof"
    make_profile().save(folder)
    _set_toml(folder, old, new)
    with pytest.raises(ProfileError, match=message):
        DetectorProfile.load(folder)


def test_weights_entry_pointing_out_by_name_or_link_loop(tmp_path: Path) -> None:
    folder = _saved_with_weights(tmp_path)
    p = DetectorProfile.load(folder)
    _set_toml(folder, f'"{p.weights["unet"]}"', '"../../etc/passwd"')
    with pytest.raises(ProfileError, match="relative to the profile folder"):
        DetectorProfile.load(folder)
    _set_toml(folder, '"../../etc/passwd"', '"weights/loop.pt"')
    (folder / "weights" / "loop.pt").symlink_to(folder / "weights" / "loop.pt")
    with pytest.raises(ProfileError, match="loop.pt"):
        DetectorProfile.load(folder).load_weights("unet")
