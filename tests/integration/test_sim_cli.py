"""`python -m hw_sim` as a process: listens where it says, serves, exits 0 on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from pymodbus.client import ModbusTcpClient

from tests.fixtures.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_runs_serves_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "truth.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hw_sim",
            "--no-opcua",
            "--modbus-port",
            str(port),
            "--speed",
            "20",
            "--scenario",
            "hw_sim/scenarios/demo.yaml",
            "--faults-log",
            str(log),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"modbus tcp 127.0.0.1:{port}" in first
        assert "scenario=demo" in proc.stdout.readline()
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=2)
        assert client.connect()
        rr = client.read_holding_registers(0, count=8, device_id=1)
        assert not rr.isError()
        time.sleep(2.0)  # 40 s of plant time: the demo's first faults have started
        client.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "stopped" in out
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = {r["kind"] for r in recs}
    assert {"spike", "imbalance"} <= kinds
    # every fault that started was ended, at the latest when the process stopped
    starts = {r["id"] for r in recs if r["event"] == "start"}
    ends = {r["id"] for r in recs if r["event"] == "end"}
    assert starts == ends


def test_edgeloop_sim_print_map_matches() -> None:
    a = subprocess.run(
        [sys.executable, "-m", "hw_sim", "--print-map"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    b = subprocess.run(
        [sys.executable, "-m", "agent", "sim", "--print-map"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(a) == json.loads(b)


def test_bad_scenario_exits_with_a_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("faults: [{kind: nope, at_s: 1}]\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hw_sim",
            "--no-opcua",
            "--modbus-port",
            str(free_port()),
            "--scenario",
            str(bad),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "bad.yaml" in r.stderr
