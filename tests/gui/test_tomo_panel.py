"""Tomosynthesis panel: plan editor, run / pause / resume / abort, reconstruction, slice viewer."""
import numpy as np
import pytest

from xinstrument.recon import read_reconstruction
from xinstrument.storage import ScanReader

from .conftest import make_instrument, open_window, ready


def small_plan(t, path, n_angles=5, frames=1):
    t.path.setText(str(path))
    t.arc_deg.setValue(4)
    t.centre_deg.setValue(0)
    t.n_angles.setValue(n_angles)
    t.frames_per_angle.setValue(frames)
    t.darks.setValue(1)
    t.flats.setValue(1)
    t.flats_every.setValue(0)
    t.restore.setChecked(False)


@pytest.fixture
def layered(qtbot, settings):
    """A window on the layered board (the sample with structure at several heights)."""
    inst = make_instrument(sensor_px=64, sample="pcb-layers")
    inst.connect()
    try:
        with open_window(qtbot, inst, settings) as w:
            yield w
    finally:
        inst.disconnect()


def test_scan_runs_reconstructs_and_the_slider_walks_the_slices(qtbot, layered, tmp_path):
    w = layered
    t = w.tomo
    assert w.tabs.tabText(w.tabs.count() - 1) == "Tomo"
    ready(qtbot, w)
    out = tmp_path / "scan.h5"
    small_plan(t, out)
    t.method.setCurrentText("sirt")
    t.iterations.setValue(3)
    t.height_start_um.setValue(0)
    t.height_stop_um.setValue(1600)
    t.n_slices.setValue(4)
    w.image.mode.setCurrentText("raw | frame")
    t.run_btn.click()
    assert not t.run_btn.isEnabled() and t.abort_btn.isEnabled()
    # the scan holds the instrument: the other panels say so
    qtbot.waitUntil(lambda: not w.acquisition.busy_label.isHidden(), timeout=10000)
    assert "tomosynthesis" in w.acquisition.busy_label.text()
    qtbot.waitUntil(lambda: t.recon is not None, timeout=60000)
    assert t.progress.value() == 100 and t.phase.text().startswith("finished: 5 projections")
    assert t.run_btn.isEnabled() and not t.abort_btn.isEnabled()
    with ScanReader(out) as r:
        assert r.complete and r.theta_deg == pytest.approx(np.linspace(-2, 2, 5), abs=1e-3)
    assert w.image.frames_shown >= 1                       # projections reached the live view
    # ... with their raw average: the projection as stored, before correction
    last = w.instrument.last_frame
    qtbot.waitUntil(lambda: w.image.frame is last, timeout=5000)
    assert last.corrected and last.theta_deg == pytest.approx(2, abs=1e-3)
    with ScanReader(out) as r:
        assert np.array_equal(last.raw, r.projections[-1])
    assert np.array_equal(w.image.views["raw"].getImageItem().image, last.raw)
    assert w.image.views["raw"].getView().titleLabel.text == "raw"
    # the slices are stored in the file and shown
    slices, heights, _attrs = read_reconstruction(out, "sirt")
    assert slices.shape[0] == 4 and heights == pytest.approx(np.linspace(0, 1.6, 4))
    assert t.recon.slices == pytest.approx(slices)
    from scanfile_checks import check_scan_file
    check_scan_file(out)                  # the file as every client writes it, slices beside
    assert "/entry/recon/sirt" in t.recon_label.text()
    k = t.slice_index
    shown = t.viewer.getImageItem().image
    assert np.array_equal(shown, slices[k])
    assert f"height {1000 * heights[k]:.1f} um" in t.slice_label.text()
    other = 0 if k != 0 else 3
    t.slider.setValue(other)
    assert t.slice_index == other
    assert np.array_equal(t.viewer.getImageItem().image, slices[other])
    assert not np.array_equal(slices[other], slices[k])
    assert f"slice {other + 1} / 4: height {1000 * heights[other]:.1f} um" in t.slice_label.text()
    qtbot.waitUntil(lambda: w.acquisition.busy_label.isHidden(), timeout=5000)

    # an existing file with another method: its slices go to a new file in the panel's
    # output folder, the loaded file is not modified; then files that are not scans
    t.method.setCurrentText("saa")
    before = out.read_bytes()
    t.load_scan_file(out)
    qtbot.waitUntil(lambda: t.recon.method == "saa", timeout=30000)
    copy = tmp_path / "scan_recon-saa.h5"
    assert read_reconstruction(copy, "saa")[0].shape[0] == 4 and t.recon.path == copy
    assert out.read_bytes() == before
    bad = tmp_path / "notes.h5"
    bad.write_text("not a scan")
    t.load_scan_file(bad)
    qtbot.waitUntil(lambda: "reconstruction failed" in t.recon_label.text(), timeout=10000)
    assert "not an HDF5 file" in t.message.text()
    assert any("ERROR reconstruction" in line and "notes.h5" in line for line in w.log.lines())
    t.load_scan_file(tmp_path / "missing.h5")
    assert "no such file" in t.message.text()
    assert t.recon.method == "saa"                          # the last good one stays


BAD_PLANS = [
    ({"n_angles": 1}, "n_angles must be an integer >= 2"),
    ({"arc_deg": 100}, "outside the rotation axis limits [-45, 45] deg"),
    ({"path": ""}, "choose an output HDF5 file"),
    ({"flats": 0, "flats_every": 2}, "flats_every needs flats"),
]


def test_bad_plans_show_the_error_and_start_nothing(qtbot, window, tmp_path):
    t = window.tomo
    out = tmp_path / "x.h5"
    for setup, match in BAD_PLANS:
        small_plan(t, out)
        for name, value in setup.items():
            if name == "path":
                t.path.setText(value)
            else:
                getattr(t, name).setValue(value)
        t.run_btn.click()
        assert match in t.message.text(), setup
        assert t.scan is None and window.instrument.busy is None and t.run_btn.isEnabled()
        assert not out.exists()
        assert any(match in line for line in window.log.lines())
    # an existing file is kept unless overwrite is ticked
    old = tmp_path / "old.h5"
    old.write_bytes(b"keep me")
    small_plan(t, old)
    t.run_btn.click()
    assert "exists (tick overwrite" in t.message.text() and t.scan is None
    assert old.read_bytes() == b"keep me"
    # references the plan relies on but the instrument lacks: refused by the scan itself
    small_plan(t, out)
    t.darks.setValue(0)
    t.run_btn.click()
    qtbot.waitUntil(lambda: t.scan is None, timeout=10000)
    assert "missing darks" in t.message.text() and "scan refused" in t.phase.text()
    assert window.instrument.busy is None and not out.exists() and t.run_btn.isEnabled()
    assert any("missing darks" in line for line in window.log.lines())


def test_pause_resume_abort_and_closing_during_a_scan(qtbot, layered, tmp_path):
    w = layered
    t = w.tomo
    ready(qtbot, w)
    out = tmp_path / "held.h5"      # a name without "aborted": the log lines are counted
    small_plan(t, out, n_angles=9, frames=2)
    t.run_btn.click()
    qtbot.waitUntil(lambda: "projection 1/9" in t.phase.text(), timeout=30000)
    t.pause_btn.click()
    qtbot.waitUntil(lambda: t.phase.text().startswith("paused"), timeout=10000)
    assert t.resume_btn.isEnabled() and not t.pause_btn.isEnabled()
    held = t.scan._angles_done
    qtbot.wait(400)
    assert t.scan._angles_done == held                      # paused means paused
    t.resume_btn.click()
    qtbot.waitUntil(lambda: t.scan is not None and t.scan._angles_done > held, timeout=30000)
    t.abort_btn.click()
    qtbot.waitUntil(lambda: t.scan is None, timeout=30000)
    assert "aborted" in t.message.text() and "incomplete" in t.phase.text()
    assert t.recon is None                                  # nothing reconstructed from it
    with ScanReader(out) as r:
        assert not r.complete and "aborted" in r.reason
        assert 1 <= r.theta_deg.size < 9
    assert w.instrument.busy is None and t.run_btn.isEnabled()
    qtbot.wait(500)
    lines = w.log.lines()
    # one line per event: paused, resumed and aborted once each, the abort not as an error
    assert sum("aborted" in line for line in lines) == 1, "\n".join(lines)
    assert sum("resumed" in line for line in lines) == 1, lines
    assert not any("ERROR" in line for line in lines), lines
    assert t.progress.text().startswith("aborted at")

    # closing the window aborts a running scan cleanly and leaves X-rays off
    out2 = tmp_path / "closed.h5"
    t.path.setText(str(out2))
    t.run_btn.click()
    qtbot.waitUntil(lambda: "projection 1/9" in t.phase.text(), timeout=30000)
    w.close()
    emu = w.instrument.tube_emulator
    assert not emu.xray_on and w.instrument.busy is None
    with ScanReader(out2) as r:
        assert not r.complete
