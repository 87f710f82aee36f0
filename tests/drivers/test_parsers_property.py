"""Random and malformed replies to every parser: only the drivers' own errors come out."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.stage import (
    parse_axis_values,
    parse_bool,
    parse_error_code,
    parse_float,
    parse_motion_mask,
    parse_ready,
)
from drivers.transport import ProtocolError
from drivers.xray import DIALECTS, TubeCommandError, parse_ints, parse_reply, parse_state

text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
lines = st.lists(text, min_size=0, max_size=4)
COMMANDS = sorted(DIALECTS["numeric"].commands)


@settings(max_examples=300, deadline=None)
@given(dialect=st.sampled_from(sorted(DIALECTS)), command=st.sampled_from(COMMANDS), line=text,
       n=st.one_of(st.none(), st.integers(0, 3)))
def test_tube_parsers(dialect, command, line, n):
    d = DIALECTS[dialect]
    try:
        fields = parse_reply(d, command, line)
        parse_ints(fields, n, command, line)
        if command == "STS":
            parse_state(d, fields, line)
    except (ProtocolError, TubeCommandError):
        pass


@settings(max_examples=300, deadline=None)
@given(ls=lines, axes=st.lists(st.sampled_from(["1", "2", "Z"]), max_size=3, unique=True))
def test_gcs_parsers(ls, axes):
    for fn in (lambda: parse_axis_values(ls, axes, "POS?"),
               lambda: parse_error_code(ls), lambda: parse_motion_mask(ls or [""]),
               lambda: parse_ready(ls), lambda: parse_float(ls[0] if ls else "", "POS?"),
               lambda: parse_bool(ls[0] if ls else "", "ONT?")):
        try:
            fn()
        except ProtocolError:
            pass


@pytest.mark.parametrize("bad", ["1=", "=3", "1=2=3", "1= 4", "1=nan", "1=inf"])
def test_gcs_float_rejects(bad):
    with pytest.raises(ProtocolError):
        parse_float(parse_axis_values([bad], ["1"], "POS?")["1"], "POS?")


def test_tube_parser_positive_cases():
    d = DIALECTS["numeric"]
    assert parse_reply(d, "SAR", "SAR 3 80 100") == ["3", "80", "100"]
    with pytest.raises(TubeCommandError) as ei:
        parse_reply(d, "XON", "ERR 5")
    assert ei.value.code == 5
    with pytest.raises(ProtocolError):
        parse_reply(d, "STS", "SAR 3")
    assert parse_state(DIALECTS["text"], ["STANDBY"], "STANDBY").name == "STANDBY"
