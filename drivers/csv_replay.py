"""CSV replay driver: a recorded file played back as a device (`driver: csv`).

Three parts, as every driver has them:
- reading the file (pure): `read_header`, `load_rows`; the cells of every configured
  column are decoded once, at compile time, into engineering units (scale/offset applied),
  so a bad file fails `edgeloop check` and a poll is an array lookup;
- the plan (pure): one `CsvPlan` per group, its rows x points values, bad-cell mask and texts;
- the I/O shell: `CsvReplayDriver.connect` starts the replay clock, `read` takes the group's
  next row (or, with `time_column`, the row due at the time since connect), `write`
  records the value, which the tag then reads back.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from drivers.base import (
    ConnectError,
    GroupSpec,
    PlannedRequest,
    Point,
    Quality,
    ReadResult,
    Reason,
    WriteRefused,
)
from drivers.csv_config import CsvDevice

MAX_FILE_BYTES = 64 * 1024 * 1024
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_INT_RANGE = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}


class CsvFileError(ValueError):
    """The file cannot be replayed; the message names the file and says why."""


# --- reading the file (pure) ------------------------------------------------------------


def _text(file: str | Path) -> str:
    path = Path(file)
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CsvFileError(f"cannot read {file}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise CsvFileError(f"{file} is larger than {MAX_FILE_BYTES // 2**20} MiB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CsvFileError(f"{file} is not UTF-8 text ({exc.reason})") from None


def _rows(text: str, delimiter: str, file: str | Path) -> list[list[str]]:
    try:
        rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r]
    except csv.Error as exc:
        raise CsvFileError(f"{file} is not CSV: {exc}") from None
    if not rows:
        raise CsvFileError(f"{file} is empty: expected a header row")
    return [[c.strip() for c in r] for r in rows]


def read_header(file: str | Path, delimiter: str = ",") -> list[str]:
    """The column names of the file's first row."""
    return _rows(_text(file), delimiter, file)[0]


@dataclass(frozen=True, slots=True)
class Recording:
    """The file's cells by column (header -> one string per data row) and the row times in
    seconds from the first row (None without a time column)."""

    file: str
    cells: dict[str, list[str]]
    times: np.ndarray | None
    rows: int


def load_rows(
    file: str | Path, delimiter: str, columns: Sequence[str], time_column: str | None
) -> Recording:
    """The cells of `columns` (and the times of `time_column`); `CsvFileError` if the file
    cannot be read, lacks a column or has no data row, or if its times go backwards."""
    rows = _rows(_text(file), delimiter, file)
    header, data = rows[0], rows[1:]
    if not data:
        raise CsvFileError(f"{file} has a header but no data rows")
    where = {name: i for i, name in reversed(list(enumerate(header)))}
    wanted = [*columns, *([time_column] if time_column else [])]
    missing = [c for c in wanted if c not in where]
    if missing:
        raise CsvFileError(f"no column {missing[0]!r} in {file}")
    cells = {c: [r[where[c]] if where[c] < len(r) else "" for r in data] for c in wanted}
    times = None
    if time_column:
        times = np.array([_seconds(v, file, n) for n, v in enumerate(cells[time_column], 2)])
        back = np.flatnonzero(np.diff(times) < 0)
        if back.size:
            raise CsvFileError(f"{file} line {int(back[0]) + 3}: {time_column} goes back in time")
        times -= times[0]
    return Recording(str(file), cells, times, len(data))


def _seconds(cell: str, file: str | Path, line: int) -> float:
    try:
        return float(cell)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(cell).timestamp()
    except ValueError:
        raise CsvFileError(
            f"{file} line {line}: time {cell!r} is neither seconds nor ISO 8601"
        ) from None


def decode(cell: str, point: Point) -> float | str | None:
    """One cell as the point's type, in engineering units; None if it is not one."""
    if point.dtype == "string":
        return cell
    low = cell.lower()
    if point.dtype == "bool":
        return 1.0 if low in _TRUE else 0.0 if low in _FALSE else None
    try:
        raw = float(cell)
    except ValueError:
        return None
    if not math.isfinite(raw):
        return None
    bounds = _INT_RANGE.get(point.dtype)
    if bounds is not None and (not raw.is_integer() or not bounds[0] <= raw <= bounds[1]):
        return None
    return raw * point.scale + point.offset


# --- the plan (pure) ---------------------------------------------------------------------


@dataclass(slots=True)
class CsvPlan:
    """A group's replay: `values[row, i]` in engineering units (NaN where `bad`), the
    string cells by (row, i), and the row cursor of one-row-per-poll replay."""

    group: str
    points: tuple[Point, ...]
    values: np.ndarray
    bad: np.ndarray
    texts: dict[tuple[int, int], str] = field(default_factory=dict)
    cursor: int = 0


def plan_group(rec: Recording, group: GroupSpec) -> CsvPlan:
    n = len(group.points)
    values = np.full((rec.rows, n), np.nan)
    bad = np.zeros((rec.rows, n), dtype=bool)
    texts: dict[tuple[int, int], str] = {}
    for i, p in enumerate(group.points):
        for row, cell in enumerate(rec.cells[str(p.ref)]):
            v = decode(cell, p)
            if isinstance(v, str):
                texts[(row, i)] = v
            elif v is None:
                bad[row, i] = True
            else:
                values[row, i] = v
    return CsvPlan(group.name, group.points, values, bad, texts)


# --- the I/O shell -----------------------------------------------------------------------


class CsvReplayDriver:
    """`drivers.base.Driver` replaying one CSV file."""

    def __init__(self, cfg: CsvDevice, groups: Sequence[GroupSpec]) -> None:
        self.name = cfg.name
        self.cfg = cfg
        columns = sorted({str(p.ref) for g in groups for p in g.points})
        self._rec = load_rows(cfg.file, cfg.delimiter, columns, cfg.time_column)
        self._plans = {g.name: plan_group(self._rec, g) for g in groups}
        self._started: float | None = None
        self.writes: list[tuple[int, str, float | int | bool | str]] = []  # (ts_ns, tag, value)
        self._written: dict[str, float | int | bool | str] = {}

    def plan(self, group: GroupSpec) -> CsvPlan:
        known = self._plans.get(group.name)
        if known is not None and known.points == group.points:
            return known
        return plan_group(self._rec, group)

    def describe(self, plan: CsvPlan) -> list[PlannedRequest]:
        return [
            PlannedRequest(
                device=self.name,
                unit_id=0,
                function=f"CSV row of {Path(self._rec.file).name} ({self._rec.rows} rows)",
                start=None,
                count=len(plan.points),
                tags=tuple(p.name for p in plan.points),
            )
        ]

    async def connect(self) -> None:
        """Start the replay at the first row (a reconnect starts again)."""
        self._started = time.monotonic()
        for plan in self._plans.values():
            plan.cursor = 0

    def _row(self, plan: CsvPlan) -> tuple[int, bool]:
        """(row to read, past the end without loop)."""
        n = self._rec.rows
        times = self._rec.times
        if times is None:
            row, plan.cursor = plan.cursor, plan.cursor + 1
        else:
            step = float(np.median(np.diff(times))) if n > 1 else 1.0
            period = float(times[-1]) + max(step, 1e-3)
            elapsed = time.monotonic() - (self._started or 0.0)
            if self.cfg.loop:
                elapsed %= period
            row = int(np.searchsorted(times, elapsed, side="right")) - 1
            if elapsed >= period:
                row = n
        if row < n:
            return max(row, 0), False
        return (row % n, False) if self.cfg.loop else (n - 1, True)

    async def read(self, plan: CsvPlan) -> ReadResult:
        if self._started is None:
            raise ConnectError("not connected", device=self.name)
        row, ended = self._row(plan)
        values = plan.values[row].copy()
        bad = plan.bad[row]
        quality = np.where(bad, np.uint8(Quality.BAD), np.uint8(Quality.GOOD)).astype(np.uint8)
        reason = np.where(bad, np.uint16(Reason.DECODE_ERROR), np.uint16(0)).astype(np.uint16)
        texts = {i: t for (r, i), t in plan.texts.items() if r == row}
        for i, p in enumerate(plan.points):
            if p.name in self._written:
                value = self._written[p.name]
                if isinstance(value, str):
                    texts[i] = value
                else:
                    values[i] = float(value)
                quality[i], reason[i] = Quality.GOOD, Reason.NONE
        if ended:
            quality[:] = Quality.STALE
            reason[:] = Reason.STALE
        return ReadResult(values=values, quality=quality, texts=texts, reason=reason)

    async def write(self, points: Sequence[tuple[Point, float | int | bool | str]]) -> None:
        """Record each write; the tag reads the written value back from then on."""
        if self._started is None:
            raise ConnectError("not connected", device=self.name)
        for p, _ in points:
            if not p.writable:
                raise WriteRefused(f"tag {p.name!r} is not writable", device=self.name)
        now = time.time_ns()
        for p, value in points:
            self.writes.append((now, p.name, value))
            self._written[p.name] = value

    async def close(self) -> None:
        self._started = None


def create(device_cfg: CsvDevice, groups: Sequence[GroupSpec]) -> CsvReplayDriver:
    """Registry factory (`driver: csv`): reads and decodes the file now, so a missing file
    or column fails at compile time (`edgeloop check`), never on a poll; a cell that is not
    of its tag's type reads bad (decode_error) on its row, as a recorded gap should."""
    return CsvReplayDriver(device_cfg, groups)
