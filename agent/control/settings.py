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
      interlocks: {max_input_age_periods: 3, healthy_s: 10, max_blind_s: 30}
      heartbeat: {tag: heartbeat}        # an integer register no loop writes or reads
      plc_trip: {tag: watchdog_tripped, applied: heater_power_fb}
      start_output: null                 # write-only output: the value to ramp from at start
```
`inputs` maps the model card's signal roles to tags; `pv` is the controlled measurement every
loop needs (the PID uses it too).  Every default lives here.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from drivers.configbase import StrictModel, tagged_union_for_editors

Mode = Literal["off", "manual", "shadow", "auto"]

# SIMC tuning of the simulated heater at its nominal point (10 L/min, 20 degC inlet, 55 degC);
# derivation in docs/control.md and `lab.heater_tuning`.
DEFAULT_KP = 2.7  # % per K
DEFAULT_TI_S = 17.8


class PidFallback(StrictModel):
    """PID (ISA form) with derivative on measurement, filtered, and back-calculation."""

    kind: Literal["pid"] = Field("pid", description="pid: a PID controller takes over.")
    kp: float = Field(DEFAULT_KP, description="proportional gain, output units per pv unit")
    ti_s: float = Field(DEFAULT_TI_S, gt=0, description="integral time in s; large = almost P-only")
    td_s: float = Field(0.0, ge=0, description="derivative time in s (on measurement); 0 = none")
    derivative_filter: float = Field(
        0.1, gt=0, le=1, description="derivative filter time as a share of td_s (Tf = this * td_s)"
    )
    tt_s: float | None = Field(
        None, gt=0, description="anti-windup tracking time in s; None = ti_s"
    )
    direct_acting: bool = Field(False, description="True if raising the output raises pv less")


class HoldFallback(StrictModel):
    """Hold the last written output."""

    kind: Literal["hold"] = Field(description="hold: keep writing the last output.")


class FixedFallback(StrictModel):
    """Write a fixed safe value."""

    kind: Literal["fixed"] = Field(description="fixed: write the safe `value` below.")
    value: float = Field(description="Safe output to write, in the output tag's unit.")


Fallback = Annotated[PidFallback | HoldFallback | FixedFallback, Field(discriminator="kind")]


class SetpointConfig(StrictModel):
    """Setpoint source: a constant (`value`) or a tag; runtime changes are clamped to min/max."""

    value: float | None = Field(None, description="Constant setpoint, in the pv's unit.")
    tag: str | None = Field(None, description="Tag whose value is the setpoint (instead of value).")
    min: float | None = Field(None, description="Lowest setpoint accepted at run time, pv unit.")
    max: float | None = Field(None, description="Highest setpoint accepted at run time, pv unit.")

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

    max_input_age_periods: float = Field(
        3.0, gt=0, description="input older than this many loop periods -> fallback"
    )
    healthy_s: float = Field(
        10.0, ge=0, description="seconds inputs must be healthy before the model takes over"
    )
    on_bad_quality: bool = Field(
        True, description="A bad-quality input sends the loop to fallback."
    )
    # which kernel alarms on an input move the loop to its fallback: `sensor_fault` (the
    # sensor is suspect: stuck, out of range, a spike burst, or its group disagrees), `any`
    # (also every other ANOMALOUS, e.g. a drift alarm from a measured disturbance stepping),
    # `off`; YAML true/false mean sensor_fault/off
    on_anomaly: Literal["sensor_fault", "any", "off"] = Field(
        "sensor_fault",
        description="kernel alarm on an input -> fallback: sensor_fault | any | off",
    )
    on_write_failure: bool = Field(
        True, description="A failed write of the output sends the loop to fallback."
    )
    max_blind_s: float = Field(
        30.0,
        gt=0,
        le=86_400,
        description="pv unusable this long -> stop the heartbeat so the PLC's watchdog acts",
    )

    @field_validator("on_anomaly", mode="before")
    @classmethod
    def _anomaly_bool(cls, v: Any) -> Any:
        """`true`/`false` from configs written before the kinds existed."""
        if v is True:
            return "sensor_fault"
        if v is False:
            return "off"
        return v


class HeartbeatConfig(StrictModel):
    """A register the agent changes every `every_periods` so the PLC's watchdog can act."""

    tag: str = Field(description="Writable integer tag the counter is written to.")
    every_periods: int = Field(
        1, ge=1, le=1_000_000, description="Loop periods between two heartbeat increments."
    )
    modulo: int = Field(65536, ge=2, description="counter wraps here (uint16 register)")


class PlcTripConfig(StrictModel):
    """The PLC's own trip indicator: while it is on the PLC, not the agent, sets the output.

    The loop then follows `applied` (the value the PLC really applies, e.g. a feedback
    register), so a reset continues from there; without `applied` it holds its last output.
    """

    tag: str = Field(description="a bool/number tag, non-zero while the PLC has tripped")
    applied: str | None = Field(None, description="tag of the output value the PLC applies")


class LoopConfig(StrictModel):
    """One closed loop."""

    name: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Loop name, unique; used in metrics, logs and /control/<name>.",
    )
    period_ms: int = Field(
        500, ge=10, le=3_600_000, description="Control period in ms; must match the model card."
    )
    model: str | None = Field(None, description="shipped model name or path; None = PID only")
    inputs: dict[str, str] = Field(description="model signal role -> tag; must include pv")
    output: str = Field(description="Writable tag the loop drives (the actuator).")
    setpoint: SetpointConfig = Field(description="Where the setpoint comes from, and its limits.")
    mode: Mode = Field(
        "shadow",
        description="off (writes nothing) | manual | shadow (the fallback writes, the model is "
        "only compared) | auto (the model writes).",
    )
    fallback: Fallback = Field(
        default_factory=PidFallback,
        description="What drives the output when the model may not: pid | hold | fixed.",
        json_schema_extra=tagged_union_for_editors("Kind of fallback: pid | hold | fixed."),
    )
    interlocks: InterlockConfig = Field(
        default_factory=InterlockConfig,
        description="Conditions that move the loop to its fallback and back.",
    )
    heartbeat: HeartbeatConfig | None = Field(
        None, description="Counter written for the PLC's watchdog; none when omitted."
    )
    readback: bool = Field(False, description="read the output tag back after each write")
    output_min: float | None = Field(None, description="narrower than the tag's min, if set")
    output_max: float | None = Field(None, description="narrower than the tag's max, if set")
    max_rate_per_s: float | None = Field(
        None, gt=0, description="largest output change, output unit per second; None = unlimited"
    )
    manual_output: float | None = Field(
        None,
        description="first output in manual mode, output unit; None = the last output (bumpless)",
    )
    start_output: float | None = Field(
        None,
        description="the output's assumed present value when it cannot be read (write-only "
        "register); the first writes ramp from here. None = write nothing until it is read",
    )
    plc_trip: PlcTripConfig | None = Field(
        None, description="The PLC's own trip indicator; the loop yields to the PLC while on."
    )

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

    loops: list[LoopConfig] = Field(
        default_factory=list, description="Closed loops, each with a unique name and output."
    )
    commission_dir: str | None = Field(
        None,
        description="where POST /control/<loop>/commission writes the model, card and report "
        "(None: a models/ folder beside the history database)",
    )

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


INTEGER_TYPES = {"int16": 32768, "uint16": 65536, "int32": 2**31, "uint32": 2**32}


def _ref(tag_index: Any, name: str) -> Any:
    return tag_index.get(name) if hasattr(tag_index, "get") else None


def _writable(tag_index: Any, name: str) -> bool | None:
    """Whether `tag_index` says the tag is writable; None when it cannot tell."""
    info = _ref(tag_index, name)
    if info is None:
        return None
    w = info.get("writable") if isinstance(info, dict) else getattr(info, "writable", None)
    return None if w is None else bool(w)


def output_bounds(
    lp: LoopConfig, tag_min: float | None, tag_max: float | None
) -> tuple[float | None, float | None]:
    """(lo, hi) of a loop's output: the tag's bounds narrowed by the loop's; None if open."""
    los = [v for v in (tag_min, lp.output_min) if v is not None and math.isfinite(v)]
    his = [v for v in (tag_max, lp.output_max) if v is not None and math.isfinite(v)]
    return (max(los) if los else None, min(his) if his else None)


def cross_check(cfg: Any, tag_index: Any) -> list[tuple[str, str]]:
    """Problems between `control:` and the tags: (yaml path, message) per problem.

    `cfg` is the root config (with `.control`) or a ControlConfig; `tag_index` maps tag
    name -> anything (an index, a Point, a dict with `writable`); writability is checked when
    the value says so, and again at run time against the tag table.  Everything the runner
    would refuse at start is refused here, so `check` and `run` agree.
    """
    control = getattr(cfg, "control", cfg)
    problems: list[tuple[str, str]] = []
    names = set(tag_index)
    loops = list(getattr(control, "loops", []))
    # who owns which tag: a loop writes its output, reads its inputs and setpoint tag
    owners: dict[str, str] = {}
    for lp in loops:
        owners.setdefault(lp.output, f"the output of loop {lp.name!r}")
        if lp.setpoint.tag is not None:
            owners.setdefault(lp.setpoint.tag, f"the setpoint tag of loop {lp.name!r}")
        for role, tag in lp.inputs.items():
            owners.setdefault(tag, f"input {role!r} of loop {lp.name!r}")
    for i, lp in enumerate(loops):
        base = f"control.loops[{i}]"
        for role, tag in lp.inputs.items():
            if tag not in names:
                problems.append((f"{base}.inputs.{role}", f"unknown tag {tag!r}"))
        ref = _ref(tag_index, lp.output)
        lo = hi = None
        if lp.output not in names:
            problems.append((f"{base}.output", f"unknown tag {lp.output!r}"))
        elif _writable(tag_index, lp.output) is False:
            problems.append((f"{base}.output", f"tag {lp.output!r} is not writable"))
        else:
            lo, hi = output_bounds(lp, getattr(ref, "min", None), getattr(ref, "max", None))
            if ref is not None and (lo is None or hi is None):
                problems.append(
                    (
                        f"{base}.output",
                        f"tag {lp.output!r} needs min and max "
                        "(or set the loop's output_min/output_max)",
                    )
                )
            elif lo is not None and hi is not None and lo >= hi:
                problems.append((f"{base}.output", f"output bounds are empty ({lo} .. {hi})"))
        for other in loops:
            if other is not lp and other.setpoint.tag == lp.output:
                problems.append(
                    (f"{base}.output", f"tag {lp.output!r} is the setpoint tag of {other.name!r}")
                )
            if lp.output in other.inputs.values():
                problems.append(
                    (f"{base}.output", f"tag {lp.output!r} is an input of loop {other.name!r}")
                )
        if lo is not None and hi is not None:
            fb = lp.fallback
            if isinstance(fb, FixedFallback) and not lo <= fb.value <= hi:
                problems.append(
                    (f"{base}.fallback.value", f"{fb.value} is outside the output's {lo} .. {hi}")
                )
            for key in ("start_output", "manual_output"):
                v = getattr(lp, key)
                if v is not None and not lo <= v <= hi:
                    problems.append((f"{base}.{key}", f"{v} is outside the output's {lo} .. {hi}"))
        if lp.setpoint.tag is not None and lp.setpoint.tag not in names:
            problems.append((f"{base}.setpoint.tag", f"unknown tag {lp.setpoint.tag!r}"))
        if lp.heartbeat is not None:
            problems += _check_heartbeat(lp.heartbeat, f"{base}.heartbeat", tag_index, owners)
        if lp.plc_trip is not None:
            for key in ("tag", "applied"):
                tag = getattr(lp.plc_trip, key)
                if tag is not None and tag not in names:
                    problems.append((f"{base}.plc_trip.{key}", f"unknown tag {tag!r}"))
                elif tag is not None and tag == lp.output:
                    problems.append(
                        (f"{base}.plc_trip.{key}", "must be a PLC status tag, not the output")
                    )
        if lp.model is not None:
            problems += _check_model(lp, base, getattr(cfg, "config_dir", None))
    hb_tags = [lp.heartbeat.tag for lp in loops if lp.heartbeat is not None]
    for i, lp in enumerate(loops):
        if lp.heartbeat is not None and hb_tags.count(lp.heartbeat.tag) > 1:
            problems.append(
                (f"control.loops[{i}].heartbeat.tag", "two loops share one heartbeat register")
            )
    return problems


def _check_heartbeat(
    hb: HeartbeatConfig, base: str, tag_index: Any, owners: dict[str, str]
) -> list[tuple[str, str]]:
    """A heartbeat is a counter in a register of its own: never an output, never analog."""
    if hb.tag not in tag_index:
        return [(f"{base}.tag", f"unknown tag {hb.tag!r}")]
    if hb.tag in owners:
        return [(f"{base}.tag", f"tag {hb.tag!r} is {owners[hb.tag]}; a heartbeat needs its own")]
    if _writable(tag_index, hb.tag) is False:
        return [(f"{base}.tag", f"tag {hb.tag!r} is not writable")]
    ref = _ref(tag_index, hb.tag)
    dtype = getattr(ref, "type", None)
    if dtype is None:
        return []
    span = INTEGER_TYPES.get(dtype)
    if span is None:
        return [
            (
                f"{base}.tag",
                f"tag {hb.tag!r} is {dtype}: a heartbeat counts, so it needs an integer "
                f"register ({', '.join(INTEGER_TYPES)})",
            )
        ]
    top = hb.modulo - 1
    tmax = getattr(ref, "max", None)
    tmin = getattr(ref, "min", None)
    if hb.modulo > span or (tmax is not None and top > tmax) or (tmin is not None and tmin > 0):
        return [
            (
                f"{base}.modulo",
                f"the counter runs 0 .. {top}, which tag {hb.tag!r} ({dtype}, "
                f"min {tmin}, max {tmax}) cannot hold",
            )
        ]
    return []


def _check_model(lp: LoopConfig, base: str, config_dir: Any) -> list[tuple[str, str]]:
    """The model file and its card against the loop; the interpreter loads it, as `run` does."""
    import json

    from agent.control.policy import ModelError, Policy, parse_card, resolve_model_path

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
    if not out:
        roles = ["pv"] + [r for r in lp.inputs if r != "pv"]
        try:
            Policy(path, signals=roles, period_ms=lp.period_ms)
        except (ModelError, OSError, ValueError, RuntimeError) as e:
            why = str(e).replace(str(path), path.name)  # same message on every machine
            out.append((f"{base}.model", f"model {lp.model} does not load: {why}"))
    return out
