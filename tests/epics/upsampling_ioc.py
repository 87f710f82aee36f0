"""`xinstrument ioc` whose restoration returns frames 4x larger per axis.

A stand-in for a super-resolving method (those need trained weights): the instrument's Wiener
restoration, each output pixel then repeated 4 x 4. Frames reach the IOC through the same
Instrument.acquire -> InstrumentIOC path as with a real ``sr_x4`` restorer.

    python tests/epics/upsampling_ioc.py --prefix P: --config bench.toml
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

SCALE = 4


class Upsampling:
    """A Restorer with ``scale`` = SCALE wrapping an ordinary one."""

    def __init__(self, inner, scale: int = SCALE) -> None:
        self.inner, self.scale = inner, scale

    def restore(self, frame: np.ndarray) -> np.ndarray:
        out = self.inner.restore(frame)
        return np.kron(out, np.ones((self.scale, self.scale), np.float32)).astype(np.float32)

    def output_shape(self, frame_shape):
        return frame_shape[0] * self.scale, frame_shape[1] * self.scale

    def __getattr__(self, name):          # method, frames_per_second, latency_s, ...
        return getattr(self.inner, name)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--prefix", required=True)
    p.add_argument("--config", required=True)
    a = p.parse_args(argv)
    from xinstrument.epics.network import configure
    where = configure()                   # loopback, before EPICS is loaded
    from xinstrument.config import InstrumentConfig
    from xinstrument.instrument import Instrument
    inst = Instrument(InstrumentConfig.load(a.config))
    plain = inst.restorer
    inst.restorer = lambda method=None: Upsampling(plain(method))
    from xinstrument.epics.server import run_ioc
    return run_ioc(inst, a.prefix, where=where)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
