"""The drain: send committed outbox rows in id order, delete them only after PUBACK.

Up to `max_inflight` messages await PUBACK at once (one window); per topic the
acknowledged prefix of a window is deleted, and after a topic's first failure its later
rows stay, to be re-sent after reconnecting (at least once, never out of order). Peek and
delete run in the outbox writer thread.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

import aiomqtt

from agent import names
from agent.publish.base import HostOffline, PublisherBase
from agent.publish.link import PublishWindow
from agent.publish.outbox import Outbox
from agent.publish.payloads import topic_segment


def _ack_in(src: Outbox | None, ids: list[int], ob: Outbox | None) -> int:
    """Writer thread: delete `ids`, which belong to the file they were read from (`src`),
    never from a fresh one opened since."""
    return ob.ack(ids) if ob is src and ob is not None else 0


class Drain(PublisherBase):
    """The outbox drain of one connection (see the module docstring)."""

    async def _drain_loop(self, client: aiomqtt.Client, disconnected: asyncio.Future) -> None:
        """Send the outbox in id order, `max_inflight` at a time; delete what is acknowledged."""
        writer = self._writer
        if writer is None:  # closing
            return
        window = self.cfg.mqtt.max_inflight
        timeout = self.cfg.mqtt.publish_timeout_s
        node = self.node
        if node is not None:  # protobuf only where Sparkplug is used
            from agent.publish import sparkplug as spb
        while True:
            if node is not None and not node.host_online:
                await client.publish(
                    f"{self._spb_base}/NDEATH/{self._site}", self._ndeath_payload(), qos=1
                )
                raise HostOffline(f"Sparkplug primary host {node.primary_host!r} went offline")
            if self._rebirth:
                self._rebirth = False
                await self._spb_birth(client)
            # cleared before the peek: a commit landing while the peek is under way sets it
            # again, so the wait below cannot miss it
            self._wake.clear()
            # in the writer thread, after everything handed over before it was committed
            ob, rows = await writer.call(lambda o: (o, o.peek(window) if o is not None else []))
            if not rows:
                if self._closing:
                    return
                waiter = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({waiter, disconnected}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if disconnected.done():
                    raise aiomqtt.MqttError("disconnected while idle")
                continue
            if node is not None:
                # a device's DBIRTH precedes its first DDATA of the session
                for r in rows:
                    dev = node.device_of(r.topic.rsplit("/", 1)[-1], topic_segment)
                    if r.spb and dev is not None and dev not in node.born:
                        await self._dbirth(client, dev)
            messages = []
            for r in rows:
                payload = r.payload
                if r.spb and node is not None:  # the session's seq, appended when sent
                    payload += spb.seq_field(node.next_seq())
                messages.append((r.topic, payload))
            sent = time.perf_counter()
            pw = PublishWindow(client, messages)
            await asyncio.wait(
                {pw.done, disconnected}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            round_trip = time.perf_counter() - sent
            oks = pw.close()
            # per topic, the acknowledged prefix is deleted; after a topic's first failure its
            # later rows stay (re-sent after reconnecting, so the topic's order holds)
            acked: list[int] = []
            failed_topics: set[str] = set()
            for r, ok in zip(rows, oks, strict=True):
                if ok and r.topic not in failed_topics:
                    acked.append(r.id)
                elif not ok:
                    failed_topics.add(r.topic)
            if acked:
                # ids belong to the file they were read from: never delete in a fresh one
                await writer.call(partial(_ack_in, ob, acked))
                self.metrics.inc(names.PUBLISH_MESSAGES_TOTAL, len(acked))
            if not failed_topics:  # the whole batch acknowledged: its round trip
                self.metrics.observe(names.PUBLISH_SECONDS, round_trip)
            else:
                cause = pw.error or (
                    "connection lost" if disconnected.done() else f"no PUBACK within {timeout:g} s"
                )
                raise aiomqtt.MqttError(
                    f"{len(rows) - len(acked)} messages not acknowledged: {cause}"
                )
