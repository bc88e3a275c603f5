"""Commissioning on the running service (POST /control/<loop>/commission): a plant test
drives the loop's output inside its envelope while the heartbeat runs on; when it is done,
identification, PID tuning and (optionally) training run on a worker thread and write the
model, the report and the policy to `commission_dir`."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from agent.control.loopstate import RunningLoop
from agent.control.settings import ControlConfig

log = logging.getLogger("edgeloop.control")

# the runner's write of one value for a loop (tag, value, role): False when it failed
SendFn = Callable[[RunningLoop, str, float, str], Awaitable[bool]]


class Commissioning:
    """A plant test running on a loop of the service, and its result."""

    def __init__(
        self,
        test: Any,
        band: tuple[float, float],
        train: bool,
        out_dir: Path,
        control_cfg: ControlConfig,
        table: Any,
    ) -> None:
        self.test, self.band, self.train = test, band, train
        self.out_dir, self.control_cfg, self.table = out_dir, control_cfg, table
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


def start_commission(
    lp: RunningLoop,
    opts: dict[str, Any],
    commission_dir: Path | None,
    control_cfg: ControlConfig,
    table: Any,
) -> Commissioning:
    """Start a plant test on `loop` (POST /control/<loop>/commission): the loop's output
    follows the test inside the envelope, the heartbeat runs on; when the test is done,
    identification, PID tuning and training run on a thread and write to
    `commission_dir`; progress and the result are in `status()[loop]["commission"]`."""
    from agent.control.plant_test import PlantTest

    if lp.commission is not None and lp.commission.running:
        raise ValueError(f"loop {lp.cfg.name!r} is already being commissioned")
    if lp.state.mode in ("auto", "shadow") and not opts.get("force"):
        raise ValueError("switch the loop to manual (or off) before a plant test")
    if not math.isfinite(lp.state.last_u):
        raise ValueError("the output's present value is not known yet")
    if commission_dir is None:
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
    train = bool(opts.get("train", True))
    return Commissioning(test, band, train, commission_dir, control_cfg, table)


async def commission_period(lp: RunningLoop, now_ns: int, send: SendFn) -> None:
    """One period of a running plant test: the output follows the test, pv is watched."""
    from agent.control import safety as sf

    c = lp.commission
    t = c.table
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
    if await send(lp, lp.cfg.output, u, "output"):
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
            c.finishing = asyncio.create_task(asyncio.to_thread(finish, lp, c))


def finish(lp: RunningLoop, c: Commissioning) -> None:
    """Identification, PID tuning and (optionally) training, on a worker thread."""
    import numpy as np

    from agent.commands.commission import model_check_reference
    from agent.control import ident

    out = c.out_dir
    out.mkdir(parents=True, exist_ok=True)
    ts = np.asarray([r[0] for r in c.rows]) - c.rows[0][0]
    u = np.asarray([r[1] for r in c.rows])
    y = np.asarray([r[2] for r in c.rows])
    roles = list(lp.spec.roles[1:])
    d = np.asarray([r[3] for r in c.rows]) if roles else None
    res = ident.identify(ts, u, y, d, lp.cfg.period_s, d_names=roles)
    result: dict[str, Any] = {"fit_pct": res.fit_pct, "ok": res.ok, "why": res.why}
    if res.ok:
        (out / f"{lp.cfg.name}.model.json").write_text(json.dumps(res.model.to_card(), indent=2))
        result["simc_pid"] = ident.simc_pid(res.fopdt)
        if c.train:
            from agent.control.learn import learn_policy

            shim = SimpleNamespace(config=SimpleNamespace(control=c.control_cfg), table=c.table)
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
