"""Compile: the tag table layout, points as drivers see them, plans made before connecting."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from agent.cli import main
from agent.config import load_config, parse_config
from agent.tags import compile_config
from drivers.base import Quality

ROOT = Path(__file__).resolve().parents[2]

TEXT = """\
site: t
devices:
  - name: plc
    driver: modbus
    host: 127.0.0.1
    unit_id: 3
    byte_order: little
    word_order: little
    poll_groups:
      - name: fast
        interval_ms: 1000
        tags:
          - {name: a, table: input, address: 0, type: float32, unit: degC, scale: 0.5, offset: 1}
          - {name: b, table: input, address: 2, type: float32, word_order: big, unit_id: 4}
          - {name: s, table: holding, address: 10, type: string, length_registers: 3}
      - name: slow
        interval_ms: 5000
        stale_after_ms: 20000
        tags:
          - {name: c, table: coil, address: 5, writable: true}
          - {name: w, table: holding, address: 0, type: uint16, writable: true, min: 0, max: 9}
  - name: spare
    driver: modbus
    host: 127.0.0.1
    enabled: false
    poll_groups:
      - name: g
        interval_ms: 1000
        tags:
          - {name: d, table: input, address: 0, type: int16}
  - name: ua
    driver: opcua
    endpoint: opc.tcp://127.0.0.1:4840
    timeout_s: 1
    poll_groups:
      - name: sub
        interval_ms: 500
        mode: subscribe
        deadband_abs: 0.1
        tags:
          - {name: e, node: "ns=2;s=E"}
          - {name: f, node: "ns=2;s=F", type: string}
"""


def test_table_layout_and_initial_state() -> None:
    c = compile_config(parse_config(TEXT))
    t = c.table
    assert t.names == ["a", "b", "s", "c", "w", "d", "e", "f"]
    assert t.index == {n: i for i, n in enumerate(t.names)}
    assert [p.index for p in t.points] == list(range(8))
    assert t.devices == ["plc", "plc", "plc", "plc", "plc", "spare", "ua", "ua"]
    assert (t.raw.dtype, t.value.dtype, t.score.dtype) == (np.float64,) * 3
    assert (t.quality.dtype, t.flags.dtype, t.ts_ns.dtype) == (np.uint8, np.uint16, np.int64)
    assert all(len(a) == 8 for a in (t.raw, t.value, t.quality, t.flags, t.score, t.ts_ns))
    assert np.isnan(t.raw).all() and (t.ts_ns == 0).all()
    assert (t.quality == Quality.COMM_LOST).all()  # nothing has been read yet
    assert t.min[t.index["w"]] == 0 and t.max[t.index["w"]] == 9
    assert math.isnan(t.min[t.index["a"]])
    assert t.units[0] == "degC"


def test_groups_are_contiguous_slices_with_options() -> None:
    c = compile_config(parse_config(TEXT))
    spans = [(g.device, g.name, g.start, g.stop) for g in c.groups]
    assert spans == [
        ("plc", "fast", 0, 3),
        ("plc", "slow", 3, 5),
        ("spare", "g", 5, 6),
        ("ua", "sub", 6, 8),
    ]
    for g in c.groups:
        assert [p.index for p in g.points] == list(range(g.start, g.stop))
    fast, slow, _, sub = c.groups
    assert fast.options == {"stale_after_ms": 3000}
    assert slow.options == {"stale_after_ms": 20000}
    assert sub.mode == "subscribe"
    assert sub.options == {
        "stale_after_ms": 1500,
        "sampling_interval_ms": 500,
        "deadband_abs": 0.1,
        "queue_size": 1000,
    }


def test_points_carry_device_defaults_and_tag_overrides() -> None:
    c = compile_config(parse_config(TEXT))
    p = {p.name: p for p in c.table.points}
    a, b = p["a"], p["b"]
    assert (a.byte_order, a.word_order, a.unit_id) == ("little", "little", 3)
    assert (b.byte_order, b.word_order, b.unit_id) == ("little", "big", 4)
    assert (a.scale, a.offset, a.table, a.address, a.dtype) == (0.5, 1.0, "input", 0, "float32")
    assert p["s"].length_registers == 3
    assert p["c"].dtype == "bool" and p["c"].writable
    assert p["e"].node == "ns=2;s=E" and p["e"].dtype == "float64" and p["e"].table is None
    assert p["f"].dtype == "string"


def test_plans_exist_for_enabled_devices_only() -> None:
    c = compile_config(parse_config(TEXT))
    assert set(c.drivers) == {"plc", "ua"}
    assert set(c.plans) == {("plc", "fast"), ("plc", "slow"), ("ua", "sub")}
    fast = c.groups[0]
    reqs = c.requests(fast)
    # unit 3 input 0..1, unit 4 input 2..3 (another unit: another request), holding 10..12
    got = sorted((r.unit_id, r.function[:4], r.start, r.count) for r in reqs)
    assert got == [(3, "FC03", 10, 3), (3, "FC04", 0, 2), (4, "FC04", 2, 2)]
    assert c.requests(c.groups[2]) == []  # disabled
    # polled: 3 requests/s + 2 per 5 s; the subscription is not counted
    assert c.requests_per_second() == 3.0 + 2 / 5


def test_default_config_compiles_to_few_requests() -> None:
    c = compile_config(load_config(ROOT / "config/edgeloop.yaml"))
    assert len(c.table) == 44
    heater = [g for g in c.groups if g.device == "heater_plc"]
    # merged reads: every group of the heater needs at most one request per table and unit
    for g in heater:
        keys = {(p.unit_id, p.table) for p in g.points}
        assert len(c.requests(g)) == len(keys), g.name


def test_plan_command_lists_every_request(capsys, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["plan", "--json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    c = compile_config(load_config(ROOT / "config/edgeloop.yaml"))
    covered = [t for g in doc["groups"] for r in g["requests"] for t in r["tags"]]
    assert sorted(covered) == sorted(c.table.names)
    assert doc["requests_per_cycle"] == sum(
        len(c.requests(g)) for g in c.groups if g.mode == "poll"
    )
    assert main(["plan"]) == 0
    text = capsys.readouterr().out
    assert "heater_plc/fast: every 200 ms (poll)" in text
    assert "FC04 read_input_registers" in text
    assert text.strip().splitlines()[-1].startswith("total: 5 groups, 44 tags")
