"""`edgeloop commission` end to end on plants the code has never seen: hw_sim's surge tank
and heat exchanger, parameters drawn from seeds used nowhere else, served over Modbus at
`--speed 10`. The plant test (15 min of plant time), identification, training and validation
run for real; then the accepted policy and the SIMC PID of the identified model are both run
on the TRUE plant (hw_sim's model, in simulated time) and the policy must do better."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.control.pid import Pid, PidState
from agent.control.policy import Policy
from agent.control.safety import Envelope
from agent.demo import Ports, wait_port
from hw_sim.plant.exchanger import ExchangerPlant
from hw_sim.plant.surge import SurgePlant

ROOT = Path(__file__).resolve().parents[2]
SPEED = 10.0
PERIOD_S = 0.1  # wall seconds = 1 s of plant time

PLANTS = {
    # name: unit, pv, pv range, disturbance (tag, range), setpoint range, plant class
    "surge": (3, "level", (0.0, 2.5), ("draw_flow", (0, 20)), (0.5, 1.5), SurgePlant),
    "exchanger": (4, "outlet_temp", (0, 100), ("flow", (0, 60)), (35.0, 55.0), ExchangerPlant),
}

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
      period_ms: 100
      inputs: {{pv: pv, dist: dist}}
      output: valve_cmd
      setpoint: {{value: {sp_mid}, min: {sp_lo}, max: {sp_hi}}}
      mode: manual
      output_min: 5
      output_max: 95
      max_rate_per_s: 100
      fallback: {{kind: hold}}
      heartbeat: {{tag: heartbeat}}
"""


def _true_plant_iae(name: str, seed: int, controller, env: Envelope) -> float:  # type: ignore[no-untyped-def]
    """IAE (plant units x plant s) of `controller(sp, y, d, u_prev) -> u` on the true plant."""
    *_, sp_range, cls = PLANTS[name]
    plant = cls(seed=seed, disturbances=True)
    lo, hi = sp_range
    sps = [lo + 0.5 * (hi - lo), lo + 0.75 * (hi - lo), lo + 0.3 * (hi - lo), lo + 0.5 * (hi - lo)]
    u = plant.valve_pct
    iae = 0.0
    ctrl = controller(u, plant.outputs())
    for sp in sps:
        for _ in range(300):  # 300 plant seconds per setpoint
            o = plant.outputs()
            y, d = o[cls.PV], o[cls.DISTURBANCE]
            u = env.apply(ctrl(sp, y, [d], u), u)[0]
            plant.valve_pct = u
            plant.step(SPEED * PERIOD_S)
            iae += abs(sp - plant.true_state()[cls.PV]) * SPEED * PERIOD_S
    return iae


@pytest.mark.parametrize("name, seed", [("surge", 1301), ("exchanger", 4217)])
def test_commission_an_unseen_plant_and_beat_simc_on_the_true_plant(
    name: str, seed: int, tmp_path: Path
) -> None:
    unit, _pv, (pv_lo, pv_hi), (_d, (d_lo, d_hi)), (sp_lo, sp_hi), _cls = PLANTS[name]
    ports = Ports()
    log = open(tmp_path / "sim.log", "ab")  # noqa: SIM115 - owned by the process
    sim = subprocess.Popen(
        [
            sys.executable, "-m", "hw_sim", "--modbus-port", str(ports.modbus), "--no-opcua",
            "--loops", name, "--loop-seed", str(seed), "--speed", str(SPEED),
        ],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    try:
        assert wait_port(ports.modbus, 20, sim)
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(
            CONFIG.format(
                name=name, port=ports.modbus, unit=unit, pv_lo=pv_lo, pv_hi=pv_hi, d_lo=d_lo,
                d_hi=d_hi, sp_lo=sp_lo, sp_hi=sp_hi, sp_mid=(sp_lo + sp_hi) / 2,
            )
        )  # fmt: skip
        out = tmp_path / "out"
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "agent", "commission", str(cfg), "--loop", name,
             "--out", str(out), "--budget-s", "90", "--seed", "1"],
            capture_output=True, text=True, cwd=ROOT, timeout=600,
        )  # fmt: skip
        took = time.monotonic() - t0
    finally:
        sim.terminate()
        sim.wait(10)
    err = proc.stderr[-4000:]
    assert proc.returncode == 0, err
    report = json.loads((out / f"{name}.report.json").read_text())
    assert report["plant_test"]["aborted"] is None
    assert report["plant_test"]["seconds"] * SPEED <= 20 * 60  # <= 20 min of plant time
    assert report["identification"]["ok"] and report["identification"]["fit_pct"] >= 60
    assert report["policy"]["accepted"] and report["policy"]["iae_vs_pid"] <= 0.8
    card = json.loads((out / f"{name}.json").read_text())
    assert card["plant_model"]["format"] and card["provenance"]["config_sha256"]
    assert took < 400, took

    # the TRUE plant: the accepted policy against the SIMC PID of the identified model
    env = Envelope(5.0, 95.0, 100.0 * PERIOD_S)
    policy = Policy(out / f"{name}.tflite", signals=["pv", "dist"], period_ms=100)
    tuning = report["simc_pid"]
    pid = Pid(
        kp=abs(tuning["kp"]), ti_s=tuning["ti_s"], td_s=tuning.get("td_s", 0.0),
        out_min=5.0, out_max=95.0,
        direct_acting=bool(tuning.get("direct_acting", False)) != (tuning["kp"] < 0),
    )  # fmt: skip

    def pid_ctrl(u0: float, o: dict):  # type: ignore[no-untyped-def]
        st = PidState()
        pid.track(st, u0, math.nan, math.nan)
        return lambda sp, y, d, u: pid.step(st, sp, y, PERIOD_S, u)

    def policy_ctrl(u0: float, o: dict):  # type: ignore[no-untyped-def]
        from agent.control.learn import policy_factory
        from agent.control.validate import Start

        return policy_factory(policy, env)(Start(u0, math.nan, (), math.nan))

    iae_pid = _true_plant_iae(name, seed, pid_ctrl, env)
    iae_pol = _true_plant_iae(name, seed, policy_ctrl, env)
    ratio = iae_pol / iae_pid
    print(
        f"{name} seed {seed}: true-plant IAE policy {iae_pol:.1f}, SIMC PID {iae_pid:.1f}, "
        f"ratio {ratio:.3f}; validation {report['policy']['iae_vs_pid']}; took {took:.0f} s"
    )
    assert ratio < 1.0, (iae_pol, iae_pid)
