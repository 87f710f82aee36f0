#!/usr/bin/env python3
"""One-command set-up and run for newcomers and CI.

    python3.11 scripts/dev.py demo [demo options]   # set up .venv, run `xinstrument demo`
    python3.11 scripts/dev.py test [pytest options] # set up .venv (with dev extras), run the tests
    python3.11 scripts/dev.py setup                 # only create/refresh .venv

The virtual environment lives in .venv beside this repository. CPU torch is pinned through
constraints-ci.txt so that a plain install stays small; on a GPU machine install your CUDA build
of torch into .venv first (pip install torch --index-url ...) and set XI_NO_CONSTRAINTS=1.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")


def _stamp(extras: str) -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "constraints-ci.txt"):
        h.update((ROOT / name).read_bytes())
    h.update(extras.encode())
    return h.hexdigest()


def setup(extras: str = "dev") -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"xinstrument needs Python >= 3.11 (this is {sys.version.split()[0]})")
    if not PY.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp_file = VENV / ".xinstrument-installed"
    stamp = _stamp(extras)
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        return
    cmd = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if not os.environ.get("XI_NO_CONSTRAINTS"):
        cmd += ["-c", str(ROOT / "constraints-ci.txt")]
    cmd += ["-e", f"{ROOT}[{extras}]" if extras else str(ROOT)]
    print("installing xinstrument and its dependencies (first run only)...", flush=True)
    subprocess.run(cmd, check=True)
    stamp_file.write_text(stamp)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "setup"}:
        print(__doc__)
        return 2
    what, rest = argv[0], argv[1:]
    setup("dev")
    env = dict(os.environ)
    if what == "setup":
        return 0
    if what == "demo":
        # like every command, the demo writes to the working directory (or --out)
        return subprocess.call([str(BIN / "xinstrument"), "demo", *rest], env=env)
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    return subprocess.call([str(PY), "-m", "pytest", "-q", *rest], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
