"""Register codec of the simulated PLCs, byte for byte."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from hw_sim import codec, pointmap
from hw_sim.pointmap import SimPoint


def _p(type_: str, bo: str = "big", wo: str = "big", scale: float = 1.0, **kw) -> SimPoint:
    return SimPoint(
        name="x",
        protocol="modbus",
        table="input",
        address=0,
        unit_id=1,
        type=type_,
        byte_order=bo,
        word_order=wo,
        scale=scale,
        **kw,
    )


def test_float32_orders() -> None:
    # 1.0f = 0x3F800000
    assert codec.encode(_p("float32"), 1.0) == [0x3F80, 0x0000]
    assert codec.encode(_p("float32", wo="little"), 1.0) == [0x0000, 0x3F80]
    assert codec.encode(_p("float32", bo="little"), 1.0) == [0x803F, 0x0000]
    assert codec.encode(_p("float32", bo="little", wo="little"), 1.0) == [0x0000, 0x803F]


def test_integers_scale_and_invalid_marker() -> None:
    assert codec.encode(_p("int16", scale=0.1), -12.3) == [0xFF85]  # -123
    assert codec.encode(_p("uint32"), 70000) == [0x0001, 0x1170]
    assert codec.encode(_p("uint32", wo="little"), 70000) == [0x1170, 0x0001]
    assert codec.encode(_p("int16"), math.nan) == [0x8000]
    assert codec.encode(_p("uint16"), math.nan) == [0xFFFF]
    assert codec.encode(_p("int16"), 1e9) == [0x7FFF]  # clamped, not wrapped
    assert codec.encode(_p("float64"), 1.0) == [0x3FF0, 0, 0, 0]


def test_string_and_bit() -> None:
    p = pointmap.BY_NAME["device_model"]
    words = codec.encode(p, "AB")
    assert words[0] == 0x4142 and words[1:] == [0] * 7
    assert codec.decode(p, words) == "AB"
    bit = pointmap.BY_NAME["low_flow_alarm"]
    assert codec.decode(bit, [1 << bit.bit]) == 1.0
    assert codec.decode(bit, [0xFFFF ^ (1 << bit.bit)]) == 0.0


@given(
    st.sampled_from(["float32", "float64"]),
    st.sampled_from(["big", "little"]),
    st.sampled_from(["big", "little"]),
    st.floats(-1e6, 1e6, allow_nan=False, width=32),
)
def test_float_round_trip(type_: str, bo: str, wo: str, value: float) -> None:
    p = _p(type_, bo, wo)
    assert codec.decode(p, codec.encode(p, value)) == value


@given(st.integers(-32768, 32767), st.sampled_from(["big", "little"]))
def test_int16_round_trip(raw: int, bo: str) -> None:
    p = replace(_p("int16", bo=bo), scale=0.1)
    assert codec.decode(p, codec.encode(p, raw * 0.1)) == raw * 0.1
