"""Pure part of the OPC UA driver: read plans, DataValue decoding, write encoding.

No sockets and no event loop here, so the mapping from OPC UA status codes and Variant types
to edgeloop's float64 values, quality codes and texts is unit-tested without a server.

Status codes map by severity (the top two bits, OPC UA Part 4 7.34.1): Good -> GOOD,
Uncertain -> UNCERTAIN, Bad -> BAD.  A Good value that is not a number (an array, a struct,
a date) is BAD for a numeric tag: edgeloop cannot put it in a float64 slot.  Strings go to
`ReadResult.texts` for `type: string` tags.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from asyncua import ua

from drivers.base import (
    DriverError,
    GroupSpec,
    PlannedRequest,
    Point,
    Quality,
    ReadResult,
    Reason,
    opcua_reason,
)

FUNCTION_READ = "OPC UA Read"
FUNCTION_SUBSCRIBE = "OPC UA CreateMonitoredItems"
DEFAULT_MAX_NODES = 1000  # chunk size when the server publishes no MaxNodesPerRead (0)

_QUALITY_GOOD = np.uint8(Quality.GOOD)


@dataclass(slots=True)
class OpcUaPlan:
    """One poll group compiled for OPC UA: node ids and engineering arrays, built once."""

    device: str
    group: GroupSpec
    mode: str  # poll | subscribe
    node_ids: tuple[ua.NodeId, ...]
    scale: np.ndarray
    offset: np.ndarray
    is_text: np.ndarray  # bool per point: type string
    stale_after_s: float
    sampling_interval_ms: float
    deadband_abs: float
    queue_size: int
    index: dict[ua.NodeId, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.node_ids)


def parse_node_id(text: str, *, device: str, tag: str) -> ua.NodeId:
    """NodeId from its string form, or a DriverError naming the tag."""
    try:
        return ua.NodeId.from_string(text)
    except Exception as exc:  # asyncua raises UaStringParsingError, ValueError, IndexError
        raise DriverError(f"tag {tag!r}: bad OPC UA node id {text!r}", device=device) from exc


def compile_plan(device: str, group: GroupSpec) -> OpcUaPlan:
    """Compile a group; options carry stale_after_ms, sampling_interval_ms, deadband_abs,
    queue_size (defaults as in the YAML contract)."""
    if group.mode not in ("poll", "subscribe"):
        raise DriverError(f"group {group.name!r}: unknown mode {group.mode!r}", device=device)
    ids: list[ua.NodeId] = []
    for p in group.points:
        if not p.node:
            raise DriverError(f"tag {p.name!r}: no OPC UA node", device=device)
        ids.append(parse_node_id(p.node, device=device, tag=p.name))
    opts = group.options or {}
    stale_ms = opts.get("stale_after_ms") or 3 * group.interval_ms
    sampling = opts.get("sampling_interval_ms")
    plan = OpcUaPlan(
        device=device,
        group=group,
        mode=group.mode,
        node_ids=tuple(ids),
        scale=np.array([p.scale for p in group.points], dtype=np.float64),
        offset=np.array([p.offset for p in group.points], dtype=np.float64),
        is_text=np.array([p.dtype == "string" for p in group.points], dtype=bool),
        stale_after_s=float(stale_ms) / 1000.0,
        sampling_interval_ms=float(group.interval_ms if sampling is None else sampling),
        deadband_abs=float(opts.get("deadband_abs") or 0.0),
        queue_size=int(opts.get("queue_size") or 1000),
    )
    plan.index = {nid: i for i, nid in enumerate(ids)}
    return plan


def chunks(n: int, max_nodes: int) -> list[tuple[int, int]]:
    """(start, stop) slices of at most `max_nodes` covering range(n)."""
    step = max_nodes if max_nodes > 0 else DEFAULT_MAX_NODES
    return [(i, min(i + step, n)) for i in range(0, n, step)]


def describe_plan(plan: OpcUaPlan, max_nodes: int) -> list[PlannedRequest]:
    """Rows for `edgeloop plan`; `max_nodes` 0 means the server's limit is not known yet."""
    names = [p.name for p in plan.group.points]
    if plan.mode == "subscribe":
        fn = (
            f"{FUNCTION_SUBSCRIBE} (publish {plan.group.interval_ms} ms, sampling "
            f"{plan.sampling_interval_ms:g} ms, deadband {plan.deadband_abs:g})"
        )
        return [PlannedRequest(plan.device, 0, fn, None, plan.size, tuple(names))]
    if max_nodes <= 0:
        fn = f"{FUNCTION_READ} (chunked to the server's MaxNodesPerRead at connect)"
        return [PlannedRequest(plan.device, 0, fn, None, plan.size, tuple(names))]
    return [
        PlannedRequest(plan.device, 0, FUNCTION_READ, start, stop - start, tuple(names[start:stop]))
        for start, stop in chunks(plan.size, max_nodes)
    ]


def status_quality(status: ua.StatusCode | None) -> Quality:
    """OPC UA severity -> Quality; a missing StatusCode means Good (Part 6 5.2.2.17)."""
    if status is None:
        return Quality.GOOD
    severity = status.value >> 30
    if severity == 0:
        return Quality.GOOD
    if severity == 1:
        return Quality.UNCERTAIN
    return Quality.BAD


def status_name(status: ua.StatusCode | int) -> str:
    """Readable name of a status code, e.g. BadTypeMismatch."""
    code = status.value if isinstance(status, ua.StatusCode) else int(status)
    try:
        return ua.StatusCode(code).name
    except Exception:
        return f"0x{code:08X}"


def decode_value(dv: ua.DataValue, is_text: bool) -> tuple[float, Quality, str | None, int]:
    """(raw float, quality, text, `Reason` code) of one DataValue."""
    q = status_quality(dv.StatusCode)
    why = opcua_reason(dv.StatusCode.value) if q != Quality.GOOD else Reason.NONE
    if q == Quality.BAD:
        return math.nan, q, None, why
    v = dv.Value.Value if dv.Value is not None else None
    if isinstance(v, str):
        return (math.nan, q, v, why) if is_text else (math.nan, Quality.BAD, v, Reason.DECODE_ERROR)
    if is_text:
        if v is None or isinstance(v, (list, tuple, bytes)):
            return math.nan, Quality.BAD, None, Reason.DECODE_ERROR
        return math.nan, q, str(v.Text if isinstance(v, ua.LocalizedText) else v), why
    if isinstance(v, bool):
        return (1.0 if v else 0.0), q, None, why
    if isinstance(v, (int, float)):
        return float(v), q, None, why
    return math.nan, Quality.BAD, None, Reason.DECODE_ERROR


def decode_into(
    plan: OpcUaPlan,
    dvs: Sequence[ua.DataValue],
    start: int,
    raw: np.ndarray,
    quality: np.ndarray,
    texts: dict[int, str],
    reason: np.ndarray,
) -> None:
    """Decode `dvs` (the values of points start..start+len) into raw/quality/texts/reason."""
    is_text = plan.is_text
    for k, dv in enumerate(dvs):
        i = start + k
        value, q, text, why = decode_value(dv, bool(is_text[i]))
        raw[i] = value
        quality[i] = q
        reason[i] = why
        if text is not None:
            texts[i] = text
        else:
            texts.pop(i, None)


def engineering(
    plan: OpcUaPlan,
    raw: np.ndarray,
    quality: np.ndarray,
    texts: dict[int, str],
    reason: np.ndarray,
) -> ReadResult:
    """Apply scale/offset in one vector operation and package the result."""
    values = raw * plan.scale + plan.offset
    return ReadResult(values=values, quality=quality, texts=texts, reason=reason)


# --- writes ----------------------------------------------------------------------------

_INT_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class EncodeError(ValueError):
    """The value cannot be represented in the node's data type (so it is never sent)."""


def encode_write(
    point: Point, value: float | int | bool | str, vtype: ua.VariantType
) -> ua.Variant:
    """Engineering value -> Variant of the node's type: raw = (value - offset) / scale."""
    if vtype == ua.VariantType.String:
        return ua.Variant(str(value), vtype)
    if isinstance(value, str):
        raise EncodeError(f"{point.name}: a string cannot be written to a {vtype.name} node")
    raw = (float(value) - point.offset) / point.scale
    if not math.isfinite(raw):
        raise EncodeError(f"{point.name}: value {value!r} is not finite")
    if vtype == ua.VariantType.Boolean:
        if raw not in (0.0, 1.0):
            raise EncodeError(f"{point.name}: {value!r} is not a boolean (0 or 1)")
        return ua.Variant(raw == 1.0, vtype)
    if vtype == ua.VariantType.Double:
        return ua.Variant(raw, vtype)
    if vtype == ua.VariantType.Float:
        if abs(raw) > _FLOAT32_MAX:
            raise EncodeError(f"{point.name}: {value!r} overflows Float")
        return ua.Variant(raw, vtype)
    bounds = _INT_RANGES.get(vtype)
    if bounds is None:
        raise EncodeError(f"{point.name}: cannot write to a node of type {vtype.name}")
    ival = round(raw)
    if not bounds[0] <= ival <= bounds[1]:
        raise EncodeError(f"{point.name}: {value!r} is outside the range of {vtype.name}")
    return ua.Variant(ival, vtype)
