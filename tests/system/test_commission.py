"""`edgeloop commission` end to end on plants the code has never seen: hw_sim's surge tank
and heat exchanger, parameters drawn from seeds used nowhere else, served over Modbus at
`--speed 10`. The plant test (15 min of plant time), identification, training and validation
run for real; then the accepted policy and the SIMC PID of the identified model are both run
on the TRUE plant (hw_sim's model, in simulated time) and the policy must do better.
The harness is bench/commission.py's (the benchmark runs more seeds)."""

from __future__ import annotations

import json

import pytest

from bench.commission import commission, pid_maker, policy_maker, true_plant

SPEED = 10.0


@pytest.mark.parametrize("name, seed", [("surge", 1301), ("exchanger", 4217)])
def test_commission_an_unseen_plant_and_beat_simc_on_the_true_plant(
    name: str, seed: int, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    res = commission(name, seed, SPEED, 90.0, tmp_path)
    assert res["code"] == 0, res["stderr"][-4000:]
    report = res["report"]
    assert report["plant_test"]["aborted"] is None
    assert report["plant_test"]["seconds"] * SPEED <= 20 * 60  # <= 20 min of plant time
    assert report["identification"]["ok"] and report["identification"]["fit_pct"] >= 60
    assert report["policy"]["accepted"] and report["policy"]["iae_vs_pid"] <= 0.8
    card = json.loads((res["out"] / f"{name}.json").read_text())
    assert card["plant_model"]["format"] and card["provenance"]["config_sha256"]
    assert card["model_check"]["reference_rms"] > 0
    assert res["wall_s"] < 400, res["wall_s"]

    # the TRUE plant: the accepted policy against the SIMC PID of the identified model
    iae_pid, _ = true_plant(name, seed, SPEED, pid_maker(report["simc_pid"]))
    iae_pol, violations = true_plant(name, seed, SPEED, policy_maker(res["out"] / f"{name}.tflite"))
    print(f"{name} seed {seed}: true-plant IAE ratio {iae_pol / iae_pid:.3f}")
    assert violations == 0
    assert iae_pol < iae_pid, (iae_pol, iae_pid)
