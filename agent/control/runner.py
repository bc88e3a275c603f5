"""`ControlRunner`: the thin asyncio shell around the pure loop step.

One task per loop, scheduled on absolute deadlines (`start + k * period`, so jitter never
accumulates into drift); a period that is missed entirely is skipped, never replayed.  Each
period reads the loop's inputs from the tag table (kernel-filtered value, quality, flags,
timestamp), calls `agent.control.loop.step`, writes the command through
`write(tag, value, role=...)` (the Acquirer's write gate: role, bounds, rate and budget, a
second fence), and writes the heartbeat register.  Nothing is queued: a setpoint or output
decided for a period that has passed is dropped, so a stale command is never sent after a
stall.

Fail-safe by construction:
- the heartbeat is written last in a period, so a period that crashes or hangs feeds no
  heartbeat and the PLC's own watchdog takes the plant;
- with the measurement unusable for `interlocks.max_blind_s` the heartbeat stops too (the
  loop is holding blind: the PLC's watchdog is the better judge);
- a period that raises is logged with its traceback, counted
  (`edgeloop_component_crashes_total{component="control"}`), shown in `status()` and
  `/readyz`, and retried with a capped backoff; the loop task itself never dies silently.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

from agent import names
from agent.control import loop as loopmod
from agent.control.pid import Pid
from agent.control.policy import ModelError, Policy, resolve_model_path
from agent.control.safety import READBACK_MISMATCH, WRITE_FAILED, Envelope
from agent.control.settings import (
    ControlConfig,
    FixedFallback,
    HoldFallback,
    LoopConfig,
    Mode,
    PidFallback,
    output_bounds,
)
from agent.names import (
    COMPONENT_CRASHES_TOTAL,
    COMPONENT_UP,
    CONTROL_FALLBACKS_TOTAL,
    CONTROL_MODE,
    CONTROL_MODEL_MISMATCH,
    CONTROL_REFUSED_TOTAL,
    CONTROL_STEP_SECONDS,
    CONTROL_WRITE_ERRORS_TOTAL,
    CONTROL_WRITES_TOTAL,
)

log = logging.getLogger("edgeloop.control")

MODES: tuple[Mode, ...] = ("off", "manual", "shadow", "auto")
CRASH_BACKOFF_MAX_S = 5.0
STALL_GRACE_S = 5.0  # a period may take this long beyond two periods before it is a stall


class ControlError(Exception):
    """A loop cannot be set up against this tag table / model (raised at start-up)."""


@dataclass
class _ShadowStats:
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
class _Loop:
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
    shadow: _ShadowStats = field(default_factory=_ShadowStats)
    step_s: float = 0.0
    skipped: int = 0
    blind_since_ns: int | None = None
    hb_withheld: bool = False
    crashes: int = 0
    failing: str | None = None  # the last period's crash, None once a period completes
    completed_at: float = 0.0  # monotonic time the last period completed
    check: Any = None  # ModelCheck: the identified plant model against the measured pv
    commission: Any = None  # a plant test running on this loop (start_commission)


class _Commissioning:
    """A plant test running on a loop of the service, and its result."""

    def __init__(self, test: Any, band: tuple[float, float], train: bool) -> None:
        self.test, self.band, self.train = test, band, train
        self.rows: list[tuple[float, float, float, list[float], str]] = []
        self.running = True
        self.stop_requested = False
        self.result: dict[str, Any] | None = None
        self.finishing: asyncio.Task[Any] | None = None

    def status(self) -> dict[str, Any]:
        if self.running:
            state = self.test.phase
        elif self.result is None:
            state = "identifying and training"
        else:
            state = "done"
        return {
            "state": state,
            "left_s": round(self.test.time_left_s(), 1) if self.running else 0.0,
            "rows": len(self.rows),
            "log": list(self.test.log),
            "result": self.result,
        }


def st_mode_checks(mode: str) -> bool:
    """The model check runs where the model matters: shadow (before auto) and auto."""
    return mode in ("shadow", "auto")


class ModelCheck:
    """Run-time honesty: the identified plant model (in the card) predicts pv from the
    applied output and the measured disturbances (`ident.Predictor`, free-run with a slow
    bias); its error RMS over about a settling time, divided by what it was on the
    commissioning data, is `edgeloop_control_model_mismatch`. Above `threshold` for `hold_s`
    the loop falls back with reason `model_mismatch` and says to re-commission; it clears
    once the ratio is back under the threshold."""

    def __init__(self, predictor: Any, reference: float, threshold: float, hold_s: float):
        self.predictor, self.reference = predictor, reference
        self.threshold, self.hold_s = threshold, hold_s
        self.dt = float(predictor.model.dt_s)
        self.over_s = 0.0
        self.mismatched = False
        self.told = False

    @classmethod
    def from_card(cls, card: dict[str, Any], roles: list[str]) -> ModelCheck | None:
        check = card.get("model_check")
        pm = card.get("plant_model")
        if not check or not pm:
            return None  # a model without its plant model (e.g. the shipped heater's)
        from agent.control.ident import LinearModel, Predictor

        model = LinearModel.from_card(pm)
        if list(model.d_names) != list(roles[1 : 1 + len(model.d_names)]):
            return None
        return cls(
            Predictor(model),
            float(check["reference_rms"]),
            float(check.get("threshold", 3.0)),
            float(check.get("hold_s", 3.0 * model.settling_time_s())),
        )

    def update(self, u: float, d: list[float], y: float, pv_ok: bool) -> float:
        if not pv_ok or not math.isfinite(u):
            return math.nan
        self.predictor.step(u, d, y)
        rms = self.predictor.rms
        ratio = rms / self.reference if self.reference > 0 and math.isfinite(rms) else math.nan
        p = self.predictor  # after its first window: the bias has caught up with the start
        warm = p.steps * self.dt >= 2.0 * p.window_s
        if warm and math.isfinite(ratio) and ratio > self.threshold:
            self.over_s += self.dt
        else:
            self.over_s = 0.0
        was = self.mismatched
        self.mismatched = self.over_s >= self.hold_s
        if was and not self.mismatched:
            self.told = False
        return ratio


def _num(v: float) -> float | None:
    """JSON-safe number for event payloads (NaN -> None)."""
    return v if math.isfinite(v) else None


def _bound(table: Any, idx: int, attr: str) -> float:
    arr = getattr(table, attr, None)
    return float(arr[idx]) if arr is not None else math.nan


def _writable(table: Any, idx: int) -> bool | None:
    points = getattr(table, "points", None)
    if points is None:
        return None
    w = getattr(points[idx], "writable", None)
    return None if w is None else bool(w)


class WriteFn(Protocol):
    """The acquirer's write: engineering units, `role` names the writer in events and logs."""

    def __call__(self, tag: str, value: float, role: str | None = None) -> Awaitable[None]: ...


class ControlRunner:
    """Runs every configured loop; see the module docstring."""

    _stopping: asyncio.Event

    def __init__(
        self,
        control_cfg: ControlConfig,
        table: Any,
        write: WriteFn,
        metrics: Any,
        emit_event: Callable[[str, dict[str, Any]], None] | None = None,
        config_dir: str | Path | None = None,
        commission_dir: str | Path | None = None,
    ) -> None:
        self.cfg = control_cfg
        self.table = table
        self._write = write
        self.metrics = metrics
        self._emit = emit_event or (lambda kind, payload: None)
        self.loops: dict[str, _Loop] = {}
        self._started_at = 0.0
        self.commission_dir = Path(commission_dir) if commission_dir is not None else None
        for lc in control_cfg.loops:
            self.loops[lc.name] = self._compile(lc, config_dir)

    # -- set-up ---------------------------------------------------------------------------
    def _compile(self, lc: LoopConfig, config_dir: str | Path | None) -> _Loop:
        t = self.table
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
        loop = _Loop(
            lc, spec, policy, state, role_idx, out_idx, sp_idx, hb_idx, trip_idx, applied_idx
        )
        if policy is not None:
            loop.check = ModelCheck.from_card(policy.card, roles)
        return loop

    # -- runtime commands -----------------------------------------------------------------
    def _get(self, name: str) -> _Loop:
        try:
            return self.loops[name]
        except KeyError:
            raise KeyError(f"no control loop {name!r} (have {sorted(self.loops)})") from None

    def set_setpoint(self, loop: str, value: float | None) -> None:
        """Run-time setpoint (None returns to the configured source); bounds are enforced."""
        lp = self._get(loop)
        if value is None:
            lp.sp_override = None
            return
        v = float(value)
        sc = lp.cfg.setpoint
        if not math.isfinite(v):
            raise ValueError("setpoint must be a finite number")
        if (sc.min is not None and v < sc.min) or (sc.max is not None and v > sc.max):
            raise ValueError(f"setpoint {v} outside {sc.min} .. {sc.max} of loop {loop!r}")
        lp.sp_override = v
        self._emit(names.EVENT_CONTROL_MODE, {"loop": loop, "setpoint": v})

    def set_mode(self, loop: str, mode: str) -> None:
        """Switch mode; auto starts on the fallback until inputs prove healthy (bumpless)."""
        lp = self._get(loop)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if mode in ("shadow", "auto") and lp.policy is None:
            raise ValueError(f"loop {loop!r} has no model: {mode} is not available")
        st = lp.state
        if lp.commission is not None and lp.commission.running:
            lp.commission.stop_requested = True  # the test ramps back, then the mode applies
        if mode == st.mode:
            return
        if mode == "manual":
            st.manual_u = st.last_u
        if mode == "auto":
            st.in_fallback = True
        previous, st.mode = st.mode, mode
        log.info("control loop %s: mode %s -> %s", loop, previous, mode)
        self._emit(names.EVENT_CONTROL_MODE, {"loop": loop, "from": previous, "to": mode})

    def set_output(self, loop: str, value: float) -> None:
        """Manual output (only used in manual mode; still clamped and rate-limited)."""
        lp = self._get(loop)
        if not math.isfinite(value):
            raise ValueError("output must be a finite number")
        lp.state.manual_u = float(value)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, lp in self.loops.items():
            d, st = lp.last, lp.state
            out[name] = {
                "mode": st.mode,
                "active": d.active if d else None,
                "setpoint": lp.sp_last,
                "pv": float(self.table.value[lp.role_idx[0]]),
                "output": st.last_u,
                "model_output": d.model_u if d else math.nan,
                "reasons": list(d.reasons) if d else [],
                "in_fallback": st.in_fallback,
                "healthy_s": st.healthy_s,
                "step_us": lp.step_s * 1e6,
                "periods": lp.period_no,
                "skipped_periods": lp.skipped,
                "shadow": lp.shadow.as_dict(),
                "heartbeat": None
                if lp.hb_idx is None
                else ("withheld" if lp.hb_withheld else "running"),
                "crashes": lp.crashes,
                "failing": lp.failing,
                "commission": lp.commission.status() if lp.commission is not None else None,
            }
        return out

    def export_state(self) -> dict[str, dict[str, Any]]:
        """What a reload carries over per loop (see `import_state`)."""
        return {
            name: {
                "cfg": lp.cfg,
                "state": lp.state,
                "sp_override": lp.sp_override,
                "heartbeat": lp.heartbeat,
                "written": (lp.written, lp.written_ns),
            }
            for name, lp in self.loops.items()
        }

    def import_state(self, carried: dict[str, dict[str, Any]]) -> list[str]:
        """Continue loops of the previous pipeline: bumpless across a reload.

        A loop with the same name and output continues from the previous output, PID
        integral, model history (same model and period) and transfer state; a run-time mode
        or setpoint set over HTTP survives unless the new file changed that setting.  Returns
        the names of the loops carried over.
        """
        done = []
        for name, lp in self.loops.items():
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

    def stalled(self, now: float | None = None) -> str | None:
        """A loop whose periods stopped completing (crashing or hung), or None."""
        now = time.monotonic() if now is None else now
        for name, lp in self.loops.items():
            if lp.failing is not None:
                return f"control loop {name}: {lp.failing}"
            since = lp.completed_at or self._started_at
            if since and now - since > 2 * lp.cfg.period_s + STALL_GRACE_S:
                return f"control loop {name}: no period completed for {now - since:.1f} s"
        return None

    def healthy(self) -> bool:
        """No loop is crashing (its last period completed)."""
        return all(lp.failing is None for lp in self.loops.values())

    def periods(self) -> int:
        """Periods completed by every loop together (the service's watchdog progress)."""
        return sum(lp.period_no for lp in self.loops.values())

    # -- the period -----------------------------------------------------------------------
    def _setpoint(self, lp: _Loop, now_ns: int) -> float:
        if lp.sp_override is not None:
            return lp.sp_override
        sc = lp.cfg.setpoint
        if lp.sp_idx is None:
            return float(sc.value)  # type: ignore[arg-type]
        t, i = self.table, lp.sp_idx
        age = now_ns - int(t.ts_ns[i])
        v = float(t.value[i])
        max_age = lp.spec.max_input_age_s * 1e9
        if int(t.quality[i]) == 0 and age <= max_age and math.isfinite(v):
            lo = sc.min if sc.min is not None else -math.inf
            hi = sc.max if sc.max is not None else math.inf
            lp.sp_last = min(max(v, lo), hi)
        return lp.sp_last  # a stale tag keeps the last good setpoint (NaN if none yet)

    def compute(self, lp: _Loop, now_ns: int) -> loopmod.Decision:
        """One period's decision from the tag table (no I/O)."""
        t = self.table
        ri = lp.role_idx
        st = lp.state
        if not math.isfinite(st.last_u):
            # bumpless start: continue from what the PLC holds now, or from the configured
            # start_output of a write-only register; unknown -> the step writes nothing
            v = float(t.raw[lp.out_idx]) if int(t.quality[lp.out_idx]) == 0 else math.nan
            if not math.isfinite(v):  # not readable: what we last wrote, or the configured start
                v = lp.written if math.isfinite(lp.written) else math.nan
            if not math.isfinite(v) and lp.cfg.start_output is not None:
                v = lp.cfg.start_output
            if math.isfinite(v):
                st.last_u = min(max(v, lp.spec.envelope.lo), lp.spec.envelope.hi)
        tripped, applied = False, math.nan
        if lp.trip_idx is not None:
            ti = lp.trip_idx
            fresh = now_ns - int(t.ts_ns[ti]) <= lp.spec.max_input_age_s * 1e9
            tv = float(t.raw[ti])
            tripped = int(t.quality[ti]) == 0 and fresh and math.isfinite(tv) and tv != 0.0
            if tripped and lp.applied_idx is not None and int(t.quality[lp.applied_idx]) == 0:
                applied = float(t.raw[lp.applied_idx])
        sp = self._setpoint(lp, now_ns)
        lp.sp_last = sp
        if (
            lp.cfg.readback
            and math.isfinite(lp.written)
            and int(t.ts_ns[lp.out_idx]) > lp.written_ns
        ):
            rb = float(t.raw[lp.out_idx])
            lp.readback_ok = abs(rb - lp.written) <= 1e-3 * max(1.0, abs(lp.written))
        inp = loopmod.LoopInputs(
            now_ns=now_ns,
            sp=sp,
            values=[float(t.value[i]) for i in ri],
            quality=[int(t.quality[i]) for i in ri],
            flags=[int(t.flags[i]) for i in ri],
            ts_ns=[int(t.ts_ns[i]) for i in ri],
            write_ok=lp.write_ok,
            readback_ok=lp.readback_ok,
            tripped=tripped,
            applied=applied,
            mismatch=lp.check is not None and lp.check.mismatched,
        )
        t0 = time.perf_counter()
        d = loopmod.step(lp.spec, lp.policy, lp.state, inp)
        lp.step_s = time.perf_counter() - t0
        return d

    def _account(self, lp: _Loop, d: loopmod.Decision, prev: loopmod.Decision | None) -> None:
        name = lp.cfg.name
        m = self.metrics
        m.observe(CONTROL_STEP_SECONDS, lp.step_s, loop=name)
        m.set(CONTROL_MODE, loopmod.ACTIVE_CODES[d.active], loop=name)
        if d.refused:
            m.inc(CONTROL_REFUSED_TOTAL, loop=name)
        if d.entered_fallback:
            for r in d.reasons:
                m.inc(CONTROL_FALLBACKS_TOTAL, loop=name, reason=r)
            log.warning(
                "control loop %s: model -> fallback (%s): %s",
                name,
                lp.spec.fallback,
                ", ".join(d.reasons),
            )
            self._emit(
                names.EVENT_CONTROL_FALLBACK,
                {"loop": name, "reasons": list(d.reasons), "fallback": lp.spec.fallback},
            )
        new = set(d.reasons) - lp.logged
        if new and not d.entered_fallback:
            log.warning("control loop %s (%s): %s", name, d.active, ", ".join(sorted(new)))
        lp.logged = set(d.reasons)
        if prev is not None and prev.active != d.active:
            log.info("control loop %s: active controller %s -> %s", name, prev.active, d.active)
            self._emit(
                names.EVENT_CONTROL_MODE, {"loop": name, "active": d.active, "from": prev.active}
            )
        would = math.nan
        if math.isfinite(d.model_u) and d.command is not None:
            would = lp.spec.envelope.apply(d.model_u, d.command)[0]
            if lp.state.mode == "shadow":
                lp.shadow.add(would - d.command)
        # one record per period (history only): what shadow mode compares, what reports plot
        self._emit(
            names.EVENT_CONTROL_ACTION,
            {
                "loop": name,
                "mode": lp.state.mode,
                "active": d.active,
                "sp": _num(lp.sp_last),
                "pv": _num(float(self.table.value[lp.role_idx[0]])),
                "mv": d.command,
                "model": _num(would),
                "reasons": list(d.reasons),
            },
        )

    async def _send(self, lp: _Loop, tag: str, value: float, role: str) -> bool:
        try:
            async with asyncio.timeout(lp.cfg.period_s):  # not wait_for: 3.11's can eat a cancel
                await self._write(tag, value, role=f"{role}:{lp.cfg.name}")
        except Exception as e:  # any failure is an interlock reason; the loop runs on
            self.metrics.inc(CONTROL_WRITE_ERRORS_TOTAL, loop=lp.cfg.name)
            if type(e).__name__ == "WriteRefused":
                self.metrics.inc(CONTROL_REFUSED_TOTAL, loop=lp.cfg.name)
            if WRITE_FAILED not in lp.logged:
                log.warning("control loop %s: write %s=%r failed: %s", lp.cfg.name, tag, value, e)
            return False
        self.metrics.inc(CONTROL_WRITES_TOTAL, loop=lp.cfg.name)
        return True

    # -- commissioning on the running service ---------------------------------------------
    def start_commission(self, loop: str, opts: dict[str, Any]) -> dict[str, Any]:
        """Start a plant test on `loop` (POST /control/<loop>/commission): the loop's output
        follows the test inside the envelope, the heartbeat runs on; when the test is done,
        identification, PID tuning and training run on a thread and write to
        `commission_dir`; progress and the result are in `status()[loop]["commission"]`."""
        from agent.control.plant_test import PlantTest

        lp = self._get(loop)
        if lp.commission is not None and lp.commission.running:
            raise ValueError(f"loop {loop!r} is already being commissioned")
        if lp.state.mode in ("auto", "shadow") and not opts.get("force"):
            raise ValueError("switch the loop to manual (or off) before a plant test")
        if not math.isfinite(lp.state.last_u):
            raise ValueError("the output's present value is not known yet")
        if self.commission_dir is None:
            raise ValueError("no commission_dir configured")
        env = lp.spec.envelope
        sc = lp.cfg.setpoint
        band = (
            float(opts.get("pv_lo", sc.min if sc.min is not None else -math.inf)),
            float(opts.get("pv_hi", sc.max if sc.max is not None else math.inf)),
        )
        try:
            test = PlantTest(
                u0=lp.state.last_u,
                lo=env.lo,
                hi=env.hi,
                amplitude=float(opts.get("amplitude", 0.05 * (env.hi - env.lo))),
                budget_s=float(opts.get("budget_s", 900.0)),
                period_s=lp.cfg.period_s,
                seed=int(opts.get("seed", 0)),
                pv_dev_max=float(opts.get("pv_dev", 0.1 * (band[1] - band[0]))),
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"cannot start the plant test: {e}") from None
        lp.commission = _Commissioning(test, band, bool(opts.get("train", True)))
        log.warning("control loop %s: plant test started (%s)", loop, opts)
        self._emit(names.EVENT_CONTROL_MODE, {"loop": loop, "commission": "started"})
        return {"started": True}

    async def _commission_period(self, lp: _Loop, now_ns: int) -> None:
        from agent.control import safety as sf

        c = lp.commission
        t = self.table
        i = lp.role_idx[0]
        y = float(t.raw[i])
        max_age = int(lp.spec.max_input_age_s * 1e9)
        why = sf.input_problem(y, int(t.quality[i]), 0, now_ns - int(t.ts_ns[i]), max_age)
        if why is None and not c.band[0] <= y <= c.band[1]:
            why = f"pv {y:g} left its band {c.band[0]:g} .. {c.band[1]:g}"
        if why is None and c.stop_requested:
            why = "stopped over HTTP"
        if why is not None:
            c.test.abort(why)
        st = lp.state
        u, _ = lp.spec.envelope.apply(c.test.target(now_ns / 1e9, y), st.last_u)
        if await self._send(lp, lp.cfg.output, u, "output"):
            st.last_u = u
            lp.written, lp.written_ns = u, time.time_ns()
        else:
            c.test.abort("write failed")
        c.rows.append(
            (now_ns / 1e9, st.last_u, y, [float(t.raw[j]) for j in lp.role_idx[1:]], c.test.phase)
        )
        if c.test.phase == "return" and abs(st.last_u - c.test.u0) <= 1e-9:
            c.test.returned()
        if c.test.phase == "done":
            c.running = False
            if c.test.abort_reason is not None:
                c.result = {"accepted": False, "aborted": c.test.abort_reason}
                log.warning("control loop %s: plant test aborted: %s", lp.cfg.name, c.result)
            else:
                c.finishing = asyncio.create_task(asyncio.to_thread(self._finish, lp, c))

    def _finish(self, lp: _Loop, c: Any) -> None:
        """Identification, PID tuning and (optionally) training, on a worker thread."""
        import numpy as np

        from agent.commands.commission import model_check_reference
        from agent.control import ident

        out = self.commission_dir
        assert out is not None
        out.mkdir(parents=True, exist_ok=True)
        ts = np.asarray([r[0] for r in c.rows]) - c.rows[0][0]
        u = np.asarray([r[1] for r in c.rows])
        y = np.asarray([r[2] for r in c.rows])
        roles = list(lp.spec.roles[1:])
        d = np.asarray([r[3] for r in c.rows]) if roles else None
        res = ident.identify(ts, u, y, d, lp.cfg.period_s, d_names=roles)
        result: dict[str, Any] = {"fit_pct": res.fit_pct, "ok": res.ok, "why": res.why}
        if res.ok:
            (out / f"{lp.cfg.name}.model.json").write_text(
                json.dumps(res.model.to_card(), indent=2)
            )
            result["simc_pid"] = ident.simc_pid(res.fopdt)
            if c.train:
                from agent.control.learn import learn_policy

                shim = SimpleNamespace(config=SimpleNamespace(control=self.cfg), table=self.table)
                base = [y[k] for k, r in enumerate(c.rows) if r[4] == "baseline"]
                result["accepted"] = learn_policy(
                    shim,
                    lp.cfg.name,
                    res,
                    result["simc_pid"],
                    out,
                    d_ranges=[(float(v.min()), float(v.max())) for v in np.asarray(d).T]
                    if roles
                    else [],
                    noise_std=float(np.std(base)) if len(base) > 3 else 0.0,
                    model_check=model_check_reference(res.model, u, d, y),
                    provenance={"source": "POST /control/<loop>/commission"},
                    report=result,
                    log=lambda m: log.info("commission %s: %s", lp.cfg.name, m),
                )
        (out / f"{lp.cfg.name}.report.json").write_text(json.dumps(result, indent=2, default=str))
        c.result = result
        log.warning("control loop %s: commissioning finished: %s", lp.cfg.name, result)

    async def period(self, lp: _Loop) -> None:
        """One period: decide, write, heartbeat (public for tests that drive time)."""
        if lp.commission is not None and lp.commission.running:
            lp.period_no += 1
            await self._commission_period(lp, time.time_ns())
            hb = lp.cfg.heartbeat
            if hb is not None and lp.period_no % hb.every_periods == 0:
                lp.heartbeat = (lp.heartbeat + 1) % hb.modulo
                await self._send(lp, hb.tag, float(lp.heartbeat), "heartbeat")
            return
        prev = lp.last
        d = self.compute(lp, time.time_ns())
        lp.last = d
        lp.period_no += 1
        self._account(lp, d, prev)
        if lp.check is not None and st_mode_checks(lp.state.mode):
            t = self.table
            ratio = lp.check.update(
                lp.state.last_u,
                [float(t.raw[i]) for i in lp.role_idx[1:]],
                float(t.raw[lp.role_idx[0]]),
                d.pv_ok,
            )
            self.metrics.set(CONTROL_MODEL_MISMATCH, _num(ratio) or 0.0, loop=lp.cfg.name)
            if lp.check.mismatched and not lp.check.told:
                lp.check.told = True
                log.error(
                    "control loop %s: the plant no longer behaves like the model's (prediction "
                    "error %.1fx what commissioning saw for %.0f s): fallback; re-commission",
                    lp.cfg.name,
                    ratio,
                    lp.check.hold_s,
                )
        if d.command is not None:
            lp.write_ok = await self._send(lp, lp.cfg.output, d.command, "output")
            if lp.write_ok:
                lp.written, lp.written_ns = d.command, time.time_ns()
            else:  # the PLC still holds what it had: continue from there, not from the command
                lp.state.last_u = math.nan
        else:
            lp.write_ok = True
        if not lp.readback_ok and READBACK_MISMATCH not in lp.logged:
            log.warning("control loop %s: read-back differs from the written value", lp.cfg.name)
        hb = lp.cfg.heartbeat
        if hb is not None and not self._blind(lp, d) and lp.period_no % hb.every_periods == 0:
            lp.heartbeat = (lp.heartbeat + 1) % hb.modulo
            await self._send(lp, hb.tag, float(lp.heartbeat), "heartbeat")

    def _blind(self, lp: _Loop, d: loopmod.Decision) -> bool:
        """Whether the loop has held without a usable measurement for `max_blind_s`."""
        now = time.time_ns()
        if d.pv_ok:
            lp.blind_since_ns = None
        elif lp.blind_since_ns is None:
            lp.blind_since_ns = now
        blind = (
            lp.blind_since_ns is not None
            and now - lp.blind_since_ns > lp.cfg.interlocks.max_blind_s * 1e9
        )
        if blind != lp.hb_withheld and lp.hb_idx is not None:
            lp.hb_withheld = blind
            if blind:
                log.error(
                    "control loop %s: no usable measurement for %.0f s: heartbeat stopped, "
                    "the PLC's watchdog takes over",
                    lp.cfg.name,
                    lp.cfg.interlocks.max_blind_s,
                )
            else:
                log.warning("control loop %s: measurement back, heartbeat resumed", lp.cfg.name)
            self._emit(
                names.EVENT_CONTROL_FALLBACK,
                {"loop": lp.cfg.name, "heartbeat": "withheld" if blind else "running"},
            )
        return blind

    async def _run_loop(self, lp: _Loop) -> None:
        ev = asyncio.get_running_loop()
        period = lp.cfg.period_s
        start = ev.time()
        k = 0
        backoff = period
        while not self._stopping.is_set():
            try:
                await self.period(lp)
            except Exception as e:  # never silent, never the end of the loop
                self._crashed(lp, e)
                await asyncio.sleep(min(backoff, CRASH_BACKOFF_MAX_S))
                backoff *= 2
                start, k = ev.time(), 0
                continue
            lp.completed_at = time.monotonic()
            if lp.failing is not None:
                log.warning("control loop %s: periods complete again", lp.cfg.name)
                lp.failing = None
                self.metrics.set(COMPONENT_UP, 1, component="control")
            backoff = period
            k += 1
            now = ev.time()
            due = start + k * period
            if now > due + period:  # missed whole periods: skip them, never catch up
                missed = int((now - due) // period)
                lp.skipped += missed
                k += missed
                due = start + k * period
            await asyncio.sleep(max(0.0, due - now))

    def _crashed(self, lp: _Loop, e: Exception) -> None:
        lp.crashes += 1
        first = lp.failing is None
        lp.failing = f"{type(e).__name__}: {e}"
        self.metrics.inc(COMPONENT_CRASHES_TOTAL, component="control")
        self.metrics.set(COMPONENT_UP, 0, component="control")
        if first:  # the traceback once per episode; the count says how often
            log.error(
                "control loop %s: period failed (no output, no heartbeat; retrying): %s",
                lp.cfg.name,
                lp.failing,
                exc_info=e,
            )
            self._emit(
                names.EVENT_COMPONENT_CRASH,
                {"component": "control", "loop": lp.cfg.name, "error": lp.failing},
            )

    async def run(self) -> None:
        """Run every loop until cancelled (or `stop()`)."""
        if not self.loops:
            return
        self._stopping = asyncio.Event()
        self._started_at = time.monotonic()
        self.metrics.set(COMPONENT_UP, 1, component="control")
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._run_loop(lp), name=f"control:{lp.cfg.name}")
                for lp in self.loops.values()
            ]
            await self._stopping.wait()
            for t in tasks:
                t.cancel()

    async def stop(self) -> None:
        """Ask `run()` to end; a write in flight finishes or times out within one period."""
        ev = getattr(self, "_stopping", None)
        if ev is not None:
            ev.set()
