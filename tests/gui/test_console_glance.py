"""The console at a glance: X-ray lamp, tabs that fit a 1400 px screen, levels per view kind,
restoration results in the main view, aborts shown as aborts and logged once."""
import numpy as np
import pytest

from xinstrument.acquisition.frame import Frame
from xinstrument.gui.screenshots import WINDOW_SIZE, layout_problems

from .conftest import acquire_one, ready, references


def test_xray_lamp_is_red_with_kv_ua_while_emitting(qtbot, window):
    w = window
    assert not w.lamp.emitting
    ready(qtbot, w, kv=45, ua=70)
    qtbot.waitUntil(lambda: w.lamp.emitting, timeout=5000)
    assert "X-RAYS ON" in w.lamp.text() and "45 kV" in w.lamp.text() and "70 uA" in w.lamp.text()
    assert "#e00000" in w.lamp.styleSheet()
    assert w.lamp.isVisible()                 # in the safety bar, whatever tab is open
    w.xray_off_btn.click()
    qtbot.waitUntil(lambda: not w.lamp.emitting, timeout=5000)
    assert "X-rays off" in w.lamp.text() and "#e00000" not in w.lamp.styleSheet()


def test_every_tab_fits_the_window_without_sideways_scrolling(qtbot, window):
    w = window
    w.resize(*WINDOW_SIZE)
    qtbot.wait(200)
    assert layout_problems(w) == []
    # the check is real: a panel wider than the screen is reported
    from PyQt6.QtWidgets import QPushButton
    wide = QPushButton("x" * 400)
    w.focus.layout().addWidget(wide)
    qtbot.wait(100)
    w.resize(*WINDOW_SIZE)
    qtbot.wait(200)
    assert layout_problems(w), "a 3000 px button must not fit"


def _frame(data, corrected):
    return Frame(data=np.asarray(data, np.float32), corrected=corrected, frames_averaged=1)


def test_levels_follow_the_kind_of_image(qtbot, window):
    w = window
    img = w.image
    rng = np.random.default_rng(0)
    pcb = 0.1 + 0.3 * rng.random((64, 64))
    img.show_frame(_frame(pcb, True))
    lo, hi = img.views["frame"].getImageItem().getLevels()
    assert hi < 0.5
    img.views["frame"].setLevels(0.12, 0.38)           # the operator's choice stays ...
    img.show_frame(_frame(pcb * 1.01, True))
    assert tuple(img.views["frame"].getImageItem().getLevels()) == pytest.approx((0.12, 0.38))
    # ... until the image leaves it: a flat (transmission ~1) is not shown all white
    img.show_frame(_frame(np.full((64, 64), 1.0) + 0.01 * rng.random((64, 64)), True))
    lo, hi = img.views["frame"].getImageItem().getLevels()
    assert lo <= 1.005 <= hi and hi - lo < 0.1
    # raw ADU after corrected transmission: new levels for the new kind
    img.show_frame(_frame(1000 + 200 * rng.random((64, 64)), False))
    lo, hi = img.views["frame"].getImageItem().getLevels()
    assert lo > 900 and hi > 1100


def test_restore_preview_goes_to_the_main_view(qtbot, window):
    w = window
    ready(qtbot, w)
    references(qtbot, w)
    r = w.restoration
    r.load_btn.click()
    qtbot.waitUntil(lambda: r.method.count() > 0 and r.load_btn.isEnabled(), timeout=20000)
    acquire_one(qtbot, w, timeout=10000)
    assert w.image.frame.restored is None
    r.preview_btn.click()
    qtbot.waitUntil(lambda: r.last_result is not None and w.image.frame.restored is not None,
                    timeout=30000)
    assert np.array_equal(w.image.frame.restored, r.last_result)
    assert w.image.views["restored"].isVisible()
    assert w.image.views["restored"].getView().titleLabel.text.startswith("restored")
    assert r.before.height() >= 200 and not r.before.ui.histogram.isVisible()


def test_an_abort_is_an_abort_logged_once(qtbot, window):
    w = window
    ready(qtbot, w)
    f = w.focus
    f.start.setValue(0)
    f.stop.setValue(300)
    f.step.setValue(5)
    f.frames.setValue(2)
    f.run_btn.click()
    qtbot.waitUntil(lambda: f.progress.value() >= 5, timeout=20000)
    w.stop_all()                                        # what Esc does
    qtbot.waitUntil(lambda: f.run_btn.isEnabled(), timeout=20000)
    qtbot.wait(300)
    lines = w.log.lines()
    assert sum("aborted" in line for line in lines) == 1, lines
    assert not any("ERROR" in line for line in lines), lines
    assert not w.error_banner.isVisible()
    assert "aborted" in f.message.text() and f.progress.value() == 0


def test_the_live_image_keeps_running_during_a_focus_scan(qtbot, window):
    w = window
    ready(qtbot, w)
    references(qtbot, w)
    f = w.focus
    f.start.setValue(40)
    f.stop.setValue(80)
    f.step.setValue(10)
    f.frames.setValue(1)
    shown = w.image.frames_shown
    f.run_btn.click()
    qtbot.waitUntil(lambda: f.curve is not None, timeout=120000)
    # every scored frame reached the main view while the scan ran
    assert w.image.frames_shown - shown >= 3
    assert 39.0 <= w.image.frame.focus_z_um <= 81.0          # a frame of the scan, with its z
