"""`edgeloop scan` against the hw_sim Modbus PLC on loopback: the answering ranges are the
simulator's tables and nothing beyond, exceptions and timeouts are told apart, the request
budget and the rate hold, nothing is ever written, bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.cli import main
from hw_sim import pointmap
from hw_sim.modbus_server import TABLE_SIZES
from tests.fixtures.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def scan(capsys: pytest.CaptureFixture[str], sim, *argv: str) -> tuple[int, dict, str]:
    rc = main(["scan", "--host", sim.host, "--port", str(sim.port), "--json", *argv])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if out else {}), err


def _ok(doc: dict, table: str) -> list[tuple[int, int]]:
    return [(r["start"], r["end"]) for r in doc["tables"][table]["ranges"] if r["status"] == "ok"]


@pytest.mark.parametrize("unit", [pointmap.HEATER_UNIT, pointmap.PUMP_UNIT])
def test_scan_finds_the_simulator_tables_and_nothing_beyond(modbus_sim_shared, capsys, unit):
    sim = modbus_sim_shared
    rc, doc, err = scan(capsys, sim, "--unit", str(unit), "--count", "300", "--rate", "5000")
    assert rc == 0, err
    for table in ("holding", "input"):
        size = TABLE_SIZES[unit][table]
        assert _ok(doc, table) == ([(0, size - 1)] if size else []), table
        rest = [r for r in doc["tables"][table]["ranges"] if r["status"] != "ok"]
        assert rest == [
            {"start": size, "end": 299, "count": 300 - size, "status": "illegal_address", "code": 2}
        ]
        assert doc["tables"][table]["stopped"] is None
        # every register the point map serves lies inside what answered
        for p in pointmap.modbus_points(unit):
            if p.table == table:
                assert p.address + p.width <= size, p.name


def test_scan_bits_and_text_output(modbus_sim_shared, capsys):
    sim = modbus_sim_shared
    rc = main(["scan", "--host", sim.host, "--port", str(sim.port), "--table", "coil",
               "--table", "discrete", "--count", "40", "--rate", "5000"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "unit 1 coil: 16 bits answer" in out and "unit 1 discrete: 16 bits answer" in out
    assert "0..15" in out and "16..39" in out and "ILLEGAL_DATA_ADDRESS" in out


def test_scan_is_read_only(modbus_sim, capsys, monkeypatch):
    from drivers.modbus import ModbusDriver

    def no_writes(*a, **k):
        raise AssertionError("scan wrote")

    monkeypatch.setattr(ModbusDriver, "write", no_writes)
    monkeypatch.setattr(ModbusDriver, "_send_write", no_writes)
    before = dict(modbus_sim.plant.values())
    rc, _doc, err = scan(capsys, modbus_sim, "--table", "holding", "--table", "coil",
                        "--count", "200", "--rate", "5000")  # fmt: skip
    assert rc == 0, err
    after = modbus_sim.plant.values()
    for p in pointmap.modbus_points(1):
        if p.writable:
            assert after[p.name] == before[p.name], p.name


def test_budget_and_rate_are_kept(modbus_sim_shared, capsys):
    sim = modbus_sim_shared
    t0 = time.monotonic()
    _rc, doc, _err = scan(capsys, sim, "--table", "input", "--start", "90", "--count", "40",
                        "--max-requests", "12", "--rate", "40")  # fmt: skip
    elapsed = time.monotonic() - t0
    res = doc["tables"]["input"]
    assert res["requests"] == 12 and "max-requests" in res["stopped"]
    assert res["ranges"][-1]["status"] == "not_scanned"
    assert elapsed >= 11 / 40 * 0.9  # 12 requests at 40/s: at least 11 gaps of 25 ms


def test_timeouts_are_told_apart_from_exceptions(modbus_sim_shared, capsys):
    sim = modbus_sim_shared
    sim.misbehave("no_response")
    rc, doc, _err = scan(capsys, sim, "--table", "holding", "--count", "50", "--timeout", "0.2",
                        "--max-timeouts", "3", "--rate", "5000")  # fmt: skip
    assert rc == 1
    res = doc["tables"]["holding"]
    assert "3 timeouts in a row" in res["stopped"]
    assert {r["status"] for r in res["ranges"]} <= {"timeout", "not_scanned"}
    assert res["ranges"][0]["status"] == "timeout"
    sim.behave()
    sim.misbehave("exception", code=4)
    rc, doc, _err = scan(capsys, sim, "--table", "holding", "--count", "4", "--rate", "5000")
    assert rc == 1
    assert {(r["status"], r["code"]) for r in doc["tables"]["holding"]["ranges"]} == {
        ("exception", 4)
    }


def test_unknown_unit_behind_the_gateway(modbus_sim_shared, capsys):
    rc, doc, _err = scan(capsys, modbus_sim_shared, "--unit", "77", "--rate", "5000")
    assert rc == 1
    assert "0x0B" in doc["tables"]["holding"]["stopped"]
    assert doc["tables"]["holding"]["requests"] == 1


@pytest.mark.parametrize(
    ("argv", "rc", "says"),
    [
        (["--host", "127.0.0.1", "--port", "{free}"], 3, "cannot connect"),
        (["--host", "nosuchhost.invalid"], 3, "cannot connect"),
        (["--host", "127.0.0.1", "--port", "70000"], 2, "not a TCP port"),
        (["--host", "127.0.0.1", "--unit", "300"], 2, "not a unit id"),
        (["--host", "127.0.0.1", "--start", "65500", "--count", "100"], 2, "0..65535"),
        (["--host", "127.0.0.1", "--rate", "0"], 2, "must be > 0"),
    ],
)
def test_bad_input_is_one_clear_line(argv, rc, says):
    argv = [a.replace("{free}", str(free_port())) for a in argv]
    res = subprocess.run(
        [sys.executable, "-m", "agent", "scan", *argv, "--timeout", "0.5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == rc, res.stderr
    assert res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert says in res.stderr


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["scan", "--help"])
    assert e.value.code == 0
    assert "--max-requests" in capsys.readouterr().out
