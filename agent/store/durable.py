"""SQLite files that degrade instead of stopping the gateway; shared by history and outbox.

A storage failure must stop history or publishing, never acquisition and control
(docs/history.md, "When storage fails"). Three pieces make that so:

- `open_recovering` opens a database and, when the file is not a usable SQLite database
  (not a database, malformed, failing `PRAGMA quick_check`), moves it aside as
  `<name>.corrupt-<UTC yyyymmddThhmmssZ>` (with its -wal/-shm), logs it at ERROR, counts it
  in `edgeloop_storage_recovered_total{component}` and starts a fresh file. Anything else
  (full disk, read-only directory, permissions) is not corruption: the file is left alone
  and the caller goes to state "failed" and tries again later.
- `run_supervised` runs a writer thread's work loop and restarts it after a crash with
  capped backoff, logging the traceback and counting it (`edgeloop_component_crashes_total`,
  `edgeloop_component_restarts_total`), so a bug in a rarely used path cannot silently stop
  history or the outbox.
- `is_corrupt`, `is_busy` classify SQLite errors by their result code.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from agent.metrics import Metrics
from agent.names import (
    COMPONENT_CRASHES_TOTAL,
    COMPONENT_RESTARTS_TOTAL,
    COMPONENT_UP,
    STORAGE_RECOVERED_TOTAL,
)

T = TypeVar("T")

RESTART_INITIAL_S = 0.5  # first restart of a crashed writer
RESTART_MAX_S = 30.0  # cap of the restart backoff
RESTART_RESET_S = 60.0  # a work loop that ran this long before crashing starts over at 0.5 s
REOPEN_INITIAL_S = 1.0  # first retry to open a database that could not be opened
REOPEN_MAX_S = 30.0

_CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


class StorageCorrupt(Exception):
    """The file is not a usable SQLite database (mixed into StoreError / OutboxError)."""


def is_corrupt(exc: BaseException) -> bool:
    """True for SQLITE_CORRUPT / SQLITE_NOTADB (extended codes included) and StorageCorrupt."""
    while exc is not None:
        if isinstance(exc, StorageCorrupt):
            return True
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _CORRUPT_CODES:
            return True
        exc = exc.__cause__  # type: ignore[assignment]
    return False


def is_busy(exc: BaseException) -> bool:
    """True when another connection holds the lock (SQLITE_BUSY / SQLITE_LOCKED)."""
    while exc is not None:
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _BUSY_CODES:
            return True
        exc = exc.__cause__  # type: ignore[assignment]
    return False


def quick_check(con: sqlite3.Connection) -> str | None:
    """None when `PRAGMA quick_check` passes, else its first complaints."""
    rows = con.execute("PRAGMA quick_check(5)").fetchall()
    if rows == [("ok",)]:
        return None
    return "; ".join(str(r[0]) for r in rows)[:500]


def check_file(path: str) -> str | None:
    """Why the existing file at `path` is not a usable SQLite database, or None.

    Runs `PRAGMA quick_check` on a read-only connection, so a damaged file's -wal/-shm are
    left as they are for moving aside (a read-write connection deletes them on close). Reads
    every page once (seconds for a GB-sized file on slow flash), which is why callers run it
    in their writer thread, never on the event loop. A missing or empty file is a new
    database; errors that are not corruption (permissions, I/O) are left to the real open.
    """
    try:
        if os.path.getsize(path) == 0:
            return None
    except OSError:
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return None
    try:
        return quick_check(con)
    except sqlite3.Error as exc:
        return str(exc) if is_corrupt(exc) else None
    finally:
        con.close()


def move_aside(path: str, now: dt.datetime | None = None) -> str:
    """Rename `path` (and its -wal/-shm) to `path.corrupt-<UTC time>`; returns the new name.

    The -wal/-shm keep their suffix after the new name, so the moved file opens with its WAL
    for forensics. A second recovery in the same second gets a `.1`, `.2`, ... suffix.
    """
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    target = f"{path}.corrupt-{stamp}"
    n = 0
    while os.path.exists(target):
        n += 1
        target = f"{path}.corrupt-{stamp}.{n}"
    os.rename(path, target)
    for suffix in ("-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.rename(path + suffix, target + suffix)
    return target


def open_recovering(
    path: str,
    open_fn: Callable[[], T],
    *,
    what: str,
    component: str,
    metrics: Metrics,
    logger: logging.Logger,
) -> tuple[T, str | None, str | None]:
    """`open_fn()`; if the file is corrupt, move it aside and `open_fn()` a fresh one.

    Returns (opened, moved_to, reason): `moved_to` is the new name of a file moved aside
    (None if none was). Errors other than corruption, and any error opening the fresh
    file, propagate: the caller degrades to "failed" and retries later.
    """
    try:
        return open_fn(), None, None
    except Exception as exc:
        if not is_corrupt(exc) or not os.path.exists(path):
            raise
        reason = str(exc)
    moved = move_aside(path)
    logger.error(
        "%s %s is corrupt (%s): moved aside to %s, starting a fresh file",
        what,
        path,
        reason,
        moved,
    )
    metrics.inc(STORAGE_RECOVERED_TOTAL, component=component)
    return open_fn(), moved, reason


def run_supervised(
    work: Callable[[], None],
    *,
    what: str,
    component: str,
    metrics: Metrics,
    logger: logging.Logger,
    stopping: threading.Event,
    on_crash: Callable[[BaseException], None],
) -> None:
    """Call `work()` until it returns; after a crash log, count, back off, call it again.

    `on_crash` runs first (the owner keeps or drops the batch in hand and marks itself
    degraded). The backoff doubles from RESTART_INITIAL_S up to RESTART_MAX_S and starts
    over after a work loop that ran RESTART_RESET_S without crashing. A stop requested while
    backing off restarts at once (so the owner can flush); a crash after the stop was
    requested ends the thread.
    """
    delay = RESTART_INITIAL_S
    crashes = 0
    while True:
        started = time.monotonic()
        try:
            work()
            return
        except Exception as exc:  # whatever escapes is the crash we supervise
            crashes += 1
            if time.monotonic() - started >= RESTART_RESET_S:
                delay = RESTART_INITIAL_S
            metrics.inc(COMPONENT_CRASHES_TOTAL, component=component)
            metrics.set(COMPONENT_UP, 0, component=component)
            with contextlib.suppress(Exception):
                on_crash(exc)
            stopped = stopping.is_set()
            logger.error(
                "%s crashed (crash %d): %s: %s; %s",
                what,
                crashes,
                type(exc).__name__,
                exc,
                "stopping" if stopped else f"restarting in {delay:.1f} s",
                exc_info=exc,
            )
            if stopped:
                return
        stopping.wait(delay)
        delay = min(RESTART_MAX_S, delay * 2)
        metrics.inc(COMPONENT_RESTARTS_TOTAL, component=component)
        logger.info("%s restarted", what)


def describe(exc: BaseException) -> str:
    """A one-line reason for health() and logs."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def health_dict(
    *, state: str, error: str | None, crashes: int, path: str, **extra: Any
) -> dict[str, Any]:
    """The health() shape shared by HistoryStore and Publisher (the service shows it)."""
    return {"state": state, "error": error, "crashes": crashes, "path": path, **extra}
