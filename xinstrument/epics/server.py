"""Running the IOC process: instrument up, records, access security, serve until a signal.

Import this module only after :func:`xinstrument.epics.network.configure` (it loads EPICS).
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from softioc import asyncio_dispatcher, builder, imports, softioc

from .ioc import InstrumentIOC

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


def _load_access_security(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"access security file {path} does not exist")
    fn = imports.dbCore.asSetFilename
    fn.argtypes = [ctypes.c_char_p]
    fn.restype = ctypes.c_long
    if fn(str(path).encode()) != 0:
        raise ValueError(f"access security file {path} was not accepted")


def run_ioc(instrument, prefix: str = "XI:", access_file: Path | None = None,
            write_hosts: list[str] | None = None, pva: bool = True, where: str = "") -> int:
    """Serve ``instrument`` (not yet connected) under ``prefix`` until SIGINT/SIGTERM.

    On the way out the instrument is disconnected, which switches X-rays off; the tube driver's
    own signal and exit hooks do the same if the process is torn down harder."""
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    # installed before the tube connects, so the driver's X-ray-off hook runs first and chains
    # to this one
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    acf_tmp = None
    instrument.connect()
    ioc = None
    try:
        if write_hosts:
            fd, acf_tmp = tempfile.mkstemp(suffix=".acf", prefix="xinstrument-")
            with os.fdopen(fd, "w") as f:
                f.write(write_hosts_acf(write_hosts))
            access_file = Path(acf_tmp)
        dispatcher = asyncio_dispatcher.AsyncioDispatcher()
        ioc = InstrumentIOC(instrument, prefix)
        builder.LoadDatabase()
        if access_file is not None:
            _load_access_security(Path(access_file))
        softioc.iocInit(dispatcher, enable_pva=pva)
        ioc.start(dispatcher)
        print(f"xinstrument ioc: ready, PVs under {prefix} "
              f"({'CA + PVA' if pva else 'CA'}); {where}", flush=True)
        while not stop.wait(0.5):
            pass
        print("xinstrument ioc: stopping", flush=True)
    finally:
        if ioc is not None:
            ioc.stop()
        instrument.disconnect()
        if acf_tmp is not None:
            os.unlink(acf_tmp)
    print("xinstrument ioc: stopped, instrument disconnected (X-rays off)", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # the EPICS server threads are not joinable from Python: leave without waiting on them
    os._exit(0)
