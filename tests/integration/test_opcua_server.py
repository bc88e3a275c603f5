"""The simulated OPC UA server, checked with the plain asyncua client (no edgeloop code).

Covers: every OPC UA point of the map readable with and without encryption and with a
username/password; the browsable address space with EngineeringUnits/EURange; all secure
policies; refused logins; writes moving the plant; the simulator's write checks and
MaxNodesPerRead enforcement.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from asyncua import Client, ua
from asyncua.crypto import security_policies

from hw_sim.opcua_server import NAMESPACE_URI, unece_unit_id
from hw_sim.pointmap import opcua_points

POINTS = opcua_points()


async def _secure_client(
    env, policy: str = "Basic256Sha256", mode: str = "SignAndEncrypt"
) -> Client:
    c = Client(env.endpoint, timeout=5)
    c.application_uri = env.certs.client_uri
    await c.set_security(
        getattr(security_policies, f"SecurityPolicy{policy}"),
        str(env.certs.client_cert),
        str(env.certs.client_key),
        server_certificate=str(env.certs.server_cert),
        mode=getattr(ua.MessageSecurityMode, mode),
    )
    return c


async def _read_all(c: Client) -> dict[str, ua.DataValue]:
    nodes = [c.get_node(p.node) for p in POINTS]
    dvs = await c.read_attributes(nodes)
    return {p.name: dv for p, dv in zip(POINTS, dvs, strict=True)}


def _check_values(dvs: dict[str, ua.DataValue], plant_values: dict[str, float]) -> None:
    assert set(dvs) == {p.name for p in POINTS}
    for p in POINTS:
        dv = dvs[p.name]
        assert dv.StatusCode.is_good(), (p.name, dv.StatusCode)
        assert dv.Value.VariantType == ua.VariantType.Double
        v = dv.Value.Value
        assert p.min <= v <= p.max, (p.name, v)
        # the served value tracks the plant (refreshed every 50 ms; slow signals barely move)
        scale = max(1.0, abs(plant_values[p.name]))
        assert abs(v - plant_values[p.name]) / scale < 0.25, (p.name, v, plant_values[p.name])


async def test_unsecured_client_reads_every_point(opcua_server):
    async with Client(opcua_server.endpoint, timeout=5) as c:
        assert await c.get_namespace_index(NAMESPACE_URI) == 2
        dvs = await _read_all(c)
    _check_values(dvs, opcua_server.plant.values())


async def test_address_space_is_browsable_with_units_and_ranges(opcua_server):
    async with Client(opcua_server.endpoint, timeout=5) as c:
        skid = await c.nodes.objects.get_child(["2:PumpSkid"])
        folders = {(await f.read_browse_name()).Name: f for f in await skid.get_children()}
        assert set(folders) == {"Measurements", "Setpoints"}
        found = {}
        for folder_name, folder in folders.items():
            for var in await folder.get_children():
                found[var.nodeid.to_string()] = (folder_name, var)
        assert set(found) == {p.node for p in POINTS}
        for p in POINTS:
            folder_name, var = found[p.node]
            assert folder_name == ("Setpoints" if p.writable else "Measurements")
            eu = await (await var.get_child("0:EngineeringUnits")).read_value()
            rng = await (await var.get_child("0:EURange")).read_value()
            assert eu.DisplayName.Text == p.unit
            assert (rng.Low, rng.High) == (p.min, p.max)
            access = await var.read_attribute(ua.AttributeIds.UserAccessLevel)
            writable = bool(access.Value.Value & (1 << ua.AccessLevel.CurrentWrite))
            assert writable == p.writable, p.name
        flow = found["ns=2;s=Pump.Flow"][1]
        eu = await (await flow.get_child("0:EngineeringUnits")).read_value()
        assert eu.UnitId == unece_unit_id("MQH")


async def test_secure_user_reads_every_point(opcua_secure_server):
    env = opcua_secure_server
    c = await _secure_client(env)
    c.set_user(env.username)
    c.set_password(env.password)
    async with c:
        assert c.security_policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
        dvs = await _read_all(c)
    _check_values(dvs, env.plant.values())


@pytest.mark.parametrize("policy", ["Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"])
@pytest.mark.parametrize("mode", ["Sign", "SignAndEncrypt"])
async def test_every_secure_policy_connects(opcua_secure_server, policy, mode):
    env = opcua_secure_server
    c = await _secure_client(env, policy, mode)
    c.set_user(env.username)
    c.set_password(env.password)
    async with c:
        v = await c.get_node("ns=2;s=Pump.MotorCurrent").read_value()
    assert math.isfinite(v)


async def test_secure_server_refuses_anonymous_wrong_password_and_no_security(opcua_secure_server):
    env = opcua_secure_server
    c = await _secure_client(env)
    with pytest.raises(ua.UaStatusCodeError) as err:
        await c.connect()  # anonymous
    assert type(err.value).__name__ in (
        "BadIdentityTokenInvalid",
        "BadIdentityTokenRejected",
        "BadUserAccessDenied",
    )

    c = await _secure_client(env)
    c.set_user(env.username)
    c.set_password("wrong")
    with pytest.raises(ua.UaStatusCodeError) as err:
        await c.connect()
    assert type(err.value).__name__ in ("BadUserAccessDenied", "BadIdentityTokenRejected")

    endpoints = await Client(env.endpoint, timeout=5).connect_and_get_server_endpoints()
    assert endpoints and all(e.SecurityMode != ua.MessageSecurityMode.None_ for e in endpoints)


async def test_writes_move_the_plant(opcua_server):
    plant = opcua_server.plant
    async with Client(opcua_server.endpoint, timeout=5) as c:
        speed = c.get_node("ns=2;s=Pump.SpeedSetpoint")
        flow = c.get_node("ns=2;s=Pump.Flow")
        try:
            await speed.write_value(ua.Variant(80.0, ua.VariantType.Double))
            await asyncio.sleep(1.5)
            high = await flow.read_value()
            await speed.write_value(ua.Variant(30.0, ua.VariantType.Double))
            assert plant.values()["pump_speed_setpoint"] == 30.0
            await asyncio.sleep(1.0)
            low = await flow.read_value()
            assert await speed.read_value() == 30.0
        finally:
            await speed.write_value(ua.Variant(80.0, ua.VariantType.Double))
    assert low < 0.8 * high, (high, low)


async def test_server_checks_type_range_and_access_of_writes(opcua_server):
    plant = opcua_server.plant
    async with Client(opcua_server.endpoint, timeout=5) as c:
        valve = c.get_node("ns=2;s=Pump.ValvePosition")
        before = plant.values()["pump_valve_position"]
        with pytest.raises(ua.uaerrors.BadTypeMismatch):
            await valve.write_value(ua.Variant(55.0, ua.VariantType.Float))
        with pytest.raises(ua.uaerrors.BadOutOfRange):
            await valve.write_value(ua.Variant(150.0, ua.VariantType.Double))
        with pytest.raises(ua.uaerrors.BadNotWritable):
            await c.get_node("ns=2;s=Pump.Flow").write_value(ua.Variant(1.0, ua.VariantType.Double))
        assert plant.values()["pump_valve_position"] == before


async def test_forced_status_is_served(opcua_server):
    srv = opcua_server.server
    srv.call(
        lambda sim: sim.force_status("pump_fluid_temp", ua.StatusCodes.UncertainLastUsableValue)
    )
    try:
        await asyncio.sleep(0.15)
        async with Client(opcua_server.endpoint, timeout=5) as c:
            dv = await c.get_node("ns=2;s=Pump.FluidTemp").read_data_value(
                raise_on_bad_status=False
            )
        assert dv.StatusCode.is_uncertain()
    finally:
        srv.call(lambda sim: sim.force_status("pump_fluid_temp", None))


async def test_max_nodes_per_read_is_published_and_enforced(opcua_server_factory):
    env = opcua_server_factory(max_nodes_per_read=3)
    async with Client(env.endpoint, timeout=5) as c:
        limit = await c.get_node(
            ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead)
        ).read_value()
        assert limit == 3
        nodes = [c.get_node(p.node) for p in POINTS]
        assert len(await c.read_attributes(nodes[:3])) == 3
        with pytest.raises(ua.uaerrors.BadTooManyOperations):
            await c.read_attributes(nodes[:4])
    assert env.server.sim.read_sizes == [3]


async def test_sensor_dropout_is_served_as_bad_sensor_failure(opcua_server_factory):
    env = opcua_server_factory()
    plant = env.plant
    plant.inject(
        {"kind": "dropout", "signal": "pump_vibration_y", "at_s": plant.t_s, "duration_s": 1.0}
    )
    await asyncio.sleep(0.3)
    assert math.isnan(plant.values()["pump_vibration_y"])
    async with Client(env.endpoint, timeout=5) as c:
        dv = await c.get_node("ns=2;s=Pump.VibrationY").read_data_value(raise_on_bad_status=False)
        other = await c.get_node("ns=2;s=Pump.VibrationX").read_data_value()
    assert dv.StatusCode.value == ua.StatusCodes.BadSensorFailure
    assert dv.Value.Value is None  # Part 4 7.7.1: a Bad value is null
    assert other.StatusCode.is_good()
