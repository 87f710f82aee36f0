"""The text dialect against the transcript of a real controller ("Micro Focus X-Ray Controller,
Version 1.03p"): every command of its help text is known to the dialect, every reply it printed
is parsed by the driver and produced by the emulator in the matching state, and the driver runs
against a peer that answers only with the transcript's own lines."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from drivers.emulators import TubeEmulator
from drivers.xray import HamamatsuTube, TubeError, TubeLimitError, TubeState
from drivers.xray.tables import DIALECTS, TEXT_REPLIES

# replies the emulator prints in states the transcript does not show (drivers/README.md)
UNVERIFIED = {"SRB": {"NOT READY"}, "DAG": {"AGING 3 1 DONE"}}

DATA = Path(__file__).parent / "data" / "microfocus-text-dialect.md"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "protocols" / DATA.name


def transcript() -> tuple[set[str], dict[str, list[str]]]:
    """(commands of the help text, command -> replies seen) from the transcript notes."""
    text = DATA.read_text()
    help_part = text.split("## Help text", 1)[1].split("## Observed", 1)[0]
    commands = {m.split("_")[0] for m in re.findall(r"`([A-Z]{3}(?:_[^`]*)?)`", help_part)}
    commands |= set(re.findall(r"\b([A-Z]{3})\b", help_part.split("Status commands:", 1)[1]))
    seen: dict[str, list[str]] = {}
    for row in text.split("## Observed replies", 1)[1].splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            seen[cells[0].strip("`")] = re.findall(r"`([^`]+)`", cells[2])
    return commands, seen


def test_vendored_transcript_matches_the_shared_one():
    if not SHARED.is_file():
        pytest.skip("shared/protocols not beside the repository")
    assert DATA.read_text() == SHARED.read_text()


def test_command_set_is_the_transcripts():
    commands, seen = transcript()
    assert len(commands) == 25 and {"HIV", "AGN", "SRL", "DAG", "CXT"} <= commands
    text = DIALECTS["text"]
    assert text.commands == frozenset(commands | {"HLP"})
    assert text.baudrate == 9600 and text.eol == b"\r"
    assert set(seen) <= set(TEXT_REPLIES)


def test_every_seen_reply_is_parsed_by_the_driver():
    _, seen = transcript()
    err = re.compile(DIALECTS["text"].error_reply)
    for command, replies in seen.items():
        pattern = re.compile(TEXT_REPLIES[command].pattern)
        for reply in replies:
            assert pattern.fullmatch(reply) or err.fullmatch(reply), (command, reply)


def _replies(emu: TubeEmulator, commands) -> dict[str, str]:
    return {c: emu._handle(c.encode()).decode().removesuffix("\r") for c in commands}


def test_emulator_answers_as_the_transcript_in_each_state():
    """Power-on (aging due), warmed up, LOCAL: the union of what the emulator prints equals
    what the real unit printed, command by command."""
    _, seen = transcript()
    produced: dict[str, set[str]] = {c: set() for c in seen}
    emu = TubeEmulator(dialect="text", warmup_duration_s=0.05)
    try:
        emu._kv_set, emu._ua_set = 90.0, 2.0     # the presets the transcript shows
        status = [c for c in seen if c not in ("XON", "XOF", "RST")]
        for c, r in _replies(emu, status + ["XON", "XOF", "RST"]).items():
            produced[c].add(r)                   # power-on: aging due, XON refused
        assert emu._handle(b"AGN 3 1") == b"AGN 3 1\r"
        time.sleep(0.1)
        for c, r in _replies(emu, status).items():
            produced[c].add(r)                   # aged: standby, ready
        r = _replies(emu, ["XON", "STX", "XOF", "XOF", "STX"])
        assert r == {"XON": "XON", "STX": "X-RAY OFF", "XOF": "XOF"}
        produced["XON"].add("XON")
        emu.set_local()
        produced["SRL"].add(_replies(emu, ["SRL"])["SRL"])
        assert _replies(emu, ["XON", "XOF"]) == {"XON": "ERROR", "XOF": "XOF"}
    finally:
        emu.close()
    for command, replies in seen.items():
        assert set(replies) <= produced[command], command
        # words the unit never showed are this product's reading, listed in drivers/README.md
        assert produced[command] - set(replies) <= UNVERIFIED.get(command, set()), command


def test_driver_against_the_transcript_lines(peer_factory):
    """A peer that knows nothing but the transcript's replies (power-on state)."""
    _, seen = transcript()
    script = {c.encode(): (r[0] + "\r").encode() for c, r in seen.items()}
    script[b"XON"] = b"ERROR\r"                  # refused: aging is due
    script[b"SRL"] = b"REMOTE\r"
    script[b"CUR 40"] = b"CUR 40\r"            # set commands echo (this product's reading)
    peer = peer_factory(b"\r", script)
    tube = HamamatsuTube(peer.url, dialect="text", timeout_s=0.5, heartbeat=False)
    tube.connect()
    try:
        st = tube.status()
        assert st.state is TubeState.WARMUP_NEEDED          # NOT READY + AGING 3 1 YET
        assert (st.voltage_kv, st.current_ua) == (0.0, 0.0)
        assert (st.voltage_setpoint_kv, st.current_setpoint_ua) == (90.0, 2.0)
        assert st.interlock_closed and st.error_code is None
        assert tube.ready is True and tube.remote is True
        with pytest.raises(TubeLimitError, match="2 uA outside the tube limit"):
            tube.xray_on()                       # the 2 uA preset is below the model's 10 uA
        tube.set_current_ua(40)
        with pytest.raises(TubeError, match=r"X-ray on refused \(ERROR\).*WARMUP_NEEDED"):
            tube.xray_on()
        tube.xray_off()
        assert peer.commands[-1] == b"XOF"
        n0 = len(peer.commands)
        tube.reset_overload()
        assert peer.commands[n0:] == [b"RST"]
    finally:
        tube.close()


def test_driver_with_the_emulator_end_to_end():
    emu = TubeEmulator(dialect="text", warmup_duration_s=0.2)
    try:
        t = HamamatsuTube(emu.serve_tcp(), dialect="text", timeout_s=0.5, heartbeat=False)
        t.connect()
        assert t.state is TubeState.WARMUP_NEEDED and t.warmup_progress == 0.0
        t.warm_up(timeout_s=5, poll_s=0.02)
        assert any(c.startswith("AGN 3 1") for c in emu.commands_received)
        assert t.state is TubeState.STANDBY and t.warmup_progress == 1.0
        t.set_voltage_kv(55.5)
        assert emu.commands_received[-1] == "HIV 555"       # 0.1 kV counts
        t.set_current_ua(60)
        t.set_focus_mode(1)
        assert emu.commands_received[-1] == "CFL" and emu.focus_mode == 1
        with pytest.raises(Exception, match="focus modes"):
            t.set_focus_mode(2)
        t.xray_on()
        time.sleep(0.4)
        st = t.status()
        assert st.state is TubeState.XRAY_ON and st.voltage_kv == pytest.approx(55.5)
        emu.set_local()
        with pytest.raises(TubeError, match="LOCAL"):
            t.set_voltage_kv(60)
        t.xray_off()                                        # always sent, also in LOCAL
        assert not emu.xray_on
        emu.set_local(False)
        emu.open_interlock()
        assert t.interlock_closed is False
        with pytest.raises(TubeError, match="interlock open"):
            t.xray_on()
        t.close()
    finally:
        emu.close()
