"""Fixtures for driver tests: emulators, connected drivers and a byte-recording scripted peer."""
from __future__ import annotations

import socket
import threading

import pytest

from drivers.emulators import AxisSpec, GcsEmulator, TubeEmulator
from drivers.stage import GcsAxis, GcsController
from drivers.xray import HamamatsuTube


class ScriptedPeer:
    """Loopback TCP peer that records every byte it receives and answers from a script.

    ``replies`` maps a received command (terminator stripped; control bytes alone) to the
    exact bytes sent back; commands not in the script get no reply.
    """

    def __init__(self, eol: bytes, replies: dict[bytes, bytes],
                 control: frozenset[int] = frozenset()) -> None:
        self.eol, self.replies, self.control = eol, dict(replies), control
        self.received = bytearray()
        self.commands: list[bytes] = []
        self._srv = socket.socket()
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(1)
        self._srv.settimeout(0.05)
        self.url = f"socket://127.0.0.1:{self._srv.getsockname()[1]}"
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except OSError:
                continue
            conn.settimeout(0.05)
            buf = bytearray()
            while not self._stop.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                self.received += data
                buf += data
                while buf:
                    if buf[0] in self.control:
                        cmd = bytes(buf[:1])
                        del buf[:1]
                    else:
                        i = buf.find(self.eol)
                        if i < 0:
                            break
                        cmd = bytes(buf[:i])
                        del buf[:i + len(self.eol)]
                    self.commands.append(cmd)
                    reply = self.replies.get(cmd)
                    if reply:
                        conn.sendall(reply)
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self._srv.close()


@pytest.fixture
def peer_factory():
    peers: list[ScriptedPeer] = []

    def make(eol: bytes, replies: dict[bytes, bytes], control=frozenset()) -> ScriptedPeer:
        p = ScriptedPeer(eol, replies, control)
        peers.append(p)
        return p

    yield make
    for p in peers:
        p.close()


@pytest.fixture
def tube_emu():
    emu = TubeEmulator(warmup_duration_s=0.3, watchdog_s=5.0, warmup_needed=True)
    yield emu
    emu.close()


@pytest.fixture
def tube(tube_emu):
    t = HamamatsuTube(tube_emu.serve_tcp(), timeout_s=0.25)
    t.connect()
    yield t
    t.close()


@pytest.fixture
def warm_tube(tube):
    tube.warm_up(timeout_s=5.0, poll_s=0.02)
    return tube


@pytest.fixture
def gcs_emu():
    emu = GcsEmulator({"1": AxisSpec("um", -500.0, 500.0, 2000.0, initial=120.0),
                       "2": AxisSpec("deg", -180.0, 180.0, 360.0)})
    yield emu
    emu.close()


@pytest.fixture
def gcs(gcs_emu):
    c = GcsController(gcs_emu.serve_tcp(), timeout_s=0.25)
    c.connect()
    yield c
    c.close()


@pytest.fixture
def z_axis(gcs):
    ax = GcsAxis(gcs, "1", unit="um", soft_limits=(-400.0, 400.0))
    ax.reference(timeout_s=5.0)
    return ax
