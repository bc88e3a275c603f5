"""Pure parts of `edgeloop browse` and `edgeloop scan`: names, YAML lines, endpoint checks,
range coalescing and the scan search against a fake device (request counts, stop reasons)."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from agent.commands._browse_output import assign_names, format_yaml, matches, tag_name, yaml_scalar
from agent.commands._browse_walk import Found, finite_range
from agent.commands.browse import check_endpoint
from agent.commands.scan import Outcome, Range, Scanner, coalesce


@pytest.mark.parametrize(
    ("browse_name", "name"),
    [
        ("Pump.MotorCurrent", "pump_motor_current"),
        ("Temperature", "temperature"),
        ("PLCTemp2", "plc_temp2"),
        ("3-Phase Current", "t_3_phase_current"),
        ("Ölstand (%)", "lstand"),
        ("...", "tag"),
    ],
)
def test_tag_name(browse_name: str, name: str) -> None:
    assert tag_name(browse_name) == name


def test_assign_names_prefixes_duplicates_with_the_parent() -> None:
    found = [
        Found("Oven/Zone1/Temperature", "ns=2;i=1", "Temperature"),
        Found("Oven/Zone2/Temperature", "ns=2;i=2", "Temperature"),
        Found("Oven/Zone2/Temperature", "ns=2;i=3", "Temperature"),
        Found("Oven/Speed", "ns=2;i=4", "Speed"),
    ]
    assign_names(found)
    assert [f.name for f in found] == [
        "zone1_temperature",
        "zone2_temperature",
        "zone2_temperature_2",
        "speed",
    ]


def test_yaml_lines_round_trip_with_awkward_strings() -> None:
    f = Found("A/B", 'ns=3;s=Line{1}, "x": y', "B", name="b", type="float32", unit="%")
    f.min, f.max, f.writable, f.description = -1.5, 2e20, True, "no: really"
    g = Found("A/C", "i=2258", "C", name="c", type="string", unit="yes")
    text = format_yaml([f, g], "opc.tcp://h:4840", indent=4)
    assert all(line.startswith("    ") for line in text.splitlines())
    doc = yaml.safe_load(text)
    assert doc[0] == {
        "name": "b",
        "node": 'ns=3;s=Line{1}, "x": y',
        "type": "float32",
        "unit": "%",
        "min": -1.5,
        "max": 2e20,
        "writable": True,
        "description": "no: really",
    }
    assert doc[1] == {"name": "c", "node": "i=2258", "type": "string", "unit": "yes"}
    assert yaml_scalar("degC") == "degC" and yaml_scalar("off") == '"off"'


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("opc.tcp://10.0.0.5:4840", True),
        ("opc.tcp://plc:4840/path/x", True),
        ("opc.tcp://[::1]:4840", True),
        ("opc.tcp://plc", False),
        ("tcp://plc:4840", False),
        ("opc.tcp://:4840", False),
        ("opc.tcp://plc:port", False),
    ],
)
def test_check_endpoint(url: str, ok: bool) -> None:
    assert (check_endpoint(url) is None) is ok


def test_match_and_range() -> None:
    f = Found("Skid/Setpoints/Pump.Speed", "ns=2;s=Pump.Speed", "Pump.Speed")
    assert matches(f, "*setpoints/*") and matches(f, "ns=2;s=pump.*") and matches(f, None)
    assert not matches(f, "*Temp*")
    assert finite_range(0, 80) == (0.0, 80.0)
    assert finite_range(float("-inf"), 1) == (None, None)
    assert finite_range(5, 1) == (None, None)
    assert finite_range(None, 1) == (None, None)


# --- scan ------------------------------------------------------------------------------


def test_coalesce() -> None:
    marks = {0: ("ok", None), 1: ("ok", None), 2: ("illegal_address", 2), 4: ("timeout", None)}
    assert coalesce(marks, 0, 6) == [
        Range(0, 1, "ok"),
        Range(2, 2, "illegal_address", 2),
        Range(3, 3, "not_scanned"),
        Range(4, 4, "timeout"),
        Range(5, 5, "not_scanned"),
    ]


class FakeDevice:
    """Answers reads of addresses inside `ok` (a set); anything else: exception 0x02,
    or silence for addresses in `silent`."""

    def __init__(self, ok: set[int], silent: set[int] = frozenset(), code: int = 2) -> None:
        self.ok, self.silent, self.code = ok, silent, code
        self.reads: list[tuple[int, int]] = []

    async def read(self, a: int, n: int) -> Outcome:
        self.reads.append((a, n))
        span = set(range(a, a + n))
        if span & self.silent:
            return Outcome("timeout")
        if span <= self.ok:
            return Outcome("ok")
        return Outcome("exception", self.code)


def _scan(dev: FakeDevice, start: int, count: int, block: int = 125, **kw):
    s = Scanner(dev.read, kw.pop("max_requests", 10_000), **kw)
    marks, stopped = asyncio.run(s.scan(start, count, block))
    return s, coalesce(marks, start, count), stopped


def test_scan_finds_islands_exactly() -> None:
    ok = set(range(0, 18)) | set(range(40, 44)) | {300} | set(range(500, 1000))
    dev = FakeDevice(ok)
    s, ranges, stopped = _scan(dev, 0, 1000)
    assert stopped is None
    assert [(r.start, r.end) for r in ranges if r.status == "ok"] == [
        (0, 17),
        (40, 43),
        (300, 300),
        (500, 999),
    ]
    assert {r.status for r in ranges} == {"ok", "illegal_address"}
    # a fully answering block costs one request; the whole scan stays near one per address
    assert s.requests == len(dev.reads) < 600
    assert all(n <= 125 for _, n in dev.reads)


def test_scan_budget_and_timeouts_are_told_apart() -> None:
    s, ranges, stopped = _scan(FakeDevice(set(range(10))), 0, 500, max_requests=20)
    assert s.requests == 20 and "max-requests" in stopped
    assert ranges[0] == Range(0, 9, "ok") and ranges[-1].status == "not_scanned"

    dev = FakeDevice(set(range(0, 50)), silent={60})
    s, ranges, stopped = _scan(dev, 0, 100, block=125, max_timeouts=3)
    assert stopped is None
    assert Range(60, 60, "timeout") in ranges and s.timeouts >= 1
    assert ranges[0] == Range(0, 49, "ok")

    s, ranges, stopped = _scan(FakeDevice(set(), silent=set(range(1000))), 0, 1000, max_timeouts=3)
    assert s.requests == 3 and "3 timeouts in a row" in stopped
    assert ranges == [Range(0, 30, "timeout"), Range(31, 999, "not_scanned")]  # 125, 62, 31


def test_scan_ends_a_table_on_illegal_function_or_gateway() -> None:
    for code, says in ((1, "ILLEGAL_FUNCTION"), (0x0B, "gateway")):
        s, ranges, stopped = _scan(FakeDevice(set(), code=code), 0, 300)
        assert s.requests == 1 and says in stopped
        assert ranges == [Range(0, 124, "exception", code), Range(125, 299, "not_scanned")]
