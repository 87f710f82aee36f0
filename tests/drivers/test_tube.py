"""Hamamatsu tube driver: exact wire bytes, limits, and emulator-backed state machine."""
import time

import pytest

from drivers.emulators import TubeEmulator
from drivers.xray import (
    HamamatsuTube,
    ProtocolError,
    TransportClosed,
    TransportTimeout,
    TubeCommandError,
    TubeError,
    TubeLimitError,
    TubeLimits,
    TubeState,
)

NUMERIC_SCRIPT = {
    b"TYP": b"TYP L9181-02\r", b"SPV": b"SPV 80\r", b"SPC": b"SPC 60\r", b"CFS": b"CFS 1\r",
    b"STS": b"STS 3\r", b"SAR": b"SAR 3 79 38\r", b"SVI": b"SVI 79 38\r", b"SHV": b"SHV 79\r",
    b"SCU": b"SCU 38\r", b"HIV 90": b"HIV 90\r", b"CUR 100": b"CUR 100\r", b"XON": b"XON\r",
    b"XOF": b"XOF\r", b"WUP": b"WUP\r", b"SWS": b"SWS 1\r", b"SWE": b"SWE 42\r",
    b"CFS 2": b"CFS 2\r", b"SIN": b"SIN 1\r", b"SNR": b"SNR 0\r", b"SPH": b"SPH 0\r",
    b"SER": b"SER 0\r", b"RST": b"RST\r",
}


@pytest.fixture
def scripted_tube(peer_factory):
    peer = peer_factory(b"\r", NUMERIC_SCRIPT)
    t = HamamatsuTube(peer.url, timeout_s=0.3, heartbeat=False)
    t.connect()
    yield t, peer
    t.close()


def test_connect_reads_model_and_setpoints_exact_bytes(scripted_tube):
    t, peer = scripted_tube
    assert bytes(peer.received) == b"TYP\rSPV\rSPC\rCFS\r"
    assert t.focus_mode == 1


@pytest.mark.parametrize("call, sent, result", [
    (lambda t: t.state, b"STS\r", TubeState.XRAY_ON),
    (lambda t: t.voltage_kv, b"SHV\r", 79.0),
    (lambda t: t.current_ua, b"SCU\r", 38.0),
    (lambda t: t.power_w, b"SVI\r", pytest.approx(79 * 38e-3)),
    (lambda t: t.voltage_setpoint_kv, b"SPV\r", 80.0),
    (lambda t: t.current_setpoint_ua, b"SPC\r", 60.0),
    (lambda t: t.interlock_closed, b"SIN\r", True),
    (lambda t: t.focus_mode, b"CFS\r", 1),
    (lambda t: t.warmup_progress, b"SWE\r", 0.42),
    (lambda t: t.errors(), b"SER\r", []),
    (lambda t: t.set_voltage_kv(90), b"HIV 90\r", None),
    (lambda t: t.set_current_ua(100), b"CUR 100\r", None),
    (lambda t: t.xray_on(), b"XON\r", None),
    (lambda t: t.xray_off(), b"XOF\r", None),
    (lambda t: t.start_warm_up(), b"WUP\r", None),
    (lambda t: t.reset_overload(), b"RST\r", None),
    (lambda t: t._fields("SWS"), b"SWS\r", ["1"]),
    (lambda t: t._fields("SNR"), b"SNR\r", ["0"]),
    (lambda t: t._fields("SPH"), b"SPH\r", ["0"]),
])
def test_each_command_exact_bytes(scripted_tube, call, sent, result):
    t, peer = scripted_tube
    n0 = len(peer.received)
    out = call(t)
    assert bytes(peer.received[n0:]) == sent
    if result is not None:
        assert out == result


def test_status_snapshot_exact_bytes(scripted_tube):
    t, peer = scripted_tube
    n0 = len(peer.received)
    st = t.status()
    assert bytes(peer.received[n0:]) == b"SAR\rSWE\rSER\rSPV\rSPC\rCFS\rSIN\r"
    assert (st.state, st.voltage_kv, st.current_ua, st.voltage_setpoint_kv,
            st.current_setpoint_ua, st.focus_mode, st.interlock_closed, st.warmup_progress,
            st.error_code) == (TubeState.XRAY_ON, 79.0, 38.0, 80.0, 60.0, 1, True, 0.42, None)


def test_focus_mode_exact_bytes(scripted_tube):
    t, peer = scripted_tube
    n0 = len(peer.received)
    t.set_focus_mode(2)
    assert bytes(peer.received[n0:]) == b"CFS 2\r"


def test_limits_refused_before_sending(scripted_tube):
    t, peer = scripted_tube
    n0 = len(peer.received)
    with pytest.raises(TubeLimitError, match="130 kV"):
        t.set_voltage_kv(131)
    with pytest.raises(TubeLimitError, match="300 uA"):
        t.set_current_ua(301)
    # 80 kV x 250 uA = 20 W > 16 W of focus mode 1
    with pytest.raises(TubeLimitError, match="16 W power limit of focus mode 1"):
        t.set_current_ua(250)
    with pytest.raises(TubeLimitError, match="focus mode 7"):
        t.set_focus_mode(7)
    # 80 kV x 60 uA = 4.8 W > 4 W of focus mode 0
    with pytest.raises(TubeLimitError, match="4 W power limit of focus mode 0"):
        t.set_focus_mode(0)
    with pytest.raises(ValueError, match="finite"):
        t.set_voltage_kv(float("nan"))
    with pytest.raises(TypeError, match="number"):
        t.set_current_ua("lots")
    assert bytes(peer.received[n0:]) == b""


def test_wrong_model_refused(peer_factory):
    peer = peer_factory(b"\r", {b"TYP": b"TYP L12161-07\r"})
    t = HamamatsuTube(peer.url, model="L9181-02", timeout_s=0.2, heartbeat=False)
    with pytest.raises(TubeError, match="L12161-07"):
        t.connect()
    assert not t.connected


def test_site_limits_must_lie_inside_model():
    with pytest.raises(TubeLimitError, match="envelope"):
        HamamatsuTube("socket://127.0.0.1:1", limits=TubeLimits(40, 140, 10, 300, {0: 4.0}))
    with pytest.raises(ValueError, match="dialect"):
        HamamatsuTube("socket://127.0.0.1:1", dialect="klingon")
    with pytest.raises(ValueError, match="model"):
        HamamatsuTube("socket://127.0.0.1:1", model="L0000")


def test_model_table_entries():
    lim = HamamatsuTube("socket://127.0.0.1:1", model="L9181-02").limits
    assert (lim.kv_max, lim.ua_max, max(lim.max_power_w_by_focus.values())) == (130, 300, 39)
    assert lim.max_power_w_by_focus == {0: 4.0, 1: 16.0, 2: 39.0}
    lim = HamamatsuTube("socket://127.0.0.1:1", model="L12161-07").limits
    assert (lim.kv_max, lim.ua_max, max(lim.max_power_w_by_focus.values())) == (150, 500, 75)


# --- emulator-backed behaviour -------------------------------------------------------------
def test_warm_up_with_progress(tube, tube_emu):
    assert tube.state is TubeState.WARMUP_NEEDED
    with pytest.raises(TubeError, match="WARMUP_NEEDED"):
        tube.xray_on()
    seen = []
    tube.warm_up(progress_cb=seen.append, timeout_s=5.0, poll_s=0.02)
    assert tube.state is TubeState.STANDBY
    assert seen[-1] == 1.0 and len(seen) >= 3
    assert seen == sorted(seen) and 0.0 <= seen[0] < 0.5


def test_xray_on_ramps_to_setpoint(warm_tube, tube_emu):
    warm_tube.set_focus_mode(2)
    warm_tube.set_voltage_kv(100)
    warm_tube.set_current_ua(300)
    warm_tube.xray_on()
    assert tube_emu.xray_on
    time.sleep(0.7)   # 100 kV at 200 kV/s
    st = warm_tube.status()
    assert st.state is TubeState.XRAY_ON
    assert (st.voltage_kv, st.current_ua) == (100.0, 300.0)
    assert tube_emu.output_voltage_kv == 100.0 and tube_emu.focal_spot_um == 40.0
    assert warm_tube.power_w == pytest.approx(30.0)
    warm_tube.xray_off()
    assert not tube_emu.xray_on and tube_emu.output_voltage_kv == 0.0


def test_interlock_forbids_and_cuts_xrays(warm_tube, tube_emu):
    tube_emu.open_interlock()
    assert warm_tube.interlock_closed is False
    with pytest.raises(TubeError, match="interlock open"):
        warm_tube.xray_on()
    tube_emu.close_interlock()
    warm_tube.xray_on()
    tube_emu.inject("interlock_open")
    assert not tube_emu.xray_on
    assert warm_tube.state is TubeState.STANDBY
    assert warm_tube.errors() == [(2, "interlock opened during emission")]


def test_overload_needs_reset(warm_tube, tube_emu):
    warm_tube.xray_on()
    tube_emu.inject("overload")
    assert not tube_emu.xray_on
    st = warm_tube.status()
    assert st.state is TubeState.OVERLOAD and st.error_code == 1
    with pytest.raises(TubeError, match="OVERLOAD"):
        warm_tube.xray_on()
    warm_tube.reset_overload()
    assert warm_tube.state is TubeState.STANDBY and warm_tube.errors() == []
    warm_tube.xray_on()
    assert tube_emu.xray_on


def test_emulator_rejects_malformed_and_unknown(tube):
    with pytest.raises(TubeCommandError, match="ERR 2"):
        tube._fields("TYP", "extra")   # TYP takes no argument
    assert tube._transport.query("FOO") == ["ERR 1"]
    with pytest.raises(TubeCommandError) as ei:
        tube._fields("HIV", "12x")
    assert ei.value.code == 2
    with pytest.raises(TubeError, match="no 'FOO' command"):
        tube._fields("FOO")


def test_close_switches_xrays_off(tube_emu):
    t = HamamatsuTube(tube_emu.serve_tcp(), timeout_s=0.25)
    t.connect()
    t.warm_up(timeout_s=5, poll_s=0.02)
    t.xray_on()
    assert tube_emu.xray_on
    t.close()
    assert not tube_emu.xray_on


def test_controller_watchdog_when_polling_stops():
    emu = TubeEmulator(warmup_needed=False, watchdog_s=0.3)
    try:
        t = HamamatsuTube(emu.serve_tcp(), timeout_s=0.25, heartbeat=False)
        t.connect()
        t.xray_on()
        time.sleep(0.5)
        assert not emu.xray_on
        assert (3, "communication watchdog expired") in t.errors()
        t.close()
    finally:
        emu.close()


def test_heartbeat_keeps_watchdog_fed():
    emu = TubeEmulator(warmup_needed=False, watchdog_s=0.3)
    try:
        t = HamamatsuTube(emu.serve_tcp(), timeout_s=0.25, watchdog_s=0.3)
        t.connect()
        t.xray_on()
        time.sleep(0.8)
        assert emu.xray_on
        t.close()
        assert not emu.xray_on
    finally:
        emu.close()


def _on(tube, emu):
    tube.xray_on()
    assert emu.xray_on


@pytest.mark.parametrize("fault, exc", [
    ("no_reply", TransportTimeout), ("garbage", ProtocolError),
    ("partial_line", TransportTimeout), ("slow_reply", TransportTimeout),
])
def test_link_faults_raise_and_xrays_go_off(warm_tube, tube_emu, fault, exc):
    _on(warm_tube, tube_emu)
    kw = {"delay_s": 0.6} if fault == "slow_reply" else {}
    tube_emu.inject(fault, **kw)
    with pytest.raises(exc) as ei:
        warm_tube.status()
    assert warm_tube.name in str(ei.value) and "'SAR'" in str(ei.value)
    deadline = time.monotonic() + 3.0
    while tube_emu.xray_on and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not tube_emu.xray_on
    tube_emu.clear_faults()
    time.sleep(1.3 if fault == "slow_reply" else 0.0)   # let delayed replies drain
    assert warm_tube.state is TubeState.STANDBY


def test_single_garbage_reply_is_retried(warm_tube, tube_emu):
    tube_emu.inject("garbage", count=1)
    assert warm_tube.state is TubeState.STANDBY


def test_disconnect_turns_xrays_off_and_reconnect(warm_tube, tube_emu):
    _on(warm_tube, tube_emu)
    tube_emu.inject("disconnect")
    assert not tube_emu.xray_on
    assert warm_tube.state is TubeState.STANDBY    # the retry policy reconnected
    assert (3, "communication watchdog expired") in warm_tube.errors()
    warm_tube.reconnect()
    assert warm_tube.connected and warm_tube.state is TubeState.STANDBY


def test_lost_connection_is_reported(tube_emu):
    t = HamamatsuTube(tube_emu.serve_tcp(), timeout_s=0.2, heartbeat=False, retries=0)
    t.connect()
    tube_emu.close()
    with pytest.raises((TransportClosed, TransportTimeout)):
        _ = t.state
    t.close()


def test_preheat_and_self_test_states():
    emu = TubeEmulator(self_test_s=0.2, preheat_s=0.2)
    try:
        t = HamamatsuTube(emu.serve_tcp(), timeout_s=0.25, heartbeat=False)
        t.connect()
        assert t.state is TubeState.SELF_TEST and t._fields("SNR") == ["2"]
        with pytest.raises(TubeError, match="warm-up refused"):
            t.start_warm_up()
        time.sleep(0.25)
        assert t.state is TubeState.NOT_READY and t._fields("SPH") == ["1"]
        time.sleep(0.2)
        assert t.state is TubeState.WARMUP_NEEDED and t._fields("SPH") == ["0"]
        t.close()
    finally:
        emu.close()


def test_text_dialect_end_to_end():
    emu = TubeEmulator(dialect="text", warmup_duration_s=0.2)
    try:
        t = HamamatsuTube(emu.serve_tcp(), dialect="text", timeout_s=0.25, heartbeat=False)
        t.connect()
        assert t.state is TubeState.WARMUP_NEEDED and t.warmup_progress == 0.0
        t.warm_up(timeout_s=5, poll_s=0.02)
        t.set_voltage_kv(55.5)          # 0.1 kV counts on this dialect
        assert emu.commands_received[-1] == "HIV 555"
        t.set_current_ua(60)
        t.xray_on()
        time.sleep(0.4)
        st = t.status()
        assert st.state is TubeState.XRAY_ON and st.voltage_kv == pytest.approx(55.5)
        assert st.warmup_progress == 1.0
        emu.open_interlock()
        assert t.interlock_closed is False
        assert t.state is TubeState.STANDBY
        t.close()
    finally:
        emu.close()


def test_pty_endpoint():
    emu = TubeEmulator(warmup_needed=False)
    try:
        path = emu.serve_pty()
        assert path.startswith("/dev/")
        t = HamamatsuTube(path, timeout_s=0.5, heartbeat=False)
        t.connect()
        assert t.state is TubeState.STANDBY
        t.close()
    finally:
        emu.close()
