"""The Acquirer survives a misbehaving PLC (hw_sim misbehaviour modes) and recovers."""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from agent.acquire import Acquirer
from agent.config import parse_config
from agent.metrics import Metrics
from agent.tags import compile_config
from drivers.base import Quality, reason_name

CONFIG = """
site: t
devices:
  - name: plc
    driver: modbus
    host: 127.0.0.1
    port: {port}
    timeout_s: 0.1
    retries: 0
    backoff_initial_s: 0.05
    backoff_max_s: 0.2
    poll_groups:
      - name: heater
        interval_ms: 100
        tags:
          - {{name: tank_temp, table: input, address: 0, type: float32}}
          - {{name: temp_setpoint, table: holding, address: 12, type: float32}}
      - name: pump
        interval_ms: 100
        tags:
          - {{name: pump_flow_mb, unit_id: 2, table: input, address: 12, type: float32}}
"""


async def until(pred, within_s: float) -> bool:
    for _ in range(int(within_s / 0.02)):
        if pred():
            return True
        await asyncio.sleep(0.02)
    return pred()


def q(compiled, group: str) -> np.ndarray:
    g = next(g for g in compiled.groups if g.name == group)
    return compiled.table.quality[g.start : g.stop]


def why(compiled, group: str | None = None) -> set[str]:
    """The reason names of a group's (or every) tag: each bad reading says why (issue 14)."""
    t = compiled.table
    sl = slice(None)
    if group is not None:
        g = next(g for g in compiled.groups if g.name == group)
        sl = slice(g.start, g.stop)
    return {reason_name(int(r)) for r in t.reason[sl]}


def setup(port: int):
    compiled = compile_config(parse_config(CONFIG.format(port=port)))
    return compiled, Metrics()


async def test_exception_responses_go_bad_and_recover(modbus_sim, caplog) -> None:
    compiled, m = setup(modbus_sim.port)
    caplog.set_level(logging.INFO, logger="edgeloop.acquire")
    async with Acquirer(compiled, m) as acq:
        assert await until(lambda: (q(compiled, "heater") == Quality.GOOD).all(), 5)
        modbus_sim.misbehave("exception", code=4)
        assert await until(lambda: (q(compiled, "heater") == Quality.BAD).all(), 3)
        assert await until(lambda: (compiled.table.quality == Quality.BAD).all(), 3)
        assert why(compiled) == {"modbus_exception_4_device_failure"}
        assert acq.health()["plc"]["not_good"] == {
            "modbus_exception_4_device_failure": {
                "count": 3,
                "tags": ["tank_temp", "temp_setpoint", "pump_flow_mb"],
            }
        }
        await asyncio.sleep(0.5)  # many failed polls ...
        episodes = [r for r in caplog.records if "plc/heater" in r.getMessage()]
        assert len(episodes) == 1  # ... one log line for the episode
        assert acq.health()["plc"]["state"] == "up"  # the device answers: no reconnect
        assert m.get("edgeloop_poll_errors_total", device="plc", group="heater") >= 3
        modbus_sim.behave()
        assert await until(lambda: (q(compiled, "heater") == Quality.GOOD).all(), 3)
        assert why(compiled, "heater") == {"none"}
        assert acq.health()["plc"]["not_good"] == {}
        assert any("recovered" in r.getMessage() for r in caplog.records)


async def test_silent_device_goes_comm_lost_and_resumes(modbus_sim) -> None:
    compiled, m = setup(modbus_sim.port)
    async with Acquirer(compiled, m) as acq:
        assert await until(lambda: (q(compiled, "heater") == Quality.GOOD).all(), 5)
        modbus_sim.misbehave("no_response")
        lost = await until(
            lambda: (
                (compiled.table.quality == Quality.COMM_LOST).all()
                and acq.health()["plc"]["state"] != "up"
            ),
            5,
        )
        assert lost, (compiled.table.quality, acq.health())
        assert why(compiled) == {"timeout"}
        modbus_sim.behave()
        assert await until(lambda: (compiled.table.quality == Quality.GOOD).all(), 5)
        assert acq.health()["plc"]["state"] == "up"


async def test_one_dead_unit_behind_a_gateway_does_not_cut_off_the_others(modbus_sim) -> None:
    compiled, m = setup(modbus_sim.port)
    async with Acquirer(compiled, m) as acq:
        assert await until(lambda: (compiled.table.quality == Quality.GOOD).all(), 5)
        modbus_sim.misbehave("no_response", units=[2])
        assert await until(lambda: (q(compiled, "pump") == Quality.COMM_LOST).all(), 3)
        assert why(compiled, "pump") == {"timeout"}
        polls = m.get("edgeloop_polls_total", device="plc", group="heater")
        await asyncio.sleep(0.6)
        # unit 1 keeps being read on the same connection, the device stays up
        assert m.get("edgeloop_polls_total", device="plc", group="heater") >= polls + 3
        assert (q(compiled, "heater") == Quality.GOOD).all()
        assert acq.health()["plc"]["state"] == "up"
        modbus_sim.behave()
        assert await until(lambda: (q(compiled, "pump") == Quality.GOOD).all(), 3)


async def test_dropped_connections_are_survived(modbus_sim) -> None:
    compiled, m = setup(modbus_sim.port)
    async with Acquirer(compiled, m) as acq:
        assert await until(lambda: (compiled.table.quality == Quality.GOOD).all(), 5)
        modbus_sim.misbehave("drop")  # every new connection is accepted and closed at once
        await asyncio.to_thread(modbus_sim.restart)  # ... and the current one goes too
        ok = await until(lambda: (compiled.table.quality == Quality.COMM_LOST).all(), 5)
        assert ok, (compiled.table.quality, acq.health(), m.render())
        assert why(compiled) == {"comm_lost"}, acq.health()
        await asyncio.sleep(0.5)
        modbus_sim.behave()
        assert await until(lambda: (compiled.table.quality == Quality.GOOD).all(), 5)
        assert acq.health()["plc"]["state"] == "up"
        assert m.get("edgeloop_reconnects_total", device="plc") >= 1


async def test_a_garbled_answer_is_a_protocol_error_and_unread_tags_say_no_data(
    modbus_sim,
) -> None:
    compiled, m = setup(modbus_sim.port)
    assert why(compiled) == {"no_data"}  # before the first poll: never read, not "bad"
    async with Acquirer(compiled, m) as acq:
        assert await until(lambda: (compiled.table.quality == Quality.GOOD).all(), 5)
        modbus_sim.misbehave("wrong_function")
        assert await until(lambda: (q(compiled, "heater") != Quality.GOOD).all(), 3)
        assert why(compiled, "heater") == {"protocol_error"}, acq.health()
        modbus_sim.behave()
        assert await until(lambda: (compiled.table.quality == Quality.GOOD).all(), 5)
