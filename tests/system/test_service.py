"""System test of `edgeloop run` as systemd runs it: real hw_sim, real sockets, real signals.

The test listens on a NOTIFY_SOCKET like systemd does, arms the watchdog through
WATCHDOG_USEC, and drives the service with SIGHUP / SIGTERM / SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from lab.demo import Ports, demo_config, start_agent, start_sim

ROOT = Path(__file__).resolve().parents[2]


def _start_sim(ports: Ports, tmp: Path) -> subprocess.Popen[bytes]:
    return start_sim(ports, tmp / "sim.log", "--seed", "3")


class Notify:
    """A NOTIFY_SOCKET listener read continuously by a thread, as systemd's manager does
    (an unread datagram socket fills after ~10 messages and the sender's notify fails)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(4096).decode())

    def count(self, text: str) -> int:
        return sum(text in m for m in list(self.messages))

    def wait_for(self, text: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.count(text):
                return True
            time.sleep(0.1)
        return self.count(text) > 0

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_status(port: int, path: str, want: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if _get(port, path)[0] == want:
                return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


@pytest.fixture
def plant(tmp_path: Path):
    ports = Ports()
    sim = _start_sim(ports, tmp_path)
    yield ports, sim
    if sim.poll() is None:
        sim.terminate()
        sim.wait(10)


def _write_cfg(tmp: Path, ports: Ports, **patch: object) -> Path:
    cfg = demo_config(ROOT / "config" / "edgeloop.yaml", ports, tmp, mqtt=False, token=False)
    cfg.update(patch)
    path = tmp / "edgeloop.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _start_agent(cfg: Path, tmp: Path, notify: Path | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if notify is not None:
        env.update({"NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "2000000"})
    return start_agent(cfg, tmp / "agent.log", env)


def test_service_lifecycle(plant, tmp_path: Path) -> None:
    ports, sim = plant
    cfg = _write_cfg(tmp_path, ports)
    notify = Notify(tmp_path / "notify.sock")
    agent = _start_agent(cfg, tmp_path, tmp_path / "notify.sock")
    log = tmp_path / "agent.log"
    try:
        assert notify.wait_for("READY=1", 60), log.read_text()
        # watchdog fed at half of WATCHDOG_USEC while the pipeline makes progress
        fed = notify.count("WATCHDOG=1")
        time.sleep(3.5)
        assert notify.count("WATCHDOG=1") >= fed + 2
        assert _wait_status(ports.http, "/readyz", 200, 20), log.read_text()
        status, _body = _get(ports.http, "/healthz")
        assert status == 200
        status, metrics = _get(ports.http, "/metrics")
        assert status == 200
        assert 'edgeloop_polls_total{device="heater_plc"' in metrics
        assert "edgeloop_kernel_seconds_count" in metrics
        assert 'edgeloop_build_info{litert="' in metrics and ',version="0.1.0"} 1' in metrics
        assert "\nprocess_resident_memory_bytes " in metrics

        # the simulated PLC goes away: health degrades, and comes back when it returns
        sim.terminate()
        sim.wait(10)
        assert _wait_status(ports.http, "/readyz", 503, 20)
        sim2 = _start_sim(ports, tmp_path)
        try:
            assert _wait_status(ports.http, "/readyz", 200, 60), log.read_text()[-3000:]

            # SIGHUP with a good config: reloaded; with a bad one: refused, still running
            agent.send_signal(signal.SIGHUP)
            assert _wait_metric(ports.http, 'edgeloop_config_reloads_total{result="ok"} 1', 30)
            bad = yaml.safe_load(cfg.read_text())
            bad["devices"][0]["poll_groups"][0]["tags"][0]["address"] = 70000
            cfg.write_text(yaml.safe_dump(bad, sort_keys=False))
            agent.send_signal(signal.SIGHUP)
            assert _wait_metric(ports.http, 'edgeloop_config_reloads_total{result="refused"} 1', 30)
            assert agent.poll() is None
            assert "must be 0..65535" in log.read_text() or "address" in log.read_text()
            assert _wait_status(ports.http, "/readyz", 200, 20)

            t0 = time.monotonic()
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(10) == 0
            assert time.monotonic() - t0 < 5.0
            assert notify.wait_for("STOPPING=1", 2)
        finally:
            sim2.terminate()
            sim2.wait(10)
    finally:
        notify.close()
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    # history was written and is intact after a clean stop
    con = sqlite3.connect(tmp_path / "history.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT count(*) FROM frames").fetchone()[0] > 10


def _wait_metric(port: int, text: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if text in _get(port, "/metrics")[1]:
                return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def test_bad_config_exits_78(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("site: x\ndevices:\n  - name: a\n    driver: modbus\n    port: 99999\n")
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "run", str(cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 78
    assert "bad.yaml:5" in proc.stderr + proc.stdout


def test_kill9_keeps_history_intact(plant, tmp_path: Path) -> None:
    ports, _sim = plant
    cfg = _write_cfg(tmp_path, ports)
    agent = _start_agent(cfg, tmp_path)
    try:
        assert _wait_status(ports.http, "/readyz", 200, 60), (tmp_path / "agent.log").read_text()
        time.sleep(3.0)
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    con = sqlite3.connect(tmp_path / "history.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n = con.execute("SELECT count(*) FROM frames").fetchone()[0]
    assert n > 5
    # and the agent starts again on the same database
    agent = _start_agent(cfg, tmp_path)
    try:
        assert _wait_status(ports.http, "/readyz", 200, 60)
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(10) == 0
    con = sqlite3.connect(tmp_path / "history.db")
    assert con.execute("SELECT count(*) FROM frames").fetchone()[0] > n
