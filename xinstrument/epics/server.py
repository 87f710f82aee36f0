"""Running the IOC process: instrument up, records, access security, serve until a signal.

Import this module only after :func:`xinstrument.epics.network.configure` (it loads the
EPICS servers, which read the network configuration then).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from .ioc import InstrumentIOC
from .pvdb import AccessRules, CAServer, PVAServer, parse_acf

log = logging.getLogger("xinstrument.epics")


def write_hosts_acf(hosts: list[str]) -> str:
    """Access security rules: everyone reads, only ``hosts`` write."""
    bad = [h for h in hosts if not h or any(c in h for c in " \t\n{}(),\"")]
    if bad or not hosts:
        raise ValueError(f"--write-hosts needs host names separated by commas, got {hosts!r}")
    return ("HAG(xinstrument_writers) { " + ", ".join(hosts) + " }\n"
            "ASG(DEFAULT) {\n"
            "    RULE(1, READ)\n"
            "    RULE(1, WRITE) { HAG(xinstrument_writers) }\n"
            "}\n")


def _load_access_security(path: Path) -> AccessRules:
    if not path.is_file():
        raise FileNotFoundError(f"access security file {path} does not exist")
    try:
        return parse_acf(path.read_text())
    except ValueError as exc:
        raise ValueError(f"access security file {path} was not accepted: {exc}") from None


def run_ioc(instrument, prefix: str = "XI:", access_file: Path | None = None,
            write_hosts: list[str] | None = None, pva: bool = True, where: str = "") -> int:
    """Serve ``instrument`` (not yet connected) under ``prefix`` until SIGINT/SIGTERM.

    Channel Access by caproto, PV Access by p4p, one PV table behind both. On the way out the
    instrument is disconnected, which switches X-rays off; the tube driver's own signal and
    exit hooks do the same if the process is torn down harder."""
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    # installed before the tube connects, so the driver's X-ray-off hook runs first and chains
    # to this one
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    access = None
    if write_hosts:
        access = parse_acf(write_hosts_acf(write_hosts))
    elif access_file is not None:
        access = _load_access_security(Path(access_file))
    instrument.connect()
    ioc = None
    pva_server = None
    loop = asyncio.new_event_loop()
    try:
        ioc = InstrumentIOC(instrument, prefix)
        ca_server = CAServer(ioc.table, access)
        if pva:
            pva_server = PVAServer(ioc.table, access)

        async def main() -> None:
            ioc.start(asyncio.get_running_loop())
            if pva_server is not None:
                pva_server.start()
            ready = threading.Event()
            task = asyncio.ensure_future(ca_server.run(ready.set))
            while not ready.is_set():
                if task.done():
                    task.result()          # the CA server could not start: say why
                await asyncio.sleep(0.05)
            print(f"xinstrument ioc: ready, {len(ioc.table.names())} PVs under {prefix} "
                  f"({'CA + PVA' if pva else 'CA'}); {where}", flush=True)
            while not stop.is_set():
                if task.done():
                    task.result()
                    break
                await asyncio.sleep(0.2)
            print("xinstrument ioc: stopping", flush=True)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        loop.run_until_complete(main())
    finally:
        if ioc is not None:
            ioc.stop()
        if pva_server is not None:
            with contextlib.suppress(Exception):
                pva_server.stop()
        instrument.disconnect()
    print("xinstrument ioc: stopped, instrument disconnected (X-rays off)", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # server threads (p4p) are not joinable from Python: leave without waiting on them
    os._exit(0)
