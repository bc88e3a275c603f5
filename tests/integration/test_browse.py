"""`edgeloop browse` against real OPC UA servers on loopback: the hw_sim pump skid (plain and
secure) and a second server with nested folders, mixed types, duplicate names and arrays.

The printed YAML goes into a poll group as is; `edgeloop check` must accept it and
`edgeloop read` must then get good values through it.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import yaml
from asyncua import Server, ua

from agent.cli import main
from hw_sim.opcua_server import eu_information
from hw_sim.pointmap import opcua_points
from tests.fixtures.ports import free_port

POINTS = {p.node: p for p in opcua_points()}


def browse(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["browse", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _config(endpoint: str, tag_yaml: str, extra: str = "") -> str:
    return (
        "site: browse-test\n"
        "devices:\n"
        "  - name: skid\n"
        "    driver: opcua\n"
        f"    endpoint: {endpoint}\n"
        "    timeout_s: 2.0\n"
        f"{extra}"
        "    poll_groups:\n"
        "      - name: found\n"
        "        interval_ms: 5000\n"
        "        tags:\n"
        f"{tag_yaml}\n"
    )


def test_browse_finds_every_skid_node_with_type_unit_range_and_access(opcua_server, capsys):
    rc, out, err = browse(capsys, opcua_server.endpoint, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    tags = {t["node"]: t for t in doc["tags"]}
    assert set(tags) == set(POINTS)
    for node, p in POINTS.items():
        t = tags[node]
        assert t["type"] == p.type, node
        assert t["unit"] == p.unit, node
        assert (t["min"], t["max"]) == (p.min, p.max), node
        assert t["writable"] is bool(p.writable), node
        assert t["path"].startswith("PumpSkid/")
        assert isinstance(t["value"], float)
    assert doc["skipped"] == [] and doc["truncated"] is False
    names = [t["name"] for t in doc["tags"]]
    assert len(set(names)) == len(names)
    assert tags["ns=2;s=Pump.MotorCurrent"]["name"] == "pump_motor_current"


def test_browse_yaml_passes_check_and_read_gets_good_values(opcua_server, capsys, tmp_path):
    rc, out, err = browse(capsys, opcua_server.endpoint, "--yaml", "--indent", "10")
    assert rc == 0, err
    assert out.splitlines()[0].lstrip().startswith("#")
    path = tmp_path / "found.yaml"
    path.write_text(_config(opcua_server.endpoint, out.rstrip("\n")))
    assert main(["check", str(path)]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert main(["read", str(path), "--json"]) == 0, capsys.readouterr().err
    values = json.loads(capsys.readouterr().out)
    assert {v["quality"] for v in values.values()} == {"good"}
    assert len(values) == len(POINTS)
    plant = opcua_server.plant.values()
    by_node = {t["node"]: t["name"] for t in yaml.safe_load(out)}
    for node, p in POINTS.items():
        got = values[by_node[node]]
        assert got["unit"] == p.unit
        assert p.min <= got["value"] <= p.max
        assert math.isclose(got["value"], plant[p.name], rel_tol=0.3, abs_tol=1.0), p.name


def test_match_depth_root_and_node_budget(opcua_server, capsys):
    ep = opcua_server.endpoint
    rc, out, _ = browse(capsys, ep, "--yaml", "--match", "*setpoints/*")
    assert rc == 0
    tags = yaml.safe_load(out)
    assert {t["node"] for t in tags} == {n for n, p in POINTS.items() if p.writable}
    assert all(t["writable"] is True for t in tags)
    rc, out, err = browse(capsys, ep, "--json", "--depth", "2")  # PumpSkid/<folder>: no variables
    assert rc == 1 and json.loads(out)["tags"] == []
    rc, out, _ = browse(capsys, ep, "--json", "--root", "ns=2;s=PumpSkid.Measurements")
    assert {t["node"] for t in json.loads(out)["tags"]} == {
        n for n, p in POINTS.items() if not p.writable
    }
    rc, out, _ = browse(capsys, ep, "--yaml", "--root", "ns=2;s=Pump.Flow")  # a variable
    assert rc == 0
    assert yaml.safe_load(out) == [
        {"name": "pump_flow", "node": "ns=2;s=Pump.Flow", "type": "float64", "unit": "m3/h",
         "min": 0, "max": 80, "description": POINTS["ns=2;s=Pump.Flow"].description}
    ]  # fmt: skip
    rc, out, err = browse(capsys, ep, "--json", "--max-nodes", "5")
    doc = json.loads(out)
    assert doc["truncated"] is True and doc["visited"] == 5
    assert "stopped at --max-nodes 5" in err


def test_secure_endpoint_with_pinned_certificate_and_login(
    opcua_secure_server, capsys, monkeypatch, tmp_path
):
    env = opcua_secure_server
    c = env.certs
    monkeypatch.setenv("UA_PW", env.password)
    sec = [
        "--security-policy", "Basic256Sha256", "--security-mode", "SignAndEncrypt",
        "--cert", str(c.client_cert), "--key", str(c.client_key),
        "--server-cert", str(c.server_cert), "--user", env.username,
    ]  # fmt: skip
    rc, out, err = browse(capsys, env.endpoint, "--yaml", *sec, "--password-env", "UA_PW")
    assert rc == 0, err
    assert {t["node"] for t in yaml.safe_load(out)} == set(POINTS)
    # the same keys in a config: check accepts the found tags there too
    extra = (
        "    security_policy: Basic256Sha256\n    security_mode: SignAndEncrypt\n"
        f"    client_certificate: {c.client_cert}\n    client_private_key: {c.client_key}\n"
        f"    server_certificate: {c.server_cert}\n    username: {env.username}\n"
        "    password_env: UA_PW\n"
    )
    path = tmp_path / "secure.yaml"
    path.write_text(
        _config(env.endpoint, "\n".join("        " + x for x in out.splitlines()), extra)
    )
    assert main(["check", str(path)]) == 0, capsys.readouterr()
    capsys.readouterr()

    # the password from a file, the server certificate from a trust directory
    pw = tmp_path / "pw"
    pw.write_text(env.password + "\n")
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "server.pem").write_bytes(c.server_cert.read_bytes())
    no_pin = [*sec[:8], "--user", env.username, "--security-policy", "Aes256Sha256RsaPss"]
    rc, out, err = browse(
        capsys, env.endpoint, *no_pin, "--trust-dir", str(trust), "--password-file", str(pw)
    )
    assert rc == 0, err
    assert len(json.loads(browse(capsys, env.endpoint, *sec, "--password-file", str(pw),
                                 "--json")[1])["tags"]) == len(POINTS)  # fmt: skip

    monkeypatch.setenv("UA_PW", "wrong")
    rc, out, err = browse(capsys, env.endpoint, *sec, "--password-env", "UA_PW")
    assert rc == 3 and out == ""
    assert len(err.strip().splitlines()) == 1 and "refused user" in err
    rc, out, err = browse(capsys, env.endpoint, *sec[:-2], "--server-cert", str(c.rogue_cert))
    assert rc == 3 and "does not match the pinned certificate" in err
    rc, out, err = browse(capsys, env.endpoint)  # the server offers no security None
    assert rc == 3 and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "rc", "says"),
    [
        (["http://127.0.0.1:4840"], 2, "must start with opc.tcp://"),
        (["opc.tcp://127.0.0.1"], 2, "no port"),
        (["opc.tcp://127.0.0.1:99999"], 2, "bad endpoint"),
        (["opc.tcp://nosuchhost.invalid:4840"], 3, "cannot reach"),
        (["opc.tcp://127.0.0.1:{free}/x"], 3, "cannot reach"),
        (["opc.tcp://127.0.0.1:4840", "--root", "x=1"], 2, "bad --root"),
        (["opc.tcp://127.0.0.1:4840", "--user", "u", "--password-env", "P"], 2, "clear text"),
        (["opc.tcp://127.0.0.1:4840", "--security-mode", "Sign"], 2, "needs a --security-policy"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, argv, rc, says):
    argv = [a.replace("{free}", str(free_port())) for a in argv]
    got, out, err = browse(capsys, *argv, "--timeout", "2")
    assert got == rc
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert says in err and "Traceback" not in err


def test_unknown_root_on_a_live_server(opcua_server, capsys):
    rc, _out, err = browse(capsys, opcua_server.endpoint, "--root", "ns=2;s=NoSuchNode")
    assert rc == 1 and "cannot browse --root ns=2;s=NoSuchNode" in err


# --- a second server: nested folders, mixed types, duplicates ------------------------------


@pytest.fixture(scope="module")
def plant_server() -> Iterator[str]:
    """A small asyncua server laid out like a PLC's: Line1/Oven/Zone1|Zone2/Temperature
    (same browse name twice), an Int16 with EURange but no units, a Boolean, a String, a
    Byte, an enumeration, an array, a DateTime, one the server fails to read and an
    unreadable variable."""
    port = free_port()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    endpoint = f"opc.tcp://127.0.0.1:{port}/plant"

    async def start() -> Server:
        srv = Server()
        await srv.init()
        srv.set_endpoint(endpoint)
        idx = await srv.register_namespace("urn:test:plant")
        line = await srv.nodes.objects.add_folder(idx, "Line1")
        oven = await line.add_object(idx, "Oven")
        for zone, (lo, hi) in (("Zone1", (0.0, 300.0)), ("Zone2", (0.0, 450.0))):
            z = await oven.add_folder(idx, zone)
            t = await z.add_variable(
                ua.NodeId(f"Oven.{zone}.Temperature", idx), "Temperature",
                ua.Variant(21.5, ua.VariantType.Float),
            )  # fmt: skip
            await t.add_property(idx, "EngineeringUnits", eu_information("degC"),
                                 datatype=ua.ObjectIds.EUInformation)  # fmt: skip
            await t.add_property(idx, "EURange", ua.Range(Low=lo, High=hi),
                                 datatype=ua.ObjectIds.Range)  # fmt: skip
            sp = await z.add_variable(idx, "Setpoint", ua.Variant(200.0, ua.VariantType.Double))
            await sp.set_writable()
        count = await line.add_variable(idx, "PartCount", ua.Variant(7, ua.VariantType.Int16))
        await count.add_property(idx, "EURange", ua.Range(Low=0, High=30000),
                                 datatype=ua.ObjectIds.Range)  # fmt: skip
        await line.add_variable(idx, "Running", ua.Variant(True, ua.VariantType.Boolean))
        await line.add_variable(idx, "Recipe", ua.Variant("PX-12", ua.VariantType.String))
        await line.add_variable(idx, "Mode", ua.Variant(3, ua.VariantType.Byte))
        await line.add_variable(
            idx, "State", ua.Variant(0, ua.VariantType.Int32),
            datatype=ua.NodeId(ua.ObjectIds.ServerState),
        )  # fmt: skip
        await line.add_variable(idx, "Profile", ua.Variant([1.0, 2.0], ua.VariantType.Double))
        await line.add_variable(
            idx, "LastChange", ua.Variant(datetime(2026, 1, 1, tzinfo=UTC), ua.VariantType.DateTime)
        )
        # asyncua's server cannot encode a null DateTime: its whole Read fails (BadInternalError)
        await line.add_variable(idx, "Broken", ua.Variant(None, ua.VariantType.DateTime))
        hidden = await line.add_variable(idx, "Secret", ua.Variant(1.0, ua.VariantType.Double))
        await hidden.write_attribute(
            ua.AttributeIds.AccessLevel, ua.DataValue(ua.Variant(0, ua.VariantType.Byte))
        )
        await srv.start()
        return srv

    srv = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    yield endpoint
    asyncio.run_coroutine_threadsafe(srv.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)


def test_second_server_types_names_and_skips(plant_server, capsys, tmp_path):
    rc, out, err = browse(capsys, plant_server, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    by_path = {t["path"]: t for t in doc["tags"]}
    z1 = by_path["Line1/Oven/Zone1/Temperature"]
    z2 = by_path["Line1/Oven/Zone2/Temperature"]
    assert (z1["type"], z1["unit"], z1["min"], z1["max"]) == ("float32", "degC", 0, 300)
    assert (z2["min"], z2["max"]) == (0, 450)
    assert (z1["name"], z2["name"]) == ("zone1_temperature", "zone2_temperature")
    assert by_path["Line1/Oven/Zone1/Setpoint"]["writable"] is True
    assert z1["writable"] is False
    count = by_path["Line1/PartCount"]
    assert (count["type"], count["unit"], count["min"], count["max"]) == ("int16", "", 0, 30000)
    assert by_path["Line1/Running"]["type"] == "bool"
    assert by_path["Line1/Recipe"]["type"] == "string"
    assert by_path["Line1/Mode"]["type"] == "uint16"
    assert by_path["Line1/State"]["type"] == "int32"  # enumeration -> Int32
    skipped = {s["path"]: s["why"] for s in doc["skipped"]}
    assert skipped["Line1/Profile"] == "an array"
    assert "DateTime" in skipped["Line1/LastChange"]
    assert "not readable" in skipped["Line1/Secret"]
    assert "DateTime" in skipped["Line1/Broken"]  # read alone after the batch failed

    rc, out, err = browse(capsys, plant_server, "--yaml", "--indent", "10")
    path = tmp_path / "plant.yaml"
    path.write_text(_config(plant_server, out.rstrip("\n")))
    assert main(["check", str(path)]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert main(["read", str(path), "--json"]) == 0, capsys.readouterr().err
    values = json.loads(capsys.readouterr().out)
    assert values["recipe"]["value"] == "PX-12"
    assert values["running"]["value"] is True
    assert values["zone1_temperature"]["value"] == 21.5


def test_cli_help_lists_browse(capsys):
    with pytest.raises(SystemExit) as e:
        main(["browse", "--help"])
    assert e.value.code == 0
    assert "--security-policy" in capsys.readouterr().out
