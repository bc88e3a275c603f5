"""A foreign service on the Modbus port (here an SSH-like banner served by socat) must not
flood the log with pymodbus hex dumps: one line per kind of message per minute, the bytes
shown as the text the peer sent (issue 14)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.telemetry.logsetup import LibraryEpisodes
from tests.fixtures.ports import free_port

BANNER = "SSH-2.0-OpenSSH_9.2p1 Debian-2"


@pytest.fixture
def banner_port():  # type: ignore[no-untyped-def]
    if shutil.which("socat") is None:
        pytest.skip("socat not installed")
    port = free_port()
    proc = subprocess.Popen(
        ["socat", f"TCP-LISTEN:{port},fork,reuseaddr,bind=127.0.0.1",
         f"SYSTEM:'echo {BANNER}; cat >/dev/null'"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    from lab.demo import wait_port

    assert wait_port(port, 5, proc)
    yield port
    proc.terminate()
    proc.wait(5)


def test_foreign_service_on_the_port_is_one_readable_line(tmp_path: Path, banner_port: int) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "devices:\n  - name: mb\n    driver: modbus\n    host: 127.0.0.1\n"
        f"    port: {banner_port}\n    retries: 3\n    poll_groups:\n"
        "      - {name: g, interval_ms: 1000, tags: [{name: b, table: holding, address: 0, "
        "type: uint16}]}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "read", str(cfg)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    err = proc.stderr
    assert "0x53 0x53 0x48" not in err  # no raw hex dump
    assert BANNER in err  # what the peer said, readable
    assert err.count("Invalid Modbus protocol id") == 1, err  # 4 attempts, one line


def test_repeats_are_counted_and_reported_after_the_quiet_time() -> None:
    f = LibraryEpisodes(quiet_s=60.0)
    dump = "0x1 0x2 0x3 0x4 0x5 0x6 0x7 0x8"
    rec = lambda n: logging.LogRecord(  # noqa: E731
        "pymodbus.logging", logging.ERROR, __file__, 1, f"bad frame %d: {dump}", (n,), None
    )
    first = rec(1)
    assert f.filter(first) and "8 bytes" in first.getMessage()
    assert not any(f.filter(rec(n)) for n in range(2, 40))  # same kind: dropped
    f._seen = {k: (v[0] - 61.0, v[1]) for k, v in f._seen.items()}  # a minute later
    later = rec(40)
    assert f.filter(later) and "[38 similar messages" in later.getMessage()
    own = logging.LogRecord("edgeloop.acquire", logging.WARNING, __file__, 1, "x", None, None)
    assert all(f.filter(own) for _ in range(5))  # our own records are never filtered here
