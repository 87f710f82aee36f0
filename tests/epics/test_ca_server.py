"""The Channel Access server's TCP circuits, served in this process to a real pyepics client."""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import uuid

import pytest


@pytest.fixture
def ca_server(epics, epics_ports):
    """A CAServer of a one-PV table on this test run's loopback port, in a thread."""
    from xinstrument.epics.pvdb import PV, CAServer, PVTable
    table = PVTable(f"XCS{uuid.uuid4().hex[:6]}:")
    table.add(PV("Value", "float", 1.5))
    server = CAServer(table)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    task: list[asyncio.Task] = []

    def serve():
        asyncio.set_event_loop(loop)
        task.append(loop.create_task(server.run(ready.set)))
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task[0])
        for circuit in list(server.context.circuits):
            circuit.client.writer.close()
        loop.run_until_complete(asyncio.sleep(0.2))     # transports close on the loop
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(30), "CA server did not start"
    yield table, server
    loop.call_soon_threadsafe(task[0].cancel)
    thread.join(30)
    # nothing of it is left to answer the searches of the IOCs started after it
    assert not thread.is_alive() and not _bound_to(epics_ports["ca"])


def _bound_to(port: int) -> list:
    """This process's sockets bound to ``port`` on any address."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            dup = os.dup(int(fd))
        except OSError:             # the descriptor listdir itself used
            continue
        try:
            sock = socket.socket(fileno=dup)
        except OSError:             # not a socket
            os.close(dup)
            continue
        try:
            if sock.family == socket.AF_INET and sock.getsockname()[1] == port:
                found.append(sock.getsockname())
        except OSError:
            pass
        finally:
            sock.close()
    return found

def test_circuits_send_each_reply_at_once(ca_server, epics):
    """Nagle off on every circuit, as rsrv: with it on, a read reply written while the
    subscription's first update is unacknowledged waits for the client's delayed ACK (40 ms)
    and arrives just ahead of the next monitor update, where pyepics then lets the older read
    overwrite the newer monitored value (a readback seen stuck at its old value)."""
    table, server = ca_server
    assert epics.caget(table.prefix + "Value", timeout=5) == pytest.approx(1.5)
    circuits = list(server.context.circuits)
    assert circuits
    for circuit in circuits:
        sock = circuit.client.writer.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), circuit
