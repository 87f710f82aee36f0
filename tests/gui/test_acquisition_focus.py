"""Acquisition (references, single frames, live view, HDF5 recording) and focus scan panels."""
import numpy as np
from scanfile_checks import check_scan_file

from .conftest import acquire_one, ready, references


def test_references_acquire_and_image_tools(qtbot, window):
    w = window
    ready(qtbot, w)
    references(qtbot, w)
    assert "correction ready" in w.acquisition.refs_label.text()
    w.acquisition.n_average.setValue(2)
    acquire_one(qtbot, w, timeout=10000)
    f = w.image.frame
    assert f.corrected and f.frames_averaged == 2 and f.data.shape == (128, 128)
    assert w.image.title.text().startswith("corrected frame, 2 averaged")
    # ROI statistics, line profile and pixel readout follow the frame
    rs, cs = w.image.roi_region(w.image.stats_roi, f.data)
    assert f"mean {f.data[rs, cs].mean():.4g}" in w.image.stats_label.text()
    _x, y = w.image.profile_curve.getData()
    assert len(y) > 50 and np.all(np.isfinite(y))
    from PyQt6.QtCore import QPointF
    w.image.show_pixel(QPointF(10.5, 20.5))
    assert f"pixel (10, 20): {f.data[20, 10]:.5g}" in w.image.cursor_label.text()


def test_acquire_without_references_is_an_error_in_the_window(qtbot, window):
    w = window
    ready(qtbot, w)
    w.acquisition.acquire_btn.click()
    # the banner (instrument error event) and the panel line (the worker's failure) arrive as
    # two queued signals: wait for both
    qtbot.waitUntil(lambda: w.error_banner.isVisible() and bool(w.acquisition.message.text()),
                    timeout=5000)
    assert "no dark/flat references" in w.error_banner.text()
    assert "no dark/flat references" in w.acquisition.message.text()


def test_live_view_shows_latest_frames_and_stops(qtbot, window):
    w = window
    ready(qtbot, w)
    w.acquisition.correct.setChecked(False)
    w.acquisition.live_btn.click()
    qtbot.waitUntil(lambda: w.image.frames_shown >= 3, timeout=15000)
    assert w.instrument.busy in ("live", "series")            # the live view is a series plan
    assert w.image.title.text().startswith("raw frame")
    qtbot.waitUntil(lambda: "stream" in w.summary.text(), timeout=5000)
    assert "display" in w.image.rate_label.text()
    shown = w.image.frames_shown
    assert shown <= w.bridge.frames_seen           # the display only ever skips frames
    w.stop_btn.click()
    qtbot.waitUntil(lambda: w.instrument.busy is None, timeout=10000)
    qtbot.waitUntil(lambda: not w.acquisition.live_btn.isChecked(), timeout=5000)


def test_record_to_hdf5_writes_the_file_with_progress(qtbot, window, tmp_path):
    w = window
    ready(qtbot, w)
    references(qtbot, w)
    a = w.acquisition
    path = tmp_path / "scan.h5"
    a.path.setText(str(path))
    a.n_record.setValue(3)
    a.record_btn.click()
    qtbot.waitUntil(lambda: a.last_recording == path, timeout=30000)
    assert a.progress.value() == 100
    assert "recorded scan.h5 (3 frames" in a.progress_label.text()
    from xinstrument.storage import ScanReader
    with ScanReader(path) as r:
        # the measured frames, and the corrected ones in their own stack beside them
        assert r.projections.shape == (3, 128, 128)
        assert float(np.nanmean(r.projections[0])) > 50.0          # raw ADU
        assert r.corrected.shape == (3, 128, 128)
        assert 0.0 < float(np.nanmean(r.corrected[0])) < 2.0         # transmission
    check_scan_file(path, nxdata=("/entry/data", "/entry/corrected"))   # as every client's
    # an existing file is refused unless overwrite is ticked
    a.record_btn.click()
    assert "exists" in a.message.text()
    assert a.record_btn.isEnabled()


def test_record_refuses_missing_path(qtbot, window):
    w = window
    w.acquisition.path.setText("")
    w.acquisition.record_btn.click()
    assert "choose an HDF5 file" in w.acquisition.message.text()
    assert w.instrument.busy is None


def test_focus_scan_plots_the_curve_and_moves_to_best(qtbot, window):
    w = window
    ready(qtbot, w)
    references(qtbot, w)
    fp = w.focus
    fp.start.setValue(0)
    fp.stop.setValue(400)
    fp.step.setValue(50)
    fp.frames.setValue(1)
    fp.metric.setCurrentText("hf_energy")
    fp.run_btn.click()
    qtbot.waitUntil(lambda: fp.curve is not None, timeout=60000)
    x, _y = fp.points.getData()
    assert len(x) == len(fp.curve.positions_um) == 9
    assert fp.best_line.isVisible()
    assert fp.best_line.value() == fp.curve.best_position_um
    assert fp.progress.value() == 100
    assert "best focus" in fp.result.text()
    best = fp.curve.best_position_um
    fp.best_btn.click()
    emu = w.instrument.focus_emulator
    qtbot.waitUntil(lambda: abs(emu.position("1") - best) < 0.05, timeout=10000)


def test_focus_scan_bad_range_is_refused(qtbot, window):
    w = window
    fp = w.focus
    fp.start.setValue(200)
    fp.stop.setValue(100)
    fp.run_btn.click()
    assert "must be above start" in fp.message.text()
    assert w.instrument.busy is None and fp.curve is None
