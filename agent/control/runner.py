"""`ControlRunner`: the thin asyncio shell around the pure loop step.

One task per loop, scheduled on absolute deadlines (`start + k * period`, so jitter never
accumulates into drift); a period that is missed entirely is skipped, never replayed.  Each
period (agent/control/period.py) reads the loop's inputs from the tag table, calls
`agent.control.loop.step`, writes the command through `write(tag, value, role=...)` (the
Acquirer's write gate: role, bounds, rate and budget, a second fence), and writes the
heartbeat register.  The loops' state and its reload carry-over are
agent/control/loopstate.py; a plant test on the running service is
agent/control/commission_run.py.  This module: the operator's commands and the schedule.
Nothing is queued: a setpoint or output decided for a period that has passed is dropped, so
a stale command is never sent after a stall.

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
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import names
from agent.control import loop as loopmod
from agent.control.commission_run import start_commission
from agent.control.loopstate import (
    MODES,
    ControlError,
    RunningLoop,
    compile_loop,
    export_states,
    import_states,
)
from agent.control.modelcheck import ModelCheck, st_mode_checks
from agent.control.period import LoopStep, WriteFn
from agent.control.settings import ControlConfig
from agent.names import COMPONENT_CRASHES_TOTAL, COMPONENT_UP

__all__ = [
    "MODES",
    "ControlError",
    "ControlRunner",
    "ModelCheck",
    "WriteFn",
    "st_mode_checks",
]

log = logging.getLogger("edgeloop.control")

CRASH_BACKOFF_MAX_S = 5.0
STALL_GRACE_S = 5.0  # a period may take this long beyond two periods before it is a stall


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
        self.metrics = metrics
        self._emit = emit_event or (lambda kind, payload: None)
        self.loops: dict[str, RunningLoop] = {}
        self._started_at = 0.0
        self.commission_dir = Path(commission_dir) if commission_dir is not None else None
        for lc in control_cfg.loops:
            self.loops[lc.name] = compile_loop(lc, table, config_dir)
        self.step = LoopStep(table, write, metrics, self._emit)

    # -- runtime commands -----------------------------------------------------------------
    def _get(self, name: str) -> RunningLoop:
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
        return export_states(self.loops)

    def import_state(self, carried: dict[str, dict[str, Any]]) -> list[str]:
        """Continue loops of the previous pipeline, bumpless (loopstate.import_states);
        returns the names of the loops carried over."""
        return import_states(self.loops, carried)

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

    # -- the period (agent/control/period.py) -----------------------------------------------
    @property
    def _write(self) -> WriteFn:
        return self.step.write

    @_write.setter
    def _write(self, write: WriteFn) -> None:
        self.step.write = write

    def compute(self, lp: RunningLoop, now_ns: int) -> loopmod.Decision:
        """One period's decision from the tag table (no I/O)."""
        return self.step.compute(lp, now_ns)

    async def period(self, lp: RunningLoop) -> None:
        """One period: decide, write, heartbeat (public for tests that drive time)."""
        await self.step.run(lp)

    # -- commissioning on the running service (agent/control/commission_run.py) -------------
    def start_commission(self, loop: str, opts: dict[str, Any]) -> dict[str, Any]:
        """Start a plant test on `loop` (POST /control/<loop>/commission); see
        `commission_run.start_commission`."""
        lp = self._get(loop)
        lp.commission = start_commission(lp, opts, self.commission_dir, self.cfg, self.table)
        log.warning("control loop %s: plant test started (%s)", loop, opts)
        self._emit(names.EVENT_CONTROL_MODE, {"loop": loop, "commission": "started"})
        return {"started": True}

    # -- the schedule ---------------------------------------------------------------------
    async def _run_loop(self, lp: RunningLoop) -> None:
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

    def _crashed(self, lp: RunningLoop, e: Exception) -> None:
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
