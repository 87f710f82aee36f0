"""Small reusable widgets: a spin box that refuses out-of-range entries visibly."""
from __future__ import annotations

from PyQt6.QtCore import pyqtSignal
from PyQt6.QtGui import QValidator
from PyQt6.QtWidgets import QDoubleSpinBox, QLabel


class LimitedSpinBox(QDoubleSpinBox):
    """A QDoubleSpinBox whose range comes from a device limit.

    An entry above the maximum is refused as it is typed; one below the minimum is refused when
    editing ends. Either way ``refused`` carries a message naming the limit, and the value stays
    at the last accepted one.
    """

    refused = pyqtSignal(str)

    def __init__(self, what: str, unit: str, lo: float, hi: float, decimals: int = 1,
                 limit_name: str = "limit", parent=None) -> None:
        super().__init__(parent)
        self.what, self.unit, self.limit_name = what, unit, limit_name
        self.setDecimals(decimals)
        self.setKeyboardTracking(False)
        self.set_limits(lo, hi)

    def set_limits(self, lo: float, hi: float) -> None:
        self.setRange(float(lo), float(hi))
        self.setSuffix(f" {self.unit}")
        self.setToolTip(f"{self.what}: {self.limit_text()}")

    def limit_text(self) -> str:
        return (f"{self.minimum():.{self.decimals()}f} .. {self.maximum():.{self.decimals()}f} "
                f"{self.unit} ({self.limit_name})")

    def _number(self, text: str) -> float | None:
        t = text.strip()
        if self.suffix() and t.endswith(self.suffix().strip()):
            t = t[: -len(self.suffix().strip())].strip()
        try:
            return float(t.replace(",", "."))
        except ValueError:
            return None

    def validate(self, text: str, pos: int):
        state, text, pos = super().validate(text, pos)
        v = self._number(text)
        if v is not None and v > self.maximum():
            self.refused.emit(f"{self.what} {v:g} {self.unit} refused: above the maximum "
                              f"{self.maximum():g} {self.unit} ({self.limit_name})")
            return QValidator.State.Invalid, text, pos
        return state, text, pos

    def fixup(self, text: str) -> str:
        # called when editing ends on an entry that is not acceptable (e.g. below the minimum);
        # the spin box then reverts to the last accepted value
        v = self._number(text)
        if v is not None and v < self.minimum():
            self.refused.emit(f"{self.what} {v:g} {self.unit} refused: below the minimum "
                              f"{self.minimum():g} {self.unit} ({self.limit_name})")
        return super().fixup(text)


def status_label(text: str = "") -> QLabel:
    lab = QLabel(text)
    lab.setWordWrap(True)
    return lab


# tube state -> (lamp colour, text colour, caption); the lamp is red whenever X-rays are emitted
LAMP_STYLES = {
    "XRAY_ON": ("#e00000", "white", "X-RAYS ON"),
    "OVERLOAD": ("#e00000", "white", "OVERLOAD (reset needed)"),
    "WARMING_UP": ("#f0b000", "black", "warming up"),
    "WARMUP_NEEDED": ("#d8d8d8", "#404040", "X-rays off (warm-up needed)"),
    "STANDBY": ("#2f8f2f", "white", "X-rays off"),
}


class XrayLamp(QLabel):
    """The tube's state at a glance: a lamp that is red while X-rays are emitted, with the
    measured kV / uA, as the warning lamp on the enclosure. Grey when not connected."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setMinimumWidth(230)
        self.state: str | None = None
        self.emitting = False
        self.show_tube(None)

    def show_tube(self, tube: dict | None) -> None:
        if not tube:
            self.state, self.emitting = None, False
            self._paint("#d8d8d8", "#404040", "tube: not connected")
            return
        state = str(tube.get("state"))
        bg, fg, caption = LAMP_STYLES.get(state, ("#d8d8d8", "#404040", state.lower()))
        self.state = state
        self.emitting = state == "XRAY_ON"
        text = caption
        if self.emitting:
            text += f"  {tube.get('voltage_kv', 0):.0f} kV  {tube.get('current_ua', 0):.0f} uA"
        self._paint(bg, fg, text)

    def _paint(self, bg: str, fg: str, text: str) -> None:
        self.setText(f"\u25cf {text}")
        self.setStyleSheet(f"background: {bg}; color: {fg}; font-weight: bold; "
                           "font-size: 12pt; padding: 5px 12px; border-radius: 6px")
        self.setToolTip("X-ray tube state (red: X-rays are being emitted)")
