"""Live image view: the latest frame, its raw average and its restored version with LUT,
profile and ROI stats, and the restoration's fidelity overlay.

A timer pulls the newest frame from the bridge at the display rate; frames that arrive faster
are skipped, never queued, so the display cannot slow acquisition down.

All views use the frame's pixel grid as coordinates: an image of another size (a restored frame
super-resolved 2x or 4x) is scaled onto the same rectangle, and the views are linked, so each
shows the same field of the sample.
"""
from __future__ import annotations

import itertools
import time

import numpy as np
import pyqtgraph as pg
from PyQt6.QtCore import QPointF, QRectF, QTimer, pyqtSignal
from PyQt6.QtGui import QBrush, QColor, QPen
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGraphicsRectItem,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)

# display mode -> views shown, left to right
MODES = {
    "frame": ("frame",),
    "raw": ("raw",),
    "restored": ("restored",),
    "frame | restored": ("frame", "restored"),
    "raw | frame": ("raw", "frame"),
    "raw | frame | restored": ("raw", "frame", "restored"),
}
VIEW_NAMES = ("raw", "frame", "restored")
FLAGGED_BRUSH = QColor(255, 40, 40, 90)
FLAGGED_PEN = QColor(255, 40, 40, 220)
# tiles whose restored detail the data cannot determine (fidelity report's uncertainty map)
UNDETERMINED_BRUSH = QColor(60, 120, 255, 60)
UNDETERMINED_PEN = QColor(60, 120, 255, 200)


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


def levels_show(img: np.ndarray, levels) -> bool:
    """True when display ``levels`` (lo, hi) show ``img``: at most half of a sparse sample of
    its pixels falls outside them."""
    if levels is None:
        return False
    try:
        lo, hi = (float(v) for v in np.ravel(levels)[:2])
    except (TypeError, ValueError):
        return False
    step = max(1, img.size // 4096)
    sample = np.asarray(img).ravel()[::step]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0 or not hi > lo:
        return False
    outside = np.count_nonzero((sample < lo) | (sample > hi))
    return outside <= 0.5 * sample.size


def raw_image(frame) -> np.ndarray | None:
    """The raw (uncorrected) average behind ``frame``: its ``raw`` reference when the frame
    carries one, its data when it was never corrected, else None."""
    raw = getattr(frame, "raw", None)
    if raw is not None:
        return np.asarray(raw)
    if getattr(frame, "corrected", None) is False:
        return np.asarray(frame.data)
    return None


def fidelity_text(fid) -> str:
    """One line on a restoration's consistency with its measurement."""
    if fid is None:
        return ""
    if not getattr(fid, "normalised", True):
        return (f"fidelity: not normalised (no dose information), rms residual "
                f"{float(fid.rms_residual):.3g}")
    flagged = np.asarray(fid.flagged)
    verdict = {True: "consistent", False: "INCONSISTENT", None: "undecided"}[fid.consistent]
    text = (f"fidelity: reduced chi2 {float(fid.reduced_chi2):.3f}, {int(flagged.sum())} of "
            f"{flagged.size} tiles flagged ({100 * float(fid.flagged_fraction):.1f} %), {verdict}")
    undetermined = getattr(fid, "undetermined_fraction", None)
    if undetermined is not None and np.isfinite(undetermined):
        text += (f"; {100 * undetermined:.0f} % undetermined by the data, uncertainty "
                 f"+-{float(fid.uncertainty_mean):.3g}; {fid.action}")
    # the profile's policy on the method chosen (before any fallback)
    chosen = getattr(fid, "replaced", None) or fid
    accepted = getattr(chosen, "method_accepted", True)
    reason = getattr(chosen, "acceptance", "") or ""
    if accepted is None:
        text += f"; policy not calibrated: {reason}"
    elif accepted is False:
        text += f"; method not accepted by the profile's policy: {reason}"
    if getattr(fid, "fell_back", False):
        text += f"; fell back: {fid.fallback_reason}"
    elif getattr(fid, "kept_reason", None):
        text += f"; {fid.kept_reason}"
    return text


class LiveImagePanel(QWidget):
    """Three pyqtgraph ImageViews (raw, frame, restored) shown alone or side by side, panned
    and zoomed together.

    "frame" is what the instrument delivers (corrected when correction is on), "raw" the
    uncorrected average behind it (see :func:`raw_image`), "restored" the restoration.
    Tools on the frame view: a rectangular statistics ROI, a line-profile ROI (plotted below),
    an edge ROI for the calibration panel, pixel value under the cursor. On the restored view:
    the flagged tiles of the fidelity check (``fidelity_rects``). ``frames_shown``,
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
        self._fidelity_items: list[QGraphicsRectItem] = []
        self.fidelity_rects: list[tuple[float, float, float, float]] = []  # x, y, w, h in px
        self._first_image = {name: True for name in VIEW_NAMES}
        self._kind: dict[str, tuple] = {}     # view -> what it showed last (levels follow it)

        self.mode = QComboBox()
        self.mode.addItems(list(MODES))
        self.mode.currentTextChanged.connect(self._apply_mode)
        self.fidelity_box = QCheckBox("fidelity")
        self.fidelity_box.setToolTip("Mark the tiles where the restored frame disagrees with the "
                                     "measured one (fidelity guard on)")
        self.fidelity_box.setChecked(True)
        self.fidelity_box.toggled.connect(lambda _=None: self._draw_fidelity())
        self.uncertainty_box = QCheckBox("uncertainty")
        self.uncertainty_box.setToolTip("Mark the tiles whose restored detail the measurement "
                                        "cannot determine (null space of the detector's blur)")
        self.uncertainty_box.setChecked(False)
        self.uncertainty_box.toggled.connect(lambda _=None: self._draw_fidelity())
        self.uncertainty_rects: list[tuple[float, float, float, float]] = []  # x, y, w, h in px
        self.edge_box = QCheckBox("edge ROI")
        self.edge_box.setToolTip("Show the magenta ROI the Calibrate tab measures the MTF in")
        self.edge_box.toggled.connect(lambda on: self.edge_roi.setVisible(on))
        self.title = QLabel("no frame yet")
        # the line may be long (method, fidelity): it is cut to the space there is, never
        # widening the window; the whole text is in its tooltip
        self.title.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.title.setMinimumWidth(120)
        self.cursor_label = QLabel("pixel: -")
        self.stats_label = QLabel("ROI: -")
        self.rate_label = QLabel("display 0.0 fps")
        self.fidelity_label = QLabel("")
        self.fidelity_label.setWordWrap(True)

        self.views: dict[str, pg.ImageView] = {}
        self.splitter = splitter = QSplitter()
        for name in VIEW_NAMES:
            view = make_image_view()
            view.getView().setTitle(name)
            self.views[name] = view
            splitter.addWidget(view)
        fv = self.views["frame"].getView()
        # pan / zoom by the operator in one view is copied to the others. Not pyqtgraph's
        # axis links: with locked aspect ratios in views of different sizes, linked views keep
        # widening each other's range
        for name, view in self.views.items():
            view.getView().getViewBox().sigRangeChangedManually.connect(
                lambda *_a, n=name: self.match_views(n))

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
        for w in (QLabel("show"), self.mode, self.fidelity_box, self.uncertainty_box,
                  self.edge_box, self.title):
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
        lay.addWidget(self.fidelity_label)
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
        kind = "corrected" if self.is_corrected(frame) else "raw"
        n = getattr(frame, "frames_averaged", 1)
        extra = f", restored by {frame.restoration_method}" if frame.restored is not None else ""
        self.title.setText(f"{kind} frame, {n} averaged{extra}")
        self.title.setToolTip(self.title.text())
        self.rate_label.setText(f"display {self.display_fps:.1f} fps, "
                                f"{self.frames_shown} frames shown of {self.bridge.frames_seen}")
        self.frame_shown.emit(frame)

    def show_restoration(self, frame, restored: np.ndarray, method: str) -> None:
        """Show ``restored`` (computed off-line from ``frame``) as that frame's restoration,
        side by side with it."""
        import dataclasses
        fields = {"restored": np.asarray(restored), "restoration_method": method,
                  "fidelity": None}
        if dataclasses.is_dataclass(frame):
            known = {f.name for f in dataclasses.fields(frame)}
            shown = dataclasses.replace(frame, **{k: v for k, v in fields.items() if k in known})
            for k, v in fields.items():
                if k not in known:
                    setattr(shown, k, v)
        else:
            import copy
            shown = copy.copy(frame)
            for k, v in fields.items():
                setattr(shown, k, v)
        if "restored" not in MODES.get(self.mode.currentText(), ()):
            self.mode.setCurrentText("frame | restored")
        self._first_image["restored"] = True      # new content: fit its levels
        self.show_frame(shown)

    def is_corrected(self, frame) -> bool:
        corrected = getattr(frame, "corrected", None)
        if corrected is None:  # a stream frame: the stream's settings say what it is
            corrected = self.stream_corrected
        return bool(corrected)

    def scale_of(self, img: np.ndarray) -> tuple[float, float]:
        """Frame pixels per pixel of ``img`` along (x, y): 1 for the frame itself, 1/2 or 1/4
        for a restored frame super-resolved 2x or 4x."""
        ref = np.shape(self.frame.data) if self.frame is not None else np.shape(img)
        return ref[1] / img.shape[1], ref[0] / img.shape[0]

    def _set(self, name: str, img: np.ndarray | None, auto: bool, kind: tuple = ()) -> None:
        """Show ``img`` in view ``name``. Levels are fitted on the first image, when the kind
        of image changes (raw ADU vs corrected transmission, another size) and when the
        operator's levels no longer show it (most pixels clipped: a flat after the sample);
        otherwise the operator's levels stay."""
        view = self.views[name]
        if img is None:
            if view.getImageItem().image is not None:
                view.clear()      # a stale image would pass for this frame's
            return
        kind = (*kind, img.shape)
        changed = self._kind.get(name) != kind
        self._kind[name] = kind
        first = self._first_image[name] or changed or not levels_show(
            img, view.getImageItem().getLevels())
        view.setImage(img, autoRange=False, autoLevels=auto or first,
                      autoHistogramRange=auto or first, scale=self.scale_of(img))
        self._first_image[name] = False
        if auto or first:
            # keeps fitting the image as the view is resized, until the operator zooms
            view.getView().getViewBox().enableAutoRange()

    def _draw(self, auto: bool = False) -> None:
        f = self.frame
        if f is None:
            return
        corrected = self.is_corrected(f)
        data = np.asarray(f.data)
        self._set("frame", data, auto, ("corrected" if corrected else "raw",))
        # titles stay short: a title wider than the view widens the plot beyond what is shown
        self.views["frame"].getView().setTitle("corrected" if corrected else "uncorrected")
        raw = raw_image(f)
        self._set("raw", raw, auto)
        self.views["raw"].getView().setTitle("raw" if raw is not None else "raw: none")
        rest = getattr(f, "restored", None)
        rest = None if rest is None else np.asarray(rest)
        self._set("restored", rest, auto)
        if rest is None:
            self.views["restored"].getView().setTitle("restored: none")
        else:
            sx, _sy = self.scale_of(rest)
            self.views["restored"].getView().setTitle(
                f"restored {1 / sx:g}x" if abs(sx - 1) > 1e-9 else "restored")
        self._draw_fidelity()
        self._update_tools()

    stream_corrected = False   # set by the acquisition panel when it starts a stream

    def _draw_fidelity(self) -> None:
        """Flagged tiles of the frame's fidelity result as translucent rectangles over the
        restored view, and its summary line."""
        view = self.views["restored"].getView()
        for item in self._fidelity_items:
            view.removeItem(item)
        self._fidelity_items = []
        self.fidelity_rects = []
        self.uncertainty_rects = []
        fid = getattr(self.frame, "fidelity", None)
        self.fidelity_label.setText(fidelity_text(fid))
        if fid is None or getattr(self.frame, "restored", None) is None:
            return
        flagged = np.asarray(fid.flagged, dtype=bool)
        row_edges, col_edges = (np.asarray(e, dtype=float) for e in fid.tile_edges)
        fmap = getattr(fid, "map", None)
        # tile edges are pixels of the checked frame; map them onto the frame's grid
        grid = np.shape(fmap) if fmap is not None and np.ndim(fmap) == 2 else \
            (row_edges[-1], col_edges[-1])
        ref = np.shape(self.frame.data)
        sx, sy = ref[1] / grid[1], ref[0] / grid[0]
        undetermined = np.asarray(getattr(fid, "undetermined", np.zeros_like(flagged)), bool)
        for tiles, rects in ((flagged, self.fidelity_rects), (undetermined, self.uncertainty_rects)):
            for r, c in np.argwhere(tiles):
                x, y = col_edges[c] * sx, row_edges[r] * sy
                w = (col_edges[c + 1] - col_edges[c]) * sx
                h = (row_edges[r + 1] - row_edges[r]) * sy
                rects.append((float(x), float(y), float(w), float(h)))
        layers = [(self.fidelity_box, self.fidelity_rects, FLAGGED_PEN, FLAGGED_BRUSH, 10),
                  (self.uncertainty_box, self.uncertainty_rects, UNDETERMINED_PEN,
                   UNDETERMINED_BRUSH, 9)]
        for box, rects, pen_colour, brush, z in layers:
            if not box.isChecked():
                continue
            pen = QPen(pen_colour)
            pen.setCosmetic(True)
            for x, y, w, h in rects:
                item = QGraphicsRectItem(QRectF(x, y, w, h))
                item.setBrush(QBrush(brush))
                item.setPen(pen)
                item.setZValue(z)
                view.addItem(item)
                self._fidelity_items.append(item)

    def _apply_mode(self, mode: str) -> None:
        shown = MODES.get(mode, ("frame",))
        for name, view in self.views.items():
            view.setVisible(name in shown)
        if len(shown) > 1:
            total = max(len(shown), sum(self.splitter.sizes()))
            self.splitter.setSizes([total // len(shown) if n in shown else 0
                                    for n in VIEW_NAMES])
        # fit the images to the new view sizes once the layout has settled
        QTimer.singleShot(0, self.auto_range)

    def match_views(self, source: str = "frame") -> None:
        """Show in every other view the field that ``source`` shows."""
        rect = self.views[source].getView().getViewBox().viewRect()
        for name, view in self.views.items():
            if name != source and view.getImageItem().image is not None:
                view.getView().getViewBox().setRange(rect=rect, padding=0)

    def auto_range(self) -> None:
        """Fit every shown image to its view (and keep fitting it on resizes)."""
        for view in self.views.values():
            if view.isVisible() and view.getImageItem().image is not None:
                view.getView().getViewBox().enableAutoRange()

    # --- tools ---------------------------------------------------------------------------------
    def image(self, which: str = "frame") -> np.ndarray | None:
        """The current frame's "frame", "raw" or "restored" image (None if it has none)."""
        if self.frame is None:
            return None
        if which == "raw":
            return raw_image(self.frame)
        img = self.frame.data if which == "frame" else getattr(self.frame, "restored", None)
        return None if img is None else np.asarray(img)

    def roi_region(self, roi: pg.ROI, img: np.ndarray) -> tuple[slice, slice]:
        """Row and column slices of ``roi`` (drawn in frame pixels) in ``img``'s own pixels,
        clipped to ``img``."""
        sx, sy = self.scale_of(img)
        x, y = roi.pos()
        w, h = roi.size()
        x, w, y, h = x / sx, w / sx, y / sy, h / sy
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
            raw = self.image("raw")
            if raw is not None and raw is not img and raw.shape == img.shape:
                txt += f", raw {raw[r, c]:.5g}"
            rest = self.image("restored")
            if rest is not None:
                sx, sy = self.scale_of(rest)
                rr, rc = int(np.floor(p.y() / sy)), int(np.floor(p.x() / sx))
                if 0 <= rr < rest.shape[0] and 0 <= rc < rest.shape[1]:
                    txt += f", restored {rest[rr, rc]:.5g}"
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
