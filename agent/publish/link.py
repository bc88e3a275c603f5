"""The publisher's link to the broker: connect, reconnect with backoff, supervise.

`_run` is plain code: a new client per attempt, the session (session.py) on it, and on any
MQTT error capped exponential backoff with jitter (agent/backoff.py) before the next
attempt. `_supervised_run` restarts `_run` after a crash (a bug), logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Sequence
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.exceptions import MqttConnectError

from agent import names
from agent.backoff import backoff_delay
from agent.publish.base import HostOffline, PublisherBase, PublishError, log
from agent.publish.outbox import OutboxError
from agent.store.durable import RESTART_INITIAL_S, RESTART_MAX_S, describe
from drivers.configbase import SecretError

_AUTH_CODES = {4, 5, 134, 135}  # MQTT 3.1.1 / 5 CONNACK: bad user name or password, not authorized
GOODBYE_S = 1.0  # close(): longest wait for the goodbye messages


def disconnected_future(client: aiomqtt.Client) -> asyncio.Future[None]:
    """The future aiomqtt resolves when the connection drops.

    Private in aiomqtt 2.5.1 (its own message iterator waits on it; there is no public
    accessor); tests/integration/test_publish_aiomqtt.py fails if a new aiomqtt changes it.
    """
    fut: asyncio.Future[None] = client._disconnected
    return fut


class _Ack:
    """Stands in for aiomqtt's per-message Event in `_pending_publishes`: its `set()` (the
    PUBACK) marks one message of a window acknowledged."""

    __slots__ = ("index", "window")

    def __init__(self, window: PublishWindow, index: int) -> None:
        self.window, self.index = window, index

    def set(self) -> None:
        self.window.acked(self.index)


class PublishWindow:
    """QoS 1 messages handed to paho at once, their PUBACKs counted into one future.

    Why not `aiomqtt.Client.publish` per message: each call makes an Event, a wait_for task
    and a scan of every pending call, ~40 µs of the ~130 µs a message costs (bench/
    README.md). The acknowledgement path is aiomqtt's own: paho's on_publish makes aiomqtt
    pop the message id from the private `_pending_publishes` and call `.set()` on it (aiomqtt
    2.5.1; tests/integration/test_publish_aiomqtt.py fails if a new aiomqtt changes it).
    """

    def __init__(self, client: aiomqtt.Client, messages: Sequence[tuple[str, bytes]]) -> None:
        # aiomqtt types it dict[int, Event]; it only ever calls .set() on the values
        self._pending = cast(dict[int, Any], client._pending_publishes)
        self.ok = [False] * len(messages)
        self.error: str | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._left = len(messages)
        self._mids: list[int] = []
        paho = client._client
        for i, (topic, payload) in enumerate(messages):
            info = paho.publish(topic, payload, 1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:  # not connected, queue full: fails now
                self.error = self.error or mqtt.error_string(info.rc)
                self._left -= 1
            elif info.is_published():  # acknowledged before we could register (aiomqtt [2])
                self.acked(i)
            else:
                self._pending[info.mid] = _Ack(self, i)
                self._mids.append(info.mid)
        self._settle()

    def acked(self, index: int) -> None:
        if not self.ok[index]:
            self.ok[index] = True
            self._left -= 1
            self._settle()

    def _settle(self) -> None:
        """Resolve `done` once no message of the window is still waiting for its PUBACK."""
        if self._left <= 0 and not self.done.done():
            self.done.set_result(None)

    def close(self) -> list[bool]:
        """Forget the messages still waiting (timeout, lost connection); which were acked."""
        for mid in self._mids:
            ack = self._pending.get(mid)
            if isinstance(ack, _Ack) and ack.window is self:
                del self._pending[mid]
        if not self.done.done():
            self.done.cancel()
        return self.ok


class Link(PublisherBase):
    """Connection task of the publisher (see the module docstring)."""

    # ------------------------------------------------------------------ connection task
    async def _supervised_run(self) -> None:
        """`_run` under supervision: a crash (a bug; MQTT and outbox errors are handled
        inside) is logged with its traceback, counted, and the task restarted with backoff."""
        delay = RESTART_INITIAL_S
        while True:
            try:
                await self._run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._task_crashes += 1
                self._task_error = f"connection task crashed: {describe(exc)}"
                self._set_connected(False)
                self.metrics.inc(names.COMPONENT_CRASHES_TOTAL, component="publish")
                self._state_changed()
                log.error(
                    "MQTT connection task crashed (crash %d): %s; %s",
                    self._task_crashes,
                    describe(exc),
                    "stopping" if self._stop.is_set() else f"restarting in {delay:.1f} s",
                    exc_info=exc,
                )
                if self._stop.is_set():
                    return
            await self._sleep_unless_stopping(delay)
            delay = min(RESTART_MAX_S, delay * 2)
            self.metrics.inc(names.COMPONENT_RESTARTS_TOTAL, component="publish")
            self._task_error = None
            self._state_changed()

    async def _run(self) -> None:
        """Connect, birth, drain; on any MQTT error back off and reconnect. Plain and visible."""
        attempt = 0
        while not self._stop.is_set():
            try:
                async with self._client() as client:
                    # we learn of a drop from this future (see drain.py): mark its exception seen
                    disconnected_future(client).add_done_callback(
                        lambda f: f.cancelled() or f.exception()
                    )
                    self._set_connected(True)
                    attempt = 0
                    if self._episode is not None:
                        log.info(
                            "connected to MQTT broker %s:%d", self.cfg.mqtt.host, self.cfg.mqtt.port
                        )
                    self._episode = None
                    self.last_error = None
                    try:
                        await self._session(client)
                    finally:
                        if self._closing:
                            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                                async with asyncio.timeout(GOODBYE_S):
                                    await self._goodbye(client)
                return
            except HostOffline as exc:  # NDEATH said; reconnect at once and wait for the host
                self._set_connected(False)
                log.warning("%s; reconnecting and waiting for it", exc)
                attempt = 0
            except aiomqtt.MqttError as exc:
                self._set_connected(False)
                self._report(exc)
            except (OSError, ssl.SSLError) as exc:  # paho raises these from connect()
                self._set_connected(False)
                self._report(aiomqtt.MqttError(str(exc)))
            except OutboxError as exc:  # reading/deleting failed: keep the rows, retry later
                self._set_connected(False)
                if self._episode != "outbox":
                    log.error("%s; sending paused, retrying with backoff", exc)
                    self._episode = "outbox"
            delay = backoff_delay(
                attempt, self.cfg.mqtt.backoff_initial_s, self.cfg.mqtt.backoff_max_s
            )
            attempt += 1
            await self._sleep_unless_stopping(delay)

    def _client(self) -> aiomqtt.Client:
        """A new client per attempt (no state carried over from a broken session)."""
        m = self.cfg.mqtt
        self._live = False
        if self.node is not None:  # a new bdSeq per connection, the same in will and NBIRTH
            self.node.new_connection()
            will = aiomqtt.Will(
                f"{self._spb_base}/NDEATH/{self._site}", self._ndeath_payload(), qos=1
            )
        else:
            will = aiomqtt.Will(self.status_topic, self._status("offline"), qos=1, retain=True)
        client = aiomqtt.Client(
            m.host,
            m.port,
            username=m.username,
            password=self._password,
            identifier=m.client_id or f"edgeloop-{self._site}",
            will=will,
            clean_session=True,
            keepalive=m.keepalive_s,
            timeout=m.connect_timeout_s,
            max_inflight_messages=m.max_inflight,
            tls_context=self._tls,
            logger=logging.getLogger("edgeloop.publish.mqtt"),
        )
        client.pending_calls_threshold = m.max_inflight + 16  # a full window is expected
        return client

    def _report(self, exc: aiomqtt.MqttError) -> None:
        """Log an error once per episode; a refused login gets its own clear message."""
        m = self.cfg.mqtt
        rc = getattr(exc, "rc", None)
        code = getattr(rc, "value", rc)
        depth = int(self.metrics.get(names.OUTBOX_DEPTH))
        if isinstance(exc, MqttConnectError) and code in _AUTH_CODES:
            kind = "auth"
            msg = (
                f"MQTT broker {m.host}:{m.port} refused the credentials of user "
                f"{m.username!r} ({exc}); check publish.mqtt username/password_env/"
                f"password_file. {depth} messages kept in the outbox, retrying with backoff"
            )
        else:
            kind = "conn"
            msg = (
                f"MQTT broker {m.host}:{m.port} unavailable ({exc}); {depth} messages kept "
                f"in the outbox, retrying with backoff"
            )
        self.last_error = msg
        if self._episode != kind:
            log.error("%s", msg)
            self._episode = kind

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        if not up:
            self._live = False
        self.metrics.set(names.MQTT_CONNECTED, 1 if up else 0)

    # ------------------------------------------------------------------ credentials / TLS
    # Read by the settings, exactly as `edgeloop check` reads them (agent.publish.settings).
    def _load_password(self) -> str | None:
        try:
            return self.cfg.mqtt.read_password()
        except SecretError as exc:
            raise PublishError(str(exc)) from exc

    def _tls_context(self) -> ssl.SSLContext | None:
        t = self.cfg.mqtt.tls
        if t is None:
            return None
        try:
            return t.ssl_context()
        except SecretError as exc:
            raise PublishError(str(exc)) from exc

    async def _sleep_unless_stopping(self, delay_s: float) -> None:
        """Wait `delay_s`, or less when close() sets the stop event."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._stop.wait()
