"""Request planner: request counts, gap fill, per-device maxima, units/tables, bits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import Point
from drivers.modbus_plan import PlanError, PlanLimits, plan_points


def pt(i: int, address: int, dtype: str = "float32", table: str = "input", **kw) -> Point:
    return Point(name=f"t{i}", index=i, dtype=dtype, table=table, address=address, **kw)


def spans(plan) -> list[tuple[int, str, int, int]]:
    return [(r.unit_id, r.table, r.start, r.count) for r in plan.requests]


def test_1000_contiguous_float32_need_17_reads_of_124_registers() -> None:
    # 2000 registers / 125 would be 16 reads only if values could straddle two requests
    plan = plan_points([pt(i, 2 * i) for i in range(1000)])
    assert len(plan.requests) == 17
    assert [r.count for r in plan.requests] == [124] * 16 + [16]
    assert all(r.function == "FC04 read_input_registers" for r in plan.requests)
    covered = np.concatenate([r.points for r in plan.requests])
    assert sorted(covered.tolist()) == list(range(1000))  # each point in exactly one request


def test_1000_contiguous_uint16_fill_125_register_reads() -> None:
    plan = plan_points([pt(i, i, "uint16", "holding") for i in range(1000)])
    assert [r.count for r in plan.requests] == [125] * 8
    assert plan.requests[0].function == "FC03 read_holding_registers"


def test_gap_fill_merges_up_to_max_gap_and_splits_beyond() -> None:
    pts = [pt(0, 0, "uint16"), pt(1, 9, "uint16"), pt(2, 19, "uint16")]  # holes of 8 and 9
    plan = plan_points(pts, PlanLimits(max_gap_registers=8))
    assert spans(plan) == [(1, "input", 0, 10), (1, "input", 19, 1)]
    assert spans(plan_points(pts, PlanLimits(max_gap_registers=9))) == [(1, "input", 0, 20)]
    assert len(plan_points(pts, PlanLimits(max_gap_registers=0)).requests) == 3


def test_per_device_maximum() -> None:
    pts = [pt(i, 2 * i) for i in range(10)]  # 20 registers
    plan = plan_points(pts, PlanLimits(max_read_registers=6))
    assert [r.count for r in plan.requests] == [6, 6, 6, 2]
    with pytest.raises(PlanError, match="exceed"):
        plan_points([pt(0, 0, "float64")], PlanLimits(max_read_registers=3))


def test_a_point_never_straddles_two_requests() -> None:
    pts = [pt(i, 4 * i, "float64", "holding") for i in range(40)]  # 160 registers
    plan = plan_points(pts, PlanLimits(max_read_registers=125))
    for r in plan.requests:
        for pos in r.points:
            a = pts[pos].address
            assert r.start <= a and a + 4 <= r.start + r.count


def test_units_and_tables_are_planned_separately() -> None:
    pts = [
        pt(0, 0, "uint16", "holding", unit_id=1),
        pt(1, 1, "uint16", "holding", unit_id=2),
        pt(2, 1, "uint16", "input", unit_id=1),
        pt(3, 2, "uint16", "holding", unit_id=1),
        pt(4, 0, "bool", "coil", unit_id=1),
        pt(5, 0, "bool", "discrete", unit_id=1),
    ]
    plan = plan_points(pts)
    assert spans(plan) == [
        (1, "coil", 0, 1),
        (1, "discrete", 0, 1),
        (1, "holding", 0, 3),
        (1, "input", 1, 1),
        (2, "holding", 1, 1),
    ]
    assert [r.function_code for r in plan.requests] == [1, 2, 3, 4, 3]


def test_bits_2000_per_read_and_bit_gap() -> None:
    pts = [pt(i, i, "bool", "coil") for i in range(4500)]
    assert [r.count for r in plan_points(pts).requests] == [2000, 2000, 500]
    sparse = [
        pt(0, 0, "bool", "discrete"),
        pt(1, 33, "bool", "discrete"),
        pt(2, 100, "bool", "discrete"),
    ]
    assert spans(plan_points(sparse, PlanLimits(max_gap_bits=32))) == [
        (1, "discrete", 0, 34),
        (1, "discrete", 100, 1),
    ]
    assert len(plan_points(pts, PlanLimits(max_read_bits=100)).requests) == 45


def test_overlapping_points_share_a_request() -> None:
    # a status word read as uint16 and as two of its bits, and a float over the same registers
    pts = [
        pt(0, 10, "uint16", "holding"),
        pt(1, 10, "bit", "holding", bit=0),
        pt(2, 10, "bit", "holding", bit=15),
        pt(3, 10, "float32", "holding"),
    ]
    plan = plan_points(pts)
    assert spans(plan) == [(1, "holding", 10, 2)]


def test_strings_and_mixed_widths() -> None:
    pts = [
        pt(0, 0, "string", "holding", length_registers=10),
        pt(1, 10, "int64", "holding"),
        pt(2, 14, "int16", "holding"),
    ]
    plan = plan_points(pts)
    assert spans(plan) == [(1, "holding", 0, 15)]
    assert plan.n_registers == 15


def test_buffer_offsets_and_gather_indices_point_into_their_request() -> None:
    pts = [pt(0, 100, table="holding"), pt(1, 0, "uint16", "input"), pt(2, 50, "uint16", "input")]
    plan = plan_points(pts, PlanLimits(max_gap_registers=0))
    offsets = [(r.table, r.start, r.buffer_offset) for r in plan.requests]
    assert offsets == [("holding", 100, 0), ("input", 0, 2), ("input", 50, 3)]
    assert plan.n_registers == 4
    by_out = {
        int(o): g.tolist() for c in plan.classes for o, g in zip(c.out, c.gather, strict=True)
    }
    assert by_out == {0: [0, 1], 1: [2], 2: [3]}


@pytest.mark.parametrize(
    ("point", "msg"),
    [
        (pt(0, 0, "float32", "coil"), "holds only bool"),
        (pt(0, 65535, "float32"), "past address"),
        (pt(0, 0, "string", "holding"), "length_registers"),
        (pt(0, 0, "bit", "holding"), "bit 0..15"),
        (pt(0, 70000, "uint16"), "0..65535"),
        (pt(0, 0, "uint16", "memory"), "unknown table"),
    ],
)
def test_bad_points_are_plan_errors(point: Point, msg: str) -> None:
    with pytest.raises(PlanError, match=msg):
        plan_points([point])


def test_limits_are_validated() -> None:
    with pytest.raises(PlanError):
        PlanLimits(max_read_registers=126)
    with pytest.raises(PlanError):
        PlanLimits(max_read_bits=0)


_TYPES = ["bool", "uint16", "float32", "float64", "string", "bit"]


@settings(max_examples=150, deadline=None)
@given(
    spec=st.lists(
        st.tuples(
            st.sampled_from(["holding", "input", "coil"]),
            st.integers(0, 400),
            st.sampled_from(_TYPES),
            st.integers(1, 2),
        ),
        min_size=1,
        max_size=60,
    ),
    max_regs=st.integers(4, 125),
    max_gap=st.integers(0, 20),
)
def test_plan_invariants(spec, max_regs: int, max_gap: int) -> None:
    """Every point in exactly one request that contains it whole; limits and gaps kept."""
    pts = []
    for i, (table, address, dtype, unit) in enumerate(spec):
        if table == "coil":
            dtype = "bool"
        elif dtype == "bool":
            dtype = "uint16"
        kw = {"bit": 3} if dtype == "bit" else {}
        if dtype == "string":
            kw = {"length_registers": 3}
        pts.append(pt(i, address, dtype, table, unit_id=unit, **kw))
    limits = PlanLimits(
        max_read_registers=max_regs,
        max_gap_registers=max_gap,
        max_read_bits=max_regs * 8,
        max_gap_bits=max_gap,
    )
    plan = plan_points(pts, limits)
    seen: list[int] = []
    for r in plan.requests:
        cap = limits.max_read_bits if r.is_bits else limits.max_read_registers
        gap = limits.max_gap_bits if r.is_bits else limits.max_gap_registers
        assert 1 <= r.count <= cap
        spans = []
        for pos in r.points:
            p = pts[pos]
            assert (p.unit_id, p.table) == (r.unit_id, r.table)
            w = (
                1
                if p.table == "coil"
                else {"float32": 2, "float64": 4, "string": 3}.get(p.dtype, 1)
            )
            assert r.start <= p.address and p.address + w <= r.start + r.count
            spans.append((p.address, p.address + w))
            seen.append(int(pos))
        spans.sort()
        assert spans[0][0] == r.start and max(e for _, e in spans) == r.start + r.count
        end = spans[0][1]
        for a, e in spans[1:]:
            assert a - end <= gap  # never reads through a hole wider than allowed
            end = max(end, e)
    assert sorted(seen) == list(range(len(pts)))
