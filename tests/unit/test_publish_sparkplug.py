"""Sparkplug B payloads and edge-node state, read back with the independent test decoder
(tests/fixtures/sparkplug_host.py: message classes built from the specification's field
table, not from the project's proto or generated code)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from agent import acquire
from agent.backoff import backoff_delay
from agent.publish import sparkplug as spb
from agent.publish.payloads import Frame, topic_segment
from agent.publish.spb_node import BdSeqFile, SparkplugNode
from agent.tags import TagTable
from drivers.base import Point
from tests.fixtures.sparkplug_host import DATATYPES, decode, encode_command, properties, value_of

GOOD, BAD, COMM_LOST, UNCERTAIN = 0, 1, 3, 4


@dataclass
class Group:
    device: str
    name: str
    start: int
    stop: int
    points: tuple = ()


def _table() -> tuple[TagTable, list[Group]]:
    pts = [
        Point("temp", 0, "float32", unit="degC", min=0.0, max=120.0),
        Point("count", 1, "int16"),
        Point("big", 2, "uint32"),
        Point("alarm", 3, "bit"),
        Point("model", 4, "string"),
        Point("scaled", 5, "int16", scale=0.1),
        Point("total", 6, "float64", unit="m3"),
        Point("ticks", 7, "int64"),
        Point("sp", 8, "float32", writable=True, min=0.0, max=95.0),
        Point("other", 9, "uint16"),
    ]
    t = TagTable.from_points(pts, ["plc"] * 9 + ["skid"])
    groups = [Group("plc", "fast", 0, 4), Group("plc", "slow", 4, 9), Group("skid", "s", 9, 10)]
    return t, groups


def _fill(t: TagTable) -> None:
    t.raw[:] = [55.25, -5, 4_000_000_000, 1, np.nan, -12.3, 1e9 + 0.5, -(2**40), 40.0, 7]
    t.texts[4] = "HX-200"
    t.quality[:] = GOOD
    t.ts_ns[:] = 1_700_000_000_000_000_000


def _node(tmp_path: Path, primary: str | None = None) -> tuple[SparkplugNode, TagTable]:
    t, groups = _table()
    return SparkplugNode(t, groups, str(tmp_path / "outbox.db.bdseq"), primary), t


def test_datatype_follows_the_tag_type() -> None:
    t, _ = _table()
    got = [DATATYPES[spb.datatype_of(p)] for p in t.points]
    assert got == [
        "Float",
        "Int16",
        "UInt32",
        "Boolean",
        "String",
        "Double",  # a scaled integer carries engineering values
        "Double",
        "Int64",
        "Float",
        "UInt16",
    ]


def test_dbirth_types_values_and_properties(tmp_path: Path) -> None:
    node, t = _node(tmp_path)
    _fill(t)
    t.quality[7] = UNCERTAIN
    p = decode(node.dbirth("plc", 1_700_000_000_500))
    assert p.seq == 0 and p.timestamp == 1_700_000_000_500
    by = {m.name: m for m in p.metrics}
    assert list(by) == [
        "fast/temp",
        "fast/count",
        "fast/big",
        "fast/alarm",
        "slow/model",
        "slow/scaled",
        "slow/total",
        "slow/ticks",
        "slow/sp",
    ]
    vals = {n: value_of(m, DATATYPES[m.datatype]) for n, m in by.items()}
    assert vals == {
        "fast/temp": 55.25,
        "fast/count": -5,
        "fast/big": 4_000_000_000,
        "fast/alarm": True,
        "slow/model": "HX-200",
        "slow/scaled": pytest.approx(-12.3),
        "slow/total": 1e9 + 0.5,
        "slow/ticks": -(2**40),
        "slow/sp": 40.0,
    }
    assert [m.alias for m in p.metrics] == list(range(9))
    assert all(m.timestamp == 1_700_000_000_000 for m in p.metrics)
    assert properties(by["fast/temp"]) == {
        "engUnit": ("String", "degC"),
        "engLow": ("Double", 0.0),
        "engHigh": ("Double", 120.0),
        "Quality": ("Int32", 192),
    }
    assert properties(by["slow/sp"])["writable"] == ("Boolean", True)
    assert "writable" not in properties(by["fast/temp"])
    assert properties(by["slow/ticks"])["Quality"] == ("Int32", 64)
    assert node.born == {"plc"}


def test_dbirth_null_only_where_no_value_exists(tmp_path: Path) -> None:
    node, t = _node(tmp_path)  # nothing read yet: NaN, quality comm lost, ts 0
    _fill(t)
    t.raw[1] = np.nan
    t.quality[1] = COMM_LOST
    t.ts_ns[1] = 0
    by = {m.name: m for m in decode(node.dbirth("plc", 5)).metrics}
    assert by["fast/count"].is_null and by["fast/count"].WhichOneof("value") is None
    assert properties(by["fast/count"])["Quality"] == ("Int32", 0)
    assert by["fast/count"].timestamp == 5
    assert sum(m.is_null for m in by.values()) == 1


def test_ddata_by_alias_with_quality_when_it_matters(tmp_path: Path) -> None:
    node, t = _node(tmp_path)
    _fill(t)
    f = Frame(
        1_700_000_000_123_000_000,
        0,
        t.raw[0:4].copy(),
        t.value[0:4].copy(),
        np.array([GOOD, BAD, GOOD, GOOD], dtype=np.uint8),
        t.flags[0:4].copy(),
        t.score[0:4].copy(),
        {},
        None,
        np.array([False, True, True, False]),
    )
    raw = node.ddata([f], historical=False)
    p = decode(raw + spb.seq_field(42))
    assert p.seq == 42 and p.timestamp == 1_700_000_000_123
    assert [m.alias for m in p.metrics] == [0, 1, 2, 3]
    assert not any(m.HasField("name") or m.HasField("datatype") for m in p.metrics)
    assert not any(m.is_historical for m in p.metrics)
    assert [m.WhichOneof("value") for m in p.metrics] == [
        "float_value",
        "int_value",
        "int_value",
        "boolean_value",
    ]
    assert value_of(p.metrics[1], "Int16") == -5
    assert [properties(m).get("Quality") for m in p.metrics] == [
        None,
        ("Int32", 0),
        ("Int32", 192),  # back to good: said once
        None,
    ]
    hist = decode(node.ddata([f, f], historical=True))
    assert len(hist.metrics) == 8 and all(m.is_historical for m in hist.metrics)


def test_node_birth_and_death_share_the_bdseq(tmp_path: Path) -> None:
    node, _ = _node(tmp_path)
    node.new_connection()
    birth, death = decode(node.nbirth(10)), decode(node.ndeath(11))
    assert birth.seq == 0 and not death.HasField("seq")
    assert [(m.name, DATATYPES[m.datatype]) for m in birth.metrics] == [
        ("bdSeq", "Int64"),
        ("Node Control/Rebirth", "Boolean"),
    ]
    assert birth.metrics[0].long_value == death.metrics[0].long_value == 0
    assert birth.metrics[1].boolean_value is False
    assert [node.next_seq() for _ in range(256)][-2:] == [255, 0]  # 1..255, then wraps


def test_bdseq_persists_across_restarts_and_wraps(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.db.bdseq")
    assert BdSeqFile(path).next() == 0
    assert BdSeqFile(path).next() == 1  # a restart goes on
    f = BdSeqFile(path)
    assert [f.next() for _ in range(255)][-1] == 0  # 2..255, 0
    assert BdSeqFile(path).last == 0
    h = BdSeqFile(path)  # attempts without a CONNACK use up nothing
    assert [h.candidate(), h.candidate()] == [1, 1]
    h.save(1)
    assert BdSeqFile(path).candidate() == 2
    blocked = tmp_path / "blocked"  # a directory where the file should be: cannot save
    blocked.mkdir()
    g = BdSeqFile(str(blocked))
    assert [g.next(), g.next()] == [0, 1]  # goes on in memory


def test_dcmd_resolves_names_aliases_and_refuses_what_it_cannot(tmp_path: Path) -> None:
    node, _ = _node(tmp_path)
    body = encode_command(
        [
            {"name": "slow/sp", "datatype": "Float", "value": 61.5},
            {"alias": 1, "datatype": "Int16", "value": -7},
            {"name": "s/other", "datatype": "UInt16", "value": 3},  # on another device
            {"name": "nope", "datatype": "Double", "value": 1},
            {"name": "Device Control/Rebirth", "datatype": "Boolean", "value": True},
        ]
    )
    writes, rebirth = node.writes("plc", body)
    assert rebirth
    got = [(w.tag, w.value, w.refused) for w in writes]
    assert got[:2] == [("sp", 61.5, None), ("count", -7, None)]
    assert got[2][0] == "other" and "not on 'plc'" in got[2][2]
    assert got[3][0] == "nope" and writes[3].index == -1 and "no tag" in got[3][2]
    with pytest.raises(spb.CommandError):
        node.writes("plc", b"\x12\x50abc")


def test_refusal_answer_carries_the_present_value_and_why(tmp_path: Path) -> None:
    node, t = _node(tmp_path)
    _fill(t)
    writes, _ = node.writes(
        "plc", encode_command([{"alias": 8, "datatype": "Float", "value": 200}])
    )
    from agent.publish.spb_node import Write

    w = Write("plc", "sp", 8, 200.0, "'sp': 200 is outside 0..95")
    m = decode(node.refusal(w, 9)).metrics[0]
    assert m.alias == 8 and m.float_value == 40.0
    assert properties(m)["writeRefused"] == ("String", "'sp': 200 is outside 0..95")
    assert writes[0].value == 200.0 and writes[0].refused is None  # the gate judges bounds


def test_primary_host_state(tmp_path: Path) -> None:
    node, _ = _node(tmp_path, primary="scada")
    node.new_connection()
    assert not node.host_online
    assert node.state_message(json.dumps({"online": True, "timestamp": 100}).encode()) is True
    assert node.state_message(json.dumps({"online": False, "timestamp": 99}).encode()) is None
    assert node.host_online  # an older STATE is ignored
    assert node.state_message(b"garbage") is None
    assert node.state_message(json.dumps({"online": False, "timestamp": 101}).encode()) is False
    assert not node.host_online
    node.new_connection()
    assert not node.host_online  # every connection waits for the host again
    free, _ = _node(tmp_path / "b")
    assert free.host_online  # no primary host configured


def test_rebirth_request_is_recognised_and_garbage_ignored() -> None:
    def ask(v: bool, name: str = spb.REBIRTH) -> bytes:
        return encode_command([{"name": name, "datatype": "Boolean", "value": v}])

    assert spb.rebirth_requested(ask(True))
    assert not spb.rebirth_requested(ask(False))
    assert not spb.rebirth_requested(ask(True, "Node Control/Reboot"))
    assert not spb.rebirth_requested(b"\xff\xff\xff")  # truncated varint
    assert not spb.rebirth_requested(b"\x12\x50abc")  # length past the end
    assert not spb.rebirth_requested(b"")


def test_set_and_get_value_round_trip_every_type() -> None:
    cases = [
        (spb.INT8, -128),
        (spb.INT16, -32768),
        (spb.INT32, -(2**31)),
        (spb.INT64, -(2**63)),
        (spb.UINT8, 255),
        (spb.UINT16, 65535),
        (spb.UINT32, 2**32 - 1),
        (spb.UINT64, 2**64 - 1),
        (spb.FLOAT, 1.5),
        (spb.DOUBLE, math.pi),
        (spb.BOOLEAN, True),
        (spb.STRING, "x"),
        (spb.DATETIME, 1_700_000_000_000),
    ]
    for dt, v in cases:
        p = spb.Payload()
        spb.set_value(p.metrics.add(), dt, v)
        back = decode(p.SerializeToString()).metrics[0]
        assert value_of(back, DATATYPES[dt]) == v, DATATYPES[dt]
        assert spb.get_value(spb.decode(p.SerializeToString()).metrics[0], dt) == v
    p = spb.Payload()
    spb.set_value(p.metrics.add(), spb.DOUBLE, math.nan)
    assert decode(p.SerializeToString()).metrics[0].is_null


class _Fixed(random.Random):
    """A generator whose every draw is `r`: the ends of the jitter range."""

    def __init__(self, r: float) -> None:
        super().__init__(0)
        self.r = r

    def random(self) -> float:
        return self.r


def test_backoff_is_capped_exponential_with_jitter() -> None:
    # the MQTT link and the device links share agent/backoff.py
    assert backoff_delay is acquire.backoff_delay
    lo = [backoff_delay(a, 0.5, 30.0, _Fixed(0.0)) for a in range(10)]
    hi = [backoff_delay(a, 0.5, 30.0, _Fixed(1.0)) for a in range(10)]
    assert hi[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert hi[9] == 30.0 and lo[9] == 15.0
    assert all(a * 2 == b for a, b in zip(lo, hi, strict=True))
    assert backoff_delay(10_000, 0.5, 30.0) <= 30.0  # no overflow on long outages


def test_topic_segment() -> None:
    assert topic_segment("a/b+c#d") == "a_b_c_d"
    assert topic_segment("") == "_"


def test_generated_module_matches_the_specification_field_table() -> None:
    """The checked-in sparkplug_b_pb2 and the test decoder's table (written separately from
    the specification) agree on every field a tag-level host reads: name, number, type,
    repeated or not, and membership of the `value` oneof."""
    from agent.publish import sparkplug_b_pb2 as pb
    from tests.fixtures.sparkplug_host import _SCHEMA, CLASSES

    for msg, fields in _SCHEMA.items():
        ours = getattr(pb.Payload, msg).DESCRIPTOR if msg != "Payload" else pb.Payload.DESCRIPTOR
        theirs = CLASSES[msg].DESCRIPTOR
        for name, number, _typ, label in fields:
            a, b = ours.fields_by_name[name], theirs.fields_by_name[name]
            assert (a.number, a.type) == (b.number, b.type) == (number, b.type), (msg, name)
            assert a.is_repeated == b.is_repeated == (label == "r"), (msg, name)
            in_oneof = a.containing_oneof is not None and a.containing_oneof.name == "value"
            assert in_oneof == (label == "v"), (msg, name)
