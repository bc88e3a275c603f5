"""The Acquirer against the simulated plant: real drivers, real servers on loopback."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from agent.acquire import Acquirer
from agent.config import load_config
from agent.metrics import Metrics
from agent.tags import compile_config
from drivers.base import Quality, WriteRefused

ROOT = Path(__file__).resolve().parents[2]


def sim_config(tmp_path: Path, modbus_port: int, opcua_endpoint: str) -> Path:
    """The shipped default config, pointed at the test's servers."""
    text = (ROOT / "config/edgeloop.yaml").read_text()
    text = text.replace("port: 5020", f"port: {modbus_port}")
    text = text.replace("opc.tcp://127.0.0.1:4840/edgeloop/sim", opcua_endpoint)
    path = tmp_path / "plant.yaml"
    path.write_text(text)
    return path


async def wait_for(pred, within_s: float, step: float = 0.02) -> bool:
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(step)
    return pred()


def group_quality(compiled, device: str) -> np.ndarray:
    idx = [i for i, d in enumerate(compiled.table.devices) if d == device]
    return compiled.table.quality[idx]


async def test_every_tag_of_the_default_config_reads_good(tmp_path, modbus_sim, opcua_server):
    compiled = compile_config(
        load_config(sim_config(tmp_path, modbus_sim.port, opcua_server.endpoint))
    )
    frames: list[tuple[str, int]] = []
    m = Metrics()
    t = compiled.table
    async with Acquirer(compiled, m, lambda g, ts: frames.append((g.name, ts))) as acq:
        ok = await wait_for(lambda: (t.quality == Quality.GOOD).all(), 8.0)
        bad = [n for n, q in zip(t.names, t.quality, strict=True) if q != Quality.GOOD]
        assert ok, f"not good: {bad}, health {acq.health()}"
        assert acq.health()["heater_plc"]["state"] == "up"
        assert acq.health()["pump_skid"]["state"] == "up"
    # values that do not move by themselves, straight from the plant
    plant = modbus_sim.plant.values()
    for name in ("temp_setpoint", "watchdog_timeout_ms", "heater_power", "safe_power"):
        assert t.raw[t.index[name]] == pytest.approx(plant[name], rel=1e-6), name
    assert t.texts[t.index["device_model"]] == "EDGELOOP-HTR-SIM"
    assert t.raw[t.index["firmware_version"]] == 0x0103
    assert {g.name for g in compiled.groups} <= {name for name, _ in frames}
    for name in ("edgeloop_polls_total", "edgeloop_poll_latency_seconds", "edgeloop_device_up"):
        assert name in m.emitted()


async def test_data_resumes_after_a_plc_restart(tmp_path, modbus_sim, opcua_server):
    path = sim_config(tmp_path, modbus_sim.port, opcua_server.endpoint)
    text = path.read_text().replace("backoff_max_s: 10.0", "backoff_max_s: 0.5")
    path.write_text(text)
    compiled = compile_config(load_config(path))
    m = Metrics()
    async with Acquirer(compiled, m) as acq:
        assert await wait_for(lambda: (group_quality(compiled, "heater_plc") == 0).all(), 5.0)
        await asyncio.to_thread(modbus_sim.stop_server)
        lost = await wait_for(
            lambda: (group_quality(compiled, "heater_plc") == Quality.COMM_LOST).all(), 5.0
        )
        assert lost, group_quality(compiled, "heater_plc")
        assert acq.health()["heater_plc"]["state"] in ("down", "connecting")
        assert m.get("edgeloop_device_up", device="heater_plc") == 0
        # the OPC UA device is another connection and keeps delivering
        assert (group_quality(compiled, "pump_skid") == Quality.GOOD).all()
        await asyncio.to_thread(modbus_sim.start_server)
        back = await wait_for(lambda: (group_quality(compiled, "heater_plc") == 0).all(), 8.0)
        assert back, acq.health()
        assert acq.health()["heater_plc"]["state"] == "up"
        assert m.get("edgeloop_reconnects_total", device="heater_plc") >= 1
        ts_before = compiled.table.ts_ns[compiled.table.index["tank_temp"]]
        await asyncio.sleep(0.5)
        assert compiled.table.ts_ns[compiled.table.index["tank_temp"]] > ts_before


async def test_opcua_data_resumes_after_a_server_restart(
    tmp_path, modbus_sim, opcua_server_factory
):
    env = opcua_server_factory()
    path = sim_config(tmp_path, modbus_sim.port, env.endpoint)
    text = path.read_text().replace("timeout_s: 2.0", "timeout_s: 1.0\n    backoff_max_s: 0.5")
    path.write_text(text)
    compiled = compile_config(load_config(path))
    async with Acquirer(compiled, Metrics(), devices=["pump_skid"]) as acq:
        assert await wait_for(lambda: (group_quality(compiled, "pump_skid") == 0).all(), 8.0)
        await asyncio.to_thread(env.server.stop)
        lost = await wait_for(
            lambda: (group_quality(compiled, "pump_skid") == Quality.COMM_LOST).all(), 10.0
        )
        assert lost, (group_quality(compiled, "pump_skid"), acq.health())
        await asyncio.to_thread(env.server.start)
        back = await wait_for(lambda: (group_quality(compiled, "pump_skid") == 0).all(), 15.0)
        assert back, acq.health()


async def test_writes_reach_the_plc_and_unsafe_writes_do_not(tmp_path, modbus_sim, opcua_server):
    compiled = compile_config(
        load_config(sim_config(tmp_path, modbus_sim.port, opcua_server.endpoint))
    )
    async with Acquirer(compiled, Metrics(), devices=["heater_plc"]) as acq:
        assert await wait_for(lambda: acq.health()["heater_plc"]["state"] == "up", 5.0)
        await acq.write("temp_setpoint", 61.5)
        assert modbus_sim.plant.values()["temp_setpoint"] == pytest.approx(61.5)
        with pytest.raises(WriteRefused):
            await acq.write("temp_setpoint", 96.0)  # above max 95
        with pytest.raises(WriteRefused):
            await acq.write("tank_temp", 20.0)  # a measurement
        assert modbus_sim.plant.values()["temp_setpoint"] == pytest.approx(61.5)
        t = compiled.table
        i = t.index["temp_setpoint"]
        assert await wait_for(lambda: t.raw[i] == pytest.approx(61.5), 2.0)
