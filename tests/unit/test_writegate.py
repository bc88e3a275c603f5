"""The write gate (issue 11 "a single write gate"): roles, bounds, a rate limit that holds
with the present value unknown, NaN never, and a write budget per tag."""

from __future__ import annotations

import math

import pytest

from agent.tags import TagTable
from agent.writegate import TagRule, WriteGate
from drivers.base import WriteRefused

S = 1_000_000_000


def _gate(**rule: object) -> tuple[WriteGate, TagTable]:
    table = TagTable.for_names(["out", "beat"])
    table.quality[:] = 1  # nothing read yet
    base = {"roles": frozenset({"output:l"}), "lo": 0.0, "hi": 100.0, "max_rate_per_s": 5.0}
    gate = WriteGate(table, {0: TagRule(**{**base, **rule})})  # type: ignore[arg-type]
    return gate, table


def test_role_is_enforced() -> None:
    gate, table = _gate()
    table.raw[0], table.quality[0], table.ts_ns[0] = 10.0, 0, 0
    with pytest.raises(WriteRefused, match="only as output:l, not as heartbeat:l"):
        gate.check(0, 11.0, "heartbeat:l", S)
    with pytest.raises(WriteRefused, match="not as operator"):
        gate.check(0, 11.0, None, S)
    gate.check(0, 11.0, "output:l", S)


def test_unknown_present_value_refuses_a_rate_limited_write() -> None:
    """Observed: 10 -> 100 % in one period with max_rate_per_s 5 when the read had failed."""
    gate, table = _gate()
    with pytest.raises(WriteRefused, match="present value unknown"):
        gate.check(0, 100.0, "output:l", S)
    # once read, the step is measured from the read value
    table.raw[0], table.quality[0], table.ts_ns[0] = 10.0, 0, S
    with pytest.raises(WriteRefused, match="faster than 5/s"):
        gate.check(0, 100.0, "output:l", 2 * S)
    gate.check(0, 12.0, "output:l", 2 * S)


def test_start_value_lets_a_write_only_register_ramp() -> None:
    gate, _ = _gate(start=20.0, step_cap_s=1.0, jitter_s=0.0)
    with pytest.raises(WriteRefused, match="faster"):
        gate.check(0, 30.0, "output:l", S)
    with pytest.raises(WriteRefused, match="faster"):  # credited one period: 2.5 at most
        gate.check(0, 24.0, "output:l", S)
    gate.check(0, 22.4, "output:l", S)
    gate.committed(0, 22.4, S)
    with pytest.raises(WriteRefused, match="faster"):  # from 22.4, 0.5 s later: 2.5 at most
        gate.check(0, 26.0, "output:l", S + S // 2)
    gate.check(0, 24.8, "output:l", S + S // 2)


def test_a_long_pause_does_not_bank_a_large_step() -> None:
    gate, table = _gate(step_cap_s=1.0, jitter_s=0.0)
    gate.committed(0, 50.0, 0)
    table.quality[0] = 1
    with pytest.raises(WriteRefused, match="faster"):
        gate.check(0, 90.0, "output:l", 600 * S)
    gate.check(0, 55.0, "output:l", 600 * S)


def test_bounds_and_nan() -> None:
    gate, _ = _gate(max_rate_per_s=math.inf)
    for bad, why in ((math.nan, "not finite"), (math.inf, "not finite"), (101.0, "outside")):
        with pytest.raises(WriteRefused, match=why):
            gate.check(0, bad, "output:l", S)


def test_write_budget() -> None:
    gate, _ = _gate(max_rate_per_s=math.inf, max_writes_per_s=4.0)
    for _ in range(4):
        gate.check(0, 1.0, "output:l", S)
    with pytest.raises(WriteRefused, match="budget"):
        gate.check(0, 1.0, "output:l", S)
    gate.check(0, 1.0, "output:l", S + S // 2)  # refilled at 4/s


def test_unowned_writable_tags_take_operator_writes_within_their_bounds() -> None:
    gate, _ = _gate()
    gate.check(1, 5.0, None, S)
    with pytest.raises(WriteRefused, match="only as operator"):
        gate.check(1, 5.0, "output:l", S)
