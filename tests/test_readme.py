"""The README's code blocks run, in order, on the files the product itself writes.

Every ```bash / ```python block of README.md is one of:
- run (no marker): executed in order, bash blocks with ``bash -e`` and python blocks with this
  interpreter, all in one scratch folder laid out like the repository (its ``scripts`` and
  ``profiles`` folders are the repository's own), with ``xinstrument`` on PATH;
- ``<!-- readme-test: parse -->``: long-running, interactive or server commands; every
  ``xinstrument`` line must be accepted by the real argument parser;
- ``<!-- readme-test: skip (why) -->``: not run here, with the reason in the README source.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"<!--\s*readme-test:\s*(\w+)(.*?)-->")


def readme_blocks(text: str | None = None) -> list[tuple[str, str, str]]:
    """(mode, language, code) of every bash / python block, in order."""
    text = README.read_text() if text is None else text
    out = []
    for m in FENCE.finditer(text):
        lang, code = m.group(1), m.group(2)
        if lang not in ("bash", "python"):
            continue
        before = text[:m.start()].rstrip().splitlines()[-1:] or [""]
        mk = MARKER.search(before[0])
        mode = mk.group(1) if mk else "run"
        if mode not in ("run", "parse", "skip"):
            raise ValueError(f"README: unknown readme-test mode {mode!r}")
        if mode == "skip" and not mk.group(2).strip():
            raise ValueError("README: a skipped block must say why")
        out.append((mode, lang, code))
    return out


def _command_lines(code: str) -> list[list[str]]:
    cmds = []
    for line in code.splitlines():
        for part in line.split(";"):
            words = shlex.split(part, comments=True)
            if words and words[0] == "xinstrument":
                cmds.append(words[1:])
    return cmds


def test_every_block_has_a_mode_and_the_runnable_ones_exist():
    blocks = readme_blocks()
    modes = [m for m, _, _ in blocks]
    assert modes.count("run") >= 2 and "parse" in modes
    assert any(lang == "python" and m == "run" for m, lang, _ in blocks)
    # the marker grammar itself: an unknown mode is an error, not a silent skip
    with pytest.raises(ValueError):
        readme_blocks("<!-- readme-test: later -->\n```bash\nls\n```\n")


def test_parse_only_commands_are_accepted_by_the_parser():
    from xinstrument.cli import build_parser
    parser = build_parser()
    checked = 0
    for mode, _, code in readme_blocks():
        if mode != "parse":
            continue
        for args in _command_lines(code):
            try:
                parser.parse_args(args)
            except SystemExit as exc:
                pytest.fail(f"README command does not parse: xinstrument {' '.join(args)} "
                            f"(exit {exc.code})")
            checked += 1
    assert checked >= 5


def _script(blocks) -> str:
    lines = ["set -euo pipefail", 'echo "--- start $(date +%s)"']
    for k, (mode, lang, code) in enumerate(blocks):
        if mode != "run":
            continue
        # each block starts in the repository's folder, as a reader's would
        lines += [f"echo \"--- README block {k + 1} ({lang}) at $(date +%s)\"", "(",
                  'cd "$XI_ROOT"']
        if lang == "bash":
            lines.append(code.rstrip("\n"))
        else:
            lines += [f'"$XI_PYTHON" - <<\'XI_README_PY_{k}\'', code.rstrip("\n"),
                      f"XI_README_PY_{k}"]
        lines.append(")")
    return "\n".join(lines) + "\n"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_readme_runs_as_written(tmp_path):
    """The runnable blocks, in order, on the files they make (a few minutes of simulated
    bench on a 256 px sensor)."""
    root = tmp_path / "xinstrument"
    root.mkdir()
    for name in ("scripts", "profiles"):
        (root / name).symlink_to(REPO / name)
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env.update(PATH=bindir + os.pathsep + env.get("PATH", ""), XI_PYTHON=sys.executable,
               XI_ROOT=str(root),
               QT_QPA_PLATFORM="offscreen", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    script = _script(readme_blocks())
    r = subprocess.run(["bash", "-c", script], cwd=root, env=env, capture_output=True,
                       text=True, timeout=1200, check=False)
    log = (r.stdout + r.stderr)[-6000:]
    assert r.returncode == 0, f"README failed (rc {r.returncode}):\n{log}"
    run = root / "first-run"
    # what the session says it writes, where it says it writes it
    demo = list((run / "demo").glob("demo-*.h5"))
    assert len(demo) == 1
    assert (run / f"{demo[0].stem}_restored-wiener.h5").is_file()
    assert (run / "batch" / f"{demo[0].stem}_restored-unet.h5").is_file()
    for name in ("pcb.h5", "focus.h5", "pcb_tomo.h5", "pcb_tomo_recon-saa.h5"):
        assert (run / name).is_file(), name
    assert not list((REPO / "scripts").glob("*.h5")), "a scan landed beside its plan"
    assert (root / "api_tomo.h5").is_file()
    # recon leaves its input alone: the scan keeps only its plan's own reconstructions (21
    # slices of the restored projections), the new file holds the 5 asked for
    from xinstrument.recon import read_reconstruction
    assert read_reconstruction(run / "pcb_tomo.h5", "saa_restored")[0].shape[0] == 21
    with pytest.raises(KeyError):
        read_reconstruction(run / "pcb_tomo.h5", "saa")
    assert read_reconstruction(run / "pcb_tomo_recon-saa.h5", "saa")[0].shape[0] == 5
    assert "Traceback" not in log and "nan s left" not in log
