"""`xinstrument batch restore|recon FILES...`: many scan files on a Dask cluster."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cliargs import non_negative_int, positive_float, positive_int, torch_device
from ..errors import UserError

__all__ = ["build_parser", "main", "register"]

EXIT_FAILED_FILES = 1


def _report(rep) -> int:
    print(rep.table())
    return 0 if rep.ok else EXIT_FAILED_FILES


def _progress(res) -> None:
    print(f"  {res.status:8s} {res.input}" + (f": {res.error}" if res.error else ""),
          file=sys.stderr, flush=True)


def _cmd_restore(a: argparse.Namespace) -> int:
    from ..profiles import find_profile
    from .runner import run_batch
    from .tasks import InputError
    profile = find_profile(a.profile)
    opts = {"steps": a.steps} if a.steps is not None else None
    try:
        rep = run_batch(a.files, profile, a.method, out_dir=a.out or Path.cwd(), scheduler=a.scheduler,
                        workers=a.workers, retries=a.retries, batch_frames=a.batch_frames,
                        device=a.device, restorer_options=opts, force=a.force,
                        frames_averaged=a.frames_averaged, dose_ratio=a.dose_ratio,
                        progress=_progress)
    except InputError as exc:
        raise UserError(str(exc)) from None
    return _report(rep)


def _cmd_recon(a: argparse.Namespace) -> int:
    from .runner import run_recon_batch
    from .tasks import InputError
    try:
        rep = run_recon_batch(a.files, a.method, heights=a.heights, restored=a.restored,
                              iterations=a.iterations, out_dir=a.out or Path.cwd(), scheduler=a.scheduler,
                              workers=a.workers, retries=a.retries, device=a.device,
                              force=a.force, progress=_progress)
    except InputError as exc:
        raise UserError(str(exc)) from None
    return _report(rep)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", type=Path, metavar="FILE.h5", help="input scan files "
                   "(never modified)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: the working directory); outputs are "
                        "<stem>_restored-<method>.h5 or <stem>_recon-<method>.h5")
    p.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="existing Dask scheduler; default: a local cluster on 127.0.0.1")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="local cluster only: worker processes (default: one per core)")
    p.add_argument("--retries", type=non_negative_int, default=2,
                   help="extra attempts for a task that fails (default 2)")
    p.add_argument("--device", type=torch_device, default=None,
                   help="torch device on the workers (default: each worker's GPU if it has "
                        "one, else CPU)")
    p.add_argument("--force", action="store_true",
                   help="redo files whose complete output already exists")


def add_dose_options(p: argparse.ArgumentParser) -> None:
    """--frames-averaged and --dose-ratio of ``restore`` and ``batch restore``."""
    p.add_argument("--frames-averaged", type=positive_int, default=None, metavar="N",
                   help="exposures averaged into every projection, instead of the file's "
                        "frames_averaged (wiener, pnp_hqs, dc_diffusion, specialist_pcb: the "
                        "frame's dose)")
    p.add_argument("--dose-ratio", type=positive_float, default=None, metavar="R",
                   help="one exposure's dose: detected quanta per pixel of its flat over the "
                        "profile's nnps_mean_signal, for every projection, instead of the one "
                        "measured from the flat that corrected it (profiles with "
                        "nnps_adu_per_quantum) or the digital twin's at the file's exposure, "
                        "voltage and current (wiener, pnp_hqs, dc_diffusion, specialist_pcb); "
                        "multiplied by "
                        "the frames averaged")


def register(sub) -> None:
    from ..restoration.stage import METHODS
    from .tasks import DEFAULT_BATCH_FRAMES
    batch = sub.add_parser("batch", help="restore or reconstruct many scan files on Dask",
                           description="Run restoration or tomosynthesis reconstruction over "
                           "many HDF5 scan files on a local Dask cluster or an existing "
                           "scheduler; writes new files, skips complete outputs, retries "
                           "failed tasks. Exit status 1 when any file failed.")
    bsub = batch.add_subparsers(dest="batch_command", metavar="restore|recon")
    bsub.required = True

    p = bsub.add_parser("restore", help="restore the projections of many scan files")
    _common(p)
    p.add_argument("--profile", required=True, help="detector profile name or folder")
    p.add_argument("--method", required=True, choices=list(METHODS),
                   help="restoration method of the profile")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="sampler steps (diffusion) or RL iterations; default per method")
    p.add_argument("--batch-frames", type=positive_int, default=DEFAULT_BATCH_FRAMES,
                   help=f"frames per restoration call (default {DEFAULT_BATCH_FRAMES})")
    add_dose_options(p)
    p.set_defaults(func=_cmd_restore)

    p = bsub.add_parser("recon", help="tomosynthesis reconstruction of many scan files")
    _common(p)
    p.add_argument("--method", choices=["saa", "fbp", "sirt"], default="sirt",
                   help="shift-and-add, limited-arc filtered back-projection, SIRT (default)")
    p.add_argument("--heights", default="0:1.6:16",
                   help="slice heights in mm: 'h1,h2,...' or 'start:stop:count'")
    p.add_argument("--restored", action="store_true",
                   help="reconstruct from the restored projections stored in the files")
    p.add_argument("--iterations", type=positive_int, default=20, help="SIRT iterations")
    p.set_defaults(func=_cmd_recon)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xinstrument")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (same behaviour as ``xinstrument batch ...``)."""
    from ..profiles import ProfileError
    from ..storage import StorageError
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ProfileError, StorageError) as exc:
        print(f"xinstrument batch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
