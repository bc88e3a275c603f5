"""Register codec: golden byte-for-byte cases, round-trip properties, vectorised decoding."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import Point
from drivers.modbus_codec import (
    NUMPY_CODE,
    ORDER_NAMES,
    Slot,
    bit_masks,
    compile_classes,
    decode_into,
    decode_value,
    encode_point,
    encode_registers,
    to_raw,
    words_to_raw,
)

GOLDEN = json.loads((Path(__file__).parents[1] / "cases/codec/golden.json").read_text())["cases"]
ORDERS = [("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")]


def _id(c: dict) -> str:
    return f"{c['type']}-{c['value']}-{ORDER_NAMES[(c['byte_order'], c['word_order'])]}"


@pytest.mark.parametrize("case", GOLDEN, ids=_id)
def test_golden_decode(case: dict) -> None:
    regs = [int(r, 16) for r in case["registers"]]
    got = decode_value(
        regs, case["type"], case["byte_order"], case["word_order"], case.get("bit", 0)
    )
    want = case["value"]
    if case["type"] == "float32":
        assert got == float(np.float32(want))
    else:
        assert got == want


@pytest.mark.parametrize("case", [c for c in GOLDEN if c["type"] != "bit"], ids=_id)
def test_golden_encode(case: dict) -> None:
    want = [int(r, 16) for r in case["registers"]]
    got = encode_registers(
        case["type"],
        case["value"],
        case["byte_order"],
        case["word_order"],
        case.get("length_registers"),
    )
    assert got == want


def test_float32_123_456_in_the_four_orders() -> None:
    # the textbook table, written out so a reader sees the convention without the JSON
    table = {
        "ABCD": [0x42F6, 0xE979],
        "CDAB": [0xE979, 0x42F6],
        "BADC": [0xF642, 0x79E9],
        "DCBA": [0x79E9, 0xF642],
    }
    for (bo, wo), name in ORDER_NAMES.items():
        assert encode_registers("float32", 123.456, bo, wo) == table[name]
        assert math.isclose(decode_value(table[name], "float32", bo, wo), 123.456, rel_tol=1e-7)


def test_bit_masks_follow_byte_order() -> None:
    assert bit_masks(3, True) == (0xFFF7, 0x0008)
    assert bit_masks(3, False) == (0xFFF7, 0)
    assert bit_masks(3, True, "little") == (0xF7FF, 0x0800)
    # applying the mask to a register and decoding gives the bit back
    for bo in ("big", "little"):
        for bit in range(16):
            and_m, or_m = bit_masks(bit, True, bo)
            reg = (0x0000 & and_m) | (or_m & ~and_m & 0xFFFF)
            assert decode_value([reg], "bit", bo, bit=bit) is True
            and_m, or_m = bit_masks(bit, False, bo)
            reg = (0xFFFF & and_m) | (or_m & ~and_m & 0xFFFF)
            assert decode_value([reg], "bit", bo, bit=bit) is False


_INT_BOUNDS = {"int16": 15, "int32": 31, "int64": 63}


def _raw_strategy(dtype: str) -> st.SearchStrategy:
    if dtype.startswith("uint"):
        return st.integers(0, 2 ** int(dtype[4:]) - 1)
    if dtype.startswith("int"):
        b = _INT_BOUNDS[dtype]
        return st.integers(-(2**b), 2**b - 1)
    if dtype == "float32":
        return st.floats(width=32, allow_nan=False)
    return st.floats(allow_nan=False)


@pytest.mark.parametrize("dtype", list(NUMPY_CODE))
@pytest.mark.parametrize(("bo", "wo"), ORDERS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip_every_type_and_order(dtype: str, bo: str, wo: str, data: st.DataObject) -> None:
    raw = data.draw(_raw_strategy(dtype))
    regs = encode_registers(dtype, raw, bo, wo)
    assert all(0 <= r <= 0xFFFF for r in regs)
    back = words_to_raw(np.array([regs]), dtype, bo, wo)[0]
    if dtype.startswith("float"):
        assert np.array(back).tobytes() == np.array(raw, dtype=back.dtype).tobytes()
    else:
        assert int(back) == raw


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=10),
    bo=st.sampled_from(["big", "little"]),
)
def test_string_round_trip(text: str, bo: str) -> None:
    text = text.rstrip("\x00 ")
    regs = encode_registers("string", text, bo, "big", 5)
    assert len(regs) == 5
    assert decode_value(regs, "string", bo) == text


def test_string_too_long_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode_registers("string", "ABCDE", length_registers=2)


@pytest.mark.parametrize(
    ("value", "dtype", "scale", "add", "want"),
    [
        (55.37, "int16", 0.1, 0.0, 554),
        (20.0, "uint16", 0.5, 10.0, 20),
        (-1.0, "int32", 1, 0, -1),
        (1, "bool", 1, 0, 1),
        (2.5, "float32", 1, 0, 2.5),
    ],
)
def test_to_raw_inverts_scale_and_offset(value, dtype, scale, add, want) -> None:
    assert to_raw(value, dtype, scale, add) == want


@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        (70000, "int16"),
        (-1, "uint16"),
        (2**32, "uint32"),
        (float("nan"), "float32"),
        (float("inf"), "float64"),
        (1e39, "float32"),
        (2, "bool"),
        (0.5, "bit"),
    ],
)
def test_to_raw_refuses_unrepresentable(value, dtype) -> None:
    with pytest.raises(ValueError):
        to_raw(value, dtype)


def _pt(i: int, dtype: str, address: int, **kw) -> Point:
    return Point(
        name=f"t{i}", index=i, dtype=dtype, table=kw.pop("table", "holding"), address=address, **kw
    )


def test_encode_point_applies_scale_and_orders() -> None:
    p = _pt(0, "int32", 0, scale=0.01, offset=-100.0, word_order="little")
    regs = encode_point(p, 12.34)  # raw = (12.34 + 100) / 0.01 = 11234 -> CDAB
    assert regs == [11234, 0]
    assert encode_point(_pt(1, "bool", 0, table="coil"), True) == [1]
    assert encode_point(_pt(2, "string", 0, length_registers=2), "AB") == [0x4142, 0]


def test_vectorised_decode_matches_scalar_decode_for_every_class() -> None:
    """One flat buffer with every type in every order, decoded by classes = scalar decode."""
    rng = np.random.default_rng(7)
    regs = rng.integers(0, 65536, size=400, dtype=np.uint16)
    bits = rng.integers(0, 2, size=40).astype(np.uint8)
    slots, want = [], {}
    pos = off = 0
    for dtype in [*NUMPY_CODE, "bit", "bool"]:
        for bo, wo in ORDERS:
            width = {"bit": 1, "bool": 1}.get(dtype) or int(NUMPY_CODE[dtype][1:]) // 2
            bit = pos % 16
            slots.append(Slot(pos, dtype, bo, wo, "reg", off, width, bit, 2.0, 1.0))
            v = decode_value(regs[off : off + width].tolist(), dtype, bo, wo, bit)
            want[pos] = float(v) * 2.0 + 1.0
            pos += 1
            off += width + 1
    slots.append(Slot(pos, "bool", "big", "big", "bit", 5, 1))
    want[pos] = float(bits[5])
    pos += 1
    slots.append(Slot(pos, "string", "little", "big", "reg", 300, 3))
    classes = compile_classes(slots)
    assert len(classes) < len(slots)  # the bit-table bool and orders of 1-register types merge
    values = np.full(pos + 1, -1.0)
    texts: dict[int, str] = {}
    decode_into(classes, regs, bits, values, texts)
    for i, w in want.items():
        assert values[i] == w or (math.isnan(w) and math.isnan(values[i])), i
    assert texts[pos] == decode_value(regs[300:303].tolist(), "string", "little")
    assert math.isnan(values[pos])


def test_one_numpy_gather_per_class_for_2000_floats() -> None:
    regs = np.zeros(4000, dtype=np.uint16)
    want = np.arange(2000, dtype=np.float32) * 0.5
    regs[:] = want.astype(">f4").view(">u2")
    slots = [Slot(i, "float32", "big", "big", "reg", 2 * i, 2) for i in range(2000)]
    classes = compile_classes(slots)
    assert len(classes) == 1 and classes[0].gather.shape == (2000, 2)
    values = np.empty(2000)
    decode_into(classes, regs, np.zeros(0, np.uint8), values)
    np.testing.assert_array_equal(values, want.astype(np.float64))


@settings(max_examples=200, deadline=None)
@given(
    dtype=st.sampled_from(["int16", "uint16", "int32", "uint32", "float32", "float64"]),
    orders=st.sampled_from(ORDERS),
    scale=st.sampled_from([1.0, 0.1, 0.01, 2.5, -0.5]),
    add=st.sampled_from([0.0, -40.0, 273.15]),
    frac=st.floats(0.0, 1.0),
)
def test_engineering_round_trip_through_encode_point_and_decode_into(
    dtype: str, orders: tuple[str, str], scale: float, add: float, frac: float
) -> None:
    """write(value) then read gives value back within half a raw step (exact for floats)."""
    bo, wo = orders
    lo, hi = {
        "int16": (-30000, 30000),
        "uint16": (0, 60000),
        "int32": (-(10**9), 10**9),
        "uint32": (0, 4 * 10**9),
        "float32": (-1e6, 1e6),
        "float64": (-1e12, 1e12),
    }[dtype]
    raw_span = lo + (hi - lo) * frac
    value = raw_span * scale + add
    p = Point(
        "t",
        0,
        dtype,
        table="holding",
        address=0,
        byte_order=bo,
        word_order=wo,
        scale=scale,
        offset=add,
    )
    regs = np.array(encode_point(p, value), dtype=np.uint16)
    width = len(regs)
    classes = compile_classes([Slot(0, dtype, bo, wo, "reg", 0, width, 0, scale, add)])
    out = np.empty(1)
    decode_into(classes, regs, np.zeros(0, np.uint8), out)
    if dtype == "float64":
        assert out[0] == pytest.approx(value, rel=1e-12, abs=1e-9)
    elif dtype == "float32":
        # float32 keeps 24 bits of the raw value: error <= |raw * scale| * 2**-24 (+ rounding)
        assert abs(out[0] - value) <= abs(raw_span * scale) * 2**-23 + 1e-9
    else:
        assert abs(out[0] - value) <= abs(scale) / 2 + 1e-9 * max(1.0, abs(value))
