"""sd_notify as systemd sees it: a separate process, NOTIFY_SOCKET, WATCHDOG_USEC and
WATCHDOG_PID set the way the service manager sets them (the pid via `exec`, so it is the
main pid), and the test listening on the datagram socket like PID 1 would."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import asyncio, time
from agent.telemetry import sdnotify

async def main():
    wd = sdnotify.Watchdog()
    assert wd.interval_s == 0.05, wd.interval_s
    task = asyncio.create_task(wd.run())
    sdnotify.ready("1/1 devices up")
    t_end = time.monotonic() + 0.5
    while time.monotonic() < t_end:   # a healthy pipeline
        wd.progress()
        await asyncio.sleep(0.01)
    sdnotify.status("wedged")
    await asyncio.sleep(0.5)          # pipeline wedged: the loop runs, no progress
    time.sleep(0.3)                   # event loop blocked outright
    task.cancel()
    sdnotify.stopping()

asyncio.run(main())
"""


def _collect(sock: socket.socket, until_s: float) -> list[tuple[float, str]]:
    out = []
    end = time.monotonic() + until_s
    while time.monotonic() < end:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            out.append((time.monotonic(), sock.recv(4096).decode()))
        except TimeoutError:
            break
        if out[-1][1] == "STOPPING=1":
            break
    return out


def test_child_process_readiness_and_progress_gated_watchdog(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        env = {
            "NOTIFY_SOCKET": str(path),
            "WATCHDOG_USEC": "100000",  # WatchdogSec=0.1 -> feed every 50 ms
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            "PATH": "/usr/bin:/bin",
        }
        proc = subprocess.Popen(
            ["sh", "-c", 'WATCHDOG_PID=$$ exec "$0" -c "$1"', sys.executable, CHILD],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        msgs = _collect(sock, 20)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    kinds = [m for _, m in msgs]
    assert kinds[0] == "READY=1\nSTATUS=1/1 devices up"
    assert kinds[-1] == "STOPPING=1"
    wedge = kinds.index("STATUS=wedged")
    healthy_feeds = kinds[1:wedge]
    assert set(healthy_feeds) == {"WATCHDOG=1"}
    assert len(healthy_feeds) >= 5  # ~0.5 s / 50 ms
    # after the wedge at most one feed (for work done just before it), then silence
    assert kinds[wedge + 1 : -1].count("WATCHDOG=1") <= 1
    assert "no progress" in err


def test_watchdog_pid_of_another_process_disarms_it(tmp_path: Path) -> None:
    code = "from agent.telemetry import sdnotify; print(sdnotify.watchdog_interval_s())"
    env = {
        "WATCHDOG_USEC": "10000000",
        "WATCHDOG_PID": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    assert res.stdout.strip() == "None", res.stderr
