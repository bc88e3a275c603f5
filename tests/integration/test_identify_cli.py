"""`edgeloop identify` on a real SQLite history written by HistoryStore: a valve -> outlet
temperature plant with a measured flow disturbance, simulated here and recorded at a 0.25 s
poll; the command reads the loop's roles back by tag name, resamples to the loop period,
identifies, prints the SIMC PID and writes the model card; flat data is refused."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from agent import cli
from agent.commands import identify as identify_cmd
from agent.control.ident import LinearModel
from agent.store import HistoryStore, StoreConfig
from agent.store.history import iso
from agent.tags import TagTable

T0 = 1_700_000_000  # epoch seconds of the first frame
POLL = 0.25
FLAT_S = 300.0  # the valve and the flow held still at first
TEST_S = 1200.0  # then moves
K, TAU, THETA = 0.8, 20.0, 3.0  # valve % -> outlet degC
KD, TAUD, THETAD = -0.5, 10.0, 1.5  # flow -> outlet degC

CONFIG = """
site: ident-test
devices:
  - name: plc
    driver: modbus
    host: 127.0.0.1
    port: 5020
    timeout_s: 0.2
    poll_groups:
      - name: fast
        interval_ms: 250
        tags:
          - {{name: outlet_temp, table: input, address: 0, type: float32}}
          - {{name: process_flow, table: input, address: 2, type: float32}}
          - {{name: valve_cmd, table: holding, address: 10, type: float32, writable: true,
             min: 0, max: 100, max_rate_per_s: 20}}
          - {{name: spare, table: input, address: 4, type: float32}}
          - {{name: spare_cmd, table: holding, address: 12, type: float32, writable: true,
             min: 0, max: 100}}
control:
  loops:
    - name: outlet_temp
      period_ms: 500
      inputs: {{pv: outlet_temp, flow: process_flow}}
      output: valve_cmd
      setpoint: {{value: 40, min: 20, max: 80}}
      mode: manual
      output_min: 5
      output_max: 100
      fallback: {{kind: hold}}
    - name: spare_loop
      period_ms: 500
      inputs: {{pv: spare}}
      output: spare_cmd
      setpoint: {{value: 1}}
      mode: "off"
      fallback: {{kind: hold}}
store:
  path: {db}
"""


@dataclass
class Group:
    device: str
    name: str
    start: int
    stop: int


def _lag(x: np.ndarray, k: float, tau: float, theta: float, dt: float) -> np.ndarray:
    """Exact ZOH response (deviation from x[0]) of k e^(-theta s)/(tau s + 1), theta a whole
    number of samples of dt."""
    nd = round(theta / dt)
    xd = np.concatenate((np.full(nd, x[0]), x))[: len(x)] - x[0]
    a = math.exp(-dt / tau)
    y = np.empty(len(x))
    st = 0.0
    for i, v in enumerate(xd):
        y[i] = st
        st = a * st + (1 - a) * k * v
    return y


def _plant() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    n = round((FLAT_S + TEST_S) / POLL)
    t = T0 + np.arange(n) * POLL
    moving = t >= T0 + FLAT_S
    # the valve changes on the 0.5 s loop period: GBN between 35 and 55 %, mean hold ~15 s
    per = np.arange(n) // 2
    flips = rng.random(per[-1] + 1) < 1.0 / 30
    valve = np.where(np.cumsum(flips)[per] % 2 == 0, 35.0, 55.0)
    valve[~moving] = 45.0
    flow = 12.0 + np.repeat(rng.normal(0, 1.5, n // 400 + 1), 400)[:n]
    flow[~moving] = 12.0
    y = 40.0 + _lag(valve, K, TAU, THETA, POLL) + _lag(flow, KD, TAUD, THETAD, POLL)
    y += rng.normal(0, 0.05, n)
    return t, valve, flow, y


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("ident")
    db = d / "history.db"
    cfg = d / "plant.yaml"
    cfg.write_text(CONFIG.format(db=db))
    table = TagTable.for_names(["outlet_temp", "process_flow", "valve_cmd", "spare", "spare_cmd"])
    store = HistoryStore(StoreConfig(path=str(db), queue_max=100_000), table)
    store.start()
    group = Group("plc", "fast", 0, 3)  # `spare` and `spare_cmd` are never recorded
    t, valve, flow, y = _plant()
    for k in range(len(t)):
        table.raw[:3] = (y[k], flow[k], valve[k])
        table.value[:3] = table.raw[:3]
        assert store.submit_frame(group, round(t[k] * 1e9))
    assert store.flush()
    store.close()
    return cfg, db


def test_identifies_from_history_and_writes_the_card(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, db = setup
    out = tmp_path / "models"
    rc = cli.main(
        ["identify", str(cfg), "--loop", "outlet_temp", "--history", str(db), "--out", str(out)]
    )
    got = capsys.readouterr()
    assert rc == 0, got.err
    assert "FOPDT: K" in got.out and "SIMC PID" in got.out and "fallback: {kind: pid" in got.out
    assert "disturbance flow" in got.out and "accepted" in got.out
    assert "pv outlet_temp, output valve_cmd, flow process_flow" in got.err
    card = json.loads((out / "outlet_temp.model.json").read_text())
    m = LinearModel.from_card(card)
    assert m.dt_s == 0.5 and m.d_names == ("flow",)
    assert m.gain() == pytest.approx(K, rel=0.1)
    assert m.input_gains()[1] == pytest.approx(KD, rel=0.1)
    fo = card["info"]["fopdt"]
    assert fo["tau_s"] == pytest.approx(TAU, rel=0.1)
    assert fo["theta_s"] == pytest.approx(THETA, rel=0.1)
    assert card["info"]["fit_pct"] > 90.0
    src = card["info"]["source"]
    assert src["tags"] == {"pv": "outlet_temp", "output": "valve_cmd", "flow": "process_flow"}
    assert src["history"] == str(db) and len(src["config_sha256"]) == 16
    pid = card["info"]["simc_pid"]
    assert pid["kp"] == pytest.approx(fo["tau_s"] / (fo["K"] * 2 * fo["theta_s"]), rel=1e-6)


def test_history_from_the_config_and_json(
    setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, _db = setup
    since = iso(round((T0 + FLAT_S - 60) * 1e9))
    rc = cli.main(["identify", str(cfg), "--loop", "outlet_temp", "--since", since, "--json"])
    got = capsys.readouterr()
    assert rc == 0, got.err
    doc = json.loads(got.out.strip().splitlines()[-1])
    assert doc["ok"] is True and doc["fit_pct"] > 90.0 and doc["written"] is None
    assert doc["fopdt"]["K"] == pytest.approx(K, rel=0.1)
    assert doc["samples"] == pytest.approx((TEST_S + 60) / 0.5, abs=2)
    assert doc["simc_pid"]["direct_acting"] is False


def test_flat_window_is_not_informative(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, db = setup
    until = iso(round((T0 + FLAT_S - 10) * 1e9))
    args = ["identify", str(cfg), "--loop", "outlet_temp", "--history", str(db)]
    rc = cli.main([*args, "--until", until, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "not informative" in err and "output did not move" in err and "45" in err
    assert not (tmp_path / "outlet_temp.model.json").exists()


def test_refused_model_exits_1(
    setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, db = setup
    rc = cli.main(
        ["identify", str(cfg), "--loop", "outlet_temp", "--history", str(db), "--min-fit", "99.9"]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "model refused" in err and "below 99.9" in err


def test_bad_requests(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, db = setup
    assert cli.main(["identify", str(cfg), "--loop", "nope", "--history", str(db)]) == 78
    assert "no control loop 'nope'" in capsys.readouterr().err
    missing = str(tmp_path / "none.db")
    assert cli.main(["identify", str(cfg), "--loop", "outlet_temp", "--history", missing]) == 66
    assert "no history database" in capsys.readouterr().err
    assert cli.main(["identify", str(cfg), "--loop", "spare_loop", "--history", str(db)]) == 1
    err = capsys.readouterr().err
    assert "no recorded samples of spare_cmd (output), spare (pv)" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: x\ndevices: 3\n")
    assert cli.main(["identify", str(bad), "--loop", "outlet_temp"]) == 78


def test_resample_holds_the_last_good_sample_and_gaps_split() -> None:
    ns = 10**9
    ts = np.array([0, 1, 2, 3, 4, 20, 21, 22, 23, 24, 25], dtype=np.int64) * ns // 4
    v = np.arange(len(ts), dtype=float)
    q = np.zeros(len(ts), dtype=np.uint8)
    q[2] = 1  # bad: the sample before it is held
    series = {"a": (ts, v, v, q), "b": (ts, v * 10, v * 10, np.zeros(len(ts), dtype=np.uint8))}
    t, vals, notes = identify_cmd.resample(series, ["a", "b"], 0.5)
    assert t[0] == 0.0 and np.allclose(np.diff(t), 0.5)
    assert vals[0, 0] == 0.0 and vals[1, 0] == 1.0  # tick 0.5 s: sample at 0.5 s is bad
    assert any("1 of 11 samples bad" in n for n in notes)
    assert vals[5, 0] == 4.0  # 2.5 s: the sample of 1.0 s, 3 periods old, still good
    assert np.all(np.isnan(vals[6:10, 0]))  # 3.0 .. 4.5 s: older than 3 periods, a gap
    assert vals[10, 0] == 5.0 and vals[10, 1] == 50.0
    # a gap of 4 periods splits the data; one of up to `max_fill` periods would be filled
    assert identify_cmd.longest_run(vals, max_fill=2) == (0, 6)
    assert identify_cmd.longest_run(vals, max_fill=4) == (0, 13)


def test_long_windows_are_capped_with_a_note(
    setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, db = setup
    args = ["identify", str(cfg), "--loop", "outlet_temp", "--history", str(db), "--json"]
    rc = cli.main([*args, "--max-periods", "1500"])
    got = capsys.readouterr()
    assert rc == 0, got.err
    assert "3000 periods in the window: using the latest 1500" in got.err
    assert json.loads(got.out.strip().splitlines()[-1])["samples"] == 1500
