"""Heat exchanger loop: parameters from the seed, saturating heat transfer, flow-dependent
dead time, a moving measured flow disturbance."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from hw_sim.plant.exchanger import (
    OPENING_MARGIN_PCT,
    OPERATING_RANGE_C,
    ExchangerParams,
    ExchangerPlant,
    effectiveness,
)

SEEDS = range(40)


def _quiet(seed: int, flow_lpm: float | None = None, outlet_c: float = 45.0) -> ExchangerPlant:
    plant = ExchangerPlant(seed=seed, disturbances=False)
    if flow_lpm is not None:
        plant.set_disturbance(flow_lpm=flow_lpm, ramp=False)
    plant.settle(outlet_c=outlet_c)
    return plant


def _step_gain(seed: int, outlet_c: float, du_pct: float = 1.0) -> float:
    """Steady-state gain (K per %) measured by a step test on the dynamic model."""
    plant = _quiet(seed, outlet_c=outlet_c)
    y0 = plant.true_state()["sensor_temp"]
    plant.valve_pct += du_pct
    for _ in range(400):  # 400 s: > 10x the slowest lag of every seed
        plant.step(1.0)
    return (plant.true_state()["sensor_temp"] - y0) / du_pct


def test_parameters_are_drawn_from_the_seed() -> None:
    assert ExchangerParams.draw(3) == ExchangerParams.draw(3)
    drawn = [ExchangerParams.draw(s) for s in SEEDS]
    assert len(set(drawn)) == len(drawn)
    assert ExchangerPlant(seed=5).params == ExchangerParams.draw(5)
    assert ExchangerParams() not in drawn


@pytest.mark.parametrize("quantity", ["gain", "dead_time", "wall_tau", "residence"])
def test_parameters_vary_over_realistic_ranges(quantity: str) -> None:
    vals = []
    for s in SEEDS:
        p = ExchangerParams.draw(s)
        f = p.flow_nominal_lpm
        if quantity == "gain":
            vals.append(p.gain_c_per_pct(45.0, f))
        elif quantity == "dead_time":
            vals.append(p.dead_time_s(f))
        elif quantity == "wall_tau":
            vals.append(p.wall_tau_s)
        else:
            vals.append(p.residence_s(f))
    assert all(v > 0 and math.isfinite(v) for v in vals)
    assert max(vals) / min(vals) >= 1.8, (quantity, min(vals), max(vals))


def test_every_seed_holds_the_operating_range() -> None:
    lo, hi = OPERATING_RANGE_C
    for s in SEEDS:
        p = ExchangerParams.draw(s)
        for t in (lo, hi):
            for f in (p.flow_min_lpm, p.flow_max_lpm):
                x = p.steady_opening_pct(t, f)
                assert OPENING_MARGIN_PCT[0] <= x <= OPENING_MARGIN_PCT[1], (s, t, f)
                assert p.steady_outlet_c(x, f) == pytest.approx(t, abs=1e-6)


def test_effectiveness_ntu() -> None:
    assert effectiveness(0.0, 0.5) == 0.0
    assert effectiveness(1.0, 1.0) == pytest.approx(0.5)
    assert effectiveness(50.0, 0.3) == pytest.approx(1.0, abs=1e-6)
    assert effectiveness(2.0, 0.0) == pytest.approx(1.0 - math.exp(-2.0))
    # continuous across Cr -> 1
    assert effectiveness(1.5, 1.0 - 1e-5) == pytest.approx(effectiveness(1.5, 1.0), abs=1e-4)


def test_heat_transfer_saturates_with_the_valve() -> None:
    for s in (0, 1, 2):
        p = ExchangerParams.draw(s)
        f = p.flow_nominal_lpm
        temps = [p.steady_outlet_c(x, f) for x in (0.0, 25.0, 50.0, 75.0, 100.0)]
        assert temps[0] == pytest.approx(p.inlet_temp_c)
        assert all(b > a for a, b in itertools.pairwise(temps))
        rises = [b - a for a, b in itertools.pairwise(temps)]
        assert rises[0] > 1.5 * rises[-1]  # strongly concave
        assert temps[-1] < p.hot_temp_c


@pytest.mark.parametrize("seed", [0, 11, 29])
def test_step_gain_changes_with_the_operating_point(seed: int) -> None:
    p = ExchangerParams.draw(seed)
    f = p.flow_nominal_lpm
    low, high = _step_gain(seed, 35.0), _step_gain(seed, 55.0)
    assert low == pytest.approx(p.gain_c_per_pct(35.0, f), rel=0.1)
    assert high == pytest.approx(p.gain_c_per_pct(55.0, f), rel=0.1)
    assert low / high > 1.25, (low, high)


def test_gain_falls_as_the_flow_rises() -> None:
    for s in (0, 5):
        p = ExchangerParams.draw(s)
        assert p.gain_c_per_pct(45.0, p.flow_min_lpm) > 1.5 * p.gain_c_per_pct(45.0, p.flow_max_lpm)


def test_step_gain_changes_across_seeds() -> None:
    gains = [_step_gain(s, 45.0) for s in range(8)]
    assert max(gains) / min(gains) > 1.4, gains


def _onset_s(seed: int, flow_lpm: float) -> float:
    """Time from a valve step until the pipe outlet (at the sensor) starts to move."""
    plant = _quiet(seed, flow_lpm=flow_lpm)
    y0 = plant.true_state()["outlet_temp"]
    plant.valve_pct += 5.0
    t = 0.0
    while abs(plant.true_state()["outlet_temp"] - y0) < 1e-6:
        plant.step(0.05)
        t += 0.05
        assert t < 120.0
    return t


@pytest.mark.parametrize("seed", [1, 8])
def test_dead_time_is_pipe_volume_over_flow(seed: int) -> None:
    p = ExchangerParams.draw(seed)
    slow, fast = _onset_s(seed, p.flow_min_lpm), _onset_s(seed, p.flow_max_lpm)
    assert slow == pytest.approx(p.dead_time_s(p.flow_min_lpm), abs=0.3)
    assert fast == pytest.approx(p.dead_time_s(p.flow_max_lpm), abs=0.3)
    assert slow / fast == pytest.approx(p.flow_max_lpm / p.flow_min_lpm, rel=0.1)


def test_settle_is_a_steady_state() -> None:
    plant = _quiet(4, outlet_c=50.0)
    for _ in range(300):
        plant.step(1.0)
    assert plant.true_state()["sensor_temp"] == pytest.approx(50.0, abs=1e-3)
    plant.settle(valve_pct=30.0)
    t = plant.true_state()["sensor_temp"]
    for _ in range(300):
        plant.step(1.0)
    assert plant.true_state()["sensor_temp"] == pytest.approx(t, abs=1e-3)


def test_flow_disturbance_moves_and_the_outlet_follows() -> None:
    plant = ExchangerPlant(seed=9)
    p = plant.params
    flows, temps = [], []
    for _ in range(3600):
        plant.step(1.0)
        flows.append(plant.true_state()["flow"])
        temps.append(plant.true_state()["sensor_temp"])
    assert min(flows) >= p.flow_min_lpm - 1e-9 and max(flows) <= p.flow_max_lpm + 1e-9
    assert max(flows) - min(flows) > 0.3 * (p.flow_max_lpm - p.flow_min_lpm)
    assert len({round(f, 1) for f in flows[::60]}) >= 8
    assert max(temps) - min(temps) > 2.0  # an uncontrolled outlet wanders with the flow
    assert plant.outputs()["flow"] == pytest.approx(flows[-1], abs=0.5)
    assert plant.true_state()["dead_time_s"] == pytest.approx(p.dead_time_s(flows[-1]))


def test_disturbances_off_holds_still_and_any_dt_matches() -> None:
    q = ExchangerPlant(seed=2, disturbances=False)
    for _ in range(600):
        q.step(1.0)
    assert q.true_state()["flow"] == pytest.approx(q.params.flow_nominal_lpm)
    assert q.true_state()["hot_temp"] == pytest.approx(q.params.hot_temp_c)
    a, b = ExchangerPlant(seed=2), ExchangerPlant(seed=2)
    a.valve_pct = b.valve_pct = a.valve_pct + 10.0
    for _ in range(600):
        a.step(1.0)
    for _ in range(12000):
        b.step(0.05)
    ta, tb = a.true_state(), b.true_state()
    assert ta["flow"] == pytest.approx(tb["flow"], abs=1e-9)
    assert ta["hot_temp"] == pytest.approx(tb["hot_temp"], abs=1e-9)
    assert ta["sensor_temp"] == pytest.approx(tb["sensor_temp"], abs=0.05)


def test_noise_is_small_and_seeded() -> None:
    plant = _quiet(3)
    d = []
    for _ in range(500):
        plant.step(0.2)
        d.append(plant.outputs()["outlet_temp"] - plant.true_state()["sensor_temp"])
    assert 0.02 < statistics.pstdev(d) < 0.1
    a, b = ExchangerPlant(seed=3), ExchangerPlant(seed=3)
    for _ in range(20):
        a.step(0.5)
        b.step(0.5)
    assert a.outputs() == b.outputs()
