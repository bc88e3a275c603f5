"""Reconnect delays: capped exponential backoff with equal jitter, for every link we retry.

Pure (no I/O): device links (agent/acquire.py) and the MQTT link (agent/publish/link.py)
use the same rule, so a fleet that lost the same peer does not knock again in lock-step.
"""

from __future__ import annotations

import random

_SHARED = random.Random()


def backoff_delay(
    attempt: int, initial_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Delay before reconnect `attempt` (0-based): capped exponential with equal jitter.

    The un-jittered delay doubles from `initial_s` up to `max_s` (the exponent is capped,
    so a long outage never overflows); the result is uniform in [delay/2, delay].
    """
    base = min(max_s, initial_s * (2.0 ** min(attempt, 62)))
    r = (rng if rng is not None else _SHARED).random()
    return base / 2 + r * base / 2
