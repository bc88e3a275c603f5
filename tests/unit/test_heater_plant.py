"""The simulated heater: deterministic, physically sensible, dead time growing as flow falls."""

from __future__ import annotations

import math

import pytest

from hw_sim.plant.heater import HeaterParams, HeaterPlant


def _run(plant: HeaterPlant, seconds: float, dt: float) -> list[dict[str, float]]:
    out = []
    for _ in range(round(seconds / dt)):
        plant.step(dt)
        out.append(plant.outputs())
    return out


def test_deterministic_for_a_seed() -> None:
    a, b, c = HeaterPlant(seed=3), HeaterPlant(seed=3), HeaterPlant(seed=4)
    for p in (a, b, c):
        p.power_pct = 40.0
    ra, rb, rc = _run(a, 400, 0.5), _run(b, 400, 0.5), _run(c, 400, 0.5)
    assert ra == rb
    assert ra != rc


def test_steady_state_matches_energy_balance() -> None:
    plant = HeaterPlant(disturbances=False)
    plant.power_pct = 50.0
    _run(plant, 300, 0.5)
    p = plant.params
    expected = p.steady_temp_c(50.0, p.nominal_flow_lpm, p.nominal_inlet_c)
    assert plant.outputs()["tank_temp_true"] == pytest.approx(expected, abs=1e-3)
    assert expected > 40.0  # 20 kW into 10 L/min of water at 20 degC: ~ +28 K


def test_any_dt_gives_the_same_trajectory() -> None:
    coarse, fine = HeaterPlant(disturbances=False), HeaterPlant(disturbances=False)
    coarse.power_pct = fine.power_pct = 60.0
    _run(coarse, 30, 1.0)
    _run(fine, 30, 0.05)
    assert coarse.outputs()["tank_temp_true"] == pytest.approx(
        fine.outputs()["tank_temp_true"], abs=0.05
    )


def _dead_time(flow: float) -> float:
    """Time from a power step until the noise-free measurement moves by 0.05 K."""
    plant = HeaterPlant(HeaterParams(noise_std_c=0.0), disturbances=False)
    plant.set_disturbance(inlet_flow_lpm=flow, ramp=False)
    plant.settle(30.0)
    base = plant.outputs()["tank_temp"]
    plant.power_pct = 80.0
    for k in range(1, 2000):
        plant.step(0.05)
        if plant.outputs()["tank_temp"] - base > 0.05:
            return k * 0.05
    return math.inf


def test_measurement_delay_grows_as_flow_falls() -> None:
    fast, nominal, slow = _dead_time(15.0), _dead_time(10.0), _dead_time(5.0)
    assert fast < nominal < slow
    # pipe 0.5 L: 2 s at 15 L/min, 6 s at 5 L/min, plus element and sensor lags
    assert 2.0 < fast < nominal < slow
    assert slow - fast > 3.0


def test_gain_changes_with_operating_point() -> None:
    p = HeaterParams()
    gain_low = p.steady_temp_c(40, 5.0, 20) - p.steady_temp_c(30, 5.0, 20)
    gain_high = p.steady_temp_c(40, 15.0, 20) - p.steady_temp_c(30, 15.0, 20)
    assert gain_low > 2.5 * gain_high


def test_setpoint_step_settles_in_tens_of_seconds() -> None:
    plant = HeaterPlant(disturbances=False)
    plant.settle(30.0)
    start = plant.outputs()["tank_temp_true"]
    plant.power_pct = 50.0
    final = plant.params.steady_temp_c(50.0, 10.0, 20.0)
    trace = [o["tank_temp_true"] for o in _run(plant, 120, 0.5)]
    t98 = next(i for i, v in enumerate(trace) if abs(v - final) < 0.02 * abs(final - start))
    assert 20 <= t98 * 0.5 <= 120


def test_disturbances_follow_a_schedule_within_range() -> None:
    plant = HeaterPlant(seed=1)
    flows = [o["inlet_flow"] for o in _run(plant, 1200, 1.0)]
    p = plant.params
    assert max(flows) - min(flows) > 2.0
    assert min(flows) > p.flow_min_lpm - 0.5 and max(flows) < p.flow_max_lpm + 0.5


def test_element_degradation_and_valve_fault_move_the_plant() -> None:
    healthy, degraded = HeaterPlant(disturbances=False), HeaterPlant(disturbances=False)
    for p in (healthy, degraded):
        p.power_pct = 60.0
    degraded.element_health = 0.5
    _run(healthy, 200, 0.5)
    _run(degraded, 200, 0.5)
    assert degraded.outputs()["tank_temp_true"] < healthy.outputs()["tank_temp_true"] - 10
    valve = HeaterPlant(disturbances=False)
    valve.flow_factor = 0.5
    valve.step(60.0)
    assert valve.outputs()["inlet_flow"] == pytest.approx(5.0, abs=0.1)


def test_no_flow_holds_the_measurement_without_error() -> None:
    plant = HeaterPlant(HeaterParams(noise_std_c=0.0), disturbances=False)
    plant.flow_factor = 0.0
    plant.power_pct = 10.0
    _run(plant, 20, 0.5)
    assert math.isinf(plant.dead_time_s)
    assert math.isfinite(plant.outputs()["tank_temp"])


def test_scaled_params() -> None:
    p = HeaterParams().scaled(volume=1.2, power=0.8)
    assert p.tank_volume_l == pytest.approx(3.6)
    assert p.rated_power_kw == pytest.approx(32.0)
