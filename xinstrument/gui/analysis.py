"""Restoration panel (profile, method, steps, device, speed, before/after) and calibration panel
(MTF from an edge ROI drawn on the image: thin vs thick vs restored; NNPS from flat frames)."""
from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PyQt6.QtCore import QTimer
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
)

from ..scans.plans import NNPSMeasurement
from .bridge import describe_error
from .imageview import make_image_view
from .panels import Panel

DEVICES = ("auto", "cpu", "cuda")     # the box is editable: "cuda:1" etc. can be typed


def pixel_size_um(instrument) -> float:
    """Pixel pitch at the scintillator: the profile's, else the camera's."""
    prof = instrument.profile
    if prof is not None and getattr(prof, "pixel_size_um", None):
        return float(prof.pixel_size_um)
    return float(instrument.pixel_size_um)


COLOURS = {"thick (measured)": "c", "restored": "y", "thin (twin truth)": "m"}


class RestorationPanel(Panel):
    def __init__(self, bridge, image_panel, parent=None) -> None:
        super().__init__(bridge, parent)
        from ..profiles import list_profiles
        self.image_panel = image_panel
        self.profile = QComboBox()
        self.profile.addItems(list_profiles())
        cfg_profile = self.instrument.config.restoration.profile
        if cfg_profile and self.profile.findText(cfg_profile) >= 0:
            self.profile.setCurrentText(cfg_profile)
        self.load_btn = QPushButton("Load profile")
        self.load_btn.clicked.connect(self.load_profile)
        self.method = QComboBox()
        self.method.activated.connect(lambda _i: self.apply_method())
        self.steps = QSpinBox()
        self.steps.setRange(0, 1000)
        self.steps.setSpecialValueText("method default")
        self.steps.setToolTip("Sampler steps (diffusion methods) or iterations (Richardson-Lucy)")
        self.device = QComboBox()
        self.device.setEditable(True)
        self.device.addItems(DEVICES)
        self.device.setToolTip("auto: CUDA when present, else CPU; or cpu, cuda, cuda:N")
        self.apply_btn = QPushButton("Apply to live view and acquisition")
        self.apply_btn.clicked.connect(self.apply_method)
        self.fidelity = QCheckBox("fidelity guard (falls back to wiener)")
        self.fidelity.setToolTip("Check every restored frame of 'acquire' against its "
                                 "measurement; an inconsistent one is restored with wiener")
        self.fidelity.toggled.connect(self.set_fidelity)
        self.applied = QLabel("instrument: -")
        self.preview_btn = QPushButton("Restore last frame (before / after)")
        self.preview_btn.clicked.connect(self.preview)
        self.speed = QLabel("speed: -")
        self.live_speed = QLabel("live stream: -")
        self.quality = QLabel("")
        for lab in (self.speed, self.live_speed, self.quality):
            lab.setWordWrap(True)
        self.profile_info = QLabel("no profile loaded")
        self.profile_info.setWordWrap(True)
        self.before = make_image_view()
        self.after = make_image_view()
        self.before.getView().setTitle("before")
        self.after.getView().setTitle("after")
        for v in (self.before, self.after):
            # the images get the width (levels: the main view's histogram, where the result
            # is shown too)
            v.ui.histogram.hide()
            v.setMinimumHeight(260)
        self.after.getView().setXLink(self.before.getView())
        self.after.getView().setYLink(self.before.getView())
        self.last_result: np.ndarray | None = None

        form = QFormLayout()
        row = QHBoxLayout()
        row.addWidget(self.profile, 1)
        row.addWidget(self.load_btn)
        form.addRow("profile", row)
        form.addRow("", self.profile_info)
        form.addRow("method", self.method)
        form.addRow("steps", self.steps)
        form.addRow("device", self.device)
        form.addRow("", self.apply_btn)
        form.addRow("", self.applied)
        form.addRow("", self.fidelity)
        split = QSplitter()
        split.addWidget(self.before)
        split.addWidget(self.after)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.preview_btn)
        lay.addWidget(self.speed)
        lay.addWidget(self.live_speed)
        lay.addWidget(self.quality)
        lay.addWidget(split, 1)
        lay.addWidget(self.message)
        if self.instrument.profile is not None:
            self._loaded(self.instrument.profile)

    def settings_fields(self):
        return {"restore/profile": self.profile, "restore/steps": self.steps,
                "restore/device": self.device}

    def load_profile(self) -> None:
        name = self.profile.currentText()
        if not name:
            self.say("no detector profiles found")
            return
        self.run(lambda: self.instrument.load_profile(name), self._loaded, "load profile",
                 [self.load_btn])

    def _loaded(self, profile) -> None:
        from ..restoration import available_methods
        methods = available_methods(profile)
        self.method.clear()
        self.method.addItems(methods)
        current = self.instrument.restoration_method
        if current in methods:
            self.method.setCurrentText(current)
        self.profile_info.setText(
            f"{profile.name}: {getattr(profile, 'detector_id', '')}, pixel "
            f"{getattr(profile, 'pixel_size_um', float('nan')):g} um; methods "
            + ", ".join(methods))

    def settings(self) -> tuple[str, int | None, str | None]:
        """(method, steps, device) as the widgets give them; None = the method's / machine's
        default."""
        dev = self.device.currentText().strip()
        return (self.method.currentText(), self.steps.value() or None,
                None if dev in ("", "auto") else dev)

    def apply_method(self) -> None:
        """Hand method, steps and device to the instrument: acquire, the live stream (from its
        next start) and scans restore with them. A refusal (e.g. cuda on a machine without a
        GPU) is shown here and in the log; the instrument keeps its previous settings."""
        m, steps, dev = self.settings()
        if not m:
            self.say("load a profile first")
            return
        busy = self.instrument.busy

        def done(_=None) -> None:
            self._show_applied()
            note = {"live": "; the live view uses it from its next frame",
                    "series": "; the live view uses it from its next frame",
                    "recording": "; the running recording keeps its method"}.get(busy, "")
            self.say(f"restoration {self._describe(m, steps, dev)} (used by acquire, live view "
                     f"and scans){note}", error=False)

        def failed(exc) -> None:
            self._revert()
            self.message.setStyleSheet("color: #b00000")
            self.message.setText(f"restoration settings refused: {describe_error(exc)}")

        self.bridge.run(lambda: self.instrument.set_restoration(m, steps, dev), done, failed,
                        what="restoration settings")

    @staticmethod
    def _describe(method: str, steps: int | None, device: str | None) -> str:
        return (f"{method}, " + (f"{steps} steps" if steps else "default steps") + ", on "
                + (device or "auto device"))

    def _show_applied(self) -> None:
        inst = self.instrument
        self.applied.setText("instrument: " + self._describe(
            inst.restoration_method, inst.restoration_steps, inst.restoration_device))

    def _revert(self) -> None:
        """Widgets back to what the instrument uses."""
        inst = self.instrument
        if self.method.findText(inst.restoration_method) >= 0:
            self.method.setCurrentText(inst.restoration_method)
        self.steps.setValue(inst.restoration_steps or 0)
        self.device.setCurrentText(inst.restoration_device or "auto")
        self._show_applied()

    def set_fidelity(self, on: bool) -> None:
        def failed(exc) -> None:
            self.fidelity.blockSignals(True)
            self.fidelity.setChecked(not on)
            self.fidelity.blockSignals(False)
            self.message.setStyleSheet("color: #b00000")
            self.message.setText(f"fidelity guard: {describe_error(exc)}")

        self.bridge.run(lambda: self.instrument.set_fidelity_policy(on),
                        lambda _: self.say(f"fidelity guard {'on' if on else 'off'} (acquire "
                                           "with restoration)", error=False),
                        failed, what="fidelity guard")

    def preview(self) -> None:
        frame = self.image_panel.frame
        if frame is None:
            self.say("no frame yet: acquire a corrected frame first")
            return
        if self.instrument.profile is None:
            self.say("load a profile first")
            return
        if not self.method.currentText():
            self.say("no restoration method available with this profile")
            return
        data = np.asarray(frame.data, dtype=np.float32)
        corrected = getattr(frame, "corrected", self.image_panel.stream_corrected)
        if not corrected:
            self.say("restoration works on flat-field corrected frames: take darks and flats "
                     "and acquire with correction on")
            return
        twin = self.instrument.twin
        inst = self.instrument
        m, steps, dev = self.settings()

        def work():
            # the preview shows what acquire and the live view will do: same settings
            inst.set_restoration(m, steps, dev)
            r = inst.restorer()
            out = np.asarray(r.restore(data), dtype=np.float32)
            truth = None
            if twin is not None:
                try:
                    truth = twin.ground_truth()
                except Exception:  # noqa: BLE001 - the truth is a bonus on the simulated bench
                    truth = None
            return out, r, truth

        def done(res) -> None:
            out, r, truth = res
            self.last_result = out
            self.before.setImage(data)
            # a super-resolved result covers the same field as the frame
            self.after.setImage(out, scale=(data.shape[1] / out.shape[1],
                                            data.shape[0] / out.shape[0]))
            QTimer.singleShot(0, self._fit_views)
            self.speed.setText(f"{r.method} on {r.device}: latency {1e3 * r.latency_s:.1f} ms, "
                               f"{r.frames_per_second:.1f} frames/s")
            self.quality.setText(self._quality(data, out, truth))
            self._show_applied()
            # the result in the main view, beside its input, at full size
            self.image_panel.show_restoration(frame, out, m)
            self.bridge.log_line.emit(f"restored the last frame with {m} on {r.device}")

        self.run(work, done, "restore", [self.preview_btn])

    def _fit_views(self) -> None:
        for v in (self.before, self.after):
            if v.getImageItem().image is not None:
                v.autoRange()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        QTimer.singleShot(0, self._fit_views)

    @staticmethod
    def _quality(before, after, truth) -> str:
        if truth is None or truth.shape != before.shape:
            return ""
        from ..restoration import psnr, ssim
        dr = float(truth.max() - truth.min()) or 1.0
        return (f"against the twin's thin-screen truth: PSNR {psnr(before, truth, dr):.2f} -> "
                f"{psnr(after, truth, dr):.2f} dB, SSIM {ssim(before, truth, dr):.3f} -> "
                f"{ssim(after, truth, dr):.3f}")

    def update_state(self, snap: dict) -> None:
        if "restoration_method" in snap:
            self.applied.setText("instrument: " + self._describe(
                snap["restoration_method"], snap.get("restoration_steps"),
                snap.get("restoration_device")))
        fps = snap.get("restoration_fps")
        if fps is not None and math.isfinite(fps) and fps > 0:
            self.live_speed.setText(f"instrument restorer ({snap.get('restoration_method')}): "
                                    f"{fps:.1f} frames/s, latency "
                                    f"{1e3 * snap.get('restoration_latency_s', 0):.1f} ms")



class CalibrationPanel(Panel):
    def __init__(self, bridge, image_panel, parent=None) -> None:
        super().__init__(bridge, parent)
        self.image_panel = image_panel
        self.mtf_btn = QPushButton("MTF from edge ROI")
        self.mtf_btn.setToolTip("Draw the magenta edge ROI over a slanted edge on the image")
        self.mtf_btn.clicked.connect(self.measure_mtf)
        self.n_flats = QSpinBox()
        self.n_flats.setRange(2, 200)
        self.n_flats.setValue(4)
        self.nnps_btn = QPushButton("NNPS from flats")
        self.nnps_btn.clicked.connect(self.measure_nnps)
        self.mtf_plot = pg.PlotWidget()
        self.mtf_plot.addLegend()
        self.mtf_plot.setLabel("bottom", "spatial frequency", units="cy/mm")
        self.mtf_plot.setLabel("left", "MTF")
        self.nnps_plot = pg.PlotWidget()
        self.nnps_plot.setLogMode(False, True)
        self.nnps_plot.setLabel("bottom", "spatial frequency", units="cy/mm")
        self.nnps_plot.setLabel("left", "NNPS (mm^2)")
        self.mtf_text = QLabel("")
        self.mtf_text.setWordWrap(True)
        self.nnps_text = QLabel("")
        self.mtf_results: dict = {}
        self.nnps_result = None
        row = QHBoxLayout()
        row.addWidget(self.mtf_btn)
        row.addWidget(QLabel("flats"))
        row.addWidget(self.n_flats)
        row.addWidget(self.nnps_btn)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addWidget(self.mtf_plot, 1)
        lay.addWidget(self.mtf_text)
        lay.addWidget(self.nnps_plot, 1)
        lay.addWidget(self.nnps_text)
        lay.addWidget(self.message)

    def settings_fields(self):
        return {"calib/n_flats": self.n_flats}

    def measure_mtf(self) -> None:
        from ..calibration.mtf import slanted_edge_mtf
        panel = self.image_panel
        if panel.frame is None:
            self.say("no frame yet: acquire an image of a slanted edge first")
            return
        panel.edge_box.setChecked(True)
        rois = {"thick (measured)": panel.edge_region("frame")}
        if panel.image("restored") is not None:
            rois["restored"] = panel.edge_region("restored")
        if any(r is None or min(r.shape) < 16 for r in rois.values()):
            self.say("edge ROI too small: make it at least 16 x 16 px over the edge")
            return
        px = pixel_size_um(self.instrument)
        twin = self.instrument.twin
        rs, cs = panel.roi_region(panel.edge_roi, panel.image("frame"))
        # a super-resolved restoration has smaller pixels than the frame
        pixel_scale = {name: panel.scale_of(panel.image("restored"))[0]
                       for name in rois if name == "restored"}
        corrected = getattr(panel.frame, "corrected", panel.stream_corrected)

        def work():
            images = dict(rois)
            if twin is not None and corrected:
                truth = twin.ground_truth()
                if truth.shape == panel.image("frame").shape:
                    images["thin (twin truth)"] = truth[rs, cs]
            out, errors = {}, []
            for name, img in images.items():
                try:
                    out[name] = slanted_edge_mtf(np.asarray(img, dtype=np.float64),
                                                 px * pixel_scale.get(name, 1.0))
                except ValueError as exc:
                    errors.append(f"{name}: {exc}")
            if not out:
                raise ValueError("; ".join(errors))
            return out, errors

        self.run(work, self._mtf_done, "MTF", [self.mtf_btn])

    def _mtf_done(self, res) -> None:
        out, errors = res
        self.mtf_results = out
        self.mtf_plot.clear()
        lines = []
        for name, r in out.items():
            upto = np.asarray(r.frequency_cy_per_px) <= 0.5      # up to the sampling Nyquist
            self.mtf_plot.plot(r.frequency_cy_per_mm[upto], r.mtf[upto], pen=pg.mkPen(COLOURS[name],
                                                                           width=2), name=name)
            m50 = f"{r.mtf50_cy_per_mm:.1f}" if r.mtf50_cy_per_mm is not None else "n/a"
            lines.append(f"{name}: MTF50 {m50} cy/mm (edge {r.edge_angle_deg:.1f} deg)")
            lines.extend(f"  warning: {w}" for w in r.warnings)
        lines.extend(f"not measured: {e}" for e in errors)
        if out:
            lines.append(f"method: {next(iter(out.values())).standard} slanted edge")
        self.mtf_text.setText("\n".join(lines))

    def measure_nnps(self) -> None:
        inst = self.instrument
        if inst.dark is None:
            self.say("NNPS needs a dark reference: take darks first")
            return
        # One plan through the engine: it holds the operation lock, moves the sample out and
        # back, and records the flats with the NNPS curve.
        plan = NNPSMeasurement(n_frames=self.n_flats.value(), sample_out=inst.can_move_sample)
        self.run(lambda: inst.run(plan), self._nnps_done, "NNPS", [self.nnps_btn])

    def _nnps_done(self, r) -> None:
        self.nnps_result = r
        self.nnps_plot.clear()
        f, v = np.asarray(r.frequency_cy_per_mm), np.asarray(r.nnps_mm2)
        ok = v > 0
        self.nnps_plot.plot(f[ok], v[ok], pen=pg.mkPen("c", width=2))
        self.nnps_text.setText(f"NNPS from {r.n_rois} ROIs of {r.roi_size_px} px, mean signal "
                               f"{r.mean_signal:.1f} ADU")
