"""MQTT publisher with a durable outbox: commit first, send, delete only after PUBACK.

The event-loop side (`publish_frame`, `publish_event`) encodes and commits to the outbox and
returns; one task (`_run`) connects, publishes the birth, then drains the outbox in id order
with up to `max_inflight` messages awaiting PUBACK, deleting the acknowledged prefix of each
window. A lost connection leaves unacknowledged rows in place, to be re-sent (at least once,
never out of order); the reconnect loop below is plain code with capped exponential backoff
and jitter. Topics and payloads are documented in docs/northbound.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import random
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiomqtt
import numpy as np
from aiomqtt.exceptions import MqttConnectError

from agent.configbase import SecretError
from agent.metrics import Metrics
from agent.publish import sparkplug as spb
from agent.publish.outbox import Outbox, OutboxError
from agent.publish.settings import PublishConfig

log = logging.getLogger("edgeloop.publish")

PAYLOAD_VERSION = 1
_AUTH_CODES = {4, 5, 134, 135}  # MQTT 3.1.1 / 5 CONNACK: bad user name or password, not authorized


class PublishError(Exception):
    """Root of the publish layer: bad credentials source, outbox failure, TLS files."""


def backoff_delay(
    attempt: int, initial_s: float, max_s: float, rand: Callable[[], float] = random.random
) -> float:
    """Delay before reconnect attempt `attempt` (0-based): capped exponential, jittered.

    The cap doubles per failed attempt up to `max_s`; the delay is uniform in [cap/2, cap]
    so a fleet of gateways that lost the same broker does not reconnect in lock-step.
    """
    cap = min(max_s, initial_s * (2.0 ** min(attempt, 62)))
    return cap * (0.5 + 0.5 * rand())


def topic_segment(s: str) -> str:
    """A name made safe for one MQTT topic level (no '/', '+', '#', NUL)."""
    for ch in "/+#\0":
        s = s.replace(ch, "_")
    return s or "_"


def _floats(a: np.ndarray) -> list[float | None]:
    vals = a.tolist()
    if not np.isfinite(a).all():
        vals = [v if math.isfinite(v) else None for v in vals]
    return vals


def _json_safe(x: Any) -> Any:
    """Event payloads as strict JSON: numpy scalars/arrays unwrapped, NaN/inf -> null."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, bool | int | str):
        return x
    return str(x)


def _iso(ts_ns: int) -> str:
    d = dt.datetime.fromtimestamp(ts_ns / 1e9, tz=dt.UTC)
    return d.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Publisher:
    """Northbound MQTT component; see the module docstring for the delivery semantics."""

    def __init__(
        self,
        publish_cfg: PublishConfig,
        site: str,
        table: Any,
        metrics: Metrics | None = None,
        groups: Sequence[Any] = (),
    ) -> None:
        """`groups` (the compiled GroupSpecs) lets Sparkplug DBIRTH describe every device
        from the first connection on; groups first seen in `publish_frame` are added."""
        self.cfg = publish_cfg
        self.site = site
        self.table = table
        self.metrics = metrics if metrics is not None else Metrics()
        m = publish_cfg.mqtt
        self._prefix = "/".join(topic_segment(p) for p in m.topic_prefix.split("/") if p)
        self._site = topic_segment(site)
        self.status_topic = f"{self._prefix}/{self._site}/status"
        self._spb = publish_cfg.encoding == "sparkplug_b"
        g = topic_segment(publish_cfg.sparkplug.group_id)
        self._spb_base = f"spBv1.0/{g}"
        self._outbox: Outbox | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._closing = False
        self._password: str | None = None
        self._tls: ssl.SSLContext | None = None
        self._episode: str | None = None  # kind of the error being logged once
        self.last_error: str | None = None
        self.connected = False
        self._spb_seq = 0
        self._bdseq = 0
        self._pending: dict[tuple[str, str, int, int], list[tuple]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._groups: dict[str, list[Any]] = {}  # device -> groups (Sparkplug DBIRTH)
        self._outbox_failing = False
        self._rebirth = False  # set by an NCMD rebirth request, served by the drain
        self._born: set[str] = set()  # devices with a DBIRTH in the current session
        for g in groups:
            self._learn(g)

    # ------------------------------------------------------------------ topics
    def data_topic(self, device: str, group: str) -> str:
        """`{topic_prefix}/{site}/{device}/{group}` (JSON) or the Sparkplug DDATA topic."""
        if self._spb:
            return f"{self._spb_base}/DDATA/{self._site}/{topic_segment(device)}"
        return f"{self._prefix}/{self._site}/{topic_segment(device)}/{topic_segment(group)}"

    def event_topic(self, kind: str) -> str:
        """`{topic_prefix}/{site}/_events/{kind}` in both encodings."""
        return f"{self._prefix}/{self._site}/_events/{topic_segment(kind)}"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open the outbox, resolve credentials and TLS, start the connection task."""
        if self._task is not None:
            return
        self._password = self._load_password()
        self._tls = self._tls_context()
        self._outbox = Outbox(
            self.cfg.outbox.path,
            int(self.cfg.outbox.max_mb * 1024 * 1024),
            self.cfg.outbox.synchronous,
        )
        self._gauges()
        self.metrics.set("edgeloop_mqtt_connected", 0)
        if self._outbox.depth:
            log.info(
                "outbox %s holds %d messages from before", self.cfg.outbox.path, self._outbox.depth
            )
        self._task = asyncio.create_task(self._run(), name="edgeloop-publish")
        if self.cfg.batch_window_ms > 0:
            self._flusher = asyncio.create_task(
                self._flush_windows(), name="edgeloop-publish-window"
            )

    async def close(self, drain_timeout_s: float = 5.0) -> None:
        """Commit open batch windows, give the drain `drain_timeout_s`, say goodbye, stop.

        Whatever is not acknowledged by then stays in the outbox for the next start.
        """
        if self._task is None:
            return
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._commit_windows()
        self._closing = True
        self._wake.set()
        self._stop.set()
        task = self._task
        try:
            await asyncio.wait_for(asyncio.shield(task), drain_timeout_s)
        except TimeoutError:
            pass
        finally:  # also when close() itself is cancelled by a caller's deadline
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._task = None
            self._set_connected(False)
            if self._outbox is not None:
                self._gauges()
                self._outbox.close()
                self._outbox = None

    # ------------------------------------------------------------------ event-loop side
    def publish_frame(self, group: Any, ts_ns: int) -> None:
        """Commit the group's current slice to the outbox (or its batch window) and return."""
        t = self.table
        s, e = group.start, group.stop
        texts = getattr(t, "texts", None) or {}
        frame = (
            int(ts_ns),
            t.raw[s:e].copy(),
            t.value[s:e].copy(),
            t.quality[s:e].copy(),
            t.flags[s:e].copy(),
            t.score[s:e].copy(),
            {t.names[i]: texts[i] for i in range(s, e) if i in texts} if texts else {},
        )
        if self._spb:
            self._learn(group)
        if self.cfg.batch_window_ms > 0:
            self._pending.setdefault((group.device, group.name, s, e), []).append(frame)
            return
        self._commit([(group.device, group.name, s, e, [frame])])

    def _learn(self, group: Any) -> None:
        """Remember a group for its device's DBIRTH; a new group means a new DBIRTH."""
        known = self._groups.setdefault(group.device, [])
        if all(g.start != group.start for g in known):
            known.append(group)
            self._born.discard(group.device)

    def publish_event(self, kind: str, payload: Any) -> None:
        """Commit an event (anomaly, control mode change, ...) for `_events/{kind}`."""
        ts_ns = time.time_ns()
        body = _json_safe(payload if isinstance(payload, dict) else {"value": payload})

        def build(seq: int) -> bytes:
            doc = {
                "v": PAYLOAD_VERSION,
                "seq": seq,
                "site": self.site,
                "kind": kind,
                "ts": _iso(ts_ns),
                "ts_ns": ts_ns,
                "payload": body,
            }
            return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()

        self._append([(self.event_topic(kind), build, False)])

    def _commit(self, batches: list[tuple[str, str, int, int, list[tuple]]]) -> None:
        items = []
        for device, group, s, e, frames in batches:
            topic = self.data_topic(device, group)
            if self._spb:
                items.append((topic, self._spb_builder(s, e, frames), True))
            else:
                items.append((topic, self._json_builder(device, group, s, e, frames), False))
        self._append(items)

    def _append(self, items: list) -> None:
        if self._outbox is None:
            raise PublishError("publisher not started")
        try:
            dropped = self._outbox.append(items)
        except OutboxError as exc:
            # disk full or I/O error: the frame cannot be kept; count it, log once, go on
            self.metrics.inc("edgeloop_queue_dropped_total", len(items), queue="outbox")
            if self._outbox_failing is False:
                log.error("%s; messages are being dropped until the outbox can be written", exc)
            self._outbox_failing = True
            return
        if self._outbox_failing:
            log.info("outbox writes recovered")
            self._outbox_failing = False
        if dropped:
            self.metrics.inc("edgeloop_outbox_dropped_total", dropped)
        self._gauges()
        self._wake.set()

    def _json_builder(
        self, device: str, group: str, s: int, e: int, frames: list[tuple]
    ) -> Callable[[int], bytes]:
        names = list(self.table.names[s:e])

        def build(seq: int) -> bytes:
            out = []
            for ts_ns, raw, value, quality, flags, score, texts in frames:
                f: dict[str, Any] = {
                    "ts": _iso(ts_ns),
                    "ts_ns": ts_ns,
                    "raw": _floats(raw),
                    "value": _floats(value),
                    "quality": quality.tolist(),
                    "flags": flags.tolist(),
                    "score": _floats(score),
                }
                if texts:
                    f["texts"] = texts
                out.append(f)
            doc = {
                "v": PAYLOAD_VERSION,
                "seq": seq,
                "site": self.site,
                "device": device,
                "group": group,
                "tags": names,
                "frames": out,
            }
            return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()

        return build

    def _spb_builder(self, s: int, e: int, frames: list[tuple]) -> Callable[[int], bytes]:
        aliases = list(range(s, e))
        historical = not self.connected  # committed while the uplink is down: stored-and-forwarded

        def build(_seq: int) -> bytes:  # the Sparkplug seq is appended when sent
            metrics: list[bytes] = []
            for ts_ns, raw, _value, quality, _flags, _score, _texts in frames:
                ms = ts_ns // 1_000_000
                metrics += spb.data_metrics(
                    [], aliases, raw.tolist(), quality.tolist(), ms, historical=historical
                )
            return spb.payload(frames[-1][0] // 1_000_000, metrics)

        return build

    # ------------------------------------------------------------------ batch windows
    def _commit_windows(self) -> None:
        pending, self._pending = self._pending, {}
        batches = [(d, g, s, e, frames) for (d, g, s, e), frames in pending.items() if frames]
        if batches:
            self._commit(batches)

    async def _flush_windows(self) -> None:
        period = self.cfg.batch_window_ms / 1000.0
        while True:
            await asyncio.sleep(period)
            self._commit_windows()

    # ------------------------------------------------------------------ connection task
    async def _run(self) -> None:
        """Connect, birth, drain; on any MQTT error back off and reconnect. Plain and visible."""
        attempt = 0
        while not self._stop.is_set():
            try:
                async with self._client() as client:
                    # we learn of a drop from this future (see _drain): mark its exception seen
                    client._disconnected.add_done_callback(lambda f: f.cancelled() or f.exception())
                    self._set_connected(True)
                    attempt = 0
                    if self._episode is not None:
                        log.info(
                            "connected to MQTT broker %s:%d", self.cfg.mqtt.host, self.cfg.mqtt.port
                        )
                    self._episode = None
                    self.last_error = None
                    try:
                        await self._birth(client)
                        await self._drain(client)
                    finally:
                        if self._closing:
                            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                                await asyncio.wait_for(self._goodbye(client), 1.0)
                return
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    def _client(self) -> aiomqtt.Client:
        """A new client per attempt (no state carried over from a broken session)."""
        m = self.cfg.mqtt
        self._bdseq = (self._bdseq + 1) % 256
        if self._spb:
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
        depth = self._outbox.depth if self._outbox else 0
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
        self.metrics.set("edgeloop_mqtt_connected", 1 if up else 0)

    def _gauges(self) -> None:
        if self._outbox is not None:
            self.metrics.set("edgeloop_outbox_depth", self._outbox.depth)
            self.metrics.set("edgeloop_outbox_bytes", self._outbox.bytes)

    # ------------------------------------------------------------------ birth / death
    def _status(self, state: str) -> bytes:
        doc = {
            "v": PAYLOAD_VERSION,
            "site": self.site,
            "status": state,
            "ts": _iso(time.time_ns()),
            "encoding": self.cfg.encoding,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    def _ndeath_payload(self) -> bytes:
        bd = spb.metric(name="bdSeq", datatype=spb.INT64, value=self._bdseq)
        return spb.payload(time.time_ns() // 1_000_000, [bd])

    def _next_spb_seq(self) -> int:
        s = self._spb_seq
        self._spb_seq = (s + 1) % 256
        return s

    async def _birth(self, client: aiomqtt.Client) -> None:
        await client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
        if not self._spb:
            return
        # commands first (the specification asks for the NCMD subscription before NBIRTH)
        await client.subscribe(f"{self._spb_base}/NCMD/{self._site}", qos=1)
        await self._spb_birth(client)

    async def _spb_birth(self, client: aiomqtt.Client) -> None:
        """NBIRTH (seq 0, this session's bdSeq) then a DBIRTH per known device."""
        now_ms = time.time_ns() // 1_000_000
        self._spb_seq = 0
        nbirth = spb.payload(
            now_ms,
            [
                spb.metric(
                    name="bdSeq", datatype=spb.INT64, value=self._bdseq, timestamp_ms=now_ms
                ),
                spb.metric(
                    name="Node Control/Rebirth",
                    datatype=spb.BOOLEAN,
                    value=False,
                    timestamp_ms=now_ms,
                ),
            ],
            seq=self._next_spb_seq(),
        )
        await client.publish(f"{self._spb_base}/NBIRTH/{self._site}", nbirth, qos=1)
        self._born = set()
        for device in list(self._groups):
            await self._dbirth(client, device)

    async def _commands(self, client: aiomqtt.Client) -> None:
        """Sparkplug NCMD: a host's rebirth request makes the drain re-send the births."""
        async for message in client.messages:
            body = message.payload if isinstance(message.payload, bytes) else b""
            if spb.rebirth_requested(body):
                log.info("Sparkplug rebirth requested by the host")
                self._rebirth = True
                self._wake.set()

    async def _dbirth(self, client: aiomqtt.Client, device: str) -> None:
        """DBIRTH: every tag of the device with name, alias, datatype and current value."""
        t = self.table
        now_ms = time.time_ns() // 1_000_000
        metrics: list[bytes] = []
        for g in self._groups.get(device, []):
            sl = slice(g.start, g.stop)
            metrics += spb.data_metrics(
                [f"{g.name}/{n}" for n in t.names[sl]],
                list(range(g.start, g.stop)),
                t.raw[sl].tolist(),
                t.quality[sl].tolist(),
                now_ms,
                with_names=True,
            )
        body = spb.payload(now_ms, metrics, seq=self._next_spb_seq())
        topic = f"{self._spb_base}/DBIRTH/{self._site}/{topic_segment(device)}"
        await client.publish(topic, body, qos=1)
        self._born.add(device)

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """Graceful end: the will is not sent on a clean disconnect, so say it ourselves."""
        if self._spb:
            now_ms = time.time_ns() // 1_000_000
            for device in sorted(self._born):
                topic = f"{self._spb_base}/DDEATH/{self._site}/{topic_segment(device)}"
                await client.publish(
                    topic, spb.payload(now_ms, [], seq=self._next_spb_seq()), qos=1
                )
            await client.publish(
                f"{self._spb_base}/NDEATH/{self._site}", self._ndeath_payload(), qos=1
            )
        await client.publish(self.status_topic, self._status("offline"), qos=1, retain=True)

    # ------------------------------------------------------------------ drain
    async def _drain(self, client: aiomqtt.Client) -> None:
        """Send the outbox a window of `max_inflight` at a time (shared fairly between topics,
        in order within each), until closing; serve Sparkplug rebirth requests."""
        # aiomqtt resolves this future when the connection drops; its own message iterator
        # waits on it the same way (there is no public accessor).
        disconnected: asyncio.Future[None] = client._disconnected
        commands = asyncio.ensure_future(self._commands(client)) if self._spb else None
        try:
            await self._drain_loop(client, disconnected)
        finally:
            if commands is not None:
                commands.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await commands

    async def _drain_loop(self, client: aiomqtt.Client, disconnected: asyncio.Future) -> None:
        ob = self._outbox
        assert ob is not None
        window = self.cfg.mqtt.max_inflight
        timeout = self.cfg.mqtt.publish_timeout_s
        while True:
            if self._rebirth:
                self._rebirth = False
                await self._spb_birth(client)
            rows = ob.peek(window)
            if not rows:
                if self._closing:
                    return
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({waiter, disconnected}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if disconnected.done():
                    raise aiomqtt.MqttError("disconnected while idle")
                continue
            if self._spb:
                # a device's DBIRTH precedes its first DDATA of the session
                for r in rows:
                    dev = self._spb_device(r.topic)
                    if r.spb and dev is not None and dev not in self._born:
                        await self._dbirth(client, dev)
            tasks = []
            for r in rows:
                payload = r.payload + spb.seq_field(self._next_spb_seq()) if r.spb else r.payload
                tasks.append(
                    asyncio.ensure_future(client.publish(r.topic, payload, qos=1, timeout=math.inf))
                )
            everything = asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.wait(
                {everything, disconnected}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            # per topic, the acknowledged prefix is deleted; after a topic's first failure its
            # later rows stay (re-sent after reconnecting, so the topic's order holds)
            acked: list[int] = []
            failed_topics: set[str] = set()
            first_failure: asyncio.Future | None = None
            for r, t in zip(rows, tasks, strict=True):
                ok = t.done() and not t.cancelled() and t.exception() is None
                if ok and r.topic not in failed_topics:
                    acked.append(r.id)
                elif not ok:
                    failed_topics.add(r.topic)
                    first_failure = first_failure or t
            for t in tasks:
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await everything
            if acked:
                ob.ack(acked)
                self.metrics.inc("edgeloop_publish_messages_total", len(acked))
                self._gauges()
            if first_failure is not None:
                cause = None if first_failure.cancelled() else first_failure.exception()
                raise aiomqtt.MqttError(
                    f"{len(rows) - len(acked)} messages not acknowledged"
                    + (f": {cause}" if cause else " (connection lost or timeout)")
                )

    def _spb_device(self, topic: str) -> str | None:
        seg = topic.rsplit("/", 1)[-1]
        for device in self._groups:
            if topic_segment(device) == seg:
                return device
        return None

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
