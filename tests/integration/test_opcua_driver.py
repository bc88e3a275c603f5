"""The OPC UA driver against the simulated server on loopback.

Configs go through the real path: YAML -> `agent.config` models -> `agent.tags.compile_config`
-> `drivers.opcua` plans, so field names and group options are the ones users write.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import numpy as np
import pytest
import yaml

from agent.config import parse_config
from agent.metrics import Metrics
from agent.tags import compile_config
from drivers.base import ConnectError, Quality, WriteError, WriteRefused
from drivers.opcua import OpcUaDriver
from hw_sim.pointmap import opcua_points
from tests.fixtures.opcua import PASSWORD, USERNAME

POINTS = opcua_points()


def _tags(points=POINTS, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"name": p.name, "node": p.node, "unit": p.unit, "writable": p.writable, **extra}
        for p in points
    ]


def _build(endpoint: str, groups: list[dict[str, Any]], **device: Any):
    """(driver, {group name: plan}) compiled exactly as the service does."""
    dev = {"name": "skid", "driver": "opcua", "endpoint": endpoint, "timeout_s": 2.0}
    dev.update(device)
    dev["poll_groups"] = groups
    cfg = parse_config(yaml.safe_dump({"site": "test", "devices": [dev]}))
    compiled = compile_config(cfg)
    driver = compiled.drivers["skid"]
    assert isinstance(driver, OpcUaDriver)
    plans = {g: plan for (_d, g), plan in compiled.plans.items()}
    return driver, plans


def _assert_tracks_plant(result, names, plant_values, tol=0.25):
    assert result.quality.tolist() == [Quality.GOOD] * len(names)
    for i, name in enumerate(names):
        ref = plant_values[name]
        assert abs(result.values[i] - ref) / max(1.0, abs(ref)) < tol, (name, result.values[i], ref)


async def test_batched_read_of_all_points_is_one_read_call(opcua_server):
    driver, plans = _build(
        opcua_server.endpoint, [{"name": "all", "interval_ms": 5000, "tags": _tags()}]
    )
    await driver.connect()
    try:
        srv = opcua_server.server
        before = srv.read_calls
        result = await driver.read(plans["all"])
        assert srv.read_calls - before == 1
        assert srv.sim.read_sizes[-1] == len(POINTS)
        _assert_tracks_plant(result, [p.name for p in POINTS], opcua_server.plant.values())
        assert driver.max_nodes_per_read == 10000  # asyncua's published OperationLimits value
    finally:
        await driver.close()


async def test_reads_are_chunked_to_max_nodes_per_read(opcua_server):
    driver, plans = _build(
        opcua_server.endpoint,
        [{"name": "all", "interval_ms": 5000, "tags": _tags()}],
        max_nodes_per_read=3,
    )
    rows = driver.describe(plans["all"])
    assert [r.count for r in rows] == [3, 3, 3, 1]
    assert sum((r.tags for r in rows), ()) == tuple(p.name for p in POINTS)
    await driver.connect()
    try:
        srv = opcua_server.server
        before = srv.read_calls
        result = await driver.read(plans["all"])
        assert srv.read_calls - before == 4
        assert srv.sim.read_sizes[-4:] == [3, 3, 3, 1]
        _assert_tracks_plant(result, [p.name for p in POINTS], opcua_server.plant.values())
    finally:
        await driver.close()


async def test_server_operation_limit_is_used_when_not_configured(opcua_server_factory):
    env = opcua_server_factory(max_nodes_per_read=4)
    driver, plans = _build(env.endpoint, [{"name": "all", "interval_ms": 5000, "tags": _tags()}])
    assert "chunked to the server" in driver.describe(plans["all"])[0].function
    await driver.connect()
    try:
        result = await driver.read(plans["all"])
        assert driver.max_nodes_per_read == 4
        assert env.server.sim.read_sizes == [4, 4, 2]  # the server enforces its limit: no refusals
        assert (result.quality == Quality.GOOD).all()
        assert [r.count for r in driver.describe(plans["all"])] == [4, 4, 2]
    finally:
        await driver.close()

    # configured above the server's real limit: refused chunks are halved, the poll succeeds
    env.server.call(lambda sim: sim.reset_counters())
    driver, plans = _build(
        env.endpoint, [{"name": "all", "interval_ms": 5000, "tags": _tags()}], max_nodes_per_read=10
    )
    await driver.connect()
    try:
        result = await driver.read(plans["all"])
        assert (result.quality == Quality.GOOD).all()
        assert driver.max_nodes_per_read == 2  # 10 refused, 5 refused, 2 accepted
        assert env.server.sim.read_sizes == [2, 2, 2, 2, 2]
        await driver.read(plans["all"])
        assert env.server.sim.read_sizes == [2] * 10  # no more refusals
    finally:
        await driver.close()


async def test_scale_offset_and_uncertain_status(opcua_server):
    flow = next(p for p in POINTS if p.name == "pump_flow")
    temp = next(p for p in POINTS if p.name == "pump_fluid_temp")
    tags = [
        {"name": "flow_lps", "node": flow.node, "scale": 1 / 3.6, "offset": 0.0},
        {"name": "fluid_temp_k", "node": temp.node, "offset": 273.15},
    ]
    driver, plans = _build(
        opcua_server.endpoint, [{"name": "g", "interval_ms": 5000, "tags": tags}]
    )
    srv = opcua_server.server
    await driver.connect()
    try:
        result = await driver.read(plans["g"])
        vals = opcua_server.plant.values()
        assert result.values[0] == pytest.approx(vals["pump_flow"] / 3.6, rel=0.2)
        assert result.values[1] == pytest.approx(vals["pump_fluid_temp"] + 273.15, rel=0.01)
        srv.call(
            lambda sim: sim.force_status("pump_fluid_temp", 0x408F0000)
        )  # UncertainLastUsableValue... family
        srv.call(lambda sim: sim.force_status("pump_flow", 0x808B0000))  # BadSensorFailure
        await asyncio.sleep(0.15)
        result = await driver.read(plans["g"])
        assert result.quality.tolist() == [Quality.BAD, Quality.UNCERTAIN]
        assert math.isnan(result.values[0]) and math.isfinite(result.values[1])
    finally:
        srv.call(lambda sim: sim.force_status("pump_fluid_temp", None))
        srv.call(lambda sim: sim.force_status("pump_flow", None))
        await driver.close()


async def test_subscription_serves_latest_values_without_reads(opcua_server):
    names = [p.name for p in POINTS]
    groups = [{"name": "sub", "interval_ms": 100, "mode": "subscribe", "tags": _tags()}]
    driver, plans = _build(opcua_server.endpoint, groups, timeout_s=0.05)
    srv = opcua_server.server
    await driver.connect()
    try:
        reads_before = srv.read_calls
        await asyncio.sleep(0.6)
        result = await driver.read(plans["sub"])
        _assert_tracks_plant(result, names, opcua_server.plant.values())
        assert driver.stats["notifications"] > len(names)
        assert driver.stats["notifications_dropped"] == 0
        for _ in range(3):  # the subscription path sends no Read per poll
            await driver.read(plans["sub"])
        assert srv.read_calls == reads_before
    finally:
        await driver.close()


async def test_subscription_queue_overflow_is_counted(opcua_server):
    groups = [
        {"name": "tiny", "interval_ms": 100, "mode": "subscribe", "queue_size": 2, "tags": _tags()}
    ]
    driver, plans = _build(opcua_server.endpoint, groups, timeout_s=0.05)
    metrics = Metrics()
    driver.metrics = metrics
    await driver.connect()
    try:
        await asyncio.sleep(0.6)
        result = await driver.read(plans["tiny"])
        assert (result.quality == Quality.GOOD).all()
        dropped = driver.stats["notifications_dropped"]
        assert dropped > 0  # ~10 changes per publish into a queue of 2, drop-oldest
        assert driver.stats["notifications"] <= 2  # the drain saw only what the queue kept
        assert metrics.get("edgeloop_queue_dropped_total", queue="opcua:skid/tiny") == dropped
    finally:
        await driver.close()


async def test_subscription_deadband_suppresses_small_changes(opcua_server):
    node = {p.name: p.node for p in POINTS}
    groups = [
        {"name": "db", "interval_ms": 50, "mode": "subscribe", "deadband_abs": 50.0,
         "tags": [{"name": "cur", "node": node["pump_motor_current"]},
                  {"name": "fl", "node": node["pump_flow"]}]},
        {"name": "raw", "interval_ms": 50, "mode": "subscribe",
         "tags": [{"name": "vx", "node": node["pump_vibration_x"]},
                  {"name": "pr", "node": node["pump_discharge_pressure"]}]},
    ]  # fmt: skip
    driver, plans = _build(opcua_server.endpoint, groups, timeout_s=0.02)
    await driver.connect()
    try:
        await asyncio.sleep(0.8)
        db = await driver.read(plans["db"])
        await driver.read(plans["raw"])
        # no data for 0.8 s (stale_after 150 ms), yet not stale: keep-alives prove the link
        assert (db.quality == Quality.GOOD).all()
        n_db = driver._subs["db"].notifications
        n_raw = driver._subs["raw"].notifications
        assert n_raw > 10  # noisy signals: a notification nearly every publish
        assert n_db <= 2  # the initial values only: nothing moves by 50 units in 0.8 s
    finally:
        await driver.close()


async def test_writes_use_the_node_data_type(opcua_server_factory):
    class RecordingPlant:
        def __init__(self) -> None:
            self.state: dict[str, Any] = {"f32": 0.0, "i16": 0, "u32": 0, "flag": False, "dbl": 0.0}
            self.writes: list[tuple[str, Any]] = []

        def values(self) -> dict[str, Any]:
            return dict(self.state)

        def write(self, name: str, value: Any) -> None:
            self.writes.append((name, value))
            self.state[name] = value

    pts = [
        {"name": "f32", "node": "ns=2;s=Test.F32", "type": "float32", "min": -100, "max": 100},
        {"name": "i16", "node": "ns=2;s=Test.I16", "type": "int16", "min": -1000, "max": 1000},
        {"name": "u32", "node": "ns=2;s=Test.U32", "type": "uint32", "min": 0, "max": 4e9},
        {"name": "flag", "node": "ns=2;s=Test.Flag", "type": "bool"},
        {"name": "dbl", "node": "ns=2;s=Test.Dbl", "type": "float64", "min": 0, "max": 100},
    ]
    plant = RecordingPlant()
    env = opcua_server_factory(
        plant, points=[{**p, "protocol": "opcua", "writable": True} for p in pts]
    )
    tags = [{"name": p["name"], "node": p["node"], "writable": True} for p in pts]
    tags[1]["scale"] = 0.1  # engineering = raw * 0.1: writing 12.3 sends Int16 123
    tags[3]["type"] = "bool"
    driver, plans = _build(env.endpoint, [{"name": "w", "interval_ms": 5000, "tags": tags}])
    pt = {p.name: p for p in plans["w"].group.points}
    await driver.connect()
    try:
        await driver.write([(pt["f32"], 12.5), (pt["i16"], 12.3), (pt["u32"], 3_000_000_000),
                            (pt["flag"], True), (pt["dbl"], 42.25)])  # fmt: skip
        got = dict(plant.writes)
        assert got == {"f32": 12.5, "i16": 123, "u32": 3_000_000_000, "flag": True, "dbl": 42.25}
        assert isinstance(got["i16"], int) and isinstance(got["flag"], bool)
        await asyncio.sleep(0.12)
        result = await driver.read(plans["w"])
        assert result.values.tolist() == pytest.approx([12.5, 12.3, 3e9, 1.0, 42.25])

        n = len(plant.writes)
        with pytest.raises(WriteRefused, match="outside the range of Int16"):
            await driver.write([(pt["i16"], 4000.0)])  # raw 40000 does not fit an Int16
        with pytest.raises(WriteRefused, match="not a boolean"):
            await driver.write([(pt["flag"], 0.5)])
        assert len(plant.writes) == n  # refused locally, never sent
        with pytest.raises(WriteError) as err:
            await driver.write([(pt["dbl"], 150.0)])  # fits a Double, outside the EURange
        assert err.value.status == "BadOutOfRange"
        assert "dbl" in str(err.value) and "device=skid" in str(err.value)
    finally:
        await driver.close()


async def test_write_moves_the_plant_and_refuses_read_only_tags(opcua_server):
    driver, plans = _build(
        opcua_server.endpoint, [{"name": "all", "interval_ms": 5000, "tags": _tags()}]
    )
    pt = {p.name: p for p in plans["all"].group.points}
    await driver.connect()
    try:
        with pytest.raises(WriteRefused, match="not writable"):
            await driver.write([(pt["pump_flow"], 1.0)])
        await driver.write([(pt["pump_valve_position"], 65.0)])
        assert opcua_server.plant.values()["pump_valve_position"] == 65.0
    finally:
        await driver.write([(pt["pump_valve_position"], 70.0)])
        await driver.close()


def _secure(env, **over: Any) -> dict[str, Any]:
    c = env.certs
    d = {
        "security_policy": "Basic256Sha256",
        "security_mode": "SignAndEncrypt",
        "client_certificate": str(c.client_cert),
        "client_private_key": str(c.client_key),
        "server_certificate": str(c.server_cert),
        "username": USERNAME,
        "password_env": "EDGELOOP_TEST_OPCUA_PW",
    }
    d.update(over)
    return {k: v for k, v in d.items() if v is not None}


@pytest.fixture
def pw_env(monkeypatch):
    monkeypatch.setenv("EDGELOOP_TEST_OPCUA_PW", PASSWORD)


async def test_secure_connect_with_pinned_certificate(opcua_secure_server, pw_env):
    env = opcua_secure_server
    driver, plans = _build(
        env.endpoint, [{"name": "all", "interval_ms": 5000, "tags": _tags()}], **_secure(env)
    )
    await driver.connect()
    try:
        assert driver._client.security_policy.Mode.name == "SignAndEncrypt"
        result = await driver.read(plans["all"])
        _assert_tracks_plant(result, [p.name for p in POINTS], env.plant.values())
    finally:
        await driver.close()


@pytest.mark.parametrize(
    ("policy", "mode"), [("Aes128Sha256RsaOaep", "Sign"), ("Aes256Sha256RsaPss", "SignAndEncrypt")]
)
async def test_secure_connect_with_trust_dir_and_password_file(
    opcua_secure_server, tmp_path, policy, mode
):
    env = opcua_secure_server
    trust = tmp_path / "trusted"
    trust.mkdir()
    (trust / "rogue.pem").write_bytes(env.certs.rogue_cert.read_bytes())
    (trust / "plc.pem").write_bytes(env.certs.server_cert.read_bytes())
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    sec = _secure(env, security_policy=policy, security_mode=mode, server_certificate=None,
                  trust_dir=str(trust), password_env=None, password_file=str(pw))  # fmt: skip
    driver, plans = _build(
        env.endpoint, [{"name": "all", "interval_ms": 5000, "tags": _tags()}], **sec
    )
    await driver.connect()
    try:
        result = await driver.read(plans["all"])
        assert (result.quality == Quality.GOOD).all()
    finally:
        await driver.close()


async def test_wrong_pinned_certificate_is_refused(opcua_secure_server, pw_env):
    env = opcua_secure_server
    sec = _secure(env, server_certificate=str(env.certs.rogue_cert))
    driver, _ = _build(env.endpoint, [{"name": "all", "interval_ms": 5000, "tags": _tags()}], **sec)
    with pytest.raises(ConnectError) as err:
        await driver.connect()
    assert "does not match the pinned certificate" in str(err.value)
    assert err.value.status == "BadCertificateUntrusted" and err.value.device == "skid"
    assert not driver.connected


async def test_unknown_certificate_is_refused_with_trust_dir(opcua_secure_server, pw_env, tmp_path):
    env = opcua_secure_server
    trust = tmp_path / "trusted"
    trust.mkdir()
    (trust / "other.pem").write_bytes(env.certs.rogue_cert.read_bytes())
    sec = _secure(env, server_certificate=None, trust_dir=str(trust))
    driver, _ = _build(env.endpoint, [{"name": "all", "interval_ms": 5000, "tags": _tags()}], **sec)
    with pytest.raises(ConnectError, match=r"not trusted.*copy its certificate"):
        await driver.connect()


async def test_wrong_password_is_refused_with_a_clear_error(opcua_secure_server, monkeypatch):
    env = opcua_secure_server
    monkeypatch.setenv("EDGELOOP_TEST_OPCUA_PW", "not-the-password")
    driver, _ = _build(
        env.endpoint, [{"name": "all", "interval_ms": 5000, "tags": _tags()}], **_secure(env)
    )
    with pytest.raises(ConnectError) as err:
        await driver.connect()
    assert f"refused user {USERNAME!r}" in str(err.value)
    assert err.value.status in ("BadUserAccessDenied", "BadIdentityTokenRejected")
    assert isinstance(err.value.__cause__, Exception)

    monkeypatch.delenv("EDGELOOP_TEST_OPCUA_PW")
    with pytest.raises(ConnectError, match="EDGELOOP_TEST_OPCUA_PW is not set"):
        await driver.connect()


async def test_unreachable_server_is_a_connect_error():
    from tests.fixtures.ports import free_port

    driver, plans = _build(f"opc.tcp://127.0.0.1:{free_port()}/x",
                           [{"name": "all", "interval_ms": 5000, "tags": _tags()}])  # fmt: skip
    with pytest.raises(ConnectError, match=r"cannot reach|failed"):
        await driver.connect()
    with pytest.raises(ConnectError, match="not connected"):
        await driver.read(plans["all"])


async def _until(pred, timeout_s: float = 10.0, step_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = await pred()
        if got:
            return got
        await asyncio.sleep(step_s)
    raise AssertionError("condition not met in time")


async def test_server_restart_reconnects_with_a_fresh_client(opcua_server_factory):
    env = opcua_server_factory()
    groups = [
        {"name": "poll", "interval_ms": 5000, "tags": _tags(POINTS[:5])},
        {"name": "sub", "interval_ms": 100, "mode": "subscribe", "tags": _tags(POINTS[5:])},
    ]
    driver, plans = _build(env.endpoint, groups, timeout_s=0.05)
    await driver.connect()
    try:
        first_client = driver._client
        assert (await driver.read(plans["poll"])).quality.max() == Quality.GOOD
        env.server.stop()

        async def lost(plan):
            try:
                await driver.read(plan)
            except ConnectError:
                return True
            return False

        await _until(lambda: lost(plans["poll"]))
        await _until(lambda: lost(plans["sub"]))

        env.server.start()  # same port, new server process state

        async def reconnect():
            try:
                await driver.connect()  # what the acquirer does after its backoff
            except ConnectError:
                return False
            return True

        await _until(reconnect)
        assert driver._client is not first_client
        result = await driver.read(plans["poll"])
        _assert_tracks_plant(result, [p.name for p in POINTS[:5]], env.plant.values())
        seen = driver._subs["sub"].notifications
        await asyncio.sleep(0.5)
        result = await driver.read(plans["sub"])
        assert driver._subs["sub"].notifications > seen  # the subscription was re-created
        _assert_tracks_plant(result, [p.name for p in POINTS[5:]], env.plant.values())
    finally:
        await driver.close()


def test_values_are_float64_arrays(opcua_server):
    """Sync check of the ReadResult contract (a fresh loop, as `edgeloop read` would)."""

    async def go():
        driver, plans = _build(
            opcua_server.endpoint, [{"name": "all", "interval_ms": 5000, "tags": _tags()}]
        )
        await driver.connect()
        try:
            return await driver.read(plans["all"])
        finally:
            await driver.close()

    result = asyncio.run(go())
    assert result.values.dtype == np.float64 and result.quality.dtype == np.uint8
    assert result.values.shape == (len(POINTS),) and result.texts == {}


@pytest.mark.parametrize("reply", [None, b"HTTP/1.1 400 Bad Request\r\n\r\n", b"\x00" * 64])
async def test_silent_or_garbage_peer_is_a_bounded_connect_error(reply):
    """A TCP peer that never answers the Hello, or answers junk: connect fails in ~timeout_s
    and the driver closes its socket (the peer sees EOF), leaking nothing."""
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)  # the client's Hello
        if reply is not None:
            writer.write(reply)
            await writer.drain()
        await reader.read()  # until the client gives up and closes
        writer.close()
        await writer.wait_closed()
        closed.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    driver, _ = _build(f"opc.tcp://127.0.0.1:{port}/x",
                       [{"name": "all", "interval_ms": 5000, "tags": _tags()}],
                       timeout_s=0.3)  # fmt: skip
    t0 = time.monotonic()
    try:
        with pytest.raises(ConnectError):
            await driver.connect()
        assert time.monotonic() - t0 < 2.0
        assert not driver.connected
        await asyncio.wait_for(closed.wait(), 2.0)
    finally:
        server.close()
        await server.wait_closed()
        await driver.close()
