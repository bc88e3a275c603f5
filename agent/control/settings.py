"""The `control:` YAML section: closed loops, each a model inside a safety envelope.

```yaml
control:
  loops:
    - name: tank_temperature
      period_ms: 500
      model: heater_policy.tflite        # shipped name, or a path relative to the config file
      inputs: {pv: tank_temp, flow: inlet_flow, inlet_temp: inlet_temp}
      output: heater_power               # a writable tag
      setpoint: {value: 55.0, min: 30.0, max: 80.0}   # or {tag: temp_setpoint}
      mode: shadow                       # off | manual | shadow | auto
      fallback: {kind: pid}              # SIMC defaults for the simulated heater; or kp/ti_s/td_s
      interlocks: {max_input_age_periods: 3, healthy_s: 10}
      heartbeat: {tag: heartbeat}
```
`inputs` maps the model card's signal roles to tags; `pv` is the controlled measurement every
loop needs (the PID uses it too).  Every default lives here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from agent.configbase import StrictModel

Mode = Literal["off", "manual", "shadow", "auto"]

# SIMC tuning of the simulated heater at its nominal point (10 L/min, 20 degC inlet, 55 degC);
# derivation in docs/control.md and `agent.control.tuning`.
DEFAULT_KP = 2.7  # % per K
DEFAULT_TI_S = 17.8


class PidFallback(StrictModel):
    """PID (ISA form) with derivative on measurement, filtered, and back-calculation."""

    kind: Literal["pid"] = "pid"
    kp: float = Field(DEFAULT_KP, description="proportional gain, output units per pv unit")
    ti_s: float = Field(DEFAULT_TI_S, gt=0, description="integral time; large = almost P-only")
    td_s: float = Field(0.0, ge=0, description="derivative time (on measurement)")
    derivative_filter: float = Field(0.1, gt=0, le=1, description="Tf = derivative_filter*td_s")
    tt_s: float | None = Field(None, gt=0, description="anti-windup tracking time; None = ti_s")
    direct_acting: bool = Field(False, description="True if raising the output raises pv less")


class HoldFallback(StrictModel):
    """Hold the last written output."""

    kind: Literal["hold"]


class FixedFallback(StrictModel):
    """Write a fixed safe value."""

    kind: Literal["fixed"]
    value: float


Fallback = Annotated[PidFallback | HoldFallback | FixedFallback, Field(discriminator="kind")]


class SetpointConfig(StrictModel):
    """Setpoint source: a constant (`value`) or a tag; runtime changes are clamped to min/max."""

    value: float | None = None
    tag: str | None = None
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SetpointConfig:
        if (self.value is None) == (self.tag is None):
            raise ValueError("setpoint needs exactly one of `value` or `tag`")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("setpoint min is above max")
        if self.value is not None:
            lo = self.min if self.min is not None else self.value
            hi = self.max if self.max is not None else self.value
            if not lo <= self.value <= hi:
                raise ValueError("setpoint value is outside its min/max")
        return self


class InterlockConfig(StrictModel):
    """When the loop leaves the model for its fallback, and when it may return."""

    max_input_age_periods: float = Field(3.0, gt=0, description="older input -> fallback")
    healthy_s: float = Field(10.0, ge=0, description="inputs healthy this long before model")
    on_bad_quality: bool = True
    on_anomaly: bool = Field(True, description="kernel ANOMALOUS flag on an input -> fallback")
    on_write_failure: bool = True


class HeartbeatConfig(StrictModel):
    """A register the agent changes every `every_periods` so the PLC's watchdog can act."""

    tag: str
    every_periods: int = Field(1, ge=1)
    modulo: int = Field(65536, ge=2, description="counter wraps here (uint16 register)")


class LoopConfig(StrictModel):
    """One closed loop."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    period_ms: int = Field(500, ge=10, le=3_600_000)
    model: str | None = Field(None, description="shipped model name or path; None = PID only")
    inputs: dict[str, str] = Field(description="model signal role -> tag; must include pv")
    output: str
    setpoint: SetpointConfig
    mode: Mode = "shadow"
    fallback: Fallback = Field(default_factory=PidFallback)
    interlocks: InterlockConfig = Field(default_factory=InterlockConfig)
    heartbeat: HeartbeatConfig | None = None
    readback: bool = Field(False, description="read the output tag back after each write")
    output_min: float | None = Field(None, description="narrower than the tag's min, if set")
    output_max: float | None = None
    max_rate_per_s: float | None = Field(None, gt=0, description="None = unlimited")
    manual_output: float | None = Field(None, description="initial manual output")

    @model_validator(mode="after")
    def _check(self) -> LoopConfig:
        if "pv" not in self.inputs:
            raise ValueError("inputs must map `pv` (the controlled measurement) to a tag")
        if self.mode in ("shadow", "auto") and self.model is None:
            raise ValueError(f"mode {self.mode} needs a model")
        if (
            self.output_min is not None
            and self.output_max is not None
            and self.output_min >= self.output_max
        ):
            raise ValueError("output_min must be below output_max")
        return self

    @property
    def period_s(self) -> float:
        return self.period_ms / 1000.0


class ControlConfig(StrictModel):
    """Settings of the control component; every default lives here."""

    loops: list[LoopConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> ControlConfig:
        names = [lp.name for lp in self.loops]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate loop names: {sorted(dup)}")
        outs = [lp.output for lp in self.loops]
        dup = {n for n in outs if outs.count(n) > 1}
        if dup:
            raise ValueError(f"two loops write the same output tag: {sorted(dup)}")
        return self


def _writable(tag_index: Any, name: str) -> bool | None:
    """Whether `tag_index` says the tag is writable; None when it cannot tell."""
    info = tag_index.get(name) if hasattr(tag_index, "get") else None
    if info is None:
        return None
    w = info.get("writable") if isinstance(info, dict) else getattr(info, "writable", None)
    return None if w is None else bool(w)


def cross_check(cfg: Any, tag_index: Any) -> list[tuple[str, str]]:
    """Problems between `control:` and the tags: (yaml path, message) per problem.

    `cfg` is the root config (with `.control`) or a ControlConfig; `tag_index` maps tag
    name -> anything (an index, a Point, a dict with `writable`); writability is checked when
    the value says so, and again at run time against the tag table.
    """
    control = getattr(cfg, "control", cfg)
    problems: list[tuple[str, str]] = []
    names = set(tag_index)
    for i, lp in enumerate(getattr(control, "loops", [])):
        base = f"control.loops[{i}]"
        for role, tag in lp.inputs.items():
            if tag not in names:
                problems.append((f"{base}.inputs.{role}", f"unknown tag {tag!r}"))
        if lp.output not in names:
            problems.append((f"{base}.output", f"unknown tag {lp.output!r}"))
        elif _writable(tag_index, lp.output) is False:
            problems.append((f"{base}.output", f"tag {lp.output!r} is not writable"))
        elif lp.output_min is None or lp.output_max is None:
            ref = tag_index.get(lp.output) if hasattr(tag_index, "get") else None
            lo = lp.output_min if lp.output_min is not None else getattr(ref, "min", None)
            hi = lp.output_max if lp.output_max is not None else getattr(ref, "max", None)
            if ref is not None and (lo is None or hi is None):
                problems.append(
                    (
                        f"{base}.output",
                        f"tag {lp.output!r} needs min and max "
                        "(or set the loop's output_min/output_max)",
                    )
                )
        if lp.setpoint.tag is not None and lp.setpoint.tag not in names:
            problems.append((f"{base}.setpoint.tag", f"unknown tag {lp.setpoint.tag!r}"))
        if lp.heartbeat is not None:
            if lp.heartbeat.tag not in names:
                problems.append((f"{base}.heartbeat.tag", f"unknown tag {lp.heartbeat.tag!r}"))
            elif _writable(tag_index, lp.heartbeat.tag) is False:
                problems.append(
                    (f"{base}.heartbeat.tag", f"tag {lp.heartbeat.tag!r} is not writable")
                )
        if lp.model is not None:
            problems += _check_model(lp, base, getattr(cfg, "config_dir", None))
    return problems


def _check_model(lp: LoopConfig, base: str, config_dir: Any) -> list[tuple[str, str]]:
    """The model file and its card against the loop (card only: no interpreter here)."""
    import json

    from agent.control.policy import ModelError, parse_card, resolve_model_path

    try:
        path = resolve_model_path(lp.model or "", config_dir)
        card = json.loads(path.with_suffix(".json").read_text())
        signals, _ = parse_card(card, f"model card {path.with_suffix('.json').name}")
    except (ModelError, OSError, ValueError) as e:
        return [(f"{base}.model", str(e))]
    out = []
    missing = [s for s in signals if s not in lp.inputs]
    if missing:
        out.append((f"{base}.inputs", f"model {lp.model} reads signals {missing}; map them here"))
    if int(card.get("period_ms", -1)) != lp.period_ms:
        out.append(
            (
                f"{base}.period_ms",
                f"model {lp.model} was trained at period_ms={card.get('period_ms')}",
            )
        )
    return out
