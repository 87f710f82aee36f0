"""The operator console: live image in the middle, control panels in tabs, log below, an
always-visible X-RAY OFF button and STOP, keyboard shortcuts for both. Each tab says when an
operation (live view, a scan) holds the instrument."""
from __future__ import annotations

import importlib.util

from PyQt6.QtCore import QByteArray, QSettings, Qt
from PyQt6.QtGui import QAction, QCloseEvent, QKeySequence
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDockWidget,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from .acquisition import AcquisitionPanel, FocusPanel
from .analysis import CalibrationPanel, RestorationPanel
from .bridge import InstrumentBridge
from .imageview import LiveImagePanel, release_views
from .panels import LogPanel, SourcePanel, StagePanel
from .widgets import XrayLamp

XRAY_OFF_KEYS = ("F12", "Ctrl+Shift+X")


def TABS(w) -> tuple[tuple[str, str, QWidget], ...]: 
    """(tab name, tooltip, panel) of the control tabs before the optional tomosynthesis tab."""
    return (("Source", "X-ray tube: kV, uA, focus mode, warm-up, X-rays on/off", w.source),
            ("Stage", "Focus and rotation axes", w.stage),
            ("Acquire", "Exposure, averaging, references, live view, recording", w.acquisition),
            ("Focus", "Focus scan: sharpness curve and best focus", w.focus),
            ("Restore", "Restoration: profile, method, before / after", w.restoration),
            ("Calibrate", "MTF from an edge, NNPS from flats", w.calibration))
STOP_KEYS = ("Esc",)


class _TabScroll(QScrollArea):
    """A tab's page: scrolls vertically only. It is as wide as its panel needs (at least), so
    the dock grows to fit the panel instead of clipping it or scrolling sideways."""

    def __init__(self, widget: QWidget) -> None:
        super().__init__()
        self.setWidget(widget)
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFrameShape(QScrollArea.Shape.NoFrame)

    def minimumSizeHint(self):
        hint = super().minimumSizeHint()
        w = self.widget()
        if w is not None:
            need = (w.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
                    + 2 * self.frameWidth())
            hint.setWidth(max(hint.width(), need))
        return hint


def _scroll(widget: QWidget) -> QScrollArea:
    return _TabScroll(widget)


def _tab(panel) -> QScrollArea:
    """A panel under its busy line, scrollable. Its text lines wrap: a long result or status
    line makes the tab taller, never the dock wider than the screen."""
    for label in panel.findChildren(QLabel):
        label.setWordWrap(True)
    box = QWidget()
    lay = QVBoxLayout(box)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(panel.busy_label)
    lay.addWidget(panel, 1)
    return _scroll(box)


def tomosynthesis_available() -> bool:
    """True when a tomosynthesis panel module (xinstrument.gui.tomo) is installed."""
    return importlib.util.find_spec("xinstrument.gui.tomo") is not None


class MainWindow(QMainWindow):
    """Main window over a connected :class:`~xinstrument.instrument.Instrument`.

    Closing the window stops any acquisition and switches X-rays off; the caller still owns the
    instrument (and disconnects it).
    """

    def __init__(self, instrument, settings: QSettings | None = None, poll_ms: int = 500,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.instrument = instrument
        self.settings = settings if settings is not None else QSettings("xinstrument", "gui")
        self.bridge = InstrumentBridge(instrument, poll_ms=poll_ms, parent=self)
        self.setWindowTitle(f"xinstrument: {instrument.config.tube.model} / "
                            f"{instrument.camera_name}")

        # --- central: error banner + live image
        self.image = LiveImagePanel(self.bridge)
        self.error_banner = QLabel("")
        self.error_banner.setWordWrap(True)
        self.error_banner.setStyleSheet("background: #ffd8d8; color: #900000; padding: 4px; "
                                        "font-weight: bold")
        self.error_banner.setVisible(False)
        self.dismiss_btn = QPushButton("dismiss")
        self.dismiss_btn.setVisible(False)
        self.dismiss_btn.clicked.connect(self.clear_error)
        central = QWidget()
        cl = QVBoxLayout(central)
        cl.setContentsMargins(0, 0, 0, 0)
        banner = QHBoxLayout()
        banner.addWidget(self.error_banner, 1)
        banner.addWidget(self.dismiss_btn)
        cl.addLayout(banner)
        cl.addWidget(self.image, 1)
        self.setCentralWidget(central)

        # --- panels
        self.source = SourcePanel(self.bridge)
        self.stage = StagePanel(self.bridge)
        self.acquisition = AcquisitionPanel(self.bridge, self.image)
        self.focus = FocusPanel(self.bridge)
        self.restoration = RestorationPanel(self.bridge, self.image)
        self.calibration = CalibrationPanel(self.bridge, self.image)
        self.log = LogPanel(self.bridge)
        self.panels = [self.source, self.stage, self.acquisition, self.focus, self.restoration,
                       self.calibration]
        self.tabs = QTabWidget()
        # short tab names: every tab stays in sight on a 1400 px screen (no scroll arrows)
        self.tabs.tabBar().setUsesScrollButtons(False)
        self.tabs.tabBar().setExpanding(False)
        for name, tip, w in TABS(self):
            self.tabs.addTab(_tab(w), name)
            self.tabs.setTabToolTip(self.tabs.count() - 1, tip)
        self.tomo = None
        if tomosynthesis_available():
            from .tomo import TomoPanel
            self.tomo = TomoPanel(self.bridge)
            self.panels.append(self.tomo)
            self.tabs.addTab(_tab(self.tomo), "Tomo")
            self.tabs.setTabToolTip(self.tabs.count() - 1,
                                    "Tomosynthesis: plan, run, reconstruct, slices")
        dock = QDockWidget("Controls", self)
        dock.setObjectName("controls")
        dock.setWidget(self.tabs)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                         | QDockWidget.DockWidgetFeature.DockWidgetFloatable)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        self.log_dock = log_dock = QDockWidget("Log", self)
        log_dock.setObjectName("log")
        log_dock.setWidget(self.log)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, log_dock)

        # --- safety bar: always visible
        bar = QToolBar("Safety", self)
        bar.setObjectName("safety")
        bar.setMovable(False)
        self.xray_off_btn = QPushButton("X-RAY OFF")
        self.xray_off_btn.setToolTip("Switch X-rays off now (" + " or ".join(XRAY_OFF_KEYS) + ")")
        self.xray_off_btn.setStyleSheet("background: #c00000; color: white; font-weight: bold; "
                                        "font-size: 13pt; padding: 6px 18px")
        self.xray_off_btn.clicked.connect(self.xray_off)
        self.stop_btn = QPushButton("STOP")
        self.stop_btn.setToolTip("Stop acquisition, scans and motion (Esc)")
        self.stop_btn.setStyleSheet("background: #e0a000; font-weight: bold; font-size: 13pt; "
                                    "padding: 6px 18px")
        self.stop_btn.clicked.connect(self.stop_all)
        self.lamp = XrayLamp()
        self.summary = QLabel("-")
        bar.addWidget(self.lamp)
        bar.addWidget(self.xray_off_btn)
        bar.addWidget(self.stop_btn)
        bar.addSeparator()
        bar.addWidget(self.summary)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, bar)

        self.xray_off_action = QAction("X-rays off", self)
        self.xray_off_action.setShortcuts([QKeySequence(k) for k in XRAY_OFF_KEYS])
        self.xray_off_action.setShortcutContext(Qt.ShortcutContext.ApplicationShortcut)
        self.xray_off_action.triggered.connect(self.xray_off)
        self.stop_action = QAction("Stop", self)
        self.stop_action.setShortcuts([QKeySequence(k) for k in STOP_KEYS])
        self.stop_action.setShortcutContext(Qt.ShortcutContext.ApplicationShortcut)
        self.stop_action.triggered.connect(self.stop_all)
        self.addAction(self.xray_off_action)
        self.addAction(self.stop_action)

        self.bridge.state.connect(self.update_state)
        self.bridge.error.connect(self.show_error)
        self.image.frame_shown.connect(self._first_frame)
        self.statusBar().showMessage("ready")
        self.restore_settings()
        self.bridge.refresh()

    # --- safety --------------------------------------------------------------------------------
    def xray_off(self) -> None:
        """Switch X-rays off; runs at once in the GUI thread (never queued behind other work)."""
        try:
            self.instrument.xray_off()
        except Exception as exc:  # noqa: BLE001 - shown, and the log says it was not confirmed
            self.show_error(f"X-RAY OFF NOT CONFIRMED: {exc}")
            return
        self.statusBar().showMessage("X-rays switched off", 5000)
        self.log.add("X-rays off (operator)")
        self.bridge.refresh()

    def stop_all(self) -> None:
        if self.tomo is not None:
            self.tomo.abort()
        self.instrument.abort()
        self.bridge.run(self.instrument.stop_motion, what="stop motion")
        self.acquisition.stop()
        self.statusBar().showMessage("stopped", 5000)

    # --- state and errors ----------------------------------------------------------------------
    def update_state(self, snap: dict) -> None:
        for p in self.panels:
            p.update_state(snap)
            p.show_busy(snap.get("busy"))
        parts = []
        t = snap.get("tube")
        self.lamp.show_tube(t)
        if t and t.get("error_code") is not None:
            parts.append(f"device error {t['error_code']}: {t['error_text']}")
        if snap.get("focus_um") is not None:
            parts.append(f"focus {snap['focus_um']:.2f} um")
        parts.append(f"busy: {snap.get('busy') or 'idle'}")
        st = snap.get("stream")
        if st:
            stages = st.get("stages", {})
            fps = stages.get("average", {}).get("fps", 0.0)
            parts.append(f"stream {fps:.1f} frames/s, camera dropped {st.get('camera_dropped')}, "
                         f"display dropped {stages.get('sink:events', {}).get('dropped', 0)}")
        self.summary.setText("   |   ".join(parts))

    def show_error(self, message: str) -> None:
        self.error_banner.setText(message)
        self.error_banner.setVisible(True)
        self.dismiss_btn.setVisible(True)
        self.statusBar().showMessage(message, 10000)

    def clear_error(self) -> None:
        self.error_banner.setVisible(False)
        self.dismiss_btn.setVisible(False)

    def _first_frame(self, _frame) -> None:
        if self.image.frames_shown == 1:
            self.image.fit_rois()

    # --- settings ------------------------------------------------------------------------------
    def _fields(self) -> dict[str, QWidget]:
        out: dict[str, QWidget] = {"view/mode": self.image.mode}
        for p in self.panels:
            out.update(p.settings_fields())
        return out

    def save_settings(self) -> None:
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.setValue("window/tab", self.tabs.currentIndex())
        for key, w in self._fields().items():
            if isinstance(w, (QDoubleSpinBox, QSpinBox)):
                s.setValue(key, w.value())
            elif isinstance(w, QCheckBox):
                s.setValue(key, w.isChecked())
            elif isinstance(w, QComboBox):
                s.setValue(key, w.currentText())
            elif isinstance(w, QLineEdit):
                s.setValue(key, w.text())
        s.sync()

    def restore_settings(self) -> None:
        s = self.settings
        geo = s.value("window/geometry")
        if isinstance(geo, QByteArray):
            self.restoreGeometry(geo)
        else:
            self.resize(1500, 950)
        state = s.value("window/state")
        if isinstance(state, QByteArray):
            self.restoreState(state)
        else:
            # first start: the image and the controls get the height, the log a few lines
            self.resizeDocks([self.log_dock], [130], Qt.Orientation.Vertical)
        for key, w in self._fields().items():
            v = s.value(key)
            if v is None:
                continue
            try:
                if isinstance(w, QDoubleSpinBox):
                    w.setValue(float(v))
                elif isinstance(w, QSpinBox):
                    w.setValue(int(float(v)))
                elif isinstance(w, QCheckBox):
                    w.setChecked(v in (True, "true", "1", 1))
                elif isinstance(w, QComboBox):
                    if w.findText(str(v)) >= 0:
                        w.setCurrentText(str(v))
                elif isinstance(w, QLineEdit):
                    w.setText(str(v))
            except (TypeError, ValueError):
                continue
        tab = s.value("window/tab")
        if tab is not None:
            self.tabs.setCurrentIndex(int(tab))

    # --- closing -------------------------------------------------------------------------------
    def closeEvent(self, event: QCloseEvent) -> None:
        """Stop acquisition, switch X-rays off, remember the settings."""
        self.save_settings()
        self.image.timer.stop()
        inst = self.instrument
        if self.tomo is not None:
            # the scan switches X-rays on after its darks: let it end before switching off
            self.tomo.shutdown()
        inst.abort()
        try:
            inst.stop_stream(timeout_s=10.0)
        except Exception as exc:  # noqa: BLE001 - closing continues; the log records it
            self.log.add(f"stream did not stop cleanly: {exc}", error=True)
        try:
            inst.xray_off()
        except Exception as exc:  # noqa: BLE001
            self.log.add(f"X-rays off not confirmed on close: {exc}", error=True)
        self.bridge.close()
        release_views(self)
        super().closeEvent(event)
