"""The one private aiomqtt API the publisher uses still behaves as it relies on.

agent/publish/link.py `disconnected_future` reads aiomqtt's `Client._disconnected` (2.5.1
has no public way to learn that the connection dropped outside the message iterator). This
fails when a new aiomqtt renames or changes it, instead of the drain hanging on a dead link.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version

import aiomqtt

from agent.publish.link import disconnected_future
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
