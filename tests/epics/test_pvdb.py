"""The PV table without a server: what a put is checked against, access rules, file templates."""
from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from xinstrument.epics.ioc import _format_template
from xinstrument.epics.pvdb import MAJOR, PV, PutRefused, PVTable, parse_acf


@pytest.mark.parametrize("kind, kw, raw, words", [
    ("float", {"limits": (40.0, 130.0), "units": "kV"}, 500.0, ["500 kV", "40..130 kV"]),
    ("float", {}, math.nan, ["nan", "finite"]),
    ("float", {}, -math.inf, ["-inf", "finite"]),
    ("float", {}, "fifty", ["'fifty'", "not a number"]),
    ("float", {}, np.array([1.0, 2.0]), ["one value", "2"]),
    ("int", {"limits": (1, 16)}, 2.5, ["2.5", "not an integer"]),
    ("int", {"limits": (1, 16)}, 17, ["17", "1..16"]),
    ("enum", {"choices": ("Off", "On")}, 2, ["choice 2", "0..1"]),
    ("enum", {"choices": ("Off", "On")}, "Maybe", ["'Maybe'", "Off, On"]),
    ("string", {}, "x" * 40, ["40 characters", "at most 39"]),
    ("char", {"length": 8}, "abcdefghij", ["10 characters", "at most 7"]),
])
def test_bad_values_are_refused_naming_the_value_and_the_limit(kind, kw, raw, words):
    pv = PV("P", kind, 0 if kind != "string" and kind != "char" else "", **kw)
    with pytest.raises(PutRefused) as err:
        pv.parse(raw)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_good_values_are_parsed_to_the_pv_type():
    assert PV("F", "float", 0.0).parse(np.array([2.5])) == 2.5
    assert PV("I", "int", 0).parse(3.0) == 3
    assert PV("E", "enum", 0, choices=("Off", "On")).parse("On") == 1
    assert PV("C", "char", "", length=16).parse(list(b"abc\0zz")) == "abc"


def test_a_refused_put_leaves_the_value_alarms_and_reports():
    table = PVTable("T:")
    reports = []
    table.on_refused = lambda pv, raw, why: reports.append(why)
    calls = []

    async def on_put(v):
        calls.append(v)
        if v > 10:
            raise PutRefused(f"{v:g} above 10")
    pv = table.add(PV("X", "float", 1.0, on_put=on_put))
    asyncio.run(table.client_put(pv, 5.0))
    assert pv.value == 5.0 and pv.severity == 0
    with pytest.raises(PutRefused, match="20 above 10"):
        asyncio.run(table.client_put(pv, 20.0))
    assert pv.value == 5.0 and pv.severity == MAJOR and reports == ["20 above 10"]
    with pytest.raises(PutRefused, match="not a finite number"):
        asyncio.run(table.client_put(pv, math.nan))
    assert calls == [5.0, 20.0]                      # NaN never reached the action
    ro = table.add(PV("R", "float", 0.0))
    with pytest.raises(PutRefused, match="read-only"):
        asyncio.run(table.client_put(ro, 1.0))


def test_write_hosts_rules():
    rules = parse_acf("HAG(w) { ws1, ws2 }\nASG(DEFAULT) {\n RULE(1, READ)\n"
                      " RULE(1, WRITE) { HAG(w) }\n}\n")
    assert rules.may_write("ws1") and rules.may_write("WS2")
    assert not rules.may_write("other") and rules.may_read("other")
    everyone = parse_acf("ASG(DEFAULT) { RULE(1, WRITE) }")
    assert everyone.may_write("anyone")
    read_only = parse_acf("ASG(DEFAULT) { RULE(1, READ) }")
    assert not read_only.may_write("anyone") and read_only.may_read("anyone")
    with pytest.raises(ValueError, match="ASG"):
        parse_acf("HAG(w) { a }")


@pytest.mark.parametrize("template, expected", [
    ("%s%s_%6.6d.h5", "/d/name_000007.h5"),
    ("%s%s.h5", "/d/name.h5"),
    ("%s%s_%d.h5", "/d/name_7.h5"),
])
def test_file_templates_take_path_name_and_number(template, expected):
    assert _format_template(template, "/d/", "name", 7) == expected


def test_a_template_with_more_than_three_fields_is_refused():
    with pytest.raises(ValueError):
        _format_template("%s%s%d%d", "/d/", "n", 1)
