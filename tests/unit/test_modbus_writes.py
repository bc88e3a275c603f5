"""Write compilation (pure): validation before sending, function code choice, merging."""

from __future__ import annotations

import pytest

from drivers.base import Point, WriteRefused
from drivers.modbus_codec import bit_masks, encode_registers
from drivers.modbus_writes import compile_writes


def w(name: str, table: str, address: int, dtype: str = "uint16", **kw) -> Point:
    return Point(name, 0, dtype, table=table, address=address, writable=True, **kw)


def ops(*pairs):
    return [(o.unit_id, o.function_code, o.address, o.values) for o in compile_writes("d", pairs)]


def test_function_codes() -> None:
    assert ops((w("c", "coil", 3, "bool"), True)) == [(1, 5, 3, (1,))]
    assert ops((w("r", "holding", 3), 7)) == [(1, 6, 3, (7,))]
    assert ops((w("f", "holding", 3, "float32"), 1.0)) == [
        (1, 16, 3, tuple(encode_registers("float32", 1.0)))
    ]
    assert ops((w("b", "holding", 3, "bit", bit=5), 1)) == [(1, 22, 3, bit_masks(5, True))]
    assert ops((w("b", "holding", 3, "bit", bit=5, byte_order="little"), 0)) == [
        (1, 22, 3, bit_masks(5, False, "little"))
    ]


def test_contiguous_writes_merge_per_unit_and_table() -> None:
    got = ops(
        (w("c1", "coil", 1, "bool"), 1),
        (w("c0", "coil", 0, "bool"), 0),
        (w("c5", "coil", 5, "bool"), 1),
        (w("r0", "holding", 0), 10),
        (w("r1", "holding", 1), 11),
        (w("r1u2", "holding", 1, unit_id=2), 12),
    )
    assert got == [
        (1, 15, 0, (0, 1)),
        (1, 5, 5, (1,)),
        (1, 16, 0, (10, 11)),
        (2, 6, 1, (12,)),
    ]


def test_fc16_is_split_at_123_registers() -> None:
    pts = [(w(f"r{i}", "holding", i), i) for i in range(130)]
    assert [(fc, a, len(v)) for _, fc, a, v in ops(*pts)] == [(16, 0, 123), (16, 123, 7)]


def test_a_bit_never_merges_with_its_word() -> None:
    got = ops(
        (w("word", "holding", 0), 1),
        (w("flag", "holding", 1, "bit", bit=0), 1),
        (w("next", "holding", 2), 2),
    )
    assert [fc for _, fc, _, _ in got] == [6, 22, 6]


def test_overlapping_writes_are_refused() -> None:
    with pytest.raises(WriteRefused, match="overlap"):
        compile_writes("d", [(w("f", "holding", 0, "float32"), 1.0), (w("r", "holding", 1), 2)])


def test_refusal_carries_context() -> None:
    p = Point("ro", 0, "uint16", table="holding", address=42, unit_id=3)
    with pytest.raises(WriteRefused) as info:
        compile_writes("boiler", [(p, 1)])
    e = info.value
    assert (e.device, e.unit_id, e.address) == ("boiler", 3, 42)
    assert "device=boiler" in str(e)


def test_scaled_write_is_rounded_and_bounds_use_engineering_units() -> None:
    p = w("sp", "holding", 0, "int16", scale=0.1, min=0.0, max=100.0)
    assert ops((p, 55.37)) == [(1, 6, 0, (554,))]
    with pytest.raises(WriteRefused, match="above max"):
        compile_writes("d", [(p, 100.01)])
