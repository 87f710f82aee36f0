"""Reading tomosynthesis scans for reconstruction and storing slice stacks in the scan file.

Projections are flat-field corrected with the dark frames and, for each projection, the flat
series taken last before it (a scan takes a new series every ``flats_every`` angles), using the
same corrector (defect map included) as live acquisition. Restored projections, when the scan
stored them, are already corrected transmission and are used as they are.

Slices go to ``/entry/recon/<name>`` (NXdata): ``slices`` [K, rows, cols] float32 with
``heights_mm`` as the axis, the grid and method parameters as attributes, and ``coverage``
(projections seeing each voxel). Writing again under the same name replaces it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..storage import ScanReader, StorageError
from ..storage import layout as L
from ..storage.stored import load_corrected
from ..storage.writer import write_slices
from .geometry import GeometryError, TomoGeometry
from .methods import Reconstruction


@dataclass
class TomoData:
    transmission: np.ndarray        # [n, rows, cols] float32
    theta_deg: np.ndarray
    geometry: TomoGeometry
    complete: bool
    reason: str | None
    restored: bool
    # per projection: exposure (s) and frames averaged as recorded (nan / 1 where not recorded)
    exposure_s: np.ndarray | None = None
    frames_averaged: np.ndarray | None = None


def load_scan(path: str | Path, restored: bool = False) -> TomoData:
    """Corrected projections, angles and geometry of a tomosynthesis scan file."""
    with ScanReader(path) as r:
        try:
            geometry = TomoGeometry.from_attrs(r.metadata)
        except GeometryError as exc:
            raise UserError(f"{path}: not a tomosynthesis scan ({exc})") from None
        md = r.frame_metadata
        keys = md["image_key"]
        proj_idx = np.flatnonzero(keys == L.IMAGE_KEY_PROJECTION)
        if proj_idx.size < 2:
            raise UserError(f"{path}: {proj_idx.size} projection(s) stored; a reconstruction "
                            "needs at least 2")
        theta = md["theta_deg"][proj_idx].astype(np.float64)
        if restored:
            if r.n_restored == 0:
                raise UserError(f"{path}: the scan stored no restored projections")
            rmd = r.restored_metadata
            order = {int(s): k for k, s in enumerate(rmd["source_index"])}
            missing = [int(i) for i in proj_idx if int(i) not in order]
            if missing:
                raise UserError(f"{path}: {len(missing)} projection(s) have no restored frame")
            data = r.restored
            trans = np.stack([data[order[int(i)]] for i in proj_idx]).astype(np.float32)
        else:
            try:
                trans = load_corrected(r).transmission
            except StorageError as exc:
                raise UserError(str(exc)) from None
        exposure = md["exposure_s"][proj_idx].astype(np.float64)
        averaged = md["frames_averaged"][proj_idx].astype(np.int64)
        return TomoData(trans, theta, geometry, r.complete, r.reason, restored, exposure, averaged)


def save_reconstruction(path: str | Path, recon: Reconstruction, name: str | None = None,
                        group_attrs: dict | None = None) -> str:
    """Write ``recon`` to ``/entry/recon/<name>`` of a closed scan file; return the HDF5 path."""
    name = name or recon.method
    if not name.replace("_", "").replace("-", "").isalnum():
        raise UserError(f"reconstruction name {name!r}: use letters, digits, '_' and '-'")
    attrs = {k: (v if not isinstance(v, dict) else json.dumps(v))
             for k, v in recon.attrs().items()}
    try:
        return write_slices(Path(path), name, recon.slices, recon.heights_mm, recon.coverage,
                            attrs=attrs, units=recon.units, group_attrs=group_attrs)
    except OSError as exc:
        raise UserError(f"{path}: cannot open for writing the slices ({exc})") from None


def read_reconstruction(path: str | Path, name: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(slices, heights_mm, attrs) stored by :func:`save_reconstruction`."""
    import h5py
    with h5py.File(path, "r") as f:
        key = f"/entry/recon/{name}"
        if key not in f:
            raise KeyError(f"{path}: no reconstruction {key}")
        g = f[key]
        return g["slices"][()], g["heights_mm"][()], dict(g["slices"].attrs)
