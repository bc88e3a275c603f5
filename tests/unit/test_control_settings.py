"""The `control:` YAML section: validation and the cross-check against the tags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.control.settings import ControlConfig, LoopConfig, cross_check


@dataclass
class Ref:
    writable: bool
    min: float | None = 0.0
    max: float | None = 100.0


TAGS = {
    "tank_temp": Ref(False, 0, 120),
    "inlet_flow": Ref(False),
    "inlet_temp": Ref(False),
    "heater_power": Ref(True),
    "heartbeat": Ref(True, 0, 65535),
    "temp_setpoint": Ref(True),
}
LOOP = {
    "name": "tank_temperature",
    "period_ms": 500,
    "model": "heater_policy.tflite",
    "inputs": {"pv": "tank_temp", "flow": "inlet_flow", "inlet_temp": "inlet_temp"},
    "output": "heater_power",
    "setpoint": {"value": 55.0, "min": 30.0, "max": 80.0},
    "heartbeat": {"tag": "heartbeat"},
}


def _cfg(**over: object) -> ControlConfig:
    return ControlConfig.model_validate({"loops": [{**LOOP, **over}]})


def test_defaults_and_fallback_kinds() -> None:
    lp = _cfg().loops[0]
    assert lp.mode == "shadow"
    assert lp.fallback.kind == "pid" and lp.fallback.kp > 0
    assert _cfg(fallback={"kind": "hold"}).loops[0].fallback.kind == "hold"
    assert _cfg(fallback={"kind": "fixed", "value": 0}).loops[0].fallback.value == 0


@pytest.mark.parametrize(
    "over, needle",
    [
        ({"inputs": {"flow": "inlet_flow"}}, "pv"),
        ({"setpoint": {"value": 1.0, "tag": "temp_setpoint"}}, "exactly one"),
        ({"setpoint": {"value": 90.0, "max": 80.0}}, "outside"),
        ({"mode": "auto", "model": None}, "needs a model"),
        ({"fallback": {"kind": "pid", "ti_s": 0}}, "greater than 0"),
        ({"fallback": {"kind": "bang-bang"}}, "kind"),
        ({"mode": "cruise"}, "mode"),
        ({"period_ms": 5}, "period_ms"),
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_invalid_loops_are_rejected(over: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        _cfg(**over)


def test_duplicate_names_and_outputs_rejected() -> None:
    with pytest.raises(ValidationError, match="duplicate loop names"):
        ControlConfig.model_validate({"loops": [LOOP, LOOP]})
    with pytest.raises(ValidationError, match="same output"):
        ControlConfig.model_validate({"loops": [LOOP, {**LOOP, "name": "other"}]})


def test_cross_check_clean_config() -> None:
    assert cross_check(_cfg(), TAGS) == []


def test_cross_check_reports_each_problem_with_its_path() -> None:
    cfg = _cfg(
        inputs={"pv": "tank_tmp", "flow": "inlet_flow", "inlet_temp": "inlet_temp"},
        output="tank_temp",
        setpoint={"tag": "nope"},
        heartbeat={"tag": "inlet_flow"},
    )
    got = dict(cross_check(cfg, TAGS))
    assert "unknown tag 'tank_tmp'" in got["control.loops[0].inputs.pv"]
    assert "not writable" in got["control.loops[0].output"]
    assert "unknown tag 'nope'" in got["control.loops[0].setpoint.tag"]
    assert "input 'flow' of loop" in got["control.loops[0].heartbeat.tag"]


def test_cross_check_model_against_its_card() -> None:
    got = dict(cross_check(_cfg(inputs={"pv": "tank_temp"}, period_ms=200), TAGS))
    assert "flow" in got["control.loops[0].inputs"]
    assert "period_ms=500" in got["control.loops[0].period_ms"]
    got = dict(cross_check(_cfg(model="no_such_model.tflite"), TAGS))
    assert "not found" in got["control.loops[0].model"]


def test_cross_check_unbounded_output() -> None:
    tags = {**TAGS, "heater_power": Ref(True, None, None)}
    got = dict(cross_check(_cfg(), tags))
    assert "min and max" in got["control.loops[0].output"]
    assert cross_check(_cfg(output_min=0.0, output_max=80.0), tags) == []


def test_loop_period_property() -> None:
    assert LoopConfig.model_validate({**LOOP, "period_ms": 250}).period_s == 0.25


def test_check_loads_the_model_as_run_does(tmp_path, capsys) -> None:
    """Issue 11 item 10: a corrupt model passed `check`, then `run` exited 1 (restart loop)."""
    from agent.cli import main
    from agent.control.policy import MODELS_DIR

    case = Path(__file__).parent.parent / "cases" / "control_heartbeat_float" / "config.yaml"
    text = case.read_text().replace("      heartbeat: {tag: safe_power}\n", "")
    text = text.replace("inputs: {pv: temp}", "inputs: {pv: temp, flow: temp, inlet_temp: temp}")
    text = text.replace("mode: manual", "mode: shadow\n      model: broken.tflite")
    (tmp_path / "config.yaml").write_text(text)
    (tmp_path / "broken.json").write_text((MODELS_DIR / "heater_policy.json").read_text())
    (tmp_path / "broken.tflite").write_bytes(b"TFL3" + bytes(range(256)) * 8)
    assert main(["check", str(tmp_path / "config.yaml")]) == 78
    err = capsys.readouterr().err
    assert "control.loops[0].model: model broken.tflite does not load" in err
    # the same file with the shipped model passes
    (tmp_path / "broken.tflite").write_bytes((MODELS_DIR / "heater_policy.tflite").read_bytes())
    assert main(["check", str(tmp_path / "config.yaml")]) == 0
