"""The `xinstrument` command: a thin client of the Instrument API.

User errors (options, config, profile, files, device refusals) print one clear line and exit 2;
anything else is a defect and shows its traceback.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path

from . import __version__
from .cliargs import ArgumentParser
from .cliargs import finite_float as _finite_float
from .cliargs import positive_float as _positive_float
from .cliargs import positive_int as _positive_int
from .cliargs import seed as _seed
from .cliargs import size_px as _sensor_px
from .errors import UserError

EXIT_USER_ERROR = 2


def _user_error_types() -> tuple[type[BaseException], ...]:
    from .errors import InstrumentError
    from .instrument import DEVICE_ERRORS
    from .profiles import ProfileError
    from .storage import StorageError
    types: list[type[BaseException]] = [UserError, InstrumentError, ProfileError, StorageError,
                                        *DEVICE_ERRORS]
    try:
        from .acquisition.correction import CorrectionError
        from .acquisition.focus import FocusError
        types += [CorrectionError, FocusError]
    except ImportError:
        pass
    return tuple(types)


# --- demo ----------------------------------------------------------------------------------------
def _cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo
    r = run_demo(a.out, sensor_px=a.sensor_px, n_frames=a.frames, n_average=a.average,
                 seed=a.seed, bench=a.bench, exposure_s=a.exposure_s, profile=a.profile,
                 method=a.method)
    print("\nxinstrument demo: summary")
    print(f"  HDF5 file        {r.h5_path}")
    print(f"  figure           {r.png_path}")
    print(f"  frames           {r.n_frames} averaged frames (+ dark and flat references)")
    if r.best_focus_um is not None:
        print(f"  best focus       {r.best_focus_um:.2f} um (twin optimum "
              f"{r.true_focus_um:.2f} um, error {r.best_focus_um - r.true_focus_um:+.2f} um)")
    print(f"  restoration      {r.method}")
    print(f"  SSIM  input {r.ssim_input:.3f} -> restored {r.ssim_restored:.3f}")
    print(f"  PSNR  input {r.psnr_input:.2f} dB -> restored {r.psnr_restored:.2f} dB")
    for line in r.fidelity_lines():
        print(line)
    print(f"  acquisition      {r.frames_per_s:.2f} camera frames/s; restoration "
          f"{r.restore_frames_per_s:.3g} frames/s")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the whole measurement on the simulated bench",
                       description="Warm up, darks/flats, focus scan, averaged PCB frames through "
                       "the thick scintillator, correction, restoration, HDF5 + PNG, summary.")
    p.add_argument("--out", type=Path, default=Path("xinstrument-demo"),
                   help="output folder (created if missing; default ./xinstrument-demo)")
    p.add_argument("--sensor-px", type=_sensor_px, default=512,
                   help="simulated sensor size in pixels, square, 64..4096 (default 512; "
                   "the real sCMOS is 2048)")
    p.add_argument("--frames", type=_positive_int, default=3,
                   help="number of averaged frames of the sample (default 3)")
    p.add_argument("--average", type=_positive_int, default=8,
                   help="camera frames averaged per frame (default 8)")
    p.add_argument("--exposure-s", type=_positive_float, default=None,
                   help="camera exposure in seconds (default: the bench's, 1 s lens / 0.05 s panel)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the procedural sample and noise")
    p.add_argument("--bench", choices=["lens-yag", "panel-gos"], default="lens-yag",
                   help="simulated bench (default lens-yag: YAG 200 um, 5x NA 0.4)")
    p.add_argument("--profile", default=None, help="detector profile name or folder "
                   "(default: the bench's shipped profile)")
    p.add_argument("--method", default=None,
                   help="restoration method (default: the best the profile supports)")
    p.set_defaults(func=_cmd_demo)


# --- acquire / darks / flats / focus -------------------------------------------------------------
def _instrument(a):
    from .config import InstrumentConfig
    from .instrument import Instrument
    cfg = InstrumentConfig.load(a.config) if a.config else InstrumentConfig.simulated(
        sensor_px=a.sensor_px)
    return Instrument(cfg)


def _add_device_options(p) -> None:
    p.add_argument("--config", type=Path, help="instrument config (TOML); default: simulated bench")
    p.add_argument("--sensor-px", type=_sensor_px, default=512,
                   help="simulated bench only: sensor size in pixels, 64..4096 (default 512)")
    p.add_argument("--kv", type=_positive_float,
                   help="tube voltage (kV; default: the tube's current setpoint)")
    p.add_argument("--ua", type=_positive_float,
                   help="tube current (uA; default: the tube's current setpoint)")
    p.add_argument("--exposure-s", type=_positive_float,
                   help="camera exposure (s; default: the configured one)")


def _prepare(inst, a, xray: bool = True) -> None:
    if a.exposure_s:
        inst.set_exposure_s(a.exposure_s)
    st = inst.tube_status()
    if st.state.name in ("WARMUP_NEEDED", "WARMING_UP"):
        from .progress import ProgressBar
        bar = ProgressBar("warm-up")
        inst.warm_up(progress=bar.update)
        bar.close()
    if a.kv:
        inst.set_voltage_kv(a.kv)
    if a.ua:
        inst.set_current_ua(a.ua)
    if xray:
        inst.xray_on()


def _check_new_output(path: Path, overwrite: bool) -> None:
    """Refuse an output before any device is touched (no warm-up for a file that exists)."""
    from .demo import check_output_folder
    check_output_folder(path.parent)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give the HDF5 file to write")
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; pass --overwrite to replace it")


def _cmd_acquire(a) -> int:
    from .progress import ProgressBar
    from .scans import References, Series
    _check_new_output(a.output, a.overwrite)
    inst = _instrument(a)
    with inst:
        _prepare(inst, a)
        if a.correct:
            inst.run(References(dark_frames=a.references, flat_frames=a.references))
        bar = ProgressBar("acquire", a.frames)
        unsub = inst.events.frame_ready.connect(lambda f: bar.update(f.index + 1))
        try:
            # the recording sink writes the references beside the frames they corrected
            inst.run(Series(n_frames=a.frames, n_average=a.average, correct=a.correct,
                            out=a.output, overwrite=a.overwrite))
        finally:
            unsub()
        bar.close()
    print(f"wrote {a.frames} frames ({'corrected' if a.correct else 'raw averages'}) to "
          f"{a.output}")
    return 0


def _cmd_focus(a) -> int:
    if a.out is not None:
        _check_new_output(a.out, a.overwrite)
    inst = _instrument(a)
    with inst:
        _prepare(inst, a)
        if a.correct:
            inst.take_darks(4)
            inst.take_flats(4)
        from .progress import ProgressBar
        bar = ProgressBar("focus scan")
        inst.subscribe(lambda k, p: bar.update(p[1]) if k == "progress" and p[0] == "focus"
                       else None)
        # with --out the engine's recording sink writes every scored frame with its z and the
        # curve (NXdata /entry/focus_curve)
        curve = inst.focus_scan(a.start_um, a.stop_um, a.step_um, a.frames_per_step, a.metric,
                                coarse_step_um=a.coarse_step_um, out=a.out,
                                overwrite=a.overwrite)
        bar.close()
    for pos, val in zip(curve.positions_um, curve.metric_values):
        print(f"  {pos:9.2f} um  {val:.6g}")
    sd = curve.best_position_sd_um  # NaN where the metric has no noise estimate
    spread = "" if math.isnan(sd) else f" +- {2 * sd:.2f} um (2 sd)"
    print(f"best focus: {curve.best_position_um:.2f} um{spread} ({curve.metric})")
    for warning in curve.warnings:
        print(f"WARNING: {warning}")
    if a.out is not None:
        print(f"focus scan recorded to {a.out} (frames, z and /entry/focus_curve)")
    return 0


def _cmd_reference(a) -> int:
    """Average a dark (X-rays off) or flat (sample out) series into a reference file."""
    from .scans import SingleReference
    _check_new_output(a.output, a.overwrite)
    kind = a.command
    inst = _instrument(a)
    with inst:
        _prepare(inst, a, xray=(kind == "flats"))
        inst.run(SingleReference(which=kind[:-1], n_frames=a.average, series=a.series,
                                 out=a.output, overwrite=a.overwrite))
    print(f"wrote {a.series} {kind[:-1]} reference(s) of {a.average} frames each to {a.output}")
    return 0


def _add_acquisition(sub) -> None:
    for kind, what in (("darks", "dark references (X-rays off)"),
                       ("flats", "flat references (X-rays on, sample out)")):
        p = sub.add_parser(kind, help=f"acquire averaged {what} into an HDF5 file")
        _add_device_options(p)
        p.add_argument("output", type=Path, help="HDF5 file to write")
        p.add_argument("--average", type=_positive_int, default=10,
                       help="camera frames averaged per reference (default 10)")
        p.add_argument("--series", type=_positive_int, default=1,
                       help="number of averaged references (default 1)")
        p.add_argument("--overwrite", action="store_true",
                       help="replace an existing output file (refused otherwise, before the "
                            "tube is touched)")
        p.set_defaults(func=_cmd_reference)

    p = sub.add_parser("acquire", help="acquire averaged (corrected) frames into an HDF5 file")
    _add_device_options(p)
    p.add_argument("output", type=Path, help="HDF5 file to write")
    p.add_argument("--frames", type=_positive_int, default=1,
                   help="number of averaged frames to store (default 1)")
    p.add_argument("--average", type=_positive_int, default=10,
                   help="camera frames averaged per stored frame (default 10)")
    p.add_argument("--references", type=_positive_int, default=10,
                   help="frames averaged for the dark and flat references (default 10)")
    p.add_argument("--raw", dest="correct", action="store_false",
                   help="store averaged raw frames, no dark/flat correction")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output file (refused otherwise, before the tube "
                        "is touched)")
    p.set_defaults(func=_cmd_acquire)

    p = sub.add_parser("focus", help="axial focus scan and report the best focus")
    _add_device_options(p)
    p.add_argument("--start-um", type=_finite_float, required=True,
                   help="first focus position (um, within the stage's travel)")
    p.add_argument("--stop-um", type=_finite_float, required=True,
                   help="last focus position (um, above --start-um)")
    p.add_argument("--step-um", type=_positive_float, default=1.0,
                   help="step of the (fine) scan in um (default 1)")
    p.add_argument("--coarse-step-um", type=_positive_float, default=None,
                   help="coarse pass step; then a fine pass in --step-um steps")
    p.add_argument("--frames-per-step", type=_positive_int, default=2,
                   help="camera frames averaged at each position (default 2)")
    p.add_argument("--metric", choices=["hf_energy", "normalized_variance", "brenner"],
                   default="hf_energy",
                   help="sharpness metric: high-frequency energy (default), normalised "
                        "variance or Brenner gradient")
    p.add_argument("--raw", dest="correct", action="store_false",
                   help="score raw frames (no dark/flat references)")
    p.add_argument("--out", type=Path, default=None,
                   help="also record the scan to this HDF5 file: every scored frame with its z "
                        "and the curve (NXdata /entry/focus_curve)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file")
    p.set_defaults(func=_cmd_focus)


# --- main ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="xinstrument",
        description="Control, acquisition and real-time restoration for scintillator-coupled "
                    "X-ray imaging benches.")
    parser.add_argument("--version", action="version", version=f"xinstrument {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv: driver command/reply log)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_demo(sub)
    _add_acquisition(sub)
    for module in ("xinstrument.calibration.cli", "xinstrument.restoration.cli",
                   "xinstrument.gui.cli", "xinstrument.epics.cli", "xinstrument.scans.cli",
                   "xinstrument.recon.cli", "xinstrument.batch.cli", "xinstrument.bench"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(sub)
    return parser


# Libraries that log at INFO for routine work (Dask starts a cluster with ~30 lines): WARNING
# and above unless --verbose.
QUIET_LOGGERS = ("distributed", "dask", "bokeh", "tornado", "asyncio", "matplotlib", "PIL",
                 "h5py", "numexpr", "torch", "urllib3", "fsspec")


class _InterruptFilter(logging.Filter):
    """Without --verbose, drop the tube driver's emergency-off records on Ctrl-C or exit: the
    command's own last line says that X-rays were switched off. A failed switch-off ("not
    confirmed") is a different record and always shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("drivers.xray"):
            return True
        msg = record.getMessage()
        return not ("switching X-rays off" in msg
                    and ("(process exit)" in msg or _interrupted.is_set()))


def _configure_logging(verbose: int) -> None:
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose == 0:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        # Dask reads its logging levels from its config when it is imported, in this process
        # and in the worker processes it starts (they inherit the environment)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        for handler in logging.getLogger().handlers:
            if not any(isinstance(f, _InterruptFilter) for f in handler.filters):
                handler.addFilter(_InterruptFilter())


_interrupted = threading.Event()


def _on_sigint(signum, frame) -> None:
    _interrupted.set()
    raise KeyboardInterrupt


def user_message(exc: BaseException) -> str:
    """An error's text in the command line's words (its flags, not the API's arguments)."""
    return str(exc).replace("pass overwrite=True", "pass --overwrite")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    _interrupted.clear()
    previous = None
    if threading.current_thread() is threading.main_thread():
        # the tube driver chains to this handler after its own X-rays off
        previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("xinstrument: interrupted (X-rays switched off)", file=sys.stderr)
        return 130
    except _user_error_types() as exc:
        if _interrupted.is_set():
            # Ctrl-C during a device wait surfaces as that wait's failure (e.g. a warm-up
            # ended by the X-rays off): it is the interruption, not a second error
            print("xinstrument: interrupted (X-rays switched off)", file=sys.stderr)
            return 130
        print(f"xinstrument {args.command}: error: {user_message(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
