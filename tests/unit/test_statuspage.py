"""The status page's data source and assets without a browser (agent/telemetry/statuspage.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from agent.metrics import Metrics
from agent.names import POLLS_TOTAL
from agent.telemetry.statuspage import PageAssets, StatusSource
from drivers.base import Quality


def _pipeline(health: dict[str, Any]) -> Any:
    n = 3
    table = SimpleNamespace(
        names=["a", "b", "s"],
        index={"a": 0, "b": 1, "s": 2},
        raw=np.array([1.23456789, np.nan, np.nan]),
        quality=np.array([Quality.GOOD, Quality.COMM_LOST, Quality.GOOD], dtype=np.uint8),
        flags=np.array([0, 1, 0], dtype=np.uint16),
        score=np.array([0.5, np.inf, 0.0]),
        ts_ns=np.array([1, 0, 1], dtype=np.int64),
        texts={2: "model X"},
        units=["degC", "", ""],
        devices=["plc", "plc2", "plc"],
    )
    groups = [SimpleNamespace(device="plc", name="fast", start=0, stop=1),
              SimpleNamespace(device="plc2", name="slow", start=1, stop=2),
              SimpleNamespace(device="plc", name="info", start=2, stop=n)]  # fmt: skip
    kernel = SimpleNamespace(groups=[])
    return SimpleNamespace(
        table=table,
        compiled=SimpleNamespace(groups=groups, devices={"plc": None, "plc2": None}),
        cfg=SimpleNamespace(kernel=SimpleNamespace(groups=[])),
        acquirer=SimpleNamespace(health=lambda: health),
        control=None,
        kernel=kernel,
        store=None,
        metrics=Metrics(),
        active_alarms=set(),
    )


def test_live_snapshot_is_json_with_reasons_and_shared_between_pages() -> None:
    health = {
        "plc": {"state": "up", "since": 1.0, "last_error": None, "reconnects": 0},
        "plc2": {"state": "down", "since": 2.0, "last_error": "refused", "reconnects": 3},
    }
    src = StatusSource("site", token_configured=False)
    src.bind(_pipeline(health))
    body = src.live()
    d = json.loads(body)  # strict JSON: NaN and inf became null
    assert d["v"] == [1.2346, None, None] and d["s"] == [0.5, None, 0.0]
    assert d["q"] == [0, int(Quality.COMM_LOST), 0] and d["f"] == [0, 1, 0]
    assert d["age"][1] == -1 and d["texts"] == {"2": "model X"}
    assert d["reasons"]["1"].endswith("refused") and "0" not in d["reasons"]
    assert d["devices"]["plc2"]["state"] == "down"
    assert src.live() is body  # a second page within the cache window gets the same bytes
    meta = json.loads(src.meta())
    assert meta["tags"]["group"] == ["fast", "slow", "info"] and meta["token"] is False


def test_events_from_the_pipeline_and_device_changes() -> None:
    health = {"plc": {"state": "up", "since": 1.0, "last_error": None}}
    p = _pipeline(health)
    src = StatusSource("site", token_configured=True)
    src.bind(p)
    src.tick()
    health["plc"] = {"state": "down", "since": 5.0, "last_error": "timed out"}
    src.tick()
    src.tick()  # no change, no event
    src.note_event(
        "anomaly_on",
        {"source": "pump", "score": 3.2, "cause": "t2", "ts_ns": 7_000_000,
         "contributions": {"vib_x": 0.5, "vib_y": 0.3}},
    )  # fmt: skip
    kinds = [(e["kind"], e["t"]) for e in src.events]
    assert kinds == [("device_up", 1000), ("device_down", 5000), ("anomaly_on", 7)]
    assert src.events[1]["text"] == "plc down: timed out"
    assert "top: vib_x, vib_y" in src.events[2]["text"]


def test_page_is_small_and_its_policy_names_exactly_the_inlined_script_and_style() -> None:
    page = PageAssets()
    html = page.body.decode()
    assert len(page.body) < 300_000
    assert "http://" not in html and "https://" not in html
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        inline = re.search(f"<{tag}>(.*?)</{tag}>", html, re.S)
        assert inline is not None
        digest = base64.b64encode(hashlib.sha256(inline.group(1).encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in page.csp
    assert "default-src 'none'" in page.csp and "unsafe-inline" not in page.csp


def test_request_rate_is_polls_times_the_planned_reads() -> None:
    health = {"plc": {"state": "up"}, "plc2": {"state": "up"}}
    p = _pipeline(health)
    p.compiled.plans = {("plc", "fast"): SimpleNamespace(requests=("r1", "r2"))}
    src = StatusSource("site", token_configured=False)
    src.bind(p)
    src.live()
    time.sleep(0.3)
    for _ in range(3):
        p.metrics.inc(POLLS_TOTAL, device="plc", group="fast")
    src.bind(p)  # a fresh snapshot, not the cached one
    dev = json.loads(src.live())["devices"]["plc"]
    assert 3 / 0.6 < dev["polls_per_s"] <= 3 / 0.3
    assert dev["requests_per_s"] == pytest.approx(2 * dev["polls_per_s"], abs=0.02)


def test_a_tags_own_reason_code_is_shown_when_the_table_has_one() -> None:
    from drivers.base import Reason, modbus_reason

    health = {"plc": {"state": "up"}, "plc2": {"state": "down", "last_error": "refused"}}
    p = _pipeline(health)
    p.table.quality[0] = Quality.BAD
    p.table.reason = np.array([modbus_reason(2), Reason.COMM_LOST, 0], dtype=np.uint16)
    src = StatusSource("site", token_configured=False)
    src.bind(p)
    reasons = json.loads(src.live())["reasons"]
    assert reasons == {"0": "modbus_exception_2_illegal_data_address", "1": "refused"}


def _compiled(tmp_path: Any) -> Any:
    import yaml

    from agent.config import load_config
    from agent.tags import compile_config

    root = Path(__file__).resolve().parents[2]
    cfg = yaml.safe_load((root / "config" / "edgeloop.yaml").read_text())
    cfg["store"]["enabled"] = False
    cfg.pop("publish")
    cfg["http"]["port"] = 0
    path = tmp_path / "edgeloop.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, lambda: compile_config(load_config(path))


async def test_the_page_follows_a_reload_and_returns_to_the_old_pipeline_if_it_fails(
    tmp_path: Any, monkeypatch: Any
) -> None:
    import agent.service as service
    from agent.telemetry.sdnotify import Watchdog

    path, compile_ = _compiled(tmp_path)
    svc = service.Service(path)
    old = service.Pipeline(compile_(), svc.metrics, Watchdog(interval_s=None))
    svc.pipeline = old
    assert old.status.pipeline is old and old.telemetry.status is old.status

    async def guarded(_path: Any) -> Any:
        return compile_()

    async def broken(self: Any) -> None:
        raise RuntimeError("no connection")

    monkeypatch.setattr(service, "load_and_compile_guarded", guarded)
    monkeypatch.setattr(service.Pipeline, "start_acquisition", broken)
    await svc._do_reload()
    assert svc.pipeline is old  # refused: the old pipeline runs on
    assert old.status.pipeline is old and old.telemetry.health_fn == old.health
