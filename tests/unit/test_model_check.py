"""Run-time honesty (issue 12 piece 6): the identified model's prediction against the
measured pv; a plant that changed trips `model_mismatch` and the loop falls back."""

from __future__ import annotations

import math

import numpy as np

from agent.commands.commission import model_check_reference
from agent.control import ident, safety
from agent.control import loop as L
from agent.control.pid import Pid
from agent.control.runner import ModelCheck

DT = 1.0


def _plant(k: float, tau: float = 20.0, theta: int = 3, u_rest: float = 55.0):  # type: ignore[no-untyped-def]
    """FOPDT (y = 40 at u = 50) at rest at `u_rest` (a loop starts from the output the plant
    has been holding); `step(u)` returns the pv measured BEFORE applying `u` (as the runner
    sees it: read this period, then write)."""
    buf = [u_rest] * theta
    y = 40.0 + k * (u_rest - 50.0)
    a = math.exp(-DT / tau)

    def step(u: float) -> float:
        nonlocal y
        before = y
        buf.append(u)
        ud = buf.pop(0)
        y = a * y + (1 - a) * (40.0 + k * (ud - 50.0))
        return before

    return step


def _prbs(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u, level = np.empty(n), 55.0
    for i in range(n):
        if i % 8 == 0 and rng.random() < 0.5:
            level = 45.0 if level > 50 else 55.0
        u[i] = level
    return u


def _run(step, u: np.ndarray, noise: float, seed: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    return np.array([step(x) + rng.normal(0, noise) for x in u])


def test_the_check_passes_on_the_plant_and_trips_on_a_changed_one() -> None:
    u = _prbs(1500, 1)
    y = _run(_plant(0.8), u, 0.05, 2)
    res = ident.identify(np.arange(len(u)) * DT, u, y, None, DT)
    assert res.ok, res.why
    ref = model_check_reference(res.model, u, None, y)
    assert ref["reference_rms"] > 0

    def ratios(step) -> tuple[list[float], ModelCheck]:  # type: ignore[no-untyped-def]
        chk = ModelCheck(ident.Predictor(res.model), ref["reference_rms"], 3.0, ref["hold_s"])
        rng = np.random.default_rng(3)
        out = []
        for x in _prbs(1500, 7):
            y2 = step(x) + rng.normal(0, 0.05)
            out.append(chk.update(float(x), [], float(y2), True))
        return out, chk

    same, chk = ratios(_plant(0.8))
    assert not chk.mismatched
    assert np.nanmedian(same[400:]) < 2.0 and np.nanmax(same[400:]) < 3.0
    changed, chk = ratios(_plant(2.0, tau=40.0, theta=8))
    assert chk.mismatched  # gain x2.5, slower, more dead time: re-commission
    assert np.nanmedian(changed[400:]) > 3.0


def test_a_mismatch_moves_auto_to_the_fallback_with_its_reason() -> None:
    spec = L.LoopSpec(
        name="t",
        period_s=DT,
        roles=("pv",),
        envelope=safety.Envelope(0.0, 100.0, 5.0),
        fallback="pid",
        pid=Pid(kp=1.0, ti_s=20.0),
    )
    st = L.LoopState(mode="auto", last_u=50.0, in_fallback=False)
    inp = L.LoopInputs(
        now_ns=0, sp=40.0, values=[40.0], quality=[0], flags=[0], ts_ns=[0], mismatch=True
    )
    d = L.step(spec, None, st, inp)
    assert safety.MODEL_MISMATCH in d.reasons and d.entered_fallback and d.active == "fallback"
