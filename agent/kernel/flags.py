"""Kernel flag bits (uint16), the contract with store, publish and control (docs/architecture.md).

A tag's `flags` word is rewritten by every kernel pass over it; `GROUP_ALARM` is OR-ed in by the
multivariate stage afterwards.  `describe(word)` renders a word for logs and the replay CSV docs.
"""

from __future__ import annotations

INVALID = 1  # NaN/inf or bad quality: the sample was not used
OUT_OF_RANGE = 2  # outside the tag's engineering min/max: not used
SPIKE = 4  # Hampel outlier: replaced by the window median
STUCK = 8  # no change over the stuck window on a tag that normally moves
DRIFT = 16  # CUSUM on the standardised residual crossed its decision interval
RATE_LIMITED = 32  # the input was clipped to the tag's rate-of-change limit
ANOMALOUS = 64  # per-tag alarm (after on/off hysteresis)
GROUP_ALARM = 128  # a multivariate group containing this tag is in alarm

NAMES: dict[int, str] = {
    INVALID: "invalid",
    OUT_OF_RANGE: "out_of_range",
    SPIKE: "spike",
    STUCK: "stuck",
    DRIFT: "drift",
    RATE_LIMITED: "rate_limited",
    ANOMALOUS: "anomalous",
    GROUP_ALARM: "group_alarm",
}


def describe(word: int) -> list[str]:
    """Names of the bits set in `word`, lowest bit first."""
    return [name for bit, name in NAMES.items() if word & bit]
