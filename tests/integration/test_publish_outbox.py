"""The durable outbox on a real SQLite file: order, per-topic seqs across restarts, budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.publish.outbox import ROW_OVERHEAD, Outbox


def put(ob: Outbox, topic: str, n: int, size: int = 10) -> int:
    return ob.append([(topic, lambda s: str(s).encode().ljust(size, b"."), False)] * n)


def test_order_and_per_topic_seq_survive_reopen(tmp_path: Path) -> None:
    p = str(tmp_path / "o.db")
    ob = Outbox(p, 10**6)
    put(ob, "a", 3)
    put(ob, "b", 2)
    put(ob, "a", 1)
    rows = ob.peek(100)
    assert [(r.topic, r.seq) for r in rows] == [
        ("a", 1),
        ("a", 2),
        ("a", 3),
        ("b", 1),
        ("b", 2),
        ("a", 4),
    ]
    assert rows[0].payload.startswith(b"1.") and ob.depth == 6
    ob.ack([r.id for r in rows[:4]])  # a1..a3, b1 acknowledged
    ob.close()
    ob = Outbox(p, 10**6)  # a restart: depth, bytes and counters come back from disk
    assert ob.depth == 2 and [(r.topic, r.seq) for r in ob.peek(10)] == [("b", 2), ("a", 4)]
    put(ob, "a", 1)
    put(ob, "b", 1)
    assert ob.last_seq("a") == 5 and ob.last_seq("b") == 3
    ob.ack([r.id for r in ob.peek(10)])
    assert ob.depth == 0 and ob.bytes == 0
    # seqs never restart, even with an empty outbox
    put(ob, "a", 1)
    assert ob.peek(1)[0].seq == 6


def test_peek_shares_the_window_between_topics_in_order(tmp_path: Path) -> None:
    """A backlog on one topic cannot hold back another topic's message."""
    ob = Outbox(str(tmp_path / "o.db"), 10**6)
    put(ob, "data", 50)
    put(ob, "event", 1)
    put(ob, "data2", 2)
    got = [(r.topic, r.seq) for r in ob.peek(6)]
    assert got == [("data", 1), ("data", 2), ("data", 3), ("event", 1), ("data2", 1), ("data2", 2)]
    ob.ack([r.id for r in ob.peek(6)])
    assert [(r.topic, r.seq) for r in ob.peek(3)] == [("data", 4), ("data", 5), ("data", 6)]


def test_budget_drops_oldest_and_counts(tmp_path: Path) -> None:
    row = 100 + 1 + ROW_OVERHEAD
    ob = Outbox(str(tmp_path / "o.db"), 10 * row)
    assert put(ob, "t", 10, size=100) == 0
    assert ob.bytes == 10 * row
    assert put(ob, "t", 3, size=100) == 3  # three oldest go
    assert ob.dropped == 3 and ob.depth == 10 and ob.bytes == 10 * row
    assert [r.seq for r in ob.peek(100)] == list(range(4, 14))


def test_a_message_larger_than_the_budget_is_kept_alone(tmp_path: Path) -> None:
    """The newest message is never dropped for its own sake; everything older goes."""
    ob = Outbox(str(tmp_path / "o.db"), 500)
    put(ob, "t", 2, size=100)
    assert put(ob, "t", 1, size=1000) == 2
    assert [r.seq for r in ob.peek(10)] == [3]


def test_unwritable_path_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    from agent.publish.outbox import OutboxError

    with pytest.raises((OutboxError, OSError)):
        Outbox(str(tmp_path / "f" / "o.db"), 1000)


async def test_outbox_write_failure_is_logged_once_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import numpy as np

    from agent.metrics import Metrics
    from agent.publish import PublishConfig, Publisher
    from tests.fixtures.ports import free_port

    class T:
        names = ("a",)
        raw = value = score = np.zeros(1)
        flags = np.zeros(1, np.uint16)
        quality = np.zeros(1, np.uint8)

    class G:
        device, name, start, stop = "d", "g", 0, 1

    cfg = PublishConfig.model_validate(
        {"mqtt": {"port": free_port()}, "outbox": {"path": str(tmp_path / "o.db")}}
    )
    metrics = Metrics()
    pub = Publisher(cfg, "s", T(), metrics)
    await pub.start()
    pub.publish_frame(G, 1)
    assert pub._writer is not None
    # Injected fault: the database becomes unusable under the writer (the real full disk is
    # in test_outbox_failures.py); the connection is closed in the thread that owns it.
    await pub._writer.call(lambda ob: ob._con.close())
    caplog.set_level(logging.ERROR, logger="edgeloop.publish")
    for k in range(5):
        pub.publish_frame(G, k)  # never raises into the acquisition callback
        assert await pub.flush()
    assert metrics.get("edgeloop_queue_dropped_total", queue="outbox") == 5
    assert len([r for r in caplog.records if "writes failing" in r.getMessage()]) == 1
    assert pub.health()["state"] == "degraded"
    await pub.close(drain_timeout_s=0.1)


async def test_event_payloads_are_strict_json(tmp_path: Path) -> None:
    import json

    import numpy as np

    from agent.metrics import Metrics
    from agent.publish import PublishConfig, Publisher
    from tests.fixtures.ports import free_port

    cfg = PublishConfig.model_validate(
        {"mqtt": {"port": free_port()}, "outbox": {"path": str(tmp_path / "o.db")}}
    )
    pub = Publisher(cfg, "s", None, Metrics())
    await pub.start()
    pub.publish_event(
        "anomaly_on",
        {"score": np.float64("nan"), "n": np.int64(3), "v": np.array([1.0, np.inf]), "x": {1, 2}},
    )
    assert await pub.flush() and pub._writer is not None
    row = (await pub._writer.call(lambda ob: ob.peek(1)))[0]
    doc = json.loads(row.payload, parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert doc["payload"]["score"] is None and doc["payload"]["n"] == 3
    assert doc["payload"]["v"] == [1.0, None] and isinstance(doc["payload"]["x"], str)
    assert row.topic == "edgeloop/s/_events/anomaly_on" and doc["seq"] == 1
    await pub.close(drain_timeout_s=0.1)


async def test_close_cancelled_by_a_deadline_still_stops_and_keeps_data(tmp_path: Path) -> None:
    """The service bounds close(); a cancelled close leaves no task behind, data kept."""
    import asyncio

    import numpy as np

    from agent.metrics import Metrics
    from agent.publish import PublishConfig, Publisher

    class T:
        names = ("a",)
        raw = value = score = np.zeros(1)
        flags = np.zeros(1, np.uint16)
        quality = np.zeros(1, np.uint8)

    class G:
        device, name, start, stop = "d", "g", 0, 1

    import socket

    # a "broker" that accepts TCP but never answers CONNECT: the connect attempt hangs
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    path = str(tmp_path / "o.db")
    cfg = PublishConfig.model_validate(
        {
            "mqtt": {"port": silent.getsockname()[1], "connect_timeout_s": 30},
            "outbox": {"path": path},
        }
    )
    pub = Publisher(cfg, "s", T(), Metrics())
    await pub.start()
    task = pub._task
    pub.publish_frame(G, 1)
    await asyncio.sleep(0.2)  # the attempt is under way
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pub.close(drain_timeout_s=30), 0.5)
        assert task is not None and task.done() and pub._writer is None
        assert Outbox(path, 10**6).depth == 1
    finally:
        silent.close()
