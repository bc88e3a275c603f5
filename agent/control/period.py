"""One period of one control loop: read its inputs from the tag table (kernel-filtered
value, quality, flags, timestamp), decide (`agent.control.loop.step`, no I/O), account for
the decision (metrics, events, logs), write the command through the acquirer's write gate,
then the heartbeat.  The heartbeat is written last, so a period that crashes or hangs
feeds none, and it stops while the loop holds blind for `interlocks.max_blind_s`.  When a
plant test runs on the loop, the period is the test's (agent/control/commission_run.py)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from agent import names
from agent.control import loop as loopmod
from agent.control.commission_run import commission_period
from agent.control.loopstate import RunningLoop
from agent.control.modelcheck import st_mode_checks
from agent.control.safety import READBACK_MISMATCH, WRITE_FAILED
from agent.names import (
    CONTROL_FALLBACKS_TOTAL,
    CONTROL_MODE,
    CONTROL_MODEL_MISMATCH,
    CONTROL_REFUSED_TOTAL,
    CONTROL_STEP_SECONDS,
    CONTROL_WRITE_ERRORS_TOTAL,
    CONTROL_WRITES_TOTAL,
)

log = logging.getLogger("edgeloop.control")


class WriteFn(Protocol):
    """The acquirer's write: engineering units, `role` names the writer in events and logs."""

    def __call__(self, tag: str, value: float, role: str | None = None) -> Awaitable[None]: ...


def _num(v: float) -> float | None:
    """JSON-safe number for event payloads (NaN -> None)."""
    return v if math.isfinite(v) else None


class LoopStep:
    """The period of any loop against one tag table, write gate, metrics and event sink."""

    def __init__(
        self,
        table: Any,
        write: WriteFn,
        metrics: Any,
        emit: Callable[[str, dict[str, Any]], None],
    ) -> None:
        self.table = table
        self.write = write
        self.metrics = metrics
        self.emit = emit

    def _setpoint(self, lp: RunningLoop, now_ns: int) -> float:
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

    def compute(self, lp: RunningLoop, now_ns: int) -> loopmod.Decision:
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

    def account(self, lp: RunningLoop, d: loopmod.Decision, prev: loopmod.Decision | None) -> None:
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
            self.emit(
                names.EVENT_CONTROL_FALLBACK,
                {"loop": name, "reasons": list(d.reasons), "fallback": lp.spec.fallback},
            )
        new = set(d.reasons) - lp.logged
        if new and not d.entered_fallback:
            log.warning("control loop %s (%s): %s", name, d.active, ", ".join(sorted(new)))
        lp.logged = set(d.reasons)
        if prev is not None and prev.active != d.active:
            log.info("control loop %s: active controller %s -> %s", name, prev.active, d.active)
            self.emit(
                names.EVENT_CONTROL_MODE, {"loop": name, "active": d.active, "from": prev.active}
            )
        would = math.nan
        if math.isfinite(d.model_u) and d.command is not None:
            would = lp.spec.envelope.apply(d.model_u, d.command)[0]
            if lp.state.mode == "shadow":
                lp.shadow.add(would - d.command)
        # one record per period (history only): what shadow mode compares, what reports plot
        self.emit(
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

    async def send(self, lp: RunningLoop, tag: str, value: float, role: str) -> bool:
        try:
            async with asyncio.timeout(lp.cfg.period_s):  # not wait_for: 3.11's can eat a cancel
                await self.write(tag, value, role=f"{role}:{lp.cfg.name}")
        except Exception as e:  # any failure is an interlock reason; the loop runs on
            self.metrics.inc(CONTROL_WRITE_ERRORS_TOTAL, loop=lp.cfg.name)
            if type(e).__name__ == "WriteRefused":
                self.metrics.inc(CONTROL_REFUSED_TOTAL, loop=lp.cfg.name)
            if WRITE_FAILED not in lp.logged:
                log.warning("control loop %s: write %s=%r failed: %s", lp.cfg.name, tag, value, e)
            return False
        self.metrics.inc(CONTROL_WRITES_TOTAL, loop=lp.cfg.name)
        return True

    async def run(self, lp: RunningLoop) -> None:
        """One period: decide, write, heartbeat."""
        if lp.commission is not None and lp.commission.running:
            lp.period_no += 1
            await commission_period(lp, time.time_ns(), self.send)
            hb = lp.cfg.heartbeat
            if hb is not None and lp.period_no % hb.every_periods == 0:
                lp.heartbeat = (lp.heartbeat + 1) % hb.modulo
                await self.send(lp, hb.tag, float(lp.heartbeat), "heartbeat")
            return
        prev = lp.last
        d = self.compute(lp, time.time_ns())
        lp.last = d
        lp.period_no += 1
        self.account(lp, d, prev)
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
            lp.write_ok = await self.send(lp, lp.cfg.output, d.command, "output")
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
            await self.send(lp, hb.tag, float(lp.heartbeat), "heartbeat")

    def _blind(self, lp: RunningLoop, d: loopmod.Decision) -> bool:
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
            self.emit(
                names.EVENT_CONTROL_FALLBACK,
                {"loop": lp.cfg.name, "heartbeat": "withheld" if blind else "running"},
            )
        return blind
