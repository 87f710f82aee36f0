"""Run per-file tasks on Dask: a local cluster of worker processes on loopback by default, or an
existing scheduler given by address. Each file is one task; transient failures are retried by
the scheduler (``retries``) and every failed attempt is reported; permanent input problems are
reported at once without retrying.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .recon import recon_file, recon_output_path_for
from .tasks import DEFAULT_BATCH_FRAMES, FileResult, InputError, output_path_for, restore_file

__all__ = [
    "EVENT_TOPIC",
    "BatchReport",
    "local_cluster",
    "run_batch",
    "run_local_loop",
    "run_recon_batch",
    "run_tasks",
]

log = logging.getLogger(__name__)

EVENT_TOPIC = "xinstrument-batch"
DEFAULT_RETRIES = 2


@dataclass
class BatchReport:
    """All files' results in input order, the cluster used, wall time."""

    results: list[FileResult]
    scheduler: str
    n_workers: int
    seconds: float
    retried_attempts: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def counts(self) -> dict[str, int]:
        out = {"done": 0, "skipped": 0, "failed": 0}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def table(self) -> str:
        """Human-readable per-file table and a summary line."""
        lines = [f"{'status':9s} {'frames':>6s} {'time_s':>8s} {'device':8s} {'worker':10s} file"]
        for r in self.results:
            lines.append(f"{r.status:9s} {r.n_frames:6d} {r.seconds:8.2f} {r.device or '-':8s} "
                         f"{str(r.worker or '-')[:10]:10s} {r.input} -> {r.output}")
            for msg in r.retries:
                lines.append(f"{'':9s} retried after: {msg}")
            if r.error:
                lines.append(f"{'':9s} error: {r.error}")
        c = self.counts()
        lines.append(f"{len(self.results)} files: {c['done']} done, {c['skipped']} skipped "
                     f"(complete outputs), {c['failed']} failed; {self.retried_attempts} "
                     f"attempts retried; {self.seconds:.2f} s on {self.n_workers} worker(s) "
                     f"at {self.scheduler}")
        lines.extend(self.notes)
        return "\n".join(lines)


def _attempt(task: Callable[..., FileResult], input_path: str, output_path: str,
             kwargs: dict[str, Any]) -> FileResult:
    """Worker-side wrapper: permanent input errors become a "failed" result (no retry); any
    other exception is logged as a scheduler event (so the client can report the retried
    attempt) and re-raised so the scheduler retries the task."""
    try:
        return task(input_path, output_path, **kwargs)
    except InputError as exc:
        return FileResult(input=input_path, output=output_path, status="failed", error=str(exc))
    except Exception as exc:
        try:
            from distributed import get_worker
            get_worker().log_event(EVENT_TOPIC, {"input": input_path,
                                                 "error": f"{type(exc).__name__}: {exc}"})
        except (ImportError, ValueError):
            pass
        raise


def _check_outputs(files: Sequence[Path], outputs: Sequence[Path]) -> None:
    resolved_in = {f.resolve() for f in files}
    seen: dict[Path, Path] = {}
    for f, o in zip(files, outputs):
        ro = o.resolve()
        if ro in resolved_in:
            raise InputError(f"output {o} of {f} would overwrite an input file; choose --out")
        if ro in seen:
            raise InputError(f"inputs {seen[ro]} and {f} would both write {o}; give them "
                             "different names or separate output folders")
        seen[ro] = f


def run_local_loop(files: Sequence[str | Path], profile: Any, method: str, *,
                   out_dir: str | Path | None = None, task: Callable[..., FileResult] = restore_file,
                   **task_kw: Any) -> BatchReport:
    """The single-process reference: the same restore task, one file after another, here."""
    paths = [Path(f) for f in files]
    outputs = [output_path_for(f, out_dir, method) for f in paths]
    _check_outputs(paths, outputs)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = [_attempt(task, str(f), str(o), dict(profile=profile, method=method, **task_kw))
               for f, o in zip(paths, outputs)]
    return BatchReport(results=results, scheduler="in-process", n_workers=1,
                       seconds=time.perf_counter() - t0)


def local_cluster(n_workers: int | None = None, threads_per_worker: int = 1):
    """A Dask LocalCluster of worker processes bound to 127.0.0.1, no dashboard; one worker
    per core by default."""
    from distributed import LocalCluster

    n = n_workers or os.cpu_count() or 1
    with warnings.catch_warnings():
        # The scheduler's small HTTP endpoint (health, no dashboard) binds to 127.0.0.1 and
        # moves to a free port when 8787 is taken; that is expected with several clusters.
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        return LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                            host="127.0.0.1", dashboard_address=None)


def run_tasks(inputs: Sequence[Path], outputs: Sequence[Path], task: Callable[..., FileResult],
              kwargs: dict[str, Any], *, scheduler: str | None = None,
              workers: int | None = None, retries: int = DEFAULT_RETRIES, client: Any = None,
              broadcast: Sequence[str] = (),
              progress: Callable[[FileResult], None] | None = None) -> BatchReport:
    """Run ``task(input, output, **kwargs)`` for every file on Dask and collect a report.

    ``broadcast`` names kwargs sent once to every worker (e.g. the profile) instead of with
    every task. ``retries`` extra attempts are granted to a task that raised; InputError is
    not raised by ``_attempt`` and so never retried.
    """
    from distributed import Client, as_completed

    if not inputs:
        raise InputError("no input files given")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    t0 = time.perf_counter()
    started_epoch_s = time.time()
    cluster = None
    own_client = client is None
    if client is None:
        if scheduler:
            try:
                client = Client(scheduler, timeout="30s")
            except OSError as exc:
                raise InputError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") \
                    from None
        else:
            cluster = local_cluster(workers)
            client = Client(cluster)
    try:
        addr = client.scheduler.address
        if not client.scheduler_info()["workers"]:
            client.wait_for_workers(1, timeout=120)
        n_workers = len(client.scheduler_info()["workers"])
        kwargs = dict(kwargs)
        for key in broadcast:
            kwargs[key] = client.scatter(kwargs[key], broadcast=True, hash=False)
        futures = {}
        for i, (f, o) in enumerate(zip(inputs, outputs)):
            fut = client.submit(_attempt, task, str(f), str(o), kwargs, retries=retries,
                                pure=False, key=f"xi-batch-{time.time_ns()}-{i}-{f.name}")
            futures[fut] = i
        results: list[FileResult] = [None] * len(inputs)  # type: ignore[list-item]
        for fut in as_completed(list(futures)):
            i = futures[fut]
            if fut.status == "error":
                exc = fut.exception()
                res = FileResult(input=str(inputs[i]), output=str(outputs[i]), status="failed",
                                 error=f"failed after {retries} retries: "
                                       f"{type(exc).__name__}: {exc}")
            else:
                res = fut.result()
            results[i] = res
            if progress is not None:
                progress(res)
        retried = 0
        by_input = {str(p): r for p, r in zip(inputs, results)}
        for stamp_s, ev in client.get_events(EVENT_TOPIC):
            if stamp_s >= started_epoch_s and isinstance(ev, dict) and ev.get("input") in by_input:
                by_input[ev["input"]].retries.append(ev["error"])
                retried += 1
        for r in results:
            if r.status == "failed" and r.retries:   # its last attempt is its error
                r.retries.pop()
                retried -= 1
        return BatchReport(results=results, scheduler=addr, n_workers=n_workers,
                           seconds=time.perf_counter() - t0, retried_attempts=retried)
    finally:
        if own_client:
            client.close()
        if cluster is not None:
            cluster.close()


def run_batch(files: Sequence[str | Path], profile: Any, method: str, *,
              out_dir: str | Path | None = None, scheduler: str | None = None,
              workers: int | None = None, retries: int = DEFAULT_RETRIES,
              client: Any = None, task: Callable[..., FileResult] = restore_file,
              batch_frames: int = DEFAULT_BATCH_FRAMES, device: str | None = None,
              restorer_options: dict[str, Any] | None = None, force: bool = False,
              frames_averaged: int | None = None, dose_ratio: float | None = None,
              progress: Callable[[FileResult], None] | None = None) -> BatchReport:
    """Restore many scan files on Dask, one task per file.

    Parameters
    ----------
    files : input scan files (never modified).
    profile, method : detector profile (loaded) and restoration method.
    out_dir : output folder; default each input's folder. Outputs are
        ``<stem>_restored-<method>.h5``.
    scheduler : address of an existing scheduler (``tcp://host:8786``); default: start a local
        cluster of ``workers`` processes (default: one per core) on 127.0.0.1.
    client : an existing ``distributed.Client`` (overrides ``scheduler``/``workers``).
    retries : extra attempts the scheduler grants a task that raised.
    task : per-file function ``(input, output, *, profile, method, ...) -> FileResult``.
    batch_frames, device, restorer_options, force : passed to the task (see ``restore_file``).
    frames_averaged, dose_ratio : the user's frame count and one exposure's dose for every
        projection of every file, instead of each file's (methods that take the dose; see
        ``restore_file``).
    progress : called in the client with each FileResult as it completes.
    """
    from ..restoration import available_methods

    usable = available_methods(profile)
    if method not in usable:
        raise InputError(f"profile {getattr(profile, 'name', '?')!r} cannot run {method!r}; "
                         f"available: {', '.join(usable) or 'none'}")
    from ..restoration.dose import check_dose_overrides
    try:
        check_dose_overrides(frames_averaged, dose_ratio)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    paths = [Path(f) for f in files]
    outputs = [output_path_for(f, out_dir, method) for f in paths]
    _check_outputs(paths, outputs)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    kwargs = {"profile": profile, "method": method, "batch_frames": batch_frames,
              "device": device, "restorer_options": restorer_options, "force": force}
    if frames_averaged is not None or dose_ratio is not None:   # tasks without them keep working
        kwargs.update(frames_averaged=frames_averaged, dose_ratio=dose_ratio)
    return run_tasks(paths, outputs, task, kwargs, scheduler=scheduler, workers=workers,
                     retries=retries, client=client, broadcast=("profile",), progress=progress)


def run_recon_batch(files: Sequence[str | Path], method: str = "sirt", *,
                    heights: str = "0:1.6:16", restored: bool = False, iterations: int = 20,
                    out_dir: str | Path | None = None, scheduler: str | None = None,
                    workers: int | None = None, retries: int = DEFAULT_RETRIES,
                    client: Any = None, device: str | None = None, force: bool = False,
                    progress: Callable[[FileResult], None] | None = None) -> BatchReport:
    """Tomosynthesis reconstruction of many scan files on Dask (see ``recon_file``); outputs
    ``<stem>_recon-<name>.h5`` are copies of the inputs with the slices added."""
    from ..recon import METHODS
    if method not in METHODS:
        raise InputError(f"unknown reconstruction method {method!r}; choose from "
                         f"{', '.join(METHODS)}")
    name = method + ("_restored" if restored else "")
    paths = [Path(f) for f in files]
    outputs = [recon_output_path_for(f, out_dir, name) for f in paths]
    _check_outputs(paths, outputs)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    kwargs = {"method": method, "heights": heights, "restored": restored,
              "iterations": iterations, "name": name, "device": device, "force": force}
    return run_tasks(paths, outputs, recon_file, kwargs, scheduler=scheduler, workers=workers,
                     retries=retries, client=client, progress=progress)
