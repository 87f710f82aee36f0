"""High-resolution training images for super-resolution from the digital twin.

The restoration package is pure (it never imports the twin): its trainers take an HR source as
an argument, and this module is the twin's source of noise-free thin-screen ground truth on a
finer pixel grid than the bench camera.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from xinstrument.restoration.superres import fine_grid_config, sr_method

from .bench import BENCHES, Twin
from .samples import make_sample

__all__ = ["twin_hr_source"]


def twin_hr_source(factor: int, bench: str = "lens-yag",
                   samples: Sequence[str] = ("pcb", "pcb", "chart", "bars", "edge"),
                   bench_kw: dict | None = None,
                   ) -> Callable[[np.random.Generator, int, int], np.ndarray]:
    """HR source ``(rng, count, patch_px) -> (count, patch_px, patch_px)``: noise-free twin ground
    truth (thin screen, thick spectrum) on a ``factor`` x finer pixel grid than the bench camera,
    of random samples at a random tube voltage and field scale (each image its own small twin).
    ``bench_kw`` goes to the bench factory (e.g. ``thick_um``, ``thin_um`` of a profile whose
    screens differ from the bench's defaults)."""
    sr_method(factor)
    if bench not in BENCHES:
        raise ValueError(f"unknown bench {bench!r}; choose from {sorted(BENCHES)}")

    def source(rng: np.random.Generator, count: int, patch_px: int) -> np.ndarray:
        if patch_px % factor or patch_px < 16:
            raise ValueError(f"HR patch {patch_px} px must be >= 16 and a multiple of {factor}")
        lr_cfg = BENCHES[bench](sensor_px=patch_px // factor, **(bench_kw or {}))
        cfg = fine_grid_config(lr_cfg, factor)
        out = np.empty((count, patch_px, patch_px), np.float32)
        for i in range(count):
            name = samples[int(rng.integers(len(samples)))]
            twin = Twin(cfg, sample="open", seed=int(rng.integers(2**31)))
            lo, hi = (40.0, 60.0) if cfg.kind == "lens" else (60.0, 80.0)
            twin.set_state(voltage_kv=float(rng.uniform(lo, hi)))
            twin.sample = make_sample(name, cfg.fov_mm * float(rng.uniform(1.0, 3.0)), int(rng.integers(2**31)))
            out[i] = twin.ground_truth()
        return out

    return source
