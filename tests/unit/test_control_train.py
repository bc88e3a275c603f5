"""`edgeloop train` without TensorFlow: data generation, the numpy pipeline end to end, and
the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.control.mlp import episode_seed
from agent.control.policy import CARD_FORMAT, Policy
from lab.heater_eval import scenarios
from lab.heater_training import FEATURES, generate, rollout


def test_data_generation_is_reproducible_from_a_seed() -> None:
    x1, y1 = generate(7, 1)
    x2, y2 = generate(7, 1)
    x3, _ = generate(8, 1)
    assert x1.shape == (600, len(FEATURES)) and np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert y1.min() >= 0.0 and y1.max() <= 100.0
    # generate() is exactly round 0 of the DAgger helper's rollouts
    xr, yr = rollout(episode_seed(7, 0, 0))
    assert np.array_equal(xr, x1) and np.array_equal(yr, y1)


def test_student_in_the_loop_changes_the_visited_states_not_the_labeller() -> None:
    x_exp, _ = generate(5, 1)
    x_st, y_st = generate(5, 1, student=lambda _x: 0.0)  # a student that never heats
    assert x_st.shape == x_exp.shape and not np.array_equal(x_st, x_exp)
    u_l1 = [f.name for f in FEATURES].index("u_l1")
    # the student's output was applied (after the rate-limited ramp down from the start) ...
    assert x_st[20:, u_l1].mean() < 0.1 * x_exp[20:, u_l1].mean()
    assert y_st.mean() > 5.0  # ... while the expert kept asking for power


def test_training_pipeline_without_tensorflow(tmp_path: Path) -> None:
    from lab.heater_training import train

    assert "tensorflow" not in sys.modules
    card = train(
        3,
        tmp_path,
        episodes=2,
        dagger_episodes=1,
        dagger_rounds=1,
        epochs=2,
        accept=False,
        log=lambda *_: None,
        validation_scenarios=scenarios()[:1],
    )
    assert "tensorflow" not in sys.modules
    model = tmp_path / "heater_policy.tflite"
    assert model.is_file() and model.stat().st_size < 100_000
    assert not (tmp_path / "heater_policy.candidate.tflite").exists()
    on_disk = json.loads(model.with_suffix(".json").read_text())
    assert on_disk["format"] == CARD_FORMAT and on_disk == json.loads(json.dumps(card))
    tr = on_disk["training"]
    assert tr["samples"] == 3 * 600 and tr["epochs_run"] == [2, 2]
    assert set(on_disk["validation"]["results"]) == {"tflite", "pid", "expert"}
    pol = Policy(model, signals=["pv", "flow", "inlet_temp"], period_ms=500)
    fs = pol.new_state()
    fs.push_inputs(50.0, 48.0, [48.0, 10.0, 20.0])
    fs.push_output(30.0)
    assert np.isfinite(pol.invoke(fs))


def test_rejected_candidate_stays_for_inspection(tmp_path: Path) -> None:
    """One episode and one epoch cannot meet the targets: exit 1, candidate left, no model."""
    from agent.cli import main

    rc = main(
        ["train", "--seed", "4", "--out", str(tmp_path), "--episodes", "1",
         "--dagger-rounds", "0", "--epochs", "1", "--hidden", "8"]
    )  # fmt: skip
    assert rc == 1
    assert (tmp_path / "heater_policy.candidate.tflite").is_file()
    card = json.loads((tmp_path / "heater_policy.candidate.json").read_text())
    assert card["validation"]["accepted"] is False
    assert not (tmp_path / "heater_policy.tflite").exists()


@pytest.mark.parametrize("hidden", [16])
def test_training_is_deterministic(tmp_path: Path, hidden: int) -> None:
    from lab.heater_training import train

    blobs = []
    for run in ("a", "b"):
        train(
            11,
            tmp_path / run,
            episodes=1,
            dagger_episodes=1,
            dagger_rounds=1,
            epochs=2,
            hidden=hidden,
            accept=False,
            log=lambda *_: None,
            validation_scenarios=scenarios()[:1],
        )
        blobs.append((tmp_path / run / "heater_policy.tflite").read_bytes())
    assert blobs[0] == blobs[1]
