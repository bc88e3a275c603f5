"""Smoke test of `edgeloop train`: runs only where TensorFlow (the `train` extra) is installed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.control.evaluate import scenarios
from agent.control.policy import CARD_FORMAT, Policy
from agent.control.training import FEATURES, generate


def test_data_generation_is_reproducible_from_a_seed() -> None:
    x1, y1 = generate(7, 1)
    x2, y2 = generate(7, 1)
    x3, _ = generate(8, 1)
    assert x1.shape == (600, len(FEATURES)) and np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert y1.min() >= 0.0 and y1.max() <= 100.0


@pytest.mark.needs_tf
def test_training_pipeline_smoke(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    from agent.control.training import train

    card = train(
        3,
        tmp_path,
        episodes=2,
        dagger_episodes=1,
        epochs=1,
        accept=False,
        log=lambda *_: None,
        validation_scenarios=scenarios()[:1],
    )
    model = tmp_path / "heater_policy.tflite"
    assert model.is_file() and model.stat().st_size < 100_000
    on_disk = json.loads(model.with_suffix(".json").read_text())
    assert on_disk["format"] == CARD_FORMAT and on_disk == json.loads(json.dumps(card))
    assert set(on_disk["validation"]["results"]) == {"tflite", "pid", "expert"}
    pol = Policy(model, signals=["pv", "flow", "inlet_temp"], period_ms=500)
    fs = pol.new_state()
    fs.push_inputs(50.0, 48.0, [48.0, 10.0, 20.0])
    fs.push_output(30.0)
    assert np.isfinite(pol.invoke(fs))
