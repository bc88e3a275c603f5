"""Sparkplug B v3.0 payloads through protobuf and the specification's `sparkplug_b.proto`.

Pure: no I/O. The publisher (agent/publish/publisher.py) owns the session (bdSeq, seq, births,
commands); this module turns tags into typed metrics and commands back into values.

- A tag's Sparkplug datatype follows its configured type (`datatype_of`): bool/bit Boolean,
  int16..uint64 the integer type of that width, float32 Float, float64 Double, string String;
  an integer tag with a scale or offset carries engineering values, so it is Double.
- Births (DBIRTH) carry name `{group}/{tag}`, alias (the tag's index in the tag table),
  datatype, the current value (`is_null` only when no value exists), and the properties
  `engUnit` (String), `engLow` / `engHigh` (Double, the configured min/max), `writable`
  (Boolean, on tags a host may write with DCMD), `Quality` (Int32, OPC-style: 192 good,
  64 uncertain, 0 bad) and, when not good, `qualityReason` (String).
- Data (DDATA) carries metrics by alias only, without datatype (the host knows it from the
  birth), a timestamp per metric, `is_historical` for store-and-forward data, and `Quality`
  (plus `qualityReason`) when the value is not good or its quality just changed.
- Integers go to the oneof member of their width: Int8..Int32 and UInt8..UInt32 in
  `int_value` (signed ones as 32-bit two's complement), Int64/UInt64/DateTime in
  `long_value` (Int64 as 64-bit two's complement, DateTime as ms since the epoch).

Stored DDATA is encoded without `seq`: the Sparkplug sequence belongs to the MQTT session that
sends it, so the publisher appends `seq_field(n)` at send time (a protobuf parser merges a
message from concatenated parts, the last scalar wins).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from agent.publish import sparkplug_b_pb2 as pb

Payload = pb.Payload

# Sparkplug B DataType codes (sparkplug_b.proto, Sparkplug 3.0 section 6.4.16)
INT8, INT16, INT32, INT64 = 1, 2, 3, 4
UINT8, UINT16, UINT32, UINT64 = 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME = 9, 10, 11, 12, 13

DATATYPE_NAMES = {
    INT8: "Int8",
    INT16: "Int16",
    INT32: "Int32",
    INT64: "Int64",
    UINT8: "UInt8",
    UINT16: "UInt16",
    UINT32: "UInt32",
    UINT64: "UInt64",
    FLOAT: "Float",
    DOUBLE: "Double",
    BOOLEAN: "Boolean",
    STRING: "String",
    DATETIME: "DateTime",
}

_BY_TAG_TYPE = {
    "bool": BOOLEAN,
    "bit": BOOLEAN,
    "int16": INT16,
    "uint16": UINT16,
    "int32": INT32,
    "uint32": UINT32,
    "int64": INT64,
    "uint64": UINT64,
    "float32": FLOAT,
    "float64": DOUBLE,
    "string": STRING,
}
_INT32_FAMILY = {INT8: 8, INT16: 16, INT32: 32, UINT8: 8, UINT16: 16, UINT32: 32}
_SIGNED = {INT8, INT16, INT32, INT64}
_INTEGERS = {INT8, INT16, INT32, INT64, UINT8, UINT16, UINT32, UINT64}

# edgeloop Quality -> OPC-style quality code in the "Quality" property (Ignition's convention)
SPB_QUALITY = {0: 192, 1: 0, 2: 0, 3: 0, 4: 64}

REBIRTH = "Node Control/Rebirth"
DEVICE_REBIRTH = "Device Control/Rebirth"
BDSEQ = "bdSeq"


class CommandError(ValueError):
    """A command payload that cannot be decoded or carries no usable value."""


def datatype_of(point: Any) -> int:
    """The Sparkplug datatype of a tag (`drivers.base.Point`), from its configured type."""
    dt = _BY_TAG_TYPE.get(getattr(point, "dtype", "float64"), DOUBLE)
    scale = getattr(point, "scale", 1.0)
    offset = getattr(point, "offset", 0.0)
    if dt in _INTEGERS and (scale != 1.0 or offset != 0.0):
        return DOUBLE  # engineering values of a scaled integer are not integers
    return dt


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """What a host learns about one tag from the birth; fixed for a given config."""

    name: str  # "{group}/{tag}"
    alias: int  # index in the tag table
    datatype: int
    unit: str = ""
    lo: float | None = None
    hi: float | None = None
    writable: bool = False


def spec_for(point: Any, group: str) -> MetricSpec:
    """The MetricSpec of a tag of `group`."""
    return MetricSpec(
        name=f"{group}/{point.name}",
        alias=int(point.index),
        datatype=datatype_of(point),
        unit=getattr(point, "unit", "") or "",
        lo=getattr(point, "min", None),
        hi=getattr(point, "max", None),
        writable=bool(getattr(point, "writable", False)),
    )


def set_value(m: Any, datatype: int, value: Any) -> None:
    """Put `value` in the oneof member `datatype` names; None or NaN sets `is_null`.

    `m` is a Metric (or a PropertyValue-like message with the same member names).
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        m.is_null = True
        return
    if datatype == DOUBLE:
        m.double_value = float(value)
    elif datatype == FLOAT:
        m.float_value = float(value)
    elif datatype == BOOLEAN:
        m.boolean_value = bool(value)
    elif datatype == STRING:
        m.string_value = str(value)
    elif datatype in _INT32_FAMILY:
        m.int_value = round(value) & 0xFFFFFFFF
    elif datatype in (INT64, UINT64, DATETIME):
        m.long_value = round(value) & 0xFFFFFFFFFFFFFFFF
    else:
        raise ValueError(f"datatype {datatype} not supported")


def get_value(m: Any, datatype: int) -> float | int | bool | str | None:
    """The value of a decoded Metric read as `datatype` (signed integers sign-extended);
    None when it is null or carries no value."""
    which = m.WhichOneof("value")
    if m.is_null or which is None:
        return None
    raw = getattr(m, which)
    if which in ("int_value", "long_value"):
        bits = _INT32_FAMILY.get(datatype, 32 if which == "int_value" else 64)
        if datatype in _SIGNED:  # two's complement of the type's width (sign-extended or not)
            raw &= (1 << bits) - 1
            if raw >= 1 << (bits - 1):
                raw -= 1 << bits
        if datatype == BOOLEAN:
            return bool(raw)
        if datatype in (FLOAT, DOUBLE):
            return float(raw)
        return int(raw)
    if which in ("float_value", "double_value"):
        return float(raw)
    if which == "boolean_value":
        return bool(raw)
    if which == "string_value":
        return str(raw)
    return None  # bytes, dataset, template, extension: not a tag value


def _prop(props: Any, key: str, datatype: int, value: Any) -> None:
    props.keys.append(key)
    v = props.values.add()
    v.type = datatype
    if datatype == INT32:
        v.int_value = int(value) & 0xFFFFFFFF
    elif datatype == DOUBLE:
        v.double_value = float(value)
    elif datatype == BOOLEAN:
        v.boolean_value = bool(value)
    else:
        v.string_value = str(value)


def quality_properties(m: Any, quality: int, reason: str | None) -> None:
    """`Quality` (Int32) and, when the value is not good, `qualityReason` (String)."""
    _prop(m.properties, "Quality", INT32, SPB_QUALITY.get(int(quality), 0))
    if quality and reason:
        _prop(m.properties, "qualityReason", STRING, reason)


def add_birth_metric(
    payload: Any,
    spec: MetricSpec,
    value: Any,
    quality: int,
    reason: str | None,
    ts_ms: int,
) -> Any:
    """A DBIRTH metric: name, alias, datatype, value, engineering and quality properties."""
    m = payload.metrics.add()
    m.name = spec.name
    m.alias = spec.alias
    m.timestamp = ts_ms
    m.datatype = spec.datatype
    set_value(m, spec.datatype, value)
    props = m.properties
    if spec.unit:
        _prop(props, "engUnit", STRING, spec.unit)
    if spec.lo is not None and math.isfinite(spec.lo):
        _prop(props, "engLow", DOUBLE, spec.lo)
    if spec.hi is not None and math.isfinite(spec.hi):
        _prop(props, "engHigh", DOUBLE, spec.hi)
    if spec.writable:
        _prop(props, "writable", BOOLEAN, True)
    quality_properties(m, quality, reason)
    return m


def add_data_metric(
    payload: Any,
    spec: MetricSpec,
    value: Any,
    ts_ms: int,
    *,
    quality: int | None = None,
    reason: str | None = None,
    historical: bool = False,
) -> Any:
    """A DDATA metric by alias; `quality` given: the Quality properties are attached."""
    m = payload.metrics.add()
    m.alias = spec.alias
    m.timestamp = ts_ms
    if historical:
        m.is_historical = True
    set_value(m, spec.datatype, value)
    if quality is not None:
        quality_properties(m, quality, reason)
    return m


def node_birth(bdseq: int, ts_ms: int, seq: int = 0) -> bytes:
    """NBIRTH: bdSeq (Int64, the will's), Node Control/Rebirth (Boolean false), seq 0."""
    p = Payload(timestamp=ts_ms, seq=seq)
    p.metrics.add(name=BDSEQ, timestamp=ts_ms, datatype=INT64, long_value=bdseq)
    p.metrics.add(name=REBIRTH, timestamp=ts_ms, datatype=BOOLEAN, boolean_value=False)
    return p.SerializeToString()


def node_death(bdseq: int, ts_ms: int) -> bytes:
    """NDEATH (the MQTT will): the bdSeq of the session it ends, no seq."""
    p = Payload(timestamp=ts_ms)
    p.metrics.add(name=BDSEQ, datatype=INT64, long_value=bdseq)
    return p.SerializeToString()


def seq_field(seq: int) -> bytes:
    """The `Payload.seq` field alone, appended to a stored payload at send time."""
    return Payload(seq=seq).SerializeToString()


def decode(body: bytes) -> Any:
    """Parse a Payload; `CommandError` for bytes that are not one."""
    p = Payload()
    try:
        p.ParseFromString(body)
    except (DecodeError, ValueError) as exc:
        raise CommandError(f"not a Sparkplug B payload: {exc}") from None
    return p


def rebirth_requested(body: bytes) -> bool:
    """True when an NCMD payload sets Node Control/Rebirth to true; False for anything else
    (including garbage: a malformed command is ignored, never fatal)."""
    try:
        p = decode(body)
    except CommandError:
        return False
    return any(m.name == REBIRTH and m.boolean_value for m in p.metrics)


def command_metrics(body: bytes) -> Sequence[Any]:
    """The metrics of an NCMD/DCMD payload; `CommandError` when it cannot be parsed."""
    return list(decode(body).metrics)
