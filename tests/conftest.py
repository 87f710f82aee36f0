"""Test-wide settings: keep EPICS on loopback and Qt offscreen before anything imports them."""
import os

# Channel Access and PV Access must never leave this machine (DESIGN.md section 8). The table
# is the IOC's own (importing it loads neither epics nor softioc).
from xinstrument.epics.network import LOOPBACK_ENV as _EPICS_LOOPBACK

os.environ.update(_EPICS_LOOPBACK)
os.environ.setdefault("EPICS_CA_MAX_ARRAY_BYTES", "100000000")   # full frames as image PVs
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("MPLBACKEND", "Agg")
