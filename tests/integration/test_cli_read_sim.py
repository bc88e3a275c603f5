"""`edgeloop read` against the simulator: the commissioning check an engineer runs first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import load_config
from tests.fixtures.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def plant_config(tmp_path: Path, modbus_port: int, opcua_port: int) -> Path:
    text = (ROOT / "config/edgeloop.yaml").read_text()
    text = text.replace("port: 5020", f"port: {modbus_port}")
    text = text.replace("127.0.0.1:4840/", f"127.0.0.1:{opcua_port}/")
    path = tmp_path / "plant.yaml"
    path.write_text(text)
    return path


def edgeloop(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture
def hw_sim(tmp_path: Path):
    """`python -m hw_sim` as a separate process on free ports, as a user would run it."""
    mb, ua = free_port(), free_port()
    log = (tmp_path / "sim.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hw_sim", "--modbus-port", str(mb), "--opcua-port", str(ua)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 30
        while "running" not in (tmp_path / "sim.log").read_text():
            assert proc.poll() is None, (tmp_path / "sim.log").read_text()
            assert time.monotonic() < deadline, "hw_sim did not start"
            time.sleep(0.1)
        yield mb, ua
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_read_json_prints_every_tag_good(tmp_path: Path, hw_sim) -> None:
    path = plant_config(tmp_path, *hw_sim)
    res = edgeloop("read", str(path), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    cfg = load_config(path)
    names = [t.name for d in cfg.devices for g in d.poll_groups for t in g.tags]
    assert list(doc) == names
    assert {v["quality"] for v in doc.values()} == {"good"}, doc
    assert doc["device_model"]["value"] == "EDGELOOP-HTR-SIM"
    assert doc["tank_temp"]["unit"] == "degC"
    assert isinstance(doc["tank_temp"]["value"], float)
    assert doc["heater_enable"]["value"] in (True, False)
    assert doc["firmware_version"]["value"] == 0x0103


def test_read_table_filtered_by_tag_and_device(
    tmp_path: Path, modbus_sim, opcua_server, capsys
) -> None:
    ua_port = int(opcua_server.endpoint.split(":")[2].split("/")[0])
    path = plant_config(tmp_path, modbus_sim.port, ua_port)
    assert main(["read", str(path), "--tag", "tank_temp", "--tag", "pump_flow"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["tag", "value", "unit", "quality", "device"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"tank_temp", "pump_flow"}
    assert rows["tank_temp"][2:] == ["degC", "good", "heater_plc"]
    assert main(["read", str(path), "--device", "pump_skid", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc and all(name.startswith("pump_") for name in doc)
    assert "pump_flow_mb" not in doc


def test_read_reports_a_dead_device_as_comm_lost(tmp_path: Path, capsys) -> None:
    path = plant_config(tmp_path, free_port(), free_port())  # nothing listens there
    t0 = time.monotonic()
    args = ["read", str(path), "--json", "--device", "heater_plc", "--timeout", "1.5"]
    assert main(args) == 1
    assert time.monotonic() - t0 < 10
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert {v["quality"] for v in doc.values()} == {"comm_lost"}
    assert {v["reason"] for v in doc.values()} == {"comm_lost"}
    assert all(v["value"] is None for v in doc.values())
    assert "cannot connect" in out.err


def test_read_unknown_tag_and_bad_config(tmp_path: Path, capsys) -> None:
    assert main(["read", str(ROOT / "config/edgeloop.yaml"), "--tag", "no_such_tag"]) == 2
    assert "no_such_tag" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices: []\n")
    assert main(["read", str(bad)]) == 78
    assert capsys.readouterr().err.strip() == f"{bad}:1: devices: must not be empty"


def test_a_value_far_outside_its_range_is_bad_with_the_reason(tmp_path: Path, hw_sim) -> None:  # type: ignore[no-untyped-def]
    """A wrong scale (here x1000: 20 degC reads 20,000) is not a process value: `read` says
    bad, out_of_range, shows the raw value and points at `probe` (issue 14). (A wrong byte or
    word order gives a far value or a denormal near 0, depending on the bits.)"""
    mb, ua = hw_sim
    path = plant_config(tmp_path, mb, ua)
    text = path.read_text().replace(
        "{name: tank_temp, table: input, address: 0, type: float32,",
        "{name: tank_temp, table: input, address: 0, type: float32, scale: 1000,",
    )
    assert "scale: 1000," in text
    path.write_text(text)
    res = edgeloop("read", str(path), "--json", "--tag", "tank_temp", "--tag", "inlet_flow")
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert doc["inlet_flow"]["quality"] == "good" and "reason" not in doc["inlet_flow"]
    bad = doc["tank_temp"]
    assert bad["quality"] == "bad"
    assert bad["reason"] == "out_of_range" and "edgeloop probe" in bad["hint"]
    assert abs(bad["value"]) > 1000  # the raw value is kept for the diagnosis


def test_a_wrong_opcua_node_says_the_servers_status_code(tmp_path: Path, hw_sim) -> None:  # type: ignore[no-untyped-def]
    """The server's own verdict on a node reaches `read`: BadNodeIdUnknown, not just bad."""
    mb, ua = hw_sim
    path = plant_config(tmp_path, mb, ua)
    text = path.read_text().replace('"ns=2;s=Pump.MotorTemp"', '"ns=2;s=Pump.NoSuchNode"')
    assert "NoSuchNode" in text
    path.write_text(text)
    args = ["--tag", "pump_motor_temp", "--tag", "pump_motor_current"]
    res = edgeloop("read", str(path), "--json", *args)
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert doc["pump_motor_current"]["quality"] == "good"
    assert doc["pump_motor_temp"]["quality"] == "bad"
    assert doc["pump_motor_temp"]["reason"] == "opcua_BadNodeIdUnknown"
    table = edgeloop("read", str(path), *args)
    assert "pump_motor_temp: opcua_BadNodeIdUnknown" in table.stderr
