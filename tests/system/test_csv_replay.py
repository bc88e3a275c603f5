"""The third driver end to end: a recorded CSV file as a device through `edgeloop check`,
`plan`, `read` and `run` (history written, exported back), with MQTT off; a broken CSV
device is a file:line problem with exit 78.  The driver was added without an edit under
agent/ (docs/architecture.md, "How to write a driver")."""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
ROWS = 40


def edgeloop(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _plant(tmp: Path, http_port: int) -> Path:
    with (tmp / "line3.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["speed_m_min", "tension_N", "running"])
        for i in range(ROWS):
            w.writerow([100 + i, 400 + 2 * i, "true" if i % 10 else "false"])
    path = tmp / "plant.yaml"
    path.write_text(
        f"""site: replay
devices:
  - name: line3
    driver: csv
    file: line3.csv
    poll_groups:
      - name: line
        interval_ms: 100
        tags:
          - {{name: speed, column: speed_m_min, unit: m/min, min: 0, max: 300}}
          - {{name: tension, column: tension_N, unit: N}}
          - {{name: running, column: running, type: bool}}
store:
  path: {tmp / "history.db"}
http:
  port: {http_port}
"""
    )
    return path


def test_check_plan_read_and_run_replay_the_file(tmp_path: Path) -> None:
    cfg = _plant(tmp_path, free_port())
    elsewhere = tmp_path / "elsewhere"  # relative `file:` is relative to the config file
    elsewhere.mkdir()

    res = edgeloop("check", str(cfg), cwd=elsewhere)
    assert res.returncode == 0, res.stderr
    assert "1 devices, 3 tags, 1 poll groups, 1 read requests per cycle" in res.stdout

    res = edgeloop("plan", str(cfg), cwd=elsewhere)
    assert res.returncode == 0, res.stderr
    assert f"CSV row of line3.csv ({ROWS} rows)  count 3  speed, tension, running" in res.stdout

    res = edgeloop("read", str(cfg), "--json", cwd=elsewhere)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["speed"] == {"value": 100.0, "unit": "m/min", "quality": "good"}
    assert doc["running"]["value"] is False and doc["tension"]["value"] == 400.0

    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", str(cfg)],
        cwd=elsewhere,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "agent.log").open("wb"),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    db = tmp_path / "history.db"
    try:
        deadline = time.monotonic() + 45
        frames = 0
        while time.monotonic() < deadline and frames < 15:
            time.sleep(0.5)
            if db.exists():
                with sqlite3.connect(db) as con:
                    try:
                        frames = con.execute("SELECT count(*) FROM frames").fetchone()[0]
                    except sqlite3.OperationalError:  # tables not created yet
                        frames = 0
        assert frames >= 15, (tmp_path / "agent.log").read_text()[-3000:]
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(15) == 0, (tmp_path / "agent.log").read_text()[-3000:]
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()

    out = tmp_path / "export.csv"
    res = edgeloop(
        "export", str(cfg), "--from", "0", "--to", str(time.time() + 60), "--out", str(out),
        cwd=elsewhere,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(out.open()))
    speeds = [float(r["speed"]) for r in rows if r["speed"]]
    assert len(speeds) >= 15
    # every stored value is a row of the file, replayed in order (wrapping after the last)
    assert set(speeds) <= {100.0 + i for i in range(ROWS)}
    steps = [b - a for a, b in itertools.pairwise(speeds)]
    assert all(s == 1.0 or s == -(ROWS - 1) for s in steps), speeds


def test_a_broken_csv_device_is_a_file_line_problem_with_exit_78(tmp_path: Path) -> None:
    cfg = _plant(tmp_path, free_port())
    cfg.write_text(cfg.read_text().replace("column: tension_N", "column: tension"))
    res = edgeloop("check", str(cfg), cwd=tmp_path)
    assert res.returncode == 78
    assert (
        f"{cfg}:11: devices[0].poll_groups[0].tags[1].column: no column 'tension' in "
        "line3.csv (columns: speed_m_min, tension_N, running)"
    ) in res.stderr
    cfg.write_text(cfg.read_text().replace("file: line3.csv", "file: gone.csv"))
    res = edgeloop("run", str(cfg), cwd=tmp_path)
    assert res.returncode == 78
    assert f"{cfg}:5: devices[0].file: cannot read {tmp_path}/gone.csv" in res.stderr
