"""Live image view: the latest frame (and its restored version) with LUT, profile and ROI stats.

A timer pulls the newest frame from the bridge at the display rate; frames that arrive faster
are skipped, never queued, so the display cannot slow acquisition down.
"""
from __future__ import annotations

import itertools
import time

import numpy as np
import pyqtgraph as pg
from PyQt6.QtCore import QPointF, QTimer, pyqtSignal
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)

MODES = ("frame", "restored", "side by side")


_view_count = itertools.count()


def make_image_view() -> pg.ImageView:
    """An ImageView (histogram/LUT, zoom) on a PlotItem with axes, registered under a unique
    name; :func:`release_views` must run before its window is destroyed."""
    view = pg.ImageView(view=pg.PlotItem(), name=f"xinstrument-image-{next(_view_count)}")
    view.ui.roiBtn.hide()
    view.ui.menuBtn.hide()
    view.getView().setAspectLocked(True)
    return view


def release_views(root: QWidget) -> None:
    """Unregister the named pyqtgraph views inside ``root`` before it is destroyed.

    pyqtgraph links named views through a class-wide registry and refreshes every registered
    view when one is destroyed; during a window's teardown that would touch views that are
    half-destroyed already. Unregistering them first keeps the teardown orderly."""
    for vb in list(pg.ViewBox.AllViews.keys()):
        try:
            widget = vb.getViewWidget()
        except RuntimeError:
            widget = None
        if widget is None or not (widget is root or root.isAncestorOf(widget)):
            continue
        try:
            vb.destroyed.disconnect()
        except (TypeError, RuntimeError):
            pass
        pg.ViewBox.AllViews.pop(vb, None)
        if vb.name is not None and pg.ViewBox.NamedViews.get(vb.name) is vb:
            pg.ViewBox.NamedViews.pop(vb.name, None)


def _roi_stats(img: np.ndarray) -> str:
    if img is None or img.size == 0:
        return "ROI: -"
    return (f"ROI {img.shape[1]}x{img.shape[0]} px: mean {img.mean():.4g}, std {img.std():.3g}, "
            f"min {img.min():.4g}, max {img.max():.4g}")


class LiveImagePanel(QWidget):
    """Two pyqtgraph ImageViews (frame, restored) shown one at a time or side by side.

    Tools on the frame view: a rectangular statistics ROI, a line-profile ROI (plotted below),
    an edge ROI for the calibration panel, pixel value under the cursor. ``frames_shown``,
    ``display_fps`` and the drop counters are public for the window's status line and tests.
    """

    frame_shown = pyqtSignal(object)

    def __init__(self, bridge, display_hz: float = 15.0, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.frame = None
        self.frames_shown = 0
        self.display_fps = 0.0
        self._t_last = None
        self._fidelity_item: pg.ImageItem | None = None

        self.mode = QComboBox()
        self.mode.addItems(MODES)
        self.mode.currentTextChanged.connect(self._apply_mode)
        self.fidelity_box = QCheckBox("fidelity overlay")
        self.fidelity_box.setToolTip("Mark restored pixels that disagree with the measured frame")
        self.fidelity_box.toggled.connect(lambda _=None: self._draw())
        self.edge_box = QCheckBox("edge ROI (MTF)")
        self.edge_box.toggled.connect(lambda on: self.edge_roi.setVisible(on))
        self.title = QLabel("no frame yet")
        self.cursor_label = QLabel("pixel: -")
        self.stats_label = QLabel("ROI: -")
        self.rate_label = QLabel("display 0.0 fps")

        self.views: dict[str, pg.ImageView] = {}
        self.splitter = splitter = QSplitter()
        for name in ("frame", "restored"):
            view = make_image_view()
            view.getView().setTitle(name)
            self.views[name] = view
            splitter.addWidget(view)

        fv = self.views["frame"].getView()
        self.stats_roi = pg.RectROI([8, 8], [32, 32], pen=pg.mkPen("y", width=1))
        self.line_roi = pg.LineSegmentROI([[4, 4], [60, 60]], pen=pg.mkPen("c", width=1))
        self.edge_roi = pg.RectROI([16, 16], [48, 48], pen=pg.mkPen("m", width=2))
        self.edge_roi.setVisible(False)
        for roi in (self.stats_roi, self.line_roi, self.edge_roi):
            fv.addItem(roi)
            roi.sigRegionChangeFinished.connect(lambda *_: self._update_tools())
        self.profile_plot = pg.PlotWidget()
        self.profile_plot.setMaximumHeight(140)
        self.profile_plot.setLabel("bottom", "distance along line", units="px")
        self.profile_curve = self.profile_plot.plot(pen="c")
        self.views["frame"].scene.sigMouseMoved.connect(self._mouse_moved)

        top = QHBoxLayout()
        for w in (QLabel("show"), self.mode, self.fidelity_box, self.edge_box, self.title):
            top.addWidget(w)
        top.addStretch(1)
        bottom = QHBoxLayout()
        for w in (self.cursor_label, self.stats_label):
            bottom.addWidget(w)
        bottom.addStretch(1)
        bottom.addWidget(self.rate_label)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addLayout(top)
        lay.addWidget(splitter, 1)
        lay.addWidget(self.profile_plot)
        lay.addLayout(bottom)
        self._apply_mode(self.mode.currentText())

        self.timer = QTimer(self)
        self.timer.setInterval(int(1000 / display_hz))
        self.timer.timeout.connect(self.poll)
        self.timer.start()

    # --- frames --------------------------------------------------------------------------------
    def poll(self) -> None:
        f = self.bridge.take_latest_frame()
        if f is not None:
            self.show_frame(f)

    def show_frame(self, frame) -> None:
        """Display ``frame`` (AveragedFrame or the pipeline's ProcessedFrame)."""
        first = self.frame is None
        self.frame = frame
        self._draw(auto=first)
        now = time.monotonic()
        if self._t_last is not None and now > self._t_last:
            inst = 1.0 / (now - self._t_last)
            self.display_fps = inst if self.display_fps == 0 else 0.8 * self.display_fps + 0.2 * inst
        self._t_last = now
        self.frames_shown += 1
        corrected = getattr(frame, "corrected", None)
        if corrected is None:  # a stream frame: the stream's settings say what it is
            corrected = self.stream_corrected
        kind = "corrected" if corrected else "raw"
        n = getattr(frame, "frames_averaged", 1)
        extra = f", restored by {frame.restoration_method}" if frame.restored is not None else ""
        self.title.setText(f"{kind} frame, {n} averaged{extra}")
        self.rate_label.setText(f"display {self.display_fps:.1f} fps, "
                                f"{self.frames_shown} frames shown of {self.bridge.frames_seen}")
        self.frame_shown.emit(frame)

    def _draw(self, auto: bool = False) -> None:
        f = self.frame
        if f is None:
            return
        self.views["frame"].setImage(np.asarray(f.data), autoRange=auto, autoLevels=auto,
                                     autoHistogramRange=auto)
        rest = getattr(f, "restored", None)
        if rest is not None:
            self.views["restored"].setImage(np.asarray(rest), autoRange=False,
                                            autoLevels=auto or self._restored_first,
                                            autoHistogramRange=auto or self._restored_first)
            if self._restored_first:
                self.views["restored"].autoRange()
            self._restored_first = False
        if auto:
            self.views["frame"].autoRange()
        self._draw_fidelity()
        self._update_tools()

    _restored_first = True
    stream_corrected = False   # set by the acquisition panel when it starts a stream

    def _draw_fidelity(self) -> None:
        fid = getattr(self.frame, "fidelity", None)
        fmap = getattr(fid, "map", None)
        view = self.views["restored"].getView()
        if self._fidelity_item is not None:
            view.removeItem(self._fidelity_item)
            self._fidelity_item = None
        if not self.fidelity_box.isChecked() or fmap is None:
            return
        m = np.asarray(fmap, dtype=np.float32)
        if m.ndim != 2:
            return
        rgba = np.zeros(m.shape + (4,), dtype=np.ubyte)
        rgba[..., 0] = 255
        rgba[..., 3] = (np.clip(m / (np.nanmax(m) or 1.0), 0, 1) * 160).astype(np.ubyte)
        self._fidelity_item = pg.ImageItem(rgba)
        view.addItem(self._fidelity_item)
        ff = getattr(fid, "flagged_fraction", None)
        if ff is not None:
            self.title.setText(self.title.text() + f"; {100 * float(ff):.1f} % flagged")

    def _apply_mode(self, mode: str) -> None:
        self.views["frame"].setVisible(mode in ("frame", "side by side"))
        self.views["restored"].setVisible(mode in ("restored", "side by side"))
        if mode == "side by side":
            half = max(1, sum(self.splitter.sizes()) // 2)
            self.splitter.setSizes([half, half])
        # fit the images to the new view sizes once the layout has settled
        QTimer.singleShot(0, self.auto_range)

    def auto_range(self) -> None:
        for view in self.views.values():
            if view.isVisible() and view.getImageItem().image is not None:
                view.autoRange()

    # --- tools ---------------------------------------------------------------------------------
    def image(self, which: str = "frame") -> np.ndarray | None:
        if self.frame is None:
            return None
        img = self.frame.data if which == "frame" else getattr(self.frame, "restored", None)
        return None if img is None else np.asarray(img)

    def roi_region(self, roi: pg.ROI, img: np.ndarray) -> tuple[slice, slice]:
        """Row and column slices of ``roi`` clipped to ``img``."""
        x, y = roi.pos()
        w, h = roi.size()
        r0, c0 = max(0, round(float(y))), max(0, round(float(x)))
        r1 = min(img.shape[0], round(float(y + h)))
        c1 = min(img.shape[1], round(float(x + w)))
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))

    def edge_region(self, which: str = "frame") -> np.ndarray | None:
        img = self.image(which)
        if img is None:
            return None
        rs, cs = self.roi_region(self.edge_roi, img)
        return img[rs, cs]

    def _update_tools(self) -> None:
        img = self.image("frame")
        if img is None:
            return
        rs, cs = self.roi_region(self.stats_roi, img)
        self.stats_label.setText(_roi_stats(img[rs, cs]))
        ii = self.views["frame"].getImageItem()
        prof = self.line_roi.getArrayRegion(img, ii)
        if prof is not None and np.size(prof):
            self.profile_curve.setData(np.asarray(prof, dtype=float).ravel())

    def _mouse_moved(self, pos) -> None:
        img = self.image("frame")
        if img is None:
            return
        p = self.views["frame"].getImageItem().mapFromScene(pos)
        self.show_pixel(p)

    def show_pixel(self, p: QPointF) -> None:
        img = self.image("frame")
        r, c = int(np.floor(p.y())), int(np.floor(p.x()))
        if img is not None and 0 <= r < img.shape[0] and 0 <= c < img.shape[1]:
            txt = f"pixel ({c}, {r}): {img[r, c]:.5g}"
            rest = self.image("restored")
            if rest is not None and rest.shape == img.shape:
                txt += f", restored {rest[r, c]:.5g}"
            self.cursor_label.setText(txt)

    def fit_rois(self) -> None:
        """Place the ROIs inside the current frame (after the sensor size is known)."""
        img = self.image("frame")
        if img is None:
            return
        h, w = img.shape
        self.stats_roi.setPos([w * 0.4, h * 0.4])
        self.stats_roi.setSize([w * 0.2, h * 0.2])
        self.line_roi.movePoint(0, [w * 0.1, h * 0.5])
        self.line_roi.movePoint(1, [w * 0.9, h * 0.5])
        self.edge_roi.setPos([w * 0.3, h * 0.3])
        self.edge_roi.setSize([w * 0.4, h * 0.4])
        self._update_tools()
