"""Retention of the history: delete by age, then the oldest frames until under the budget.

Runs in the writer thread on its connection (agent/store/writer.py).
"""

from __future__ import annotations

import sqlite3

from agent.metrics import Metrics
from agent.names import STORE_RETENTION_DELETED_TOTAL
from agent.store.settings import StoreConfig

_INT64_MIN = -(2**63)
_NS_PER_DAY = 86_400 * 10**9


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


def used_bytes(con: sqlite3.Connection) -> int:
    """Bytes of the pages in use (the free list does not count against the budget)."""
    page = con.execute("PRAGMA page_size").fetchone()[0]
    count = con.execute("PRAGMA page_count").fetchone()[0]
    free = con.execute("PRAGMA freelist_count").fetchone()[0]
    return (count - free) * page


def run_retention(
    con: sqlite3.Connection, cfg: StoreConfig, metrics: Metrics, now_ns: int
) -> dict[str, int]:
    """Delete by age, then oldest frames until under max_mb; on the writer's connection.

    Returns rows deleted per reason. Freed pages are returned to the file system with
    incremental vacuum so the file shrinks, and the WAL is checkpointed.
    """
    cutoff = retention_cutoff_ns(now_ns, cfg.retention_days)
    deleted = {"age": 0, "size": 0}
    con.execute("BEGIN")
    try:
        for tbl in ("frames", "events", "control"):
            deleted["age"] += con.execute(f"DELETE FROM {tbl} WHERE ts_ns < ?", (cutoff,)).rowcount
        con.execute("COMMIT")
    finally:
        if con.in_transaction:
            con.execute("ROLLBACK")
    limit = _size_limit_bytes(cfg.max_mb)
    # Frames dominate the size; delete the oldest (rowid = arrival order) in 5% steps.
    for _ in range(100 if limit is not None else 0):
        if used_bytes(con) <= limit:  # type: ignore[operator]
            break
        lo, hi = con.execute("SELECT min(rowid), max(rowid) FROM frames").fetchone()
        if lo is None:
            break
        step = max(1, (hi - lo + 1) // 20)
        deleted["size"] += con.execute("DELETE FROM frames WHERE rowid < ?", (lo + step,)).rowcount
    if deleted["age"] or deleted["size"]:
        # executescript steps to completion; execute() would free a single page
        con.executescript("PRAGMA incremental_vacuum;")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for reason, n in deleted.items():
            if n:
                metrics.inc(STORE_RETENTION_DELETED_TOTAL, n, reason=reason)
    return deleted
