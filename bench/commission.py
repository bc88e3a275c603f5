"""Commissioning benchmark: `edgeloop commission` on hw_sim's loop plants, seeds the code
never saw, served over Modbus at `--speed`; then the accepted policy and the SIMC PID of the
identified model on the TRUE plant (hw_sim's model in simulated time, same seed). The plant
test may move pv within a band wider than the setpoint range (`--pv-band`: what the plant
physically tolerates), because the plants' own disturbances move pv in manual mode.

Prints one row per plant and seed: plant-test time (plant seconds), held-out fit %, training
time on this box, validation IAE ratio (identified model with mismatch), true-plant IAE
ratio vs the SIMC PID, envelope violations on the true plant, wall time.

    .venv/bin/python bench/commission.py [--plants surge,exchanger] [--seeds 11,12] [--speed 10]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.control.pid import Pid, PidState  # noqa: E402
from agent.control.policy import Policy  # noqa: E402
from agent.control.safety import Envelope  # noqa: E402
from hw_sim.plant.exchanger import ExchangerPlant  # noqa: E402
from hw_sim.plant.surge import SurgePlant  # noqa: E402
from lab.demo import Ports, wait_port  # noqa: E402

PERIOD_S = 0.1  # wall seconds per control period (plant seconds = PERIOD_S * speed)
U_LO, U_HI, RATE = 5.0, 95.0, 100.0  # the loop's envelope (rate per wall second)

PLANTS: dict[str, dict[str, Any]] = {
    "surge": {
        "unit": 3, "pv": (0.0, 2.5), "d": (0, 20), "sp": (0.5, 1.5), "band": (0.2, 1.9),
        "cls": SurgePlant,
    },
    "exchanger": {
        "unit": 4, "pv": (0, 100), "d": (0, 60), "sp": (35.0, 55.0), "band": (25.0, 70.0),
        "cls": ExchangerPlant,
    },
}  # fmt: skip

CONFIG = """
site: commission-{name}
devices:
  - name: plc
    driver: modbus
    host: 127.0.0.1
    port: {port}
    unit_id: {unit}
    timeout_s: 0.05
    retries: 0
    poll_groups:
      - name: loop
        interval_ms: 50
        tags:
          - {{name: pv, table: input, address: 0, type: float32, min: {pv_lo}, max: {pv_hi}}}
          - {{name: dist, table: input, address: 2, type: float32, min: {d_lo}, max: {d_hi}}}
          - {{name: valve_cmd, table: holding, address: 0, type: float32, writable: true,
             min: 0, max: 100}}
          - {{name: heartbeat, table: holding, address: 4, type: uint16, writable: true,
             min: 0, max: 65535}}
control:
  loops:
    - name: {name}
      period_ms: {period_ms}
      inputs: {{pv: pv, dist: dist}}
      output: valve_cmd
      setpoint: {{value: {sp_mid}, min: {sp_lo}, max: {sp_hi}}}
      mode: manual
      output_min: {u_lo}
      output_max: {u_hi}
      max_rate_per_s: {rate}
      fallback: {{kind: hold}}
      heartbeat: {{tag: heartbeat}}
"""


def config_text(name: str, port: int) -> str:
    p = PLANTS[name]
    return CONFIG.format(
        name=name, port=port, unit=p["unit"], pv_lo=p["pv"][0], pv_hi=p["pv"][1],
        d_lo=p["d"][0], d_hi=p["d"][1], sp_lo=p["sp"][0], sp_hi=p["sp"][1],
        sp_mid=sum(p["sp"]) / 2, period_ms=round(PERIOD_S * 1000), u_lo=U_LO, u_hi=U_HI,
        rate=RATE,
    )  # fmt: skip


def commission(name: str, seed: int, speed: float, budget_s: float, work: Path) -> dict:
    """Serve the plant, run `edgeloop commission`; the report plus exit status and wall time."""
    ports = Ports()
    log = open(work / "sim.log", "ab")  # noqa: SIM115 - owned by the process
    sim = subprocess.Popen(
        [
            sys.executable, "-m", "hw_sim", "--modbus-port", str(ports.modbus), "--no-opcua",
            "--loops", name, "--loop-seed", str(seed), "--speed", str(speed),
        ],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    try:
        if not wait_port(ports.modbus, 20, sim):
            raise RuntimeError("hw_sim did not start")
        cfg = work / f"{name}.yaml"
        cfg.write_text(config_text(name, ports.modbus))
        out = work / "out"
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "agent", "commission", str(cfg), "--loop", name,
             "--out", str(out), "--budget-s", str(budget_s), "--seed", "1",
             "--pv-band", *(str(v) for v in PLANTS[name]["band"])],
            capture_output=True, text=True, cwd=ROOT, timeout=1200,
        )  # fmt: skip
        wall = time.monotonic() - t0
    finally:
        sim.terminate()
        sim.wait(10)
    rep_path = out / f"{name}.report.json"
    report = json.loads(rep_path.read_text()) if rep_path.exists() else {}
    return {"code": proc.returncode, "wall_s": wall, "report": report, "out": out,
            "stderr": proc.stderr}  # fmt: skip


def true_plant(name: str, seed: int, speed: float, make_ctrl: Any) -> tuple[float, int]:
    """(IAE in plant units x plant seconds, envelope violations) of a controller on the true
    plant: setpoint steps over the range, the plant's own seeded disturbances on."""
    p = PLANTS[name]
    cls = p["cls"]
    plant = cls(seed=seed, disturbances=True)
    env = Envelope(U_LO, U_HI, RATE * PERIOD_S)
    lo, hi = p["sp"]
    sps = [lo + f * (hi - lo) for f in (0.5, 0.75, 0.3, 0.5)]
    u = min(max(plant.valve_pct, U_LO), U_HI)
    ctrl = make_ctrl(u)
    iae, viol = 0.0, 0
    dt_plant = speed * PERIOD_S
    for sp in sps:
        for _ in range(round(300 / dt_plant)):  # 300 plant seconds per setpoint
            o = plant.outputs()
            req = ctrl(sp, o[cls.PV], [o[cls.DISTURBANCE]], u)
            new, _ = env.apply(req, u)
            if not math.isfinite(req) or not U_LO <= new <= U_HI:
                viol += 1
            u = new
            plant.valve_pct = u
            plant.step(dt_plant)
            iae += abs(sp - plant.true_state()[cls.PV]) * dt_plant
    return iae, viol


def pid_maker(tuning: dict) -> Any:
    pid = Pid(
        kp=abs(tuning["kp"]), ti_s=tuning["ti_s"], td_s=tuning.get("td_s", 0.0),
        out_min=U_LO, out_max=U_HI,
        direct_acting=bool(tuning.get("direct_acting", False)) != (tuning["kp"] < 0),
    )  # fmt: skip

    def make(u0: float) -> Any:
        st = PidState()
        pid.track(st, u0, math.nan, math.nan)
        return lambda sp, y, d, u: pid.step(st, sp, y, PERIOD_S, u)

    return make


def policy_maker(path: Path) -> Any:
    from agent.control.learn import policy_factory
    from agent.control.validate import Start

    policy = Policy(path, signals=["pv", "dist"], period_ms=round(PERIOD_S * 1000))
    env = Envelope(U_LO, U_HI, RATE * PERIOD_S)
    return lambda u0: policy_factory(policy, env)(Start(u0, math.nan, (), math.nan))


def run_one(name: str, seed: int, speed: float, budget_s: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        res = commission(name, seed, speed, budget_s, Path(tmp))
        rep = res["report"]
        row = {
            "plant": name,
            "seed": seed,
            "code": res["code"],
            "test_plant_s": round(rep.get("plant_test", {}).get("seconds", math.nan) * speed),
            "fit_pct": rep.get("identification", {}).get("fit_pct", math.nan),
            "train_s": rep.get("policy", {}).get("training_seconds", math.nan),
            "val_ratio": rep.get("policy", {}).get("iae_vs_pid", math.nan),
            "accepted": rep.get("policy", {}).get("accepted", False),
            "wall_s": res["wall_s"],
        }
        model = res["out"] / f"{name}.tflite"
        if model.exists() and "simc_pid" in rep:
            iae_pid, _ = true_plant(name, seed, speed, pid_maker(rep["simc_pid"]))
            iae_pol, viol = true_plant(name, seed, speed, policy_maker(model))
            row.update(true_ratio=iae_pol / iae_pid, violations=viol)
        else:
            row.update(true_ratio=math.nan, violations=-1, error=res["stderr"][-300:])
        return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plants", default="surge,exchanger")
    ap.add_argument("--seeds", default="11,12")
    ap.add_argument("--speed", type=float, default=10.0)
    ap.add_argument("--budget-s", type=float, default=90.0, help="wall seconds (x speed)")
    args = ap.parse_args()
    print(
        "| plant | seed | exit | plant test (plant s) | fit % | training s | validation IAE / "
        "SIMC | true-plant IAE / SIMC | violations | wall s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.plants.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            r = run_one(name, seed, args.speed, args.budget_s)
            print(
                f"| {r['plant']} | {r['seed']} | {r['code']} | {r['test_plant_s']} | "
                f"{r['fit_pct']:.1f} | {r['train_s']} | {r['val_ratio']} | "
                f"{r['true_ratio']:.3f} | {r['violations']} | {r['wall_s']:.0f} |",
                flush=True,
            )
            if "error" in r:
                print(f"<!-- {r['error']} -->")


if __name__ == "__main__":
    main()
