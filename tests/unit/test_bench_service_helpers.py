"""The pure helpers of bench/service.py: Prometheus parsing, summary deltas, period jitter."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.metrics import Metrics

_PATH = Path(__file__).resolve().parents[2] / "bench" / "service.py"
_spec = importlib.util.spec_from_file_location("bench_service", _PATH)
assert _spec is not None and _spec.loader is not None
svc = importlib.util.module_from_spec(_spec)
sys.modules["bench_service"] = svc  # dataclasses look their module up
_spec.loader.exec_module(svc)


def test_parse_metrics_reads_the_agents_own_exposition_and_totals_label_sets() -> None:
    m = Metrics()
    m.inc("edgeloop_polls_total", 3, device="a", group="g")
    m.inc("edgeloop_polls_total", 4, device="b", group="g")
    m.observe("edgeloop_kernel_seconds", 0.002, group="a/g")
    m.observe("edgeloop_kernel_seconds", 0.004, group="b/g")
    out = svc.parse_metrics(m.render())
    assert out['edgeloop_polls_total{device="a",group="g"}'] == 3
    assert out["edgeloop_polls_total"] == 7
    assert out["edgeloop_kernel_seconds_count"] == 2
    assert out["edgeloop_kernel_seconds_sum"] == pytest.approx(0.006)
    assert out['edgeloop_kernel_seconds_bucket{group="a/g",le="+Inf"}'] == 1


def test_summary_mean_is_the_mean_of_the_window_only() -> None:
    before = {"x_sum": 10.0, "x_count": 100.0}
    after = {"x_sum": 10.5, "x_count": 105.0}
    assert svc.summary_mean(before, after, "x") == pytest.approx(0.1)
    assert np.isnan(svc.summary_mean(after, after, "x"))


def test_period_jitter_is_the_deviation_from_the_interval() -> None:
    ts = np.array([0, 100, 203, 300, 400], dtype=np.int64) * 1_000_000  # ms -> ns
    p50, p99, mx = svc.period_jitter_ms(ts, 100.0)
    assert mx == pytest.approx(3.0)
    assert p50 == pytest.approx(1.5)  # periods 100, 103, 97, 100 ms
    assert 2.9 < p99 <= 3.0
    assert all(np.isnan(svc.period_jitter_ms(ts[:2], 100.0)))
