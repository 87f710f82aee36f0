"""``xinstrument gui``: the operator console."""
from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_gui(a: argparse.Namespace) -> int:
    from ..errors import UserError
    if a.config is not None and not a.config.is_file():
        raise UserError(f"config file {a.config} does not exist")
    # before Qt is loaded: a missing X11 library makes Qt abort the process (rc 134)
    from .system_libs import gui_setup_problem
    problem = gui_setup_problem()
    if problem is not None:
        raise UserError(problem)
    from .app import run_gui
    return run_gui(a.config, a.sensor_px)


def register(sub) -> None:
    from ..cli import _sensor_px
    p = sub.add_parser(
        "gui", help="operator console (PyQt6): live image (raw, corrected, restored), source, "
        "stage, acquisition, focus, restoration, calibration, tomosynthesis",
        description="Desktop window for running the bench. Without --config it drives the "
        "simulated bench (every device emulated). X-rays off: the X-RAY OFF button, F12 or "
        "Ctrl+Shift+X; stop everything: Esc. Closing the window switches X-rays off.")
    p.add_argument("--config", type=Path, help="instrument config (TOML); default: simulated "
                   "bench")
    p.add_argument("--sensor-px", type=_sensor_px, default=512,
                   help="simulated bench only: sensor size in pixels (default 512)")
    p.set_defaults(func=_cmd_gui)
