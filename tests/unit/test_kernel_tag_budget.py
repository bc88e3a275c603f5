"""False-alarm budget of the per-tag score: limit and k of n from the tag's own warm-up.

Like the group tests (test_kernel_budget.py): learn from one normal stretch, count alarms on a
long fresh stretch of the same process, and hold the achieved share against a binomial band
whose size is the alarm series' effective sample size.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from agent import names as N
from agent.kernel import KernelConfig, KernelRuntime
from agent.kernel import pertag as pt
from agent.kernel.settings import TagParams
from agent.tags import TagTable
from tests.unit.test_kernel_budget import band_half_width
from tests.unit.test_kernel_runtime import Slice

N_TAGS = 6
SCORE_ONLY = {
    "alarm_on": ("score",),
    "filter": "none",
    "hampel_window": 0,
    "stuck_samples": 0,
}


def ar1(n: int, phi: float, rng: np.random.Generator, k: int = N_TAGS) -> np.ndarray:
    """k independent Gaussian AR(1) series with coefficient phi (0: white), unit variance."""
    e = rng.normal(size=(n, k))
    x = np.empty_like(e)
    x[0] = e[0]
    s = math.sqrt(1 - phi * phi)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + s * e[i]
    return x


def alarms(p: TagParams, x: np.ndarray, period_s: float = 1.0) -> tuple[np.ndarray, pt.TagState]:
    """Per-tag alarm (rows x tags) of a replay after the warm-up, and the state."""
    state = pt.TagState.new(pt.compile_params([p] * x.shape[1]))
    _, flags, _ = pt.run(state, x, period_s=period_s)
    return (flags[p.warmup_samples :] & pt.ANOMALOUS) != 0, state


@pytest.mark.parametrize(
    ("phi", "budget", "warmup"), [(0.0, 0.01, 300), (0.0, 0.002, 300), (0.8, 0.01, 5000)]
)
def test_alarm_share_meets_the_budget(phi: float, budget: float, warmup: int) -> None:
    rng = np.random.default_rng(21)
    x = 50.0 + 3.0 * ar1(100_000, phi, rng)
    p = TagParams(false_alarm_rate=budget, warmup_samples=warmup, **SCORE_ONLY)
    alarm, state = alarms(p, x)
    for j in range(N_TAGS):  # each tag's own alarm series against the band
        a = alarm[:, j]
        achieved = float(a.mean())
        assert abs(achieved - budget) <= band_half_width(a, budget), (j, achieved, state.info[j])
    info = state.info[0]
    assert info["budget"] == f"{budget:g} of samples"
    if phi > 0:  # the persistence was designed for an autocorrelated score
        assert float(info["rho"]) > 0.6 and float(info["rho_score"]) > 0.3


def test_onsets_per_day_meet_the_budget() -> None:
    rng = np.random.default_rng(22)
    x = ar1(100_000, 0.0, rng)
    period_s = 0.5
    per_day = 0.002 * 86400 / period_s  # 0.002 onsets per sample
    p = TagParams(false_alarms_per_day=per_day, warmup_samples=300, **SCORE_ONLY)
    alarm, state = alarms(p, x, period_s)
    onsets = int(np.sum(alarm[1:] & ~alarm[:-1]))
    expected = 0.002 * (alarm.shape[0] - 1) * N_TAGS
    assert abs(onsets - expected) <= 3.5 * math.sqrt(expected), (onsets, expected, state.info)
    assert "per sample" in str(state.info[0]["budget"])


def test_per_day_without_advancing_timestamps_leaves_no_score_alarm() -> None:
    p = TagParams(false_alarms_per_day=1, warmup_samples=50, **SCORE_ONLY)
    x = ar1(400, 0.0, np.random.default_rng(3), 1)
    x[200:] += 50.0  # a step the score would alarm on
    state = pt.TagState.new(pt.compile_params([p]))
    _, flags, _ = pt.run(state, x, ts_ns=np.zeros(400, dtype=np.int64))
    assert "sample period" in str(state.info[0]["error"])
    assert not np.any(flags & pt.ANOMALOUS)
    assert state.P[0, pt.P_SLIM] == math.inf


@pytest.mark.parametrize("phi", [0.0, 0.8])
def test_a_step_is_still_detected(phi: float) -> None:
    """A bias of 5 standard deviations (a sensor offset, a process step) alarms within a few
    samples at a tight budget (one false onset a day at 1 s: a per-sample rate of 1.2e-5),
    and stays in alarm while the baseline has not caught up."""
    rng = np.random.default_rng(23)
    x = 10.0 + ar1(3000, phi, rng, 1)
    x[2000:] += 5.0
    p = TagParams(false_alarms_per_day=1, warmup_samples=1000, **SCORE_ONLY)
    state = pt.TagState.new(pt.compile_params([p]))
    _, flags, _ = pt.run(state, x, period_s=1.0)
    on = (flags[:, 0] & pt.ANOMALOUS) != 0
    assert not on[1000:2000].any()  # one false onset a day: none in this normal stretch
    k = int(state.P[0, pt.P_K])
    delay = int(np.argmax(on[2000:]))
    assert on[2000:].any() and delay <= 3 * int(state.P[0, pt.P_N]), (delay, state.info[0])
    # the baseline follows a lasting step within tens of samples (the score measures change)
    assert k >= 1 and on[2000 + delay : 2000 + delay + 10].all()


def test_without_a_budget_the_fixed_threshold_and_hysteresis_are_unchanged() -> None:
    p = TagParams(**SCORE_ONLY)
    P = pt.compile_params([p])
    assert P[0, pt.P_MODE] == 0.0 and P[0, pt.P_SLIM] == p.score_threshold
    state = pt.TagState.new(P)
    assert state.win.shape == (1, 1) and state.wbuf.shape == (1, 1)  # nothing allocated
    x = ar1(500, 0.0, np.random.default_rng(4), 1)
    x[300:] += 50.0
    _, flags, _ = pt.run(state, x)
    on = (flags[:, 0] & pt.ANOMALOUS) != 0
    assert int(np.argmax(on)) == 300 + p.alarm_on_samples - 1
    assert state.info == {}


def test_the_limit_is_set_once_at_the_end_of_the_warm_up() -> None:
    p = TagParams(false_alarm_rate=0.01, warmup_samples=100, **SCORE_ONLY)
    state = pt.TagState.new(pt.compile_params([p]))
    x = ar1(150, 0.0, np.random.default_rng(5), 1)
    pt.run(state, x[:99])
    assert state.P[0, pt.P_SLIM] == math.inf and state.info == {}
    pt.run(state, x[99:100])
    limit = float(state.P[0, pt.P_SLIM])
    assert 1.0 < limit < 4.0 and state.I[0, pt.I_CALIB] == 2 and state.due[0] == 0
    pt.run(state, x[100:])
    assert float(state.P[0, pt.P_SLIM]) == limit


def test_budget_limit_uses_the_warm_up_autocorrelation() -> None:
    rng = np.random.default_rng(6)
    white = ar1(2000, 0.0, rng, 1)[:, 0]
    slow = ar1(2000, 0.9, rng, 1)[:, 0]
    lw, kw, iw = pt.budget_limit(0.01, 0.0, 10, white, 0.01, 1.0)
    ls, ks, is_ = pt.budget_limit(0.01, 0.0, 10, slow, 0.01, 1.0)
    assert float(iw["rho_score"]) == 0.0 and float(is_["rho_score"]) > 0.6
    # exceedances of a slow score come in runs: a higher per-sample limit keeps the budget
    assert ls > lw and ks >= kw


# --- configuration ------------------------------------------------------------------------


def test_a_budget_replaces_the_fixed_threshold_and_counts() -> None:
    KernelConfig.model_validate({"defaults": {"false_alarm_rate": 0.001}})
    KernelConfig.model_validate({"tags": {"t": {"false_alarms_per_day": 2}}})
    with pytest.raises(ValidationError, match="not both"):
        TagParams(false_alarm_rate=0.01, false_alarms_per_day=1)
    for bad in (
        {"defaults": {"false_alarm_rate": 0.01, "score_threshold": 4}},
        {"tags": {"t": {"false_alarms_per_day": 1, "alarm_on_samples": 3}}},
        {"defaults": {"false_alarm_rate": 0.01}, "tags": {"t": {"alarm_off_samples": 3}}},
    ):
        with pytest.raises(ValidationError, match="cannot be combined with a false-alarm budget"):
            KernelConfig.model_validate(bad)
    assert not KernelConfig().defaults.budgeted  # the default stays the fixed threshold
    # a tag's own budget wins over fixed keys in the defaults (and over a budget there)
    k = KernelConfig.model_validate(
        {
            "defaults": {"score_threshold": 5, "alarm_on_samples": 2},
            "tags": {"t": {"false_alarm_rate": 0.01}},
        }
    )
    assert k.params_for("t").budgeted and not k.params_for("u").budgeted
    k = KernelConfig.model_validate(
        {"defaults": {"false_alarm_rate": 0.01}, "tags": {"t": {"false_alarms_per_day": 3}}}
    )
    assert k.params_for("t").false_alarm_rate is None


def test_runtime_live_frames_equal_replay_with_a_budget() -> None:
    names = ["a", "b"]
    cfg = KernelConfig.model_validate(
        {
            "defaults": {"false_alarm_rate": 0.01, "warmup_samples": 200, "alarm_on": ["score"]},
            "tags": {"b": {"false_alarms_per_day": 20}},
        }
    )
    x = 5.0 + ar1(1500, 0.5, np.random.default_rng(7), 2)
    x[1000:, 1] += 4.0
    ts = (np.arange(1500, dtype=np.int64) + 1) * 1_000_000_000
    replay = KernelRuntime(cfg, TagTable.for_names(names)).run(x, None, ts)
    tb = TagTable.for_names(names)
    live = KernelRuntime(cfg, tb)

    frame = Slice("g", 0, 2)
    events = []
    flags = np.zeros(x.shape, dtype=np.uint16)
    for r in range(x.shape[0]):
        tb.raw[:] = x[r]
        tb.quality[:] = 0
        tb.ts_ns[:] = ts[r]
        events += live.process(frame)
        flags[r] = tb.flags
    np.testing.assert_array_equal(flags, replay.flags)
    info = live.tag_budget_info()
    assert set(info) == {"a", "b"} and info["b"]["budget"].startswith("20 onsets/day at 1 s")
    assert info["a"]["budget"] == "0.01 of samples" and "score_limit" in info["a"]
    on_b = [e for e in events if e["source"] == "b" and e["kind"] == N.EVENT_ANOMALY_ON]
    assert on_b and on_b[0]["ts_ns"] >= ts[1000] and on_b[0].get("cause") == "score"


def test_tags_with_the_same_rho_and_budget_share_one_design() -> None:
    """The design (a few tenths of a second) is computed once per rounded rho and budget, so
    a plant with many budgeted tags does not stall the frame their warm-ups end in."""
    pt._design.cache_clear()
    p = TagParams(false_alarm_rate=0.004, warmup_samples=400, **SCORE_ONLY)
    x = ar1(400, 0.0, np.random.default_rng(8), 200)
    x[:, 100:] = ar1(400, 0.5, np.random.default_rng(9), 100)
    state = pt.TagState.new(pt.compile_params([p] * 200))
    pt.run(state, x)
    info = pt._design.cache_info()
    assert info.hits + info.misses == 200
    assert info.misses == len({state.info[i]["rho"] for i in range(200)}) <= 40
