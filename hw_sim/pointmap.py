"""The simulated plant's point map: the single source for servers, configs, docs and tests.

Every point the simulated PLCs serve is declared once here.  The Modbus server lays its
register images out from this table, the OPC UA server builds its address space from the
`opcua` entries, `python -m hw_sim --print-map` prints it as JSON, and docs/hw_sim.md and
config/edgeloop.yaml are checked against it by tests.

Devices:

* **Heater PLC**, Modbus unit 1: measurements in input registers, commands in holding
  registers, commands/status bits in coils / discrete inputs.  A realistic type mix: float32,
  an int16 scaled x0.1, uint32 counters, a float64 totaliser, a word-swapped block
  (word_order little), a byte-and-word swapped float, a read-only ASCII string and bits packed
  into a status register.
* **Pump skid**, OPC UA (`ns=2;s=Pump.*`) and mirrored as float32 on Modbus unit 2 of the
  same TCP connection (so one connection serves several unit ids, as behind a gateway).
* **Benchmark block**, Modbus unit 10: input registers 0..3999 hold 2000 float32 synthetic
  signals; they are not listed in `POINTS` (see `bench_points(n)`).
* **Loop plants** (opt-in, `--loops`): the surge tank level loop on unit 3 and the heat
  exchanger loop on unit 4, each with the same register layout (`LOOP_LAYOUT`).  They are
  not in `POINTS` (the default plant stays exactly as it was); `loop_points(names)` /
  `points_for(loops)` list them.

Addresses are 0-based protocol addresses.  Engineering value = raw * scale (+ 0 offset).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

HEATER_UNIT = 1
PUMP_UNIT = 2
SURGE_UNIT = 3
EXCHANGER_UNIT = 4
BENCH_UNIT = 10
BENCH_MAX_POINTS = 2000  # float32 signals in input registers 0..3999 of BENCH_UNIT

DEVICE_MODEL = "EDGELOOP-HTR-SIM"  # served in holding registers 0..7 (16 ASCII chars)
FIRMWARE_VERSION = 0x0103  # served in holding register 8 (v1.3)

# Bits of the heater PLC's status word (input register 9).
STATUS_BITS = {
    "heater_running": 0,
    "overtemp_alarm": 1,
    "watchdog_tripped": 2,
    "heater_enable": 3,
    "low_flow": 4,
}

# Widths in 16-bit registers of each Modbus type (string: length_registers).
REGISTER_WIDTH = {
    "int16": 1,
    "uint16": 1,
    "bit": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}


@dataclass(frozen=True, slots=True)
class SimPoint:
    """One served point.  `min`/`max` are the engineering range (writes are clamped to it)."""

    name: str
    protocol: str  # modbus | opcua
    type: str  # bool|bit|int16|uint16|int32|uint32|int64|uint64|float32|float64|string
    unit: str = ""
    min: float | None = None
    max: float | None = None
    writable: bool = False
    description: str = ""
    # Modbus
    table: str | None = None  # holding | input | coil | discrete
    address: int | None = None
    unit_id: int | None = None
    byte_order: str = "big"
    word_order: str = "big"
    scale: float = 1.0
    bit: int | None = None
    length_registers: int | None = None
    # OPC UA
    node: str | None = None
    # what the plant value is: points that mirror another signal name it here
    source: str | None = None

    @property
    def width(self) -> int:
        """Registers (Modbus register tables) or bits (coil/discrete) the point spans."""
        if self.table in ("coil", "discrete"):
            return 1
        if self.type == "string":
            return int(self.length_registers or 0)
        return REGISTER_WIDTH[self.type]

    @property
    def signal(self) -> str:
        """The plant signal this point serves (itself unless it mirrors another point)."""
        return self.source or self.name

    def to_dict(self) -> dict[str, Any]:
        """The `--print-map` form: protocol-specific keys only where they apply."""
        d = asdict(self)
        if self.protocol == "opcua":
            keys = ["name", "protocol", "node", "type"]
        else:
            keys = ["name", "protocol", "table", "address", "unit_id", "type"]
            keys += ["byte_order", "word_order"]
            if self.bit is not None:
                keys.append("bit")
            if self.length_registers is not None:
                keys.append("length_registers")
            if self.scale != 1.0:
                keys.append("scale")
        keys += ["unit", "min", "max", "writable", "description"]
        return {k: d[k] for k in keys}


def _mb(name: str, table: str, address: int, type_: str, **kw: Any) -> SimPoint:
    kw.setdefault("unit_id", HEATER_UNIT)
    return SimPoint(name=name, protocol="modbus", table=table, address=address, type=type_, **kw)


def _ua(name: str, node: str, **kw: Any) -> SimPoint:
    return SimPoint(name=name, protocol="opcua", node=f"ns=2;s={node}", type="float64", **kw)


# --- heater PLC, Modbus unit 1 -------------------------------------------------------------
_HEATER: list[SimPoint] = [
    # input registers: measurements
    _mb(
        "tank_temp",
        "input",
        0,
        "float32",
        unit="degC",
        min=0.0,
        max=120.0,
        description="Tank outlet temperature, sensor downstream (delayed, noisy)",
    ),
    _mb(
        "inlet_flow",
        "input",
        2,
        "float32",
        unit="L/min",
        min=0.0,
        max=60.0,
        description="Inlet flow (measured disturbance)",
    ),
    _mb(
        "inlet_temp",
        "input",
        4,
        "float32",
        unit="degC",
        min=0.0,
        max=80.0,
        description="Inlet water temperature (measured disturbance)",
    ),
    _mb(
        "heater_power_fb",
        "input",
        6,
        "float32",
        unit="%",
        min=0.0,
        max=100.0,
        description="Heater power actually applied (after enable, interlocks, watchdog)",
    ),
    _mb(
        "ambient_temp",
        "input",
        8,
        "int16",
        unit="degC",
        scale=0.1,
        min=-40.0,
        max=60.0,
        description="Ambient temperature, int16 in 0.1 degC",
    ),
    _mb(
        "status_word",
        "input",
        9,
        "uint16",
        min=0.0,
        max=65535.0,
        description="Status bits: 0 running, 1 overtemp, 2 watchdog, 3 enabled, 4 low flow",
    ),
    _mb(
        "low_flow_alarm",
        "input",
        9,
        "bit",
        bit=STATUS_BITS["low_flow"],
        min=0.0,
        max=1.0,
        description="Inlet flow below 2 L/min (bit 4 of status_word)",
    ),
    _mb(
        "uptime_s",
        "input",
        10,
        "uint32",
        unit="s",
        min=0.0,
        max=4294967295.0,
        description="Seconds since PLC start (sim time), uint32 counter",
    ),
    _mb(
        "energy_kwh",
        "input",
        12,
        "float32",
        word_order="little",
        unit="kWh",
        min=0.0,
        max=1.0e9,
        description="Heater energy counter; word-swapped block (low word first)",
    ),
    _mb(
        "heater_cycles",
        "input",
        14,
        "uint32",
        word_order="little",
        min=0.0,
        max=4294967295.0,
        description="Heater off->on transitions; word-swapped block",
    ),
    _mb(
        "element_current",
        "input",
        16,
        "float32",
        byte_order="little",
        word_order="little",
        unit="A",
        min=0.0,
        max=40.0,
        description="Heater element current; byte- and word-swapped (little-endian float)",
    ),
    _mb(
        "flow_total_m3",
        "input",
        20,
        "float64",
        unit="m3",
        min=0.0,
        max=1.0e12,
        description="Inlet flow totaliser, float64",
    ),
    # holding registers: identity, commands and settings
    _mb(
        "device_model",
        "holding",
        0,
        "string",
        length_registers=8,
        description="Device model, 16 ASCII chars, read-only",
    ),
    _mb(
        "firmware_version",
        "holding",
        8,
        "uint16",
        min=0.0,
        max=65535.0,
        description="Firmware version, major in the high byte, read-only",
    ),
    _mb(
        "heater_power",
        "holding",
        10,
        "float32",
        unit="%",
        min=0.0,
        max=100.0,
        writable=True,
        description="Heater power command: the manipulated variable",
    ),
    _mb(
        "temp_setpoint",
        "holding",
        12,
        "float32",
        unit="degC",
        min=0.0,
        max=95.0,
        writable=True,
        description="Operator setpoint; informational, a loop may use it as SP",
    ),
    _mb(
        "safe_power",
        "holding",
        14,
        "float32",
        unit="%",
        min=0.0,
        max=100.0,
        writable=True,
        description="Power the PLC applies when its heartbeat watchdog trips",
    ),
    _mb(
        "heartbeat",
        "holding",
        16,
        "uint16",
        min=0.0,
        max=65535.0,
        writable=True,
        description="Changed by the agent every control period; arms the watchdog",
    ),
    _mb(
        "watchdog_timeout_ms",
        "holding",
        17,
        "uint16",
        unit="ms",
        min=0.0,
        max=60000.0,
        writable=True,
        description="Heartbeat watchdog timeout; 0 disables the watchdog",
    ),
    # coils: commands
    _mb(
        "heater_enable",
        "coil",
        0,
        "bool",
        min=0.0,
        max=1.0,
        writable=True,
        description="Heater enable; off forces applied power to 0",
    ),
    _mb(
        "fault_reset",
        "coil",
        1,
        "bool",
        min=0.0,
        max=1.0,
        writable=True,
        description="Write 1 to clear latched watchdog/overtemp trips (self-clearing)",
    ),
    # discrete inputs: status
    _mb(
        "watchdog_tripped",
        "discrete",
        0,
        "bool",
        min=0.0,
        max=1.0,
        description="Heartbeat watchdog tripped: safe_power applied until fault_reset",
    ),
    _mb(
        "overtemp_alarm",
        "discrete",
        1,
        "bool",
        min=0.0,
        max=1.0,
        description="Tank above 95 degC: heater cut until cooled and fault_reset",
    ),
    _mb(
        "heater_running",
        "discrete",
        2,
        "bool",
        min=0.0,
        max=1.0,
        description="Heater is applying power",
    ),
]

# --- pump skid: OPC UA, mirrored on Modbus unit 2 -------------------------------------------
# (name, OPC UA node, unit, min, max, writable, description)
_PUMP_SIGNALS: list[tuple[str, str, str, float, float, bool, str]] = [
    ("pump_motor_current", "Pump.MotorCurrent", "A", 0.0, 60.0, False, "Motor phase current"),
    ("pump_motor_voltage", "Pump.MotorVoltage", "V", 0.0, 500.0, False, "Motor supply voltage"),
    (
        "pump_vibration_x",
        "Pump.VibrationX",
        "mm/s",
        0.0,
        50.0,
        False,
        "Bearing vibration velocity RMS, horizontal",
    ),
    (
        "pump_vibration_y",
        "Pump.VibrationY",
        "mm/s",
        0.0,
        50.0,
        False,
        "Bearing vibration velocity RMS, vertical",
    ),
    ("pump_motor_temp", "Pump.MotorTemp", "degC", -20.0, 180.0, False, "Motor winding temp"),
    (
        "pump_discharge_pressure",
        "Pump.DischargePressure",
        "bar",
        0.0,
        10.0,
        False,
        "Discharge pressure",
    ),
    ("pump_flow", "Pump.Flow", "m3/h", 0.0, 80.0, False, "Discharge flow"),
    ("pump_fluid_temp", "Pump.FluidTemp", "degC", -10.0, 120.0, False, "Pumped fluid temp"),
    (
        "pump_speed_setpoint",
        "Pump.SpeedSetpoint",
        "%",
        0.0,
        100.0,
        True,
        "Drive speed setpoint (VFD)",
    ),
    (
        "pump_valve_position",
        "Pump.ValvePosition",
        "%",
        0.0,
        100.0,
        True,
        "Discharge control valve opening",
    ),
]

_PUMP_UA = [
    _ua(n, node, unit=u, min=lo, max=hi, writable=w, description=d)
    for n, node, u, lo, hi, w, d in _PUMP_SIGNALS
]


def _pump_mirror() -> list[SimPoint]:
    out = []
    ir = hr = 0
    for n, _node, u, lo, hi, w, d in _PUMP_SIGNALS:
        if w:
            table, addr = "holding", hr
            hr += 2
        else:
            table, addr = "input", ir
            ir += 2
        out.append(
            _mb(
                f"{n}_mb",
                table,
                addr,
                "float32",
                unit_id=PUMP_UNIT,
                unit=u,
                min=lo,
                max=hi,
                writable=w,
                description=f"{d} (Modbus mirror of {n})",
                source=n,
            )
        )
    return out


POINTS: tuple[SimPoint, ...] = tuple(_HEATER + _PUMP_UA + _pump_mirror())
BY_NAME: dict[str, SimPoint] = {p.name: p for p in POINTS}

# The plant signals (what SimPlant.values() holds besides mirrors): every point's signal.
SIGNALS: tuple[str, ...] = tuple(dict.fromkeys(p.signal for p in POINTS if p.type != "string"))


def modbus_points(unit_id: int | None = None) -> list[SimPoint]:
    """Modbus points of the map, optionally of one unit id (bench block excluded)."""
    return [p for p in POINTS if p.protocol == "modbus" and unit_id in (None, p.unit_id)]


def opcua_points() -> list[SimPoint]:
    """The OPC UA points (the pump skid)."""
    return [p for p in POINTS if p.protocol == "opcua"]


def bench_points(n: int = BENCH_MAX_POINTS) -> list[SimPoint]:
    """The first `n` synthetic float32 signals of the benchmark block (Modbus unit 10).

    Signal i sits at input registers 2i, 2i+1 (big-endian) and reads
    `bench_value(i, t)`; they are cheap to serve, so acquisition benchmarks measure the
    client, not the simulator.
    """
    if not 0 <= n <= BENCH_MAX_POINTS:
        raise ValueError(f"bench_points: n must be 0..{BENCH_MAX_POINTS}, got {n}")
    return [
        SimPoint(
            name=f"bench_{i:04d}",
            protocol="modbus",
            table="input",
            address=2 * i,
            unit_id=BENCH_UNIT,
            type="float32",
            min=-1000.0,
            max=1000.0,
            description="Synthetic benchmark signal",
        )
        for i in range(n)
    ]


def bench_value(i: Any, t_s: float) -> Any:
    """Value of bench signal(s) `i` (int or numpy array) at sim time `t_s`.

    A sine per index with its own period (5..55 s), amplitude and offset; works elementwise
    on numpy arrays so a whole block costs one vectorised call.
    """
    import numpy as np

    i = np.asarray(i, dtype=np.float64)
    period = 5.0 + (i * 7.0) % 50.0
    return (i % 100.0) + (1.0 + i % 10.0) * np.sin(2.0 * np.pi * t_s / period + 0.1 * i)


# --- loop plants (opt-in): one Modbus unit each, one register layout for all ---------------


@dataclass(frozen=True, slots=True)
class LoopSpec:
    """A loop plant as served: name (point prefix), unit id, its pv and measured disturbance."""

    name: str
    unit_id: int
    title: str
    pv: tuple[str, str, float, float, str]  # (suffix, unit, min, max, description)
    disturbance: tuple[str, str, float, float, str]
    output: tuple[str, str]  # (suffix base, description of the manipulated variable)


LOOPS: dict[str, LoopSpec] = {
    "surge": LoopSpec(
        "surge",
        SURGE_UNIT,
        "surge tank level, equal-percentage fill valve",
        ("level", "m", 0.0, 2.5, "Tank level (the controlled variable); overflows at 2 m"),
        ("draw_flow", "L/s", 0.0, 20.0, "Draw pump flow out of the tank (measured disturbance)"),
        ("valve", "fill valve opening"),
    ),
    "exchanger": LoopSpec(
        "exchanger",
        EXCHANGER_UNIT,
        "heat exchanger outlet temperature, hot-water valve, flow-dependent dead time",
        (
            "outlet_temp",
            "degC",
            0.0,
            100.0,
            "Product outlet temperature downstream (the controlled variable)",
        ),
        ("flow", "L/min", 0.0, 60.0, "Product flow through the exchanger (measured disturbance)"),
        ("valve", "hot-water valve opening"),
    ),
}

# Status word bits of a loop PLC (input register 6 of its unit).
LOOP_STATUS_BITS = {"watchdog_tripped": 0, "watchdog_armed": 1}
# Register sizes of a loop unit's tables (beyond them: exception 02).
LOOP_TABLE_SIZE = {"holding": 16, "input": 16, "coil": 8, "discrete": 8}


def _loop_points(spec: LoopSpec) -> tuple[SimPoint, ...]:
    n, u = spec.name, spec.unit_id
    pv, pv_unit, pv_lo, pv_hi, pv_d = spec.pv
    dv, d_unit, d_lo, d_hi, d_d = spec.disturbance
    out, out_d = spec.output

    def mb(suffix: str, table: str, address: int, type_: str, **kw: Any) -> SimPoint:
        return _mb(f"{n}_{suffix}", table, address, type_, unit_id=u, **kw)

    return (
        mb(pv, "input", 0, "float32", unit=pv_unit, min=pv_lo, max=pv_hi, description=pv_d),
        mb(dv, "input", 2, "float32", unit=d_unit, min=d_lo, max=d_hi, description=d_d),
        mb(f"{out}_fb", "input", 4, "float32", unit="%", min=0.0, max=100.0,
           description=f"Applied {out_d} (command, or safe output while tripped)"),
        mb("status", "input", 6, "uint16", min=0.0, max=65535.0,
           description="Status bits: 0 watchdog tripped, 1 watchdog armed"),
        mb(f"{out}_cmd", "holding", 0, "float32", unit="%", min=0.0, max=100.0, writable=True,
           description=f"Command: {out_d}, the manipulated variable"),
        mb("safe_output", "holding", 2, "float32", unit="%", min=0.0, max=100.0, writable=True,
           description="Output the PLC applies while its heartbeat watchdog is tripped"),
        mb("heartbeat", "holding", 4, "uint16", min=0.0, max=65535.0, writable=True,
           description="Changed by the agent every control period; arms the watchdog"),
        mb("watchdog_timeout_ms", "holding", 5, "uint16", unit="ms", min=0.0, max=60000.0,
           writable=True, description="Heartbeat watchdog timeout; 0 disables the watchdog"),
        mb("fault_reset", "coil", 0, "bool", min=0.0, max=1.0, writable=True,
           description="Write 1 to clear a latched watchdog trip (self-clearing)"),
        mb("watchdog_tripped", "discrete", 0, "bool", min=0.0, max=1.0,
           description="Heartbeat watchdog tripped: safe_output applied until fault_reset"),
    )  # fmt: skip


LOOP_POINTS: dict[str, tuple[SimPoint, ...]] = {n: _loop_points(s) for n, s in LOOPS.items()}
# Every point of every loop by name (the loop a point belongs to: its unit id).
LOOP_BY_NAME: dict[str, SimPoint] = {p.name: p for pts in LOOP_POINTS.values() for p in pts}
# Points by name whether or not their loop is enabled (faults validate against this).
ALL_BY_NAME: dict[str, SimPoint] = {**BY_NAME, **LOOP_BY_NAME}


def parse_loops(text: str | None) -> tuple[str, ...]:
    """`--loops` value: comma-separated loop names, or `all`; '' / None is no loop."""
    if not text:
        return ()
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return tuple(LOOPS)
    bad = [t for t in names if t not in LOOPS]
    if bad:
        raise ValueError(f"unknown loop(s) {', '.join(bad)}; known: {', '.join(LOOPS)}, all")
    return tuple(dict.fromkeys(names))


def loop_points(loops: tuple[str, ...] | list[str] = tuple(LOOPS)) -> list[SimPoint]:
    """The points of the named loops (all loops by default)."""
    return [p for n in loops for p in LOOP_POINTS[n]]


def points_for(loops: tuple[str, ...] | list[str] = ()) -> tuple[SimPoint, ...]:
    """The points a plant with these loops enabled serves: `POINTS` plus the loops'."""
    return POINTS + tuple(loop_points(loops))


def map_as_dicts(loops: tuple[str, ...] | list[str] = ()) -> list[dict[str, Any]]:
    """The point map as plain dicts (the `--print-map` JSON), with the named loops."""
    return [p.to_dict() for p in points_for(loops)]


def print_map(loops: tuple[str, ...] | list[str] = ()) -> str:
    """JSON text of the point map: a list, one object per point (plus the named loops')."""
    return json.dumps(map_as_dicts(loops), indent=1)


def _check_layout() -> None:
    """Fail at import if two Modbus points overlap (bits in a status word excepted)."""
    seen: dict[tuple[int | None, str | None, int], str] = {}
    for p in modbus_points() + loop_points():
        if p.type == "bit":
            continue
        for a in range(p.address or 0, (p.address or 0) + p.width):
            key = (p.unit_id, p.table, a)
            if key in seen:
                raise AssertionError(f"point map overlap: {p.name} and {seen[key]} at {key}")
            seen[key] = p.name
    if len(BY_NAME) != len(POINTS) or len(ALL_BY_NAME) != len(POINTS) + len(loop_points()):
        raise AssertionError("point map: duplicate names")
    for p in loop_points():
        if p.address + p.width > LOOP_TABLE_SIZE[p.table or ""]:
            raise AssertionError(f"point map: {p.name} outside its loop unit's table")


_check_layout()


def map_markdown() -> str:
    """The register map as Markdown tables (docs/hw_sim.md embeds it; a test keeps it in sync)."""
    lines = _modbus_rows(modbus_points())
    lines += ["", "| name | OPC UA node | unit | range | rw |", "|---|---|---|---|---|"]
    for p in opcua_points():
        lines.append(
            f"| {p.name} | `{p.node}` | {p.unit} | {p.min:g} .. {p.max:g} | "
            f"{'rw' if p.writable else 'r'} |"
        )
    return "\n".join(lines) + "\n"


def loop_map_markdown() -> str:
    """The loop plants' register map as a Markdown table (in docs/hw_sim.md, kept in sync)."""
    return "\n".join(_modbus_rows(loop_points())) + "\n"


def _modbus_rows(points: list[SimPoint]) -> list[str]:
    lines = [
        "| name | unit id | table | address | type | order (byte/word) | unit | range | rw |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        typ = p.type
        if p.type == "bit":
            typ = f"bit {p.bit}"
        elif p.type == "string":
            typ = f"string ({p.length_registers} regs)"
        elif p.scale != 1.0:
            typ = f"{p.type} x{p.scale:g}"
        rng = "" if p.min is None else f"{p.min:g} .. {p.max:g}"
        lines.append(
            f"| {p.name} | {p.unit_id} | {p.table} | {p.address} | {typ} | "
            f"{p.byte_order}/{p.word_order} | {p.unit} | {rng} | {'rw' if p.writable else 'r'} |"
        )
    return lines
