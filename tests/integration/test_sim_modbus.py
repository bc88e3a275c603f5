"""The simulated Modbus PLCs over real sockets / ptys, read with plain pymodbus clients.

Values are decoded here with pymodbus' own converters plus an explicit byte swap, not with
hw_sim.codec, so an encoding bug in the server cannot cancel out in the test.
"""

from __future__ import annotations

import math
import socket
import struct
import time

import pytest
from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from hw_sim import pointmap
from tests.fixtures.sim import SimHandle, running_sim, start_sim

_DT = {
    "int16": ModbusTcpClient.DATATYPE.INT16,
    "uint16": ModbusTcpClient.DATATYPE.UINT16,
    "uint32": ModbusTcpClient.DATATYPE.UINT32,
    "float32": ModbusTcpClient.DATATYPE.FLOAT32,
    "float64": ModbusTcpClient.DATATYPE.FLOAT64,
    "string": ModbusTcpClient.DATATYPE.STRING,
}
READ_FN = {
    "input": "read_input_registers",
    "holding": "read_holding_registers",
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
}


def decode(p: pointmap.SimPoint, regs: list[int]) -> float | str:
    if p.type == "bit":
        return float((regs[0] >> (p.bit or 0)) & 1)
    if p.byte_order == "little":
        regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
    val = ModbusTcpClient.convert_from_registers(regs, _DT[p.type], word_order=p.word_order)
    if isinstance(val, str):
        return val.rstrip("\x00")
    return float(val) * p.scale


def read_point(client, p: pointmap.SimPoint) -> float | str:
    fn = getattr(client, READ_FN[p.table or ""])
    rr = fn(p.address, count=p.width, device_id=p.unit_id)
    assert not rr.isError(), f"{p.name}: {rr}"
    if p.table in ("coil", "discrete"):
        return float(rr.bits[0])
    return decode(p, rr.registers)


def check_all_points(client, sim: SimHandle) -> int:
    values, texts = sim.plant.values(), sim.plant.texts()
    n = 0
    for p in pointmap.modbus_points():
        got = read_point(client, p)
        if p.type == "string":
            assert got == texts[p.name]
        else:
            want = values[p.name]
            tol = 1e-4 * max(abs(want), 1.0) if p.type == "float32" else p.scale / 2 + 1e-9
            assert got == pytest.approx(want, abs=tol), p.name
            if p.min is not None and p.max is not None:
                assert p.min <= got <= p.max, p.name
        n += 1
    return n


def _frozen_plant(**kw) -> SimHandle:
    sim = start_sim(realtime=False, **kw)
    sim.plant.write("heater_power", 40.0)
    sim.plant.step(30.0)  # counters, energy and temperatures away from zero
    return sim


def test_every_point_over_tcp() -> None:
    sim = _frozen_plant()
    try:
        client = ModbusTcpClient(sim.host, port=sim.port, timeout=2)
        assert client.connect()
        assert check_all_points(client, sim) == len(pointmap.modbus_points())
        # a sanity anchor that does not depend on plant.values(): the identity string
        assert read_point(client, pointmap.BY_NAME["device_model"]) == "EDGELOOP-HTR-SIM"
        assert read_point(client, pointmap.BY_NAME["heater_power"]) == 40.0
        client.close()
    finally:
        sim.close()


def test_every_point_over_rtu() -> None:
    with running_sim(rtu=True, realtime=False) as sim:
        sim.plant.write("heater_power", 60.0)
        sim.plant.step(20.0)
        client = ModbusSerialClient(sim.serial_port, baudrate=19200, timeout=2)
        assert client.connect()
        assert check_all_points(client, sim) == len(pointmap.modbus_points())
        client.close()


def test_pump_mirror_matches_opcua_signal_and_bench_block() -> None:
    with running_sim(realtime=False) as sim:
        client = ModbusTcpClient(sim.host, port=sim.port, timeout=2)
        client.connect()
        values = sim.plant.values()
        for p in pointmap.modbus_points(pointmap.PUMP_UNIT):
            assert read_point(client, p) == pytest.approx(values[p.source], rel=1e-6)
        rr = client.read_input_registers(100, count=120, device_id=pointmap.BENCH_UNIT)
        got = ModbusTcpClient.convert_from_registers(rr.registers, _DT["float32"])
        want = pointmap.bench_value(list(range(50, 110)), sim.plant.t_s)
        assert got == pytest.approx(list(want), rel=1e-6)
        # odd start address: words shifted by one register
        rr2 = client.read_input_registers(101, count=2, device_id=pointmap.BENCH_UNIT)
        assert rr2.registers == rr.registers[1:3]
        client.close()


def test_writes_move_the_plant() -> None:
    with running_sim(speed=20.0, heater_disturbances=False) as sim:
        client = ModbusTcpClient(sim.host, port=sim.port, timeout=2)
        client.connect()
        tank = pointmap.BY_NAME["tank_temp"]
        t0 = read_point(client, tank)
        regs = ModbusTcpClient.convert_to_registers(100.0, _DT["float32"])
        assert not client.write_registers(10, regs, device_id=1).isError()
        assert sim.plant.values()["heater_power"] == 100.0  # reached the plant at once
        time.sleep(2.0)  # 40 s of plant time
        t1 = read_point(client, tank)
        assert t1 > t0 + 10.0, (t0, t1)
        assert read_point(client, pointmap.BY_NAME["heater_power_fb"]) == 100.0
        # disabling the heater through its coil: applied power drops to 0
        assert not client.write_coil(0, False, device_id=1).isError()
        assert read_point(client, pointmap.BY_NAME["heater_power_fb"]) == 0.0
        assert read_point(client, pointmap.BY_NAME["heater_running"]) == 0.0
        # pump speed through the unit 2 mirror
        sp = pointmap.BY_NAME["pump_speed_setpoint_mb"]
        regs = ModbusTcpClient.convert_to_registers(40.0, _DT["float32"])
        assert not client.write_registers(sp.address, regs, device_id=2).isError()
        assert sim.plant.values()["pump_speed_setpoint"] == 40.0
        client.close()


def test_bad_writes_are_refused_and_change_nothing() -> None:
    with running_sim(realtime=False) as sim:
        client = ModbusTcpClient(sim.host, port=sim.port, timeout=2)
        client.connect()
        before = sim.plant.values()["heater_power"]
        regs = ModbusTcpClient.convert_to_registers(150.0, _DT["float32"])
        rr = client.write_registers(10, regs, device_id=1)
        assert rr.isError() and rr.exception_code == 3
        assert sim.plant.values()["heater_power"] == before
        rr = client.write_register(0, 1234, device_id=1)  # device_model is read-only
        assert rr.isError() and rr.exception_code == 2
        rr = client.write_register(50, 1, device_id=1)  # unmapped
        assert rr.isError() and rr.exception_code == 2
        rr = client.read_input_registers(98, count=4, device_id=1)  # past the table
        assert rr.isError() and rr.exception_code == 2
        rr = client.read_input_registers(0, count=2, device_id=7)  # no such unit
        assert rr.isError() and rr.exception_code == 0x0B
        client.close()


def test_plc_watchdog_takes_over_and_resets() -> None:
    with running_sim(speed=1.0) as sim:
        client = ModbusTcpClient(sim.host, port=sim.port, timeout=2)
        client.connect()
        f32 = ModbusTcpClient.DATATYPE.FLOAT32
        client.write_registers(14, ModbusTcpClient.convert_to_registers(10.0, f32), device_id=1)
        client.write_register(17, 600, device_id=1)  # watchdog_timeout_ms
        client.write_registers(10, ModbusTcpClient.convert_to_registers(80.0, f32), device_id=1)
        tripped = pointmap.BY_NAME["watchdog_tripped"]
        fb = pointmap.BY_NAME["heater_power_fb"]
        for hb in range(1, 6):  # a live agent: heartbeat changes every 0.2 s
            client.write_register(16, hb, device_id=1)
            time.sleep(0.2)
        assert read_point(client, tripped) == 0.0
        assert read_point(client, fb) == 80.0
        time.sleep(1.2)  # the agent stops: no heartbeat for 2 x timeout
        assert read_point(client, tripped) == 1.0
        assert read_point(client, fb) == 10.0
        status = read_point(client, pointmap.BY_NAME["status_word"])
        assert int(status) >> pointmap.STATUS_BITS["watchdog_tripped"] & 1
        # writing the same heartbeat value again does not prove life
        client.write_register(16, 5, device_id=1)
        assert read_point(client, tripped) == 1.0
        # the agent is back: heartbeat + fault_reset give control back
        client.write_register(16, 6, device_id=1)
        client.write_coil(1, True, device_id=1)
        assert read_point(client, tripped) == 0.0
        assert read_point(client, fb) == 80.0
        assert read_point(client, pointmap.BY_NAME["fault_reset"]) == 0.0  # self-clearing
        client.close()


# --- misbehaviour, seen by a plain client and on the wire -----------------------------------


def _raw_request(port: int, tid: int = 0x1234, unit: int = 1, timeout: float = 1.0) -> bytes:
    """FC4 read of 2 input registers at 0, raw MBAP; returns whatever comes back."""
    req = struct.pack(">HHHBBHH", tid, 0, 6, unit, 4, 0, 2)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(req)
        data = b""
        try:
            while len(data) < 13:
                chunk = s.recv(64)
                if not chunk:
                    break
                data += chunk
        except (TimeoutError, ConnectionResetError):  # silence / a dropped connection
            pass
        return data


def test_misbehaviour_on_the_wire(modbus_sim_shared: SimHandle) -> None:
    sim = modbus_sim_shared
    good = _raw_request(sim.port)
    assert len(good) == 13 and good[:2] == b"\x12\x34" and good[6] == 1 and good[7] == 4
    sim.misbehave("wrong_transaction_id")
    assert _raw_request(sim.port)[:2] == b"\x12\x35"
    sim.misbehave("wrong_unit_id")
    assert _raw_request(sim.port)[6] == 2
    sim.misbehave("truncate")
    assert 0 < len(_raw_request(sim.port, timeout=0.5)) < 13
    sim.misbehave("garbage")
    bad = _raw_request(sim.port)
    # MBAP header intact, PDU random (seeded, so this is not a coin toss): not a valid FC4 reply
    assert len(bad) == 13 and bad[:7] == good[:7] and bad[7:9] != b"\x04\x04"
    sim.misbehave("no_response")
    assert _raw_request(sim.port, timeout=0.3) == b""
    sim.misbehave("drop")
    assert _raw_request(sim.port, timeout=0.5) == b""
    sim.misbehave("exception", code=4, units=[2])  # only unit 2 misbehaves
    assert len(_raw_request(sim.port, unit=1)) == 13
    exc = _raw_request(sim.port, unit=2)
    assert exc[7] == 0x84 and exc[8] == 4
    sim.misbehave("wrong_function")  # FC4 request answered as FC3: well formed, wrong kind
    wrong = _raw_request(sim.port)
    assert wrong[7] == 3 and wrong[8] == 4 and len(wrong) == 13  # same 2 registers
    sim.misbehave("short_response")  # consistent frame, one register short
    short = _raw_request(sim.port, timeout=0.5)
    assert short[8] == 2 and len(short) == 11
    sim.misbehave("garbage", count=1)  # only the next request
    assert _raw_request(sim.port)[7:9] != b"\x04\x04"
    assert _raw_request(sim.port)[7] == 4
    sim.behave()


def test_delay_beyond_client_timeout(modbus_sim_shared: SimHandle) -> None:
    sim = modbus_sim_shared
    client = ModbusTcpClient(sim.host, port=sim.port, timeout=0.3, retries=0)
    assert client.connect()
    sim.misbehave("delay", delay_s=0.8)
    with pytest.raises(ModbusIOException):
        client.read_input_registers(0, count=2, device_id=1)
    sim.behave()
    client.close()


def test_dropped_connection_and_restart(modbus_sim_shared: SimHandle) -> None:
    sim = modbus_sim_shared
    sim.misbehave("drop")
    client = ModbusTcpClient(sim.host, port=sim.port, timeout=0.5, retries=0)
    client.connect()
    with pytest.raises((ConnectionException, ModbusIOException, OSError)):
        client.read_input_registers(0, count=2, device_id=1)
    client.close()
    sim.behave()
    client = ModbusTcpClient(sim.host, port=sim.port, timeout=0.5, retries=0)
    assert client.connect()
    sim.stop_server()
    with pytest.raises((ConnectionException, ModbusIOException, OSError)):
        client.read_input_registers(0, count=2, device_id=1)
    client.close()
    assert not ModbusTcpClient(sim.host, port=sim.port, timeout=0.5).connect()
    sim.start_server()  # same port
    client = ModbusTcpClient(sim.host, port=sim.port, timeout=1)
    assert client.connect()
    rr = client.read_input_registers(0, count=2, device_id=1)
    assert not rr.isError()
    assert math.isfinite(decode(pointmap.BY_NAME["tank_temp"], rr.registers))
    client.close()


def test_faults_appear_in_served_values(sim_faults_log) -> None:
    from hw_sim.faults import read_ground_truth

    with running_sim(realtime=False, faults_log=sim_faults_log) as sim:
        client = ModbusTcpClient(sim.host, port=sim.port, timeout=2)
        client.connect()
        sim.plant.inject({"kind": "dropout", "signal": "tank_temp", "at_s": 1.0, "duration_s": 5.0})
        sim.plant.inject(
            {"kind": "dropout", "signal": "ambient_temp", "at_s": 1.0, "duration_s": 5.0}
        )
        sim.plant.step(2.0)
        assert math.isnan(read_point(client, pointmap.BY_NAME["tank_temp"]))
        rr = client.read_input_registers(8, count=1, device_id=1)
        assert rr.registers == [0x8000]  # int16 invalid marker
        sim.plant.step(5.0)
        assert math.isfinite(read_point(client, pointmap.BY_NAME["tank_temp"]))
        client.close()
    truth = read_ground_truth(sim_faults_log)
    assert [t["kind"] for t in truth] == ["dropout", "dropout"]
    assert truth[0]["signals"] == ["tank_temp"] and truth[0]["end_s"] is not None


def test_rtu_misbehaviour(rtu_sim: SimHandle) -> None:
    client = ModbusSerialClient(rtu_sim.serial_port, baudrate=19200, timeout=0.5, retries=0)
    assert client.connect()
    rtu_sim.misbehave("exception", code=6)
    rr = client.read_input_registers(0, count=2, device_id=1)
    assert rr.isError() and rr.exception_code == 6
    rtu_sim.misbehave("garbage", count=1)  # bad CRC: the client must not accept it
    with pytest.raises(ModbusIOException):
        client.read_input_registers(0, count=2, device_id=1)
    time.sleep(0.2)
    rr = client.read_input_registers(0, count=2, device_id=1)
    assert not rr.isError()
    client.close()
