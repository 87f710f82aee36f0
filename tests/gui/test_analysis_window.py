"""Restoration and calibration panels, settings, closing, the gui command."""
import numpy as np
import pytest

from .conftest import acquire_one, make_instrument, ready, references


def test_restoration_before_after_with_speed(qtbot, window):
    w = window
    ready(qtbot, w)
    references(qtbot, w)
    r = w.restoration
    r.load_btn.click()
    qtbot.waitUntil(lambda: r.method.count() > 0 and r.load_btn.isEnabled(), timeout=20000)
    assert w.instrument.profile is not None
    assert "wiener" in [r.method.itemText(i) for i in range(r.method.count())]
    r.method.setCurrentText("richardson_lucy")
    r.apply_method()
    qtbot.waitUntil(lambda: w.instrument.restoration_method == "richardson_lucy", timeout=5000)
    r.steps.setValue(4)
    r.device.setCurrentText("cpu")
    acquire_one(qtbot, w, timeout=10000)
    r.preview_btn.click()
    qtbot.waitUntil(lambda: r.last_result is not None, timeout=30000)
    assert r.last_result.shape == w.image.frame.data.shape
    assert not np.allclose(r.last_result, w.image.frame.data)
    assert r.after.getImageItem().image is not None
    assert "richardson_lucy on cpu" in r.speed.text() and "latency" in r.speed.text()
    assert "PSNR" in r.quality.text()                  # scored against the twin's truth


def test_restored_frames_in_the_live_image(qtbot, window):
    w = window
    ready(qtbot, w)
    references(qtbot, w)
    w.acquisition.restore.setChecked(True)
    w.image.mode.setCurrentText("frame | restored")
    acquire_one(qtbot, w, timeout=30000)
    assert w.image.frame.restored is not None
    assert "restored by wiener" in w.image.title.text()
    assert w.image.views["restored"].isVisible() and w.image.views["frame"].isVisible()
    assert w.image.views["restored"].getImageItem().image is not None


def test_mtf_from_edge_roi_and_nnps(qtbot, settings):
    from xinstrument.gui.mainwindow import MainWindow
    inst = make_instrument(sensor_px=128, sample="edge")
    inst.connect()
    try:
        w = MainWindow(inst, settings, poll_ms=100)
        qtbot.addWidget(w)
        w.show()
        ready(qtbot, w)
        # in focus (the twin's optimum), with enough dose for the edge's step to stand out of
        # the noise: the ISO edge check refuses a defocused ramp
        inst.move_focus_um(59.0)
        w.acquisition.exposure.setValue(0.2)
        references(qtbot, w, n=4)
        w.acquisition.n_average.setValue(8)
        acquire_one(qtbot, w, timeout=20000)
        # the ROI across the sample's one straight edge, plateaus on both sides
        w.image.edge_roi.setPos([16, 32])
        w.image.edge_roi.setSize([80, 64])
        c = w.calibration
        c.mtf_btn.click()
        qtbot.waitUntil(lambda: bool(c.mtf_results) and c.mtf_btn.isEnabled(), timeout=20000)
        assert w.image.edge_roi.isVisible()
        thick = c.mtf_results["thick (measured)"]
        thin = c.mtf_results["thin (twin truth)"]
        assert thick.mtf50_cy_per_mm < thin.mtf50_cy_per_mm      # the thin screen is sharper
        assert len(c.mtf_plot.getPlotItem().listDataItems()) == 2
        assert "MTF50" in c.mtf_text.text()
        c.n_flats.setValue(3)
        c.nnps_btn.click()
        qtbot.waitUntil(lambda: c.nnps_result is not None, timeout=20000)
        assert c.nnps_result.n_rois >= 3 and np.all(np.isfinite(c.nnps_result.nnps_mm2))
        assert len(c.nnps_plot.getPlotItem().listDataItems()) == 1
        w.close()
    finally:
        inst.disconnect()


def test_nnps_needs_darks(qtbot, window):
    window.calibration.nnps_btn.click()
    assert "take darks first" in window.calibration.message.text()


def test_settings_are_remembered(qtbot, inst, settings):
    from xinstrument.gui.mainwindow import MainWindow
    w = MainWindow(inst, settings, poll_ms=0)
    qtbot.addWidget(w)
    w.acquisition.n_average.setValue(7)
    w.acquisition.path.setText("/data/run1.h5")
    w.focus.step.setValue(2.5)
    w.focus.metric.setCurrentText("brenner")
    w.tabs.setCurrentIndex(3)
    w.close()
    w2 = MainWindow(inst, settings, poll_ms=0)
    qtbot.addWidget(w2)
    assert w2.acquisition.n_average.value() == 7
    assert w2.acquisition.path.text() == "/data/run1.h5"
    assert w2.focus.step.value() == 2.5 and w2.focus.metric.currentText() == "brenner"
    assert w2.tabs.currentIndex() == 3
    w2.close()


def test_closing_stops_the_stream_and_switches_xrays_off(qtbot, window):
    w = window
    ready(qtbot, w)
    w.acquisition.correct.setChecked(False)
    w.acquisition.live_btn.click()
    qtbot.waitUntil(lambda: w.image.frames_shown >= 1, timeout=15000)
    emu = w.instrument.tube_emulator
    assert emu.xray_on and w.instrument.busy in ("live", "series")
    w.close()
    assert not emu.xray_on
    assert w.instrument.busy is None
    assert w.instrument.pipeline is None or not w.instrument.pipeline.running


def test_gui_command_is_registered():
    from xinstrument.cli import build_parser, main
    args = build_parser().parse_args(["gui", "--sensor-px", "128"])
    assert args.command == "gui" and args.sensor_px == 128 and args.config is None
    assert main(["gui", "--config", "/nonexistent/bench.toml"]) != 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["gui", "--sensor-px", "8"])
