"""Sparkplug B encoder: known bytes, and a round trip through the minimal test decoder."""

from __future__ import annotations

import math
import struct

import pytest

from agent.publish import sparkplug as spb
from agent.publish.publisher import backoff_delay, topic_segment
from tests.fixtures.mqtt import decode_payload


def test_varint_known_bytes() -> None:
    assert spb.varint(0) == b"\x00"
    assert spb.varint(1) == b"\x01"
    assert spb.varint(300) == b"\xac\x02"  # the protobuf documentation's example
    assert spb.varint(-1) == b"\xff" * 9 + b"\x01"


def test_known_byte_sequence_of_a_small_payload() -> None:
    m = spb.metric(name="a", alias=1, datatype=spb.DOUBLE, value=1.0)
    got = spb.payload(5, [m], seq=2)
    want = (
        b"\x08\x05"  # timestamp = 5
        + b"\x12\x10"  # metrics, 16 bytes
        + b"\x0a\x01a"
        + b"\x10\x01"
        + b"\x20\x0a"
        + b"\x69"
        + struct.pack("<d", 1.0)
        + b"\x18\x02"  # seq = 2
    )
    assert got == want


def test_ddata_round_trip_with_quality_and_null() -> None:
    ms = spb.data_metrics([], [7, 8, 9], [1.5, math.nan, -2.0], [0, 3, 4], 1_700_000_000_123)
    body = spb.payload(1_700_000_000_123, ms) + spb.seq_field(42)
    p = decode_payload(body)
    assert p["seq"] == 42 and p["timestamp"] == 1_700_000_000_123
    a, b, c = p["metrics"]
    assert a == {"alias": 7, "timestamp": 1_700_000_000_123, "double_value": 1.5}
    assert b["alias"] == 8 and b["is_null"] == 1 and "double_value" not in b
    assert b["properties"] == {"Quality": 0}
    assert c["double_value"] == -2.0 and c["properties"] == {"Quality": 64}
    assert "datatype" not in a  # DDATA relies on the birth for the datatype


def test_birth_metrics_carry_name_and_datatype() -> None:
    ms = spb.data_metrics(["fast/t"], [3], [20.5], [0], 10, with_names=True)
    bd = spb.metric(name="bdSeq", datatype=spb.INT64, value=7)
    reb = spb.metric(name="Node Control/Rebirth", datatype=spb.BOOLEAN, value=False)
    p = decode_payload(spb.payload(10, [bd, reb, *ms], seq=0))
    assert p["seq"] == 0
    assert p["metrics"][0] == {"name": "bdSeq", "datatype": spb.INT64, "long_value": 7}
    assert p["metrics"][1]["boolean_value"] == 0
    assert p["metrics"][2] == {
        "name": "fast/t",
        "alias": 3,
        "timestamp": 10,
        "datatype": spb.DOUBLE,
        "double_value": 20.5,
    }


def test_appended_seq_overrides_nothing_else() -> None:
    base = spb.payload(1, [])
    assert decode_payload(base + spb.seq_field(255)) == {"metrics": [], "timestamp": 1, "seq": 255}


def test_uncovered_datatype_is_refused() -> None:
    with pytest.raises(ValueError, match="not covered"):
        spb.metric(name="x", datatype=17, value=1)


def test_backoff_is_capped_exponential_with_jitter() -> None:
    lo = [backoff_delay(a, 0.5, 30.0, rand=lambda: 0.0) for a in range(10)]
    hi = [backoff_delay(a, 0.5, 30.0, rand=lambda: 1.0) for a in range(10)]
    assert hi[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert hi[9] == 30.0 and lo[9] == 15.0
    assert all(a * 2 == b for a, b in zip(lo, hi, strict=True))
    assert backoff_delay(10_000, 0.5, 30.0) <= 30.0  # no overflow on long outages


def test_topic_segment() -> None:
    assert topic_segment("a/b+c#d") == "a_b_c_d"
    assert topic_segment("") == "_"


def test_rebirth_request_is_recognised_and_garbage_ignored() -> None:
    ask = spb.payload(5, [spb.metric(name=spb.REBIRTH, datatype=spb.BOOLEAN, value=True)])
    no = spb.payload(5, [spb.metric(name=spb.REBIRTH, datatype=spb.BOOLEAN, value=False)])
    other = spb.payload(
        5, [spb.metric(name="Node Control/Reboot", datatype=spb.BOOLEAN, value=True)]
    )
    assert spb.rebirth_requested(ask)
    assert not spb.rebirth_requested(no)
    assert not spb.rebirth_requested(other)
    assert not spb.rebirth_requested(b"\xff\xff\xff")  # truncated varint
    assert not spb.rebirth_requested(b"\x12\x50abc")  # length past the end
    assert not spb.rebirth_requested(b"")


def test_historical_flag_on_both_paths() -> None:
    ms = spb.data_metrics([], [1, 2], [1.0, 2.0], [0, 3], 7, historical=True)
    a, b = decode_payload(spb.payload(7, ms))["metrics"]
    assert a["is_historical"] == 1 and b["is_historical"] == 1
    live = decode_payload(spb.payload(7, spb.data_metrics([], [1], [1.0], [0], 7)))["metrics"][0]
    assert "is_historical" not in live
