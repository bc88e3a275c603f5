"""A small, dependency-free metrics registry rendered in the Prometheus text format.

Components never invent metric names inline: every name is declared in `agent.names`
with its type and help text, and `Metrics` refuses names that are not declared there, so
the compliance test can check each component emits what it promises.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from agent import names as _names

_LabelKey = tuple[tuple[str, str], ...]


def _key(labels: dict[str, object]) -> _LabelKey:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


class Metrics:
    """Counters, gauges and summaries (sum/count/max) keyed by declared name and labels.

    Thread-safe: the store's writer thread and the event loop both report here.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[_LabelKey, float]] = {}
        self._summaries: dict[str, dict[_LabelKey, list[float]]] = {}

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

    def set(self, name: str, value: float, **labels: object) -> None:
        self._check(name, "gauge")
        with self._lock:
            self._values.setdefault(name, {})[_key(labels)] = float(value)

    def observe(self, name: str, value: float, **labels: object) -> None:
        self._check(name, "summary")
        k = _key(labels)
        with self._lock:
            s = self._summaries.setdefault(name, {}).setdefault(k, [0.0, 0.0, float("-inf")])
            s[0] += value
            s[1] += 1
            s[2] = max(s[2], value)

    def get(self, name: str, **labels: object) -> float:
        """Current value of a counter/gauge series (0 if never reported); for tests and STATUS."""
        with self._lock:
            return self._values.get(name, {}).get(_key(labels), 0.0)

    def total(self, name: str) -> float:
        """Sum of a counter/gauge over all label sets."""
        with self._lock:
            return sum(self._values.get(name, {}).values())

    def emitted(self) -> set[str]:
        with self._lock:
            return set(self._values) | set(self._summaries)

    def render(self, process: bool = False) -> str:
        """Prometheus text exposition format 0.0.4; `process` adds the standard process_*
        series (what prometheus_client's process collector names them) from /proc."""
        lines: list[str] = process_lines() if process else []
        with self._lock:
            for name in sorted(set(self._values) | set(self._summaries)):
                kind, help_text = _names.METRICS[name]
                lines.append(f"# HELP {name} {help_text}")
                lines.append(f"# TYPE {name} {kind}")
                if kind == "summary":
                    # a summary family holds only _sum/_count samples (parsers split anything
                    # else off): the largest observation is its own gauge family, name_max
                    series = sorted(self._summaries[name].items())
                    for k, (s, c, _mx) in series:
                        lines.append(f"{name}_sum{_fmt(k)} {s:.9g}")
                        lines.append(f"{name}_count{_fmt(k)} {c:.0f}")
                    lines.append(f"# HELP {name}_max Largest observation of {name}.")
                    lines.append(f"# TYPE {name}_max gauge")
                    for k, (_s, _c, mx) in series:
                        lines.append(f"{name}_max{_fmt(k)} {mx:.9g}")
                else:
                    for k, v in sorted(self._values[name].items()):
                        lines.append(f"{name}{_fmt(k)} {v:.9g}")
        return "\n".join(lines) + "\n"


_START_S: float | None = None


def process_lines() -> list[str]:
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
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {v:.9g}"]
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


def _fmt(labels: Iterable[tuple[str, str]]) -> str:
    items = [f'{k}="{_escape(v)}"' for k, v in labels]
    return "{" + ",".join(items) + "}" if items else ""
