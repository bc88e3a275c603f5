"""The durable outbox: an SQLite queue of MQTT messages, committed before they are sent.

A row is `(id, topic, seq, spb, payload, size)`. `id` is the commit order (order per topic
follows it; topics share each send window fairly, see `peek`); `seq` is the per-topic
sequence number, persisted in `topic_seq` across restarts so a consumer sees gaps (dropped
by the budget) and duplicates (re-sent after a lost PUBACK). A row is deleted only after its
PUBACK. When the queued bytes exceed the budget, the oldest rows are deleted and counted: a
long outage keeps the newest data. `epoch` is a random id created with the file and kept in
it: a new file (after corruption or deletion) restarts every seq at 1 under a new epoch, so
a consumer can tell a new outbox from duplicates.

All operations are short transactions on one connection (WAL, synchronous=NORMAL by
default: no fsync per commit, a kill -9 of the agent loses nothing committed). In the agent
that connection belongs to one thread, `OutboxWriter` (agent/publish/outbox_writer.py): the
event loop hands messages over and never waits for SQLite (another process holding the write
lock, a slow disk).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.store.durable import (
    StorageCorrupt,
    check_file,
)

ROW_OVERHEAD = 48  # bytes counted per row on top of topic + payload (ids, seq, index entry)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    seq INTEGER NOT NULL,
    spb INTEGER NOT NULL DEFAULT 0,     -- 1: Sparkplug payload, append the session seq on send
    payload BLOB NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_topic_id ON outbox (topic, id);
CREATE TABLE IF NOT EXISTS topic_seq (topic TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def rollback(con: sqlite3.Connection) -> None:
    """Roll back an open transaction, whatever state the connection is in."""
    with contextlib.suppress(sqlite3.Error):
        if con.in_transaction:
            con.execute("ROLLBACK")


class OutboxError(Exception):
    """The outbox database cannot be opened or written."""


class OutboxCorrupt(OutboxError, StorageCorrupt):
    """The outbox file is not a usable SQLite database (moved aside by OutboxWriter)."""


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    topic: str
    seq: int
    spb: bool
    payload: bytes


class Outbox:
    """Durable FIFO of messages with per-topic sequence numbers and a byte budget."""

    def __init__(
        self,
        path: str,
        max_bytes: int,
        synchronous: str = "normal",
        *,
        check: bool = True,
        busy_timeout_s: float = 5.0,
    ) -> None:
        """Open or create the outbox; OutboxCorrupt when the file is damaged (`check` runs
        `PRAGMA quick_check` first), OutboxError when it cannot be opened or created."""
        self.path = path
        self.max_bytes = int(max_bytes)
        con = None
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            if check:
                problem = check_file(path)
                if problem is not None:
                    raise OutboxCorrupt(f"not a usable SQLite database: {problem}")
            con = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
            )
            con.execute("PRAGMA auto_vacuum=INCREMENTAL")
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(f"PRAGMA synchronous={synchronous.upper()}")
            con.executescript(_SCHEMA)
            epoch = con.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
            if epoch is None:  # a new file (or one from before epochs): a new epoch
                con.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('epoch', ?)",
                    (secrets.token_hex(8),),
                )
                epoch = con.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
            self.epoch: str = epoch[0]
            self._seqs: dict[str, int] = dict(con.execute("SELECT topic, seq FROM topic_seq"))
            # topics that may have rows; peek drops the ones it finds empty
            self._active = {r[0] for r in con.execute("SELECT DISTINCT topic FROM outbox")}
            depth, nbytes = con.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM outbox"
            ).fetchone()
        except (sqlite3.Error, OSError) as exc:
            if con is not None:
                con.close()
            raise OutboxError(f"cannot open outbox {path}: {exc}") from exc
        except OutboxError:
            if con is not None:
                con.close()
            raise
        self._con = con
        self.depth = int(depth)
        self.bytes = int(nbytes)
        self.dropped = 0  # since open

    def close(self) -> None:
        self._con.close()

    def last_seq(self, topic: str) -> int:
        return self._seqs.get(topic, 0)

    def skip(self, counts: dict[str, int]) -> None:
        """Messages lost before they were committed still use up their seq numbers, so a
        consumer sees the loss as a gap (persisted with the topic's next commit)."""
        for topic, n in counts.items():
            self._seqs[topic] = self._seqs.get(topic, 0) + n

    def append(self, items: Sequence[tuple[str, Callable[[int], bytes], bool]]) -> int:
        """Commit messages [(topic, build, spb)]; `build(seq)` makes the payload.

        The payload is built once its per-topic seq is known (JSON carries it inside).
        One transaction for the whole list; returns rows dropped by the budget.
        """
        con = self._con
        rows = []
        seqs: dict[str, int] = {}
        added = 0
        for topic, build, spb in items:
            seq = seqs.get(topic, self._seqs.get(topic, 0)) + 1
            seqs[topic] = seq
            payload = build(seq)
            size = len(payload) + len(topic) + ROW_OVERHEAD
            rows.append((topic, seq, 1 if spb else 0, payload, size))
            added += size
        try:
            con.execute("BEGIN IMMEDIATE")
            # room is made among the older rows first: what this call commits is never dropped
            dropped, freed = self._enforce_budget(self.bytes + added)
            con.executemany(
                "INSERT INTO outbox(topic, seq, spb, payload, size) VALUES (?,?,?,?,?)", rows
            )
            con.executemany(
                "INSERT INTO topic_seq(topic, seq) VALUES (?, ?) "
                "ON CONFLICT(topic) DO UPDATE SET seq=excluded.seq",
                list(seqs.items()),
            )
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            rollback(con)
            raise OutboxError(f"outbox write failed: {exc}") from exc
        self._seqs.update(seqs)
        self._active.update(seqs)
        self.depth += len(rows) - dropped
        self.bytes += added - freed
        self.dropped += dropped
        return dropped

    def _enforce_budget(self, nbytes: int) -> tuple[int, int]:
        """Delete the oldest rows until `nbytes` fits; inside the caller's transaction."""
        excess = nbytes - self.max_bytes
        if excess <= 0:
            return 0, 0
        dropped = freed = 0
        last_id = None
        cur = self._con.execute("SELECT id, size FROM outbox ORDER BY id")
        for rid, size in cur:
            last_id = rid
            dropped += 1
            freed += size
            if freed >= excess:
                break
        cur.close()
        if last_id is not None:
            self._con.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))
        return dropped, freed

    def peek(self, limit: int) -> list[Row]:
        """Up to `limit` of the oldest messages, shared fairly between topics, in id order.

        Each topic contributes its oldest rows, taken round-robin (1st of every topic, then
        2nd, ...): a topic with a long backlog cannot hold back a topic without one (an event
        after an outage goes out in the first window), and order within a topic is kept.
        """
        con = self._con
        per_topic = []
        for topic in sorted(self._active):  # one (topic, id) index range each
            ids = [
                r[0]
                for r in con.execute(
                    "SELECT id FROM outbox WHERE topic=? ORDER BY id LIMIT ?", (topic, limit)
                )
            ]
            if ids:
                per_topic.append(ids)
            else:
                self._active.discard(topic)
        chosen: list[int] = []
        rank = 0
        while len(chosen) < limit and per_topic:
            per_topic = [ids for ids in per_topic if len(ids) > rank]
            for ids in per_topic:
                chosen.append(ids[rank])
                if len(chosen) == limit:
                    break
            rank += 1
        if not chosen:
            return []
        chosen.sort()
        marks = ",".join("?" * len(chosen))
        cur = con.execute(
            f"SELECT id, topic, seq, spb, payload FROM outbox WHERE id IN ({marks}) ORDER BY id",
            chosen,
        )
        return [Row(i, t, s, bool(b), p) for i, t, s, b, p in cur]

    def ack(self, ids: Sequence[int]) -> int:
        """Delete acknowledged rows by id (only ever after their PUBACK)."""
        if not ids:
            return 0
        con = self._con
        marks = ",".join("?" * len(ids))
        try:
            con.execute("BEGIN IMMEDIATE")
            n, size = con.execute(
                f"SELECT count(*), coalesce(sum(size), 0) FROM outbox WHERE id IN ({marks})",
                list(ids),
            ).fetchone()
            con.execute(f"DELETE FROM outbox WHERE id IN ({marks})", list(ids))
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            rollback(con)
            raise OutboxError(f"outbox delete failed: {exc}") from exc
        self.depth -= n
        self.bytes -= size
        if self.depth == 0:
            # give the pages of a drained backlog back to the file system
            with contextlib.suppress(sqlite3.Error):
                con.executescript("PRAGMA incremental_vacuum;")
        return int(n)

    def file_bytes(self) -> int:
        total = 0
        for p in (self.path, self.path + "-wal"):
            if os.path.exists(p):
                total += os.path.getsize(p)
        return total
