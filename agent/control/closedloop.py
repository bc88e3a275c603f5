"""The closed loop validation runs (agent/control/validate.py): a controller against a
plant model's state space, period by period, through the run-time `Envelope`, on scenarios
drawn from the loop's setpoint and disturbance ranges; what one run measures (`Metrics`).

* Scenarios: large setpoint steps across the range (the rate limit and the bounds bind), a
  small step (linear behaviour), a step of each measured disturbance over its range, and an
  unmeasured load on the plant input (offset-free or not).  Setpoints are kept where the
  weakest mismatched plant can still reach them inside the output bounds.
* Metrics per run: IAE on the noise-free output (a controller cannot score by chasing
  noise), overshoot past a new setpoint, settling time, output travel, and violations:
  periods where the applied output broke the envelope (bounds, rate), the controller
  returned a non-finite value, or the pv left `pv_limits`.  How often the envelope had to
  cut the controller's request (`refused`, `rate_limited`) is reported beside them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.control.mpc import (
    StateSpaceLike,
    _arrays,
    settling_steps,
    steady_gain,
)
from agent.control.safety import Envelope

Controller = Callable[[float, float, Sequence[float], float], float]
"""One control period: (setpoint, measured pv, measured disturbances, applied output) -> u."""


@dataclass(frozen=True)
class Start:
    """Where a scenario starts: the plant at rest with this output, pv, disturbances, sp."""

    u: float
    y: float
    d: tuple[float, ...]
    sp: float


ControllerFactory = Callable[[Start], Controller]
"""A fresh controller per scenario, started bumplessly from `Start`."""


@dataclass(frozen=True)
class Scenario:
    """Schedules over `duration_s`: (time s, value) pairs, each value held until the next."""

    name: str
    kind: str  # setpoint | disturbance | load
    duration_s: float
    setpoints: tuple[tuple[float, float], ...]
    disturbances: tuple[tuple[float, tuple[float, ...]], ...] = ()  # empty: the nominal d
    load: tuple[tuple[float, float], ...] = ()  # unmeasured, added to the plant input
    band: float = 0.0  # settling band (pv units) for disturbance and load events


@dataclass
class Metrics:
    iae: float = 0.0  # integral |sp - y_true| dt
    overshoot: float = 0.0  # largest excursion past a new setpoint (pv units)
    overshoot_pct: float = 0.0  # the same, % of that step
    peak_dev: float = 0.0  # largest |sp - y_true| after a disturbance or load event
    settling_s: float = 0.0  # worst time to stay inside the band after an event
    travel: float = 0.0  # sum |du| of the applied output
    violations: int = 0  # applied output outside the envelope, NaN request, pv outside limits
    refused: int = 0  # requests outside the output bounds (clamped by the envelope)
    rate_limited: int = 0  # requests beyond the rate limit (cut by the envelope)
    step_us_mean: float = 0.0
    step_us_p99: float = 0.0


@dataclass
class Trace:
    """Per period, at its start: what the controller saw and what was applied."""

    t: np.ndarray
    sp: np.ndarray
    y: np.ndarray  # noise-free output (the metrics use the one a period later)
    y_meas: np.ndarray
    u: np.ndarray  # applied, after the envelope
    d: np.ndarray


def _sched(items: Sequence[tuple[float, Any]], t: float, default: Any) -> Any:
    v = default
    for ts, x in items:
        if t >= ts - 1e-9:
            v = x
    return v


def steady_output(ss: StateSpaceLike, y: float, d: Sequence[float]) -> float:
    """The output that holds the model's pv at `y` with disturbances `d` (at rest)."""
    k, kd = steady_gain(ss)
    if not math.isfinite(k) or k == 0.0:
        raise ValueError("validation needs a self-regulating model (finite, nonzero gain)")
    dd = np.asarray(d, np.float64) - np.asarray(ss.d0, np.float64).reshape(-1)
    return float(ss.u0 + (y - ss.y0 - float(kd @ dd)) / k)


def run_scenario(
    plant: StateSpaceLike,
    make: ControllerFactory,
    sc: Scenario,
    env: Envelope,
    *,
    noise_std: float = 0.0,
    seed: int = 0,
    pv_limits: tuple[float, float] | None = None,
    keep_trace: bool = False,
) -> tuple[Metrics, Trace | None]:
    """Run one scenario closed loop on `plant` (the model's state space as the true plant).

    The plant starts at rest at the first setpoint (output clamped into the envelope); each
    period the controller sees the noisy pv and the measured disturbances, its request goes
    through `env`, and the plant advances one period on the applied output plus the load.
    """
    a, b, bd, c = _arrays(plant)
    nd = bd.shape[1]
    dt = float(plant.dt_s)
    d_nom = tuple(float(v) for v in np.asarray(plant.d0, np.float64).reshape(-1))
    d_first = _sched(sc.disturbances, 0.0, d_nom)
    sp = float(sc.setpoints[0][1])
    u = min(max(steady_output(plant, sp, d_first), env.lo), env.hi)
    dd = np.asarray(d_first, np.float64) - np.asarray(d_nom)
    x = np.linalg.solve(np.eye(a.shape[0]) - a, b * (u - plant.u0) + bd @ dd)
    rng = np.random.default_rng(seed)
    n = round(sc.duration_s / dt)
    noise = rng.normal(0.0, noise_std, n) if noise_std > 0 else np.zeros(n)
    y = float(plant.y0 + c @ x)
    ctrl = make(Start(u, y + float(noise[0]), tuple(d_first), sp))
    m = Metrics()
    e = np.empty
    tr = Trace(e(n), e(n), e(n), e(n), e(n), e((n, nd))) if keep_trace else None
    ns = np.empty(n)
    tol = 1e-9 * max(1.0, env.hi - env.lo)
    # event bookkeeping: the last setpoint step, or the last disturbance/load change
    ev_t: float | None = None
    ev_band = 0.0
    ev_from = sp
    last_out = 0.0
    settle: list[float] = []
    d_prev, load_prev = tuple(d_first), 0.0
    for k in range(n):
        t = k * dt
        new_sp = float(_sched(sc.setpoints, t, sp))
        d = tuple(_sched(sc.disturbances, t, d_nom))
        load = float(_sched(sc.load, t, 0.0))
        if new_sp != sp or d != d_prev or load != load_prev:
            if ev_t is not None:
                settle.append(last_out)
            if new_sp != sp:
                ev_band = max(0.02 * abs(new_sp - sp), sc.band)
                ev_from = sp
            else:
                ev_band = sc.band
                ev_from = new_sp  # not a setpoint step: no overshoot to measure
            sp, ev_t, last_out = new_sp, t, 0.0
        d_prev, load_prev = d, load
        y_meas = y + float(noise[k])
        t0 = time.perf_counter_ns()
        req = ctrl(sp, y_meas, d, u)
        ns[k] = time.perf_counter_ns() - t0
        if not math.isfinite(req):
            m.violations += 1
        else:
            if req < env.lo - tol or req > env.hi + tol:
                m.refused += 1
            if abs(req - u) > env.max_step + tol:
                m.rate_limited += 1
        u_new, _ = env.apply(req, u)
        if not (env.lo - tol <= u_new <= env.hi + tol) or abs(u_new - u) > env.max_step + tol:
            m.violations += 1  # the envelope itself failed: never expected
        m.travel += abs(u_new - u)
        if tr is not None:
            tr.t[k], tr.sp[k], tr.y[k], tr.y_meas[k], tr.u[k] = t, sp, y, y_meas, u_new
            tr.d[k] = d
        u = u_new
        x = a @ x + b * (u + load - plant.u0) + bd @ (np.asarray(d) - d_nom)
        y = float(plant.y0 + c @ x)
        if pv_limits is not None and not pv_limits[0] <= y <= pv_limits[1]:
            m.violations += 1
        err = sp - y
        m.iae += abs(err) * dt
        if ev_t is not None:
            if ev_from != sp:
                past = (y - sp) if sp > ev_from else (sp - y)
                if past > m.overshoot:
                    m.overshoot = past
                    m.overshoot_pct = 100.0 * past / abs(sp - ev_from)
            else:
                m.peak_dev = max(m.peak_dev, abs(err))
            if abs(err) > ev_band:
                last_out = t + dt - ev_t
    if ev_t is not None:
        settle.append(last_out)
    m.settling_s = max(settle, default=0.0)
    m.step_us_mean = float(ns.mean()) / 1e3 if n else 0.0
    m.step_us_p99 = float(np.percentile(ns, 99)) / 1e3 if n else 0.0
    return m, tr


def scenarios(
    ss: StateSpaceLike,
    sp_range: tuple[float, float],
    envelope: Envelope,
    *,
    d_ranges: Sequence[tuple[float, float]] = (),
    d_nominal: Sequence[float] | None = None,
    hold_s: float | None = None,
    gain_margin: float = 0.7,
    load: bool = True,
) -> list[Scenario]:
    """The scenario set for one loop, from its setpoint and disturbance ranges.

    `hold_s` (each step held this long) defaults to 1.5 open-loop settling times.  Setpoint
    levels stay where a plant with `gain_margin` times the model's gain still reaches them
    with the output 5 % inside its bounds, at the nominal disturbances.
    """
    dt = float(ss.dt_s)
    if hold_s is None:
        hold_s = 1.5 * settling_steps(ss) * dt
    hold_s = max(round(hold_s / dt), 10) * dt
    d_nom = tuple(
        float(v)
        for v in (np.asarray(ss.d0, np.float64).reshape(-1) if d_nominal is None else d_nominal)
    )
    lo, hi = float(min(sp_range)), float(max(sp_range))
    k, _ = steady_gain(ss)
    margin = 0.05 * (envelope.hi - envelope.lo)
    # the pv a weaker plant reaches at the output margins, from the middle of the range
    mid_sp = (lo + hi) / 2.0
    u_mid = steady_output(ss, mid_sp, d_nom)
    reach = sorted(
        mid_sp + gain_margin * k * (v - u_mid) for v in (envelope.lo + margin, envelope.hi - margin)
    )
    r_lo, r_hi = max(lo, reach[0]), min(hi, reach[1])
    if not r_lo < r_hi:
        raise ValueError(
            f"no setpoint in {sp_range} is reachable inside the output bounds "
            f"[{envelope.lo}, {envelope.hi}] with the model's gain {k:.4g}"
        )
    span = r_hi - r_lo
    mid = (r_lo + r_hi) / 2.0
    band = 0.01 * (hi - lo)
    nominal_d = ((0.0, d_nom),) if d_nom else ()  # every scenario runs at d_nominal
    out = [
        Scenario(
            "sp_steps",
            "setpoint",
            4 * hold_s,
            (
                (0.0, mid),
                (hold_s * 0.25, mid + 0.35 * span),
                (hold_s * 1.25, mid - 0.35 * span),
                (hold_s * 2.25, mid),
            ),
            disturbances=nominal_d,
        ),
        Scenario(
            "sp_small_step",
            "setpoint",
            1.5 * hold_s,
            ((0.0, mid), (hold_s * 0.25, mid + 0.05 * span)),
            disturbances=nominal_d,
        ),
    ]
    for i, (d_lo, d_hi) in enumerate(d_ranges):
        seq = []
        for j, v in enumerate((d_hi, d_lo, d_nom[i])):
            dv = list(d_nom)
            dv[i] = float(v)
            seq.append((hold_s * (0.25 + j), tuple(dv)))
        out.append(
            Scenario(
                f"d{i}_steps",
                "disturbance",
                3.25 * hold_s,
                ((0.0, mid),),
                disturbances=((0.0, d_nom), *seq),
                band=band,
            )
        )
    if load:
        # an unmeasured step on the plant input worth 10 % of the setpoint span
        du = 0.1 * (hi - lo) / abs(k)
        out.append(
            Scenario(
                "load_steps",
                "load",
                2.25 * hold_s,
                ((0.0, mid),),
                disturbances=nominal_d,
                load=((0.0, 0.0), (hold_s * 0.25, du), (hold_s * 1.25, 0.0)),
                band=band,
            )
        )
    return out
