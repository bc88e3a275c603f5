"""systemd/edgeloop.service: hardening score, `systemd-analyze verify`, and why MDWE is off.

Uses this machine's `systemd-analyze` (systemd 252 here: it has `security --offline=yes`
and `--threshold=`; `verify --root=` needs a whole OS tree with sysinit.target, so verify
runs on a test-time copy of the unit whose ExecStart points at this checkout's real
`edgeloop` console script instead of /opt/edgeloop/current/bin/edgeloop; every other line is
the shipped unit, byte for byte).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "edgeloop.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")
MAX_EXPOSURE = 2.0


def _settings() -> dict[str, list[str]]:
    """Key -> values of the unit (all sections; repeated keys accumulate)."""
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, "--no-pager", *args], capture_output=True, text=True, timeout=120
    )


@needs_analyze
def test_security_exposure_at_most_2() -> None:
    res = _analyze("security", "--offline=yes", str(UNIT))
    assert res.returncode == 0, res.stderr
    m = re.search(r"Overall exposure level for edgeloop\.service: (\d+(?:\.\d+)?)", res.stdout)
    assert m, res.stdout[-2000:]
    exposure = float(m.group(1))
    assert exposure <= MAX_EXPOSURE, res.stdout
    # A typo in a hardening key is ignored with a warning and silently weakens the unit.
    assert "Unknown key" not in res.stderr and "ignoring" not in res.stderr, res.stderr


@needs_analyze
def test_security_threshold_exit_status() -> None:
    # --threshold is in tenths: the command itself fails above 2.0
    res = _analyze("security", "--offline=yes", f"--threshold={int(MAX_EXPOSURE * 10)}", str(UNIT))
    assert res.returncode == 0, res.stdout[-1500:]


@needs_analyze
def test_verify_is_clean(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("edgeloop")
    if not exe.exists():
        exe = tmp_path / "edgeloop"
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    text = UNIT.read_text()
    shipped = "ExecStart=/opt/edgeloop/current/bin/edgeloop "
    assert text.count(shipped) == 1
    copy = tmp_path / "edgeloop.service"
    copy.write_text(text.replace(shipped, f"ExecStart={exe} "))
    res = _analyze("verify", str(copy))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "" and res.stderr.strip() == "", res.stdout + res.stderr


@needs_analyze
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The verify test above can fail: a missing ExecStart binary is reported."""
    copy = tmp_path / "edgeloop.service"
    copy.write_text(UNIT.read_text())  # ExecStart in /opt/edgeloop, not installed here
    res = _analyze("verify", str(copy))
    assert res.returncode != 0
    assert "/opt/edgeloop/current/bin/edgeloop" in res.stderr


def test_service_contract() -> None:
    """The lines the agent's code and docs rely on."""
    s = _settings()
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == ["/opt/edgeloop/current/bin/edgeloop run /etc/edgeloop/edgeloop.yaml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["RestartPreventExitStatus"] == ["78"]  # agent.cli.EX_CONFIG
    assert s["Restart"] == ["on-failure"]
    assert 2 <= int(s["WatchdogSec"][0]) <= 60
    assert s["StateDirectory"] == ["edgeloop"]
    assert s["CacheDirectory"] == ["edgeloop"]
    assert s["ConfigurationDirectory"] == ["edgeloop"]
    assert "NUMBA_CACHE_DIR=%C/edgeloop/numba" in s["Environment"]
    assert s["SupplementaryGroups"] == ["dialout"]
    assert s["DevicePolicy"] == ["closed"]
    assert {"char-ttyS rw", "char-ttyUSB rw", "char-ttyACM rw"} <= set(s["DeviceAllow"])
    assert s["IPAddressDeny"] == ["any"]


def test_stop_timeout_covers_the_graceful_shutdown() -> None:
    s = _settings()
    assert int(s["TimeoutStopSec"][0]) > 5  # the agent stops within 5 s; SIGKILL after


def test_memory_deny_write_execute_is_not_enabled() -> None:
    assert _settings().get("MemoryDenyWriteExecute", ["no"])[-1] in ("no", "false", "0")


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_MDWE is Linux-only")
def test_numba_does_not_work_under_write_xor_execute() -> None:
    """Why the unit leaves MemoryDenyWriteExecute= off: the same W^X policy set with
    prctl(PR_SET_MDWE) (Linux >= 6.3) makes numba unusable."""
    code = (
        "import ctypes, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.prctl(65, 1, 0, 0, 0) != 0:\n"  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        "    sys.exit(42)\n"
        "import numba\n"
        "print(numba.njit(lambda x: x + 1)(1))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if res.returncode == 42:
        pytest.skip("kernel without PR_SET_MDWE")
    assert res.returncode != 0
    assert "cannot allocate executable memory" in res.stderr, res.stderr[-2000:]
