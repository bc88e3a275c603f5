"""MQTT publisher with a durable outbox: commit first, send, delete only after PUBACK.

The event-loop side (`publish_frame`, `publish_event`) copies the frame and hands it to the
outbox writer thread (`OutboxWriter`), which encodes (payloads.py, sparkplug.py, flat.py)
and commits it: the event loop never waits for SQLite. The connection task (link.py)
connects, runs the session (session.py: births, commands) and drains the outbox (drain.py)
in id order with up to `max_inflight` messages awaiting PUBACK, deleting the acknowledged
prefix of each window. Only committed rows are ever sent. A lost connection leaves
unacknowledged rows in place, to be re-sent (at least once, never out of order). Topics and
payloads are documented in docs/northbound.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from agent import names
from agent.backoff import backoff_delay
from agent.lifecycle import AsyncContext
from agent.metrics import Metrics
from agent.names import EVENT_STORAGE_RECOVERED
from agent.publish import flat as flatjson
from agent.publish import payloads
from agent.publish.base import HostOffline, PublishError, WriteFn, log
from agent.publish.drain import Drain
from agent.publish.link import Link
from agent.publish.outbox import Outbox, OutboxError
from agent.publish.outbox_writer import OutboxWriter
from agent.publish.payloads import PAYLOAD_VERSION, Frame, event_payload, json_safe, topic_segment
from agent.publish.session import Session
from agent.publish.settings import PublishConfig
from agent.store.durable import health_dict

if TYPE_CHECKING:
    from agent.publish.spb_node import SparkplugNode

__all__ = [
    "PAYLOAD_VERSION",
    "Frame",
    "HostOffline",
    "PublishError",
    "Publisher",
    "backoff_delay",
    "topic_segment",
]

WRITER_STOP_S = 1.0  # close(): longest wait for the outbox writer to commit and exit


class Publisher(Link, Session, Drain, AsyncContext):
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
        self._names: dict[tuple[int, int], list[str]] = {}  # tag names per group slice
        self.node: SparkplugNode | None = None
        self.flat: flatjson.FlatReporter | None = None
        if publish_cfg.encoding == "json_flat":
            self.flat = flatjson.FlatReporter(publish_cfg.json_flat, table, groups)
        if self._spb:
            from agent.publish.spb_node import SparkplugNode  # protobuf only for Sparkplug

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

    async def stop(self) -> None:
        """`Component.stop`: `close()` with its default drain time."""
        await self.close()

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
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout_s):
                    await asyncio.shield(task)
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
                    async with asyncio.timeout(WRITER_STOP_S):
                        await asyncio.shield(writer.stopped())
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
            async with asyncio.timeout(timeout_s):
                await writer.call(lambda ob: None)
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
        body = json_safe(payload if isinstance(payload, dict) else {"value": payload})

        def build(seq: int) -> bytes:
            return event_payload(seq, self._epoch, self.site, kind, ts_ns, body)

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
        tags = self._names.get((s, e))
        if tags is None:  # the tag names of a group, listed once
            tags = self._names[(s, e)] = list(self.table.names[s:e])
        site = self.site

        def build(seq: int) -> bytes:
            return payloads.json_frames(seq, self._epoch, site, device, group, tags, s, frames)

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
