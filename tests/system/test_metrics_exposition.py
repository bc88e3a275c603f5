"""Prometheus compliance of a running `edgeloop run`: hw_sim (Modbus TCP + OPC UA), mosquitto,
the shipped config/edgeloop.yaml re-pointed at them, scraped over HTTP like Prometheus does.

What a scraper must be able to rely on (issue 15):
- every series `agent.names.startup_series` promises for this config is in the *first*
  answer of /metrics, so `increase(x[10m]) > 0` catches the first event;
- prometheus_client's parser reads each documented name as one family of its declared type
  with its declared label names, nothing `unknown`;
- histograms are well-formed: the declared buckets in order, cumulative counts that never
  fall, `+Inf` equal to `_count`;
- counters never go backwards between scrapes;
- with `Accept: application/openmetrics-text` the same families pass prometheus_client's
  (strict) OpenMetrics parser.
"""

from __future__ import annotations

import itertools
import math
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.openmetrics import parser as om_parser
from prometheus_client.parser import text_string_to_metric_families

from agent import names
from agent.config import parse_config
from agent.tags import compile_config
from lab.demo import Ports, demo_config, start_agent, start_sim

ROOT = Path(__file__).resolve().parents[2]
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
# Documented series that exist only once their part has reported a value (docs/operations.md,
# "Metrics"): asserted in a later scrape instead of the first.
LATE = {
    names.CONTROL_MODE,  # the first control period sets the active controller
    names.CONTROL_MODEL_MISMATCH,  # the run-time model check's first ratio
    names.STORE_BYTES,
    names.OUTBOX_DEPTH,
    names.OUTBOX_BYTES,
    names.COMPONENT_UP,  # set by each part when it starts (store, publish) or is started
}

Sample = tuple[str, tuple[tuple[str, str], ...]]


def _family(name: str) -> str:
    return name.removesuffix("_total") if names.METRICS[name][0] == "counter" else name


def _get(port: int, accept: str | None = None) -> tuple[str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if accept is not None:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.headers.get("Content-Type", ""), r.read().decode()


def _first_scrape(port: int, agent: subprocess.Popen[bytes], log: Path) -> str:
    """The first /metrics answer of the service (polled from the moment it is started)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert agent.poll() is None, log.read_text()[-3000:]
        try:
            return _get(port)[1]
        except (OSError, urllib.error.URLError):
            time.sleep(0.05)
    raise AssertionError("no /metrics answer within 90 s: " + log.read_text()[-3000:])


def _parse(text: str, openmetrics: bool = False) -> dict[str, Any]:
    parse = (
        om_parser.text_string_to_metric_families
        if openmetrics
        else (text_string_to_metric_families)
    )
    fams: dict[str, Any] = {}
    for f in parse(text):
        assert f.name not in fams, f"family {f.name} split in two (interleaved samples?)"
        fams[f.name] = f
    return fams


def _values(fams: dict[str, Any]) -> dict[Sample, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples
    }


def _check_families(fams: dict[str, Any], required: set[str]) -> None:
    """Type, label names and histogram shape of every edgeloop family present."""
    unknown = [f.name for f in fams.values() if f.type == "unknown"]
    assert not unknown, f"families of unknown type: {unknown}"
    by_family = {_family(n): n for n in names.METRICS}
    for fam_name, fam in fams.items():
        if not fam_name.startswith("edgeloop_"):
            continue
        assert fam_name in by_family, f"{fam_name} is exposed but not declared in agent/names.py"
        name = by_family[fam_name]
        assert fam.type == names.METRICS[name][0], (name, fam.type)
        for s in fam.samples:
            want = set(names.LABELS[name]) | ({"le"} if s.name.endswith("_bucket") else set())
            assert set(s.labels) == want, (s.name, s.labels)
        if fam.type == "histogram":
            _check_histogram(name, fam)
    missing = {n for n in required if _family(n) not in fams or not fams[_family(n)].samples}
    assert not missing, f"documented names missing from /metrics: {sorted(missing)}"


def _check_histogram(name: str, fam: Any) -> None:
    series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = defaultdict(
        lambda: {"le": [], "bucket": []}
    )
    for s in fam.samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        if s.name == f"{name}_bucket":
            series[key]["le"].append(s.labels["le"])
            series[key]["bucket"].append(s.value)
        else:
            series[key][s.name.removeprefix(name)] = s.value
    want_le = [float(b) for b in names.BUCKETS[name]] + [math.inf]
    assert series, f"{name}: no series"
    for key, s in series.items():
        assert [float(x) for x in s["le"]] == want_le, (name, key, s["le"])
        b = s["bucket"]
        assert all(x <= y for x, y in itertools.pairwise(b)), (name, key, b)
        assert b[-1] == s["_count"], (name, key, "+Inf bucket != _count")
        assert s["_sum"] >= 0 and (s["_count"] > 0 or s["_sum"] == 0), (name, key)


@pytest.fixture
def service(mqtt_broker, tmp_path: Path):
    """hw_sim and `python -m agent run` on loopback; yields (http port, config, agent, log)."""
    ports = Ports()
    ports.mqtt = mqtt_broker.port
    sim = start_sim(ports, tmp_path / "sim.log", "--seed", "3")
    agent = None
    try:
        cfg = demo_config(
            ROOT / "config" / "edgeloop.yaml", ports, tmp_path, mqtt=True, token=False
        )
        text = yaml.safe_dump(cfg, sort_keys=False)
        (tmp_path / "edgeloop.yaml").write_text(text)
        log = tmp_path / "agent.log"
        agent = start_agent(tmp_path / "edgeloop.yaml", log)
        yield ports.http, text, agent, log
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait(10)
        sim.terminate()
        sim.wait(10)


def test_metrics_are_complete_from_the_first_scrape_and_parse(service, tmp_path: Path) -> None:
    port, cfg_text, agent, log = service
    first_text = _first_scrape(port, agent, log)
    first = _parse(first_text)

    # 1. the first scrape: every series this config promises, and every documented name
    #    except the few whose value only their part can know
    promised = names.startup_series(compile_config(parse_config(cfg_text, "edgeloop.yaml")))
    assert len(promised) > 60  # devices x groups, the loop x reasons, ...: not a stub
    have = _values(first)
    absent = []
    for name, labels in promised:
        sample = f"{name}_count" if names.METRICS[name][0] == "histogram" else name
        if (sample, tuple(sorted(labels.items()))) not in have:
            absent.append((sample, labels))
    assert not absent, f"not in the first scrape: {absent[:10]} ({len(absent)} in all)"
    for must in ("edgeloop_store_dropped_total", "edgeloop_control_fallbacks_total"):
        assert any(k[0] == must for k in have), must  # the examples, by their text
    _check_families(first, set(names.METRICS) - LATE)

    # 2. running: the late ones appear, histograms fill, counters never go backwards
    deadline = time.monotonic() + 60
    while True:
        assert agent.poll() is None, log.read_text()[-3000:]
        later = _parse(_get(port)[1])
        now = _values(later)
        polls = [v for (n, _), v in now.items() if n == "edgeloop_poll_latency_seconds_count"]
        published = now.get(("edgeloop_publish_seconds_count", ()), 0)
        late_missing = {n for n in LATE if _family(n) not in later}
        if not late_missing and min(polls) > 0 and published > 0:
            break
        assert time.monotonic() < deadline, (late_missing, polls, published)
        time.sleep(0.5)
    _check_families(later, set(names.METRICS))
    for key, v in have.items():
        if key[0].endswith(("_total", "_count", "_bucket", "_sum")) and key in now:
            assert now[key] >= v, (key, v, now[key])
    kernel = [v for (n, _), v in now.items() if n == "edgeloop_kernel_seconds_count"]
    assert kernel and max(kernel) > 0

    # 3. OpenMetrics on Accept negotiation, through the strict OpenMetrics parser
    ctype, om_text = _get(port, accept=f"{OPENMETRICS},text/plain;version=0.0.4;q=0.5")
    assert ctype.startswith("application/openmetrics-text; version=1.0.0"), ctype
    assert om_text.endswith("# EOF\n")
    om = _parse(om_text, openmetrics=True)
    for name, (kind, _) in names.METRICS.items():
        assert om[_family(name)].type == kind, name
    assert om["process_cpu_seconds"].type == "counter"
    ctype, _ = _get(port)  # a plain scrape still gets the 0.0.4 text format
    assert ctype.startswith("text/plain; version=0.0.4"), ctype

    agent.send_signal(signal.SIGTERM)
    assert agent.wait(15) == 0, log.read_text()[-3000:]
