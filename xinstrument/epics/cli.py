"""``xinstrument ioc``: serve the instrument over EPICS Channel Access and PV Access."""
from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_ioc(a: argparse.Namespace) -> int:
    from ..errors import UserError
    from .network import NetworkConfigError, configure
    try:
        where = configure(interface=a.interface, allow_network=a.allow_network)
    except NetworkConfigError as exc:
        raise UserError(str(exc)) from None
    if not a.prefix or any(c.isspace() for c in a.prefix):
        raise UserError(f"--prefix must be a non-empty name without spaces, got {a.prefix!r}")
    if a.access_file is not None:
        if not a.access_file.is_file():
            raise UserError(f"access security file {a.access_file} does not exist")
        from .pvdb import parse_acf
        try:
            parse_acf(a.access_file.read_text())
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise UserError(f"access security file {a.access_file}: {exc}") from None
    hosts = [h.strip() for h in a.write_hosts.split(",")] if a.write_hosts else None
    if hosts is not None and not all(hosts):
        raise UserError(f"--write-hosts needs host names separated by commas, got "
                        f"{a.write_hosts!r}")
    from ..config import InstrumentConfig
    from ..instrument import Instrument
    cfg = InstrumentConfig.load(a.config) if a.config else InstrumentConfig.simulated(
        sensor_px=a.sensor_px)
    from .server import run_ioc  # loads EPICS: only after configure()
    return run_ioc(Instrument(cfg), a.prefix, access_file=a.access_file, write_hosts=hosts,
                   pva=not a.no_pva, where=where)


def register(sub) -> None:
    from ..cli import _sensor_px
    p = sub.add_parser(
        "ioc", help="serve the instrument as an EPICS IOC (CA + PVA; loopback by default)",
        description="EPICS IOC for facility control systems: PVs for tube, stages, camera, "
        "HDF5 capture, restoration and scans (docs/epics.md). Serves on 127.0.0.1 only unless "
        "--interface or --allow-network is given. Stop with Ctrl-C or SIGTERM: X-rays go off.")
    p.add_argument("--prefix", default="XI:", help="PV name prefix (default XI:)")
    p.add_argument("--config", type=Path, help="instrument config (TOML); default: simulated "
                   "bench")
    p.add_argument("--sensor-px", type=_sensor_px, default=512,
                   help="simulated bench only: sensor size in pixels (default 512)")
    net = p.add_mutually_exclusive_group()
    net.add_argument("--interface", metavar="ADDR",
                     help="serve on this network interface address (deliberate network use; "
                     "beacon/search lists from the EPICS_* environment)")
    net.add_argument("--allow-network", action="store_true",
                     help="serve as the EPICS_* environment configures (default EPICS: all "
                     "interfaces); deliberate network use")
    p.add_argument("--access-file", type=Path, metavar="ACF",
                   help="EPICS access security file restricting reads/writes")
    p.add_argument("--write-hosts", metavar="HOST[,HOST...]",
                   help="only these client hosts may write (everyone may read)")
    p.add_argument("--no-pva", action="store_true", help="serve Channel Access only")
    p.set_defaults(func=_cmd_ioc)
