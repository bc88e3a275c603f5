"""A minimal hand-written protobuf encoder for the Sparkplug B `Payload` message.

Covered (field numbers from sparkplug_b.proto, Eclipse Tahu):
  Payload  { uint64 timestamp = 1; repeated Metric metrics = 2; uint64 seq = 3; }
  Metric   { string name = 1; uint64 alias = 2; uint64 timestamp = 3; uint32 datatype = 4;
             bool is_historical = 5; bool is_null = 7; PropertySet properties = 9;
             oneof value { uint32 int_value = 10; uint64 long_value = 11;
                           double double_value = 13; bool boolean_value = 14;
                           string string_value = 15; } }
  PropertySet   { repeated string keys = 1; repeated PropertyValue values = 2; }
  PropertyValue { uint32 type = 1; bool is_null = 2; uint32 int_value = 3; }
Not covered: uuid/body, float/bytes values, DataSet, Template, MetaData, extensions.
Decoding: only what an NCMD "Node Control/Rebirth" request needs (`rebirth_requested`).

Protobuf fields may appear in any order and a decoder keeps the last value of a scalar, so
the publisher stores payloads without `seq` and appends `seq_field(n)` when it sends: the
Sparkplug sequence belongs to the MQTT session, not to the moment a frame was queued.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Sequence

# Sparkplug B DataType codes used here
INT32 = 3
INT64 = 4
UINT64 = 8
DOUBLE = 10
BOOLEAN = 11
STRING = 12

# edgeloop Quality -> OPC-style quality codes, sent as the "Quality" metric property (Int32)
# when a value is not good (absent means good, as Ignition and most hosts read it).
SPB_QUALITY = {0: 192, 1: 0, 2: 0, 3: 0, 4: 64}

_WT_VARINT, _WT_I64, _WT_LEN = 0, 1, 2


def varint(n: int) -> bytes:
    """Base-128 varint of a non-negative int (negatives as 64-bit two's complement)."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return varint((field << 3) | wire)


def f_varint(field: int, n: int) -> bytes:
    return _key(field, _WT_VARINT) + varint(int(n))


def f_double(field: int, x: float) -> bytes:
    return _key(field, _WT_I64) + struct.pack("<d", x)


def f_bytes(field: int, b: bytes) -> bytes:
    return _key(field, _WT_LEN) + varint(len(b)) + b


def f_string(field: int, s: str) -> bytes:
    return f_bytes(field, s.encode("utf-8"))


@functools.lru_cache(maxsize=65536)
def _alias_field(alias: int) -> bytes:
    return f_varint(2, alias)


def seq_field(seq: int) -> bytes:
    """The `Payload.seq` field, appended to a stored payload at send time."""
    return f_varint(3, seq)


def property_set(props: Iterable[tuple[str, int, int]]) -> bytes:
    """PropertySet of (key, datatype, int value) entries (Int32/UInt32 properties only)."""
    keys = b""
    values = b""
    for k, dtype, v in props:
        keys += f_string(1, k)
        values += f_bytes(2, f_varint(1, dtype) + f_varint(3, v & 0xFFFFFFFF))
    return keys + values


def metric(
    *,
    name: str | None = None,
    alias: int | None = None,
    timestamp_ms: int | None = None,
    datatype: int | None = None,
    value: float | int | bool | str | None = None,
    is_null: bool = False,
    historical: bool = False,
    properties: bytes = b"",
    send_datatype: bool = True,
) -> bytes:
    """Encode one Metric; `value` goes to the oneof member its datatype names.

    Births must carry the datatype; DDATA may leave it out (`send_datatype=False`), the
    host knows it from the birth by alias.
    """
    out = b""
    if name is not None:
        out += f_string(1, name)
    if alias is not None:
        out += f_varint(2, alias)
    if timestamp_ms is not None:
        out += f_varint(3, timestamp_ms)
    if datatype is not None and send_datatype:
        out += f_varint(4, datatype)
    if historical:
        out += f_varint(5, 1)
    if is_null or value is None:
        out += f_varint(7, 1)
    if properties:
        out += f_bytes(9, properties)
    if not (is_null or value is None):
        if datatype == DOUBLE:
            out += f_double(13, float(value))
        elif datatype == BOOLEAN:
            out += f_varint(14, 1 if value else 0)
        elif datatype in (INT64, UINT64):
            out += f_varint(11, int(value))
        elif datatype == INT32:
            out += f_varint(10, int(value) & 0xFFFFFFFF)
        elif datatype == STRING:
            out += f_string(15, str(value))
        else:
            raise ValueError(f"datatype {datatype} not covered by this encoder")
    return out


def payload(timestamp_ms: int, metrics: Sequence[bytes], seq: int | None = None) -> bytes:
    """Encode a Payload from already-encoded metrics."""
    parts = [f_varint(1, timestamp_ms)]
    for m in metrics:
        parts += (b"\x12", varint(len(m)), m)
    if seq is not None:
        parts.append(seq_field(seq))
    return b"".join(parts)


def data_metrics(
    names: Sequence[str],
    aliases: Sequence[int],
    values: Sequence[float],
    quality: Sequence[int],
    timestamp_ms: int,
    *,
    with_names: bool = False,
    historical: bool = False,
) -> list[bytes]:
    """Double metrics of one frame (DDATA: aliases only; DBIRTH: names and datatype too).

    `historical` marks store-and-forward data (`is_historical`): a host records it in its
    history without taking it for the current value.

    The common case (good quality, finite value) is assembled from precomputed pieces, as
    this runs for every tag of every frame.
    """
    ts = f_varint(3, timestamp_ms) + (b"\x28\x01" if historical else b"")
    dbl = struct.pack(f"<{len(values)}d", *values)
    out = []
    for i, v in enumerate(values):
        q = int(quality[i])
        if q == 0 and v == v and not with_names:
            body = _alias_field(int(aliases[i])) + ts + b"\x69" + dbl[8 * i : 8 * i + 8]
            out.append(body)
            continue
        props = property_set([("Quality", INT32, SPB_QUALITY.get(q, 0))]) if q else b""
        out.append(
            metric(
                name=names[i] if with_names else None,
                alias=int(aliases[i]),
                timestamp_ms=timestamp_ms,
                datatype=DOUBLE,
                value=None if v != v else float(v),
                properties=props,
                send_datatype=with_names,
                historical=historical,
            )
        )
    return out


# --- decoding: just enough for NCMD "Node Control/Rebirth" ---------------------------------

REBIRTH = "Node Control/Rebirth"


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if i >= len(b):
            raise ValueError("truncated varint")
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return n, i
        if shift > 70:
            raise ValueError("varint too long")


def _fields(b: bytes) -> Iterable[tuple[int, int | bytes]]:
    """(field, value) pairs of one message level; unknown wire types are an error."""
    i = 0
    while i < len(b):
        key, i = _read_varint(b, i)
        field, wt = key >> 3, key & 7
        if wt == _WT_VARINT:
            v, i = _read_varint(b, i)
            yield field, v
        elif wt == _WT_I64:
            i += 8
        elif wt == _WT_LEN:
            n, i = _read_varint(b, i)
            if i + n > len(b):
                raise ValueError("truncated field")
            yield field, b[i : i + n]
            i += n
        elif wt == 5:  # 32-bit (float)
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wt}")


def rebirth_requested(body: bytes) -> bool:
    """True when an NCMD payload sets Node Control/Rebirth to true; False for anything else
    (including garbage: a malformed command is ignored, never fatal)."""
    try:
        for field, metric_bytes in _fields(body):
            if field != 2 or not isinstance(metric_bytes, bytes):
                continue
            name, value = None, False
            for f, v in _fields(metric_bytes):
                if f == 1 and isinstance(v, bytes):
                    name = v.decode("utf-8", "replace")
                elif f == 14:
                    value = bool(v)
            if name == REBIRTH and value:
                return True
    except ValueError:
        return False
    return False
