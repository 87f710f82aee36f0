"""The Channel Access server's TCP circuits, served in this process to a real pyepics client."""
from __future__ import annotations

import asyncio
import socket
import threading
import uuid

import pytest


@pytest.fixture
def ca_server(epics):
    """A CAServer of a one-PV table on this test run's loopback port, in a thread."""
    from xinstrument.epics.pvdb import PV, CAServer, PVTable
    table = PVTable(f"XCS{uuid.uuid4().hex[:6]}:")
    table.add(PV("Value", "float", 1.5))
    server = CAServer(table)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve():
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.run(ready.set))
        except asyncio.CancelledError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(30), "CA server did not start"
    yield table, server
    loop.call_soon_threadsafe(lambda: [t.cancel() for t in asyncio.all_tasks(loop)])
    thread.join(10)


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
