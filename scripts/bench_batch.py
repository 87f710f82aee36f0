"""Batch restoration benchmark: Dask local cluster (1 and 2 worker processes on 127.0.0.1)
against the single-process loop, on twin scan files, measured in the same run.

Prints wall times, speed-up over the loop, overhead per task (cluster wall time minus the
tasks' own compute time, per task, with 1 worker; and empty-task round trips) and whether the
restored frames are bit-identical to the single-process path for deterministic methods.

    python scripts/bench_batch.py [--files 8] [--frames 4] [--px 512] [--method wiener]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_files(folder: Path, n_files: int, n_frames: int, px: int) -> list[Path]:
    from xinstrument.sim import Twin, lens_bench
    from xinstrument.storage import ScanWriter

    bench = lens_bench(px)
    files = []
    for seed in range(n_files):
        twin = Twin(bench, sample="pcb", seed=seed)
        base = twin.noise_free_transmission()
        rng = np.random.default_rng(seed)
        path = folder / f"scan{seed:03d}.h5"
        with ScanWriter(path, (px, px), "float32", swmr=False,
                        metadata={"corrected": True, "pixel_size_um": bench.pixel_at_screen_um}) as w:
            for _ in range(n_frames):
                w.append(base + np.float32(0.01) * rng.standard_normal(base.shape, np.float32))
        files.append(path)
    return files


# the synthetic files carry no exposure / current / frame count: say their dose as a user would
# (one exposure at the profile's calibration dose), so the dose-aware methods can run
DOSE = {"dose_ratio": 1.0, "frames_averaged": 1}


def _noop(x):
    return x


def main() -> None:
    from distributed import Client

    from xinstrument.batch import local_cluster, run_batch, run_local_loop
    from xinstrument.profiles import find_profile
    from xinstrument.storage import ScanReader

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--frames", type=int, default=4, help="projections per file")
    ap.add_argument("--px", type=int, default=512, help="frame side, px")
    ap.add_argument("--method", default="wiener")
    ap.add_argument("--profile", default="sim-yag200-5x")
    a = ap.parse_args()
    profile = find_profile(a.profile)
    tmp = Path(tempfile.mkdtemp(prefix="xi-bench-batch-"))
    files = make_files(tmp, a.files, a.frames, a.px)
    print(f"{a.files} files x {a.frames} frames of {a.px}x{a.px} px, method {a.method}, "
          f"{os.cpu_count()} cores, folder {tmp}")

    # warm the in-process path once (imports, FFT plans), then time it
    run_local_loop(files[:1], profile, a.method, out_dir=tmp / "warm", **DOSE)
    loop = run_local_loop(files, profile, a.method, out_dir=tmp / "loop", **DOSE)
    ref = {}
    for r in loop.results:
        with ScanReader(r.output) as s:
            ref[r.input] = s.restored
    rows = [(f"loop, {torch.get_num_threads()} torch thr", loop.seconds, 1.0, float("nan"),
             float("nan"), "reference")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # what one Dask worker gets (it sets OMP_NUM_THREADS=1)
    loop1 = run_local_loop(files, profile, a.method, out_dir=tmp / "loop1", **DOSE)
    torch.set_num_threads(threads)
    same1 = all(np.array_equal(ScanReader(r.output).restored, ref[r.input]) for r in loop1.results)
    rows.append(("loop, 1 torch thread", loop1.seconds, loop.seconds / loop1.seconds,
                 float("nan"), float("nan"), "bit-identical" if same1 else "DIFFERS"))
    for n in (1, 2):
        cluster = local_cluster(n)
        client = Client(cluster)
        try:
            t0 = time.perf_counter()
            client.gather(client.map(_noop, range(50), pure=False))
            roundtrip_s = (time.perf_counter() - t0) / 50
            run_batch(files[:n], profile, a.method, out_dir=tmp / f"warm{n}", client=client,
                      **DOSE)
            rep = run_batch(files, profile, a.method, out_dir=tmp / f"dask{n}", client=client,
                            **DOSE)
        finally:
            client.close()
            cluster.close()
        assert rep.ok, rep.table()
        busy_s = sum(r.seconds for r in rep.results)
        overhead_s = (rep.seconds * n - busy_s) / len(files)
        same = True
        max_diff = 0.0
        for r in rep.results:
            with ScanReader(r.output) as s:
                d = s.restored
            same &= bool(np.array_equal(d, ref[r.input]))
            max_diff = max(max_diff, float(np.abs(d - ref[r.input]).max()))
        rows.append((f"dask, {n} worker(s)", rep.seconds, loop.seconds / rep.seconds, overhead_s,
                     roundtrip_s, "bit-identical" if same else f"DIFFERS (max {max_diff:.3g})"))
    print(f"\n{'path':22s} {'wall_s':>8s} {'speed-up':>9s} {'overhead/task_s':>16s} "
          f"{'empty task_s':>13s}  result vs loop")
    for name, wall, sp, ov, rt, same in rows:
        print(f"{name:22s} {wall:8.2f} {sp:9.2f} {ov:16.3f} {rt:13.4f}  {same}")
    print(f"\nspeed-up of 2 workers over the 1-thread loop (per-core scaling): "
          f"{loop1.seconds / rows[-1][1]:.2f}")
    print("\noverhead/task: (wall x workers - sum of task compute) / tasks: scheduling, "
          "result transfer and idle time at the end; empty task: a no-op round trip.")


if __name__ == "__main__":
    main()
