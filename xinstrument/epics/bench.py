"""Benchmark: frame rate and IOC CPU during continuous acquisition, with no client and with N
Channel Access clients monitoring the image, in one run.

    python -m xinstrument.epics.bench [--clients 10] [--seconds 10] [--sensor-px 256]

One ``xinstrument ioc`` (simulated bench) on loopback and free ports. Each client is its own
process (its own CA circuit) monitoring ``CAM:Image`` and ``CAM:ArrayCounter_RBV``; a client's
dropped updates are the frames the IOC published while it listened (ArrayCounter_RBV from its
first to its last update) minus the image updates it received. CPU is the IOC process's
user + system time over the phase (100 % = one core).
"""
from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .network import LOOPBACK_ENV


def _free_port(taken: set[int]) -> int:
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


def _env() -> dict[str, str]:
    taken: set[int] = set()
    ca, rep, pva, bc = (_free_port(taken) for _ in range(4))
    env = dict(os.environ)
    env.update(LOOPBACK_ENV)
    env.update({"EPICS_CA_SERVER_PORT": str(ca), "EPICS_CAS_SERVER_PORT": str(ca),
                "EPICS_CA_REPEATER_PORT": str(rep), "EPICS_PVA_SERVER_PORT": str(pva),
                "EPICS_PVAS_SERVER_PORT": str(pva), "EPICS_PVA_BROADCAST_PORT": str(bc),
                "EPICS_PVAS_BROADCAST_PORT": str(bc), "EPICS_CA_MAX_ARRAY_BYTES": "100000000"})
    return env


def _client(prefix: str, env: dict[str, str], ready, stop, out) -> None:
    """One monitoring client (a separate process): counts image and counter updates."""
    os.environ.update(env)
    try:
        import epicscorelibs.path.pyepics  # noqa: F401
    except ImportError:
        pass
    import epics
    counters: list[int] = []
    images = [0]
    lock = threading.Lock()

    def on_counter(value=None, **kw):
        with lock:
            counters.append(int(value))

    def on_image(value=None, **kw):
        with lock:
            if counters:              # count images from the first counter seen on
                images[0] += 1
    c = epics.PV(prefix + "CAM:ArrayCounter_RBV", callback=on_counter, auto_monitor=True)
    img = epics.PV(prefix + "CAM:Image", callback=on_image, auto_monitor=True)
    ok = c.wait_for_connection(10) and img.wait_for_connection(10)
    ready.set()
    stop.wait()
    time.sleep(1.0)                   # updates in flight
    with lock:
        seen = (counters[-1] - counters[0]) if len(counters) > 1 else 0
        gaps = sum(b - a - 1 for a, b in itertools.pairwise(counters) if b > a + 1)
        out.put({"connected": bool(ok), "frames": seen, "images": max(images[0] - 1, 0),
                 "counter_gaps": gaps})


def _phase(ioc, epics, prefix: str, seconds: float) -> dict[str, float]:
    import psutil
    proc = psutil.Process(ioc.pid)
    acquire = epics.PV(prefix + "CAM:Acquire")
    acquire.wait_for_connection(10)
    acquire.put(1, wait=False)
    time.sleep(1.0)                   # running
    n0 = epics.caget(prefix + "CAM:ArrayCounter_RBV", timeout=5)
    t0, c0 = time.monotonic(), proc.cpu_times()
    time.sleep(seconds)
    n1 = epics.caget(prefix + "CAM:ArrayCounter_RBV", timeout=5)
    t1, c1 = time.monotonic(), proc.cpu_times()
    epics.caput(prefix + "CAM:Acquire", 0, wait=False)
    time.sleep(1.0)
    cpu = (c1.user - c0.user + c1.system - c0.system) / (t1 - t0)
    return {"fps": (n1 - n0) / (t1 - t0), "cpu_percent": 100.0 * cpu}


def run(n_clients: int = 10, seconds: float = 10.0, sensor_px: int = 256) -> dict:
    env = _env()
    os.environ.update(env)
    try:                              # libca and caRepeater from the wheel, before epics loads
        import epicscorelibs.path.pyepics  # noqa: F401
    except ImportError:
        pass
    import epics
    prefix = "XIB:"
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        env["XINSTRUMENT_STATE_DIR"] = tmp
        ioc = subprocess.Popen([sys.executable, "-m", "xinstrument.cli", "ioc", "--prefix",
                                prefix, "--sensor-px", str(sensor_px)], env=env, cwd=tmp,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in ioc.stdout:
                if "xinstrument ioc: ready" in line:
                    break
            else:
                raise RuntimeError("the IOC did not start")
            threading.Thread(target=lambda: [None for _ in ioc.stdout], daemon=True).start()
            epics.caput(prefix + "CAM:AcquireTime", 0.005, wait=True, timeout=10)
            epics.caput(prefix + "CAM:ImageMode", "Continuous", wait=True, timeout=10)
            alone = _phase(ioc, epics, prefix, seconds)
            ctx = mp.get_context("spawn")
            ready = [ctx.Event() for _ in range(n_clients)]
            stop = ctx.Event()
            out = ctx.Queue()
            procs = [ctx.Process(target=_client, args=(prefix, env, r, stop, out))
                     for r in ready]
            for p in procs:
                p.start()
            for r in ready:
                r.wait(60)
            watched = _phase(ioc, epics, prefix, seconds)
            stop.set()
            clients = [out.get(timeout=60) for _ in procs]
            for p in procs:
                p.join(30)
        finally:
            ioc.terminate()
            ioc.wait(30)
    dropped = [c["frames"] - c["images"] + c["counter_gaps"] for c in clients]
    return {"alone": alone, "watched": watched, "clients": clients, "dropped": dropped,
            "sensor_px": sensor_px, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--sensor-px", type=int, default=256)
    a = p.parse_args(argv)
    if a.clients < 1 or a.seconds <= 0 or a.sensor_px < 16:
        print("error: --clients >= 1, --seconds > 0, --sensor-px >= 16", file=sys.stderr)
        return 2
    r = run(a.clients, a.seconds, a.sensor_px)
    al, wa = r["alone"], r["watched"]
    mb = a.sensor_px ** 2 * 4 / 1e6
    print(f"EPICS IOC, {a.sensor_px} x {a.sensor_px} float32 frames ({mb:.2f} MB), "
          f"{a.seconds:g} s per phase")
    print(f"  no client:      {al['fps']:7.1f} frames/s   IOC CPU {al['cpu_percent']:6.1f} %")
    print(f"  {a.clients:2d} CA clients:  {wa['fps']:7.1f} frames/s   IOC CPU "
          f"{wa['cpu_percent']:6.1f} %   (frame rate ratio {wa['fps'] / max(al['fps'], 1e-9):.2f},"
          f" CPU ratio {wa['cpu_percent'] / max(al['cpu_percent'], 1e-9):.2f})")
    print(f"  image updates per client: "
          f"{', '.join(str(c['images']) for c in r['clients'])} of "
          f"{', '.join(str(c['frames']) for c in r['clients'])} frames published")
    print(f"  dropped updates: {sum(r['dropped'])} "
          f"(per client {', '.join(str(d) for d in r['dropped'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
