"""Transfer of a shift-and-add tomosynthesis slice on a lens-coupled bench (tube rotation).

With the tube at theta, a quantum absorbed at depth z of the screen lands z tan(theta) along the
tilt (x) (:func:`~.detector.oblique_parallax_shift_mm`); its light is then spread by that depth's
defocus disc and the objective's diffraction, and the focal spot's penumbra blurs everything.
The twin images each projection with exactly this complex, anisotropic OTF
(``Twin._otf_grid(theta_deg=...)``):

    OTF_theta(fx, fy) = spot(f) sum_z w(z) D_z(f) exp(-2 pi i fx s_z(theta)),   f = |(fx, fy)|

A slice registers every projection on the sample layer and averages them; the screen-depth
parallax is not registered, so the slice's transfer is the mean of the projections' OTFs:

    H(fx, fy) = spot(f) sum_z w(z) D_z(f) A_z(fx),   A_z(fx) = mean_theta exp(-2 pi i fx s_z(theta))

Along y (across the tilt) A_z = 1 and H is the normal-incidence MTF; along x the averaged ramps
lower it. For an arc symmetric about the normal (+-theta pairs) H is real.

:func:`shift_and_add_otf` is a pure function of arrays (depths, weights, per-depth radial OTFs,
angles). :func:`twin_slice_transfer` evaluates it with a twin's screen model and divides by the
reference screen's normal-incidence MTF, which the twin's fine-grid ground truth carries: the
transfer that super-resolution training applies to ground-truth images
(``xinstrument.restoration.superres.SliceTransfer``).
"""
from __future__ import annotations

import numpy as np

from . import detector as det

__all__ = ["MULTIFRAME", "MULTIFRAME_PAD_PX", "SLICE_TRANSFER_FILE", "multiframe_weights",
           "profile_multiframe_weights", "projection_noise_terms", "projection_nps",
           "projection_otfs", "shift_and_add_otf", "twin_slice_transfer", "write_slice_transfer"]

# profile folder file of the slice transfer (profile.toml [calibration] slice_transfer_file)
SLICE_TRANSFER_FILE = "slice_transfer.npz"
# Where the reference screen's MTF is below this, the ground truth holds nothing to transfer
# (beyond the objective's diffraction cutoff both screens' OTFs vanish): the ratio is set to 0.
_REFERENCE_FLOOR = 1e-4


def shift_and_add_otf(fx_cy_per_mm: np.ndarray, fy_cy_per_mm: np.ndarray,
                      f_radial_cy_per_mm: np.ndarray, depth_otfs: np.ndarray,
                      depth_weights: np.ndarray, depths_um: np.ndarray,
                      angles_deg) -> np.ndarray:
    """Complex 2-D OTF of a slice averaged over projections at ``angles_deg`` (tilt along x).

    ``depth_otfs`` [n_depths, n_f]: each depth's radial OTF on ``f_radial_cy_per_mm``
    (increasing, from 0; everything the projection's blur does apart from the parallax, e.g.
    defocus disc x diffraction x focal spot); ``depth_weights`` [n_depths]: deposited-energy
    weights (summing to 1 for a unit DC). ``fx``/``fy`` broadcast against each other (e.g.
    (1, nx) and (ny, 1)); returns their broadcast shape.
    """
    fx = np.asarray(fx_cy_per_mm, np.float64)
    fy = np.asarray(fy_cy_per_mm, np.float64)
    f1 = np.asarray(f_radial_cy_per_mm, np.float64)
    otfs = np.atleast_2d(np.asarray(depth_otfs, np.float64))
    w = np.asarray(depth_weights, np.float64).ravel()
    z = np.asarray(depths_um, np.float64).ravel()
    angles = np.atleast_1d(np.asarray(angles_deg, np.float64))
    if not (otfs.shape == (w.size, f1.size) and z.size == w.size):
        raise ValueError(f"depth_otfs {otfs.shape} must be (n_depths, n_f) = ({w.size}, {f1.size}) "
                         f"with {z.size} depths")
    if angles.size < 1 or not np.all(np.abs(angles) < 90):
        raise ValueError(f"angles must be one or more tilts within +-90 deg, got {angles_deg!r}")
    fr = np.hypot(fx, fy)
    if fr.max() > f1[-1] * (1 + 1e-9):
        raise ValueError(f"frequencies up to {fr.max():.4g} cy/mm exceed the radial table "
                         f"({f1[-1]:.4g} cy/mm)")
    shape = np.broadcast(fx, fy).shape
    out = np.zeros(shape, np.complex128)
    fx_b = np.broadcast_to(fx, shape)
    for zj, wj, oj in zip(z, w, otfs):
        if wj == 0:
            continue
        shifts = np.array([det.oblique_parallax_shift_mm(np.array([zj]), a)[0] for a in angles])
        ramp = np.mean(np.exp(-2j * np.pi * fx_b[..., None] * shifts), axis=-1)
        out += wj * np.interp(fr, f1, oj) * ramp
    return out


def twin_slice_transfer(twin, half_arc_deg: float, n_angles: int, f_max_cy_per_px: float = 2.0,
                        n_freq: int = 161) -> dict:
    """The slice transfer of ``twin``'s bench relative to its fine-grid ground truth.

    Slices of ``n_angles`` projections over +-``half_arc_deg`` of the working ("thick") screen at
    its best focus, as ``xinstrument.bench._sr_slice`` images them; the ground truth is the
    reference ("thin") screen at its best focus at normal incidence (``Twin.ground_truth``).
    Frequencies in camera (LR) cycles per pixel at the screen, 0 .. ``f_max_cy_per_px`` on both
    axes (the OTFs are even in fx and fy). Returns the frequency axes, the slice OTF (real part;
    the imaginary part of a symmetric arc is rounding), the reference MTF, their ratio
    ``transfer`` [n_fy, n_fx] and the slice's along/across-tilt MTF with the pixel aperture.
    """
    cfg = twin.config
    if cfg.kind != "lens":
        raise ValueError("slice transfer: only lens-coupled benches have a depth-resolved screen model")
    if not (half_arc_deg > 0 and n_angles >= 2):
        raise ValueError(f"a slice needs a half arc > 0 deg and >= 2 projections, got "
                         f"+-{half_arc_deg:g} deg, {n_angles}")
    st = twin.fixed_state
    kv, ua, mode = st.voltage_kv, st.current_ua, st.focus_mode
    p_mm = cfg.pixel_at_screen_um / 1000
    f_px = np.linspace(0.0, f_max_cy_per_px, n_freq)
    f_mm = f_px / p_mm
    f1 = np.linspace(0.0, np.sqrt(2) * f_mm[-1] * 1.0001, 4096)
    spot = twin._spot_mtf(f1, kv, ua, mode)
    angles = np.linspace(-half_arc_deg, half_arc_deg, int(n_angles))

    def screen(which: str, tilts) -> np.ndarray:
        z, w, per_depth = twin._depth_otfs(f1, which, twin.best_focus_um(which, kv), kv)
        return shift_and_add_otf(f_mm[None, :], f_mm[:, None], f1, per_depth * spot, w, z, tilts)

    h_slice = screen("thick", angles)
    if np.abs(h_slice.imag).max() > 1e-6:
        raise ValueError("slice OTF is not real: the arc is not symmetric about the normal")
    h_slice = h_slice.real
    reference = screen("thin", [0.0]).real
    ratio = np.where(reference > _REFERENCE_FLOOR, h_slice / np.maximum(reference, _REFERENCE_FLOOR),
                     0.0)
    pixel = np.sinc(f_px)
    return {
        "frequency_x_cy_per_px": f_px, "frequency_y_cy_per_px": f_px.copy(),
        "slice_otf": h_slice, "reference_mtf": reference, "transfer": ratio,
        "mtf_along_tilt": np.abs(h_slice[0, :]) * pixel, "mtf_across_tilt": np.abs(h_slice[:, 0]) * pixel,
        "half_arc_deg": float(half_arc_deg), "n_angles": int(n_angles),
        "pixel_at_screen_um": float(cfg.pixel_at_screen_um),
    }


def write_slice_transfer(folder, result: dict) -> None:
    """Write ``result`` (:func:`twin_slice_transfer`) as ``SLICE_TRANSFER_FILE`` in ``folder``."""
    from pathlib import Path
    path = Path(folder) / SLICE_TRANSFER_FILE
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, frequency_x_cy_per_px=result["frequency_x_cy_per_px"].astype(np.float64),
             frequency_y_cy_per_px=result["frequency_y_cy_per_px"].astype(np.float64),
             transfer=result["transfer"].astype(np.float32))
    tmp.replace(path)


# --------------------------------------------------------------------------------------------
# Per-projection models of the multi-frame slice (xinstrument.recon.multiframe): each projection
# of a tube-rotation scan reaches the camera through its own OTF, and carries its own noise.
# --------------------------------------------------------------------------------------------
def projection_noise_terms(cfg, exposure_s: float) -> dict:
    """Absorbed quanta per pixel q (open field, one projection of ``exposure_s`` s at the bench's
    current), photo-electrons per absorbed quantum g and the sensor's variance per pixel
    (read noise^2 + dark current x exposure, e-^2): the cascaded-systems terms of the micro
    bench's resolution budget (scripts/sr_resolution_budget.py)."""
    from .bench import Twin
    if not exposure_s > 0:
        raise ValueError(f"exposure must be > 0 s, got {exposure_s!r}")
    twin = Twin(cfg, sample="open")
    kv = twin.fixed_state.voltage_kv
    _, e_mean = twin._quanta_maps(kv, "thick", False)
    s = cfg.sensor
    return {"quanta_per_px": float(twin.expected_quanta("thick", exposure_s=exposure_s).mean()),
            "electrons_per_quantum": cfg.electrons_per_kev("thick") * float(e_mean.mean()),
            "sensor_variance_e2": s.read_noise_e ** 2 + s.dark_current_e_per_s * exposure_s}


def projection_otfs(twin, fx_cy_per_mm, fy_cy_per_mm, angles_deg) -> np.ndarray:
    """Complex OTF [n_angles, *broadcast(fx, fy)] of each projection of the working screen at its
    best focus (per-depth defocus and oblique parallax, focal spot; no pixel aperture), relative
    to the screen's entrance face, as the twin renders it (``Twin._otf_grid``)."""
    kv, st = twin.fixed_state.voltage_kv, twin.fixed_state
    fr = np.hypot(np.asarray(fx_cy_per_mm, np.float64), np.asarray(fy_cy_per_mm, np.float64))
    f1 = np.linspace(0.0, float(fr.max()) * 1.0001 + 1e-9, 4096)
    spot = twin._spot_mtf(f1, kv, st.current_ua, st.focus_mode)
    z, w, per_depth = twin._depth_otfs(f1, "thick", twin.best_focus_um("thick", kv), kv)
    return np.stack([shift_and_add_otf(fx_cy_per_mm, fy_cy_per_mm, f1, per_depth * spot, w, z,
                                       [float(a)]) for a in angles_deg])


def projection_nps(otfs: np.ndarray, pixel_mtf: np.ndarray, noise: dict) -> np.ndarray:
    """Relative NNPS of each flat-field corrected projection (cascaded model): the X-ray quanta
    pass the projection's own OTF (the twin blurs them with it, oblique parallax included) and
    the pixel aperture, the optical quanta and the sensor's noise are white:
    |H_i P|^2 / q + 1 / (q g) + sensor / (q g)^2  (``noise``: :func:`projection_noise_terms`)."""
    q, g = noise["quanta_per_px"], noise["electrons_per_quantum"]
    white = 1.0 / (q * g) + noise["sensor_variance_e2"] / (q * g) ** 2
    return np.abs(otfs * pixel_mtf) ** 2 / q + white


def multiframe_weights(cfg, shape, angles_deg, exposure_s: float, pad_px: int):
    """(otfs, nps) of the projections of bench ``cfg`` at ``angles_deg`` (tilt along x, the
    columns), each of ``exposure_s`` s, on the ``numpy.fft.rfft2`` grid of frames of ``shape``
    (rows, cols) padded by ``pad_px`` on every side: the inputs of
    :func:`xinstrument.recon.multiframe.combine_registered` / ``prefilter_projections``."""
    from .bench import Twin
    if cfg.kind != "lens":
        raise ValueError("per-projection OTFs: only lens-coupled benches have a depth-resolved "
                         "screen model")
    rows, cols = int(shape[0]) + 2 * pad_px, int(shape[1]) + 2 * pad_px
    p_mm = cfg.pixel_at_screen_um / 1000
    fy = np.fft.fftfreq(rows, d=p_mm)[:, None]
    fx = np.fft.rfftfreq(cols, d=p_mm)[None, :]
    h = projection_otfs(Twin(cfg, sample="open"), fx, fy, np.atleast_1d(angles_deg))
    pixel = np.sinc(fx * p_mm) * np.sinc(fy * p_mm)
    nps = projection_nps(h, pixel, projection_noise_terms(cfg, exposure_s))
    return h, nps


# profile [calibration] slice_reconstruction of weights trained on multi-frame slices
MULTIFRAME = "multiframe"
# pixels of reflected padding around each frame before the per-projection filters (their
# sub-pixel phase corrections must not wrap one edge into the other); as scripts/bench_sr.py
MULTIFRAME_PAD_PX = 16


def profile_multiframe_weights(profile, pixel_um: float, shape, angles_deg, exposure_s: float,
                               pad_px: int = MULTIFRAME_PAD_PX):
    """(otfs, nps) of :func:`multiframe_weights` for frames of ``shape`` and ``pixel_um`` (at
    the screen) from the twin bench ``profile`` was calibrated on (``[calibration] bench`` and
    its screens). Raises ``ValueError`` saying why when the profile names no twin bench with a
    depth-resolved screen (a real detector: its per-projection OTFs are not known) or its pixel
    is not the frames'."""
    from ..restoration.cli import bench_kw_for_profile
    from .bench import BENCHES
    named = (getattr(profile, "calibration", None) or {}).get("bench")
    if named not in BENCHES:
        raise ValueError(
            f"profile {profile.name!r} asks for multi-frame slices (slice_reconstruction = "
            f"\"{MULTIFRAME}\") but names no twin bench ([calibration] bench), so the "
            "per-projection OTFs of the scan are unknown; reconstruct with --method saa without "
            "--super-resolve, or use SR weights trained on shift-and-add slices")
    cfg = BENCHES[named](sensor_px=64, **bench_kw_for_profile(profile, named))
    if cfg.kind != "lens":
        raise ValueError(f"profile {profile.name!r}: twin bench {named!r} has no depth-resolved "
                         "screen, so the per-projection OTFs of the scan are unknown")
    if abs(cfg.pixel_at_screen_um - pixel_um) > 0.01 * cfg.pixel_at_screen_um:
        raise ValueError(f"frames of {pixel_um:g} um pixels; twin bench {named!r} of profile "
                         f"{profile.name!r} has {cfg.pixel_at_screen_um:g} um")
    return multiframe_weights(cfg, shape, angles_deg, exposure_s, pad_px)
