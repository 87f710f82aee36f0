"""Stopping the IOC switches X-rays off; access security; where the IOC serves by default."""
from __future__ import annotations

import os

import pytest

from xinstrument.epics.network import LOOPBACK_ENV, NetworkConfigError, configure


def test_stopping_the_ioc_switches_xrays_off(ioc_factory, tube_emulator, epics, wait_for):
    emu, url = tube_emulator
    ioc = ioc_factory(url)
    assert epics.caput(ioc.pv("TUBE:WarmUp"), 1, wait=True, timeout=30) == 1
    assert epics.caput(ioc.pv("TUBE:XrayOn"), 1, wait=True, timeout=30) == 1
    assert emu.xray_on
    n_off = emu.commands_received.count("XOF")
    assert ioc.stop() == 0
    assert not emu.xray_on
    # the IOC commanded the beam off itself (not only the controller's reaction to the link)
    assert emu.commands_received.count("XOF") > n_off
    assert "X-rays off" in ioc.output


def test_stopping_the_ioc_mid_scan_closes_the_file_and_switches_xrays_off(
        ioc_factory, tube_emulator, epics, wait_for, tmp_path):
    from xinstrument.storage import ScanReader
    emu, url = tube_emulator
    ioc = ioc_factory(url)
    for name, value in (("TUBE:WarmUp", 1), ("HDF1:FilePath", str(tmp_path)),
                        ("SCAN:TomoFileName", "stopped.h5"), ("SCAN:TomoArc", 20.0),
                        ("SCAN:TomoNumAngles", 40), ("SCAN:TomoFramesPerAngle", 3)):
        assert epics.caput(ioc.pv(name), value, wait=True, timeout=30) == 1, name
    start = epics.PV(ioc.pv("SCAN:TomoStart"))
    assert start.wait_for_connection(timeout=5)
    start.put(1, use_complete=True)
    assert wait_for(lambda: epics.caget(ioc.pv("SCAN:TomoState_RBV"), as_string=True,
                                        timeout=5) == "Projections", 60)
    assert emu.xray_on
    assert ioc.stop() == 0
    assert not emu.xray_on
    with ScanReader(tmp_path / "stopped.h5") as r:
        assert not r.complete and "aborted" in r.reason


def test_write_hosts_restricts_writes(ioc_factory, tube_emulator, epics):
    ioc = ioc_factory(tube_emulator[1], ["--write-hosts", "writer.invalid"])
    pv = epics.PV(ioc.pv("TUBE:Voltage"))
    assert pv.wait_for_connection(timeout=5)
    assert pv.read_access and not pv.write_access
    before = pv.get(timeout=5)
    with pytest.raises(epics.ca.CASeverityException, match="Write access denied"):
        pv.put(before + 10, wait=True, timeout=5)
    assert epics.caget(ioc.pv("TUBE:Voltage"), timeout=5) == pytest.approx(before)
    assert epics.caget(ioc.pv("Heartbeat_RBV"), timeout=5) is not None
    ioc.stop()


def test_default_is_loopback_whatever_the_shell_says():
    env = {"EPICS_CA_ADDR_LIST": "10.0.0.255", "EPICS_CA_AUTO_ADDR_LIST": "YES",
           "EPICS_PVAS_INTF_ADDR_LIST": "0.0.0.0"}
    where = configure(environ=env)
    assert all(env[k] == v for k, v in LOOPBACK_ENV.items())
    assert "loopback" in where


def test_interface_and_allow_network_are_deliberate():
    env = {"EPICS_CA_ADDR_LIST": "192.0.2.255"}
    configure(interface="192.0.2.10", environ=env)
    assert env["EPICS_CAS_INTF_ADDR_LIST"] == "192.0.2.10"
    assert env["EPICS_PVAS_INTF_ADDR_LIST"] == "192.0.2.10"
    assert env["EPICS_CA_ADDR_LIST"] == "192.0.2.255"     # the facility's own settings
    env = {"EPICS_CA_ADDR_LIST": "192.0.2.255"}
    configure(allow_network=True, environ=env)
    assert env == {"EPICS_CA_ADDR_LIST": "192.0.2.255",
                   "EPICS_CA_MAX_ARRAY_BYTES": env["EPICS_CA_MAX_ARRAY_BYTES"]}
    with pytest.raises(NetworkConfigError):
        configure(interface="not-an-address", environ={})


def test_cli_refuses_bad_network_options(tmp_path):
    from xinstrument.cli import main
    assert main(["ioc", "--interface", "bench-pc"]) == 2
    assert main(["ioc", "--access-file", str(tmp_path / "missing.acf")]) == 2
    # the test process stays on loopback
    assert os.environ["EPICS_CA_ADDR_LIST"] == "127.0.0.1"
