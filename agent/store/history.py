"""SQLite history: one wide row per poll-group frame, written by a thread in batches.

Schema (chosen by measurement, see bench/store.py and docs/history.md): a frame of a group
of `n` tags is one row `(ts_ns, group_id, data)`, `data` the group's slice packed by
agent/store/codec.py. This module names the store's public parts, which live by job in:

- agent/store/schema.py: tables, pragmas, opening a database, the root errors;
- agent/store/codec.py: the row blob and time arguments;
- agent/store/reader.py: series, events, control actions, CSV export;
- agent/store/writer.py: `HistoryStore`, the queue and the writer thread;
- agent/store/retention.py: delete by age and size.
"""

from __future__ import annotations

from agent.store.codec import (
    BYTES_PER_TAG,
    LEGACY_BYTES_PER_TAG,
    Frames,
    iso,
    pack_frame,
    to_ns,
    unpack_frames,
)
from agent.store.reader import HistoryReader, open_reader
from agent.store.retention import retention_cutoff_ns
from agent.store.schema import (
    PAGE_SIZE,
    SCHEMA_VERSION,
    HistoryCorrupt,
    StoreError,
    connect,
    db_bytes,
)
from agent.store.writer import HistoryStore

__all__ = [
    "BYTES_PER_TAG",
    "LEGACY_BYTES_PER_TAG",
    "PAGE_SIZE",
    "SCHEMA_VERSION",
    "Frames",
    "HistoryCorrupt",
    "HistoryReader",
    "HistoryStore",
    "StoreError",
    "connect",
    "db_bytes",
    "iso",
    "open_reader",
    "pack_frame",
    "retention_cutoff_ns",
    "to_ns",
    "unpack_frames",
]
