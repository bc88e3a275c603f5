"""`bounds_refusal`: the one min/max check the acquirer, the write gate and the Modbus write
encoder share, so a value one of them refuses is refused by all in the same words."""

from __future__ import annotations

import math

import pytest

from drivers.config_common import bounds_refusal


@pytest.mark.parametrize(
    ("value", "lo", "hi", "expected"),
    [
        (50.0, 0.0, 100.0, None),
        (0.0, 0.0, 100.0, None),  # the bounds themselves are allowed
        (100.0, 0.0, 100.0, None),
        (-0.5, 0.0, 100.0, "-0.5 is outside 0..100 (below min)"),
        (100.5, 0.0, 100.0, "100.5 is outside 0..100 (above max)"),
        (1e9, None, None, None),
        (-5.0, 0.0, None, "-5 is outside 0.. (below min)"),
        (7.0, -math.inf, 5.0, "7 is outside ..5 (above max)"),  # the gate's open side
    ],
)
def test_bounds_refusal(value: float, lo: float | None, hi: float | None, expected: str) -> None:
    assert bounds_refusal(value, lo, hi) == expected
