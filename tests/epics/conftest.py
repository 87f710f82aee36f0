"""IOC test harness: the real IOC (`xinstrument ioc`) in a subprocess on loopback, free ports
per test run, the X-ray tube emulator in the test process so tests see the anode's state."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from drivers.emulators import TubeEmulator

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120.0


def _free_port(taken: set[int]) -> int:
    """A loopback port free for TCP and UDP alike (CA and PVA use both on one number)."""
    for _ in range(200):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            t.close()
            u.close()
        if port not in taken:
            taken.add(port)
            return port
    raise RuntimeError("no free loopback port")


@pytest.fixture(scope="session")
def epics_ports() -> dict[str, int]:
    """Ports of this test run; set for the test process before pyepics is imported."""
    taken: set[int] = set()
    ports = {k: _free_port(taken) for k in ("ca", "repeater", "pva", "pva_bcast")}
    env = {
        "EPICS_CA_SERVER_PORT": ports["ca"], "EPICS_CAS_SERVER_PORT": ports["ca"],
        "EPICS_CA_REPEATER_PORT": ports["repeater"],
        "EPICS_PVA_SERVER_PORT": ports["pva"], "EPICS_PVAS_SERVER_PORT": ports["pva"],
        "EPICS_PVA_BROADCAST_PORT": ports["pva_bcast"],
        "EPICS_PVAS_BROADCAST_PORT": ports["pva_bcast"],
    }
    os.environ.update({k: str(v) for k, v in env.items()})
    # tests/conftest.py has put CA and PVA on loopback for this process already
    assert os.environ["EPICS_CA_ADDR_LIST"] == "127.0.0.1"
    assert os.environ["EPICS_CA_AUTO_ADDR_LIST"] == "NO"
    return ports


@pytest.fixture(scope="session")
def epics(epics_ports):
    import epics as pyepics  # after the ports and loopback variables are in place
    return pyepics


class IocProcess:
    """`xinstrument ioc` in a subprocess; output collected in a thread."""

    def __init__(self, prefix: str, config: Path, cwd: Path, extra: list[str] = (),
                 program: list[str] = ("-m", "xinstrument.cli", "ioc")) -> None:
        env = dict(os.environ)   # loopback variables and this run's ports, passed explicitly
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        # soft limits set over EPICS are kept across restarts: per IOC here, not in $HOME
        env["XINSTRUMENT_STATE_DIR"] = str(Path(cwd) / "state")
        self.prefix = prefix
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, *program, "--prefix", prefix,
             "--config", str(config), *extra],
            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(READY_TIMEOUT_S) or self.proc.poll() is not None:
            self.stop()
            raise AssertionError("IOC did not start:\n" + self.output)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "xinstrument ioc: ready" in line:
                self._ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def pv(self, name: str) -> str:
        return self.prefix + name

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        return self.proc.returncode


def write_config(path: Path, tube_url: str, sensor_px: int = 64) -> Path:
    path.write_text(f"""
[tube]
port = "{tube_url}"

[focus_stage]
port = "sim"

[rotation_stage]
port = "sim"
soft_limits_deg = [-45.0, 45.0]

[camera]
exposure_s = 0.01

[simulation]
sensor_px = {sensor_px}
""")
    return path


@pytest.fixture(scope="module")
def tube_emulator():
    emu = TubeEmulator(warmup_duration_s=0.5)
    url = emu.serve_tcp("127.0.0.1", 0)
    yield emu, url
    emu.close()


@pytest.fixture(scope="module")
def ioc_factory(tmp_path_factory, epics_ports):
    """``start(tube_url, extra_args, program)`` -> a running IocProcess; all are stopped at the
    end. ``program``: the Python arguments before ``--prefix`` (default ``xinstrument ioc``)."""
    started: list[IocProcess] = []

    def start(tube_url: str, extra: list[str] = (),
              program: list[str] = ("-m", "xinstrument.cli", "ioc")) -> IocProcess:
        tmp = tmp_path_factory.mktemp("ioc")
        prefix = f"XIT{uuid.uuid4().hex[:6]}:"
        ioc = IocProcess(prefix, write_config(tmp / "bench.toml", tube_url), tmp, list(extra),
                         list(program))
        started.append(ioc)
        return ioc

    yield start
    for ioc in started:
        ioc.stop()


def _wait_for(predicate, timeout_s: float = 10.0, poll_s: float = 0.05):
    # at least 30 s: a loaded 2-core machine schedules the IOC late, and a wait that
    # succeeds returns at once (no test waits for something not to happen)
    deadline = time.monotonic() + max(timeout_s, 30.0)
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(poll_s)


@pytest.fixture(scope="session")
def wait_for():
    """``wait_for(predicate, timeout_s)``: poll until truthy; returns the last value."""
    return _wait_for


class CA:
    """caget/caput of one IOC's PVs, failing loudly when a PV does not answer."""

    def __init__(self, ioc: IocProcess, epics) -> None:
        self.ioc, self.epics = ioc, epics

    def get(self, name, **kw):
        v = self.epics.caget(self.ioc.pv(name), timeout=5, **kw)
        assert v is not None, f"{self.ioc.pv(name)} did not answer"
        return v

    def put(self, name, value, wait=True, timeout=30):
        assert self.epics.caput(self.ioc.pv(name), value, wait=wait, timeout=timeout) == 1, name

    def pv(self, name, **kw):
        pv = self.epics.PV(self.ioc.pv(name), **kw)
        assert pv.wait_for_connection(timeout=5), name
        return pv

    def severity(self, name) -> int:
        return self.pv(name).get_with_metadata(form="time", timeout=5)["severity"]


@pytest.fixture(scope="session")
def make_ca(epics):
    """``make_ca(ioc)`` -> a :class:`CA` bound to that IOC's prefix."""
    return lambda ioc: CA(ioc, epics)
