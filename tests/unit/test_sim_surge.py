"""Surge tank level loop: parameters from the seed, a real nonlinearity, a moving disturbance."""

from __future__ import annotations

import math
import statistics

import pytest

from hw_sim.plant.surge import OPENING_MARGIN_PCT, OPERATING_RANGE_M, SurgeParams, SurgePlant

SEEDS = range(40)


def _step_gain(seed: int, level_m: float, du_pct: float = 1.0) -> float:
    """Steady-state gain (m per %) measured by a step test on the dynamic model."""
    plant = SurgePlant(seed=seed, disturbances=False)
    plant.settle(level_m=level_m)
    y0 = plant.true_state()["level"]
    plant.valve_pct += du_pct
    for _ in range(800):  # 800 s: > 10 time constants of every seed
        plant.step(1.0)
    return (plant.true_state()["level"] - y0) / du_pct


def test_parameters_are_drawn_from_the_seed() -> None:
    assert SurgeParams.draw(3) == SurgeParams.draw(3)
    drawn = [SurgeParams.draw(s) for s in SEEDS]
    assert len(set(drawn)) == len(drawn)
    assert SurgePlant(seed=5).params == SurgeParams.draw(5)
    assert SurgeParams() not in drawn  # the defaults are never a seed's plant


@pytest.mark.parametrize(
    ("quantity", "factor"),
    [("gain", 1.8), ("tau", 1.8), ("dead", 1.8)],
)
def test_parameters_vary_over_realistic_ranges(quantity: str, factor: float) -> None:
    vals = []
    for s in SEEDS:
        p = SurgeParams.draw(s)
        if quantity == "gain":
            vals.append(p.gain_m_per_pct(p.nominal_level_m, p.draw_nominal_lps))
        elif quantity == "tau":
            vals.append(p.time_constant_s(p.nominal_level_m))
        else:
            vals.append(p.lag_sum_s)
    assert all(v > 0 and math.isfinite(v) for v in vals)
    assert max(vals) / min(vals) >= factor, (quantity, min(vals), max(vals))
    p = [SurgeParams.draw(s) for s in SEEDS]
    assert all(10.0 <= x.time_constant_s(1.0) <= 60.0 for x in p)
    assert all(2.5 <= x.lag_sum_s <= 9.0 for x in p)


def test_every_seed_holds_the_operating_range() -> None:
    lo, hi = OPERATING_RANGE_M
    for s in SEEDS:
        p = SurgeParams.draw(s)
        for level in (lo, hi):
            for draw in (p.draw_min_lps, p.draw_max_lps):
                x = p.steady_opening_pct(level, draw)
                assert OPENING_MARGIN_PCT[0] <= x <= OPENING_MARGIN_PCT[1], (s, level, draw)
                assert p.steady_level_m(x, draw) == pytest.approx(level, abs=1e-6)


def test_equal_percentage_valve() -> None:
    p = SurgeParams.draw(1)
    assert p.valve_characteristic(0.0) == 0.0
    assert p.valve_characteristic(1.0) == pytest.approx(1.0)
    # inherent characteristic: the slope grows with the opening (equal percentage)
    slopes = [p.valve_characteristic(x + 0.05) - p.valve_characteristic(x) for x in (0.1, 0.5, 0.9)]
    assert slopes[0] < slopes[1] < slopes[2]
    # back-pressure of the level reduces the flow at the same opening
    assert p.valve_flow_lps(0.5, 1.8) < p.valve_flow_lps(0.5, 0.2)


@pytest.mark.parametrize("seed", [0, 7, 23])
def test_step_gain_changes_with_the_operating_point(seed: int) -> None:
    p = SurgeParams.draw(seed)
    low, high = _step_gain(seed, 0.5), _step_gain(seed, 1.5)
    # the dynamic model agrees with the static relation ...
    assert low == pytest.approx(p.gain_m_per_pct(0.5, p.draw_nominal_lps), rel=0.15)
    assert high == pytest.approx(p.gain_m_per_pct(1.5, p.draw_nominal_lps), rel=0.15)
    # ... and the gain at a high level is far from the gain at a low level
    assert high / low > 1.35, (low, high)


def test_step_gain_changes_across_seeds() -> None:
    gains = [_step_gain(s, 1.0) for s in (0, 1, 2, 3, 4, 5, 6, 7)]
    assert max(gains) / min(gains) > 1.4, gains


def test_settle_is_a_steady_state() -> None:
    plant = SurgePlant(seed=4, disturbances=False)
    plant.settle(level_m=1.3)
    assert plant.valve_pct == pytest.approx(
        plant.params.steady_opening_pct(1.3, plant.params.draw_nominal_lps)
    )
    for _ in range(300):
        plant.step(1.0)
    assert plant.true_state()["level"] == pytest.approx(1.3, abs=2e-3)
    plant.settle(valve_pct=40.0)
    lv = plant.true_state()["level"]
    for _ in range(300):
        plant.step(1.0)
    assert plant.true_state()["level"] == pytest.approx(lv, abs=2e-3)


def test_dead_time_and_lags_delay_the_response() -> None:
    plant = SurgePlant(seed=2, disturbances=False)
    y0 = plant.true_state()["level"]
    plant.valve_pct += 5.0
    theta = plant.params.actuator_dead_time_s
    t = 0.0
    while t < theta - 0.2:
        plant.step(0.1)
        t += 0.1
    assert plant.true_state()["level"] == pytest.approx(y0, abs=1e-9)  # nothing yet
    for _ in range(50):
        plant.step(0.1)
    assert plant.true_state()["level"] > y0


def test_draw_disturbance_moves_in_steps_and_ramps() -> None:
    plant = SurgePlant(seed=9)
    p = plant.params
    draws = []
    for _ in range(3600):
        plant.step(1.0)
        draws.append(plant.true_state()["draw_flow"])
    assert min(draws) >= p.draw_min_lps - 1e-9 and max(draws) <= p.draw_max_lps + 1e-9
    assert max(draws) - min(draws) > 0.3 * (p.draw_max_lps - p.draw_min_lps)
    # moved to several different levels over an hour
    plateaus = {round(d, 2) for d in draws[::60]}
    assert len(plateaus) >= 8
    # the measured disturbance follows the true one
    assert plant.outputs()["draw_flow"] == pytest.approx(draws[-1], abs=0.1)
    # deterministic for a seed, different for another
    again = SurgePlant(seed=9)
    other = SurgePlant(seed=10)
    for _ in range(600):
        again.step(1.0)
        other.step(1.0)
    assert again.true_state()["draw_flow"] == pytest.approx(draws[599])
    assert other.params != p


def test_disturbances_off_holds_still_and_pin_moves_it() -> None:
    plant = SurgePlant(seed=9, disturbances=False)
    for _ in range(600):
        plant.step(1.0)
    assert plant.true_state()["draw_flow"] == pytest.approx(plant.params.draw_nominal_lps)
    plant.set_disturbance(draw_flow_lps=0.5, ramp=False)
    plant.step(0.1)
    assert plant.true_state()["draw_flow"] == pytest.approx(0.5)


def test_physical_limits() -> None:
    plant = SurgePlant(seed=1, disturbances=False)
    plant.valve_pct = 0.0
    for _ in range(1200):
        plant.step(1.0)
    st = plant.true_state()
    assert st["level"] < 0.02 and st["draw_flow"] < plant.params.draw_nominal_lps
    assert plant.outputs()["level"] >= 0.0
    plant.valve_pct = 100.0
    for _ in range(1200):
        plant.step(1.0)
    assert plant.true_state()["level"] <= plant.params.level_max_m


def test_any_dt_gives_the_same_trajectory() -> None:
    a, b = SurgePlant(seed=6), SurgePlant(seed=6)
    a.valve_pct = b.valve_pct = a.valve_pct + 3.0
    for _ in range(600):
        a.step(1.0)
    for _ in range(12000):
        b.step(0.05)
    ta, tb = a.true_state(), b.true_state()
    assert 0.1 < ta["level"] < 1.9
    assert ta["level"] == pytest.approx(tb["level"], abs=2e-3)
    # disturbance and unmeasured wander follow the same path whatever the step size
    assert ta["draw_flow"] == pytest.approx(tb["draw_flow"], abs=1e-9)
    assert ta["supply_factor"] == pytest.approx(tb["supply_factor"], abs=1e-9)
    assert ta["draw_flow"] != a.params.draw_nominal_lps  # it did move


def test_noise_is_small_and_seeded() -> None:
    plant = SurgePlant(seed=3, disturbances=False)
    lv = []
    for _ in range(500):
        plant.step(0.2)
        lv.append(plant.outputs()["level"] - plant.true_state()["sensor_level"])
    assert 0.001 < statistics.pstdev(lv) < 0.006
