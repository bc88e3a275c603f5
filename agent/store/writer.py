"""The history writer: a bounded queue on the event-loop side, one thread on disk.

The event loop only copies the slice into the queue (`submit_frame` never touches disk); a
writer thread commits up to `batch_max_frames` frames or `batch_ms` worth per transaction.
WAL with synchronous=NORMAL survives kill -9 with every committed transaction intact, so a
crash loses at most the batch being collected. Retention runs in the same thread
(agent/store/retention.py); reads go through their own connection (agent/store/reader.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable
from typing import Any, TextIO

from agent.metrics import Metrics
from agent.names import (
    COMPONENT_UP,
    EVENT_STORAGE_RECOVERED,
    STORE_BYTES,
    STORE_DROPPED_TOTAL,
    STORE_QUEUE_DEPTH,
    STORE_ROWS_TOTAL,
)
from agent.store import retention
from agent.store.codec import pack_frame
from agent.store.durable import (
    REOPEN_INITIAL_S,
    REOPEN_MAX_S,
    describe,
    health_dict,
    is_corrupt,
    open_recovering,
    run_supervised,
)
from agent.store.reader import HistoryReader
from agent.store.schema import StoreError, connect, db_bytes
from agent.store.settings import StoreConfig
from agent.telemetry.episodes import EpisodeLog

log = logging.getLogger("edgeloop.store")


# --- the writer -------------------------------------------------------------------------------

_STOP = object()


class _RetentionRequest:
    """A queue item asking the writer thread to run retention now and report back."""

    def __init__(self, now_ns: int | None) -> None:
        self.now_ns = now_ns
        self.done = threading.Event()
        self.result: dict[str, int] = {}


def _release(waiters: Iterable[Any]) -> None:
    """Wake flush()/retain_now() callers whose request will not be served."""
    for w in waiters:
        if isinstance(w, _RetentionRequest):
            w.done.set()
        else:
            w.set()


class HistoryStore:
    """The running store: bounded queue on the event-loop side, one writer thread on disk.

    Overflow policy: when `queue_max` items wait, new items are dropped and counted in
    `edgeloop_store_dropped_total` and logged once per episode (old data already queued is
    kept, so a stalled disk loses the newest frames, and the event loop never waits).

    Failures never reach the caller: `start()` and `submit_*` do not raise. A corrupt file is
    moved aside and a fresh one started; a database that cannot be opened at all (full disk,
    read-only directory) puts the store in state "failed" (items dropped and counted, the
    open retried with backoff); a crash of the writer loop is logged with its traceback,
    counted, and the loop restarted. `health()` says which.
    """

    def __init__(self, store_cfg: StoreConfig, table: Any, metrics: Metrics | None = None):
        self.cfg = store_cfg
        self.table = table
        self.metrics = metrics if metrics is not None else Metrics()
        self._q: queue.Queue[Any] = queue.Queue(maxsize=store_cfg.queue_max)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._con: sqlite3.Connection | None = None
        self._group_keys: dict[tuple[str, str, int, int], tuple[str, str, str]] = {}
        self._group_ids: dict[tuple[str, str, str], int] = {}
        self._reader: HistoryReader | None = None
        self._last_retention = 0.0
        self._episodes = EpisodeLog(log, remind_s=600.0)
        self._dropping = False  # in a queue-overflow episode (event-loop side)
        self._last_drop = 0.0
        # health, written by the writer thread, read by anyone
        self._unavailable = False  # no database open: submit_* drop at once
        self._open_error: str | None = None
        self._crash_error: str | None = None
        self._write_error: str | None = None
        self._stop_error: str | None = None
        self._crashes = 0
        self._moved_aside: str | None = None
        self._reopen_at = 0.0
        self._reopen_delay = REOPEN_INITIAL_S
        # the batch being written (for a crash) and the one to retry after a restart
        self._hand: tuple[list[tuple], list[Any], bool] | None = None
        self._carry: tuple[list[tuple], list[Any]] | None = None
        self.dropped = 0
        self.transactions = 0  # committed write transactions (batching is visible in tests)

    # -- lifecycle
    def start(self) -> None:
        """Start the writer thread; it opens (checks, recovers) the database. Never raises."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._set_up()
        self._thread = threading.Thread(
            target=self._thread_main, name="edgeloop-store", daemon=True
        )
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what is queued, stop the writer and close the database, within `timeout_s`.

        Never blocks longer than that: the stop marker is put without waiting (the writer
        also watches a stop flag, so a full queue cannot keep it out), and a writer that
        does not finish in time is left to finish on its own (a daemon thread; it closes
        its own connection) and reported in health().
        """
        if self._thread is None:
            return
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._q.put_nowait(_STOP)
        self._thread.join(max(0.0, timeout_s))
        if self._thread.is_alive():
            self._stop_error = (
                f"history writer did not finish within {timeout_s:.1f} s; "
                f"about {self._q.qsize()} queued items not written"
            )
            log.error("%s", self._stop_error)
            self._set_up()
        self._thread = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything submitted so far is committed (tests, report, shutdown)."""
        if self._thread is None:
            return True
        deadline = time.monotonic() + timeout_s
        done = threading.Event()
        try:
            self._q.put(done, timeout=max(0.001, timeout_s))
        except queue.Full:
            return False
        return done.wait(max(0.0, deadline - time.monotonic()))

    def retain_now(self, now_ns: int | None = None, timeout_s: float = 60.0) -> dict[str, int]:
        """Run retention in the writer thread now (as if at `now_ns`); rows deleted by reason."""
        req = _RetentionRequest(now_ns)
        deadline = time.monotonic() + timeout_s
        try:
            self._q.put(req, timeout=max(0.001, timeout_s))
        except queue.Full as exc:
            raise StoreError("retention did not finish in time") from exc
        if not req.done.wait(max(0.0, deadline - time.monotonic())):
            raise StoreError("retention did not finish in time")
        return req.result

    def health(self) -> dict[str, Any]:
        """{state: ok|degraded|failed, error, crashes, path, dropped, moved_aside}.

        failed: no database could be opened (items are dropped, the open is retried);
        degraded: the writer crashed and is restarting, writes are failing (disk full), or
        close() ran out of time; moved_aside: where a corrupt file was moved this run.
        """
        if self._unavailable:
            state, error = "failed", self._open_error
        else:
            error = self._crash_error or self._write_error or self._stop_error
            state = "degraded" if error else "ok"
        return health_dict(
            state=state,
            error=error,
            crashes=self._crashes,
            path=self.cfg.path,
            dropped=self.dropped,
            moved_aside=self._moved_aside,
        )

    def _set_up(self) -> None:
        up = self.health()["state"] == "ok"
        self.metrics.set(COMPONENT_UP, 1 if up else 0, component="store")

    # -- event-loop side: copy and enqueue, never touch disk
    def submit_frame(self, group: Any, ts_ns: int) -> bool:
        """Queue a copy of the group's slice; False (and counted) if it cannot be kept."""
        if self._unavailable:
            return self._drop_now()
        t = self.table
        s, e = group.start, group.stop
        key = (group.device, group.name, s, e)
        gkey = self._group_keys.get(key)
        if gkey is None:
            gkey = (group.device, group.name, json.dumps(list(t.names[s:e])))
            self._group_keys[key] = gkey
        blob = pack_frame(
            t.raw[s:e], t.value[s:e], t.score[s:e], t.flags[s:e], t.quality[s:e], t.reason[s:e]
        )
        return self._put(("F", int(ts_ns), gkey, blob))

    def submit_event(self, ts_ns: int, kind: str, source: str, payload: Any) -> bool:
        """Queue an event (anomaly, device up/down, ...); payload must be JSON-serialisable."""
        if self._unavailable:
            return self._drop_now()
        return self._put(("E", int(ts_ns), kind, source, json.dumps(payload, default=str)))

    def submit_control(self, ts_ns: int, loop: str, payload: Any) -> bool:
        """Queue a control action or mode change of `loop`."""
        if self._unavailable:
            return self._drop_now()
        return self._put(("C", int(ts_ns), loop, json.dumps(payload, default=str)))

    def _put(self, item: tuple) -> bool:
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            self.metrics.inc(STORE_DROPPED_TOTAL)
            self._dropping = True
            self._last_drop = time.monotonic()
            self._episodes.fail(
                "history: items dropped, queue full",
                f"{self.cfg.queue_max} items wait for the writer (disk slow or stalled); "
                f"the newest are dropped, {self.dropped} dropped since start",
            )
            return False
        if (
            self._dropping
            and time.monotonic() - self._last_drop >= 1.0
            and self._q.qsize() <= self.cfg.queue_max // 2
        ):
            # the episode ends once the writer has caught up (nothing dropped for a second,
            # the queue below half), not at the first free slot
            self._dropping = False
            self._episodes.ok("history: items dropped, queue full")
        return True

    def _drop_now(self) -> bool:
        """Failed state: count the item as dropped (the open-failure episode logged it)."""
        self.dropped += 1
        self.metrics.inc(STORE_DROPPED_TOTAL)
        return False

    # -- reads (own read-only connection; fine while the writer runs)
    def reader(self) -> HistoryReader:
        if self._reader is None:
            self._reader = HistoryReader(self.cfg.path)
        return self._reader

    def read_series(self, tags: Iterable[str], t_from: Any, t_to: Any) -> dict:
        return self.reader().read_series(tags, t_from, t_to)

    def read_events(self, t_from: Any, t_to: Any, kinds: Iterable[str] | None = None) -> list:
        return self.reader().read_events(t_from, t_to, kinds)

    def read_control(self, t_from: Any, t_to: Any, loop: str | None = None) -> list:
        return self.reader().read_control(t_from, t_to, loop)

    def export(self, out: TextIO, t_from: Any, t_to: Any, **kw: Any) -> int:
        return self.reader().export_csv(out, t_from, t_to, **kw)

    # -- writer thread: supervision
    def _thread_main(self) -> None:
        try:
            run_supervised(
                self._work,
                what="history writer",
                component="store",
                metrics=self.metrics,
                logger=log,
                stopping=self._stopping,
                on_crash=self._on_crash,
            )
        finally:
            self._finish()

    def _on_crash(self, exc: BaseException) -> None:
        """Keep the batch in hand for one retry after the restart; drop it if it was one."""
        self._crashes += 1
        self._crash_error = f"writer crashed: {describe(exc)}"
        con = self._con
        if con is not None and con.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            self._reload_group_ids()
        hand, self._hand = self._hand, None
        if hand is not None:
            batch, waiters, retried = hand
            if retried:
                self._count_dropped(len(batch))
                log.error("history: %d items dropped: they crashed the writer twice", len(batch))
                _release(waiters)
            else:
                self._carry = (batch, waiters)
        self._set_up()

    def _finish(self) -> None:
        """Thread exit: release waiters left in the queue, count what was not written."""
        left = 0
        while True:
            try:
                it = self._q.get_nowait()
            except queue.Empty:
                break
            if isinstance(it, tuple):
                left += 1
            elif it is not _STOP:
                _release([it])
        if self._carry is not None:
            left += len(self._carry[0])
            _release(self._carry[1])
            self._carry = None
        if left:
            self._count_dropped(left)
            log.error("history: %d queued items not written at stop", left)
        if self._con is not None:
            with contextlib.suppress(sqlite3.Error):
                self._con.close()
            self._con = None

    # -- writer thread: the work loop
    def _work(self) -> None:
        """Open the database when needed, batch items into transactions, run retention."""
        carry, self._carry = self._carry, None
        if carry is not None:
            self._process(carry[0], carry[1], retried=True)
        batch_s = self.cfg.batch_ms / 1000.0
        while True:
            if self._con is None:
                self._open()
            try:
                item = self._q.get(timeout=min(1.0, self.cfg.retention_interval_s))
            except queue.Empty:
                self._recovered_from_crash()
                if self._stopping.is_set():
                    return  # close() asked and nothing is left (its marker may not have fit)
                self._maybe_retention()
                continue
            batch: list[tuple] = []
            waiters: list[Any] = []
            deadline = time.monotonic() + batch_s
            stop = False
            while True:
                if item is _STOP:
                    stop = True
                    break
                if not isinstance(item, tuple):
                    waiters.append(item)
                    break  # commit now so the waiter sees everything before it
                batch.append(item)
                if len(batch) >= self.cfg.batch_max_frames:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._q.get(timeout=remaining)
                except queue.Empty:
                    break
            self._process(batch, waiters)
            if stop:
                self._drain_after_stop()
                return
            self._maybe_retention()

    def _drain_after_stop(self) -> None:
        """Commit whatever raced in after the stop marker."""
        rest: list[tuple] = []
        waiters: list[Any] = []
        while True:
            try:
                it = self._q.get_nowait()
            except queue.Empty:
                break
            if isinstance(it, tuple):
                rest.append(it)
            elif it is not _STOP:
                waiters.append(it)
        self._process(rest, waiters)

    def _process(self, batch: list[tuple], waiters: list[Any], retried: bool = False) -> None:
        """Write one batch, then serve the flush/retention requests that followed it."""
        self._hand = (batch, waiters, retried)
        if batch:
            if self._con is None:
                self._count_dropped(len(batch))
            else:
                self._write(batch)
        for w in waiters:
            if isinstance(w, _RetentionRequest):
                if self._con is not None:
                    try:
                        w.result = self.run_retention(w.now_ns)
                    except sqlite3.Error as exc:
                        log.error("history retention failed: %s", exc)
                w.done.set()
            else:
                w.set()
        self._hand = None
        self._recovered_from_crash()

    def _recovered_from_crash(self) -> None:
        if self._crash_error is not None:
            self._crash_error = None
            log.info("history writer running again after a crash")
            self._set_up()

    def _count_dropped(self, n: int) -> None:
        self.dropped += n
        self.metrics.inc(STORE_DROPPED_TOTAL, n)

    # -- writer thread: opening, recovery
    def _open(self) -> None:
        """Open (quick_check, move a corrupt file aside); on failure go to "failed" and
        retry with backoff. Runs in the writer thread: a long check never blocks the loop."""
        now = time.monotonic()
        if now < self._reopen_at:
            # failed state: what arrives meanwhile is dropped (and waiters released) below
            return
        path = self.cfg.path
        try:
            con, moved, reason = open_recovering(
                path,
                lambda: connect(path, self.cfg.synchronous),
                what="history database",
                component="store",
                metrics=self.metrics,
                logger=log,
            )
        except Exception as exc:  # any failure to open degrades, never raises
            self._open_error = str(exc) if isinstance(exc, StoreError) else describe(exc)
            self._unavailable = True
            self._reopen_at = now + self._reopen_delay
            self._reopen_delay = min(REOPEN_MAX_S, self._reopen_delay * 2)
            self._episodes.fail(
                "history database unavailable",
                f"{self._open_error}; history is off (items dropped and counted in "
                f"edgeloop_store_dropped_total), retrying",
                logging.ERROR,
            )
            self._set_up()
            return
        self._con = con
        self._reload_group_ids()
        self._reopen_delay = REOPEN_INITIAL_S
        self._open_error = None
        self._unavailable = False
        self._episodes.ok("history database unavailable")
        self._last_retention = time.monotonic()
        if moved is not None:
            self._moved_aside = moved
            payload = {"component": "store", "path": path, "moved_to": moved, "reason": reason}
            self._write(
                [("E", time.time_ns(), EVENT_STORAGE_RECOVERED, "store", json.dumps(payload))]
            )
        self._set_up()
        self._update_gauges()

    def _reload_group_ids(self) -> None:
        """Group ids from the database (a rolled-back insert must not stay cached)."""
        self._group_ids.clear()
        con = self._con
        if con is None:
            return
        with contextlib.suppress(sqlite3.Error):
            for gid, dev, name, tags in con.execute("SELECT id, device, name, tags FROM groups"):
                self._group_ids[(dev, name, tags)] = gid

    def _gid(self, con: sqlite3.Connection, gkey: tuple[str, str, str]) -> int:
        gid = self._group_ids.get(gkey)
        if gid is None:
            con.execute(
                "INSERT OR IGNORE INTO groups(device, name, tags, created_ns) VALUES (?,?,?,?)",
                (*gkey, time.time_ns()),
            )
            gid = con.execute(
                "SELECT id FROM groups WHERE device=? AND name=? AND tags=?", gkey
            ).fetchone()[0]
            self._group_ids[gkey] = gid
        return gid

    def _write(self, batch: list[tuple]) -> None:
        con = self._con
        assert con is not None
        frames, events, controls = [], [], []
        try:
            con.execute("BEGIN")
            for it in batch:
                if it[0] == "F":
                    frames.append((it[1], self._gid(con, it[2]), it[3]))
                elif it[0] == "E":
                    events.append(it[1:])
                else:
                    controls.append(it[1:])
            con.executemany("INSERT INTO frames(ts_ns, group_id, data) VALUES (?,?,?)", frames)
            if events:
                con.executemany(
                    "INSERT INTO events(ts_ns, kind, source, payload) VALUES (?,?,?,?)", events
                )
            if controls:
                con.executemany(
                    "INSERT INTO control(ts_ns, loop, payload) VALUES (?,?,?)", controls
                )
            con.execute("COMMIT")
            self.transactions += 1
        except sqlite3.Error as exc:
            self._write_failed(con, exc, len(batch))
            return
        if self._write_error is not None:
            self._write_error = None
            self._episodes.ok("history writes failing")
            self._set_up()
        m = self.metrics
        if frames:
            m.inc(STORE_ROWS_TOTAL, len(frames), table="frames")
        if events:
            m.inc(STORE_ROWS_TOTAL, len(events), table="events")
        if controls:
            m.inc(STORE_ROWS_TOTAL, len(controls), table="control")
        self._update_gauges()

    def _write_failed(self, con: sqlite3.Connection, exc: sqlite3.Error, n: int) -> None:
        """Disk full, I/O error, corruption: drop the batch (counted), log once per episode."""
        with contextlib.suppress(sqlite3.Error):
            if con.in_transaction:
                con.execute("ROLLBACK")
        self._reload_group_ids()
        self._count_dropped(n)
        self._write_error = f"history write failed: {describe(exc)}"
        self._episodes.fail(
            "history writes failing",
            f"{exc}; {n} items dropped (edgeloop_store_dropped_total), {self.dropped} since start",
            logging.ERROR,
        )
        if is_corrupt(exc):
            # the file went bad under us: reopen, which checks it and moves it aside
            with contextlib.suppress(sqlite3.Error):
                con.close()
            self._con = None
            self._reopen_at = 0.0
        self._set_up()
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.set(STORE_QUEUE_DEPTH, self._q.qsize())
        self.metrics.set(STORE_BYTES, db_bytes(self.cfg.path))

    # -- retention
    def _maybe_retention(self) -> None:
        now = time.monotonic()
        if self._con is None or now - self._last_retention < self.cfg.retention_interval_s:
            return
        self._last_retention = now
        try:
            self.run_retention()
        except sqlite3.Error as exc:
            log.error("history retention failed: %s", exc)

    def run_retention(self, now_ns: int | None = None) -> dict[str, int]:
        """Delete by age, then oldest frames until under max_mb; writer thread only.

        Returns rows deleted per reason (agent/store/retention.py).
        """
        con = self._con
        assert con is not None
        now_ns = time.time_ns() if now_ns is None else now_ns
        deleted = retention.run_retention(con, self.cfg, self.metrics, now_ns)
        self._update_gauges()
        return deleted
