"""`encoding: json_flat` against a real mosquitto: one message per tag, {ts, value, quality,
reason}, reported by exception with deadbands per tag and per group, through the outbox."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.metrics import Metrics
from agent.publish import PublishConfig, Publisher
from agent.tags import TagTable
from drivers.base import Point, Quality, Reason
from tests.fixtures.mqtt import Broker, Collector

T0 = 1_700_000_000_000_000_000
STEP = 200_000_000  # 200 ms between polls


@dataclass
class Group:
    device: str
    name: str
    start: int
    stop: int
    points: tuple = ()


def _table() -> tuple[TagTable, Group, Group]:
    pts = [
        Point("temp", 0, "float32"),
        Point("level", 1, "float32"),
        Point("alarm", 2, "bool"),
        Point("count", 3, "uint16"),
        Point("model", 4, "string"),
    ]
    t = TagTable.from_points(pts, ["plc"] * 5)
    t.quality[:] = Quality.GOOD
    t.reason[:] = Reason.NONE
    return t, Group("plc", "fast", 0, 3), Group("plc", "slow", 3, 5)


def _cfg(broker: Broker, tmp_path: Path, flat: dict) -> PublishConfig:
    return PublishConfig.model_validate(
        {
            "encoding": "json_flat",
            "json_flat": flat,
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "backoff_initial_s": 0.05,
                "backoff_max_s": 0.5,
            },
            "outbox": {"path": str(tmp_path / "outbox.db")},
        }
    )


def _by_topic(col: Collector) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for topic, body in col.messages:
        if topic.endswith("/status"):
            continue
        out.setdefault(topic, []).append(json.loads(body))
    return out


async def test_flat_messages_shape_deadband_quality_and_silence(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    col = Collector(mqtt_broker, topic="edgeloop/#")
    t, fast, slow = _table()
    flat = {
        "deadband": 0.5,
        "groups": {"slow": {"deadband": 0}},
        "tags": {"level": {"deadband": 2.0, "max_silence_s": 0.3}},
    }
    pub = Publisher(_cfg(mqtt_broker, tmp_path, flat), "site", t, Metrics(), groups=[fast, slow])
    await pub.start()
    # fast: (temp, level, alarm) per poll; level goes bad at poll 3
    polls = [
        (20.0, 50.0, 0),  # 0: first samples: all sent
        (20.3, 51.0, 0),  # 1: inside the deadbands: nothing
        (20.6, 51.5, 1),  # 2: temp moved 0.6 > 0.5, alarm changed; level silent 400 ms
        (20.6, 51.5, 1),  # 3: level's quality changes: sent with its reason
        (20.7, 51.5, 1),  # 4: nothing (0.1 since 20.6; level silent for 200 ms only)
        (np.nan, 51.5, 1),  # 5: temp has no value; level silent 400 ms >= 300 ms again
    ]
    for k, (temp, level, alarm) in enumerate(polls):
        t.raw[0:3] = (temp, level, alarm)
        if k == 3:
            t.quality[1], t.reason[1] = Quality.BAD, Reason.DECODE_ERROR
        pub.publish_frame(fast, T0 + k * STEP)
    for k, (count, model) in enumerate([(7, "A"), (7, "A"), (8, "A"), (8, "B")]):
        t.raw[3] = count
        t.texts[4] = model
        pub.publish_frame(slow, T0 + k * STEP)
    assert await col.await_for(lambda ms: sum(not t.endswith("/status") for t, _ in ms) >= 13)
    await pub.close()
    col.close()
    got = _by_topic(col)
    assert set(got) == {
        f"edgeloop/site/plc/{n}" for n in ("temp", "level", "alarm", "count", "model")
    }
    for docs in got.values():
        assert all(set(d) == {"ts", "value", "quality", "reason"} for d in docs)
    vals = {topic.rsplit("/", 1)[-1]: [d["value"] for d in docs] for topic, docs in got.items()}
    assert vals == {
        "temp": [20.0, 20.6, None],
        "level": [50.0, 51.5, 51.5, 51.5],  # silence, quality, silence
        "alarm": [False, True],
        "count": [7, 8],
        "model": ["A", "B"],
    }
    level = got["edgeloop/site/plc/level"]
    assert [(d["quality"], d["reason"]) for d in level] == [
        ("good", None),
        ("good", None),
        ("bad", "decode_error"),
        ("bad", "decode_error"),
    ]
    assert level[0]["ts"] == "2023-11-14T22:13:20.000Z" and level[3]["ts"].endswith("21.000Z")
    assert isinstance(vals["count"][0], int) and isinstance(vals["alarm"][0], bool)


async def test_flat_outage_every_message_arrives_in_order(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    col = Collector(mqtt_broker, topic="edgeloop/#")
    mqtt_broker.stop()
    t, fast, slow = _table()
    pub = Publisher(_cfg(mqtt_broker, tmp_path, {}), "site", t, Metrics(), groups=[fast, slow])
    await pub.start()
    for k in range(50):
        t.raw[0:3] = (float(k), 1.0, k % 2)  # temp changes every poll, level never
        pub.publish_frame(fast, T0 + k * STEP)
    assert await pub.flush()
    mqtt_broker.start()
    assert await col.await_for(
        lambda ms: (
            sum(t.endswith("/temp") for t, _ in ms) >= 50
            and sum(t.endswith("/alarm") for t, _ in ms) >= 50
        ),
        30,
    )
    await pub.close()
    col.close()
    got = _by_topic(col)
    temps = [d["value"] for d in got["edgeloop/site/plc/temp"]]
    first = [v for i, v in enumerate(temps) if v not in temps[:i]]  # re-sends are duplicates
    assert first == [float(k) for k in range(50)]
    assert [d["value"] for d in got["edgeloop/site/plc/level"]] == [1.0]  # unchanged: once
