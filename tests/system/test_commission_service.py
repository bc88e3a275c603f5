"""The plant test on a running service: `POST /control/<loop>/commission` on `edgeloop run`
(it owns the PLC connection), progress in `GET /control`, the model and report written to
`control.commission_dir`, the output back where it was found; a mode change stops a test
and ramps back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from bench.commission import config_text
from lab.demo import Ports, start_sim
from tests.system.test_service import _get, _wait_status

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t0k3n-for-this-test"


def _post(port: int, path: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _control(port: int) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/control", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())["surge"]


def test_commission_on_the_running_service(tmp_path: Path) -> None:
    ports = Ports()
    sim = start_sim(
        ports, tmp_path / "sim.log", "--loops", "surge", "--loop-seed", "977", "--speed", "10",
        "--no-loop-disturbances", opcua=False,
    )  # fmt: skip
    agent = None
    try:
        cfg = yaml.safe_load(config_text("surge", ports.modbus))
        cfg["control"]["commission_dir"] = str(tmp_path / "models")
        cfg["store"] = {"path": str(tmp_path / "history.db")}
        cfg["http"] = {"port": ports.http, "bearer_token_env": "EDGELOOP_TEST_TOKEN"}
        path = tmp_path / "edgeloop.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        env = {**os.environ, "EDGELOOP_TEST_TOKEN": TOKEN}
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", str(path)],
            stdout=open(tmp_path / "agent.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
            cwd=ROOT, env=env,
        )  # fmt: skip
        assert _wait_status(ports.http, "/readyz", 200, 60), (tmp_path / "agent.log").read_text()
        time.sleep(1.0)
        u0 = _control(ports.http)["output"]
        # a test stopped by a mode change ramps back to where it started
        code, body = _post(ports.http, "/control/surge/commission", {"budget_s": 60, "train": 0})
        assert code == 200, body
        time.sleep(3.0)
        assert _control(ports.http)["commission"]["state"] in ("baseline", "step", "prbs")
        assert _post(ports.http, "/control/surge/mode", {"mode": "off"})[0] == 200
        for _ in range(100):
            c = _control(ports.http)["commission"]
            if c["state"] == "done":
                break
            time.sleep(0.2)
        assert c["result"]["aborted"] == "stopped over HTTP", c
        assert abs(_control(ports.http)["output"] - u0) < 1e-6
        assert _post(ports.http, "/control/surge/mode", {"mode": "manual"})[0] == 200
        # a whole test: identification and the SIMC tuning written by the service
        code, body = _post(ports.http, "/control/surge/commission", {"budget_s": 60, "train": 0})
        assert code == 200, body
        assert _post(ports.http, "/control/surge/commission", {})[0] == 422  # one at a time
        states = set()
        for _ in range(600):
            c = _control(ports.http)["commission"]
            states.add(c["state"])
            if c["state"] == "done":
                break
            time.sleep(0.2)
        assert c["state"] == "done" and {"step", "prbs"} <= states, c
        assert c["result"]["ok"], c["result"]
        assert c["result"]["simc_pid"]["kp"] > 0
        assert (tmp_path / "models" / "surge.model.json").exists()
        assert json.loads((tmp_path / "models" / "surge.report.json").read_text())["ok"]
        assert abs(_control(ports.http)["output"] - u0) < 1e-6  # back where it was found
        assert _get(ports.http, "/readyz")[0] == 200
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(15)
        sim.terminate()
        sim.wait(10)
    assert "Traceback" not in (tmp_path / "agent.log").read_text()
