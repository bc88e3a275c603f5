"""SQLite history: one wide row per poll-group frame, written by a thread in batches.

Schema (chosen by measurement, see bench/store.py and docs/history.md): a frame of a group
of `n` tags is one row `(ts_ns, group_id, data)` where `data` is the group's slice packed as
little-endian `raw f8[n] | value f8[n] | score f8[n] | flags u2[n] | quality u1[n] |
reason u2[n]` (29 bytes per tag; rows of earlier releases, without the reason, still
read). `groups` maps `group_id` to the device, group name and ordered tag names, so the
database describes itself: export works without the YAML, and a config
change (tags added) starts a new group version instead of corrupting old rows.

The event loop only copies the slice into a bounded queue (`submit_frame` never touches
disk); a writer thread commits up to `batch_max_frames` frames or `batch_ms` worth per
transaction. WAL with synchronous=NORMAL survives kill -9 with every committed transaction
intact, so a crash loses at most the batch being collected.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import heapq
import json
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from agent.metrics import Metrics
from agent.names import (
    COMPONENT_UP,
    EVENT_STORAGE_RECOVERED,
    STORE_BYTES,
    STORE_DROPPED_TOTAL,
    STORE_QUEUE_DEPTH,
    STORE_RETENTION_DELETED_TOTAL,
    STORE_ROWS_TOTAL,
)
from agent.store.durable import (
    REOPEN_INITIAL_S,
    REOPEN_MAX_S,
    StorageCorrupt,
    check_file,
    describe,
    health_dict,
    is_corrupt,
    open_recovering,
    run_supervised,
)
from agent.store.settings import StoreConfig
from agent.telemetry.episodes import EpisodeLog
from drivers.base import reason_name

log = logging.getLogger("edgeloop.store")

SCHEMA_VERSION = 1
BYTES_PER_TAG = 29  # 3 x f8 + u2 flags + u1 quality + u2 reason
LEGACY_BYTES_PER_TAG = 27  # rows written before the reason was stored: read as reason 0
PAGE_SIZE = 16384

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS groups (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    name TEXT NOT NULL,
    tags TEXT NOT NULL,               -- JSON list of tag names, in slice order
    created_ns INTEGER NOT NULL,
    UNIQUE (device, name, tags)
);
CREATE TABLE IF NOT EXISTS frames (
    ts_ns INTEGER NOT NULL,
    group_id INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS frames_group_ts ON frames (group_id, ts_ns);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts_ns);
CREATE TABLE IF NOT EXISTS control (
    id INTEGER PRIMARY KEY,
    ts_ns INTEGER NOT NULL,
    loop TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS control_ts ON control (ts_ns);
"""


class StoreError(Exception):
    """Root of the store layer: a database that cannot be opened, read or written."""


# --- encoding of one frame ---------------------------------------------------------------


def pack_frame(
    raw: np.ndarray,
    value: np.ndarray,
    score: np.ndarray,
    flags: np.ndarray,
    quality: np.ndarray,
    reason: np.ndarray | None = None,
) -> bytes:
    """Pack one group slice into the row blob (copies, so the table may change afterwards)."""
    why = np.zeros(len(raw), "<u2") if reason is None else reason.astype("<u2", copy=False)
    return b"".join(
        (
            raw.astype("<f8", copy=False).tobytes(),
            value.astype("<f8", copy=False).tobytes(),
            score.astype("<f8", copy=False).tobytes(),
            flags.astype("<u2", copy=False).tobytes(),
            quality.astype("u1", copy=False).tobytes(),
            why.tobytes(),
        )
    )


@dataclass(frozen=True, slots=True)
class Frames:
    """Decoded frames of one group version: arrays of shape (samples, tags)."""

    ts_ns: np.ndarray
    raw: np.ndarray
    value: np.ndarray
    score: np.ndarray
    flags: np.ndarray
    quality: np.ndarray
    reason: np.ndarray  # `drivers.base.Reason` codes, 0 where good (and in legacy rows)


def unpack_frames(ts_ns: Sequence[int], blobs: Sequence[bytes], n: int) -> Frames:
    """Decode many row blobs of an `n`-tag group in one numpy pass."""
    m = len(blobs)
    joined = b"".join(blobs)
    if len(joined) != m * n * BYTES_PER_TAG and all(
        len(b) in (n * BYTES_PER_TAG, n * LEGACY_BYTES_PER_TAG) for b in blobs
    ):  # a file that has rows from before the reason column: pad them with reason 0
        pad = bytes(2 * n)
        joined = b"".join(b if len(b) == n * BYTES_PER_TAG else b + pad for b in blobs)
    buf = np.frombuffer(joined, dtype=np.uint8)
    if buf.size != m * n * BYTES_PER_TAG:
        raise StoreError(f"frame blobs do not match a {n}-tag group ({buf.size} bytes, {m} rows)")
    rows = buf.reshape(m, n * BYTES_PER_TAG)
    o = 8 * n

    def col(a: int, b: int, dtype: str) -> np.ndarray:
        return np.ascontiguousarray(rows[:, a:b]).view(dtype).reshape(m, n)

    return Frames(
        ts_ns=np.asarray(ts_ns, dtype=np.int64),
        raw=col(0, o, "<f8"),
        value=col(o, 2 * o, "<f8"),
        score=col(2 * o, 3 * o, "<f8"),
        flags=col(3 * o, 3 * o + 2 * n, "<u2"),
        quality=col(3 * o + 2 * n, 3 * o + 3 * n, "u1"),
        reason=col(3 * o + 3 * n, 3 * o + 5 * n, "<u2"),
    )


# --- time arguments ------------------------------------------------------------------------


def to_ns(t: float | int | dt.datetime | str) -> int:
    """Epoch seconds (int/float), an aware/naive-UTC datetime, or an ISO 8601 / epoch string."""
    if isinstance(t, str):
        s = t.strip()
        try:
            return round(float(s) * 1e9)
        except ValueError:
            pass
        try:
            t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError as exc:
            raise StoreError(f"not a time (ISO 8601 or epoch seconds): {t!r}") from exc
    if isinstance(t, dt.datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.UTC)
        return round(t.timestamp() * 1e6) * 1000
    return round(float(t) * 1e9)


def iso(ts_ns: int) -> str:
    """UTC ISO 8601 with microseconds, the form export writes."""
    d = dt.datetime.fromtimestamp(ts_ns / 1e9, tz=dt.UTC)
    return d.isoformat(timespec="microseconds").replace("+00:00", "Z")


# --- connection helpers ----------------------------------------------------------------------


class HistoryCorrupt(StoreError, StorageCorrupt):
    """The history file is not a usable SQLite database (it is moved aside at open)."""


def _connect(path: str, synchronous: str = "normal", check: bool = True) -> sqlite3.Connection:
    """Open (or create) the history database; HistoryCorrupt if the file is damaged.

    `check` runs `PRAGMA quick_check` first (a corrupt file found now is moved aside by the
    store instead of failing some later write).
    """
    parent = os.path.dirname(os.path.abspath(path))
    con = None
    try:
        os.makedirs(parent, exist_ok=True)
        if check:
            problem = check_file(path)
            if problem is not None:
                raise HistoryCorrupt(f"not a usable SQLite database: {problem}")
        con = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        # page size and auto_vacuum take effect only before the first table exists. Frame rows
        # are 29 B per tag (2.9 kB for 100 tags): 16 kB pages hold several, 4 kB pages one.
        con.execute(f"PRAGMA page_size={PAGE_SIZE}")
        con.execute("PRAGMA auto_vacuum=INCREMENTAL")
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"{path}: cannot switch to WAL (journal_mode={mode})")
        con.execute(f"PRAGMA synchronous={synchronous.upper()}")
        con.executescript(_SCHEMA)
        con.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
    except (sqlite3.Error, OSError, StoreError) as exc:
        if con is not None:
            con.close()
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"cannot open history database {path}: {exc}") from exc
    return con


def db_bytes(path: str) -> int:
    """Bytes on disk of the database and its WAL."""
    total = 0
    for p in (path, path + "-wal"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(p)
    return total


# --- the reader (export, report) -------------------------------------------------------------


class HistoryReader:
    """Read side of the history database; safe to use while a writer is running (WAL)."""

    def __init__(self, path: str) -> None:
        if not os.path.exists(path):
            raise StoreError(f"no history database at {path}")
        try:
            self._con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open history database {path}: {exc}") from exc
        self.path = path

    def close(self) -> None:
        self._con.close()

    def groups(self) -> list[tuple[int, str, str, list[str]]]:
        """(group_id, device, group, tag names) for every group version ever written."""
        rows = self._con.execute("SELECT id, device, name, tags FROM groups ORDER BY id")
        return [(i, d, n, json.loads(t)) for i, d, n, t in rows]

    def frames(self, group_id: int, n: int, t_from_ns: int, t_to_ns: int) -> Frames:
        rows = self._con.execute(
            "SELECT ts_ns, data FROM frames WHERE group_id=? AND ts_ns>=? AND ts_ns<? "
            "ORDER BY ts_ns",
            (group_id, t_from_ns, t_to_ns),
        ).fetchall()
        return unpack_frames([r[0] for r in rows], [r[1] for r in rows], n)

    def read_series(
        self, tags: Iterable[str], t_from: Any, t_to: Any
    ) -> dict[str, tuple[np.ndarray, ...]]:
        """Per tag `(ts_ns, raw, value, quality, flags, score)` arrays in [t_from, t_to).

        Times are epoch seconds, datetimes or ISO strings. Tags never written are absent.
        """
        want = set(tags)
        a, b = to_ns(t_from), to_ns(t_to)
        parts: dict[str, list[tuple[np.ndarray, ...]]] = {}
        for gid, _dev, _name, names in self.groups():
            cols = [(i, t) for i, t in enumerate(names) if t in want]
            if not cols:
                continue
            f = self.frames(gid, len(names), a, b)
            for i, t in cols:
                parts.setdefault(t, []).append(
                    (
                        f.ts_ns,
                        f.raw[:, i],
                        f.value[:, i],
                        f.quality[:, i],
                        f.flags[:, i],
                        f.score[:, i],
                    )
                )
        out: dict[str, tuple[np.ndarray, ...]] = {}
        for t, chunks in parts.items():
            cat = [np.concatenate([c[k] for c in chunks]) for k in range(6)]
            order = np.argsort(cat[0], kind="stable")
            out[t] = tuple(np.ascontiguousarray(c[order]) for c in cat)
        return out

    def read_events(
        self, t_from: Any, t_to: Any, kinds: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """Events in [t_from, t_to), oldest first: {ts_ns, kind, source, payload}."""
        rows = self._con.execute(
            "SELECT ts_ns, kind, source, payload FROM events WHERE ts_ns>=? AND ts_ns<? "
            "ORDER BY ts_ns, id",
            (to_ns(t_from), to_ns(t_to)),
        )
        ks = set(kinds) if kinds is not None else None
        return [
            {"ts_ns": ts, "kind": k, "source": s, "payload": json.loads(p)}
            for ts, k, s, p in rows
            if ks is None or k in ks
        ]

    def read_control(self, t_from: Any, t_to: Any, loop: str | None = None) -> list[dict]:
        """Control actions and mode changes in [t_from, t_to): {ts_ns, loop, payload}."""
        rows = self._con.execute(
            "SELECT ts_ns, loop, payload FROM control WHERE ts_ns>=? AND ts_ns<? "
            "ORDER BY ts_ns, id",
            (to_ns(t_from), to_ns(t_to)),
        )
        return [
            {"ts_ns": ts, "loop": lp, "payload": json.loads(p)}
            for ts, lp, p in rows
            if loop is None or lp == loop
        ]

    def export_csv(
        self,
        out: TextIO,
        t_from: Any,
        t_to: Any,
        tags: Sequence[str] | None = None,
        filtered: bool = False,
    ) -> int:
        """Write a wide CSV, one row per frame (timestamp x group); returns the row count.

        Columns: `time` (ISO 8601 UTC), `epoch_s`, `device`, `group`, then per tag
        `<tag>` (raw, or the kernel-filtered value with `filtered`), `<tag>:quality`,
        `<tag>:flags`, `<tag>:reason` (why it is not good, empty when good). Cells of tags
        outside the row's group are empty; NaN is empty.
        """
        a, b = to_ns(t_from), to_ns(t_to)
        want = list(dict.fromkeys(tags)) if tags else None
        groups = self.groups()
        if want is None:
            ordered = list(dict.fromkeys(t for g in groups for t in g[3]))
        else:
            known = {t for g in groups for t in g[3]}
            missing = [t for t in want if t not in known]
            if missing:
                raise StoreError(f"tags not in history: {', '.join(missing)}")
            ordered = want
        pos = {t: i for i, t in enumerate(ordered)}
        width = 4 + 4 * len(ordered)

        def group_rows(gid: int, dev: str, name: str, names: list[str]) -> Iterator[tuple]:
            sel = [(i, pos[t]) for i, t in enumerate(names) if t in pos]
            for f in self.iter_frames(gid, len(names), a, b):
                vals = f.value if filtered else f.raw
                for r in range(len(f.ts_ns)):
                    ts = int(f.ts_ns[r])
                    row = [""] * width
                    row[0], row[1], row[2], row[3] = iso(ts), f"{ts / 1e9:.6f}", dev, name
                    for i, j in sel:
                        v = float(vals[r, i])
                        why = int(f.reason[r, i])
                        row[4 + 4 * j] = "" if math.isnan(v) else repr(v)
                        row[5 + 4 * j] = str(int(f.quality[r, i]))
                        row[6 + 4 * j] = str(int(f.flags[r, i]))
                        row[7 + 4 * j] = reason_name(why) if why else ""
                    yield ts, gid, row

        streams = [group_rows(*g) for g in groups if any(t in pos for t in g[3])]
        w = csv.writer(out, lineterminator="\n")
        header = ["time", "epoch_s", "device", "group"]
        for t in ordered:
            header += [t, f"{t}:quality", f"{t}:flags", f"{t}:reason"]
        w.writerow(header)
        n = 0
        # groups are merged by time chunk by chunk, so a long range streams in bounded memory
        for _ts, _gid, row in heapq.merge(*streams, key=lambda x: (x[0], x[1])):
            w.writerow(row)
            n += 1
        return n

    def iter_frames(
        self, group_id: int, n: int, t_from_ns: int, t_to_ns: int, chunk_rows: int = 2000
    ) -> Iterator[Frames]:
        """`frames` in chunks of at most `chunk_rows`, in (ts, arrival) order."""
        ts, rowid = t_from_ns, -1
        while True:
            rows = self._con.execute(
                "SELECT ts_ns, rowid, data FROM frames WHERE group_id=? AND ts_ns<? "
                "AND (ts_ns>? OR (ts_ns=? AND rowid>?)) ORDER BY ts_ns, rowid LIMIT ?",
                (group_id, t_to_ns, ts, ts, rowid, chunk_rows),
            ).fetchall()
            if not rows:
                return
            yield unpack_frames([r[0] for r in rows], [r[2] for r in rows], n)
            ts, rowid = rows[-1][0], rows[-1][1]
            if len(rows) < chunk_rows:
                return


def open_reader(path: str) -> HistoryReader:
    """A reader on the history database at `path` (read-only connection)."""
    return HistoryReader(path)


# --- the writer -------------------------------------------------------------------------------

_STOP = object()
_INT64_MIN = -(2**63)
_NS_PER_DAY = 86_400 * 10**9


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


def retention_cutoff_ns(now_ns: int, retention_days: float) -> int:
    """Oldest ts_ns kept; never overflows SQLite's int64, whatever the setting says.

    A retention longer than the int64 range (or inf/NaN from a config that slipped past
    validation) keeps everything instead of killing the writer with an OverflowError.
    """
    age = retention_days * _NS_PER_DAY
    if not (0 <= age < 2**62):  # also False for NaN
        return _INT64_MIN
    return max(_INT64_MIN, now_ns - int(age))


def _size_limit_bytes(max_mb: float) -> int | None:
    """The size budget in bytes; None (no limit) for an absurd or non-finite value."""
    b = max_mb * 1024 * 1024
    return int(b) if 0 < b < 2**62 else None


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
                lambda: _connect(path, self.cfg.synchronous),
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

    def _used_bytes(self, con: sqlite3.Connection) -> int:
        page = con.execute("PRAGMA page_size").fetchone()[0]
        count = con.execute("PRAGMA page_count").fetchone()[0]
        free = con.execute("PRAGMA freelist_count").fetchone()[0]
        return (count - free) * page

    def run_retention(self, now_ns: int | None = None) -> dict[str, int]:
        """Delete by age, then oldest frames until under max_mb; writer thread only.

        Returns rows deleted per reason. Freed pages are returned to the file system with
        incremental vacuum so the file shrinks, and the WAL is checkpointed.
        """
        con = self._con
        assert con is not None
        now_ns = time.time_ns() if now_ns is None else now_ns
        cutoff = retention_cutoff_ns(now_ns, self.cfg.retention_days)
        deleted = {"age": 0, "size": 0}
        con.execute("BEGIN")
        try:
            for tbl in ("frames", "events", "control"):
                deleted["age"] += con.execute(
                    f"DELETE FROM {tbl} WHERE ts_ns < ?", (cutoff,)
                ).rowcount
            con.execute("COMMIT")
        finally:
            if con.in_transaction:
                con.execute("ROLLBACK")
        limit = _size_limit_bytes(self.cfg.max_mb)
        # Frames dominate the size; delete the oldest (rowid = arrival order) in 5% steps.
        for _ in range(100 if limit is not None else 0):
            if self._used_bytes(con) <= limit:  # type: ignore[operator]
                break
            lo, hi = con.execute("SELECT min(rowid), max(rowid) FROM frames").fetchone()
            if lo is None:
                break
            step = max(1, (hi - lo + 1) // 20)
            deleted["size"] += con.execute(
                "DELETE FROM frames WHERE rowid < ?", (lo + step,)
            ).rowcount
        if deleted["age"] or deleted["size"]:
            # executescript steps to completion; execute() would free a single page
            con.executescript("PRAGMA incremental_vacuum;")
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            for reason, n in deleted.items():
                if n:
                    self.metrics.inc(STORE_RETENTION_DELETED_TOTAL, n, reason=reason)
        self._update_gauges()
        return deleted
