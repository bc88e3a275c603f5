"""The tuning workflow end to end: history of the simulated skid as CSV -> `edgeloop replay`."""

from __future__ import annotations

import csv
import io

import numpy as np

from agent.cli import main
from hw_sim.faults import FaultSpec, Scenario
from hw_sim.runtime import SimPlant

TAGS = ["pump_motor_current", "pump_vibration_x", "pump_vibration_y", "pump_flow"]


def test_replay_finds_an_injected_imbalance_in_simulated_history(tmp_path) -> None:
    fault = FaultSpec(kind="imbalance", at_s=500.0, duration_s=100.0, magnitude=3.0)
    scen = Scenario(seed=4, heater_disturbances=False, faults=[fault])
    truth = io.StringIO()
    plant = SimPlant(seed=4, scenario=scen, faults_log=truth)
    src = tmp_path / "skid.csv"
    with src.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["t", *TAGS])
        for _ in range(1400):  # 700 s at 0.5 s
            plant.step(0.5)
            v = plant.values()
            w.writerow([f"{plant.t_s:.1f}", *(f"{v[t]:.6g}" for t in TAGS)])
    plant.close()
    assert '"kind": "imbalance"' in truth.getvalue()
    out = tmp_path / "scored.csv"
    args = ["replay", str(src), "--out", str(out), "--time-column", "t", "--warmup", "600"]
    assert main(args) == 0
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1400
    t = np.array([float(r["t"]) for r in rows])
    anomaly = np.array([int(r["anomaly"]) for r in rows])
    before = anomaly[(t > 300) & (t < 500)]
    assert before.sum() == 0
    onset = t[(t >= 500) & (anomaly == 1)]
    assert onset.size and onset[0] < 530  # caught within 30 s
    contrib_flags = int(rows[int(np.argmax(t >= 560))]["pump_vibration_x.flags"])
    assert contrib_flags & 128  # GROUP_ALARM on the members
