"""Serving a line-protocol emulator on a loopback TCP port or a pseudo-terminal.

:class:`EmulatorBase` holds what every emulator shares: the listening endpoints and their
threads, command splitting (line terminator plus single-byte control commands such as PI GCS
``#5``), and the link-level fault hooks that corrupt, delay or drop replies the way a bad cable,
a hung controller or a pulled plug does. The device state machine lives in the subclass
(:meth:`EmulatorBase._handle`).
"""
from __future__ import annotations

import abc
import logging
import os
import select
import socket
import threading
import time
import tty

log = logging.getLogger(__name__)

LINK_FAULTS = ("no_reply", "garbage", "partial_line", "slow_reply", "disconnect")

# Bytes no controller sends: non-ASCII and control characters, then the terminator, so a driver
# sees a complete but meaningless line.
_GARBAGE = b"\x9c\xff#?\x07%"


class _Connection:
    """One connected client (socket) or the pty master."""

    def __init__(self, fd_read, write, close) -> None:
        self.fd_read = fd_read
        self.write = write
        self.close = close
        self.buf = bytearray()


class EmulatorBase(abc.ABC):
    """Shared serving machinery. Subclasses set ``name``, ``eol`` and ``control_bytes``."""

    name = "emulator"
    eol = b"\r"
    control_bytes: frozenset[int] = frozenset()   # single-byte commands without terminator

    def __init__(self) -> None:
        self._lock = threading.RLock()           # device state
        self._faults: dict[str, dict] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listeners: list[socket.socket] = []
        self._conns: list[_Connection] = []
        self._conn_lock = threading.Lock()
        self._pty_fds: list[int] = []

    # --- endpoints
    def serve_tcp(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on a loopback TCP port (0 = any free port); return its pyserial URL."""
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"{self.name}: emulators listen on loopback only, not {host!r}")
        if not (0 <= int(port) <= 65535):
            raise ValueError(f"{self.name}: TCP port must be 0..65535, got {port!r}")
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", int(port)))
        srv.listen(4)
        self._listeners.append(srv)
        t = threading.Thread(target=self._accept_loop, args=(srv,), daemon=True,
                             name=f"{self.name}-accept")
        self._threads.append(t)
        t.start()
        return f"socket://127.0.0.1:{srv.getsockname()[1]}"

    def serve_pty(self) -> str:
        """Serve on a pseudo-terminal; return the device path a serial driver opens."""
        master, slave = os.openpty()
        tty.setraw(slave)
        path = os.ttyname(slave)
        self._pty_fds += [master, slave]   # keep the slave open so the master never sees EIO

        def write(data: bytes) -> None:
            os.write(master, data)

        conn = _Connection(master, write, lambda: None)
        t = threading.Thread(target=self._serve_conn, args=(conn, lambda: os.read(master, 4096)),
                             daemon=True, name=f"{self.name}-pty")
        self._threads.append(t)
        t.start()
        return path

    def close(self) -> None:
        """Stop serving and join the threads; idempotent."""
        self._stop.set()
        for srv in self._listeners:
            try:
                srv.close()
            except OSError:
                pass
        self._drop_connections()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=2.0)
        for fd in self._pty_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._pty_fds.clear()
        self._threads.clear()
        self._listeners.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- fault hooks (link level; subclasses add device faults)
    def inject(self, fault: str, **kw) -> None:
        """Inject a link fault. ``count=N`` limits it to the next N replies (default: until
        :meth:`clear_faults`); ``slow_reply`` takes ``delay_s`` (default 2 s)."""
        if fault not in LINK_FAULTS:
            raise ValueError(f"{self.name}: unknown fault {fault!r}; known: "
                             f"{', '.join(self.known_faults())}")
        if fault == "disconnect":
            # the plug is pulled now; the device reacts as to any lost connection
            self._drop_connections()
            return
        count = kw.pop("count", None)
        if count is not None and int(count) < 1:
            raise ValueError(f"{self.name}: fault count must be >= 1, got {count!r}")
        delay_s = float(kw.pop("delay_s", 2.0))
        if kw:
            raise ValueError(f"{self.name}: fault {fault!r} takes no options {sorted(kw)}")
        with self._lock:
            self._faults[fault] = {"count": count, "delay_s": delay_s}

    def known_faults(self) -> tuple[str, ...]:
        return LINK_FAULTS

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # --- each device's protocol
    @abc.abstractmethod
    def _handle(self, command: bytes) -> bytes | None:
        """Execute one command; return the reply (terminator included) or None."""

    def _on_disconnect(self) -> None:
        """The client went away (hook for device safety reactions)."""

    # --- serving
    def _drop_connections(self) -> None:
        with self._conn_lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()
        if conns:
            self._on_disconnect()

    def _accept_loop(self, srv: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([srv], [], [], 0.05)
                if not r:
                    continue
                sock, _ = srv.accept()
            except (OSError, ValueError):
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # one client at a time, like a serial-to-Ethernet server: a new client replaces the old
            self._drop_connections()

            def close(s=sock) -> None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

            conn = _Connection(sock, sock.sendall, close)
            with self._conn_lock:
                self._conns.append(conn)
            t = threading.Thread(target=self._serve_conn, args=(conn, lambda s=sock: s.recv(4096)),
                                 daemon=True, name=f"{self.name}-client")
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def _serve_conn(self, conn: _Connection, recv) -> None:
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([conn.fd_read], [], [], 0.05)
                if not r:
                    continue
                data = recv()
            except (OSError, ValueError):
                data = b""
            if not data:
                with self._conn_lock:
                    was_live = conn in self._conns
                    if was_live:
                        self._conns.remove(conn)
                if was_live:
                    conn.close()
                    self._on_disconnect()
                return
            conn.buf.extend(data)
            for cmd in self._split(conn):
                if not self._respond(conn, cmd):
                    return

    def _split(self, conn: _Connection) -> list[bytes]:
        cmds: list[bytes] = []
        buf = conn.buf
        while buf:
            if buf[0] in self.control_bytes:
                cmds.append(bytes(buf[:1]))
                del buf[:1]
                continue
            idx = buf.find(self.eol)
            ctl = next((i for i, b in enumerate(buf) if b in self.control_bytes), -1)
            if ctl >= 0 and (idx < 0 or ctl < idx):
                # a control byte interrupts a half-typed line (e.g. #24 stop): serve it first
                cmds.append(bytes(buf[ctl:ctl + 1]))
                del buf[ctl:ctl + 1]
                continue
            if idx < 0:
                if len(buf) > 4096:   # runaway input without terminator: discard it
                    buf.clear()
                break
            cmds.append(bytes(buf[:idx]))
            del buf[:idx + len(self.eol)]
        return cmds

    def _respond(self, conn: _Connection, cmd: bytes) -> bool:
        reply = self._handle(cmd)
        if reply is None:
            return True
        with self._lock:
            active = dict(self._faults)
            for name in list(self._faults):
                c = self._faults[name]["count"]
                if c is not None:
                    if c <= 1:
                        del self._faults[name]
                    else:
                        self._faults[name]["count"] = c - 1
        if "no_reply" in active:
            return True
        if "garbage" in active:
            reply = _GARBAGE + self.eol
        elif "partial_line" in active:
            body = reply.removesuffix(self.eol)
            reply = body[:max(1, len(body) // 2)]
        if "slow_reply" in active:
            if self._stop.wait(active["slow_reply"]["delay_s"]):
                return False
        try:
            conn.write(reply)
        except OSError:
            return False
        return True


def monotonic() -> float:
    return time.monotonic()
