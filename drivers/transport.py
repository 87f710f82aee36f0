"""Line-oriented command/reply transport over pyserial URLs.

One :class:`Transport` talks to one controller: a serial port (``/dev/ttyUSB0``, ``COM3``) or any
pyserial URL (``socket://127.0.0.1:5000``, ``rfc2217://...``). It frames commands and replies per
protocol (:class:`Framing`), runs one command/reply at a time under a lock, applies per-command
timeouts and a single retry policy, reconnects cleanly, and logs every exchange at DEBUG level.

A hostile or broken peer cannot hold it: every exchange has one deadline that stale lines,
continuation lines and partial bytes never extend; a line longer than ``max_line_bytes``, a reply
of more than ``max_lines`` lines, more than ``max_stale_lines`` discarded late replies or more
than ``max_unsolicited_bytes`` of unrequested input is a :class:`ProtocolError`. Reads are bulk
(up to 64 KiB per call) on every port kind; ``socket://`` URLs use a plain socket with
``select``, other URLs pyserial.

Every failure is a :class:`TransportError` subclass whose message names the device, the command
and what came back (``repr`` of the raw bytes), so a log line alone identifies the fault.
"""
from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import serial

log = logging.getLogger(__name__)

__all__ = [
    "CR_FRAMING",
    "GCS_FRAMING",
    "Framing",
    "FramingError",
    "ProtocolError",
    "SerialSettings",
    "Transport",
    "TransportClosed",
    "TransportError",
    "TransportTimeout",
]


class TransportError(RuntimeError):
    """Base of every transport failure; carries the device, command and raw reply bytes."""

    def __init__(self, message: str, *, device: str = "", command: str = "",
                 received: bytes = b"") -> None:
        super().__init__(message)
        self.device = device
        self.command = command
        self.received = received


class TransportTimeout(TransportError):
    """No complete reply arrived in time (``received`` holds any partial bytes)."""


class TransportClosed(TransportError):
    """The port is closed, could not be opened, or the peer went away."""


class ProtocolError(TransportError):
    """A reply arrived but does not follow the protocol (garbage, wrong echo, bad number)."""


class FramingError(ProtocolError):
    """The byte stream itself is broken (over-long line, endless reply, unsolicited flood):
    the connection is dropped so that the rest of the junk is not read as replies."""


@dataclass(frozen=True)
class Framing:
    """How lines are terminated and how a multi-line reply continues.

    ``continues(line)`` is called on each decoded reply line (terminator stripped); True means
    another line of the same reply follows.
    """

    eol: bytes
    continues: Callable[[str], bool] = field(default=lambda line: False)
    encoding: str = "ascii"
    max_line_bytes: int = 4096      # a longer "line" is garbage, not a reply
    max_lines: int = 256            # lines of one multi-line reply (GCS: one per axis/item)
    max_stale_lines: int = 16       # late replies discarded within one exchange
    max_unsolicited_bytes: int = 16384   # bytes nobody asked for, found before a command


def _gcs_continues(line: str) -> bool:
    # PI GCS: every line of a multi-line reply except the last ends with a space before LF
    # (PI GCS 2.0 command reference, "Multi-line answers").
    return line.endswith(" ")


CR_FRAMING = Framing(eol=b"\r")
GCS_FRAMING = Framing(eol=b"\n", continues=_gcs_continues)


@dataclass(frozen=True)
class SerialSettings:
    """Line settings for real serial ports; ignored by socket:// URLs."""

    baudrate: int = 9600
    bytesize: int = serial.EIGHTBITS
    parity: str = serial.PARITY_NONE
    stopbits: float = serial.STOPBITS_ONE
    rtscts: bool = False
    xonxoff: bool = False


_CHUNK = 65536   # bytes per read call: bulk, never byte by byte


class _SocketPort:
    """``socket://host:port`` as a plain TCP socket (bulk ``recv`` under ``select``)."""

    def __init__(self, url: str, write_timeout_s: float) -> None:
        hostport = url[len("socket://"):].split("?", 1)[0].rstrip("/")
        host, sep, port = hostport.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected socket://HOST:PORT, got {url!r}")
        self._addr = (host.strip("[]"), int(port))
        self._write_timeout_s = write_timeout_s
        self._sock: socket.socket | None = None

    @property
    def is_open(self) -> bool:
        return self._sock is not None

    def open(self) -> None:
        sock = socket.create_connection(self._addr, timeout=max(self._write_timeout_s, 1.0))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self._write_timeout_s)
        self._sock = sock

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def write(self, data: bytes) -> None:
        if self._sock is None:
            raise OSError("socket closed")
        self._sock.sendall(data)     # socket timeout = write timeout (a peer that never reads)

    def read_chunk(self, timeout_s: float) -> bytes:
        """Up to 64 KiB that arrived within ``timeout_s`` (b"" if none); EOF raises."""
        if self._sock is None:
            raise OSError("socket closed")
        r, _, _ = select.select([self._sock], [], [], max(0.0, timeout_s))
        if not r:
            return b""
        data = self._sock.recv(_CHUNK)
        if not data:
            raise OSError("connection closed by the peer")
        return data


class _SerialPort:
    """Any other pyserial URL or device: bulk reads of what the driver reports waiting."""

    def __init__(self, url: str, settings: SerialSettings, write_timeout_s: float) -> None:
        s = settings
        self._port = serial.serial_for_url(
            url, do_not_open=True, baudrate=s.baudrate, bytesize=s.bytesize, parity=s.parity,
            stopbits=s.stopbits, rtscts=s.rtscts, xonxoff=s.xonxoff, timeout=0.0,
            write_timeout=write_timeout_s)

    @property
    def is_open(self) -> bool:
        return self._port.is_open

    def open(self) -> None:
        self._port.open()

    def close(self) -> None:
        self._port.close()

    def write(self, data: bytes) -> None:
        self._port.write(data)
        self._port.flush()

    def read_chunk(self, timeout_s: float) -> bytes:
        port = self._port
        n = port.in_waiting
        if not n:
            port.timeout = max(0.0, timeout_s)
            first = port.read(1)          # blocks until one byte or the timeout
            if not first:
                return b""
            n = port.in_waiting
            return first + (port.read(min(n, _CHUNK)) if n else b"")
        port.timeout = 0.0
        return port.read(min(n, _CHUNK))


class Transport:
    """Thread-safe command/reply channel to one device.

    Parameters
    ----------
    url : str
        Serial device path or pyserial URL.
    device : str
        Name used in log lines and exception messages (e.g. ``"X-ray tube"``).
    framing : Framing
        Protocol framing (:data:`CR_FRAMING`, :data:`GCS_FRAMING`).
    settings : SerialSettings
        Baud rate and line settings for real ports.
    timeout_s : float
        Default per-command reply timeout.
    retries : int
        Retry policy: how many times an idempotent command is re-sent after a timeout, a
        protocol error or a dropped connection (reconnecting first). Callers pass
        ``retries=0`` for commands that must not be repeated (relative moves).
    on_fault : callable, optional
        Called with the exception of every failed attempt, before any retry, with the lock
        held (the tube driver switches X-rays off here: a violation is acted on at once,
        not after the retries).
    """

    _POLL_S = 0.02   # granularity of the read loop; bounds the latency of timeouts

    def __init__(self, url: str, *, device: str, framing: Framing,
                 settings: SerialSettings | None = None, timeout_s: float = 1.0,
                 retries: int = 1, on_fault: Callable[[TransportError], None] | None = None
                 ) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError(f"{device}: url must be a non-empty string, got {url!r}")
        if not (timeout_s > 0):
            raise ValueError(f"{device}: timeout_s must be > 0, got {timeout_s!r}")
        if retries < 0:
            raise ValueError(f"{device}: retries must be >= 0, got {retries!r}")
        self.url = url
        self.device = device
        self.framing = framing
        self.settings = settings or SerialSettings()
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.on_fault = on_fault
        self._port: _SocketPort | _SerialPort | None = None
        self._buf = bytearray()
        self._wanted = False          # opened by the user and not closed since
        self._unsolicited = 0         # stale bytes drained in the present one-second window
        self._unsolicited_since = 0.0
        self._lock = threading.RLock()

    # --- connection
    @property
    def is_open(self) -> bool:
        return self._port is not None and self._port.is_open

    def open(self) -> None:
        """Open the port (no-op when already open)."""
        with self._lock:
            if self.is_open:
                return
            try:
                port: _SocketPort | _SerialPort
                if self.url.startswith("socket://"):
                    port = _SocketPort(self.url, self.timeout_s)
                else:
                    port = _SerialPort(self.url, self.settings, self.timeout_s)
                port.open()
            except (serial.SerialException, OSError, ValueError) as exc:
                raise TransportClosed(f"{self.device}: cannot open {self.url!r}: {exc}",
                                      device=self.device) from exc
            self._port = port
            self._buf.clear()
            self._wanted = True
            log.debug("%s: opened %s", self.device, self.url)

    def close(self) -> None:
        """Close the port; idempotent. A closed transport is not reopened by :meth:`query`."""
        with self._lock:
            self._wanted = False
            self._drop()

    def _drop(self) -> None:
        """Close the connection after a fault; the next exchange reopens it."""
        with self._lock:
            port, self._port = self._port, None
            self._buf.clear()
            if port is not None:
                try:
                    port.close()
                except (serial.SerialException, OSError):  # already gone: nothing to release
                    pass
                log.debug("%s: closed %s", self.device, self.url)

    def reconnect(self) -> None:
        """Close and reopen the port, discarding any half-read reply."""
        with self._lock:
            self.close()
            self.open()

    @contextmanager
    def transaction(self) -> Iterator[Transport]:
        """Hold the lock across several exchanges (e.g. a set command and its ``ERR?``)."""
        with self._lock:
            yield self

    # --- raw I/O
    def _require_port(self, command: str) -> _SocketPort | _SerialPort:
        if self._port is None or not self._port.is_open:
            raise TransportClosed(f"{self.device}: port {self.url!r} is not open "
                                  f"(command {command!r})", device=self.device, command=command)
        return self._port

    def write(self, command: str | bytes, *, terminate: bool = True) -> None:
        """Send one command; ``terminate`` appends the protocol's line terminator."""
        with self._lock:
            data = command if isinstance(command, bytes) else command.encode(
                self.framing.encoding)
            name = _show(command)
            if terminate:
                data += self.framing.eol
            if self._wanted and not self.is_open:
                self.open()          # dropped after a fault: a new exchange reconnects
            port = self._require_port(name)
            log.debug("%s >> %r", self.device, data)
            try:
                port.write(data)
            except (serial.SerialException, OSError) as exc:
                self._drop()
                raise TransportClosed(f"{self.device}: write of {name!r} failed: {exc}",
                                      device=self.device, command=name) from exc

    def read_line(self, timeout_s: float | None = None, *, command: str = "",
                  deadline: float | None = None) -> str:
        """Read one terminated line and return it decoded, terminator stripped.

        ``deadline`` (a ``time.monotonic()`` instant) bounds the whole exchange this line
        belongs to; without it the line gets ``timeout_s`` (default: the transport's).
        """
        with self._lock:
            port = self._require_port(command)
            eol = self.framing.eol
            limit = self.framing.max_line_bytes
            if deadline is None:
                deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
            while True:
                idx = self._buf.find(eol, 0, limit + len(eol))
                if idx >= 0:
                    raw = bytes(self._buf[:idx])
                    del self._buf[:idx + len(eol)]
                    log.debug("%s << %r", self.device, raw + eol)
                    return self._decode(raw, command)
                if len(self._buf) > limit:
                    raw = bytes(self._buf[:64])
                    n = len(self._buf)
                    self._buf.clear()
                    raise FramingError(
                        f"{self.device}: reply to {command!r} exceeds {limit} bytes without a "
                        f"terminator {eol!r} ({n} bytes so far): {raw!r}...",
                        device=self.device, command=command, received=raw)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    partial = bytes(self._buf)
                    self._buf.clear()
                    what = f"partial reply {partial[:64]!r}" if partial else "nothing"
                    raise TransportTimeout(
                        f"{self.device}: no complete reply to {command!r} by the exchange "
                        f"deadline (got {what})", device=self.device, command=command,
                        received=partial)
                try:
                    chunk = port.read_chunk(min(remaining, self._POLL_S * 5))
                except (serial.SerialException, OSError) as exc:
                    partial = bytes(self._buf)
                    self._drop()
                    raise TransportClosed(
                        f"{self.device}: connection lost while waiting for the reply to "
                        f"{command!r} ({exc}); got {partial[:64]!r}", device=self.device,
                        command=command, received=partial) from exc
                self._buf.extend(chunk)

    def _decode(self, raw: bytes, command: str) -> str:
        try:
            text = raw.decode(self.framing.encoding)
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{self.device}: reply to {command!r} is not "
                                f"{self.framing.encoding}: {raw!r}", device=self.device,
                                command=command, received=raw) from exc
        if any((ord(c) < 32 and c not in "\t") or ord(c) == 127 for c in text):
            raise ProtocolError(f"{self.device}: reply to {command!r} contains control "
                                f"characters: {raw!r}", device=self.device, command=command,
                                received=raw)
        return text

    def drain(self, *, command: str = "") -> bytes:
        """Discard anything already received (stale replies after a timeout).

        Reads only what is already there (no waiting); more than ``max_unsolicited_bytes`` is
        a peer talking without being asked, a :class:`ProtocolError`.
        """
        with self._lock:
            stale = bytes(self._buf)
            self._buf.clear()
            cap = self.framing.max_unsolicited_bytes
            port = self._port
            if port is not None and port.is_open:
                try:
                    while len(stale) <= cap:
                        chunk = port.read_chunk(0.0)
                        if not chunk:
                            break
                        stale += chunk
                except (serial.SerialException, OSError):
                    self._drop()
            now = time.monotonic()
            if now - self._unsolicited_since > 1.0:        # a new one-second window
                self._unsolicited_since, self._unsolicited = now, 0
            self._unsolicited += len(stale)
            if len(stale) > cap or self._unsolicited > cap:
                self._unsolicited = 0
                raise FramingError(
                    f"{self.device}: more than {cap} bytes of unsolicited input within a "
                    f"second, before {command!r} (the peer talks without being asked): "
                    f"{stale[:64]!r}...",
                    device=self.device, command=command, received=stale[:64])
            if stale:
                log.debug("%s: discarded stale bytes %r", self.device, stale[:256])
            return stale

    # --- exchanges
    def query(self, command: str | bytes, *, timeout_s: float | None = None,
              retries: int | None = None, terminate: bool = True,
              validate: Callable[[list[str]], object] | None = None,
              stale: Callable[[str], bool] | None = None) -> list[str]:
        """Send ``command`` and return its reply lines (one, or several for multi-line replies).

        ``validate`` (optional) is called on the reply lines and may raise
        :class:`ProtocolError`; a rejected reply counts as a failed attempt for the retry policy.
        ``stale`` (optional) recognises a late reply to an earlier command (e.g. a different
        echo after a timeout); such lines are discarded and reading continues.
        """
        n_retries = self.retries if retries is None else int(retries)
        name = _show(command)
        with self._lock:
            if not self._wanted:       # a deliberately closed transport is not reopened here
                self._require_port(name)
            for attempt in range(n_retries + 1):
                try:
                    if not self.is_open:
                        self.open()
                    self.drain(command=name)
                    self.write(command, terminate=terminate)
                    # one deadline for the whole exchange: nothing the peer sends extends it
                    deadline = time.monotonic() + (self.timeout_s if timeout_s is None
                                                   else timeout_s)
                    lines = [self.read_line(command=name, deadline=deadline)]
                    n_stale = 0
                    while stale is not None and stale(lines[0]):
                        n_stale += 1
                        if n_stale > self.framing.max_stale_lines:
                            raise FramingError(
                                f"{self.device}: more than {self.framing.max_stale_lines} "
                                f"late replies before the reply to {name!r} (last "
                                f"{lines[0][:64]!r})", device=self.device, command=name,
                                received=lines[0][:64].encode(self.framing.encoding))
                        log.debug("%s: discarded late reply %r", self.device, lines[0])
                        lines = [self.read_line(command=name, deadline=deadline)]
                    while self.framing.continues(lines[-1]):
                        if len(lines) >= self.framing.max_lines:
                            raise FramingError(
                                f"{self.device}: reply to {name!r} runs past "
                                f"{self.framing.max_lines} lines", device=self.device,
                                command=name, received=lines[-1][:64].encode(
                                    self.framing.encoding))
                        lines.append(self.read_line(command=name, deadline=deadline))
                    if validate is not None:
                        validate(lines)
                    return lines
                except TransportClosed as exc:
                    self._notify(exc)
                    if attempt >= n_retries:
                        raise
                    log.warning("%s: %s; reconnecting and retrying", self.device, exc)
                    try:
                        self.reconnect()
                    except TransportClosed:
                        raise exc from None
                except (TransportTimeout, ProtocolError) as exc:
                    if isinstance(exc, FramingError):
                        self._drop()     # drop the junk still in flight; the retry reopens
                    self._notify(exc)
                    if attempt >= n_retries:
                        raise
                    log.warning("%s: %s; retrying", self.device, exc)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _notify(self, exc: TransportError) -> None:
        if self.on_fault is not None:
            try:
                self.on_fault(exc)
            except Exception:      # the hook must never mask the fault itself
                log.exception("%s: fault hook failed", self.device)

    def send(self, command: str | bytes, *, terminate: bool = True) -> None:
        """Send a command that has no reply."""
        with self._lock:
            self.write(command, terminate=terminate)


def _show(command: str | bytes) -> str:
    """Printable name of a command for messages (control characters as GCS '#n')."""
    if isinstance(command, bytes):
        if len(command) == 1 and command[0] < 32:
            return f"#{command[0]}"
        return command.decode("ascii", "backslashreplace")
    return command
