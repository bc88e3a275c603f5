"""One connection of the publisher: the status birth, Sparkplug births, commands, goodbye.

With Sparkplug B the commands are subscribed first (NCMD, DCMD, the primary host's STATE),
the primary host is awaited, then NBIRTH and the DBIRTHs go out before the drain
(drain.py). DCMD writes go through the acquirer's write gate; a refusal is answered with a
DDATA carrying `writeRefused` and a `write_refused` event (docs/northbound.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import aiomqtt

from agent.names import EVENT_WRITE_REFUSED
from agent.publish.base import PublisherBase, log
from agent.publish.link import disconnected_future
from agent.publish.payloads import status_payload, topic_segment
from drivers.base import DriverError

if TYPE_CHECKING:  # Sparkplug (protobuf) is imported only by a Sparkplug publisher
    from agent.publish.spb_node import Write


class Session(PublisherBase):
    """Birth, commands and death of one MQTT connection (see the module docstring)."""

    def _status(self, state: str) -> bytes:
        return status_payload(self.site, state, self.cfg.encoding, self._epoch, time.time_ns())

    def _ndeath_payload(self) -> bytes:
        assert self.node is not None
        return self.node.ndeath(time.time_ns() // 1_000_000)

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection: status birth; with Sparkplug, commands subscribed first, the
        primary host awaited, NBIRTH and the DBIRTHs; then the drain until closing."""
        disconnected = disconnected_future(client)
        node = self.node
        if node is not None:
            node.connected()  # the broker holds our will: this bdSeq is used up
        await client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
        if node is None:
            await self._drain_loop(client, disconnected)
            return
        commands = asyncio.ensure_future(self._commands(client))
        try:
            # commands first (the specification asks for the NCMD subscription before NBIRTH)
            subs = [
                (f"{self._spb_base}/NCMD/{self._site}", 1),
                (f"{self._spb_base}/DCMD/{self._site}/+", 1),
            ]
            if node.primary_host is not None:
                subs.append((self._state_topic(), 1))
            await client.subscribe(subs)
            if not await self._await_host(disconnected):
                return  # closing before the host came online: nothing was born
            await self._spb_birth(client)
            await self._drain_loop(client, disconnected)
        finally:
            commands.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await commands

    def _state_topic(self) -> str:
        assert self.node is not None and self.node.primary_host is not None
        return f"spBv1.0/STATE/{self.node.primary_host}"

    async def _await_host(self, disconnected: asyncio.Future) -> bool:
        """Hold publishing until the primary host's STATE says online (at once without a
        primary host); False when closing first. The outbox keeps storing meanwhile."""
        node = self.node
        assert node is not None
        if node.host_online:
            return True
        msg = f"waiting for the Sparkplug primary host {node.primary_host!r} to be online"
        self.last_error = msg
        log.info("%s; data is kept in the outbox", msg)
        while not node.host_online:
            if self._closing:
                return False
            self._wake.clear()
            waiter = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait({waiter, disconnected}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if disconnected.done():
                raise aiomqtt.MqttError("disconnected while waiting for the primary host")
        self.last_error = None
        log.info("Sparkplug primary host %r is online", node.primary_host)
        return True

    async def _spb_birth(self, client: aiomqtt.Client) -> None:
        """NBIRTH (seq 0, this connection's bdSeq), then a DBIRTH per device already read
        (the others are born before their first DDATA)."""
        node = self.node
        assert node is not None
        now_ms = time.time_ns() // 1_000_000
        await client.publish(f"{self._spb_base}/NBIRTH/{self._site}", node.nbirth(now_ms), qos=1)
        self._live = True
        for device in node.ready_devices():
            await self._dbirth(client, device)

    async def _commands(self, client: aiomqtt.Client) -> None:
        """NCMD rebirth, DCMD writes and rebirths, the primary host's STATE."""
        from agent.publish import sparkplug as spb  # protobuf only where Sparkplug is used

        node = self.node
        assert node is not None
        ncmd = f"{self._spb_base}/NCMD/{self._site}"
        dcmd = f"{self._spb_base}/DCMD/{self._site}/"
        state = self._state_topic() if node.primary_host is not None else None
        async for message in client.messages:
            topic = str(message.topic)
            body = message.payload if isinstance(message.payload, bytes) else b""
            if topic == state:
                online = node.state_message(body)
                if online is not None:
                    log.info("Sparkplug primary host %r: online=%s", node.primary_host, online)
                    self._wake.set()
            elif topic == ncmd:
                if spb.rebirth_requested(body):
                    log.info("Sparkplug rebirth requested by the host")
                    self._rebirth = True
                    self._wake.set()
            elif topic.startswith(dcmd):
                device = node.device_of(topic[len(dcmd) :], topic_segment)
                if device is None:
                    log.warning("ignoring a DCMD for an unknown device: %s", topic)
                    continue
                task = asyncio.create_task(self._dcmd(device, body), name="edgeloop-dcmd")
                self._cmd_tasks.add(task)
                task.add_done_callback(self._cmd_tasks.discard)

    async def _dcmd(self, device: str, body: bytes) -> None:
        """Carry out one DCMD: each write through the acquirer's write gate as an operator
        write; a refusal is logged, answered with a DDATA carrying `writeRefused` and the
        present value, and published as a `write_refused` event."""
        from agent.publish import sparkplug as spb
        from agent.publish.spb_node import Write

        node = self.node
        assert node is not None
        try:
            writes, rebirth = node.writes(device, body)
        except spb.CommandError as exc:
            log.warning("ignoring a DCMD for %s: %s", device, exc)
            return
        if rebirth:
            log.info("Sparkplug device rebirth of %s requested by the host", device)
            node.born.discard(device)
            self._wake.set()
        for w in writes:
            if w.refused is None:
                if self._write is None:
                    w = Write(w.device, w.tag, w.index, w.value, "writes are not enabled here")
                else:
                    try:
                        await self._write(w.tag, w.value)  # role None: an operator write
                    except DriverError as exc:
                        w = Write(w.device, w.tag, w.index, w.value, str(exc))
                    else:
                        log.info("Sparkplug DCMD wrote %s = %r on %s", w.tag, w.value, device)
                        continue
            self._refused(w)

    def _refused(self, w: Write) -> None:
        log.warning(
            "Sparkplug DCMD write of %s = %r on %s refused: %s", w.tag, w.value, w.device, w.refused
        )
        self.publish_event(
            EVENT_WRITE_REFUSED,
            {
                "source": "sparkplug",
                "device": w.device,
                "tag": w.tag,
                "value": w.value,
                "reason": w.refused,
            },
        )
        if w.index >= 0 and self.node is not None:
            body = self.node.refusal(w, time.time_ns() // 1_000_000)
            self._append([(self.data_topic(w.device, ""), lambda _seq, b=body: b, True)])

    async def _dbirth(self, client: aiomqtt.Client, device: str) -> None:
        """DBIRTH: every tag of the device with name, alias, datatype and current value."""
        assert self.node is not None
        body = self.node.dbirth(device, time.time_ns() // 1_000_000)
        topic = f"{self._spb_base}/DBIRTH/{self._site}/{topic_segment(device)}"
        await client.publish(topic, body, qos=1)

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """Graceful end: the will is not sent on a clean disconnect, so say it ourselves."""
        if self.node is not None and self._live:
            now_ms = time.time_ns() // 1_000_000
            for device in sorted(self.node.born):
                topic = f"{self._spb_base}/DDEATH/{self._site}/{topic_segment(device)}"
                await client.publish(topic, self.node.ddeath(now_ms), qos=1)
            await client.publish(
                f"{self._spb_base}/NDEATH/{self._site}", self._ndeath_payload(), qos=1
            )
        await client.publish(self.status_topic, self._status("offline"), qos=1, retain=True)
