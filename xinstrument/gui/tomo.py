"""Tomosynthesis panel: plan editor, run / pause / resume / abort, progress, reconstruction of the
finished (or any existing) scan file and a slice viewer with the height of each slice.

The scan runs in its own thread (:class:`xinstrument.scans.TomoScan`); its progress reports are
re-emitted as a Qt signal so that widgets are only touched in the GUI thread. Reconstruction runs
on the bridge's worker threads.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PyQt6.QtCore import Qt, QTimer, pyqtSignal
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
)

from ..errors import UserError
from ..outputs import derived_output
from ..recon import METHODS, ReconError, load_scan, reconstruct, save_reconstruction
from ..scans import PlanError, ScanAborted, TomoPlan, TomoScan
from ..scans.tomo import plan_summary
from .bridge import describe_error
from .imageview import make_image_view
from .panels import Panel

PHASE_TEXT = {"darks": "dark frames", "flats": "flat series", "projections": "projections",
              "paused": "paused", "done": "finished", "aborted": "aborted"}


@dataclass
class ReconView:
    """A reconstruction shown in the slice viewer, with where it came from."""

    path: Path
    slices: np.ndarray          # [K, rows, cols]
    heights_mm: np.ndarray
    voxel_mm: float
    method: str
    units: str
    stored_at: str | None       # HDF5 path of the stored slices, None if storing failed
    note: str                   # incomplete scan, storing failure: one line for the operator


def _spin(lo: int, hi: int, value: int, special: str | None = None) -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    return box


def _dspin(lo: float, hi: float, value: float, decimals: int, suffix: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(lo, hi)
    box.setValue(value)
    box.setSuffix(f" {suffix}")
    box.setKeyboardTracking(False)
    return box


class TomoPanel(Panel):
    """Plan, run and reconstruct tomosynthesis scans on the instrument's rotation axis."""

    scan_progress = pyqtSignal(object)      # ScanProgress, from the scan's thread
    recon_progress = pyqtSignal(float)      # fraction, from a worker thread

    def __init__(self, bridge, parent=None) -> None:
        super().__init__(bridge, parent)
        inst = self.instrument
        self.scan = None                    # the running TomoScan
        self.result = None                  # TomoResult of the last scan that ended
        self.recon: ReconView | None = None
        self._recon_running = False

        # --- plan editor. Ranges are wide on purpose: the plan's own validate() names what is
        # wrong (n_angles 1, an arc beyond the stage limits) instead of a spin box clamping it
        self.arc_deg = _dspin(0.0, 360.0, 20.0, 2, "deg")
        self.centre_deg = _dspin(-360.0, 360.0, 0.0, 2, "deg")
        self.n_angles = _spin(1, 10000, 21)
        self.frames_per_angle = _spin(1, 1000, 4)
        self.darks = _spin(0, 1000, 2, "use instrument's")
        self.flats = _spin(0, 1000, 2, "use instrument's")
        self.flats_every = _spin(0, 10000, 0, "before the scan only")
        self.restore = QCheckBox("restore each projection (instrument's method)")
        self.exposure_s = _dspin(0.0, 60.0, 0.0, 3, "s")
        self.exposure_s.setSpecialValueText("current")
        self.path = QLineEdit()
        self.path.setPlaceholderText("tomo.h5")
        self.browse = QToolButton()
        self.browse.setText("...")
        self.browse.clicked.connect(self.choose_file)
        self.overwrite = QCheckBox("overwrite")
        self.limits_label = QLabel(self._limits_text())

        self.run_btn = QPushButton("Run scan")
        self.run_btn.clicked.connect(self.run_scan)
        self.pause_btn = QPushButton("Pause")
        self.pause_btn.clicked.connect(self.pause)
        self.resume_btn = QPushButton("Resume")
        self.resume_btn.clicked.connect(self.resume)
        self.abort_btn = QPushButton("Abort")
        self.abort_btn.clicked.connect(self.abort)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.phase = QLabel("no scan")
        self.phase.setWordWrap(True)

        # --- reconstruction
        self.method = QComboBox()
        self.method.addItems(list(METHODS))
        self.method.setCurrentText("sirt")
        self.iterations = _spin(1, 500, 20)
        self.iterations.setToolTip("SIRT iterations")
        self.height_start_um = _dspin(-10000.0, 100000.0, 0.0, 1, "um")
        self.height_stop_um = _dspin(-10000.0, 100000.0, 1600.0, 1, "um")
        self.n_slices = _spin(1, 1000, 16)
        self.use_restored = QCheckBox("use restored projections")
        self.recon_btn = QPushButton("Reconstruct")
        self.recon_btn.setToolTip("Reconstruct the last scan (or the last loaded file) again")
        self.recon_btn.clicked.connect(self.reconstruct_again)
        self.load_btn = QPushButton("Load existing scan file...")
        self.load_btn.clicked.connect(self.choose_scan_file)
        self.recon_label = QLabel("no reconstruction")
        self.recon_label.setWordWrap(True)

        # --- slice viewer
        self.viewer = make_image_view()
        self.viewer.getView().setTitle("slice")
        self.viewer.getView().setLabel("bottom", "x (um)")
        self.viewer.getView().setLabel("left", "y (um)")
        self.viewer.setMinimumHeight(300)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setEnabled(False)
        self.slider.valueChanged.connect(self.show_slice)
        self.slice_label = QLabel("slice: -")

        # two label/field columns keep the plan short, so the slice viewer fits below it
        plan = QGroupBox("Plan")
        grid = QGridLayout(plan)
        pairs = (("arc", self.arc_deg), ("centre", self.centre_deg),
                 ("angles", self.n_angles), ("frames per angle", self.frames_per_angle),
                 ("dark frames", self.darks), ("flat frames", self.flats),
                 ("new flats every", self.flats_every), ("exposure", self.exposure_s))
        for i, (label, widget) in enumerate(pairs):
            grid.addWidget(QLabel(label), i // 2, 2 * (i % 2))
            grid.addWidget(widget, i // 2, 2 * (i % 2) + 1)
        self.flats_every.setToolTip("a new flat series after every that many angles")
        prow = QHBoxLayout()
        prow.addWidget(QLabel("output file"))
        prow.addWidget(self.path, 1)
        prow.addWidget(self.browse)
        prow.addWidget(self.overwrite)
        grid.addLayout(prow, 4, 0, 1, 4)
        grid.addWidget(self.restore, 5, 0, 1, 4)
        grid.addWidget(self.limits_label, 6, 0, 1, 4)
        brow = QHBoxLayout()
        for b in (self.run_btn, self.pause_btn, self.resume_btn, self.abort_btn):
            brow.addWidget(b)
        recon = QGroupBox("Reconstruction")
        rgrid = QGridLayout(recon)
        rgrid.addWidget(QLabel("method"), 0, 0)
        rgrid.addWidget(self.method, 0, 1)
        rgrid.addWidget(QLabel("SIRT iterations"), 0, 2)
        rgrid.addWidget(self.iterations, 0, 3)
        hrow = QHBoxLayout()
        hrow.addWidget(QLabel("heights"))
        hrow.addWidget(self.height_start_um, 1)
        hrow.addWidget(QLabel("to"))
        hrow.addWidget(self.height_stop_um, 1)
        hrow.addWidget(QLabel("slices"))
        hrow.addWidget(self.n_slices)
        rgrid.addLayout(hrow, 1, 0, 1, 4)
        rrow = QHBoxLayout()
        rrow.addWidget(self.use_restored)
        rrow.addWidget(self.recon_btn)
        rrow.addWidget(self.load_btn)
        rgrid.addLayout(rrow, 2, 0, 1, 4)
        rgrid.addWidget(self.recon_label, 3, 0, 1, 4)
        lay = QVBoxLayout(self)
        lay.addWidget(plan)
        lay.addLayout(brow)
        lay.addWidget(self.progress)
        lay.addWidget(self.phase)
        lay.addWidget(self.message)
        lay.addWidget(recon)
        lay.addWidget(self.viewer, 1)
        lay.addWidget(self.slider)
        lay.addWidget(self.slice_label)

        # the log's recent lines, numbered: an outcome is logged once, by whoever says it first
        self._log_seen: deque[tuple[int, str]] = deque(maxlen=200)
        self._log_count = 0
        bridge.log_line.connect(self._seen)
        self._last_report = 0.0
        self._n_angles = 0
        self._pause_timer = QTimer(self)
        self._pause_timer.setInterval(100)
        self._pause_timer.timeout.connect(self._check_paused)
        self.scan_progress.connect(self._on_progress)
        self.recon_progress.connect(self._on_recon_progress)
        self._set_running(False)
        if not inst.has_rotation_stage:
            self.run_btn.setEnabled(False)
            self.run_btn.setToolTip("this bench has no rotation stage")

    def settings_fields(self):
        return {"tomo/arc_deg": self.arc_deg, "tomo/centre_deg": self.centre_deg,
                "tomo/n_angles": self.n_angles, "tomo/frames_per_angle": self.frames_per_angle,
                "tomo/darks": self.darks, "tomo/flats": self.flats,
                "tomo/flats_every": self.flats_every, "tomo/restore": self.restore,
                "tomo/exposure_s": self.exposure_s, "tomo/path": self.path,
                "tomo/method": self.method, "tomo/iterations": self.iterations,
                "tomo/height_start_um": self.height_start_um,
                "tomo/height_stop_um": self.height_stop_um, "tomo/n_slices": self.n_slices}

    def _limits_text(self) -> str:
        if not self.instrument.has_rotation_stage:
            return "no rotation stage on this bench: tomosynthesis cannot run"
        lo, hi = self.instrument.soft_limits("rotation")
        return f"rotation stage limits {lo:g} .. {hi:g} deg"

    # --- plan ----------------------------------------------------------------------------------
    def plan(self):
        """The plan the widgets describe, validated (raises PlanError with the reason)."""
        text = self.path.text().strip()
        if not text:
            raise PlanError("choose an output HDF5 file first")
        out = Path(text)
        if out.exists() and not self.overwrite.isChecked():
            raise PlanError(f"{out} exists (tick overwrite to replace it)")
        if not out.parent.is_dir():
            raise PlanError(f"folder {out.parent} does not exist")
        plan = TomoPlan(arc_deg=self.arc_deg.value(), centre_deg=self.centre_deg.value(),
                        n_angles=self.n_angles.value(),
                        frames_per_angle=self.frames_per_angle.value(),
                        darks=self.darks.value(), flats=self.flats.value(),
                        flats_every=self.flats_every.value(), restore=self.restore.isChecked(),
                        exposure_s=self.exposure_s.value() or None, out=out,
                        overwrite=self.overwrite.isChecked())
        if not self.instrument.has_rotation_stage:
            raise PlanError("this bench has no rotation stage: tomosynthesis needs one "
                            "([rotation_stage] in the instrument config)")
        plan.validate(self.instrument.soft_limits("rotation"))
        return plan

    def choose_file(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Tomosynthesis scan file", self.path.text(),
                                              "HDF5 (*.h5 *.hdf5 *.nxs)")
        if path:
            self.path.setText(path)
            self.overwrite.setChecked(Path(path).exists())  # the dialog asked already

    # --- scan control --------------------------------------------------------------------------
    def run_scan(self) -> None:
        if self.scan is not None:
            self.say("a tomosynthesis scan is already running")
            return
        try:
            plan = self.plan()
        except PlanError as exc:
            self.say(f"scan refused: {exc}")
            return
        busy = self.instrument.busy
        if busy is not None:
            self.say(f"scan refused: instrument busy with {busy}")
            return
        self.result = None
        self._loaded_input = None
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        self.phase.setText("starting: " + plan_summary(plan))
        self.say("", error=False)

        def report(p) -> None:
            try:
                self.scan_progress.emit(p)
            except RuntimeError:    # panel already destroyed: the scan goes on regardless
                pass

        scan = TomoScan(self.instrument, plan, progress=report)
        try:
            # the engine checks the plan against the instrument (references, limits) first
            scan.start()
        except Exception as exc:  # noqa: BLE001 - a refusal: said here, nothing started
            self.phase.setText(f"scan refused: {describe_error(exc)}")
            self.say(f"scan refused: {describe_error(exc)}")
            return
        self.scan = scan
        self._set_running(True)
        self._last_report = time.monotonic()
        self._pause_timer.start()

        def wait():
            # an abort is an outcome the operator asked for, not a failure
            try:
                return scan.wait()
            except ScanAborted as exc:
                return exc

        def failed(exc) -> None:
            self._ended()
            self.phase.setText(f"scan failed: {describe_error(exc)}")
            self.message.setStyleSheet("color: #b00000")
            self.message.setText(f"tomosynthesis: {describe_error(exc)}")

        self.bridge.run(wait, self._finished, failed, what="tomosynthesis")

    def _seen(self, line: str) -> None:
        self._log_count += 1
        self._log_seen.append((self._log_count, line))

    def pause(self) -> None:
        if self.scan is None:
            return
        self.scan.pause()
        self.pause_btn.setEnabled(False)
        self.resume_btn.setEnabled(True)
        self._pause_mark = self._log_count
        self.phase.setText("pausing before the next frame (X-rays stay on)")

    def resume(self) -> None:
        if self.scan is None:
            return
        self.scan.resume()
        self.pause_btn.setEnabled(True)
        self.resume_btn.setEnabled(False)
        self._log_once("resumed", "tomosynthesis resumed", self._log_count)

    def _log_once(self, word: str, line: str, mark: int, delay_ms: int = 400) -> None:
        """Log ``line`` unless the engine logged ``word`` since ``mark`` (it does when it
        holds or goes on at a plan checkpoint): one line per event, whoever says it."""
        QTimer.singleShot(delay_ms, lambda: None if any(
            n > mark and word in text for n, text in self._log_seen) else
            self.bridge.log_line.emit(line))

    _pause_mark = 0
    _abort_mark: int | None = None

    def abort(self) -> None:
        if self.scan is None:
            return
        if self._abort_mark is None:
            self._abort_mark = self._log_count
        self.scan.abort()
        self.phase.setText("aborting at the next frame boundary")

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Abort a running scan and wait for it to close its file (window closing)."""
        scan = self.scan
        if scan is None:
            return
        scan.abort()
        with contextlib.suppress(Exception):   # the scan logs its own outcome
            scan.wait(timeout_s)

    def _set_running(self, running: bool) -> None:
        self.run_btn.setEnabled(not running and self.instrument.has_rotation_stage)
        self.load_btn.setEnabled(not running)
        self.pause_btn.setEnabled(running)
        self.resume_btn.setEnabled(False)
        self.abort_btn.setEnabled(running)

    def _ended(self) -> None:
        self.scan = None
        self._pause_timer.stop()
        self._set_running(False)

    def _check_paused(self) -> None:
        """The engine holds a paused scan at its next frame boundary; once reports have
        stopped coming the panel says it is paused."""
        scan = self.scan
        if scan is None or not scan.paused or self.phase.text().startswith("paused"):
            return
        if time.monotonic() - self._last_report > 0.3:
            self.phase.setText(f"paused at projection {scan._angles_done}/"
                               f"{self._n_angles} (X-rays stay on); Resume goes on")
            self.pause_btn.setEnabled(False)
            self.resume_btn.setEnabled(True)
            self._log_once("paused", "tomosynthesis paused", self._pause_mark, delay_ms=0)

    def _on_progress(self, p) -> None:
        self._last_report = time.monotonic()
        if p.n_angles:
            self._n_angles = p.n_angles
        self.progress.setValue(round(100 * p.fraction))
        text = PHASE_TEXT.get(p.phase, p.phase)
        parts = [f"{text}: projection {p.angle_index}/{p.n_angles}",
                 f"frames {p.frames_done}/{p.frames_total}"]
        if p.theta_deg is not None:
            parts.append(f"at {p.theta_deg:+.3f} deg")
        parts.append(f"elapsed {p.elapsed_s:.1f} s")
        if math.isfinite(p.time_left_s) and p.phase not in ("done", "aborted"):
            parts.append(f"~{p.time_left_s:.0f} s left")
        self.phase.setText(", ".join(parts))
        if p.phase == "paused":
            self.pause_btn.setEnabled(False)
            self.resume_btn.setEnabled(True)

    def _finished(self, outcome) -> None:
        self._ended()
        if isinstance(outcome, ScanAborted):
            res = outcome.result
            self.result = res
            # an outcome the operator asked for: said once, in the panel, not as an error
            self.progress.setFormat("aborted at %p%")
            self.phase.setText(f"aborted after {res.n_projections} projections; {res.path} "
                               "is kept and marked incomplete")
            self.message.setStyleSheet("color: #805000")
            self.message.setText("tomosynthesis aborted")
            mark = self._abort_mark if self._abort_mark is not None else self._log_count
            self._abort_mark = None
            # the engine logs how a plan ended; say it here only if nothing did
            QTimer.singleShot(300, lambda: None if any(
                n > mark and "aborted" in line for n, line in self._log_seen) else
                self.bridge.log_line.emit(str(outcome)))
            return
        self.result = outcome
        self.progress.setValue(100)
        self.phase.setText(f"finished: {outcome.n_projections} projections in "
                           f"{outcome.elapsed_s:.1f} s -> {outcome.path}")
        self.say(f"scan written to {outcome.path}; reconstructing", error=False)
        self.reconstruct(outcome.path)

    # --- reconstruction ------------------------------------------------------------------------
    def heights_mm(self) -> np.ndarray:
        a, b, n = self.height_start_um.value(), self.height_stop_um.value(), self.n_slices.value()
        if n > 1 and b <= a:
            raise ReconError(f"slice heights: the last height {b:g} um must be above the first "
                             f"{a:g} um")
        return np.linspace(a, b, n) / 1000.0 if n > 1 else np.array([a / 1000.0])

    def choose_scan_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Reconstruct a tomosynthesis scan file",
                                              self.path.text(), "HDF5 (*.h5 *.hdf5 *.nxs)")
        if path:
            self.load_scan_file(Path(path))

    def load_scan_file(self, path: Path) -> None:
        """Reconstruct a scan file already on disk."""
        path = Path(path)
        if not path.is_file():
            self.say(f"cannot reconstruct {path}: no such file")
            return
        self._loaded_input = path
        self.reconstruct(path)

    _loaded_input: Path | None = None     # a scan file opened with "Load", never written to

    def output_folder(self) -> Path:
        """Where the panel writes new files: the folder of its output file, else the working
        directory."""
        text = self.path.text().strip()
        folder = Path(text).expanduser().parent if text else Path.cwd()
        return folder if folder.is_dir() else Path.cwd()

    def reconstruct_again(self) -> None:
        path = self._loaded_input if self._loaded_input is not None else (
            self.result.path if self.result is not None else None)
        if path is None:
            self.say("nothing to reconstruct yet: run a scan or load a scan file")
            return
        self.reconstruct(path)

    def reconstruct(self, path: Path) -> None:
        """Reconstruct ``path`` with the chosen method and heights, off the GUI thread. The
        slices go under /entry/recon/<method> of the scan file this panel just wrote (as a
        plan's [recon] section does), or, for a file opened with "Load", of a copy
        ``<stem>_recon-<method>.h5`` in the panel's output folder (the recon command's rule:
        an input is never modified)."""
        if self._recon_running:
            self.say("a reconstruction is already running")
            return
        try:
            heights = self.heights_mm()
        except ReconError as exc:
            self.say(f"reconstruction refused: {exc}")
            return
        method = self.method.currentText()
        iterations = self.iterations.value()
        restored = self.use_restored.isChecked()
        device = self.instrument.restoration_device
        emit = self.recon_progress.emit
        into_copy = self._loaded_input is not None and Path(path) == self._loaded_input
        target = (derived_output(path, "recon", method + ("_restored" if restored else ""),
                                 self.output_folder()) if into_copy else Path(path))
        self.bridge.log_line.emit(f"reconstructing {path} ({method}, {heights.size} slices)"
                                  + (f" into {target}" if into_copy else ""))

        def work() -> ReconView:
            try:
                data = load_scan(path, restored=restored)
                rec = reconstruct(data.transmission, data.theta_deg, data.geometry, heights,
                                  method, iterations=iterations, device=device,
                                  progress=lambda d, n: emit(d / n))
            except ReconError as exc:
                raise UserError(f"{path}: {exc}") from None
            notes = [] if data.complete else [f"scan incomplete: {data.reason}"]
            name = method + ("_restored" if restored else "")
            try:
                if target != Path(path):
                    partial = target.with_name(target.name + ".partial")
                    shutil.copyfile(path, partial)
                    os.chmod(partial, 0o644)
                    save_reconstruction(partial, rec, name)
                    partial.replace(target)
                where = save_reconstruction(target, rec, name) if target == Path(path) else \
                    f"/entry/recon/{name}"
            except (UserError, OSError) as exc:
                where = None
                notes.append(f"slices not stored in a file: {exc}")
            return ReconView(path=target, slices=rec.slices, heights_mm=rec.heights_mm,
                             voxel_mm=rec.grid.voxel_mm, method=method, units=rec.units,
                             stored_at=where, note="; ".join(notes))

        def failed(exc) -> None:
            # the bridge puts it in the log and the window's banner; the panel says it too
            self._recon_running = False
            self.recon_btn.setEnabled(True)
            self._end_recon_status()
            self.recon_label.setText(f"reconstruction failed: {describe_error(exc)}")
            self.message.setStyleSheet("color: #b00000")
            self.message.setText(f"reconstruction: {describe_error(exc)}")

        self._recon_running = True
        self.recon_btn.setEnabled(False)
        self.recon_label.setText(f"reconstructing {Path(path).name} ({method}, "
                                 f"{heights.size} slices)...")
        self.bridge.run(work, self._recon_done, failed, what="reconstruction")

    def _end_recon_status(self) -> None:
        """A status line that announced the reconstruction ends with it."""
        if self.message.text().endswith("; reconstructing"):
            self.message.setText(self.message.text()[: -len("; reconstructing")])

    def _on_recon_progress(self, fraction: float) -> None:
        if self._recon_running:
            self.recon_label.setText(f"reconstructing: {100 * fraction:.0f} %")

    def _recon_done(self, view: ReconView) -> None:
        self._recon_running = False
        self.recon_btn.setEnabled(True)
        self._end_recon_status()
        self.recon = view
        s = view.slices
        finite = s[np.isfinite(s)]
        lo, hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0))
        self._levels = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
        self.slider.blockSignals(True)
        self.slider.setRange(0, s.shape[0] - 1)
        self.slider.setValue(s.shape[0] // 2)
        self.slider.blockSignals(False)
        self.slider.setEnabled(s.shape[0] > 1)
        self.show_slice(self.slider.value())
        self.viewer.getView().getViewBox().enableAutoRange()
        where = f" -> {view.path.name}:{view.stored_at}" if view.stored_at else ""
        text = (f"{view.method}: {s.shape[0]} slices of {s.shape[1]} x {s.shape[2]} voxels "
                f"({1000 * view.voxel_mm:.2f} um), {view.units}{where}")
        if view.note:
            text += f"\n{view.note}"
        self.recon_label.setText(text)
        QTimer.singleShot(0, self._reveal_viewer)
        self.bridge.log_line.emit(f"reconstruction {view.method}: {s.shape[0]} slices"
                                  + (f" -> {view.path}" if view.stored_at else "")
                                  + (f" ({view.note})" if view.note else ""))

    def _reveal_viewer(self) -> None:
        """Scroll the tab (when it scrolls) so that the new slices are in sight."""
        w = self.parentWidget()
        while w is not None and not isinstance(w, QScrollArea):
            w = w.parentWidget()
        if w is not None:
            w.ensureWidgetVisible(self.slice_label, 0, 0)
            w.ensureWidgetVisible(self.viewer, 0, 0)
            w.horizontalScrollBar().setValue(0)

    def show_slice(self, index: int) -> None:
        """Show slice ``index`` of the current reconstruction and its height."""
        view = self.recon
        if view is None:
            return
        k = int(np.clip(index, 0, view.slices.shape[0] - 1))
        vox_um = 1000.0 * view.voxel_mm
        self.viewer.setImage(view.slices[k], autoRange=False, autoLevels=False,
                             levels=self._levels, scale=(vox_um, vox_um))
        self.slice_index = k
        self.slice_label.setText(f"slice {k + 1} / {view.slices.shape[0]}: height "
                                 f"{1000.0 * view.heights_mm[k]:.1f} um above the sample base")

    slice_index = -1
    _levels = (0.0, 1.0)

    # --- state ---------------------------------------------------------------------------------
    def update_state(self, snap: dict) -> None:
        rot = snap.get("rotation_deg")
        if rot is not None:
            self.limits_label.setText(f"{self._limits_text()}; now at {rot:.3f} deg")
