"""`edgeloop replay` on a few real Tennessee Eastman rows (tests/fixtures/tep, licence there).

200 normal rows to learn from, then 20 normal and 60 faulty rows of fault 1: the group,
given a 1 % false-alarm budget, stays quiet before the fault and alarms within a few
samples of it, naming a measurement the fault moves.
"""

from __future__ import annotations

import csv
from pathlib import Path

from agent.cli import main

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tep" / "d00_d01te_rows.csv"
WARMUP = 200
FAULT_ROW = 220  # 0-based: the first faulty row of the file


def test_fault_one_is_caught_quickly_and_normal_rows_stay_quiet(tmp_path, capsys) -> None:
    names = next(csv.reader(FIXTURE.open()))
    cfg = tmp_path / "k.yaml"
    cfg.write_text(
        "defaults: {filter: none, hampel_window: 0, stuck_samples: 0}\n"
        f"groups:\n  - {{name: tep, tags: [{', '.join(names)}], warmup_samples: {WARMUP},"
        " false_alarm_rate: 0.01}\n"
    )
    out = tmp_path / "out.csv"
    assert main(["replay", str(FIXTURE), "--out", str(out), "--config", str(cfg)]) == 0
    anomaly = [int(r["anomaly"]) for r in csv.DictReader(out.open())]
    assert len(anomaly) == 280
    assert sum(anomaly[WARMUP:FAULT_ROW]) == 0  # 20 unseen normal rows (1 hour)
    first = anomaly.index(1)
    assert FAULT_ROW <= first <= FAULT_ROW + 10  # within 30 minutes of the step
    assert sum(anomaly[first:]) / len(anomaly[first:]) > 0.9
    err = capsys.readouterr().err
    assert "budget 0.01 of samples" in err and "top contributor: xmeas" in err
