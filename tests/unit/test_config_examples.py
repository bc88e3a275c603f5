"""Shipped YAML and generated artefacts stay true: examples, default config, schema, docs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.commands.schema import json_schema, markdown_reference, render_json
from agent.config import ConfigError, load_config
from agent.tags import compile_config
from drivers.modbus_config import ModbusTag
from drivers.opcua_config import OpcUaTag
from hw_sim.pointmap import POINTS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "config/examples").glob("*.yaml"))
BEGIN = "<!-- BEGIN GENERATED REFERENCE (edgeloop schema --markdown) -->"
END = "<!-- END GENERATED REFERENCE -->"


def test_there_is_an_example_per_feature() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {
        "modbus_tcp",
        "modbus_rtu",
        "multi_unit",
        "byte_word_orders",
        "opcua_poll",
        "opcua_subscribe",
        "opcua_secure",
        "multi_device",
        "kernel_tuning",
        "control_shadow",
        "mqtt_tls",
        "sparkplug",
        "json_flat",
        "history_retention",
        "http_token",
    } <= names


SECRET_KEYS = {
    "password_env",
    "password_file",
    "bearer_token_env",
    "bearer_token_file",
    "ca_file",
    "cert_file",
    "key_file",
    "client_certificate",
    "client_private_key",
    "server_certificate",
    "trust_dir",
}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_loads_and_compiles(path: Path) -> None:
    text = path.read_text()
    assert text.lstrip().startswith("#"), "examples explain themselves in a comment header"
    # the secrets and certificates the examples name live on the gateway, not here
    compiled = compile_config(load_config(path, check_files=False))
    assert len(compiled.table) > 0
    for g in compiled.groups:
        if compiled.devices[g.device].enabled:
            assert (g.device, g.name) in compiled.plans


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_only_miss_the_secrets_and_certificates_of_the_gateway(path: Path) -> None:
    """With files checked (as `check` does), an example fails only on the files and
    environment variables it names, each on its own line."""
    try:
        load_config(path)
    except ConfigError as e:
        for issue in e.issues:
            assert issue.path.rsplit(".", 1)[-1] in SECRET_KEYS, issue
            assert "cannot read" in issue.message or "is not set" in issue.message, issue


def test_examples_pass_check_where_their_secrets_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / "edgeloop_http").write_text("a-long-random-token\n")
    monkeypatch.setenv("EDGELOOP_MQTT_PASSWORD", "pw")
    for name in ("http_token", "sparkplug"):
        compile_config(load_config(ROOT / "config/examples" / f"{name}.yaml"))


def test_default_config_serves_every_point_of_the_simulator() -> None:
    cfg = load_config(ROOT / "config/edgeloop.yaml")
    tags: dict[str, tuple[object, object]] = {}
    for dev in cfg.devices:
        for g in dev.poll_groups:
            for t in g.tags:
                tags[t.name] = (dev, t)
    assert set(tags) == {p.name for p in POINTS}
    for p in POINTS:
        dev, t = tags[p.name]
        assert dev.driver == p.protocol, p.name
        if isinstance(t, ModbusTag):
            unit = dev.unit_id if t.unit_id is None else t.unit_id
            got = (
                t.table,
                t.address,
                unit,
                t.dtype,
                t.byte_order or dev.byte_order,
                t.word_order or dev.word_order,
                t.bit,
                t.length_registers,
                t.scale,
            )
            want = (
                p.table,
                p.address,
                p.unit_id,
                p.type,
                p.byte_order,
                p.word_order,
                p.bit,
                p.length_registers,
                p.scale,
            )
            assert got == want, p.name
        else:
            assert isinstance(t, OpcUaTag)
            assert (t.node, t.type) == (p.node, p.type), p.name
        assert t.writable == p.writable, p.name
        if t.writable and p.type not in ("bool", "bit"):
            assert (t.min, t.max) == (p.min, p.max), p.name  # the write bounds


def test_committed_schema_is_current() -> None:
    committed = (ROOT / "config/edgeloop.schema.json").read_text()
    assert committed == render_json(), (
        "config/edgeloop.schema.json is stale: run `make schema` "
        "(edgeloop schema > config/edgeloop.schema.json)"
    )


def test_schema_describes_the_yaml_contract() -> None:
    schema = json_schema()
    defs = schema["$defs"]
    assert schema["required"] == ["devices"]
    assert set(defs["ModbusTag"]["properties"]) >= {"table", "address", "type", "bit", "unit_id"}
    assert defs["ModbusTag"]["additionalProperties"] is False
    assert defs["ModbusTag"]["properties"]["address"]["maximum"] == 65535
    assert "password" not in defs["OpcUaDevice"]["properties"]
    devices = schema["properties"]["devices"]["items"]
    # if/then per driver, not OpenAPI's `discriminator` (that JSON Schema validators ignore)
    assert "discriminator" not in devices and "oneOf" not in devices
    assert [b["if"]["properties"]["driver"]["const"] for b in devices["allOf"]] == [
        "modbus",
        "opcua",
        "csv",
    ]
    json.dumps(schema)  # serialisable as is


def test_docs_reference_is_generated_from_the_models() -> None:
    doc = (ROOT / "docs/configuration.md").read_text()
    assert BEGIN in doc and END in doc
    embedded = doc.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert embedded == markdown_reference().strip(), (
        "docs/configuration.md is stale: paste `edgeloop schema --markdown` between the markers"
    )
