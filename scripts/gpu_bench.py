"""Real-time restoration on one GPU, measured in one command.

    python scripts/gpu_bench.py --device cuda --out gpu-bench        # the full run (< 8 min, H200)
    python scripts/gpu_bench.py --device cpu --quick --out /tmp/gb    # the same, small, on a CPU

For every restoration method in the registry (classical, learned, diffusion, plug-and-play,
super-resolution) and the fidelity check, at the frame size and batch given: first a
correctness check of the fast path against the CPU float64 reference of the same method on
fresh random frames (a method that fails it is not timed), then ms per frame (median of many
streamed batches, upload and download included), frames/s, the device-only time per frame,
peak GPU memory and, for network methods, fp32 / bf16 / fp16 with each precision's error
against fp32. Classical rows carry the rfft2 + irfft2 round trip of the same padded frame (the
transform floor) and the ratio to it. Then the acquisition pipeline fed by the simulated camera
at 100 frames/s with averaging, flat-field correction, live restoration and HDF5 recording
(dropped camera frames, frames restored, frames recorded), and the training throughput of the
shared denoiser. A method whose weights or modules are missing is listed as skipped with the
reason. The table is printed last; everything goes to ``<out>/gpu_bench.json``.

Needs only python with torch, numpy, scipy and h5py (no serial, EPICS, Qt or Dask).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch

from xinstrument.restoration import registry
from xinstrument.restoration.specialist import trained_dose_ratio
from xinstrument.restoration.stage import (
    AMP_MAX_REL_RMS,
    CLASSICAL_METHODS,
    Restorer,
    relative_rms_error,
)

# Modules that register further methods when imported (plug-and-play, data-consistent diffusion).
_METHOD_MODULES = ("xinstrument.restoration.pnp", "xinstrument.restoration.dc_diffusion")
# fast path (float32) against the float64 reference: FFT methods agree to float32 rounding;
# networks on CUDA pick other convolution algorithms (and samplers repeat them), so a wider
# bound there. TF32 is switched off for the fp32 rows: "fp32" is float32; bf16 / fp16 are the
# reduced precisions, each with its error against fp32.
FP32_TOL_CLASSICAL = 1e-4
FP32_TOL_NETWORK_CPU = 1e-4
FP32_TOL_NETWORK_CUDA = 1e-3
# a float32 reference (the shared denoiser is float32 by construction) on another device
FP32_TOL_FLOAT32_REFERENCE = 5e-3
TARGETS = {"classical": 1000.0, "one_pass": 300.0, "iterative": 100.0, "fidelity_share": 0.05,
           "camera_fps": 100.0}


class BenchError(Exception):
    """A bad request (device, size): one line, exit status 2."""


# ------------------------------------------------------------------------------ helpers
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = torch.version.cuda or "none (CPU-only build)"
            raise BenchError(f"--device {name}: no CUDA GPU is visible to torch {torch.__version__} "
                             f"(CUDA build: {build}); run with --device cpu --quick here")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BenchError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
        return dev
    raise BenchError(f"--device {name!r}: use auto, cpu or cuda[:N]")


def available_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def check_frame_size(size: int, batch: int, device: torch.device) -> None:
    """Refuse a frame size whose classical working set (padded float32 frames, their complex
    spectra and the output, about 8 frame copies per frame of the batch) cannot fit."""
    need = 8 * 4 * (size + 64) ** 2 * batch
    have = available_memory_bytes(device)
    if need > have:
        raise BenchError(f"--size {size} with --batch {batch} needs about {need / 2**30:.1f} GiB on "
                         f"{device}, {have / 2**30:.1f} GiB is free; use a smaller --size or --batch")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_frames(rng: np.random.Generator, batch: int, rows: int, cols: int) -> np.ndarray:
    """Transmission-like random frames: a smooth random field (0.2..0.95) with edges and
    quantum-like noise, so filters and networks see the value range they are built for."""
    out = np.empty((batch, rows, cols), np.float32)
    fy = np.fft.fftfreq(rows)[:, None]
    fx = np.fft.rfftfreq(cols)[None, :]
    f = np.sqrt(fy ** 2 + fx ** 2)
    shaping = 1.0 / np.maximum(f, 1.0 / max(rows, cols)) ** 1.5
    for k in range(batch):
        spec = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) * shaping
        field = np.fft.irfft2(spec, s=(rows, cols))
        field = (field - field.min()) / max(np.ptp(field), 1e-12)
        field = np.where(field > 0.55, field, 0.6 * field)            # material edges
        img = 0.2 + 0.75 * field
        out[k] = img + 0.01 * np.sqrt(img) * rng.standard_normal(img.shape)
    return out


def default_profiles() -> list:
    from xinstrument.profiles import find_profile
    out = []
    for name in ("sim-yag200-5x", "sim-gos134", "sim-yag20-5x-sr"):
        try:
            out.append(find_profile(name))
        except Exception as exc:  # noqa: BLE001 - reported per method as missing
            log(f"profile {name}: not loadable ({exc})")
    return out


def profile_for(method: str, profiles: list):
    spec = registry.get(method)
    for p in profiles:
        if spec.available_with(p):
            return p
    return None


def device_time_s(fn, device: torch.device, reps: int) -> float:
    """Median device time of ``fn()`` (CUDA events; wall time on the CPU)."""
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


class Budget:
    def __init__(self, seconds: float) -> None:
        self.t0 = time.monotonic()
        self.seconds = seconds

    @property
    def left_s(self) -> float:
        return self.seconds - (time.monotonic() - self.t0)


# ------------------------------------------------------------------------------ restoration
def make_restorer(method: str, profile, device: torch.device, precision: str, args) -> Restorer:
    steps = None
    if method == "richardson_lucy":
        steps = 8
    elif args.quick and registry.get(method).kind == "diffusion":
        steps = 2           # the CPU check of the script, not a figure of the method
    # a specialist runs only inside the dose range it was trained for; its speed is the same
    # at every dose
    dose = trained_dose_ratio(profile, method)
    return Restorer(profile, method, device=device, steps=steps, tile=args.tile,
                    overlap=args.overlap, batch=args.tile_batch, precision=precision,
                    compile_mode=args.compile_mode,
                    options=None if dose is None else {"dose_ratio": dose})


def correctness(r: Restorer, rng: np.random.Generator, args, device: torch.device,
                given: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Fast path (the streamed device path) against the CPU reference on fresh random frames
    (``given``: frames and their reference from an earlier precision of the same method).
    Networks are checked with small tiles (the same code, more seams) to keep the float64
    reference short."""
    network = r.method not in CLASSICAL_METHODS
    rows = min(args.size, args.check_px)
    cols = min(args.size, args.check_px + 32)
    x = random_frames(rng, 2, rows, cols) if given is None else given[0]
    saved = r.tile, r.overlap
    if network and r._sr is None and r._fn is None:
        r.tile, r.overlap = min(r.tile, 128), min(r.overlap, 32)
    try:
        fast = np.stack(list(r.stream([x[0], x[1]])))
        # per frame, as streamed: a sampler that seeds its noise per call (SR3) draws it per
        # call's batch, so a batched reference would draw other noise
        ref = np.stack([r.reference(f) for f in x]) if given is None else given[1]
    finally:
        r.tile, r.overlap = saved
    err = relative_rms_error(fast, ref)
    if r.reference_dtype != "float64":
        tol = FP32_TOL_FLOAT32_REFERENCE
    elif not network:
        tol = FP32_TOL_CLASSICAL
    else:
        tol = FP32_TOL_NETWORK_CUDA if device.type == "cuda" else FP32_TOL_NETWORK_CPU
    return {"shape": [2, rows, cols], "rel_rms_error": err, "tolerance": tol,
            "reference": f"cpu-{r.reference_dtype}", "passed": bool(err <= tol),
            "fast_output": fast, "input": x, "reference_output": ref}


def time_stream(r: Restorer, frames: np.ndarray, device: torch.device, args, budget: Budget) -> dict:
    """Stream the same batch repeatedly (upload, restore, download pipelined); per-batch time =
    interval between consecutive result hand-offs in the steady state."""
    b = frames.shape[0]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    r.warm_up(frames.shape[-2:], batch=b)
    sync(device)
    reps_max = args.reps
    seconds = min(args.seconds_per_case, max(budget.left_s / 4, 1.0))
    stamps = [time.perf_counter()]

    def source():
        t_end = time.perf_counter() + seconds
        for k in range(reps_max):
            if k >= args.min_reps and time.perf_counter() > t_end:
                return
            yield frames

    for _ in r.stream(source(), depth=2):
        stamps.append(time.perf_counter())
    intervals = np.diff(stamps[1:]) if len(stamps) > 2 else np.diff(stamps)
    per_batch_s = float(np.median(intervals))
    x_dev = torch.from_numpy(frames).to(device)
    # device-only time: many repetitions where they are cheap, one where a batch takes seconds
    dev_reps = 1 if per_batch_s > 1.0 else (2 if args.quick else min(10, max(3, len(intervals))))
    dev_s = device_time_s(lambda: r.restore_tensor(x_dev), device, dev_reps)
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    return {"batches": len(stamps) - 1, "ms_per_frame": 1e3 * per_batch_s / b,
            "frames_per_s": b / per_batch_s, "device_ms_per_frame": 1e3 * dev_s / b,
            "peak_gpu_mib": None if peak is None else peak / 2**20,
            "total_s": stamps[-1] - stamps[0]}


def transform_floor_ms(frames: np.ndarray, device: torch.device) -> float:
    """rfft2 + irfft2 round trip of the classical methods' padded frame, per frame."""
    from xinstrument.restoration._fourier import pad_frames
    from xinstrument.restoration.classical import DEFAULT_PAD_PX
    x = pad_frames(torch.from_numpy(frames).to(device), DEFAULT_PAD_PX, fast=True)
    shape = tuple(x.shape[-2:])
    s = device_time_s(lambda: torch.fft.irfft2(torch.fft.rfft2(x), s=shape), device, 10)
    return 1e3 * s / frames.shape[0]


def bench_method(method: str, profiles: list, device: torch.device, args, rng, budget: Budget,
                 frames: np.ndarray) -> list[dict]:
    spec = registry.get(method)
    base = {"method": method, "kind": spec.kind}
    profile = profile_for(method, profiles)
    if profile is None:
        need = [w for w, on in (("weights", spec.needs_weights), ("NNPS", spec.needs_nnps),
                                ("PSF", spec.needs_psf)) if on]
        return [{**base, "status": "skipped",
                 "reason": f"no shipped profile has what it needs ({', '.join(need)})"}]
    base["profile"] = profile.name
    network = method not in CLASSICAL_METHODS
    precisions = ["fp32", "bf16", "fp16"] if network else ["fp32"]
    rows, fp32_check = [], None
    for prec in precisions:
        row = {**base, "precision": prec}
        if budget.left_s < 10:
            rows.append({**row, "status": "skipped", "reason": "time budget spent"})
            continue
        try:
            r = make_restorer(method, profile, device, prec, args)
        except (ValueError, ImportError, OSError) as exc:
            rows.append({**row, "status": "skipped", "reason": f"{type(exc).__name__}: {exc}"})
            break
        try:
            given = None if fp32_check is None else (fp32_check[0], fp32_check[2])
            chk = correctness(r, rng, args, device, given)
            fast, chk_in, ref = chk.pop("fast_output"), chk.pop("input"), chk.pop("reference_output")
            row["check"] = chk
            if prec == "fp32":
                fp32_check = (chk_in, fast, ref)
            elif fp32_check is not None:
                # the same fresh frames as the fp32 fast path: this precision's error against it
                row["error_vs_fp32"] = relative_rms_error(fast, fp32_check[1])
                row["amp_valid"] = bool(row["error_vs_fp32"] <= AMP_MAX_REL_RMS)
                # a mixed precision is judged against fp32, not against the float64 reference
                chk["passed"] = bool(math.isfinite(row["error_vs_fp32"]))
            if not chk["passed"]:
                rows.append({**row, "status": "failed",
                             "reason": f"fast path differs from the reference: rel. RMS "
                                       f"{chk['rel_rms_error']:.2e} > {chk['tolerance']:.0e}"})
                continue
            if prec != "fp32" and device.type != "cuda":
                rows.append({**row, "status": "checked",
                             "reason": "error only: CPU autocast is a slow emulation, not timed"})
                continue
            row.update(time_stream(r, frames, device, args, budget))
            if r.fallbacks:
                row["fallbacks"] = list(r.fallbacks)
            row["status"] = "ok"
        except torch.cuda.OutOfMemoryError as exc:
            row.update(status="failed", reason=f"GPU out of memory at {frames.shape}: {exc}".split("\n")[0])
            torch.cuda.empty_cache()
        except (RuntimeError, ValueError, FloatingPointError) as exc:
            row.update(status="failed", reason=f"{type(exc).__name__}: {exc}".split("\n")[0])
            log(traceback.format_exc())
        rows.append(row)
        del r
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not network and rows and rows[0].get("status") == "ok":
        floor = transform_floor_ms(frames, device)
        rows[0]["transform_floor_ms"] = floor
        rows[0]["ratio_to_floor"] = rows[0]["device_ms_per_frame"] / floor
    return rows


def bench_graphs(method: str, rows: list[dict], profiles: list, device: torch.device, args,
                 budget: Budget, frames: np.ndarray) -> dict:
    """One network method with torch.compile "reduce-overhead" (CUDA graphs of the fixed-shape
    tile batches) at its best valid precision. Correctness: the compiled output against the
    eager output of the same precision on the timed frames (the eager path was checked against
    the float64 reference above)."""
    ok = {r["precision"]: r for r in rows if r["method"] == method and r.get("status") == "ok"}
    if "fp32" not in ok:
        return {"method": method, "precision": "graphs", "status": "skipped",
                "reason": "no checked eager fp32 row to compare with"}
    prec = next((p for p in ("fp16", "bf16") if ok.get(p, {}).get("amp_valid")), "fp32")
    row = {"method": method, "kind": registry.get(method).kind, "precision": f"{prec}+graphs",
           "profile": ok["fp32"].get("profile")}
    profile = profile_for(method, profiles)
    saved = args.compile_mode
    try:
        eager = make_restorer(method, profile, device, prec, args)
        want = eager.restore(frames[:1])
        args.compile_mode = "reduce-overhead"
        r = make_restorer(method, profile, device, prec, args)
        got = r.restore(frames[:1])                    # compiles (minutes at most, once)
        err = relative_rms_error(got, want)
        tol = 5 * AMP_MAX_REL_RMS
        row["check"] = {"rel_rms_error": err, "tolerance": tol, "reference": f"eager {prec}",
                        "passed": bool(err <= tol)}
        if err > tol:
            return {**row, "status": "failed",
                    "reason": f"compiled differs from eager: rel. RMS {err:.2e} > {tol:.0e}"}
        row.update(time_stream(r, frames, device, args, budget))
        row["fallbacks"] = list(r.fallbacks)
        row["status"] = "ok" if r._compiled else "failed"
        if not r._compiled:
            row["reason"] = "; ".join(r.fallbacks) or "compile unavailable"
    except Exception as exc:  # noqa: BLE001 - an optional optimisation; reported
        row.update(status="failed", reason=f"{type(exc).__name__}: {exc}".split("\n")[0][:200])
    finally:
        args.compile_mode = saved
    return row


# ------------------------------------------------------------------------------ fidelity
def bench_fidelity(profiles: list, device: torch.device, args, frames: np.ndarray,
                   method_rows: list[dict]) -> dict:
    """The fidelity report of one restored frame (consistency and null-space uncertainty maps;
    the consistency guard alone where the report module is absent)."""
    try:
        from xinstrument.restoration.fidelity_report import FidelityReporter as Checker
        what = "fidelity report (consistency + uncertainty)"
    except ImportError:
        from xinstrument.restoration.fidelity import FidelityGuard as Checker
        what = "fidelity guard (consistency)"
    profile = profile_for("wiener", profiles)
    if profile is None:
        return {"status": "skipped", "reason": "no profile with an NNPS"}
    r = Restorer(profile, "wiener", device=device)
    measured = frames[0]
    restored = r.restore(measured)
    guard = Checker(profile, device=device)
    guard.check(measured, restored, dose_ratio=1.0, method="wiener")      # warm-up, caches
    sync(device)
    times = []
    t_end = time.perf_counter() + args.seconds_per_case
    while len(times) < args.min_reps or (time.perf_counter() < t_end and len(times) < args.reps):
        t0 = time.perf_counter()
        res = guard.check(measured, restored, dose_ratio=1.0, method="wiener")
        sync(device)
        times.append(time.perf_counter() - t0)
    ms = 1e3 * float(np.median(times))
    shares = {row["method"] + "/" + row["precision"]: ms / row["ms_per_frame"]
              for row in method_rows if row.get("status") == "ok" and row.get("ms_per_frame")}
    return {"status": "ok", "what": what, "profile": profile.name, "ms_per_frame": ms,
            "frames_per_s": 1e3 / ms, "checks": len(times),
            "verdict": str(getattr(res, "verdict", "")), "share_of_restoration": shares}


# ------------------------------------------------------------------------------ pipeline
def bench_pipeline(profiles: list, device: torch.device, args) -> dict:
    """The live chain at the camera's rate: simulated camera (100 frames/s) -> averaging ->
    flat-field correction -> restoration -> HDF5 recording + live view."""
    from drivers.camera.simulated import SimulatedCamera
    from xinstrument.acquisition.correction import FlatFieldCorrector
    from xinstrument.acquisition.pipeline import AcquisitionPipeline, HDF5Sink, LiveView
    profile = profile_for(args.pipeline_method, profiles)
    if profile is None:
        return {"status": "skipped", "reason": f"no profile for {args.pipeline_method}"}
    size = args.pipeline_size
    rng = np.random.default_rng(args.seed)
    # camera counts: transmission x flat level + dark offset, Poisson noise; a pool of frames
    # so rendering costs a copy (the twin's renderer is not what is measured here)
    dark_adu, flat_adu = 100.0, 20000.0
    t = random_frames(rng, 1, size, size)[0].clip(0.05, 1.0)
    pool = [np.clip(rng.poisson(t * flat_adu) + dark_adu, 0, 65535).astype(np.uint16)
            for _ in range(8)]

    def render(exposure_s, roi, binning, frame_number):
        return pool[frame_number % len(pool)], {"voltage_kv": 60.0, "current_ua": 100.0}

    cam = SimulatedCamera(render, sensor_shape=(size, size), max_fps=TARGETS["camera_fps"])
    cam.exposure_s = 1.0 / TARGETS["camera_fps"]
    dark = np.full((size, size), dark_adu, np.float32)
    flat = np.full((size, size), dark_adu + flat_adu, np.float32)
    corrector = FlatFieldCorrector(dark, flat)
    restorer = make_restorer(args.pipeline_method, profile, device, "fp32", args)
    restorer.warm_up((size, size))
    n_out = max(1, int(args.pipeline_s * TARGETS["camera_fps"] / args.average))
    tmp = Path(tempfile.mkdtemp(prefix="gpu-bench-", dir=args.record_dir))
    try:
        path = tmp / "pipeline.h5"
        live = LiveView(capacity=2)
        rec = HDF5Sink(path, compression=None, metadata={"instrument": "gpu_bench"},
                       references=[(dark, 2, 1), (flat, 1, 1)])
        pipe = AcquisitionPipeline(cam, n_average=args.average, corrector=corrector,
                                   restorer=restorer, sinks=[rec, live], n_outputs=n_out,
                                   camera_buffer_frames=64)
        stats = pipe.run(timeout_s=args.pipeline_s * 10 + 60)
        from xinstrument.storage.reader import ScanReader
        with ScanReader(path) as f:
            recorded = int(f.projections.shape[0])
            restored = int(f.n_restored)
        st = stats.stages
        out = {"status": "ok", "method": args.pipeline_method, "profile": profile.name,
               "record_dir": str(tmp.parent),
               "frame_px": size, "camera_fps": TARGETS["camera_fps"], "n_average": args.average,
               "camera_frames": st["camera"].frames_out, "camera_dropped": stats.camera_dropped,
               "outputs": n_out, "recorded_frames": recorded, "recorded_restored": restored,
               "elapsed_s": stats.elapsed_s, "state": stats.state,
               "restore_stage_fps": st["restore"].frames_per_s if "restore" in st else None,
               "table": stats.table()}
        for key in ("frames_restored", "frames_not_restored", "restored_late", "restored_per_s"):
            if hasattr(stats, key):
                out[key] = getattr(stats, key)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------ training
def bench_training(device: torch.device, args) -> dict:
    try:
        from xinstrument.restoration.denoiser import train_denoiser
    except ImportError as exc:
        return {"status": "skipped", "reason": f"denoiser module missing: {exc}"}
    rng0 = np.random.default_rng(args.seed)
    pool = random_frames(rng0, 4, 256, 256)

    def patches(rng, count, patch_px):
        out = np.empty((count, patch_px, patch_px), np.float32)
        for k in range(count):
            i = int(rng.integers(len(pool)))
            y, x = (int(v) for v in rng.integers(0, 256 - patch_px, 2))
            out[k] = pool[i, y:y + patch_px, x:x + patch_px]
        return out

    # a short warm-up run (kernel selection), then the timed run
    train_denoiser(patches, steps=2, batch=args.train_batch, patch_px=args.train_patch,
                   device=str(device))
    _, res = train_denoiser(patches, steps=args.train_steps, batch=args.train_batch,
                            patch_px=args.train_patch, device=str(device))
    return {"status": "ok", "steps": res.steps, "batch": args.train_batch,
            "patch_px": args.train_patch, "seconds": res.seconds,
            "samples_per_s": res.samples_per_s}


# ------------------------------------------------------------------------------ report
def fmt(v, spec: str = ".1f", none: str = "-") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return format(v, spec)


def table(result: dict) -> str:
    lines = [(f"restoration at {result['size']}x{result['size']}, batch {result['batch']}, "
              f"{result['device_name']}"),
             (f"{'method':<16}{'prec':<6}{'ms/frame':>10}{'frames/s':>10}{'dev ms':>9}"
              f"{'GPU MiB':>9}{'err f64':>9}{'err fp32':>9}  note")]
    for row in result["methods"]:
        note = row.get("reason", "") if row.get("status") != "ok" else ""
        if row.get("ratio_to_floor"):
            note = f"floor {row['transform_floor_ms']:.2f} ms (x{row['ratio_to_floor']:.1f})"
        if row.get("status") == "ok" and "amp_valid" in row and not row["amp_valid"]:
            note = f"error above {AMP_MAX_REL_RMS:g}: auto keeps fp32"
        chk = row.get("check", {})
        lines.append(
            f"{row['method']:<16}{row.get('precision', ''):<6}{fmt(row.get('ms_per_frame'), '.2f'):>10}"
            f"{fmt(row.get('frames_per_s')):>10}{fmt(row.get('device_ms_per_frame'), '.2f'):>9}"
            f"{fmt(row.get('peak_gpu_mib'), '.0f'):>9}{fmt(chk.get('rel_rms_error'), '.1e'):>9}"
            f"{fmt(row.get('error_vs_fp32'), '.1e'):>9}  {row.get('status', '')} {note}"[:160])
    fid = result.get("fidelity", {})
    if fid.get("status") == "ok":
        shares = fid["share_of_restoration"]
        lo = min(shares.values(), default=float("nan"))
        hi = max(shares.values(), default=float("nan"))
        lines.append(f"{fid['what']}: {fid['ms_per_frame']:.2f} ms/frame = {100 * lo:.1f} % (slowest "
                     f"method) to {100 * hi:.1f} % (fastest) of the restoration time "
                     f"(target <= {100 * TARGETS['fidelity_share']:.0f} %)")
    else:
        lines.append(f"fidelity check: {fid.get('status')} {fid.get('reason', '')}")
    pipe = result.get("pipeline", {})
    if pipe.get("status") == "ok":
        lines.append(f"pipeline {pipe['frame_px']}^2 @ {pipe['camera_fps']:.0f} frames/s, "
                     f"average {pipe['n_average']}, {pipe['method']} + HDF5: camera frames "
                     f"{pipe['camera_frames']}, dropped {pipe['camera_dropped']}; outputs "
                     f"{pipe['outputs']}, recorded {pipe['recorded_frames']}, restored "
                     f"{pipe.get('frames_restored', pipe['recorded_restored'])} "
                     f"({fmt(pipe.get('restored_per_s'))} frames/s), "
                     f"{pipe.get('frames_not_restored', '-')} recorded unrestored")
    else:
        lines.append(f"pipeline: {pipe.get('status')} {pipe.get('reason', '')}")
    tr = result.get("training", {})
    if tr.get("status") == "ok":
        lines.append(f"denoiser training: {tr['samples_per_s']:.1f} samples/s "
                     f"(batch {tr['batch']}, {tr['patch_px']} px patches, {tr['steps']} steps)")
    else:
        lines.append(f"denoiser training: {tr.get('status')} {tr.get('reason', '')}")
    lines.append(f"total {result['seconds']:.0f} s; json: {result['json']}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes and few repetitions (CPU check of the whole script)")
    ap.add_argument("--out", default="gpu-bench", help="output folder for gpu_bench.json")
    ap.add_argument("--size", type=int, default=None, help="frame side in px (2048; quick 64)")
    ap.add_argument("--batch", type=int, default=None, help="frames per streamed batch (4; quick 2)")
    ap.add_argument("--methods", default=None,
                    help="comma-separated subset of the registry's methods (default all)")
    ap.add_argument("--compile-mode", default="off",
                    help="torch.compile mode for networks on CUDA: off (default), default, "
                         "reduce-overhead (CUDA graphs)")
    ap.add_argument("--graph-methods", default=None,
                    help="network methods also timed with CUDA graphs (torch.compile "
                         "reduce-overhead); default unet (none with --quick)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall-time budget of the method section (default 290; quick 300)")
    ap.add_argument("--skip", default="", help="comma-separated: pipeline, fidelity, training")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: fresh)")
    ap.add_argument("--pipeline-method", default="wiener",
                    help="restoration method of the live-pipeline section (default wiener)")
    ap.add_argument("--record-dir", default=None,
                    help="folder of the pipeline's HDF5 recording (default: the system's temp "
                         "folder; /dev/shm leaves the disk out of the figure)")
    args = ap.parse_args(argv)
    q = args.quick
    args.size = args.size or (64 if q else 2048)
    args.batch = args.batch or (2 if q else 4)
    args.budget_s = args.budget_s or (300.0 if q else 290.0)
    gm = args.graph_methods if args.graph_methods is not None else ("" if q else "unet")
    args.graph_methods = [m.strip() for m in gm.split(",") if m.strip()]
    args.graph_after_s = 330.0         # no compilation started after this (8-minute run)
    args.sections_after_s = 420.0      # no section (fidelity, pipeline, training) after this
    args.check_px = 64 if q else 160
    args.tile, args.overlap, args.tile_batch = (128, 32, 4) if q else (512, 32, 4)
    args.reps, args.min_reps = (6, 3) if q else (200, 3)
    args.seconds_per_case = 1.0 if q else 3.0
    args.pipeline_size = 128 if q else args.size
    args.pipeline_s = 2.0 if q else 5.0
    if not registry.is_registered(args.pipeline_method):
        raise BenchError(f"--pipeline-method {args.pipeline_method!r} is not a registered method")
    if args.record_dir is not None and not Path(args.record_dir).is_dir():
        raise BenchError(f"--record-dir {args.record_dir}: not a folder")
    args.average = 2
    args.train_steps, args.train_batch, args.train_patch = (3, 4, 64) if q else (60, 32, 128)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "little")
    for name in ("size", "batch"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name} must be >= 1")
    if args.size < 64:
        raise BenchError("--size must be >= 64 px")
    if args.compile_mode not in ("off", "default", "reduce-overhead", "max-autotune"):
        raise BenchError(f"--compile-mode {args.compile_mode!r}: off, default, reduce-overhead "
                         "or max-autotune")
    return args


def main(argv=None) -> int:
    t_start = time.monotonic()
    import importlib
    for mod in _METHOD_MODULES:      # they register their methods
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            log(f"{mod}: not importable ({exc}); its methods are not benchmarked")
    args = parse_args(argv)
    device = pick_device(args.device)
    check_frame_size(args.size, args.batch, device)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.compile_mode != "off" and device.type != "cuda":
        log("--compile-mode applies on CUDA only; the CPU runs eager")
    dev_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    # the targets' order: closed-form filters, one-pass networks, plug-and-play, samplers last
    # (the slowest; a spent time budget skips them, reported)
    order = ("classical", "regression", "super_resolution", "plug_and_play", "diffusion")
    methods = sorted(registry.methods(),
                     key=lambda m: order.index(k) if (k := registry.get(m).kind) in order else 99)
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in wanted if not registry.is_registered(m)]
        if unknown:
            raise BenchError(f"--methods: unknown {unknown}; registered: {', '.join(methods)}")
        methods = wanted
    log(f"gpu_bench: {dev_name}, {args.size}^2 x {args.batch}, seed {args.seed}, methods {methods}")
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rng = np.random.default_rng(args.seed)
    profiles = default_profiles()
    frames = random_frames(rng, args.batch, args.size, args.size)
    budget = Budget(args.budget_s)
    rows: list[dict] = []
    for m in methods:
        log(f"-- {m}")
        try:
            rows.extend(bench_method(m, profiles, device, args, rng, budget, frames))
        except torch.cuda.OutOfMemoryError as exc:
            rows.append({"method": m, "status": "failed", "reason": f"GPU out of memory: {exc}"[:200]})
            torch.cuda.empty_cache()
        for row in rows[-3:]:
            if row["method"] == m:
                log(f"   {row.get('precision', '')}: {row.get('status')} "
                    f"{fmt(row.get('ms_per_frame'), '.2f')} ms/frame {row.get('reason', '')}")
    for m in args.graph_methods:
        if device.type != "cuda" or m not in methods:
            continue
        if time.monotonic() - t_start > args.graph_after_s:
            rows.append({"method": m, "precision": "graphs", "status": "skipped",
                         "reason": "time budget spent"})
            continue
        log(f"-- {m} with CUDA graphs")
        rows.append(bench_graphs(m, rows, profiles, device, args, budget, frames))
    result = {"script": "scripts/gpu_bench.py", "argv": sys.argv[1:] if argv is None else list(argv),
              "device": str(device), "device_name": dev_name, "torch": torch.__version__,
              "cuda": torch.version.cuda, "python": platform.python_version(),
              "size": args.size, "batch": args.batch, "seed": args.seed,
              "quick": args.quick, "compile_mode": args.compile_mode, "tf32": False,
              "amp_max_rel_rms": AMP_MAX_REL_RMS, "targets": TARGETS, "methods": rows}
    sections = (("fidelity", lambda: bench_fidelity(profiles, device, args, frames, rows)),
                ("pipeline", lambda: bench_pipeline(profiles, device, args)),
                ("training", lambda: bench_training(device, args)))
    for name, fn in sections:
        if name in args.skip:
            result[name] = {"status": "skipped", "reason": "--skip"}
            continue
        if not args.quick and time.monotonic() - t_start > args.sections_after_s:
            result[name] = {"status": "skipped", "reason": "time budget spent (8-minute run)"}
            continue
        log(f"-- {name}")
        try:
            result[name] = fn()
        except Exception as exc:  # noqa: BLE001 - one section's failure is reported, not fatal
            log(traceback.format_exc())
            result[name] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    result["seconds"] = time.monotonic() - t_start
    path = out_dir / "gpu_bench.json"
    result["json"] = str(path)
    path.write_text(json.dumps(result, indent=1, default=float))
    print(table(result), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"gpu_bench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("gpu_bench: interrupted", file=sys.stderr)
        sys.exit(130)
