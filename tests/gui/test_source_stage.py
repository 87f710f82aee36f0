"""Source and stage panels, safety controls, bad input and device errors."""
import pytest
from PyQt6.QtCore import Qt

from .conftest import ready


def test_setpoints_reach_the_tube_and_xrays_switch_on_and_off(qtbot, window):
    w = window
    emu = w.instrument.tube_emulator
    ready(qtbot, w, kv=60, ua=60)
    qtbot.waitUntil(lambda: abs(emu.output_voltage_kv - 60) < 0.5, timeout=5000)
    qtbot.waitUntil(lambda: w.source.state_label.text() == "X-RAYS ON", timeout=3000)
    assert "60 kV" in w.source.output_label.text()
    qtbot.waitUntil(lambda: w.lamp.emitting, timeout=3000)  # the lamp in the safety bar
    assert "60 kV" in w.lamp.text()
    w.xray_off_btn.click()                       # the always-visible button
    assert not emu.xray_on                       # synchronous: off before the click returns
    qtbot.waitUntil(lambda: w.source.state_label.text().startswith("standby"), timeout=3000)


def test_warm_up_shows_progress_and_state(qtbot, window):
    w = window
    assert w.source.state_label.text() == "warm-up needed"
    seen = []
    w.bridge.progress.connect(lambda what, f: seen.append((what, f)))
    w.source.warm_btn.click()
    qtbot.waitUntil(lambda: w.source.warm_bar.value() == 100 and w.source.warm_btn.isEnabled(),
                    timeout=10000)
    assert any(what == "warm-up" and 0 < f < 1 for what, f in seen)
    qtbot.waitUntil(lambda: w.source.state_label.text().startswith("standby"), timeout=3000)
    assert any("warm-up finished" in line for line in w.log.lines())


def test_out_of_range_entries_are_refused_with_the_limit_shown(qtbot, window):
    w = window
    kv = w.source.kv
    assert (kv.minimum(), kv.maximum()) == (40, 130)      # from the driver's tube limits
    kv.setValue(50)
    kv.lineEdit().selectAll()
    qtbot.keyClicks(kv.lineEdit(), "500")
    qtbot.keyClick(kv.lineEdit(), Qt.Key.Key_Return)
    assert kv.value() == 50
    assert "130" in w.source.message.text() and "refused" in w.source.message.text()
    assert w.source.message.isVisible()
    assert any("refused" in line for line in w.log.lines())
    lo, hi = w.instrument.focus_axis.limits
    target = w.stage.focus.target
    assert (target.minimum(), target.maximum()) == (lo, hi)
    target.lineEdit().selectAll()
    qtbot.keyClicks(target.lineEdit(), str(int(hi) + 100))
    assert f"{hi:g}" in w.stage.message.text()


def test_power_limit_error_is_shown_not_raised(qtbot, window):
    w = window
    emu = w.instrument.tube_emulator
    ready(qtbot, w, xray=False)
    w.source.kv.setValue(130)
    w.source.ua.setValue(300)                    # 39 W in the 4 W focus mode
    w.source.apply_btn.click()
    qtbot.waitUntil(lambda: w.error_banner.isVisible(), timeout=5000)
    assert "power limit" in w.error_banner.text()
    assert "power limit" in w.source.message.text()
    assert any("ERROR" in line and "power limit" in line for line in w.log.lines())
    assert emu._ua_set == 80                     # nothing unsafe reached the tube
    w.dismiss_btn.click()
    assert not w.error_banner.isVisible()


def test_device_fault_shows_code_and_meaning(qtbot, window):
    w = window
    emu = w.instrument.tube_emulator
    ready(qtbot, w)
    emu.inject("overload")
    qtbot.waitUntil(lambda: "device error 1" in w.source.device_error.text(), timeout=5000)
    assert "overload" in w.source.device_error.text()
    assert w.source.state_label.text().startswith("OVERLOAD")
    w.source.reset_btn.click()
    qtbot.waitUntil(lambda: w.source.device_error.text() == "", timeout=5000)


def test_interlock_open_is_shown_and_xray_on_refused(qtbot, window):
    w = window
    emu = w.instrument.tube_emulator
    ready(qtbot, w, xray=False)
    emu.open_interlock()
    qtbot.waitUntil(lambda: w.source.interlock_label.text().startswith("OPEN"), timeout=5000)
    w.source.on_btn.click()
    qtbot.waitUntil(lambda: "interlock" in w.error_banner.text(), timeout=5000)
    assert not emu.xray_on


@pytest.mark.parametrize("key", [Qt.Key.Key_F12])
def test_xray_off_shortcut(qtbot, window, key):
    w = window
    ready(qtbot, w)
    w.activateWindow()
    w.source.kv.setFocus()                       # works with focus in an entry field too
    qtbot.keyClick(w.source.kv.lineEdit(), key)
    qtbot.waitUntil(lambda: not w.instrument.tube_emulator.xray_on, timeout=3000)


def test_stage_absolute_move_jog_and_stop(qtbot, window):
    w = window
    emu = w.instrument.focus_emulator
    s = w.stage.focus
    s.target.setValue(120.0)
    s.move_btn.click()
    qtbot.waitUntil(lambda: abs(emu.position("1") - 120.0) < 0.01 and s.move_btn.isEnabled(),
                    timeout=5000)
    qtbot.waitUntil(lambda: s.position.text().startswith("120.000"), timeout=3000)
    assert s.jog.value() == 1.0                  # 1 um jog by default
    s.plus_btn.click()
    qtbot.waitUntil(lambda: abs(emu.position("1") - 121.0) < 0.01 and s.plus_btn.isEnabled(),
                    timeout=5000)
    qtbot.waitUntil(lambda: s.position.text().startswith("121.000"), timeout=3000)
    s.minus_btn.click()
    s.minus_btn.click()                          # ignored while moving (button disabled)
    qtbot.waitUntil(lambda: abs(emu.position("1") - 120.0) < 0.01 and s.minus_btn.isEnabled(),
                    timeout=5000)
    assert "limits 0 .. 400 um" in s.limits.text()
    w.instrument.focus_axis.velocity = 20.0      # slow, so there is time to stop
    s.target.setValue(400.0)
    s.move_btn.click()
    qtbot.waitUntil(lambda: emu.position("1") > 122, timeout=5000)
    qtbot.keyClick(w, Qt.Key.Key_Escape)         # the stop shortcut
    qtbot.waitUntil(lambda: s.move_btn.isEnabled(), timeout=5000)
    stopped = emu.position("1")
    qtbot.wait(300)
    assert stopped < 200 and emu.position("1") == pytest.approx(stopped, abs=0.5)
