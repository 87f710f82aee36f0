"""Transport: framing, multi-line replies, timeouts, retry policy, reconnect, closed ports."""
import threading

import pytest

from drivers.transport import (
    CR_FRAMING,
    GCS_FRAMING,
    ProtocolError,
    Transport,
    TransportClosed,
    TransportTimeout,
)


def test_cr_query_exact_bytes(peer_factory):
    p = peer_factory(b"\r", {b"STS": b"STS 2\r"})
    t = Transport(p.url, device="tube", framing=CR_FRAMING, timeout_s=0.5)
    t.open()
    assert t.query("STS") == ["STS 2"]
    assert bytes(p.received) == b"STS\r"
    t.close()


def test_gcs_multiline_reply(peer_factory):
    p = peer_factory(b"\n", {b"POS?": b"1=1.5 \n2=-3.0 \n3=0\n"})
    t = Transport(p.url, device="stage", framing=GCS_FRAMING, timeout_s=0.5)
    t.open()
    assert t.query("POS?") == ["1=1.5 ", "2=-3.0 ", "3=0"]
    t.close()


def test_timeout_names_device_command_and_partial_bytes(peer_factory):
    p = peer_factory(b"\r", {b"STS": b"STS"})          # no terminator ever
    t = Transport(p.url, device="tube A", framing=CR_FRAMING, timeout_s=0.1, retries=0)
    t.open()
    with pytest.raises(TransportTimeout) as ei:
        t.query("STS")
    msg = str(ei.value)
    assert "tube A" in msg and "'STS'" in msg and "b'STS'" in msg
    assert ei.value.received == b"STS"
    t.close()


def test_retry_policy_resends_once(peer_factory):
    p = peer_factory(b"\r", {})
    t = Transport(p.url, device="tube", framing=CR_FRAMING, timeout_s=0.1, retries=1)
    t.open()
    with pytest.raises(TransportTimeout):
        t.query("SAR")
    assert p.commands == [b"SAR", b"SAR"]
    with pytest.raises(TransportTimeout):
        t.query("MVR", retries=0)
    assert p.commands[-1] == b"MVR" and p.commands.count(b"MVR") == 1
    t.close()


def test_validator_rejection_is_retried_then_raised(peer_factory):
    p = peer_factory(b"\r", {b"STS": b"XYZ\r"})
    t = Transport(p.url, device="tube", framing=CR_FRAMING, timeout_s=0.2, retries=1)
    t.open()

    def validate(lines):
        if not lines[0].startswith("STS"):
            raise ProtocolError("bad", device="tube", command="STS")

    with pytest.raises(ProtocolError):
        t.query("STS", validate=validate)
    assert p.commands == [b"STS", b"STS"]
    t.close()


def test_control_characters_are_protocol_errors(peer_factory):
    p = peer_factory(b"\r", {b"STS": b"\x01\x02\r"})
    t = Transport(p.url, device="tube", framing=CR_FRAMING, timeout_s=0.2, retries=0)
    t.open()
    with pytest.raises(ProtocolError, match="control characters"):
        t.query("STS")
    t.close()


def test_closed_port_and_bad_url():
    t = Transport("socket://127.0.0.1:1", device="tube", framing=CR_FRAMING, timeout_s=0.2)
    with pytest.raises(TransportClosed, match="tube"):
        t.open()
    with pytest.raises(TransportClosed, match="not open"):
        t.query("STS")
    with pytest.raises(ValueError, match="timeout_s"):
        Transport("socket://127.0.0.1:1", device="x", framing=CR_FRAMING, timeout_s=0)


def test_lock_serialises_exchanges(peer_factory):
    p = peer_factory(b"\r", {b"A": b"A 1\r", b"B": b"B 2\r"})
    t = Transport(p.url, device="tube", framing=CR_FRAMING, timeout_s=1.0)
    t.open()
    errors = []

    def worker(cmd, want):
        for _ in range(30):
            r = t.query(cmd)
            if r != [want]:
                errors.append(r)

    ths = [threading.Thread(target=worker, args=("A", "A 1")),
           threading.Thread(target=worker, args=("B", "B 2"))]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    assert errors == []
    t.close()


def test_reconnect_after_peer_drop():
    from drivers.emulators import TubeEmulator
    emu = TubeEmulator(warmup_needed=False)
    try:
        t = Transport(emu.serve_tcp(), device="tube", framing=CR_FRAMING, timeout_s=0.3)
        t.open()
        assert t.query("STS") == ["STS 2"]
        emu.inject("disconnect")
        # the retry policy reconnects transparently for an idempotent query
        assert t.query("STS") == ["STS 2"]
        emu.inject("disconnect")
        # a drop seen before the command is sent costs no retry: the command goes out once
        # on a fresh connection
        assert t.query("STS", retries=0) == ["STS 2"]
        emu.close()
        with pytest.raises(TransportClosed):
            t.query("STS", retries=0)
        emu = TubeEmulator(warmup_needed=False)
        t = Transport(emu.serve_tcp(), device="tube", framing=CR_FRAMING, timeout_s=0.3)
        t.open()
        t.reconnect()
        assert t.query("TYP") == ["TYP L9181-02"]
        t.close()
    finally:
        emu.close()
