"""The loop plants over real Modbus TCP: a plain pymodbus client reads the pv, writes the
command and sees the plant respond; `--speed` scales them; `python -m hw_sim --loops`."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymodbus.client import ModbusTcpClient

from hw_sim import pointmap
from tests.fixtures.ports import free_port
from tests.fixtures.sim import running_sim

ROOT = Path(__file__).resolve().parents[2]
F32 = ModbusTcpClient.DATATYPE.FLOAT32
LOOPS = ("surge", "exchanger")


def read_f32(client: ModbusTcpClient, name: str) -> float:
    p = pointmap.LOOP_BY_NAME[name]
    fn = client.read_input_registers if p.table == "input" else client.read_holding_registers
    rr = fn(p.address, count=2, device_id=p.unit_id)
    assert not rr.isError(), f"{name}: {rr}"
    return float(ModbusTcpClient.convert_from_registers(rr.registers, F32))


def write_f32(client: ModbusTcpClient, name: str, value: float) -> object:
    p = pointmap.LOOP_BY_NAME[name]
    regs = ModbusTcpClient.convert_to_registers(value, F32)
    return client.write_registers(p.address, regs, device_id=p.unit_id)


def _client(sim) -> ModbusTcpClient:
    client = ModbusTcpClient(sim.host, port=sim.port, timeout=2)
    assert client.connect()
    return client


@pytest.mark.parametrize(
    ("loop", "pv", "dist", "rise"),
    [("surge", "surge_level", "surge_draw_flow", 0.05), ("exchanger", "exchanger_outlet_temp",
      "exchanger_flow", 1.0)],
)  # fmt: skip
def test_read_pv_write_command_plant_responds(loop: str, pv: str, dist: str, rise: float) -> None:
    with running_sim(speed=20.0, loops=(loop,), loop_seed=11, loop_disturbances=False) as sim:
        client = _client(sim)
        y0 = read_f32(client, pv)
        u0 = read_f32(client, f"{loop}_valve_fb")
        assert read_f32(client, f"{loop}_valve_cmd") == pytest.approx(u0)
        assert read_f32(client, dist) > 0.0
        assert not write_f32(client, f"{loop}_valve_cmd", u0 + 8.0).isError()
        assert sim.plant.values()[f"{loop}_valve_cmd"] == pytest.approx(u0 + 8.0)
        assert read_f32(client, f"{loop}_valve_fb") == pytest.approx(u0 + 8.0)
        deadline = time.monotonic() + 15.0  # 300 s of plant time at most
        y = y0
        while time.monotonic() < deadline and y < y0 + rise:
            time.sleep(0.2)
            y = read_f32(client, pv)
        assert y >= y0 + rise, (y0, y)
        # back down: the command acts both ways
        assert not write_f32(client, f"{loop}_valve_cmd", u0 - 8.0).isError()
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline and y > y0 - rise:
            time.sleep(0.2)
            y = read_f32(client, pv)
        assert y <= y0 - rise, (y0, y)
        client.close()


def test_every_loop_point_matches_the_plant() -> None:
    with running_sim(realtime=False, loops=LOOPS, loop_seed=2) as sim:
        sim.plant.step(30.0)
        client = _client(sim)
        values = sim.plant.values()
        for p in pointmap.loop_points(LOOPS):
            if p.table == "coil":
                got = float(client.read_coils(p.address, count=1, device_id=p.unit_id).bits[0])
            elif p.table == "discrete":
                rr = client.read_discrete_inputs(p.address, count=1, device_id=p.unit_id)
                got = float(rr.bits[0])
            elif p.type == "uint16":
                fn = (
                    client.read_input_registers
                    if p.table == "input"
                    else client.read_holding_registers
                )
                got = float(fn(p.address, count=1, device_id=p.unit_id).registers[0])
            else:
                got = read_f32(client, p.name)
            assert got == pytest.approx(values[p.name], rel=1e-6, abs=1e-6), p.name
        # one read over the whole input block of a unit, as a planner would merge it
        rr = client.read_input_registers(0, count=16, device_id=pointmap.SURGE_UNIT)
        assert not rr.isError() and rr.registers[8:] == [0] * 8
        client.close()


def test_bad_requests_and_absent_units() -> None:
    with running_sim(realtime=False, loops=("surge",)) as sim:
        client = _client(sim)
        before = sim.plant.values()["surge_valve_cmd"]
        rr = write_f32(client, "surge_valve_cmd", 120.0)
        assert rr.isError() and rr.exception_code == 3
        assert sim.plant.values()["surge_valve_cmd"] == before
        rr = client.write_registers(0, [0, 0], device_id=pointmap.SURGE_UNIT)
        assert not rr.isError()  # 0.0 % is a valid command
        assert sim.plant.values()["surge_valve_fb"] == 0.0
        rr = client.write_register(10, 1, device_id=pointmap.SURGE_UNIT)  # unmapped holding
        assert rr.isError() and rr.exception_code == 2
        rr = client.read_input_registers(14, count=4, device_id=pointmap.SURGE_UNIT)
        assert rr.isError() and rr.exception_code == 2  # past the table
        # the exchanger is not enabled: its unit answers like an absent gateway target
        rr = client.read_input_registers(0, count=2, device_id=pointmap.EXCHANGER_UNIT)
        assert rr.isError() and rr.exception_code == 0x0B
        client.close()
    with running_sim(realtime=False) as sim:  # the default plant has no loop units
        client = _client(sim)
        for unit in (pointmap.SURGE_UNIT, pointmap.EXCHANGER_UNIT):
            rr = client.read_input_registers(0, count=2, device_id=unit)
            assert rr.isError() and rr.exception_code == 0x0B
        client.close()


def test_watchdog_over_modbus() -> None:
    with running_sim(speed=1.0, loops=("surge",)) as sim:
        client = _client(sim)
        hb = pointmap.LOOP_BY_NAME["surge_heartbeat"]
        write_f32(client, "surge_safe_output", 0.0)
        client.write_register(5, 500, device_id=pointmap.SURGE_UNIT)  # watchdog_timeout_ms
        write_f32(client, "surge_valve_cmd", 55.0)
        for beat in range(1, 5):
            client.write_register(hb.address, beat, device_id=hb.unit_id)
            time.sleep(0.15)
        rr = client.read_discrete_inputs(0, count=1, device_id=pointmap.SURGE_UNIT)
        assert rr.bits[0] is False
        time.sleep(1.0)  # the agent stops
        rr = client.read_discrete_inputs(0, count=1, device_id=pointmap.SURGE_UNIT)
        assert rr.bits[0] is True
        assert read_f32(client, "surge_valve_fb") == 0.0
        client.write_register(hb.address, 9, device_id=hb.unit_id)
        client.write_coil(0, True, device_id=pointmap.SURGE_UNIT)  # fault_reset
        rr = client.read_discrete_inputs(0, count=1, device_id=pointmap.SURGE_UNIT)
        assert rr.bits[0] is False
        assert read_f32(client, "surge_valve_fb") == 55.0
        client.close()


def test_speed_scales_the_loops() -> None:
    with running_sim(speed=25.0, loops=LOOPS, loop_disturbances=False) as sim:
        t0, w0 = sim.plant.t_s, time.monotonic()
        time.sleep(1.0)
        rate = (sim.plant.t_s - t0) / (time.monotonic() - w0)
        assert rate == pytest.approx(25.0, rel=0.2)
        for loop in sim.plant.loops.values():
            assert loop.model.t_s == pytest.approx(sim.plant.t_s, abs=0.5)


def test_cli_runs_the_loops() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hw_sim", "--no-opcua", "--modbus-port", str(port), "--speed",
         "10", "--loops", "surge,exchanger", "--loop-seed", "5"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        assert f"modbus tcp 127.0.0.1:{port}" in lines[0]
        assert "loop surge unit 3 seed 5" in lines[1]
        assert "loop exchanger unit 4 seed 5" in lines[2]
        assert "running seed=0 speed=10" in lines[3]
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=2)
        assert client.connect()
        t = read_f32(client, "exchanger_outlet_temp")
        assert 40.0 < t < 50.0  # starts at rest near 45 degC
        assert not write_f32(client, "surge_valve_cmd", 50.0).isError()
        assert read_f32(client, "surge_valve_fb") == 50.0
        client.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
