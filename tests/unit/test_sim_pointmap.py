"""The point map: complete, consistent, and printed as the JSON contract says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hw_sim import pointmap
from hw_sim.modbus_server import TABLE_SIZES

ROOT = Path(__file__).resolve().parents[2]


def test_print_map_cli_is_the_json_contract() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hw_sim", "--print-map"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    points = json.loads(out)
    assert len(points) == len(pointmap.POINTS)
    for p in points:
        for key in ("name", "protocol", "type", "unit", "min", "max", "writable"):
            assert key in p, (p["name"], key)
        if p["protocol"] == "modbus":
            for key in ("table", "address", "unit_id", "byte_order", "word_order"):
                assert key in p
            assert "node" not in p
        else:
            assert p["protocol"] == "opcua" and p["node"].startswith("ns=2;s=Pump.")
            assert "table" not in p and "address" not in p


def test_the_manipulated_variable_and_commands() -> None:
    hp = pointmap.BY_NAME["heater_power"]
    assert (hp.table, hp.address, hp.type, hp.unit_id) == ("holding", 10, "float32", 1)
    assert hp.writable and (hp.min, hp.max) == (0.0, 100.0)
    for name in (
        "temp_setpoint",
        "heartbeat",
        "watchdog_timeout_ms",
        "safe_power",
        "heater_enable",
        "fault_reset",
    ):
        assert pointmap.BY_NAME[name].writable, name
    for name in ("watchdog_tripped", "overtemp_alarm", "heater_running"):
        assert pointmap.BY_NAME[name].table == "discrete"


def test_type_mix_as_real_devices_have() -> None:
    mb = pointmap.modbus_points(1)
    assert any(p.word_order == "little" and p.byte_order == "big" for p in mb)
    assert any(p.byte_order == "little" for p in mb)
    types = {p.type for p in mb}
    assert {"float32", "float64", "int16", "uint16", "uint32", "string", "bit", "bool"} <= types
    assert pointmap.BY_NAME["ambient_temp"].scale == 0.1


def test_pump_nodes_and_modbus_mirror() -> None:
    nodes = {p.node for p in pointmap.opcua_points()}
    want = {
        f"ns=2;s=Pump.{n}"
        for n in (
            "MotorCurrent",
            "MotorVoltage",
            "VibrationX",
            "VibrationY",
            "MotorTemp",
            "DischargePressure",
            "Flow",
            "FluidTemp",
            "SpeedSetpoint",
            "ValvePosition",
        )
    }
    assert nodes == want
    mirror = pointmap.modbus_points(pointmap.PUMP_UNIT)
    assert {p.source for p in mirror} == {p.name for p in pointmap.opcua_points()}
    assert all(p.type == "float32" for p in mirror)
    assert all(p.table == "input" for p in mirror if not p.writable)


def test_points_fit_the_served_tables() -> None:
    for p in pointmap.modbus_points():
        size = TABLE_SIZES[p.unit_id][p.table]
        assert p.address >= 0 and p.address + p.width <= size, p.name


def test_bench_points() -> None:
    pts = pointmap.bench_points(3)
    assert [(p.unit_id, p.table, p.address, p.type) for p in pts] == [
        (10, "input", 0, "float32"),
        (10, "input", 2, "float32"),
        (10, "input", 4, "float32"),
    ]
    assert len(pointmap.bench_points()) == 2000
    with pytest.raises(ValueError):
        pointmap.bench_points(2001)
    v = pointmap.bench_value(list(range(2000)), 12.5)
    assert v.shape == (2000,) and abs(v).max() < 1000.0
    assert pointmap.bench_value(7, 12.5) == pytest.approx(v[7])


def test_docs_register_map_in_sync() -> None:
    doc = (ROOT / "docs" / "hw_sim.md").read_text()
    assert pointmap.map_markdown() in doc, (
        "regenerate: python -c 'from hw_sim.pointmap import map_markdown; print(map_markdown())'"
    )


def test_default_config_addresses_the_simulator_as_mapped() -> None:
    """config/edgeloop.yaml (the embedded default) must read the simulator where it serves."""
    import yaml

    path = ROOT / "config" / "edgeloop.yaml"
    if not path.exists():
        pytest.skip("config/edgeloop.yaml not written yet")
    cfg = yaml.safe_load(path.read_text())
    checked = 0
    for dev in cfg.get("devices", []):
        for group in dev.get("poll_groups", []):
            for tag in group.get("tags", []):
                p = pointmap.BY_NAME.get(tag["name"])
                assert p is not None, f"{dev['name']}.{tag['name']} is not in the point map"
                if p.protocol == "opcua":
                    assert tag.get("node") == p.node, tag["name"]
                else:
                    got = (
                        tag.get("table"),
                        tag.get("address"),
                        tag.get(
                            "type", "bool" if tag.get("table") in ("coil", "discrete") else None
                        ),
                        tag.get("unit_id", dev.get("unit_id", 1)),
                        tag.get("byte_order", dev.get("byte_order", "big")),
                        tag.get("word_order", dev.get("word_order", "big")),
                    )
                    want = (p.table, p.address, p.type, p.unit_id, p.byte_order, p.word_order)
                    assert got == want, tag["name"]
                    if p.type == "bit":
                        assert tag.get("bit") == p.bit
                if tag.get("writable"):
                    assert p.writable, tag["name"]
                checked += 1
    assert checked > 0
