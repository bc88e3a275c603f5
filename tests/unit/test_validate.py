"""Model-based validation (agent/control/validate.py): metrics checked by hand on a plant
whose response is known exactly, scenarios and mismatch plants from the loop's ranges, the
MPC accepted against SIMC, and bad controllers refused with reasons."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pytest

from agent.control.ident import LinearModel, StateSpace
from agent.control.mpc import dead_steps, steady_gain
from agent.control.safety import Envelope
from agent.control.validate import (
    Controller,
    Scenario,
    Start,
    acceptance,
    mpc_factory,
    pid_factory,
    plant_cases,
    run_scenario,
    scenarios,
    simc_tuning,
    validate,
)

U0 = 50.0


def unit_delay(kd: float | None = None) -> StateSpace:
    """y[k+1] = (u[k] - 50) (+ kd (d[k] - 0)): the output is last period's input, exactly."""
    nd = 0 if kd is None else 1
    bd = np.full((1, nd), kd if kd is not None else 0.0)
    return StateSpace(
        np.zeros((1, 1)), np.ones((1, 1)), bd, np.ones((1, 1)), 1.0, U0, np.zeros(nd), 0.0
    )


def const(start: Start) -> Controller:
    return lambda sp, y, d, u: u


def overshooter(start: Start) -> Controller:
    """Inverts the plant with 2 units too much on the first period of a new setpoint."""
    seen = {start.sp}

    def step(sp: float, y: float, d: Sequence[float], u: float) -> float:
        first = sp not in seen
        seen.add(sp)
        return U0 + sp + (2.0 if first else 0.0)

    return step


STEP = Scenario("step", "setpoint", 5.0, ((0.0, 0.0), (1.0, 10.0)))
WIDE = Envelope(0.0, 100.0)


def test_metrics_of_a_controller_that_does_nothing() -> None:
    m, tr = run_scenario(unit_delay(), const, STEP, WIDE, keep_trace=True)
    # the setpoint moves to 10 at t = 1 s and the output stays 0 for 4 periods
    assert m.iae == pytest.approx(40.0)
    assert m.settling_s == pytest.approx(4.0)  # never inside the band: the whole window
    assert (m.overshoot, m.travel, m.violations, m.refused, m.rate_limited) == (0, 0, 0, 0, 0)
    assert tr is not None and list(tr.u) == [U0] * 5 and list(tr.sp) == [0, 10, 10, 10, 10]


def test_metrics_of_an_overshoot() -> None:
    m, tr = run_scenario(unit_delay(), overshooter, STEP, WIDE, keep_trace=True)
    assert tr is not None and list(tr.u) == [U0, U0 + 12, U0 + 10, U0 + 10, U0 + 10]
    assert m.iae == pytest.approx(2.0)  # 12 against 10 for one period
    assert m.overshoot == pytest.approx(2.0) and m.overshoot_pct == pytest.approx(20.0)
    assert m.settling_s == pytest.approx(1.0)
    assert m.travel == pytest.approx(14.0)
    assert m.violations == 0


def test_envelope_cuts_are_counted_and_pv_limits_are_violations() -> None:
    rate = Envelope(0.0, 100.0, 5.0)
    m, tr = run_scenario(unit_delay(), overshooter, STEP, rate, keep_trace=True)
    assert tr is not None and list(tr.u) == [U0, U0 + 5, U0 + 10, U0 + 10, U0 + 10]
    assert m.rate_limited == 1 and m.refused == 0 and m.violations == 0
    assert m.iae == pytest.approx(5.0)
    low = Envelope(0.0, 58.0)
    m, _ = run_scenario(unit_delay(), overshooter, STEP, low)
    assert m.refused == 4 and m.violations == 0  # asked for 62, then 60 three times
    m, _ = run_scenario(unit_delay(), overshooter, STEP, WIDE, pv_limits=(-1.0, 11.0))
    assert m.violations == 1  # the output went to 12 once

    def nan(start: Start) -> Controller:
        return lambda sp, y, d, u: math.nan

    m, tr = run_scenario(unit_delay(), nan, STEP, rate, keep_trace=True)
    assert m.violations == 5 and tr is not None and set(tr.u) == {U0}  # the envelope held


def test_iae_is_on_the_true_output_not_the_noisy_measurement() -> None:
    seen: list[float] = []

    def spy(start: Start) -> Controller:
        def step(sp: float, y: float, d: Sequence[float], u: float) -> float:
            seen.append(y)
            return u

        return step

    m, _ = run_scenario(unit_delay(), spy, STEP, WIDE, noise_std=0.5, seed=3)
    assert m.iae == pytest.approx(40.0)
    assert np.std(seen) > 0.1  # the controller did see noise


def test_disturbance_events_feed_forward_and_peak_deviation() -> None:
    ss = unit_delay(kd=2.0)
    sc = Scenario(
        "d", "disturbance", 6.0, ((0.0, 0.0),),
        disturbances=((0.0, (0.0,)), (2.0, (1.5,)), (4.0, (0.0,))), band=0.1,
    )  # fmt: skip

    def ff(start: Start) -> Controller:
        assert start.d == (0.0,)
        return lambda sp, y, d, u: U0 + sp - 2.0 * d[0]

    m, _ = run_scenario(ss, ff, sc, WIDE)
    assert m.iae == pytest.approx(0.0) and m.peak_dev == 0.0 and m.settling_s == 0.0
    m, _ = run_scenario(ss, const, sc, WIDE)
    assert m.peak_dev == pytest.approx(3.0) and m.iae == pytest.approx(6.0)
    assert m.overshoot == 0.0  # not a setpoint step
    assert m.settling_s == pytest.approx(2.0)  # back inside the band only when d returns


def fopdt_arx(k: float, tau: float, theta_steps: int, dt: float, kd: float = -1.0) -> LinearModel:
    p = math.exp(-dt / tau)
    return LinearModel(
        dt_s=dt, na=1, nb=1, nk=(theta_steps + 1, 1), a=np.array([-p]),
        b=np.array([[k * (1 - p)], [kd * (1 - p)]]), u0=U0, d0=np.zeros(1), y0=40.0,
    )  # fmt: skip


MODEL = fopdt_arx(2.0, 30.0, 10, 1.0)
ENV = Envelope(0.0, 100.0, 3.0)


def test_plant_cases_are_the_mismatch_the_issue_asks_for() -> None:
    cases = {c.name: c.ss for c in plant_cases(MODEL)}
    assert list(cases) == ["nominal", "gain_x0.7", "gain_x1.3", "delay_-25pct", "delay_+25pct"]
    gains = {n: steady_gain(ss)[0] for n, ss in cases.items()}
    assert gains["gain_x0.7"] == pytest.approx(1.4) and gains["gain_x1.3"] == pytest.approx(2.6)
    assert gains["delay_+25pct"] == pytest.approx(2.0)
    # 25 % of 10 periods is 2.5: rounded away from zero
    assert {n: dead_steps(ss) for n, ss in cases.items() if "delay" in n} == {
        "delay_-25pct": 7,
        "delay_+25pct": 13,
    }
    short = {c.name: dead_steps(c.ss) for c in plant_cases(fopdt_arx(2.0, 30.0, 1, 1.0))}
    assert short["delay_-25pct"] == 0 and short["delay_+25pct"] == 2  # at least one period


def test_scenarios_come_from_the_loops_ranges() -> None:
    ss = MODEL.to_state_space()
    narrow = Envelope(30.0, 70.0, 3.0)  # the top of the setpoint range is out of reach
    scs = {s.name: s for s in scenarios(ss, (20.0, 70.0), narrow, d_ranges=[(-5.0, 10.0)])}
    assert list(scs) == ["sp_steps", "sp_small_step", "d0_steps", "load_steps"]
    levels = [sp for sc in scs.values() for _, sp in sc.setpoints]
    for sp in levels:
        assert 20.0 <= sp <= 70.0
        # a plant with 0.7x the gain, linear about the middle of the range (45 at u 52.5),
        # still reaches it with the output 5 % inside the bounds
        assert 32.0 - 1e-9 <= 52.5 + (sp - 45.0) / (0.7 * 2.0) <= 68.0 + 1e-9
    sp_steps = [sp for _, sp in scs["sp_steps"].setpoints]
    assert max(sp_steps) - min(sp_steps) > 25.0  # across the range, not a nudge
    assert {v[0] for _, v in scs["d0_steps"].disturbances} == {-5.0, 10.0, 0.0}
    assert scs["load_steps"].load[1][1] == pytest.approx(0.1 * 50.0 / 2.0)
    with pytest.raises(ValueError, match="reachable"):
        scenarios(ss, (400.0, 500.0), ENV)


def test_mpc_is_accepted_against_simc_on_the_identified_model() -> None:
    ss = MODEL.to_state_space()
    rep = validate(
        MODEL, mpc_factory(ss, ENV), envelope=ENV, sp_range=(20.0, 70.0),
        d_ranges=[(-5.0, 10.0)], noise_std=0.05, candidate_name="mpc",
    )  # fmt: skip
    v = acceptance(rep)
    assert v.accepted, v.reasons
    assert v.iae_ratio == rep.iae_ratio < 0.7
    assert rep.iae_ratio_sum < 0.9
    assert rep.totals("mpc")["violations"] == 0
    assert len(rep.rows) == 2 * 5 * 4  # two controllers, five plants, four scenarios
    assert rep.pid_tuning == simc_tuning(ss)
    card = json.loads(json.dumps(rep.to_dict()))
    assert card["candidate"] == "mpc" and card["totals"]["simc_pid"]["iae"] > 0


def test_acceptance_refuses_a_controller_no_better_than_the_pid() -> None:
    ss = MODEL.to_state_space()
    tuning = simc_tuning(ss)
    rep = validate(
        MODEL, pid_factory(tuning, ENV, ss.dt_s), envelope=ENV, sp_range=(20.0, 70.0),
        noise_std=0.1, seed=5,
    )  # fmt: skip
    assert rep.iae_ratio == 1.0  # the same starts and the same noise for both
    v = acceptance(rep)
    assert not v.accepted and "IAE 1.000x" in v.reasons[0]
    assert acceptance(rep, max_iae_ratio=1.0).accepted


def test_acceptance_refuses_sluggish_unsafe_and_fragile_controllers() -> None:
    ss = MODEL.to_state_space()
    tuning = simc_tuning(ss)
    slow = pid_factory({**tuning, "kp": tuning["kp"] / 5}, ENV, ss.dt_s)
    v = acceptance(validate(MODEL, slow, envelope=ENV, sp_range=(20.0, 70.0)))
    assert not v.accepted and v.iae_ratio > 1.5
    assert any("worse than 1.5x the PID on" in r for r in v.reasons)

    mpc = mpc_factory(ss, ENV)

    def glitchy(start: Start) -> Controller:
        inner, k = mpc(start), 0

        def step(sp: float, y: float, d: Sequence[float], u: float) -> float:
            nonlocal k
            k += 1
            return math.nan if k == 50 else inner(sp, y, d, u)

        return step

    rep = validate(MODEL, glitchy, envelope=ENV, sp_range=(20.0, 70.0), d_ranges=[(-5.0, 10.0)])
    v = acceptance(rep)
    assert not v.accepted and v.iae_ratio < 0.8  # good IAE, refused all the same
    assert any("envelope violations" in r and "nominal/sp_steps" in r for r in v.reasons)
