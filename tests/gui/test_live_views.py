"""Live image: raw next to corrected and restored on one field, the fidelity overlay, and the
restoration settings reaching the instrument."""
import dataclasses

import numpy as np
from PyQt6.QtCore import QRectF

from xinstrument.acquisition.correction import FlatFieldCorrector
from xinstrument.acquisition.pipeline import ProcessedFrame
from xinstrument.instrument import AveragedFrame

from .conftest import acquire_one, ready, references


def load_profile(qtbot, w):
    r = w.restoration
    r.load_btn.click()
    qtbot.waitUntil(lambda: r.method.count() > 0 and r.load_btn.isEnabled(), timeout=20000)
    return r


def item_rect(view) -> QRectF:
    ii = view.getImageItem()
    return ii.mapRectToParent(ii.boundingRect())


def test_restoration_settings_reach_the_instrument_or_are_refused(qtbot, window):
    w = window
    inst = w.instrument
    ready(qtbot, w)
    references(qtbot, w)
    r = load_profile(qtbot, w)
    before = (inst.restoration_method, inst.restoration_steps, inst.restoration_device)
    # a GPU that this machine does not have (no index 99 on any machine)
    r.steps.setValue(5)
    r.device.setCurrentText("cuda:99")
    r.apply_btn.click()
    qtbot.waitUntil(lambda: "refused" in r.message.text(), timeout=10000)
    assert "restoration device 'cuda:99'" in r.message.text()
    assert (inst.restoration_method, inst.restoration_steps, inst.restoration_device) == before
    assert r.device.currentText() == "auto" and r.steps.value() == 0     # back to what is used
    assert any("ERROR restoration settings" in line and "cuda:99" in line
               for line in w.log.lines())
    # accepted settings are what acquire restores with
    r.method.setCurrentText("richardson_lucy")
    r.steps.setValue(3)
    r.device.setCurrentText("cpu")
    r.apply_btn.click()
    qtbot.waitUntil(lambda: inst.restoration_steps == 3, timeout=10000)
    assert (inst.restoration_method, inst.restoration_device) == ("richardson_lucy", "cpu")
    snap = inst.snapshot()
    assert snap["restoration_steps"] == 3 and snap["restoration_device"] == "cpu"
    qtbot.waitUntil(lambda: "richardson_lucy, 3 steps, on cpu" in r.applied.text(), timeout=5000)
    w.acquisition.restore.setChecked(True)
    w.acquisition.acquire_btn.click()
    qtbot.waitUntil(lambda: w.image.frame is not None and w.image.frame.restored is not None,
                    timeout=30000)
    assert w.image.frame.restoration_method == "richardson_lucy"
    used = inst.restorer()
    assert used.steps == 3 and str(used.device) == "cpu" and used.frames_restored >= 1


def test_raw_next_to_corrected_in_acquire_and_live_view(qtbot, window):
    w = window
    inst = w.instrument
    ready(qtbot, w)
    references(qtbot, w)
    w.image.mode.setCurrentText("raw | frame | restored")
    assert all(not w.image.views[n].isHidden() for n in ("raw", "frame", "restored"))
    w.acquisition.n_average.setValue(2)
    acquire_one(qtbot, w, timeout=10000)
    f = w.image.frame
    assert f.corrected and f.raw is not None
    shown_raw = w.image.views["raw"].getImageItem().image
    assert np.array_equal(shown_raw, f.raw)
    # the raw average really is what was corrected into the frame, by the instrument's own
    # corrector (the console does not replace it)
    assert type(inst.corrector) is FlatFieldCorrector
    assert np.array_equal(inst.corrector(f.raw), f.data)
    assert float(np.mean(f.raw)) > 20 * float(np.mean(f.data))        # ADU vs transmission
    assert w.image.views["raw"].getView().titleLabel.text == "raw"
    assert w.image.views["restored"].getView().titleLabel.text == "restored: none"
    assert w.image.views["frame"].getView().titleLabel.text == "corrected"

    w.acquisition.live_btn.click()
    qtbot.waitUntil(lambda: w.image.frames_shown >= 4, timeout=15000)
    g = w.image.frame
    assert g is not f and g.raw is not None and g.raw.shape == g.data.shape
    assert np.array_equal(w.image.views["raw"].getImageItem().image, g.raw)
    assert isinstance(g, ProcessedFrame)                               # a stream frame
    assert w.image.views["raw"].getView().titleLabel.text == "raw"
    assert np.array_equal(inst.corrector(g.raw), g.data)
    w.acquisition.stop()
    qtbot.waitUntil(lambda: inst.busy is None, timeout=10000)


def test_raw_view_shows_the_frames_own_raw_or_none(qtbot, window):
    w = window
    w.image.mode.setCurrentText("raw | frame")
    rng = np.random.default_rng(1)
    ctx = {"frames_averaged": 2, "exposure_s": 0.02, "voltage_kv": 50, "current_ua": 80,
           "focus_z_um": 0, "theta_deg": 0, "timestamp_s": 0}
    raw = (1000 + 50 * rng.random((32, 32))).astype(np.float32)

    def show(frame):
        w.instrument._emit("frame", frame)            # the instrument's own event path
        qtbot.waitUntil(lambda: w.image.frame is frame, timeout=5000)
        return w.image.views["raw"].getImageItem().image, \
            w.image.views["raw"].getView().titleLabel.text

    # a corrected frame that carries its raw average shows exactly that
    with_raw = AveragedFrame(data=raw / 1000, corrected=True, raw=raw, **ctx)
    img, title = show(with_raw)
    assert title == "raw" and np.array_equal(img, raw)
    # a corrected frame without one: "raw: none", and the previous raw image is not kept
    img, title = show(AveragedFrame(data=raw / 1000, corrected=True, **ctx))
    assert title == "raw: none" and img is None
    # an uncorrected frame is its own raw average
    plain = AveragedFrame(data=raw + 1, **ctx)
    img, title = show(plain)
    assert title == "raw" and np.array_equal(img, plain.data)
    # stream frames likewise: their raw when they carry one, else none when corrected
    w.image.stream_corrected = True
    pf = {"first_frame_number": 0, "last_frame_number": 1, "frames_averaged": 2,
          "timestamp_s": 0, "exposure_s": 0.02}
    img, title = show(ProcessedFrame(index=0, data=raw / 1000, raw=raw - 1, corrected=True,
                                     **pf))
    assert title == "raw" and np.array_equal(img, raw - 1)
    img, title = show(ProcessedFrame(index=1, data=raw / 1000, corrected=True, **pf))
    assert title == "raw: none" and img is None


def test_super_resolved_restoration_covers_the_same_field(qtbot, window):
    w = window
    data = np.random.default_rng(0).random((128, 128)).astype(np.float32)
    frame = AveragedFrame(data=data, frames_averaged=1, exposure_s=0.02, voltage_kv=50,
                          current_ua=80, focus_z_um=0, theta_deg=0, timestamp_s=0,
                          corrected=True, restored=np.kron(data, np.ones((2, 2), np.float32)),
                          restoration_method="sr_x2")
    w.image.mode.setCurrentText("frame | restored")
    w.instrument._emit("frame", frame)            # the instrument's own event path
    qtbot.waitUntil(lambda: w.image.frame is frame, timeout=5000)
    assert item_rect(w.image.views["frame"]) == QRectF(0, 0, 128, 128)
    assert item_rect(w.image.views["restored"]) == QRectF(0, 0, 128, 128)
    assert w.image.views["restored"].getImageItem().image.shape == (256, 256)
    assert w.image.views["restored"].getView().titleLabel.text == "restored 2x"
    # zooming one view (as the mouse does) zooms the others onto the same field
    vb = w.image.views["frame"].getView().getViewBox()
    vb.setRange(xRange=(10, 40), yRange=(60, 90), padding=0)
    vb.sigRangeChangedManually.emit(vb.state["mouseEnabled"])
    (x0, x1), (y0, y1) = w.image.views["restored"].getView().viewRange()
    assert x0 <= 10.01 and x1 >= 39.99 and y0 <= 60.01 and y1 >= 89.99
    assert abs((x0 + x1) / 2 - 25) < 0.5 and abs((y0 + y1) / 2 - 75) < 0.5
    assert min(x1 - x0, y1 - y0) < 35                       # zoomed, not the whole frame
    # ROIs are drawn in frame pixels: on the 2x image they cover twice the pixels
    w.image.edge_roi.setPos([16, 20])
    w.image.edge_roi.setSize([32, 24])
    assert w.image.edge_region("frame").shape == (24, 32)
    assert np.array_equal(w.image.edge_region("restored"), frame.restored[40:88, 32:96])
    from PyQt6.QtCore import QPointF
    w.image.show_pixel(QPointF(5.7, 3.2))                  # restored pixel (6, 11): 2x grid
    assert f"restored {frame.restored[6, 11]:.5g}" in w.image.cursor_label.text()


def test_fidelity_overlay_shows_the_flagged_tiles(qtbot, window):
    w = window
    ready(qtbot, w)
    # enough quanta per pixel for the guard's noise model (>= 10 in the open beam)
    w.acquisition.exposure.setValue(0.2)
    qtbot.waitUntil(lambda: abs(w.instrument.exposure_s - 0.2) < 1e-9, timeout=5000)
    references(qtbot, w)
    r = load_profile(qtbot, w)
    r.fidelity.setChecked(True)
    qtbot.waitUntil(lambda: w.instrument._fidelity is not None, timeout=20000)
    w.acquisition.restore.setChecked(True)
    w.image.mode.setCurrentText("frame | restored")
    w.acquisition.acquire_btn.click()
    qtbot.waitUntil(lambda: w.image.frame is not None
                    and getattr(w.image.frame, "fidelity", None) is not None, timeout=60000)
    frame = w.image.frame
    fid = frame.fidelity
    assert "reduced chi2" in w.image.fidelity_label.text()

    def expected(flagged, edges):
        rows, cols = edges
        return [(float(cols[c]), float(rows[r]), float(cols[c + 1] - cols[c]),
                 float(rows[r + 1] - rows[r])) for r, c in np.argwhere(flagged)]

    assert w.image.fidelity_rects == expected(fid.flagged, fid.tile_edges)
    assert len(w.image._fidelity_items) == int(np.sum(fid.flagged))
    # a result with known flagged tiles through the same frame event
    known = np.zeros_like(np.asarray(fid.flagged, dtype=bool))
    known[0, 1] = known[-1, -1] = True
    undetermined = np.zeros_like(known)
    undetermined[1, 0] = True
    fid2 = dataclasses.replace(
        fid, consistency=dataclasses.replace(fid.consistency, flagged=known,
                                             flagged_fraction=2 / known.size, consistent=False),
        verdict="inconsistent", undetermined=undetermined, fell_back=True,
        fallback_reason="2 tiles flagged; restored with wiener instead")
    frame2 = dataclasses.replace(frame, fidelity=fid2)
    w.instrument._emit("frame", frame2)
    qtbot.waitUntil(lambda: w.image.frame is frame2, timeout=5000)
    rects = expected(known, fid.tile_edges)
    assert w.image.fidelity_rects == rects and len(rects) == 2
    drawn = [i.rect() for i in w.image._fidelity_items]
    assert [(q.x(), q.y(), q.width(), q.height()) for q in drawn] == rects
    view = w.image.views["restored"].getView()
    assert all(i.scene() is view.scene() for i in w.image._fidelity_items)
    text = w.image.fidelity_label.text()
    assert f"2 of {known.size} tiles flagged" in text and "INCONSISTENT" in text
    assert "fell back: 2 tiles flagged; restored with wiener instead" in text
    w.image.fidelity_box.setChecked(False)                  # toggled off: nothing drawn
    assert w.image._fidelity_items == [] and w.image.fidelity_rects == rects
    w.image.fidelity_box.setChecked(True)
    assert len(w.image._fidelity_items) == 2
    # the uncertainty overlay: the undetermined tiles, off until toggled on
    assert w.image.uncertainty_rects == expected(undetermined, fid.tile_edges)
    # a fallback whose own restoration disagrees with the data is flagged, not passed off
    assert "% undetermined by the data" in text and "; flag" in text
    w.image.uncertainty_box.setChecked(True)
    assert len(w.image._fidelity_items) == 3
    w.image.uncertainty_box.setChecked(False)
    assert len(w.image._fidelity_items) == 2
    # the profile's policy on the method chosen: not accepted (the frame fell back) ...
    chosen = dataclasses.replace(fid, method="unet", method_accepted=False,
                                 acceptance="unet is not accepted with profile P: 5.0 % of "
                                            "clean tiles flagged on an unseen family")
    fid3 = dataclasses.replace(fid, fell_back=True, replaced=chosen,
                               fallback_reason="restored with inverse instead")
    frame3 = dataclasses.replace(frame, fidelity=fid3)
    w.instrument._emit("frame", frame3)
    qtbot.waitUntil(lambda: w.image.frame is frame3, timeout=5000)
    assert ("method not accepted by the profile's policy: unet is not accepted with profile P"
            in w.image.fidelity_label.text())
    # ... or not calibrated: said, and never presented as accepted
    fid4 = dataclasses.replace(fid, method_accepted=None, fell_back=False, replaced=None,
                               acceptance="profile P has no fidelity calibration; run "
                                          "scripts/calibrate_fidelity.py")
    frame4 = dataclasses.replace(frame, fidelity=fid4)
    w.instrument._emit("frame", frame4)
    qtbot.waitUntil(lambda: w.image.frame is frame4, timeout=5000)
    text = w.image.fidelity_label.text()
    assert "policy not calibrated: profile P has no fidelity calibration" in text
    assert "; flag" in text and "accept" not in text.replace("not accepted", "")
