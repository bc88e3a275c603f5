"""KernelRuntime over a small duck-typed tag table: frames, groups, events, replay parity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from agent import names as N
from agent.kernel import KernelConfig, KernelError, KernelRuntime
from agent.kernel import flags as F
from agent.metrics import Metrics
from agent.tags import TagTable


def Table(names: list[str]) -> TagTable:
    return TagTable.for_names(names)


@dataclass(frozen=True)
class Slice:
    name: str
    start: int
    stop: int


def pump(n: int, seed: int = 0) -> np.ndarray:
    """current, flow, pressure driven by one speed signal, plus an unrelated temperature."""
    rng = np.random.default_rng(seed)
    speed = np.empty(n)  # stationary AR(1) around 50: the warm-up covers its range
    speed[0] = 50.0
    for i in range(1, n):
        speed[i] = 50.0 + 0.9 * (speed[i - 1] - 50.0) + rng.normal(0, 0.5)
    current = 0.2 * speed + rng.normal(0, 0.05, n)
    flow = 2.0 * speed + rng.normal(0, 0.3, n)
    pressure = 0.05 * speed + rng.normal(0, 0.02, n)
    temp = 40 + rng.normal(0, 0.2, n)
    return np.column_stack([current, flow, pressure, temp])


CFG = {
    "groups": [{"name": "skid", "tags": ["current", "flow", "pressure"], "warmup_samples": 300}],
}
NAMES = ["current", "flow", "pressure", "temp"]


def test_unknown_tag_in_group_is_refused() -> None:
    cfg = KernelConfig.model_validate({"groups": [{"name": "g", "tags": ["current", "nope"]}]})
    with pytest.raises(KernelError, match="nope"):
        KernelRuntime(cfg, Table(NAMES))


def test_bad_settings_are_rejected_by_the_model() -> None:
    with pytest.raises(ValidationError):
        KernelConfig.model_validate({"defaults": {"ewma_alpha": 0.0}})
    with pytest.raises(ValidationError):
        KernelConfig.model_validate({"tags": {"flow": {"hampel_windw": 5}}})
    with pytest.raises(ValidationError):
        KernelConfig.model_validate({"groups": [{"name": "g", "tags": ["a", "a"]}]})


def test_per_tag_overrides_merge_over_defaults() -> None:
    cfg = KernelConfig.model_validate(
        {"defaults": {"ewma_alpha": 0.2}, "tags": {"flow": {"filter": "kalman"}}}
    )
    assert cfg.params_for("flow").filter == "kalman"
    assert cfg.params_for("flow").ewma_alpha == 0.2
    assert cfg.params_for("current").filter == "ewma"
    assert cfg.unknown_tags(["current"]) == ["kernel.tags.flow: no such tag"]


def test_live_frames_learn_then_alarm_on_a_correlation_break_and_emit_events() -> None:
    data = pump(900)
    data[600:, 0] += 1.0  # current up while flow stays: each tag stays in its normal range
    tb = Table(NAMES)
    metrics = Metrics()
    rt = KernelRuntime(KernelConfig.model_validate(CFG), tb, metrics=metrics)
    frames = [Slice("fast", 0, 3), Slice("slow", 3, 4)]
    events = []
    status = []
    for r, row in enumerate(data):
        tb.raw[:] = row
        tb.ts_ns[:] = r * 500_000_000
        for fr in frames:
            events += [(r, e) for e in rt.process(fr)]
        status.append(rt.group_status()["skid"])
    assert np.isnan(status[100][0])  # still learning
    assert rt.group_info()["skid"]["components"] >= 1
    group_on = [
        (r, e) for r, e in events if e["level"] == "group" and e["kind"] == N.EVENT_ANOMALY_ON
    ]
    assert group_on and 600 <= group_on[0][0] < 620  # 10 samples over the limit
    assert all(r >= 600 for r, _ in group_on)
    ev = group_on[0][1]
    assert ev["source"] == "skid" and ev["score"] > 1.0
    assert max(ev["contributions"], key=ev["contributions"].get) == "current"
    assert status[-1][1] is True
    assert tb.flags[0] & F.GROUP_ALARM and not tb.flags[3] & F.GROUP_ALARM
    assert metrics.get("edgeloop_anomaly_alarm", group="skid") == 1.0
    assert "edgeloop_anomaly_alarm" in metrics.emitted()


def test_tag_alarm_events_on_and_off() -> None:
    tb = Table(["a"])
    rt = KernelRuntime(KernelConfig.model_validate({"defaults": {"alarm_on": ["score"]}}), tb)
    rng = np.random.default_rng(3)
    kinds = []
    for r in range(400):
        tb.raw[0] = 10 + rng.normal() + (40.0 if 200 <= r < 210 else 0.0)
        tb.ts_ns[0] = r
        for e in rt.process(Slice("g", 0, 1)):
            kinds.append((r, e["kind"], e["source"], e["level"]))
    assert [k[1] for k in kinds] == [N.EVENT_ANOMALY_ON, N.EVENT_ANOMALY_OFF]
    assert 200 <= kinds[0][0] <= 212 and kinds[1][0] > 210
    assert kinds[0][2] == "a" and kinds[0][3] == "tag"


def test_group_skips_samples_with_an_invalid_member() -> None:
    data = pump(500)
    tb = Table(NAMES)
    rt = KernelRuntime(KernelConfig.model_validate(CFG), tb)
    for r, row in enumerate(data):
        tb.raw[:] = row
        tb.quality[:] = 1 if r % 2 else 0  # every other frame is bad: not learned from
        rt.process(Slice("all", 0, 4))
    assert rt.group_info()["skid"]["collected"] == 250


def test_replay_run_equals_live_frames() -> None:
    data = pump(700)
    data[500:, 1] -= 8.0
    cfg = KernelConfig.model_validate(CFG)
    tb = Table(NAMES)
    live = KernelRuntime(cfg, tb)
    scores, alarms, flags = [], [], []
    for r, row in enumerate(data):
        tb.raw[:] = row
        tb.ts_ns[:] = r * 1_000_000_000
        live.process(Slice("all", 0, 4))
        s, a = live.group_status()["skid"]
        scores.append(s)
        alarms.append(a)
        flags.append(tb.flags.copy())
    res = KernelRuntime(cfg, Table(NAMES)).run(data)
    np.testing.assert_array_equal(res.flags, np.array(flags))
    # live fits after its 300th valid sample and scores from the next one, like replay
    np.testing.assert_array_equal(res.group_score["skid"][300:], np.array(scores)[300:])
    np.testing.assert_array_equal(res.group_alarm["skid"], np.array(alarms, dtype=np.uint8))
    assert res.group_alarm["skid"][520:].all()


def test_constant_column_is_excluded_and_reported() -> None:
    data = pump(400)
    data[:, 2] = 1.5
    rt = KernelRuntime(KernelConfig.model_validate(CFG), Table(NAMES))
    rt.run(data)
    assert rt.group_info()["skid"]["excluded"] == ["pressure"]


def test_config_cross_check_reports_unknown_group_tags_with_their_line() -> None:
    import yaml

    from agent.config import ConfigError, parse_config

    def with_kernel(tags: list[str]) -> str:
        data = yaml.safe_load(Path("config/edgeloop.yaml").read_text())
        data["kernel"] = {"groups": [{"name": "skid", "tags": tags}]}
        return yaml.safe_dump(data, sort_keys=False)

    with pytest.raises(ConfigError) as exc:
        parse_config(with_kernel(["pump_flow", "no_such_tag"]), "plant.yaml")
    msg = str(exc.value)
    assert "kernel.groups[0].tags[1]" in msg and "no such tag 'no_such_tag'" in msg
    ok = with_kernel(["pump_flow", "pump_motor_current"])
    assert parse_config(ok, "plant.yaml").kernel.groups[0].name == "skid"


def test_adaptation_follows_slow_normal_drift_and_freezes_in_alarm() -> None:
    from agent.kernel import multivar as mv
    from agent.kernel.settings import GroupSettings

    data = pump(6000, seed=5)
    drift = np.linspace(0.0, 1.0, 5700)[:, None] * np.array([1.0, 10.0, 0.25, 0.0])
    data[300:] += drift  # the operating point creeps, the relation holds
    k = 3
    results = {}
    for adapt in (0.0, 0.01):
        gs = GroupSettings(name="g", tags=["a", "b", "c"], warmup_samples=300, adapt_alpha=adapt)
        m = mv.fit_group(gs, np.arange(k), data[:300, :k])
        flags = np.zeros((data.shape[0], k), dtype=np.uint16)
        s = np.full(data.shape[0], np.nan)
        a = np.zeros(data.shape[0], dtype=np.uint8)
        mv.group_run(np.ascontiguousarray(data[:, :k]), flags, 300, *mv.model_args(m), s, a)
        results[adapt] = (a, m)
    assert results[0.0][0][3000:].mean() > 0.5  # frozen model: the creep looks abnormal
    assert results[0.01][0][300:].mean() < 0.02  # adapting model follows it
    # a correlation break still alarms, and the mean does not learn it while in alarm
    a, m = results[0.01]
    x = data[-1, :k].copy()
    x[0] += 1.0
    before = m.mean.copy()
    vals = np.tile(x, (200, 1))
    fl = np.zeros(vals.shape, dtype=np.uint16)
    s = np.zeros(200)
    al = np.zeros(200, dtype=np.uint8)
    mv.group_run(vals, fl, 0, *mv.model_args(m), s, al)
    assert al[20:].all()
    assert np.abs(m.mean - before).max() < 0.05  # frozen once the alarm is on


def test_runtime_over_the_real_tag_table_of_the_default_config() -> None:
    """The contract with agent/tags.py: KernelRuntime(cfg.kernel, table), process(group)."""
    import yaml

    from agent.config import parse_config
    from agent.tags import compile_config

    data = yaml.safe_load(Path("config/edgeloop.yaml").read_text())
    data["kernel"] = {
        "groups": [
            {
                "name": "skid",
                "warmup_samples": 50,
                "tags": ["pump_flow", "pump_motor_current", "pump_discharge_pressure"],
            }
        ]
    }
    text = yaml.safe_dump(data, sort_keys=False)
    compiled = compile_config(parse_config(text, "plant.yaml"))
    tb = compiled.table
    rt = KernelRuntime(compiled.config.kernel, tb)
    rng = np.random.default_rng(0)
    bounded = np.isfinite(tb.min) & np.isfinite(tb.max)
    mid = np.where(bounded, (tb.min + tb.max) / 2, 10.0)
    sd = np.where(bounded, (tb.max - tb.min) / 100, 1.0)
    for k in range(80):
        for g in compiled.groups:
            sl = slice(g.start, g.stop)
            tb.raw[sl] = mid[sl] + sd[sl] * rng.normal(size=g.size)
            tb.quality[g.start : g.stop] = 0
            tb.ts_ns[g.start : g.stop] = k * 500_000_000
            assert rt.process(g) == []
    assert np.all(np.isfinite(tb.value[tb.quality == 0]))
    assert not np.any(tb.flags & (F.INVALID | F.ANOMALOUS | F.GROUP_ALARM))
    assert rt.group_info()["skid"]["components"] >= 1
    score, alarm = rt.group_status()["skid"]
    assert np.isfinite(score) and alarm is False


def test_warmup_compiles_without_touching_the_runtime_state() -> None:
    """warmup() runs the jitted live path on throwaway arrays: the table and state stay as
    they were, and processing afterwards gives the same result as without a warmup."""
    from agent.kernel.settings import KernelConfig

    def make():
        tb = Table(["a", "b", "c"])
        tb.min[:] = 0.0
        tb.max[:] = 100.0
        cfg = KernelConfig.model_validate(
            {"groups": [{"name": "g", "tags": ["a", "b", "c"], "warmup_samples": 20}]}
        )
        return tb, KernelRuntime(cfg, tb)

    tb1, rt1 = make()
    fields = ("P", "S", "I", "ring", "srt")
    before = {k: getattr(rt1.state, k).copy() for k in fields}
    rt1.warmup()
    for k, v in before.items():
        assert np.array_equal(getattr(rt1.state, k), v, equal_nan=True), k
    tb2, rt2 = make()
    rng = np.random.default_rng(1)
    grp = Slice("g", 0, 3)
    for k in range(60):
        x = 50 + rng.normal(size=3)
        for tb, rt in ((tb1, rt1), (tb2, rt2)):
            tb.raw[:] = x
            tb.quality[:] = 0
            tb.ts_ns[:] = k * 500_000_000
            rt.process(grp)
    assert np.array_equal(tb1.value, tb2.value) and np.array_equal(tb1.flags, tb2.flags)
