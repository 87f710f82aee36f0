"""Batch restoration, reconstruction and distributed training beyond one machine.

- :func:`run_batch` / :func:`run_recon_batch`: many scan files on Dask (local cluster of
  loopback worker processes, or an existing scheduler), one task per file, new output files,
  retries, skip of complete outputs.
- :func:`restore_file` / :func:`recon_file`: the per-file tasks (also usable in-process).
- :func:`train_ddp`: training under torchrun with DistributedDataParallel.
"""
from .cli import main
from .recon import recon_file, recon_output_path_for
from .runner import (
    BatchReport,
    local_cluster,
    run_batch,
    run_local_loop,
    run_recon_batch,
    run_tasks,
)
from .tasks import (
    FileResult,
    InputError,
    cached_restorer,
    input_checksum,
    output_path_for,
    output_status,
    profile_fingerprint,
    restore_file,
)

__all__ = ["BatchReport", "FileResult", "InputError", "cached_restorer", "input_checksum",
           "local_cluster", "main", "output_path_for", "output_status", "profile_fingerprint",
           "recon_file", "recon_output_path_for", "restore_file", "run_batch", "run_local_loop",
           "run_recon_batch", "run_tasks", "train_ddp"]


def __getattr__(name: str):
    if name == "train_ddp":
        from .ddp import train_ddp
        return train_ddp
    raise AttributeError(name)
