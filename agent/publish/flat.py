"""`encoding: json_flat`: one small JSON message per tag, reported by exception.

Many historians and Node-RED flows want `{ts, value, quality, reason}` on a topic per tag
rather than a poll group's frame. Sending every tag at every poll would multiply the message
rate by the group size, so a tag is sent only when it says something new:

- its first sample since start-up;
- its value moved by more than its deadband (engineering units) from the value last sent
  (deadband 0: any change), or turned into / out of "no value" (NaN);
- its text changed (string tags);
- its quality or its reason code changed;
- `max_silence_s` (> 0) passed since it was last sent (a heartbeat for consumers that
  time out on silence).

Pure: numpy state per tag, decided in one vectorised pass over a poll group's slice on the
event loop; the JSON text is made in the outbox writer thread (`payload`).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from agent.publish.payloads import iso_ms
from agent.publish.settings import FlatJsonConfig
from drivers.base import QUALITY_NAMES

_INTEGER_TYPES = {"int16", "uint16", "int32", "uint32", "int64", "uint64"}


def _reason_name(code: int) -> str | None:
    if not code:
        return None
    try:
        from drivers.base import reason_name  # type: ignore[attr-defined]
    except ImportError:
        return str(code)
    return str(reason_name(int(code)))


class FlatReporter:
    """Per-tag report-by-exception state over the tag table; see the module docstring."""

    def __init__(self, cfg: FlatJsonConfig, table: Any, groups: Any = ()) -> None:
        n = len(table.names)
        self.table = table
        self.cfg = cfg
        self.deadband = np.zeros(n)
        self.silence_ns = np.zeros(n, dtype=np.int64)
        self.last_value = np.full(n, np.nan)
        self.last_quality = np.full(n, -1, dtype=np.int32)
        self.last_reason = np.full(n, -1, dtype=np.int32)
        self.last_ns = np.zeros(n, dtype=np.int64)
        self.last_text: dict[int, str] = {}
        self.sent = np.zeros(n, dtype=bool)
        self._kind: list[str] = []
        for p in table.points:
            if p.dtype in ("bool", "bit"):
                self._kind.append("bool")
            elif p.dtype == "string":
                self._kind.append("text")
            elif p.dtype in _INTEGER_TYPES and p.scale == 1.0 and p.offset == 0.0:
                self._kind.append("int")
            else:
                self._kind.append("float")
        self._ruled: set[int] = set()
        for g in groups:
            self.learn(g)

    def learn(self, group: Any) -> None:
        """Set the deadband and silence of a group's tags (once per group)."""
        if group.start in self._ruled:
            return
        self._ruled.add(group.start)
        for i in range(group.start, group.stop):
            db, silence = self.cfg.rule_for(self.table.names[i], group.name)
            self.deadband[i] = db
            self.silence_ns[i] = int(silence * 1e9)

    def select(self, group: Any, ts_ns: int) -> list[int]:
        """Indices of the group's tags to send for this poll; their state is updated."""
        self.learn(group)
        t = self.table
        s, e = group.start, group.stop
        v = t.raw[s:e]
        q = t.quality[s:e].astype(np.int32)
        reason = getattr(t, "reason", None)
        r = reason[s:e].astype(np.int32) if reason is not None else np.zeros(e - s, np.int32)
        last = self.last_value[s:e]
        nan_now, nan_then = np.isnan(v), np.isnan(last)
        with np.errstate(invalid="ignore"):
            moved = np.abs(v - last) > self.deadband[s:e]
        send = (
            ~self.sent[s:e]
            | (q != self.last_quality[s:e])
            | (r != self.last_reason[s:e])
            | (nan_now != nan_then)
            | (moved & ~nan_now & ~nan_then)
        )
        silence = self.silence_ns[s:e]
        send |= (silence > 0) & (ts_ns - self.last_ns[s:e] >= silence)
        texts = getattr(t, "texts", None) or {}
        for i in range(s, e):
            if self._kind[i] == "text" and texts.get(i) != self.last_text.get(i):
                send[i - s] = True
        idx = np.flatnonzero(send)
        if idx.size:
            sel = idx + s
            self.last_value[sel] = v[idx]
            self.last_quality[sel] = q[idx]
            self.last_reason[sel] = r[idx]
            self.last_ns[sel] = ts_ns
            self.sent[sel] = True
            for i in sel.tolist():
                if self._kind[i] == "text":
                    self.last_text[i] = texts.get(i, "")
        return (idx + s).tolist()

    def messages(self, idx: list[int], ts_ns: int) -> list[dict[str, Any]]:
        """The messages of tags `idx` now (one time stamp text for the frame)."""
        ts = iso_ms(ts_ns)
        return [self.message(i, ts) for i in idx]

    def message(self, i: int, ts: str) -> dict[str, Any]:
        """The message of tag `i` now: {ts, value, quality, reason}; no value is null."""
        t = self.table
        kind = self._kind[i]
        x = float(t.raw[i])
        value: Any
        if kind == "text":
            value = (getattr(t, "texts", None) or {}).get(i)
        elif not math.isfinite(x):
            value = None
        elif kind == "bool":
            value = bool(x)
        elif kind == "int":
            value = int(x)
        else:
            value = x
        reason = getattr(t, "reason", None)
        return {
            "ts": ts,
            "value": value,
            "quality": QUALITY_NAMES.get(int(t.quality[i]), str(int(t.quality[i]))),
            "reason": _reason_name(int(reason[i])) if reason is not None else None,
        }


def payload(doc: dict[str, Any]) -> bytes:
    """The message as compact, strict JSON."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
