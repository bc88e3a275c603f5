"""SimPlant: PLC logic, watchdog, write validation and determinism, stepped offline."""

from __future__ import annotations

import io
import json

import pytest

from hw_sim.runtime import SimPlant, SimWriteError

DEMO = "hw_sim/scenarios/demo.yaml"


def test_deterministic_for_a_seed() -> None:
    runs = []
    for seed in (5, 5, 6):
        log = io.StringIO()
        p = SimPlant(seed=seed, scenario=None, faults_log=log)
        p.write("heater_power", 35.0)
        p.inject({"kind": "noise_burst", "signal": "pump_flow", "at_s": 5, "duration_s": 5})
        trace = []
        for _ in range(200):
            p.step(0.1)
            trace.append(p.values())
        p.close()
        runs.append((trace, [json.loads(x)["start_s"] for x in log.getvalue().splitlines()]))
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0]


def test_demo_scenario_is_deterministic_and_logs_every_fault() -> None:
    logs = []
    for _ in range(2):
        log = io.StringIO()
        p = SimPlant(scenario=DEMO, faults_log=log)
        for _ in range(1600):
            p.step(0.1)
        p.close()
        recs = [json.loads(x) for x in log.getvalue().splitlines()]
        for r in recs:
            r.pop("start_wall"), r.pop("end_wall")
        logs.append(recs)
    assert logs[0] == logs[1]
    ends = [r for r in logs[0] if r["event"] == "end"]
    assert len(ends) == len(p.scenario.faults)
    assert all(r["end_s"] > r["start_s"] for r in ends)


def test_watchdog_in_sim_time() -> None:
    p = SimPlant(heater_disturbances=False)
    p.write("safe_power", 5.0)
    p.write("heater_power", 70.0)
    p.step(10.0)  # not armed yet: no heartbeat was ever written
    assert p.values()["watchdog_tripped"] == 0.0
    p.write("heartbeat", 1)
    for hb in range(2, 10):
        p.step(1.0)
        p.write("heartbeat", hb)
    v = p.values()
    assert v["watchdog_tripped"] == 0.0 and v["heater_power_fb"] == 70.0
    p.step(3.5)  # > 3000 ms default timeout without a change
    v = p.values()
    assert v["watchdog_tripped"] == 1.0 and v["heater_power_fb"] == 5.0
    p.write("fault_reset", 1)
    assert p.values()["heater_power_fb"] == 70.0
    p.step(3.5)  # reset restarts the timeout, but nobody is alive: trips again
    assert p.values()["watchdog_tripped"] == 1.0
    p.write("watchdog_timeout_ms", 0)  # disabled
    p.write("fault_reset", 1)
    p.step(10.0)
    assert p.values()["watchdog_tripped"] == 0.0


def test_enable_and_overtemp_interlocks() -> None:
    p = SimPlant(heater_disturbances=False)
    p.write("heater_power", 100.0)
    p.write("heater_enable", 0)
    p.step(1.0)
    assert p.values()["heater_power_fb"] == 0.0
    p.write("heater_enable", 1)
    p.heater.set_disturbance(inlet_flow_lpm=5.0, ramp=False)
    for _ in range(300):
        p.step(1.0)
    v = p.values()
    assert v["overtemp_alarm"] == 1.0 and v["heater_power_fb"] == 0.0
    p.write("heater_power", 0.0)
    for _ in range(300):
        p.step(1.0)
    p.write("heater_power", 20.0)
    assert p.values()["heater_power_fb"] == 0.0  # latched until reset
    p.write("fault_reset", 1)
    assert p.values()["overtemp_alarm"] == 0.0 and p.values()["heater_power_fb"] == 20.0


def test_writes_are_validated() -> None:
    p = SimPlant()
    with pytest.raises(SimWriteError):
        p.write("heater_power", 100.5)
    with pytest.raises(SimWriteError):
        p.write("heater_power", float("nan"))
    with pytest.raises(SimWriteError):
        p.write("tank_temp", 20.0)
    with pytest.raises(SimWriteError):
        p.write("no_such_point", 1.0)
    p.write("pump_valve_position_mb", 40.0)  # the Modbus mirror writes the same signal
    assert p.values()["pump_valve_position"] == 40.0
    assert p.values()["pump_valve_position_mb"] == 40.0


def test_counters_advance() -> None:
    p = SimPlant(heater_disturbances=False)
    p.write("heater_power", 50.0)
    p.step(3600.0)
    v = p.values()
    assert v["uptime_s"] == 3600.0
    assert v["energy_kwh"] == pytest.approx(20.0, rel=0.01)  # 40 kW x 50 % x 1 h
    assert v["flow_total_m3"] == pytest.approx(0.6, rel=0.05)  # 10 L/min x 60 min
    assert v["heater_cycles"] == 1.0
    assert v["element_current"] == pytest.approx(17.5)
