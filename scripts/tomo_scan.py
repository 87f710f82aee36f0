"""Example: a PCB tomosynthesis scan on the simulated bench, reconstructed three ways and scored.

    python scripts/tomo_scan.py                 # scan + per-layer correlation table
    python scripts/tomo_scan.py --speed         # also: reconstruction speed, scaled to
                                                #   41 projections of 2048x2048 -> 64 slices

What a scientist writes: connect, warm up, one call for the scan, one per reconstruction. The
scoring part uses the twin's ground truth (each copper layer's own pattern), which a real bench
does not have.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from xinstrument.config import InstrumentConfig
from xinstrument.instrument import Instrument
from xinstrument.recon import (PlaneProjector, ReconGrid, TomoGeometry, load_scan, reconstruct,
                               save_reconstruction)
from xinstrument.scans import tomosynthesis
from xinstrument.sim import tomo


def scan(out: Path, sensor_px: int, half_arc_deg: float, n_angles: int, frames: int):
    cfg = InstrumentConfig.simulated(sensor_px=sensor_px, sample="pcb-layers", seed=1)
    cfg.simulation.warmup_duration_s = 0.5
    cfg.camera.exposure_s = 0.1
    with Instrument(cfg) as inst:
        inst.warm_up()
        inst.set_voltage_kv(50)
        inst.set_current_ua(80)
        inst.xray_on()
        result = tomosynthesis(
            inst, arc_deg=2 * half_arc_deg, n_angles=n_angles, frames_per_angle=frames,
            darks=2, flats=2, flats_every=4, restore=True, restoration_method="wiener",
            out=out, overwrite=True,
            progress=lambda p: print(f"  {p.phase:<11} {100 * p.fraction:5.1f}%  "
                                     f"~{p.time_left_s:5.1f} s left", end="\r"))
        print()
        return result, inst.twin.sample


def score(rec, sample, n_angles):
    layers = tomo.copper_layers(sample)
    truth = tomo.layer_truth(sample, rec.grid)
    rows = []
    for layer in layers:
        k = int(np.argmin(np.abs(rec.heights_mm - layer.height_mm)))
        mask = tomo.full_coverage_mask(rec.coverage[k], n_angles)
        rows.append(tomo.layer_correlations(rec.slices[k:k + 1], truth, mask)[0])
    return np.array(rows), [f"{layer.height_mm:.2f}" for layer in layers]


def speed(n_angles=41, det_px=2048, n_slices=64, measure_px=256, measure_slices=16):
    """Time one forward + adjoint (one SIRT iteration) and one back-mapping (SAA/FBP) at a small
    size, and scale by the number of samples (angles x slices x pixels): all three operators are
    one bilinear sample per (angle, slice, pixel)."""
    g = TomoGeometry(kind="tube", source_detector_mm=30, source_object_mm=29, pixel_mm=0.0013,
                     rows=measure_px, cols=measure_px)
    theta = np.linspace(-20, 20, n_angles)
    heights = np.linspace(0, 1.6, measure_slices)
    grid = ReconGrid.for_scan(g, theta, heights, cover="detector")
    op = PlaneProjector(g, theta, heights, grid)
    p = torch.rand(op.projection_shape)
    v = torch.rand(op.volume_shape)
    t0 = time.perf_counter()
    op.backmap(p)
    t_back = time.perf_counter() - t0
    t0 = time.perf_counter()
    op.adjoint(op.forward(v) - p)
    t_iter = time.perf_counter() - t0
    scale = (det_px / measure_px) ** 2 * n_slices / measure_slices
    dev = op.device.type
    print(f"\nspeed on {dev} ({torch.get_num_threads()} threads), measured: {n_angles} x "
          f"{measure_px}^2 -> {measure_slices} slices; scaled x{scale:.0f} to {n_angles} x "
          f"{det_px}^2 -> {n_slices} slices of {det_px}^2")
    print(f"  saa / fbp (one back-mapping, x2 for the coverage count): "
          f"{t_back:.2f} s measured -> ~{t_back * scale:.0f} s")
    print(f"  sirt: {t_iter:.2f} s per iteration measured -> ~{t_iter * scale:.0f} s per "
          f"iteration, ~{t_iter * scale * 20 / 60:.0f} min for 20 iterations")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("pcb_tomo.h5"))
    ap.add_argument("--sensor-px", type=int, default=256)
    ap.add_argument("--half-arc-deg", type=float, default=3.0)
    ap.add_argument("--angles", type=int, default=9)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--speed", action="store_true")
    a = ap.parse_args()
    result, sample = scan(a.out, a.sensor_px, a.half_arc_deg, a.angles, a.frames)
    print(f"scan: {result.n_projections} projections in {result.elapsed_s:.1f} s -> {a.out}")
    heights = np.linspace(-0.2, 1.8, 21)
    for restored in (False, True):
        data = load_scan(a.out, restored=restored)
        grid = ReconGrid.for_scan(data.geometry, data.theta_deg, heights)
        for method in ("saa", "fbp", "sirt"):
            rec = reconstruct(data.transmission, data.theta_deg, data.geometry, heights, method,
                              grid=grid, iterations=a.iterations)
            save_reconstruction(a.out, rec, method + ("_restored" if restored else ""))
            c, names = score(rec, sample, data.theta_deg.size)
            ok = np.argmax(c, axis=1) == np.arange(len(names))
            print(f"\n{method} ({'restored' if restored else 'corrected'} projections, "
                  f"{rec.elapsed_s:.1f} s): slice at layer height (rows) vs layer truth (cols)")
            print("  layer mm " + " ".join(f"{n:>7}" for n in names))
            for n, row, good in zip(names, c, ok):
                print(f"  {n:>8} " + " ".join(f"{v:7.3f}" for v in row)
                      + ("" if good else "   <- not its own layer"))
    if a.speed:
        speed()


if __name__ == "__main__":
    main()
