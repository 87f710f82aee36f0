"""Screenshots of the operator console on the simulated bench, for the documentation.

    python -m xinstrument.gui.screenshots docs/screenshots [--sensor-px 256]

Drives the window through its panels as an operator would (warm-up, X-rays on, references,
a focus scan, restoration, an MTF on the slanted edge, a tomosynthesis scan of the layered
board and its reconstruction) and saves one PNG per state.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SHOTS = ("console-live.png", "console-focus-scan.png", "console-restoration.png",
         "console-calibration.png", "console-tomosynthesis.png")


def _wait(app, cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        app.processEvents()
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"screenshots: {what} did not finish in {timeout_s} s")
        time.sleep(0.01)
    app.processEvents()


def _settle(app, seconds: float = 0.4) -> None:
    end = time.monotonic() + seconds
    _wait(app, lambda: time.monotonic() > end, seconds + 1, "settle")


def _save_small_png(image, path: Path) -> None:
    """Save a window grab as a 256-colour PNG (median-cut palette, no dithering) when Pillow is
    present, else as a full-colour PNG."""
    from PyQt6.QtGui import QImage
    try:
        from PIL import Image
    except ImportError:
        image.save(str(path), "PNG")
        return
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    w, h, stride = rgb.width(), rgb.height(), rgb.bytesPerLine()
    raw = bytes(rgb.constBits().asarray(stride * h))
    pil = Image.frombuffer("RGB", (w, h), raw, "raw", "RGB", stride, 1)
    pil.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True)


WINDOW_SIZE = (1400, 900)     # a common laptop / control-room screen; every tab must fit it


def layout_problems(window) -> list[str]:
    """What an operator would see clipped on the shown window, tab by tab: a sideways scroll
    bar, a button or field narrower than its text, a control reaching past the dock's edge."""
    from PyQt6.QtWidgets import (
        QAbstractButton,
        QAbstractSpinBox,
        QApplication,
        QComboBox,
        QLineEdit,
        QProgressBar,
    )
    app = QApplication.instance()
    problems: list[str] = []
    need = window.minimumSizeHint().width()
    if need > WINDOW_SIZE[0]:
        problems.append(f"window: needs {need} px, wider than a {WINDOW_SIZE[0]} px screen")
    tabs = window.tabs
    current = tabs.currentIndex()
    for i in range(tabs.count()):
        tabs.setCurrentIndex(i)
        app.processEvents()
        page, name = tabs.widget(i), tabs.tabText(i)
        if window.width() > WINDOW_SIZE[0] or window.minimumSizeHint().width() > WINDOW_SIZE[0]:
            grown = max(window.width(), window.minimumSizeHint().width())
            problems.append(f"{name}: the window grows to {grown} px, wider than a "
                            f"{WINDOW_SIZE[0]} px screen")
        bar = page.horizontalScrollBar()
        if bar.isVisible() and bar.maximum() > 0:
            problems.append(f"{name}: sideways scroll bar ({bar.maximum()} px hidden)")
        viewport = page.viewport()
        for w in page.widget().findChildren((QAbstractButton, QAbstractSpinBox, QComboBox,
                                             QLineEdit, QProgressBar)):
            if not w.isVisibleTo(page):
                continue
            label = getattr(w, "text", lambda: "")() if isinstance(w, QAbstractButton) else ""
            short = label if len(label) <= 30 else label[:27] + "..."
            what = f"{name}: {type(w).__name__}" + (f" {short!r}" if short else "")
            if isinstance(w, QAbstractButton) and label and \
                    w.width() < w.fontMetrics().horizontalAdvance(label) + 8:
                problems.append(f"{what} clipped ({w.width()} px for its text)")
            right = w.mapTo(viewport, w.rect().topRight()).x()
            if right > viewport.width() + 1:
                problems.append(f"{what} reaches {right - viewport.width()} px past the dock")
        tab_rect = tabs.tabBar().tabRect(tabs.count() - 1)
        if tab_rect.right() > tabs.tabBar().width() + 1:
            problems.append("tab bar: the last tab is out of sight")
    tabs.setCurrentIndex(current)
    app.processEvents()
    return sorted(set(problems))


def capture(out_dir: Path, sensor_px: int = 256, settings_path: Path | None = None,
            check_layout: bool = True) -> list[Path]:
    """Run the console through a few states and save a screenshot of each; return the paths.

    With ``check_layout`` every tab is checked for clipped controls after the window shows
    (raises RuntimeError naming them)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PyQt6.QtCore import QSettings
    from PyQt6.QtWidgets import QApplication

    from ..config import InstrumentConfig
    from ..instrument import Instrument
    from .mainwindow import MainWindow

    out_dir.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    cfg = InstrumentConfig.simulated(sensor_px=sensor_px, sample="pcb", seed=3)
    cfg.simulation.warmup_duration_s = 0.3
    cfg.camera.exposure_s = 0.05
    inst = Instrument(cfg).connect()
    ini = settings_path or out_dir / ".screenshot-settings.ini"
    settings = QSettings(str(ini), QSettings.Format.IniFormat)
    saved: list[Path] = []
    w = None
    try:
        w = MainWindow(inst, settings, poll_ms=200)
        w.resize(*WINDOW_SIZE)
        w.show()
        emu = inst.tube_emulator
        _settle(app)
        if check_layout:
            problems = layout_problems(w)
            if problems:
                raise RuntimeError("console layout at {}x{}: {}".format(
                    *WINDOW_SIZE, "; ".join(problems)))

        def shot(name: str) -> None:
            _settle(app)
            if check_layout and (w.width() > WINDOW_SIZE[0] or w.height() > WINDOW_SIZE[1]):
                from PyQt6.QtWidgets import QWidget
                page = w.tabs.currentWidget().widget()
                limit = w.tabs.width() - 40
                wide = [c for c in page.findChildren(QWidget) if c.isVisible()
                        and max(c.minimumSizeHint().width(), c.minimumWidth()) > limit]
                # the innermost of the widgets too wide for the dock: the one to fix
                widest = min(wide, key=lambda c: len(c.findChildren(QWidget))) if wide \
                    else page
                raise RuntimeError(f"{name}: the window grew to {w.width()} x {w.height()} px "
                                   f"(screen {WINDOW_SIZE[0]} x {WINDOW_SIZE[1]}); widest: "
                                   f"{type(widest).__name__} "
                                   f"{getattr(widest, 'text', lambda: '')()!r:.60} "
                                   f"{widest.minimumSizeHint().width()} / "
                                   f"{widest.minimumWidth()} px, in "
                                   f"{type(widest.parentWidget()).__name__}")
            path = out_dir / name
            _save_small_png(w.grab().toImage(), path)
            saved.append(path)

        w.source.warm_btn.click()
        _wait(app, lambda: emu.state.name == "STANDBY" and w.source.warm_btn.isEnabled(), 20,
              "warm-up")
        w.source.kv.setValue(50)
        w.source.ua.setValue(80)
        w.source.apply_btn.click()
        _wait(app, w.source.apply_btn.isEnabled, 10, "setpoints")
        w.source.on_btn.click()
        _wait(app, lambda: emu.xray_on and w.source.on_btn.isEnabled(), 10, "X-rays on")
        a = w.acquisition
        a.n_refs.setValue(5)
        a.darks_btn.click()
        _wait(app, lambda: inst.dark is not None and a.darks_btn.isEnabled(), 60, "darks")
        a.flats_btn.click()
        _wait(app, lambda: inst.corrector is not None and a.flats_btn.isEnabled(), 60, "flats")
        a.n_average.setValue(4)
        a.acquire_btn.click()
        _wait(app, lambda: w.image.frames_shown >= 1 and a.acquire_btn.isEnabled(), 60,
              "acquire")
        w.tabs.setCurrentIndex(0)
        shot(SHOTS[0])

        fp = w.focus
        # coarse 10 um steps over the twin's focal region, then 2 um steps around the optimum
        fp.start.setValue(20)
        fp.stop.setValue(100)
        fp.coarse.setValue(10)
        fp.step.setValue(2)
        fp.frames.setValue(2)
        w.tabs.setCurrentIndex(3)
        fp.run_btn.click()
        _wait(app, lambda: fp.curve is not None, 180, "focus scan")
        fp.best_btn.click()
        _wait(app, fp.best_btn.isEnabled, 20, "move to best")
        shot(SHOTS[1])

        r = w.restoration
        r.load_btn.click()
        _wait(app, lambda: r.method.count() > 0 and r.load_btn.isEnabled(), 60, "profile")
        a.restore.setChecked(True)
        a.n_average.setValue(16)          # restoration wants dose: a 16-frame average
        w.image.mode.setCurrentText("frame | restored")
        a.acquire_btn.click()
        _wait(app, lambda: w.image.frame is not None and w.image.frame.restored is not None
              and a.acquire_btn.isEnabled(), 120, "restored frame")
        r.preview_btn.click()
        _wait(app, lambda: r.last_result is not None and r.preview_btn.isEnabled(), 120,
              "restoration preview")
        w.tabs.setCurrentIndex(4)
        shot(SHOTS[2])

        a.restore.setChecked(False)
        w.image.mode.setCurrentText("frame")
        c = w.calibration
        c.nnps_btn.click()
        _wait(app, lambda: c.nnps_result is not None and c.nnps_btn.isEnabled(), 120, "NNPS")
        a.sample.setCurrentText("edge")
        _settle(app, 0.5)
        n = w.image.frames_shown
        a.acquire_btn.click()
        _wait(app, lambda: w.image.frames_shown > n and a.acquire_btn.isEnabled(), 60,
              "edge frame")
        w.image.views["frame"].setLevels(0.0, 1.1)
        c.mtf_btn.click()
        _wait(app, lambda: bool(c.mtf_results) and c.mtf_btn.isEnabled(), 60, "MTF")
        w.tabs.setCurrentIndex(5)
        shot(SHOTS[3])

        # tomosynthesis of the layered board; the scan file is not part of the documentation
        t = w.tomo
        a.sample.setCurrentText("pcb-layers")
        w.image.mode.setCurrentText("frame")
        with tempfile.TemporaryDirectory() as scratch:
            t.path.setText(str(Path(scratch) / "tomo.h5"))
            t.arc_deg.setValue(30)
            t.n_angles.setValue(11)
            t.frames_per_angle.setValue(2)
            t.darks.setValue(1)
            t.flats.setValue(1)
            t.method.setCurrentText("sirt")
            t.iterations.setValue(10)
            t.height_start_um.setValue(0)
            t.height_stop_um.setValue(1600)
            t.n_slices.setValue(16)
            w.tabs.setCurrentIndex(w.tabs.count() - 1)
            t.run_btn.click()
            _wait(app, lambda: t.recon is not None and t.recon_btn.isEnabled(), 300,
                  "tomosynthesis scan and reconstruction")
            t.slider.setValue(t.slider.maximum() // 3)
            shot(SHOTS[4])
        w.close()
    finally:
        if w is not None and w.isVisible():
            w.close()          # also on a failure: views released, X-rays off
        inst.disconnect()
        if settings_path is None:
            ini.unlink(missing_ok=True)
    return saved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--sensor-px", type=int, default=256)
    a = p.parse_args(argv)
    for path in capture(a.out_dir, a.sensor_px):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
