"""The JSON payloads: data frames, events and the status birth/will (docs/northbound.md).

Pure: the outbox writer thread calls these builders once a message's seq is known. A data
message's arrays are encoded by orjson straight from numpy (NaN and infinities become
`null`): the stdlib encoder spent ~0.6 µs per tag-value on float repr alone, orjson ~0.03
(bench/README.md, "History + publish per tag-value").
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

PAYLOAD_VERSION = 1
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


@dataclass(slots=True)
class Frame:
    """A copy of one poll group's slice at one poll, handed to the outbox writer."""

    ts_ns: int
    start: int
    raw: np.ndarray
    value: np.ndarray
    quality: np.ndarray
    flags: np.ndarray
    score: np.ndarray
    texts: dict[int, str]  # string tags' values by table index
    reason: np.ndarray | None  # drivers.base.Reason codes, when the table has them
    qsend: np.ndarray | None = None  # Sparkplug: tags whose Quality property is sent


def topic_segment(s: str) -> str:
    """A name made safe for one MQTT topic level (no '/', '+', '#', NUL)."""
    for ch in "/+#\0":
        s = s.replace(ch, "_")
    return s or "_"


def json_safe(x: Any) -> Any:
    """Event payloads as strict JSON: numpy scalars/arrays unwrapped, NaN/inf -> null."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, bool | int | str):
        return x
    return str(x)


def iso_ms(ts_ns: int) -> str:
    """A poll time as the payloads' `ts`: UTC, milliseconds, `Z`."""
    d = dt.datetime.fromtimestamp(ts_ns / 1e9, tz=dt.UTC)
    return d.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_frames(
    seq: int,
    epoch: str | None,
    site: str,
    device: str,
    group: str,
    names: list[str],
    start: int,
    frames: list[Frame],
) -> bytes:
    """A `json` data message: the group's tag names and one entry per frame.

    The documented object (docs/northbound.md), compact, numbers in their shortest
    round-trip form (`1e-05` may read `0.00001`: the same float to any JSON parser).
    """
    out = []
    for fr in frames:
        f: dict[str, Any] = {
            "ts": iso_ms(fr.ts_ns),
            "ts_ns": fr.ts_ns,
            "raw": fr.raw,
            "value": fr.value,
            "quality": fr.quality,
            "flags": fr.flags,
            "score": fr.score,
        }
        if fr.reason is not None:
            f["reason"] = fr.reason
        if fr.texts:
            f["texts"] = {names[i - start]: v for i, v in fr.texts.items()}
        out.append(f)
    doc = {
        "v": PAYLOAD_VERSION,
        "seq": seq,
        "epoch": epoch,
        "site": site,
        "device": device,
        "group": group,
        "tags": names,
        "frames": out,
    }
    return orjson.dumps(doc, option=_NUMPY)


def event_payload(
    seq: int, epoch: str | None, site: str, kind: str, ts_ns: int, body: Any
) -> bytes:
    """An `_events/{kind}` message; `body` already made strict JSON by `json_safe`."""
    doc = {
        "v": PAYLOAD_VERSION,
        "seq": seq,
        "epoch": epoch,
        "site": site,
        "kind": kind,
        "ts": iso_ms(ts_ns),
        "ts_ns": ts_ns,
        "payload": body,
    }
    return _encode(doc).encode()


def status_payload(site: str, state: str, encoding: str, epoch: str | None, ts_ns: int) -> bytes:
    """The retained `status` message: online at connect, offline as will and goodbye."""
    doc = {
        "v": PAYLOAD_VERSION,
        "site": site,
        "status": state,
        "ts": iso_ms(ts_ns),
        "encoding": encoding,
        "epoch": epoch,
    }
    return _encode(doc).encode()
