"""PNG figures of calibration results (matplotlib's Agg canvas; no GUI, no global pyplot state)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _figure(cols: int = 1, width_in: float = 6.4, height_in: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in * cols, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, cols, i + 1) for i in range(cols)]
    return fig, axes


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_mtf(
    path: Path,
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]],
    nyquist_cy_per_mm: float,
    title: str = "MTF (slanted edge)",
    note: str | None = None,
) -> Path:
    """``curves``: (label, frequency in cycles/mm, MTF); frequencies beyond 1.2 x Nyquist are cut."""
    fig, (ax,) = _figure()
    for label, f, m in curves:
        keep = f <= 1.2 * nyquist_cy_per_mm
        ax.plot(f[keep], m[keep], label=label)
    ax.axvline(nyquist_cy_per_mm, color="0.6", ls=":", lw=1, label="Nyquist")
    ax.axhline(0.5, color="0.85", lw=0.8)
    ax.axhline(0.1, color="0.85", lw=0.8)
    ax.set_xlabel("spatial frequency (cycles/mm)")
    ax.set_ylabel("MTF")
    ax.set_ylim(0, 1.05)
    ax.set_xlim(0, 1.2 * nyquist_cy_per_mm)
    ax.set_title(title)
    if note:
        ax.text(0.98, 0.6, note, transform=ax.transAxes, ha="right", fontsize=8, color="0.3")
    ax.legend()
    return _save(fig, path)


def plot_nnps(path: Path, f_cy_per_mm: np.ndarray, nnps_mm2: np.ndarray, label: str,
              mean_signal: float, signal_units: str) -> Path:
    fig, (ax,) = _figure()
    ax.semilogy(f_cy_per_mm, nnps_mm2, label=label)
    ax.set_xlabel("spatial frequency (cycles/mm)")
    ax.set_ylabel("NNPS (mm$^2$)")
    ax.set_title(f"NNPS at mean signal {mean_signal:.4g} {signal_units}")
    ax.legend()
    return _save(fig, path)


def plot_psf(path: Path, psf: np.ndarray, pixel_size_um: float, title: str,
             reference: np.ndarray | None = None, reference_label: str = "") -> Path:
    """PSF image (log scale) and its central row/column cuts, with an optional reference PSF."""
    fig, (ax0, ax1) = _figure(cols=2, width_in=5.0)
    floor = max(float(psf.max()) * 1e-4, 1e-12)
    im = ax0.imshow(np.log10(np.maximum(psf, floor)), cmap="magma", origin="upper")
    fig.colorbar(im, ax=ax0, label="log10 PSF")
    ax0.set_title(title)
    h = psf.shape[0] // 2
    x_um = (np.arange(psf.shape[0]) - h) * pixel_size_um
    ax1.semilogy(x_um, np.maximum(psf[h], floor), label="row cut")
    ax1.semilogy(x_um, np.maximum(psf[:, h], floor), label="column cut", ls="--")
    if reference is not None and reference.shape == psf.shape:
        ax1.semilogy(x_um, np.maximum(reference[h], floor), label=reference_label, color="0.4", lw=1)
    ax1.set_xlabel("distance (um at the scintillator)")
    ax1.set_ylabel("PSF")
    ax1.legend()
    return _save(fig, path)


def plot_ctf(path: Path, f_lp_per_mm: np.ndarray, ctf: np.ndarray, mtf_coltman: np.ndarray,
             model: tuple[np.ndarray, np.ndarray, str] | None = None) -> Path:
    fig, (ax,) = _figure()
    ax.plot(f_lp_per_mm, ctf, "o-", label="CTF (bar groups)")
    ax.plot(f_lp_per_mm, mtf_coltman, "s--", label="MTF from CTF (Coltman)")
    if model is not None:
        ax.plot(model[0], model[1], color="0.4", lw=1, label=model[2])
    ax.set_xlabel("spatial frequency (line pairs/mm)")
    ax.set_ylabel("contrast")
    ax.set_ylim(0, 1.1)
    ax.set_title("Contrast transfer function")
    ax.legend()
    return _save(fig, path)
