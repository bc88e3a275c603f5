"""Log once per error episode, not once per failed poll.

A device that is down for an hour produces two log lines (down, back up) and a counter,
not 18,000 lines at 5 Hz.  Keys are whatever identifies the episode (device, loop, ...).
"""

from __future__ import annotations

import logging
import time


class EpisodeLog:
    """Tracks which keys are in an error episode; logs the first failure and the recovery."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._open: dict[str, tuple[float, int, str]] = {}  # key -> (since, count, first msg)

    def fail(self, key: str, message: str, level: int = logging.WARNING) -> bool:
        """Record a failure; returns True (and logs) only when this starts a new episode."""
        if key in self._open:
            since, count, first = self._open[key]
            self._open[key] = (since, count + 1, first)
            return False
        self._open[key] = (time.monotonic(), 1, message)
        self._log.log(level, "%s: %s", key, message)
        return True

    def ok(self, key: str) -> bool:
        """Close an episode; returns True (and logs the duration and count) if one was open."""
        ep = self._open.pop(key, None)
        if ep is None:
            return False
        since, count, _ = ep
        self._log.info(
            "%s: recovered after %.1f s (%d failures in the episode)",
            key,
            time.monotonic() - since,
            count,
        )
        return True

    def active(self) -> dict[str, str]:
        return {k: v[2] for k, v in self._open.items()}
