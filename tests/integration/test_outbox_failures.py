"""Publisher and outbox when storage goes wrong, against a real mosquitto and real files:
corrupt and truncated outboxes, a full disk at start and during the run, another process
holding the SQLite write lock, a crashing writer, a replaced outbox (epoch), drops that
must be logged (issue 11, items 7, 8 and 9)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.metrics import Metrics
from agent.publish import Outbox, PublishConfig, Publisher
from agent.tags import TagTable
from tests.fixtures.mqtt import Broker, Collector
from tests.fixtures.ports import free_port
from tests.fixtures.smallfs import fill, small_fs

CORRUPT_NAME = re.compile(r"^outbox\.db\.corrupt-\d{8}T\d{6}Z$")


@dataclass
class Group:
    device: str
    name: str
    start: int
    stop: int
    points: tuple = ()


def groups_of(size: int) -> list[Group]:
    return [Group("heater_plc", "fast", 0, size), Group("pump_skid", "skid", size, 2 * size)]


def cfg(port: int, path: Path, **over: object) -> PublishConfig:
    mqtt = {
        "host": "127.0.0.1",
        "port": port,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.5,
        "connect_timeout_s": 2,
    }
    outbox = {"path": str(path), **over.pop("outbox", {})}  # type: ignore[dict-item]
    return PublishConfig.model_validate({"mqtt": mqtt, "outbox": outbox, **over})


class Rig:
    """A publisher over a table of two groups, publishing frame k as value k."""

    def __init__(self, c: PublishConfig, size: int = 3) -> None:
        self.groups = groups_of(size)
        self.table = TagTable.for_names([f"t{i}" for i in range(2 * size)])
        self.metrics = Metrics()
        self.pub = Publisher(c, "site", self.table, self.metrics)
        self.sent = 0

    def frame(self, k: int) -> None:
        for g in self.groups:
            self.table.raw[g.start : g.stop] = k
            self.pub.publish_frame(g, 1_700_000_000_000_000_000 + k * 10_000_000)
            self.sent += 1


def data(msgs: list[tuple[str, bytes]]) -> dict[str, list[dict]]:
    """JSON data messages by topic, in arrival order."""
    out: dict[str, list[dict]] = {}
    for topic, payload in msgs:
        if topic.startswith("edgeloop/site/") and topic.count("/") == 3 and "/_" not in topic:
            out.setdefault(topic, []).append(json.loads(payload))
    return out


def first_arrivals(docs: list[dict]) -> list[int]:
    """At-least-once: the seqs in order of first arrival (re-sends dropped)."""
    seen, out = set(), []
    for d in docs:
        if d["seq"] not in seen:
            seen.add(d["seq"])
            out.append(d["seq"])
    return out


def delivered(col: Collector, per_topic: int) -> bool:
    got = data(col.messages)
    return len(got) == 2 and all(len(set(d["seq"] for d in v)) >= per_topic for v in got.values())


async def wait_until(pred, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return False


def moved_aside(d: Path) -> list[Path]:
    return [p for p in d.iterdir() if CORRUPT_NAME.match(p.name)]


def remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


# --- item 7: corrupt and truncated outbox files ----------------------------------------


def write_random(path: Path) -> bytes:
    data = os.urandom(64 * 1024)
    path.write_bytes(data)
    return data


def write_truncated(path: Path) -> bytes:
    ob = Outbox(str(path), 10**9)
    for _ in range(30):
        ob.append([("t", lambda s: b"x" * 1000, False)] * 100)
    ob.close()
    size = path.stat().st_size
    assert size > 1_000_000
    os.truncate(path, size // 2)
    return path.read_bytes()


@pytest.mark.parametrize("damage", [write_random, write_truncated], ids=["random", "truncated"])
async def test_corrupt_outbox_is_moved_aside_and_publishing_goes_on(
    mqtt_broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage
) -> None:
    path = tmp_path / "outbox.db"
    before = damage(path)
    col = Collector(mqtt_broker)
    caplog.set_level(logging.INFO, logger="edgeloop.publish")
    rig = Rig(cfg(mqtt_broker.port, path))
    await rig.pub.start()  # never raises
    try:
        for k in range(10):
            rig.frame(k)
        assert await col.await_for(lambda ms: delivered(col, 10), 30)
        ev = "edgeloop/site/_events/storage_recovered"
        assert await col.await_for(lambda ms: any(t == ev for t, _ in ms), 10)
        aside = moved_aside(tmp_path)
        assert len(aside) == 1 and aside[0].read_bytes() == before
        payload = json.loads(col.on(ev)[0][1])["payload"]
        assert payload["moved_to"] == str(aside[0]) and payload["component"] == "publish"
        assert rig.metrics.get("edgeloop_storage_recovered_total", component="publish") == 1
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any(aside[0].name in m for m in errors), errors
        h = rig.pub.health()
        assert h["state"] == "ok" and h["moved_aside"] == str(aside[0]), h
        for docs in data(col.messages).values():
            assert first_arrivals(docs) == list(range(1, 11))
    finally:
        await rig.pub.close()
        col.close()


# --- item 7: a full disk at start and during the run ----------------------------------------


async def test_full_disk_at_start_publisher_fails_soft_and_recovers(
    mqtt_broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    col = Collector(mqtt_broker)
    caplog.set_level(logging.INFO, logger="edgeloop.publish")
    with small_fs(tmp_path / "fs") as d:
        filler = fill(d)
        rig = Rig(cfg(mqtt_broker.port, d / "outbox.db"))
        try:
            await rig.pub.start()  # never raises
            assert await wait_until(lambda: rig.pub.health()["state"] == "failed"), rig.pub.health()
            for k in range(20):
                rig.frame(k)  # never raises
            assert await rig.pub.flush(timeout_s=10)
            assert rig.metrics.get("edgeloop_queue_dropped_total", queue="outbox") == 40
            assert rig.pub.health()["error"]
            await asyncio.sleep(1.5)  # reopen attempts on the still-full disk
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1, [r.getMessage() for r in errors]  # once per episode
            filler.unlink()
            assert await wait_until(lambda: rig.pub.health()["state"] == "ok", 30), rig.pub.health()
            for k in range(100, 105):
                rig.frame(k)
            assert await col.await_for(lambda ms: delivered(col, 5), 30)
            values = [d["frames"][0]["raw"][0] for v in data(col.messages).values() for d in v]
            assert sorted(values) == [100, 100, 101, 101, 102, 102, 103, 103, 104, 104]
        finally:
            await rig.pub.close()
            col.close()


async def test_disk_full_mid_run_degrades_without_raising_and_recovers(
    mqtt_broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    col = Collector(mqtt_broker)
    caplog.set_level(logging.INFO, logger="edgeloop.publish")
    with small_fs(tmp_path / "fs", size="1m") as d:
        rig = Rig(cfg(mqtt_broker.port, d / "outbox.db"), size=100)  # 100-tag groups: ~5 kB
        try:
            await rig.pub.start()
            for k in range(5):
                rig.frame(k)
            assert await col.await_for(lambda ms: delivered(col, 5), 30)
            mqtt_broker.stop()  # rows now stay in the outbox and need new pages
            filler = fill(d)
            for k in range(5, 105):
                rig.frame(k)  # never raises
                if k % 10 == 0:
                    await asyncio.sleep(0)
            assert await rig.pub.flush(timeout_s=20)
            h = rig.pub.health()
            assert h["state"] == "degraded" and "full" in (h["error"] or ""), h
            lost = rig.metrics.get("edgeloop_queue_dropped_total", queue="outbox")
            assert lost > 0
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert len([m for m in errors if "writes failing" in m]) == 1, errors
            filler.unlink()
            for k in range(200, 210):
                rig.frame(k)
            assert await rig.pub.flush(timeout_s=20)
            assert rig.pub.health()["state"] == "ok"
            mqtt_broker.start()
            last = rig.sent // 2  # every message took a seq, delivered or not
            assert await col.await_for(
                lambda ms: all(max(d["seq"] for d in v) == last for v in data(ms).values()),
                30,
            )
            got = {t: first_arrivals(v) for t, v in data(col.messages).items()}
            total = sum(len(s) for s in got.values())
            for seqs in got.values():
                assert seqs == sorted(seqs)  # in order, with a gap where messages were lost
            assert total + lost == rig.sent  # the loss is visible to consumers as seq gaps
        finally:
            await rig.pub.close()
            col.close()


# --- item 8: SQLite off the event loop -------------------------------------------------------

HOLD_LOCK = r"""
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
con.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("COMMIT")
print("released", flush=True)
"""


def hold_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process takes the outbox's write lock (BEGIN IMMEDIATE) for `seconds`."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    return holder


async def test_outbox_locked_by_another_process_never_stalls_the_event_loop(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    path = tmp_path / "outbox.db"
    col = Collector(mqtt_broker)
    rig = Rig(cfg(mqtt_broker.port, path))
    await rig.pub.start()
    holder = None
    try:
        rig.frame(0)
        assert await col.await_for(lambda ms: delivered(col, 1), 20)
        holder = await asyncio.to_thread(hold_lock, path, 5)
        loop = asyncio.get_running_loop()
        lags: list[float] = []

        async def ticker() -> None:
            while True:
                t = loop.time()
                await asyncio.sleep(0.01)
                lags.append(loop.time() - t - 0.01)

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.2)  # the ticker is running before the first publish
        for k in range(1, 121):  # 20 Hz for 6 s, across the 5 s lock
            rig.frame(k)
            await asyncio.sleep(0.05)
        assert await asyncio.to_thread(holder.wait, 30) == 0
        tick.cancel()
        assert len(lags) > 100
        assert max(lags) < 1.0, f"event loop stalled {max(lags):.2f} s behind the lock"
        assert await col.await_for(lambda ms: delivered(col, 121), 30)
        for docs in data(col.messages).values():
            assert first_arrivals(docs) == list(range(1, 122))  # nothing lost, in order
        assert rig.metrics.get("edgeloop_queue_dropped_total", queue="outbox") == 0
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        await rig.pub.close()
        col.close()


async def test_queue_overflow_while_locked_is_counted_logged_and_visible_as_a_gap(
    mqtt_broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.db"
    col = Collector(mqtt_broker)
    caplog.set_level(logging.INFO, logger="edgeloop.publish")
    rig = Rig(cfg(mqtt_broker.port, path, outbox={"queue_max": 20}))
    await rig.pub.start()
    holder = None
    try:
        rig.frame(0)
        assert await col.await_for(lambda ms: delivered(col, 1), 20)
        holder = await asyncio.to_thread(hold_lock, path, 2)
        for k in range(1, 51):
            rig.frame(k)  # 100 messages against a queue of 20: the newest are dropped
        lost = rig.metrics.get("edgeloop_queue_dropped_total", queue="outbox")
        assert lost >= 60
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len([m for m in warnings if "queue full" in m]) == 1, warnings
        assert await asyncio.to_thread(holder.wait, 30) == 0
        assert await rig.pub.flush(timeout_s=20)
        rig.frame(51)  # the episode ends, with the count
        assert await rig.pub.flush(timeout_s=20)
        ended = [
            m
            for m in (r.getMessage() for r in caplog.records)
            if "queue full" in m and "recovered" in m
        ]
        assert len(ended) == 1 and f"{int(lost)} " in ended[0], ended
        assert await col.await_for(
            lambda ms: all(max(d["seq"] for d in v) == 52 for v in data(ms).values()), 30
        )
        got = {t: first_arrivals(v) for t, v in data(col.messages).items()}
        assert sum(len(s) for s in got.values()) + lost == rig.sent
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        await rig.pub.close()
        col.close()


# --- supervision ------------------------------------------------------------------------------


async def test_outbox_writer_crash_is_logged_counted_and_nothing_is_lost(
    mqtt_broker: Broker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = Outbox.append
    calls = {"n": 0}

    def append_once_broken(self: Outbox, items: list) -> int:
        # Injected fault: nothing real makes the writer raise on demand, so the first
        # commit raises as a bug in the writer would.
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected fault in the outbox writer")
        return real(self, items)

    monkeypatch.setattr(Outbox, "append", append_once_broken)
    col = Collector(mqtt_broker)
    caplog.set_level(logging.INFO, logger="edgeloop.publish")
    rig = Rig(cfg(mqtt_broker.port, tmp_path / "outbox.db"))
    await rig.pub.start()
    try:
        for k in range(10):
            rig.frame(k)
        assert await col.await_for(lambda ms: delivered(col, 10), 30)
        for docs in data(col.messages).values():
            assert first_arrivals(docs) == list(range(1, 11))
        crash_logs = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
        assert len(crash_logs) == 1 and "injected fault" in caplog.text
        assert "Traceback" in caplog.text
        assert rig.metrics.get("edgeloop_component_crashes_total", component="publish") == 1
        assert rig.metrics.get("edgeloop_component_restarts_total", component="publish") == 1
        h = rig.pub.health()
        assert h["crashes"] == 1 and h["state"] == "ok", h
    finally:
        await rig.pub.close()
        col.close()


async def test_health_of_a_running_publisher(mqtt_broker: Broker, tmp_path: Path) -> None:
    rig = Rig(cfg(mqtt_broker.port, tmp_path / "outbox.db"))
    await rig.pub.start()
    try:
        rig.frame(0)
        assert await rig.pub.flush(timeout_s=10)
        assert await wait_until(lambda: rig.pub.connected)
        h = rig.pub.health()
        assert {k: h[k] for k in ("state", "error", "crashes", "path")} == {
            "state": "ok",
            "error": None,
            "crashes": 0,
            "path": str(tmp_path / "outbox.db"),
        }
        assert h["connected"] is True and h["dropped"] == 0 and h["moved_aside"] is None
        assert re.fullmatch(r"[0-9a-f]{16}", h["epoch"])
    finally:
        await rig.pub.close()


# --- item 9: epoch, logged drops --------------------------------------------------------------


async def test_a_new_outbox_file_has_a_new_epoch_so_consumers_keep_its_data(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    path = tmp_path / "outbox.db"
    col = Collector(mqtt_broker)

    async def run(ks: range, event: bool = False) -> None:
        rig = Rig(cfg(mqtt_broker.port, path))
        await rig.pub.start()
        for k in ks:
            rig.frame(k)
        if event:
            rig.pub.publish_event("anomaly_on", {"group": "g"})
        assert await rig.pub.flush(timeout_s=10)
        await rig.pub.close()

    try:
        await run(range(0, 5), event=True)
        await run(range(5, 8))  # same file: same epoch, seq goes on
        remove_db(path)  # the outbox is replaced
        await run(range(8, 11), event=True)
        assert await col.await_for(lambda ms: delivered(col, 8), 30)
        assert await col.await_for(
            lambda ms: len([t for t, _ in ms if "/_events/anomaly_on" in t]) >= 2, 10
        )
        fast = data(col.messages)["edgeloop/site/heater_plc/fast"]
        epochs = [d["epoch"] for d in fast]
        assert all(re.fullmatch(r"[0-9a-f]{16}", e) for e in epochs)
        assert len(set(epochs[:8])) == 1 and len(set(epochs[8:])) == 1
        assert epochs[0] != epochs[8]
        assert [d["seq"] for d in fast] == [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3]
        events = [json.loads(p) for t, p in col.messages if t.endswith("/_events/anomaly_on")]
        assert [e["epoch"] for e in events] == [epochs[0], epochs[8]]

        # the documented consumer rule keeps every message: (epoch, seq), a new epoch resets
        last: dict[str, tuple[str, int]] = {}
        kept = 0
        for d in fast:
            e, s = last.get("fast", ("", 0))
            if d["epoch"] != e or d["seq"] > s:
                kept += 1
                last["fast"] = (d["epoch"], d["seq"])
        assert kept == 11
    finally:
        col.close()


async def test_budget_drops_are_logged_once_per_episode_with_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgeloop.publish")
    # no broker: everything stays in an outbox of ~52 kB (~120 messages)
    rig = Rig(cfg(free_port(), tmp_path / "outbox.db", outbox={"max_mb": 0.05}))
    await rig.pub.start()
    try:
        for k in range(300):
            rig.frame(k)
            if k % 50 == 0:
                assert await rig.pub.flush(timeout_s=10)
        assert await rig.pub.flush(timeout_s=10)
        dropped = rig.metrics.get("edgeloop_outbox_dropped_total")
        assert dropped > 300
        budget = [r.getMessage() for r in caplog.records if "budget" in r.getMessage()]
        assert len(budget) == 1 and re.search(r"\d+ oldest", budget[0]), budget
        assert rig.pub.health()["dropped"] == dropped
    finally:
        await rig.pub.close()
        assert Outbox(str(tmp_path / "outbox.db"), 10**6).depth > 0  # the newest are kept


def test_payload_values_are_unchanged_by_the_writer_thread(tmp_path: Path) -> None:
    """Frames are copied when handed over: later changes to the table do not leak in."""
    c = cfg(free_port(), tmp_path / "outbox.db")

    async def go() -> list[float]:
        rig = Rig(c)
        await rig.pub.start()
        for k in range(20):
            rig.frame(k)  # the table changes right after each hand-over
        assert await rig.pub.flush(timeout_s=10)
        await rig.pub.close()
        ob = Outbox(str(tmp_path / "outbox.db"), 10**6)
        rows = [r for r in ob.peek(100) if r.topic.endswith("/fast")]
        ob.close()
        return [json.loads(r.payload)["frames"][0]["raw"][0] for r in rows]

    assert asyncio.run(go()) == [float(k) for k in range(20)]
