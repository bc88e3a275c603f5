"""The CSV replay driver (`driver: csv`), the third driver: added as a contributor would,
without an edit under agent/ (docs/architecture.md, "How to write a driver")."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from agent.config import ConfigError, parse_config
from agent.tags import compile_config
from drivers import registry
from drivers.base import Quality, Reason, WriteRefused
from drivers.csv_config import CsvDevice
from drivers.csv_replay import CsvFileError, CsvReplayDriver, load_rows
from drivers.modbus_config import ModbusDevice
from drivers.registry import DriverSpec, specs

DATA = """t,temp,flow,state,label,count
0,20.5,1.0,true,idle,1
0.5,21.0,1.5,false,run,2
1.0,21.5,,1,run,2.5
1.5,22.0,2.5,0,stop,70000
"""


def _config(tmp_path: Path, **device: object) -> str:
    (tmp_path / "data.csv").write_text(DATA)
    extra = "".join(f"    {k}: {v}\n" for k, v in device.items())
    return f"""site: t
devices:
  - name: rec
    driver: csv
    file: data.csv
{extra}    poll_groups:
      - name: g
        interval_ms: 100
        tags:
          - {{name: temp, column: temp, unit: degC}}
          - {{name: flow, column: flow, scale: 2, offset: 1}}
          - {{name: state, column: state, type: bool}}
          - {{name: label, column: label, type: string}}
          - {{name: count, column: count, type: int16}}
          - {{name: sp, column: temp, writable: true, min: 0, max: 50}}
"""


def _compiled(tmp_path: Path, **device: object):  # type: ignore[no-untyped-def]
    path = tmp_path / "plant.yaml"
    path.write_text(_config(tmp_path, **device))
    return compile_config(parse_config(path.read_bytes(), str(path)))


def _read_all(drv: CsvReplayDriver, plan: object, n: int) -> list:  # type: ignore[type-arg]
    async def go() -> list:  # type: ignore[type-arg]
        await drv.connect()
        return [await drv.read(plan) for _ in range(n)]  # type: ignore[arg-type]

    return asyncio.run(go())


def test_csv_is_registered_beside_the_built_in_drivers() -> None:
    assert list(specs()) == ["modbus", "opcua", "csv"]
    assert specs()["csv"].device is CsvDevice


def test_each_poll_takes_the_next_row_in_engineering_units_and_loops(tmp_path: Path) -> None:
    c = _compiled(tmp_path)
    drv = c.drivers["rec"]
    plan = c.plans[("rec", "g")]
    assert [p.ref for p in c.table.points] == ["temp", "flow", "state", "label", "count", "temp"]
    rows = _read_all(drv, plan, 5)  # type: ignore[arg-type]
    assert [r.values[0] for r in rows] == [20.5, 21.0, 21.5, 22.0, 20.5]  # 5th poll: row 1
    assert rows[0].values[1] == 3.0 and rows[1].values[1] == 4.0  # 1.0 * 2 + 1, 1.5 * 2 + 1
    assert [r.values[2] for r in rows[:4]] == [1.0, 0.0, 1.0, 0.0]
    assert [r.texts[3] for r in rows[:4]] == ["idle", "run", "run", "stop"]
    assert (rows[0].quality == Quality.GOOD).all()


def test_a_cell_that_is_not_of_its_type_reads_bad_with_decode_error(tmp_path: Path) -> None:
    c = _compiled(tmp_path)
    rows = _read_all(c.drivers["rec"], c.plans[("rec", "g")], 4)  # type: ignore[arg-type]
    # row 3: empty flow, count 2.5 (not an int16); row 4: count 70000 (out of int16)
    assert rows[2].quality[1] == Quality.BAD and rows[2].reason[1] == Reason.DECODE_ERROR
    assert np.isnan(rows[2].values[1])
    assert rows[2].quality[4] == Quality.BAD and rows[3].quality[4] == Quality.BAD
    assert rows[1].values[4] == 2.0 and rows[1].quality[4] == Quality.GOOD


def test_without_loop_the_last_row_holds_and_turns_stale(tmp_path: Path) -> None:
    c = _compiled(tmp_path, loop="false")
    rows = _read_all(c.drivers["rec"], c.plans[("rec", "g")], 6)  # type: ignore[arg-type]
    assert [r.values[0] for r in rows] == [20.5, 21.0, 21.5, 22.0, 22.0, 22.0]
    assert (rows[3].quality[:4] == Quality.GOOD).all()
    assert (rows[4].quality == Quality.STALE).all() and (rows[5].reason == Reason.STALE).all()


def test_with_a_time_column_rows_follow_the_recorded_pace(tmp_path: Path) -> None:
    c = _compiled(tmp_path, time_column="t")
    drv: CsvReplayDriver = c.drivers["rec"]  # type: ignore[assignment]
    plan = c.plans[("rec", "g")]

    async def at(elapsed: float) -> float:
        drv._started = time.monotonic() - elapsed  # the replay clock, set as if connected then
        return float((await drv.read(plan)).values[0])  # type: ignore[arg-type]

    async def go() -> list[float]:
        await drv.connect()
        return [await at(s) for s in (0.0, 0.2, 0.6, 1.2, 1.6, 2.1)]

    # rows at 0, 0.5, 1.0, 1.5 s; the loop period is 2 s (last row + the usual step)
    assert asyncio.run(go()) == [20.5, 20.5, 21.0, 21.5, 22.0, 20.5]


def test_a_write_is_recorded_and_read_back_only_on_writable_tags(tmp_path: Path) -> None:
    c = _compiled(tmp_path)
    drv: CsvReplayDriver = c.drivers["rec"]  # type: ignore[assignment]
    plan = c.plans[("rec", "g")]
    sp, temp = c.table.points[5], c.table.points[0]

    async def go() -> tuple[float, float]:
        await drv.connect()
        await drv.write([(sp, 42.0)])
        with pytest.raises(WriteRefused):
            await drv.write([(temp, 1.0)])
        r = await drv.read(plan)  # type: ignore[arg-type]
        return float(r.values[5]), float(r.values[0])

    assert asyncio.run(go()) == (42.0, 20.5)
    assert [(name, v) for _, name, v in drv.writes] == [("sp", 42.0)]


def test_plan_describes_one_row_read_per_group(tmp_path: Path) -> None:
    c = _compiled(tmp_path)
    (req,) = c.requests(c.groups[0])
    assert req.function == "CSV row of data.csv (4 rows)"
    assert req.tags == ("temp", "flow", "state", "label", "count", "sp")
    assert "1 read requests per cycle" in c.summary()


def test_missing_file_and_unknown_column_are_file_line_problems(tmp_path: Path) -> None:
    text = _config(tmp_path).replace("column: flow,", "column: flw,")
    with pytest.raises(ConfigError) as info:
        parse_config(text, str(tmp_path / "plant.yaml"))
    assert str(info.value) == (
        f"{tmp_path}/plant.yaml:11: devices[0].poll_groups[0].tags[1].column: no column "
        "'flw' in data.csv (columns: t, temp, flow, state, label, count)"
    )
    text = _config(tmp_path).replace("file: data.csv", "file: gone.csv")
    with pytest.raises(ConfigError) as info:
        parse_config(text, str(tmp_path / "plant.yaml"))
    assert str(info.value) == (
        f"{tmp_path}/plant.yaml:5: devices[0].file: cannot read {tmp_path}/gone.csv: "
        "No such file or directory"
    )


def test_other_drivers_keys_get_the_other_driver_hint(tmp_path: Path) -> None:
    text = _config(tmp_path).replace("column: state,", "column: state, node: i=1,")
    text = text.replace("file: data.csv", "file: data.csv\n    host: plc1")
    with pytest.raises(ConfigError) as info:
        parse_config(text, "plant.yaml", check_files=False)
    assert str(info.value).splitlines() == [
        "plant.yaml:6: devices[0].host: is a Modbus key, not one of a CSV device",
        "plant.yaml:13: devices[0].poll_groups[0].tags[2].node: is an OPC UA key; CSV tags "
        "are addressed by column",
    ]


def test_the_loader_refuses_a_file_whose_times_go_back(tmp_path: Path) -> None:
    path = tmp_path / "back.csv"
    path.write_text("t,x\n0,1\n2,2\n1,3\n")
    with pytest.raises(CsvFileError, match="line 4: t goes back in time"):
        load_rows(path, ",", ["x"], "t")
    path.write_text("t,x\n")
    with pytest.raises(CsvFileError, match="no data rows"):
        load_rows(path, ",", ["x"], None)


def test_group_keys_of_other_drivers_and_subscribe_name_the_driver(tmp_path: Path) -> None:
    text = _config(tmp_path).replace(
        "        interval_ms: 100\n", "        interval_ms: 100\n        mode: subscribe\n"
        "        deadband_abs: 0.5\n"
    )  # fmt: skip
    with pytest.raises(ConfigError) as info:
        parse_config(text, "plant.yaml", check_files=False)
    assert str(info.value).splitlines() == [
        "plant.yaml:9: devices[0].poll_groups[0].mode: subscribe is OPC UA only; CSV groups are "
        "polled",
        "plant.yaml:10: devices[0].poll_groups[0].deadband_abs: is an OPC UA poll group key; not "
        "one of a CSV group",
    ]


def test_the_registry_refuses_a_spec_whose_model_names_another_driver() -> None:
    with pytest.raises(TypeError, match="must be Literal\\['csv'\\]"):
        registry._load(f"{__name__}:WRONG_SPEC")


# a contributor's slip: the csv entry pointing at the Modbus device model
WRONG_SPEC = DriverSpec(
    name="csv", device=ModbusDevice, factory="drivers.csv_replay:create", label="CSV"
)
