"""Issue 11 item 10 on a running service: hostile files sent by SIGHUP (a billion-laughs alias
bomb, a 5 MB file, a NUL character, an infinite interlock age) are refused, the running
pipeline goes on polling and controlling untouched, and the process does not grow."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from tests.system.test_service import (  # noqa: F401 - plant is the fixture
    _get,
    _start_agent,
    _wait_metric,
    _wait_status,
    _write_cfg,
    plant,
)

ROOT = Path(__file__).resolve().parents[2]
ALIAS_BOMB = (ROOT / "tests" / "cases" / "yaml_alias_bomb" / "config.yaml").read_text()


def _rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024  # type: ignore[union-attr]


def _metric(port: int, name: str) -> float:
    total = 0.0
    for line in _get(port, "/metrics")[1].splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_hostile_reloads_leave_the_running_pipeline_untouched(plant, tmp_path: Path) -> None:  # noqa: F811
    ports, _sim = plant
    cfg = _write_cfg(tmp_path, ports)
    good = cfg.read_text()
    agent = _start_agent(cfg, tmp_path)
    log = tmp_path / "agent.log"
    try:
        assert _wait_status(ports.http, "/readyz", 200, 60), log.read_text()[-3000:]
        time.sleep(2.0)
        rss0 = _rss_mb(agent.pid)
        hostile = {
            "alias bomb": ALIAS_BOMB,
            "5 MB": good + "# " + "x" * (5 * 1024 * 1024) + "\n",
            "NUL": good.replace("site:", "site:\x00", 1),
            "inf age": good.replace("max_input_age_periods: 3", "max_input_age_periods: .inf"),
        }
        for n, (what, text) in enumerate(hostile.items(), start=1):
            writes0 = _metric(ports.http, "edgeloop_control_writes_total")
            cfg.write_text(text)
            agent.send_signal(signal.SIGHUP)
            assert _wait_metric(
                ports.http, f'edgeloop_config_reloads_total{{result="refused"}} {n}', 30
            ), (what, log.read_text()[-2000:])
            time.sleep(1.5)
            assert agent.poll() is None, what
            assert _metric(ports.http, "edgeloop_control_writes_total") > writes0, what
            assert _get(ports.http, "/readyz")[0] == 200, what
        assert _rss_mb(agent.pid) - rss0 < 50.0
        text = log.read_text()
        assert "Traceback" not in text, text[-3000:]
        assert "reload refused" in text
        cfg.write_text(good)
        t0 = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(10) == 0
        assert time.monotonic() - t0 < 5.0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
