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
                   bench_kw: dict | None = None, families: Sequence[str] | None = None,
                   ) -> Callable[[np.random.Generator, int, int], np.ndarray]:
    """HR source ``(rng, count, patch_px) -> (count, patch_px, patch_px)``: noise-free twin ground
    truth (thin screen, thick spectrum) on a ``factor`` x finer pixel grid than the bench camera,
    of random samples at a random tube voltage and field scale (each image its own small twin).
    ``bench_kw`` goes to the bench factory (e.g. ``thick_um``, ``thin_um`` of a profile whose
    screens differ from the bench's defaults). ``families``: draw the samples from these sample
    families (:mod:`.families`; training families only, seeds below its evaluation block)
    instead of ``samples``."""
    sr_method(factor)
    if bench not in BENCHES:
        raise ValueError(f"unknown bench {bench!r}; choose from {sorted(BENCHES)}")
    if families is not None:
        from .families import EVAL_SEED_BASE, check_training_families, family_sample
        families = check_training_families(families)

    def source(rng: np.random.Generator, count: int, patch_px: int) -> np.ndarray:
        if patch_px % factor or patch_px < 16:
            raise ValueError(f"HR patch {patch_px} px must be >= 16 and a multiple of {factor}")
        lr_cfg = BENCHES[bench](sensor_px=patch_px // factor, **(bench_kw or {}))
        cfg = fine_grid_config(lr_cfg, factor)
        out = np.empty((count, patch_px, patch_px), np.float32)
        for i in range(count):
            twin = Twin(cfg, sample="open", seed=int(rng.integers(2**31)))
            lo, hi = (40.0, 60.0) if cfg.kind == "lens" else (60.0, 80.0)
            twin.set_state(voltage_kv=float(rng.uniform(lo, hi)))
            if families is None:
                name = samples[int(rng.integers(len(samples)))]
                twin.sample = make_sample(name, cfg.fov_mm * float(rng.uniform(1.0, 3.0)),
                                          int(rng.integers(2**31)))
            else:
                name = families[int(rng.integers(len(families)))]
                # feature sizes are drawn in pixels of the LR camera, so the fine grid sees
                # detail down to half a camera pixel
                twin.sample = family_sample(name, cfg.fov_mm, lr_cfg.pixel_at_object_um / 1000,
                                            int(rng.integers(EVAL_SEED_BASE)),
                                            _absorbed_mean_kev(twin))
            out[i] = twin.ground_truth()
        return out

    return source


def _absorbed_mean_kev(twin: Twin) -> float:
    """Mean energy of the quanta the thick screen absorbs (the families choose materials for
    contrast at it)."""
    e, fluence = twin.spectrum(twin.fixed_state.voltage_kv)
    w = fluence * twin.config.screen("thick").absorption(e)
    return float((w * e).sum() / w.sum())
