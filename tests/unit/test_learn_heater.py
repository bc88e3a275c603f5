"""The shipped heater policy came from `edgeloop commission` (lab/heater_policy.py): its
recorded plant test identifies the same model again, and the training that turned that model
into a policy is deterministic for a seed (same bytes twice)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from agent.commands.commission import model_check_reference
from agent.config import load_config
from agent.control import ident
from agent.control.learn import learn_policy
from agent.control.policy import MODELS_DIR
from agent.tags import compile_config

DATA = Path(__file__).resolve().parents[2] / "lab" / "data"


def _test_data() -> tuple[np.ndarray, ...]:
    rows = list(csv.DictReader((DATA / "heater_policy.test.csv").open()))
    roles = [k for k in rows[0] if k not in ("t_s", "u", "y", "phase")]
    assert roles == ["flow", "inlet_temp"]
    t, u, y = (np.array([float(r[k]) for r in rows]) for k in ("t_s", "u", "y"))
    d = np.array([[float(r[k]) for k in roles] for r in rows])
    base = np.array([float(r["y"]) for r in rows if r["phase"] == "baseline"])
    return t, u, y, d, base


@pytest.fixture(scope="module")
def identified():  # type: ignore[no-untyped-def]
    cfg = load_config(DATA / "heater_policy.commission.yaml")
    lc = cfg.control.loops[0]
    t, u, y, d, base = _test_data()
    res = ident.identify(t, u, y, d, lc.period_s, d_names=["flow", "inlet_temp"])
    return compile_config(cfg), lc, res, (u, y, d, base)


def test_the_recorded_plant_test_identifies_the_shipped_model_again(identified) -> None:  # type: ignore[no-untyped-def]
    _, _, res, _ = identified
    card = json.loads((MODELS_DIR / "heater_policy.json").read_text())
    assert res.ok
    assert res.fit_pct == pytest.approx(card["identification"]["fit_pct"], abs=0.5)
    assert pytest.approx(card["identification"]["fopdt"]["K"], rel=0.02) == res.fopdt.K
    # the heater's true gain at the test's point (10 L/min, 40 kW, rho*cp 4.18 kJ/L/K) is
    # 0.574 K/%: the plant test found it without the simulator's equations
    assert pytest.approx(0.574, rel=0.05) == res.fopdt.K


def test_learning_the_policy_is_deterministic(identified, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    compiled, lc, res, (u, y, d, base) = identified
    pid = ident.simc_pid(res.fopdt)
    blobs = []
    for run in ("a", "b"):
        out = tmp_path / run
        out.mkdir()
        learn_policy(
            compiled, lc.name, res, pid, out, seed=3,
            d_ranges=[(float(c.min()), float(c.max())) for c in d.T],
            noise_std=float(np.std(base)), provenance={},
            model_check=model_check_reference(res.model, u, d, y),
            episodes=6, dagger_episodes=3, rounds=1, log=lambda _m: None,
        )  # fmt: skip
        # a 9-episode training is rarely accepted: the candidate is what is compared
        (model,) = out.glob(f"{lc.name}*.tflite")
        blobs.append(model.read_bytes())
    assert blobs[0] == blobs[1] and len(blobs[0]) > 1000
