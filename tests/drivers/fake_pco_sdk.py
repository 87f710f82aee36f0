"""A fake pco.edge behind the real ``pco`` package: only its lowest layer is replaced.

``pco.Camera`` (the package's Python API, which the adapter calls) runs unchanged; the classes
it builds on, ``pco.sdk.Sdk``, ``pco.recorder.Recorder`` and ``pco.convert.Convert`` (the
ctypes bindings of the native SDK, recorder and converter libraries), and the library loader
are swapped for the fakes below. Every call the real ``Camera`` makes on them is bound against
the real method's signature (wrong arguments raise ``TypeError``), ``Literal`` arguments are
checked against the values the real binding declares, and every returned dict is built from the
real package's ``TypedDict`` of that method (same keys), so the adapter is tested against the
calls and structures the real package accepts and produces.
"""
from __future__ import annotations

import ctypes
import inspect
import typing
from typing import Any

import numpy as np
import pco.camera
import pco.convert
import pco.recorder
import pco.sdk

SENSOR = (48, 64)            # rows, cols of the fake sensor (a small pco.edge)
SERIAL = 1234
INTERFACE = "USB 3.0"


def _default(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return typing.get_args(tp)[0]
    if origin in (list, tuple) or tp in (list, tuple):
        return []
    if origin is dict or tp is dict:
        return {}
    return {int: 0, float: 0.0, str: "", bool: False, bytes: b""}.get(tp, None)


def typed(hint: Any, **values: Any) -> dict:
    """A dict shaped as the real package's TypedDict ``hint``; unknown keys are an error."""
    fields = typing.get_type_hints(hint)
    unknown = set(values) - set(fields)
    if unknown:
        raise AssertionError(f"{hint.__name__} has no keys {sorted(unknown)}")
    return {k: values[k] if k in values else _default(t) for k, t in fields.items()}


class _Bound:
    """Binds every call to the real class's method signature and Literal values."""

    _real: type

    def __getattr__(self, name: str):
        real = getattr(self._real, name, None)
        if real is None or not callable(real):
            raise AttributeError(f"the real {self._real.__qualname__} has no {name!r}")
        sig = inspect.signature(real)
        hints = typing.get_type_hints(real)

        def call(*args, **kwargs):
            bound = sig.bind(self, *args, **kwargs)
            for arg, value in bound.arguments.items():
                hint = hints.get(arg)
                if typing.get_origin(hint) is typing.Literal and value not in \
                        typing.get_args(hint):
                    raise ValueError(f"{self._real.__qualname__}.{name}: {arg}={value!r} not "
                                     f"in {typing.get_args(hint)}")
            self.calls.append((name, bound.args[1:], dict(bound.kwargs)))
            handler = getattr(type(self), "h_" + name, None)
            if handler is not None:
                return handler(self, *bound.args[1:], **bound.kwargs)
            ret = hints.get("return")
            if ret is None or ret is type(None):
                return None
            if typing.is_typeddict(ret):
                return typed(ret)
            return _default(ret)
        return call


class FakeSdk(_Bound):
    """The camera: settings, recording state, and frames taken while recording."""

    _real = pco.sdk.Sdk
    H = pco.sdk
    instances: typing.ClassVar[list[FakeSdk]] = []

    def __init__(self) -> None:
        self.calls: list = []
        self.recording = "off"
        self.delay = (0, "ms")
        self.exposure = (10, "ms")
        self.roi = [1, 1, SENSOR[1], SENSOR[0]]
        self.binning = (1, 1, "sum")
        self.trigger = "auto sequence"
        self.recorder: FakeRecorder | None = None
        self.lens_control = ctypes.c_void_p()
        self.camera_handle = ctypes.c_void_p()
        FakeSdk.instances.append(self)

    def _th(self, name: str):
        return getattr(pco.typehints.sdk_typehints, name)

    def h_get_camera_handle(self):
        return self.camera_handle

    def h_close(self):
        self.camera_handle = ctypes.c_void_p()

    def h_scan_cameras(self, if_type=None):
        dev = typed(self._th("GetCameraDeviceStructReturn"), id=1, status=1,
                    **{"serial number": SERIAL, "camera name": "pco.edge 4.2",
                       "interface name": INTERFACE})
        dev["interface type"] = INTERFACE     # what pco.Camera compares with its names
        return typed(self._th("ScanCamerasReturn"), devices=[dev], device_count=1)

    def h_open_camera_device(self, id):
        self.camera_handle = ctypes.c_void_p(1)
        return typed(self._th("SimpleErrorReturn"), error=0)

    def h_get_camera_type(self):
        return typed(self._th("GetCameraTypeReturn"), **{
            "camera type": "pco.edge USB3", "camera subtype": "4.2",
            "serial number": SERIAL, "interface type": INTERFACE})

    def h_get_camera_name(self):
        return typed(self._th("GetCameraNameReturn"), **{"camera name": "pco.edge 4.2 USB"})

    def h_get_camera_description(self):
        return typed(self._th("GetCameraDescriptionReturn"), **{
            "max. horizontal resolution standard": SENSOR[1],
            "max. vertical resolution standard": SENSOR[0],
            "bit resolution": 16, "max. binning horizontal": 4, "max. binning vert": 4,
            "binning horizontal stepping": 1, "binning vert stepping": 1,
            "roi hor steps": 1, "roi vert steps": 1, "min size horz": 4, "min size vert": 4,
            "Min Expos DESC": 10_000, "Max Expos DESC": 10_000, "Min Expos Step DESC": 1,
            "Min Delay DESC": 0, "Max Delay DESC": 1000, "Min Delay Step DESC": 1,
            "dwGeneralCapsDESC1": 0x00001000})    # GENERALCAPS1_NO_RECORDER: no camera RAM (edge)

    def h_get_sensor_format(self):
        return typed(self._th("GetSensorFormatReturn"), **{"sensor format": 0})

    def h_get_recording_state(self):
        return typed(self._th("GetRecordingStateReturn"), **{"recording state": self.recording})

    def h_set_recording_state(self, state):
        self.recording = state

    def h_get_delay_exposure_time(self):
        return typed(self._th("GetDelayExposureTimeReturn"), **{
            "delay": self.delay[0], "delay timebase": self.delay[1],
            "exposure": self.exposure[0], "exposure timebase": self.exposure[1]})

    def h_set_delay_exposure_time(self, delay, delay_timebase, exposure, exposure_timebase):
        self.delay, self.exposure = (delay, delay_timebase), (exposure, exposure_timebase)

    def _max(self) -> tuple[int, int]:
        return SENSOR[1] // self.binning[0], SENSOR[0] // self.binning[1]

    def h_get_roi(self):
        return typed(self._th("GetRoiReturn"), **dict(zip(("x0", "y0", "x1", "y1"), self.roi)))

    def h_set_roi(self, x0, y0, x1, y1):
        self.roi = [x0, y0, x1, y1]

    def h_arm_camera(self):
        # arming validates the settings together: the ROI against the binned sensor
        w, h = self._max()
        x0, y0, x1, y1 = self.roi
        if not (1 <= x0 <= x1 <= w and 1 <= y0 <= y1 <= h):
            raise pco.camera.CameraException(sdk=self, message=f"invalid roi {(x0, y0, x1, y1)}"
                                             f" for {w}x{h}", code=0x80001001)

    def h_get_binning(self):
        return typed(self._th("GetBinningReturn"), **{
            "binning x": self.binning[0], "binning y": self.binning[1],
            "binning mode": self.binning[2]})

    def h_set_binning(self, x, y, binningmode="sum"):
        if x not in (1, 2, 4) or y not in (1, 2, 4):
            raise pco.camera.CameraException(sdk=self, message="invalid binning",
                                             code=0x80001001)
        self.binning = (x, y, binningmode)

    def h_get_trigger_mode(self):
        return typed(self._th("GetTriggerModeReturn"), **{"trigger mode": self.trigger})

    def h_set_trigger_mode(self, mode):
        self.trigger = mode

    def h_force_trigger(self):
        ok = self.recorder is not None and self.recorder.running and \
            self.trigger == "software trigger"
        if ok:
            self.recorder.take(1)
        return typed(self._th("ForceTriggerReturn"),
                     triggered="successful" if ok else "unsuccessful")

    def h_get_camera_health_status(self):
        return typed(self._th("GetCameraHealthStatusReturn"))

    def h_get_error_text(self, error):
        return f"fake pco error {error:#x}"

    def get_error_text(self, error):       # called directly by CameraException
        return f"fake pco error {error:#x}"


class FakeRecorder(_Bound):
    """The recorder: sequence, ring buffer and fifo as the pco recorder keeps images."""

    _real = pco.recorder.Recorder
    TYPES: typing.ClassVar[dict[str, int]] = {"sequence": 1, "ring buffer": 2, "fifo": 3}

    def __init__(self, sdk: FakeSdk, camera_handle) -> None:
        self.calls: list = []
        self.sdk = sdk
        sdk.recorder = self
        self.recorder_handle = ctypes.c_void_p()
        self.running = False
        self.kind = "sequence"
        self.buffer = 0
        self.slots: list = []
        self.fifo: list = []
        self.taken = 0

    def h_create(self, mode, flags=0, file_path=None):
        self.recorder_handle = ctypes.c_void_p(2)
        return typed(pco.typehints.recorder_typehints.CreateReturn,
                     **{"maximum available images": 1000})

    def h_init(self, number_of_images, recorder_type, file_path=None, segment=None):
        self.kind, self.buffer = recorder_type, number_of_images
        self.slots, self.fifo, self.taken = [None] * number_of_images, [], 0

    def h_start_record(self):
        self.running = True
        self.sdk.recording = "on"

    def h_stop_record(self):
        self.running = False
        self.sdk.recording = "off"

    def h_delete(self):
        self.recorder_handle = ctypes.c_void_p()

    def take(self, n: int) -> None:
        """The sensor delivers ``n`` frames (value = frame number) to the recorder."""
        x0, y0, x1, y1 = self.sdk.roi
        for _ in range(n):
            if not self.running:
                return
            self.taken += 1
            img = np.full((y1 - y0 + 1, x1 - x0 + 1), self.taken, np.uint16)
            if self.kind == "fifo":
                if len(self.fifo) < self.buffer:
                    self.fifo.append((self.taken, img))
            elif self.kind == "ring buffer":
                self.slots[(self.taken - 1) % self.buffer] = (self.taken, img)
            else:
                self.slots[self.taken - 1] = (self.taken, img)
                if self.taken == self.buffer:
                    self.h_stop_record()

    def _count(self) -> int:
        if self.kind == "fifo":
            return len(self.fifo)
        return self.taken

    def h_get_status(self):
        return typed(pco.typehints.recorder_typehints.GetStatusReturn, **{
            "is running": self.running, "bIsRunning": self.running,
            "dwProcImgCount": self._count(), "dwReqImgCount": self.buffer})

    def h_get_settings(self):
        x0, y0, x1, y1 = self.sdk.roi
        return typed(pco.typehints.recorder_typehints.GetSettingsReturn, **{
            "recorder mode": 1, "recorder type": self.TYPES[self.kind],
            "maximum number of images": 1000, "required number of images": self.buffer,
            "width": x1 - x0 + 1, "height": y1 - y0 + 1})

    def h_copy_image(self, index, x0, y0, x1, y1, raw_format):
        if self.kind == "fifo":
            if not self.fifo:
                raise pco.camera.CameraException(sdk=self.sdk, message="fifo empty",
                                                 code=0x80003004)
            number, img = self.fifo.pop(0)
        else:
            entry = self.slots[index] if 0 <= index < len(self.slots) else None
            if entry is None:
                raise pco.camera.CameraException(sdk=self.sdk, message=f"no image {index}",
                                                 code=0x80003004)
            number, img = entry
        return typed(pco.typehints.recorder_typehints.CopyImageReturn, **{
            "recorder image number": number, "timestamp": {}, "metadata": {},
            "image": img[y0 - 1:y1, x0 - 1:x1].ravel()})


class FakeConvert(_Bound):
    _real = pco.convert.Convert

    def __init__(self, camera_handle, sdk, convert_type, bit_resolution) -> None:
        self.calls: list = []
        self.convert_handle = ctypes.c_void_p(3)

    def h_delete(self):
        self.convert_handle = ctypes.c_void_p()

    def h_get_mode_flags(self, with_alpha=False):
        return 0


class _Loader:
    def increment(self) -> None:
        pass

    def decrement(self) -> None:
        pass


def install(monkeypatch) -> None:
    """Swap the native layer under the real ``pco.Camera``."""
    import pco.typehints.recorder_typehints
    import pco.typehints.sdk_typehints
    FakeSdk.instances.clear()
    monkeypatch.setattr(pco.camera, "Sdk", FakeSdk)
    monkeypatch.setattr(pco.camera, "Recorder", FakeRecorder)
    monkeypatch.setattr(pco.camera, "Convert", FakeConvert)
    monkeypatch.setattr(pco.camera, "shared_library_loader", _Loader())
