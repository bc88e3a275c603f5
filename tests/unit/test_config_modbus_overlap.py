"""The Modbus overlap check finds, for each word tag, the first earlier tag (in file order)
sharing a register, like a scan of every earlier tag would, without that scan's n^2 cost."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.modbus_codec import register_width
from drivers.modbus_config import ModbusDevice

TYPES = ["int16", "uint16", "float32", "int32", "float64", "uint64"]


def device(tags: list[dict[str, object]]) -> dict[str, object]:
    return {
        "name": "plc",
        "driver": "modbus",
        "host": "127.0.0.1",
        "poll_groups": [{"name": "g", "interval_ms": 1000, "tags": tags}],
    }


def overlaps(tags: list[dict[str, object]]) -> list[tuple[tuple[object, ...], str]]:
    try:
        ModbusDevice.model_validate(device(tags))
    except ValidationError as e:
        return [
            (tuple(path), msg)
            for err in e.errors()
            for path, msg in err["ctx"]["problems"]
            if "overlaps" in msg
        ]
    return []


def reference(tags: list[dict[str, object]]) -> list[tuple[tuple[object, ...], str]]:
    """The check as it was: every tag against every earlier one of its unit and table."""
    out: list[tuple[tuple[object, ...], str]] = []
    seen: list[tuple[int, int, str, int, str]] = []
    for ti, t in enumerate(tags):
        unit, table = t.get("unit_id", 1), str(t["table"])
        lo = int(t["address"])  # type: ignore[call-overload]
        hi = lo + register_width(str(t["type"]), None) - 1
        for olo, ohi, oname, ounit, otable in seen:
            if (ounit, otable) == (unit, table) and lo <= ohi and olo <= hi:
                where = f"{olo}" if olo == ohi else f"{olo}..{ohi}"
                span = f"{lo}..{hi}" if lo != hi else f"{lo}"
                out.append(
                    (
                        ("poll_groups", 0, "tags", ti, "address"),
                        f"{table} {span} overlaps tag {oname!r} ({table} {where}, unit {unit})",
                    )
                )
                break
        seen.append((lo, hi, str(t["name"]), int(unit), table))  # type: ignore[call-overload]
    return out


tag = st.fixed_dictionaries(
    {
        "address": st.integers(0, 40),
        "type": st.sampled_from(TYPES),
        "table": st.sampled_from(["holding", "input"]),
    },
    optional={"unit_id": st.integers(1, 2)},
)


@settings(max_examples=300, deadline=None)
@given(st.lists(tag, min_size=1, max_size=30))
def test_same_overlaps_as_a_full_scan(raw: list[dict[str, object]]) -> None:
    tags = [{"name": f"t{i}", **t} for i, t in enumerate(raw)]
    assert overlaps(tags) == reference(tags)


def test_a_wide_tag_found_from_far_behind() -> None:
    """A float64 at 0 (0..3) overlaps an int16 at 3 that comes after two narrow tags."""
    tags = [
        {"name": "wide", "table": "holding", "address": 0, "type": "float64"},
        {"name": "a", "table": "holding", "address": 10, "type": "int16"},
        {"name": "b", "table": "holding", "address": 3, "type": "int16"},
    ]
    assert overlaps(tags) == [
        (
            ("poll_groups", 0, "tags", 2, "address"),
            "holding 3 overlaps tag 'wide' (holding 0..3, unit 1)",
        )
    ]


def test_linear_in_tags() -> None:
    """20,000 distinct float32 tags on one device: 0.15 s; a scan of every earlier tag was
    200 million comparisons (4 s on the same machine)."""
    tags = [
        {"name": f"t{i}", "table": "input", "address": 2 * i, "type": "float32"}
        for i in range(20000)
    ]
    t0 = time.process_time()
    ModbusDevice.model_validate(device(tags))
    assert time.process_time() - t0 < 1.5
