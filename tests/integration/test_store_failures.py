"""HistoryStore when things go wrong, on real SQLite files and a real full file system:
absurd settings, a crashing writer, close() with a dead or stuck writer, corrupt and
truncated files, a full disk at start and during the run (issue 11, items 6 and 7)."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from agent.metrics import Metrics
from agent.store import HistoryStore, StoreConfig, open_reader
from agent.tags import TagTable
from tests.fixtures.smallfs import fill, small_fs

CORRUPT_NAME = re.compile(r"^h\.db\.corrupt-\d{8}T\d{6}Z$")


@dataclass
class Group:
    device: str
    name: str
    start: int
    stop: int
    points: tuple = ()


def new_store(path: Path, n_tags: int = 3, **cfg: object) -> tuple[HistoryStore, Group, Metrics]:
    table = TagTable.for_names([f"t{i}" for i in range(n_tags)])
    metrics = Metrics()
    store = HistoryStore(StoreConfig(path=str(path), **cfg), table, metrics)
    return store, Group("plc", "fast", 0, n_tags), metrics


def submit(store: HistoryStore, g: Group, ks: range) -> list[bool]:
    out = []
    for k in ks:
        store.table.raw[g.start : g.stop] = k
        out.append(store.submit_frame(g, k))
    return out


def stored_ts(path: Path) -> list[int]:
    con = sqlite3.connect(path)
    try:
        return [r[0] for r in con.execute("SELECT ts_ns FROM frames ORDER BY ts_ns")]
    finally:
        con.close()


def close_in(store: HistoryStore, timeout_s: float, bound_s: float = 15.0) -> float:
    """Run store.close(timeout_s) in a helper thread; seconds it took (bound_s if it hung)."""
    t0 = time.monotonic()
    th = threading.Thread(target=store.close, kwargs={"timeout_s": timeout_s}, daemon=True)
    th.start()
    th.join(bound_s)
    return time.monotonic() - t0


def wait_for(pred, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


# --- item 6: absurd settings, a crashing writer, close() that never hangs ----------------


@pytest.mark.parametrize("days", [1e6, float("inf"), 36501])
def test_absurd_retention_is_refused_by_the_settings(days: float) -> None:
    with pytest.raises(ValidationError):
        StoreConfig(retention_days=days)
    assert StoreConfig(retention_days=36500).retention_days == 36500  # 100 years is fine


@pytest.mark.parametrize("field", ["max_mb", "retention_interval_s", "queue_max"])
def test_other_store_limits_have_sane_upper_bounds(field: str) -> None:
    with pytest.raises(ValidationError):
        StoreConfig(**{field: 10**12})


@pytest.mark.parametrize("days", [1e6, float("inf")])
def test_reported_retention_config_keeps_writing_and_close_is_bounded(
    tmp_path: Path, days: float
) -> None:
    """The issue's config (accepted by `check` at the time): model_construct skips the
    validation exactly as the old validator did. Retention must not kill the writer, and
    close() must return within its budget even with a full queue."""
    base = StoreConfig(path=str(tmp_path / "h.db"), retention_interval_s=0.05, queue_max=10)
    cfg = StoreConfig.model_construct(**{**base.model_dump(), "retention_days": days})
    table = TagTable.for_names(["a"])
    store = HistoryStore(cfg, table, Metrics())
    g = Group("plc", "fast", 0, 1)
    store.start()
    time.sleep(0.5)  # several retention runs
    assert all(submit(store, g, range(5)))
    assert store.flush(timeout_s=10), "the writer thread stopped writing"
    assert stored_ts(tmp_path / "h.db") == list(range(5))
    submit(store, g, range(5, 40))  # more than queue_max
    assert close_in(store, timeout_s=3.0) < 6.0
    assert store.health()["crashes"] == 0


def test_writer_crash_is_logged_counted_restarted_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, g, metrics = new_store(tmp_path / "h.db", batch_ms=20)
    real = HistoryStore._write
    calls = {"n": 0}

    def write_once_broken(self: HistoryStore, batch: list) -> None:
        # Injected fault: nothing real makes the writer raise on demand, so the first
        # write raises as a bug in the writer would.
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected fault in the history writer")
        real(self, batch)

    monkeypatch.setattr(HistoryStore, "_write", write_once_broken)
    caplog.set_level(logging.INFO, logger="edgeloop.store")
    store.start()
    assert all(submit(store, g, range(10)))
    assert store.flush(timeout_s=15), "the writer did not come back after the crash"
    assert all(submit(store, g, range(10, 20)))
    assert store.flush(timeout_s=15)
    # the batch in hand when it crashed was written after the restart: nothing lost
    assert stored_ts(tmp_path / "h.db") == list(range(20))
    crash_logs = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert len(crash_logs) == 1
    assert "injected fault in the history writer" in caplog.text
    assert "Traceback" in caplog.text  # the formatted record carries the traceback
    assert metrics.get("edgeloop_component_crashes_total", component="store") == 1
    assert metrics.get("edgeloop_component_restarts_total", component="store") == 1
    assert metrics.get("edgeloop_component_up", component="store") == 1
    h = store.health()
    assert h["state"] == "ok" and h["crashes"] == 1 and h["path"] == str(tmp_path / "h.db")
    assert close_in(store, timeout_s=5.0) < 6.0


def test_a_batch_that_crashes_the_writer_twice_is_dropped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poison batch must not crash-loop the writer: retried once, then dropped."""
    store, g, metrics = new_store(tmp_path / "h.db", batch_ms=20)
    real = HistoryStore._write

    def poison(self: HistoryStore, batch: list) -> None:
        # Injected fault: a batch containing ts 3 always crashes the writer.
        if any(it[1] == 3 for it in batch):
            raise RuntimeError("injected poison batch")
        real(self, batch)

    monkeypatch.setattr(HistoryStore, "_write", poison)
    store.start()
    submit(store, g, range(5))
    assert store.flush(timeout_s=15)
    submit(store, g, range(100, 105))
    assert store.flush(timeout_s=15)
    assert stored_ts(tmp_path / "h.db")[-5:] == list(range(100, 105))
    assert metrics.get("edgeloop_component_crashes_total", component="store") == 2
    assert store.health()["dropped"] >= 1
    store.close(timeout_s=5)


def test_close_never_blocks_past_its_timeout_with_a_stuck_writer_and_a_full_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, entered = threading.Event(), threading.Event()
    real = HistoryStore._write

    def stuck(self: HistoryStore, batch: list) -> None:
        entered.set()
        gate.wait(60)  # injected fault: a disk that stops answering (nothing real hangs on demand)
        real(self, batch)

    monkeypatch.setattr(HistoryStore, "_write", stuck)
    store, g, _ = new_store(tmp_path / "h.db", batch_ms=1, queue_max=10)
    store.start()
    try:
        submit(store, g, range(1))
        assert entered.wait(15)  # the writer holds that batch and hangs
        submit(store, g, range(1, 40))  # the queue fills up behind it
        took = close_in(store, timeout_s=1.0)
        assert took < 3.0, f"close() took {took:.1f} s with a 1 s budget"
        h = store.health()
        assert h["state"] != "ok" and h["error"]
    finally:
        gate.set()


# --- item 7: corrupt, truncated, full ------------------------------------------------------


def write_random(path: Path) -> bytes:
    data = os.urandom(64 * 1024)
    path.write_bytes(data)
    path.with_name(path.name + "-wal").write_bytes(os.urandom(4096))
    path.with_name(path.name + "-shm").write_bytes(os.urandom(32768))
    return data


def write_truncated(path: Path) -> bytes:
    store, g, _ = new_store(path, n_tags=100)
    store.start()
    submit(store, g, range(2000))
    store.close()
    size = path.stat().st_size
    assert size > 1_000_000
    os.truncate(path, size // 2)
    return path.read_bytes()


@pytest.mark.parametrize("damage", [write_random, write_truncated], ids=["random", "truncated"])
def test_corrupt_file_is_moved_aside_and_a_fresh_one_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage
) -> None:
    path = tmp_path / "h.db"
    before = damage(path)
    caplog.set_level(logging.INFO, logger="edgeloop.store")
    store, g, metrics = new_store(path)
    store.start()  # never raises
    assert all(submit(store, g, range(10)))
    assert store.flush(timeout_s=30)
    assert stored_ts(path) == list(range(10))
    aside = [p for p in tmp_path.iterdir() if CORRUPT_NAME.match(p.name)]
    assert len(aside) == 1 and aside[0].read_bytes() == before
    if damage is write_random:  # its -wal and -shm went with it
        assert (tmp_path / (aside[0].name + "-wal")).exists()
        assert (tmp_path / (aside[0].name + "-shm")).exists()
    assert metrics.get("edgeloop_storage_recovered_total", component="store") == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(aside[0].name in m for m in errors), errors
    h = store.health()
    assert h["state"] == "ok" and h["moved_aside"] == str(aside[0])
    store.close()
    events = open_reader(str(path)).read_events(0, 2**62 / 1e9, kinds=["storage_recovered"])
    assert events and events[0]["payload"]["moved_to"] == str(aside[0])


def test_full_disk_at_start_fails_soft_and_recovers_when_space_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgeloop.store")
    with small_fs(tmp_path / "fs", size="1m") as d:  # a fresh history needs ~300 kB
        filler = fill(d)
        store, g, metrics = new_store(d / "h.db")
        store.start()  # never raises
        assert wait_for(lambda: store.health()["state"] == "failed"), store.health()
        assert store.health()["error"]
        assert submit(store, g, range(50)) == [False] * 50  # dropped and counted, no exception
        assert metrics.get("edgeloop_store_dropped_total") >= 50
        assert metrics.get("edgeloop_component_up", component="store") == 0
        time.sleep(1.5)  # a few reopen attempts on the still-full disk
        unavailable = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(unavailable) == 1, [r.getMessage() for r in unavailable]  # once per episode
        filler.unlink()
        assert wait_for(lambda: store.health()["state"] == "ok", 30), store.health()
        assert all(submit(store, g, range(100, 110)))
        assert store.flush(timeout_s=15)
        assert stored_ts(d / "h.db") == list(range(100, 110))
        assert not [p for p in d.iterdir() if "corrupt" in p.name]  # full is not corrupt
        assert close_in(store, timeout_s=3.0) < 4.0


def test_disk_full_mid_run_degrades_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgeloop.store")
    with small_fs(tmp_path / "fs", size="2m") as d:
        store, g, metrics = new_store(d / "h.db", n_tags=100, batch_ms=20)
        store.start()
        assert all(submit(store, g, range(20)))
        assert store.flush(timeout_s=15)
        filler = fill(d)
        for k in range(20, 420):  # 400 rows of 2.7 kB: more than the WAL can reuse
            store.table.raw[:] = k
            store.submit_frame(g, k)  # never raises
            if k % 50 == 0:
                assert store.flush(timeout_s=15)
        assert store.flush(timeout_s=15)
        h = store.health()
        assert h["state"] == "degraded" and "full" in (h["error"] or ""), h
        assert metrics.get("edgeloop_store_dropped_total") > 0
        assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
        filler.unlink()
        assert all(submit(store, g, range(1000, 1010)))
        assert store.flush(timeout_s=15)
        assert store.health()["state"] == "ok"
        assert stored_ts(d / "h.db")[-10:] == list(range(1000, 1010))
        assert any("recovered" in r.getMessage() for r in caplog.records)
        store.close(timeout_s=5)


def test_queue_overflow_is_logged_once_per_episode_with_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgeloop.store")
    store, g, metrics = new_store(tmp_path / "h.db", queue_max=10)
    # not started: nothing drains the queue, so submits 11..15 overflow
    assert submit(store, g, range(15)) == [True] * 10 + [False] * 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "queue" in warnings[0], warnings
    store.start()
    assert store.flush(timeout_s=15)
    time.sleep(1.1)  # an episode ends after a second without drops, not at the first free slot
    assert store.submit_frame(g, 99)  # the episode ends: one line with the count
    ended = [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()]
    assert len(ended) == 1 and "5 " in ended[0], ended
    assert metrics.get("edgeloop_store_dropped_total") == 5
    store.close()


def test_health_reports_the_open_database(tmp_path: Path) -> None:
    store, g, _ = new_store(tmp_path / "h.db")
    store.start()
    submit(store, g, range(3))
    assert store.flush(timeout_s=15)
    h = store.health()
    assert h == {
        "state": "ok",
        "error": None,
        "crashes": 0,
        "path": str(tmp_path / "h.db"),
        "dropped": 0,
        "moved_aside": None,
    }
    store.close()
    assert np.all(np.diff(stored_ts(tmp_path / "h.db")) > 0)
