"""Metric and event names: one module (agent/names.py), Prometheus conventions, and each
component emits what COMPONENTS says it does.

To cover a new component in the emission check, add an exerciser to EXERCISERS: a function
that drives the component briefly with the given `Metrics` (real objects, no mocks).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import names
from agent.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
NAME_RE = re.compile(r"^edgeloop_[a-z][a-z0-9_]*[a-z0-9]$")
TYPES = {"counter", "gauge", "summary"}
# Suffixes the exposition format gives a meaning to (histograms, summaries, our _max).
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
    if kind == "summary":
        assert name.endswith("_seconds") or name.endswith("_bytes"), f"{name}: unit suffix"
    assert help_text and "\n" not in help_text and help_text.endswith("."), name


def test_rendered_series_do_not_collide() -> None:
    """A summary renders name_sum/_count/_max; none of those may be another metric."""
    rendered: dict[str, str] = {}
    for name, (kind, _) in names.METRICS.items():
        series = [f"{name}{s}" for s in ("_sum", "_count", "_max")] if kind == "summary" else [name]
        for s in series:
            assert s not in rendered, f"{s} rendered by both {rendered.get(s)} and {name}"
            rendered[s] = name


def test_every_declared_metric_renders_as_valid_exposition_text() -> None:
    """Emit each declared metric once and parse Metrics.render() line by line."""
    m = Metrics()
    for name, (kind, _) in names.METRICS.items():
        labels = {"device": 'plc "a"\\b\nc', "group": "fast"}
        {"counter": m.inc, "gauge": m.set, "summary": m.observe}[kind](name, 1.5, **labels)
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
        base = re.sub(r"_(sum|count|max)$", "", mt["name"])
        assert mt["name"] in seen_types or base in seen_types, line
    maxes = {f"{n}_max" for n, (k, _) in names.METRICS.items() if k == "summary"}
    assert set(seen_types) == set(names.METRICS) | maxes


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
    # Names in the doc must exist (summary series like _sum/_count/_max are fine).
    stale = {n for n in in_doc if re.sub(r"_(sum|count|max)$", "", n) not in names.METRICS}
    assert not stale, f"docs/operations.md names undeclared metrics: {sorted(stale)}"


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
    declared type (a summary's _max is its own gauge family, not samples that split the
    summary), plus the standard process_* families."""
    from prometheus_client.parser import text_string_to_metric_families

    m = Metrics()
    for name, (kind, _) in names.METRICS.items():
        for dev in ("a", "b"):  # two label sets: interleaving would split the family
            {"counter": m.inc, "gauge": m.set, "summary": m.observe}[kind](name, 1.5, device=dev)
    fams = {f.name: f for f in text_string_to_metric_families(m.render(process=True))}
    for name, (kind, _) in names.METRICS.items():
        fam = name.removesuffix("_total") if kind == "counter" else name
        assert fams[fam].type == kind, (name, fams[fam].type)
        samples = {s.name for s in fams[fam].samples}
        if kind == "summary":
            assert samples == {f"{name}_sum", f"{name}_count"}
            assert fams[f"{name}_max"].type == "gauge"
            assert len(fams[f"{name}_max"].samples) == 2
        else:
            assert samples == {name} and len(fams[fam].samples) == 2
    assert not [f.name for f in fams.values() if f.type == "unknown"]
    assert fams["process_resident_memory_bytes"].samples[0].value > 1e6
