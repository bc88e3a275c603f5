"""The demo's closing summary, computed only from what the run left behind.

Sources: the agent's history database (frames, events, control actions), hw_sim's
ground-truth fault log and the MQTT subscriber's counts.  Nothing here is hard-coded: a
demo where detection or control failed prints that it failed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent import names
from agent.kernel import flags as kflags

# an alarm this long after a fault ended still counts as detecting it
DETECTION_GRACE_S = 15.0
# per-sample flags that show the kernel caught a sensor fault without raising an alarm
SENSOR_FLAGS = kflags.SPIKE | kflags.STUCK | kflags.DRIFT | kflags.INVALID | kflags.OUT_OF_RANGE


@dataclass
class Summary:
    text: str
    data: dict[str, Any] = field(default_factory=dict)
    ok: bool = True


def _kernel_group_tags(cfg: dict[str, Any]) -> dict[str, set[str]]:
    return {g["name"]: set(g["tags"]) for g in (cfg.get("kernel") or {}).get("groups", [])}


FlagLookup = Callable[[set[str], float, float], "tuple[float, str, str] | None"]


def match_faults(
    faults: list[dict[str, Any]],
    events: list[dict[str, Any]],
    groups: dict[str, set[str]],
    t_end: float,
    flagged: FlagLookup | None = None,
) -> list[dict[str, Any]]:
    """For each injected fault, the first alarm on one of its signals (or on a kernel group
    containing one) that is active between its start and its end plus the grace period.
    An alarm already on when the fault began (raised by an earlier fault) is reported as
    such, with no delay claimed.

    A *sensor* fault the kernel handles without an alarm - a spike it rejected, a dropout
    it marked invalid - counts as detected through `flagged(signals, t0, t1)`, which
    returns (time, tag, flag name) of the first such flag; the summary says which it was.
    Process faults need an alarm: a stray flag is not a detection of a failing pump."""
    from agent.report import alarm_spans
    from hw_sim.faults import SENSOR_KINDS

    spans = alarm_spans(events, t_end)
    out = []
    for f in faults:
        t0 = float(f["start_wall"])
        t1 = float(f.get("end_wall") or t_end)
        sig = set(f.get("signals") or [])
        hit: tuple[float, str] | None = None  # (alarm start, source)
        for src, ss in spans.items():
            if not (src in sig or (src in groups and groups[src] & sig)):
                continue
            for a, b in ss:
                if a <= t1 + DETECTION_GRACE_S and b >= t0 and (hit is None or a < hit[0]):
                    hit = (a, src)
        flag = None
        if hit is None and flagged is not None and f.get("kind") in SENSOR_KINDS:
            flag = flagged(sig, t0, t1 + DETECTION_GRACE_S)
        if hit is not None:
            delay: float | None = max(0.0, hit[0] - t0)
            by = hit[1] + (" (alarm already on)" if hit[0] < t0 else "")
        elif flag is not None:
            delay, by = flag[0] - t0, f"{flag[2]} flag on {flag[1]}"
        else:
            delay, by = None, None
        out.append(
            {
                "kind": f.get("kind"),
                "signals": sorted(sig),
                "start_s": t0,
                "duration_s": t1 - t0,
                "detected": by is not None,
                "delay_s": delay,
                "by": by,
            }
        )
    return out


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else math.nan


def control_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """IAE, overshoot per setpoint step, and time per active controller from control rows."""
    steps = [r for r in rows if r["payload"].get("kind") == "control_action"]
    if len(steps) < 2:
        return {"steps": len(steps)}
    t = np.array([r["ts_ns"] / 1e9 for r in steps])
    p = [r["payload"] for r in steps]
    pv = np.array([_num(x.get("pv")) for x in p])
    sp = np.array([_num(x.get("sp")) for x in p])
    active = [str(x.get("active", "?")) for x in p]
    dt = np.diff(t, append=t[-1])
    err = np.abs(sp - pv)
    ok = np.isfinite(err)
    time_by: dict[str, float] = {}
    for a, d in zip(active, dt, strict=True):
        time_by[a] = time_by.get(a, 0.0) + float(d)
    # start-up: until the model first took charge (healthy window, first valid inputs); the
    # share of time in charge is counted after it, so a cold start does not read as a failure
    first = next((i for i, a in enumerate(active) if a == "model"), None)
    startup_s = float(t[first] - t[0]) if first is not None else float(t[-1] - t[0])
    after: dict[str, float] = {}
    for a, d in zip(active[first or 0 :], dt[first or 0 :], strict=True):
        after[a] = after.get(a, 0.0) + float(d)
    # overshoot after each setpoint change, as % of the step
    overs = []
    change = np.flatnonzero(np.abs(np.diff(sp)) > 1e-6) + 1
    bounds = [*change.tolist(), len(sp)]
    for i, j in itertools.pairwise(bounds):
        step = sp[i] - sp[i - 1]
        seg = pv[i:j]
        if seg.size and abs(step) > 0.5 and np.isfinite(seg).any():
            peak = np.nanmax(seg) if step > 0 else np.nanmin(seg)
            overs.append(max(0.0, (peak - sp[i]) / step * 100.0))
    reasons: dict[str, int] = {}
    for r in rows:
        if r["payload"].get("kind") == names.EVENT_CONTROL_FALLBACK:
            why = r["payload"].get("reasons") or [r["payload"].get("reason") or "?"]
            for w in why if isinstance(why, list) else [why]:
                reasons[str(w)] = reasons.get(str(w), 0) + 1
    return {
        "steps": len(steps),
        "iae": float(np.sum(err[ok] * dt[ok])),
        "duration_s": float(t[-1] - t[0]),
        "overshoot_pct": overs,
        "time_by_controller_s": time_by,
        "startup_s": startup_s,
        "time_after_startup_s": after if first is not None else {},
        "fallback_reasons": reasons,
        "sp_changes": int(change.size),
    }


def _schedule(
    t: np.ndarray, v: np.ndarray, every_s: float = 5.0
) -> tuple[tuple[float, float], ...]:
    """A piecewise-constant schedule (relative seconds, value) sampled from a recorded series."""
    out: list[tuple[float, float]] = []
    ok = np.isfinite(v)
    t, v = t[ok], v[ok]
    if not t.size:
        return ()
    for k in np.arange(t[0], t[-1] + 1e-9, every_s):
        i = min(int(np.searchsorted(t, k)), t.size - 1)
        val = round(float(v[i]), 2)
        if not out or out[-1][1] != val:
            out.append((float(k - t[0]), val))
    return tuple(out)


def replay_pid_vs_model(
    rows: list[dict[str, Any]], series: dict[str, tuple[np.ndarray, ...]]
) -> dict[str, float] | None:
    """What the PID would have done: this run's setpoints and measured disturbances replayed
    offline on the heater model, once with the shipped policy and once with the fallback PID
    alone (`lab.heater_eval`, the same loop step the service runs).  IAE is on the
    model's true temperature, so both controllers face exactly the same plant."""
    from agent.control.policy import Policy, resolve_model_path
    from lab.heater_eval import (
        PERIOD_S,
        ROLES,
        LoopController,
        Scenario,
        run_scenario,
    )

    steps = [r for r in rows if r["payload"].get("kind") == "control_action"]
    if len(steps) < 10 or "inlet_flow" not in series or "inlet_temp" not in series:
        return None
    t = np.array([r["ts_ns"] / 1e9 for r in steps])
    sp = np.array([_num(r["payload"].get("sp")) for r in steps])
    t0 = t[0]
    sps = _schedule(t, sp, PERIOD_S)
    flows = _schedule(series["inlet_flow"][0] / 1e9, series["inlet_flow"][2])
    inlets = _schedule(series["inlet_temp"][0] / 1e9, series["inlet_temp"][2])
    if not (sps and flows and inlets):
        return None
    shift = series["inlet_flow"][0][0] / 1e9 - t0  # align the disturbance schedules to t0
    flows = tuple((max(0.0, a + shift), b) for a, b in flows)
    shift = series["inlet_temp"][0][0] / 1e9 - t0
    inlets = tuple((max(0.0, a + shift), b) for a, b in inlets)
    sc = Scenario("demo replay", float(t[-1] - t0), sps, flows, inlets)
    policy = Policy(
        resolve_model_path("heater_policy.tflite"),
        signals=list(ROLES),
        period_ms=round(PERIOD_S * 1000),
    )
    model = run_scenario(sc, LoopController(policy))
    pid = run_scenario(sc, LoopController(None))
    return {
        "tflite_iae": model.iae,
        "pid_iae": pid.iae,
        "tflite_overshoot_k": model.overshoot,
        "pid_overshoot_k": pid.overshoot,
    }


def summarise(
    *, cfg: dict[str, Any], out: Path, t_from: float, t_to: float, mqtt: Any, seconds: float
) -> Summary:
    from agent.report import fault_spans, make_report
    from agent.store.history import db_bytes, open_reader

    db = Path(cfg["store"]["path"])
    lines: list[str] = []
    data: dict[str, Any] = {}
    checks: list[tuple[str, bool]] = []  # (criterion, met): each printed with its verdict
    if not db.exists():
        return Summary(f"no history database at {db}: the agent stored nothing", {}, False)
    reader = open_reader(str(db))
    try:
        groups = reader.groups()
        frames = tag_samples = 0
        per_group = []
        for gid, dev, name, tags in groups:
            f = reader.frames(gid, len(tags), int(t_from * 1e9), int(t_to * 1e9))
            n = len(f.ts_ns)
            good = float(np.mean(f.quality == 0)) if n else 0.0
            frames += n
            tag_samples += n * len(tags)
            per_group.append((f"{dev}/{name}", len(tags), n, good))
        events = reader.read_events(t_from, t_to)
        control_rows = reader.read_control(t_from, t_to)
        faults = fault_spans(out / "faults.jsonl", t_to)
        wanted = {s for f in faults for s in f.get("signals") or []} | {"inlet_flow", "inlet_temp"}
        series = reader.read_series(wanted, t_from, t_to)
    finally:
        reader.close()

    def flagged(sig: set[str], a: float, b: float) -> tuple[float, str, str] | None:
        best = None
        for tag in sig & set(series):
            ts, *_rest, flags, _score = series[tag]
            t = ts / 1e9
            hit = np.flatnonzero((t >= a) & (t <= b) & ((flags & SENSOR_FLAGS) != 0))
            if hit.size and (best is None or t[hit[0]] < best[0]):
                word = int(flags[hit[0]])
                best = (float(t[hit[0]]), tag, ",".join(kflags.describe(word & SENSOR_FLAGS)))
        return best

    lines.append("== edgeloop demo summary ==")
    lines.append(f"acquisition: {frames} frames, {tag_samples} tag-samples in {seconds:.0f} s")
    for g, n_tags, n, good in per_group:
        lines.append(
            f"  {g:28s} {n_tags:3d} tags  {n / seconds:6.2f} polls/s  {good * 100:5.1f}% good"
        )
    data["acquisition"] = {"frames": frames, "tag_samples": tag_samples, "groups": per_group}
    checks.append(("frames were acquired and stored", frames > 0))

    matched = match_faults(faults, events, _kernel_group_tags(cfg), t_to, flagged)
    n_alarms = sum(e["kind"] == names.EVENT_ANOMALY_ON for e in events)
    detected = [m for m in matched if m["detected"]]
    lines.append(
        f"anomalies: {len(faults)} faults injected, {len(detected)} detected, "
        f"{n_alarms} alarms raised"
    )
    for m in matched:
        lines.append(
            f"  {m['kind']:20s} on {','.join(m['signals'])[:40]:40s} "
            + (f"detected after {m['delay_s']:5.1f} s by {m['by']}" if m["detected"] else "MISSED")
        )
    data["faults"] = matched
    checks.append(("at least one injected fault detected", bool(detected) or not faults))

    for loop in (cfg.get("control") or {}).get("loops", []):
        cm = control_metrics([r for r in control_rows if r["loop"] == loop["name"]])
        data.setdefault("control", {})[loop["name"]] = cm
        if cm.get("steps", 0) < 2:
            lines.append(f"control {loop['name']}: no control steps recorded")
            checks.append((f"loop {loop['name']} recorded control steps", False))
            continue
        by = cm["time_after_startup_s"]
        total = sum(by.values())
        share = {k: v / max(total, 1e-9) * 100 for k, v in by.items()}
        lines.append(
            f"control {loop['name']} (mode {loop.get('mode')}): IAE {cm['iae']:.1f} degC*s over "
            f"{cm['duration_s']:.0f} s, {cm['sp_changes']} setpoint changes, overshoot "
            + ", ".join(f"{o:.1f}%" for o in cm["overshoot_pct"])
        )
        lines.append(
            f"  in charge after start-up ({cm['startup_s']:.0f} s until the model first took "
            "charge): " + ", ".join(f"{k} {v:.0f}%" for k, v in sorted(share.items()))
        )
        if cm["fallback_reasons"]:
            lines.append(
                "  fallbacks: " + ", ".join(f"{k} x{v}" for k, v in cm["fallback_reasons"].items())
            )
        checks.append(
            (
                f"the model in charge of {loop['name']} > 50 % after start-up",
                share.get("model", 0.0) > 50.0,
            )
        )
        try:
            cmp = replay_pid_vs_model(
                [r for r in control_rows if r["loop"] == loop["name"]], series
            )
        except Exception as exc:  # the comparison is extra; the summary goes on without it
            cmp = None
            lines.append(f"  (offline PID comparison failed: {exc})")
        if cmp:
            cm["offline_replay"] = cmp
            lines.append(
                f"  this run's setpoints and disturbances replayed on the plant model (settled "
                f"start): TFLite IAE "
                f"{cmp['tflite_iae']:.0f}, PID alone IAE {cmp['pid_iae']:.0f} degC*s "
                f"(ratio {cmp['tflite_iae'] / max(cmp['pid_iae'], 1e-9):.2f}); overshoot "
                f"{cmp['tflite_overshoot_k']:.1f} K vs {cmp['pid_overshoot_k']:.1f} K"
            )

    lines.append(f"history: {db} ({db_bytes(str(db)) / 1e6:.1f} MB), {len(events)} events")
    if mqtt is not None:
        lines.append(
            f"northbound: {mqtt.messages} MQTT messages ({mqtt.bytes / 1e3:.0f} kB) received "
            f"by a subscriber on {len(mqtt.topics)} topics"
        )
        data["mqtt"] = {"messages": mqtt.messages, "bytes": mqtt.bytes, "topics": mqtt.topics}
        checks.append(("MQTT messages reached a subscriber", mqtt.messages > 0))
    else:
        lines.append("northbound: mosquitto not installed, ran without MQTT")
    try:
        report = make_report(
            db,
            out / "report.html",
            loops=[lp["name"] for lp in (cfg.get("control") or {}).get("loops", [])],
            monitored=[t for g in (cfg.get("kernel") or {}).get("groups", []) for t in g["tags"]],
            faults_log=out / "faults.jsonl",
            pv_tags={
                lp["name"]: lp["inputs"]["pv"] for lp in (cfg.get("control") or {}).get("loops", [])
            },
            units={
                t["name"]: t["unit"]
                for d in cfg["devices"]
                for g in d.get("poll_groups", [])
                for t in g.get("tags", [])
                if t.get("unit")
            },
            t_from=t_from,
            t_to=t_to,
            title=f"edgeloop demo, {seconds:.0f} s",
        )
        lines.append(f"report: {report}")
        data["report"] = str(report)
        checks.append(("report written", True))
    except Exception as exc:  # the summary still prints what it has
        lines.append(f"report failed: {exc}")
        checks.append(("report written", False))
    ok = all(met for _, met in checks)
    lines.append("checks:")
    lines += [f"  [{'ok' if met else 'FAILED'}] {what}" for what, met in checks]
    data["checks"] = [{"check": what, "ok": met} for what, met in checks]
    failed = [what for what, met in checks if not met]
    lines.append("result: " + ("OK" if ok else "NOT OK: " + "; ".join(failed)))
    return Summary("\n".join(lines), data, ok)
