"""``xinstrument calibrate mtf|nnps|psf|ctf`` on small HDF5 / TIFF files from a tiny twin."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from xinstrument.calibration.cli import extend_to_corners
from xinstrument.calibration.psf import normalized_cross_correlation, psf_from_mtf_ratio
from xinstrument.cli import main
from xinstrument.profiles import DetectorProfile
from xinstrument.sim import Twin, lens_bench
from xinstrument.storage import ScanWriter

SENSOR_PX = 128
EXPOSURE_S = 1.0
PIXEL_UM = lens_bench(sensor_px=SENSOR_PX).pixel_at_screen_um
EDGE_ROI = ["16", "24", "96", "80"]
NEW_PROFILE = ["--scintillator", "YAG:Ce,200um", "--reference", "YAG:Ce,20um"]


def _acquire(twin: Twin, which: str, sample: str, path: Path, n: int = 8) -> Path:
    """Raw darks, flats and sample frames through one screen in an xinstrument scan file."""
    twin.sample = sample
    twin.set_state(stage_um=twin.best_focus_um(which))
    with ScanWriter(path, (SENSOR_PX, SENSOR_PX), "uint16", swmr=False,
                    metadata={"pixel_size_um": PIXEL_UM}) as w:
        for key, state in ((2, {"xray_on": False}), (1, {"xray_on": True, "sample_in": False}),
                           (0, {"xray_on": True, "sample_in": True})):
            twin.set_state(**state)
            for _ in range(n if key else 2 * n):
                frame, m = twin.render(EXPOSURE_S, which=which)
                w.append(frame, image_key=key, voltage_kv=m["voltage_kv"], current_ua=m["current_ua"])
    return path


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("scans")
    twin = Twin(lens_bench(sensor_px=SENSOR_PX), sample="edge", seed=11)
    out = {f"{s}-{w}": _acquire(twin, w, s, d / f"{s}-{w}.h5") for s in ("edge", "pcb") for w in ("thin", "thick")}
    # corrected means as TIFF (what another acquisition program would export)
    for key, path in list(out.items()):
        with h5py.File(path, "r") as f:
            dark = f["/exchange/data_dark"][()].mean(axis=0)
            flat = f["/exchange/data_white"][()].mean(axis=0) - dark
            img = (f["/exchange/data"][()].mean(axis=0) - dark) / flat * flat.mean()
        tifffile.imwrite(d / f"{key}.tif", img.astype(np.float32))
        out[f"{key}-tif"] = d / f"{key}.tif"
    return out


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["calibrate", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_mtf_creates_a_profile_from_hdf5(scans, tmp_path, capsys) -> None:
    prof_dir = tmp_path / "bench"
    rc, out, err = _run(capsys, "mtf", "--thin", str(scans["edge-thin"]), "--thick", str(scans["edge-thick"]),
                        "--flat-correct", "--roi", *EDGE_ROI, "--profile", str(prof_dir), *NEW_PROFILE,
                        "--magnification", "5", "--numerical-aperture", "0.4")
    assert rc == 0, err
    prof = DetectorProfile.load(prof_dir)
    assert prof.pixel_size_um == pytest.approx(PIXEL_UM)       # from the scan file
    assert prof.scintillator == {"material": "YAG:Ce", "thickness_um": 200.0}
    assert prof.optics == {"magnification": 5.0, "numerical_aperture": 0.4}
    f = prof.frequency_cy_per_px
    # the 20 um screen is much sharper than the 200 um one; the ratio is the monotone fit to their
    # quotient: the quotient where the edges are far above their noise, and closer to the twin's
    # own transfer model than the noisy quotient beyond (rms 0.002 against 0.024 at 0.1-0.4 cy/px)
    mid = (f > 0.1) & (f < 0.4)
    assert np.all(prof.mtf_hr[mid] > prof.mtf_lr[mid] + 0.2)
    quotient = prof.mtf_lr / prof.mtf_hr
    low = (f > 0) & (f < 0.1)
    np.testing.assert_allclose(prof.mtf_ratio[low], quotient[low], rtol=0.05, atol=0.01)
    assert np.all(np.diff(prof.mtf_ratio) <= 1e-12)
    twin = Twin(lens_bench(sensor_px=SENSOR_PX), sample="edge", seed=11)
    f_mm = f * 1000 / PIXEL_UM
    model = (twin.mtf(f_mm, "thick", stage_um=twin.best_focus_um("thick"))
             / twin.mtf(f_mm, "thin", stage_um=twin.best_focus_um("thin")))
    rms = lambda x: float(np.sqrt(np.mean(x[mid] ** 2)))
    assert rms(prof.mtf_ratio - model) < 0.5 * rms(quotient - model)
    assert prof.calibration["mtf_ratio_reliable_to_cy_per_px"] > 0.1
    assert prof.psf.shape == (61, 61) and prof.psf.min() >= 0
    assert prof.esf_sigma_um > PIXEL_UM
    assert prof.calibration["voltage_kv"] == pytest.approx(50.0)
    assert prof.calibration["mtf50_thick_cy_per_mm"] < prof.calibration["mtf50_thin_cy_per_mm"]
    assert (prof_dir / "mtf.png").stat().st_size > 10_000
    assert "thick ESF Gaussian sigma" in out
    assert "ISO 12233:2023 (edition 4)" in out and "edge angle" in out
    assert prof.calibration["mtf_standard"] == "ISO 12233:2023 (edition 4)"
    assert "1/cos" in prof.calibration["mtf_method"]


def test_mtf_from_tiff_matches_hdf5(scans, tmp_path, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    rc, _, err = _run(capsys, "mtf", "--thin", str(scans["edge-thin"]), "--thick", str(scans["edge-thick"]),
                      "--flat-correct", "--roi", *EDGE_ROI, "--profile", str(a), *NEW_PROFILE)
    assert rc == 0, err
    rc, _, err = _run(capsys, "mtf", "--thin", str(scans["edge-thin-tif"]), "--thick", str(scans["edge-thick-tif"]),
                      "--roi", *EDGE_ROI, "--profile", str(b), *NEW_PROFILE, "--pixel-size-um", str(PIXEL_UM),
                      "--restored", str(scans["edge-thin-tif"]), "--plot", str(tmp_path / "m.png"))
    assert rc == 0, err
    pa, pb = DetectorProfile.load(a), DetectorProfile.load(b)
    np.testing.assert_allclose(pa.mtf_lr, pb.mtf_lr, atol=1e-4)   # float32 TIFF of the same means
    assert "mtf50_restored_cy_per_mm" in pb.calibration
    assert (tmp_path / "m.png").is_file()


def test_nnps_and_psf_update_an_existing_profile_keeping_the_rest(scans, tmp_path, capsys) -> None:
    prof_dir = tmp_path / "p"
    assert _run(capsys, "mtf", "--thin", str(scans["edge-thin"]), "--thick", str(scans["edge-thick"]),
                "--flat-correct", "--roi", *EDGE_ROI, "--profile", str(prof_dir), *NEW_PROFILE)[0] == 0
    before = DetectorProfile.load(prof_dir)

    rc, _, err = _run(capsys, "nnps", str(scans["edge-thick"]), "--dataset", "/exchange/data_white",
                        "--dark-dataset", "/exchange/data_dark", "--adu-per-quantum", "12.5",
                        "--roi-size", "64", "--profile", str(prof_dir))
    assert rc == 0, err
    p = DetectorProfile.load(prof_dir)
    np.testing.assert_array_equal(p.mtf_hr, before.mtf_hr)
    np.testing.assert_array_equal(p.psf, before.psf)
    assert p.nnps_lr is not None and np.all(p.nnps_lr >= 0)
    assert p.nnps_mean_signal == pytest.approx(p.calibration["nnps_mean_signal_adu"] / 12.5)
    assert p.calibration["nnps_fixed_pattern_removed"] is True
    assert "mtf50_thin_cy_per_mm" in p.calibration                  # earlier entries kept
    assert (prof_dir / "nnps.png").is_file()

    npy = tmp_path / "psf.npy"
    rc, _out, err = _run(capsys, "psf", "--thin", str(scans["pcb-thin"]), "--thick", str(scans["pcb-thick"]),
                        "--flat-correct", "--window", "31", "--profile", str(prof_dir), "--save-npy", str(npy))
    assert rc == 0, err
    q = DetectorProfile.load(prof_dir)
    assert q.psf.shape == (31, 31) and q.psf.sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(q.psf, np.load(npy))
    np.testing.assert_array_equal(q.nnps_lr, p.nnps_lr)
    assert q.calibration["psf_source"] == "least-squares extraction" and q.calibration["psf_method"] == "lsq"
    assert 0 < q.calibration["psf_peak"] < 1 and q.calibration["psf_fwhm_um"] > 0
    assert 0 <= q.calibration["psf_halo_energy"] < 1
    # The extracted kernel is the extra blur of the thick screen: the fraction of its weight
    # within +-3 px agrees within 0.2 with the twin's own model (the PSF of its MTF ratio, 0.55;
    # the edge MTFs' ratio gives 0.49, RL 0.63-0.73 for 8-30 iterations; a delta would give 1, a
    # flat kernel 0.05), and the shapes correlate with the edges' ratio PSF.
    cfg = lens_bench(sensor_px=SENSOR_PX)
    twin = Twin(cfg, sample="edge", seed=11)
    f = np.linspace(0, 0.5, 129)
    f_mm = f * 1000 / cfg.pixel_at_screen_um
    model = (twin.mtf(f_mm, "thick", stage_um=twin.best_focus_um("thick"))
             / twin.mtf(f_mm, "thin", stage_um=twin.best_focus_um("thin")))
    model_psf = np.clip(psf_from_mtf_ratio(np.r_[f, 0.7072], np.clip(np.r_[model, model[-1]], 0, None), 31), 0, None)
    model_psf /= model_psf.sum()
    assert q.psf[12:19, 12:19].sum() == pytest.approx(model_psf[12:19, 12:19].sum(), abs=0.2)
    ratio_psf = before.psf[30 - 15:30 + 16, 30 - 15:30 + 16]
    ratio_psf = ratio_psf / ratio_psf.sum()
    assert normalized_cross_correlation(q.psf, ratio_psf) > 0.45
    assert (prof_dir / "psf.png").is_file()


def _blurred_bars(period_px: float, phase_px: float, n_px: int, sigma_px: float = 1.0) -> np.ndarray:
    """Bars (1000 open, 200 absorbing) blurred by a Gaussian and integrated over the pixels."""
    from scipy import ndimage
    os_ = 50
    x = (np.arange(n_px * os_) + 0.5) / os_
    bars = np.where(((x - phase_px) % period_px) < period_px / 2, 1000.0, 200.0)
    return ndimage.gaussian_filter1d(bars, sigma_px * os_, mode="wrap").reshape(n_px, os_).mean(1)


def test_ctf_of_a_bar_pattern(tmp_path, capsys) -> None:
    """Blurred bars at half-pixel phases: CTF = bar contrast / reference contrast, as the
    analytic square-wave response of the blur times the pixel aperture (Coltman's series)."""
    from xinstrument.calibration.ctf import ctf_from_mtf
    img = np.full((80, 200), 1000.0)
    img[10:40, :100] = _blurred_bars(5.0, 0.5, 100)          # 5 px period, half-pixel phase
    img[10:40, 100:] = _blurred_bars(20.0, 0.5, 100)         # 20 px period
    img[50:80, 100:150] = 200.0                              # opaque area
    path = tmp_path / "bars.tif"
    tifffile.imwrite(path, img.astype(np.float32))
    px = 10.0
    rc, out, err = _run(capsys, "ctf", str(path), "--pixel-size-um", str(px),
                        "--group", str(1000 / (5 * px)), "10", "0", "30", "100",
                        "--group", str(1000 / (20 * px)), "10", "100", "30", "100",
                        "--open-roi", "50", "0", "30", "80", "--opaque-roi", "50", "100", "30", "50",
                        "--plot", str(tmp_path / "ctf.png"))
    assert rc == 0, err
    fine = np.linspace(0, 20, 200001)
    model = ctf_from_mtf(fine, np.exp(-2 * np.pi**2 * fine**2) * np.sinc(fine))
    rows = [ln for ln in out.splitlines() if "lp/mm  CTF" in ln]
    assert len(rows) == 2
    for row, period in zip(rows, (20.0, 5.0), strict=True):   # printed by rising frequency
        measured = float(row.split("CTF")[1].split()[0])
        assert measured == pytest.approx(np.interp(1 / period, fine, model), abs=0.01)
    assert "phase-aware" in out and "+-" in out
    assert (tmp_path / "ctf.png").is_file()


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err                               # one line, no traceback
    assert lines[0].startswith("xinstrument calibrate: error:")
    return lines[0]


@pytest.mark.parametrize("case", ["missing file", "missing dataset", "edge not found", "roi too small",
                                  "roi outside", "frame out of range", "mismatched sizes", "new profile",
                                  "nnps without profile", "not an image file"])
def test_bad_input_is_one_clear_error_line(case, scans, tmp_path, capsys) -> None:
    thin, thick = str(scans["edge-thin"]), str(scans["edge-thick"])
    mtf = ["mtf", "--thin", thin, "--thick", thick, "--flat-correct"]
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.ones((64, 64), np.float32))
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    argv, expected = {
        "missing file": (["mtf", "--thin", str(tmp_path / "nope.h5"), "--thick", thick], "file not found"),
        "missing dataset": (mtf + ["--dataset", "/entry/nothing"], "no dataset '/entry/nothing'"),
        "edge not found": (["mtf", "--thin", thin, "--thick", thick, "--dataset", "/exchange/data_white",
                            "--roi", *EDGE_ROI], "no edge found"),
        "roi too small": (mtf + ["--roi", "10", "10", "8", "8"], "too small"),
        "roi outside": (mtf + ["--roi", "100", "100", "64", "64"], "not inside the 128x128 image"),
        "frame out of range": (mtf + ["--frame", "99"], "frame index 99 out of range"),
        "mismatched sizes": (["mtf", "--thin", thin, "--thick", str(small), "--pixel-size-um", "1.3"],
                             "mismatched image sizes"),
        "new profile": (mtf + ["--roi", *EDGE_ROI, "--profile", str(tmp_path / "new")],
                        "needs --scintillator and --reference"),
        "nnps without profile": (["nnps", thick, "--adu-per-quantum", "2", "--profile", str(tmp_path / "none")],
                                 "no profile there yet"),
        "not an image file": (["mtf", "--thin", str(text), "--thick", thick], "neither an HDF5 file nor"),
    }[case]
    rc, _, err = _run(capsys, *argv)
    assert rc == 2
    assert expected in _error_line(err)


def test_ratio_psf_agrees_with_the_shipped_model_psf(scans, tmp_path, capsys) -> None:
    """The PSF from the edge-measured MTF ratio of a tiny twin matches the shipped profile's
    (built from the twin's transfer model)."""
    prof_dir = tmp_path / "r"
    assert _run(capsys, "mtf", "--thin", str(scans["edge-thin"]), "--thick", str(scans["edge-thick"]),
                "--flat-correct", "--roi", *EDGE_ROI, "--profile", str(prof_dir), *NEW_PROFILE)[0] == 0
    psf = DetectorProfile.load(prof_dir).psf
    shipped = DetectorProfile.load(Path(__file__).resolve().parents[2] / "profiles" / "sim-yag200-5x").psf
    assert normalized_cross_correlation(psf, shipped) > 0.9


def test_ratio_held_to_the_corners_gives_a_kernel_without_ringing() -> None:
    """A ratio that is still 0.3 at Nyquist (a sharp core plus a halo) cut to 0 on the Nyquist
    circle rings with a 2 px period; held to the corners its kernel tail falls monotonically."""
    f = np.linspace(0, 0.5, 129)
    ratio = 0.3 + 0.7 * np.exp(-((f / 0.05) ** 2))
    held = psf_from_mtf_ratio(*extend_to_corners(f, ratio), 61)
    cut = psf_from_mtf_ratio(f, ratio, 61)
    assert np.all(np.diff(held[30, 31:]) <= 1e-6)
    assert np.any(np.diff(cut[30, 31:]) > 1e-4)
    assert held.sum() == pytest.approx(1.0)
