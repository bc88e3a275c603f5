"""The JSON payloads: data frames, events and the status birth/will (docs/northbound.md).

Pure: the outbox writer thread calls these builders once a message's seq is known. A data
message's static part (tag names) is encoded once per group, the arrays per frame.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

PAYLOAD_VERSION = 1
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


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


def _floats(a: np.ndarray) -> list[float | None]:
    vals = a.tolist()
    if not np.isfinite(a).all():
        vals = [v if math.isfinite(v) else None for v in vals]
    return vals


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


def _iso(ts_ns: int) -> str:
    d = dt.datetime.fromtimestamp(ts_ns / 1e9, tz=dt.UTC)
    return d.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_frames(
    seq: int,
    epoch: str | None,
    site: str,
    device: str,
    group: str,
    names: list[str],
    names_json: str,
    start: int,
    frames: list[Frame],
) -> bytes:
    """A `json` data message: the group's tag names and one entry per frame.

    Byte for byte what `json.dumps(doc, separators=(",", ":"), allow_nan=False)` of the
    documented object gives; assembled from parts so the names are encoded once per group
    (`names_json`) and the arrays without building the document first.
    """
    out = []
    for fr in frames:
        part = (
            f'{{"ts":{_encode(_iso(fr.ts_ns))},"ts_ns":{fr.ts_ns},'
            f'"raw":{_encode(_floats(fr.raw))},"value":{_encode(_floats(fr.value))},'
            f'"quality":{_encode(fr.quality.tolist())},"flags":{_encode(fr.flags.tolist())},'
            f'"score":{_encode(_floats(fr.score))}'
        )
        if fr.reason is not None:
            part += f',"reason":{_encode(fr.reason.tolist())}'
        if fr.texts:
            part += f',"texts":{_encode({names[i - start]: v for i, v in fr.texts.items()})}'
        out.append(part + "}")
    return (
        f'{{"v":{PAYLOAD_VERSION},"seq":{seq},"epoch":{_encode(epoch)},"site":{_encode(site)},'
        f'"device":{_encode(device)},"group":{_encode(group)},"tags":{names_json},'
        f'"frames":[{",".join(out)}]}}'
    ).encode()


def names_json(names: list[str]) -> str:
    """The `tags` array of a group's data messages, encoded once."""
    return _encode(names)


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
        "ts": _iso(ts_ns),
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
        "ts": _iso(ts_ns),
        "encoding": encoding,
        "epoch": epoch,
    }
    return _encode(doc).encode()
