"""The service's Pipeline is built from a compiled config before anything connects."""

from __future__ import annotations

import asyncio
import shutil
import time
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


def _pipeline(tmp_path: Path, **loop: object) -> Pipeline:
    cfg = yaml.safe_load((ROOT / "config" / "edgeloop.yaml").read_text())
    cfg["control"]["loops"][0].update(loop)
    cfg["store"]["enabled"] = False
    cfg.pop("publish")
    cfg["http"]["port"] = 0
    path = tmp_path / "edgeloop.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return Pipeline(compile_config(load_config(path)), Metrics(), Watchdog(interval_s=None))


async def test_a_killed_control_task_is_fatal_and_reported(tmp_path: Path, caplog) -> None:
    """Issue 11 item 5: the control task died with no log line, /readyz still ready."""
    pipe = _pipeline(tmp_path, mode="manual")
    pipe.start_control()
    task = pipe._tasks[0]
    await asyncio.sleep(0.05)
    assert pipe.fatal is None
    task.cancel()  # killed from outside, not by stop(): a cancel is not a clean end either
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert pipe.fatal is not None and "control task ended" in pipe.fatal
    assert "service" in pipe.components() and not pipe.ready()
    assert "control task ended" in caplog.text
    assert any("FAILING" in p for p in pipe.status_line().split("; "))


async def test_a_stalled_control_loop_stops_the_watchdog_feeds(tmp_path: Path) -> None:
    pipe = _pipeline(tmp_path, mode="manual")
    pipe.control._started_at = 1.0  # the loop started long ago and never completed a period
    pipe._attempts = -1.0  # acquisition progressed
    fed = pipe.watchdog._count
    pipe.check_progress()
    assert pipe.watchdog._count == fed  # no feed: control is not progressing
    assert pipe.components()["control"]["state"] == "failed"
    pipe.control._started_at = 0.0
    for lp in pipe.control.loops.values():
        lp.completed_at = time.monotonic()
    pipe._attempts = -1.0
    pipe.check_progress()
    assert pipe.watchdog._count == fed + 1


async def test_a_stop_step_that_ignores_its_cancel_cannot_hang_the_stop(caplog) -> None:
    """Seen once on a loaded machine: a pipeline stop hung 300 s awaiting a task that had
    turned its cancel into a TimeoutError (Python 3.11) and run on."""
    from agent.service import _bounded

    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue  # a component that swallows its cancellation

    task = asyncio.ensure_future(stubborn())
    t0 = time.monotonic()
    await _bounded(task, 0.2, "stubborn")
    assert time.monotonic() - t0 < 1.0
    assert "stubborn did not stop within 0.2 s" in caplog.text
    assert not task.done()  # it is still running: the stop went on without it
    release.set()
    await asyncio.wait({task}, timeout=2.0)
    assert task.done()


def test_readyz_components_carry_the_kernel_groups(tmp_path: Path) -> None:
    """Issue 13: /readyz shows each group's state, budget and what moved at its last alarm."""
    pipe = _pipeline(tmp_path)
    kernel = pipe.components()["kernel"]
    assert kernel["state"] == "ok" and kernel["error"] is None
    names = [g.name for g in pipe.cfg.kernel.groups]
    assert names and sorted(kernel["groups"]) == sorted(names)
    assert all(g["state"] == "learning" for g in kernel["groups"].values())
    assert not any(f.startswith("kernel") for f in pipe.failing())
