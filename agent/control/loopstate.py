"""The state of the running control loops: each loop compiled from its config against the tag
table (indices, envelope, fallback, model), what it holds between periods, and what a reload
carries over so outputs never step.  The runner (agent/control/runner.py) schedules the
loops; agent/control/period.py is one period of one."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.control import loop as loopmod
from agent.control.modelcheck import ModelCheck
from agent.control.pid import Pid
from agent.control.policy import ModelError, Policy, resolve_model_path
from agent.control.safety import Envelope
from agent.control.settings import (
    FixedFallback,
    HoldFallback,
    LoopConfig,
    Mode,
    PidFallback,
    output_bounds,
)

MODES: tuple[Mode, ...] = ("off", "manual", "shadow", "auto")


class ControlError(Exception):
    """A loop cannot be set up against this tag table / model (raised at start-up)."""


@dataclass
class ShadowStats:
    n: int = 0
    abs_sum: float = 0.0
    sq_sum: float = 0.0
    max_abs: float = 0.0

    def add(self, diff: float) -> None:
        self.n += 1
        self.abs_sum += abs(diff)
        self.sq_sum += diff * diff
        self.max_abs = max(self.max_abs, abs(diff))

    def as_dict(self) -> dict[str, float]:
        if not self.n:
            return {"periods": 0}
        return {
            "periods": self.n,
            "mean_abs_diff": self.abs_sum / self.n,
            "rms_diff": math.sqrt(self.sq_sum / self.n),
            "max_abs_diff": self.max_abs,
        }


@dataclass
class RunningLoop:
    """One configured loop: its compiled spec and table indices, and its run-time state."""

    cfg: LoopConfig
    spec: loopmod.LoopSpec
    policy: Policy | None
    state: loopmod.LoopState
    role_idx: list[int]
    out_idx: int
    sp_idx: int | None
    hb_idx: int | None
    trip_idx: int | None = None
    applied_idx: int | None = None
    sp_override: float | None = None
    sp_last: float = math.nan
    write_ok: bool = True
    readback_ok: bool = True
    written: float = math.nan
    written_ns: int = 0
    heartbeat: int = 0
    period_no: int = 0
    last: loopmod.Decision | None = None
    logged: set[str] = field(default_factory=set)
    shadow: ShadowStats = field(default_factory=ShadowStats)
    step_s: float = 0.0
    skipped: int = 0
    blind_since_ns: int | None = None
    hb_withheld: bool = False
    crashes: int = 0
    failing: str | None = None  # the last period's crash, None once a period completes
    completed_at: float = 0.0  # monotonic time the last period completed
    check: Any = None  # ModelCheck: the identified plant model against the measured pv
    commission: Any = None  # a plant test running on this loop (start_commission)


def compile_loop(lc: LoopConfig, table: Any, config_dir: str | Path | None) -> RunningLoop:
    """A loop checked against the tag table and its model; ControlError says what is wrong."""
    t = table
    where = f"control loop {lc.name!r}"

    def idx(tag: str, what: str) -> int:
        try:
            return int(t.index[tag])
        except KeyError:
            raise ControlError(f"{where}: {what} tag {tag!r} is not in the tag table") from None

    roles = ["pv"] + [r for r in lc.inputs if r != "pv"]
    role_idx = [idx(lc.inputs[r], f"input {r}") for r in roles]
    out_idx = idx(lc.output, "output")
    if _writable(t, out_idx) is False:
        raise ControlError(f"{where}: output tag {lc.output!r} is not writable")
    hb_idx = None
    if lc.heartbeat is not None:
        hb_idx = idx(lc.heartbeat.tag, "heartbeat")
        if _writable(t, hb_idx) is False:
            raise ControlError(f"{where}: heartbeat tag {lc.heartbeat.tag!r} is not writable")
    sp_idx = idx(lc.setpoint.tag, "setpoint") if lc.setpoint.tag else None
    trip_idx = applied_idx = None
    if lc.plc_trip is not None:
        trip_idx = idx(lc.plc_trip.tag, "plc_trip")
        if lc.plc_trip.applied is not None:
            applied_idx = idx(lc.plc_trip.applied, "plc_trip applied")
    lo_b, hi_b = output_bounds(lc, _bound(t, out_idx, "min"), _bound(t, out_idx, "max"))
    if lo_b is None or hi_b is None:
        raise ControlError(
            f"{where}: output {lc.output!r} needs finite bounds (tag min/max "
            "or the loop's output_min/output_max)"
        )
    lo_v, hi_v = lo_b, hi_b
    if lo_v >= hi_v:
        raise ControlError(f"{where}: output bounds are empty ({lo_v} .. {hi_v})")
    rate = lc.max_rate_per_s
    if rate is None:
        points = getattr(t, "points", None)
        rate = getattr(points[out_idx], "max_rate_per_s", None) if points is not None else None
    max_step = rate * lc.period_s if rate else math.inf
    policy = None
    if lc.model is not None:
        try:
            path = resolve_model_path(lc.model, config_dir)
            policy = Policy(path, signals=roles, period_ms=lc.period_ms)
        except ModelError as e:
            raise ControlError(f"{where}: {e}") from e
    fb = lc.fallback
    pid = None
    if isinstance(fb, PidFallback):
        pid = Pid(
            kp=fb.kp,
            ti_s=fb.ti_s,
            td_s=fb.td_s,
            derivative_filter=fb.derivative_filter,
            tt_s=fb.tt_s,
            out_min=lo_v,
            out_max=hi_v,
            direct_acting=fb.direct_acting,
        )
    elif isinstance(fb, FixedFallback) and not lo_v <= fb.value <= hi_v:
        raise ControlError(f"{where}: fixed fallback {fb.value} outside {lo_v} .. {hi_v}")
    il = lc.interlocks
    spec = loopmod.LoopSpec(
        name=lc.name,
        period_s=lc.period_s,
        roles=tuple(roles),
        envelope=Envelope(lo_v, hi_v, max_step),
        fallback=fb.kind,
        pid=pid,
        fixed_value=fb.value if isinstance(fb, FixedFallback) else 0.0,
        max_input_age_s=il.max_input_age_periods * lc.period_s,
        healthy_s=il.healthy_s,
        check_quality=il.on_bad_quality,
        check_anomaly=il.on_anomaly != "off",
        anomaly_strict=il.on_anomaly == "any",
        on_write_failure=il.on_write_failure,
        policy_roles=tuple(roles.index(s) for s in policy.signals) if policy else (),
    )
    state = loopmod.LoopState(mode=lc.mode)
    if lc.manual_output is not None:
        state.manual_u = min(max(lc.manual_output, lo_v), hi_v)
    if policy is not None:
        state.fs = policy.new_state()
    _ = HoldFallback  # documented alternative, nothing to compile
    loop = RunningLoop(
        lc, spec, policy, state, role_idx, out_idx, sp_idx, hb_idx, trip_idx, applied_idx
    )
    if policy is not None:
        loop.check = ModelCheck.from_card(policy.card, roles)
    return loop


def _bound(table: Any, idx: int, attr: str) -> float:
    arr = getattr(table, attr, None)
    return float(arr[idx]) if arr is not None else math.nan


def _writable(table: Any, idx: int) -> bool | None:
    points = getattr(table, "points", None)
    if points is None:
        return None
    w = getattr(points[idx], "writable", None)
    return None if w is None else bool(w)


def export_states(loops: Mapping[str, RunningLoop]) -> dict[str, dict[str, Any]]:
    """What a reload carries over per loop (see `import_state`)."""
    return {
        name: {
            "cfg": lp.cfg,
            "state": lp.state,
            "sp_override": lp.sp_override,
            "heartbeat": lp.heartbeat,
            "written": (lp.written, lp.written_ns),
        }
        for name, lp in loops.items()
    }


def import_states(
    loops: Mapping[str, RunningLoop], carried: dict[str, dict[str, Any]]
) -> list[str]:
    """Continue loops of the previous pipeline: bumpless across a reload.

    A loop with the same name and output continues from the previous output, PID
    integral, model history (same model and period) and transfer state; a run-time mode
    or setpoint set over HTTP survives unless the new file changed that setting.  Returns
    the names of the loops carried over.
    """
    done = []
    for name, lp in loops.items():
        old = carried.get(name)
        if old is None or old["cfg"].output != lp.cfg.output:
            continue
        ocfg, ost = old["cfg"], old["state"]
        st = lp.state
        st.last_u = min(max(ost.last_u, lp.spec.envelope.lo), lp.spec.envelope.hi)
        st.manual_u = ost.manual_u  # the PID (new tuning maybe) tracks last_u first
        if ocfg.mode == lp.cfg.mode and (ost.mode in ("off", "manual") or lp.policy):
            st.mode = ost.mode  # a mode set at run time stays
        same_model = lp.policy is not None and (ocfg.model, ocfg.period_ms) == (
            lp.cfg.model,
            lp.cfg.period_ms,
        )
        if same_model and ost.fs is not None:
            st.fs = ost.fs
            st.in_fallback, st.healthy_s, st.blend = ost.in_fallback, ost.healthy_s, ost.blend
        sp = old["sp_override"]
        sc = lp.cfg.setpoint
        if (
            sp is not None
            and ocfg.setpoint == sc
            and (sc.min is None or sp >= sc.min)
            and (sc.max is None or sp <= sc.max)
        ):
            lp.sp_override = sp
        if lp.cfg.heartbeat is not None:
            lp.heartbeat = old["heartbeat"] % lp.cfg.heartbeat.modulo
        lp.written, lp.written_ns = old["written"]
        done.append(name)
    return done
