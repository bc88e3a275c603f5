"""Every pipeline stage is an `agent.lifecycle.Component` (`async start()`, `async stop()`),
directly or through its adapter, and `async with` starts and stops the real part."""

from __future__ import annotations

import asyncio
import inspect
import threading
from pathlib import Path

import pytest

from agent.acquire import Acquirer
from agent.lifecycle import Component, Supervised, Threaded
from agent.metrics import Metrics
from agent.publish import Publisher
from agent.store.history import HistoryStore
from agent.store.settings import StoreConfig
from agent.tags import TagTable
from agent.telemetry.http import TelemetryServer
from agent.telemetry.settings import HttpConfig
from drivers.base import Point
from tests.unit.test_control_runner import Rig


@pytest.mark.parametrize("cls", [Acquirer, Publisher, TelemetryServer, Threaded, Supervised])
def test_every_stage_has_async_start_and_stop(cls: type) -> None:
    for name in ("start", "stop", "__aenter__", "__aexit__"):
        assert inspect.iscoroutinefunction(getattr(cls, name)), f"{cls.__name__}.{name}"


async def _get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    try:
        return await reader.read()
    finally:
        writer.close()


async def test_http_server_serves_inside_async_with_and_frees_its_port_after() -> None:
    srv = TelemetryServer(HttpConfig(port=0), Metrics(), dict, lambda: True)
    assert isinstance(srv, Component)
    async with srv:
        port = srv.port
        assert (await _get(port, "/healthz")).startswith(b"HTTP/1.1 200")
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_history_store_runs_its_writer_thread_between_start_and_stop(
    tmp_path: Path,
) -> None:
    table = TagTable.from_points([Point("t", 0, "float32")], ["plc"])
    store = HistoryStore(StoreConfig(path=str(tmp_path / "h.db")), table, Metrics())
    comp = Threaded(store, close_timeout_s=2.0)
    assert isinstance(comp, Component)
    async with comp:
        assert any(t.name == "edgeloop-store" for t in threading.enumerate())
    assert not any(t.name == "edgeloop-store" for t in threading.enumerate())
    assert (tmp_path / "h.db").exists()


async def test_control_runner_runs_periods_until_stopped() -> None:
    rig = Rig()
    comp = Supervised(rig.runner.run, rig.runner.stop, "control")
    assert isinstance(comp, Component)
    async with comp:
        task = comp.task
        for _ in range(150):
            if rig.writes:
                break
            await asyncio.sleep(0.02)
    assert task is not None and task.done() and not task.cancelled()
    assert rig.writes  # the loop wrote while it ran
    n = len(rig.writes)
    await asyncio.sleep(0.6)  # more than one 500 ms period
    assert len(rig.writes) == n  # and nothing after stop()


async def test_supervised_stop_raises_what_run_raised() -> None:
    async def run() -> None:
        raise RuntimeError("broken loop")

    async def stop() -> None:
        return None

    comp = Supervised(run, stop, "broken")
    await comp.start()
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="broken loop"):
        await comp.stop()
