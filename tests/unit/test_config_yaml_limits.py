"""YAML that could hurt the process is refused early, in one line, never a traceback.

Files beyond the size limit, alias bombs, recursive aliases, deep nesting, characters YAML
cannot hold and values Python cannot construct: each is a `ConfigError` with file and line,
found in bounded time and memory.  `tests/cases/` holds one golden file per kind; these tests
cover what a golden file cannot (a generated 100k nesting, a file over the size limit).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.cli import EX_CONFIG, main
from agent.config import MAX_CONFIG_BYTES, ConfigError, load_config, parse_config

MINIMAL = """\
devices:
  - name: plc
    driver: modbus
    host: 10.0.0.5
    poll_groups:
      - name: g
        interval_ms: 1000
        tags:
          - {name: t, table: holding, address: 0, type: float32, writable: true, min: 0, max: 100}
          - {name: c, table: coil, address: 3}
"""


def _refused(text: str, name: str = "plant.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, name)
    lines = str(info.value).splitlines()
    assert all(line.startswith(f"{name}:") for line in lines), lines
    return lines


# --- size --------------------------------------------------------------------------------


def test_a_file_over_the_size_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    assert MAX_CONFIG_BYTES == 1024 * 1024
    path = tmp_path / "huge.yaml"
    with path.open("w") as fh:
        fh.write(MINIMAL)
        fh.write("# padding\n" * (MAX_CONFIG_BYTES // 10))
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert time.monotonic() - t0 < 1.0
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"{path}:1: ")
    assert "1 MiB" in line and "larger than" in line
    text = path.read_text()
    assert _refused(text) == [line.replace(str(path), "plant.yaml", 1)]


def test_a_file_just_under_the_limit_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    padding = MAX_CONFIG_BYTES - len(MINIMAL) - 100
    path.write_text(MINIMAL + "#" * padding + "\n")
    assert load_config(path).devices[0].name == "plc"


# --- YAML that would exhaust time, memory or the stack -----------------------------------


def _bomb(levels: int = 9) -> str:
    rows = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        rows.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(rows) + "\n" + MINIMAL


def test_an_alias_bomb_is_refused_quickly() -> None:
    t0 = time.monotonic()
    lines = _refused(_bomb())
    assert time.monotonic() - t0 < 2.0
    assert lines == [
        "plant.yaml:6: YAML: aliases expand to more than 100000 nodes (at *a4): refused"
    ]


def test_a_recursive_alias_is_refused() -> None:
    for text in ("a: &a [*a]\n", "a: &a {b: *a}\n", "a: &a {<<: *a}\n"):
        (line,) = _refused(text + MINIMAL)
        assert line.startswith("plant.yaml:1: YAML: alias *a refers to a mapping or list that "), (
            line
        )


@pytest.mark.parametrize(
    "deep",
    [
        "[" * 100_000 + "1" + "]" * 100_000,
        "{a: " * 100_000 + "1" + "}" * 100_000,
        "\n" + "- " * 100_000 + "1",  # compact block sequences
    ],
    ids=["flow-sequences", "flow-mappings", "block-sequences"],
)
def test_deep_nesting_is_refused_before_the_stack_runs_out(deep: str) -> None:
    t0 = time.monotonic()
    (line,) = _refused("x: " + deep + "\n" + MINIMAL)
    assert time.monotonic() - t0 < 5.0
    assert line.endswith(": YAML: nested deeper than 64 levels"), line


def test_a_megabyte_of_tiny_values_is_refused_at_the_node_limit() -> None:
    """1 MiB of `[1,1,1,...]` would be 500,000 nodes: seconds and hundreds of MB later."""
    text = "x: [" + ",".join(["1"] * 500_000) + "]\n"
    assert len(text) < MAX_CONFIG_BYTES
    (line,) = _refused(text + MINIMAL)
    assert line.startswith("plant.yaml:1: YAML: more than 250000 values"), line


def test_reasonable_aliases_and_merge_keys_still_work() -> None:
    """Templates by merge key are what aliases are for: 1000 tags from one template load."""
    rows = ["devices:", "  - name: plc", "    driver: modbus", "    host: 10.0.0.5"]
    rows += ["    poll_groups:", "      - name: g", "        interval_ms: 1000", "        tags:"]
    rows += ["          - &float_tag {name: t0, table: holding, address: 0, type: float32,"]
    rows += ["             unit: degC, scale: 0.1}"]
    rows += [
        f"          - {{<<: *float_tag, name: t{i}, address: {2 * i}}}" for i in range(1, 1000)
    ]
    cfg = parse_config("\n".join(rows) + "\n")
    tags = cfg.devices[0].poll_groups[0].tags
    assert len(tags) == 1000
    assert (tags[999].name, tags[999].address, tags[999].unit, tags[999].scale) == (
        "t999",
        1998,
        "degC",
        0.1,
    )


def test_keys_given_beside_a_merge_key_override_it_and_are_no_duplicates() -> None:
    text = MINIMAL.replace(
        "          - {name: c, table: coil, address: 3}\n",
        "          - &tmpl {name: c, table: coil, address: 3}\n"
        "          - {<<: *tmpl, name: d, address: 4}\n"
        "          - {<<: *tmpl, name: e, address: 5, writable: maybe}\n",
    )
    lines = _refused(text)
    assert lines == [
        "plant.yaml:12: devices[0].poll_groups[0].tags[3].writable: must be true or false"
    ]
    cfg = parse_config(text.replace("writable: maybe", "writable: true"))
    names = [(t.name, t.address, t.table) for t in cfg.devices[0].poll_groups[0].tags]
    assert names[1:] == [("c", 3, "coil"), ("d", 4, "coil"), ("e", 5, "coil")]


def test_a_long_chain_of_merges_is_one_line() -> None:
    rows = ["m0: &m0 {a: 1}"] + [
        f"m{i}: &m{i} {{<<: *m{i - 1}, k{i}: {i}}}" for i in range(1, 2000)
    ]
    lines = _refused("\n".join(rows) + "\n" + MINIMAL)
    assert len(lines) == 1 and ": YAML: " in lines[0], lines


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("site: a\x00b\n", "plant.yaml:1: YAML: character #x0000 is not allowed (column 8)"),
        (
            "site: x\nsite2: a\x07b\n",
            "plant.yaml:2: YAML: character #x0007 is not allowed (column 9)",
        ),
        ("site: \ud800\n", "plant.yaml:1: YAML: character #xd800 is not allowed (column 7)"),
    ],
)
def test_characters_yaml_cannot_hold_are_one_line(text: str, message: str) -> None:
    assert _refused(text + MINIMAL) == [message]


def test_values_python_cannot_construct_are_one_line() -> None:
    big = MINIMAL.replace("address: 0,", "address: " + "1" * 10_000 + ",")
    (line,) = _refused(big)
    assert line.startswith("plant.yaml:9: YAML: cannot read this integer: exceeds the limit")
    (line,) = _refused("site: 2026-02-30\n" + MINIMAL)
    assert line == "plant.yaml:1: YAML: cannot read this date (quote it if it is text): " + (
        "day is out of range for month"
    )


@pytest.mark.parametrize(
    "body",
    [
        "a: &a [" + ", ".join(["*a"] * 3) + "]\n",
        "[" * 100_000 + "]" * 100_000 + "\n",
        "site: a\x00\n",
        "site: 2026-13-45\n",
    ],
    ids=["recursive", "nesting", "nul", "date"],
)
def test_check_exits_78_with_one_line_and_no_traceback(
    body: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body + MINIMAL)
    assert main(["check", str(path)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{path}:") and "YAML" in lines[0], lines


def _guard_children() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"agent.configguard" in cmd:
                pids.append(int(d.name))
    return pids


async def test_a_cancelled_guarded_validation_kills_its_child() -> None:
    """SIGTERM during a SIGHUP reload must not wait for the validating child (up to 30 s)."""
    import asyncio

    from agent.configguard import validate_isolated_async

    task = asyncio.create_task(validate_isolated_async(b"site: x\n", "x.yaml", timeout_s=30))
    for _ in range(200):  # until the child exists
        await asyncio.sleep(0.01)
        if _guard_children():
            break
    assert _guard_children()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    for _ in range(100):
        if not _guard_children():
            break
        await asyncio.sleep(0.02)
    assert not _guard_children()


async def test_guarded_validation_async_agrees_with_the_sync_one() -> None:
    from agent.configguard import validate_isolated, validate_isolated_async

    bad = b"site: x\ndevices: 5\n"
    assert await validate_isolated_async(bad, "x.yaml") == validate_isolated(bad, "x.yaml")
    assert await validate_isolated_async(bad, "x.yaml")


def test_a_child_failing_an_allocation_at_its_limit_is_read_as_over_budget() -> None:
    """Seen in CI: at RLIMIT_AS a C allocation failed without setting MemoryError and the
    child died with SystemError; that is the memory budget, not a broken validator."""
    from agent.configguard import _verdict

    err = b"Traceback (most recent call last):\nSystemError: error return without exception set\n"
    assert _verdict("p.yaml", 4, 5, 1, b"", err) == [
        "p.yaml:1: validating the file needs more than 4 MiB of memory (or 5 s): refused"
    ]
    other = b"Traceback (most recent call last):\nKeyError: 'x'\n"
    assert _verdict("p.yaml", 4, 5, 1, b"", other) == [
        "p.yaml:1: the validating process failed (exit 1): KeyError: 'x'"
    ]
