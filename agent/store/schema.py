"""The history database's layout and how it is opened: tables, pragmas, the root errors.

Frames are wide rows (one per poll-group frame, the slice packed by agent/store/codec.py);
`groups` maps `group_id` to the device, group name and ordered tag names, so the database
describes itself (docs/history.md).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3

from agent.store.durable import StorageCorrupt, check_file

SCHEMA_VERSION = 1
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


class HistoryCorrupt(StoreError, StorageCorrupt):
    """The history file is not a usable SQLite database (it is moved aside at open)."""


def connect(path: str, synchronous: str = "normal", check: bool = True) -> sqlite3.Connection:
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
