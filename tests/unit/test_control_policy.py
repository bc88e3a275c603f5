"""The TFLite policy and its model card: loads, assembles lags right, refuses mismatches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.control.policy import MODELS_DIR, ModelError, Policy, resolve_model_path

SHIPPED = MODELS_DIR / "heater_policy.tflite"
ROOT = Path(__file__).resolve().parents[2]
ROLES = ["pv", "flow", "inlet_temp"]


def _copy(tmp_path: Path, edit=None) -> Path:  # type: ignore[no-untyped-def]
    dst = tmp_path / "m.tflite"
    shutil.copy(SHIPPED, dst)
    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    if edit is not None:
        edit(card)
    dst.with_suffix(".json").write_text(json.dumps(card))
    return dst


def test_shipped_model_loads_and_answers() -> None:
    pol = Policy(SHIPPED, signals=ROLES, period_ms=500)
    card = pol.card
    assert card["validation"]["totals"]["tflite"]["violations"] == 0
    assert card["validation"]["iae_ratio"] <= 0.8  # commission's acceptance target
    fs = pol.new_state()
    fs.push_inputs(55.0, 50.0, [50.0, 10.0, 20.0])
    fs.push_output(40.0)
    u = pol.invoke(fs)
    assert np.isfinite(u)
    # 5 K below setpoint at the nominal point: the policy heats more than it holds (~61 %)
    assert u > 40.0


def test_assembly_reads_each_feature_at_its_lag() -> None:
    pol = Policy(SHIPPED, signals=ROLES, period_ms=500)
    fs = pol.new_state()
    n = max(f.lag for f in pol.features) + 5  # every lag filled with a distinct value
    for k in range(n):  # distinct values per period: u = k, pv = 100 + k
        fs.push_inputs(55.0, 100.0 + k, [100.0 + k, 10.0, 20.0])
        fs.push_output(float(k))
    fs.push_inputs(55.0, 100.0 + n, [100.0 + n, 10.0, 20.0])
    x = pol.assemble(fs)[0] / pol._inv_std + pol._mean  # undo the normalisation
    assert any(f.source == "output" and f.lag > 1 for f in pol.features)
    for f, v in zip(pol.features, x, strict=True):
        if f.source == "output":
            assert v == pytest.approx(n - f.lag, abs=1e-3), f
        elif f.source == "error":
            assert v == pytest.approx(55.0 - (100 + n - f.lag), abs=1e-3), f
        elif f.source == "signal" and f.signal == "pv":
            assert v == pytest.approx(100 + n - f.lag, abs=1e-3), f
        elif f.source == "error_integral":
            assert v == pytest.approx(fs.integral, rel=1e-5), f


def test_no_allocation_growth_per_step() -> None:
    import tracemalloc

    pol = Policy(SHIPPED, signals=ROLES, period_ms=500)
    fs = pol.new_state()
    fs.push_inputs(55.0, 50.0, [50.0, 10.0, 20.0])
    fs.push_output(40.0)
    for _ in range(100):
        pol.invoke(fs)
    # Only allocations made under agent/control count (whatever frame of the call stack):
    # in the full suite, server threads of other fixtures allocate while this runs.
    tracemalloc.start(25)
    mine = [tracemalloc.Filter(True, "*/agent/control/*", all_frames=True)]
    before = tracemalloc.take_snapshot().filter_traces(mine)
    for _ in range(2000):
        pol.invoke(fs)
    after = tracemalloc.take_snapshot().filter_traces(mine)
    tracemalloc.stop()
    growth = sum(d.size_diff for d in after.compare_to(before, "filename"))
    assert growth < 4096


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda c: c["features"].pop(), "input.mean has"),
        (
            lambda c: (c["features"].pop(), c["input"]["mean"].pop(), c["input"]["std"].pop()),
            "card says [1, ",
        ),
        (lambda c: c.update(format="something-else"), "format"),
        (lambda c: c.update(period_ms=100), "period_ms=100"),
        (lambda c: c["signals"].append("pressure"), "pressure"),
        (lambda c: c["features"][0].update(source="magic"), "source"),
        (lambda c: c["input"]["std"].__setitem__(0, 0.0), "std"),
        (lambda c: c.pop("output"), "missing 'output'"),
        (lambda c: c.pop("error_integral"), "error_integral needs"),
    ],
    ids=[
        "card-short",
        "shape",
        "format",
        "period",
        "unmapped-signal",
        "source",
        "std",
        "no-out",
        "no-integral-spec",
    ],
)
def test_mismatched_card_is_refused(tmp_path: Path, edit, needle: str) -> None:  # type: ignore[no-untyped-def]
    path = _copy(tmp_path, edit)
    with pytest.raises(ModelError) as e:
        Policy(path, signals=ROLES, period_ms=500)
    assert needle in str(e.value)


def test_loop_without_a_signal_the_model_reads_is_refused() -> None:
    with pytest.raises(ModelError, match=r"\['flow'\]"):
        Policy(SHIPPED, signals=["pv", "inlet_temp"], period_ms=500)


def test_missing_card_and_broken_model_are_refused(tmp_path: Path) -> None:
    lone = tmp_path / "lone.tflite"
    shutil.copy(SHIPPED, lone)
    with pytest.raises(ModelError, match="no model card"):
        resolve_model_path(str(lone))
    bad = _copy(tmp_path)
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ModelError, match="cannot load"):
        Policy(bad, signals=ROLES, period_ms=500)


def test_resolve_relative_to_config_dir_then_shipped(tmp_path: Path) -> None:
    local = _copy(tmp_path)
    assert resolve_model_path("m.tflite", tmp_path) == local
    assert resolve_model_path("heater_policy.tflite", tmp_path) == SHIPPED
    with pytest.raises(ModelError, match="shipped models"):
        resolve_model_path("nope.tflite", tmp_path)


def test_error_integral_is_leaky_and_clipped() -> None:
    from agent.control.policy import FeatureState

    fs = FeatureState(1, 2, (0.5, 10.0, 2.0))
    fs.push_inputs(50.0, 40.0, [40.0])  # error 10 K: integrates only the clipped 2 K
    fs.push_output(0.0)
    assert fs.integral == pytest.approx(1.0)
    for _ in range(200):
        fs.push_inputs(50.0, 40.0, [40.0])
        fs.push_output(0.0)
    assert fs.integral == pytest.approx(2.0 * 10.0, rel=1e-3)  # bounded: clip * tau
    for _ in range(200):
        fs.push_inputs(50.0, 50.0, [50.0])
        fs.push_output(0.0)
    assert abs(fs.integral) < 0.01  # leaks away once the error is gone


def test_recorded_true_plant_evaluation_reproduces() -> None:
    """The shipped model was commissioned from a plant test alone (lab/heater_policy.py); its
    recorded evaluation on the simulator's own equations is what this code measures."""
    from lab.heater_eval import LoopController, evaluate, scenarios

    recorded = json.loads((ROOT / "lab" / "data" / "heater_policy.eval.json").read_text())
    pol = Policy(SHIPPED, signals=ROLES, period_ms=500)
    sc = next(s for s in scenarios() if s.name == "flow_disturbance")
    got = evaluate([LoopController(pol)], [sc])["tflite"]["iae_by_scenario"][sc.name]
    assert got == pytest.approx(recorded["tflite"]["iae_by_scenario"][sc.name], abs=0.2)
    pid = recorded["pid"]["iae_by_scenario"][sc.name]
    assert got < 0.2 * pid  # identified feed-forward: the policy rejects the flow steps
    assert recorded["tflite"]["iae"] < 0.8 * recorded["pid"]["iae"]
    assert recorded["tflite"]["violations"] == 0
