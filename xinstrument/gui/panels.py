"""Control panels: X-ray source, stages, log. Each is a thin client of the Instrument.

Panels read the instrument through the bridge's ``state`` snapshots and events and act through
Instrument methods run on the bridge's worker threads; they hold no device logic of their own.
"""
from __future__ import annotations

import html
import time

from PyQt6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .widgets import LimitedSpinBox, status_label

STATE_TEXT = {
    "WARMUP_NEEDED": "warm-up needed",
    "WARMING_UP": "warming up",
    "STANDBY": "standby (X-rays off)",
    "XRAY_ON": "X-RAYS ON",
    "OVERLOAD": "OVERLOAD (reset needed)",
    "NOT_READY": "not ready",
    "SELF_TEST": "self test",
}


class Panel(QWidget):
    """Base: the bridge, the instrument, a message line and a settings registry."""

    def __init__(self, bridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.instrument = bridge.instrument
        self.message = status_label()
        self.message.setStyleSheet("color: #b00000")
        # placed above the panel by the window; shown while an operation holds the instrument
        self.busy_label = status_label()
        self.busy_label.setStyleSheet("background: #fff0c0; color: #604000; padding: 3px")
        self.busy_label.setVisible(False)

    def say(self, text: str, error: bool = True) -> None:
        self.message.setStyleSheet("color: #b00000" if error else "color: #205020")
        self.message.setText(text)
        if error:
            self.bridge.log_line.emit(f"refused: {text}")

    def run(self, fn, done=None, what: str = "", buttons=()) -> None:
        """Run ``fn`` in a worker; ``buttons`` are disabled until it ends."""
        for b in buttons:
            b.setEnabled(False)

        def _end(_=None) -> None:
            for b in buttons:
                b.setEnabled(True)

        def _done(result) -> None:
            _end()
            if done is not None:
                done(result)

        def _failed(exc) -> None:
            _end()
            from .bridge import is_abort
            if is_abort(exc):
                self.message.setStyleSheet("color: #805000")
                self.message.setText(f"{what or 'operation'} aborted")
                self.aborted(what)
                return
            self.message.setStyleSheet("color: #b00000")
            self.message.setText(f"{what}: {exc}" if what else str(exc))

        self.bridge.run(fn, _done, _failed, what=what)

    def aborted(self, what: str) -> None:
        """An operation of this panel ended by an abort (progress bars reset here)."""

    def settings_fields(self) -> dict[str, QWidget]:
        return {}

    def show_busy(self, operation: str | None) -> None:
        """Say which operation holds the instrument (None: idle)."""
        if operation:
            self.busy_label.setText(f"instrument busy: {operation}. Other operations are "
                                    "refused until it ends (STOP or Esc aborts it).")
        self.busy_label.setVisible(bool(operation))

    def update_state(self, snap: dict) -> None:
        pass


# ------------------------------------------------------------------------------------ source
class SourcePanel(Panel):
    """Tube voltage, current, focus mode, X-rays on/off, warm-up, state, interlock, errors."""

    def __init__(self, bridge, parent=None) -> None:
        super().__init__(bridge, parent)
        inst = self.instrument
        lim = inst.tube_limits
        site = inst.config.tube
        kv_hi = min(lim.kv_max, site.kv_max) if site.kv_max is not None else lim.kv_max
        ua_hi = min(lim.ua_max, site.ua_max) if site.ua_max is not None else lim.ua_max
        self.kv = LimitedSpinBox("voltage", "kV", lim.kv_min, kv_hi, 0,
                                 "site limit" if kv_hi < lim.kv_max else "tube limit")
        self.ua = LimitedSpinBox("current", "uA", lim.ua_min, ua_hi, 0,
                                 "site limit" if ua_hi < lim.ua_max else "tube limit")
        for box in (self.kv, self.ua):
            box.refused.connect(self.say)
        self.focus_mode = QComboBox()
        for mode, p in sorted(lim.max_power_w_by_focus.items()):
            self.focus_mode.addItem(f"{mode} (max {p:g} W)", mode)
        self.apply_btn = QPushButton("Apply kV / uA")
        self.apply_btn.clicked.connect(self.apply_setpoints)
        self.mode_btn = QPushButton("Set focus mode")
        self.mode_btn.clicked.connect(self.apply_focus_mode)
        self.on_btn = QPushButton("X-rays ON")
        self.on_btn.clicked.connect(self.xray_on)
        self.off_btn = QPushButton("X-rays OFF")
        self.off_btn.clicked.connect(self.xray_off)
        self.warm_btn = QPushButton("Warm up")
        self.warm_btn.clicked.connect(self.warm_up)
        self.reset_btn = QPushButton("Reset fault")
        self.reset_btn.setToolTip("Clear an overload and latched device faults (RST)")
        self.reset_btn.clicked.connect(self.reset_fault)
        self.warm_bar = QProgressBar()
        self.warm_bar.setRange(0, 100)
        self.state_label = QLabel("-")
        self.state_label.setStyleSheet("font-weight: bold; font-size: 14pt")
        self.output_label = QLabel("-")
        self.interlock_label = QLabel("-")
        self.device_error = status_label()
        self.device_error.setStyleSheet("color: #b00000; font-weight: bold")
        self.limits_label = status_label(
            f"limits: {lim.kv_min:g}-{kv_hi:g} kV, {lim.ua_min:g}-{ua_hi:g} uA, power by focus "
            "mode " + ", ".join(f"{m}: {p:g} W" for m, p in sorted(
                lim.max_power_w_by_focus.items())))

        form = QFormLayout()
        form.addRow("state", self.state_label)
        form.addRow("output", self.output_label)
        form.addRow("interlock", self.interlock_label)
        form.addRow("voltage", self.kv)
        form.addRow("current", self.ua)
        form.addRow("focus mode", self.focus_mode)
        grid = QGridLayout()
        grid.addWidget(self.apply_btn, 0, 0)
        grid.addWidget(self.mode_btn, 0, 1)
        grid.addWidget(self.on_btn, 1, 0)
        grid.addWidget(self.off_btn, 1, 1)
        grid.addWidget(self.warm_btn, 2, 0)
        grid.addWidget(self.reset_btn, 2, 1)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(grid)
        lay.addWidget(QLabel("warm-up"))
        lay.addWidget(self.warm_bar)
        lay.addWidget(self.limits_label)
        lay.addWidget(self.device_error)
        lay.addWidget(self.message)
        lay.addStretch(1)
        bridge.progress.connect(self._progress)
        self._initialised = False

    def settings_fields(self):
        return {"source/kv": self.kv, "source/ua": self.ua}

    def apply_setpoints(self) -> None:
        kv, ua = self.kv.value(), self.ua.value()
        inst = self.instrument

        def work():
            inst.set_voltage_kv(kv)
            inst.set_current_ua(ua)

        self.say(f"setting {kv:g} kV, {ua:g} uA", error=False)
        self.run(work, lambda _: self.say(f"setpoints {kv:g} kV, {ua:g} uA", error=False),
                 "set kV/uA", [self.apply_btn])

    def apply_focus_mode(self) -> None:
        mode = int(self.focus_mode.currentData())
        self.run(lambda: self.instrument.set_focus_mode(mode),
                 lambda _: self.say(f"focus mode {mode}", error=False), "focus mode",
                 [self.mode_btn])

    def xray_on(self) -> None:
        self.run(self.instrument.xray_on, None, "X-rays on", [self.on_btn])

    def xray_off(self) -> None:
        self.run(self.instrument.xray_off, None, "X-rays off")

    def warm_up(self) -> None:
        self.warm_bar.setValue(0)
        self.run(lambda: self.instrument.warm_up(), lambda _: self.warm_bar.setValue(100),
                 "warm-up", [self.warm_btn, self.on_btn])

    def reset_fault(self) -> None:
        self.run(self.instrument.reset_tube_fault, lambda _: self.bridge.refresh(),
                 "reset fault", [self.reset_btn])

    def _progress(self, what: str, fraction: float) -> None:
        if what == "warm-up":
            self.warm_bar.setValue(round(100 * fraction))

    def update_state(self, snap: dict) -> None:
        t = snap.get("tube")
        if not t:
            self.state_label.setText("not connected" if not snap.get("connected") else "-")
            return
        state = t["state"]
        self.state_label.setText(STATE_TEXT.get(state, state))
        colour = {"XRAY_ON": "#c00000", "OVERLOAD": "#c00000"}.get(state, "#204020")
        self.state_label.setStyleSheet(f"font-weight: bold; font-size: 14pt; color: {colour}")
        self.output_label.setText(
            f"{t['voltage_kv']:.0f} kV, {t['current_ua']:.0f} uA, {t['power_w']:.2f} W "
            f"(set {t['voltage_setpoint_kv']:.0f} kV, {t['current_setpoint_ua']:.0f} uA, "
            f"focus mode {t['focus_mode']})")
        if t["interlock_closed"]:
            self.interlock_label.setText("closed")
            self.interlock_label.setStyleSheet("color: #204020")
        else:
            self.interlock_label.setText("OPEN: X-rays cannot be switched on")
            self.interlock_label.setStyleSheet("color: #c00000; font-weight: bold")
        if t.get("error_code") is not None:
            self.device_error.setText(f"device error {t['error_code']}: {t['error_text']}")
        else:
            self.device_error.setText("")
        wp = t.get("warmup_progress")
        if wp is not None and state in ("WARMING_UP", "WARMUP_NEEDED", "STANDBY", "XRAY_ON"):
            self.warm_bar.setValue(round(100 * wp))
        if not self._initialised:  # start from the tube's own setpoints
            self._initialised = True
            if t["voltage_setpoint_kv"] >= self.kv.minimum():
                self.kv.setValue(t["voltage_setpoint_kv"])
            if t["current_setpoint_ua"] >= self.ua.minimum():
                self.ua.setValue(t["current_setpoint_ua"])
            i = self.focus_mode.findData(t["focus_mode"])
            if i >= 0:
                self.focus_mode.setCurrentIndex(i)


# ------------------------------------------------------------------------------------- stage
class AxisBox(QGroupBox):
    """Position, absolute move, jog, stop and limits of one axis."""

    def __init__(self, panel: StagePanel, title: str, unit: str, move, key: str,
                 jog_default: float) -> None:
        super().__init__(title)
        self.panel, self.unit, self._move, self.key = panel, unit, move, key
        lo, hi = self.travel()
        self.position = QLabel("-")
        self.position.setStyleSheet("font-weight: bold")
        self.target = LimitedSpinBox(f"{title} target", unit, lo, hi, 2, "travel limit")
        self.target.refused.connect(panel.say)
        self.jog = LimitedSpinBox(f"{title} jog step", unit, 0.01, hi - lo, 2, "travel")
        self.jog.setValue(jog_default)
        self.move_btn = QPushButton("Move")
        self.move_btn.clicked.connect(lambda: self.move_to(self.target.value()))
        self.minus_btn = QPushButton("- jog")
        self.plus_btn = QPushButton("+ jog")
        self.minus_btn.clicked.connect(lambda: self.jog_by(-1))
        self.plus_btn.clicked.connect(lambda: self.jog_by(+1))
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.clicked.connect(panel.stop)
        self.limits = QLabel(f"limits {lo:g} .. {hi:g} {unit}")
        self.last_position: float | None = None
        form = QFormLayout(self)
        form.addRow("position", self.position)
        row = QHBoxLayout()
        row.addWidget(self.target)
        row.addWidget(self.move_btn)
        form.addRow("move to", row)
        row2 = QHBoxLayout()
        row2.addWidget(self.minus_btn)
        row2.addWidget(self.jog)
        row2.addWidget(self.plus_btn)
        form.addRow("jog", row2)
        form.addRow(self.stop_btn, self.limits)

    def travel(self) -> tuple[float, float]:
        """The axis's soft limits in force (set from config, GUI, CLI or EPICS alike)."""
        return self.panel.instrument.soft_limits(self.title())

    def move_to(self, target: float) -> None:
        lo, hi = self.travel()
        if not lo <= target <= hi:
            self.panel.say(f"{self.title()} target {target:g} {self.unit} refused: outside the "
                           f"travel limits {lo:g} .. {hi:g} {self.unit}")
            return
        self.panel.run(lambda: self._move(target), None, f"move {self.title()}",
                       [self.move_btn, self.minus_btn, self.plus_btn])

    def jog_by(self, sign: int) -> None:
        base = self.last_position if self.last_position is not None else self.target.value()
        self.move_to(round(base + sign * self.jog.value(), 6))

    def show_position(self, position: float | None, on_target: bool | None = None) -> None:
        if position is None:
            return
        self.last_position = position
        moving = "" if on_target in (None, True) else " (moving)"
        self.position.setText(f"{position:.3f} {self.unit}{moving}")


class StagePanel(Panel):
    def __init__(self, bridge, parent=None) -> None:
        super().__init__(bridge, parent)
        inst = self.instrument
        lay = QVBoxLayout(self)
        self.focus = AxisBox(self, "focus", "um",
                             lambda v: inst.move_focus_um(v), "focus_um", 1.0)
        lay.addWidget(self.focus)
        self.rotation = None
        if inst.has_rotation_stage:
            self.rotation = AxisBox(self, "rotation", "deg",
                                    lambda v: inst.move_rotation_deg(v), "rotation_deg", 1.0)
            lay.addWidget(self.rotation)
        lay.addWidget(self.message)
        lay.addStretch(1)
        self._first = True

    def stop(self) -> None:
        self.bridge.run(self.instrument.stop_motion, what="stop")
        self.say("motion stopped", error=False)

    def settings_fields(self):
        out = {"stage/jog_um": self.focus.jog}
        if self.rotation is not None:
            out["stage/jog_deg"] = self.rotation.jog
        return out

    def update_state(self, snap: dict) -> None:
        self.focus.show_position(snap.get("focus_um"), snap.get("focus_on_target"))
        if self._first and snap.get("focus_um") is not None:
            self._first = False
            self.focus.target.setValue(snap["focus_um"])
        if self.rotation is not None:
            self.rotation.show_position(snap.get("rotation_deg"))


# --------------------------------------------------------------------------------------- log
class LogPanel(QWidget):
    """Instrument log lines and errors, newest last; errors in red."""

    def __init__(self, bridge, parent=None) -> None:
        super().__init__(parent)
        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        self.text.setMaximumBlockCount(5000)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.text)
        bridge.log_line.connect(self.add)
        bridge.error.connect(lambda m: self.add(m, error=True))

    def add(self, message: str, error: bool = False) -> None:
        stamp = time.strftime("%H:%M:%S")
        line = html.escape(f"{stamp}  {'ERROR ' if error else ''}{message}")
        self.text.appendHtml(f'<span style="color:#b00000">{line}</span>' if error else line)

    def lines(self) -> list[str]:
        return self.text.toPlainText().splitlines()


__all__ = ["STATE_TEXT", "AxisBox", "LogPanel", "Panel", "SourcePanel", "StagePanel"]
