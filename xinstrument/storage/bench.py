"""Write-speed benchmark: ScanWriter against the raw disk, measured in the same run.

Run ``python -m xinstrument.storage.bench [folder] [--frames N] [--size PX]``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from . import layout as L
from .writer import DEFAULT_COMPRESSION, ScanWriter

COMPRESSIONS: tuple[str | None, ...] = (None, "lzf", "gzip")


def _scmos_like(frame_shape: tuple[int, int], n_distinct: int, dtype: np.dtype,
                seed: int = 0) -> list[np.ndarray]:
    """Frames with the statistics of a flat-ish sCMOS exposure: offset + shot + read noise.

    Compressibility of real detector data comes from its noise, so random-but-realistic frames
    measure compression honestly (zeros or ramps would flatter every codec).
    """
    rng = np.random.default_rng(seed)
    rows, cols = frame_shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    # Smooth illumination falloff like an X-ray cone beam on a scintillator.
    r2 = ((yy - rows / 2) ** 2 + (xx - cols / 2) ** 2) / (0.6 * max(rows, cols)) ** 2
    signal_e = 8000.0 * np.exp(-r2)
    frames = []
    for _ in range(n_distinct):
        electrons = rng.poisson(signal_e) + rng.normal(0.0, 1.6, frame_shape)
        adu = 100.0 + electrons / 0.46  # offset 100 ADU, conversion gain 0.46 e-/ADU
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            frames.append(np.clip(np.rint(adu), info.min, info.max).astype(dtype))
        else:
            frames.append(adu.astype(dtype))
    return frames


def _raw_write(path: Path, frames: list[np.ndarray], n_frames: int) -> float:
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        for i in range(n_frames):
            frames[i % len(frames)].tofile(fh)
        fh.flush()
        os.fsync(fh.fileno())
    return time.perf_counter() - t0


def _scan_write(path: Path, frames: list[np.ndarray], n_frames: int,
                compression: str | None) -> float:
    t0 = time.perf_counter()
    with ScanWriter(path, frames[0].shape, frames[0].dtype, compression=compression,
                    metadata={"title": "write benchmark"}) as w:
        for i in range(n_frames):
            w.append(frames[i % len(frames)], image_key=0, theta_deg=float(i))
    return time.perf_counter() - t0  # close() includes fsync


def benchmark_write(folder: str | Path, frame_shape: tuple[int, int] = (2048, 2048),
                    n_frames: int = 32, dtype: str = "uint16",
                    compressions: tuple[str | None, ...] = COMPRESSIONS) -> dict:
    """Measure ScanWriter MB/s against raw ``ndarray.tofile`` + fsync of the same bytes.

    Files are written in ``folder`` (the disk under test) and deleted afterwards. The raw
    reference is measured before and after the ScanWriter runs and the faster one is used, so
    a disk that warms up or slows down does not flatter the writer.

    Returns
    -------
    dict
        ``raw_mb_s``, ``bytes``, ``frame_shape``, ``n_frames``, ``dtype``, ``default`` and
        ``results``: ``{name: {"mb_s", "ratio_to_raw", "compression_ratio"}}`` with ``name``
        ``"none"``, ``"lzf"``, ``"gzip"``.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"benchmark folder {folder} does not exist")
    dt = np.dtype(dtype)
    frames = _scmos_like(tuple(frame_shape), min(n_frames, 4), dt)
    n_bytes = frames[0].nbytes * n_frames
    mb = n_bytes / 1e6
    with tempfile.TemporaryDirectory(dir=folder, prefix="xi-bench-") as tmp:
        tmpd = Path(tmp)
        raw = tmpd / "raw.bin"
        raw_s = [_raw_write(raw, frames, n_frames)]
        raw.unlink()
        results = {}
        for comp in compressions:
            name = comp or "none"
            path = tmpd / f"scan_{name}.h5"
            seconds = _scan_write(path, frames, n_frames, comp)
            with h5py.File(path, "r") as f:
                stored = f[L.DATA].id.get_storage_size()
            results[name] = {"seconds": seconds, "file_bytes": path.stat().st_size,
                             "data_bytes": stored}
            path.unlink()
        raw_s.append(_raw_write(raw, frames, n_frames))
        raw.unlink()
    raw_mb_s = mb / min(raw_s)
    for r in results.values():
        r["mb_s"] = mb / r["seconds"]
        r["ratio_to_raw"] = r["mb_s"] / raw_mb_s
        r["compression_ratio"] = n_bytes / r["data_bytes"]
    return {"raw_mb_s": raw_mb_s, "bytes": n_bytes, "frame_shape": tuple(frame_shape),
            "n_frames": n_frames, "dtype": str(dt), "default": DEFAULT_COMPRESSION or "none",
            "results": results}


def format_table(result: dict) -> str:
    rows, cols = result["frame_shape"]
    lines = [(f"ScanWriter write speed, {result['n_frames']} frames {rows}x{cols} "
              f"{result['dtype']} ({result['bytes'] / 1e6:.0f} MB), "
              f"default = {result['default']}"),
             f"{'writer':<12}{'MB/s':>10}{'vs raw':>10}{'compr.':>10}",
             f"{'raw tofile':<12}{result['raw_mb_s']:>10.0f}{1.0:>10.2f}{1.0:>10.2f}"]
    for name, r in result["results"].items():
        lines.append(f"{'h5 ' + name:<12}{r['mb_s']:>10.0f}{r['ratio_to_raw']:>10.2f}"
                     f"{r['compression_ratio']:>10.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("folder", nargs="?", default=".")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--size", type=int, default=2048, help="frame edge in pixels")
    ap.add_argument("--dtype", default="uint16")
    args = ap.parse_args(argv)
    print(format_table(benchmark_write(args.folder, (args.size, args.size), args.frames,
                                       args.dtype)))


if __name__ == "__main__":
    main()
