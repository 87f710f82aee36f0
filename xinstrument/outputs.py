"""Where every command puts what it writes, and how it names it: one rule for the product.

- A new file goes to the working directory, or where ``--out`` says; never beside the input
  unless ``--out`` points there.
- A file derived from an input is named ``<input stem>_<verb>-<what>.h5``:
  ``scan_restored-wiener.h5`` (``restore`` and ``batch restore``), ``scan_recon-sirt.h5``
  (``recon`` and ``batch recon``).
- Inputs are opened read-only; a command modifies one only when asked (``recon --in-place``).
- A relative output path in a plan file is relative to the working directory, like one given
  on the command line.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["derived_name", "derived_output", "resolve_output"]


def derived_name(input_path: str | Path, verb: str, what: str) -> str:
    """``<stem>_<verb>-<what>.h5`` for a file derived from ``input_path``."""
    return f"{Path(input_path).stem}_{verb}-{what}.h5"


def derived_output(input_path: str | Path, verb: str, what: str,
                   out_dir: str | Path | None = None) -> Path:
    """The derived file in ``out_dir`` (default: the working directory)."""
    folder = Path(out_dir) if out_dir is not None else Path.cwd()
    return folder / derived_name(input_path, verb, what)


def resolve_output(path: str | Path) -> Path:
    """An output path as given; relative paths are relative to the working directory."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path.cwd() / p
