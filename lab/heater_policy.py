"""Rebuild the shipped heater policy through `edgeloop commission`, as a user would.

The heater is just another plant: hw_sim serves it over Modbus, `edgeloop commission` runs
its plant test on it, identifies a model from that test alone, trains and validates the
policy; nothing here reads the simulator's equations. The accepted model and card are
copied to `agent/models/heater_policy.{tflite,json}` (the name the shipped config uses) and
the commissioning report beside them. Then `edgeloop control-eval` scores it on the true
simulated heater against the PID and the heater's MPC expert.

    .venv/bin/python -m lab.heater_policy [--seed 1] [--budget-s 600] [--out agent/models]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from lab.demo import ROOT, Ports, start_sim, stop_process

LOOP = "tank_temperature"
DATA = ROOT / "lab" / "data"  # the test data, config and true-plant evaluation of the shipped model
SCENARIO = ROOT / "hw_sim" / "scenarios" / "heater_commission.yaml"
START_POWER_PCT = 52.0  # ~50 degC at the nominal 10 L/min from 20 degC: the operating point
SETTLE_S = 120.0


def bring_to_operating_point(port: int) -> None:
    """What the operator does before a plant test: the heater in manual at its working point
    (a cold tank at 0 % would leave the test band at once)."""
    import time

    from pymodbus.client import ModbusTcpClient

    client = ModbusTcpClient("127.0.0.1", port=port)
    client.connect()
    try:
        regs = ModbusTcpClient.convert_to_registers(
            START_POWER_PCT, ModbusTcpClient.DATATYPE.FLOAT32
        )
        client.write_registers(10, regs, device_id=1)  # heater_power (holding 10, float32)
    finally:
        client.close()
    time.sleep(SETTLE_S)


def commission_config(port: int) -> dict:
    """The shipped config's heater PLC (fast group only) with its loop in manual, no model."""
    base = yaml.safe_load((ROOT / "config" / "edgeloop.yaml").read_text())
    dev = next(d for d in base["devices"] if d["name"] == "heater_plc")
    fast = [g for g in dev["poll_groups"] if g["name"] == "fast"]
    dev = {**dev, "port": port, "poll_groups": fast}
    loop = next(lp for lp in base["control"]["loops"] if lp["name"] == LOOP)
    loop = {k: v for k, v in loop.items() if k not in ("model", "plc_trip")}
    loop.update(mode="manual", fallback={"kind": "hold"})
    return {"site": "heater-commission", "devices": [dev], "control": {"loops": [loop]}}


def rebuild(
    seed: int, budget_s: float, out: Path, work: Path, amplitude: float = 8.0, pv_dev: float = 8.0
) -> int:
    ports = Ports()
    try:
        sim = start_sim(
            ports, work / "hw_sim.log", "--seed", str(seed), "--scenario", str(SCENARIO),
            opcua=False, timeout_s=20,
        )  # fmt: skip
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        bring_to_operating_point(ports.modbus)
        cfg = work / "heater.yaml"
        cfg.write_text(yaml.safe_dump(commission_config(ports.modbus), sort_keys=False))
        cand = work / "candidate"
        rc = subprocess.call(
            [sys.executable, "-m", "agent", "commission", str(cfg), "--loop", LOOP,
             "--out", str(cand), "--budget-s", str(budget_s), "--seed", str(seed),
             "--amplitude", str(amplitude), "--pv-dev", str(pv_dev)],
            cwd=ROOT,
        )  # fmt: skip
    finally:
        stop_process(sim)
    if rc != 0:
        print(f"commission exited {rc}; candidate left in {cand}", file=sys.stderr)
        return rc
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cand / f"{LOOP}.tflite", out / "heater_policy.tflite")
    shutil.copyfile(cand / f"{LOOP}.json", out / "heater_policy.json")
    shutil.copyfile(cand / f"{LOOP}.report.json", out / "heater_policy.report.json")
    DATA.mkdir(exist_ok=True)
    shutil.copyfile(cand / f"{LOOP}.test.csv", DATA / "heater_policy.test.csv")
    shutil.copyfile(cfg, DATA / "heater_policy.commission.yaml")
    rep = json.loads((cand / f"{LOOP}.report.json").read_text())
    res = true_plant_evaluation(out / "heater_policy.tflite")
    (DATA / "heater_policy.eval.json").write_text(json.dumps(res, indent=1) + "\n")
    t, p, e = (res[k]["iae"] for k in ("tflite", "pid", "expert"))
    print(
        f"wrote {out / 'heater_policy.tflite'}: validation {rep['policy']['iae_vs_pid']}x SIMC "
        f"on the identified model; true heater {t / p:.3f}x the PID, {t / e:.3f}x the expert"
    )
    return 0


def true_plant_evaluation(model: Path) -> dict:
    """`edgeloop control-eval` of the model: the nine heater scenarios on the simulator's own
    equations, against the default PID and the heater's MPC expert (which knows them)."""
    from agent.control.policy import Policy
    from lab.heater_eval import PERIOD_S, ROLES, ExpertController, LoopController, evaluate

    policy = Policy(model, signals=list(ROLES), period_ms=round(PERIOD_S * 1000))
    return evaluate([LoopController(policy), LoopController(None), ExpertController()])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1, help="hw_sim seed and commissioning seed")
    ap.add_argument("--budget-s", type=float, default=600.0, help="plant-test time (s)")
    ap.add_argument("--out", type=Path, default=ROOT / "agent" / "models")
    ap.add_argument("--amplitude", type=float, default=8.0, help="test amplitude (%% power)")
    ap.add_argument("--pv-dev", type=float, default=8.0, help="largest test excursion (K)")
    ap.add_argument("--keep", type=Path, help="keep the work directory here")
    args = ap.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return rebuild(args.seed, args.budget_s, args.out, args.keep, args.amplitude, args.pv_dev)
    with tempfile.TemporaryDirectory() as tmp:
        return rebuild(args.seed, args.budget_s, args.out, Path(tmp), args.amplitude, args.pv_dev)


if __name__ == "__main__":
    sys.exit(main())
