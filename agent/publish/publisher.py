"""MQTT publisher with a durable outbox: commit first, send, delete only after PUBACK.

The event-loop side (`publish_frame`, `publish_event`) copies the frame and hands it to the
outbox writer thread (`OutboxWriter`), which encodes and commits it: the event loop never
waits for SQLite. One task (`_run`) connects, publishes the birth, then drains the outbox in
id order with up to `max_inflight` messages awaiting PUBACK, deleting the acknowledged prefix
of each window (peek and delete also run in the writer thread). Only committed rows are ever
sent. A lost connection leaves unacknowledged rows in place, to be re-sent (at least once,
never out of order); the reconnect loop below is plain code with capped exponential backoff
and jitter, and the task itself is supervised (a crash is logged with its traceback, counted
and the task restarted). Topics and payloads are documented in docs/northbound.md.
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt
import numpy as np
from aiomqtt.exceptions import MqttConnectError

from agent import names
from agent.metrics import Metrics
from agent.names import EVENT_STORAGE_RECOVERED, EVENT_WRITE_REFUSED
from agent.publish import flat as flatjson
from agent.publish import sparkplug as spb
from agent.publish.outbox import Outbox, OutboxError
from agent.publish.outbox_writer import OutboxWriter
from agent.publish.settings import PublishConfig
from agent.publish.spb_node import SparkplugNode, Write
from agent.store.durable import RESTART_INITIAL_S, RESTART_MAX_S, describe, health_dict
from drivers.base import DriverError
from drivers.configbase import SecretError

log = logging.getLogger("edgeloop.publish")

PAYLOAD_VERSION = 1
WRITER_STOP_S = 1.0  # close(): longest wait for the outbox writer to commit and exit
_AUTH_CODES = {4, 5, 134, 135}  # MQTT 3.1.1 / 5 CONNACK: bad user name or password, not authorized


class PublishError(Exception):
    """Root of the publish layer: bad credentials source, outbox failure, TLS files."""


class HostOffline(aiomqtt.MqttError):
    """The Sparkplug primary host said it is offline: say NDEATH, reconnect and wait."""


WriteFn = Callable[..., Awaitable[None]]  # Acquirer.write(tag, value, role=None)


@dataclass(slots=True)
class Frame:
    """A copy of one poll group's slice at one poll, handed to the outbox writer."""

    ts_ns: int
    start: int
    raw: np.ndarray
    value: np.ndarray
    quality: np.ndarray
    flags: np.ndarray
    score: np.ndarray
    texts: dict[int, str]  # string tags' values by table index
    reason: np.ndarray | None  # drivers.base.Reason codes, when the table has them
    qsend: np.ndarray | None = None  # Sparkplug: tags whose Quality property is sent


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
        self._writer: OutboxWriter | None = None
        self._closed_writer: OutboxWriter | None = None  # after close(), for health()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._epoch: str | None = None  # of the open outbox file; set by the writer thread
        self._task_error: str | None = None  # the connection task crashed, restarting
        self._task_crashes = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._closing = False
        self._password: str | None = None
        self._tls: ssl.SSLContext | None = None
        self._episode: str | None = None  # kind of the error being logged once
        self.last_error: str | None = None
        self.connected = False
        self._pending: dict[tuple[str, str, int, int], list[Frame]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._rebirth = False  # set by an NCMD rebirth request, served by the drain
        self._live = False  # Sparkplug: NBIRTH sent in this session (else data is historical)
        self._write: WriteFn | None = None  # the acquirer's gated write, for DCMD
        self._cmd_tasks: set[asyncio.Task[None]] = set()
        self.node: SparkplugNode | None = None
        self.flat: flatjson.FlatReporter | None = None
        if publish_cfg.encoding == "json_flat":
            self.flat = flatjson.FlatReporter(publish_cfg.json_flat, table, groups)
        if self._spb:
            self.node = SparkplugNode(
                table,
                groups,
                f"{publish_cfg.outbox.path}.bdseq",
                publish_cfg.sparkplug.primary_host_id,
            )
            # quality of the last frame committed per tag; births say it first (good)
            self._lastq = np.zeros(len(table.names), dtype=np.int16)

    def set_write(self, write: WriteFn | None) -> None:
        """The acquirer's `write(tag, value, role=None)`: Sparkplug DCMD writes go through it,
        so its write gate (operator role, allow-list, bounds, rate, budget) judges them."""
        self._write = write

    # ------------------------------------------------------------------ topics
    def data_topic(self, device: str, group: str) -> str:
        """`{topic_prefix}/{site}/{device}/{group}` (JSON) or the Sparkplug DDATA topic."""
        if self._spb:
            return f"{self._spb_base}/DDATA/{self._site}/{topic_segment(device)}"
        return f"{self._prefix}/{self._site}/{topic_segment(device)}/{topic_segment(group)}"

    def event_topic(self, kind: str) -> str:
        """`{topic_prefix}/{site}/_events/{kind}` in every encoding."""
        return f"{self._prefix}/{self._site}/_events/{topic_segment(kind)}"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Resolve credentials and TLS, start the outbox writer and the connection task.

        The outbox is opened (checked, recovered) by the writer thread: a damaged or
        unwritable outbox never makes start() fail, it shows in health() instead.
        """
        if self._task is not None:
            return
        self._password = self._load_password()
        self._tls = self._tls_context()
        self._loop = asyncio.get_running_loop()
        ob = self.cfg.outbox
        self._writer = OutboxWriter(
            ob.path,
            int(ob.max_mb * 1024 * 1024),
            ob.synchronous,
            ob.queue_max,
            self.metrics,
            log,
            on_open=self._outbox_opened,
            on_commit=self._committed,
            on_state=self._state_changed,
        )
        self._closed_writer = None
        self._writer.start()
        self.metrics.set(names.MQTT_CONNECTED, 0)
        self._state_changed()
        self._task = asyncio.create_task(self._supervised_run(), name="edgeloop-publish")
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
            writer, self._writer = self._writer, None
            if writer is not None:
                self._closed_writer = writer  # health() still reports on it
                writer.stop()  # commits what is queued, then exits; never blocks here
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._task = None
            self._set_connected(False)
            for t in list(self._cmd_tasks):  # DCMD writes still waiting (acquisition stopped)
                t.cancel()
            if writer is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(writer.stopped()), WRITER_STOP_S)
                except TimeoutError:
                    log.error(
                        "outbox writer did not finish within %.1f s; it goes on in the background",
                        WRITER_STOP_S,
                    )

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything handed over so far is committed (or counted as dropped)."""
        writer = self._writer
        if writer is None:
            return True
        try:
            await asyncio.wait_for(writer.call(lambda ob: None), timeout_s)
        except (TimeoutError, OutboxError):
            return False
        return True

    def health(self) -> dict[str, Any]:
        """{state: ok|degraded|failed, error, crashes, path} plus connected, broker_error,
        dropped, moved_aside, epoch.

        failed: no outbox could be opened or created (messages are dropped, the open is
        retried); degraded: the writer or the connection task crashed and is restarting,
        writes fail (disk full), another process holds the outbox lock, or the hand-over
        queue overflows. A broker that cannot be reached is not a fault of the component
        (the outbox keeps the data): it shows in `connected` and `broker_error`.
        `dropped` counts messages lost locally: never committed, or deleted by the budget.
        """
        w = self._writer or self._closed_writer
        state, error = w.problem() if w is not None else ("ok", None)
        if state == "ok" and self._task_error is not None:
            state, error = "degraded", self._task_error
        return health_dict(
            state=state,
            error=error,
            crashes=(w.crashes if w is not None else 0) + self._task_crashes,
            path=self.cfg.outbox.path,
            connected=self.connected,
            broker_error=self.last_error,
            dropped=(w.lost + w.budget_dropped) if w is not None else 0,
            moved_aside=w.moved_aside if w is not None else None,
            epoch=self._epoch,
        )

    # ------------------------------------------------------------------ writer callbacks
    def _state_changed(self) -> None:
        """Any thread: keep edgeloop_component_up{component="publish"} in step."""
        up = self.health()["state"] == "ok"
        self.metrics.set(names.COMPONENT_UP, 1 if up else 0, component="publish")

    def _outbox_opened(self, ob: Outbox, moved: str | None, reason: str | None) -> None:
        """Writer thread: payloads built from now on carry this file's epoch; a corrupt file
        moved aside is said north, in the fresh outbox."""
        self._epoch = ob.epoch
        if moved is not None:
            self.publish_event(
                EVENT_STORAGE_RECOVERED,
                {"component": "publish", "path": ob.path, "moved_to": moved, "reason": reason},
            )

    def _committed(self) -> None:
        """Writer thread: new rows are durable, wake the sender."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to wake
                loop.call_soon_threadsafe(self._wake.set)

    # ------------------------------------------------------------------ event-loop side
    def publish_frame(self, group: Any, ts_ns: int) -> None:
        """Hand a copy of the group's slice to the outbox writer (or its batch window).

        Returns at once and never raises: the writer thread encodes and commits it.
        """
        t = self.table
        if self.flat is not None:
            self._publish_flat(group, int(ts_ns))
            return
        s, e = group.start, group.stop
        texts = getattr(t, "texts", None) or {}
        reason = getattr(t, "reason", None)
        frame = Frame(
            int(ts_ns),
            s,
            t.raw[s:e].copy(),
            t.value[s:e].copy(),
            t.quality[s:e].copy(),
            t.flags[s:e].copy(),
            t.score[s:e].copy(),
            {i: texts[i] for i in range(s, e) if i in texts} if texts else {},
            reason[s:e].copy() if reason is not None else None,
        )
        if self.node is not None:
            self.node.learn(group)
            # Quality goes with a value that is not good or whose quality just changed
            last = self._lastq[s:e]
            frame.qsend = (frame.quality != 0) | (frame.quality != last)
            last[:] = frame.quality
        if self.cfg.batch_window_ms > 0:
            self._pending.setdefault((group.device, group.name, s, e), []).append(frame)
            return
        self._commit([(group.device, group.name, s, e, [frame])])

    def _publish_flat(self, group: Any, ts_ns: int) -> None:
        """json_flat: one message per tag that has something new (agent/publish/flat.py)."""
        flat = self.flat
        assert flat is not None
        base = f"{self._prefix}/{self._site}/{topic_segment(group.device)}"
        names = self.table.names
        idx = flat.select(group, ts_ns)
        if not idx:
            return
        items = [  # the documents are made now, their JSON text in the writer thread
            (f"{base}/{topic_segment(names[i])}", lambda _s, d=doc: flatjson.payload(d), False)
            for i, doc in zip(idx, flat.messages(idx, ts_ns), strict=True)
        ]
        if items:
            self._append(items)

    def publish_event(self, kind: str, payload: Any) -> None:
        """Hand an event (anomaly, control mode change, ...) over for `_events/{kind}`."""
        ts_ns = time.time_ns()
        body = _json_safe(payload if isinstance(payload, dict) else {"value": payload})

        def build(seq: int) -> bytes:
            doc = {
                "v": PAYLOAD_VERSION,
                "seq": seq,
                "epoch": self._epoch,
                "site": self.site,
                "kind": kind,
                "ts": _iso(ts_ns),
                "ts_ns": ts_ns,
                "payload": body,
            }
            return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()

        self._append([(self.event_topic(kind), build, False)])

    def _commit(self, batches: list[tuple[str, str, int, int, list[Frame]]]) -> None:
        items = []
        for device, group, s, e, frames in batches:
            topic = self.data_topic(device, group)
            if self._spb:
                items.append((topic, self._spb_builder(frames), True))
            else:
                items.append((topic, self._json_builder(device, group, s, e, frames), False))
        self._append(items)

    def _append(self, items: list) -> None:
        writer = self._writer
        if writer is None:  # not started or closed: nothing can keep it; count, never raise
            self.metrics.inc(names.QUEUE_DROPPED_TOTAL, len(items), queue="outbox")
            return
        for topic, build, is_spb in items:
            writer.submit(topic, build, is_spb)

    def _json_builder(
        self, device: str, group: str, s: int, e: int, frames: list[Frame]
    ) -> Callable[[int], bytes]:
        names = list(self.table.names[s:e])

        def build(seq: int) -> bytes:
            out = []
            for fr in frames:
                f: dict[str, Any] = {
                    "ts": _iso(fr.ts_ns),
                    "ts_ns": fr.ts_ns,
                    "raw": _floats(fr.raw),
                    "value": _floats(fr.value),
                    "quality": fr.quality.tolist(),
                    "flags": fr.flags.tolist(),
                    "score": _floats(fr.score),
                }
                if fr.reason is not None:
                    f["reason"] = fr.reason.tolist()
                if fr.texts:
                    f["texts"] = {names[i - s]: v for i, v in fr.texts.items()}
                out.append(f)
            doc = {
                "v": PAYLOAD_VERSION,
                "seq": seq,
                "epoch": self._epoch,
                "site": self.site,
                "device": device,
                "group": group,
                "tags": names,
                "frames": out,
            }
            return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()

        return build

    def _spb_builder(self, frames: list[Frame]) -> Callable[[int], bytes]:
        node = self.node
        assert node is not None
        # committed while the node is not publishing (broker unreachable, primary host
        # offline): store-and-forward data, which a host files as history
        historical = not self._live

        def build(_seq: int) -> bytes:  # the Sparkplug seq is appended when sent
            return node.ddata(frames, historical)

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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
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
                        await self._session(client)
                    finally:
                        if self._closing:
                            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                                await asyncio.wait_for(self._goodbye(client), 1.0)
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

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

    # ------------------------------------------------------------------ birth / death
    def _status(self, state: str) -> bytes:
        doc = {
            "v": PAYLOAD_VERSION,
            "site": self.site,
            "status": state,
            "ts": _iso(time.time_ns()),
            "encoding": self.cfg.encoding,
            "epoch": self._epoch,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    def _ndeath_payload(self) -> bytes:
        assert self.node is not None
        return self.node.ndeath(time.time_ns() // 1_000_000)

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection: status birth; with Sparkplug, commands subscribed first, the
        primary host awaited, NBIRTH and the DBIRTHs; then the drain until closing."""
        # aiomqtt resolves this future when the connection drops; its own message iterator
        # waits on it the same way (there is no public accessor).
        disconnected: asyncio.Future[None] = client._disconnected
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

    # ------------------------------------------------------------------ drain
    async def _drain_loop(self, client: aiomqtt.Client, disconnected: asyncio.Future) -> None:
        writer = self._writer
        if writer is None:  # closing
            return
        window = self.cfg.mqtt.max_inflight
        timeout = self.cfg.mqtt.publish_timeout_s
        node = self.node
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
            tasks = []
            for r in rows:
                payload = r.payload
                if r.spb and node is not None:  # the session's seq, appended when sent
                    payload += spb.seq_field(node.next_seq())
                tasks.append(
                    asyncio.ensure_future(client.publish(r.topic, payload, qos=1, timeout=math.inf))
                )
            sent = time.perf_counter()
            everything = asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.wait(
                {everything, disconnected}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            round_trip = time.perf_counter() - sent
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
                # ids belong to the file they were read from: never delete in a fresh one
                await writer.call(
                    lambda o, ids=acked, src=ob: o.ack(ids) if o is src and o is not None else 0
                )
                self.metrics.inc(names.PUBLISH_MESSAGES_TOTAL, len(acked))
            if first_failure is None:  # the whole batch acknowledged: its round trip
                self.metrics.observe(names.PUBLISH_SECONDS, round_trip)
            if first_failure is not None:
                cause = None if first_failure.cancelled() else first_failure.exception()
                raise aiomqtt.MqttError(
                    f"{len(rows) - len(acked)} messages not acknowledged"
                    + (f": {cause}" if cause else " (connection lost or timeout)")
                )

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
