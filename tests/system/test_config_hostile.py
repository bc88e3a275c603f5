"""A hostile config file costs the gateway nothing: `check` refuses it at once with exit 78,
and the guarded loader that SIGHUP reloads use refuses it without growing the running
process (the bytes are validated by a child process with a memory and time budget first)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.service import ConfigRefused, load_and_compile

ROOT = Path(__file__).resolve().parents[2]

BOMB = (
    "".join(
        f"{b}: &{b} [" + ", ".join([f"*{a}" if a else '"lol"'] * 9) + "]\n"
        for a, b in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
    )
    + "devices: []\n"
)


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def bomb(tmp_path: Path) -> Path:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    return path


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "edgeloop.yaml"
    path.write_text((ROOT / "config/edgeloop.yaml").read_text())
    return path


def test_check_refuses_an_alias_bomb_quickly_with_exit_78(bomb: Path) -> None:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "check", str(bomb)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 78, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(str(bomb))]
    assert lines == [
        f"{bomb}:6: YAML: aliases expand to more than 100000 nodes (at *e): refused",
        f"{bomb}: 1 problem",
    ]
    assert elapsed < 20, f"check took {elapsed:.1f} s"  # was > 60 s (and GBs) before


def test_the_guarded_loader_refuses_a_bomb_without_growing_the_process(
    bomb: Path, good: Path
) -> None:
    load_and_compile(good, isolated=True)  # imports and caches warmed up
    before = _rss_mb()
    t0 = time.monotonic()
    with pytest.raises(ConfigRefused) as info:
        load_and_compile(bomb, isolated=True)
    assert time.monotonic() - t0 < 30
    assert info.value.lines == [
        f"{bomb}:6: YAML: aliases expand to more than 100000 nodes (at *e): refused"
    ]
    assert _rss_mb() - before < 50


def test_the_guarded_loader_compiles_a_good_file_as_start_up_does(good: Path) -> None:
    compiled = load_and_compile(good, isolated=True)
    plain = load_and_compile(good)
    assert compiled.table.names == plain.table.names
    assert compiled.config == plain.config


def test_the_child_validates_the_bytes_it_is_given() -> None:
    from agent.configguard import validate_isolated

    assert validate_isolated(b"site: [\n", "plant.yaml") == [
        "plant.yaml:2: YAML syntax: while parsing a flow node, expected the node content, "
        "but found '<stream end>'"
    ]


def test_a_child_over_its_time_or_memory_budget_refuses_the_reload(good: Path) -> None:
    from agent.configguard import validate_isolated

    data = good.read_bytes()
    assert validate_isolated(data, "plant.yaml") == []
    assert validate_isolated(data, "plant.yaml", timeout_s=0.01) == [
        "plant.yaml:1: validating the file took longer than 0.01 s: refused"
    ]
    rows = ["devices:", "  - {name: plc, driver: modbus, host: h, poll_groups: [{name: g,"]
    rows += ["      interval_ms: 1000, tags: ["]
    rows += [
        f"      {{name: t{i}, table: holding, address: {i}, type: uint16}}," for i in range(5000)
    ]
    rows += ["    ]}]}"]
    big = ("\n".join(rows) + "\n").encode()
    # At its memory limit a child either gets MemoryError or crawls (every malloc failing
    # in the kernel) until the wall-clock limit: refused either way, the service untouched.
    t0 = time.monotonic()
    (line,) = validate_isolated(big, "plant.yaml", memory_mb=4, timeout_s=5)
    assert time.monotonic() - t0 < 10
    assert line in (
        "plant.yaml:1: validating the file needs more than 4 MiB of memory (or 5 s): refused",
        "plant.yaml:1: validating the file took longer than 5 s: refused",
    )
    assert validate_isolated(big, "plant.yaml") == []  # with the default budget it passes


def test_service_reload_path_uses_the_same_lines_as_check(bomb: Path) -> None:
    with pytest.raises(ConfigRefused) as plain:
        load_and_compile(bomb)
    with pytest.raises(ConfigRefused) as guarded:
        load_and_compile(bomb, isolated=True)
    assert plain.value.lines == guarded.value.lines
