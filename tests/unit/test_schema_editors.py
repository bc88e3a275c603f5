"""The committed JSON Schema works for editors: checked with an independent validator.

`config/edgeloop.schema.json` is what yaml-language-server (VS Code) and check-jsonschema
read through the modeline of every shipped YAML. These tests validate the shipped files
against the committed schema with the `jsonschema` package (not pydantic, which generated
it), show that a typical mistake is reported on the device that has it, and that every key
carries a description for the editor's hover.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from jsonschema.exceptions import ValidationError

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "config/edgeloop.schema.json"
SHIPPED = [*sorted((ROOT / "config/examples").glob("*.yaml")), ROOT / "config/edgeloop.yaml"]


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)  # the draft the file declares
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _errors(validator: jsonschema.protocols.Validator, doc: Any) -> list[ValidationError]:
    return sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))


def _show(errors: list[ValidationError]) -> str:
    return "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_schema_declares_draft_2020_12() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_yaml_is_valid_against_the_committed_schema(
    validator: jsonschema.protocols.Validator, path: Path
) -> None:
    text = path.read_text()
    assert text.startswith("# yaml-language-server: $schema="), "editors find the schema"
    modeline = text.splitlines()[0].split("$schema=", 1)[1].strip()
    assert (path.parent / modeline).resolve() == SCHEMA_PATH
    errors = _errors(validator, yaml.safe_load(text))
    assert not errors, _show(errors)


def _two_devices() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "config/examples/multi_device.yaml").read_text())


def _index(doc: dict[str, Any], driver: str) -> int:
    return next(i for i, d in enumerate(doc["devices"]) if d["driver"] == driver)


def test_modbus_device_without_host_is_reported_on_that_device(
    validator: jsonschema.protocols.Validator,
) -> None:
    doc = _two_devices()
    i = _index(doc, "modbus")
    del doc["devices"][i]["host"]
    errors = _errors(validator, doc)
    # exactly the real complaint, not "matches none of oneOf" nor the OPC UA model's
    assert len(errors) == 1, _show(errors)
    (e,) = errors
    assert list(e.absolute_path) == ["devices", i]
    assert e.validator == "required" and "'host'" in e.message


def test_rtu_device_without_serial_port_is_reported_on_that_device(
    validator: jsonschema.protocols.Validator,
) -> None:
    doc = yaml.safe_load((ROOT / "config/examples/modbus_rtu.yaml").read_text())
    del doc["devices"][0]["serial_port"]
    errors = _errors(validator, doc)
    assert len(errors) == 1, _show(errors)
    assert list(errors[0].absolute_path) == ["devices", 0]
    assert "'serial_port'" in errors[0].message


def test_unknown_key_in_an_opcua_device_is_reported_on_that_device(
    validator: jsonschema.protocols.Validator,
) -> None:
    doc = _two_devices()
    i = _index(doc, "opcua")
    doc["devices"][i]["endpoint_url"] = "opc.tcp://plc:4840"  # the key is `endpoint`
    errors = _errors(validator, doc)
    assert len(errors) == 1, _show(errors)
    (e,) = errors
    assert list(e.absolute_path) == ["devices", i]
    assert e.validator == "additionalProperties" and "'endpoint_url'" in e.message


def test_wrong_value_deep_in_a_device_points_at_the_key(
    validator: jsonschema.protocols.Validator,
) -> None:
    doc = _two_devices()
    i = _index(doc, "modbus")
    doc["devices"][i]["poll_groups"][0]["tags"][0]["address"] = 70000
    errors = _errors(validator, doc)
    assert len(errors) == 1, _show(errors)
    assert list(errors[0].absolute_path) == ["devices", i, "poll_groups", 0, "tags", 0, "address"]


def test_fallback_mistake_is_reported_on_the_fallback(
    validator: jsonschema.protocols.Validator,
) -> None:
    """The loop's `fallback` is a tagged union on `kind` too: same if/then treatment."""
    doc = yaml.safe_load((ROOT / "config/examples/control_shadow.yaml").read_text())
    doc["control"]["loops"][0]["fallback"] = {"kind": "fixed", "kp": 2.0}  # no value, a PID key
    errors = _errors(validator, doc)
    where = ["control", "loops", 0, "fallback"]
    assert [list(e.absolute_path) for e in errors] == [where, where], _show(errors)
    assert {e.validator for e in errors} == {"required", "additionalProperties"}


def test_unknown_driver_is_reported_once(validator: jsonschema.protocols.Validator) -> None:
    doc = _two_devices()
    doc["devices"][0]["driver"] = "profinet"
    errors = _errors(validator, doc)
    assert len(errors) == 1, _show(errors)
    assert list(errors[0].absolute_path) == ["devices", 0, "driver"]


def _properties(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        for key, sub in (node.get("properties") or {}).items():
            yield f"{where}.{key}", sub
        for key, sub in node.items():
            if key not in ("if", "then", "else"):  # conditions restate keys, not declare them
                yield from _properties(sub, f"{where}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from _properties(sub, f"{where}[{i}]")


def test_every_property_has_a_description() -> None:
    """Editors show the description on hover and in completion: none may be missing."""
    schema = json.loads(SCHEMA_PATH.read_text())
    props = list(_properties(schema))
    assert len(props) > 200
    missing = [where for where, sub in props if not str(sub.get("description", "")).strip()]
    assert not missing, f"{len(missing)} properties without a description:\n" + "\n".join(missing)
