"""Publisher against a real mosquitto: delivery, outages, kill -9, credentials, budget, TLS,
Sparkplug B."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from agent.metrics import Metrics
from agent.publish import Outbox, PublishConfig, Publisher
from agent.publish import sparkplug as spb
from agent.tags import TagTable
from tests.fixtures.mqtt import PASSWORD, USER, Broker, Collector
from tests.fixtures.sparkplug_host import decode, encode_command, value_of

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


TABLE_NAMES = ["temp", "power", "level", "vib", "flow"]
GROUPS = [Group("heater_plc", "fast", 0, 3), Group("pump_skid", "skid", 3, 5)]


def cfg(broker: Broker, tmp_path: Path, **over: object) -> PublishConfig:
    mqtt = {
        "host": broker.host,
        "port": broker.port,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.5,
        "connect_timeout_s": 2,
        **over.pop("mqtt", {}),  # type: ignore[dict-item]
    }
    outbox = {"path": str(tmp_path / "outbox.db"), **over.pop("outbox", {})}  # type: ignore[dict-item]
    return PublishConfig.model_validate({"mqtt": mqtt, "outbox": outbox, **over})


def frame(pub: Publisher, table: Table, k: int) -> None:
    for g in GROUPS:
        table.raw[g.start : g.stop] = k + np.arange(g.stop - g.start) / 10
        table.value[g.start : g.stop] = table.raw[g.start : g.stop]
        table.ts_ns[g.start : g.stop] = 1_700_000_000_000_000_000 + k * 10_000_000
        pub.publish_frame(g, 1_700_000_000_000_000_000 + k * 10_000_000)


def decode_payload(body: bytes) -> dict:
    """A Sparkplug payload as a dict of the fields set, by the independent test decoder
    (tests/fixtures/sparkplug_host.py); properties as {key: value}, the value by datatype."""
    p = decode(body)
    out: dict = {f.name: v for f, v in p.ListFields() if f.name != "metrics"}
    out["metrics"] = []
    for m in p.metrics:
        d = {f.name: v for f, v in m.ListFields() if f.name != "properties"}
        if m.HasField("properties"):
            d["properties"] = {
                k: value_of(v, None)
                for k, v in zip(m.properties.keys, m.properties.values, strict=True)
            }
        out["metrics"].append(d)
    return out


def seqs_by_topic(msgs: list[tuple[str, bytes]], prefix: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for topic, payload in msgs:
        if topic.startswith(prefix) and not topic.endswith("/status"):
            out.setdefault(topic, []).append(json.loads(payload)["seq"])
    return out


def assert_complete_in_order(seqs: list[int], n: int) -> None:
    """At-least-once in order: first arrivals are 1..n ascending; repeats only re-sends."""
    first, last = [], 0
    for s in seqs:
        if s > last:
            first.append(s)
            last = s
    assert first == list(range(1, n + 1)), (
        f"missing or out of order: {sorted(set(range(1, n + 1)) - set(first))[:10]}"
    )


async def wait_until(pred, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_frames_events_birth_and_will(mqtt_broker: Broker, tmp_path: Path) -> None:
    col = Collector(mqtt_broker)
    table = Table(TABLE_NAMES)
    metrics = Metrics()
    pub = Publisher(cfg(mqtt_broker, tmp_path), "demo-plant", table, metrics)
    await pub.start()
    for k in range(10):
        frame(pub, table, k)
    table.raw[4] = float("nan")
    table.quality[4], table.reason[4] = 1, 5  # bad: decode_error
    pub.publish_frame(GROUPS[1], 1_700_000_001_000_000_000)
    pub.publish_event("anomaly_on", {"group": "pump_health", "score": 4.5})
    assert await wait_until(lambda: len(col.on("edgeloop/demo-plant/pump_skid")) == 11)
    await pub.close()
    col.wait_for(lambda ms: any(b'"offline"' in p for t, p in ms if t.endswith("/status")))
    col.close()
    fast = [json.loads(p) for t, p in col.on("edgeloop/demo-plant/heater_plc/fast")]
    assert [m["seq"] for m in fast] == list(range(1, 11))
    m = fast[3]
    assert m["tags"] == ["temp", "power", "level"] and m["device"] == "heater_plc"
    assert m["frames"][0]["raw"] == [3.0, 3.1, 3.2] and m["frames"][0]["quality"] == [0, 0, 0]
    assert m["frames"][0]["ts"] == "2023-11-14T22:13:20.030Z"
    skid = json.loads(col.on("edgeloop/demo-plant/pump_skid/skid")[-1][1])
    assert skid["frames"][0]["raw"][1] is None  # NaN travels as null
    assert skid["frames"][0]["quality"] == [0, 1] and skid["frames"][0]["reason"] == [0, 5]
    ev = [json.loads(p) for t, p in col.on("edgeloop/demo-plant/_events/anomaly_on")]
    assert ev[0]["seq"] == 1 and ev[0]["payload"] == {"group": "pump_health", "score": 4.5}
    status = [json.loads(p)["status"] for t, p in col.on("edgeloop/demo-plant/status")]
    assert status[0] == "online" and status[-1] == "offline"
    assert metrics.get("edgeloop_publish_messages_total") == 22
    assert metrics.get("edgeloop_outbox_depth") == 0
    assert Outbox(str(tmp_path / "outbox.db"), 10**6).depth == 0


def test_last_will_on_abrupt_loss(mqtt_broker: Broker, tmp_path: Path) -> None:
    """A publisher process killed outright leaves 'offline' via the broker's last will."""
    col = Collector(mqtt_broker)
    script = tmp_path / "p.py"
    script.write_text(
        RUNNER.format(repo=str(REPO), cfg=cfg(mqtt_broker, tmp_path).model_dump_json(), n=1)
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert col.wait_for(lambda ms: any(b'"online"' in p for t, p in ms if t.endswith("/status")))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert col.wait_for(
        lambda ms: any(b'"offline"' in p for t, p in ms if t.endswith("/status")), 60
    )
    col.close()


async def _outage(broker: Broker, tmp_path: Path, outage_s: float) -> None:
    col = Collector(broker)
    table = Table(TABLE_NAMES)
    metrics = Metrics()
    pub = Publisher(cfg(broker, tmp_path), "site", table, metrics)
    await pub.start()
    k = 0

    async def produce(seconds: float) -> None:
        nonlocal k
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            frame(pub, table, k)
            k += 1
            await asyncio.sleep(0.02)

    await produce(1.0)
    broker.stop()
    await produce(outage_s)
    assert metrics.get("edgeloop_mqtt_connected") == 0
    assert await pub.flush()
    assert metrics.get("edgeloop_outbox_depth") > 0  # backlog held during the outage
    broker.start()
    await produce(1.0)
    assert await wait_until(lambda: metrics.get("edgeloop_outbox_depth") == 0, 60)
    await pub.close()
    assert col.wait_for(
        lambda ms: sum(len(v) for v in seqs_by_topic(ms, "edgeloop/site/h").values()) >= k, 30
    )
    col.close()
    got = seqs_by_topic(col.messages, "edgeloop/site/")
    assert set(got) == {"edgeloop/site/heater_plc/fast", "edgeloop/site/pump_skid/skid"}
    for seqs in got.values():
        assert_complete_in_order(seqs, k)
    assert metrics.get("edgeloop_outbox_dropped_total") == 0


async def test_broker_outage_short_every_seq_in_order(mqtt_broker: Broker, tmp_path: Path) -> None:
    await _outage(mqtt_broker, tmp_path, 3.0)


@pytest.mark.slow
async def test_broker_outage_60s_every_seq_in_order(mqtt_broker: Broker, tmp_path: Path) -> None:
    await _outage(mqtt_broker, tmp_path, 60.0)


RUNNER = textwrap.dedent(
    """
    import asyncio, sys
    import numpy as np
    sys.path.insert(0, {repo!r})
    from agent.publish import PublishConfig, Publisher
    class T: pass
    t = T(); t.names = ["a", "b"]; t.texts = {{}}
    t.raw = np.zeros(2); t.value = np.zeros(2); t.score = np.zeros(2)
    t.flags = np.zeros(2, np.uint16); t.quality = np.zeros(2, np.uint8)
    class G: device = "d"; name = "g"; start = 0; stop = 2
    async def main():
        p = Publisher(PublishConfig.model_validate_json({cfg!r}), "site", t, None)
        await p.start()
        i = 0
        while True:
            if i < {n}:
                t.raw[:] = i
                p.publish_frame(G, i)
                if i % 10 == 9:  # flush() returned => committed
                    assert await p.flush()
                    print(i + 1, flush=True)
                i += 1
            await asyncio.sleep(0.002)
    asyncio.run(main())
    """
)


def run_and_kill(script: Path, after: int) -> int:
    """Run a publisher subprocess until it reports `after` commits, SIGKILL it; last count."""
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    committed = 0
    while committed < after:
        committed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    committed = max([committed, *[int(x) for x in proc.stdout.read().split()]])
    proc.wait()
    return committed


async def test_kill9_during_outage_loses_nothing_committed(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    col = Collector(mqtt_broker)  # persistent session: queued for it while we restart
    mqtt_broker.stop()
    c = cfg(mqtt_broker, tmp_path)
    script = tmp_path / "p.py"
    script.write_text(RUNNER.format(repo=str(REPO), cfg=c.model_dump_json(), n=100_000))
    committed = run_and_kill(script, 500)
    ob = Outbox(c.outbox.path, 10**9)
    assert ob.depth >= committed  # flush() returned => committed
    n = ob.depth
    ob.close()
    mqtt_broker.start()
    pub = Publisher(c, "site", Table(["a", "b"]), Metrics())
    await pub.start()
    assert await col.await_for(
        lambda ms: len(seqs_by_topic(ms, "edgeloop/site/d/g").get("edgeloop/site/d/g", [])) >= n, 60
    )
    await pub.close()
    col.close()
    assert_complete_in_order(
        seqs_by_topic(col.messages, "edgeloop/site/d/g")["edgeloop/site/d/g"], n
    )


async def test_refused_credentials_clear_error_once_data_kept(
    mqtt_broker_auth: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("wrong\n")
    metrics = Metrics()
    table = Table(TABLE_NAMES)
    c = cfg(mqtt_broker_auth, tmp_path, mqtt={"username": USER, "password_file": str(pw)})
    pub = Publisher(c, "site", table, metrics)
    caplog.set_level(logging.ERROR, logger="edgeloop.publish")
    await pub.start()
    for k in range(20):
        frame(pub, table, k)
    await asyncio.sleep(2.0)  # several refused attempts at 0.05..0.5 s backoff
    assert not pub.connected and metrics.get("edgeloop_mqtt_connected") == 0
    refused = [r for r in caplog.records if "refused the credentials" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in caplog.records]
    assert "user 'edge'" in refused[0].getMessage()
    assert metrics.get("edgeloop_outbox_depth") == 40
    await pub.close()
    # the right password (from the environment this time) delivers everything kept
    col = Collector(mqtt_broker_auth)
    os.environ["EDGELOOP_TEST_MQTT_PW"] = PASSWORD
    try:
        c2 = cfg(
            mqtt_broker_auth,
            tmp_path,
            mqtt={"username": USER, "password_env": "EDGELOOP_TEST_MQTT_PW"},
        )
        pub2 = Publisher(c2, "site", table, Metrics())
        await pub2.start()
        assert await col.await_for(
            lambda ms: (
                len(seqs_by_topic(ms, "edgeloop/site/pump").get("edgeloop/site/pump_skid/skid", []))
                >= 20
            )
        )
        await pub2.close()
    finally:
        del os.environ["EDGELOOP_TEST_MQTT_PW"]
        col.close()
    for seqs in seqs_by_topic(col.messages, "edgeloop/site/").values():
        assert_complete_in_order(seqs, 20)


async def test_outbox_budget_drops_oldest_counted_rest_delivered(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    col = Collector(mqtt_broker)
    mqtt_broker.stop()
    metrics = Metrics()
    table = Table(TABLE_NAMES)
    c = cfg(mqtt_broker, tmp_path, outbox={"max_mb": 0.05})  # ~52 kB: ~120 messages
    pub = Publisher(c, "site", table, metrics)
    await pub.start()
    n = 300
    for k in range(n):
        frame(pub, table, k)
    assert await pub.flush()
    dropped = metrics.get("edgeloop_outbox_dropped_total")
    assert dropped > 0
    assert metrics.get("edgeloop_outbox_bytes") <= 0.05 * 1024 * 1024
    mqtt_broker.start()
    depth = 2 * n - dropped
    assert await col.await_for(
        lambda ms: sum(len(v) for v in seqs_by_topic(ms, "edgeloop/site/").values()) >= depth, 30
    )
    await pub.close()
    col.close()
    got = seqs_by_topic(col.messages, "edgeloop/site/")
    total = 0
    for seqs in got.values():
        uniq = sorted(set(seqs))
        # what survived is the newest, contiguous up to the last committed seq
        assert uniq == list(range(uniq[0], n + 1)) and uniq[0] > 1
        total += len(uniq)
    assert total + dropped == 2 * n


async def test_tls_with_client_certificate(mqtt_broker_tls: Broker, tmp_path: Path) -> None:
    b = mqtt_broker_tls
    assert b.tls is not None
    col = Collector(b)
    tls = {"ca_file": b.tls.ca, "cert_file": b.tls.client_cert, "key_file": b.tls.client_key}
    table = Table(TABLE_NAMES)
    pub = Publisher(cfg(b, tmp_path, mqtt={"tls": tls}), "site", table, Metrics())
    await pub.start()
    frame(pub, table, 1)
    assert await wait_until(lambda: len(col.on("edgeloop/site/heater_plc/fast")) == 1)
    assert pub.connected
    await pub.close()
    col.close()


async def test_tls_without_client_certificate_is_refused(
    mqtt_broker_tls: Broker, tmp_path: Path
) -> None:
    b = mqtt_broker_tls
    assert b.tls is not None
    table = Table(TABLE_NAMES)
    metrics = Metrics()
    pub = Publisher(cfg(b, tmp_path, mqtt={"tls": {"ca_file": b.tls.ca}}), "site", table, metrics)
    await pub.start()
    frame(pub, table, 1)
    # TLS 1.3 reports the missing certificate after the handshake; the attempt then ends at
    # connect_timeout_s (2 s here), so give it a little longer
    assert await wait_until(lambda: pub.last_error is not None, 6)
    assert not pub.connected and "unavailable" in str(pub.last_error)
    assert await pub.flush() and metrics.get("edgeloop_outbox_depth") == 2
    await pub.close()


async def test_sparkplug_b_birth_data_death(mqtt_broker: Broker, tmp_path: Path) -> None:
    col = Collector(mqtt_broker, topic="spBv1.0/#")
    table = Table(TABLE_NAMES)
    table.quality[1] = 3
    pub = Publisher(
        cfg(mqtt_broker, tmp_path, encoding="sparkplug_b", sparkplug={"group_id": "plant"}),
        "site",
        table,
        Metrics(),
    )
    await pub.start()
    for k in range(5):
        frame(pub, table, k)
    assert await wait_until(lambda: len(col.on("spBv1.0/plant/DDATA/site/")) == 10)
    await pub.close()
    assert col.wait_for(lambda ms: any("/NDEATH/" in t for t, _ in ms))
    col.close()
    topics = [t for t, _ in col.messages]
    ddata = [decode_payload(p) for t, p in col.messages if "/DDATA/" in t]
    assert topics[0] == "spBv1.0/plant/NBIRTH/site"
    nbirth = decode_payload(col.messages[0][1])
    assert nbirth["seq"] == 0 and nbirth["metrics"][0]["name"] == "bdSeq"
    dbirth = [decode_payload(p) for t, p in col.messages if "/DBIRTH/site/heater_plc" in t]
    assert [m["name"] for m in dbirth[0]["metrics"]] == ["fast/temp", "fast/power", "fast/level"]
    assert topics.index("spBv1.0/plant/DBIRTH/site/heater_plc") < topics.index(
        "spBv1.0/plant/DDATA/site/heater_plc"
    )
    seqs = [p["seq"] for t, p in ((t, decode_payload(p)) for t, p in col.messages) if "seq" in p]
    assert seqs == list(range(len(seqs)))  # one node-wide sequence, no gaps
    first = ddata[0]["metrics"]
    assert [m["alias"] for m in first] == [0, 1, 2]
    assert first[0]["double_value"] == 0.0 and first[1]["properties"]["Quality"] == 0
    assert "properties" not in first[0]  # good, as its birth said: nothing to add
    assert "properties" not in ddata[2]["metrics"][0]  # unchanged and good: nothing to say
    assert any("/DDEATH/site/heater_plc" in t for t in topics)


async def test_batch_window_groups_frames_into_fewer_messages(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    col = Collector(mqtt_broker)
    table = Table(TABLE_NAMES)
    pub = Publisher(cfg(mqtt_broker, tmp_path, batch_window_ms=300), "site", table, Metrics())
    await pub.start()
    for k in range(20):
        frame(pub, table, k)
        await asyncio.sleep(0.05)
    await pub.close()  # commits the open window, then drains
    col.close()
    msgs = [json.loads(p) for _, p in col.on("edgeloop/site/heater_plc/fast")]
    # ~1 s of frames in 300 ms windows: a few messages, several frames in each
    assert 2 <= len(msgs) < 20 and max(len(m["frames"]) for m in msgs) >= 3
    assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1))
    raws = [f["raw"][0] for m in msgs for f in m["frames"]]
    assert raws == [float(k) for k in range(20)]  # every frame once, in order


async def test_backlog_does_not_starve_other_topics(mqtt_broker: Broker, tmp_path: Path) -> None:
    """After an outage, an event (own topic) goes out in the first window, not after the
    whole data backlog; the data topics still arrive complete and in order."""
    col = Collector(mqtt_broker)
    mqtt_broker.stop()
    table = Table(TABLE_NAMES)
    pub = Publisher(
        cfg(mqtt_broker, tmp_path, mqtt={"max_inflight": 100}), "site", table, Metrics()
    )
    await pub.start()
    for k in range(1000):
        frame(pub, table, k)  # 2,000 backlog messages on two topics
    pub.publish_event("anomaly_on", {"group": "pump_health"})
    mqtt_broker.start()
    assert await col.await_for(
        lambda ms: sum(len(v) for v in seqs_by_topic(ms, "edgeloop/site/").values()) >= 2001, 60
    )
    await pub.close()
    col.close()
    data_topics = [t for t, _ in col.messages if not t.endswith("/status")]
    assert data_topics.index("edgeloop/site/_events/anomaly_on") < 100
    got = seqs_by_topic(col.messages, "edgeloop/site/")
    for topic in ("edgeloop/site/heater_plc/fast", "edgeloop/site/pump_skid/skid"):
        assert_complete_in_order(got[topic], 1000)


async def test_sparkplug_dbirth_covers_every_group_of_a_device(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    col = Collector(mqtt_broker, topic="spBv1.0/#")
    table = Table(TABLE_NAMES)
    groups = [Group("plc", "fast", 0, 3), Group("plc", "slow", 3, 5)]
    c = cfg(mqtt_broker, tmp_path, encoding="sparkplug_b")
    table.ts_ns[:] = 1_700_000_000_000_000_000  # every tag read: born right after NBIRTH
    pub = Publisher(c, "site", table, Metrics(), groups=groups)  # known before any frame
    await pub.start()
    assert await col.await_for(lambda ms: any("/DBIRTH/" in t for t, _ in ms))
    pub.publish_frame(groups[1], 1_700_000_000_000_000_000)
    assert await col.await_for(lambda ms: any("/DDATA/" in t for t, _ in ms))
    await pub.close()
    col.close()
    births = [decode_payload(p) for t, p in col.messages if t == "spBv1.0/edgeloop/DBIRTH/site/plc"]
    assert len(births) == 1
    names = [m["name"] for m in births[0]["metrics"]]
    assert names == ["fast/temp", "fast/power", "fast/level", "slow/vib", "slow/flow"]
    assert [m["alias"] for m in births[0]["metrics"]] == [0, 1, 2, 3, 4]
    ddata = next(decode_payload(p) for t, p in col.messages if "/DDATA/" in t)
    assert [m["alias"] for m in ddata["metrics"]] == [3, 4]


async def test_sparkplug_rebirth_on_ncmd(mqtt_broker: Broker, tmp_path: Path) -> None:
    import paho.mqtt.client as paho

    col = Collector(mqtt_broker, topic="spBv1.0/#")
    table = Table(TABLE_NAMES)
    c = cfg(mqtt_broker, tmp_path, encoding="sparkplug_b")
    pub = Publisher(c, "site", table, Metrics(), groups=GROUPS)
    await pub.start()
    frame(pub, table, 0)
    assert await col.await_for(lambda ms: sum("/DDATA/" in t for t, _ in ms) == 2)
    host = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="scada-host")
    host.connect(mqtt_broker.host, mqtt_broker.port)
    host.loop_start()
    ask = encode_command([{"name": spb.REBIRTH, "datatype": "Boolean", "value": True}])
    host.publish("spBv1.0/edgeloop/NCMD/site", ask, qos=1).wait_for_publish(5)
    assert await col.await_for(lambda ms: sum("/NBIRTH/" in t for t, _ in ms) == 2)
    frame(pub, table, 1)
    assert await col.await_for(lambda ms: sum("/DDATA/" in t for t, _ in ms) == 4)
    await pub.close()
    host.loop_stop()
    host.disconnect()
    col.close()
    topics = [t for t, _ in col.messages]
    second = [i for i, t in enumerate(topics) if t.endswith("/NBIRTH/site")][1]
    after = [(t, decode_payload(p)) for t, p in col.messages[second:]]
    assert after[0][1]["seq"] == 0  # a rebirth restarts the sequence
    assert {t.rsplit("/", 1)[-1] for t, _ in after[1:3]} == {"heater_plc", "pump_skid"}
    assert all("/DBIRTH/" in t for t, _ in after[1:3])
    seqs = [p["seq"] for _, p in after if "seq" in p]  # NDEATH (the last) carries none
    assert seqs == list(range(len(seqs))) and len(seqs) == len(after) - 1


async def test_sparkplug_backlog_is_marked_historical(mqtt_broker: Broker, tmp_path: Path) -> None:
    col = Collector(mqtt_broker, topic="spBv1.0/#")
    mqtt_broker.stop()
    table = Table(TABLE_NAMES)
    c = cfg(mqtt_broker, tmp_path, encoding="sparkplug_b")
    pub = Publisher(c, "site", table, Metrics(), groups=GROUPS)
    await pub.start()
    frame(pub, table, 0)  # during the outage
    mqtt_broker.start()
    assert await col.await_for(lambda ms: sum("/DDATA/" in t for t, _ in ms) == 2)
    frame(pub, table, 1)  # live
    assert await col.await_for(lambda ms: sum("/DDATA/" in t for t, _ in ms) == 4)
    await pub.close()
    col.close()
    ddata = [decode_payload(p)["metrics"] for t, p in col.messages if "/DDATA/" in t]
    assert all(m.get("is_historical") == 1 for ms in ddata[:2] for m in ms)
    assert all("is_historical" not in m for ms in ddata[2:] for m in ms)
