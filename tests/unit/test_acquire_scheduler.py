"""Pure scheduling properties of the Acquirer, driven by a small in-test fake driver.

The fake stands in for a device only where timing must be controlled exactly (a read that
takes longer than its period, a read that hangs, a link that drops on cue); the real
drivers against hw_sim are exercised in tests/integration/test_acquire_sim.py.
"""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np
import pytest

from agent.acquire import Acquirer, backoff_delay
from agent.config import parse_config
from agent.metrics import Metrics
from agent.tags import Compiled, compile_config
from drivers.base import ConnectError, Quality, ReadError, ReadResult, WriteRefused

CONFIG = """
site: t
devices:
  - name: a
    driver: modbus
    host: 127.0.0.1
    timeout_s: 0.01
    backoff_initial_s: 0.02
    backoff_max_s: 0.05
    poll_groups:
      - name: g1
        interval_ms: {interval}
        tags:
          - {{name: x, table: holding, address: 0, type: float32, writable: true, min: 0, max: 100}}
          - {{name: y, table: input, address: 0, type: int16}}
          - {{name: s, table: holding, address: 10, type: string, length_registers: 2,
             writable: true}}
          - {{name: c, table: coil, address: 0, writable: true}}
  - name: b
    driver: modbus
    host: 127.0.0.1
    timeout_s: 0.01
    poll_groups:
      - name: g2
        interval_ms: {interval}
        tags:
          - {{name: z, table: input, address: 0, type: float32}}
"""


class FakeDriver:
    """Records read start times; each read takes `delay` s and returns `value` per point."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.delay = 0.0
        self.value = 1.0
        self.fail: BaseException | None = None
        self.fail_connect: BaseException | None = None
        self.starts: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.connects = 0
        self.closes = 0
        self.writes: list[tuple[str, object]] = []

    def plan(self, group):  # pragma: no cover - plans come from the real compile
        return group

    def describe(self, plan):
        return [object()]

    async def connect(self) -> None:
        self.connects += 1
        if self.fail_connect is not None:
            raise self.fail_connect

    async def close(self) -> None:
        self.closes += 1

    async def read(self, plan) -> ReadResult:
        self.starts.append(time.monotonic())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.fail is not None:
                raise self.fail
            return ReadResult(
                values=np.full(self.size, self.value),
                quality=np.zeros(self.size, dtype=np.uint8),
                texts={},
            )
        finally:
            self.in_flight -= 1

    async def write(self, points) -> None:
        for p, v in points:
            self.writes.append((p.name, v))


def make(interval: int = 50) -> tuple[Compiled, dict[str, FakeDriver]]:
    cfg = parse_config(CONFIG.format(interval=interval), "t.yaml")
    real = compile_config(cfg)
    fakes = {
        "a": FakeDriver("a", real.groups[0].size),
        "b": FakeDriver("b", real.groups[1].size),
    }
    compiled = Compiled(real.config, real.table, real.groups, real.devices, real.plans, fakes)
    return compiled, fakes


def test_backoff_is_capped_exponential_with_jitter() -> None:
    rng = random.Random(1)
    for attempt in range(12):
        base = min(8.0, 0.5 * 2**attempt)
        d = [backoff_delay(attempt, 0.5, 8.0, rng) for _ in range(200)]
        assert min(d) >= base / 2 and max(d) <= base
        assert max(d) - min(d) > base / 4  # jittered, not constant
    assert backoff_delay(10_000, 0.5, 8.0, rng) <= 8.0  # no overflow on long outages


async def test_polls_are_drift_free() -> None:
    compiled, fakes = make(interval=40)
    fakes["a"].delay = 0.015  # each poll takes a good part of its period
    acq = Acquirer(compiled, Metrics())
    await acq.start()
    await asyncio.sleep(0.85)
    await acq.stop()
    starts = fakes["a"].starts
    assert len(starts) >= 15
    t0 = starts[0]
    # planned from the previous planned time: the k-th poll starts near t0 + k*period and
    # the error does not accumulate (a scheduler sleeping `period` after each poll would
    # be 15 ms * k late)
    errors = [s - (t0 + k * 0.040) for k, s in enumerate(starts)]
    assert abs(errors[-1]) < 0.03, errors  # drifting would put it >= 0.2 s late
    assert sorted(abs(e) for e in errors)[len(errors) // 2] < 0.01, errors


async def test_overrun_is_skipped_and_counted_never_concurrent() -> None:
    compiled, fakes = make(interval=20)
    fakes["a"].delay = 0.05  # 2.5 periods per poll
    m = Metrics()
    acq = Acquirer(compiled, m)
    await acq.start()
    await asyncio.sleep(0.5)
    await acq.stop()
    assert fakes["a"].max_in_flight == 1
    polls = m.get("edgeloop_polls_total", device="a", group="g1")
    overruns = m.get("edgeloop_poll_overruns_total", device="a", group="g1")
    assert polls >= 5
    # every poll eats 2.5 periods: 2 or 3 ticks skipped per poll
    assert 2 * (polls - 1) <= overruns <= 3 * (polls + 1)
    # the other device kept its own pace
    assert m.get("edgeloop_poll_overruns_total", device="b", group="g2") == 0
    assert m.get("edgeloop_polls_total", device="b", group="g2") >= 20


async def test_values_quality_and_frames() -> None:
    compiled, fakes = make()
    fakes["a"].value = 42.0
    frames: list[tuple[str, int]] = []
    acq = Acquirer(compiled, Metrics(), lambda g, ts: frames.append((g.name, ts)))
    t = compiled.table
    assert (t.quality == Quality.COMM_LOST).all()  # nothing read yet
    before = time.time_ns()
    await acq.start()
    await asyncio.sleep(0.12)
    await acq.stop()
    i = t.index["x"]
    assert t.raw[i] == 42.0 and t.quality[i] == Quality.GOOD and t.ts_ns[i] >= before
    assert {"g1", "g2"} <= {name for name, _ in frames}
    assert acq.health()["a"]["state"] == "stopped"


async def test_read_error_marks_bad_and_keeps_the_link() -> None:
    compiled, fakes = make()
    m = Metrics()
    acq = Acquirer(compiled, m)
    await acq.start()
    await asyncio.sleep(0.08)
    fakes["a"].fail = ReadError("exception 0x02", device="a")
    await asyncio.sleep(0.12)
    g = compiled.groups[0]
    assert (compiled.table.quality[g.start : g.stop] == Quality.BAD).all()
    assert acq.health()["a"]["state"] == "up"
    assert fakes["a"].connects == 1
    assert m.get("edgeloop_poll_errors_total", device="a", group="g1") >= 2
    fakes["a"].fail = None
    await asyncio.sleep(0.1)
    assert (compiled.table.quality[g.start : g.stop] == Quality.GOOD).all()
    await acq.stop()


async def test_lost_link_goes_comm_lost_backs_off_and_recovers() -> None:
    compiled, fakes = make()
    m = Metrics()
    acq = Acquirer(compiled, m, rng=random.Random(0))
    await acq.start()
    await asyncio.sleep(0.08)
    assert acq.health()["a"]["state"] == "up"
    assert m.get("edgeloop_device_up", device="a") == 1
    fakes["a"].fail = ConnectError("connection lost", device="a")
    fakes["a"].fail_connect = ConnectError("refused", device="a")
    await asyncio.sleep(0.3)
    h = acq.health()["a"]
    assert h["state"] == "down" and "refused" in h["last_error"]
    assert m.get("edgeloop_device_up", device="a") == 0
    g = compiled.groups[0]
    assert (compiled.table.quality[g.start : g.stop] == Quality.COMM_LOST).all()
    # backoff 0.02..0.05 s: a handful of attempts in 0.3 s, not hundreds
    assert 2 <= m.get("edgeloop_reconnects_total", device="a") <= 20
    # device b never noticed
    assert acq.health()["b"]["state"] == "up"
    fakes["a"].fail = fakes["a"].fail_connect = None
    await asyncio.sleep(0.2)
    assert acq.health()["a"]["state"] == "up"
    assert (compiled.table.quality[g.start : g.stop] == Quality.GOOD).all()
    await acq.stop()


async def test_hung_read_turns_stale_then_comm_lost() -> None:
    compiled, fakes = make(interval=20)  # stale after 60 ms; guard = 0.01*2*1 + 1 s
    fakes["a"].value = 5.0
    acq = Acquirer(compiled, Metrics())
    await acq.start()
    await asyncio.sleep(0.06)
    fakes["a"].delay = 30.0  # the device stops answering but keeps the socket open
    await asyncio.sleep(0.3)
    g = compiled.groups[0]
    assert (compiled.table.quality[g.start : g.stop] == Quality.STALE).all()
    await asyncio.sleep(1.0)
    assert acq.health()["a"]["state"] in ("down", "connecting", "up")
    assert acq.health()["a"]["reconnects"] >= 1  # the guard gave up and reconnected
    await acq.stop()


async def test_on_frame_errors_do_not_stop_acquisition() -> None:
    compiled, _ = make()
    calls = 0

    def boom(group, ts):
        nonlocal calls
        calls += 1
        raise RuntimeError("consumer bug")

    m = Metrics()
    acq = Acquirer(compiled, m, boom)
    await acq.start()
    await asyncio.sleep(0.2)
    await acq.stop()
    assert calls >= 4
    assert m.get("edgeloop_polls_total", device="a", group="g1") >= 3
    # reported, not only survived: counted and named for /readyz
    assert m.get("edgeloop_component_crashes_total", component="kernel") == calls
    assert acq.frame_error is not None and "consumer bug" in acq.frame_error


async def test_writes_are_checked_before_sending() -> None:
    compiled, fakes = make()
    acq = Acquirer(compiled, Metrics())
    await acq.start()
    await asyncio.sleep(0.05)
    await acq.write("x", 50)
    await acq.write("s", "ab")
    await acq.write("c", True)
    refused = [
        ("y", 1),  # not writable (input register)
        ("x", 100.5),  # above max
        ("x", -1),  # below min
        ("x", float("nan")),
        ("x", "10"),  # text into a number
        ("s", 5),  # number into a string
        ("c", 2),  # not a bool
        ("nope", 1),  # unknown tag
    ]
    for tag, value in refused:
        with pytest.raises(WriteRefused):
            await acq.write(tag, value)
    assert fakes["a"].writes == [("x", 50), ("s", "ab"), ("c", True)]
    await acq.stop()


async def test_write_to_a_down_device_is_an_error_not_a_send() -> None:
    compiled, fakes = make()
    fakes["a"].fail_connect = ConnectError("refused", device="a")
    acq = Acquirer(compiled, Metrics())
    await acq.start()
    await asyncio.sleep(0.05)
    with pytest.raises(ConnectError):
        await acq.write("x", 1)
    assert fakes["a"].writes == []
    await acq.stop()
