"""Fault injection for the simulated plant, with a ground-truth log for scoring detection.

Two classes of fault:

* **sensor** faults change what is *served* for one signal, the plant is untouched:
  `spike` (offset for a short window), `stuck` (frozen at the value when it began), `drift`
  (growing offset), `noise_burst` (added Gaussian noise), `dropout` (NaN; int registers
  serve their invalid marker).
* **process** faults change the plant itself, so several signals move together:
  `outlet_valve` / `inlet_valve` (partly closed; `target: heater` closes the heater's inlet),
  `imbalance` (rotor imbalance), `cavitation`, `leak`, `element_degradation` (heater element).
  Their severity follows a `profile`: `step`, `ramp` (linear over `ramp_s`) or `exponential`
  (growing with time constant `tau_s`, reaching `magnitude` at the end of the window).

Faults come from a scenario YAML file (`load_scenario`) or are drawn at random from a seed
(`random_faults`); `python -m hw_sim.faults generate` writes a long random scenario for
detection benchmarks.  Each fault writes a `start` and an `end` JSONL record (sim seconds
and wall time); `read_ground_truth` merges them into intervals.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hw_sim import pointmap


class StrictModel(BaseModel):
    """Scenario models refuse unknown keys and non-finite numbers (the simulator keeps its
    own base: it never imports the agent)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )


SENSOR_KINDS = ("spike", "stuck", "drift", "noise_burst", "dropout")
PROCESS_KINDS = (
    "outlet_valve",
    "inlet_valve",
    "imbalance",
    "cavitation",
    "leak",
    "element_degradation",
)
ALL_KINDS = SENSOR_KINDS + PROCESS_KINDS

# Signals a sensor fault may target: the measured values of the map (not commands/status).
MEASURED_SIGNALS: tuple[str, ...] = tuple(
    p.name
    for p in pointmap.POINTS
    if p.source is None
    and not p.writable
    and p.type in ("float32", "float64", "int16")
    and p.name not in ("energy_kwh", "flow_total_m3")
)
# The loop plants' measured signals (pv, disturbance, applied output): sensor faults may
# target them when the loop is enabled; random faults never draw them (so the random
# schedule of a seed is the same with or without loops).
LOOP_MEASURED_SIGNALS: tuple[str, ...] = tuple(
    p.name for p in pointmap.loop_points() if p.table == "input" and p.type == "float32"
)

_PUMP_HYDRAULIC = ("pump_flow", "pump_discharge_pressure", "pump_motor_current")
# Signals each process fault visibly moves (for the ground truth).
PROCESS_SIGNALS: dict[str, tuple[str, ...]] = {
    "outlet_valve": (*_PUMP_HYDRAULIC, "pump_vibration_x", "pump_vibration_y"),
    "inlet_valve": (*_PUMP_HYDRAULIC, "pump_vibration_x", "pump_vibration_y"),
    "inlet_valve@heater": ("inlet_flow", "tank_temp"),
    "imbalance": ("pump_vibration_x", "pump_vibration_y"),
    "cavitation": (*_PUMP_HYDRAULIC, "pump_vibration_x", "pump_vibration_y"),
    "leak": _PUMP_HYDRAULIC,
    "element_degradation": ("element_current", "tank_temp"),
}
# Default magnitudes of process faults (severity units: fraction closed, mm/s, 0..1).
PROCESS_DEFAULT_MAGNITUDE = {
    "outlet_valve": 0.5,
    "inlet_valve": 0.7,
    "imbalance": 5.0,
    "cavitation": 0.85,
    "leak": 0.5,
    "element_degradation": 0.4,
}


def served_points(signal: str) -> list[str]:
    """The point names serving `signal`: itself and its Modbus mirror, if any."""
    return [p.name for p in pointmap.ALL_BY_NAME.values() if p.signal == signal]


def _span(signal: str) -> float:
    p = pointmap.ALL_BY_NAME[signal]
    if p.min is None or p.max is None:
        return 1.0
    return float(p.max - p.min)


# --- scenario file -------------------------------------------------------------------------


class FaultSpec(StrictModel):
    """One fault: kind, window in sim seconds, and its parameters."""

    kind: Literal[
        "spike",
        "stuck",
        "drift",
        "noise_burst",
        "dropout",
        "outlet_valve",
        "inlet_valve",
        "imbalance",
        "cavitation",
        "leak",
        "element_degradation",
    ]
    at_s: float = Field(ge=0.0)
    duration_s: float | None = Field(default=None, gt=0.0)  # None: until the run ends
    signal: str | None = None  # sensor faults: the measured signal (point name)
    magnitude: float | None = None  # engineering units (sensor) or severity (process)
    rate_per_s: float | None = None  # drift
    sigma: float | None = None  # noise_burst
    profile: Literal["step", "ramp", "exponential"] = "step"
    ramp_s: float | None = Field(default=None, gt=0.0)
    tau_s: float | None = Field(default=None, gt=0.0)
    target: Literal["pump", "heater"] = "pump"  # inlet_valve only

    @model_validator(mode="after")
    def _check(self) -> FaultSpec:
        if self.kind in SENSOR_KINDS:
            if self.signal is None:
                raise ValueError(f"sensor fault {self.kind!r} needs `signal`")
            if self.signal not in MEASURED_SIGNALS + LOOP_MEASURED_SIGNALS:
                raise ValueError(
                    f"signal {self.signal!r} is not a measured signal; "
                    f"one of: {', '.join(MEASURED_SIGNALS + LOOP_MEASURED_SIGNALS)}"
                )
        elif self.signal is not None:
            raise ValueError(f"process fault {self.kind!r} takes no `signal`")
        if self.target == "heater" and self.kind != "inlet_valve":
            raise ValueError("`target: heater` applies to inlet_valve only")
        return self

    @property
    def end_s(self) -> float:
        return math.inf if self.duration_s is None else self.at_s + self.duration_s


class Event(StrictModel):
    """A scheduled disturbance or command change (not a fault: not in the ground truth)."""

    at_s: float = Field(ge=0.0)
    set: dict[str, float]

    @model_validator(mode="after")
    def _check(self) -> Event:
        bad = set(self.set) - set(EVENT_KEYS)
        if bad:
            raise ValueError(f"unknown event keys {sorted(bad)}; allowed: {list(EVENT_KEYS)}")
        return self


EVENT_KEYS = (
    "inlet_flow",
    "inlet_temp",
    "ambient_temp",
    "pump_speed_setpoint",
    "pump_valve_position",
    "surge_draw_flow",  # loop plants (ignored when the loop is not enabled)
    "exchanger_flow",
)


class RandomFaults(StrictModel):
    """Draw faults at random (from the scenario seed) in addition to the listed ones."""

    mean_interval_s: float = Field(default=600.0, gt=0.0)
    min_duration_s: float = Field(default=20.0, gt=0.0)
    max_duration_s: float = Field(default=300.0, gt=0.0)
    kinds: list[str] = Field(default_factory=lambda: list(ALL_KINDS))
    duration_s: float = Field(default=86400.0, gt=0.0)  # horizon to draw over


class Scenario(StrictModel):
    """A scenario file: disturbances (`events`) and `faults` on a sim-time schedule."""

    name: str = "scenario"
    description: str = ""
    seed: int | None = None  # overrides --seed when set
    duration_s: float | None = None  # informational: how long the scenario is meant to run
    heater_disturbances: bool = True  # the heater's own random disturbance schedule
    events: list[Event] = Field(default_factory=list)
    faults: list[FaultSpec] = Field(default_factory=list)
    random: RandomFaults | None = None


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML file; raises ValueError naming the file."""
    text = Path(path).read_text()
    try:
        return Scenario.model_validate(yaml.safe_load(text) or {})
    except Exception as exc:  # pydantic ValidationError or YAML error, with the file named
        raise ValueError(f"{path}: invalid scenario: {exc}") from exc


def random_faults(
    seed: int,
    duration_s: float,
    *,
    mean_interval_s: float = 600.0,
    min_duration_s: float = 20.0,
    max_duration_s: float = 300.0,
    kinds: Iterable[str] = ALL_KINDS,
    start_s: float = 60.0,
) -> list[FaultSpec]:
    """Faults drawn from `seed`: exponential gaps, one fault at a time, random parameters."""
    rng = random.Random(seed * 7 + 12345)
    kinds = list(kinds)
    for k in kinds:
        if k not in ALL_KINDS:
            raise ValueError(f"unknown fault kind {k!r}")
    out: list[FaultSpec] = []
    t = start_s + rng.expovariate(1.0 / mean_interval_s)
    while t < duration_s:
        kind = rng.choice(kinds)
        dur = rng.uniform(min_duration_s, max_duration_s)
        spec: dict[str, Any] = {"kind": kind, "at_s": round(t, 3)}
        if kind in SENSOR_KINDS:
            sig = rng.choice(MEASURED_SIGNALS)
            span = _span(sig)
            spec["signal"] = sig
            if kind == "spike":
                dur = rng.uniform(1.0, 3.0)
                spec["magnitude"] = round(rng.choice((-1, 1)) * rng.uniform(0.1, 0.3) * span, 4)
            elif kind == "drift":
                spec["rate_per_s"] = round(
                    rng.choice((-1, 1)) * rng.uniform(0.1, 0.5) * span / dur, 6
                )
            elif kind == "noise_burst":
                spec["sigma"] = round(rng.uniform(0.02, 0.08) * span, 4)
        else:
            base = PROCESS_DEFAULT_MAGNITUDE[kind]
            # cavitation only shows above ~0.6 (NPSH margin), the others scale smoothly
            lo, hi = (0.95, 1.15) if kind == "cavitation" else (0.6, 1.2)
            spec["magnitude"] = round(base * rng.uniform(lo, hi), 4)
            if kind in ("outlet_valve", "inlet_valve", "leak", "cavitation", "element_degradation"):
                spec["magnitude"] = min(spec["magnitude"], 0.95)
            spec["profile"] = rng.choice(("step", "ramp", "exponential"))
            if spec["profile"] == "ramp":
                spec["ramp_s"] = round(dur * rng.uniform(0.3, 0.9), 3)
            elif spec["profile"] == "exponential":
                spec["tau_s"] = round(dur * rng.uniform(0.2, 0.5), 3)
            if kind == "inlet_valve" and rng.random() < 0.5:
                spec["target"] = "heater"
                spec["magnitude"] = min(spec["magnitude"], 0.6)
        spec["duration_s"] = round(dur, 3)
        out.append(FaultSpec.model_validate(spec))
        t += dur + rng.expovariate(1.0 / mean_interval_s)
    return out


# --- ground truth --------------------------------------------------------------------------


class GroundTruthLog:
    """Append-only JSONL: a `start` and an `end` record per fault, flushed at once."""

    def __init__(self, sink: str | Path | IO[str] | None) -> None:
        self._own = isinstance(sink, (str, Path))
        self._f: IO[str] | None = (
            open(sink, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            if isinstance(sink, (str, Path))
            else sink
        )
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self._f is not None:
            self._f.write(json.dumps(record, sort_keys=True) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None and self._own:
            self._f.close()
        self._f = None


def read_ground_truth(path: str | Path) -> list[dict[str, Any]]:
    """Fault intervals from a ground-truth log: one dict per fault (end_s None if open)."""
    by_id: dict[int, dict[str, Any]] = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        cur = by_id.setdefault(rec["id"], {})
        cur.update({k: v for k, v in rec.items() if k != "event"})
    return [by_id[k] for k in sorted(by_id)]


# --- the injector --------------------------------------------------------------------------


@dataclass
class _Active:
    spec: FaultSpec
    fid: int
    rng: random.Random
    record: dict[str, Any]
    held: dict[str, float] = field(default_factory=dict)  # stuck: value at start


class FaultInjector:
    """Runs a fault schedule against the plant; used by `hw_sim.runtime.SimPlant`.

    `update(t_s, plant_signals)` starts/ends faults at sim time `t_s` and returns the
    process-fault inputs to apply; `apply_sensor(t_s, values)` rewrites served values.
    """

    def __init__(
        self,
        specs: Iterable[FaultSpec],
        seed: int = 0,
        log: GroundTruthLog | None = None,
    ) -> None:
        self.pending = sorted(specs, key=lambda s: s.at_s)
        self.active: list[_Active] = []
        self.seed = seed
        self.log = log or GroundTruthLog(None)
        self._next_id = 0

    def add(self, spec: FaultSpec) -> None:
        """Schedule one more fault (e.g. injected by a test at run time)."""
        self.pending.append(spec)
        self.pending.sort(key=lambda s: s.at_s)

    def update(self, t_s: float, signals: dict[str, float]) -> dict[str, float]:
        """Start and end faults at `t_s`; return the process-fault inputs now in force."""
        while self.pending and self.pending[0].at_s <= t_s:
            spec = self.pending.pop(0)
            if spec.end_s <= t_s:  # the whole window was stepped over: log it, never active
                self._start(spec, t_s, signals)
                self._end(self.active.pop(), t_s)
                continue
            self._start(spec, t_s, signals)
        still = []
        for a in self.active:
            if a.spec.end_s <= t_s:
                self._end(a, t_s)
            else:
                still.append(a)
        self.active = still
        return self._process_inputs(t_s)

    def _start(self, spec: FaultSpec, t_s: float, signals: dict[str, float]) -> None:
        fid = self._next_id
        self._next_id += 1
        if spec.kind in SENSOR_KINDS:
            affected = served_points(spec.signal or "")
            cls = "sensor"
        else:
            key = "inlet_valve@heater" if spec.target == "heater" else spec.kind
            affected = [p for s in PROCESS_SIGNALS[key] for p in served_points(s)]
            cls = "process"
        record = {
            "id": fid,
            "kind": spec.kind,
            "class": cls,
            "signals": affected,
            "start_s": round(t_s, 6),
            "end_s": None,
            "start_wall": time.time(),
            "end_wall": None,
            "params": spec.model_dump(exclude_none=True, exclude_defaults=True),
        }
        a = _Active(spec, fid, random.Random(self.seed * 1000003 + fid), record)
        if spec.kind == "stuck" and spec.signal is not None:
            a.held[spec.signal] = signals.get(spec.signal, math.nan)
        self.active.append(a)
        self.log.write({"event": "start", **record})

    def _end(self, a: _Active, t_s: float) -> None:
        a.record["end_s"] = round(t_s, 6)
        a.record["end_wall"] = time.time()
        self.log.write({"event": "end", **a.record})

    def close(self, t_s: float) -> None:
        """End every active fault at `t_s` (the run stops) and close the log."""
        for a in self.active:
            self._end(a, t_s)
        self.active = []
        self.log.close()

    # -- process faults -------------------------------------------------------------------
    @staticmethod
    def severity(spec: FaultSpec, t_s: float) -> float:
        """Severity of a process fault at `t_s` following its profile (0..magnitude)."""
        mag = spec.magnitude if spec.magnitude is not None else PROCESS_DEFAULT_MAGNITUDE[spec.kind]
        el = max(t_s - spec.at_s, 0.0)
        if spec.profile == "step":
            return mag
        if spec.profile == "ramp":
            ramp = spec.ramp_s or spec.duration_s or 60.0
            return mag * min(el / ramp, 1.0)
        tau = spec.tau_s or (spec.duration_s or 300.0) / 3.0
        horizon = spec.duration_s or 5.0 * tau
        return mag * math.expm1(min(el, horizon) / tau) / math.expm1(horizon / tau)

    def _process_inputs(self, t_s: float) -> dict[str, float]:
        out = {
            "outlet_valve_factor": 1.0,
            "inlet_valve_factor": 1.0,
            "heater_flow_factor": 1.0,
            "imbalance_mm_s": 0.0,
            "cavitation": 0.0,
            "leak": 0.0,
            "element_health": 1.0,
        }
        for a in self.active:
            s = a.spec
            if s.kind in SENSOR_KINDS:
                continue
            sev = self.severity(s, t_s)
            if s.kind == "outlet_valve":
                out["outlet_valve_factor"] *= max(1.0 - sev, 0.0)
            elif s.kind == "inlet_valve" and s.target == "heater":
                out["heater_flow_factor"] *= max(1.0 - sev, 0.0)
            elif s.kind == "inlet_valve":
                out["inlet_valve_factor"] *= max(1.0 - sev, 0.0)
            elif s.kind == "imbalance":
                out["imbalance_mm_s"] += sev
            elif s.kind == "cavitation":
                out["cavitation"] = min(out["cavitation"] + sev, 1.0)
            elif s.kind == "leak":
                out["leak"] = min(out["leak"] + sev, 1.0)
            elif s.kind == "element_degradation":
                out["element_health"] *= max(1.0 - sev, 0.0)
        return out

    # -- sensor faults --------------------------------------------------------------------
    def apply_sensor(self, t_s: float, values: dict[str, float]) -> None:
        """Rewrite `values` (plant signal -> served value) for the active sensor faults."""
        for a in self.active:
            s = a.spec
            if s.kind not in SENSOR_KINDS or s.signal not in values:
                continue
            sig = s.signal
            span = _span(sig)
            if s.kind == "spike":
                values[sig] += s.magnitude if s.magnitude is not None else 0.25 * span
            elif s.kind == "stuck":
                values[sig] = a.held.get(sig, values[sig])
            elif s.kind == "drift":
                rate = s.rate_per_s if s.rate_per_s is not None else 0.005 * span
                values[sig] += rate * (t_s - s.at_s)
            elif s.kind == "noise_burst":
                sigma = s.sigma if s.sigma is not None else 0.05 * span
                values[sig] += a.rng.gauss(0.0, sigma)
            elif s.kind == "dropout":
                values[sig] = math.nan


# --- command line: generate a long random scenario -------------------------------------------


def _generate(args: argparse.Namespace) -> int:
    duration = args.hours * 3600.0
    faults = random_faults(
        args.seed,
        duration,
        mean_interval_s=args.mean_interval_s,
        min_duration_s=args.min_duration_s,
        max_duration_s=args.max_duration_s,
    )
    doc = {
        "name": f"random-{args.hours:g}h-seed{args.seed}",
        "description": "Random faults for detection benchmarks (python -m hw_sim.faults generate)",
        "seed": args.seed,
        "duration_s": duration,
        "faults": [f.model_dump(exclude_none=True, exclude_defaults=True) for f in faults],
    }
    text = yaml.safe_dump(doc, sort_keys=False)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"{len(faults)} faults over {args.hours:g} h -> {args.output}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hw_sim.faults")
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write a long random-fault scenario YAML")
    g.add_argument("--hours", type=float, default=24.0)
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--mean-interval-s", type=float, default=600.0)
    g.add_argument("--min-duration-s", type=float, default=20.0)
    g.add_argument("--max-duration-s", type=float, default=300.0)
    g.add_argument("-o", "--output", default="-")
    args = parser.parse_args(argv)
    return _generate(args)


if __name__ == "__main__":
    sys.exit(main())
