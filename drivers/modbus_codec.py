"""Modbus register codecs: whole-block decoding with numpy, and the exact inverse for writes.

Pure: no sockets, no asyncio.  The planner (`drivers.modbus_plan`) compiles a poll group
into `DecodeClass`es once; at run time `decode_into` turns the registers of every request
of the group (one flat uint16 buffer) into engineering values with one numpy gather +
byteswap/view per (type, byte order, word order) class, so the per-tag cost is a few
nanoseconds rather than a Python call per tag.

Conventions (the YAML contract):
- `byte_order` is the order of the two bytes inside a 16-bit register (`big`: the high
  byte is sent first, the Modbus standard).
- `word_order` is the order of registers in a 32/64-bit value (`big`: the most significant
  register at the lowest address).  The four combinations are the classic ABCD (big/big),
  CDAB (big/little, "word swap"), BADC (little/big, "byte swap") and DCBA (little/little).
- `bit` numbers bits of the register value after the byte order is applied (bit 0 = LSB).
- Strings: `length_registers` registers, two characters per register, first character in
  the high byte (`byte_order: little` swaps each pair); `word_order` does not apply.
  Decoded as latin-1 (byte-exact) with trailing NULs and spaces stripped.
- int64/uint64 travel through the float64 value array, so they are exact up to 2**53.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# registers per value; "string" comes from length_registers
WIDTH: dict[str, int] = {
    "bool": 1,
    "bit": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}
# numpy type code of the numeric types
NUMPY_CODE: dict[str, str] = {
    "int16": "i2",
    "uint16": "u2",
    "int32": "i4",
    "uint32": "u4",
    "float32": "f4",
    "int64": "i8",
    "uint64": "u8",
    "float64": "f8",
}
ORDERS = ("big", "little")
ORDER_NAMES: dict[tuple[str, str], str] = {
    ("big", "big"): "ABCD",
    ("big", "little"): "CDAB",
    ("little", "big"): "BADC",
    ("little", "little"): "DCBA",
}
BIT_TABLES = ("coil", "discrete")
REGISTER_TABLES = ("holding", "input")


def register_width(dtype: str, length_registers: int | None = None) -> int:
    """Registers one value of `dtype` occupies (1 for bit-table bools: one bit)."""
    if dtype == "string":
        if not length_registers or length_registers < 1:
            raise ValueError("a string needs length_registers >= 1")
        return int(length_registers)
    try:
        return WIDTH[dtype]
    except KeyError:
        raise ValueError(f"unknown Modbus type {dtype!r}") from None


def _check_orders(byte_order: str, word_order: str) -> None:
    if byte_order not in ORDERS or word_order not in ORDERS:
        raise ValueError(f"byte_order/word_order must be big|little, got {byte_order}/{word_order}")


# --- decoding ---------------------------------------------------------------------------


def words_to_raw(words: np.ndarray, dtype: str, byte_order: str, word_order: str) -> np.ndarray:
    """Decode a (k, width) array of register values, in address order, into k raw values.

    Returns the native numpy type of `dtype` (bool for bool/bit is not handled here).
    One vectorised operation: column reversal for word order, byteswap through the
    big/little-endian uint16 view for byte order, then a reinterpreting view.
    """
    _check_orders(byte_order, word_order)
    code = NUMPY_CODE[dtype]
    mat = np.asarray(words, dtype=np.uint16)
    if mat.ndim == 1:
        mat = mat.reshape(1, -1)
    if word_order == "little":
        mat = mat[:, ::-1]
    wire = mat.astype(">u2" if byte_order == "big" else "<u2")  # contiguous copy
    return wire.view(">" + code).reshape(mat.shape[0])


def swap_bytes(words: np.ndarray) -> np.ndarray:
    """Swap the two bytes of each uint16."""
    w = np.asarray(words, dtype=np.uint16)
    return (w >> 8) | (w << 8)


def words_to_text(words: Sequence[int] | np.ndarray, byte_order: str = "big") -> str:
    """Decode string registers: two latin-1 characters per register, NUL/space padded."""
    w = np.asarray(words, dtype=np.uint16)
    raw = w.astype(">u2" if byte_order == "big" else "<u2").tobytes()
    return raw.decode("latin-1").rstrip("\x00 ")


@dataclass(frozen=True, slots=True)
class Slot:
    """One point's place in a read plan: where its registers/bits sit in the flat buffer."""

    out: int  # group-relative index in the ReadResult arrays
    dtype: str
    byte_order: str
    word_order: str
    source: str  # "reg" (register buffer) | "bit" (bit buffer)
    offset: int  # first register/bit of the value in the buffer
    width: int
    bit: int = 0
    scale: float = 1.0
    add: float = 0.0  # the YAML `offset` (engineering = raw * scale + add)


@dataclass(frozen=True, slots=True)
class DecodeClass:
    """All points of one (source, type, byte order, word order) class, decoded in one go."""

    source: str
    dtype: str
    byte_order: str
    word_order: str
    gather: np.ndarray  # intp (k, width): buffer indices, most significant register first
    out: np.ndarray  # intp (k,): group-relative output positions
    bit: np.ndarray | None  # uint16 (k,) bit numbers, for dtype "bit"
    scale: np.ndarray | None  # float64 (k,), None when all 1
    add: np.ndarray | None  # float64 (k,), None when all 0


def compile_classes(slots: Iterable[Slot]) -> tuple[DecodeClass, ...]:
    """Group slots into decode classes and precompute their gather indices (plan time)."""
    buckets: dict[tuple[str, str, str, str, int], list[Slot]] = {}
    for s in slots:
        _check_orders(s.byte_order, s.word_order)
        # word order is irrelevant for one-register types and strings: merge those classes
        wo = s.word_order if s.dtype in WIDTH and WIDTH[s.dtype] > 1 else "big"
        bo = s.byte_order if s.source == "reg" else "big"
        key = (s.source, s.dtype, bo, wo, s.width if s.dtype == "string" else 0)
        buckets.setdefault(key, []).append(s)
    classes = []
    for (source, dtype, bo, wo, _), group in sorted(buckets.items()):
        width = group[0].width
        cols = np.arange(width, dtype=np.intp)
        if wo == "little":
            cols = cols[::-1].copy()
        gather = np.array([s.offset for s in group], dtype=np.intp)[:, None] + cols[None, :]
        scale = np.array([s.scale for s in group], dtype=np.float64)
        add = np.array([s.add for s in group], dtype=np.float64)
        classes.append(
            DecodeClass(
                source=source,
                dtype=dtype,
                byte_order=bo,
                word_order=wo,
                gather=gather,
                out=np.array([s.out for s in group], dtype=np.intp),
                bit=np.array([s.bit for s in group], dtype=np.uint16) if dtype == "bit" else None,
                scale=None if np.all(scale == 1.0) else scale,
                add=None if np.all(add == 0.0) else add,
            )
        )
    return tuple(classes)


def decode_into(
    classes: Sequence[DecodeClass],
    regs: np.ndarray,
    bits: np.ndarray,
    values: np.ndarray,
    texts: dict[int, str] | None = None,
) -> None:
    """Decode every class from the flat `regs` (uint16) / `bits` (uint8) buffers.

    Writes engineering values into `values[out]` (float64) and strings into `texts`.
    Points whose request failed still get decoded from stale buffer contents; the caller
    owns quality and overwrites those values with NaN.
    """
    for c in classes:
        if c.dtype == "string":
            if texts is not None:
                for row, out in zip(c.gather, c.out, strict=True):
                    texts[int(out)] = words_to_text(regs[row], c.byte_order)
            values[c.out] = np.nan
            continue
        if c.source == "bit":
            raw = bits[c.gather[:, 0]].astype(np.float64)
        else:
            mat = regs[c.gather]
            if c.dtype == "bool":
                raw = (mat[:, 0] != 0).astype(np.float64)
            elif c.dtype == "bit":
                w = mat[:, 0]
                if c.byte_order == "little":
                    w = swap_bytes(w)
                raw = ((w >> c.bit) & 1).astype(np.float64)
            else:
                wire = mat.astype(">u2" if c.byte_order == "big" else "<u2")
                raw = wire.view(">" + NUMPY_CODE[c.dtype]).reshape(len(c.out)).astype(np.float64)
        if c.scale is not None:
            raw *= c.scale
        if c.add is not None:
            raw += c.add
        values[c.out] = raw


def decode_value(
    words: Sequence[int], dtype: str, byte_order: str = "big", word_order: str = "big", bit: int = 0
) -> float | int | bool | str:
    """Decode one value from its registers (address order); for probes and tests."""
    if dtype == "string":
        return words_to_text(words, byte_order)
    w = np.asarray(words, dtype=np.uint16)
    if dtype == "bool":
        return bool(w[0])
    if dtype == "bit":
        v = int(swap_bytes(w[:1])[0]) if byte_order == "little" else int(w[0])
        return bool((v >> bit) & 1)
    width = WIDTH[dtype]
    if len(w) < width:
        raise ValueError(f"{dtype} needs {width} registers, got {len(w)}")
    value: float | int = words_to_raw(w[:width], dtype, byte_order, word_order)[0].item()
    return value


# --- encoding (writes) -------------------------------------------------------------------

_INT_RANGE = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
_FLOAT_MAX = {
    "float32": float(np.finfo(np.float32).max),
    "float64": float(np.finfo(np.float64).max),
}


def to_raw(
    value: float | int | bool, dtype: str, scale: float = 1.0, add: float = 0.0
) -> int | float:
    """Engineering value -> raw device value: (value - offset) / scale, rounded for integers.

    Raises ValueError for NaN/inf, out-of-range integers and non-0/1 booleans, so a write
    that cannot be represented exactly enough is refused instead of wrapped around.
    """
    if dtype == "string":
        raise ValueError("strings have no numeric raw value")
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"cannot write a non-finite value ({value!r})")
    if scale == 0:
        raise ValueError("scale is 0: the raw value is undefined")
    raw = (v - add) / scale
    if dtype in ("bool", "bit"):
        if raw not in (0.0, 1.0):
            raise ValueError(f"a {dtype} takes 0 or 1, got {value!r}")
        return int(raw)
    if dtype in _INT_RANGE:
        lo, hi = _INT_RANGE[dtype]
        r = round(raw)
        if not lo <= r <= hi:
            raise ValueError(f"{value!r} -> raw {r} does not fit {dtype} ({lo}..{hi})")
        return int(r)
    if abs(raw) > _FLOAT_MAX[dtype]:
        raise ValueError(f"{value!r} overflows {dtype}")
    return raw


def encode_registers(
    dtype: str,
    raw: int | float | str,
    byte_order: str = "big",
    word_order: str = "big",
    length_registers: int | None = None,
) -> list[int]:
    """Raw value -> register values in address order; the exact inverse of decoding."""
    _check_orders(byte_order, word_order)
    if dtype == "string":
        n = register_width(dtype, length_registers)
        data = str(raw).encode("latin-1")
        if len(data) > 2 * n:
            raise ValueError(f"string of {len(data)} bytes does not fit {n} registers")
        data = data.ljust(2 * n, b"\x00")
        return [int(x) for x in np.frombuffer(data, ">u2" if byte_order == "big" else "<u2")]
    if dtype == "bool":
        return [1 if raw else 0]
    if dtype == "bit":
        raise ValueError("a bit inside a register is written with a mask (bit_masks)")
    if dtype in _INT_RANGE:
        lo, hi = _INT_RANGE[dtype]
        if not lo <= int(raw) <= hi:
            raise ValueError(f"raw {raw} does not fit {dtype}")
    data = np.array([raw], dtype=">" + NUMPY_CODE[dtype]).tobytes()
    words = np.frombuffer(data, ">u2" if byte_order == "big" else "<u2")
    if word_order == "little":
        words = words[::-1]
    return [int(x) for x in words]


def bit_masks(bit: int, value: bool, byte_order: str = "big") -> tuple[int, int]:
    """(and_mask, or_mask) for FC22 mask-write of one bit; result = (cur & and) | (or & ~and)."""
    if not 0 <= bit <= 15:
        raise ValueError(f"bit must be 0..15, got {bit}")
    wire_bit = bit ^ 8 if byte_order == "little" else bit
    m = 1 << wire_bit
    return 0xFFFF & ~m, m if value else 0


def encode_point(point: object, value: float | int | bool | str) -> list[int]:
    """Encode an engineering value for a `drivers.base.Point` into register values.

    For coils/discrete the list holds one 0/1; for `bit` use `bit_masks`.
    """
    dtype = point.dtype  # type: ignore[attr-defined]
    if dtype == "string":
        if not isinstance(value, str):
            raise ValueError(f"string tag needs a str, got {type(value).__name__}")
        return encode_registers(
            "string",
            value,
            point.byte_order,  # type: ignore[attr-defined]
            "big",
            point.length_registers,  # type: ignore[attr-defined]
        )
    raw = to_raw(value, dtype, point.scale, point.offset)  # type: ignore[attr-defined]
    if point.table in BIT_TABLES or dtype == "bit":  # type: ignore[attr-defined]
        return [int(raw)]
    return encode_registers(dtype, raw, point.byte_order, point.word_order)  # type: ignore[attr-defined]
