"""Log once per error episode, not once per failed poll.

A device that is down for an hour produces two log lines (down, back up) and a counter,
not 18,000 lines at 5 Hz.  Keys are whatever identifies the episode (device, loop, ...).
With `remind_s` set, a long episode also logs a reminder at that interval ("still failing
after 3600 s, 18000 failures"), so the journal of the last hour shows it is still going on.
Thread-safe: the store's writer thread and the event loop may share one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Episode:
    since: float
    count: int
    first: str
    last: str
    reminded: float


class EpisodeLog:
    """Tracks which keys are in an error episode; logs the first failure and the recovery."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        remind_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._remind_s = remind_s
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[str, _Episode] = {}

    def fail(self, key: str, message: str, level: int = logging.WARNING) -> bool:
        """Record a failure; returns True (and logs) only when this starts a new episode."""
        now = self._clock()
        with self._lock:
            ep = self._open.get(key)
            if ep is None:
                self._open[key] = _Episode(now, 1, message, message, now)
                new, remind = True, None
            else:
                ep.count += 1
                ep.last = message
                new = False
                remind = None
                if self._remind_s is not None and now - ep.reminded >= self._remind_s:
                    ep.reminded = now
                    remind = (now - ep.since, ep.count)
        if new:
            self._log.log(level, "%s: %s", key, message)
        elif remind is not None:
            self._log.log(
                level,
                "%s: still failing after %.0f s (%d failures), last: %s",
                key,
                remind[0],
                remind[1],
                message,
            )
        return new

    def ok(self, key: str) -> bool:
        """Close an episode; returns True (and logs the duration and count) if one was open."""
        with self._lock:
            ep = self._open.pop(key, None)
        if ep is None:
            return False
        self._log.info(
            "%s: recovered after %.1f s (%d failures in the episode)",
            key,
            self._clock() - ep.since,
            ep.count,
        )
        return True

    def active(self) -> dict[str, str]:
        """Open episodes: key -> the message that started each."""
        with self._lock:
            return {k: v.first for k, v in self._open.items()}

    def failures(self, key: str) -> int:
        """Failures so far in the open episode of `key` (0 when none is open)."""
        with self._lock:
            ep = self._open.get(key)
            return ep.count if ep else 0
