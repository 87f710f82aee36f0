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


def load_scan(path: str | Path, restored: bool = False) -> TomoData:
    """Corrected projections, angles and geometry of a tomosynthesis scan file."""
    from ..acquisition.correction import FlatFieldCorrector, build_defect_map
    from ..storage import ScanReader
    from ..storage import layout as L

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
            dark_idx = np.flatnonzero(keys == L.IMAGE_KEY_DARK)
            flat_idx = np.flatnonzero(keys == L.IMAGE_KEY_FLAT)
            if dark_idx.size == 0 or flat_idx.size == 0:
                which = "dark" if dark_idx.size == 0 else "flat"
                raise UserError(f"{path}: no {which} frames stored; cannot correct the "
                                "projections")
            dark = np.mean([r.frame(int(i)) for i in dark_idx], axis=0).astype(np.float32)
            # flat series: runs of consecutive flat frames in write order
            breaks = np.flatnonzero(np.diff(flat_idx) != 1) + 1
            series = np.split(flat_idx, breaks)
            correctors = []
            for s in series:
                flat = np.mean([r.frame(int(i)) for i in s], axis=0).astype(np.float32)
                correctors.append((int(s[0]), FlatFieldCorrector(
                    dark, flat, defect_map=build_defect_map(dark, flat))))
            out = []
            for i in proj_idx:
                before = [c for start, c in correctors if start < i]
                corr = before[-1] if before else correctors[0][1]
                out.append(corr(r.frame(int(i))))
            trans = np.stack(out).astype(np.float32)
        return TomoData(trans, theta, geometry, r.complete, r.reason, restored)


def save_reconstruction(path: str | Path, recon: Reconstruction, name: str | None = None) -> str:
    """Write ``recon`` to ``/entry/recon/<name>`` of a closed scan file; return the HDF5 path."""
    from ..storage.writer import open_for_update

    name = name or recon.method
    if not name.replace("_", "").replace("-", "").isalnum():
        raise UserError(f"reconstruction name {name!r}: use letters, digits, '_' and '-'")
    try:
        f = open_for_update(Path(path))
    except OSError as exc:
        raise UserError(f"{path}: cannot open for writing the slices ({exc})") from None
    with f:
        entry = f["/entry"]
        recon_grp = entry.require_group("recon")
        recon_grp.attrs["NX_class"] = "NXcollection"
        if name in recon_grp:
            del recon_grp[name]
        g = recon_grp.create_group(name)
        g.attrs["NX_class"] = "NXdata"
        g.attrs["signal"] = "slices"
        g.attrs["axes"] = ["heights_mm", ".", "."]
        ds = g.create_dataset("slices", data=recon.slices.astype(np.float32),
                              chunks=(1, *recon.slices.shape[1:]))
        for k, v in recon.attrs().items():
            ds.attrs[k] = v if not isinstance(v, dict) else json.dumps(v)
        ds.attrs["units"] = recon.units
        h = g.create_dataset("heights_mm", data=recon.heights_mm)
        h.attrs["units"] = "mm"
        g.create_dataset("coverage", data=np.clip(recon.coverage, 0, 65535).astype(np.uint16),
                         chunks=(1, *recon.coverage.shape[1:]))
    return f"/entry/recon/{name}"


def read_reconstruction(path: str | Path, name: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(slices, heights_mm, attrs) stored by :func:`save_reconstruction`."""
    import h5py
    with h5py.File(path, "r") as f:
        key = f"/entry/recon/{name}"
        if key not in f:
            raise KeyError(f"{path}: no reconstruction {key}")
        g = f[key]
        return g["slices"][()], g["heights_mm"][()], dict(g["slices"].attrs)
