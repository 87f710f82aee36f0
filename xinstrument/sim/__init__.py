"""Digital twin of the imaging bench: physics-based source, samples, screens, optics, sensor."""
from .bench import (BENCHES, BenchConfig, HRSource, Twin, WorldState, lens_bench, micro_tomo_bench,
                    panel_bench)
from .samples import make_sample

__all__ = ["BENCHES", "BenchConfig", "HRSource", "Twin", "WorldState", "lens_bench", "micro_tomo_bench",
           "panel_bench", "make_sample"]
