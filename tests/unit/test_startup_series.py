"""`agent.names.startup_series`: the series a configuration has from start-up, at 0.

The system test (tests/system/test_metrics_exposition.py) checks a running service exposes
them; these check the list itself follows the configuration: disabled parts and devices add
nothing, each loop gets every fallback reason, label names are the declared ones.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from agent import names
from agent.config import parse_config
from agent.control.safety import REASONS
from agent.metrics import Metrics
from agent.tags import compile_config

ROOT = Path(__file__).resolve().parents[2]


def _series(**patch: Any) -> list[tuple[str, dict[str, str]]]:
    cfg = yaml.safe_load((ROOT / "config" / "edgeloop.yaml").read_text())
    cfg.update(patch)
    text = yaml.safe_dump(cfg, sort_keys=False)
    return names.startup_series(compile_config(parse_config(text, "edgeloop.yaml")))


def _keys(series: list[tuple[str, dict[str, str]]]) -> list[tuple[str, tuple[Any, ...]]]:
    return [(n, tuple(sorted(lb.items()))) for n, lb in series]


def test_shipped_config_series_are_unique_and_carry_the_declared_labels() -> None:
    series = _series()
    dupes = [k for k, c in Counter(_keys(series)).items() if c > 1]
    assert not dupes, dupes
    for name, labels in series:
        assert set(labels) == set(names.LABELS[name]), (name, labels)
    got = {n for n, _ in series}
    # the examples: data loss, per-device errors, alarms per group, fallbacks per loop
    assert {
        names.STORE_DROPPED_TOTAL,
        names.POLL_ERRORS_TOTAL,
        names.ANOMALY_ALARM,
        names.CONTROL_FALLBACKS_TOTAL,
        names.PUBLISH_SECONDS,
    } <= got
    fallbacks = {lb["reason"] for n, lb in series if n == names.CONTROL_FALLBACKS_TOTAL}
    assert fallbacks == set(REASONS)
    groups = {(lb["device"], lb["group"]) for n, lb in series if n == names.POLLS_TOTAL}
    assert ("pump_skid", "skid") in groups and ("heater_plc", "fast") in groups
    queues = {lb["queue"] for n, lb in series if n == names.QUEUE_DROPPED_TOTAL}
    assert queues == {"outbox", "opcua:pump_skid/skid"}


def test_disabled_parts_and_devices_add_no_series() -> None:
    cfg = yaml.safe_load((ROOT / "config" / "edgeloop.yaml").read_text())
    devices = cfg["devices"]
    devices[1]["enabled"] = False
    series = _series(
        devices=devices,
        publish={"enabled": False},
        store={"enabled": False},
        control={"loops": []},
    )
    got = {n for n, _ in series}
    assert not got & {
        names.PUBLISH_MESSAGES_TOTAL,
        names.PUBLISH_SECONDS,
        names.OUTBOX_DROPPED_TOTAL,
        names.STORE_DROPPED_TOTAL,
        names.STORE_ROWS_TOTAL,
        names.CONTROL_FALLBACKS_TOTAL,
        names.CONTROL_STEP_SECONDS,
    }
    assert all(lb.get("device") != "pump_skid" for _, lb in series)
    components = {lb["component"] for n, lb in series if n == names.COMPONENT_CRASHES_TOTAL}
    assert components == {"acquire", "kernel"}


def test_declaring_them_renders_zeros_and_empty_histograms() -> None:
    m = Metrics()
    m.declare_all(_series())
    text = m.render()
    assert "edgeloop_store_dropped_total 0\n" in text
    assert 'edgeloop_control_fallbacks_total{loop="tank_temperature",reason="anomaly"} 0\n' in text
    assert 'edgeloop_kernel_seconds_count{group="heater_plc/fast"} 0\n' in text
    assert m.emitted() == set()
