"""Closed-loop evaluation on the simulated heater, in simulated time (`edgeloop control-eval`).

The same scenarios run for each controller - the shipped TFLite policy and the fallback PID
through the production loop step (`agent.control.loop.step`: assemble, invoke, envelope),
and the MPC expert through the same envelope - on the same seeded plant.  IAE is on the true
tank temperature (the plant, not the noisy delayed sensor), so a controller cannot score by
chasing sensor noise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from agent.control import loop as loopmod
from agent.control.pid import Pid
from agent.control.policy import Policy
from agent.control.safety import Envelope
from agent.control.settings import DEFAULT_KP, DEFAULT_TI_S
from hw_sim.plant.heater import HeaterParams, HeaterPlant
from lab.heater_expert import MpcExpert

PERIOD_S = 0.5
MAX_RATE_PER_S = 25.0  # heater_power's rate limit in the shipped config
TEMP_LIMIT_C = 90.0  # the simulated PLC trips at 95 degC; staying under 90 is the constraint
ROLES = ("pv", "flow", "inlet_temp")


@dataclass(frozen=True)
class Scenario:
    """A setpoint schedule and pinned disturbances over `duration_s` of simulated time."""

    name: str
    duration_s: float
    setpoints: tuple[tuple[float, float], ...]  # (time s, setpoint)
    flows: tuple[tuple[float, float], ...] = ((0.0, 10.0),)  # (time s, L/min)
    inlets: tuple[tuple[float, float], ...] = ((0.0, 20.0),)  # (time s, degC)
    params: HeaterParams = field(default_factory=HeaterParams)
    random_disturbances: bool = False
    seed: int = 0


def _sched(items: tuple[tuple[float, float], ...], t: float) -> float:
    v = items[0][1]
    for ts, x in items:
        if t >= ts:
            v = x
    return v


STEPS = ((0.0, 40.0), (10.0, 60.0), (90.0, 45.0), (170.0, 70.0), (250.0, 50.0))
NOMINAL = HeaterParams()


def scenarios() -> list[Scenario]:
    """The evaluation set: steps across the range, disturbances, noise, +/-20 % parameters."""
    slow = NOMINAL.scaled(volume=1.2, pipe=1.2, element_tau=1.2, power=0.8, loss=1.2)
    fast = NOMINAL.scaled(volume=0.8, pipe=0.8, element_tau=0.8, power=1.2, loss=0.8)
    return [
        Scenario("sp_steps_nominal", 330, STEPS),
        Scenario(
            "sp_steps_low_flow",
            330,
            ((0, 45.0), (10, 65.0), (110, 50.0), (210, 60.0)),
            flows=((0, 6.0),),
        ),
        Scenario(
            "sp_steps_high_flow",
            330,
            ((0, 35.0), (10, 55.0), (110, 40.0), (210, 50.0)),
            flows=((0, 14.0),),
        ),
        Scenario(
            "flow_disturbance",
            300,
            ((0, 55.0),),
            flows=((0, 10.0), (20, 6.0), (120, 14.0), (220, 10.0)),
        ),
        Scenario(
            "inlet_disturbance",
            300,
            ((0, 55.0),),
            inlets=((0, 20.0), (20, 14.0), (120, 26.0), (220, 20.0)),
        ),
        Scenario("sensor_noise_x4", 330, STEPS, params=HeaterParams(noise_std_c=0.2)),
        Scenario("params_plus_20pct", 330, STEPS, flows=((0, 10.0), (200, 7.0)), params=slow),
        Scenario("params_minus_20pct", 330, STEPS, flows=((0, 10.0), (200, 13.0)), params=fast),
        Scenario(
            "random_disturbances",
            400,
            ((0, 50.0), (100, 62.0), (250, 45.0)),
            random_disturbances=True,
            seed=11,
        ),
    ]


class Controller:
    """One controller in the evaluation harness."""

    name = "?"

    def reset(self, sp: float, outs: dict[str, float], u0: float) -> None: ...

    def step(self, sp: float, outs: dict[str, float], u_prev: float) -> float: ...


def _envelope() -> Envelope:
    return Envelope(0.0, 100.0, MAX_RATE_PER_S * PERIOD_S)


class LoopController(Controller):
    """The production loop step: PID only (policy None) or the TFLite policy in auto."""

    def __init__(self, policy: Policy | None, pid: Pid | None = None) -> None:
        self.policy = policy
        self.name = "tflite" if policy is not None else "pid"
        self.pid = pid or Pid(kp=DEFAULT_KP, ti_s=DEFAULT_TI_S)
        self.spec = loopmod.LoopSpec(
            name="eval",
            period_s=PERIOD_S,
            roles=ROLES,
            envelope=_envelope(),
            fallback="pid",
            pid=self.pid,
            healthy_s=0.0,
            transfer_s=0.0,
            max_input_age_s=10.0,
            policy_roles=tuple(ROLES.index(s) for s in policy.signals) if policy else (),
        )
        self.inp = loopmod.LoopInputs(0, 0.0, [0.0] * 3, [0] * 3, [0] * 3, [0] * 3)

    def reset(self, sp: float, outs: dict[str, float], u0: float) -> None:
        self.st = loopmod.LoopState(mode="auto" if self.policy else "shadow", last_u=u0)
        if self.policy is not None:
            self.st.fs = self.policy.new_state()
        self.pid.track(self.st.pid, u0, sp, outs["tank_temp"])

    def step(self, sp: float, outs: dict[str, float], u_prev: float) -> float:
        inp = self.inp
        inp.sp = sp
        inp.values[0] = outs["tank_temp"]
        inp.values[1] = outs["inlet_flow"]
        inp.values[2] = outs["inlet_temp"]
        d = loopmod.step(self.spec, self.policy, self.st, inp)
        assert d.command is not None
        return d.command


class ExpertController(Controller):
    name = "expert"

    def __init__(self, params: HeaterParams | None = None) -> None:
        self.params = params or NOMINAL
        self.env = _envelope()

    def reset(self, sp: float, outs: dict[str, float], u0: float) -> None:
        self.mpc = MpcExpert(self.params, PERIOD_S, max_rate_per_s=MAX_RATE_PER_S)

    def step(self, sp: float, outs: dict[str, float], u_prev: float) -> float:
        u = self.mpc.step(sp, outs["tank_temp"], outs["inlet_flow"], outs["inlet_temp"], u_prev)
        return self.env.apply(u, u_prev)[0]


@dataclass
class Result:
    iae: float = 0.0
    overshoot: float = 0.0  # K past the setpoint after a step (max)
    settling_s: list[float] = field(default_factory=list)
    travel: float = 0.0  # sum |du| in %
    violations: int = 0
    step_ns: list[int] = field(default_factory=list)
    trace: list[tuple[float, float, float, float]] = field(default_factory=list)


def run_scenario(
    sc: Scenario,
    ctrl: Controller,
    keep_trace: bool = False,
    on_step: Callable[[HeaterPlant, float, float], None] | None = None,
) -> Result:
    """Run one scenario closed-loop; `on_step(plant, sp, u)` sees every period."""
    plant = HeaterPlant(sc.params, seed=sc.seed, disturbances=sc.random_disturbances)
    if not sc.random_disturbances:
        plant.set_disturbance(
            inlet_flow_lpm=sc.flows[0][1], inlet_temp_c=sc.inlets[0][1], ramp=False
        )
    sp = sc.setpoints[0][1]
    plant.settle(0.0, temp_c=sp)
    plant.step(PERIOD_S)
    u = plant.power_pct
    ctrl.reset(sp, plant.outputs(), u)
    res = Result()
    n = round(sc.duration_s / PERIOD_S)
    step_t = None
    step_from = sp
    band = 0.0
    last_out = 0.0
    for k in range(n):
        t = k * PERIOD_S
        new_sp = _sched(sc.setpoints, t)
        if new_sp != sp:
            if step_t is not None:
                res.settling_s.append(last_out)
            step_from, sp, step_t = sp, new_sp, t
            band = max(0.02 * abs(sp - step_from), 0.3)
            last_out = 0.0
        if not sc.random_disturbances:
            plant.set_disturbance(
                inlet_flow_lpm=_sched(sc.flows, t), inlet_temp_c=_sched(sc.inlets, t)
            )
        outs = plant.outputs()
        t0 = time.perf_counter_ns()
        u_new = ctrl.step(sp, outs, u)
        res.step_ns.append(time.perf_counter_ns() - t0)
        if not (0.0 <= u_new <= 100.0) or abs(u_new - u) > MAX_RATE_PER_S * PERIOD_S + 1e-6:
            res.violations += 1
        res.travel += abs(u_new - u)
        u = u_new
        plant.power_pct = u
        if on_step is not None:
            on_step(plant, sp, u)
        plant.step(PERIOD_S)
        temp = plant.outputs()["tank_temp_true"]
        if temp > TEMP_LIMIT_C:
            res.violations += 1
        res.iae += abs(sp - temp) * PERIOD_S
        if step_t is not None:
            past = (temp - sp) if sp > step_from else (sp - temp)
            res.overshoot = max(res.overshoot, past)
            if abs(temp - sp) > band:
                last_out = t + PERIOD_S - step_t
        if keep_trace:
            res.trace.append((t, sp, temp, u))
    if step_t is not None:
        res.settling_s.append(last_out)
    return res


def evaluate(
    controllers: list[Controller], scs: list[Scenario] | None = None
) -> dict[str, dict[str, float]]:
    """Summary per controller: iae (sum over scenarios), overshoot (max, K), settling_s (mean
    over setpoint steps), travel (sum), violations, step_us_p99/step_us_mean."""
    scs = scs or scenarios()
    out: dict[str, dict[str, float]] = {}
    for ctrl in controllers:
        tot = Result()
        per: dict[str, float] = {}
        for sc in scs:
            r = run_scenario(sc, ctrl)
            tot.iae += r.iae
            tot.overshoot = max(tot.overshoot, r.overshoot)
            tot.settling_s += r.settling_s
            tot.travel += r.travel
            tot.violations += r.violations
            tot.step_ns += r.step_ns
            per[sc.name] = round(r.iae, 1)
        ns = np.asarray(tot.step_ns, np.float64)
        out[ctrl.name] = {
            "iae": round(tot.iae, 1),
            "overshoot": round(tot.overshoot, 2),
            "settling_s": round(float(np.mean(tot.settling_s)) if tot.settling_s else math.nan, 1),
            "travel": round(tot.travel, 0),
            "violations": tot.violations,
            "step_us_p99": round(float(np.percentile(ns, 99)) / 1e3, 1),
            "step_us_mean": round(float(ns.mean()) / 1e3, 1),
            "iae_by_scenario": per,  # type: ignore[dict-item]
        }
    return out
