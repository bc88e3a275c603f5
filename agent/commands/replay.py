"""`edgeloop replay`: run a recorded CSV through the kernel to tune detection offline.

Exactly one output row per input row.  Bad data is refused with a message naming the file,
row and column and exit status 65 (EX_DATAERR); a missing input file is 66 (EX_NOINPUT); a
bad `--config` is 78 (EX_CONFIG).  Handled, not refused (and reported on stderr): empty or
NaN/inf cells (flagged `invalid`, never used), a few unparseable cells in an otherwise numeric
column (same), non-numeric columns not asked for (skipped), columns constant during the
warm-up (left out of the group model, still filtered and flagged per tag).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HELP = "Run a recorded CSV through the signal kernel; write filtered values, flags and alarms."

EX_OK = 0
EX_DATAERR = 65
EX_NOINPUT = 66
EX_CANTCREAT = 73
EX_CONFIG = 78
NUMERIC_SHARE = 0.9  # a column is numeric when at least this share of its non-empty cells parse
SNIFF_BYTES = 64 * 1024
MIN_WARMUP = 20  # GroupSettings.warmup_samples lower bound


class ReplayError(Exception):
    """Refused input; `code` is the exit status."""

    def __init__(self, message: str, code: int = EX_DATAERR) -> None:
        super().__init__(message)
        self.code = code


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("csv", help="input CSV with a header row")
    p.add_argument("--out", required=True, help="output CSV (written atomically)")
    p.add_argument("--sep", help="field separator (default: detected among , ; TAB |)")
    p.add_argument("--time-column", help="timestamp column: epoch seconds or ISO 8601")
    p.add_argument("--columns", help="comma-separated columns to use (default: all numeric)")
    p.add_argument(
        "--warmup",
        type=int,
        help="first N rows are known-normal training data for the groups "
        "(default: each group's warmup_samples, 400 unless configured)",
    )
    p.add_argument(
        "--config",
        help="YAML with a `kernel:` section (or just its content); tag names are column names. "
        "Without groups there, all used columns form one group.",
    )
    p.add_argument(
        "--normal",
        help="a CSV of known-normal operation with the same columns: the model learned from "
        "the warm-up scores it and the achieved false-alarm rate is printed",
    )
    p.add_argument(
        "--period-s",
        type=float,
        default=1.0,
        help="sample spacing when there is no time column (only the rate limit uses time)",
    )


@dataclass
class Table:
    """The CSV as the kernel sees it (duck-types the tag table)."""

    names: list[str]
    raw: Any
    time_text: list[str] | None
    ts_ns: Any
    notes: list[str]
    invalid_cells: int


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ReplayError(f"{path}: no such file", EX_NOINPUT)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read: {exc}", EX_NOINPUT) from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _sniff(text: str, path: Path) -> str:
    sample = text[:SNIFF_BYTES]
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        header = sample.splitlines()[0] if sample else ""
        counts = {d: header.count(d) for d in ",;\t|"}
        best = max(counts, key=counts.__getitem__)
        return best if counts[best] else ","  # no separator in the header: one column


def _parse_float(cell: str, decimal_comma: bool) -> float | None:
    s = cell.strip()
    if not s:
        return math.nan
    if decimal_comma:
        s = s.replace(",", ".")
    try:
        return float(s)
    except ValueError:
        return None


def _parse_time(cell: str, row: int, col: str, path: Path) -> int:
    s = cell.strip()
    try:
        return round(float(s) * 1e9)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(
            f"{path}: row {row}, column {col!r}: {cell!r} is not epoch seconds or ISO 8601"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1e9)


def read_csv(
    path: Path,
    sep: str | None,
    time_column: str | None,
    columns: list[str] | None,
    period_s: float,
) -> Table:
    """Parse and check the CSV; raises `ReplayError` with file/row/column on bad data."""
    import numpy as np

    text = _read_text(path)
    if not text.strip():
        raise ReplayError(f"{path}: empty file")
    delim = sep if sep else _sniff(text, path)
    if delim == "\\t":
        delim = "\t"
    rows = list(csv.reader(io.StringIO(text), delimiter=delim))
    while rows and not any(c.strip() for c in rows[-1]):
        rows.pop()
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    if not body:
        raise ReplayError(f"{path}: header only, no data rows")
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise ReplayError(f"{path}: duplicate column names {dup}")
    for r, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ReplayError(
                f"{path}: row {r} has {len(row)} fields, the header {len(header)} "
                f"(separator {delim!r}; give --sep if it was detected wrongly)"
            )
    notes: list[str] = []
    col_of = {h: j for j, h in enumerate(header)}
    if time_column is not None and time_column not in col_of:
        raise ReplayError(f"{path}: no time column {time_column!r}; columns are {header}")
    if columns is not None:
        missing = [c for c in columns if c not in col_of]
        if missing:
            raise ReplayError(f"{path}: no column(s) {missing}; columns are {header}")
        if time_column in columns:
            raise ReplayError(f"{time_column!r} is the time column; do not list it in --columns")
    wanted = columns if columns is not None else [h for h in header if h != time_column]
    decimal_comma = delim != ","
    names: list[str] = []
    data: list[list[float]] = []
    for name in wanted:
        j = col_of[name]
        vals: list[float] = []
        bad_cells: list[tuple[int, str]] = []
        nonempty = 0
        for r, row in enumerate(body, start=2):
            cell = row[j]
            if cell.strip():
                nonempty += 1
            v = _parse_float(cell, decimal_comma)
            if v is None:
                bad_cells.append((r, cell))
                v = math.nan
            vals.append(v)
        parsed = nonempty - len(bad_cells)
        numeric = parsed > 0 and parsed >= NUMERIC_SHARE * nonempty
        if not numeric:
            where = f"row {bad_cells[0][0]}: {bad_cells[0][1]!r}" if bad_cells else "no values"
            if columns is not None:
                raise ReplayError(f"{path}: column {name!r} is not numeric ({where})")
            notes.append(f"skipped non-numeric column {name!r} ({where})")
            continue
        if not any(math.isfinite(v) for v in vals):
            if columns is not None:
                raise ReplayError(f"{path}: column {name!r} has no finite value")
            notes.append(f"skipped column {name!r}: no finite value")
            continue
        if bad_cells:
            r, cell = bad_cells[0]
            notes.append(
                f"column {name!r}: {len(bad_cells)} unparseable cell(s) treated as invalid "
                f"(first: row {r}: {cell!r})"
            )
        names.append(name)
        data.append(vals)
    if not names:
        raise ReplayError(f"{path}: no numeric columns to replay")
    raw = np.array(data, dtype=np.float64).T.copy()
    invalid = int(np.count_nonzero(~np.isfinite(raw)))
    time_text = None
    if time_column is not None:
        j = col_of[time_column]
        time_text = [row[j] for row in body]
        ts = np.array(
            [_parse_time(c, r, time_column, path) for r, c in enumerate(time_text, start=2)],
            dtype=np.int64,
        )
        if np.any(np.diff(ts) < 0):
            notes.append(f"time column {time_column!r} goes backwards; rate limits use dt >= 0")
    else:
        ts = np.arange(len(body), dtype=np.int64) * round(period_s * 1e9)
    return Table(names, raw, time_text, ts, notes, invalid)


def load_kernel_config(path: str | None, names: list[str], warmup: int | None) -> Any:
    """The `kernel:` settings for a replay; defaults to one group of every used column."""
    import yaml
    from pydantic import ValidationError

    from agent.kernel.settings import KernelConfig

    doc: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ReplayError(f"{path}: no such config file", EX_NOINPUT)
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ReplayError(f"{path}: not valid YAML: {exc}", EX_CONFIG) from exc
        if not isinstance(loaded, dict):
            raise ReplayError(f"{path}: expected a mapping", EX_CONFIG)
        doc = dict(loaded.get("kernel", loaded) or {})
    try:
        cfg = KernelConfig.model_validate(doc)
    except ValidationError as exc:
        raise ReplayError(f"{path}: {exc}", EX_CONFIG) from exc
    problems = cfg.unknown_tags(names)
    if problems:
        raise ReplayError(f"{path}: " + "; ".join(problems) + f" (columns: {names})", EX_CONFIG)
    groups = [g.model_dump(exclude_unset=True) for g in cfg.groups]  # keep what was set
    if not groups and len(names) >= 2:
        groups = [{"name": "all", "tags": list(names)}]
    if warmup is not None:
        for g in groups:
            g["warmup_samples"] = warmup
    merged = cfg.model_dump(exclude_none=True)
    merged["tags"] = {k: v.model_dump(exclude_none=True) for k, v in cfg.tags.items()}
    merged["groups"] = groups
    try:
        return KernelConfig.model_validate(merged)
    except ValidationError as exc:
        raise ReplayError(f"--warmup {warmup}: {exc}", EX_DATAERR) from exc


def replay(args: argparse.Namespace) -> list[str]:
    """Do the replay; returns the summary lines. Raises `ReplayError`."""
    import numpy as np

    from agent.kernel import flags as F
    from agent.kernel.multivar import GroupFitError
    from agent.kernel.runtime import KernelRuntime

    src = Path(args.csv)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    if args.warmup is not None and args.warmup < MIN_WARMUP:
        raise ReplayError(f"--warmup must be at least {MIN_WARMUP}, got {args.warmup}")
    tb = read_csv(src, args.sep, args.time_column, columns, args.period_s)
    n_rows = tb.raw.shape[0]
    if args.warmup is not None and n_rows <= args.warmup and len(tb.names) > 1:
        raise ReplayError(
            f"{src}: {n_rows} data rows, not more than --warmup {args.warmup}; "
            "the warm-up must leave rows to score"
        )
    cfg = load_kernel_config(args.config, tb.names, args.warmup)
    for g in cfg.groups:
        if n_rows <= g.warmup_samples:
            raise ReplayError(
                f"{src}: {n_rows} data rows, but group {g.name!r} needs more than its "
                f"{g.warmup_samples} warm-up rows; give a smaller --warmup"
            )
    n = len(tb.names)
    table = _KernelTable(tb.names, tb.ts_ns[:1].repeat(n), np.full(n, np.nan))
    rt = KernelRuntime(cfg, table)
    quality = np.where(np.isfinite(tb.raw), 0, 1).astype(np.uint8)
    try:
        res = rt.run(tb.raw, quality, tb.ts_ns)
    except GroupFitError as exc:
        raise ReplayError(f"{src}: {exc}") from exc
    params = [cfg.params_for(name) for name in tb.names]
    thr = np.array([p.score_threshold for p in params])
    if res.group_score:
        g_scores = np.column_stack(list(res.group_score.values()))
        score = np.full(n_rows, np.nan)
        scored = ~np.all(np.isnan(g_scores), axis=1)
        score[scored] = np.nanmax(g_scores[scored], axis=1)
        g_alarm = np.column_stack(list(res.group_alarm.values())).any(axis=1)
    else:
        score = np.max(res.score / thr, axis=1)
        g_alarm = np.zeros(n_rows, dtype=bool)
    tag_alarm = np.any(res.flags & F.ANOMALOUS, axis=1)
    anomaly = (g_alarm | tag_alarm).astype(int)
    _write(Path(args.out), tb, res, score, anomaly, args.time_column)
    lines = [f"read {n_rows} rows x {n} columns ({', '.join(tb.names)}) from {src}"]
    lines += tb.notes
    if tb.invalid_cells:
        lines.append(f"{tb.invalid_cells} empty/NaN/inf/unparseable cell(s) flagged invalid")
    for name, info in rt.group_info().items():
        text = (
            f"group {name!r}: learned from {info['collected']} valid warm-up rows, "
            f"{info.get('components', 0)} component(s)"
        )
        if info.get("excluded"):
            text += f"; constant in the warm-up, left out of the model: {info['excluded']}"
        lines.append(text)
        lines.append(f"group {name!r}: alarm on {int(res.group_alarm[name].sum())} row(s)")
        lines += _what_moved(name, res.group_contrib.get(name, []), tb.time_text)
    lines.append(f"anomaly on {int(anomaly.sum())} of {n_rows} rows; wrote {args.out}")
    if cfg.groups:
        warm = max(g.warmup_samples for g in cfg.groups)
        lines += false_alarm_lines(
            cfg, tb, tb.raw[:warm], "the warm-up (in-sample, optimistic)", rt.group_info()
        )
        if args.normal is not None:
            normal = read_csv(Path(args.normal), args.sep, args.time_column, tb.names, 1.0)
            lines += false_alarm_lines(cfg, tb, normal.raw, f"--normal {args.normal}", None)
    return lines


def false_alarm_lines(
    cfg: Any, tb: Table, rows: Any, what: str, info: dict[str, Any] | None
) -> list[str]:
    """Achieved false-alarm rate of each group on `rows` (known normal), scored by the model
    learned from the warm-up of `tb`: a fresh runtime replays [warm-up rows; `rows`]."""
    import numpy as np

    from agent.kernel import flags as F
    from agent.kernel.runtime import KernelRuntime

    warm = max(g.warmup_samples for g in cfg.groups)
    head = tb.raw[:warm]
    data = np.vstack([head, rows])
    step = int(np.median(np.diff(tb.ts_ns))) if tb.ts_ns.size > 1 else 1_000_000_000
    ts = tb.ts_ns[0] + np.arange(data.shape[0], dtype=np.int64) * max(step, 1)
    n = len(tb.names)
    rt = KernelRuntime(cfg, _KernelTable(tb.names, ts[:1].repeat(n), np.full(n, np.nan)))
    quality = np.where(np.isfinite(data), 0, 1).astype(np.uint8)
    res = rt.run(data, quality, ts)
    tail = slice(warm, None)
    out = []
    info = info or rt.group_info()
    for name, alarm in res.group_alarm.items():
        a = alarm[tail].astype(bool)
        onsets = int(np.sum(a[1:] & ~a[:-1])) + int(a[:1].sum())
        budget = info.get(name, {}).get("budget")
        said = f" (budget {budget})" if budget else " (no budget: alpha limits)"
        out.append(
            f"false alarms on {what}: group {name!r} in alarm on {100 * a.mean():.2f} % of "
            f"{a.size} rows, {onsets} onset(s){said}"
        )
    any_alarm = np.any(res.flags[tail] & (F.ANOMALOUS | F.GROUP_ALARM), axis=1)
    out.append(f"false alarms on {what}: anomaly on {100 * any_alarm.mean():.2f} % of rows")
    return out


def _what_moved(
    name: str, onsets: list[tuple[int, dict[str, float]]], time_text: list[str] | None
) -> list[str]:
    """Summary lines: which tags the group's alarm onsets name first, and the first onsets."""
    if not onsets:
        return []
    first: dict[str, int] = {}
    for _, contrib in onsets:
        if contrib:
            top = next(iter(contrib))
            first[top] = first.get(top, 0) + 1
    tally = ", ".join(f"{t} ({n})" for t, n in sorted(first.items(), key=lambda kv: -kv[1]))
    lines = [f"group {name!r}: {len(onsets)} alarm onset(s); top contributor: {tally}"]
    for r, contrib in onsets[:5]:
        when = f"row {r + 1}" + (f" ({time_text[r]})" if time_text else "")
        moved = ", ".join(f"{t} {100 * v:.0f} %" for t, v in contrib.items())
        lines.append(f"group {name!r}: onset at {when}: {moved}")
    return lines


class _KernelTable:
    """The attributes KernelRuntime reads from a tag table, for replay."""

    def __init__(self, names: list[str], ts: Any, nan: Any) -> None:
        import numpy as np

        n = len(names)
        self.names = names
        self.raw = nan.copy()
        self.value = nan.copy()
        self.quality = np.zeros(n, dtype=np.uint8)
        self.flags = np.zeros(n, dtype=np.uint16)
        self.score = np.zeros(n)
        self.ts_ns = ts
        self.min = nan.copy()
        self.max = nan.copy()


def _fmt(v: float) -> str:
    return "" if math.isnan(v) else repr(float(v))


def _write(
    out: Path, tb: Table, res: Any, score: Any, anomaly: Any, time_column: str | None
) -> None:
    header = ["row"]
    if time_column is not None:
        header.append(time_column)
    header += ["anomaly", "score"]
    groups = list(res.group_score)
    if len(groups) > 1:
        for g in groups:
            header += [f"{g}.score", f"{g}.alarm"]
    for name in tb.names:
        header += [f"{name}.value", f"{name}.flags", f"{name}.score"]
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tmp.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for r in range(tb.raw.shape[0]):
                row: list[Any] = [r + 1]
                if tb.time_text is not None:
                    row.append(tb.time_text[r])
                row += [int(anomaly[r]), _fmt(score[r])]
                if len(groups) > 1:
                    for g in groups:
                        row += [_fmt(res.group_score[g][r]), int(res.group_alarm[g][r])]
                for j in range(len(tb.names)):
                    row += [_fmt(res.value[r, j]), int(res.flags[r, j]), _fmt(res.score[r, j])]
                w.writerow(row)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ReplayError(f"{out}: cannot write: {exc}", EX_CANTCREAT) from exc


def run(args: argparse.Namespace) -> int:
    try:
        lines = replay(args)
    except ReplayError as exc:
        print(f"edgeloop replay: {exc}", file=sys.stderr)
        return exc.code
    for line in lines:
        print(line, file=sys.stderr)
    return EX_OK
