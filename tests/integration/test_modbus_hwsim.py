"""The Modbus driver against the hw_sim PLCs (TCP and RTU over a socat pty): every point of
the map, writes that move the plant, several units on one link, the misbehaviour modes."""

from __future__ import annotations

import asyncio
import contextlib
import math

import numpy as np
import pytest

from drivers.base import ConnectError, GroupSpec, Point, Quality, ReadError, create_driver
from hw_sim import codec as sim_codec
from hw_sim import pointmap
from hw_sim.modbus_server import SimModbusServer
from hw_sim.runtime import SimPlant
from tests.fixtures.ports import free_port
from tests.integration.test_modbus_peer import DeviceCfg

MAP = pointmap.modbus_points()


def to_point(p: pointmap.SimPoint, index: int) -> Point:
    return Point(
        name=p.name,
        index=index,
        dtype=p.type,
        unit=p.unit,
        table=p.table,
        address=p.address,
        bit=p.bit,
        length_registers=p.length_registers,
        byte_order=p.byte_order,
        word_order=p.word_order,
        unit_id=p.unit_id or 1,
        scale=p.scale,
        writable=p.writable,
        min=p.min,
        max=p.max,
    )


POINTS = tuple(to_point(p, i) for i, p in enumerate(MAP))
GROUP = GroupSpec("plc", "all", 1000, "poll", 0, len(POINTS), POINTS)


def expected(plant: SimPlant) -> tuple[list[float], dict[int, str]]:
    """What the simulator serves, decoded by its own (independent) codec."""
    values, texts = plant.values(), plant.texts()
    by_name = {p.name: p for p in MAP}
    want: list[float] = []
    want_texts: dict[int, str] = {}
    for i, p in enumerate(MAP):
        if p.type == "string":
            want.append(math.nan)
            want_texts[i] = texts[p.signal]
        elif p.type == "bit":
            word = next(
                q
                for q in MAP
                if q.table == p.table
                and q.address == p.address
                and q.type != "bit"
                and q.unit_id == p.unit_id
            )
            reg = sim_codec.encode(word, values[word.signal])[0]
            want.append(float((reg >> (p.bit or 0)) & 1))
        elif p.table in ("coil", "discrete"):
            want.append(1.0 if values[p.signal] >= 0.5 else 0.0)
        else:
            want.append(
                float(sim_codec.decode(by_name[p.name], sim_codec.encode(p, values[p.signal])))
            )
    return want, want_texts


@pytest.fixture
async def sim():
    plant = SimPlant(seed=1)
    server = SimModbusServer(plant, port=free_port())
    await server.start()
    yield server
    await server.stop()
    plant.close()


def cfg(server: SimModbusServer, **kw) -> DeviceCfg:
    return DeviceCfg(port=server.port, **{"timeout_s": 0.3, "retries": 0, **kw})


async def test_every_modbus_point_of_the_map_reads_correctly(sim: SimModbusServer) -> None:
    orders = {(p.byte_order, p.word_order) for p in MAP if p.type in ("float32", "uint32")}
    assert {("big", "big"), ("big", "little"), ("little", "little")} <= orders
    drv = create_driver(cfg(sim), [GROUP])
    res = await drv.read(drv.plan(GROUP))
    want, want_texts = expected(sim.plant)
    bad = [POINTS[i].name for i in np.flatnonzero(res.quality != Quality.GOOD)]
    assert bad == []
    for i, p in enumerate(POINTS):
        w = want[i]
        assert (math.isnan(w) and math.isnan(res.values[i])) or res.values[i] == pytest.approx(
            w, rel=1e-12, abs=1e-12
        ), p.name
    assert res.texts == want_texts and want_texts  # the device model string
    # both units over one connection, a handful of merged requests
    assert drv.counters["connects"] == 1
    assert {r.unit_id for r in drv.describe(drv.plan(GROUP))} == {1, 2}
    assert len(drv.describe(drv.plan(GROUP))) <= 8
    await drv.close()


def by_name(name: str) -> Point:
    return next(p for p in POINTS if p.name == name)


async def read_one(drv, *names: str) -> list[float]:
    pts = tuple(
        Point(**{**{f: getattr(by_name(n), f) for f in Point.__slots__}, "index": i})
        for i, n in enumerate(names)
    )
    g = GroupSpec("plc", "x", 1000, "poll", 0, len(pts), pts)
    res = await drv.read(drv.plan(g))
    assert (res.quality == Quality.GOOD).all()
    return res.values.tolist()


async def test_writes_with_each_function_code_move_the_plant(sim: SimModbusServer) -> None:
    drv = create_driver(cfg(sim), [])
    plant = sim.plant
    await drv.write([(by_name("heater_power"), 37.5)])  # float32: FC16
    await drv.write([(by_name("heartbeat"), 1234)])  # one register: FC06
    await drv.write([(by_name("heater_enable"), 1)])  # one coil: FC05
    assert plant.values()["heater_power"] == 37.5
    assert plant.values()["heartbeat"] == 1234
    assert plant.values()["heater_enable"] == 1.0
    await drv.write([(by_name("heater_enable"), 0), (by_name("fault_reset"), 1)])  # FC15
    assert plant.values()["heater_enable"] == 0.0
    await drv.write([(by_name("heartbeat"), 7), (by_name("watchdog_timeout_ms"), 5000)])  # FC16
    assert (plant.values()["heartbeat"], plant.values()["watchdog_timeout_ms"]) == (7, 5000)
    await drv.write([(by_name("pump_speed_setpoint_mb"), 80.0)])  # unit 2
    assert plant.values()[pointmap_signal("pump_speed_setpoint_mb")] == 80.0
    assert await read_one(drv, "heater_power", "heartbeat") == [37.5, 7.0]
    assert drv.counters["writes"] == 6 and drv.counters["connects"] == 1
    await drv.close()


def pointmap_signal(name: str) -> str:
    return next(p for p in MAP if p.name == name).signal


async def test_device_refusing_a_write_is_a_write_error(sim: SimModbusServer) -> None:
    from drivers.base import WriteError

    drv = create_driver(cfg(sim), [])
    # writable in our config, read-only in the PLC: the PLC answers ILLEGAL_DATA_ADDRESS
    fw = Point("fw", 0, "uint16", table="holding", address=8, writable=True)
    with pytest.raises(WriteError, match="ILLEGAL_DATA_ADDRESS") as info:
        await drv.write([(fw, 1)])
    assert info.value.address == 8 and info.value.unit_id == 1
    await read_one(drv, "firmware_version")  # still connected and reading
    await drv.close()


HEATER = tuple(p for p in POINTS if p.unit_id == 1)
PUMP = tuple(p for p in POINTS if p.unit_id == 2)


@pytest.mark.parametrize(
    ("mode", "kw", "quality"),
    [
        ("exception", {"code": 4}, Quality.BAD),
        ("garbage", {}, Quality.BAD),
        ("truncate", {}, Quality.COMM_LOST),
        ("no_response", {}, Quality.COMM_LOST),
        ("delay", {"delay_s": 0.6}, Quality.COMM_LOST),
        ("wrong_transaction_id", {}, Quality.COMM_LOST),
        ("wrong_unit_id", {}, Quality.COMM_LOST),
    ],
)
async def test_misbehaving_unit_goes_bad_the_other_stays_good_then_recovers(
    sim: SimModbusServer, mode: str, kw: dict, quality: Quality
) -> None:
    drv = create_driver(cfg(sim), [GROUP])
    plan = drv.plan(GROUP)
    heater = np.array([p.unit_id == 1 for p in POINTS])
    sim.misbehaviour.set(mode, units=[1], count=1, **kw)
    res = await drv.read(plan)
    assert (res.quality[~heater] == Quality.GOOD).all()  # unit 2 unaffected
    assert np.isin(res.quality[heater], [Quality.GOOD, quality]).all()
    assert (res.quality[heater] != Quality.GOOD).any()
    assert drv.last_errors and drv.last_errors[0].unit_id == 1
    await asyncio.sleep(0.7 if mode == "delay" else 0)
    res = await drv.read(plan)
    assert (res.quality == Quality.GOOD).all(), [e for e in drv.last_errors]
    await drv.close()


async def test_whole_device_misbehaving_raises_then_resumes(sim: SimModbusServer) -> None:
    drv = create_driver(cfg(sim), [GROUP])
    plan = drv.plan(GROUP)
    sim.misbehaviour.set("exception", code=6)
    with pytest.raises(ReadError, match="DEVICE_BUSY"):
        await drv.read(plan)
    sim.misbehaviour.set("no_response")
    with pytest.raises(ConnectError):
        await drv.read(plan)
    sim.misbehaviour.clear()
    assert ((await drv.read(plan)).quality == Quality.GOOD).all()
    await drv.close()


async def test_dropped_connection_and_server_restart(sim: SimModbusServer) -> None:
    drv = create_driver(cfg(sim), [GROUP])
    plan = drv.plan(GROUP)
    assert ((await drv.read(plan)).quality == Quality.GOOD).all()
    await sim.stop()
    with pytest.raises(ConnectError):
        await drv.read(plan)
    sim.misbehaviour.set("drop", count=1)  # the first connection after restart is dropped
    await sim.start()
    with contextlib.suppress(ConnectError):
        await drv.read(plan)
    res = await drv.read(plan)
    assert (res.quality == Quality.GOOD).all()
    assert drv.counters["connects"] >= 3
    await drv.close()


async def test_rtu_over_a_socat_pty(pty_pair: tuple[str, str]) -> None:
    plc_end, agent_end = pty_pair
    plant = SimPlant(seed=2)
    server = SimModbusServer(plant, serial_port=plc_end, baudrate=115200)
    await server.start()
    try:
        dev = DeviceCfg(
            transport="rtu", serial_port=agent_end, baudrate=115200, timeout_s=0.5, retries=1
        )
        drv = create_driver(dev, [GROUP])
        res = await drv.read(drv.plan(GROUP))
        want, want_texts = expected(plant)
        assert (res.quality == Quality.GOOD).all()
        np.testing.assert_allclose(res.values, want, rtol=1e-12, equal_nan=True)
        assert res.texts == want_texts
        await drv.write([(by_name("heater_power"), 12.5), (by_name("temp_setpoint"), 60.0)])
        assert plant.values()["heater_power"] == 12.5 and plant.values()["temp_setpoint"] == 60.0
        # an exception on the serial line: that unit's points go bad, the line stays usable
        server.misbehaviour.set("exception", code=2, units=[2], count=5)
        res = await drv.read(drv.plan(GROUP))
        pump = np.array([p.unit_id == 2 for p in POINTS])
        assert (res.quality[pump] == Quality.BAD).all() and (res.quality[~pump] == 0).all()
        server.misbehaviour.clear()
        await drv.close()
    finally:
        await server.stop()
        plant.close()


async def test_two_devices_on_one_serial_line_share_it(pty_pair: tuple[str, str]) -> None:
    """Two YAML devices on one RS-485 line (units 1 and 2) polled concurrently: one port,
    one request at a time, no interleaved frames."""
    plc_end, agent_end = pty_pair
    plant = SimPlant(seed=4)
    server = SimModbusServer(plant, serial_port=plc_end, baudrate=115200)
    await server.start()
    try:
        rtu = {"transport": "rtu", "serial_port": agent_end, "baudrate": 115200, "timeout_s": 0.5}
        heater_g = GroupSpec("heater", "g", 1000, "poll", 0, len(HEATER), HEATER)
        pump_pts = tuple(Point(**{**_fields(p), "index": i}) for i, p in enumerate(PUMP))
        pump_g = GroupSpec("pump", "g", 1000, "poll", 0, len(pump_pts), pump_pts)
        heater = create_driver(DeviceCfg(name="heater", **rtu), [heater_g])
        pump = create_driver(DeviceCfg(name="pump", unit_id=2, **rtu), [pump_g])
        assert heater._link is pump._link  # one port, one lock
        # other settings on the port (a reload fixing the baudrate while the old pipeline
        # still holds its link) is another link; inside one config `check` refuses it
        odd = create_driver(DeviceCfg(name="odd", **{**rtu, "baudrate": 9600}), [])
        assert odd._link is not heater._link
        for _ in range(5):
            a, b = await asyncio.gather(
                heater.read(heater.plan(heater_g)), pump.read(pump.plan(pump_g))
            )
            assert (a.quality == Quality.GOOD).all() and (b.quality == Quality.GOOD).all()
        assert heater.counters["connects"] + pump.counters["connects"] == 1
        await heater.close()
        await pump.close()
    finally:
        await server.stop()
        plant.close()


def _fields(p: Point) -> dict:
    return {f: getattr(p, f) for f in Point.__slots__}
