"""HistoryStore on real SQLite files: WAL, batching, queue overflow, retention, kill -9, export."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from agent.commands import export as export_cmd
from agent.metrics import Metrics
from agent.store import HistoryStore, StoreConfig, open_reader
from agent.tags import TagTable
from drivers.base import Reason

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Group:
    device: str
    name: str
    start: int
    stop: int
    points: tuple = ()


def Table(names: list[str]) -> TagTable:
    return TagTable.for_names(names)


def make(tmp_path: Path, **cfg: object) -> tuple[HistoryStore, Table, list[Group], Metrics]:
    table = Table(["a", "b", "c", "d", "e"])
    groups = [Group("plc1", "fast", 0, 3), Group("plc2", "slow", 3, 5)]
    metrics = Metrics()
    store = HistoryStore(StoreConfig(path=str(tmp_path / "h.db"), **cfg), table, metrics)
    store.start()
    return store, table, groups, metrics


def fill(store: HistoryStore, table: Table, group: Group, k: int, ts_ns: int) -> None:
    s, e = group.start, group.stop
    table.raw[s:e] = k + np.arange(e - s) / 10
    table.value[s:e] = table.raw[s:e] * 2
    table.quality[s:e] = k % 3
    table.reason[s:e] = (0, Reason.DECODE_ERROR, Reason.STALE)[k % 3]
    table.flags[s:e] = k
    table.score[s:e] = 0.5
    store.submit_frame(group, ts_ns)


def test_wal_batches_and_series(tmp_path: Path) -> None:
    store, table, groups, metrics = make(tmp_path, batch_ms=200)
    t0 = 1_700_000_000 * 10**9
    for k in range(100):
        fill(store, table, groups[0], k, t0 + k * 10**8)
        if k % 2 == 0:
            fill(store, table, groups[1], k, t0 + k * 10**8)
    store.submit_event(t0 + 5, "anomaly_on", "pump_health", {"score": 3.2})
    store.submit_control(t0 + 7, "tank", {"mode": "auto", "reason": "operator"})
    assert store.flush()
    con = sqlite3.connect(tmp_path / "h.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT count(*) FROM frames").fetchone()[0] == 150
    con.close()
    # 150 frames in far fewer transactions than frames: batched
    assert metrics.get("edgeloop_store_rows_total", table="frames") == 150
    series = store.read_series(["b", "d", "zz"], 1_700_000_000, 1_700_000_010)
    assert set(series) == {"b", "d"}
    ts, raw, value, quality, flags, score = series["b"]
    assert len(ts) == 100 and np.all(np.diff(ts) > 0)
    np.testing.assert_allclose(raw, np.arange(100) + 0.1)
    np.testing.assert_allclose(value, 2 * raw)
    assert quality.tolist() == [k % 3 for k in range(100)]
    assert flags.tolist() == list(range(100))
    assert np.all(score == 0.5)
    assert len(series["d"][0]) == 50
    ev = store.read_events(1_700_000_000, 1_700_000_001)
    assert ev == [
        {"ts_ns": t0 + 5, "kind": "anomaly_on", "source": "pump_health", "payload": {"score": 3.2}}
    ]
    assert store.read_control(1.7e9, 1.7e9 + 1, loop="tank")[0]["payload"]["mode"] == "auto"
    assert store.read_control(1.7e9, 1.7e9 + 1, loop="other") == []
    store.close()
    assert metrics.get("edgeloop_store_bytes") > 0


def test_batching_commits_many_frames_per_transaction(tmp_path: Path) -> None:
    """A burst lands in few transactions: count commits via the WAL frame counter."""
    store, table, groups, _ = make(tmp_path, batch_ms=1000, batch_max_frames=500)
    for k in range(1000):
        fill(store, table, groups[0], k, k)
    assert store.flush()
    assert store.read_series(["a"], 0, 1)["a"][0].tolist() == list(range(1000))
    assert 2 <= store.transactions <= 4  # 1000 frames, at most 500 per transaction
    store.close()


def test_queue_full_drops_newest_and_counts(tmp_path: Path) -> None:
    table = Table(["a"])
    metrics = Metrics()
    store = HistoryStore(StoreConfig(path=str(tmp_path / "h.db"), queue_max=10), table, metrics)
    # not started: nothing drains the queue, so the 11th submit overflows
    g = Group("d", "g", 0, 1)
    accepted = [store.submit_frame(g, k) for k in range(15)]
    assert accepted == [True] * 10 + [False] * 5
    assert metrics.get("edgeloop_store_dropped_total") == 5
    store.start()
    store.close()
    con = sqlite3.connect(tmp_path / "h.db")
    assert [r[0] for r in con.execute("SELECT ts_ns FROM frames ORDER BY ts_ns")] == list(range(10))


def test_retention_by_age(tmp_path: Path) -> None:
    store, table, groups, metrics = make(tmp_path, retention_days=1)
    day = 86400 * 10**9
    now = 100 * day
    for k in range(10):  # frames at now - 5 days ... now - 0.5 day
        fill(store, table, groups[0], k, now - 5 * day + k * day // 2)
    store.submit_event(now - 3 * day, "device_down", "plc1", {})
    store.submit_event(now - 1, "device_up", "plc1", {})
    assert store.flush()
    deleted = store.retain_now(now)
    assert deleted == {"age": 8 + 1, "size": 0}  # 8 frames older than 1 day, one event
    assert metrics.get("edgeloop_store_retention_deleted_total", reason="age") == 9
    left = store.read_series(["a"], 0, 101 * 86400)["a"][0]
    assert left.min() >= now - day and len(left) == 2
    assert [e["kind"] for e in store.read_events(0, 101 * 86400)] == ["device_up"]
    store.close()


def test_retention_by_size_drops_oldest_and_shrinks(tmp_path: Path) -> None:
    table = Table([f"t{i}" for i in range(200)])  # 5.4 kB per frame
    metrics = Metrics()
    cfg = StoreConfig(path=str(tmp_path / "h.db"), max_mb=1.0, batch_ms=50)
    store = HistoryStore(cfg, table, metrics)
    store.start()
    g = Group("d", "g", 0, 200)
    for k in range(800):  # ~4.3 MB of frames
        table.raw[:] = k
        store.submit_frame(g, k)
    assert store.flush()
    deleted = store.retain_now(10**6)
    assert deleted["size"] > 0 and deleted["age"] == 0
    assert metrics.get("edgeloop_store_retention_deleted_total", reason="size") == deleted["size"]
    ts = store.read_series(["t0"], 0, 1)["t0"][0]
    # the newest frames survive, contiguous, and what was removed is the oldest
    assert ts[-1] == 799 and ts.tolist() == list(range(800 - len(ts), 800))
    assert len(ts) + deleted["size"] == 800
    store.close()
    assert os.path.getsize(tmp_path / "h.db") <= 1.1 * 1024 * 1024


WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    sys.path.insert(0, {repo!r})
    from agent.store import HistoryStore, StoreConfig
    class T: pass
    t = T(); n = 50
    t.names = [f"t{{i}}" for i in range(n)]
    t.raw = np.zeros(n); t.value = np.zeros(n); t.score = np.zeros(n)
    t.flags = np.zeros(n, np.uint16); t.quality = np.zeros(n, np.uint8)
    t.reason = np.zeros(n, np.uint16)
    class G: device = "d"; name = "g"; start = 0; stop = n
    cfg = StoreConfig(path={db!r}, batch_ms=50, batch_max_frames=100)
    s = HistoryStore(cfg, t, None); s.start()
    i = 0
    while True:
        t.raw[:] = i
        s.submit_frame(G, i)
        print(i, flush=True)
        i += 1
        time.sleep(0.001)
    """
)


def test_kill9_mid_stream_keeps_db_intact_and_loses_at_most_one_batch(tmp_path: Path) -> None:
    db = str(tmp_path / "h.db")
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(repo=str(REPO), db=db))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    last = -1
    deadline = time.monotonic() + 30
    while last < 1500 and time.monotonic() < deadline:
        last = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    rest = proc.stdout.read().split()
    proc.wait()
    if rest:
        last = int(rest[-1])
    assert last >= 1500
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ts = [r[0] for r in con.execute("SELECT ts_ns FROM frames ORDER BY ts_ns")]
    assert ts == list(range(len(ts)))  # a prefix, no holes
    lost = last + 1 - len(ts)
    assert 0 <= lost <= 100, f"lost {lost} frames, more than one batch (100)"


def test_export_csv_via_command(tmp_path: Path) -> None:
    store, table, groups, _ = make(tmp_path)
    t0 = 1_700_000_000 * 10**9
    for k in range(4):
        fill(store, table, groups[0], k, t0 + k * 10**9)
    fill(store, table, groups[1], 7, t0 + 1_500_000_000)
    table.raw[0] = np.nan
    store.submit_frame(groups[0], t0 + 10 * 10**9)  # outside the range below
    store.close()
    cfg = tmp_path / "edgeloop.yaml"
    cfg.write_text(json.dumps({"site": "x", "store": {"path": str(tmp_path / "h.db")}}))
    out = tmp_path / "out.csv"
    rc = export_cmd.run(
        export_cmd.build_args(
            [
                str(cfg),
                "--from",
                "2023-11-14T22:13:20Z",
                "--to",
                "1700000005",
                "--tags",
                "b,d",
                "--out",
                str(out),
            ]
        )
    )
    assert rc == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == [
        "time",
        "epoch_s",
        "device",
        "group",
        "b",
        "b:quality",
        "b:flags",
        "b:reason",
        "d",
        "d:quality",
        "d:flags",
        "d:reason",
    ]
    body = rows[1:]
    assert [r[3] for r in body] == ["fast", "fast", "slow", "fast", "fast"]
    assert body[0][0] == "2023-11-14T22:13:20.000000Z" and body[0][1] == "1700000000.000000"
    assert body[1][4:] == ["1.1", "1", "1", "decode_error", "", "", "", ""]
    assert body[2][4:] == ["", "", "", "", "7.0", "1", "7", "decode_error"]
    # --filtered exports the kernel value (2 x raw here)
    rc = export_cmd.run(
        export_cmd.build_args(
            [
                str(cfg),
                "--from",
                "1700000000",
                "--to",
                "1700000001",
                "--tags",
                "a",
                "--filtered",
                "--out",
                str(out),
            ]
        )
    )
    assert rc == 0
    assert list(csv.reader(out.open()))[1][4] == "0.0"


def test_export_unknown_tag_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store, table, groups, _ = make(tmp_path)
    fill(store, table, groups[0], 0, 5)
    store.close()
    args = export_cmd.build_args(
        [
            "--db",
            str(tmp_path / "h.db"),
            "--from",
            "0",
            "--to",
            "10",
            "--tags",
            "nope",
            "--out",
            str(tmp_path / "o.csv"),
        ]
    )
    assert export_cmd.run(args) == 1
    assert "tags not in history: nope" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_reader_on_missing_db_is_clear(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no history database"):
        open_reader(str(tmp_path / "none.db"))


def test_export_to_stringio(tmp_path: Path) -> None:
    store, table, groups, _ = make(tmp_path)
    fill(store, table, groups[1], 3, 10**9)
    store.flush()
    buf = io.StringIO()
    assert store.export(buf, 0, 2) == 1
    assert buf.getvalue().splitlines()[1].startswith("1970-01-01T00:00:01.000000Z,1.000000,plc2")
    store.close()


def test_chunked_reads_keep_every_frame_once_even_with_equal_timestamps(tmp_path: Path) -> None:
    store, table, groups, _ = make(tmp_path)
    for k in range(50):
        fill(store, table, groups[0], k, k // 3)  # three frames share each timestamp
        fill(store, table, groups[1], k, k)
    store.close()
    r = open_reader(str(tmp_path / "h.db"))
    gid = r.groups()[0][0]
    chunks = list(r.iter_frames(gid, 3, 0, 10**9, chunk_rows=7))
    assert len(chunks) == 8
    assert np.concatenate([c.raw[:, 0] for c in chunks]).tolist() == [float(k) for k in range(50)]
    buf = io.StringIO()
    assert r.export_csv(buf, 0, 1) == 100
    times = [float(line.split(",")[1]) for line in buf.getvalue().splitlines()[1:]]
    assert times == sorted(times)
    r.close()
