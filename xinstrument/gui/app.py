"""Start the operator console on an instrument (simulated bench unless a config is given)."""
from __future__ import annotations

import signal
import sys
from pathlib import Path


def run_gui(config: Path | None = None, sensor_px: int = 512, argv: list[str] | None = None) -> int:
    """Connect the instrument, show the main window, and on exit switch X-rays off and
    disconnect. Returns the Qt exit code."""
    from PyQt6.QtCore import QTimer
    from PyQt6.QtWidgets import QApplication

    from ..config import InstrumentConfig
    from ..instrument import Instrument
    from .mainwindow import MainWindow

    cfg = InstrumentConfig.load(config) if config else InstrumentConfig.simulated(
        sensor_px=sensor_px)
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv[:1])
    app.setApplicationName("xinstrument")
    app.setOrganizationName("xinstrument")
    instrument = Instrument(cfg)
    instrument.connect()
    try:
        window = MainWindow(instrument)
        window.show()
        # Ctrl-C / SIGTERM in the terminal close the window the normal way (acquisition
        # stopped, X-rays off); the timer lets the interpreter run its signal handlers
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: window.close())
        tick = QTimer()
        tick.timeout.connect(lambda: None)
        tick.start(200)
        return int(app.exec())
    finally:
        instrument.disconnect()   # X-rays off first, then close the devices
