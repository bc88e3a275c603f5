"""Compile a validated `Config` into the tag table, poll groups and driver read plans.

This runs before any connection is opened, at start-up and in `edgeloop check`, so
everything that can be wrong with a config (including what only a driver's planner can
see, such as a string wider than the device's largest read) fails there and not on the
first poll of a rarely used group.  The result is plain data: numpy arrays indexed by a
fixed integer per tag (the tags of one poll group are contiguous), `GroupSpec`s and the
plans each driver made for its groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import (
    Config,
    ConfigError,
    DeviceConfig,
    Issue,
    parse_config,
    read_config_bytes,
)
from agent.kernel.settings import signal_kind
from drivers.base import (
    Driver,
    DriverError,
    GroupSpec,
    PlannedRequest,
    Point,
    Quality,
    Reason,
)
from drivers.registry import create_driver


@dataclass(slots=True)
class TagTable:
    """The shared arrays every stage reads and writes, indexed by a tag's fixed index.

    `raw` holds engineering values (scale/offset applied) as the drivers deliver them,
    `value/flags/score` are the kernel's output, `quality` is a `drivers.base.Quality`
    code and `reason` the `drivers.base.Reason` code of why it is not good (0 when good),
    `ts_ns` the wall-clock time of the last sample (0 = never), `texts` the value of
    string tags by index, `min/max` the configured bounds (NaN = unbounded).
    """

    names: list[str]
    index: dict[str, int]
    points: list[Point]
    raw: np.ndarray
    value: np.ndarray
    quality: np.ndarray
    reason: np.ndarray
    flags: np.ndarray
    score: np.ndarray
    ts_ns: np.ndarray
    min: np.ndarray
    max: np.ndarray
    texts: dict[int, str] = field(default_factory=dict)
    units: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)  # device name per index

    @classmethod
    def from_points(cls, points: list[Point], devices: list[str]) -> TagTable:
        n = len(points)
        nan = np.full(n, np.nan)
        return cls(
            names=[p.name for p in points],
            index={p.name: p.index for p in points},
            points=points,
            raw=nan.copy(),
            value=nan.copy(),
            # nothing read yet: the same code as a device that does not answer
            quality=np.full(n, int(Quality.COMM_LOST), dtype=np.uint8),
            reason=np.full(n, int(Reason.NO_DATA), dtype=np.uint16),
            flags=np.zeros(n, dtype=np.uint16),
            score=np.zeros(n, dtype=np.float64),
            ts_ns=np.zeros(n, dtype=np.int64),
            min=np.array([np.nan if p.min is None else p.min for p in points], dtype=np.float64),
            max=np.array([np.nan if p.max is None else p.max for p in points], dtype=np.float64),
            units=[p.unit for p in points],
            devices=list(devices),
        )

    @classmethod
    def for_names(
        cls, names: list[str], min: float | None = None, max: float | None = None
    ) -> TagTable:
        """A table of plain float64 tags with no device behind them: for replay, the
        benchmarks and tests of the stages after acquisition, so they use the real layout.
        Quality starts GOOD: the caller fills the values, there is no link to lose."""
        points = [
            Point(name=n, index=i, dtype="float64", min=min, max=max) for i, n in enumerate(names)
        ]
        table = cls.from_points(points, [""] * len(points))
        table.quality[:] = int(Quality.GOOD)
        table.reason[:] = int(Reason.NONE)
        return table

    @property
    def kinds(self) -> list[str]:
        """Each tag's signal kind (`analog` | `discrete`), which picks its kernel defaults."""
        return [signal_kind(p.dtype, p.scale) for p in self.points]

    def __len__(self) -> int:
        return len(self.names)


def far_outside(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Tags whose value lies more than a whole span (max - min) outside their configured
    range: no process excursion does that, a wrong type, byte or word order or scale does
    (a word-swapped float32 reads as 1e20). Tags without both bounds never match."""
    span = hi - lo
    with np.errstate(invalid="ignore"):
        far: np.ndarray = np.isfinite(span) & ((values > hi + span) | (values < lo - span))
        return far


@dataclass(slots=True)
class Compiled:
    """Everything start-up needs, made before the first connection.

    `drivers` holds one unconnected driver per enabled device (the same instances that
    made `plans`); `plans[(device, group)]` is that driver's plan for the group.
    """

    config: Config
    table: TagTable
    groups: list[GroupSpec]
    devices: dict[str, DeviceConfig]
    plans: dict[tuple[str, str], Any]
    drivers: dict[str, Driver]

    def requests(self, group: GroupSpec) -> list[PlannedRequest]:
        """The requests one cycle of `group` sends (empty for disabled devices)."""
        drv = self.drivers.get(group.device)
        if drv is None:
            return []
        return list(drv.describe(self.plans[(group.device, group.name)]))

    def requests_per_second(self) -> float:
        """Requests per second of all polled groups (subscriptions are pushed, not counted)."""
        total = 0.0
        for g in self.groups:
            if g.mode == "poll":
                total += len(self.requests(g)) * 1000.0 / g.interval_ms
        return total

    def summary(self) -> str:
        """One line for `edgeloop check`."""
        enabled = sum(1 for d in self.devices.values() if d.enabled)
        disabled = len(self.devices) - enabled
        dev = f"{len(self.devices)} devices" + (f" ({disabled} disabled)" if disabled else "")
        per_cycle = sum(len(self.requests(g)) for g in self.groups if g.mode == "poll")
        return (
            f"{dev}, {len(self.table)} tags, {len(self.groups)} poll groups, "
            f"{per_cycle} read requests per cycle, {self.requests_per_second():.1f} requests/s"
        )


def compile_config(cfg: Config) -> Compiled:
    """Tag table, group specs and driver plans; raises `ConfigError` if a driver refuses.

    Pure: drivers are created (not connected) and plan their groups; nothing touches the
    network.  Disabled devices keep their tags in the table (quality comm_lost) so other
    sections may still reference them, but get no driver and no plan.
    """
    points: list[Point] = []
    owners: list[str] = []
    groups: list[GroupSpec] = []
    group_paths: dict[tuple[str, str], tuple[str | int, ...]] = {}
    for di, dev in enumerate(cfg.devices):
        for gi, g in enumerate(dev.poll_groups):
            start = len(points)
            for tag in g.tags:
                idx = len(points)
                points.append(dev.point(tag, idx))
                owners.append(dev.name)
            groups.append(
                GroupSpec(
                    device=dev.name,
                    name=g.name,
                    interval_ms=g.interval_ms,
                    mode=g.mode,
                    start=start,
                    stop=len(points),
                    points=tuple(points[start:]),
                    options=g.options(),
                )
            )
            group_paths[(dev.name, g.name)] = ("devices", di, "poll_groups", gi)
    table = TagTable.from_points(points, owners)
    devices = {d.name: d for d in cfg.devices}
    plans: dict[tuple[str, str], Any] = {}
    drivers: dict[str, Driver] = {}
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for di, dev in enumerate(cfg.devices):
        if not dev.enabled:
            continue
        mine = [g for g in groups if g.device == dev.name]
        # Whatever a driver raises while it is built or plans is a problem of this file at
        # this device or group, never a traceback out of `check` or a reload.
        try:
            drv = create_driver(dev, mine)
        except Exception as e:
            problems.append((("devices", di), f"driver refused the device: {_why(e)}"))
            continue
        drivers[dev.name] = drv
        for g in mine:
            try:
                plans[(dev.name, g.name)] = drv.plan(g)
            except Exception as e:  # PlanError is a ValueError
                problems.append((group_paths[(dev.name, g.name)], f"cannot plan: {_why(e)}"))
    if problems:
        raise ConfigError([_issue(cfg, p, m) for p, m in problems])
    return Compiled(cfg, table, groups, devices, plans, drivers)


def load_compiled(source: str | Path | bytes, name: str = "<config>") -> Compiled:
    """A config file (or its bytes, `name` naming them in messages) read, validated and
    compiled: the one way start-up, reloads and every command get a `Compiled`, so they
    refuse the same files.  `ConfigError` (file:line form) on any problem."""
    if isinstance(source, bytes):
        data = source
    else:
        data, name = read_config_bytes(source), str(source)
    return compile_config(parse_config(data, name))


def _why(e: Exception) -> str:
    expected = isinstance(e, (ValueError, TypeError, DriverError))
    return str(e) if expected else f"{type(e).__name__}: {e}"


def _issue(cfg: Config, path: tuple[str | int, ...], message: str) -> Issue:
    src = cfg.source
    return Issue(src.file if src else "<config>", src.line(path) if src else 1, _fmt(path), message)


def _fmt(path: tuple[str | int, ...]) -> str:
    s = ""
    for p in path:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s
