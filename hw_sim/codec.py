"""Register encoding of the simulated PLCs (pure): engineering value <-> 16-bit words.

The layout rule, as on real devices: the value is packed big-endian, split into 16-bit
words; `word_order: little` reverses the word list (low word first), `byte_order: little`
swaps the two bytes inside each word.  Integers are raw = round(value / scale), clamped to
the type; NaN in an integer register serves the type's invalid marker (0x8000 for int16,
all ones for unsigned), as many field devices do for a failed sensor.
"""

from __future__ import annotations

import math
import struct

from hw_sim.pointmap import SimPoint

_FMT = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "int64": ">q",
    "uint64": ">Q",
    "float32": ">f",
    "float64": ">d",
}
_INT_RANGE = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


def _words(data: bytes, byte_order: str, word_order: str) -> list[int]:
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    return words


def _bytes(words: list[int], byte_order: str, word_order: str) -> bytes:
    if byte_order == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    if word_order == "little":
        words = list(reversed(words))
    return b"".join(w.to_bytes(2, "big") for w in words)


def encode(point: SimPoint, value: float | str) -> list[int]:
    """Registers serving `value` for a register-table point (not coils/discretes)."""
    t = point.type
    if t == "string":
        n = point.length_registers or 0
        raw = str(value).encode("ascii", "replace")[: 2 * n].ljust(2 * n, b"\x00")
        return _words(raw, point.byte_order, "big")
    if t == "bit":
        raise ValueError(f"{point.name}: bit points live inside another register")
    v = float(value)
    if t in ("float32", "float64"):
        data = struct.pack(_FMT[t], v / point.scale)
    else:
        lo, hi = _INT_RANGE[t]
        invalid = lo if lo < 0 else hi
        raw = invalid if math.isnan(v) else min(max(round(v / point.scale), lo), hi)
        data = struct.pack(_FMT[t], raw)
    return _words(data, point.byte_order, point.word_order)


def decode(point: SimPoint, words: list[int]) -> float | str:
    """Engineering value of a register-table point from its registers."""
    t = point.type
    if t == "string":
        return _bytes(list(words), point.byte_order, "big").rstrip(b"\x00").decode("ascii")
    if t == "bit":
        return float((words[0] >> (point.bit or 0)) & 1)
    data = _bytes(list(words), point.byte_order, point.word_order)
    return float(struct.unpack(_FMT[t], data)[0]) * point.scale
