"""Every flag on a synthetic signal: raised where the fault is, silent on clean noise."""

from __future__ import annotations

import numpy as np

from agent.kernel import flags as F
from agent.kernel import pertag as pt
from agent.kernel.settings import TagParams


def _run(signal, params=None, quality=None, period_s=1.0, lo=np.nan, hi=np.nan):
    params = params or TagParams()
    state = pt.TagState.new(pt.compile_params([params], np.array([lo]), np.array([hi])))
    raw = np.asarray(signal, dtype=np.float64).reshape(-1, 1)
    q = None if quality is None else np.asarray(quality, dtype=np.uint8).reshape(-1, 1)
    v, f, s = pt.run(state, raw, q, period_s=period_s)
    return v[:, 0], f[:, 0].astype(int), s[:, 0]


def _noise(n=600, seed=1, sd=1.0, mean=10.0):
    return mean + np.random.default_rng(seed).normal(0.0, sd, n)


def _has(f, bit):
    return (f & bit) != 0


def test_clean_noise_raises_no_fault_flags() -> None:
    _, f, s = _run(_noise(3000))
    faults = F.OUT_OF_RANGE | F.STUCK | F.DRIFT | F.ANOMALOUS | F.INVALID
    assert not np.any(f & faults)
    assert _has(f, F.SPIKE).mean() < 0.01  # causal Hampel, window 11, k=5: ~0.5% on noise
    assert np.nanmax(s) < 6.0


def test_invalid_nan_inf_and_bad_quality_hold_the_value() -> None:
    x = _noise(100)
    x[40], x[41] = np.nan, np.inf
    q = np.zeros(100, dtype=np.uint8)
    q[60] = 3
    v, f, _ = _run(x, quality=q)
    assert list(np.flatnonzero(_has(f, F.INVALID))) == [40, 41, 60]
    assert v[40] == v[39] and v[41] == v[39] and v[60] == v[59]
    assert np.all(np.isfinite(v))


def test_value_before_any_valid_sample_is_nan() -> None:
    v, f, _ = _run([np.nan, np.nan, 1.0])
    assert np.isnan(v[0]) and np.isnan(v[1]) and v[2] == 1.0
    assert list(f[:2]) == [F.INVALID, F.INVALID]


def test_out_of_range_is_flagged_not_used_and_alarms() -> None:
    x = _noise(200)
    x[100:110] = 500.0
    v, f, _ = _run(x, lo=0.0, hi=100.0)
    assert np.all(_has(f[100:110], F.OUT_OF_RANGE))
    assert not np.any(_has(f[:100], F.OUT_OF_RANGE))
    assert np.all(v[100:110] == v[99])  # held, the bad values never reach the filter
    assert np.all(_has(f[102:112], F.ANOMALOUS))  # on after 3 consecutive bad samples


def test_check_range_false_ignores_the_table_range() -> None:
    x = _noise(50)
    x[30] = 500.0
    _, f, _ = _run(x, TagParams(check_range=False), lo=0.0, hi=100.0)
    assert not np.any(_has(f, F.OUT_OF_RANGE))


def test_spike_is_flagged_and_replaced_by_the_median() -> None:
    x = _noise(300)
    x[150] = 60.0
    v, f, _ = _run(x, TagParams(filter="none"))
    assert _has(f[150], F.SPIKE)
    assert abs(v[150] - 10.0) < 3.0  # the median, not 60
    assert not _has(f[150], F.ANOMALOUS)  # one spike is rejected, not alarmed


def test_spike_min_dev_suppresses_small_outliers_on_quiet_signals() -> None:
    x = np.full(100, 5.0)
    x[::2] += 0.001  # quantised signal: MAD tiny
    x[60] = 5.01
    _, f, _ = _run(x, TagParams(filter="none", spike_min_dev=0.05, stuck_samples=0))
    assert not np.any(_has(f, F.SPIKE))
    _, f2, _ = _run(x, TagParams(filter="none", spike_min_dev=0.0, stuck_samples=0))
    assert _has(f2[60], F.SPIKE)


def test_hampel_disabled_with_window_below_three() -> None:
    x = _noise(100)
    x[50] = 60.0
    v, f, _ = _run(x, TagParams(hampel_window=0, filter="none"))
    assert not np.any(_has(f, F.SPIKE)) and v[50] == 60.0


def test_rate_limit_clips_steps_to_rate_times_dt() -> None:
    x = np.concatenate([np.zeros(20), np.full(20, 10.0)])
    p = TagParams(filter="none", rate_limit_per_s=2.0, hampel_window=0)
    v, f, _ = _run(x, p, period_s=0.5)
    assert np.allclose(np.diff(v[19:30]), 1.0)  # 2 unit/s * 0.5 s
    assert np.all(_has(f[20:29], F.RATE_LIMITED)) and not _has(f[31], F.RATE_LIMITED)
    assert v[-1] == 10.0


def test_stuck_flag_on_a_moving_signal_that_freezes() -> None:
    x = _noise(400)
    x[200:300] = x[199]
    _, f, _ = _run(x, TagParams(stuck_samples=30))
    stuck = np.flatnonzero(_has(f, F.STUCK))
    assert stuck[0] == 229 and stuck[-1] == 299 and len(stuck) == 71
    assert np.all(_has(f[232:300], F.ANOMALOUS))


def test_stuck_not_raised_on_a_signal_that_never_moves() -> None:
    x = np.full(300, 7.0)
    x[100] = 7.5  # one change is not "normally moves"
    _, f, _ = _run(x, TagParams(stuck_samples=30, hampel_window=0))
    assert not np.any(_has(f, F.STUCK))


def test_stuck_epsilon_treats_dither_as_no_change() -> None:
    x = _noise(400)
    x[200:300] = 10.0 + 0.001 * (np.arange(100) % 2)
    _, f0, _ = _run(x, TagParams(stuck_samples=30, stuck_epsilon=0.0))
    _, f1, _ = _run(x, TagParams(stuck_samples=30, stuck_epsilon=0.01))
    assert not np.any(_has(f0[200:300], F.STUCK))
    assert np.all(_has(f1[235:300], F.STUCK))


def test_drift_flag_on_a_slow_ramp_and_not_before() -> None:
    x = _noise(1500, sd=1.0)
    x[800:] += np.arange(700) * 0.02  # 0.02 sd per sample
    _, f, _ = _run(x)
    drift = np.flatnonzero(_has(f, F.DRIFT))
    assert drift.size and drift[0] > 800 and drift[0] < 1000
    assert not np.any(_has(f[:800], F.DRIFT))


def test_level_shift_raises_drift_and_alarm_then_clears_after_it_is_absorbed() -> None:
    x = _noise(3000, sd=1.0)
    x[1000:] += 3.0
    _, f, _ = _run(x, TagParams(alarm_on=("drift", "score")))
    assert np.any(_has(f[1000:1030], F.DRIFT))
    assert np.any(_has(f[1000:1040], F.ANOMALOUS))
    assert not np.any(_has(f[2800:], F.DRIFT | F.ANOMALOUS))  # baseline followed the new level


def test_score_is_a_robust_z_and_alarm_has_hysteresis() -> None:
    x = _noise(600, sd=1.0)
    x[400:405] = 25.0  # 15 sd for 5 samples (Hampel off, CUSUM off: the score alone)
    p = TagParams(
        alarm_on_samples=2, alarm_off_samples=20, hampel_window=0, cusum_h=1e9, alarm_on=("score",)
    )
    _, f, s = _run(x, p)
    assert s[400] > 10.0
    an = np.flatnonzero(_has(f, F.ANOMALOUS))
    assert an[0] == 401  # on at the 2nd consecutive bad sample
    assert an[-1] == 404 + 19  # off after 20 clear samples


def test_ewma_and_kalman_reduce_noise() -> None:
    x = _noise(2000)
    for p in (TagParams(filter="ewma", ewma_alpha=0.1), TagParams(filter="kalman")):
        v, _, _ = _run(x, p)
        assert np.std(v[100:]) < 0.5 * np.std(x[100:])
    v, _, _ = _run(x, TagParams(filter="none", hampel_window=0))
    assert np.array_equal(v, x)


def test_describe_names_bits() -> None:
    assert F.describe(F.SPIKE | F.GROUP_ALARM) == ["spike", "group_alarm"]


def test_default_alarm_causes_are_stuck_and_range_only() -> None:
    """A level change is flagged DRIFT but raises ANOMALOUS only where asked for: a setpoint
    move of an operated variable must not trip the control interlock."""
    x = _noise(1500)
    x[1000:] += 5.0
    _, f, s = _run(x)
    assert np.any(_has(f, F.DRIFT)) and s.max() > 6.0
    assert not np.any(_has(f, F.ANOMALOUS))
    _, f2, _ = _run(x, TagParams(alarm_on=("spike",)))
    assert not np.any(_has(f2[:1000], F.ANOMALOUS))  # isolated noise spikes are not bursts
