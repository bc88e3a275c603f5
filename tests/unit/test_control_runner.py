"""ControlRunner over a real TagTable: writes, heartbeat, failed/refused writes, setpoint and
mode commands, shadow statistics, metrics; the plant is the pure heater model stepped in
process (the Modbus round trip is in tests/integration/test_control_closed_loop.py)."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from agent.control.runner import ControlError, ControlRunner
from agent.control.settings import ControlConfig
from agent.metrics import Metrics
from agent.tags import TagTable
from drivers.base import Point, WriteRefused
from hw_sim.plant.heater import HeaterPlant

POINTS = [
    Point("tank_temp", 0, "float32", min=0.0, max=120.0),
    Point("inlet_flow", 1, "float32"),
    Point("inlet_temp", 2, "float32"),
    Point("heater_power", 3, "float32", writable=True, min=0.0, max=100.0, max_rate_per_s=25.0),
    Point("heartbeat", 4, "uint16", writable=True, min=0.0, max=65535.0),
    Point("temp_setpoint", 5, "float32", writable=True, min=0.0, max=95.0),
    Point("ambient_temp", 6, "float32"),
    Point("aux_out", 7, "float32", writable=True),  # writable but unbounded
]
LOOP = {
    "name": "tank",
    "period_ms": 500,
    "model": "heater_policy.tflite",
    "inputs": {"pv": "tank_temp", "flow": "inlet_flow", "inlet_temp": "inlet_temp"},
    "output": "heater_power",
    "setpoint": {"value": 50.0, "min": 30.0, "max": 80.0},
    "mode": "auto",
    "interlocks": {"healthy_s": 2.0},
    "heartbeat": {"tag": "heartbeat"},
}


class Rig:
    """Tag table fed from the heater model; `write` records, fails or refuses on demand."""

    def __init__(self, **loop: object) -> None:
        self.table = TagTable.from_points(POINTS, ["plc"] * len(POINTS))
        self.plant = HeaterPlant(seed=5, disturbances=False)
        self.plant.settle(0.0, temp_c=45.0)
        self.writes: list[tuple[str, float]] = []
        self.roles: list[tuple[str, str | None]] = []
        self.events: list[tuple[str, dict]] = []
        self.fail: Exception | None = None
        self.metrics = Metrics()
        cfg = ControlConfig.model_validate({"loops": [{**LOOP, **loop}]})
        self.runner = ControlRunner(
            cfg, self.table, self.write, self.metrics, lambda k, p: self.events.append((k, p))
        )
        self.lp = self.runner.loops["tank"]
        self.lp.state.last_u = self.plant.power_pct
        self.acquire()

    async def write(self, tag: str, value: float, role: str | None = None) -> None:
        self.roles.append((tag, role))
        if self.fail is not None:
            raise self.fail
        self.writes.append((tag, value))
        if tag == "heater_power":
            self.plant.power_pct = value

    def acquire(self) -> None:
        o = self.plant.outputs()
        t = self.table
        now = time.time_ns()
        for name in ("tank_temp", "inlet_flow", "inlet_temp", "heater_power"):
            i = t.index[name]
            t.raw[i] = t.value[i] = o[name]
            t.quality[i] = 0
            t.ts_ns[i] = now

    async def periods(self, n: int) -> None:
        for _ in range(n):
            await self.runner.period(self.lp)
            self.plant.step(0.5)
            self.acquire()


async def test_writes_heartbeat_and_metrics() -> None:
    rig = Rig()
    await rig.periods(10)
    power = [v for t, v in rig.writes if t == "heater_power"]
    beats = [v for t, v in rig.writes if t == "heartbeat"]
    assert len(power) == 10 and beats == [float(k) for k in range(1, 11)]
    m = rig.metrics
    assert m.get("edgeloop_control_writes_total", loop="tank") == 20
    assert m.get("edgeloop_control_mode", loop="tank") == 3  # model active after healthy_s
    assert {"edgeloop_control_mode", "edgeloop_control_step_seconds"} <= m.emitted()
    st = rig.runner.status()["tank"]
    assert st["active"] == "model" and st["step_us"] > 0


async def test_failed_write_moves_to_fallback_next_period_and_is_counted() -> None:
    rig = Rig()
    await rig.periods(8)
    assert rig.lp.last.active == "model"
    rig.fail = TimeoutError("device gone")
    await rig.periods(1)
    rig.fail = None
    await rig.periods(1)
    assert rig.lp.last.active == "fallback"
    assert "write_failed" in rig.lp.last.reasons
    m = rig.metrics
    assert m.get("edgeloop_control_fallbacks_total", loop="tank", reason="write_failed") == 1
    assert m.get("edgeloop_control_write_errors_total", loop="tank") == 2  # output + heartbeat
    assert any(k == "control_fallback" for k, _ in rig.events)


async def test_refused_write_is_counted_as_refused() -> None:
    rig = Rig()
    rig.fail = WriteRefused("tag 'heater_power' is not writable")
    await rig.periods(2)
    assert rig.metrics.get("edgeloop_control_refused_total", loop="tank") >= 2


async def test_stale_inputs_fall_back_within_one_period() -> None:
    rig = Rig()
    await rig.periods(8)
    rig.table.ts_ns[rig.table.index["inlet_flow"]] -= 5 * 10**9  # 10 periods old
    await rig.runner.period(rig.lp)
    assert rig.lp.last.active == "fallback" and "stale_input" in rig.lp.last.reasons


async def test_setpoint_commands() -> None:
    rig = Rig()
    rig.runner.set_setpoint("tank", 60.0)
    await rig.periods(1)
    assert rig.runner.status()["tank"]["setpoint"] == 60.0
    with pytest.raises(ValueError, match="outside"):
        rig.runner.set_setpoint("tank", 95.0)
    with pytest.raises(ValueError):
        rig.runner.set_setpoint("tank", math.nan)
    with pytest.raises(KeyError):
        rig.runner.set_setpoint("nope", 50.0)
    rig.runner.set_setpoint("tank", None)
    await rig.periods(1)
    assert rig.runner.status()["tank"]["setpoint"] == 50.0


async def test_setpoint_from_a_stale_tag_is_not_replayed() -> None:
    rig = Rig(setpoint={"tag": "temp_setpoint", "min": 30.0, "max": 80.0})
    i = rig.table.index["temp_setpoint"]
    rig.table.value[i], rig.table.quality[i], rig.table.ts_ns[i] = 55.0, 0, time.time_ns()
    await rig.periods(1)
    assert rig.lp.sp_last == 55.0
    # the tag goes stale holding a new value: the loop keeps the last good setpoint
    rig.table.value[i], rig.table.ts_ns[i] = 75.0, time.time_ns() - 10 * 10**9
    await rig.periods(1)
    assert rig.lp.sp_last == 55.0
    rig.table.value[i], rig.table.ts_ns[i] = 99.0, time.time_ns()  # clamped to max
    await rig.periods(1)
    assert rig.lp.sp_last == 80.0


async def test_modes() -> None:
    rig = Rig(mode="shadow")
    await rig.periods(6)
    st = rig.runner.status()["tank"]
    assert st["active"] == "fallback" and st["shadow"]["periods"] == 6
    actions = [p for k, p in rig.events if k == "control_action"]
    assert len(actions) == 6
    assert all(p["active"] == "fallback" and p["model"] is not None for p in actions)
    assert all(0.0 <= p["mv"] <= 100.0 for p in actions)
    rig.runner.set_mode("tank", "manual")
    n = len(rig.writes)
    await rig.periods(2)
    assert rig.lp.last.active == "manual"
    rig.runner.set_mode("tank", "off")
    n = len([w for w in rig.writes if w[0] == "heater_power"])
    await rig.periods(2)
    assert len([w for w in rig.writes if w[0] == "heater_power"]) == n  # off: no output writes
    with pytest.raises(ValueError):
        rig.runner.set_mode("tank", "turbo")


def test_start_up_refusals() -> None:
    with pytest.raises(ControlError, match="not writable"):
        Rig(output="inlet_temp")
    with pytest.raises(ControlError, match="finite bounds"):
        Rig(output="aux_out")
    with pytest.raises(ControlError, match="period_ms"):
        Rig(period_ms=200)
    with pytest.raises(ControlError, match="not in the tag table"):
        Rig(inputs={"pv": "tank_temperature"})


async def test_run_schedules_periods_and_stops() -> None:
    rig = Rig(mode="shadow", period_ms=500)
    rig.lp.cfg = rig.lp.cfg.model_copy(update={"period_ms": 20})  # fast clock for the test
    task = asyncio.create_task(rig.runner.run())
    await asyncio.sleep(0.5)
    await rig.runner.stop()
    await asyncio.wait_for(task, 2.0)
    n = rig.lp.period_no
    assert 15 <= n <= 30  # ~25 periods of 20 ms in 0.5 s, no catch-up bursts


async def test_readback_mismatch_falls_back() -> None:
    rig = Rig(readback=True)
    await rig.periods(8)
    assert rig.lp.last.active == "model"

    async def clamping_plc(
        tag: str, value: float, role: str | None = None
    ) -> None:  # the PLC applies its own limit
        rig.writes.append((tag, value))
        if tag == "heater_power":
            rig.plant.power_pct = min(value, 10.0)

    rig.runner._write = clamping_plc
    await rig.periods(3)
    assert rig.lp.last.active == "fallback"
    assert "readback_mismatch" in rig.lp.last.reasons
    n = rig.metrics.get("edgeloop_control_fallbacks_total", loop="tank", reason="readback_mismatch")
    assert n == 1


async def test_writes_carry_their_role_for_the_gate() -> None:
    rig = Rig()
    await rig.periods(2)
    assert ("heater_power", "output:tank") in rig.roles
    assert ("heartbeat", "heartbeat:tank") in rig.roles
    assert {r for _, r in rig.roles} == {"output:tank", "heartbeat:tank"}


async def test_blind_hold_stops_the_heartbeat_after_max_blind_s(caplog) -> None:
    """Issue 11 item 4: with only reads failing the heartbeat went on, the PLC's watchdog never
    tripped and the output was held blind with no time limit."""
    rig = Rig(interlocks={"healthy_s": 2.0, "max_blind_s": 0.2})
    await rig.periods(3)
    t = rig.table
    t.quality[t.index["tank_temp"]] = 3  # reads fail: comm lost
    beats_before = len([w for w in rig.writes if w[0] == "heartbeat"])
    for _ in range(6):
        await rig.runner.period(rig.lp)
        await asyncio.sleep(0.06)
    beats = len([w for w in rig.writes if w[0] == "heartbeat"])
    assert beats - beats_before <= 4  # fed only until max_blind_s, then withheld
    assert rig.runner.status()["tank"]["heartbeat"] == "withheld"
    n = beats
    await rig.runner.period(rig.lp)
    assert len([w for w in rig.writes if w[0] == "heartbeat"]) == n
    assert "heartbeat stopped" in caplog.text
    rig.acquire()  # the measurement is back: so is the heartbeat
    await rig.runner.period(rig.lp)
    assert len([w for w in rig.writes if w[0] == "heartbeat"]) == n + 1
    assert rig.runner.status()["tank"]["heartbeat"] == "running"


async def test_a_crashing_period_is_logged_counted_reported_and_retried(caplog) -> None:
    """Issue 11 item 5: the control task died in its first period with no log line,
    /readyz still ready and the heartbeat frozen."""
    rig = Rig()
    boom = {"n": 3}
    real = rig.runner.step.compute

    def compute(lp, now_ns):  # type: ignore[no-untyped-def]
        if boom["n"] > 0:  # injected fault: nothing real raises here any more
            boom["n"] -= 1
            raise OverflowError("cannot convert float infinity to integer")
        return real(lp, now_ns)

    rig.runner.step.compute = compute  # type: ignore[method-assign]
    rig.lp.cfg = rig.lp.cfg.model_copy(update={"period_ms": 20})
    task = asyncio.create_task(rig.runner.run())
    for _ in range(100):
        await asyncio.sleep(0.02)
        if rig.runner.status()["tank"]["crashes"] >= 1 and not rig.runner.healthy():
            break
    assert not rig.runner.healthy()
    assert "OverflowError" in (rig.runner.status()["tank"]["failing"] or "")
    assert not [w for w in rig.writes if w[0] == "heartbeat"]  # no heartbeat while failing
    assert "Traceback" in caplog.text and "period failed" in caplog.text
    assert rig.metrics.get("edgeloop_component_crashes_total", component="control") >= 1
    assert any(k == "component_crash" for k, _ in rig.events)
    for _ in range(300):  # backoff 20, 40, 80 ms: then periods complete again
        await asyncio.sleep(0.02)
        if rig.runner.healthy() and [w for w in rig.writes if w[0] == "heartbeat"]:
            break
    assert rig.runner.healthy()
    assert [w for w in rig.writes if w[0] == "heartbeat"]
    assert rig.metrics.get("edgeloop_component_up", component="control") == 1
    await rig.runner.stop()
    await asyncio.wait_for(task, 2.0)
