"""The device-model hooks the agent asks instead of knowing a driver: `exclusive_links`
(what a reload hands over break-before-make) and `notes` (what `check` points out)."""

from __future__ import annotations

from pathlib import Path

from agent.config import parse_config
from agent.service import _exclusive_links

CONFIG = """
devices:
  - name: rtu_a
    driver: modbus
    transport: rtu
    serial_port: /dev/ttyUSB0
    poll_groups:
      - name: g
        interval_ms: 1000
        tags:
          - {name: a, table: holding, address: 40001, type: uint16}
  - name: rtu_off
    driver: modbus
    transport: rtu
    serial_port: /dev/ttyUSB1
    enabled: false
    poll_groups:
      - name: g
        interval_ms: 1000
        tags:
          - {name: o, table: holding, address: 1, type: uint16}
  - name: tcp
    driver: modbus
    host: 127.0.0.1
    poll_groups:
      - name: g
        interval_ms: 1000
        tags:
          - {name: b, table: holding, address: 10, type: uint16}
  - name: ua
    driver: opcua
    endpoint: opc.tcp://127.0.0.1:4840
    poll_groups:
      - name: g
        interval_ms: 1000
        tags:
          - {name: u, node: "ns=2;s=X", type: float64}
  - name: rec
    driver: csv
    file: CSVFILE
    poll_groups:
      - name: g
        interval_ms: 1000
        tags:
          - {name: x, column: x}
"""


def _cfg(tmp_path: Path):  # type: ignore[no-untyped-def]
    csv = tmp_path / "r.csv"
    csv.write_text("t,x\n0,1\n")
    return parse_config(CONFIG.replace("CSVFILE", str(csv)), "c.yaml")


def test_only_an_enabled_rtu_device_holds_its_link_alone(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    links = {d.name: d.exclusive_links() for d in cfg.devices}
    assert links == {
        "rtu_a": frozenset({"/dev/ttyUSB0"}),
        "rtu_off": frozenset({"/dev/ttyUSB1"}),
        "tcp": frozenset(),
        "ua": frozenset(),
        "rec": frozenset(),
    }
    assert _exclusive_links(cfg) == {"/dev/ttyUSB0"}  # a disabled device holds nothing


def test_notes_come_from_the_device_that_has_them(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    notes = {d.name: d.notes() for d in cfg.devices}
    assert [p for p, _ in notes["rtu_a"]] == [("poll_groups", 0, "tags", 0, "address")]
    assert "`address: 0`" in notes["rtu_a"][0][1]
    assert notes["tcp"] == notes["ua"] == notes["rec"] == []
