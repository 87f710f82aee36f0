"""PI GCS driver: exact wire bytes, referencing, motion with finite velocity, stop, errors."""
import time

import pytest

from drivers.stage import (
    GcsAxis,
    GcsController,
    GcsError,
    ProtocolError,
    StageLimitError,
    StageTimeout,
    TransportTimeout,
)

SCRIPT = {
    b"*IDN?": b"PI C-863 test\n", b"SAI?": b"1 \n2\n", b"ERR?": b"0\n",
    b"POS? 1": b"1=12.5\n", b"MOV? 1": b"1=10\n", b"ONT? 1": b"1=1\n", b"FRF? 1": b"1=1\n",
    b"SVO? 1": b"1=1\n", b"TMN? 1": b"1=-100\n", b"TMX? 1": b"1=100\n", b"VEL? 1": b"1=0.5\n",
    b"\x05": b"2\n", b"\x07": b"B1\n",
}


@pytest.fixture
def scripted(peer_factory):
    peer = peer_factory(b"\n", SCRIPT, control=frozenset({5, 7, 24}))
    c = GcsController(peer.url, timeout_s=0.3)
    c.connect()
    yield c, peer
    c.close()


def test_connect_exact_bytes(scripted):
    c, peer = scripted
    assert bytes(peer.received) == b"*IDN?\nSAI?\nERR?\n"
    assert c.axes == ["1", "2"] and c.idn == "PI C-863 test"


@pytest.mark.parametrize("call, sent, result", [
    (lambda a: a.position, b"POS? 1\n", 12500.0),
    (lambda a: a.target, b"MOV? 1\n", 10000.0),
    (lambda a: a.on_target, b"ONT? 1\n", True),
    (lambda a: a.referenced, b"FRF? 1\n", True),
    (lambda a: a.servo, b"SVO? 1\n", True),
    (lambda a: a.velocity, b"VEL? 1\n", 500.0),
    (lambda a: a.is_moving, b"\x05", False),           # mask 2 = axis "2" moves, not "1"
    (lambda a: a.ctl.ready(), b"\x07", True),
    (lambda a: a.limits, b"TMN? 1\nTMX? 1\n", (-100000.0, 100000.0)),
    (lambda a: setattr(a, "servo", True), b"SVO 1 1\nERR?\n", None),
    (lambda a: setattr(a, "velocity", 250.0), b"VEL 1 0.25\nERR?\n", None),
    (lambda a: a.move_to(2000.0, wait=False), b"TMN? 1\nTMX? 1\nMOV 1 2\nERR?\n", None),
    (lambda a: a.move_by(-500.0, wait=False),
     b"MOV? 1\nTMN? 1\nTMX? 1\nMVR 1 -0.5\nERR?\n", None),
    (lambda a: a.stop(), b"\x18ERR?\n", None),
    (lambda a: a.ctl.error(), b"ERR?\n", 0),
])
def test_each_command_exact_bytes(scripted, call, sent, result):
    c, peer = scripted
    # controller configured in mm, axis driven in um
    ax = GcsAxis(c, "1", unit="um", scale=1000.0)
    n0 = len(peer.received)
    out = call(ax)
    assert bytes(peer.received[n0:]) == sent
    if result is not None:
        assert out == result


def test_frf_exact_bytes(peer_factory):
    script = dict(SCRIPT)
    peer = peer_factory(b"\n", script, control=frozenset({5, 7, 24}))
    c = GcsController(peer.url, timeout_s=0.3)
    c.connect()
    n0 = len(peer.received)
    GcsAxis(c, "1").reference(timeout_s=1)
    assert bytes(peer.received[n0:]) == b"SVO? 1\nFRF 1\nERR?\nFRF? 1\n"
    c.close()


def test_silent_query_reports_controller_error(peer_factory):
    script = dict(SCRIPT)
    script[b"ERR?"] = b"15\n"
    peer = peer_factory(b"\n", {**script, b"ERR?": b"0\n"}, control=frozenset({5, 7, 24}))
    c = GcsController(peer.url, timeout_s=0.1)
    c.connect()
    peer.replies[b"ERR?"] = b"15\n"
    with pytest.raises(GcsError, match="error 15 .invalid axis"):
        c.query("POS? 9")
    c.close()


def test_reference_and_moves_with_finite_velocity(gcs, gcs_emu):
    z = GcsAxis(gcs, "1", unit="um", soft_limits=(-400.0, 400.0))
    assert not z.referenced
    with pytest.raises(GcsError, match="error 5"):
        z.move_to(10.0)
    z.reference(timeout_s=5.0)
    assert z.referenced and z.position == 0.0 and z.servo
    t0 = time.monotonic()
    z.move_to(300.0)                          # 300 um at 2000 um/s: about 0.15 s
    assert time.monotonic() - t0 >= 0.12
    assert z.position == pytest.approx(300.0) and gcs_emu.position("1") == 300.0
    z.move_by(-50.0)
    assert z.position == pytest.approx(250.0)
    z.velocity = 1000.0
    assert z.velocity == 1000.0


def test_out_of_limits_refused_before_sending(z_axis, gcs_emu):
    n = len(gcs_emu.commands_received)
    with pytest.raises(StageLimitError, match="above the upper limit 400 um"):
        z_axis.move_to(450.0)
    with pytest.raises(StageLimitError, match="below the lower limit -400 um"):
        z_axis.move_by(-401.0)
    with pytest.raises(ValueError, match="finite"):
        z_axis.move_to(float("inf"))
    assert not any(c.startswith(("MOV ", "MVR ")) for c in gcs_emu.commands_received[n:])


def test_controller_limit_error_without_soft_limits(gcs):
    ax = GcsAxis(gcs, "2", unit="deg")
    ax.reference(timeout_s=5)
    with pytest.raises(StageLimitError, match="180 deg"):
        ax.move_to(181)
    # bypass the driver check: the controller itself answers error 7
    with pytest.raises(GcsError, match="error 7"):
        gcs.command("MOV 2 999")


def test_stop_during_move(z_axis, gcs_emu):
    z_axis.velocity = 500.0
    z_axis.move_to(-350.0, wait=False)
    time.sleep(0.1)
    assert z_axis.is_moving and not z_axis.on_target
    z_axis.stop()
    p = z_axis.position
    assert -350.0 < p < -10.0
    time.sleep(0.1)
    assert gcs_emu.position("1") == pytest.approx(p, abs=1e-5)
    assert z_axis.on_target and not z_axis.is_moving
    assert z_axis.ctl.error() == 0      # stop's error 10 was read and cleared


def test_wait_on_target_timeout_stops_axis(z_axis, gcs_emu):
    z_axis.velocity = 100.0
    with pytest.raises(StageTimeout, match="axis stopped"):
        z_axis.move_to(300.0, timeout_s=0.15)
    assert not gcs_emu.is_moving("1")


def test_motion_mask_bits(gcs, gcs_emu):
    a2 = GcsAxis(gcs, "2", unit="deg")
    a2.reference(timeout_s=5)
    a2.velocity = 90.0
    a2.move_to(90.0, wait=False)
    assert gcs.motion_mask() == 0b10 and a2.is_moving
    gcs.stop_all()
    assert gcs.motion_mask() == 0


def test_unknown_command_and_bad_syntax_errors(gcs):
    with pytest.raises(GcsError, match="error 2"):
        gcs.command("XYZ 1")
    with pytest.raises(GcsError, match="error 1"):
        gcs.command("MOV 1")
    with pytest.raises(ValueError, match="no axis '7'"):
        gcs.query_axes("POS?", ["7"])


@pytest.mark.parametrize("fault, exc", [("no_reply", TransportTimeout),
                                        ("garbage", ProtocolError),
                                        ("partial_line", TransportTimeout)])
def test_link_faults(gcs, gcs_emu, fault, exc):
    ax = GcsAxis(gcs, "1")
    gcs_emu.inject(fault)
    with pytest.raises(exc, match="PI GCS controller"):
        _ = ax.position
    gcs_emu.clear_faults()
    assert ax.position == 120.0


def test_reconnect_after_disconnect(gcs, gcs_emu):
    ax = GcsAxis(gcs, "1")
    gcs_emu.inject("disconnect")
    assert ax.position == 120.0      # the retry policy reconnected
    gcs.reconnect()
    assert gcs.axes == ["1", "2"]


def test_pty(gcs_emu):
    c = GcsController(gcs_emu.serve_pty(), timeout_s=0.5)
    c.connect()
    assert GcsAxis(c, "1").position == 120.0
    c.close()
