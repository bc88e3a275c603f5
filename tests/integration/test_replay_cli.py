"""`edgeloop replay` on real CSV files written by the tests, through the real CLI entry point."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.cli import main
from agent.kernel import flags as F

ROOT = Path(__file__).resolve().parents[2]


def pump_rows(n: int, seed: int = 0, break_at: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    speed = np.empty(n)
    speed[0] = 50.0
    for i in range(1, n):
        speed[i] = 50.0 + 0.9 * (speed[i - 1] - 50.0) + rng.normal(0, 0.5)
    current = 0.2 * speed + rng.normal(0, 0.05, n)
    flow = 2.0 * speed + rng.normal(0, 0.3, n)
    pressure = 0.05 * speed + rng.normal(0, 0.02, n)
    if break_at is not None:
        current[break_at:] += 1.0  # current up while flow stays: a correlation break
    return np.column_stack([current, flow, pressure])


def write_csv(path: Path, header: list[str], rows, sep: str = ",") -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, delimiter=sep)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_out(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as fh:
        r = csv.DictReader(fh)
        rows = list(r)
        return list(r.fieldnames or []), rows


def test_detects_a_correlation_break_with_one_row_per_input_row(tmp_path, capsys) -> None:
    data = pump_rows(800, break_at=600)
    t0 = 1_700_000_000
    rows = [[f"{t0 + i * 0.5:.1f}", *map(str, r)] for i, r in enumerate(data)]
    src = write_csv(tmp_path / "skid.csv", ["t", "current", "flow", "pressure"], rows)
    out = tmp_path / "out.csv"
    rc = main(["replay", str(src), "--out", str(out), "--time-column", "t", "--warmup", "400"])
    assert rc == 0
    header, res = read_out(out)
    assert len(res) == 800
    assert header[:4] == ["row", "t", "anomaly", "score"]
    assert "current.value" in header and "flow.flags" in header and "pressure.score" in header
    assert [r["t"] for r in res] == [r[0] for r in rows]
    assert all(r["score"] == "" for r in res[:400])  # learning
    anomaly = np.array([int(r["anomaly"]) for r in res])
    assert anomaly[400:600].mean() < 0.02
    assert anomaly[610:].mean() > 0.95
    assert int(res[700]["current.flags"]) & F.GROUP_ALARM
    err = capsys.readouterr().err
    assert "group 'all'" in err
    assert "top contributor: current" in err  # what moved: the broken tag is named first


def test_semicolon_separator_and_decimal_comma_are_detected(tmp_path) -> None:
    data = pump_rows(300)
    rows = [[f"{v:.4f}".replace(".", ",") for v in r] for r in data]
    src = write_csv(tmp_path / "de.csv", ["a", "b", "c"], rows, sep=";")
    out = tmp_path / "o.csv"
    assert main(["replay", str(src), "--out", str(out), "--warmup", "100"]) == 0
    _, res = read_out(out)
    assert len(res) == 300
    assert abs(float(res[0]["a.value"]) - round(data[0, 0], 4)) < 1e-9


def test_nan_inf_and_empty_cells_are_flagged_invalid_not_fatal(tmp_path) -> None:
    data = pump_rows(300).astype(object)
    data[150, 0] = "nan"
    data[151, 1] = "inf"
    data[152, 2] = ""
    src = write_csv(tmp_path / "n.csv", ["a", "b", "c"], data.tolist())
    out = tmp_path / "o.csv"
    assert main(["replay", str(src), "--out", str(out), "--warmup", "100"]) == 0
    _, res = read_out(out)
    assert int(res[150]["a.flags"]) & F.INVALID
    assert int(res[151]["b.flags"]) & F.INVALID
    assert int(res[152]["c.flags"]) & F.INVALID
    assert not int(res[153]["c.flags"]) & F.INVALID
    assert res[150]["a.value"] == res[149]["a.value"]  # held


def test_non_numeric_column_is_skipped_unless_asked_for(tmp_path, capsys) -> None:
    data = pump_rows(200)
    rows = [[*map(str, r), "RUNNING"] for r in data]
    src = write_csv(tmp_path / "s.csv", ["a", "b", "c", "state"], rows)
    out = tmp_path / "o.csv"
    assert main(["replay", str(src), "--out", str(out), "--warmup", "50"]) == 0
    header, _ = read_out(out)
    assert not any(h.startswith("state") for h in header)
    assert "skipped non-numeric column 'state'" in capsys.readouterr().err
    rc = main(["replay", str(src), "--out", str(out), "--columns", "a,state", "--warmup", "50"])
    assert rc == 65
    assert "'state' is not numeric (row 2: 'RUNNING')" in capsys.readouterr().err


def test_columns_option_selects_columns(tmp_path) -> None:
    src = write_csv(tmp_path / "s.csv", ["a", "b", "c"], pump_rows(200).tolist())
    out = tmp_path / "o.csv"
    assert main(["replay", str(src), "--out", str(out), "--columns", "a,c", "--warmup", "50"]) == 0
    header, _ = read_out(out)
    assert [h for h in header if h.endswith(".value")] == ["a.value", "c.value"]


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("", [], "empty file"),
        ("a,b\n", [], "no data rows"),
        ("a,b\n1,2\n3,4\n", ["--time-column", "ts"], "no time column 'ts'"),
        ("a,b\n1,2\n3,4\n", ["--warmup", "20"], "2 data rows, not more than --warmup 20"),
        ("a,b\n1,2\n3,4\n", [], "needs more than its 400 warm-up rows"),
        ("a,b\n1,2\n3,4\n", ["--warmup", "5"], "--warmup must be at least 20"),
        ("a,b\n1,2\n3,4,5\n", [], "row 3 has 3 fields"),
        ("a,b\n1,2\n3,4\n", ["--columns", "a,zz"], "no column(s) ['zz']"),
        ("t,a,b\nyesterday,1,2\n", ["--time-column", "t"], "row 2, column 't'"),
        ("a,b\nx,y\nz,w\n", [], "no numeric columns"),
    ],
)
def test_bad_input_exits_65_with_a_clear_message(tmp_path, capsys, content, args, message) -> None:
    src = tmp_path / "bad.csv"
    src.write_text(content)
    out = tmp_path / "o.csv"
    assert main(["replay", str(src), "--out", str(out), *args]) == 65
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_input_exits_66(tmp_path, capsys) -> None:
    assert main(["replay", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o.csv")]) == 66
    assert "no such file" in capsys.readouterr().err


def test_constant_column_is_left_out_of_the_group_and_reported(tmp_path, capsys) -> None:
    data = pump_rows(300)
    data[:, 2] = 4.0
    src = write_csv(tmp_path / "c.csv", ["a", "b", "c"], data.tolist())
    out = tmp_path / "o.csv"
    assert main(["replay", str(src), "--out", str(out), "--warmup", "100"]) == 0
    err = capsys.readouterr().err
    assert "left out of the model: ['c']" in err
    _, res = read_out(out)
    assert len(res) == 300 and res[-1]["c.value"] == "4.0"


def test_all_columns_constant_is_refused(tmp_path, capsys) -> None:
    src = write_csv(tmp_path / "c.csv", ["a", "b"], [[1.0, 2.0]] * 50)
    assert main(["replay", str(src), "--out", str(tmp_path / "o.csv"), "--warmup", "30"]) == 65
    assert "every column is constant" in capsys.readouterr().err


def test_single_column_uses_the_per_tag_alarm(tmp_path) -> None:
    x = 10 + np.random.default_rng(2).normal(size=400)
    x[300:] += 8.0
    src = write_csv(tmp_path / "one.csv", ["level"], [[v] for v in x])
    out = tmp_path / "o.csv"
    assert main(["replay", str(src), "--out", str(out)]) == 0  # no group: no warm-up needed
    _, res = read_out(out)
    assert not any(int(r["anomaly"]) for r in res)  # default causes: stuck, out of range
    assert any(int(r["level.flags"]) & F.DRIFT for r in res[300:320])
    cfg = tmp_path / "k.yaml"
    cfg.write_text("defaults: {alarm_on: [score, drift]}\n")  # bare section content works too
    assert main(["replay", str(src), "--out", str(out), "--config", str(cfg)]) == 0
    _, res = read_out(out)
    anomaly = np.array([int(r["anomaly"]) for r in res])
    assert anomaly[:290].sum() == 0 and anomaly[305:320].all()


def test_config_overrides_and_bad_config(tmp_path, capsys) -> None:
    src = write_csv(tmp_path / "s.csv", ["a", "b", "c"], pump_rows(300).tolist())
    cfg = tmp_path / "k.yaml"
    cfg.write_text(
        "kernel:\n  tags:\n    a: {filter: none, hampel_window: 0}\n"
        "  groups:\n    - {name: ab, tags: [a, b], warmup_samples: 100}\n"
    )
    out = tmp_path / "o.csv"
    assert main(["replay", str(src), "--out", str(out), "--config", str(cfg)]) == 0
    _, res = read_out(out)
    assert float(res[5]["a.value"]) == pytest.approx(pump_rows(300)[5, 0])  # unfiltered
    cfg.write_text("kernel:\n  tags:\n    zz: {filter: none}\n")
    assert main(["replay", str(src), "--out", str(out), "--config", str(cfg)]) == 78
    assert "kernel.tags.zz: no such tag" in capsys.readouterr().err


def test_console_entry_point_runs(tmp_path) -> None:
    src = write_csv(tmp_path / "s.csv", ["a", "b"], pump_rows(120)[:, :2].tolist())
    out = tmp_path / "o.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "replay", str(src), "--out", str(out), "--warmup", "60"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(out.read_text().splitlines()) == 121


def test_column_without_any_finite_value_is_skipped_or_refused(tmp_path, capsys) -> None:
    rows = [[*map(str, r), "nan"] for r in pump_rows(200)]
    src = write_csv(tmp_path / "d.csv", ["a", "b", "c", "dead"], rows)
    out = tmp_path / "o.csv"
    assert main(["replay", str(src), "--out", str(out), "--warmup", "50"]) == 0
    assert "skipped column 'dead': no finite value" in capsys.readouterr().err
    rc = main(["replay", str(src), "--out", str(out), "--columns", "a,dead", "--warmup", "50"])
    assert rc == 65
    assert "'dead' has no finite value" in capsys.readouterr().err


def _share(text: str, what: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"false alarms on {what}") and "in alarm on" in line:
            return float(line.split("in alarm on ")[1].split(" %")[0]) / 100
    raise AssertionError(f"no false-alarm line for {what!r} in:\n{text}")


def test_false_alarm_rate_on_the_warm_up_and_a_normal_file(tmp_path, capsys) -> None:
    header = ["current", "flow", "pressure"]
    src = write_csv(tmp_path / "a.csv", header, pump_rows(1400, seed=0))
    normal = write_csv(tmp_path / "n.csv", header, pump_rows(2000, seed=1))
    broken = write_csv(tmp_path / "b.csv", header, pump_rows(2000, seed=1, break_at=1000))
    cfg = tmp_path / "k.yaml"
    cfg.write_text(
        "groups:\n  - {name: skid, tags: [current, flow, pressure], warmup_samples: 1000,"
        " false_alarm_rate: 0.02}\n"
    )
    shares = {}
    for f in (normal, broken):
        rc = main(["replay", str(src), "--out", str(tmp_path / "o.csv"), "--config", str(cfg),
                   "--normal", str(f)])  # fmt: skip
        assert rc == 0
        err = capsys.readouterr().err
        assert "budget 0.02 of samples" in err
        assert _share(err, "the warm-up") <= 0.06
        shares[f.name] = _share(err, f"--normal {f}")
    # the same model scores a file with a correlation break in its second half far worse
    assert shares["b.csv"] > 0.4 > shares["n.csv"]
    bad = write_csv(tmp_path / "x.csv", ["current", "flow"], pump_rows(50)[:, :2])
    rc = main(["replay", str(src), "--out", str(tmp_path / "o.csv"), "--normal", str(bad)])
    assert rc == 65 and "pressure" in capsys.readouterr().err
