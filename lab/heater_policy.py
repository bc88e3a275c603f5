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

from lab.demo import ROOT, Ports, stop_process, wait_port

LOOP = "tank_temperature"
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


def rebuild(seed: int, budget_s: float, out: Path, work: Path) -> int:
    ports = Ports()
    log = open(work / "hw_sim.log", "wb")  # noqa: SIM115 - owned by the process
    sim = subprocess.Popen(
        [sys.executable, "-m", "hw_sim", "--modbus-port", str(ports.modbus), "--no-opcua",
         "--seed", str(seed)],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    try:
        if not wait_port(ports.modbus, 20, sim):
            print("hw_sim did not start; see", work / "hw_sim.log", file=sys.stderr)
            return 1
        bring_to_operating_point(ports.modbus)
        cfg = work / "heater.yaml"
        cfg.write_text(yaml.safe_dump(commission_config(ports.modbus), sort_keys=False))
        cand = work / "candidate"
        rc = subprocess.call(
            [sys.executable, "-m", "agent", "commission", str(cfg), "--loop", LOOP,
             "--out", str(cand), "--budget-s", str(budget_s), "--seed", str(seed)],
            cwd=ROOT,
        )  # fmt: skip
    finally:
        stop_process(sim)
        log.close()
    if rc != 0:
        print(f"commission exited {rc}; candidate left in {cand}", file=sys.stderr)
        return rc
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cand / f"{LOOP}.tflite", out / "heater_policy.tflite")
    shutil.copyfile(cand / f"{LOOP}.json", out / "heater_policy.json")
    shutil.copyfile(cand / f"{LOOP}.report.json", out / "heater_policy.report.json")
    rep = json.loads((cand / f"{LOOP}.report.json").read_text())
    print(f"wrote {out / 'heater_policy.tflite'}: validation {rep['policy']['iae_vs_pid']}x SIMC")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1, help="hw_sim seed and commissioning seed")
    ap.add_argument("--budget-s", type=float, default=600.0, help="plant-test time (s)")
    ap.add_argument("--out", type=Path, default=ROOT / "agent" / "models")
    ap.add_argument("--keep", type=Path, help="keep the work directory here")
    args = ap.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return rebuild(args.seed, args.budget_s, args.out, args.keep)
    with tempfile.TemporaryDirectory() as tmp:
        return rebuild(args.seed, args.budget_s, args.out, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
