"""Loop plants inside SimPlant: opt-in, seeded by loop_seed, their PLC logic and point map."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from hw_sim import pointmap
from hw_sim.faults import MEASURED_SIGNALS, random_faults
from hw_sim.runtime import SimPlant, SimWriteError

ROOT = Path(__file__).resolve().parents[2]
LOOPS = ("surge", "exchanger")


def test_default_plant_is_unchanged() -> None:
    plain = SimPlant(seed=1)
    assert plain.loops == {}
    assert plain.points == pointmap.POINTS
    assert not any(k.startswith(LOOPS) for k in plain.values())
    with pytest.raises(SimWriteError, match="unknown point"):
        plain.write("surge_valve_cmd", 50.0)
    # random fault schedules never draw loop signals: a seed's schedule is as before
    assert not any(s.startswith(LOOPS) for s in MEASURED_SIGNALS)
    with_loops = SimPlant(seed=1, loops=LOOPS)
    for _ in range(50):
        plain.step(0.2)
        with_loops.step(0.2)
    a, b = plain.values(), with_loops.values()
    assert {k: b[k] for k in a} == a  # the heater and pump do not notice the loops


def test_unknown_loop_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown loop"):
        SimPlant(loops=("boiler",))
    assert pointmap.parse_loops("all") == LOOPS
    assert pointmap.parse_loops("exchanger, surge,surge") == ("exchanger", "surge")
    assert pointmap.parse_loops("") == ()
    with pytest.raises(ValueError, match="known: surge, exchanger, all"):
        pointmap.parse_loops("surge,boiler")


def test_loop_seed_draws_the_parameters() -> None:
    a = SimPlant(seed=1, loops=LOOPS)
    b = SimPlant(seed=2, loops=LOOPS, loop_seed=1)
    c = SimPlant(seed=1, loops=LOOPS, loop_seed=7)
    for n in LOOPS:
        assert a.loops[n].params == b.loops[n].params
        assert a.loops[n].params != c.loops[n].params
        assert c.loops[n].seed == 7


def test_served_points_and_starting_state() -> None:
    plant = SimPlant(seed=3, loops=LOOPS)
    v = plant.values()
    for p in pointmap.loop_points(LOOPS):
        assert p.name in v, p.name
        if p.min is not None:
            assert p.min <= v[p.name] <= p.max, p.name
    # the command starts where the plant is at rest: the applied output equals it
    for n in LOOPS:
        assert v[f"{n}_valve_cmd"] == v[f"{n}_valve_fb"]
        assert 5.0 <= v[f"{n}_valve_cmd"] <= 95.0
    assert v["surge_level"] == pytest.approx(1.0, abs=0.02)
    assert v["exchanger_outlet_temp"] == pytest.approx(45.0, abs=0.3)
    assert {p.unit_id for p in pointmap.loop_points(LOOPS)} == {3, 4}
    assert len(plant.modbus_points()) == len(pointmap.modbus_points()) + len(pointmap.loop_points())


@pytest.mark.parametrize(
    ("loop", "pv", "truth"),
    [("surge", "surge_level", "surge_level"), ("exchanger", "exchanger_outlet_temp", None)],
)
def test_command_moves_the_plant(loop: str, pv: str, truth: str | None) -> None:
    plant = SimPlant(seed=4, loops=(loop,), loop_disturbances=False)
    y0 = plant.values()[pv]
    u0 = plant.values()[f"{loop}_valve_cmd"]
    plant.write(f"{loop}_valve_cmd", u0 + 5.0)
    assert plant.values()[f"{loop}_valve_fb"] == u0 + 5.0
    for _ in range(1200):
        plant.step(0.1)
    assert plant.values()[pv] > y0 + 0.05
    assert f"{loop}_stem" in plant.truth()


def test_writes_are_validated() -> None:
    plant = SimPlant(loops=("surge",))
    for bad in (-1.0, 100.5, math.nan):
        with pytest.raises(SimWriteError):
            plant.write("surge_valve_cmd", bad)
    with pytest.raises(SimWriteError, match="read-only"):
        plant.write("surge_level", 1.0)
    with pytest.raises(SimWriteError, match="unknown point"):
        plant.write("exchanger_valve_cmd", 50.0)  # not enabled


def test_heartbeat_watchdog_and_safe_output() -> None:
    plant = SimPlant(loops=LOOPS, loop_disturbances=False)
    plant.write("exchanger_safe_output", 10.0)
    plant.write("exchanger_valve_cmd", 60.0)
    for _ in range(100):  # unarmed: no heartbeat ever written, never trips
        plant.step(0.1)
    assert plant.values()["exchanger_watchdog_tripped"] == 0.0
    plant.write("exchanger_heartbeat", 1.0)
    assert plant.values()["exchanger_status"] == 2.0  # armed
    for _ in range(20):
        plant.step(0.1)
    plant.write("exchanger_heartbeat", 2.0)  # alive
    for _ in range(25):
        plant.step(0.1)
    assert plant.values()["exchanger_watchdog_tripped"] == 0.0
    plant.write("exchanger_heartbeat", 2.0)  # the same value does not count
    for _ in range(10):
        plant.step(0.1)
    v = plant.values()
    assert v["exchanger_watchdog_tripped"] == 1.0
    assert v["exchanger_status"] == 3.0
    assert v["exchanger_valve_fb"] == 10.0  # the PLC applies its safe output
    assert v["exchanger_valve_cmd"] == 60.0
    assert v["surge_watchdog_tripped"] == 0.0  # loops are independent PLCs
    plant.write("exchanger_valve_cmd", 70.0)
    assert plant.values()["exchanger_valve_fb"] == 10.0  # latched
    plant.write("exchanger_fault_reset", 1.0)
    v = plant.values()
    assert v["exchanger_watchdog_tripped"] == 0.0 and v["exchanger_valve_fb"] == 70.0
    assert v["exchanger_fault_reset"] == 0.0  # self-clearing
    plant.write("exchanger_watchdog_timeout_ms", 0.0)  # disabled
    for _ in range(100):
        plant.step(0.1)
    assert plant.values()["exchanger_watchdog_tripped"] == 0.0


def test_sensor_faults_and_events_reach_loop_signals() -> None:
    scenario = {
        "events": [{"at_s": 5.0, "set": {"surge_draw_flow": 0.2, "exchanger_flow": 15.0}}],
        "faults": [{"kind": "dropout", "signal": "surge_level", "at_s": 2.0, "duration_s": 2.0}],
    }
    from hw_sim.faults import Scenario

    plant = SimPlant(seed=1, loops=LOOPS, scenario=Scenario.model_validate(scenario))
    for _ in range(30):
        plant.step(0.1)
    assert math.isnan(plant.values()["surge_level"])
    for _ in range(200):
        plant.step(0.1)
    assert not math.isnan(plant.values()["surge_level"])
    t = plant.truth()
    assert t["surge_draw_flow"] == pytest.approx(0.2, abs=0.01)
    assert t["exchanger_flow"] == pytest.approx(15.0, abs=0.01)
    # a plant without the loop ignores such events and faults
    quiet = SimPlant(seed=1, scenario=Scenario.model_validate(scenario))
    for _ in range(60):
        quiet.step(0.1)
    assert "surge_level" not in quiet.values()


def test_random_faults_unchanged_by_the_loops() -> None:
    faults = random_faults(3, 20000.0)
    assert all(not (f.signal or "").startswith(LOOPS) for f in faults)


def test_print_map_with_loops() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hw_sim", "--print-map", "--loops", "all"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    points = json.loads(out)
    assert len(points) == len(pointmap.POINTS) + len(pointmap.loop_points())
    by = {p["name"]: p for p in points}
    cmd = by["surge_valve_cmd"]
    assert (cmd["unit_id"], cmd["table"], cmd["address"], cmd["type"]) == (
        3,
        "holding",
        0,
        "float32",
    )
    assert cmd["writable"] and (cmd["min"], cmd["max"]) == (0.0, 100.0)
    assert by["exchanger_outlet_temp"]["unit_id"] == 4
    bad = subprocess.run(
        [sys.executable, "-m", "hw_sim", "--print-map", "--loops", "boiler"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "unknown loop" in bad.stderr


def test_same_layout_on_every_loop_unit() -> None:
    layouts = []
    for n in LOOPS:
        pts = pointmap.LOOP_POINTS[n]
        layouts.append([(p.name[len(n) + 1 :] if p.name.startswith(n + "_") else p.name,
                         p.table, p.address, p.type, p.writable) for p in pts])  # fmt: skip
    # the pv and disturbance names differ; tables, addresses, types and rights do not
    assert [x[1:] for x in layouts[0]] == [x[1:] for x in layouts[1]]
    for n in LOOPS:
        for p in pointmap.LOOP_POINTS[n]:
            size = pointmap.LOOP_TABLE_SIZE[p.table]
            assert p.address + p.width <= size


def test_docs_loop_map_in_sync() -> None:
    doc = (ROOT / "docs" / "hw_sim.md").read_text()
    assert pointmap.loop_map_markdown() in doc, (
        "regenerate: python -c 'from hw_sim.pointmap import loop_map_markdown as m; print(m())'"
    )
