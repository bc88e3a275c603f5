"""Read side of the history database: series, events, control actions and CSV export.

Uses its own read-only connection, so it is safe while the writer runs (WAL).
"""

from __future__ import annotations

import csv
import heapq
import json
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TextIO

import numpy as np

from agent.store.codec import Frames, iso, to_ns, unpack_frames
from agent.store.schema import StoreError
from drivers.base import reason_name


class HistoryReader:
    """Read side of the history database; safe to use while a writer is running (WAL)."""

    def __init__(self, path: str) -> None:
        if not os.path.exists(path):
            raise StoreError(f"no history database at {path}")
        try:
            self._con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open history database {path}: {exc}") from exc
        self.path = path

    def close(self) -> None:
        self._con.close()

    def groups(self) -> list[tuple[int, str, str, list[str]]]:
        """(group_id, device, group, tag names) for every group version ever written."""
        rows = self._con.execute("SELECT id, device, name, tags FROM groups ORDER BY id")
        return [(i, d, n, json.loads(t)) for i, d, n, t in rows]

    def frames(self, group_id: int, n: int, t_from_ns: int, t_to_ns: int) -> Frames:
        rows = self._con.execute(
            "SELECT ts_ns, data FROM frames WHERE group_id=? AND ts_ns>=? AND ts_ns<? "
            "ORDER BY ts_ns",
            (group_id, t_from_ns, t_to_ns),
        ).fetchall()
        return unpack_frames([r[0] for r in rows], [r[1] for r in rows], n)

    def read_series(
        self, tags: Iterable[str], t_from: Any, t_to: Any
    ) -> dict[str, tuple[np.ndarray, ...]]:
        """Per tag `(ts_ns, raw, value, quality, flags, score)` arrays in [t_from, t_to).

        Times are epoch seconds, datetimes or ISO strings. Tags never written are absent.
        """
        want = set(tags)
        a, b = to_ns(t_from), to_ns(t_to)
        parts: dict[str, list[tuple[np.ndarray, ...]]] = {}
        for gid, _dev, _name, names in self.groups():
            cols = [(i, t) for i, t in enumerate(names) if t in want]
            if not cols:
                continue
            f = self.frames(gid, len(names), a, b)
            for i, t in cols:
                parts.setdefault(t, []).append(
                    (
                        f.ts_ns,
                        f.raw[:, i],
                        f.value[:, i],
                        f.quality[:, i],
                        f.flags[:, i],
                        f.score[:, i],
                    )
                )
        out: dict[str, tuple[np.ndarray, ...]] = {}
        for t, chunks in parts.items():
            cat = [np.concatenate([c[k] for c in chunks]) for k in range(6)]
            order = np.argsort(cat[0], kind="stable")
            out[t] = tuple(np.ascontiguousarray(c[order]) for c in cat)
        return out

    def read_events(
        self, t_from: Any, t_to: Any, kinds: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """Events in [t_from, t_to), oldest first: {ts_ns, kind, source, payload}."""
        rows = self._con.execute(
            "SELECT ts_ns, kind, source, payload FROM events WHERE ts_ns>=? AND ts_ns<? "
            "ORDER BY ts_ns, id",
            (to_ns(t_from), to_ns(t_to)),
        )
        ks = set(kinds) if kinds is not None else None
        return [
            {"ts_ns": ts, "kind": k, "source": s, "payload": json.loads(p)}
            for ts, k, s, p in rows
            if ks is None or k in ks
        ]

    def read_control(self, t_from: Any, t_to: Any, loop: str | None = None) -> list[dict]:
        """Control actions and mode changes in [t_from, t_to): {ts_ns, loop, payload}."""
        rows = self._con.execute(
            "SELECT ts_ns, loop, payload FROM control WHERE ts_ns>=? AND ts_ns<? "
            "ORDER BY ts_ns, id",
            (to_ns(t_from), to_ns(t_to)),
        )
        return [
            {"ts_ns": ts, "loop": lp, "payload": json.loads(p)}
            for ts, lp, p in rows
            if loop is None or lp == loop
        ]

    def export_csv(
        self,
        out: TextIO,
        t_from: Any,
        t_to: Any,
        tags: Sequence[str] | None = None,
        filtered: bool = False,
    ) -> int:
        """Write a wide CSV, one row per frame (timestamp x group); returns the row count.

        Columns: `time` (ISO 8601 UTC), `epoch_s`, `device`, `group`, then per tag
        `<tag>` (raw, or the kernel-filtered value with `filtered`), `<tag>:quality`,
        `<tag>:flags`, `<tag>:reason` (why it is not good, empty when good). Cells of tags
        outside the row's group are empty; NaN is empty.
        """
        a, b = to_ns(t_from), to_ns(t_to)
        want = list(dict.fromkeys(tags)) if tags else None
        groups = self.groups()
        if want is None:
            ordered = list(dict.fromkeys(t for g in groups for t in g[3]))
        else:
            known = {t for g in groups for t in g[3]}
            missing = [t for t in want if t not in known]
            if missing:
                raise StoreError(f"tags not in history: {', '.join(missing)}")
            ordered = want
        pos = {t: i for i, t in enumerate(ordered)}
        width = 4 + 4 * len(ordered)

        def group_rows(gid: int, dev: str, name: str, names: list[str]) -> Iterator[tuple]:
            sel = [(i, pos[t]) for i, t in enumerate(names) if t in pos]
            for f in self.iter_frames(gid, len(names), a, b):
                vals = f.value if filtered else f.raw
                for r in range(len(f.ts_ns)):
                    ts = int(f.ts_ns[r])
                    row = [""] * width
                    row[0], row[1], row[2], row[3] = iso(ts), f"{ts / 1e9:.6f}", dev, name
                    for i, j in sel:
                        v = float(vals[r, i])
                        why = int(f.reason[r, i])
                        row[4 + 4 * j] = "" if math.isnan(v) else repr(v)
                        row[5 + 4 * j] = str(int(f.quality[r, i]))
                        row[6 + 4 * j] = str(int(f.flags[r, i]))
                        row[7 + 4 * j] = reason_name(why) if why else ""
                    yield ts, gid, row

        streams = [group_rows(*g) for g in groups if any(t in pos for t in g[3])]
        w = csv.writer(out, lineterminator="\n")
        header = ["time", "epoch_s", "device", "group"]
        for t in ordered:
            header += [t, f"{t}:quality", f"{t}:flags", f"{t}:reason"]
        w.writerow(header)
        n = 0
        # groups are merged by time chunk by chunk, so a long range streams in bounded memory
        for _ts, _gid, row in heapq.merge(*streams, key=lambda x: (x[0], x[1])):
            w.writerow(row)
            n += 1
        return n

    def iter_frames(
        self, group_id: int, n: int, t_from_ns: int, t_to_ns: int, chunk_rows: int = 2000
    ) -> Iterator[Frames]:
        """`frames` in chunks of at most `chunk_rows`, in (ts, arrival) order."""
        ts, rowid = t_from_ns, -1
        while True:
            rows = self._con.execute(
                "SELECT ts_ns, rowid, data FROM frames WHERE group_id=? AND ts_ns<? "
                "AND (ts_ns>? OR (ts_ns=? AND rowid>?)) ORDER BY ts_ns, rowid LIMIT ?",
                (group_id, t_to_ns, ts, ts, rowid, chunk_rows),
            ).fetchall()
            if not rows:
                return
            yield unpack_frames([r[0] for r in rows], [r[2] for r in rows], n)
            ts, rowid = rows[-1][0], rows[-1][1]
            if len(rows) < chunk_rows:
                return


def open_reader(path: str) -> HistoryReader:
    """A reader on the history database at `path` (read-only connection)."""
    return HistoryReader(path)
