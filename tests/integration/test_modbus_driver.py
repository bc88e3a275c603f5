"""Modbus driver against a real Modbus TCP device on loopback: reads, writes, units."""

from __future__ import annotations

import math

import numpy as np
import pytest

from drivers.base import GroupSpec, Point, Quality, WriteRefused, create_driver
from drivers.modbus_codec import NUMPY_CODE, encode_registers
from tests.integration.test_modbus_peer import DeviceCfg, Peer

ORDERS = [("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")]
SAMPLE = {
    "int16": -1234,
    "uint16": 54321,
    "int32": -123456789,
    "uint32": 3_000_000_000,
    "int64": -(2**40) - 7,
    "uint64": 2**50 + 3,
    "float32": 123.456,
    "float64": -9.87654321e10,
}


def group(points: list[Point], name: str = "g") -> GroupSpec:
    return GroupSpec("plc", name, 1000, "poll", 0, len(points), tuple(points))


@pytest.fixture
async def peer():
    p = await Peer(units=(1, 2, 7)).start()
    yield p
    await p.stop()


async def test_reads_every_type_in_every_order(peer: Peer) -> None:
    points, want = [], []
    address = 0
    for dtype, value in SAMPLE.items():
        for bo, wo in ORDERS:
            regs = encode_registers(dtype, value, bo, wo)
            peer.units[1].holding[address : address + len(regs)] = regs
            points.append(
                Point(
                    f"{dtype}_{bo}_{wo}",
                    len(points),
                    dtype,
                    table="holding",
                    address=address,
                    byte_order=bo,
                    word_order=wo,
                )
            )
            want.append(float(np.array(value, NUMPY_CODE[dtype])))
            address += len(regs)
    peer.units[1].holding[address] = 0b1000_0000_0000_0100  # bits 2 and 15
    points += [
        Point("b2", len(points), "bit", table="holding", address=address, bit=2),
        Point(
            "b15_swapped",
            len(points) + 1,
            "bit",
            table="holding",
            address=address,
            bit=7,
            byte_order="little",
        ),
    ]
    want += [1.0, 1.0]
    peer.units[1].holding[address + 1 : address + 4] = encode_registers(
        "string", "HTR-1", length_registers=3
    )
    points.append(
        Point(
            "model", len(points), "string", table="holding", address=address + 1, length_registers=3
        )
    )
    want.append(math.nan)
    peer.units[1].input[10] = 250
    points.append(
        Point("temp", len(points), "int16", table="input", address=10, scale=0.1, offset=-5.0)
    )
    want.append(20.0)
    peer.units[1].coil[3] = 1
    peer.units[1].discrete[4] = 1
    points += [
        Point("c3", len(points), "bool", table="coil", address=3),
        Point("d5", len(points) + 1, "bool", table="discrete", address=5),
    ]
    want += [1.0, 0.0]

    drv = create_driver(DeviceCfg(port=peer.port), [group(points)])
    await drv.connect()
    plan = drv.plan(group(points))
    res = await drv.read(plan)
    await drv.close()
    assert (res.quality == Quality.GOOD).all()
    np.testing.assert_allclose(res.values, want, rtol=1e-7, equal_nan=True)
    assert res.texts == {len(points) - 4: "HTR-1"}
    # 2 register tables + 2 bit tables, all merged: 4 requests
    assert [(u, fc) for u, fc, _, _ in peer.requests] == [(1, 1), (1, 2), (1, 3), (1, 4)]


async def test_planned_requests_and_describe(peer: Peer) -> None:
    pts = [Point(f"f{i}", i, "float32", table="input", address=2 * i) for i in range(1000)]
    drv = create_driver(DeviceCfg(port=peer.port), [group(pts)])
    plan = drv.plan(group(pts))
    rows = drv.describe(plan)
    assert len(rows) == 17 and rows[0].function == "FC04 read_input_registers"
    assert rows[0].start == 0 and rows[0].count == 124 and rows[0].tags[:2] == ("f0", "f1")
    peer.units[1].input[:2000] = (np.arange(1000, dtype=np.float32) / 4).astype(">f4").view(">u2")
    res = await drv.read(plan)
    np.testing.assert_array_equal(res.values, np.arange(1000) / 4)
    assert len(peer.requests) == 17 and all(c <= 125 for *_, c in peer.requests)
    await drv.close()


async def test_several_unit_ids_share_one_connection(peer: Peer) -> None:
    pts = []
    for i, unit in enumerate((1, 2, 7)):
        peer.units[unit].holding[0] = 100 + unit
        pts.append(Point(f"u{unit}", i, "uint16", table="holding", address=0, unit_id=unit))
    drv = create_driver(DeviceCfg(port=peer.port), [group(pts)])
    for _ in range(3):
        res = await drv.read(drv.plan(group(pts)))
        assert res.values.tolist() == [101.0, 102.0, 107.0]
    assert peer.connections == 1
    assert sorted({u for u, *_ in peer.requests}) == [1, 2, 7]
    await drv.close()


def wpt(name: str, table: str, address: int, dtype: str = "uint16", **kw) -> Point:
    return Point(
        name, 0, dtype, table=table, address=address, writable=kw.pop("writable", True), **kw
    )


async def test_writes_use_the_fitting_function_codes(peer: Peer) -> None:
    drv = create_driver(DeviceCfg(port=peer.port), [])
    u = peer.units[1]
    await drv.write([(wpt("one_coil", "coil", 1, "bool"), True)])
    await drv.write([(wpt("one_reg", "holding", 5, "int16"), -2)])
    await drv.write(
        [
            (wpt("c10", "coil", 10, "bool"), 1),
            (wpt("c11", "coil", 11, "bool"), 0),
            (wpt("c12", "coil", 12, "bool"), 1),
        ]
    )
    await drv.write([(wpt("sp", "holding", 20, "float32", word_order="little", scale=0.5), 50.0)])
    u.holding[30] = 0xFF00
    await drv.write([(wpt("flag", "holding", 30, "bit", bit=1), 1)])
    await drv.write([(wpt("flag_off", "holding", 30, "bit", bit=8), 0)])
    fcs = [fc for _, fc, *_ in peer.requests]
    assert fcs == [5, 6, 15, 16, 22, 22]
    assert u.coil[1] == 1 and u.holding[5] == 0xFFFE
    assert u.coil[10:13].tolist() == [1, 0, 1]
    assert u.holding[20:22].tolist() == encode_registers("float32", 100.0, "big", "little")
    assert u.holding[30] == 0xFE02
    # write then read back through the same tag definition: the codec is symmetric
    sp = wpt("sp", "holding", 20, "float32", word_order="little", scale=0.5)
    res = await drv.read(drv.plan(group([sp])))
    assert res.values[0] == 50.0
    await drv.close()


async def test_contiguous_registers_merge_into_one_fc16(peer: Peer) -> None:
    drv = create_driver(DeviceCfg(port=peer.port), [])
    await drv.write(
        [
            (wpt("a", "holding", 0), 1),
            (wpt("b", "holding", 1), 2),
            (wpt("c", "holding", 2, "int32"), 3),
            (wpt("far", "holding", 9), 4),
        ]
    )
    assert [(fc, a, c) for _, fc, a, c in peer.requests] == [(16, 0, 4), (6, 9, 1)]
    assert peer.units[1].holding[:4].tolist() == [1, 2, 0, 3]
    await drv.close()


@pytest.mark.parametrize(
    ("point", "value", "why"),
    [
        (wpt("ro", "holding", 0, writable=False), 1, "not writable"),
        (wpt("inp", "input", 0), 1, "read-only"),
        (wpt("lo", "holding", 0, min=0.0, max=100.0), -0.5, "below min"),
        (wpt("hi", "holding", 0, min=0.0, max=100.0), 100.5, "above max"),
        (wpt("nan", "holding", 0, "float32"), float("nan"), "refusing"),
        (wpt("wide", "holding", 0, "int16"), 40000, "does not fit"),
        (wpt("str", "holding", 0, "string", length_registers=1), "ABC", "does not fit"),
    ],
)
async def test_unsafe_writes_are_refused_and_never_sent(peer: Peer, point, value, why) -> None:
    drv = create_driver(DeviceCfg(port=peer.port), [])
    ok = wpt("ok", "holding", 50)
    with pytest.raises(WriteRefused, match=why):
        await drv.write([(ok, 7), (point, value)])
    assert (
        peer.requests == [] and peer.units[1].holding[50] == 0
    )  # the good one was not sent either
    await drv.close()


async def test_nan_from_the_device_is_bad_quality(peer: Peer) -> None:
    peer.units[1].input[0:2] = np.array([np.nan], ">f4").view(">u2")
    peer.units[1].input[2:4] = np.array([np.inf], ">f4").view(">u2")
    peer.units[1].input[4:6] = np.array([3.5], ">f4").view(">u2")
    peer.units[1].input[6:8] = encode_registers("string", "OK", length_registers=2)
    pts = [Point(f"f{i}", i, "float32", table="input", address=2 * i) for i in range(3)]
    pts.append(Point("s", 3, "string", table="input", address=6, length_registers=2))
    drv = create_driver(DeviceCfg(port=peer.port), [group(pts)])
    res = await drv.read(drv.plan(group(pts)))
    assert res.quality.tolist() == [Quality.BAD, Quality.BAD, Quality.GOOD, Quality.GOOD]
    assert res.values[2] == 3.5 and res.texts == {3: "OK"}
    await drv.close()


async def test_a_write_waits_for_one_request_not_for_a_whole_group(peer: Peer) -> None:
    import asyncio

    pts = [Point(f"r{i}", i, "uint16", table="holding", address=100 * i) for i in range(4)]
    drv = create_driver(DeviceCfg(port=peer.port, max_gap_registers=0), [group(pts)])
    peer.misbehave("late", 0.1, times=4)  # every read request takes 100 ms
    poll = asyncio.ensure_future(drv.read(drv.plan(group(pts))))
    await asyncio.sleep(0.05)
    await drv.write([(wpt("sp", "holding", 50), 5)])
    res = await poll
    assert (res.quality == Quality.GOOD).all()
    fcs = [fc for _, fc, _, _ in peer.requests]
    assert fcs == [3, 6, 3, 3, 3]  # the write went between the first and second read
    await drv.close()
