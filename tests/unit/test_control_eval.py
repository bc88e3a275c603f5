"""`edgeloop control-eval`: the JSON shape others rely on, and the evaluation harness."""

from __future__ import annotations

import json

import pytest

from agent import cli
from lab import heater_eval as ev


@pytest.fixture
def one_short_scenario(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the scenario list is narrowed (to keep the test in seconds); the code is real."""
    short = ev.Scenario("short_step", 60, ((0, 45.0), (5, 55.0)))
    monkeypatch.setattr(ev, "scenarios", lambda: [short])


def test_json_is_keyed_by_controller_then_metric(one_short_scenario, capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli.main(["control-eval", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"tflite", "pid", "expert"}
    for r in res.values():
        for key in ("iae", "overshoot", "settling_s", "travel", "violations", "step_us_p99"):
            assert isinstance(r[key], int | float), key
        assert r["violations"] == 0
        assert r["iae_by_scenario"]["short_step"] == r["iae"]
    # a 10 K step: every controller moves the output and integrates some error
    assert all(r["travel"] > 10 and r["iae"] > 10 for r in res.values())


def test_table_output(one_short_scenario, capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli.main(["control-eval", "--scenarios"]) == 0
    out = capsys.readouterr().out
    assert "| tflite |" in out and "| short_step |" in out and "x PID" in out


def test_bad_model_is_a_clear_error(capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli.main(["control-eval", "--model", "missing.tflite"]) == 1
    assert "not found" in capsys.readouterr().err


def test_metrics_of_a_scenario() -> None:
    sc = ev.Scenario("s", 120, ((0, 45.0), (5, 55.0)))
    r = ev.run_scenario(sc, ev.LoopController(None), keep_trace=True)
    temps = [t for _, _, t, _ in r.trace]
    assert r.overshoot == pytest.approx(max(0.0, max(temps) - 55.0), abs=1e-9)
    assert len(r.settling_s) == 1 and 10 < r.settling_s[0] < 120
    assert r.violations == 0
