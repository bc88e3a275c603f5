"""Validation before acceptance: closed loop on the identified model, with model mismatch.

A controller learned from the plant's data can only be checked against what was learned
from that data: the identified linear model is the "true plant" here, and +/-30 % gain and
+/-25 % dead time versions of it stand in for the model being wrong.  The candidate (any
plain callable `(sp, y, d, u_prev) -> u`: the MPC expert, the TFLite policy through the
loop step, anything) is compared with a SIMC PID tuned on the same model, both through the
same `Envelope` as the run-time loop, on the same scenarios and the same noise.

* Scenarios come from the loop's setpoint range and the disturbance ranges seen in the
  data: large setpoint steps across the range (the rate limit and the bounds bind), a
  small step (linear behaviour), a step of each measured disturbance over its range, and
  an unmeasured load on the plant input (offset-free or not).  Setpoints are kept where
  the weakest mismatched plant can still reach them inside the output bounds.
* Metrics per scenario: IAE on the noise-free output (a controller cannot score by chasing
  noise), overshoot past a new setpoint, settling time, output travel, and violations:
  periods where the applied output broke the envelope (bounds, rate), the controller
  returned a non-finite value, or the pv left `pv_limits`.  How often the envelope had to
  cut the controller's request (`refused`, `rate_limited`) is reported beside them.
* `acceptance(report)` turns it into a verdict with reasons.

The runs themselves (scenarios, the plant stepped, the metrics) are agent/control/closedloop.py;
this module chooses the plants, the reference PID and the verdict.

Pure numpy; the plant is the model's state space stepped period by period.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from agent.control.closedloop import (
    Controller,
    ControllerFactory,
    Metrics,
    Scenario,
    Start,
    Trace,
    run_scenario,
    scenarios,
    steady_output,
)
from agent.control.mpc import (
    ModelMpc,
    StateSpaceLike,
    dead_steps,
    fopdt_fit,
)
from agent.control.pid import Pid, PidState
from agent.control.safety import Envelope

__all__ = [
    "Controller",
    "ControllerFactory",
    "Metrics",
    "ModelLike",
    "PlantCase",
    "Row",
    "Scenario",
    "Start",
    "Trace",
    "ValidationReport",
    "Verdict",
    "acceptance",
    "mpc_factory",
    "pid_factory",
    "plant_cases",
    "run_scenario",
    "scenarios",
    "simc_tuning",
    "steady_output",
    "validate",
]


class ModelLike(Protocol):
    """What validation needs from `agent.control.ident.LinearModel`."""

    dt_s: float

    def to_state_space(self) -> StateSpaceLike: ...

    def perturbed(self, gain_factor: float, extra_delay_steps: int) -> ModelLike: ...


@dataclass(frozen=True)
class Row:
    plant: str
    scenario: str
    controller: str
    metrics: Metrics


@dataclass
class ValidationReport:
    candidate: str
    baseline: str
    pid_tuning: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def totals(self, controller: str) -> dict[str, float]:
        """Sums (IAE, travel, violations, ...), worst cases (overshoot, settling)."""
        ms = [r.metrics for r in self.rows if r.controller == controller]
        us = [m.step_us_p99 for m in ms]
        return {
            "iae": sum(m.iae for m in ms),
            "overshoot_pct": max((m.overshoot_pct for m in ms), default=0.0),
            "settling_s": max((m.settling_s for m in ms), default=0.0),
            "travel": sum(m.travel for m in ms),
            "violations": sum(m.violations for m in ms),
            "refused": sum(m.refused for m in ms),
            "rate_limited": sum(m.rate_limited for m in ms),
            "step_us_p99": max(us, default=0.0),
        }

    @property
    def iae_ratio(self) -> float:
        """Geometric mean over plant x scenario of candidate IAE / baseline IAE: each case
        counts once, whatever its units - a summed IAE is dominated by the largest setpoint
        steps, where the output's bounds and rate limit leave any controller little to win."""
        r = list(self.ratios().values())
        if not r or not all(math.isfinite(v) and v > 0 for v in r):
            return math.inf if r else math.nan
        return float(np.exp(np.mean(np.log(r))))

    @property
    def iae_ratio_sum(self) -> float:
        """Candidate IAE over baseline IAE, each summed over every plant and scenario."""
        base = self.totals(self.baseline)["iae"]
        return self.totals(self.candidate)["iae"] / base if base > 0 else math.inf

    def ratios(self) -> dict[tuple[str, str], float]:
        """IAE ratio per (plant, scenario)."""
        base = {
            (r.plant, r.scenario): r.metrics.iae for r in self.rows if r.controller == self.baseline
        }
        out = {}
        for r in self.rows:
            if r.controller == self.candidate:
                b = base.get((r.plant, r.scenario), 0.0)
                out[(r.plant, r.scenario)] = r.metrics.iae / b if b > 0 else math.inf
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the model card and the commissioning report."""
        return {
            "candidate": self.candidate,
            "baseline": self.baseline,
            "pid_tuning": self.pid_tuning,
            "iae_ratio": round(self.iae_ratio, 4),
            "iae_ratio_sum": round(self.iae_ratio_sum, 4),
            "totals": {c: self.totals(c) for c in (self.candidate, self.baseline)},
            "settings": self.settings,
            "rows": [
                {"plant": r.plant, "scenario": r.scenario, "controller": r.controller}
                | {
                    k: round(v, 4) if isinstance(v, float) else v
                    for k, v in asdict(r.metrics).items()
                }
                for r in self.rows
            ],
        }


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reasons: tuple[str, ...]
    iae_ratio: float


@dataclass(frozen=True)
class PlantCase:
    name: str
    ss: StateSpaceLike


def plant_cases(
    model: ModelLike,
    *,
    gains: Sequence[float] = (0.7, 1.3),
    delays: Sequence[float] = (-0.25, 0.25),
) -> list[PlantCase]:
    """The nominal model and its mismatched versions: gain factors, and relative changes of
    the dead time in whole periods (rounded half away from zero; at least one period when
    the model has any dead time, never below the model's one-period minimum)."""
    nominal = model.to_state_space()
    out = [PlantCase("nominal", nominal)]
    out += [PlantCase(f"gain_x{g:g}", model.perturbed(g, 0).to_state_space()) for g in gains]
    theta = dead_steps(nominal)
    nk = getattr(model, "nk", None)
    floor = 1 - int(nk[0]) if nk else -theta
    for f in delays:
        steps = int(math.copysign(math.floor(abs(f * theta) + 0.5), f))
        if steps == 0 and theta > 0 and f != 0:
            steps = 1 if f > 0 else -1
        steps = max(steps, floor, -theta)
        if steps:
            name = f"delay_{'+' if f > 0 else '-'}{abs(round(100 * f))}pct"
            out.append(PlantCase(name, model.perturbed(1.0, steps).to_state_space()))
    return out


def simc_tuning(ss: StateSpaceLike, simc_model: Any = None) -> dict[str, Any]:
    """SIMC on the identified model by `agent.control.ident.simc_pid`: on `simc_model` (the
    identification's `Fopdt`/`Sopdt`) when given, else on the FOPDT of the model's own step
    response."""
    from agent.control import ident

    if simc_model is None:
        k, tau, theta = fopdt_fit(ss)
        simc_model = ident.Fopdt(K=k, tau_s=tau, theta_s=theta)
    return ident.simc_pid(simc_model)


def pid_factory(tuning: Mapping[str, Any], envelope: Envelope, dt_s: float) -> ControllerFactory:
    """The run-time `Pid` with the envelope's limits, started bumplessly (tracking).

    `tuning` as `simc_pid` gives it: kp, ti_s, td_s, direct_acting (a negative kp also
    means direct acting)."""
    kp = float(tuning["kp"])
    pid = Pid(
        kp=abs(kp),
        ti_s=float(tuning["ti_s"]),
        td_s=float(tuning.get("td_s", 0.0)),
        out_min=envelope.lo,
        out_max=envelope.hi,
        direct_acting=bool(tuning.get("direct_acting", False)) != (kp < 0),
    )

    def make(start: Start) -> Controller:
        st = PidState()
        pid.track(st, start.u, start.sp, start.y)

        def step(sp: float, y: float, d: Sequence[float], u_prev: float) -> float:
            return pid.step(st, sp, y, dt_s, u_prev)

        return step

    return make


def mpc_factory(ss: StateSpaceLike, envelope: Envelope, **kw: Any) -> ControllerFactory:
    """The MPC expert on the model (built once; reset per scenario)."""
    mpc = ModelMpc(ss, u_lo=envelope.lo, u_hi=envelope.hi, max_step=envelope.max_step, **kw)

    def make(start: Start) -> Controller:
        mpc.reset(start.u, start.y, start.d)
        return mpc.step

    return make


def validate(
    model: ModelLike,
    candidate: ControllerFactory,
    *,
    envelope: Envelope,
    sp_range: tuple[float, float],
    d_ranges: Sequence[tuple[float, float]] = (),
    d_nominal: Sequence[float] | None = None,
    pid_tuning: Mapping[str, Any] | None = None,
    simc_model: Any = None,
    gains: Sequence[float] = (0.7, 1.3),
    delays: Sequence[float] = (-0.25, 0.25),
    noise_std: float = 0.0,
    seed: int = 0,
    pv_limits: tuple[float, float] | None = None,
    hold_s: float | None = None,
    candidate_name: str = "candidate",
) -> ValidationReport:
    """Candidate vs SIMC PID (tuned on `model`, or `pid_tuning`) on every plant case x
    scenario, with the same envelope, starts and noise for both."""
    nominal = model.to_state_space()
    tuning = dict(pid_tuning) if pid_tuning is not None else simc_tuning(nominal, simc_model)
    pid = pid_factory(tuning, envelope, float(nominal.dt_s))
    scs = scenarios(
        nominal,
        sp_range,
        envelope,
        d_ranges=d_ranges,
        d_nominal=d_nominal,
        hold_s=hold_s,
        gain_margin=min((*gains, 1.0)),
    )
    cases = plant_cases(model, gains=gains, delays=delays)
    rep = ValidationReport(
        candidate_name,
        "simc_pid",
        tuning,
        settings={
            "plants": [c.name for c in cases],
            "scenarios": [s.name for s in scs],
            "noise_std": noise_std,
            "seed": seed,
            "envelope": {"lo": envelope.lo, "hi": envelope.hi, "max_step": envelope.max_step},
            "sp_range": list(sp_range),
            "d_ranges": [list(r) for r in d_ranges],
        },
    )
    for ci, case in enumerate(cases):
        for si, sc in enumerate(scs):
            for name, make in ((candidate_name, candidate), ("simc_pid", pid)):
                met, _ = run_scenario(
                    case.ss,
                    make,
                    sc,
                    envelope,
                    noise_std=noise_std,
                    seed=seed + 1000 * ci + si,
                    pv_limits=pv_limits,
                )
                rep.rows.append(Row(case.name, sc.name, name, met))
    return rep


def acceptance(
    report: ValidationReport,
    max_iae_ratio: float = 0.8,
    *,
    max_violations: int = 0,
    max_case_ratio: float | None = 1.5,
) -> Verdict:
    """Accept the candidate when it beats the PID by `max_iae_ratio` overall, breaks the
    envelope at most `max_violations` times, and is nowhere much worse than the PID
    (`max_case_ratio` per plant x scenario: a controller that wins on average but falls
    apart on one mismatch case is not safe to run)."""
    reasons = []
    ratio = report.iae_ratio
    if not math.isfinite(ratio) or ratio > max_iae_ratio:
        reasons.append(f"IAE {ratio:.3f}x the SIMC PID (must be <= {max_iae_ratio})")
    viol = int(report.totals(report.candidate)["violations"])
    if viol > max_violations:
        bad = sorted(
            {
                f"{r.plant}/{r.scenario}"
                for r in report.rows
                if r.controller == report.candidate and r.metrics.violations
            }
        )
        reasons.append(f"{viol} envelope violations (allowed {max_violations}): {', '.join(bad)}")
    if max_case_ratio is not None:
        worst = [
            f"{p}/{s} {v:.2f}x"
            for (p, s), v in sorted(report.ratios().items())
            if not math.isfinite(v) or v > max_case_ratio
        ]
        if worst:
            reasons.append(f"worse than {max_case_ratio}x the PID on: {', '.join(worst)}")
    return Verdict(not reasons, tuple(reasons), ratio)
