"""PI's own Python client (PIPython, pure-Python TCP gateway) drives the GCS emulator: the
emulator speaks GCS 2.0 as PI's software expects it, so what the driver tests prove against the
emulator holds for the protocol PI's tools use."""
from __future__ import annotations

import gc
import time

import pytest

pisocket = pytest.importorskip("pipython.pidevice.interfaces.pisocket")
from pipython.pidevice.gcscommands import GCSCommands
from pipython.pidevice.gcserror import GCSError
from pipython.pidevice.gcsmessages import GCSMessages

from drivers.emulators import AxisSpec, GcsEmulator


@pytest.fixture
def pidevice():
    emu = GcsEmulator({"1": AxisSpec("mm", 0.0, 25.0, 50.0, initial=1.0),
                       "2": AxisSpec("deg", -180.0, 180.0, 360.0)})
    port = int(emu.serve_tcp().rsplit(":", 1)[1])
    try:
        with pisocket.PISocket("127.0.0.1", port) as gateway:
            messages = GCSMessages(gateway)
            messages.timeout = 2000    # ms; the emulator answers at once
            with GCSCommands(messages) as dev:
                yield dev, emu
            del dev, messages
    finally:
        gc.collect()     # PIPython closes its socket in __del__: before the next test's opens
        emu.close()


def _wait_on_target(dev, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(dev.qONT().values()):
        assert time.monotonic() < deadline, "axes did not reach their targets"
        time.sleep(0.02)


def test_pipython_connect_servo_reference_move(pidevice):
    dev, emu = pidevice
    assert "Physik Instrumente" in dev.qIDN()
    assert list(dev.axes) == ["1", "2"]
    dev.SVO("1", True)
    assert dev.qSVO("1")["1"] is True
    dev.FRF("1")
    _wait_on_target(dev)
    assert dev.qFRF("1")["1"] is True
    dev.MOV("1", 2.5)
    _wait_on_target(dev)
    assert dev.qPOS("1")["1"] == pytest.approx(2.5)
    assert emu.position("1") == pytest.approx(2.5)
    assert dev.qONT()["1"] is True
    assert dev.qERR() == 0
    assert dev.qTMN("1")["1"] == 0.0 and dev.qTMX("1")["1"] == 25.0
    assert emu.commands_received[0] == "CSV?"     # PIPython asks the GCS version first


def test_pipython_sees_controller_errors(pidevice):
    dev, _ = pidevice
    # moving an axis that is neither servo-controlled nor referenced: error 5
    with pytest.raises(GCSError) as ei:
        dev.MOV("2", 10.0)
    assert ei.value.val == 5
    dev.SVO("2", True)
    dev.FRF("2")
    _wait_on_target(dev)
    with pytest.raises(GCSError) as ei:     # outside the travel range: error 7
        dev.MOV("2", 500.0)
    assert ei.value.val == 7
    assert dev.qERR() == 0                  # read and cleared by PIPython's check


def test_pipython_motion_bitmask_and_stop(pidevice):
    dev, emu = pidevice
    dev.SVO("2", True)
    dev.FRF("2")
    _wait_on_target(dev)
    dev.MOV("2", 170.0)                     # 0.47 s at 360 deg/s
    assert dev.IsMoving("2")["2"] is True   # #5 bitmask
    dev.StopAll(noraise=True)               # #24, leaves error 10 (read by noraise)
    assert dev.IsMoving("2")["2"] is False
    assert 0.0 < dev.qPOS("2")["2"] < 170.0
    assert emu.last_error == 0
