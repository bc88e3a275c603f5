"""A small, dependency-free metrics registry rendered in the Prometheus text format.

Components never invent metric names inline: every name is declared in `agent.names`
with its type and help text (and a histogram's buckets), and `Metrics` refuses names that
are not declared there, so the compliance test can check each component emits what it
promises.  prometheus_client is only a test dependency: its registry costs several MB of
RSS on the gateway, this one a few hundred KB.

Two formats: the Prometheus text format 0.0.4 (default) and OpenMetrics 1.0 (`openmetrics=
True`, for scrapers that ask for `application/openmetrics-text`).
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left
from collections.abc import Iterable

from agent import names as _names

_LabelKey = tuple[tuple[str, str], ...]

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _key(labels: dict[str, object]) -> _LabelKey:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


class Histogram:
    """One labelled histogram series: a count per bucket, preallocated, and the sum.

    `observe` is a bisect into the fixed bounds and two in-place array updates under the
    registry's lock: no allocation per observation, so hot loops may hold the series
    (`Metrics.histogram(name, **labels)`) and observe it at every frame.
    """

    __slots__ = ("_lock", "bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...], lock: threading.Lock) -> None:
        self.bounds = bounds
        self.counts = array("Q", bytes(8 * (len(bounds) + 1)))  # the last one: above all bounds
        self.total = array("d", [0.0])
        self._lock = lock

    def observe(self, value: float) -> None:
        """Count `value` in the first bucket whose upper bound is >= value (Prometheus `le`)."""
        if value != value:  # NaN: no bucket holds it and it would poison the sum
            return
        i = bisect_left(self.bounds, value)
        with self._lock:
            self.counts[i] += 1
            self.total[0] += value

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self.counts)

    def cumulative(self) -> list[int]:
        """Cumulative counts per bound, then +Inf (== count); call with the lock held."""
        out, acc = [], 0
        for c in self.counts:
            acc += c
            out.append(acc)
        return out


class Metrics:
    """Counters, gauges and histograms keyed by declared name and labels.

    Thread-safe: the store's writer thread and the event loop both report here.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[_LabelKey, float]] = {}
        self._hists: dict[str, dict[_LabelKey, Histogram]] = {}
        self._touched: set[str] = set()  # names reported at least once (not only declared)
        self._observed: dict[tuple[object, ...], Histogram] = {}  # observe()'s lookup cache

    @staticmethod
    def _check(name: str, kind: str) -> None:
        spec = _names.METRICS.get(name)
        if spec is None:
            raise KeyError(f"metric {name!r} is not declared in agent/names.py")
        if spec[0] != kind:
            raise TypeError(f"metric {name!r} is a {spec[0]}, not a {kind}")

    def inc(self, name: str, value: float = 1.0, **labels: object) -> None:
        self._check(name, "counter")
        k = _key(labels)
        with self._lock:
            series = self._values.setdefault(name, {})
            series[k] = series.get(k, 0.0) + value
            self._touched.add(name)

    def set(self, name: str, value: float, **labels: object) -> None:
        self._check(name, "gauge")
        with self._lock:
            self._values.setdefault(name, {})[_key(labels)] = float(value)
            self._touched.add(name)

    def histogram(self, name: str, **labels: object) -> Histogram:
        """The series of histogram `name` with these labels, created empty if new; hot paths
        keep it and call its `observe`."""
        h = self._histogram(name, labels)
        self._touched.add(name)
        return h

    def _histogram(self, name: str, labels: dict[str, object]) -> Histogram:
        self._check(name, "histogram")
        k = _key(labels)
        with self._lock:
            series = self._hists.setdefault(name, {})
            h = series.get(k)
            if h is None:
                h = series[k] = Histogram(_names.BUCKETS[name], self._lock)
        return h

    def observe(self, name: str, value: float, **labels: object) -> None:
        """Observe into histogram `name`: a dict lookup on the call's own label items, then the
        series' bisect (a few hundred ns; `histogram()` skips the lookup)."""
        key = (name, *labels.items())
        h = self._observed.get(key)
        if h is None:
            h = self._observed[key] = self.histogram(name, **labels)
        h.observe(value)

    def declare(self, name: str, **labels: object) -> None:
        """Make a series exist from start-up: a counter or gauge at 0 (an existing value is
        kept), an empty histogram.  So `increase(x[10m]) > 0` sees the first event, which it
        cannot on a series that appears with the event."""
        kind = _names.METRICS[name][0] if name in _names.METRICS else "undeclared"
        if kind == "histogram":
            self._histogram(name, labels)
            return
        self._check(name, kind)
        with self._lock:
            self._values.setdefault(name, {}).setdefault(_key(labels), 0.0)

    def declare_all(self, series: Iterable[tuple[str, dict[str, str]]]) -> None:
        """`declare` each (name, labels)."""
        for name, labels in series:
            self.declare(name, **labels)

    def get(self, name: str, **labels: object) -> float:
        """Current value of a counter/gauge series (0 if never reported); for tests and STATUS."""
        with self._lock:
            return self._values.get(name, {}).get(_key(labels), 0.0)

    def total(self, name: str) -> float:
        """Sum of a counter/gauge over all label sets."""
        with self._lock:
            return sum(self._values.get(name, {}).values())

    def emitted(self) -> set[str]:
        """Names some component reported (declared-only series do not count)."""
        with self._lock:
            return set(self._touched)

    def render(self, process: bool = False, openmetrics: bool = False) -> str:
        """Prometheus text exposition format 0.0.4, or OpenMetrics 1.0 text; `process` adds
        the standard process_* series (what prometheus_client's process collector names
        them) from /proc."""
        lines: list[str] = process_lines(openmetrics) if process else []
        with self._lock:
            for name in sorted(set(self._values) | set(self._hists)):
                kind, help_text = _names.METRICS[name]
                family = name.removesuffix("_total") if openmetrics and kind == "counter" else name
                lines.append(f"# HELP {family} {_escape_help(help_text, openmetrics)}")
                lines.append(f"# TYPE {family} {kind}")
                if kind == "histogram":
                    for k, h in sorted(self._hists[name].items()):
                        lines += _histogram_lines(name, k, h)
                else:
                    for k, v in sorted(self._values[name].items()):
                        lines.append(f"{name}{_fmt(k)} {_num(v)}")
        if openmetrics:
            lines.append("# EOF")
        return "\n".join(lines) + "\n"


def _histogram_lines(name: str, k: _LabelKey, h: Histogram) -> list[str]:
    cum = h.cumulative()
    bounds = [_le(b) for b in h.bounds] + ["+Inf"]
    out = [f"{name}_bucket{_fmt((*k, ('le', le)))} {c}" for le, c in zip(bounds, cum, strict=True)]
    out.append(f"{name}_sum{_fmt(k)} {_num(h.total[0])}")
    out.append(f"{name}_count{_fmt(k)} {cum[-1]}")
    return out


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client writes it (0.005, 1.0): dashboards match on le."""
    return repr(float(bound))


def _num(v: float) -> str:
    """A sample value: `.9g` would round a byte count above 1e9."""
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    # integers as integers (counters stay exact to 2**53), others as the shortest repr that
    # reads back the same float
    return str(int(v)) if v == int(v) and abs(v) < 2**53 else repr(float(v))


_START_S: float | None = None


def process_lines(openmetrics: bool = False) -> list[str]:
    """process_resident_memory_bytes, _virtual_memory_bytes, _cpu_seconds_total, _open_fds and
    _start_time_seconds of this process (Linux /proc; nothing elsewhere)."""
    import os

    global _START_S
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/statm") as f:
            vsz, rss = (int(x) * page for x in f.read().split()[:2])
        fds = len(os.listdir("/proc/self/fd"))
        if _START_S is None:
            with open("/proc/self/stat") as f:
                start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
            with open("/proc/stat") as f:
                btime = next(int(ln.split()[1]) for ln in f if ln.startswith("btime"))
            _START_S = btime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration):
        return []
    t = os.times()
    series = (
        ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", rss),
        ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", vsz),
        ("process_cpu_seconds_total", "counter", "Total user and system CPU time in seconds.",
         t.user + t.system),
        ("process_open_fds", "gauge", "Number of open file descriptors.", fds),
        ("process_start_time_seconds", "gauge", "Start time since the epoch in seconds.",
         _START_S),
    )  # fmt: skip
    out = []
    for name, kind, help_text, v in series:
        family = name.removesuffix("_total") if openmetrics and kind == "counter" else name
        out += [f"# HELP {family} {help_text}", f"# TYPE {family} {kind}", f"{name} {_num(v)}"]
    return out


def build_info() -> dict[str, str]:
    """Versions for edgeloop_build_info, from package metadata (nothing imported)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def v(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "none"

    return {
        "version": v("edgeloop"),
        "python": platform.python_version(),
        "numba": v("numba"),
        "litert": v("ai-edge-litert"),
    }


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str, openmetrics: bool) -> str:
    """HELP text: the text format escapes backslash and newline, OpenMetrics quotes too."""
    v = v.replace("\\", "\\\\").replace("\n", "\\n")
    return v.replace('"', '\\"') if openmetrics else v


def _fmt(labels: Iterable[tuple[str, str]]) -> str:
    items = [f'{k}="{_escape(v)}"' for k, v in labels]
    return "{" + ",".join(items) + "}" if items else ""
