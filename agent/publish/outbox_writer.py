"""The outbox writer thread: the one thread that touches the outbox file.

The event loop hands messages over (`submit`) and asks for peeks and deletes (`call`); this
thread commits runs of them in one transaction each, waits out another process's lock,
counts what it must drop, moves a corrupt file aside and restarts itself after a crash.
The outbox itself (rows, seqs, budget) is agent/publish/outbox.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.metrics import Metrics
from agent.names import OUTBOX_BYTES, OUTBOX_DEPTH, OUTBOX_DROPPED_TOTAL, QUEUE_DROPPED_TOTAL
from agent.publish.outbox import Outbox, OutboxError, rollback
from agent.store.durable import (
    REOPEN_INITIAL_S,
    REOPEN_MAX_S,
    describe,
    is_busy,
    is_corrupt,
    open_recovering,
    run_supervised,
)
from agent.telemetry.episodes import EpisodeLog

_STOP = object()
BATCH_MAX = 512  # handed-over messages committed in one transaction at most
BUSY_TIMEOUT_S = 0.25  # one wait for a lock held by another process; then retried
BUSY_RETRY_S = 0.05
STOP_BUSY_S = 1.0  # after close(): give up on a lock held this long
OVERFLOW_QUIET_S = 1.0  # a queue-full episode ends after this long without a drop


@dataclass(slots=True)
class _Call:
    """Run `fn(outbox or None)` in the writer thread; the result goes to `done`."""

    fn: Callable[[Outbox | None], Any]
    done: concurrent.futures.Future


class OutboxWriter:
    """The one thread that touches the outbox: commits what the event loop hands over and
    serves the sender's peek/ack, so SQLite never blocks the event loop.

    - `submit(topic, build, spb)` returns at once. Overflow policy: when `queue_max`
      messages wait (the disk is slow or another process holds the write lock), the newest
      message is dropped (it never had a seq, so nothing already queued is lost), counted in
      `edgeloop_queue_dropped_total{queue="outbox"}`, logged once per episode, and its seq
      number is used up, so consumers see the loss as a gap.
    - Messages waiting together are committed in one transaction (up to BATCH_MAX). A
      message is visible to `peek` only once committed: nothing is sent before it is durable.
    - A lock held by another process is waited out (retried, never dropped) while the queue
      absorbs new messages; a failed write (disk full) drops that transaction's messages
      (counted, logged once per episode, seqs used up); a corrupt file is moved aside and a
      fresh one started; a file that cannot be opened puts the writer in state "failed"
      (messages dropped and counted, the open retried with backoff); a crash of the loop is
      logged with its traceback and the loop restarted (run_supervised).
    """

    def __init__(
        self,
        path: str,
        max_bytes: int,
        synchronous: str,
        queue_max: int,
        metrics: Metrics,
        logger: logging.Logger,
        *,
        on_open: Callable[[Outbox, str | None, str | None], None] = lambda ob, moved, why: None,
        on_commit: Callable[[], None] = lambda: None,
        on_state: Callable[[], None] = lambda: None,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.synchronous = synchronous
        self.queue_max = queue_max
        self.metrics = metrics
        self.log = logger
        self._on_open = on_open
        self._on_commit = on_commit
        self._on_state = on_state
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._exited: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread: threading.Thread | None = None
        self._ob: Outbox | None = None
        self._episodes = EpisodeLog(logger, remind_s=600.0)
        self._lock = threading.Lock()  # drop accounting is shared by both threads
        self._skips: dict[str, int] = {}
        self._overflowing = False
        self._last_overflow = 0.0
        self._budget_dropping = False
        self._busy_since: float | None = None
        self._reopen_at = 0.0
        self._reopen_delay = REOPEN_INITIAL_S
        self._hand: tuple[list[tuple], bool] | None = None
        self._carry: list[tuple] | None = None
        self._ahead: Any = None  # a call or stop marker taken from the queue, not yet served
        # health
        self.unavailable = False
        self.open_error: str | None = None
        self.crash_error: str | None = None
        self.write_error: str | None = None
        self.crashes = 0
        self.lost = 0  # never committed: queue full, failed writes, no outbox
        self.budget_dropped = 0  # committed, then deleted by the budget
        self.moved_aside: str | None = None
        self.epoch: str | None = None

    # -- any thread
    def problem(self) -> tuple[str, str | None]:
        """(state, error): failed / degraded / ok, and why."""
        if self.unavailable:
            return "failed", self.open_error
        busy = self._busy_since
        if busy is not None and time.monotonic() - busy >= 1.0:
            return "degraded", (
                f"outbox locked by another process for {time.monotonic() - busy:.0f} s; "
                f"{self._q.qsize()} messages waiting"
            )
        error = self.crash_error or self.write_error
        if error is None and self._overflowing:
            error = "outbox queue full: new messages are dropped"
        return ("degraded" if error else "ok"), error

    # -- event-loop side
    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="edgeloop-outbox", daemon=True)
        self._thread.start()

    def submit(self, topic: str, build: Callable[[int], bytes], spb: bool) -> bool:
        """Hand a message over; False (counted, logged once per episode) if it is dropped."""
        if self.unavailable or self._stopping.is_set():
            self._lose({topic: 1})
            return False
        if self._q.qsize() >= self.queue_max:
            self._lose({topic: 1})
            self._last_overflow = time.monotonic()
            if not self._overflowing:
                self._overflowing = True
                self._on_state()
            self._episodes.fail(
                "outbox: messages dropped, queue full",
                f"{self.queue_max} messages wait to be committed (disk slow or the outbox "
                f"locked); the newest are dropped, {self.lost} lost since start",
            )
            return False
        self._q.put((topic, build, spb))
        if self._overflowing and self._caught_up():
            self._overflowing = False
            self._episodes.ok("outbox: messages dropped, queue full")
            self._on_state()
        return True

    def _caught_up(self) -> bool:
        """An overflow episode ends when nothing was dropped for a second and the queue is
        below half, not at the first free slot (the writer takes a whole batch at once)."""
        return (
            time.monotonic() - self._last_overflow >= OVERFLOW_QUIET_S
            and self._q.qsize() <= self.queue_max // 2
        )

    async def call(self, fn: Callable[[Outbox | None], Any]) -> Any:
        """Run `fn(outbox)` in the writer thread after everything handed over before it."""
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._q.put(_Call(fn, done))
        return await asyncio.wrap_future(done)

    def stop(self) -> None:
        """Ask the thread to commit what is queued and exit; returns at once."""
        self._stopping.set()
        self._q.put(_STOP)

    async def stopped(self) -> None:
        """Wait for the thread to exit (bound it with a timeout)."""
        await asyncio.wrap_future(self._exited)

    def _lose(self, counts: dict[str, int]) -> None:
        n = sum(counts.values())
        with self._lock:
            self.lost += n
            for t, k in counts.items():
                self._skips[t] = self._skips.get(t, 0) + k
        self.metrics.inc(QUEUE_DROPPED_TOTAL, n, queue="outbox")

    # -- writer thread
    def _main(self) -> None:
        try:
            run_supervised(
                self._work,
                what="outbox writer",
                component="publish",
                metrics=self.metrics,
                logger=self.log,
                stopping=self._stopping,
                on_crash=self._on_crash,
            )
        finally:
            self._finish()

    def _on_crash(self, exc: BaseException) -> None:
        self.crashes += 1
        self.crash_error = f"outbox writer crashed: {describe(exc)}"
        ob = self._ob
        if ob is not None:
            rollback(ob._con)
        hand, self._hand = self._hand, None
        if hand is not None:
            batch, retried = hand
            if retried:  # it crashed the writer twice: drop it rather than crash-loop
                self._lose(_count_topics(batch))
                self.log.error(
                    "outbox: %d messages dropped: they crashed the writer twice", len(batch)
                )
            else:
                self._carry = batch
        self._on_state()

    def _finish(self) -> None:
        """Thread exit: fail pending calls, count what was not committed, close the file."""
        left: dict[str, int] = {}
        if isinstance(self._ahead, _Call):
            _resolve(self._ahead.done, exc=OutboxError("outbox writer stopped"))
        self._ahead = None
        while True:
            try:
                it = self._q.get_nowait()
            except queue.Empty:
                break
            if type(it) is tuple:
                left[it[0]] = left.get(it[0], 0) + 1
            elif isinstance(it, _Call):
                _resolve(it.done, exc=OutboxError("outbox writer stopped"))
        if self._carry:
            for k, v in _count_topics(self._carry).items():
                left[k] = left.get(k, 0) + v
            self._carry = None
        if left:
            self._lose(left)
            self.log.error("outbox: %d messages not committed at stop", sum(left.values()))
        if self._ob is not None:
            with contextlib.suppress(sqlite3.Error):
                self._ob.close()
            self._ob = None
        self._exited.set_result(None)

    def _work(self) -> None:
        """Commit runs of handed-over messages in one transaction each; serve calls in order."""
        carry, self._carry = self._carry, None
        if carry:
            self._commit(carry, retried=True)
        while True:
            if self._ob is None:
                self._open()
            # a call read ahead of a batch survives a crash of that batch's commit
            item, self._ahead = self._ahead, None
            if item is None:
                try:
                    item = self._q.get(timeout=1.0)
                except queue.Empty:
                    self._recovered_from_crash()
                    if self._stopping.is_set():
                        return
                    continue
            if type(item) is tuple:
                batch = [item]
                while len(batch) < BATCH_MAX:
                    try:
                        nxt = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if type(nxt) is not tuple:
                        self._ahead = nxt
                        break
                    batch.append(nxt)
                self._commit(batch)
            elif isinstance(item, _Call):
                self._serve(item)
            elif item is _STOP:
                self._drain_after_stop()
                return
            self._recovered_from_crash()

    def _drain_after_stop(self) -> None:
        batch: list[tuple] = []
        while True:
            try:
                it = self._q.get_nowait()
            except queue.Empty:
                break
            if type(it) is tuple:
                batch.append(it)
            elif isinstance(it, _Call):
                if batch:
                    self._commit(batch)
                    batch = []
                self._serve(it)
        if batch:
            self._commit(batch)

    def _recovered_from_crash(self) -> None:
        if self.crash_error is not None:
            self.crash_error = None
            self.log.info("outbox writer running again after a crash")
            self._on_state()

    def _open(self) -> None:
        now = time.monotonic()
        if now < self._reopen_at:
            return
        try:
            ob, moved, reason = open_recovering(
                self.path,
                lambda: Outbox(
                    self.path, self.max_bytes, self.synchronous, busy_timeout_s=BUSY_TIMEOUT_S
                ),
                what="outbox",
                component="publish",
                metrics=self.metrics,
                logger=self.log,
            )
        except Exception as exc:  # any failure to open degrades, never raises
            self.open_error = str(exc) if isinstance(exc, OutboxError) else describe(exc)
            self.unavailable = True
            self._reopen_at = now + self._reopen_delay
            self._reopen_delay = min(REOPEN_MAX_S, self._reopen_delay * 2)
            self._episodes.fail(
                "outbox unavailable",
                f"{self.open_error}; publishing is off (messages dropped and counted in "
                f'edgeloop_queue_dropped_total{{queue="outbox"}}), retrying',
                logging.ERROR,
            )
            self._on_state()
            return
        self._ob = ob
        self.epoch = ob.epoch
        self._reopen_delay = REOPEN_INITIAL_S
        self.open_error = None
        self.unavailable = False
        self._episodes.ok("outbox unavailable")
        if moved is not None:
            self.moved_aside = moved
        if ob.depth:
            self.log.info("outbox %s holds %d messages from before", self.path, ob.depth)
        self._gauges()
        self._on_open(ob, moved, reason)
        self._on_state()

    def _commit(self, batch: list[tuple], retried: bool = False) -> None:
        """One transaction for the batch; waits out another process's lock, drops on other
        failures (counted, seqs used up)."""
        self._hand = (batch, retried)
        while True:
            ob = self._ob
            if ob is None:
                self._lose(_count_topics(batch))
                break
            if self._skips:
                with self._lock:
                    skips, self._skips = self._skips, {}
                ob.skip(skips)
            try:
                dropped = ob.append(batch)
            except OutboxError as exc:
                if is_busy(exc) and not self._give_up_busy():
                    self._busy(exc)
                    continue
                self._write_failed(ob, exc, batch)
                break
            self._committed(dropped)
            break
        self._hand = None

    def _give_up_busy(self) -> bool:
        busy = self._busy_since
        return (
            self._stopping.is_set() and busy is not None and time.monotonic() - busy > STOP_BUSY_S
        )

    def _busy(self, exc: BaseException) -> None:
        if self._busy_since is None:
            self._busy_since = time.monotonic()
            self._on_state()
        self._episodes.fail(
            "outbox locked",
            f"another process holds the outbox write lock ({exc}); messages wait in memory "
            f"(up to publish.outbox.queue_max = {self.queue_max})",
        )
        time.sleep(BUSY_RETRY_S)

    def _not_busy(self) -> None:
        if self._busy_since is not None:
            self._busy_since = None
            self._episodes.ok("outbox locked")
            self._on_state()

    def _committed(self, dropped: int) -> None:
        self._not_busy()
        if self.write_error is not None:
            self.write_error = None
            self._episodes.ok("outbox writes failing")
            self._on_state()
        if dropped:
            self.budget_dropped += dropped
            self.metrics.inc(OUTBOX_DROPPED_TOTAL, dropped)
            self._budget_dropping = True
            for _ in range(dropped):  # one failure per message: the episode's end counts them
                self._episodes.fail(
                    "outbox: oldest messages dropped, budget full",
                    f"the budget publish.outbox.max_mb = {self.max_bytes / 2**20:g} MB is "
                    f"full (uplink down?): {dropped} oldest messages dropped to make room, "
                    f"{self.budget_dropped} since start",
                )
        elif self._budget_dropping:
            self._budget_dropping = False
            self._episodes.ok("outbox: oldest messages dropped, budget full")
        self._gauges()
        self._on_commit()

    def _write_failed(self, ob: Outbox, exc: BaseException, batch: list[tuple]) -> None:
        self._not_busy()
        self._lose(_count_topics(batch))
        self.write_error = f"outbox writes failing: {exc}"
        self._episodes.fail(
            "outbox writes failing",
            f"{exc}; {len(batch)} messages dropped "
            f'(edgeloop_queue_dropped_total{{queue="outbox"}}), {self.lost} lost since start',
            logging.ERROR,
        )
        if is_corrupt(exc):  # the file went bad under us: reopen, which moves it aside
            with contextlib.suppress(sqlite3.Error):
                ob.close()
            self._ob = None
            self._reopen_at = 0.0
        self._on_state()

    def _serve(self, call: _Call) -> None:
        """Run a peek/ack/flush; a lock held elsewhere is waited out like a commit."""
        if call.done.cancelled():
            return
        while True:
            try:
                result = call.fn(self._ob)
            except (OutboxError, sqlite3.Error) as exc:
                if is_busy(exc) and not self._give_up_busy():
                    self._busy(exc)
                    continue
                err = exc if isinstance(exc, OutboxError) else OutboxError(f"outbox: {exc}")
                _resolve(call.done, exc=err)
                return
            except Exception as exc:  # a bug in fn: report it to the caller, not a crash here
                _resolve(call.done, exc=exc)
                return
            self._not_busy()
            _resolve(call.done, result)
            self._gauges()
            return

    def _gauges(self) -> None:
        ob = self._ob
        if ob is not None:
            self.metrics.set(OUTBOX_DEPTH, ob.depth)
            self.metrics.set(OUTBOX_BYTES, ob.bytes)


def _resolve(
    fut: concurrent.futures.Future, result: Any = None, exc: BaseException | None = None
) -> None:
    """Complete a caller's future unless it gave up (cancelled) meanwhile."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


def _count_topics(batch: Sequence[tuple]) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in batch:
        out[it[0]] = out.get(it[0], 0) + 1
    return out
