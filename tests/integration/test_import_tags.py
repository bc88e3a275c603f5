"""`edgeloop import tags.csv` on a real file in the forms PLC tools export (Modicon 3xxxx/
4xxxx/0xxxx, IEC %MW, HR0-style, bit-in-register, decimal commas, semicolons): the YAML it
prints passes `check` in a device and `read` gets good values from the simulator (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.commands.import_tags import RowError, parse_address
from tests.integration.test_cli_read_sim import edgeloop, hw_sim  # noqa: F401 - fixture

CSV = """Name;Address;Type;Unit;Scale;Min;Max;Writable;Description
Tank Temp;30001;REAL;degC;;0;120;;Tank outlet temperature
heater_power;40011;REAL;%;;0;100;yes;Heater power command
heartbeat;%MW16;WORD;;;;;1;
heater_enable;00001;BOOL;;;;;x;
watchdog_tripped;DI0;BOOL;;;;;;
status_word;IR9;UINT;;;;;;
low_flow_alarm;30010.4;BOOL;;;;;;bit 4 of status
ambient;30009;INT;degC;0,1;-40;60;;
"""


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("40001", ("holding", 0, None)),
        ("400001", ("holding", 0, None)),
        ("30010.4", ("input", 9, 4)),
        ("00001", ("coil", 0, None)),
        ("10005", ("discrete", 4, None)),
        ("%MW100", ("holding", 100, None)),
        ("%MD100", ("holding", 100, None)),
        ("%IW5", ("input", 5, None)),
        ("HR:7", ("holding", 7, None)),
        ("co3", ("coil", 3, None)),
    ],
)
def test_address_conventions(text: str, want: tuple) -> None:
    assert parse_address(text)[:3] == want


@pytest.mark.parametrize("text", ["5", "40000", "%QW1", "40001.16", ""])
def test_ambiguous_or_wrong_addresses_are_refused(text: str) -> None:
    with pytest.raises(RowError):
        parse_address(text)


def test_imported_tags_pass_check_and_read_good_from_the_simulator(
    tmp_path: Path,
    hw_sim,  # noqa: F811
) -> None:
    mb, _ = hw_sim
    src = tmp_path / "tags.csv"
    src.write_text(CSV + "bad one;5;INT;;;;;;\n")
    res = edgeloop("import", str(src))
    assert res.returncode == 1  # one row refused, named with its line
    assert f"{src}:10: address '5'" in res.stderr
    lines = res.stdout
    assert "# Tank Temp: 30001 (Modicon 3xxxx, 1-based) -> input 0" in lines
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "devices:\n  - name: plc\n    driver: modbus\n    host: 127.0.0.1\n"
        f"    port: {mb}\n    unit_id: 1\n    timeout_s: 0.5\n    poll_groups:\n"
        "      - name: g\n        interval_ms: 1000\n        tags:\n" + lines
    )
    chk = edgeloop("check", str(cfg))
    assert chk.returncode == 0, chk.stderr
    rd = edgeloop("read", str(cfg), "--json")
    doc = json.loads(rd.stdout)
    assert rd.returncode == 0, rd.stdout + rd.stderr
    assert set(doc) == {
        "Tank_Temp", "heater_power", "heartbeat", "heater_enable", "watchdog_tripped",
        "status_word", "low_flow_alarm", "ambient",
    }  # fmt: skip
    assert all(v["quality"] == "good" for v in doc.values())
    assert 0 <= doc["Tank_Temp"]["value"] <= 120 and -40 <= doc["ambient"]["value"] <= 60
    as_json = json.loads(edgeloop("import", "--json", str(src)).stdout)
    assert as_json[7] == {
        "name": "ambient", "table": "input", "address": 8, "type": "int16", "unit": "degC",
        "scale": 0.1, "min": -40.0, "max": 60.0,
    }  # fmt: skip


def test_bad_files_are_one_line(tmp_path: Path) -> None:
    missing = edgeloop("import", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    no_header = tmp_path / "x.csv"
    no_header.write_text("a,b\n1,2\n")
    res = edgeloop("import", str(no_header))
    assert res.returncode == 2 and "name and address" in res.stderr
    assert "Traceback" not in missing.stderr + res.stderr
