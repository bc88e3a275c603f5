"""Every number in the config is finite: NaN and infinity are refused in every section.

`check` must refuse whatever `run` would refuse, and a non-finite limit, gain or period
passes every range check (`nan > 0` is False, `inf > 0` True) and then breaks the component
at run time.  The rule lives once, in `drivers.configbase.StrictModel`.
"""

from __future__ import annotations

import math
import typing

import pytest
from pydantic import BaseModel, ValidationError

from agent.config import Config, ConfigError, parse_config
from drivers.configbase import StrictModel

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

LOOP = """\
control:
  loops:
    - name: l
      inputs: {pv: t}
      output: t
      setpoint: {value: 50}
      mode: manual
"""


def _refused(text: str, name: str = "plant.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, name)
    return str(info.value).splitlines()


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ("store: {retention_days: .inf}", "store.retention_days"),
        ("store: {max_mb: .inf}", "store.max_mb"),
        ("store: {retention_interval_s: .nan}", "store.retention_interval_s"),
        ("publish: {outbox: {max_mb: .inf}}", "publish.outbox.max_mb"),
        ("publish: {mqtt: {connect_timeout_s: .inf}}", "publish.mqtt.connect_timeout_s"),
        ("http: {request_timeout_s: .nan}", "http.request_timeout_s"),
        ("kernel: {defaults: {kalman_q: .inf}}", "kernel.defaults.kalman_q"),
        ("kernel: {tags: {t: {hampel_k: .nan}}}", "kernel.tags.t.hampel_k"),
        (LOOP + "      fallback: {kind: pid, kp: .nan}", "control.loops[0].fallback.kp"),
        (LOOP + "      output_min: -.inf", "control.loops[0].output_min"),
        (LOOP + "      output_max: .inf", "control.loops[0].output_max"),
        (
            LOOP + "      interlocks: {max_input_age_periods: .inf}",
            "control.loops[0].interlocks.max_input_age_periods",
        ),
    ],
)
def test_non_finite_numbers_are_refused_in_every_section(extra: str, path: str) -> None:
    lines = _refused(MINIMAL + extra + "\n")
    assert any(f": {path}: must be a finite number" in line for line in lines), lines


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN", "1e999"])
def test_non_finite_tag_fields_are_refused(value: str) -> None:
    for key in ("min", "max", "scale", "offset", "max_rate_per_s"):
        text = MINIMAL.replace("writable: true, min: 0, max: 100}", f"{key}: {value}}}")
        assert _refused(text) == [
            f"plant.yaml:9: devices[0].poll_groups[0].tags[0].{key}: must be a finite number"
        ]


def _float_fields(model: type[BaseModel], seen: set[type]) -> list[tuple[type, str]]:
    """(model, field) for every float field of `model` and of the models it contains."""
    out: list[tuple[type, str]] = []
    if model in seen:
        return out
    seen.add(model)
    for name, info in model.model_fields.items():
        stack = [info.annotation]
        while stack:
            tp = stack.pop()
            if tp is float:
                out.append((model, name))
            elif isinstance(tp, type) and issubclass(tp, BaseModel):
                out += _float_fields(tp, seen)
            else:
                stack += list(typing.get_args(tp))
    return out


def test_every_float_field_of_every_model_refuses_nan_and_inf() -> None:
    fields = _float_fields(Config, set())
    assert len(fields) > 40  # tags, devices, kernel, control, store, publish, http
    for model, name in fields:
        assert issubclass(model, StrictModel), model
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(ValidationError) as info:
                model.__pydantic_validator__.validate_assignment(model.model_construct(), name, bad)
            kinds = {e["type"] for e in info.value.errors()}
            assert "finite_number" in kinds, (model.__name__, name, kinds)
