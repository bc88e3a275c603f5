"""The kernel's alarm metrics over the real HTTP /metrics endpoint of a running `Pipeline`
(hw_sim heater over Modbus TCP, the kernel with a group, SQLite history, the HTTP server):
every configured tag and group is there at 0 from start-up, and a stuck sensor injected in
the simulator shows as `edgeloop_tag_alarm{kind="tag"} 1` and one `stuck` onset."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

import yaml

from agent.config import parse_config
from agent.metrics import Metrics
from agent.service import Pipeline
from agent.tags import compile_config
from agent.telemetry.sdnotify import Watchdog
from tests.fixtures.ports import free_port

TAGS = ["tank_temp", "inlet_flow", "inlet_temp"]


def _config(sim_port: int, http_port: int, tmp: Path) -> str:
    tag = {"table": "input", "type": "float32", "min": 0, "max": 120}
    cfg = {
        "site": "alarm-metrics",
        "devices": [
            {
                "name": "heater_plc",
                "driver": "modbus",
                "host": "127.0.0.1",
                "port": sim_port,
                "timeout_s": 0.09,
                "poll_groups": [
                    {
                        "name": "fast",
                        "interval_ms": 100,
                        "tags": [{"name": n, "address": 2 * k, **tag} for k, n in enumerate(TAGS)],
                    }
                ],
            }
        ],
        "kernel": {
            "tags": {"inlet_temp": {"stuck_samples": 10}},
            "groups": [{"name": "heater", "tags": TAGS, "warmup_samples": 20}],
        },
        "store": {"path": str(tmp / "history.db"), "batch_ms": 50},
        "http": {"port": http_port},
    }
    return yaml.safe_dump(cfg, sort_keys=False)


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
        body = r.read().decode()
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


async def _wait_scrape(port: int, series: str, value: float, within_s: float) -> dict:
    end = time.monotonic() + within_s
    while True:
        got = await asyncio.to_thread(_scrape, port)
        if got.get(series) == value or time.monotonic() > end:
            return got
        await asyncio.sleep(0.2)


TAG_ALARM = 'edgeloop_tag_alarm{{kind="{kind}",tag="{tag}"}}'
ONSETS = 'edgeloop_alarms_total{{cause="{cause}",level="{level}",source="{source}"}}'


async def test_alarm_series_from_start_up_and_a_stuck_sensor(modbus_sim, tmp_path: Path) -> None:
    http_port = free_port()
    compiled = compile_config(parse_config(_config(modbus_sim.port, http_port, tmp_path), "a.yaml"))
    pipe = Pipeline(compiled, Metrics(), Watchdog(interval_s=None))
    await pipe.start()
    try:
        first = await asyncio.to_thread(_scrape, http_port)
        # the sensor moved normally for a while before it sticks (the stuck check needs it)
        await asyncio.sleep(5.0)
        modbus_sim.plant.inject(
            {"kind": "stuck", "signal": "inlet_temp", "at_s": modbus_sim.plant.t_s}
        )
        stuck = TAG_ALARM.format(kind="tag", tag="inlet_temp")
        last = await _wait_scrape(http_port, stuck, 1.0, 20.0)
    finally:
        await pipe.stop()
    for tag in TAGS:
        for kind in ("tag", "group"):
            assert first[TAG_ALARM.format(kind=kind, tag=tag)] == 0.0
        for cause in ("stuck", "out_of_range"):
            assert first[ONSETS.format(cause=cause, level="tag", source=tag)] == 0.0
    for cause in ("spe", "t2"):
        assert first[ONSETS.format(cause=cause, level="group", source="heater")] == 0.0
    assert last[stuck] == 1.0
    assert last[ONSETS.format(cause="stuck", level="tag", source="inlet_temp")] == 1.0
    assert last[TAG_ALARM.format(kind="tag", tag="tank_temp")] == 0.0
