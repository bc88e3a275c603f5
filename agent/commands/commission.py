"""`edgeloop commission CONFIG --loop L --out DIR`: learned control for a loop nobody has seen.

Owns the PLC connections like `run` (stop the service first, or use the service's
`POST /control/<loop>/commission` on a live site). Steps:
1. the plant test (`agent.control.plant_test`) on the live plant, every write through the
   loop's envelope and the write gate, the heartbeat fed; any interlock, pv leaving its
   band, Ctrl-C or SIGTERM ramps the output back to where it was found;
2. identification on the recorded test (`agent.control.ident`), refused below its fit
   threshold; the SIMC PID tuning of the identified model;
3. when the learning pieces are installed: the expert MPC on the identified model, a policy
   trained by imitation, written as TFLite, validated with model mismatch against the SIMC
   PID (`agent.control.mpc`, `training`, `validate`).
Writes `DIR/<loop>.test.csv` (the raw test), `DIR/<loop>.model.json`, `DIR/<loop>.report.json`
and, when trained, `DIR/<loop>.tflite` + `DIR/<loop>.json`. Exit 0 when accepted, 1 when not
(the candidate stays in DIR), 78 for a bad config.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HELP = "plant test, identification, PID tuning and a learned policy for one loop"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML file")
    parser.add_argument("--loop", required=True, help="the control loop to commission")
    parser.add_argument("--out", required=True, help="directory for the model, card and report")
    parser.add_argument(
        "--amplitude", type=float, help="output step/PRBS amplitude (default 5 %% of the range)"
    )
    parser.add_argument(
        "--pv-dev",
        type=float,
        help="largest pv excursion the test may cause (default 10 %% of the pv band)",
    )
    parser.add_argument(
        "--budget-s", type=float, default=900.0, help="plant time the test may take (900)"
    )
    parser.add_argument(
        "--pv-band",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="abort when pv leaves this band (default: the loop's setpoint min/max)",
    )
    parser.add_argument("--seed", type=int, default=0, help="PRBS and training seed (0)")
    parser.add_argument("--no-train", action="store_true", help="stop after identification")


@dataclass
class Recording:
    """One row per control period of the test: time, output written, pv, disturbances."""

    period_s: float
    roles: list[str]  # disturbance roles, in column order of `d`
    t: list[float] = field(default_factory=list)
    u: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    d: list[list[float]] = field(default_factory=list)
    phase: list[str] = field(default_factory=list)

    def to_csv(self, path: Path) -> None:
        head = ["t_s", "u", "y", *self.roles, "phase"]
        lines = [",".join(head)]
        for i in range(len(self.t)):
            row = [f"{self.t[i]:.3f}", repr(self.u[i]), repr(self.y[i])]
            row += [repr(v) for v in self.d[i]] + [self.phase[i]]
            lines.append(",".join(row))
        path.write_text("\n".join(lines) + "\n")


class _Progress:
    def __init__(self) -> None:
        self._last = 0.0

    def show(self, phase: str, left_s: float, u: float, y: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 1.0:
            return
        self._last = now
        bar = f"{phase:<8} u {u:8.3f}  pv {y:10.4g}  ~{left_s:5.0f} s left"
        print(f"\r{bar}", end="", file=sys.stderr, flush=True)


async def run_plant_test(
    compiled: Any,
    loop_name: str,
    *,
    amplitude: float | None,
    budget_s: float,
    pv_band: tuple[float, float] | None,
    seed: int,
    stop: asyncio.Event,
    pv_dev: float | None = None,
    progress: bool = True,
) -> tuple[Recording, Any]:
    """The test on the live plant; returns what was recorded and the finished `PlantTest`."""
    from agent.acquire import Acquirer
    from agent.control import safety
    from agent.control.plant_test import PlantTest
    from agent.control.runner import ControlRunner
    from agent.metrics import Metrics

    cfg = compiled.config
    loop_cfg = next(lp for lp in cfg.control.loops if lp.name == loop_name)
    table = compiled.table
    metrics = Metrics()
    # the runner compiles the loop exactly as `run` does: envelope, indices, heartbeat
    only = cfg.control.model_copy(update={"loops": [loop_cfg.model_copy(update={"model": None})]})
    runner = ControlRunner(only, table, lambda *a, **k: None, metrics)  # type: ignore[arg-type,return-value]
    lp = runner.loops[loop_name]
    env = lp.spec.envelope
    tags = {table.names[i] for i in lp.role_idx} | {loop_cfg.output}
    if loop_cfg.heartbeat is not None:
        tags.add(loop_cfg.heartbeat.tag)
    devices = {table.devices[table.index[t]] for t in tags}
    acq = Acquirer(compiled, metrics, devices=devices)
    rec = Recording(period_s=loop_cfg.period_s, roles=list(lp.spec.roles[1:]))
    if pv_band is None:
        sc = loop_cfg.setpoint
        pv_band = (
            sc.min if sc.min is not None else -math.inf,
            sc.max if sc.max is not None else math.inf,
        )
    await acq.start()
    try:
        u0 = await _present_output(table, lp, loop_cfg, stop)
        span = env.hi - env.lo
        test = PlantTest(
            u0=u0,
            lo=env.lo,
            hi=env.hi,
            amplitude=amplitude if amplitude is not None else 0.05 * span,
            budget_s=budget_s,
            period_s=loop_cfg.period_s,
            seed=seed,
            pv_dev_max=pv_dev if pv_dev is not None else 0.1 * (pv_band[1] - pv_band[0]),
        )
        bar = _Progress()
        last = u0
        beat = 0
        ev = asyncio.get_running_loop()
        start = ev.time()
        k = 0
        max_age_ns = int(lp.spec.max_input_age_s * 1e9)
        return_deadline = math.inf
        while test.phase != "done":
            now_ns = time.time_ns()
            i = lp.role_idx[0]
            y = float(table.raw[i])
            why = safety.input_problem(
                y, int(table.quality[i]), 0, now_ns - int(table.ts_ns[i]), max_age_ns
            )
            if why is None and not pv_band[0] <= y <= pv_band[1]:
                why = f"pv {y:g} left its band {pv_band[0]:g} .. {pv_band[1]:g}"
            if why is None and stop.is_set():
                why = "interrupted"
            if why is not None:
                test.abort(why)
            target = test.target(ev.time() - start, y)
            u, _ = env.apply(target, last)
            try:
                await acq.write(loop_cfg.output, u, role=f"output:{loop_name}")
                last = u
            except Exception as e:  # refused or failed: stop the test, ramp back
                test.abort(f"write failed: {e}")
            if loop_cfg.heartbeat is not None:
                beat = (beat + 1) % loop_cfg.heartbeat.modulo
                with contextlib.suppress(Exception):
                    await acq.write(
                        loop_cfg.heartbeat.tag, float(beat), role=f"heartbeat:{loop_name}"
                    )
            rec.t.append(ev.time() - start)
            rec.u.append(last)
            rec.y.append(y)
            rec.d.append([float(table.raw[j]) for j in lp.role_idx[1:]])
            rec.phase.append(test.phase)
            if test.phase == "return":
                return_deadline = min(return_deadline, ev.time() + span / _rate(env) + 10.0)
                if abs(last - u0) <= 1e-9 or ev.time() > return_deadline:
                    test.returned()
            if progress:
                bar.show(test.phase, test.time_left_s(), last, y)
            k += 1
            await asyncio.sleep(max(0.0, start + k * loop_cfg.period_s - ev.time()))
        if progress:
            print(file=sys.stderr)
        return rec, test
    finally:
        await acq.stop()


def _rate(env: Any) -> float:
    return env.max_step if math.isfinite(env.max_step) and env.max_step > 0 else math.inf


async def _present_output(table: Any, lp: Any, loop_cfg: Any, stop: asyncio.Event) -> float:
    """The output's present value (read from the PLC, or the configured start_output)."""
    oi = lp.out_idx
    pv = lp.role_idx[0]
    for _ in range(600):
        if stop.is_set():
            raise RuntimeError("interrupted before the test started")
        out_ok = int(table.quality[oi]) == 0 and math.isfinite(float(table.raw[oi]))
        if int(table.quality[pv]) == 0 and (out_ok or loop_cfg.start_output is not None):
            v = float(table.raw[oi]) if out_ok else float(loop_cfg.start_output)
            return min(max(v, lp.spec.envelope.lo), lp.spec.envelope.hi)
        await asyncio.sleep(0.05)
    raise RuntimeError("no good reading of the pv and the output within 30 s")


def _config_hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def run(args: argparse.Namespace) -> int:
    from agent.cli import EX_CONFIG
    from agent.commands._common import compile_or_report

    compiled = compile_or_report(args.config)
    if compiled is None:
        return EX_CONFIG
    names = [lp.name for lp in compiled.config.control.loops]
    if args.loop not in names:
        print(f"no control loop {args.loop!r} (have {names})", file=sys.stderr)
        return EX_CONFIG
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_commission(compiled, args, out))


async def _commission(compiled: Any, args: argparse.Namespace, out: Path) -> int:
    stop = asyncio.Event()
    ev = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        ev.add_signal_handler(sig, stop.set)
    t0 = time.monotonic()
    try:
        rec, test = await run_plant_test(
            compiled,
            args.loop,
            amplitude=args.amplitude,
            budget_s=args.budget_s,
            pv_band=tuple(args.pv_band) if args.pv_band else None,
            seed=args.seed,
            stop=stop,
            pv_dev=args.pv_dev,
        )
    except RuntimeError as e:
        print(f"commission: {e}; the output was not moved", file=sys.stderr)
        return 1
    rec.to_csv(out / f"{args.loop}.test.csv")
    report: dict[str, Any] = {
        "loop": args.loop,
        "config_sha256": _config_hash(args.config),
        "plant_test": {
            "seconds": round(time.monotonic() - t0, 1),
            "rows": len(rec.t),
            "log": test.log,
            "aborted": test.abort_reason,
            "step": asdict(test.step) if test.step else None,
        },
    }
    for line in test.log:
        print(f"  {line}", file=sys.stderr)
    if test.abort_reason is not None:
        print(
            f"commission: plant test aborted ({test.abort_reason}); output back at its start value",
            file=sys.stderr,
        )
        (out / f"{args.loop}.report.json").write_text(json.dumps(report, indent=2))
        return 1
    verdict = _identify_and_train(compiled, args, rec, report, out)
    (out / f"{args.loop}.report.json").write_text(json.dumps(report, indent=2, default=str))
    return verdict


def model_check_reference(
    model: Any, u: Any, d: Any, y: Any, holdout: float = 0.3
) -> dict[str, float]:
    """What the run-time model check compares with: the RMS error of the model run free over
    the held-out part of the commissioning data (what the identification's fit % measured),
    from a state rebuilt from the samples before it."""
    import numpy as np

    u, y = np.asarray(u, float), np.asarray(y, float)
    n = len(u)
    s = int(n * (1.0 - holdout))
    y_sim = model.simulate(u, None if d is None else np.asarray(d, float), y_init=float(y[0]))
    err = (y - y_sim)[s:]
    err = err[np.isfinite(err)]
    err = err - err.mean()  # an offset is what the run-time bias absorbs
    rms = float(np.sqrt(np.mean(err**2))) if err.size else float("nan")
    return {"reference_rms": rms, "threshold": 3.0, "hold_s": 3.0 * model.settling_time_s()}


def _identify_and_train(
    compiled: Any, args: argparse.Namespace, rec: Recording, report: dict[str, Any], out: Path
) -> int:
    import numpy as np

    from agent.control import ident

    u = np.asarray(rec.u)
    y = np.asarray(rec.y)
    d = np.asarray(rec.d) if rec.roles else None
    t = np.asarray(rec.t)
    res = ident.identify(t, u, y, d, rec.period_s, d_names=rec.roles)
    report["identification"] = {
        "fit_pct": res.fit_pct,
        "ok": res.ok,
        "why": res.why,
        "fopdt": asdict(res.fopdt),
        "summary": res.summary(),
    }
    for line in res.summary():
        print(f"  {line}", file=sys.stderr)
    if not res.ok:
        print(f"commission: identification refused: {res.why}", file=sys.stderr)
        return 1
    (out / f"{args.loop}.model.json").write_text(json.dumps(res.model.to_card(), indent=2))
    pid = ident.simc_pid(res.fopdt)
    report["simc_pid"] = pid
    print(
        f"SIMC PID for the fallback: kp {pid['kp']:.4g}, ti_s {pid['ti_s']:.4g}, "
        f"td_s {pid['td_s']:.4g}",
        file=sys.stderr,
    )
    if args.no_train:
        return 0
    from agent.control.learn import learn_policy

    d_ranges = (
        [(float(np.nanmin(col)), float(np.nanmax(col))) for col in np.asarray(rec.d).T]
        if rec.roles
        else []
    )
    check = model_check_reference(res.model, u, d, y)
    report["model_check"] = check
    base = [y[i] for i, p in enumerate(rec.phase) if p == "baseline"]
    noise = float(np.std(base)) if len(base) > 3 else 0.0
    prov = {
        "config_sha256": report["config_sha256"],
        "plant_test": {
            "rows": len(rec.t),
            "seconds": rec.t[-1] if rec.t else 0.0,
            "log": report["plant_test"]["log"],
            "file": f"{args.loop}.test.csv",
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    ok = learn_policy(
        compiled,
        args.loop,
        res,
        pid,
        out,
        seed=args.seed,
        report=report,
        d_ranges=d_ranges,
        noise_std=noise,
        provenance=prov,
        model_check=check,
        log=lambda m: print(f"  {m}", file=sys.stderr),
    )
    return 0 if ok else 1
