#!/usr/bin/env python3
"""Regenerate docs/screenshots from the real console window under a real X server.

    python scripts/make_screenshots.py [OUT_DIR] [--sensor-px 256]

Qt's offscreen platform draws without a window system (no window manager, no real fonts
metrics of an X server); the documentation shows what operators see, so this script runs the
console on the xcb platform. Without a DISPLAY it starts its own Xvfb (Debian:
apt-get install xvfb, plus the libraries README 'Set-up' lists) with a 1400 x 900 screen, and
stops it afterwards. Each tab is checked for clipped controls and sideways scroll bars first.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCREEN = "1400x900x24"


def _free_display() -> int:
    for n in range(90, 140):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    raise SystemExit("no free X display number between :90 and :139")


def start_xvfb() -> subprocess.Popen:
    if shutil.which("Xvfb") is None:
        raise SystemExit("Xvfb not found: apt-get install xvfb (or run with a DISPLAY)")
    n = _free_display()
    proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", SCREEN, "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if Path(f"/tmp/.X11-unix/X{n}").exists():
            break
        if proc.poll() is not None:
            raise SystemExit(f"Xvfb :{n} exited with {proc.returncode}")
        time.sleep(0.05)
    os.environ["DISPLAY"] = f":{n}"
    return proc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", nargs="?", type=Path, default=ROOT / "docs" / "screenshots",
                   help="folder for the PNGs (default docs/screenshots)")
    p.add_argument("--sensor-px", type=int, default=256,
                   help="simulated sensor size in pixels (default 256)")
    a = p.parse_args(argv)
    xvfb = None if os.environ.get("DISPLAY") else start_xvfb()
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    try:
        from xinstrument.gui.system_libs import gui_setup_problem
        problem = gui_setup_problem()
        if problem:
            print(f"make_screenshots: {problem}", file=sys.stderr)
            return 2
        from xinstrument.gui.screenshots import capture
        for path in capture(a.out_dir, a.sensor_px):
            print(path)
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
