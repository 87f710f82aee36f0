#!/usr/bin/env python3
"""Benchmark super-resolution against bicubic and deblur-only restoration on the digital twin.

    python scripts/bench_sr.py [--profile sim-yag20-5x-sr --factor 2 --json out.json]

The same as ``xinstrument bench sr`` (xinstrument/bench.py: sr_benchmark), kept for scripts that
call it by path; every option of that command is accepted.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xinstrument.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "sr", *sys.argv[1:]]))
