"""`SimPlant`: the heater and the pump skid with their PLC logic, faults and a sim clock.

The servers (Modbus, OPC UA) only call `values()` / `texts()` / `write()`; the plant is
advanced by `step(dt_s)` (offline, as fast as the CPU allows) or by `run()` / `start_thread()`
in real time x `speed`.  Every public method takes the same lock, so servers on an event
loop and a stepping thread can share one plant.

PLC logic simulated here (what the heater PLC program would do):
* applied power = 0 when `heater_enable` is off, on overtemperature (latched above 95 degC)
  or low inlet flow (< 2 L/min); `safe_power` while the heartbeat watchdog is tripped;
  otherwise the `heater_power` command.
* heartbeat watchdog: armed by the first change of `heartbeat`; if `heartbeat` then does not
  change for `watchdog_timeout_ms` (0 disables), `watchdog_tripped` latches and `safe_power`
  is applied until `fault_reset` (which restarts the timeout).  It runs on wall time while
  the plant runs in real time and on sim time when stepped offline.
* counters: uptime, heater energy, heater off->on cycles, inlet-flow totaliser.

Loop plants (`loops=("surge", "exchanger")`, opt-in) run beside them, each behind its own PLC
(`hw_sim.loops.LoopPLC`) on its own Modbus unit, with parameters drawn from `loop_seed`.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from hw_sim import pointmap
from hw_sim.faults import FaultInjector, FaultSpec, GroundTruthLog, Scenario, load_scenario
from hw_sim.plant.pump import PumpSkid

OVERTEMP_C = 95.0
OVERTEMP_RESET_C = 90.0
LOW_FLOW_LPM = 2.0
ELEMENT_RATED_A = 35.0  # element current at 100 % power, healthy
DEFAULT_WATCHDOG_MS = 3000
_MIRRORS = tuple((p.name, p.source) for p in pointmap.POINTS if p.source is not None)


class SimWriteError(ValueError):
    """A write the simulated PLC refuses (unknown, read-only or out-of-range point)."""


class SimPlant:
    """The simulated plant behind every simulated PLC.

    `seed` makes noise, disturbances and random faults reproducible; `speed` is sim seconds
    per wall second for `run()`; `scenario` is a path, a `Scenario` or None; `faults_log` a
    path or text file for the ground-truth JSONL.

    `loops` enables loop plants (names of `hw_sim.pointmap.LOOPS`) whose parameters are drawn
    from `loop_seed` (default: the seed); `loop_disturbances=False` holds their measured
    disturbances still.  `self.loops[name].params` are their true parameters.
    """

    def __init__(
        self,
        seed: int = 0,
        speed: float = 1.0,
        scenario: str | Path | Scenario | None = None,
        faults_log: str | Path | IO[str] | None = None,
        heater_disturbances: bool | None = None,
        loops: Iterable[str] = (),
        loop_seed: int | None = None,
        loop_disturbances: bool = True,
    ) -> None:
        from hw_sim.plant.heater import HeaterPlant  # owned by the control work; lazy import

        if isinstance(scenario, (str, Path)):
            scenario = load_scenario(scenario)
        self.scenario = scenario or Scenario()
        if self.scenario.seed is not None:
            seed = self.scenario.seed
        self.seed = seed
        self.speed = float(speed)
        if heater_disturbances is None:
            heater_disturbances = self.scenario.heater_disturbances
        self.heater = HeaterPlant(seed=seed, disturbances=heater_disturbances)
        self.pump = PumpSkid(seed=seed)
        specs: list[FaultSpec] = list(self.scenario.faults)
        if self.scenario.random is not None:
            from hw_sim.faults import random_faults

            r = self.scenario.random
            specs += random_faults(
                seed,
                r.duration_s,
                mean_interval_s=r.mean_interval_s,
                min_duration_s=r.min_duration_s,
                max_duration_s=r.max_duration_s,
                kinds=r.kinds,
            )
        self.faults = FaultInjector(specs, seed=seed, log=GroundTruthLog(faults_log))
        self._events = sorted(self.scenario.events, key=lambda e: e.at_s)
        self._lock = threading.RLock()
        self.t_s = 0.0
        self.realtime = False  # True while run()/start_thread() drive the clock
        # commands (holding registers / coils)
        self._cmd: dict[str, float] = {
            "heater_power": 0.0,
            "temp_setpoint": 50.0,
            "safe_power": 0.0,
            "heartbeat": 0.0,
            "watchdog_timeout_ms": float(DEFAULT_WATCHDOG_MS),
            "heater_enable": 1.0,
        }
        # PLC state
        self._wd_armed = False
        self._wd_last_change = 0.0
        self.watchdog_tripped = False
        self.overtemp = False
        self._running = False
        self._energy_kwh = 0.0
        self._cycles = 0
        self._flow_total_m3 = 0.0
        self._element_current = 0.0
        self._process_inputs = self.faults.update(0.0, {})
        self._apply_process_faults()
        self._apply_power()
        self._cache: dict[str, float] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # loop plants (opt-in), each behind its own PLC on its own unit id
        self.loop_seed = seed if loop_seed is None else int(loop_seed)
        self.loops: dict[str, Any] = {}
        names = tuple(dict.fromkeys(loops))
        unknown = [n for n in names if n not in pointmap.LOOPS]
        if unknown:
            raise ValueError(f"unknown loop(s) {unknown}; known: {list(pointmap.LOOPS)}")
        if names:
            from hw_sim.loops import LoopPLC

            for n in names:
                self.loops[n] = LoopPLC(n, self.loop_seed, self._wd_clock, loop_disturbances)
        self.points = pointmap.points_for(names)
        self.by_name = {p.name: p for p in self.points}
        self._loop_units = {pointmap.LOOPS[n].unit_id: n for n in names}

    def modbus_points(self) -> list[pointmap.SimPoint]:
        """The Modbus points this plant serves (the map plus its enabled loops)."""
        return [p for p in self.points if p.protocol == "modbus"]

    # -- clock ----------------------------------------------------------------------------
    def _wd_clock(self) -> float:
        return time.monotonic() if self.realtime else self.t_s

    # -- PLC logic ------------------------------------------------------------------------
    def _apply_process_faults(self) -> None:
        f = self._process_inputs
        self.pump.outlet_valve_factor = f["outlet_valve_factor"]
        self.pump.inlet_valve_factor = f["inlet_valve_factor"]
        self.pump.imbalance_mm_s = f["imbalance_mm_s"]
        self.pump.cavitation = f["cavitation"]
        self.pump.leak = f["leak"]
        self.heater.element_health = f["element_health"]
        self.heater.flow_factor = f["heater_flow_factor"]

    def _check_watchdog(self) -> None:
        timeout_ms = self._cmd["watchdog_timeout_ms"]
        if (
            self._wd_armed
            and timeout_ms > 0
            and not self.watchdog_tripped
            and self._wd_clock() - self._wd_last_change > timeout_ms / 1000.0
        ):
            self.watchdog_tripped = True

    def _apply_power(self) -> None:
        out = self.heater.outputs()
        if out["tank_temp_true"] > OVERTEMP_C:
            self.overtemp = True
        low_flow = out["inlet_flow"] < LOW_FLOW_LPM
        if self._cmd["heater_enable"] < 0.5 or self.overtemp or low_flow:
            power = 0.0
        elif self.watchdog_tripped:
            power = self._cmd["safe_power"]
        else:
            power = self._cmd["heater_power"]
        self.heater.power_pct = power
        running = power > 0.0
        if running and not self._running:
            self._cycles += 1
        self._running = running

    def _fire_events(self) -> None:
        while self._events and self._events[0].at_s <= self.t_s:
            ev = self._events.pop(0)
            s = ev.set
            if "pump_speed_setpoint" in s:
                self.pump.speed_setpoint_pct = s["pump_speed_setpoint"]
            if "pump_valve_position" in s:
                self.pump.valve_position_pct = s["pump_valve_position"]
            heater_kw = {
                k2: s[k]
                for k, k2 in (
                    ("inlet_flow", "inlet_flow_lpm"),
                    ("inlet_temp", "inlet_temp_c"),
                    ("ambient_temp", "ambient_c"),
                )
                if k in s
            }
            if heater_kw:
                self.heater.set_disturbance(**heater_kw)
            if "surge_draw_flow" in s and "surge" in self.loops:
                self.loops["surge"].model.set_disturbance(draw_flow_lps=s["surge_draw_flow"])
            if "exchanger_flow" in s and "exchanger" in self.loops:
                self.loops["exchanger"].model.set_disturbance(flow_lpm=s["exchanger_flow"])

    # -- public API -----------------------------------------------------------------------
    def step(self, dt_s: float) -> None:
        """Advance the plant by `dt_s` sim seconds (PLC logic, faults, both models)."""
        if dt_s <= 0.0:
            return
        with self._lock:
            self._fire_events()
            self._check_watchdog()
            self._apply_power()
            health = self.heater.element_health
            p = self.heater.power_pct  # applied during this step
            self.heater.step(dt_s)
            self.pump.step(dt_s)
            for loop in self.loops.values():
                loop.step(dt_s)
            self.t_s += dt_s
            h = self.heater.outputs()
            self._energy_kwh += self.heater.params.rated_power_kw * p / 100.0 * health * dt_s / 3600
            self._flow_total_m3 += max(h["inlet_flow"], 0.0) * dt_s / 60.0 / 1000.0
            # PLC scan at the end of the step, so served status reflects this instant
            self._check_watchdog()
            self._apply_power()
            h = self.heater.outputs()
            self._element_current = ELEMENT_RATED_A * self.heater.power_pct / 100.0 * health
            signals = self._signals_raw(h)
            self._process_inputs = self.faults.update(self.t_s, signals)
            self._apply_process_faults()
            self._cache = None

    def _signals_raw(self, h: dict[str, float] | None = None) -> dict[str, float]:
        """Measured plant signals by point name, before sensor faults."""
        h = h or self.heater.outputs()
        sig = {
            "tank_temp": h["tank_temp"],
            "inlet_flow": h["inlet_flow"],
            "inlet_temp": h["inlet_temp"],
            "heater_power_fb": h["heater_power"],
            "ambient_temp": h["ambient_temp"],
            "element_current": self._element_current,
        }
        sig.update(self.pump.outputs())
        for loop in self.loops.values():
            sig.update(loop.signals())
        return sig

    def values(self) -> dict[str, float]:
        """Served values by point name (engineering units, sensor faults applied).

        Bools are 0.0/1.0; a dropped-out sensor is NaN.  Strings are in `texts()`.
        """
        with self._lock:
            if self._cache is None:
                self._cache = self._compute_values()
            return dict(self._cache)

    def _compute_values(self) -> dict[str, float]:
        h = self.heater.outputs()
        v = self._signals_raw(h)
        self.faults.apply_sensor(self.t_s, v)
        low_flow = h["inlet_flow"] < LOW_FLOW_LPM
        running = self.heater.power_pct > 0.0
        status = (
            (int(running) << pointmap.STATUS_BITS["heater_running"])
            | (int(self.overtemp) << pointmap.STATUS_BITS["overtemp_alarm"])
            | (int(self.watchdog_tripped) << pointmap.STATUS_BITS["watchdog_tripped"])
            | (int(self._cmd["heater_enable"] >= 0.5) << pointmap.STATUS_BITS["heater_enable"])
            | (int(low_flow) << pointmap.STATUS_BITS["low_flow"])
        )
        v.update(self._cmd)
        v.update(
            {
                "status_word": float(status),
                "low_flow_alarm": float(low_flow),
                "uptime_s": float(int(self.t_s)),
                "energy_kwh": self._energy_kwh,
                "heater_cycles": float(self._cycles),
                "flow_total_m3": self._flow_total_m3,
                "firmware_version": float(pointmap.FIRMWARE_VERSION),
                "fault_reset": 0.0,
                "watchdog_tripped": float(self.watchdog_tripped),
                "overtemp_alarm": float(self.overtemp),
                "heater_running": float(running),
                "pump_speed_setpoint": self.pump.speed_setpoint_pct,
                "pump_valve_position": self.pump.valve_position_pct,
            }
        )
        for name, source in _MIRRORS:
            v[name] = v[source]
        for loop in self.loops.values():
            v.update(loop.commands())
        return v

    def texts(self) -> dict[str, str]:
        """String points (read-only identity)."""
        return {"device_model": pointmap.DEVICE_MODEL}

    def truth(self) -> dict[str, float]:
        """Noise- and fault-free plant state (for scoring, never served)."""
        with self._lock:
            t = {f"heater_{k}": val for k, val in self.heater.true_state().items()}
            t.update({f"pump_{k}": val for k, val in self.pump.true_state().items()})
            t.update({f"fault_{k}": val for k, val in self._process_inputs.items()})
            for loop in self.loops.values():
                t.update(loop.truth())
            return t

    def write(self, name: str, value: float) -> None:
        """Write a point as a client would; the plant sees it at once.

        Raises SimWriteError for unknown or read-only points and values outside the map's
        min..max (the simulated PLC validates, as a careful PLC program does).
        """
        p = self.by_name.get(name)
        if p is None:
            raise SimWriteError(f"unknown point {name!r}")
        if not p.writable:
            raise SimWriteError(f"point {name!r} is read-only")
        value = float(value)
        if (
            math.isnan(value)
            or (p.min is not None and value < p.min)
            or (p.max is not None and value > p.max)
        ):
            raise SimWriteError(f"{name}={value} outside {p.min}..{p.max}")
        sig = p.signal
        with self._lock:
            loop = self._loop_units.get(p.unit_id or 0) if p.protocol == "modbus" else None
            if loop is not None:
                self.loops[loop].write(name, value)
                self._cache = None
                return
            if sig == "pump_speed_setpoint":
                self.pump.speed_setpoint_pct = value
            elif sig == "pump_valve_position":
                self.pump.valve_position_pct = value
            elif sig == "fault_reset":
                if value >= 0.5:
                    self.watchdog_tripped = False
                    self._wd_last_change = self._wd_clock()
                    if self.heater.outputs()["tank_temp_true"] < OVERTEMP_RESET_C:
                        self.overtemp = False
            elif sig == "heartbeat":
                if value != self._cmd["heartbeat"]:  # only a change proves the writer alive
                    self._wd_armed = True
                    self._wd_last_change = self._wd_clock()
                self._cmd["heartbeat"] = value
            elif sig == "heater_enable":
                self._cmd[sig] = 1.0 if value >= 0.5 else 0.0
            else:
                self._cmd[sig] = value
            if sig == "watchdog_timeout_ms":
                self._wd_last_change = self._wd_clock()
            self._check_watchdog()
            self._apply_power()
            health = self.heater.element_health
            self._element_current = ELEMENT_RATED_A * self.heater.power_pct / 100.0 * health
            self._cache = None

    def inject(self, spec: FaultSpec | dict[str, Any]) -> None:
        """Schedule a fault at run time (`at_s` is sim time; use `t_s` for "now")."""
        if isinstance(spec, dict):
            spec = FaultSpec.model_validate(spec)
        with self._lock:
            self.faults.add(spec)

    def close(self) -> None:
        """Stop the real-time thread if any; end open faults in the ground-truth log."""
        self.stop_thread()
        with self._lock:
            self.faults.close(self.t_s)

    # -- real time ------------------------------------------------------------------------
    async def run(self, period_s: float = 0.05) -> None:
        """Step in real time x speed on the event loop until cancelled (drift-free)."""
        self.realtime = True
        with self._lock:
            self._wd_last_change = time.monotonic()
            for loop in self.loops.values():
                loop.restart_clock()
        last = time.monotonic()
        next_t = last + period_s
        try:
            while True:
                await asyncio.sleep(max(next_t - time.monotonic(), 0.0))
                now = time.monotonic()
                self.step((now - last) * self.speed)
                last = now
                next_t += period_s
                if next_t < now:  # fell behind (a blocked loop): do not try to catch up
                    next_t = now + period_s
        finally:
            self.realtime = False

    def start_thread(self, period_s: float = 0.05) -> None:
        """Step in real time x speed on a daemon thread (for sync users and fixtures)."""
        if self._thread is not None:
            return
        self.realtime = True
        with self._lock:
            self._wd_last_change = time.monotonic()
            for loop in self.loops.values():
                loop.restart_clock()
        self._stop.clear()

        def loop() -> None:
            last = time.monotonic()
            while not self._stop.wait(period_s):
                now = time.monotonic()
                self.step((now - last) * self.speed)
                last = now

        self._thread = threading.Thread(target=loop, name="hw_sim-plant", daemon=True)
        self._thread.start()

    def stop_thread(self) -> None:
        """Stop the stepping thread started by `start_thread`."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._thread = None
        self.realtime = False
