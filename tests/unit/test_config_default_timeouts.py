"""Defaults that agree (issue 14): an omitted driver timeout follows the fastest polled
group, so a plain OPC UA device with a 1 s group passes `check`; a timeout the user wrote
too long for a group is still refused with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, load_config

DEVICES = """
devices:
  - name: ua
    driver: opcua
    endpoint: opc.tcp://127.0.0.1:4840
{ua_timeout}    poll_groups:
      - {{name: fast, interval_ms: 1000, tags: [{{name: a, node: "ns=2;i=1"}}]}}
      - {{name: sub, mode: subscribe, interval_ms: 100, tags: [{{name: c, node: "ns=2;i=2"}}]}}
  - name: mb
    driver: modbus
    host: 127.0.0.1
    poll_groups:
      - {{name: fast, interval_ms: 200, tags: [{{name: b, table: holding, address: 0,
          type: uint16}}]}}
      - {{name: slow, interval_ms: 10000, tags: [{{name: d, table: holding, address: 1,
          type: uint16}}]}}
  - name: mb_slow
    driver: modbus
    host: 127.0.0.1
    poll_groups:
      - {{name: slow, interval_ms: 5000, tags: [{{name: e, table: holding, address: 0,
          type: uint16}}]}}
"""


def _write(tmp_path: Path, ua_timeout: str = "") -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(DEVICES.format(ua_timeout=ua_timeout))
    return p


def test_omitted_timeouts_follow_the_fastest_polled_group(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path))
    by = {d.name: d for d in cfg.devices}
    assert by["ua"].timeout_s == pytest.approx(0.8)  # 5 s default > 1 s group (subscribe ignored)
    assert by["mb"].timeout_s == pytest.approx(0.16)  # 80 % of the 200 ms group
    assert by["mb_slow"].timeout_s == pytest.approx(1.0)  # the driver default when it fits


def test_a_timeout_written_too_long_is_still_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, "    timeout_s: 5\n"))
    assert "shorter than the device timeout_s (5 s)" in str(e.value)
    assert "c.yaml:" in str(e.value)


def test_check_notes_modicon_style_addresses(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`address: 40001` is legal (register 40001) but usually a PLC manual's reference for
    holding register 0: `check` passes and says so, naming the line and the address meant."""
    from agent.cli import main

    p = tmp_path / "m.yaml"
    p.write_text(
        "devices:\n  - name: mb\n    driver: modbus\n    host: 127.0.0.1\n    poll_groups:\n"
        "      - name: g\n        interval_ms: 200\n        tags:\n"
        "          - {name: b, table: holding, address: 40001, type: uint16}\n"
        "          - {name: c, table: input, address: 30010, type: uint16}\n"
        "          - {name: d, table: holding, address: 10, type: uint16}\n"
    )
    assert main(["check", str(p)]) == 0
    out = capsys.readouterr().out
    assert f"{p}:9: devices[0].poll_groups[0].tags[0].address: note:" in out
    assert "the register is `address: 0`" in out and "`address: 9`" in out
    assert "tags[2]" not in out
