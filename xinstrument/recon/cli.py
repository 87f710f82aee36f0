"""``xinstrument recon FILE --method saa|fbp|sirt --heights ...``: slices into the scan file."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError


def run_recon(path: Path, method: str, heights: str, restored: bool = False,
              iterations: int = 20, name: str | None = None, device: str | None = None) -> str:
    from ..progress import ProgressBar
    from .io import load_scan, save_reconstruction
    from .methods import ReconError, parse_heights, reconstruct
    try:
        h = parse_heights(heights)
        data = load_scan(path, restored=restored)
        bar = ProgressBar(f"recon {method}")
        rec = reconstruct(data.transmission, data.theta_deg, data.geometry, h, method,
                          iterations=iterations, device=device,
                          progress=lambda d, n: bar.update(d / n))
        bar.close()
    except ReconError as exc:
        raise UserError(str(exc)) from None
    name = name or (method + ("_restored" if restored else ""))
    where = save_reconstruction(path, rec, name)
    note = "" if data.complete else f" (scan incomplete: {data.reason})"
    print(f"{method}: {rec.slices.shape[0]} slices of {rec.slices.shape[1]}x"
          f"{rec.slices.shape[2]} from {rec.n_projections} projections in {rec.elapsed_s:.1f} s"
          f" -> {path}:{where}{note}")
    return where


def _cmd(a: argparse.Namespace) -> int:
    if not a.file.exists():
        raise UserError(f"{a.file} does not exist")
    for m in a.method:
        run_recon(a.file, m, a.heights, a.restored, a.iterations, device=a.device)
    return 0


def register(sub) -> None:
    p = sub.add_parser("recon", help="tomosynthesis reconstruction of a scan file",
                       description="Reconstruct slices at given heights above the sample base "
                                   "from a tomosynthesis scan file and store them in it under "
                                   "/entry/recon/<method>.")
    p.add_argument("file", type=Path, help="scan file written by `xinstrument scan tomo`")
    p.add_argument("--method", choices=["saa", "fbp", "sirt"], nargs="+", default=["sirt"],
                   help="shift-and-add, limited-arc filtered back-projection, SIRT (default)")
    p.add_argument("--heights", default="0:1.6:16",
                   help="slice heights in mm above the sample base: 'h1,h2,...' or "
                        "'start:stop:count' (default 0:1.6:16)")
    p.add_argument("--restored", action="store_true",
                   help="use the restored projections stored by the scan")
    p.add_argument("--iterations", type=int, default=20, help="SIRT iterations (default 20)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    p.set_defaults(func=_cmd)
