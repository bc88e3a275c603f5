"""Every fault kind shows in the served values and in the ground-truth log.

Each fault is checked against a twin plant with the same seed and no fault: plant noise
comes from streams the faults never touch, so the twins agree exactly except where the
fault acts.
"""

from __future__ import annotations

import io
import json
import math
import statistics
import subprocess
import sys

import pytest
import yaml

from hw_sim.faults import (
    ALL_KINDS,
    PROCESS_KINDS,
    SENSOR_KINDS,
    FaultSpec,
    load_scenario,
    random_faults,
    read_ground_truth,
)
from hw_sim.runtime import SimPlant

AT, DUR, DT = 20.0, 30.0, 0.5


def twin_run(spec: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """(values without fault, values with fault, ground-truth records) sampled in the window."""
    log = io.StringIO()
    plain, faulty = SimPlant(seed=4), SimPlant(seed=4, faults_log=log)
    for p in (plain, faulty):
        p.write("heater_power", 40.0)
    faulty.inject(spec)
    a, b = [], []
    t = 0.0
    while t < AT + DUR + 5.0:
        plain.step(DT)
        faulty.step(DT)
        t += DT
        if AT + DT < t < AT + DUR:
            a.append(plain.values())
            b.append(faulty.values())
        elif t < AT:
            assert plain.values() == faulty.values()
    faulty.close()
    recs = [json.loads(x) for x in log.getvalue().splitlines()]
    return a, b, recs


@pytest.mark.parametrize("kind", SENSOR_KINDS)
def test_sensor_fault_in_served_values_and_log(kind: str) -> None:
    sig = "pump_discharge_pressure"
    spec = {
        "kind": kind,
        "signal": sig,
        "at_s": AT,
        "duration_s": DUR,
        "magnitude": 1.5,
        "rate_per_s": 0.05,
        "sigma": 0.4,
    }
    a, b, recs = twin_run(spec)
    diff = [fb[sig] - fa[sig] for fa, fb in zip(a, b, strict=True)]
    if kind == "spike":
        assert diff == pytest.approx([1.5] * len(diff))
    elif kind == "stuck":
        assert len({fb[sig] for fb in b}) == 1 and len({fa[sig] for fa in a}) > 1
    elif kind == "drift":
        assert diff[-1] > diff[0] + 1.0 and all(d > 0 for d in diff)
    elif kind == "noise_burst":
        assert 0.25 < statistics.pstdev(diff) < 0.6
    elif kind == "dropout":
        assert all(math.isnan(fb[sig]) for fb in b)
    # the Modbus mirror serves the same faulty value; nothing else changed
    for fa, fb in zip(a, b, strict=True):
        same = fb[sig] == fb[f"{sig}_mb"] or (math.isnan(fb[sig]) and math.isnan(fb[f"{sig}_mb"]))
        assert same
        others = {k for k in fa if k not in (sig, f"{sig}_mb")}
        assert all(fa[k] == fb[k] for k in others)
    assert [r["event"] for r in recs] == ["start", "end"]
    assert recs[1]["kind"] == kind and recs[1]["class"] == "sensor"
    assert recs[1]["signals"] == [sig, f"{sig}_mb"]
    assert recs[1]["start_s"] == pytest.approx(AT, abs=DT)
    assert recs[1]["end_s"] == pytest.approx(AT + DUR, abs=DT)
    assert recs[1]["end_wall"] >= recs[1]["start_wall"] > 1.6e9


# signal -> direction (+1 up, -1 down) each process fault must move, beyond noise
EXPECT = {
    "outlet_valve": {"pump_flow": -1, "pump_discharge_pressure": +1},
    "inlet_valve": {"pump_flow": -1, "pump_vibration_y": +1},
    "imbalance": {"pump_vibration_x": +1, "pump_vibration_y": +1},
    "cavitation": {"pump_flow": -1, "pump_vibration_y": +1},
    "leak": {"pump_flow": -1, "pump_discharge_pressure": -1, "pump_motor_current": +1},
    "element_degradation": {"element_current": -1, "tank_temp": -1},
}


@pytest.mark.parametrize("kind", PROCESS_KINDS)
@pytest.mark.parametrize("profile", ["step", "ramp", "exponential"])
def test_process_fault_moves_the_plant(kind: str, profile: str) -> None:
    spec = {
        "kind": kind,
        "at_s": AT,
        "duration_s": DUR,
        "profile": profile,
        "ramp_s": DUR / 3,
        "tau_s": DUR / 6,
    }
    a, b, recs = twin_run(spec)
    late_a, late_b = a[-3:], b[-3:]  # window end: every profile is near its magnitude
    for sig, sign in EXPECT[kind].items():
        effect = statistics.mean(fb[sig] - fa[sig] for fa, fb in zip(late_a, late_b, strict=True))
        # measurement noise of the twin, from sample-to-sample differences (level drifts)
        steps = [a[i + 1][sig] - a[i][sig] for i in range(len(a) - 1)]
        noise = statistics.pstdev(steps) / math.sqrt(2) + 1e-3
        assert sign * effect > 3 * noise, (sig, effect, noise)
    assert recs[-1]["kind"] == kind and recs[-1]["class"] == "process"
    assert set(EXPECT[kind]) <= set(recs[-1]["signals"])


def test_heater_inlet_valve_cuts_heater_flow() -> None:
    a, b, recs = twin_run(
        {"kind": "inlet_valve", "target": "heater", "at_s": AT, "duration_s": DUR, "magnitude": 0.5}
    )
    assert statistics.mean(fb["inlet_flow"] for fb in b[-5:]) < 0.6 * statistics.mean(
        fa["inlet_flow"] for fa in a[-5:]
    )
    assert recs[-1]["signals"] == ["inlet_flow", "tank_temp"]


def test_random_faults_deterministic_and_valid() -> None:
    f1 = random_faults(9, 48 * 3600.0)
    f2 = random_faults(9, 48 * 3600.0)
    assert f1 == f2 and f1 != random_faults(10, 48 * 3600.0)
    assert {f.kind for f in f1} == set(ALL_KINDS)  # 48 h covers every kind
    ends = [f.at_s + (f.duration_s or 0) for f in f1]
    assert all(b.at_s >= e for b, e in zip(f1[1:], ends, strict=False))  # one at a time


def test_generator_cli_writes_a_loadable_scenario(tmp_path) -> None:
    out = tmp_path / "long.yaml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "hw_sim.faults",
            "generate",
            "--hours",
            "6",
            "--seed",
            "2",
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    scen = load_scenario(out)
    assert scen.seed == 2 and len(scen.faults) > 5
    assert scen.faults == random_faults(2, 6 * 3600.0)


def test_long_run_ground_truth_intervals(tmp_path) -> None:
    path = tmp_path / "truth.jsonl"
    p = SimPlant(seed=1, scenario=None, faults_log=path)
    for f in random_faults(1, 4 * 3600.0, mean_interval_s=300.0):
        p.inject(f)
    for _ in range(4 * 360):
        p.step(10.0)  # 4 h of plant in 10 s steps
    p.close()
    truth = read_ground_truth(path)
    assert len(truth) > 10
    assert all(t["end_s"] is not None and t["end_s"] >= t["start_s"] for t in truth)


def test_bad_scenario_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"faults": [{"kind": "spike", "at_s": 1, "signal": "heater_power"}]})
    )
    with pytest.raises(ValueError, match="not a measured signal"):
        load_scenario(bad)
    bad.write_text(yaml.safe_dump({"faults": [{"kind": "leak", "at_s": 1, "typo": 3}]}))
    with pytest.raises(ValueError, match=r"bad\.yaml"):
        load_scenario(bad)
    with pytest.raises(ValueError):
        FaultSpec(kind="stuck", at_s=0)  # sensor fault without a signal
