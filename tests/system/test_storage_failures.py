"""Issue 11 items 6-7 on the real service: a corrupt history and outbox, or a full disk, at
start must not stop the gateway (it exited 1 and systemd gave up: no polling, no control, no
heartbeat).  Polling and control go on; the damage is said loudly."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import yaml

from tests.fixtures.mqtt import Broker
from tests.fixtures.smallfs import fill, small_fs
from tests.system.test_reload_hostile import _metric
from tests.system.test_service import (  # noqa: F401 - plant is the fixture
    _get,
    _start_agent,
    _wait_status,
    _write_cfg,
    plant,
)


def _config(tmp: Path, ports, data_dir: Path, broker: Broker) -> Path:  # type: ignore[no-untyped-def]
    path = _write_cfg(tmp, ports)
    cfg = yaml.safe_load(path.read_text())
    cfg["store"]["path"] = str(data_dir / "history.db")
    cfg["publish"]["enabled"] = True
    cfg["publish"]["outbox"]["path"] = str(data_dir / "outbox.db")
    cfg["publish"]["mqtt"].update(host="127.0.0.1", port=broker.port)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _control_keeps_writing(port: int) -> bool:
    w0 = _metric(port, "edgeloop_control_writes_total")
    p0 = _metric(port, "edgeloop_polls_total")
    time.sleep(2.0)
    return (
        _metric(port, "edgeloop_control_writes_total") > w0
        and _metric(port, "edgeloop_polls_total") > p0
    )


def _stop(agent) -> None:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(15) == 0
    assert time.monotonic() - t0 < 5.0


def test_corrupt_history_and_outbox_at_start(plant, tmp_path: Path, mqtt_broker) -> None:  # noqa: F811
    ports, _sim = plant
    data = tmp_path / "data"
    data.mkdir()
    (data / "history.db").write_bytes(b"this is not a database " * 500)
    good = sqlite3.connect(data / "outbox.db")  # a real outbox file, then cut in half
    good.execute("CREATE TABLE t (x BLOB)")
    good.executemany("INSERT INTO t VALUES (?)", [(b"x" * 500,)] * 200)
    good.commit()
    good.close()
    raw = (data / "outbox.db").read_bytes()
    (data / "outbox.db").write_bytes(raw[: len(raw) // 2])
    agent = _start_agent(_config(tmp_path, ports, data, mqtt_broker), tmp_path)
    log = tmp_path / "agent.log"
    try:
        assert _wait_status(ports.http, "/readyz", 200, 60), log.read_text()[-3000:]
        assert _control_keeps_writing(ports.http)
        assert _metric(ports.http, "edgeloop_storage_recovered_total") >= 2
        _stop(agent)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    aside = sorted(p.name for p in data.iterdir() if ".corrupt-" in p.name)
    assert any(n.startswith("history.db.corrupt-") for n in aside), aside
    assert any(n.startswith("outbox.db.corrupt-") for n in aside), aside
    con = sqlite3.connect(data / "history.db")  # the fresh file holds this run's data
    assert con.execute("SELECT count(*) FROM frames").fetchone()[0] > 5
    text = log.read_text()
    assert "moved aside" in text and "Traceback" not in text


def test_full_disk_at_start_stops_history_never_control(plant, tmp_path: Path, mqtt_broker) -> None:  # noqa: F811
    ports, _sim = plant
    with small_fs(tmp_path / "full", "256k") as data:
        fill(data)
        agent = _start_agent(_config(tmp_path, ports, data, mqtt_broker), tmp_path)
        log = tmp_path / "agent.log"
        try:
            # devices up, control running; history/publishing failed and said so
            assert _wait_status(ports.http, "/healthz", 200, 60), log.read_text()[-3000:]
            deadline = time.monotonic() + 30
            body: dict = {}
            while time.monotonic() < deadline:
                status, text = _get(ports.http, "/readyz")
                body = json.loads(text)
                if body.get("devices") and all(
                    d.get("state") == "up" for d in body["devices"].values()
                ):
                    break
                time.sleep(0.3)
            comps = body.get("components", {})
            assert comps.get("store", {}).get("state") == "failed", body
            assert status == 503  # not fully ready: history is being lost
            assert _control_keeps_writing(ports.http)
            _stop(agent)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        assert "Traceback" not in log.read_text()
