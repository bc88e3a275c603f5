"""Control step cost and loop jitter: the TFLite loop step (assemble, invoke, safety) against
the PID step and the MPC expert it imitates; and the period jitter of the asyncio runner.

Run: .venv/bin/python bench/control.py [--steps N]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from agent.control import loop as L
from agent.control.pid import Pid
from agent.control.policy import MODELS_DIR, Policy
from agent.control.safety import Envelope
from agent.control.settings import DEFAULT_KP, DEFAULT_TI_S
from hw_sim.plant.heater import HeaterPlant
from lab.heater_eval import ROLES, ExpertController


def _spec(policy: Policy | None) -> L.LoopSpec:
    return L.LoopSpec(
        name="bench",
        period_s=0.5,
        roles=ROLES,
        envelope=Envelope(0, 100, 12.5),
        fallback="pid",
        pid=Pid(kp=DEFAULT_KP, ti_s=DEFAULT_TI_S),
        healthy_s=0.0,
        max_input_age_s=1e9,
        policy_roles=(0, 1, 2) if policy else (),
    )


def _time_loop(policy: Policy | None, steps: int) -> np.ndarray:
    plant = HeaterPlant(seed=1)
    plant.settle(0.0, temp_c=50.0)
    spec = _spec(policy)
    st = L.LoopState(mode="auto" if policy else "shadow", last_u=plant.power_pct)
    if policy:
        st.fs = policy.new_state()
    inp = L.LoopInputs(0, 55.0, [0.0] * 3, [0] * 3, [0] * 3, [0] * 3)
    ns = np.empty(steps, np.int64)
    for k in range(steps):
        o = plant.outputs()
        inp.values[0], inp.values[1], inp.values[2] = (
            o["tank_temp"],
            o["inlet_flow"],
            o["inlet_temp"],
        )
        t0 = time.perf_counter_ns()
        d = L.step(spec, policy, st, inp)
        ns[k] = time.perf_counter_ns() - t0
        plant.power_pct = d.command or 0.0
        plant.step(0.5)
    return ns[100:]


def _time_parts(policy: Policy, steps: int) -> dict[str, np.ndarray]:
    fs = policy.new_state()
    fs.push_inputs(55.0, 50.0, [50.0, 10.0, 20.0])
    fs.push_output(40.0)
    env = Envelope(0, 100, 12.5)
    out = {
        "assemble": np.empty(steps, np.int64),
        "invoke (set, invoke, get)": np.empty(steps, np.int64),
        "envelope": np.empty(steps, np.int64),
    }
    interp = policy.interp
    for k in range(steps):
        t0 = time.perf_counter_ns()
        x = policy.assemble(fs)
        t1 = time.perf_counter_ns()
        interp.set_tensor(policy._in_idx, x)
        interp.invoke()
        y = float(interp.get_tensor(policy._out_idx)[0, 0])
        t2 = time.perf_counter_ns()
        env.apply(y * 100.0, 40.0)
        t3 = time.perf_counter_ns()
        out["assemble"][k], out["invoke (set, invoke, get)"][k], out["envelope"][k] = (
            t1 - t0,
            t2 - t1,
            t3 - t2,
        )
    return out


def _time_expert(steps: int) -> np.ndarray:
    plant = HeaterPlant(seed=1)
    plant.settle(0.0, temp_c=50.0)
    ex = ExpertController()
    ex.reset(55.0, plant.outputs(), plant.power_pct)
    u = plant.power_pct
    ns = np.empty(steps, np.int64)
    for k in range(steps):
        t0 = time.perf_counter_ns()
        u = ex.step(55.0, plant.outputs(), u)
        ns[k] = time.perf_counter_ns() - t0
        plant.power_pct = u
        plant.step(0.5)
    return ns[20:]


async def _jitter(period_s: float, seconds: float) -> np.ndarray:
    """Lateness of each period start of a drift-free schedule like ControlRunner's."""
    ev = asyncio.get_running_loop()
    start = ev.time()
    late = []
    k = 0
    while (ev.time() - start) < seconds:
        k += 1
        due = start + k * period_s
        await asyncio.sleep(max(0.0, due - ev.time()))
        late.append(ev.time() - due)
    return np.asarray(late) * 1e3


def _time_gate(steps: int) -> np.ndarray:
    """`WriteGate.check` + `committed` of one rate-limited loop output (per write)."""
    from agent.tags import TagTable
    from agent.writegate import TagRule, WriteGate

    table = TagTable.for_names(["heater_power"])
    rule = TagRule(frozenset({"output:l"}), 0.0, 100.0, 25.0, 1.0, 0.25, 10.0)
    gate = WriteGate(table, {0: rule})
    ns = np.empty(steps, dtype=np.int64)
    now, u = 10**18, 50.0
    gate.committed(0, u, now)
    for k in range(steps):
        now += 500_000_000
        u = 50.0 + 10.0 * np.sin(k / 50.0)
        t0 = time.perf_counter_ns()
        gate.check(0, u, "output:l", now)
        gate.committed(0, u, now)
        ns[k] = time.perf_counter_ns() - t0
    return ns[100:]


def _row(name: str, ns: np.ndarray) -> str:
    us = ns / 1e3
    return (
        f"| {name} | {np.percentile(us, 50):.1f} | {np.percentile(us, 99):.1f} | {us.mean():.1f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--expert-steps", type=int, default=600)
    args = ap.parse_args()
    policy = Policy(MODELS_DIR / "heater_policy.tflite", signals=list(ROLES), period_ms=500)
    tfl = _time_loop(policy, args.steps)
    pid = _time_loop(None, args.steps)
    exp = _time_expert(args.expert_steps)
    print("| step | p50 µs | p99 µs | mean µs |")
    print("|---|---:|---:|---:|")
    print(_row("TFLite loop step (assemble, invoke, interlocks, envelope, PID tracking)", tfl))
    for name, ns in _time_parts(policy, args.steps).items():
        print(_row(f"  of which {name}", ns[100:]))
    print(_row("PID loop step", pid))
    print(_row("MPC expert step", exp))
    print(_row("write gate (role, bounds, rate, budget) per write", _time_gate(args.steps)))
    print()
    print(
        f"expert / TFLite compute: {exp.mean() / tfl.mean():.0f}x (mean), "
        f"{np.percentile(exp, 99) / np.percentile(tfl, 99):.0f}x (p99); "
        f"target: TFLite step <= 50 µs p99"
    )
    jit = asyncio.run(_jitter(0.1, 5.0))
    print(
        f"loop period jitter at 100 ms over 5 s: p50 {np.percentile(jit, 50):.2f} ms, "
        f"p99 {np.percentile(jit, 99):.2f} ms, max {jit.max():.2f} ms (target p99 <= 2 ms)"
    )


if __name__ == "__main__":
    main()
