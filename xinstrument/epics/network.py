"""Where the IOC may serve: loopback unless the operator asks for a network deliberately.

The Channel Access and PV Access libraries read their configuration from ``EPICS_*``
environment variables when they are first loaded, so :func:`configure` must run before
``softioc`` or ``epics`` is imported in the process. The default confines both protocols to
127.0.0.1 (servers bind to it, beacons and searches go only to it), overriding whatever the
shell environment holds, so a bench PC on a facility network never announces itself by accident.
"""
from __future__ import annotations

import ipaddress
import os

# DESIGN.md section 8 / shared/epics-loopback.env
LOOPBACK_ENV: dict[str, str] = {
    "EPICS_CA_AUTO_ADDR_LIST": "NO",
    "EPICS_CA_ADDR_LIST": "127.0.0.1",
    "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
    "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
    "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
    "EPICS_PVA_AUTO_ADDR_LIST": "NO",
    "EPICS_PVA_ADDR_LIST": "127.0.0.1",
    "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
    "EPICS_PVAS_BEACON_ADDR_LIST": "127.0.0.1",
    "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
}

# Large frames on the Image waveform need a CA array limit above the 16 kB default.
MAX_ARRAY_BYTES = "100000000"


class NetworkConfigError(ValueError):
    """An interface option that cannot be honoured."""


def loopback_env() -> dict[str, str]:
    return dict(LOOPBACK_ENV)


def configure(interface: str | None = None, allow_network: bool = False,
              environ: dict[str, str] | None = None) -> str:
    """Set the EPICS network variables in ``environ`` (default ``os.environ``); return a line
    saying where the IOC serves.

    * default: loopback only (the variables of :data:`LOOPBACK_ENV`, overriding the shell's);
    * ``interface="192.0.2.10"``: servers bind to that address only; beacon and search address
      lists come from the environment (the facility's EPICS configuration);
    * ``allow_network=True``: the environment's EPICS configuration as it is (by default all
      interfaces and the broadcast addresses of every interface).
    """
    env = os.environ if environ is None else environ
    env.setdefault("EPICS_CA_MAX_ARRAY_BYTES", MAX_ARRAY_BYTES)
    if interface is not None:
        try:
            addr = ipaddress.ip_address(interface)
        except ValueError:
            raise NetworkConfigError(f"--interface needs an IP address, got {interface!r}") \
                from None
        if addr.version != 4:
            raise NetworkConfigError(f"--interface needs an IPv4 address, got {interface!r}")
        if addr.is_loopback:
            env.update(LOOPBACK_ENV)
            return "serving on loopback only (127.0.0.1)"
        env["EPICS_CAS_INTF_ADDR_LIST"] = str(addr)
        env["EPICS_PVAS_INTF_ADDR_LIST"] = str(addr)
        return (f"serving on the network interface {addr} (beacons/searches per the EPICS_* "
                "environment)")
    if allow_network:
        return "serving on the network as the EPICS_* environment configures it"
    env.update(LOOPBACK_ENV)
    return "serving on loopback only (127.0.0.1); use --interface ADDR to serve a network"
