"""Compliance: the running pipeline emits every metric name agent/names.py promises.

One in-process `Pipeline` (the object `edgeloop run` runs) against real parts: the hw_sim
heater PLC over Modbus TCP, a kernel group, a control loop, a SQLite history file, a
mosquitto broker and the HTTP server.  Like Vector's component compliance test, a component
that stops emitting one of its declared names fails here.
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import yaml

from agent import names
from agent.config import parse_config
from agent.metrics import Metrics
from agent.service import Pipeline
from agent.tags import compile_config
from agent.telemetry.sdnotify import Watchdog
from tests.fixtures.ports import free_port


def _config(sim_port: int, mqtt_port: int, http_port: int, tmp: Path) -> str:
    cfg = {
        "site": "compliance",
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
                        "tags": [
                            {
                                "name": "tank_temp",
                                "table": "input",
                                "address": 0,
                                "type": "float32",
                                "min": 0,
                                "max": 120,
                            },
                            {
                                "name": "inlet_flow",
                                "table": "input",
                                "address": 2,
                                "type": "float32",
                                "min": 0,
                                "max": 60,
                            },
                            {
                                "name": "inlet_temp",
                                "table": "input",
                                "address": 4,
                                "type": "float32",
                                "min": 0,
                                "max": 80,
                            },
                            {
                                "name": "heater_power",
                                "table": "holding",
                                "address": 10,
                                "type": "float32",
                                "writable": True,
                                "min": 0,
                                "max": 100,
                            },
                        ],
                    }
                ],
            }
        ],
        "kernel": {
            "groups": [
                {
                    "name": "heater",
                    "tags": ["tank_temp", "inlet_flow", "inlet_temp"],
                    "warmup_samples": 20,
                }
            ]
        },
        "control": {
            "loops": [
                {
                    "name": "tank",
                    "period_ms": 100,
                    "inputs": {"pv": "tank_temp"},
                    "output": "heater_power",
                    "setpoint": {"value": 40.0},
                    "mode": "manual",
                    "manual_output": 10.0,
                }
            ]
        },
        "store": {"path": str(tmp / "history.db"), "batch_ms": 50},
        "publish": {"mqtt": {"port": mqtt_port}, "outbox": {"path": str(tmp / "outbox.db")}},
        "http": {"port": http_port},
    }
    return yaml.safe_dump(cfg, sort_keys=False)


async def test_pipeline_emits_every_declared_name(modbus_sim, mqtt_broker, tmp_path: Path):
    http_port = free_port()
    text = _config(modbus_sim.port, mqtt_broker.port, http_port, tmp_path)
    compiled = compile_config(parse_config(text, "compliance.yaml"))
    metrics = Metrics()
    pipe = Pipeline(compiled, metrics, Watchdog(interval_s=None))
    await pipe.start()
    try:
        await asyncio.sleep(3.0)

        def get() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=3) as r:
                return r.read().decode()

        body = await asyncio.to_thread(get)
    finally:
        await pipe.stop()
    assert "edgeloop_polls_total" in body
    emitted = metrics.emitted()
    for component, declared in names.COMPONENTS.items():
        missing = set(declared) - emitted
        assert not missing, f"{component} did not emit {sorted(missing)}"
    assert pipe.frames > 10
    assert metrics.total("edgeloop_publish_messages_total") > 0
