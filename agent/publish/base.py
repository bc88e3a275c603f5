"""What the parts of the publisher share: its state, its errors, its logger.

`Publisher` (agent/publish/publisher.py) is assembled from one class per job: the link
(connect, reconnect, supervision: link.py), the session on one connection (status birth,
Sparkplug births, commands: session.py) and the drain of the outbox (drain.py). Each
inherits `PublisherBase`, which declares the attributes they share; `Publisher.__init__`
sets them.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiomqtt
import numpy as np

from agent.metrics import Metrics
from agent.publish.outbox_writer import OutboxWriter
from agent.publish.settings import PublishConfig

if TYPE_CHECKING:  # Sparkplug (protobuf) is imported only by a Sparkplug publisher
    from agent.publish.spb_node import SparkplugNode

log = logging.getLogger("edgeloop.publish")

WriteFn = Callable[..., Awaitable[None]]  # Acquirer.write(tag, value, role=None)


class PublishError(Exception):
    """Root of the publish layer: bad credentials source, outbox failure, TLS files."""


class HostOffline(aiomqtt.MqttError):
    """The Sparkplug primary host said it is offline: say NDEATH, reconnect and wait."""


class PublisherBase:
    """The shared state of the publisher's parts (set by `Publisher.__init__`)."""

    cfg: PublishConfig
    site: str
    table: Any
    metrics: Metrics
    status_topic: str
    connected: bool
    last_error: str | None
    node: SparkplugNode | None
    _prefix: str
    _site: str
    _spb_base: str
    _writer: OutboxWriter | None
    _epoch: str | None
    _task_error: str | None
    _task_crashes: int
    _wake: asyncio.Event
    _stop: asyncio.Event
    _closing: bool
    _password: str | None
    _tls: ssl.SSLContext | None
    _episode: str | None
    _rebirth: bool
    _live: bool
    _write: WriteFn | None
    _cmd_tasks: set[asyncio.Task[None]]
    _lastq: np.ndarray

    def _state_changed(self) -> None:  # publisher.py
        raise NotImplementedError

    def publish_event(self, kind: str, payload: Any) -> None:  # publisher.py
        raise NotImplementedError

    def data_topic(self, device: str, group: str) -> str:  # publisher.py
        raise NotImplementedError

    def _append(self, items: list) -> None:  # publisher.py
        raise NotImplementedError

    def _set_connected(self, up: bool) -> None:  # link.py
        raise NotImplementedError

    def _status(self, state: str) -> bytes:  # session.py
        raise NotImplementedError

    def _ndeath_payload(self) -> bytes:  # session.py
        raise NotImplementedError

    async def _session(self, client: aiomqtt.Client) -> None:  # session.py
        raise NotImplementedError

    async def _goodbye(self, client: aiomqtt.Client) -> None:  # session.py
        raise NotImplementedError

    async def _dbirth(self, client: aiomqtt.Client, device: str) -> None:  # session.py
        raise NotImplementedError

    async def _spb_birth(self, client: aiomqtt.Client) -> None:  # session.py
        raise NotImplementedError

    async def _drain_loop(
        self, client: aiomqtt.Client, disconnected: asyncio.Future
    ) -> None:  # drain.py
        raise NotImplementedError
