"""``xinstrument scan tomo PLAN.toml``: run a tomosynthesis plan written in TOML.

PLAN.toml (see scripts/tomo_plan.toml)::

    [scan]            # keys of TomoPlan: arc_deg, n_angles, centre_deg or angles_deg,
                      # frames_per_angle, darks, flats, reference_frames, flats_every,
                      # restore, restoration_method, exposure_s, voltage_kv, current_ua,
                      # settle_s, return_to_deg, out, overwrite, title
    [geometry]        # kind, source_object_mm, source_detector_mm, pixel_um, axis, ...
    [bench]           # config = "site.toml" (a real bench) or, simulated:
                      # sensor_px, sample, seed
    [recon]           # optional: method(s) and heights to reconstruct after the scan
"""
from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from ..errors import UserError

_SECTIONS = {"scan", "geometry", "bench", "recon"}


def load_plan_file(path: Path) -> tuple[Any, dict, dict]:
    """(TomoPlan, bench section, recon section); a relative ``out`` is relative to the working
    directory (as on the command line), never to the plan's folder."""
    from .tomo import TomoPlan
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"plan file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"plan file {path} is not valid TOML: {exc}") from None
    unknown = set(raw) - _SECTIONS
    if unknown:
        raise UserError(f"plan {path}: unknown section(s) {sorted(unknown)}; known: "
                        f"{sorted(_SECTIONS)}")
    if "scan" not in raw:
        raise UserError(f"plan {path}: no [scan] section")
    scan = dict(raw["scan"])
    scan["geometry"] = dict(raw.get("geometry", {}))
    if "out" in scan:
        from ..outputs import resolve_output
        scan["out"] = str(resolve_output(scan["out"]))
    plan = TomoPlan.from_dict(scan, where=f"plan {path} [scan]")
    plan.validate()
    return plan, dict(raw.get("bench", {})), dict(raw.get("recon", {}))


def _instrument(bench: dict, where: str):
    from ..config import InstrumentConfig
    from ..instrument import Instrument
    if "config" in bench:
        extra = set(bench) - {"config"}
        if extra:
            raise UserError(f"{where} [bench]: with config = ..., no other keys ({sorted(extra)})")
        return Instrument(InstrumentConfig.load(bench["config"]))
    known = {"sensor_px", "sample", "seed", "exposure_s", "warmup_duration_s"}
    extra = set(bench) - known
    if extra:
        raise UserError(f"{where} [bench]: unknown key(s) {sorted(extra)}; known: "
                        f"config or {sorted(known)}")
    cfg = InstrumentConfig.simulated(sensor_px=int(bench.get("sensor_px", 512)),
                                     sample=str(bench.get("sample", "pcb-layers")),
                                     seed=int(bench.get("seed", 0)), rotation=True)
    if "exposure_s" in bench:
        cfg.camera.exposure_s = float(bench["exposure_s"])
    if "warmup_duration_s" in bench:
        cfg.simulation.warmup_duration_s = float(bench["warmup_duration_s"])
    return Instrument(cfg)


def _cmd_tomo(a: argparse.Namespace) -> int:
    from ..progress import ProgressBar
    from .tomo import ScanAborted, TomoScan, plan_summary
    plan, bench, recon = load_plan_file(a.plan)
    if a.out is not None:
        plan.out = a.out
    if a.overwrite:
        plan.overwrite = True
    if not Path(plan.out).parent.is_dir():
        raise UserError(f"output folder {Path(plan.out).parent} does not exist")
    if Path(plan.out).exists() and not plan.overwrite:
        raise UserError(f"{plan.out} exists; pass --overwrite (or overwrite = true in [scan])")
    print(plan_summary(plan))
    inst = _instrument(bench, f"plan {a.plan}")
    bar = ProgressBar("tomosynthesis")
    with inst:
        st = inst.tube_status()
        if st.state.name in ("WARMUP_NEEDED", "WARMING_UP"):
            inst.warm_up()
        inst.xray_on()
        try:
            result = TomoScan(inst, plan, progress=lambda p: bar.update(p.fraction)).run()
        except ScanAborted as exc:
            bar.close()
            print(f"xinstrument scan tomo: {exc}")
            return 1
        bar.close()
    print(f"wrote {result.n_projections} projections ({result.theta_deg[0]:+g} .. "
          f"{result.theta_deg[-1]:+g} deg) to {result.path} in {result.elapsed_s:.1f} s")
    if recon:
        from ..recon.cli import run_recon
        methods = recon.get("methods", [recon.get("method", "sirt")])
        for m in methods:
            run_recon(result.path, m, str(recon.get("heights", "0:1.6:16")),
                      restored=bool(recon.get("restored", plan.restore)),
                      iterations=int(recon.get("iterations", 20)))
    return 0


def register(sub) -> None:
    p = sub.add_parser("scan", help="scripted scans (tomosynthesis)",
                       description="Run a scan plan on the configured (or simulated) bench.")
    scans = p.add_subparsers(dest="scan_kind", metavar="KIND")
    scans.required = True
    t = scans.add_parser("tomo", help="tomosynthesis scan from a PLAN.toml",
                         description="Darks, flat series and averaged (optionally restored) "
                                     "projections over an arc of tube angles, into one "
                                     "NXtomo / Data Exchange HDF5 file.")
    t.add_argument("plan", type=Path, help="plan file (TOML), e.g. scripts/tomo_plan.toml")
    t.add_argument("--out", type=Path, default=None, help="output file (overrides [scan] out)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    t.set_defaults(func=_cmd_tomo)
