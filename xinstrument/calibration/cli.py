"""``xinstrument calibrate mtf|nnps|ctf|psf``: detector characterisation into a profile folder.

Inputs are HDF5 files (``--dataset``, default ``/exchange/data``; all frames averaged unless
``--frame`` picks one; ``--flat-correct`` applies the darks and flats stored in the same file,
``/exchange/data_dark`` and ``/exchange/data_white``) or TIFF files (already corrected).

- ``mtf --thin T --thick K [--restored R]``: slanted-edge MTFs of the thin (HR) and thick (LR)
  screens; fills mtf_hr, mtf_lr, mtf_ratio (the monotone Gaussian-mixture fit to their measured
  quotient, psf.fit_mtf_ratio), the PSF derived from the ratio and the ESF sigma.
  Creates the profile when the folder has none (then ``--scintillator`` / ``--reference`` are
  needed).
- ``nnps FLATS --adu-per-quantum G``: IEC 62220-1 NNPS of the thick screen's flats; fills nnps_lr,
  nnps_mean_signal (absorbed X-ray quanta per pixel = dark-subtracted ADU / G) and noise_sigma.
- ``psf --thin T --thick K``: PSF_all by regularised least-squares (or Richardson-Lucy) extraction from a registered thin/thick
  image pair of the same scene; fills psf.
- ``ctf IMAGE --group LP_PER_MM R0 C0 ROWS COLS ...``: CTF per bar group, Coltman MTF; stored in
  the profile's [calibration] table.
- ``fidelity SCAN --adu-per-quantum G``: the fidelity guard's model tolerance of each restoration
  method in an instrument scan file (corrected projections, their restorations, the dark and
  flat references) the operator accepts as ordinary; fills [fidelity_tolerance].
Each writes a PNG plot (``--plot``, default ``<profile>/<measurement>.png``).
"""
from __future__ import annotations

import argparse
import datetime
import re
from pathlib import Path

import numpy as np

from xinstrument.calibration.io import (
    DEFAULT_DARK_DATASET,
    DEFAULT_DATASET,
    DEFAULT_FLAT_DATASET,
    CalibrationInputError,
    Frames,
    crop,
    read_frames,
)

# Profile frequency grid for a new profile: 0 .. Nyquist in 128 steps (as the shipped profiles).
GRID_POINTS = 129
MIN_EDGE_ROI_PX = 16  # xinstrument.calibration.mtf.MIN_ROI_PX


def default_grid() -> np.ndarray:
    return np.linspace(0.0, 0.5, GRID_POINTS)


# --------------------------------------------------------------------------------------------
# argument helpers
# --------------------------------------------------------------------------------------------
def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return v


_SCREEN = re.compile(r"^\s*(?P<material>[^,]+?)\s*,\s*(?P<value>[0-9.eE+-]+)\s*(?P<unit>um|mg/cm2)\s*$")


def parse_screen(text: str) -> dict:
    """``"YAG:Ce,200um"`` or ``"Gd2O2S:Tb,134.55mg/cm2"`` -> profile scintillator table."""
    m = _SCREEN.match(text)
    if not m:
        raise argparse.ArgumentTypeError(
            f"expected MATERIAL,THICKNESS (e.g. 'YAG:Ce,200um' or 'Gd2O2S:Tb,134.55mg/cm2'), got {text!r}"
        )
    value = float(m["value"])
    if not value > 0:
        raise argparse.ArgumentTypeError(f"screen thickness must be positive, got {text!r}")
    key = "thickness_um" if m["unit"] == "um" else "areal_density_mg_cm2"
    return {"material": m["material"], key: value}


def _add_input_options(p: argparse.ArgumentParser, stack: bool = False) -> None:
    g = p.add_argument_group("input")
    g.add_argument("--dataset", default=DEFAULT_DATASET,
                   help=f"HDF5 dataset holding the frames (default {DEFAULT_DATASET})")
    g.add_argument("--frame", type=int, default=None,
                   help="use only this frame of a stack (default: " +
                   ("every frame" if stack else "the mean of all frames") + ")")
    if not stack:
        g.add_argument("--flat-correct", action="store_true",
                       help="dark/flat-correct with the darks and flats in the same HDF5 file "
                       f"({DEFAULT_DARK_DATASET}, {DEFAULT_FLAT_DATASET})")
    g.add_argument("--dark-dataset", default=None,
                   help="HDF5 dataset of darks (same file) subtracted from the frames")
    if not stack:
        g.add_argument("--flat-dataset", default=None,
                       help="HDF5 dataset of flats (same file) for flat-field correction")
    g.add_argument("--roi", type=int, nargs=4, metavar=("ROW0", "COL0", "ROWS", "COLS"),
                   help="region of interest in pixels (default: the whole image)")
    g.add_argument("--pixel-size-um", type=_positive_float, default=None,
                   help="pixel pitch at the scintillator in um (default: the profile's, else the "
                   "HDF5 file's detector x_pixel_size)")


def _add_profile_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--profile", type=Path, default=None,
                   help="profile folder to update (arrays of this measurement only; everything "
                   "else is kept)")
    p.add_argument("--plot", type=Path, default=None,
                   help=f"PNG plot path (default <profile>/{what}.png, or ./{what}.png without --profile)")


def _read(a: argparse.Namespace, path: Path, stack: bool = False) -> Frames:
    dark = a.dark_dataset
    flat = getattr(a, "flat_dataset", None)
    if getattr(a, "flat_correct", False):
        dark = dark or DEFAULT_DARK_DATASET
        flat = flat or DEFAULT_FLAT_DATASET
    return read_frames(path, a.dataset, a.frame, dark, flat)


def _load_profile(folder: Path | None):
    from xinstrument.profiles import PROFILE_FILE, DetectorProfile

    if folder is None or not (folder / PROFILE_FILE).is_file():
        return None
    return DetectorProfile.load(folder)


def _require_profile(folder: Path | None, what: str):
    prof = _load_profile(folder)
    if folder is not None and prof is None:
        raise CalibrationInputError(
            f"{folder}: no profile there yet; create it with 'xinstrument calibrate mtf --profile {folder} ...' "
            f"(MTFs are the core of a profile) and then add the {what}"
        )
    return prof


def _pixel_size(a: argparse.Namespace, prof, *frames: Frames) -> float:
    if a.pixel_size_um is not None:
        return float(a.pixel_size_um)
    if prof is not None:
        return float(prof.pixel_size_um)
    for fr in frames:
        if fr.pixel_size_um:
            return float(fr.pixel_size_um)
    raise CalibrationInputError(
        "pixel size unknown: give --pixel-size-um (the input files carry none and there is no profile yet)"
    )


def _plot_path(a: argparse.Namespace, what: str) -> Path:
    if a.plot is not None:
        return a.plot
    return (a.profile / f"{what}.png") if a.profile is not None else Path(f"{what}.png")


def _calibration_conditions(*frames: Frames) -> dict:
    out: dict = {}
    for fr in frames:
        for k, v in fr.conditions.items():
            out.setdefault(k, float(v))
    return out


def _measure(func, *args, **kw):
    """Run a calibration function; its ValueError/TypeError (edge not found, ...) becomes a user error."""
    try:
        return func(*args, **kw)
    except CalibrationInputError:
        raise
    except (ValueError, TypeError) as exc:
        raise CalibrationInputError(str(exc)) from exc


def _same_size(a: Frames, b: Frames) -> None:
    if a.data.shape[1:] != b.data.shape[1:]:
        raise CalibrationInputError(
            f"mismatched image sizes: {a.label} is {a.data.shape[1:]}, {b.label} is {b.data.shape[1:]}"
        )


def extend_to_corners(freq: np.ndarray, curve: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hold a radial curve's last value out to the 2-D grid's corners (sqrt(2)/2 cy/px).

    A curve that stops at Nyquist would drop to 0 on the circle f = 0.5 inside the square 2-D band
    and that step rings through the kernel with a 2 px period; holding the value keeps the 2-D
    transfer function continuous.
    """
    f = np.asarray(freq, dtype=float)
    c = np.asarray(curve, dtype=float)
    corner = np.sqrt(0.5) + 1e-6
    if f[-1] >= corner:
        return f, c
    return np.r_[f, corner], np.r_[c, c[-1]]


def nonnegative_kernel(psf: np.ndarray) -> np.ndarray:
    """Clip a kernel's negative ringing (a screen spreads light, never subtracts it) and renormalise."""
    k = np.clip(np.asarray(psf, dtype=float), 0.0, None)
    total = k.sum()
    if not total > 0:
        raise CalibrationInputError("the PSF has no positive weight")
    return k / total


# --------------------------------------------------------------------------------------------
# mtf
# --------------------------------------------------------------------------------------------
def measure_edge(frames: Frames, roi, pixel_size_um: float, label: str):
    from xinstrument.calibration.mtf import slanted_edge_mtf

    img = crop(frames.mean, roi, MIN_EDGE_ROI_PX, f"{label} ({frames.label})")
    return _measure(slanted_edge_mtf, img, pixel_size_um, name=f"{label} edge ({frames.label})")


def _cmd_mtf(a: argparse.Namespace) -> int:
    from xinstrument.calibration.mtf import esf_gaussian_sigma
    from xinstrument.calibration.nnps import resample_curve
    from xinstrument.calibration.plots import plot_mtf
    from xinstrument.calibration.psf import PSF_WINDOW_PX, fit_mtf_ratio, psf_from_mtf_ratio
    from xinstrument.profiles import DetectorProfile

    prof = _load_profile(a.profile)
    thin = _read(a, a.thin)
    thick = _read(a, a.thick)
    _same_size(thin, thick)
    restored = _read(a, a.restored) if a.restored else None
    pixel = _pixel_size(a, prof, thin, thick)
    thick_roi = a.thick_roi or a.roi
    r_hr = measure_edge(thin, a.roi, pixel, "thin")
    r_lr = measure_edge(thick, thick_roi, pixel, "thick")
    r_re = measure_edge(restored, thick_roi, pixel, "restored") if restored is not None else None
    sigma = _measure(esf_gaussian_sigma, crop(thick.mean, thick_roi, MIN_EDGE_ROI_PX, "thick"), pixel,
                     name=f"thick edge ({thick.label})")

    freq = prof.frequency_cy_per_px if prof is not None else default_grid()
    if r_hr.frequency_cy_per_px[-1] < freq[-1] or r_lr.frequency_cy_per_px[-1] < freq[-1]:
        raise CalibrationInputError("the edge MTF does not reach the profile's highest frequency")
    mtf_hr = np.clip(resample_curve(r_hr.frequency_cy_per_px, r_hr.mtf, freq), 0.0, None)
    mtf_lr = np.clip(resample_curve(r_lr.frequency_cy_per_px, r_lr.mtf, freq), 0.0, None)
    # the quotient of two edge MTFs is noise and aliasing towards Nyquist: stored as the
    # monotone, non-negative-kernel fit to it (fit_mtf_ratio), weighted by the edges' noise
    sd_hr = resample_curve(r_hr.frequency_cy_per_px, r_hr.mtf_sd, freq)
    sd_lr = resample_curve(r_lr.frequency_cy_per_px, r_lr.mtf_sd, freq)
    fit = _measure(fit_mtf_ratio, freq, mtf_lr, mtf_hr, sd_lr, sd_hr)
    ratio = fit.ratio
    size = prof.psf.shape[0] if prof is not None else PSF_WINDOW_PX
    psf = nonnegative_kernel(_measure(psf_from_mtf_ratio, *extend_to_corners(freq, ratio), size))

    for r, label in ((r_hr, "thin"), (r_lr, "thick"), (r_re, "restored")):
        if r is None:
            continue
        f50 = "n/a" if r.mtf50_cy_per_mm is None else f"{r.mtf50_cy_per_mm:.2f} cy/mm"
        f10 = "n/a" if r.mtf10_cy_per_mm is None else f"{r.mtf10_cy_per_mm:.2f} cy/mm"
        print(f"{label:8s} MTF50 {f50}, MTF10 {f10}, edge angle {r.edge_angle_deg:+.2f} deg "
              f"({r.orientation} edge, {r.rows_used} rows), contrast {r.contrast:.2f}")
        for w in r.warnings:
            print(f"  warning ({label}): {w}")
    print(f"thick ESF Gaussian sigma {sigma.sigma_um:.3f} um; MTF ratio at Nyquist {ratio[-1]:.3f} "
          f"(measured quotient {fit.measured[-1]:.3f} +- {fit.measured_sd[-1]:.3f})")
    print(f"MTF ratio: Gaussian-mixture fit, sharp fraction {fit.sharp_fraction:.3f}, reduced chi2 "
          f"{fit.reduced_chi2:.2f} over {int(fit.used.sum())} points to {fit.used_to_cy_per_px:.3f} cy/px; "
          f"measurement reliable to {fit.reliable_to_cy_per_px:.3f} cy/px")
    print(f"method: {r_lr.standard}, {r_lr.method}")

    record = {
        "mtf_date": datetime.date.today().isoformat(),
        "mtf_thin_source": thin.label,
        "mtf_thick_source": thick.label,
        "mtf_edge_angle_thin_deg": float(r_hr.edge_angle_deg),
        "mtf_edge_angle_thick_deg": float(r_lr.edge_angle_deg),
        "mtf_standard": r_lr.standard,
        "mtf_method": r_lr.method,
    }
    for key, r in (("thin", r_hr), ("thick", r_lr), ("restored", r_re)):
        if r is not None and r.mtf50_cy_per_mm is not None:
            record[f"mtf50_{key}_cy_per_mm"] = float(r.mtf50_cy_per_mm)
    record.update(fit.record())
    record.update(_calibration_conditions(thick, thin))

    if a.profile is not None:
        if prof is None:
            if a.scintillator is None or a.reference is None:
                raise CalibrationInputError(
                    f"{a.profile}: creating a new profile needs --scintillator and --reference "
                    "(e.g. --scintillator 'YAG:Ce,200um' --reference 'YAG:Ce,20um')"
                )
            optics = {}
            if a.magnification:
                optics["magnification"] = a.magnification
            if a.numerical_aperture:
                optics["numerical_aperture"] = a.numerical_aperture
            prof = DetectorProfile(
                name=a.profile.name, detector_id=a.detector_id or a.profile.name,
                description=a.description or "", pixel_size_um=pixel,
                scintillator=a.scintillator, reference=a.reference, optics=optics,
                calibration={}, frequency_cy_per_px=freq, mtf_hr=mtf_hr, mtf_lr=mtf_lr,
                mtf_ratio=ratio, psf=psf, nnps_lr=None, nnps_mean_signal=None)
        prof.mtf_hr, prof.mtf_lr, prof.mtf_ratio, prof.psf = mtf_hr, mtf_lr, ratio, psf
        prof.esf_sigma_um = float(sigma.sigma_um)
        prof.calibration = {**prof.calibration, **record, "psf_source": "mtf ratio"}
        prof.save(a.profile)
        print(f"profile {a.profile}: mtf_hr, mtf_lr, mtf_ratio, psf (from the ratio), esf_sigma_um written")

    nyq = 500.0 / pixel
    curves = [(f"thin (MTF50 {r_hr.mtf50_cy_per_mm or float('nan'):.1f} cy/mm)", r_hr.frequency_cy_per_mm, r_hr.mtf),
              (f"thick (MTF50 {r_lr.mtf50_cy_per_mm or float('nan'):.1f} cy/mm)", r_lr.frequency_cy_per_mm, r_lr.mtf)]
    if r_re is not None:
        curves.append((f"restored (MTF50 {r_re.mtf50_cy_per_mm or float('nan'):.1f} cy/mm)",
                       r_re.frequency_cy_per_mm, r_re.mtf))
    angles = ", ".join(f"{lbl} {r.edge_angle_deg:+.1f} deg" for r, lbl in
                       ((r_hr, "thin"), (r_lr, "thick"), (r_re, "restored")) if r is not None)
    out = plot_mtf(_plot_path(a, "mtf"), curves, nyq,
                   title=f"MTF (slanted edge, {r_lr.standard})", note=f"edge angle: {angles}")
    print(f"plot {out}")
    return 0


# --------------------------------------------------------------------------------------------
# nnps
# --------------------------------------------------------------------------------------------
def _cmd_nnps(a: argparse.Namespace) -> int:
    from xinstrument.calibration.nnps import nnps, remove_fixed_pattern, resample_curve
    from xinstrument.calibration.plots import plot_nnps

    prof = _require_profile(a.profile, "NNPS")
    flats = _read(a, a.flats, stack=True)
    pixel = _pixel_size(a, prof, flats)
    stack = crop(flats.data, a.roi, a.roi_size, f"flats ({flats.label})")
    level = float(stack.mean())
    if not level > 0:
        raise CalibrationInputError(
            f"{flats.label}: mean flat signal {level:.4g} is not positive (subtract the dark: --dark-dataset)"
        )
    if a.keep_fixed_pattern or stack.shape[0] < 2:
        if stack.shape[0] < 2 and not a.keep_fixed_pattern:
            print("warning: a single flat: its fixed pattern (gain/offset non-uniformity) stays in the NNPS")
        fluct = stack
    else:
        fluct = remove_fixed_pattern(stack)
    res = _measure(nnps, fluct, pixel, roi_size_px=a.roi_size)
    noise_sigma = float(np.mean([np.std(f / f.mean()) for f in fluct]))
    quanta = level / a.adu_per_quantum
    print(f"NNPS of {stack.shape[0]} flat(s), {res.n_rois} ROIs of {res.roi_size_px} px; mean signal "
          f"{level:.5g} ADU = {quanta:.5g} quanta/px; relative noise sigma {noise_sigma:.4g}")
    for fq in (0.05, 0.25, 0.45):
        print(f"  NNPS({fq:.2f} cy/px = {fq * 1000 / pixel:.1f} cy/mm) = "
              f"{np.interp(fq, res.frequency_cy_per_px, res.nnps_px2):.4g} px^2")
    if prof is not None:
        freq = prof.frequency_cy_per_px
        prof.nnps_lr = np.clip(resample_curve(res.frequency_cy_per_px, res.nnps_px2, freq), 0.0, None)
        prof.nnps_mean_signal = quanta
        prof.noise_sigma = noise_sigma
        prof.calibration = {**prof.calibration, "nnps_date": datetime.date.today().isoformat(),
                            "nnps_source": flats.label, "nnps_mean_signal_adu": level,
                            "nnps_adu_per_quantum": float(a.adu_per_quantum),
                            "nnps_fixed_pattern_removed": fluct is not stack,
                            **_calibration_conditions(flats)}
        prof.save(a.profile)
        print(f"profile {a.profile}: nnps_lr, nnps_mean_signal, noise_sigma written")
    out = plot_nnps(_plot_path(a, "nnps"), res.frequency_cy_per_mm, res.nnps_mm2, flats.label, quanta,
                    "quanta/px")
    print(f"plot {out}")
    return 0


# --------------------------------------------------------------------------------------------
# psf
# --------------------------------------------------------------------------------------------
def _cmd_psf(a: argparse.Namespace) -> int:
    from xinstrument.calibration.plots import plot_psf
    from xinstrument.calibration.psf import extract_psf, normalized_cross_correlation

    prof = _require_profile(a.profile, "PSF")
    thin = _read(a, a.thin)
    thick = _read(a, a.thick)
    _same_size(thin, thick)
    pixel = _pixel_size(a, prof, thin, thick)
    a_img = crop(thin.mean, a.roi, a.window + 8, f"thin ({thin.label})")
    b_img = crop(thick.mean, a.roi, a.window + 8, f"thick ({thick.label})")
    res = _measure(extract_psf, a_img, b_img, window_px=a.window, iterations=a.iterations,
                   registration=a.registration, saturation_level=a.saturation_level, method=a.method)
    psf = res.psf
    reg = res.registration
    how = (f"{res.iterations} Richardson-Lucy iterations" if res.method == "rl"
           else "regularised non-negative least squares")
    print(f"PSF {psf.shape[0]}x{psf.shape[1]} px by {how}; "
          f"registration {reg.method} shift ({reg.shift_px[0]:+.2f}, {reg.shift_px[1]:+.2f}) px")
    print(f"defects: {res.defects_thin} hot/cold/clipped pixels repaired in the thin image, "
          f"{res.defects_thick} masked in the thick one; {100 * res.masked_fraction:.1f} % of the "
          "thick image left out of the fit (defects, dust)")
    print(f"shape: {res.shape.summary(pixel)}")
    reference = None
    if prof is not None:
        if prof.psf.shape == psf.shape:
            reference = prof.psf
            from xinstrument.calibration.psf import psf_shape
            before = psf_shape(prof.psf, res.shape.halo_radius_px)
            print(f"NCC with the profile's previous PSF: {normalized_cross_correlation(psf, prof.psf):.4f}; "
                  f"previous {before.summary(pixel)}")
        if a.store:
            prof.psf = psf
            source = "richardson-lucy extraction" if res.method == "rl" else "least-squares extraction"
            prof.calibration = {**prof.calibration, "psf_source": source, "psf_method": res.method,
                                "psf_date": datetime.date.today().isoformat(), "psf_thin_source": thin.label,
                                "psf_thick_source": thick.label, "psf_iterations": int(res.iterations),
                                "psf_registration": reg.method,
                                "psf_peak": float(res.shape.peak),
                                "psf_fwhm_um": float(res.shape.fwhm_px * pixel),
                                "psf_halo_energy": float(res.shape.halo_energy),
                                "psf_halo_radius_um": float(res.shape.halo_radius_px * pixel),
                                "psf_defects_thin": int(res.defects_thin),
                                "psf_defects_thick": int(res.defects_thick),
                                "psf_masked_fraction": float(res.masked_fraction)}
            prof.save(a.profile)
            print(f"profile {a.profile}: psf written")
    if a.save_npy is not None:
        a.save_npy.parent.mkdir(parents=True, exist_ok=True)
        np.save(a.save_npy, psf)
        print(f"PSF array {a.save_npy}")
    out = plot_psf(_plot_path(a, "psf"), psf, pixel,
                   f"PSF ({'RL' if res.method == 'rl' else 'least-squares'} extraction): FWHM {res.shape.fwhm_px * pixel:.2f} um, halo "
                   f"{res.shape.halo_energy:.2f}", reference, "previous PSF")
    print(f"plot {out}")
    return 0


# --------------------------------------------------------------------------------------------
# ctf
# --------------------------------------------------------------------------------------------
def bar_axis(roi: np.ndarray) -> int:
    """Axis across the bars: the one whose mean profile modulates more (1: vertical bars)."""
    return 1 if np.var(roi.mean(axis=0)) >= np.var(roi.mean(axis=1)) else 0


def _cmd_ctf(a: argparse.Namespace) -> int:
    from xinstrument.calibration.ctf import coltman_mtf, ctf_from_bar_groups, ctf_from_mtf
    from xinstrument.calibration.plots import plot_ctf

    prof = _require_profile(a.profile, "CTF")
    img_frames = _read(a, a.image)
    pixel = _pixel_size(a, prof, img_frames)
    img = crop(img_frames.mean, a.roi, 4, f"image ({img_frames.label})")
    groups = []
    for i, (f_lp, r0, c0, h, w) in enumerate(a.group):
        roi = crop(img, (int(r0), int(c0), int(h), int(w)), 3, f"bar group {i} ({f_lp:g} lp/mm)")
        groups.append((f_lp, roi, bar_axis(roi)))
    reference = None
    if a.open_roi and a.opaque_roi:
        bright = float(crop(img, a.open_roi, 1, "--open-roi").mean())
        dark = float(crop(img, a.opaque_roi, 1, "--opaque-roi").mean())
        if not bright + dark > 0 or bright <= dark:
            raise CalibrationInputError(f"reference areas: open {bright:.4g} is not brighter than opaque {dark:.4g}")
        reference = (bright - dark) / (bright + dark)
    elif a.open_roi or a.opaque_roi:
        raise CalibrationInputError("the reference contrast needs both --open-roi and --opaque-roi")
    # ctf_from_bar_groups takes one axis; measure each group with its own orientation.
    results = [_measure(ctf_from_bar_groups, [(f, roi)], pixel, reference, axis) for f, roi, axis in groups]
    order = np.argsort([r.frequency_lp_per_mm[0] for r in results])
    f = np.array([results[i].frequency_lp_per_mm[0] for i in order])
    ctf = np.array([results[i].ctf[0] for i in order])
    if np.any(np.diff(f) == 0):
        raise CalibrationInputError(f"duplicate bar-group frequencies {f.tolist()}")
    for r in results:
        for w in r.warnings or []:
            print(f"  warning: {w}")
    if f.size >= 2:
        colt = _measure(coltman_mtf, f, ctf)
        mtf_c, unc = colt.mtf, colt.uncertainty
    else:
        mtf_c, unc = ctf * np.pi / 4, np.abs(ctf) * (1 - np.pi / 4)
        print("  warning: one bar group: the Coltman MTF is the CTF times pi/4, uncertain by the "
              "unmeasured harmonics")
    print(f"CTF by {results[0].method}")
    for fi, ci, mi, ui in zip(f, ctf, mtf_c, unc, strict=True):
        print(f"  {fi:8.2f} lp/mm  CTF {ci:.3f}  MTF (Coltman) {mi:.3f} +- {ui:.3f}")
    if f.size >= 2:
        for w in colt.warnings:
            print(f"  warning: {w}")
    model = None
    if prof is not None:
        curve = prof.mtf_lr if a.screen == "thick" else prof.mtf_hr
        fm = prof.frequency_cy_per_mm
        model = (fm, ctf_from_mtf(fm, curve), f"CTF from the profile's {a.screen} MTF")
        prof.calibration = {**prof.calibration, f"ctf_{a.screen}_frequency_lp_per_mm": f.tolist(),
                            f"ctf_{a.screen}": ctf.tolist(), f"ctf_{a.screen}_source": img_frames.label,
                            f"ctf_{a.screen}_method": results[0].method,
                            f"ctf_{a.screen}_coltman_mtf": np.asarray(mtf_c).tolist(),
                            f"ctf_{a.screen}_coltman_uncertainty": np.asarray(unc).tolist()}
        prof.save(a.profile)
        print(f"profile {a.profile}: CTF of the {a.screen} screen recorded in [calibration]")
    out = plot_ctf(_plot_path(a, "ctf"), f, ctf, mtf_c, model)
    print(f"plot {out}")
    return 0


# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# fidelity
# --------------------------------------------------------------------------------------------
def _cmd_fidelity(a: argparse.Namespace) -> int:
    from xinstrument.restoration.fidelity import FidelityGuard, calibrate_tolerance
    from xinstrument.storage import ScanReader
    from xinstrument.storage.errors import StorageError

    prof = _require_profile(a.profile, "fidelity tolerance")
    if prof is None:
        raise CalibrationInputError("fidelity needs --profile (the profile whose noise model and "
                                    "forward model the guard uses)")
    if prof.nnps_lr is None or prof.nnps_mean_signal is None:
        raise CalibrationInputError(f"{a.profile}: the profile has no NNPS; measure it first "
                                    "(xinstrument calibrate nnps)")
    try:
        with ScanReader(a.scan) as r:
            meas, darks, flats = r.projections, r.darks, r.flats
            restored, meta = r.restored, r.restored_metadata
            # restorations are of the flat-field corrected frames, stored in their own stack
            corrected, corrected_meta = r.corrected, r.corrected_metadata
            averaged = r.frame_metadata.get("frames_averaged")
            keys = r.frame_metadata.get("image_key")
    except (OSError, StorageError, KeyError) as exc:
        raise CalibrationInputError(f"{a.scan}: not a readable scan file ({exc})") from exc
    if restored is None or not len(restored):
        raise CalibrationInputError(f"{a.scan}: no restored frames (record with restoration on)")
    if not len(darks) or not len(flats):
        raise CalibrationInputError(f"{a.scan}: needs the dark and flat references (image_key 2 "
                                    "and 1) to know the dose")
    level = float(np.mean(flats[-1].astype(np.float64) - darks[-1]))
    if not level > 0:
        raise CalibrationInputError(f"{a.scan}: flat minus dark is {level:.4g} ADU, not positive")
    dose = level / a.adu_per_quantum / float(prof.nnps_mean_signal)
    proj_index = np.flatnonzero(keys == 0) if keys is not None else np.arange(len(meas))
    n_avg = (averaged[proj_index] if averaged is not None else np.ones(len(meas))).astype(int)
    flat_avg = int(averaged[np.flatnonzero(keys == 1)[-1]]) if averaged is not None else None
    guard = FidelityGuard(prof, a.tile_px, a.false_alarm_rate, tolerance={}, device="cpu")
    by_method: dict[str, list[int]] = {}
    for i, (src, method) in enumerate(zip(meta["source_index"], meta["method"])):
        by_method.setdefault(method, []).append(i)
    pos = {int(f): k for k, f in enumerate(proj_index)}
    corrected_of = ({int(f): j for j, f in enumerate(corrected_meta["source_index"])}
                    if corrected is not None else {})
    print(f"{a.scan}: {len(restored)} restored frames; flat {level:.5g} ADU = "
          f"{level / a.adu_per_quantum:.5g} quanta/px (dose ratio {dose:.3f})")
    tolerances = dict(prof.fidelity_tolerance)
    for method, rows in sorted(by_method.items()):
        pairs, navg = [], []
        for i in rows:
            k = pos.get(int(meta["source_index"][i]))
            if k is None:
                raise CalibrationInputError(f"{a.scan}: restored frame {i} does not come from a "
                                            "projection")
            src = int(meta["source_index"][i])
            if corrected is not None:
                if src not in corrected_of:
                    raise CalibrationInputError(f"{a.scan}: restored frame {i} has no corrected "
                                                "frame to compare with")
                pairs.append((corrected[corrected_of[src]], restored[i]))
            else:    # files of earlier versions kept the corrected frames as projections
                pairs.append((meas[k], restored[i]))
            navg.append(max(1, int(n_avg[k])))
        out = _measure(calibrate_tolerance, guard, pairs, method=method, dose_ratio=dose,
                       frames_averaged=navg, flat_frames_averaged=flat_avg)
        tolerances[method] = round(out["tolerance"], 4)
        bound = out["held_out_rate_bound"]
        print(f"  {method:16s} tolerance {out['tolerance']:.4f} from {out['frames']} frames, "
              f"{out['tiles']} tiles (flagged {out['flagged_before']} -> {out['flagged_after']}); "
              f"held-out tile false-alarm rate <= {bound:.1e}"
              + ("" if bound <= a.false_alarm_rate else
                 f" (record more frames: {int(1 / a.false_alarm_rate)} tiles reach "
                 f"{a.false_alarm_rate:g})"))
    prof.fidelity_tolerance = tolerances
    prof.calibration = {**prof.calibration, "fidelity_date": datetime.date.today().isoformat(),
                        "fidelity_source": str(a.scan)}
    prof.save(a.profile)
    print(f"profile {a.profile}: [fidelity_tolerance] written")
    return 0


def register(sub) -> None:
    """Add ``calibrate`` with its four measurements to the ``xinstrument`` command."""
    p = sub.add_parser("calibrate", help="measure MTF, NNPS, CTF, PSF into a detector profile",
                       description="Detector characterisation (MTF, NNPS, CTF, PSF) into a profile folder.")
    csub = p.add_subparsers(dest="measurement", metavar="MEASUREMENT")
    csub.required = True

    m = csub.add_parser("mtf", help="slanted-edge MTF of the thin and thick screens; ratio and PSF")
    m.add_argument("--thin", type=Path, required=True, help="edge image through the thin (reference) screen")
    m.add_argument("--thick", type=Path, required=True, help="edge image through the thick screen")
    m.add_argument("--restored", type=Path, help="restored thick edge image (measured and plotted only)")
    _add_input_options(m)
    m.add_argument("--thick-roi", type=int, nargs=4, metavar=("ROW0", "COL0", "ROWS", "COLS"),
                   help="ROI of the thick (and restored) image when it differs from --roi")
    _add_profile_options(m, "mtf")
    new = m.add_argument_group("new profile (only when --profile has none yet)")
    new.add_argument("--scintillator", type=parse_screen, help="thick screen, e.g. 'YAG:Ce,200um'")
    new.add_argument("--reference", type=parse_screen, help="thin reference screen, e.g. 'YAG:Ce,20um'")
    new.add_argument("--detector-id", help="detector id (default: the folder name)")
    new.add_argument("--description", help="one-line description")
    new.add_argument("--magnification", type=_positive_float, help="optical magnification (lens-coupled)")
    new.add_argument("--numerical-aperture", type=_positive_float, help="objective NA (lens-coupled)")
    m.set_defaults(func=_cmd_mtf)

    n = csub.add_parser("nnps", help="NNPS (IEC 62220-1) of the thick screen's flat fields")
    n.add_argument("flats", type=Path, help="flat-field frames (HDF5 stack or multi-page TIFF)")
    _add_input_options(n, stack=True)
    n.add_argument("--adu-per-quantum", type=_positive_float, required=True,
                   help="mean ADU per absorbed X-ray quantum (dark-subtracted), to store the mean "
                   "signal in quanta/px as the restoration noise model expects")
    n.add_argument("--roi-size", type=int, default=256, help="NNPS ROI edge in px (IEC: 256)")
    n.add_argument("--keep-fixed-pattern", action="store_true",
                   help="do not remove the pixel fixed pattern (default: removed using the stack "
                   "mean, as flat-field correction removes it from images)")
    _add_profile_options(n, "nnps")
    n.set_defaults(func=_cmd_nnps)

    s = csub.add_parser("psf", help="PSF_all from a thin/thick pair (least squares or Richardson-Lucy)")
    s.add_argument("--thin", type=Path, required=True, help="image of a structured scene through the thin screen")
    s.add_argument("--thick", type=Path, required=True, help="same scene through the thick screen")
    _add_input_options(s)
    s.add_argument("--window", type=int, default=61, help="odd truncation window in px (default 61)")
    s.add_argument("--method", choices=["lsq", "rl"], default="lsq",
                   help="lsq (default): non-negative least squares with a smoothness penalty that "
                   "grows with radius, converged, robust to left-out defects; rl: Richardson-Lucy")
    s.add_argument("--iterations", type=int, default=30,
                   help="Richardson-Lucy iterations per estimate with --method rl (default 30)")
    s.add_argument("--saturation-level", type=_positive_float, default=None,
                   help="counts at which the camera clips; such pixels are left out (default: "
                   "detected as a value many pixels share at the top or bottom of the image)")
    s.add_argument("--registration", choices=["auto", "phase", "features", "none"], default="auto",
                   help="registration of the thick image onto the thin one: phase correlation, "
                        "feature matching, auto (default) or none")
    s.add_argument("--save-npy", type=Path, default=None,
                   help="also write the PSF array to this .npy file")
    s.add_argument("--no-store", dest="store", action="store_false",
                   help="with --profile: compare with the profile's PSF and plot, but keep the profile's PSF")
    _add_profile_options(s, "psf")
    s.set_defaults(func=_cmd_psf)

    c = csub.add_parser("ctf", help="CTF of bar groups (Michelson contrast) and Coltman MTF")
    c.add_argument("image", type=Path, help="image of a bar pattern / resolution chart")
    _add_input_options(c)
    c.add_argument("--group", type=float, nargs=5, action="append", required=True,
                   metavar=("LP_PER_MM", "ROW0", "COL0", "ROWS", "COLS"),
                   help="one bar group: its frequency at the scintillator and its ROI (within --roi); repeat")
    c.add_argument("--open-roi", type=int, nargs=4, metavar=("ROW0", "COL0", "ROWS", "COLS"),
                   help="large open area (for the zero-frequency reference contrast)")
    c.add_argument("--opaque-roi", type=int, nargs=4, metavar=("ROW0", "COL0", "ROWS", "COLS"),
                   help="large absorber area (for the zero-frequency reference contrast)")
    c.add_argument("--screen", choices=["thick", "thin"], default="thick", help="which screen took the image")
    _add_profile_options(c, "ctf")
    c.set_defaults(func=_cmd_ctf)

    f = csub.add_parser("fidelity", help="fidelity guard tolerance of each restoration method "
                        "from a scan of ordinary frames")
    f.add_argument("scan", type=Path, help="instrument scan file (HDF5) with corrected "
                   "projections, their restorations and the dark/flat references")
    f.add_argument("--adu-per-quantum", type=_positive_float, required=True,
                   help="mean ADU per absorbed X-ray quantum (as for nnps), for the dose")
    f.add_argument("--tile-px", type=int, default=32, help="tile edge of the guard (default 32)")
    f.add_argument("--false-alarm-rate", type=_positive_float, default=1e-3,
                   help="tile false-alarm rate of the guard (default 1e-3)")
    f.add_argument("--profile", type=Path, required=True, help="profile folder to update")
    f.set_defaults(func=_cmd_fidelity)
