"""Operator console tests: real widgets (offscreen) over the simulated Instrument."""
import contextlib

import pytest
from PyQt6.QtCore import QSettings

from xinstrument.config import InstrumentConfig
from xinstrument.instrument import Instrument


def make_instrument(sensor_px: int = 128, sample: str = "pcb") -> Instrument:
    cfg = InstrumentConfig.simulated(sensor_px=sensor_px, sample=sample, seed=3)
    cfg.simulation.warmup_duration_s = 0.8   # long enough for intermediate progress polls
    cfg.camera.exposure_s = 0.02
    return Instrument(cfg)


@pytest.fixture
def inst():
    i = make_instrument()
    i.connect()
    yield i
    i.disconnect()


@pytest.fixture
def settings(tmp_path):
    return QSettings(str(tmp_path / "gui.ini"), QSettings.Format.IniFormat)


@contextlib.contextmanager
def open_window(qtbot, inst, settings):
    """The console on ``inst``, shown and polling; closed (X-rays off) on the way out."""
    from xinstrument.gui.mainwindow import MainWindow
    w = MainWindow(inst, settings, poll_ms=100)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.source.state_label.text() not in ("-", ""), timeout=5000)
    try:
        yield w
    finally:
        if w.isVisible():
            w.close()


@pytest.fixture
def window(qtbot, inst, settings):
    with open_window(qtbot, inst, settings) as w:
        yield w


def ready(qtbot, w, kv=50, ua=80, xray=True):
    """Warm up, set kV/uA and switch X-rays on, all through the widgets."""
    emu = w.instrument.tube_emulator
    w.source.warm_btn.click()
    qtbot.waitUntil(lambda: emu.state.name == "STANDBY" and w.source.warm_btn.isEnabled(),
                    timeout=10000)
    w.source.kv.setValue(kv)
    w.source.ua.setValue(ua)
    w.source.apply_btn.click()
    qtbot.waitUntil(lambda: emu._kv_set == kv and emu._ua_set == ua
                    and w.source.apply_btn.isEnabled(), timeout=5000)
    if xray:
        w.source.on_btn.click()
        qtbot.waitUntil(lambda: emu.xray_on and w.source.on_btn.isEnabled(), timeout=10000)


def references(qtbot, w, n=3):
    a = w.acquisition
    a.n_refs.setValue(n)
    a.darks_btn.click()
    qtbot.waitUntil(lambda: w.instrument.dark is not None and a.darks_btn.isEnabled(),
                    timeout=20000)
    a.flats_btn.click()
    qtbot.waitUntil(lambda: w.instrument.corrector is not None and a.flats_btn.isEnabled(),
                    timeout=20000)


def acquire_one(qtbot, w, timeout=20000):
    """Click "Acquire one" and wait until the window shows that frame (the references before
    it go through the live view too)."""
    a = w.acquisition
    seen = w.bridge.frames_seen
    a.acquire_btn.click()
    qtbot.waitUntil(lambda: a.acquire_btn.isEnabled() and w.bridge.frames_seen > seen
                    and w.instrument.last_frame is not None
                    and w.image.frame is w.instrument.last_frame, timeout=timeout)
    return w.image.frame
