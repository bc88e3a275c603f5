"""Metric and event names: one module (agent/names.py), Prometheus conventions, and each
component emits what COMPONENTS says it does.

To cover a new component in the emission check, add an exerciser to EXERCISERS: a function
that drives the component briefly with the given `Metrics` (real objects, no mocks).
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import names
from agent.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
NAME_RE = re.compile(r"^edgeloop_[a-z][a-z0-9_]*[a-z0-9]$")
TYPES = {"counter", "gauge", "histogram"}
# Suffixes the exposition format gives a meaning to (histograms, summaries, OpenMetrics).
RESERVED_SUFFIXES = ("_sum", "_count", "_bucket", "_max", "_created", "_info")
# Base units as Prometheus recommends: seconds, bytes; not ms, kb, minutes, percent.
BAD_UNITS = re.compile(
    r"_(ms|msec|millis|milliseconds|us|usec|ns|minutes|hours|kb|mb|kib|mib|percent)(_|$)"
)


def test_components_only_list_declared_names() -> None:
    for component, metric_names in names.COMPONENTS.items():
        for name in metric_names:
            assert name in names.METRICS, f"{component}: {name} is not declared in METRICS"


@pytest.mark.parametrize("name", sorted(names.METRICS))
def test_name_follows_prometheus_conventions(name: str) -> None:
    kind, help_text = names.METRICS[name]
    assert NAME_RE.match(name), f"{name}: lower_snake_case with the edgeloop_ prefix"
    assert kind in TYPES, f"{name}: unknown type {kind!r}"
    if kind == "counter":
        assert name.endswith("_total"), f"{name}: counters end in _total"
    else:
        assert not name.endswith("_total"), f"{name}: only counters end in _total"
    # `_info` is the text-format convention for an always-1 gauge whose labels carry the facts
    # (python_info, node_uname_info); OpenMetrics renders such an info family the same way
    info = kind == "gauge" and name.endswith("_info") and help_text.startswith("Always 1;")
    assert info or not name.endswith(RESERVED_SUFFIXES), f"{name}: reserved suffix"
    assert not BAD_UNITS.search(name), f"{name}: use base units (_seconds, _bytes)"
    if kind == "histogram":
        assert name.endswith("_seconds") or name.endswith("_bytes"), f"{name}: unit suffix"
    assert help_text and "\n" not in help_text and help_text.endswith("."), name


def test_rendered_series_do_not_collide() -> None:
    """A histogram renders name_bucket/_sum/_count; none of those may be another metric."""
    rendered: dict[str, str] = {}
    for name, (kind, _) in names.METRICS.items():
        suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
        for s in (f"{name}{x}" for x in suffixes):
            assert s not in rendered, f"{s} rendered by both {rendered.get(s)} and {name}"
            rendered[s] = name


def test_histograms_have_increasing_finite_buckets_and_others_none() -> None:
    hists = {n for n, (k, _) in names.METRICS.items() if k == "histogram"}
    assert set(names.BUCKETS) == hists
    for name, bounds in names.BUCKETS.items():
        assert 5 <= len(bounds) <= 20, f"{name}: {len(bounds)} buckets"
        assert all(0 < a < b < float("inf") for a, b in itertools.pairwise(bounds)), name


def test_every_metric_declares_its_labels_and_constant() -> None:
    assert set(names.LABELS) == set(names.METRICS)
    for name, labels in names.LABELS.items():
        assert "le" not in labels and "quantile" not in labels, name
        assert getattr(names, name.removeprefix("edgeloop_").upper()) == name


def _emit_all(m: Metrics, value: float, **labels: object) -> None:
    for name, (kind, _) in names.METRICS.items():
        {"counter": m.inc, "gauge": m.set, "histogram": m.observe}[kind](name, value, **labels)


def test_every_declared_metric_renders_as_valid_exposition_text() -> None:
    """Emit each declared metric once and parse Metrics.render() line by line."""
    m = Metrics()
    _emit_all(m, 1.5, device='plc "a"\\b\nc', group="fast")
    text = m.render()
    sample = re.compile(
        r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
        r'(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*\})?'
        r" (?P<value>[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|NaN|[-+]?Inf))$"
    )
    seen_types: dict[str, str] = {}
    for line in text.rstrip("\n").split("\n"):
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            seen_types[name] = kind
            continue
        mt = sample.match(line)
        assert mt, f"invalid exposition line: {line!r}"
        base = re.sub(r"_(bucket|sum|count)$", "", mt["name"])
        assert mt["name"] in seen_types or seen_types.get(base) == "histogram", line
    assert seen_types == {n: k for n, (k, _) in names.METRICS.items()}


def test_event_kinds_are_unique_snake_case() -> None:
    events = {k: v for k, v in vars(names).items() if k.startswith("EVENT_")}
    assert events, "no EVENT_ constants"
    assert len(set(events.values())) == len(events)
    for value in events.values():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", value), value


def test_operations_doc_lists_every_metric() -> None:
    """docs/operations.md's metric table stays in step with agent/names.py."""
    doc = (ROOT / "docs" / "operations.md").read_text()
    in_doc = set(re.findall(r"`(edgeloop_[a-z0-9_]+)`", doc))
    missing = set(names.METRICS) - in_doc
    assert not missing, f"add to docs/operations.md: {sorted(missing)}"
    # Names in the doc must exist (histogram series like _bucket/_sum/_count are fine).
    stale = {n for n in in_doc if re.sub(r"_(bucket|sum|count)$", "", n) not in names.METRICS}
    assert not stale, f"docs/operations.md names undeclared metrics: {sorted(stale)}"


def test_operations_doc_states_the_histogram_buckets() -> None:
    """The bucket table in docs/operations.md is what agent/names.py renders."""
    doc = (ROOT / "docs" / "operations.md").read_text()
    for name, bounds in names.BUCKETS.items():
        row = re.search(rf"^\| `{name}` \| ([0-9. ]+) \|$", doc, re.M)
        assert row, f"docs/operations.md: no bucket row for {name}"
        assert [float(x) for x in row[1].split()] == list(bounds), name


# --- each component emits its names -----------------------------------------------------


def _exercise_telemetry(metrics: Metrics) -> None:
    from agent.telemetry.http import TelemetryServer
    from agent.telemetry.settings import HttpConfig

    async def go() -> None:
        async with TelemetryServer(HttpConfig(port=0), metrics, dict, lambda: True) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
            await asyncio.wait_for(reader.read(), 5)
            writer.close()

    asyncio.run(go())


EXERCISERS: dict[str, Callable[[Metrics], None]] = {
    "telemetry": _exercise_telemetry,
}


# The pipeline components (acquire, kernel, store, publish, control) are checked together,
# running against real servers, in tests/integration/test_pipeline_names.py.
@pytest.mark.parametrize("component", sorted(EXERCISERS))
def test_component_emits_its_names(component: str) -> None:
    exercise = EXERCISERS[component]
    metrics = Metrics()
    exercise(metrics)
    missing = set(names.COMPONENTS[component]) - metrics.emitted()
    assert not missing, f"{component} did not emit {sorted(missing)}"


def test_exposition_parses_into_the_declared_families() -> None:
    """prometheus_client's own parser reads every declared metric as one family of its
    declared type (two label sets each: interleaved samples would split a family), plus the
    standard process_* families; nothing is `unknown`."""
    from prometheus_client.parser import text_string_to_metric_families

    m = Metrics()
    for dev in ("a", "b"):
        _emit_all(m, 1.5, device=dev)
    fams = {f.name: f for f in text_string_to_metric_families(m.render(process=True))}
    for name, (kind, _) in names.METRICS.items():
        fam = name.removesuffix("_total") if kind == "counter" else name
        assert fams[fam].type == kind, (name, fams[fam].type)
        samples = [s.name for s in fams[fam].samples]
        if kind == "histogram":
            per_set = len(names.BUCKETS[name]) + 1 + 2  # buckets, +Inf, _sum, _count
            assert len(samples) == 2 * per_set
            assert set(samples) == {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            assert samples == [name, name]
    assert not [f.name for f in fams.values() if f.type == "unknown"]
    assert fams["process_resident_memory_bytes"].samples[0].value > 1e6


def test_histogram_buckets_are_cumulative_with_le_semantics() -> None:
    """A value equal to a bound counts in that bucket (le = less or equal); every bucket
    counts everything below it; +Inf is the count; NaN is not counted."""
    from prometheus_client.parser import text_string_to_metric_families

    m = Metrics()
    name = names.CONTROL_STEP_SECONDS
    bounds = names.BUCKETS[name]
    values = [bounds[0], bounds[0] * 1.01, bounds[3], bounds[-1] * 10, 0.0, float("nan")]
    for v in values:
        m.observe(name, v, loop="tank")
    (fam,) = [f for f in text_string_to_metric_families(m.render()) if f.name == name]
    buckets = {s.labels["le"]: s.value for s in fam.samples if s.name.endswith("_bucket")}
    by = {s.name: s.value for s in fam.samples if not s.name.endswith("_bucket")}
    assert buckets[repr(bounds[0])] == 2  # 0.0 and the bound itself
    assert buckets[repr(bounds[1])] == 3
    assert buckets[repr(bounds[3])] == 4
    assert buckets[repr(bounds[-1])] == 4
    assert buckets["+Inf"] == 5 == by[f"{name}_count"]
    assert by[f"{name}_sum"] == pytest.approx(sum(values[:5]))
    assert list(buckets.values()) == sorted(buckets.values())


def test_histogram_series_is_shared_and_observing_allocates_nothing() -> None:
    """`histogram()` hands hot paths the one series object; its observe allocates no
    Python objects (tracemalloc sees no growth over many observations)."""
    import tracemalloc

    m = Metrics()
    h = m.histogram(names.KERNEL_SECONDS, group="plc/fast")
    assert m.histogram(names.KERNEL_SECONDS, group="plc/fast") is h
    h.observe(0.001)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(10_000):
            h.observe(i * 1e-6)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # only what agent/metrics.py allocated: threads other tests left behind allocate too
    import agent.metrics

    only = [tracemalloc.Filter(True, agent.metrics.__file__)]
    diff = after.filter_traces(only).compare_to(before.filter_traces(only), "filename")
    grown = sum(s.size_diff for s in diff if s.size_diff > 0)
    assert grown < 2048, grown
    assert h.count == 10_001


def test_observe_finds_one_series_whatever_the_label_order() -> None:
    m = Metrics()
    m.observe(names.POLL_LATENCY_SECONDS, 0.002, device="plc", group="fast")
    m.observe(names.POLL_LATENCY_SECONDS, 0.003, group="fast", device="plc")
    m.observe(names.POLL_LATENCY_SECONDS, 0.004, group="slow", device="plc")
    assert m.histogram(names.POLL_LATENCY_SECONDS, device="plc", group="fast").count == 2
    assert m.render().count("edgeloop_poll_latency_seconds_count{") == 2


def test_declared_series_exist_at_zero_and_keep_values() -> None:
    m = Metrics()
    m.inc(names.STORE_DROPPED_TOTAL, 3)
    m.declare(names.STORE_DROPPED_TOTAL)
    m.declare(names.CONTROL_FALLBACKS_TOTAL, loop="tank", reason="anomaly")
    m.declare(names.POLL_LATENCY_SECONDS, device="plc", group="fast")
    assert m.get(names.STORE_DROPPED_TOTAL) == 3
    text = m.render()
    assert 'edgeloop_control_fallbacks_total{loop="tank",reason="anomaly"} 0\n' in text
    assert 'edgeloop_poll_latency_seconds_bucket{device="plc",group="fast",le="+Inf"} 0' in text
    # declared only is not emitted: the component emission checks stay honest
    assert m.emitted() == {names.STORE_DROPPED_TOTAL}
    with pytest.raises(KeyError):
        m.declare("edgeloop_nonsense_total")


def test_openmetrics_rendering_parses_with_the_openmetrics_parser() -> None:
    """The OpenMetrics rendering (served on Accept negotiation) passes prometheus_client's
    strict OpenMetrics parser: counter families without _total, # EOF, histograms."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    m = Metrics()
    for dev in ("a", "b"):
        _emit_all(m, 2.0, device=dev)
    fams = {f.name: f for f in text_string_to_metric_families(m.render(True, openmetrics=True))}
    for name, (kind, _) in names.METRICS.items():
        fam = name.removesuffix("_total") if kind == "counter" else name
        assert fams[fam].type == kind, name
    assert fams["process_cpu_seconds"].type == "counter"
