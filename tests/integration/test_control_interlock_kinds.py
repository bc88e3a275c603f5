"""What trips a control interlock, on the real stack: hw_sim heater over Modbus TCP, the
Acquirer, the kernel and the ControlRunner wired as agent/service.py wires them.

A measured disturbance that steps (the inlet water 22.6 -> 19.4 degC) is the process moving:
the kernel sees it (the per-tag drift alarm the config asks for goes on), but by default the
loop stays on its model.  A stuck inlet temperature sensor is a sensor fault and still moves
the loop to its fallback.  `interlocks.on_anomaly: any` keeps the old strict behaviour, where
the step alone pushed the loop to its fallback (issue 13).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent import names as N
from agent.kernel import flags as F
from agent.kernel import pertag as pt
from tests.fixtures.sim import start_sim
from tests.integration.test_control_closed_loop import HEATER_DEVICE, wait_for
from tests.integration.test_control_closed_loop import Stack as _Stack

CONFIG = (
    "site: interlock-test\n"
    + HEATER_DEVICE
    + """kernel:
  tags:
    # as the demo config: a drifting model input should not go unnoticed
    inlet_temp: {{alarm_on: [stuck, out_of_range, drift], stuck_samples: 20}}
control:
  loops:
    - name: tank_temperature
      period_ms: 500
      model: heater_policy.tflite
      inputs: {{pv: tank_temp, flow: inlet_flow, inlet_temp: inlet_temp}}
      output: heater_power
      setpoint: {{value: 45, min: 30, max: 80}}
      mode: auto
      interlocks: {{max_input_age_periods: 3, healthy_s: 1.0{extra}}}
      heartbeat: {{tag: heartbeat}}
"""
)
LOOP = "tank_temperature"


class Stack(_Stack):
    """The closed-loop test's stack, asked about alarms and fallbacks."""

    def tag_alarm(self, name: str) -> bool:
        return any(
            e["source"] == name and e["kind"] == N.EVENT_ANOMALY_ON for e in self.kernel_events
        )

    def anomaly_fallbacks(self) -> float:
        return self.metrics.get("edgeloop_control_fallbacks_total", loop=LOOP, reason="anomaly")


def _config(tmp_path: Path, port: int, on_anomaly: str | None) -> Path:
    p = tmp_path / "control.yaml"
    extra = "" if on_anomaly is None else f", on_anomaly: {on_anomaly}"
    p.write_text(CONFIG.format(port=port, extra=extra))
    return p


@pytest.fixture
def sim():  # type: ignore[no-untyped-def]
    handle = start_sim(seed=3, heater_disturbances=False)
    with handle.plant._lock:  # steady at 45 degC with the inlet water at 22.6 degC
        handle.plant.heater.set_disturbance(inlet_temp_c=22.6, ramp=False)
        handle.plant.heater.settle(0.0, temp_c=45.0)
    handle.plant.write("heater_power", handle.plant.heater.power_pct)
    yield handle
    handle.close()


async def _on_model_then(stack: Stack, sim: Any, act: Any, until: Any, then_s: float) -> Any:
    """Start the loop, wait until the model drives, `act()`, wait (bounded) for `until()`,
    then run `then_s` more seconds."""
    q = stack.table.quality
    assert await wait_for(lambda: (q == 0).all(), 5.0)
    task = asyncio.create_task(stack.runner.run())
    lp = stack.runner.loops[LOOP]
    try:
        assert await wait_for(lambda: lp.last is not None and lp.last.active == "model", 15)
        # the per-tag stage has learned inlet_temp's noise before the disturbance arrives
        seen = stack.kernel.state.I[:, pt.I_NSEEN]
        assert await wait_for(lambda: seen[stack.table.index["inlet_temp"]] > 60, 20)
        assert not stack.tag_alarm("inlet_temp") and stack.anomaly_fallbacks() == 0
        act()
        await wait_for(until, 30.0)
        await wait_for(lambda: False, then_s)
    finally:
        await stack.runner.stop()
        await asyncio.wait_for(task, 5.0)
    return lp


def _step_inlet(sim: Any) -> None:
    with sim.plant._lock:
        sim.plant.heater.set_disturbance(inlet_temp_c=19.4, ramp=False)


async def test_a_measured_disturbance_step_keeps_the_loop_on_its_model(tmp_path, sim) -> None:  # type: ignore[no-untyped-def]
    stack = Stack(_config(tmp_path, sim.port, None))
    async with stack.acq:
        lp = await _on_model_then(
            stack, sim, lambda: _step_inlet(sim), lambda: stack.tag_alarm("inlet_temp"), 4.0
        )
    # the kernel did see the step (the drift alarm the config asks for) ...
    assert stack.tag_alarm("inlet_temp"), stack.kernel_events
    # ... and the loop stayed on the model through it
    assert stack.anomaly_fallbacks() == 0
    assert not [p for k, p in stack.events if k == N.EVENT_CONTROL_FALLBACK], stack.events
    assert lp.last.active == "model", lp.last


async def test_strict_setting_falls_back_on_the_same_step(tmp_path, sim) -> None:  # type: ignore[no-untyped-def]
    """`on_anomaly: any`: the behaviour before issue 13, every per-tag alarm trips."""
    stack = Stack(_config(tmp_path, sim.port, "any"))
    async with stack.acq:
        await _on_model_then(
            stack, sim, lambda: _step_inlet(sim), lambda: stack.anomaly_fallbacks() > 0, 0.0
        )
    assert stack.tag_alarm("inlet_temp")
    assert stack.anomaly_fallbacks() >= 1


async def test_a_stuck_disturbance_sensor_still_falls_back(tmp_path, sim) -> None:  # type: ignore[no-untyped-def]
    stack = Stack(_config(tmp_path, sim.port, None))

    def stick() -> None:
        sim.plant.inject({"kind": "stuck", "signal": "inlet_temp", "at_s": sim.plant.t_s})

    async with stack.acq:
        lp = await _on_model_then(stack, sim, stick, lambda: stack.anomaly_fallbacks() > 0, 1.0)
    i = stack.table.index["inlet_temp"]
    assert stack.tag_alarm("inlet_temp")
    assert int(stack.table.flags[i]) & F.STUCK
    assert stack.anomaly_fallbacks() >= 1
    assert lp.last.active == "fallback" and "anomaly" in lp.last.reasons, lp.last
    assert np.isfinite(stack.table.value[i])
