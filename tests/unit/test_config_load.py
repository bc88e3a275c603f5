"""Loading: typed frozen models, defaults in one place, file:line errors, the hook."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

import agent.control.settings as control_settings
from agent.cli import EX_CONFIG, main
from agent.config import ConfigError, TagRef, load_config, parse_config
from drivers.modbus_config import ModbusDevice
from drivers.opcua_config import OpcUaDevice

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
devices:
  - name: plc
    driver: modbus
    host: 10.0.0.5
    poll_groups:
      - name: g
        interval_ms: 1000
        tags:
          - {name: t, table: holding, address: 0, type: float32}
          - {name: c, table: coil, address: 3}
"""


def test_minimal_file_gets_the_documented_defaults() -> None:
    cfg = parse_config(MINIMAL)
    dev = cfg.devices[0]
    assert isinstance(dev, ModbusDevice)
    assert (dev.port, dev.unit_id, dev.timeout_s, dev.retries) == (502, 1, 1.0, 1)
    assert (dev.byte_order, dev.word_order, dev.transport) == ("big", "big", "tcp")
    assert (dev.max_read_registers, dev.max_read_bits) == (125, 2000)
    assert (dev.max_gap_registers, dev.max_gap_bits) == (8, 32)
    assert (dev.backoff_initial_s, dev.backoff_max_s, dev.enabled) == (0.5, 30.0, True)
    group = dev.poll_groups[0]
    assert group.mode == "poll" and group.stale_ms == 3000
    tag, coil = group.tags
    assert (tag.scale, tag.offset, tag.writable, tag.min, tag.max) == (1.0, 0.0, False, None, None)
    assert coil.dtype == "bool"  # bit tables default to bool
    assert cfg.site == "edgeloop"


def test_config_dir_is_the_files_directory(tmp_path: Path) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text(MINIMAL)
    assert load_config(path).config_dir == tmp_path.resolve()
    assert parse_config(MINIMAL).config_dir is None


def test_models_are_frozen() -> None:
    cfg = parse_config(MINIMAL)
    with pytest.raises(pydantic.ValidationError):
        cfg.devices[0].port = 1  # type: ignore[misc]


def test_opcua_device_defaults() -> None:
    text = """\
devices:
  - name: ua
    driver: opcua
    endpoint: opc.tcp://h:4840
    poll_groups:
      - {name: g, interval_ms: 6000, tags: [{name: x, node: "ns=2;s=X"}]}
      - {name: s, interval_ms: 100, mode: subscribe, tags: [{name: y, node: "i=2258"}]}
"""
    dev = parse_config(text).devices[0]
    assert isinstance(dev, OpcUaDevice)
    assert (dev.security_policy, dev.security_mode, dev.timeout_s) == ("None", "None", 5.0)
    assert dev.max_nodes_per_read == 0
    sub = dev.poll_groups[1]
    # subscriptions are pushed: a 100 ms group does not collide with the 5 s timeout
    assert (sub.queue_size, sub.deadband_abs, sub.sampling_interval_ms) == (1000, 0.0, None)
    assert dev.poll_groups[0].tags[0].type == "float64"


def test_error_lines_point_at_the_offending_line(tmp_path: Path) -> None:
    bad = MINIMAL.replace("address: 0, type: float32", "address: 70000, type: float32")
    path = tmp_path / "plant.yaml"
    path.write_text(bad)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}:9: devices[0].poll_groups[0].tags[0].address: must be 0..65535"
    )
    issue = info.value.issues[0]
    assert (issue.line, issue.path) == (9, "devices[0].poll_groups[0].tags[0].address")


def test_block_style_lines_are_exact() -> None:
    text = """\
devices:
  - name: plc
    driver: modbus
    host: h
    poll_groups:
      - name: g
        interval_ms: 1000
        tags:
          - name: t
            table: holding
            address: 0
            type: float32
            scale: zero
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "p.yaml")
    assert str(info.value) == "p.yaml:13: devices[0].poll_groups[0].tags[0].scale: must be a number"


def test_all_problems_at_once_across_devices_and_stages() -> None:
    text = (
        MINIMAL
        + """\
  - name: plc2
    driver: modbus
    host: h
    port: 0
    poll_groups:
      - name: g
        interval_ms: 1000
        tags:
          - {name: u, table: input, address: 0, type: float32, writable: true}
"""
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "p.yaml")
    lines = str(info.value).splitlines()
    assert lines == [
        "p.yaml:14: devices[1].port: must be 1..65535",
        "p.yaml:19: devices[1].poll_groups[0].tags[0].writable: table input is read-only",
    ]


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml:1: no such file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


def test_cross_check_hook_of_a_section_is_called(monkeypatch) -> None:
    seen: dict[str, TagRef] = {}

    def cross_check(cfg, tag_index):
        seen.update(tag_index)
        return [
            (("control", "loops", 0, "output"), "unknown tag 'nope'"),
            ("loops[1].setpoint.tag", "not numeric: c"),  # relative to the section
        ]

    monkeypatch.setattr(control_settings, "cross_check", cross_check, raising=False)
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL, "p.yaml")
    assert str(info.value).splitlines() == [
        "p.yaml:1: control.loops[0].output: unknown tag 'nope'",
        "p.yaml:1: control.loops[1].setpoint.tag: not numeric: c",
    ]
    ref = seen["t"]
    assert (ref.device, ref.group, ref.driver, ref.type, ref.writable) == (
        "plc",
        "g",
        "modbus",
        "float32",
        False,
    )
    assert seen["c"].type == "bool"


def test_check_command_ok_and_bad(tmp_path: Path, capsys) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(MINIMAL)
    assert main(["check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "OK: 1 devices, 2 tags, 1 poll groups" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL.replace("interval_ms: 1000", "interval_ms: 1000\n        foo: 1"))
    assert main(["check", str(bad)]) == EX_CONFIG
    assert f"{bad}:8: devices[0].poll_groups[0].foo: unknown key" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "missing.yaml")]) == EX_CONFIG


def test_default_config_checks_clean(capsys, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["check"]) == 0
    assert "config/edgeloop.yaml: OK" in capsys.readouterr().out
