"""Discrete tags keep their exact values end to end: hw_sim over Modbus TCP, the Acquirer, the
kernel and the history store, wired as agent/service.py wires them.  A bool that toggles is
stored as 0 and 1 (never as the 0.99973 an EWMA makes of it), a status word and a counter
as the integers the PLC sent; the float tank temperature is still smoothed, and an explicit
`filter: ewma` on the uptime counter is honoured (issue 13)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.acquire import Acquirer
from agent.config import load_config
from agent.kernel import flags as F
from agent.kernel.runtime import KernelRuntime
from agent.metrics import Metrics
from agent.store.history import HistoryStore
from agent.store.settings import StoreConfig
from agent.tags import compile_config
from tests.fixtures.sim import start_sim

CONFIG = """
site: kinds-test
devices:
  - name: heater_plc
    driver: modbus
    transport: tcp
    host: 127.0.0.1
    port: {port}
    unit_id: 1
    timeout_s: 0.08
    retries: 0
    poll_groups:
      - name: fast
        interval_ms: 100
        tags:
          - {{name: tank_temp, table: input, address: 0, type: float32, min: 0, max: 120}}
          - {{name: status_word, table: input, address: 9, type: uint16}}
          - {{name: uptime_s, table: input, address: 10, type: uint32, unit: s}}
          - {{name: heater_running, table: discrete, address: 2}}
          - {{name: heater_enable, table: coil, address: 0, writable: true}}
          - {{name: heater_cycles, table: input, address: 14, type: uint32, word_order: little}}
kernel:
  defaults: {{alarm_on: [stuck, out_of_range, drift, score]}}
  tags:
    uptime_s: {{filter: ewma, ewma_alpha: 0.3}}   # an explicit setting wins
"""
EXACT = ("status_word", "heater_cycles", "heater_running", "heater_enable")


async def wait_for(pred, within_s: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return bool(pred())


async def test_discrete_tags_are_stored_with_their_exact_values(tmp_path: Path) -> None:
    sim = start_sim(seed=1)
    try:
        cfg_path = tmp_path / "kinds.yaml"
        cfg_path.write_text(CONFIG.format(port=sim.port))
        compiled = compile_config(load_config(cfg_path))
        table = compiled.table
        metrics = Metrics()
        kernel = KernelRuntime(compiled.config.kernel, table, metrics)
        store = HistoryStore(StoreConfig(path=str(tmp_path / "h.db")), table, metrics)
        store.start()
        events: list[dict[str, Any]] = []

        def on_frame(group: Any, ts_ns: int) -> None:
            events.extend(kernel.process(group))
            store.submit_frame(group, ts_ns)

        t0 = time.time()
        acq = Acquirer(compiled, metrics, on_frame)
        seen: set[float] = set()
        i_run = table.index["heater_running"]
        async with acq:
            assert await wait_for(lambda: (table.quality == 0).all(), 5.0)
            sim.plant.write("heater_power", 30.0)
            for enable in (0.0, 1.0, 0.0, 1.0):  # the heater stops and starts: bools toggle
                sim.plant.write("heater_enable", enable)
                assert await wait_for(lambda e=enable: table.raw[i_run] == e, 5.0)
                seen.add(float(table.raw[i_run]))
                await asyncio.sleep(0.5)
        assert store.flush()
        series = store.read_series([*EXACT, "tank_temp", "uptime_s"], t0 - 1, time.time())
        store.close()
    finally:
        sim.close()

    assert seen == {0.0, 1.0}
    for name in EXACT:
        _, raw, value, quality, flags, _ = series[name]
        good = quality == 0
        assert good.sum() > 20, name
        assert value[good].tobytes() == raw[good].tobytes(), name  # bit-identical
        assert not np.any(flags & F.ANOMALOUS), name  # no level alarms on states and counts
    assert set(np.unique(series["heater_running"][2])) == {0.0, 1.0}
    assert len(np.unique(series["status_word"][2])) >= 2
    assert len(np.unique(series["heater_cycles"][2])) >= 2
    assert not [e for e in events if e["source"] in EXACT]
    # the float is still smoothed, and so is a counter whose config asks for it
    for name in ("tank_temp", "uptime_s"):
        raw, value = series[name][1], series[name][2]
        assert not np.array_equal(raw, value), name
