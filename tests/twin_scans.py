"""Raw scan files for tests, written by the product's writer as an acquisition would."""
from __future__ import annotations

import numpy as np

from xinstrument.recon import TomoGeometry
from xinstrument.storage import ScanWriter


def write_twin_scan(path, bench, theta_deg, transmissions, exposure_s: float | None = None):
    """A raw scan of ``transmissions`` (one per angle of ``theta_deg``) on ``bench``: one dark
    (100 ADU), one flat (4100 ADU), the projections between them; ``exposure_s`` recorded on
    every frame when given."""
    px = transmissions.shape[-1]
    geom = TomoGeometry.from_bench(bench)
    dark, flat = np.full((px, px), 100.0, np.float32), np.full((px, px), 4100.0, np.float32)
    exp = {} if exposure_s is None else {"exposure_s": exposure_s}
    with ScanWriter(path, (px, px), "float32", metadata={"pixel_size_um": bench.pixel_at_screen_um,
                                                         **geom.to_attrs()}) as w:
        w.append(dark, image_key=2, **exp)
        w.append(flat, image_key=1, **exp)
        for t, p in zip(theta_deg, transmissions):
            w.append(dark + p * (flat - dark), image_key=0, theta_deg=float(t), **exp)
    return path
