"""argparse value types shared by every `xinstrument` sub-command: one wording for bad input.

Every type here turns bad text into an ``argparse.ArgumentTypeError`` naming what was expected;
:class:`ArgumentParser` prints any argument error as one line (``xinstrument CMD: error: ...``,
exit code 2) instead of the usage block.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line and exit with code 2 (its sub-parsers,
    made by ``add_subparsers().add_parser``, are of the same class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def non_negative_int(text: str) -> int:
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def finite_float(text: str) -> float:
    """Any finite number (not nan, not inf)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def positive_float(text: str) -> float:
    v = finite_float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v:g}")
    return v


def non_negative_float(text: str) -> float:
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v:g}")
    return v


def seed(text: str) -> int:
    """Random seed: 0 .. 2**32 - 1 (what numpy's generators accept)."""
    v = _int(text)
    if not 0 <= v < 2**32:
        raise argparse.ArgumentTypeError(f"seed must be 0..{2**32 - 1}, got {v}")
    return v


_DEVICE_RE = re.compile(r"^(cpu|mps|cuda)(:([0-9]{1,2}))?$")


def torch_device(text: str) -> str:
    """A torch device this machine has: ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""
    m = _DEVICE_RE.match(text.strip().lower())
    if m is None or (m.group(1) != "cuda" and m.group(2)):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda, cuda:N or mps")
    kind, index = m.group(1), m.group(3)
    if kind == "cpu":
        return "cpu"
    torch = sys.modules.get("torch")
    if torch is None:
        import torch
    if kind == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise argparse.ArgumentTypeError("device 'mps' is not available on this machine; "
                                             "use cpu")
        return "mps"
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        build = "a CPU-only torch build" if torch.version.cuda is None else "no CUDA GPU found"
        raise argparse.ArgumentTypeError(f"device {text!r} is not available on this machine "
                                         f"({build}); use cpu")
    if index is not None and int(index) >= n:
        raise argparse.ArgumentTypeError(f"device {text!r} is not available: this machine has "
                                         f"{n} CUDA device(s), cuda:0..cuda:{n - 1}")
    return f"cuda:{index}" if index is not None else "cuda"


def size_px(text: str) -> int:
    """Square sensor/frame size, 64..4096 pixels."""
    v = positive_int(text)
    if not 64 <= v <= 4096:
        raise argparse.ArgumentTypeError(f"sensor size must be 64..4096 pixels, got {v}")
    return v
