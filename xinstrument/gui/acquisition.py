"""Acquisition panel (exposure, averaging, references, live view, HDF5 recording) and focus scan
panel (range, step, metric, live sharpness curve with the fitted peak, move to best focus)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
)

from .panels import Panel
from .widgets import LimitedSpinBox

SIM_SAMPLES = ("pcb", "pcb-layers", "chart", "edge", "bars", "open")


class AcquisitionPanel(Panel):
    def __init__(self, bridge, image_panel=None, parent=None) -> None:
        super().__init__(bridge, parent)
        inst = self.instrument
        self.image_panel = image_panel
        self.exposure = LimitedSpinBox("exposure", "s", 0.001, 60.0, 3, "camera range")
        self.exposure.setValue(float(inst.exposure_s))
        self.exposure.refused.connect(self.say)
        self.exposure.valueChanged.connect(self.set_exposure)
        self.n_average = QSpinBox()
        self.n_average.setRange(1, 1000)
        self.correct = QCheckBox("flat/dark correction")
        self.correct.setChecked(True)
        self.restore = QCheckBox("restoration")
        self.n_refs = QSpinBox()
        self.n_refs.setRange(1, 500)
        self.n_refs.setValue(10)
        self.darks_btn = QPushButton("Take darks")
        self.flats_btn = QPushButton("Take flats")
        self.darks_btn.clicked.connect(self.take_darks)
        self.flats_btn.clicked.connect(self.take_flats)
        self.refs_label = QLabel("references: none")
        self.acquire_btn = QPushButton("Acquire one")
        self.acquire_btn.clicked.connect(self.acquire)
        self.live_btn = QPushButton("Live")
        self.live_btn.setCheckable(True)
        self.live_btn.toggled.connect(self.toggle_live)
        self.path = QLineEdit()
        self.path.setPlaceholderText("file.h5")
        self.browse = QToolButton()
        self.browse.setText("...")
        self.browse.clicked.connect(self.choose_file)
        self.overwrite = QCheckBox("overwrite")
        self.n_record = QSpinBox()
        self.n_record.setRange(1, 100000)
        self.n_record.setValue(10)
        self.record_btn = QPushButton("Record")
        self.record_btn.clicked.connect(self.record)
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.clicked.connect(self.stop)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress_label = QLabel("")
        self.sample = None
        self.last_recording: Path | None = None

        form = QFormLayout()
        form.addRow("exposure", self.exposure)
        form.addRow("frames to average", self.n_average)
        form.addRow(self.correct, self.restore)
        if inst.twin is not None:
            self.sample = QComboBox()
            self.sample.addItems(SIM_SAMPLES)
            self.sample.setCurrentText(inst.config.simulation.sample)
            self.sample.currentTextChanged.connect(self.set_sample)
            form.addRow("sample (simulated)", self.sample)
        refs = QGridLayout()
        refs.addWidget(QLabel("frames"), 0, 0)
        refs.addWidget(self.n_refs, 0, 1)
        refs.addWidget(self.darks_btn, 1, 0)
        refs.addWidget(self.flats_btn, 1, 1)
        form.addRow("references", refs)
        form.addRow("", self.refs_label)
        row = QHBoxLayout()
        row.addWidget(self.acquire_btn)
        row.addWidget(self.live_btn)
        form.addRow(row)
        prow = QHBoxLayout()
        prow.addWidget(self.path, 1)
        prow.addWidget(self.browse)
        form.addRow("HDF5 file", prow)
        rrow = QHBoxLayout()
        rrow.addWidget(self.n_record)
        rrow.addWidget(self.overwrite)
        form.addRow("frames to record", rrow)
        brow = QHBoxLayout()
        brow.addWidget(self.record_btn)
        brow.addWidget(self.stop_btn)
        form.addRow(brow)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.progress)
        lay.addWidget(self.progress_label)
        lay.addWidget(self.message)
        lay.addStretch(1)
        self._recording_n = 0
        bridge.frame.connect(self._frame)
        bridge.progress.connect(self._progress)

    def settings_fields(self):
        out = {"acq/exposure_s": self.exposure, "acq/n_average": self.n_average,
               "acq/correct": self.correct, "acq/restore": self.restore,
               "acq/n_refs": self.n_refs, "acq/path": self.path, "acq/n_record": self.n_record}
        return out

    # --- actions -------------------------------------------------------------------------------
    def set_exposure(self, value: float) -> None:
        self.run(lambda: self.instrument.set_exposure_s(value), None, "exposure")

    def set_sample(self, name: str) -> None:
        self.run(lambda: self.instrument.set_sample(name), None, "sample")

    def take_darks(self) -> None:
        n = self.n_refs.value()
        self.run(lambda: self.instrument.take_darks(n), lambda _: self._refs(),
                 "darks", [self.darks_btn, self.flats_btn])

    def take_flats(self) -> None:
        n = self.n_refs.value()
        self.run(lambda: self.instrument.take_flats(n), lambda _: self._refs(),
                 "flats", [self.darks_btn, self.flats_btn])

    def _refs(self) -> None:
        have = [k for k, v in (("dark", self.instrument.dark), ("flat", self.instrument.flat))
                if v is not None]
        self.refs_label.setText("references: " + (", ".join(have) or "none")
                                + (" (correction ready)" if len(have) == 2 else ""))

    def acquire(self) -> None:
        n, c, r = self.n_average.value(), self.correct.isChecked(), self.restore.isChecked()

        self.run(lambda: self.instrument.acquire(n, correct=c, restore=r), None, "acquire",
                 [self.acquire_btn])

    def _stream_args(self) -> dict:
        if self.image_panel is not None:
            self.image_panel.stream_corrected = self.correct.isChecked()
        return {"n_average": self.n_average.value(), "correct": self.correct.isChecked(),
                "restore": self.restore.isChecked()}

    def toggle_live(self, on: bool) -> None:
        if on:
            args = self._stream_args()

            def failed_back(_=None):
                self.live_btn.blockSignals(True)
                self.live_btn.setChecked(False)
                self.live_btn.blockSignals(False)

            task = self.bridge.run(lambda: self.instrument.start_stream(**args), None,
                                   failed_back, what="live view")
            task.signals.failed.connect(lambda exc: self.say(f"live view: {exc}"))
        else:
            self.bridge.run(self.instrument.stop_stream, what="stop live view")

    def choose_file(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Record to HDF5", self.path.text(),
                                              "HDF5 (*.h5 *.hdf5 *.nxs)")
        if path:
            self.path.setText(path)
            self.overwrite.setChecked(Path(path).exists())  # the dialog asked already

    def record(self) -> None:
        text = self.path.text().strip()
        if not text:
            self.say("recording refused: choose an HDF5 file first")
            return
        path = Path(text)
        if path.exists() and not self.overwrite.isChecked():
            self.say(f"recording refused: {path} exists (tick overwrite to replace it)")
            return
        if not path.parent.is_dir():
            self.say(f"recording refused: folder {path.parent} does not exist")
            return
        n = self.n_record.value()
        args = self._stream_args()
        self._recording_n = n
        self.progress.setValue(0)
        self.progress_label.setText(f"recording {n} frames to {path.name}")

        def done(stats) -> None:
            self._recording_n = 0
            self.last_recording = path
            self.progress.setValue(100)
            dropped = getattr(stats, "camera_dropped", 0)
            self.progress_label.setText(f"recorded {path.name} ({n} frames, {dropped} camera "
                                        "frames dropped)")
            self.bridge.log_line.emit(f"recorded {n} frames to {path}")

        overwrite = self.overwrite.isChecked()

        def work():
            return self.instrument.record(path, n, overwrite=overwrite, **args)

        self.run(work, done, "record", [self.record_btn, self.acquire_btn])

    def stop(self) -> None:
        self.bridge.run(self.instrument.stop_stream, what="stop")
        if self.live_btn.isChecked():
            self.live_btn.blockSignals(True)
            self.live_btn.setChecked(False)
            self.live_btn.blockSignals(False)

    def _frame(self, frame) -> None:
        if self._recording_n and hasattr(frame, "index"):
            self.progress.setValue(int(100 * (frame.index + 1) / self._recording_n))

    def _progress(self, what: str, fraction: float) -> None:
        if what in ("darks", "flats", "acquire"):
            self.progress.setValue(int(100 * fraction))

    def update_state(self, snap: dict) -> None:
        self._refs()
        busy = snap.get("busy")
        if self.live_btn.isChecked() and busy is None and not self.bridge.pending:
            self.live_btn.blockSignals(True)
            self.live_btn.setChecked(False)
            self.live_btn.blockSignals(False)
        st = snap.get("stream")
        if st:
            stages = st.get("stages", {})
            dropped = sum(v.get("dropped", 0) for v in stages.values())
            fps = stages.get("average", {}).get("fps", 0.0)
            self.progress_label.setToolTip(f"stream {fps:.1f} frames/s, camera dropped "
                                           f"{st.get('camera_dropped', 0)}, sinks dropped "
                                           f"{dropped}")


# -------------------------------------------------------------------------------- focus scan
class FocusPanel(Panel):
    def __init__(self, bridge, parent=None) -> None:
        super().__init__(bridge, parent)
        from ..acquisition.focus import DEFAULT_METRIC, METRICS
        lo, hi = self.instrument.soft_limits("focus")
        self.start = LimitedSpinBox("scan start", "um", lo, hi, 1, "travel limit")
        self.stop = LimitedSpinBox("scan stop", "um", lo, hi, 1, "travel limit")
        self.start.setValue(lo)
        self.stop.setValue(hi)
        self.step = LimitedSpinBox("step", "um", 0.1, hi - lo, 2, "travel")
        self.step.setValue(1.0)
        self.coarse = LimitedSpinBox("coarse step", "um", 0.0, hi - lo, 1, "travel")
        self.coarse.setSpecialValueText("off")
        self.coarse.setToolTip("0 = off; otherwise a coarse pass over the range first, then a "
                               "fine pass in 'step' steps around its optimum")
        for b in (self.start, self.stop, self.step, self.coarse):
            b.refused.connect(self.say)
        self.frames = QSpinBox()
        self.frames.setRange(1, 100)
        self.frames.setValue(2)
        self.metric = QComboBox()
        self.metric.addItems(list(METRICS))
        self.metric.setCurrentText(DEFAULT_METRIC)  # the CLI's default, chosen on the twin
        self.run_btn = QPushButton("Run focus scan")
        self.run_btn.clicked.connect(self.run_scan)
        self.abort_btn = QPushButton("Abort")
        self.abort_btn.clicked.connect(self.instrument.abort)
        self.best_btn = QPushButton("Move to best")
        self.best_btn.setEnabled(False)
        self.best_btn.clicked.connect(self.move_to_best)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.result = QLabel("")
        self.plot = pg.PlotWidget()
        self.plot.setLabel("bottom", "focus position", units="um")
        self.plot.setLabel("left", "sharpness")
        self.points = self.plot.plot([], [], pen=None, symbol="o", symbolSize=6,
                                     symbolBrush="c")
        self.fit_curve = self.plot.plot([], [], pen=pg.mkPen("y", width=2))
        self.best_line = pg.InfiniteLine(angle=90, pen=pg.mkPen("r", width=2))
        self.best_line.setVisible(False)
        self.plot.addItem(self.best_line)
        self.curve = None
        self._xs: list[float] = []
        self._ys: list[float] = []

        form = QFormLayout()
        form.addRow("start", self.start)
        form.addRow("stop", self.stop)
        form.addRow("step", self.step)
        form.addRow("coarse step", self.coarse)
        form.addRow("frames per step", self.frames)
        form.addRow("metric", self.metric)
        row = QHBoxLayout()
        for b in (self.run_btn, self.abort_btn, self.best_btn):
            row.addWidget(b)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(row)
        lay.addWidget(self.progress)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.result)
        lay.addWidget(self.message)
        bridge.focus.connect(self._point)
        bridge.progress.connect(self._progress)

    def settings_fields(self):
        return {"focus/start": self.start, "focus/stop": self.stop, "focus/step": self.step,
                "focus/coarse": self.coarse, "focus/frames": self.frames,
                "focus/metric": self.metric}

    def run_scan(self) -> None:
        a, b, step = self.start.value(), self.stop.value(), self.step.value()
        coarse = self.coarse.value() or None
        if b <= a:
            self.say(f"focus scan refused: stop {b:g} um must be above start {a:g} um")
            return
        if coarse is None and (b - a) / step > 2000:
            self.say(f"focus scan refused: {int((b - a) / step)} steps; use a coarse step or a "
                     "narrower range")
            return
        self._xs, self._ys = [], []
        self.points.setData([], [])
        self.fit_curve.setData([], [])
        self.best_line.setVisible(False)
        self.best_btn.setEnabled(False)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        self._t0 = time.monotonic()
        self.say("", error=False)
        kw = {"start_um": a, "stop_um": b, "step_um": step,
              "frames_per_step": self.frames.value(), "metric": self.metric.currentText(),
              "coarse_step_um": coarse, "move_to_best": False}
        self.run(lambda: self.instrument.focus_scan(**kw), self._finished, "focus scan",
                 [self.run_btn])

    def aborted(self, what: str) -> None:
        self.progress.setValue(0)
        self.result.setText(f"focus scan aborted after {len(self._xs)} positions; the stage "
                            "went back to where it started")

    def _point(self, payload) -> None:
        pos, value = payload
        self._xs.append(float(pos))
        self._ys.append(float(value))
        self.points.setData(self._xs, self._ys)

    def _progress(self, what: str, fraction: float) -> None:
        if what == "focus":
            self.progress.setValue(round(100 * fraction))
            elapsed = time.monotonic() - getattr(self, "_t0", time.monotonic())
            if 0 < fraction < 1:   # one count over the coarse and fine passes
                self.progress.setFormat(f"%p%  ~{elapsed * (1 - fraction) / fraction:.0f} s left")

    def _finished(self, curve) -> None:
        self.curve = curve
        self.progress.setValue(100)
        self.progress.setFormat("%p%")
        x = np.asarray(curve.positions_um, dtype=float)
        y = np.asarray(curve.metric_values, dtype=float)
        self.points.setData(x, y)
        p = curve.fit_params
        if p.get("model") == "gaussian":
            z = np.linspace(p["window_lo_um"], p["window_hi_um"], 200)
            self.fit_curve.setData(z, p["baseline"] + p["amplitude"] * np.exp(
                -0.5 * ((z - p["centre_um"]) / p["sigma_um"]) ** 2))
        elif p.get("model") == "parabola":
            z = np.linspace(p["window_lo_um"], p["window_hi_um"], 200)
            self.fit_curve.setData(z, p["peak_value"] + p["curvature"] * (z - p["centre_um"]) ** 2)
        self.best_line.setPos(curve.best_position_um)
        self.best_line.setVisible(True)
        self.best_btn.setEnabled(True)
        warnings = "".join(f"\nwarning: {w}" for w in getattr(curve, "warnings", []))
        self.result.setText(f"best focus {curve.best_position_um:.2f} um ({curve.metric}, "
                            f"{p.get('model', '?')} fit){warnings}")

    def move_to_best(self) -> None:
        if self.curve is None:
            return
        best = float(self.curve.best_position_um)
        self.run(lambda: self.instrument.move_focus_um(best),
                 lambda _: self.say(f"moved to best focus {best:.2f} um", error=False),
                 "move to best", [self.best_btn])
