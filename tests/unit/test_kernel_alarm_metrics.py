"""The kernel's alarm metrics: `edgeloop_tag_alarm{tag,kind}` and
`edgeloop_alarms_total{level,source,cause}`, present at 0 from start-up, following the alarms
and naming their cause (issue 13)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from agent import names as N
from agent.kernel import KernelConfig, KernelRuntime
from agent.kernel import flags as F
from agent.kernel import pertag as pt
from agent.kernel.alarm_metrics import group_cause, tag_cause
from agent.metrics import Metrics
from agent.tags import TagTable

NAMES = ["current", "flow", "pressure", "temp"]
CFG = {
    "tags": {"temp": {"alarm_on": ["stuck", "out_of_range", "drift"]}},
    "groups": [{"name": "skid", "tags": ["current", "flow", "pressure"], "warmup_samples": 300}],
}


@dataclass(frozen=True)
class Slice:
    name: str
    start: int
    stop: int


def pump(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    speed = np.empty(n)
    speed[0] = 50.0
    for i in range(1, n):
        speed[i] = 50.0 + 0.9 * (speed[i - 1] - 50.0) + rng.normal(0, 0.5)
    return np.column_stack(
        [
            0.2 * speed + rng.normal(0, 0.05, n),
            2.0 * speed + rng.normal(0, 0.3, n),
            0.05 * speed + rng.normal(0, 0.02, n),
            40 + rng.normal(0, 0.2, n),
        ]
    )


def _series(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The rendered exposition as {(name, sorted labels): value}."""
    out = {}
    for line in m.render().splitlines():
        if line.startswith("#") or not line:
            continue
        head, value = line.rsplit(" ", 1)
        name, _, labels = head.partition("{")
        pairs = [p.split("=", 1) for p in labels.rstrip("}").split(",") if p]
        out[(name, tuple(sorted((k, v.strip('"')) for k, v in pairs)))] = float(value)
    return out


def test_every_series_exists_at_zero_before_any_sample() -> None:
    metrics = Metrics()
    tb = TagTable.for_names(NAMES, 0.0, 1000.0)
    KernelRuntime(KernelConfig.model_validate(CFG), tb, metrics=metrics)
    for name in NAMES:
        assert ("edgeloop_tag_alarm", (("kind", "tag"), ("tag", name))) in _series(metrics)
    for name in NAMES[:3]:  # group members only
        assert metrics.get("edgeloop_tag_alarm", tag=name, kind="group") == 0.0
    assert ("edgeloop_tag_alarm", (("kind", "group"), ("tag", "temp"))) not in _series(metrics)
    alarms = {k for (n, k) in _series(metrics) if n == "edgeloop_alarms_total"}
    want = {("group", "skid", c) for c in ("spe", "t2")}
    want |= {("tag", t, c) for t in NAMES[:3] for c in ("out_of_range", "stuck")}
    want |= {("tag", "temp", c) for c in ("out_of_range", "stuck", "drift")}
    assert {(dict(k)["level"], dict(k)["source"], dict(k)["cause"]) for k in alarms} == want
    assert metrics.total("edgeloop_alarms_total") == 0.0
    body = metrics.render()
    assert 'edgeloop_alarms_total{cause="drift",level="tag",source="temp"} 0' in body


def test_tag_and_group_alarms_move_the_gauges_and_count_their_cause() -> None:
    data = pump(1000)
    data[600:, 0] += 1.0  # current up while flow stays: the correlation breaks
    data[700:760, 3] = 2000.0  # the temperature sensor reads beyond its range for a while
    tb = TagTable.for_names(NAMES, 0.0, 1000.0)
    metrics = Metrics()
    rt = KernelRuntime(KernelConfig.model_validate(CFG), tb, metrics=metrics)
    frames = [Slice("fast", 0, 3), Slice("slow", 3, 4)]
    events = []
    gauges = []
    for r, row in enumerate(data):
        tb.raw[:] = row
        tb.ts_ns[:] = r * 500_000_000
        for fr in frames:
            events += rt.process(fr)
        gauges.append(
            (
                metrics.get("edgeloop_tag_alarm", tag="current", kind="group"),
                metrics.get("edgeloop_tag_alarm", tag="temp", kind="tag"),
            )
        )
    on = [e for e in events if e["kind"] == N.EVENT_ANOMALY_ON]
    group_on = [e for e in on if e["level"] == "group"]
    temp_on = [e for e in on if e["source"] == "temp"]
    assert group_on and all(e["cause"] == "spe" for e in group_on)  # a correlation break
    assert [e["cause"] for e in temp_on] == ["out_of_range"]
    assert metrics.get("edgeloop_alarms_total", level="group", source="skid", cause="spe") == len(
        group_on
    )
    assert (
        metrics.get("edgeloop_alarms_total", level="tag", source="temp", cause="out_of_range") == 1
    )
    assert metrics.get("edgeloop_alarms_total", level="group", source="skid", cause="t2") == 0
    g = np.array(gauges)
    assert g[:600, 0].max() == 0.0 and g[-1, 0] == 1.0  # group alarm: members' gauge
    assert g[:700, 1].max() == 0.0 and g[710:760, 1].min() == 1.0 and g[-1, 1] == 0.0
    assert metrics.get("edgeloop_tag_alarm", tag="temp", kind="tag") == 0.0


@pytest.mark.parametrize(
    "flags, score, alarm_on, cause",
    [
        (F.OUT_OF_RANGE | F.DRIFT, 9.0, ("out_of_range", "drift", "score"), "out_of_range"),
        (F.STUCK, 0.0, ("stuck", "drift"), "stuck"),
        (F.SPIKE | F.DRIFT, 9.0, ("drift", "spike"), "spike"),
        (F.SPIKE | F.DRIFT, 9.0, ("drift", "score"), "drift"),
        (F.DRIFT, 9.0, ("score",), "score"),
        (F.DRIFT, 1.0, ("score",), "unknown"),
    ],
)
def test_tag_cause_priority(flags: int, score: float, alarm_on: tuple, cause: str) -> None:
    mask = sum({pt.ALARM_BITS[c] for c in alarm_on})
    assert tag_cause(flags, score, mask, 6.0) == cause


def test_group_cause_compares_each_statistic_with_its_limit() -> None:
    assert group_cause(t2=30.0, spe=2.0, t2_limit=10.0, spe_limit=1.0) == "t2"
    assert group_cause(t2=12.0, spe=2.0, t2_limit=10.0, spe_limit=1.0) == "spe"
