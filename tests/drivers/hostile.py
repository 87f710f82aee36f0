"""Hostile peers on 127.0.0.1 and the scenarios that face the real drivers with them.

Run one scenario per process: ``python tests/drivers/hostile.py NAME`` prints one JSON line
(outcome, elapsed time, and for the tube when and whether X-ray off reached the peer). The
test ``test_hostile_peers.py`` runs every scenario in its own subprocess under a hard timeout,
so a driver that hangs is a failed scenario, never a hung test run.

The peers impersonate a Hamamatsu controller (numeric dialect, CR) and a PI GCS controller
(LF, ``axis=value`` replies, ``#5/#7/#24``). They behave until ``arm()``, then answer every
command with one fault. For the tube they record the time of every command they receive, so
the delay from the first exchange that meets the fault to the first ``XOF`` is measured where
it matters: at the controller.
"""
from __future__ import annotations

import json
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

if __name__ == "__main__":      # run as a script: import the repository's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

MB = 1 << 20


class HostilePeer:
    """One TCP client at a time; a new connection replaces the old one."""

    eol = b"\r"
    control: frozenset[int] = frozenset()

    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.armed_at: float | None = None
        self.first_faulty_cmd_at: float | None = None
        self.commands: list[tuple[float, bytes]] = []
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(2)
        self._srv.settimeout(0.05)
        self.url = f"socket://127.0.0.1:{self._srv.getsockname()[1]}"
        self._stop = threading.Event()
        self._conn: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    # --- plumbing
    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def arm(self) -> None:
        self.armed_at = time.monotonic()
        if self.fault == "flood" and self._conn is not None:
            self._spawn(self._stream, self.flood_line(), self._conn)

    def close(self) -> None:
        self._stop.set()
        self._srv.close()
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except OSError:
                if self._stop.is_set():
                    return
                continue
            self._conn = conn
            conn.settimeout(0.05)
            if self.fault == "flood" and self.armed_at is not None:
                # flooding from the start: the first block is sent before any reply can be,
                # so a driver that finishes its exchanges before the stream thread runs (a
                # loaded machine schedules it late) still meets the flood
                self._send(conn, self._flood_block())
                self._spawn(self._stream, self.flood_line(), conn)
            self._spawn(self._serve, conn)

    def _send(self, conn: socket.socket, data: bytes) -> None:
        try:
            conn.settimeout(2.0)
            conn.sendall(data)
        except OSError:
            pass
        finally:
            try:
                conn.settimeout(0.05)
            except OSError:
                pass

    def _flood_block(self, line: bytes | None = None) -> bytes:
        line = self.flood_line() if line is None else line
        return line * max(1, 4096 // len(line))

    def _stream(self, line: bytes, conn: socket.socket | None) -> None:
        """Send ``line`` over and over (flood, endless continuation) until stopped."""
        block = self._flood_block(line)
        while not self._stop.is_set():
            c = conn or self._conn
            if c is None:
                time.sleep(0.01)
                continue
            try:
                c.settimeout(0.2)
                c.sendall(block)
            except TimeoutError:
                continue
            except OSError:
                if conn is not None:
                    return
                time.sleep(0.01)

    def _trickle(self, conn: socket.socket, data: bytes, period_s: float) -> None:
        for b in data:
            if self._stop.wait(period_s):
                return
            try:
                conn.sendall(bytes([b]))
            except OSError:
                return

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        while not self._stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            buf += data
            while buf:
                if buf[0] in self.control:
                    cmd = bytes(buf[:1])
                    del buf[:1]
                else:
                    i = buf.find(self.eol)
                    if i < 0:
                        break
                    cmd = bytes(buf[:i])
                    del buf[:i + len(self.eol)]
                now = time.monotonic()
                self.commands.append((now, cmd))
                if self.armed_at is None:
                    self._send(conn, self.normal(cmd))
                    continue
                if self.first_faulty_cmd_at is None:
                    self.first_faulty_cmd_at = now
                self.faulty(conn, cmd)

    # --- fault behaviours shared by both protocols
    def faulty(self, conn: socket.socket, cmd: bytes) -> None:
        f, eol = self.fault, self.eol
        good = self.normal(cmd)
        if f == "huge_line":
            self._send(conn, b"A" * MB + eol)
        elif f == "huge_line_no_eol":
            self._send(conn, b"7" * MB)
        elif f == "silence":
            pass
        elif f == "partial":
            self._send(conn, good.rstrip(eol)[:max(1, len(good) // 2)] if good else b"1")
        elif f == "one_byte_per_s":
            self._spawn(self._trickle, conn, good or b"0" + eol, 1.0)
        elif f == "garbage":
            self._send(conn, b"\x9c\xff#?\x07%" + eol)
        elif f == "nul_bytes":
            self._send(conn, b"\x00" * 64 + eol)
        elif f == "disconnect":
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass
            self.armed_at = None     # the next connection is served normally
        elif f == "flood":
            self._send(conn, good)
        else:
            self.special(conn, cmd, good)

    def special(self, conn, cmd: bytes, good: bytes) -> None:
        raise NotImplementedError(self.fault)

    def normal(self, cmd: bytes) -> bytes:
        raise NotImplementedError

    def flood_line(self) -> bytes:
        raise NotImplementedError


class TubePeer(HostilePeer):
    """Hamamatsu numeric-dialect controller (L9181-02), warmed up, that turns hostile."""

    def __init__(self, fault: str) -> None:
        self.state, self.kv, self.ua, self.focus = 2, 50, 50, 1
        super().__init__(fault)

    def flood_line(self) -> bytes:
        return b"STS 3\r"

    def xof_times(self) -> list[float]:
        return [t for t, c in self.commands if c == b"XOF"]

    def read_pending(self, since: float, wait_s: float = 1.0) -> None:
        """Give the peer's threads time to accept and read what the driver already sent (a
        loaded machine schedules them late); the XOF delay is still stamped on receipt."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not any(t >= since for t in self.xof_times()):
            time.sleep(0.02)

    def normal(self, cmd: bytes) -> bytes:
        parts = cmd.decode("ascii", "replace").split()
        if not parts:
            return b"ERR 1\r"
        c, args = parts[0], parts[1:]
        on = self.state == 3
        simple = {
            "TYP": "TYP L9181-02", "SPV": f"SPV {self.kv}", "SPC": f"SPC {self.ua}",
            "STS": f"STS {self.state}", "SAR": f"SAR {self.state} {self.kv * on} {self.ua * on}",
            "SVI": f"SVI {self.kv * on} {self.ua * on}", "SHV": f"SHV {self.kv * on}",
            "SCU": f"SCU {self.ua * on}", "SWE": "SWE 100", "SWS": "SWS 1", "SER": "SER 0",
            "SIN": "SIN 1", "SNR": "SNR 0", "SPH": "SPH 0", "RST": "RST", "WUP": "WUP"}
        if c == "CFS":
            if args:
                self.focus = int(args[0])
            return f"CFS {self.focus}\r".encode()
        if c in ("HIV", "CUR") and len(args) == 1 and args[0].isdigit():
            setattr(self, "kv" if c == "HIV" else "ua", int(args[0]))
            return f"{c} {args[0]}\r".encode()
        if c == "XON":
            self.state = 3
            return b"XON\r"
        if c == "XOF":
            self.state = 2
            return b"XOF\r"
        return (simple.get(c, "ERR 1") + "\r").encode()

    def special(self, conn, cmd: bytes, good: bytes) -> None:
        f = self.fault
        c = cmd.split(b" ")[0]
        if cmd == b"XOF":       # the faults below corrupt readbacks; X-ray off still works
            self._send(conn, self.normal(cmd))
            return
        if f == "stale_storm":
            self._send(conn, b"HIV 80\r" * 200 + good)
        elif f == "stale_forever":
            self._send(conn, b"SPV 80\r" * 2000)
        elif f == "kv_999":
            self._send(conn, {b"SAR": b"SAR 3 999 9999\r", b"SHV": b"SHV 999\r",
                              b"SCU": b"SCU 9999\r", b"SVI": b"SVI 999 9999\r"}.get(c, good))
        elif f == "far_from_setpoint":
            self._send(conn, {b"SAR": b"SAR 3 20 50\r", b"SHV": b"SHV 20\r"}.get(c, good))
        elif f == "negative_readback":
            self._send(conn, {b"SAR": b"SAR 3 -40 50\r"}.get(c, good))
        elif f == "swe_250":
            self._send(conn, b"SWE 250\r" if c == b"SWE" else good)
        elif f == "unknown_state":
            self._send(conn, {b"SAR": b"SAR 9 50 50\r", b"STS": b"STS 9\r"}.get(c, good))
        elif f == "overlong_number":
            self._send(conn, {b"SAR": b"SAR 3 123456789 50\r"}.get(c, good))
        elif f == "bad_error_reply":
            self._send(conn, b"ERR xyz\r")
        elif f == "wrong_echo":
            self._send(conn, b"FOO 1\r")
        elif f == "non_ascii":
            self._send(conn, "SAR 3 5\uff10 50\r".encode("utf-8"))
        elif f == "extra_fields":
            self._send(conn, {b"SAR": b"SAR 3 50 50 7 7\r"}.get(c, good))
        else:
            raise ValueError(f"unknown tube fault {f!r}")


class GcsPeer(HostilePeer):
    """PI GCS controller with axis "1" in mm that turns hostile."""

    eol = b"\n"
    control = frozenset({5, 7, 24})

    def __init__(self, fault: str) -> None:
        self.pos_mm, self.servo, self.ref = 0.05, 1, 1
        super().__init__(fault)

    def flood_line(self) -> bytes:
        return b"1=0.000000\n"

    def normal(self, cmd: bytes) -> bytes:
        if cmd == b"\x05":
            return b"0\n"
        if cmd == b"\x07":
            return b"B1\n"
        if cmd == b"\x18":
            return b""
        text = cmd.decode("ascii", "replace")
        parts = text.split()
        if not parts:
            return b""
        c, args = parts[0], parts[1:]
        if c == "MOV" and len(args) == 2:
            self.pos_mm = float(args[1])
            return b""
        if c in ("SVO", "FRF", "VEL", "MVR", "STP", "HLT"):
            return b""
        values = {"POS?": f"{self.pos_mm:.6f}", "MOV?": f"{self.pos_mm:.6f}", "ONT?": "1",
                  "SVO?": str(self.servo), "FRF?": str(self.ref), "TMN?": "0.000000",
                  "TMX?": "0.400000", "VEL?": "1.000000"}
        if c in values:
            return f"1={values[c]}\n".encode()
        return {"*IDN?": b"(c)2024 Physik Instrumente (PI) GmbH & Co. KG, C-863.12, 0, 1\n",
                "SAI?": b"1\n", "ERR?": b"0\n"}.get(c, b"")

    def special(self, conn, cmd: bytes, good: bytes) -> None:
        f = self.fault
        c = cmd.split(b" ")[0]
        if f == "endless_continuation":
            if c == b"POS?":
                self._spawn(self._stream, b"1=0.1 \n", conn)
            else:
                self._send(conn, good)
        elif f == "vel_tiny":
            self._send(conn, {b"VEL?": b"1=1e-30\n", b"ONT?": b"1=0\n"}.get(c, good))
        elif f == "never_on_target":
            self._send(conn, b"1=0\n" if c == b"ONT?" else good)
        elif f == "nan_position":
            self._send(conn, b"1=nan\n" if c == b"POS?" else good)
        elif f == "absurd_position":
            self._send(conn, b"1=99999.0\n" if c == b"POS?" else good)
        elif f == "inf_position":
            self._send(conn, b"1=1e999\n" if c == b"POS?" else good)
        elif f == "wrong_axis":
            self._send(conn, good.replace(b"1=", b"7=") if good.startswith(b"1=") else good)
        elif f == "error_after_move":
            self._send(conn, b"5\n" if c == b"ERR?" else good)
        elif f == "bad_motion_mask":
            self._send(conn, b"ZZ\n" if cmd == b"\x05" else good)
        else:
            raise ValueError(f"unknown GCS fault {f!r}")


# --- scenarios ---------------------------------------------------------------------------------
TUBE_FAULTS_EMITTING = [
    "huge_line", "huge_line_no_eol", "flood", "stale_storm", "stale_forever", "partial",
    "silence", "one_byte_per_s", "garbage", "nul_bytes", "disconnect", "kv_999",
    "far_from_setpoint", "negative_readback", "swe_250", "unknown_state", "overlong_number",
    "bad_error_reply", "wrong_echo", "non_ascii", "extra_fields"]
TUBE_FAULTS_CONNECT = ["huge_line", "huge_line_no_eol", "flood", "stale_forever", "partial",
                       "silence", "one_byte_per_s", "garbage", "wrong_echo"]
TUBE_HEARTBEAT_ONLY = ["kv_999", "silence", "huge_line", "flood", "one_byte_per_s"]
GCS_FAULTS = ["huge_line", "huge_line_no_eol", "flood", "endless_continuation", "partial",
              "silence", "one_byte_per_s", "garbage", "nul_bytes", "vel_tiny",
              "never_on_target", "nan_position", "inf_position", "absurd_position", "wrong_axis",
              "error_after_move", "bad_motion_mask"]
INSTRUMENT_FAULTS = ["partial", "silence", "one_byte_per_s", "huge_line", "flood"]


def scenario_names() -> list[str]:
    return ([f"tube-emitting-{f}" for f in TUBE_FAULTS_EMITTING]
            + [f"tube-heartbeat-{f}" for f in TUBE_HEARTBEAT_ONLY]
            + [f"tube-connect-{f}" for f in TUBE_FAULTS_CONNECT]
            + [f"gcs-{f}" for f in GCS_FAULTS]
            + [f"instrument-{f}" for f in INSTRUMENT_FAULTS])


def _expected_errors() -> tuple[type[BaseException], ...]:
    from drivers.stage import GcsError, StageLimitError, StageTimeout
    from drivers.transport import TransportError
    from drivers.xray import TubeError
    return (TransportError, TubeError, GcsError, StageTimeout, StageLimitError)


def _tube_emitting(fault: str, heartbeat_only: bool) -> dict:
    from drivers.xray import HamamatsuTube
    peer = TubePeer(fault)
    tube = HamamatsuTube(peer.url, timeout_s=1.0, watchdog_s=3.0, ramp_allowance_s=0.3)
    out: dict = {"xray_on_at_fault": True}
    try:
        tube.connect()
        tube.set_voltage_kv(50)
        tube.set_current_ua(50)
        tube.xray_on()
        time.sleep(0.4)                 # past the ramp allowance: readbacks are now checked
        tube.status()
        peer.arm()
        t0 = time.monotonic()
        try:
            if heartbeat_only:
                # nobody polls but the driver's heartbeat
                while not peer.xof_times() and time.monotonic() - t0 < 4.0:
                    time.sleep(0.02)
            else:
                while time.monotonic() - t0 < 4.0:
                    tube.status()
                    if fault == "swe_250":
                        _ = tube.warmup_progress
                    time.sleep(0.05)
            out["outcome"] = "returned"
        except _expected_errors() as exc:
            out["outcome"] = "raised"
            out["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        finally:
            tube.close()
    finally:
        if peer.armed_at is not None:
            peer.read_pending(peer.armed_at)
        peer.close()
    xof = [t for t, c in peer.commands if c == b"XOF" and t >= t0]
    first = peer.first_faulty_cmd_at or t0
    out["xof_delay_s"] = (min(xof) - first) if xof else None
    out["peer_commands_after_fault"] = sum(1 for t, _ in peer.commands if t >= first)
    return out


def _tube_connect(fault: str) -> dict:
    from drivers.xray import HamamatsuTube
    peer = TubePeer(fault)
    peer.arm()
    tube = HamamatsuTube(peer.url, timeout_s=1.0, watchdog_s=3.0)
    try:
        tube.connect()
        try:
            tube.status()
        finally:
            tube.close()
        return {"outcome": "returned", "xray_on_at_fault": False}
    finally:
        peer.close()


def _gcs(fault: str) -> dict:
    from drivers.stage import GcsAxis, GcsController
    peer = GcsPeer(fault)
    ctl = GcsController(peer.url, timeout_s=1.0)
    try:
        ctl.connect()
        ax = GcsAxis(ctl, "1", unit="um", scale=1000.0, soft_limits=(0.0, 400.0),
                     velocity_limits=(100.0, 10000.0), max_wait_s=6.0)
        _ = ax.limits
        peer.arm()
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < 3.0:     # a persistent fault must surface
                _ = ax.position
                ax.move_to(150.0)
                _ = ax.is_moving
                ax.move_to(50.0)
            return {"outcome": "returned", "xray_on_at_fault": False}
        finally:
            ctl.close()
    finally:
        peer.close()


def _instrument(fault: str) -> dict:
    from xinstrument.config import InstrumentConfig
    from xinstrument.instrument import Instrument
    peer = TubePeer(fault)
    cfg = InstrumentConfig.simulated(sensor_px=64, rotation=False)
    cfg.tube.port = peer.url
    inst = Instrument(cfg)
    out: dict = {"xray_on_at_fault": True}
    try:
        inst.connect()
        inst.set_voltage_kv(50)
        inst.set_current_ua(50)
        inst.xray_on(settle_s=0.0)
        peer.arm()
        t0 = time.monotonic()
        try:
            inst.tube_status()
        except _expected_errors() as exc:
            out["status_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
        t1 = time.monotonic()
        inst.disconnect()
        out["disconnect_s"] = time.monotonic() - t1
        out["status_s"] = t1 - t0
        out["outcome"] = "returned"
    finally:
        if peer.armed_at is not None:
            peer.read_pending(peer.armed_at)
        peer.close()
    xof = [t for t in peer.xof_times() if t >= t0]
    first = peer.first_faulty_cmd_at or t0
    out["xof_delay_s"] = (min(xof) - first) if xof else None
    return out


def run(name: str) -> dict:
    kind, _, fault = name.partition("-")
    if kind == "instrument":
        import xinstrument.instrument  # noqa: F401  (imports are not part of the scenario time)
    _expected_errors()
    t0 = time.monotonic()
    result: dict = {"name": name}
    try:
        if kind == "tube":
            mode, _, fault = fault.partition("-")
            if mode == "connect":
                result.update(_tube_connect(fault))
            else:
                result.update(_tube_emitting(fault, heartbeat_only=mode == "heartbeat"))
        elif kind == "gcs":
            result.update(_gcs(fault))
        elif kind == "instrument":
            result.update(_instrument(fault))
        else:
            raise ValueError(f"unknown scenario {name!r}")
    except _expected_errors() as exc:
        result["outcome"] = "raised"
        result["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    except BaseException as exc:      # noqa: BLE001 - an unexpected error is a finding
        result["outcome"] = "unexpected"
        result["error"] = "".join(traceback.format_exception(exc))[-1500:]
    result["elapsed_s"] = time.monotonic() - t0
    return result


if __name__ == "__main__":
    import logging
    logging.basicConfig(level=logging.CRITICAL)
    for arg in sys.argv[1:]:          # several names: run them in turn, one JSON line each
        print(json.dumps(run(arg)), flush=True)
