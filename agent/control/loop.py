"""One control period as a pure function: (spec, inputs, state) -> decision.

Modes:
- `off`: nothing is written; every controller tracks nothing.
- `manual`: the operator's output (`manual_u`, starting from the last output: bumpless).
- `shadow`: the fallback controller drives the plant; the model runs on the same inputs and
  its would-be output is reported beside the active one.
- `auto`: the model drives, inside the envelope; any interlock reason moves the loop to the
  fallback in the same period, and it returns to the model only after `healthy_s` with no
  reason at all, blending the model in from the output it takes over (bumpless).

The fallback PID tracks the applied output whenever it is not active, so switching to it is
bumpless; with its own measurement (`pv`) unusable (stale, lost, bad, NaN) it holds the
last output; an anomaly flag on `pv` does not stop the PID.  Which kernel alarms on an input
count as an interlock is `safety.input_problem`'s (by default only sensor faults).  The envelope
(clamp + rate limit) applies to every controller, manual included.

Never a step, in any state:
- the output's present value unknown (`last_u` NaN) with a rate limit: nothing is written
  (reason `output_unknown`); the runner seeds `last_u` from the PLC's value or the loop's
  `start_output`, and every controller starts from there (the PID tracks it first);
- the PLC's own watchdog/interlock tripped (`LoopInputs.tripped`): active is `plc_tripped`,
  the command follows the value the PLC applies (rate-limited), nothing winds up, and after
  the reset the loop continues from that value on the fallback, returning to the model only
  after `healthy_s`, blended in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from agent.control import safety
from agent.control.pid import Pid, PidState
from agent.control.policy import FeatureState, ModelError, Policy

ACTIVE_CODES = {"off": 0, "manual": 1, "fallback": 2, "model": 3, "plc_tripped": 4}


@dataclass(frozen=True)
class LoopSpec:
    """A loop's settings compiled against the tag table (pure data)."""

    name: str
    period_s: float
    roles: tuple[str, ...]  # loop input roles, pv first
    envelope: safety.Envelope
    fallback: str  # pid | hold | fixed
    pid: Pid | None = None
    fixed_value: float = 0.0
    max_input_age_s: float = 1.5
    healthy_s: float = 10.0
    check_quality: bool = True
    check_anomaly: bool = True
    anomaly_strict: bool = False  # any ANOMALOUS trips, not only a sensor fault (safety.py)
    on_write_failure: bool = True
    transfer_s: float = 5.0
    policy_roles: tuple[int, ...] = ()  # index into `roles` of each model signal


@dataclass
class LoopInputs:
    """What the runner read from the tag table for this period."""

    now_ns: int
    sp: float
    values: list[float]  # per role, same order as LoopSpec.roles
    quality: list[int]
    flags: list[int]
    ts_ns: list[int]
    write_ok: bool = True
    readback_ok: bool = True
    tripped: bool = False  # the PLC's trip indicator is on (fresh and good)
    applied: float = math.nan  # what the PLC applies while tripped (its feedback tag)
    mismatch: bool = False  # the run-time model check says the plant has changed


@dataclass
class LoopState:
    mode: str
    last_u: float = math.nan
    manual_u: float = math.nan
    pid: PidState = field(default_factory=PidState)
    fs: FeatureState | None = None
    in_fallback: bool = True  # auto starts on the fallback until inputs prove healthy
    healthy_s: float = 0.0
    blend: float = 0.0  # offset added to the model output after a transfer, decays to 0


@dataclass
class Decision:
    command: float | None  # what to write (None: write nothing)
    active: str  # off | manual | fallback | model
    model_u: float  # the model's raw output (NaN if none)
    reasons: tuple[str, ...]  # current interlock reasons
    entered_fallback: bool  # auto left the model this period
    refused: bool  # the controller asked for a value outside the bounds
    pv_ok: bool = True  # the controlled measurement was usable this period


def _problems(spec: LoopSpec, inp: LoopInputs) -> list[str | None]:
    max_age = int(spec.max_input_age_s * 1e9)
    return [
        safety.input_problem(
            inp.values[i],
            inp.quality[i],
            inp.flags[i],
            inp.now_ns - inp.ts_ns[i],
            max_age,
            check_quality=spec.check_quality,
            check_anomaly=spec.check_anomaly,
            anomaly_strict=spec.anomaly_strict,
        )
        for i in range(len(spec.roles))
    ]


def step(spec: LoopSpec, policy: Policy | None, st: LoopState, inp: LoopInputs) -> Decision:
    """Decide this period's output; updates `st` in place and returns the decision."""
    per_input = _problems(spec, inp)
    reasons: list[str] = [r for r in per_input if r is not None]
    pv = inp.values[0]
    # the PID needs a live, valid measurement; an anomaly flag distrusts the model's view of
    # the plant, not the measurement, so the PID keeps controlling on it
    pv_ok = per_input[0] in (None, safety.ANOMALY)
    sp = inp.sp
    if not math.isfinite(sp):
        reasons.append(safety.NO_SETPOINT)
    if spec.on_write_failure and not inp.write_ok:
        reasons.append(safety.WRITE_FAILED)
    if spec.on_write_failure and not inp.readback_ok:
        reasons.append(safety.READBACK_MISMATCH)
    if inp.tripped:
        reasons.append(safety.PLC_TRIPPED)
    if inp.mismatch:
        reasons.append(safety.MODEL_MISMATCH)

    model_u = math.nan
    if policy is not None and st.fs is not None:
        fs = st.fs
        sig = []
        for k, ri in enumerate(spec.policy_roles):
            v = inp.values[ri]
            if not math.isfinite(v):  # keep the history finite: repeat the last sample
                v = float(fs.buf[2 + k, fs.pos])
            sig.append(v)
        pv_hist = pv if math.isfinite(pv) else sp - float(fs.buf[1, fs.pos])
        fs.push_inputs(sp if math.isfinite(sp) else 0.0, pv_hist, sig)
        if not fs.primed:
            fs.push_output(st.last_u if math.isfinite(st.last_u) else 0.0)
        try:
            model_u = policy.invoke(fs)
            if not math.isfinite(model_u):
                reasons.append(safety.MODEL_NAN)
        except ModelError:
            model_u = math.nan
            reasons.append(safety.MODEL_ERROR)

    # dedupe, stable order
    reasons_t = tuple(dict.fromkeys(reasons))
    st.healthy_s = 0.0 if reasons_t else st.healthy_s + spec.period_s

    entered = False
    mode = st.mode
    if mode == "auto":
        if st.in_fallback:
            if not reasons_t and st.healthy_s >= spec.healthy_s and math.isfinite(model_u):
                st.in_fallback = False
                last = st.last_u if math.isfinite(st.last_u) else model_u
                st.blend = last - model_u
        elif reasons_t:
            st.in_fallback = True
            entered = True
    active = {"off": "off", "manual": "manual", "shadow": "fallback"}.get(
        mode, "fallback" if st.in_fallback else "model"
    )
    if inp.tripped and active != "off":
        active = "plc_tripped"

    last = st.last_u
    if active == "off":
        if policy is not None and st.fs is not None:
            st.fs.push_output(last if math.isfinite(last) else 0.0)
        return Decision(None, "off", model_u, reasons_t, False, False, pv_ok)
    if active == "plc_tripped":
        # follow what the PLC applies, so its reset continues from there (no step)
        u = inp.applied if math.isfinite(inp.applied) else last
    elif active == "manual":
        if not math.isfinite(st.manual_u) and math.isfinite(last):
            st.manual_u = last  # hold what the PLC has (never a default: NaN until known)
        u = st.manual_u
    elif active == "model":
        u = model_u + st.blend
        if spec.transfer_s > 0:
            st.blend *= max(0.0, 1.0 - spec.period_s / spec.transfer_s)
        else:
            st.blend = 0.0
    elif spec.fallback == "pid" and spec.pid is not None and pv_ok and math.isfinite(sp):
        if not math.isfinite(st.pid.last_u) and math.isfinite(last):
            spec.pid.track(st.pid, last, sp, pv)  # first PID period: start from the output
        u = spec.pid.step(st.pid, sp, pv, spec.period_s, last)
    elif spec.fallback == "fixed":
        u = spec.fixed_value
    else:  # hold (also the PID with its measurement unusable)
        u = last

    if not math.isfinite(u) and not math.isfinite(last):
        # nothing known yet (start-up before the first good read): write nothing at all
        if policy is not None and st.fs is not None and st.fs.primed:
            st.fs.push_output(0.0)
        return Decision(
            None, active, model_u, (*reasons_t, safety.OUTPUT_UNKNOWN), entered, False, pv_ok
        )
    safe, refused = spec.envelope.apply(u, last)
    if not math.isfinite(safe):  # rate-limited output with an unknown present value
        return Decision(
            None, active, model_u, (*reasons_t, safety.OUTPUT_UNKNOWN), entered, refused, pv_ok
        )
    st.last_u = safe
    if spec.pid is not None and not (active == "fallback" and spec.fallback == "pid" and pv_ok):
        spec.pid.track(st.pid, safe, sp, pv)  # bumpless: the PID follows whatever went out
    if active != "manual":
        st.manual_u = safe
    if policy is not None and st.fs is not None:
        st.fs.push_output(safe)
    return Decision(safe, active, model_u, reasons_t, entered, refused, pv_ok)
