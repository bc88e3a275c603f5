"""The private aiomqtt APIs the publisher uses still behave as it relies on.

agent/publish/link.py `disconnected_future` reads aiomqtt's `Client._disconnected` (2.5.1
has no public way to learn that the connection dropped outside the message iterator), and
`PublishWindow` hands messages to paho (`Client._client`) and registers each message id in
`Client._pending_publishes`, whose value aiomqtt's on_publish pops and `.set()`s at PUBACK.
This fails when a new aiomqtt renames or changes them, instead of the drain hanging on a
dead link or never deleting what the broker acknowledged.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version

import aiomqtt

from agent.publish.link import PublishWindow, disconnected_future
from tests.fixtures.mqtt import Broker


async def test_disconnected_future_resolves_when_the_broker_goes(mqtt_broker: Broker) -> None:
    client = aiomqtt.Client(mqtt_broker.host, mqtt_broker.port, keepalive=2, timeout=5)
    async with client:
        fut = disconnected_future(client)
        assert isinstance(fut, asyncio.Future)
        await client.publish("probe/a", b"x", qos=1)
        assert not fut.done(), "resolved while the connection is up"
        mqtt_broker.stop()
        async with asyncio.timeout(10):
            await asyncio.wait({fut})
        assert fut.done() and (fut.cancelled() or fut.exception() is not None), (
            f"aiomqtt {version('aiomqtt')}: the connection dropped, the future says {fut!r}"
        )
        fut.cancelled() or fut.exception()  # seen: no "exception never retrieved" warning
        mqtt_broker.start()


async def test_a_publish_window_is_acknowledged_through_aiomqtts_pending_publishes(
    mqtt_broker: Broker,
) -> None:
    sub = aiomqtt.Client(mqtt_broker.host, mqtt_broker.port, timeout=5)
    client = aiomqtt.Client(mqtt_broker.host, mqtt_broker.port, keepalive=2, timeout=5)
    async with sub, client:
        await sub.subscribe("win/#", qos=1)
        msgs = [(f"win/{i % 3}", f"m{i}".encode()) for i in range(25)]
        pw = PublishWindow(client, msgs)
        async with asyncio.timeout(10):
            await pw.done
        assert pw.close() == [True] * 25 and pw.error is None
        assert not client._pending_publishes, "acknowledged ids must leave aiomqtt's table"
        got = []
        async with asyncio.timeout(10):
            async for m in sub.messages:
                got.append(bytes(m.payload))  # type: ignore[arg-type]
                if len(got) == 25:
                    break
        assert sorted(got) == sorted(p for _, p in msgs)

        # no PUBACK comes once the broker is gone: nothing is marked acknowledged, and
        # close() takes the window's ids out of aiomqtt's table
        mqtt_broker.stop()
        await asyncio.wait({disconnected_future(client)}, timeout=10)
        pw = PublishWindow(client, [("win/x", b"late")] * 3)
        await asyncio.wait({pw.done}, timeout=0.5)
        assert pw.close() == [False] * 3
        assert not client._pending_publishes
        mqtt_broker.start()
