"""PV Access with a PVA client (p4p, in the dev extras) against the IOC on loopback."""
from __future__ import annotations

import os

import numpy as np
import pytest

p4p_client = pytest.importorskip(
    "p4p.client.thread", reason="p4p (PV Access client) is not installed: pip install -e .[dev]")


@pytest.fixture(scope="module")
def ioc(ioc_factory, tube_emulator):
    return ioc_factory(tube_emulator[1])


@pytest.fixture(scope="module")
def pva(ioc, epics_ports):
    # searches go to 127.0.0.1 only, on this run's ports (tests/conftest.py, epics_ports)
    assert os.environ["EPICS_PVA_ADDR_LIST"] == "127.0.0.1"
    assert os.environ["EPICS_PVA_AUTO_ADDR_LIST"] == "NO"
    ctx = p4p_client.Context("pva", conf={
        "EPICS_PVA_ADDR_LIST": "127.0.0.1", "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVA_BROADCAST_PORT": str(epics_ports["pva_bcast"]),
        "EPICS_PVA_SERVER_PORT": str(epics_ports["pva"])}, useenv=False)
    yield ctx
    ctx.close()


def test_pva_reads_values_with_units_and_arrays(ioc, pva):
    z = pva.get(ioc.pv("FOCUS:Z_HLM"), timeout=10)
    assert float(z) == pytest.approx(400.0)
    assert z.raw.display.units == "um"
    state = pva.get(ioc.pv("TUBE:State_RBV"), timeout=10)
    assert state.raw.value.choices[state.raw.value.index] in ("WARMUP_NEEDED", "STANDBY")
    img = pva.get(ioc.pv("CAM:Image"), timeout=10)
    rows = int(pva.get(ioc.pv("CAM:ArraySizeY_RBV"), timeout=10))
    cols = int(pva.get(ioc.pv("CAM:ArraySizeX_RBV"), timeout=10))
    assert np.asarray(img).size in (0, rows * cols)   # empty until the first frame
    names = [ioc.pv(n) for n in ("Heartbeat_RBV", "SCAN:TomoArc", "SCAN:TomoProgress_RBV")]
    assert all(v is not None for v in pva.get(names, timeout=10))


def test_pva_put_completes_when_the_move_has_finished(ioc, pva, epics):
    # wait=True (record[block=true]): the put returns when the record's processing (the move)
    # has completed
    pva.put(ioc.pv("FOCUS:Z"), 120.0, wait=True, timeout=30)
    assert epics.caget(ioc.pv("FOCUS:Z_RBV"), timeout=5) == pytest.approx(120.0, abs=0.01)
    assert epics.caget(ioc.pv("FOCUS:Z_DMOV"), timeout=5) == 1
    pva.put(ioc.pv("SCAN:TomoArc"), 12.5, wait=True, timeout=10)
    assert float(pva.get(ioc.pv("SCAN:TomoArc"), timeout=10)) == pytest.approx(12.5)
    assert epics.caget(ioc.pv("SCAN:TomoArc"), timeout=5) == pytest.approx(12.5)


def test_a_bad_pva_put_is_rejected_and_the_value_stays(ioc, pva, epics):
    before = epics.caget(ioc.pv("FOCUS:Z_HLM"), timeout=5)
    with pytest.raises(p4p_client.RemoteError, match="900"):       # beyond the 400 um travel
        pva.put(ioc.pv("FOCUS:Z_HLM"), 900.0, wait=True, timeout=10)
    assert epics.caget(ioc.pv("FOCUS:Z_HLM"), timeout=5) == pytest.approx(before)
    assert "refused" in epics.caget(ioc.pv("StatusMessage_RBV"), as_string=True, timeout=5)
