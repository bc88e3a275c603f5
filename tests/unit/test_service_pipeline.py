"""The service's Pipeline is built from a compiled config before anything connects."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from agent.config import load_config
from agent.control.policy import MODELS_DIR
from agent.control.runner import ControlError
from agent.metrics import Metrics
from agent.service import Pipeline
from agent.tags import compile_config
from agent.telemetry.sdnotify import Watchdog

ROOT = Path(__file__).resolve().parents[2]


def test_a_relative_model_path_is_found_beside_the_config(tmp_path: Path, monkeypatch) -> None:
    site = tmp_path / "site"
    (site / "models").mkdir(parents=True)
    for suffix in (".tflite", ".json"):
        shutil.copy(MODELS_DIR / f"heater_policy{suffix}", site / "models" / f"tuned{suffix}")
    cfg = yaml.safe_load((ROOT / "config" / "edgeloop.yaml").read_text())
    cfg["control"]["loops"][0]["model"] = "models/tuned.tflite"
    cfg["store"]["enabled"] = False
    cfg.pop("publish")
    path = site / "edgeloop.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    monkeypatch.chdir(tmp_path)  # not the config's directory
    compiled = compile_config(load_config(path))

    pipe = Pipeline(compiled, Metrics(), Watchdog(interval_s=None), config_dir=site)
    loop = pipe.control.loops["tank_temperature"]
    assert loop.policy is not None
    assert Path(loop.policy.path).resolve() == (site / "models" / "tuned.tflite").resolve()
    assert pipe.store is None and pipe.publisher is None

    with pytest.raises(ControlError, match=r"tuned\.tflite"):
        Pipeline(compiled, Metrics(), Watchdog(interval_s=None), config_dir=None)
