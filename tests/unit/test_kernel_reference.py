"""Property tests: the jitted per-tag stage and group scorer equal the plain-Python reference."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.kernel import multivar as mv
from agent.kernel import pertag as pt
from agent.kernel.settings import GroupSettings, TagParams
from tests.reference.kernel_ref import run_reference
from tests.reference.multivar_ref import score_reference

tag_params = st.builds(
    TagParams,
    filter=st.sampled_from(["ewma", "kalman", "none"]),
    ewma_alpha=st.floats(0.01, 1.0),
    kalman_q=st.floats(0.0, 1.0),
    kalman_r=st.floats(1e-3, 10.0),
    hampel_window=st.sampled_from([0, 3, 5, 7, 9, 11]),
    hampel_k=st.floats(0.5, 5.0),
    spike_min_dev=st.sampled_from([0.0, 0.1, 1.0]),
    rate_limit_per_s=st.one_of(st.none(), st.floats(0.01, 10.0)),
    stuck_samples=st.integers(0, 8),
    stuck_epsilon=st.sampled_from([0.0, 0.01, 0.5]),
    stuck_min_move_rate=st.floats(0.0, 1.0),
    baseline_alpha=st.floats(0.001, 1.0),
    noise_floor=st.sampled_from([1e-6, 0.1]),
    cusum_k=st.floats(0.0, 2.0),
    cusum_h=st.floats(0.5, 20.0),
    score_threshold=st.floats(0.5, 8.0),
    alarm_on_samples=st.integers(1, 4),
    alarm_off_samples=st.integers(1, 4),
    warmup_samples=st.integers(1, 10),
    alarm_on=st.lists(
        st.sampled_from(["score", "drift", "spike", "stuck", "out_of_range"]), unique=True
    ).map(tuple),
)

# some tags with a false-alarm budget (score limit and k of n from the warm-up)
budget = st.one_of(
    st.just({}),
    st.just({}),
    st.just({}),
    st.floats(0.001, 0.3).map(lambda r: {"false_alarm_rate": r}),
    st.floats(1.0, 1e5).map(lambda d: {"false_alarms_per_day": d}),
)
tag_params = st.tuples(tag_params, budget, st.integers(1, 6)).map(
    lambda t: TagParams.model_validate({**t[0].model_dump(), **t[1], "persistence_window": t[2]})
)

# samples drawn from a few regimes so spikes, plateaus, steps and invalid values all occur
sample = st.one_of(
    st.floats(-5.0, 5.0),
    st.sampled_from([0.0, 1.0, 2.5, 100.0, -100.0, math.nan, math.inf, -math.inf]),
    st.integers(-3, 3).map(float),
)


@st.composite
def scenario(draw):
    n_tags = draw(st.integers(1, 3))
    n_rows = draw(st.integers(1, 60))
    params = [draw(tag_params) for _ in range(n_tags)]
    raw = [[draw(sample) for _ in range(n_tags)] for _ in range(n_rows)]
    quality = [[draw(st.sampled_from([0, 0, 0, 0, 1, 3])) for _ in range(n_tags)] for _ in raw]
    dts = [draw(st.sampled_from([0, 100_000_000, 500_000_000, 1_000_000_000])) for _ in raw]
    ts = list(np.cumsum(dts) + 1_700_000_000_000_000_000)
    ranges = [
        (draw(st.sampled_from([-math.inf, -4.0])), draw(st.sampled_from([math.inf, 4.0])))
        for _ in range(n_tags)
    ]
    return params, raw, quality, [int(t) for t in ts], ranges


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_pertag_equals_reference(case) -> None:
    params, raw, quality, ts, ranges = case
    mins = np.array([lo if math.isfinite(lo) else math.nan for lo, _ in ranges])
    maxs = np.array([hi if math.isfinite(hi) else math.nan for _, hi in ranges])
    state = pt.TagState.new(pt.compile_params(params, mins, maxs))
    value, flags, score = pt.run(
        state, np.array(raw), np.array(quality, dtype=np.uint8), np.array(ts, dtype=np.int64)
    )
    ref_v, ref_f, ref_s = run_reference(params, raw, quality, ts, ranges)
    for r in range(len(raw)):
        for i in range(len(params)):
            assert int(flags[r, i]) == ref_f[r][i], (r, i)
            assert _same(float(value[r, i]), ref_v[r][i]), (r, i, value[r, i], ref_v[r][i])
            assert _same(float(score[r, i]), ref_s[r][i]), (r, i, score[r, i], ref_s[r][i])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_step_per_frame_equals_run(case) -> None:
    """Live frames (`step` over a slice) and replay (`run`) give identical outputs."""
    params, raw, quality, ts, _ = case
    P = pt.compile_params(params)
    a = pt.TagState.new(P)
    value, flags, score = pt.run(
        a, np.array(raw), np.array(quality, dtype=np.uint8), np.array(ts, dtype=np.int64)
    )
    b = pt.TagState.new(P)
    n = len(params)
    v = np.zeros(n)
    f = np.zeros(n, dtype=np.uint16)
    s = np.zeros(n)
    for r, row in enumerate(raw):
        pt.step(
            b,
            np.array(row),
            np.array(quality[r], dtype=np.uint8),
            np.full(n, ts[r], dtype=np.int64),
            v,
            f,
            s,
        )
        np.testing.assert_array_equal(f, flags[r])
        np.testing.assert_array_equal(v, value[r])
        np.testing.assert_array_equal(s, score[r])


@st.composite
def group_case(draw):
    k = draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    n_train = draw(st.integers(max(20, 2 * k), 80))
    mix = rng.normal(size=(k, k))
    train = rng.normal(size=(n_train, k)) @ mix
    const = draw(st.booleans())  # a constant column is excluded from the model
    if const:
        train[:, 0] = 3.0
    test = rng.normal(size=(draw(st.integers(1, 40)), k)) @ mix * draw(st.floats(0.5, 3.0))
    if draw(st.booleans()):
        test[rng.integers(0, test.shape[0]), rng.integers(0, k)] = math.nan
    lags = draw(st.integers(0, 2))
    n_train = max(n_train, (lags + 1) * max(20, 2 * k) + lags)
    train = rng.normal(size=(n_train, k)) @ mix
    if const:
        train[:, 0] = 3.0
    common = dict(
        name="g",
        tags=[f"t{j}" for j in range(k)],
        warmup_samples=max(20, n_train),
        score_alpha=draw(st.floats(0.05, 1.0)),
        adapt_alpha=draw(st.sampled_from([0.0, 0.01, 0.2])),
        lags=lags,
    )
    if draw(st.booleans()):  # false-alarm budget: k of n over the per-sample limits
        gs = GroupSettings(
            **common,
            false_alarm_rate=draw(st.sampled_from([0.01, 0.05, 0.2])),
            persistence_window=draw(st.integers(1, 6)),
        )
    else:
        gs = GroupSettings(
            **common,
            alarm_on_samples=draw(st.integers(1, 3)),
            alarm_off_samples=draw(st.integers(1, 3)),
        )
    return gs, train, test


@settings(max_examples=150, deadline=None)
@given(group_case())
def test_group_scoring_equals_reference(case) -> None:
    gs, train, test = case
    k = train.shape[1]
    model = mv.fit_group(gs, np.arange(k), train)
    ref = score_reference(model, test)  # copies the fitted arrays before they adapt
    flags = np.zeros(test.shape, dtype=np.uint16)
    out_s = np.full(test.shape[0], np.nan)
    out_a = np.zeros(test.shape[0], dtype=np.uint8)
    mv.group_run(test, flags, 0, *mv.model_args(model), out_s, out_a)
    for r, (s_ref, a_ref) in enumerate(ref):
        assert _same(float(out_s[r]), s_ref), (r, out_s[r], s_ref)
        assert int(out_a[r]) == a_ref, r
