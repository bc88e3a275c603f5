"""Pure parts of the OPC UA driver: plans, status/value decoding, write encoding."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
from asyncua import ua

from drivers import opcua_codec as codec
from drivers.base import DriverError, GroupSpec, Point, Quality, reason_name


def _group(n: int = 5, mode: str = "poll", **options) -> GroupSpec:
    pts = tuple(
        Point(name=f"t{i}", index=i, dtype="float64", node=f"ns=2;s=Tag{i}", scale=2.0, offset=1.0)
        for i in range(n)
    )
    return GroupSpec("dev", "g", 500, mode, 0, n, pts, options)


def _dv(value, vtype=None, status=ua.StatusCodes.Good) -> ua.DataValue:
    variant = ua.Variant(value, vtype) if vtype is not None else ua.Variant(value)
    return ua.DataValue(variant, StatusCode=ua.StatusCode(status))


def test_plan_defaults_follow_the_yaml_contract():
    plan = codec.compile_plan("dev", _group(3, "subscribe"))
    assert plan.stale_after_s == 1.5  # 3 x interval_ms
    assert plan.sampling_interval_ms == 500.0 and plan.deadband_abs == 0.0
    assert plan.queue_size == 1000
    assert plan.node_ids[2] == ua.NodeId("Tag2", 2)
    assert plan.index[ua.NodeId("Tag1", 2)] == 1
    opts = {"stale_after_ms": 900, "sampling_interval_ms": 0, "deadband_abs": 0.5, "queue_size": 7}
    plan = codec.compile_plan("dev", _group(3, "subscribe", **opts))
    assert (plan.stale_after_s, plan.sampling_interval_ms) == (0.9, 0.0)  # 0 = fastest, kept
    assert (plan.deadband_abs, plan.queue_size) == (0.5, 7)


def test_bad_node_id_names_the_tag():
    pts = (Point(name="flow", index=0, dtype="float64", node="ns=x;s=Oops"),)
    with pytest.raises(DriverError, match="tag 'flow': bad OPC UA node id") as err:
        codec.compile_plan("skid", GroupSpec("skid", "g", 100, "poll", 0, 1, pts))
    assert err.value.device == "skid"


@pytest.mark.parametrize(
    ("n", "limit", "expected"),
    [(10, 3, [(0, 3), (3, 6), (6, 9), (9, 10)]), (4, 4, [(0, 4)]), (0, 3, []), (2, 0, [(0, 2)])],
)
def test_chunks(n, limit, expected):
    assert codec.chunks(n, limit) == expected


def test_describe_poll_and_subscribe():
    plan = codec.compile_plan("dev", _group(5))
    rows = codec.describe_plan(plan, 2)
    assert [(r.function, r.count, r.tags) for r in rows] == [
        ("OPC UA Read", 2, ("t0", "t1")),
        ("OPC UA Read", 2, ("t2", "t3")),
        ("OPC UA Read", 1, ("t4",)),
    ]
    assert "MaxNodesPerRead" in codec.describe_plan(plan, 0)[0].function
    sub = codec.compile_plan("dev", _group(5, "subscribe", deadband_abs=0.25))
    (row,) = codec.describe_plan(sub, 2)
    assert (
        row.function.startswith("OPC UA CreateMonitoredItems") and "deadband 0.25" in row.function
    )
    assert row.count == 5


@pytest.mark.parametrize(
    ("status", "quality"),
    [
        (ua.StatusCodes.Good, Quality.GOOD),
        (ua.StatusCodes.GoodClamped, Quality.GOOD),
        (ua.StatusCodes.UncertainLastUsableValue, Quality.UNCERTAIN),
        (ua.StatusCodes.UncertainSensorNotAccurate, Quality.UNCERTAIN),
        (ua.StatusCodes.BadSensorFailure, Quality.BAD),
        (ua.StatusCodes.BadNodeIdUnknown, Quality.BAD),
        (ua.StatusCodes.BadCommunicationError, Quality.BAD),
    ],
)
def test_status_severity_to_quality(status, quality):
    assert codec.status_quality(ua.StatusCode(status)) == quality


def test_status_name():
    assert codec.status_name(ua.StatusCodes.BadTypeMismatch) == "BadTypeMismatch"
    assert codec.status_name(ua.StatusCode(ua.StatusCodes.Good)) == "Good"


@pytest.mark.parametrize(
    ("dv", "is_text", "expected"),
    [
        (_dv(1.5, ua.VariantType.Float), False, (1.5, Quality.GOOD, None)),
        (_dv(-7, ua.VariantType.Int16), False, (-7.0, Quality.GOOD, None)),
        (_dv(2**40, ua.VariantType.UInt64), False, (float(2**40), Quality.GOOD, None)),
        (_dv(True, ua.VariantType.Boolean), False, (1.0, Quality.GOOD, None)),
        (_dv(3.0, ua.VariantType.Double, ua.StatusCodes.UncertainInitialValue), False,
         (3.0, Quality.UNCERTAIN, None)),
        (_dv("RUN", ua.VariantType.String), True, (math.nan, Quality.GOOD, "RUN")),
        (_dv("RUN", ua.VariantType.String), False, (math.nan, Quality.BAD, "RUN")),
        (_dv(ua.LocalizedText("Auto"), ua.VariantType.LocalizedText), True,
         (math.nan, Quality.GOOD, "Auto")),
        (_dv([1.0, 2.0], ua.VariantType.Double), False, (math.nan, Quality.BAD, None)),
        (_dv(datetime(2024, 1, 1, tzinfo=UTC), ua.VariantType.DateTime), False,
         (math.nan, Quality.BAD, None)),
    ],
)  # fmt: skip
def test_decode_value(dv, is_text, expected):
    value, q, text, why = codec.decode_value(dv, is_text)
    assert (q, text) == expected[1:]
    # a good value has no reason; a bad one always has one
    assert (why == 0) == (q == Quality.GOOD)
    assert value == expected[0] or (math.isnan(value) and math.isnan(expected[0]))


def test_bad_status_gives_nan_even_with_a_value():
    dv = ua.DataValue(ua.Variant(), StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure))
    value, q, _, why = codec.decode_value(dv, False)
    assert math.isnan(value) and q == Quality.BAD
    assert reason_name(why) == "opcua_BadSensorFailure"


def test_decode_into_and_engineering_apply_scale_offset_in_place():
    plan = codec.compile_plan("dev", _group(4))
    raw = np.full(4, np.nan)
    quality = np.zeros(4, dtype=np.uint8)
    texts = {3: "old"}
    why = np.zeros(4, dtype=np.uint16)
    codec.decode_into(plan, [_dv(1.0), _dv(2.0)], 0, raw, quality, texts, why)
    bad = _dv(None, None, ua.StatusCodes.BadNodeIdUnknown)
    codec.decode_into(plan, [_dv(3.0), bad], 2, raw, quality, texts, why)
    res = codec.engineering(plan, raw, quality, texts, why)
    assert [reason_name(r) for r in res.reason] == ["none"] * 3 + ["opcua_BadNodeIdUnknown"]
    assert res.values[:3].tolist() == [3.0, 5.0, 7.0]  # raw * 2 + 1
    assert math.isnan(res.values[3])
    assert res.quality.tolist() == [Quality.GOOD] * 3 + [Quality.BAD]
    assert res.texts == {}  # a stale text is removed when the value is no longer a string


def _pt(scale=1.0, offset=0.0) -> Point:
    return Point(name="sp", index=0, dtype="float64", node="ns=2;s=SP", scale=scale, offset=offset,
                 writable=True)  # fmt: skip


@pytest.mark.parametrize(
    ("vtype", "value", "expected"),
    [
        (ua.VariantType.Double, 12.25, 12.25),
        (ua.VariantType.Float, 12.5, 12.5),
        (ua.VariantType.Int16, 12.4, 12),
        (ua.VariantType.Int16, -12.6, -13),
        (ua.VariantType.UInt32, 4_000_000_000, 4_000_000_000),
        (ua.VariantType.Boolean, 1, True),
        (ua.VariantType.Boolean, False, False),
        (ua.VariantType.String, 5, "5"),
    ],
)
def test_encode_write_uses_the_node_type(vtype, value, expected):
    v = codec.encode_write(_pt(), value, vtype)
    assert v.VariantType == vtype and v.Value == expected and type(v.Value) is type(expected)


def test_encode_write_inverts_scale_and_offset():
    v = codec.encode_write(_pt(scale=0.1, offset=-5.0), 7.3, ua.VariantType.Int16)
    assert v.Value == 123  # (7.3 + 5) / 0.1


@pytest.mark.parametrize(
    ("vtype", "value", "match"),
    [
        (ua.VariantType.Int16, 40000, "outside the range of Int16"),
        (ua.VariantType.UInt16, -1, "outside the range of UInt16"),
        (ua.VariantType.Byte, 256, "outside the range of Byte"),
        (ua.VariantType.Boolean, 0.5, "not a boolean"),
        (ua.VariantType.Float, 1e39, "overflows Float"),
        (ua.VariantType.Double, math.inf, "not finite"),
        (ua.VariantType.Double, "abc", "string cannot be written"),
        (ua.VariantType.DateTime, 1.0, "cannot write to a node of type DateTime"),
    ],
)
def test_encode_write_refuses_what_does_not_fit(vtype, value, match):
    with pytest.raises(codec.EncodeError, match=match):
        codec.encode_write(_pt(), value, vtype)
