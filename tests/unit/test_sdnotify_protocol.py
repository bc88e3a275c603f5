"""sd_notify over real AF_UNIX datagram sockets (path and abstract), and the watchdog gate."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.telemetry import sdnotify


def _recv_all(sock: socket.socket, timeout: float = 0.05) -> list[str]:
    sock.settimeout(timeout)
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            return out


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield s
    s.close()


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    name = f"edgeloop-test-{os.getpid()}-{time.monotonic_ns()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(b"\0" + name.encode())
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield s
    s.close()


def test_notify_unset_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready("x") is False


def test_notify_path_socket_sends_one_datagram(path_socket: socket.socket) -> None:
    assert sdnotify.ready("2/3 devices up") is True
    assert _recv_all(path_socket) == ["READY=1\nSTATUS=2/3 devices up"]


def test_notify_abstract_socket(abstract_socket: socket.socket) -> None:
    assert sdnotify.notify("STATUS=hello") is True
    assert sdnotify.stopping() is True
    assert _recv_all(abstract_socket) == ["STATUS=hello", "STOPPING=1"]


def test_status_keeps_one_line(path_socket: socket.socket) -> None:
    sdnotify.status("first line\nsecond line")
    assert _recv_all(path_socket) == ["STATUS=first line"]


def test_reloading_carries_monotonic_usec(path_socket: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading() is True
    (msg,) = _recv_all(path_socket)
    lines = dict(line.split("=", 1) for line in msg.split("\n"))
    assert lines["RELOADING"] == "1"
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= int(lines["MONOTONIC_USEC"]) <= after


def test_extend_timeout(path_socket: socket.socket) -> None:
    sdnotify.extend_timeout(90)
    assert _recv_all(path_socket) == ["EXTEND_TIMEOUT_USEC=90000000"]


def test_notify_to_missing_socket_returns_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.notify("READY=1") is False


def test_notify_ignores_non_unix_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.notify("READY=1") is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("10000000", None, 5.0),
        ("10000000", "self", 5.0),
        ("10000000", "1", None),  # armed for another process
        ("0", None, None),
        ("garbage", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for key, val in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if val is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, str(os.getpid()) if val == "self" else val)
    assert sdnotify.watchdog_interval_s() == expected


def test_watchdog_feeds_only_after_progress(path_socket: socket.socket) -> None:
    wd = sdnotify.Watchdog(interval_s=1.0)
    assert wd.tick() is False  # nothing done yet
    wd.progress()
    assert wd.tick() is True
    assert wd.tick() is False  # no progress since the last feed
    wd.progress()
    wd.progress()
    assert wd.tick() is True
    assert _recv_all(path_socket) == ["WATCHDOG=1", "WATCHDOG=1"]
    assert (wd.feeds, wd.missed) == (2, 2)


def test_watchdog_stall_window() -> None:
    now = [100.0]
    sent: list[tuple[str, ...]] = []
    wd = sdnotify.Watchdog(
        interval_s=5.0, stall_s=30.0, notify_fn=lambda *a: sent.append(a) or True,
        clock=lambda: now[0],
    )  # fmt: skip
    wd.progress()
    now[0] += 20
    assert wd.tick() is True
    now[0] += 5
    assert wd.tick() is True  # no new progress, but the last one is within 30 s
    now[0] += 10
    assert wd.tick() is False  # 35 s since the last progress
    wd.progress()
    assert wd.tick() is True
    assert sent == [("WATCHDOG=1",)] * 3


def test_watchdog_logs_a_stall_once(caplog: pytest.LogCaptureFixture) -> None:
    wd = sdnotify.Watchdog(interval_s=1.0, notify_fn=lambda *a: True)
    wd.progress()
    wd.tick()
    with caplog.at_level("INFO", logger="agent.telemetry.sdnotify"):
        for _ in range(5):
            wd.tick()
        wd.progress()
        wd.tick()
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("no progress" in m for m in msgs) == 1
    assert sum("progressing again" in m for m in msgs) == 1


def test_watchdog_disabled_without_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    wd = sdnotify.Watchdog()
    assert not wd.enabled
    asyncio.run(asyncio.wait_for(wd.run(), 1.0))  # returns at once


async def test_watchdog_run_stops_feeding_when_pipeline_wedges(
    abstract_socket: socket.socket,
) -> None:
    wd = sdnotify.Watchdog(interval_s=0.02)
    wedged = asyncio.Event()

    async def pipeline() -> None:
        while not wedged.is_set():
            wd.progress()
            await asyncio.sleep(0.005)

    received: list[str] = []

    async def collect() -> None:  # read as we go: a unix dgram queue holds only ~10 messages
        abstract_socket.setblocking(False)
        loop = asyncio.get_running_loop()
        while True:
            received.append((await loop.sock_recv(abstract_socket, 4096)).decode())

    collector = asyncio.create_task(collect())
    tasks = [asyncio.create_task(pipeline()), asyncio.create_task(wd.run())]
    await asyncio.sleep(0.2)
    fed_while_running = wd.feeds
    wedged.set()
    await asyncio.sleep(0.03)  # let one last feed for work already done go out
    fed_at_wedge = wd.feeds
    await asyncio.sleep(0.2)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert fed_while_running >= 3
    assert wd.feeds <= fed_at_wedge + 1
    assert wd.missed >= 5
    await asyncio.sleep(0.02)
    collector.cancel()
    await asyncio.gather(collector, return_exceptions=True)
    assert received == ["WATCHDOG=1"] * wd.feeds


def test_watchdog_counts_missed_feeds_in_metrics() -> None:
    from agent.metrics import Metrics

    m = Metrics()
    wd = sdnotify.Watchdog(interval_s=1.0, notify_fn=lambda *a: True, metrics=m)
    wd.tick()
    wd.tick()
    wd.progress()
    wd.tick()
    assert m.get("edgeloop_watchdog_missed_total") == 2
