"""False-alarm budget, dynamic PCA and contributions of the multivariate stage.

The budget tests learn from one stretch of synthetic normal data and count alarms on a long
fresh stretch of the same process; the achieved share must lie in a binomial confidence band
whose size is the alarm series' effective sample size (alarms come in episodes, so the row
count would make the band far too narrow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from pydantic import ValidationError

from agent import names as N
from agent.kernel import KernelConfig, KernelRuntime
from agent.kernel import multivar as mv
from agent.kernel.settings import GroupSettings
from agent.report import _moved
from agent.tags import TagTable

K = 6
TAGS = [f"t{j}" for j in range(K)]


def correlated(n: int, phi: float, rng: np.random.Generator, load: np.ndarray) -> np.ndarray:
    """Two latent factors and per-tag noise, each an AR(1) with coefficient phi (0: white)."""
    e = rng.normal(size=(n, 2 + K))
    x = np.empty_like(e)
    x[0] = e[0]
    s = math.sqrt(1 - phi * phi)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + s * e[i]
    return x[:, :2] @ load + 0.3 * x[:, 2:]


def band_half_width(alarm: np.ndarray, share: float, z: float = 3.0) -> float:
    """z-sigma half width of a binomial band at `share` with the alarm series' effective size.

    Effective size N / tau, tau = 1 + 2 * sum of the autocorrelations of the alarm indicator
    (summed until they first drop below zero).
    """
    a = alarm.astype(np.float64)
    d = a - a.mean()
    den = float(d @ d)
    tau = 1.0
    if den > 0:
        for lag in range(1, 500):
            r = float(d[lag:] @ d[:-lag]) / den
            if r <= 0:
                break
            tau += 2 * r
    n_eff = a.size / tau
    return z * math.sqrt(share * (1 - share) / n_eff)


def score(gs: GroupSettings, warm: np.ndarray, test: np.ndarray, period_s: float = 1.0):
    m = mv.fit_group(gs, np.arange(warm.shape[1]), warm, period_s)
    s = np.full(test.shape[0], np.nan)
    a = np.zeros(test.shape[0], dtype=np.uint8)
    mv.group_run(test, np.zeros(test.shape, np.uint16), 0, *mv.model_args(m), s, a)
    return a.astype(bool), m


@pytest.mark.parametrize(("phi", "budget", "n_warm"), [(0.0, 0.02, 5000), (0.8, 0.01, 10000)])
def test_alarm_share_meets_the_budget(phi: float, budget: float, n_warm: int) -> None:
    rng = np.random.default_rng(11)
    load = rng.normal(size=(2, K))
    warm = correlated(n_warm, phi, rng, load)
    test = correlated(60_000, phi, rng, load)
    gs = GroupSettings(
        name="g", tags=TAGS, warmup_samples=n_warm, n_components=2, false_alarm_rate=budget
    )
    alarm, m = score(gs, warm, test)
    achieved = float(alarm.mean())
    assert abs(achieved - budget) <= band_half_width(alarm, budget), (achieved, m.info)
    if phi > 0:  # the persistence was designed for a correlated statistic
        assert float(m.info["rho_statistic"]) > 0.3


def test_onsets_per_day_meet_the_budget() -> None:
    rng = np.random.default_rng(12)
    load = rng.normal(size=(2, K))
    warm = correlated(5000, 0.0, rng, load)
    test = correlated(100_000, 0.0, rng, load)
    period_s = 2.0
    per_day = 0.003 * 86400 / period_s  # 0.003 onsets per sample
    gs = GroupSettings(
        name="g", tags=TAGS, warmup_samples=5000, n_components=2, false_alarms_per_day=per_day
    )
    alarm, m = score(gs, warm, test, period_s)
    onsets = int(np.sum(alarm[1:] & ~alarm[:-1]))
    expected = 0.003 * (test.shape[0] - 1)
    # onsets of a rare alarm are nearly Poisson: 3.5 sigma
    assert abs(onsets - expected) <= 3.5 * math.sqrt(expected), (onsets, expected, m.info)
    assert "per sample" in str(m.info["budget"])


def test_a_budget_replaces_alpha_and_the_hysteresis() -> None:
    base = {"name": "g", "tags": ["a", "b"]}
    GroupSettings.model_validate({**base, "false_alarm_rate": 0.01, "lags": "auto"})
    with pytest.raises(ValidationError, match="not both"):
        GroupSettings.model_validate({**base, "false_alarm_rate": 0.01, "false_alarms_per_day": 1})
    with pytest.raises(ValidationError, match="alarm_on_samples"):
        GroupSettings.model_validate({**base, "false_alarm_rate": 0.01, "alarm_on_samples": 3})
    with pytest.raises(ValidationError, match="alpha"):
        GroupSettings.model_validate({**base, "false_alarms_per_day": 2, "alpha": 0.01})
    with pytest.raises(ValidationError):
        GroupSettings.model_validate({**base, "lags": "sometimes"})
    assert not GroupSettings.model_validate(base).budgeted  # the default stays `alpha`


def test_per_day_needs_timestamps_that_advance() -> None:
    gs = GroupSettings(name="g", tags=TAGS, warmup_samples=200, false_alarms_per_day=2)
    X = np.random.default_rng(0).normal(size=(200, K))
    with pytest.raises(mv.GroupFitError, match="sample period"):
        mv.fit_group(gs, np.arange(K), X, None)


def dynamic_process(n: int, rng: np.random.Generator) -> np.ndarray:
    """y follows u with a lag, z follows y two samples later, w mixes lagged u and y."""
    u, y, z, w = (np.zeros(n) for _ in range(4))
    e = rng.normal(size=(n, 4))
    for t in range(2, n):
        u[t] = 0.95 * u[t - 1] + 0.3 * e[t, 0]
        y[t] = 0.8 * y[t - 1] + 0.5 * u[t - 1] + 0.1 * e[t, 1]
        z[t] = 0.7 * z[t - 1] + 0.6 * y[t - 2] + 0.1 * e[t, 2]
        w[t] = 0.5 * u[t - 1] - 0.3 * y[t - 1] + 0.05 * e[t, 3]
    return np.column_stack([u, y, z, w])[1000:]


def test_dynamic_pca_reduces_false_alarms_on_a_dynamic_process() -> None:
    static = dynamic = 0.0
    for seed in range(3):
        X = dynamic_process(12_000, np.random.default_rng(seed))
        warm, test = X[:3000], X[3000:]
        for lags in (0, 2):
            gs = GroupSettings(
                name="g", tags=list("uyzw"), warmup_samples=3000, false_alarm_rate=0.01, lags=lags
            )
            alarm, _ = score(gs, warm, test)
            if lags:
                dynamic += alarm.mean()
            else:
                static += alarm.mean()
    assert dynamic < 0.85 * static, (dynamic, static)
    gs = GroupSettings(name="g", tags=list("uyzw"), warmup_samples=3000, lags="auto")
    m = mv.fit_group(gs, np.arange(4), dynamic_process(4000, np.random.default_rng(9))[:3000])
    assert m.lags >= 1 and m.load.shape[0] == 4 * (m.lags + 1)
    white = np.random.default_rng(3).normal(size=(3000, 4))
    assert mv.fit_group(gs, np.arange(4), white).lags == 0


def test_a_short_warm_up_refuses_explicit_lags_and_trims_auto() -> None:
    X = np.random.default_rng(1).normal(size=(60, K))
    with pytest.raises(mv.GroupFitError, match="lags"):
        mv.fit_group(GroupSettings(name="g", tags=TAGS, warmup_samples=60, lags=3), np.arange(K), X)
    gs = GroupSettings(name="g", tags=TAGS, warmup_samples=60, lags="auto")
    assert mv.fit_group(gs, np.arange(K), X).lags == 0


@dataclass(frozen=True)
class Slice:
    name: str
    start: int
    stop: int


@pytest.mark.parametrize("group", [{"false_alarm_rate": 0.01, "lags": 1}, {"alpha": 0.001}])
def test_group_alarm_names_the_biased_tag(group: dict) -> None:
    rng = np.random.default_rng(5)
    speed = np.cumsum(rng.normal(size=1400)) * 0.05
    speed = speed - np.convolve(speed, np.ones(50) / 50, "same")  # wander, no trend
    gains = np.array([1.0, 2.0, -1.5, 1.2, 3.0])
    data = speed[:, None] * gains + rng.normal(0, 0.02, size=(1400, 5)) * np.abs(gains)
    names = [f"s{j}" for j in range(5)]
    sd = data[:600, 3].std()
    data[900:, 3] += 1.0 * sd  # a bias on s3, inside its normal range
    cfg = KernelConfig.model_validate(
        {
            "defaults": {"filter": "none", "hampel_window": 0, "stuck_samples": 0},
            "groups": [{"name": "skid", "tags": names, "warmup_samples": 600, **group}],
        }
    )
    tb = TagTable.for_names(names)
    rt = KernelRuntime(cfg, tb)
    events = []
    for r, row in enumerate(data):
        tb.raw[:] = row
        tb.ts_ns[:] = r * 1_000_000_000
        events += [(r, e) for e in rt.process(Slice("all", 0, 5))]
    on = [(r, e) for r, e in events if e["level"] == "group" and e["kind"] == N.EVENT_ANOMALY_ON]
    assert on and on[0][0] >= 900, on[:2]
    contrib = on[0][1]["contributions"]
    assert max(contrib, key=contrib.get) == "s3", contrib
    last = on[-1][1]["contributions"]  # a budget alarm may open several episodes
    assert max(last, key=last.get) == "s3", last
    assert rt.last_contributions()["skid"] == last
    assert rt.group_info()["skid"]["contributions"] == last
    summary = rt.group_summary()["skid"]  # what /readyz shows
    assert summary["contributions"] == last and summary["state"] in ("ok", "alarm")
    assert ("budget" in summary) and summary["score"] is not None
    assert _moved({"contributions": last}).startswith("s3 ")  # the report's column
    # replay finds the same onsets with the same contributions (events are episodes: each
    # event onset is an onset of the alarm flag)
    res = KernelRuntime(cfg, TagTable.for_names(names)).run(
        data, None, np.arange(1400, dtype=np.int64) * 1_000_000_000
    )
    replayed = dict(res.group_contrib["skid"])
    for r, e in on:
        assert replayed[r] == e["contributions"], r


def test_adaptation_is_frozen_while_the_budget_alarm_is_on() -> None:
    rng = np.random.default_rng(8)
    load = rng.normal(size=(2, K))
    warm = correlated(2000, 0.0, rng, load)
    test = correlated(400, 0.0, rng, load)
    test[200:, 1] += 6 * warm[:, 1].std()
    gs = GroupSettings(
        name="g", tags=TAGS, warmup_samples=2000, false_alarm_rate=0.01, adapt_alpha=0.05
    )
    m = mv.fit_group(gs, np.arange(K), warm, 1.0)
    fl = np.zeros(K, np.uint16)
    for r in range(200):
        mv.group_step(test[r].copy(), fl, *mv.model_args(m))
    before = m.mean.copy()
    alarmed = 0
    for r in range(200, 400):
        mv.group_step(test[r].copy(), fl, *mv.model_args(m))
        alarmed += int(m.alarm)
        if m.alarm:
            np.testing.assert_array_equal(m.mean, before)
    assert alarmed > 150
