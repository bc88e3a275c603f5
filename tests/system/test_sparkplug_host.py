"""Issue 15 "done when", Sparkplug B: a host follows `edgeloop run` (a real process on hw_sim)
through its primary-host hold, a mosquitto restart and a kill -9.

The host (tests/fixtures/sparkplug_host.py) decodes with message classes of its own, built
from the specification's field table, never with the project's encoder or generated code. It
checks the datatypes and values of the births, that every DDATA refers to aliases of the
session's DBIRTH with the value in the member of the born datatype, one gap-free seq per
session starting at NBIRTH 0, bdSeq going on by one per connection (across the kill -9, from
the file beside the outbox) and NDEATH carrying its session's bdSeq. A DCMD within bounds is
read back from the simulated PLC's registers by an independent Modbus client; one outside the
bounds and one to a control loop's output are refused, answered and never reach the PLC.
"""

from __future__ import annotations

import signal
import sqlite3
import struct
import time
from pathlib import Path

from pymodbus.client import ModbusTcpClient

from tests.fixtures.mqtt import Broker
from tests.fixtures.sparkplug_host import DATATYPES, Host, Msg, properties, seq_breaks, sessions
from tests.system.test_service import (  # noqa: F401 - plant is the fixture
    _start_agent,
    _write_cfg,
    plant,
)

# ruff: noqa: F811 - `plant` is a fixture imported above

NODE = "demo-plant"
SETPOINT_REG = 12  # temp_setpoint, holding float32 on unit 1 (config/edgeloop.yaml)
MEMBER = {
    "Float": "float_value",
    "Double": "double_value",
    "Boolean": "boolean_value",
    "String": "string_value",
    "Int16": "int_value",
    "UInt16": "int_value",
    "Int32": "int_value",
    "UInt32": "int_value",
    "Int64": "long_value",
    "UInt64": "long_value",
}


def _outbox_rows(path: Path) -> int:
    try:
        with sqlite3.connect(path, timeout=1) as con:
            return int(con.execute("SELECT count(*) FROM outbox").fetchone()[0])
    except sqlite3.Error:
        return 0


def _wait(pred, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def _setpoint(c: ModbusTcpClient) -> float:
    r = c.read_holding_registers(SETPOINT_REG, count=2, device_id=1)
    assert not r.isError()
    return struct.unpack(">f", struct.pack(">HH", *r.registers))[0]


def _refusals(host: Host, alias: int) -> list[str]:
    out = []
    for m in host.of("DDATA", "heater_plc"):
        for x in m.payload.metrics:
            if x.alias == alias and "writeRefused" in properties(x):
                out.append(properties(x)["writeRefused"][1])
    return out


def _check_session(s: list[Msg]) -> None:
    """Births before data, DDATA aliases and value members as born, one seq sequence."""
    assert s[0].kind == "NBIRTH" and s[0].seq == 0
    assert seq_breaks(s) == [], [(m.kind, m.device, m.seq) for m in s]
    born: dict[str, dict[int, str]] = {}
    for m in s:
        if m.kind == "DBIRTH":
            born[m.device] = {x.alias: DATATYPES[x.datatype] for x in m.payload.metrics}
        elif m.kind == "DDATA":
            types = born[m.device]  # KeyError: DDATA before its device's DBIRTH
            for x in m.payload.metrics:
                assert not x.HasField("datatype")
                if not x.is_null:
                    assert x.WhichOneof("value") == MEMBER[types[x.alias]], (x, types[x.alias])
    # the session's own death carries its bdSeq; a late will of an earlier connection (the
    # broker restart) carries that one's, which a host recognises as stale
    deaths = [m.bdseq() for m in s if m.kind == "NDEATH"]
    assert all(d == s[0].bdseq() or (s[0].bdseq() - d) % 256 < 4 for d in deaths), deaths


def test_sparkplug_host_follows_hold_restart_kill9_and_dcmd(plant, tmp_path: Path) -> None:
    ports, _sim = plant
    broker = Broker(tmp_path / "broker")
    broker.start()
    host = Host(broker.host, broker.port, "plant")
    outbox = tmp_path / "outbox.db"
    publish = {
        "encoding": "sparkplug_b",
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "backoff_initial_s": 0.1,
            "backoff_max_s": 1.0,
            "connect_timeout_s": 2,
        },
        "outbox": {"path": str(outbox)},
        "sparkplug": {"group_id": "plant", "primary_host_id": "scada"},
    }
    cfg = _write_cfg(tmp_path, ports, publish=publish)
    log = tmp_path / "agent.log"
    agent = _start_agent(cfg, tmp_path)
    plc = ModbusTcpClient("127.0.0.1", port=ports.modbus, timeout=2)
    assert plc.connect()
    try:
        # 1. held until the primary host is online; the outbox keeps storing meanwhile
        assert _wait(lambda: _outbox_rows(outbox) > 20, 90), log.read_text()
        time.sleep(3)  # every poll group (info: every 10 s, first at start) read once
        assert host.of("NBIRTH") == [] and host.of("DDATA") == []
        assert "waiting for the Sparkplug primary host 'scada'" in log.read_text()
        host.state(True)
        assert host.wait(lambda h: len(h.of("DBIRTH")) >= 2 and len(h.of("DDATA")) >= 20, 30)
        nb1 = host.of("NBIRTH")[0]
        assert nb1.seq == 0
        assert any(x.is_historical for m in host.of("DDATA") for x in m.payload.metrics)

        # 2. types, values and properties of the heater PLC's birth
        birth = host.of("DBIRTH", "heater_plc")[0]
        by = {x.name: x for x in birth.payload.metrics}
        types = {n: DATATYPES[x.datatype] for n, x in by.items()}
        assert {
            "fast/tank_temp": "Float",
            "fast/heartbeat": "UInt16",
            "slow/ambient_temp": "Double",  # int16 with scale 0.1
            "slow/status_word": "UInt16",
            "slow/low_flow_alarm": "Boolean",
            "slow/uptime_s": "UInt32",
            "slow/flow_total_m3": "Double",
            "slow/heater_enable": "Boolean",
            "slow/watchdog_tripped": "Boolean",
            "info/device_model": "String",
            "info/firmware_version": "UInt16",
        }.items() <= types.items()
        assert [n for n, x in by.items() if x.is_null] == []  # every tag was read
        assert by["info/device_model"].string_value.strip()
        assert 0 < by["fast/tank_temp"].float_value < 120
        assert properties(by["fast/tank_temp"])["engUnit"] == ("String", "degC")
        sp = properties(by["fast/temp_setpoint"])
        assert sp["engLow"] == ("Double", 0.0) and sp["engHigh"] == ("Double", 95.0)
        assert sp["writable"] == ("Boolean", True) and sp["Quality"] == ("Int32", 192)
        sp_alias = by["fast/temp_setpoint"].alias
        power_alias = by["fast/heater_power"].alias

        # 3. DCMD: within bounds, executed on the PLC; outside bounds and to a loop's
        # output refused by the write gate, answered with writeRefused, never sent
        host.command(
            "DCMD",
            NODE,
            "heater_plc",
            [{"name": "fast/temp_setpoint", "datatype": "Float", "value": 61.5}],
        )
        assert _wait(lambda: abs(_setpoint(plc) - 61.5) < 1e-4, 15), log.read_text()[-3000:]
        host.command(
            "DCMD", NODE, "heater_plc", [{"alias": sp_alias, "datatype": "Float", "value": 200}]
        )
        host.command(
            "DCMD",
            NODE,
            "heater_plc",
            [{"name": "fast/heater_power", "datatype": "Float", "value": 50}],
        )
        assert host.wait(lambda h: _refusals(h, sp_alias) and _refusals(h, power_alias), 15)
        assert "outside" in _refusals(host, sp_alias)[0]
        assert _refusals(host, power_alias)
        refused = host.events("write_refused")
        assert {e["payload"]["tag"] for e in refused} >= {"temp_setpoint", "heater_power"}
        time.sleep(1)
        assert abs(_setpoint(plc) - 61.5) < 1e-4  # the refused value never reached the PLC

        # 4. broker restart: a new connection, the next bdSeq, NBIRTH seq 0, data goes on
        n_data = len(host.of("DDATA"))
        broker.stop()
        time.sleep(3)
        broker.start()
        assert host.wait(lambda h: len(h.of("NBIRTH")) >= 2, 60), log.read_text()[-3000:]
        nb2 = host.of("NBIRTH")[1]
        assert nb2.seq == 0 and nb2.bdseq() == (nb1.bdseq() + 1) % 256
        assert host.wait(lambda h: len(h.of("DDATA")) > n_data + 20, 60)

        # 5. kill -9: the broker publishes the will, NDEATH with this session's bdSeq; a new
        # process goes on from the saved bdSeq, and the STATE it finds (retained) lets it on
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        # (mosquitto may also have sent session 1's will when it stopped: that NDEATH
        # carries session 1's bdSeq, which is how a host tells the two apart)
        assert host.wait(lambda h: nb2.bdseq() in [m.bdseq() for m in h.of("NDEATH")], 30)
        agent = _start_agent(cfg, tmp_path)
        assert host.wait(lambda h: len(h.of("NBIRTH")) >= 3, 90), log.read_text()[-3000:]
        nb3 = host.of("NBIRTH")[2]
        assert nb3.bdseq() == (nb2.bdseq() + 1) % 256
        n3 = len(host.of("DDATA"))
        assert host.wait(lambda h: len(h.of("DDATA")) > n3 + 10, 60)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(15) == 0
        assert host.wait(lambda h: h.all()[-1].kind == "NDEATH", 10)
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(15)
        plc.close()
        host.close()
        broker.stop()

    # 6. a clean stop says DDEATH and NDEATH; every session is consistent
    all_sessions = sessions(host.all())
    assert len(all_sessions) == 3
    for s in all_sessions:
        _check_session(s)
    for s in all_sessions[1:]:  # ended by kill -9 (the will) and by SIGTERM (said)
        assert s[0].bdseq() in [m.bdseq() for m in s if m.kind == "NDEATH"]
    last = all_sessions[-1]
    assert last[-1].kind == "NDEATH" and any(m.kind == "DDEATH" for m in last)
