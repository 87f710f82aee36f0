"""Plans as data: what to measure, run by the engine (``Instrument.run(plan)``).

Each plan is a small dataclass; ``check(instrument)`` refuses what cannot run before anything
moves, ``run(ctx)`` does the work through the :class:`~.engine.RunContext` (pipeline, sink,
checkpoints). ``out`` names the scan file (None: nothing recorded). Tomosynthesis is
:class:`xinstrument.scans.tomo.TomoPlan`.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..acquisition.focus import FocusScanAborted, coarse_fine_focus, focus_scan
from ..acquisition.frame import Frame
from ..calibration.mtf import slanted_edge_mtf
from ..calibration.nnps import nnps
from ..restoration.fidelity import hdf5_extras_layout
from .engine import PlanError, RunContext, _Abort

if TYPE_CHECKING:
    from ..instrument import Instrument

__all__ = ["FocusScan", "MTFMeasurement", "NNPSMeasurement", "References", "Series",
           "SingleReference", "Snap", "acquisition_layout"]


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise PlanError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_corrected(inst: "Instrument", correct: bool, restore: bool,
                     n_average: int = 1) -> None:
    if restore and not correct:
        raise PlanError("restoration works on flat-field corrected frames: correct=True")
    if correct and inst.references is None:
        raise PlanError("no dark/flat references: run a References plan (or take darks and "
                        "flats) first, or acquire with correct=False")
    if restore:
        inst.check_restoration(n_average=n_average)


def acquisition_layout(inst: "Instrument", *, correct: bool, restore: bool, n_average: int,
                       pixel_size_um: float | None = None,
                       method: str | None = None) -> dict[str, Any]:
    """The recording sink's layout for frames acquired with these settings."""
    raw_single = n_average == 1 and not correct
    lay: dict[str, Any] = {"raw_dtype": inst.camera_dtype if raw_single else "float32",
                           "corrected": bool(correct)}
    meta: dict[str, Any] = {"n_average": int(n_average)}
    px = pixel_size_um if pixel_size_um is not None else inst.pixel_size_um
    if px is not None:
        meta["pixel_size_um"] = float(px)
    if restore:
        r = inst.stream_restorer(follow=False, method=method)
        lay["restored_scale"] = int(r.scale)
        if r.output_pixel_size_um is not None:
            lay["restored_pixel_size_um"] = float(r.output_pixel_size_um)
        guard = inst.fidelity_guard
        if guard is not None:
            lay["fidelity_layout"] = hdf5_extras_layout(
                guard.tile_grid(tuple(inst.camera.frame_shape)))
        meta.update(profile=r.profile, restoration_method=r.method,
                    restoration_scale=int(r.scale))
    lay["metadata"] = meta
    return lay


@dataclass(kw_only=True)
class _FilePlan:
    out: str | Path | None = None
    overwrite: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = None if self.out is None else str(self.out)
        return d


@dataclass(kw_only=True)
class Snap(_FilePlan):
    """One averaged frame (corrected, optionally restored); value: the Frame."""

    n_average: int = 1
    correct: bool = True
    restore: bool = False
    kind: str = field(default="snap", init=False)

    def describe(self) -> str:
        return (f"1 frame of {self.n_average}" + (", corrected" if self.correct else ", raw")
                + (", restored" if self.restore else ""))

    def check(self, inst: "Instrument") -> None:
        _positive_int("n_average", self.n_average)
        _check_corrected(inst, self.correct, self.restore, self.n_average)

    def sink_layout(self, inst: "Instrument") -> dict[str, Any]:
        lay = acquisition_layout(inst, correct=self.correct, restore=self.restore,
                                 n_average=self.n_average)
        lay["metadata"].update(self.metadata)
        return lay

    def run(self, ctx: RunContext) -> Frame:
        ctx.frames_total = self.n_average
        return ctx.acquire(1, n_average=self.n_average, correct=self.correct,
                           restore=self.restore)[0]


@dataclass(kw_only=True)
class Series(_FilePlan):
    """``n_frames`` averaged frames through the pipeline (None: until ``Engine.stop()``, a live
    view); value: the pipeline statistics. ``keep`` returns the frames too (short series)."""

    n_frames: int | None = 1
    n_average: int = 1
    correct: bool = True
    restore: bool = False
    keep: bool = False
    # time from one output frame's start to the next (areaDetector's AcquirePeriod); 0 or a
    # period the averaging already fills: free-running at the camera's rate
    period_s: float = 0.0
    kind: str = field(default="series", init=False)

    @property
    def follow_restoration(self) -> bool:
        """A live view that records nothing follows restoration changes frame by frame."""
        return self.n_frames is None and self.out is None

    def describe(self) -> str:
        n = "continuous" if self.n_frames is None else f"{self.n_frames} frames"
        return (f"{n} of {self.n_average}" + (", corrected" if self.correct else ", raw")
                + (", restored" if self.restore else "")
                + (f", one every {self.period_s:g} s" if self.period_s else ""))

    def check(self, inst: "Instrument") -> None:
        if self.n_frames is not None:
            _positive_int("n_frames", self.n_frames)
        _positive_int("n_average", self.n_average)
        if not (isinstance(self.period_s, (int, float)) and math.isfinite(self.period_s)
                and self.period_s >= 0):
            raise PlanError(f"series: period_s must be a finite number >= 0 s, got "
                            f"{self.period_s!r}")
        _check_corrected(inst, self.correct, self.restore, self.n_average)

    def _paced(self, inst: "Instrument") -> bool:
        return self.period_s > self.n_average * float(inst.camera.frame_period_s)

    def sink_layout(self, inst: "Instrument") -> dict[str, Any]:
        lay = acquisition_layout(inst, correct=self.correct, restore=self.restore,
                                 n_average=self.n_average)
        lay["metadata"].update(self.metadata)
        return lay

    def run(self, ctx: RunContext):
        ctx.frames_total = (self.n_frames or 0) * self.n_average
        if not self._paced(ctx.instrument):
            frames = ctx.acquire(self.n_frames, n_average=self.n_average,
                                 correct=self.correct, restore=self.restore, keep=self.keep)
            return frames if self.keep else ctx.instrument.last_stream_stats
        # paced: one averaged frame per period, the camera idle in between
        frames, done, t_next = [], 0, time.monotonic()
        while self.n_frames is None or done < self.n_frames:
            if ctx.wait_s(t_next - time.monotonic()):
                break
            t_next = time.monotonic() + self.period_s
            frames += ctx.acquire(1, n_average=self.n_average, correct=self.correct,
                                  restore=self.restore, keep=self.keep)
            done += 1
        return frames if self.keep else ctx.instrument.last_stream_stats


@dataclass(kw_only=True)
class References(_FilePlan):
    """Dark (X-rays off) and flat (X-rays on, sample out) references: each the average of
    ``dark_frames`` / ``flat_frames`` camera frames. They become the instrument's current
    references; value: the ReferenceSet."""

    dark_frames: int = 10
    flat_frames: int = 10
    sample_out: bool = True
    kind: str = field(default="references", init=False)

    def describe(self) -> str:
        return f"dark of {self.dark_frames} frames, flat of {self.flat_frames} frames"

    def check(self, inst: "Instrument") -> None:
        _positive_int("dark_frames", self.dark_frames)
        _positive_int("flat_frames", self.flat_frames)
        if self.sample_out and not inst.can_move_sample:
            raise PlanError("this bench cannot move the sample out of the beam: remove it by "
                            "hand and use sample_out=False")
        inst.check_tube_ready()

    def sink_layout(self, inst: "Instrument") -> dict[str, Any]:
        return {"raw_dtype": "float32", "metadata": {"reference": "dark and flat",
                                                     **self.metadata}}

    def run(self, ctx: RunContext):
        ctx.frames_total = self.dark_frames + self.flat_frames
        return ctx.take_references(self.dark_frames, self.flat_frames,
                                   sample_out=self.sample_out)


class _PlanAxis:
    """The focus axis as the focus-scan protocol, moved through the instrument (soft limits,
    state events), one checkpoint per step."""

    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx

    @property
    def position_um(self) -> float:
        return self._ctx.instrument.focus_position_um

    def move_to(self, position_um: float, wait: bool = True) -> None:
        self._ctx.checkpoint()
        self._ctx.instrument.move_focus_um(position_um, wait=wait)


@dataclass(kw_only=True)
class FocusScan(_FilePlan):
    """Step the focus axis, score sharpness, fit the peak (1 um steps by default); with
    ``coarse_step_um`` a coarse pass over start..stop (default: the axis soft limits) first.
    Value: the FocusCurve; the file gets every frame with its z and the curve as NXdata."""

    start_um: float | None = None
    stop_um: float | None = None
    step_um: float = 1.0
    frames_per_step: int = 1
    metric: str = "hf_energy"
    coarse_step_um: float | None = None
    move_to_best: bool = True
    roi: tuple[int, int, int, int] | None = None
    kind: str = field(default="focus", init=False)

    def describe(self) -> str:
        return (f"focus {self.start_um}..{self.stop_um} um in {self.step_um} um steps"
                + (f" after a {self.coarse_step_um} um coarse pass" if self.coarse_step_um
                   else "") + f", {self.metric}")

    def _range(self, inst: "Instrument") -> tuple[float, float]:
        lo, hi = inst.soft_limits("focus")
        start = lo if self.start_um is None else float(self.start_um)
        stop = hi if self.stop_um is None else float(self.stop_um)
        return start, stop

    def check(self, inst: "Instrument") -> None:
        _positive_int("frames_per_step", self.frames_per_step)
        if not (math.isfinite(self.step_um) and self.step_um > 0):
            raise PlanError(f"step_um must be a positive number, got {self.step_um!r}")
        if not self.coarse_step_um and (self.start_um is None or self.stop_um is None):
            raise PlanError("focus scan needs start_um and stop_um (or coarse_step_um)")
        start, stop = self._range(inst)
        lo, hi = inst.soft_limits("focus")
        for name, v in (("start_um", start), ("stop_um", stop)):
            if not lo - 1e-9 <= v <= hi + 1e-9:
                raise PlanError(f"focus scan {name} {v:g} um outside the focus axis soft limits "
                                f"[{lo:g}, {hi:g}] um")

    def sink_layout(self, inst: "Instrument") -> dict[str, Any]:
        lay = acquisition_layout(inst, correct=inst.references is not None, restore=False,
                                 n_average=1)
        lay["metadata"].update(self.metadata, scan="focus", metric=self.metric)
        return lay

    def run(self, ctx: RunContext):
        inst = ctx.instrument
        correct = inst.references is not None
        start, stop = self._range(inst)
        if self.coarse_step_um:   # coarse pass at half the frames, then 2 coarse steps either side
            coarse = (int(abs(stop - start) / self.coarse_step_um + 1e-9) + 1) \
                * max(1, self.frames_per_step // 2)
            fine = int(4 * self.coarse_step_um / self.step_um + 1e-9) + 1
            ctx.frames_total = coarse + fine * self.frames_per_step
        else:
            ctx.frames_total = (int(abs(stop - start) / self.step_um + 1e-9) + 1) * self.frames_per_step

        def acquire(n: int) -> np.ndarray:
            # two independent half-averages let the metric remove the noise bias
            if n >= 2:   # every frame corrected alone, then interleaved halves
                fr = ctx.acquire(n, n_average=1, correct=correct)
                return np.stack([np.mean([f.data for f in fr[k::2]], axis=0, dtype=np.float64)
                                 .astype(np.float32) for k in (0, 1)])
            return ctx.acquire(1, n_average=1, correct=correct)[0].data

        def progress(i, n, pos, value):
            inst.events.focus_point.emit(float(pos), float(value))

        axis = _PlanAxis(ctx)
        common = dict(frames_per_step=self.frames_per_step, metric=self.metric,
                      progress=progress, abort=ctx.engine._abort, roi=self.roi,
                      move_to_best=self.move_to_best, limits_um=inst.soft_limits("focus"))
        try:
            if self.coarse_step_um:
                curve = coarse_fine_focus(axis, acquire, centre_um=0.5 * (start + stop),
                                          coarse_half_range_um=0.5 * abs(stop - start),
                                          coarse_step_um=self.coarse_step_um,
                                          fine_step_um=self.step_um, **common)
            else:
                curve = focus_scan(axis, acquire, start, stop, self.step_um, **common)
        except FocusScanAborted:
            raise _Abort() from None
        ctx.log(f"focus scan: best focus {curve.best_position_um:.2f} um ({self.metric})")
        for warning in curve.warnings:
            ctx.log(f"focus scan warning: {warning}")
        return curve

    def finish_file(self, sink, curve, state: str) -> None:
        if curve is not None:
            attrs = {"best_position_sd_um": float(curve.best_position_sd_um)}
            if curve.warnings:
                attrs["warnings"] = "; ".join(curve.warnings)
            sink.write_focus_curve(curve.positions_um, curve.metric_values, metric=self.metric,
                                   best_position_um=curve.best_position_um, attrs=attrs)


@dataclass(kw_only=True)
class NNPSMeasurement(_FilePlan):
    """Noise power spectrum from ``n_frames`` single flat frames (sample out), offset-corrected
    by the current dark reference. Value: calibration.nnps.NNPSResult; the file gets the flats
    and the NNPS curve (NXdata ``nnps``)."""

    n_frames: int = 16
    roi_size_px: int | None = None
    sample_out: bool = True
    kind: str = field(default="nnps", init=False)

    def describe(self) -> str:
        return f"NNPS from {self.n_frames} flat frames"

    def check(self, inst: "Instrument") -> None:
        _positive_int("n_frames", self.n_frames, 2)
        if inst.references is None:
            raise PlanError("NNPS needs a dark reference: run a References plan first")
        if self.sample_out and not inst.can_move_sample:
            raise PlanError("this bench cannot move the sample out of the beam: remove it by "
                            "hand and use sample_out=False")
        inst.check_tube_ready()

    def sink_layout(self, inst: "Instrument") -> dict[str, Any]:
        return {"raw_dtype": "float32", "metadata": {"scan": "nnps", **self.metadata}}

    def run(self, ctx: RunContext):
        inst = ctx.instrument
        refs = inst.references
        ctx.frames_total = self.n_frames
        if self.sample_out:
            inst.set_sample_in(False)
        try:
            frames = ctx.acquire(self.n_frames, n_average=1, correct=False, image_key=1)
        finally:
            if self.sample_out:
                inst.set_sample_in(True)
        stack = np.stack([f.data for f in frames])
        size = self.roi_size_px or max(16, min(256, min(stack.shape[1:]) // 2))
        size -= size % 2
        if ctx.sink is not None:
            ctx.sink.write_references(refs)
        return nnps(stack, float(inst.pixel_size_um), roi_size_px=size, dark=refs.dark)

    def finish_file(self, sink, result, state: str) -> None:
        if result is not None:
            sink.writer.add_nxdata(
                "nnps", signal=("nnps", result.nnps_mm2, {"units": "mm2"}),
                axis=("frequency", result.frequency_cy_per_mm, {"units": "1/mm"}),
                attrs={"mean_signal": float(result.mean_signal),
                       "roi_size_px": int(result.roi_size_px)})


@dataclass(kw_only=True)
class MTFMeasurement(_FilePlan):
    """MTF of a slanted edge in ``roi`` = (row0, row1, col0, col1) of one corrected frame
    averaged over ``n_average``. Value: calibration.mtf.EdgeMTFResult; the file gets the frame
    and the MTF curve (NXdata ``mtf``)."""

    roi: tuple[int, int, int, int] | None = None
    n_average: int = 8
    kind: str = field(default="mtf", init=False)

    def describe(self) -> str:
        return f"slanted-edge MTF, {self.n_average} frames averaged, roi {self.roi}"

    def check(self, inst: "Instrument") -> None:
        _positive_int("n_average", self.n_average)
        _check_corrected(inst, True, False)
        if self.roi is not None:
            r0, r1, c0, c1 = (int(v) for v in self.roi)
            rows, cols = inst.camera.frame_shape
            if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols):
                raise PlanError(f"roi {self.roi} does not lie inside the {rows}x{cols} frame")

    def sink_layout(self, inst: "Instrument") -> dict[str, Any]:
        lay = acquisition_layout(inst, correct=True, restore=False, n_average=self.n_average)
        lay["metadata"].update(self.metadata, scan="mtf")
        return lay

    def run(self, ctx: RunContext):
        ctx.frames_total = self.n_average
        frame = ctx.acquire(1, n_average=self.n_average, correct=True)[0]
        img = frame.data
        if self.roi is not None:
            r0, r1, c0, c1 = (int(v) for v in self.roi)
            img = img[r0:r1, c0:c1]
        return slanted_edge_mtf(img, float(ctx.instrument.pixel_size_um))

    def finish_file(self, sink, result, state: str) -> None:
        if result is not None:
            sink.writer.add_nxdata(
                "mtf", signal=("mtf", result.mtf, {}),
                axis=("frequency", result.frequency_cy_per_mm, {"units": "1/mm"}),
                attrs={"edge_angle_deg": float(result.edge_angle_deg)})


@dataclass(kw_only=True)
class SingleReference(_FilePlan):
    """One reference alone: ``which`` = "dark" (X-rays off for the frames, then back as they
    were) or "flat" (X-rays must be on; sample out). It replaces that half of the
    instrument's references; value: the averaged Frame."""

    which: str = "dark"
    n_frames: int = 10
    series: int = 1            # averaged references recorded; the installed one is their mean
    sample_out: bool = True
    kind: str = field(default="references", init=False)

    def describe(self) -> str:
        return (f"{self.which} reference of {self.n_frames} frames"
                + (f", {self.series} times" if self.series > 1 else ""))

    def check(self, inst: "Instrument") -> None:
        if self.which not in ("dark", "flat"):
            raise PlanError(f"reference must be 'dark' or 'flat', got {self.which!r}")
        _positive_int("frames to average", self.n_frames)
        _positive_int("series", self.series)
        if self.which == "flat":
            if not inst.xray_is_on:
                raise PlanError("flats need X-rays on: switch the tube on first")
            if self.sample_out and not inst.can_move_sample:
                raise PlanError("no sample translation is configured on this bench: move the "
                                "sample by hand and take flats with sample_out=False")

    def sink_layout(self, inst: "Instrument") -> dict[str, Any]:
        return {"raw_dtype": "float32", "metadata": {"reference": self.which + "s",
                                                     **self.metadata}}

    def run(self, ctx: RunContext) -> Frame:
        inst = ctx.instrument
        ctx.frames_total = self.n_frames
        ctx.frames_total = self.n_frames * self.series
        if self.which == "dark":
            was_on = inst.xray_is_on
            inst.xray_off()
            time.sleep(0.1)
            try:
                frames = ctx.acquire(self.series, n_average=self.n_frames, correct=False,
                                     image_key=2)
            finally:
                if was_on:
                    inst.xray_on()
        else:
            if self.sample_out:
                inst.set_sample_in(False)
            try:
                frames = ctx.acquire(self.series, n_average=self.n_frames, correct=False,
                                     image_key=1)
            finally:
                if self.sample_out:
                    inst.set_sample_in(True)
        frame = frames[-1]
        if len(frames) > 1:
            frame.data = np.mean([f.data for f in frames], axis=0, dtype=np.float64
                                 ).astype(np.float32)
        n = self.n_frames * len(frames)
        if self.which == "dark":
            inst.dark, inst.dark_frames_averaged = frame.data, n
        else:
            inst.flat, inst.flat_frames_averaged = frame.data, n
            inst.flat_conditions = {"voltage_kv": float(frame.voltage_kv),
                                    "current_ua": float(frame.current_ua),
                                    "theta_deg": float(frame.theta_deg)}
        ctx.log(f"{self.which} reference: {self.n_frames} frames, mean "
                f"{frame.data.mean():.1f} ADU")
        inst._update_corrector()
        return frame
