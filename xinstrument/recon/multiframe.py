"""Multi-frame combination of registered tomosynthesis projections of one plane.

Shift-and-add averages the projections registered on a plane. Each projection i reaches the
detector through its own OTF H_i: on a lens-coupled bench the beam crosses the screen at the tube
angle, so a quantum absorbed at depth z lands z tan(theta) aside, a blur and a shift along the tilt
that the plane's registration does not undo. The mean's transfer is |mean_i H_i|: the
projections' phases partly cancel, and at the 1 um bars of +-20 deg slices it is a quarter of the
transfer near normal incidence.

Weighting each projection's spectrum by its own transfer over its noise (the matched filter, the
numerator of the multi-frame Wiener filter) keeps every projection's information:

    Z(f) = T(f) sum_i conj(H_i) Y_i / N_i  /  sum_i |H_i|^2 / N_i

(N_i the projection's noise power spectrum). Its transfer is T, its noise power spectrum
T^2 / sum_i |H_i|^2 / N_i. :func:`noise_matched_transfer` chooses T so that this noise equals the
shift-and-add slice's, N_mean = sum_i N_i / n^2:

    T(f) = sqrt(N_mean sum_i |H_i|^2 / N_i)

By Cauchy-Schwarz T >= |mean_i H_i| at every frequency (equality when all H_i are equal, and
T(0) = 1 for projections with unit DC). T is real and >= 0: a shift common to all
projections is undone too, and so is a contrast reversal of one projection's blur. The combined slice carries the same noise as the plain
one with at least its contrast: a slice, not a deconvolution (no noise is amplified), which a
super-resolution network trained on the transfer T can take like a shift-and-add slice.
"""
from __future__ import annotations

import numpy as np

__all__ = ["combine_registered", "noise_matched_transfer", "prefilter_projections"]

# Below this fraction of the largest summed weight the frequency carries nothing (beyond the
# optics' cutoff every H_i vanishes): the combination keeps the projections' mean there.
_WEIGHT_FLOOR = 1e-9


def _checked(otfs, nps):
    h = np.asarray(otfs)
    if h.ndim < 2 or h.shape[0] < 1:
        raise ValueError(f"otfs must be [n_projections, ...] with n >= 1, got shape {h.shape}")
    if nps is None:
        n_ps = np.ones(h.shape, np.float64)
    else:
        n_ps = np.broadcast_to(np.asarray(nps, np.float64), h.shape)
        if not np.all(np.isfinite(n_ps)) or n_ps.min() <= 0:
            raise ValueError("nps must be finite and > 0 at every frequency (a noise power spectrum)")
    return h.astype(np.complex128), n_ps


def noise_matched_transfer(otfs, nps=None) -> np.ndarray:
    """Transfer T(f) of :func:`combine_registered`: the combination whose noise power spectrum
    equals the mean's. ``otfs`` [n, ...] complex OTFs of the projections; ``nps`` the same shape
    (or broadcastable), each projection's noise power spectrum on any common scale (None: equal
    white noise, T = rms of |H_i|)."""
    h, n_ps = _checked(otfs, nps)
    n = h.shape[0]
    n_mean = n_ps.sum(axis=0) / n ** 2
    return np.sqrt(n_mean * (np.abs(h) ** 2 / n_ps).sum(axis=0))


def _padded_spectra(frames, otfs, nps, pad_px: int):
    """Checked inputs: (spectra of the padded frames, H, N, frame shape)."""
    y = np.asarray(frames, np.float64)
    if y.ndim != 3 or y.shape[0] < 1:
        raise ValueError(f"frames must be [n_projections, rows, cols], got shape {y.shape}")
    if pad_px < 0 or pad_px >= min(y.shape[1:]):
        raise ValueError(f"pad_px must be in [0, {min(y.shape[1:])}), got {pad_px}")
    n, rows, cols = y.shape
    grid = (rows + 2 * pad_px, (cols + 2 * pad_px) // 2 + 1)
    h, n_ps = _checked(otfs, nps)
    if h.shape != (n,) + grid:
        raise ValueError(f"otfs must be [n_projections, rows + 2 pad, (cols + 2 pad) // 2 + 1] = "
                         f"{(n,) + grid} for these frames, got {h.shape}")
    if pad_px:
        y = np.pad(y, ((0, 0), (pad_px, pad_px), (pad_px, pad_px)), mode="reflect")
    return np.fft.rfft2(y), h, n_ps, y.shape[1:]


def _crop(z: np.ndarray, pad_px: int) -> np.ndarray:
    return z[..., pad_px:-pad_px, pad_px:-pad_px] if pad_px else z


def combine_registered(frames, otfs, nps=None, pad_px: int = 16) -> np.ndarray:
    """Noise-matched multi-frame slice of ``frames`` [n, rows, cols] (flat-field corrected
    projections registered on one plane).

    ``otfs`` [n, rows + 2 pad, (cols + 2 pad) // 2 + 1]: each projection's complex OTF on the
    ``numpy.fft.rfft2`` grid of the padded frame (x = columns), i.e. the blur and sub-pixel shift
    the registration left; ``nps``: each projection's noise power spectrum on that grid (None:
    equal white noise). The frames are padded by ``pad_px`` reflected pixels so that the
    sub-pixel phase corrections do not wrap the far edge into the near one. Returns the combined
    slice [rows, cols] (float32) with transfer :func:`noise_matched_transfer` and the noise of
    the frames' mean."""
    spectra, h, n_ps, padded = _padded_spectra(frames, otfs, nps, pad_px)
    num = (np.conj(h) / n_ps * spectra).sum(axis=0)
    den = (np.abs(h) ** 2 / n_ps).sum(axis=0)
    t = noise_matched_transfer(h, n_ps)
    ok = den > _WEIGHT_FLOOR * den.max()
    out = np.where(ok, t * num / np.where(ok, den, 1.0), spectra.mean(axis=0))
    z = _crop(np.fft.irfft2(out, s=padded), pad_px)
    return z.astype(np.float32)


def prefilter_projections(frames, otfs, nps=None, pad_px: int = 16) -> np.ndarray:
    """Each projection of ``frames`` [n, rows, cols] filtered by its share of
    :func:`combine_registered`: W_i Y_i with

        W_i(f) = n T(f) conj(H_i) / N_i  /  sum_j |H_j|^2 / N_j

    (W_i = 1 where the summed weight is below the floor), so that the mean of the returned frames
    [n, rows, cols] (float32) is the multi-frame slice. ``H_i`` is the blur between the plane
    and the detector (the screen, the optics, the focal spot), the same for every plane of the
    sample: filtering the projections before a shift-and-add reconstruction makes every slice it
    reconstructs a multi-frame slice (up to the interpolation of its registration). Arguments
    as :func:`combine_registered`, whose checks apply."""
    spectra, h, n_ps, padded = _padded_spectra(frames, otfs, nps, pad_px)
    n = h.shape[0]
    den = (np.abs(h) ** 2 / n_ps).sum(axis=0)
    t = noise_matched_transfer(h, n_ps)
    ok = den > _WEIGHT_FLOOR * den.max()
    w = np.where(ok, n * t * np.conj(h) / n_ps / np.where(ok, den, 1.0), 1.0)
    z = _crop(np.fft.irfft2(w * spectra, s=padded), pad_px)
    return z.astype(np.float32)
