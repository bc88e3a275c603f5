"""Pump skid model: physically coupled, deterministic, steppable at any dt."""

from __future__ import annotations

import pytest

from hw_sim.plant.pump import PumpSkid


def settled(**attrs: float) -> PumpSkid:
    p = PumpSkid(seed=3)
    for k, v in attrs.items():
        setattr(p, k, v)
    for _ in range(120):
        p.step(5.0)
    return p


def test_pump_curve_against_valve() -> None:
    base = settled().true_state()
    throttled = settled(valve_position_pct=30.0).true_state()
    assert throttled["flow_meter_m3h"] < 0.5 * base["flow_meter_m3h"]
    assert throttled["head_bar"] > base["head_bar"]  # back up the pump curve
    assert throttled["current_a"] < base["current_a"]  # less hydraulic power
    fast = settled(speed_setpoint_pct=100.0).true_state()
    assert fast["flow_meter_m3h"] > base["flow_meter_m3h"]
    assert fast["current_a"] > base["current_a"]
    assert fast["motor_temp_c"] > base["motor_temp_c"]
    stopped = settled(speed_setpoint_pct=0.0).true_state()
    assert stopped["flow_meter_m3h"] == pytest.approx(0.0, abs=1e-6)
    assert stopped["current_a"] == pytest.approx(0.0, abs=1e-3)


def test_fault_inputs_move_the_right_signals() -> None:
    base = settled().outputs()
    imb = settled(imbalance_mm_s=5.0).outputs()
    assert imb["pump_vibration_x"] > base["pump_vibration_x"] + 2.0
    assert imb["pump_vibration_x"] - base["pump_vibration_x"] > (
        imb["pump_vibration_y"] - base["pump_vibration_y"]
    )
    leak = settled(leak=0.5).outputs()
    assert leak["pump_flow"] < base["pump_flow"] - 2.0
    assert leak["pump_discharge_pressure"] < base["pump_discharge_pressure"] - 0.2
    cav = settled(cavitation=0.9).true_state()
    assert cav["cavitation"] > 0.5
    assert cav["flow_meter_m3h"] < settled().true_state()["flow_meter_m3h"]


def test_deterministic_for_a_seed() -> None:
    a, b, c = PumpSkid(seed=1), PumpSkid(seed=1), PumpSkid(seed=2)
    for _ in range(50):
        for p in (a, b, c):
            p.step(0.1)
    assert a.outputs() == b.outputs()
    assert a.outputs() != c.outputs()


def test_any_dt_gives_the_same_trajectory() -> None:
    coarse, fine = settled(), settled()
    for p in (coarse, fine):
        p.speed_setpoint_pct = 95.0
        p.valve_position_pct = 50.0
    coarse.step(30.0)
    for _ in range(300):
        fine.step(0.1)
    tc, tf = coarse.true_state(), fine.true_state()
    for key in ("speed", "valve", "flow_meter_m3h", "head_bar", "current_a"):
        assert tc[key] == pytest.approx(tf[key], rel=0.02), key
