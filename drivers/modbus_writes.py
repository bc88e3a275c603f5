"""Modbus writes compiled before anything is sent (pure): a batch of engineering values
becomes checked, encoded `WriteOp`s (FC05/06/15/16/22), or is refused as a whole."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from drivers.base import Point, WriteRefused
from drivers.config_common import bounds_refusal
from drivers.modbus_codec import bit_masks, encode_point


@dataclass(frozen=True, slots=True)
class WriteOp:
    """One write request compiled from one or more points (contiguous ones are merged)."""

    unit_id: int
    function_code: int  # 5, 6, 15, 16 or 22
    address: int
    values: tuple[int, ...]  # registers, or 0/1 per coil; FC22: (and_mask, or_mask)
    tags: tuple[str, ...]


WRITE_NAMES = {
    5: "FC05 write_coil",
    6: "FC06 write_register",
    15: "FC15 write_coils",
    16: "FC16 write_registers",
    22: "FC22 mask_write_register",
}


def compile_writes(
    device: str, points: Sequence[tuple[Point, float | int | bool | str]]
) -> list[WriteOp]:
    """Validate and encode a write batch; refuses the whole batch before anything is sent.

    Each point must be writable, in a writable table (holding/coil) and within its
    min/max; the engineering value must be representable in the tag's type.  Contiguous
    registers of one unit are merged into one FC16, contiguous coils into one FC15; one
    register goes as FC06, one coil as FC05, a bit inside a register as FC22 mask write.
    """
    items: list[tuple[int, str, int, int, Point, list[int]]] = []
    for p, value in points:
        ctx: dict[str, Any] = {"device": device, "unit_id": p.unit_id, "address": p.address}
        if not p.writable:
            raise WriteRefused(f"tag {p.name} is not writable", **ctx)
        if p.table not in ("holding", "coil"):
            raise WriteRefused(f"tag {p.name}: the {p.table} table is read-only", **ctx)
        if not isinstance(value, str):
            v = float(value)
            if not np.isfinite(v):
                raise WriteRefused(f"tag {p.name}: refusing to write {value!r}", **ctx)
            why = bounds_refusal(v, p.min, p.max)
            if why is not None:
                raise WriteRefused(f"tag {p.name}: {why}", **ctx)
        try:
            regs = encode_point(p, value)
        except (ValueError, TypeError) as exc:
            raise WriteRefused(f"tag {p.name}: {exc}", **ctx) from exc
        assert p.address is not None
        items.append((p.unit_id, p.table, p.address, len(regs), p, regs))

    ops: list[WriteOp] = []
    items.sort(key=lambda t: (t[0], t[1], t[2], t[4].dtype == "bit"))
    run: list[tuple[int, str, int, int, Point, list[int]]] = []

    def flush() -> None:
        if not run:
            return
        unit, table, start = run[0][0], run[0][1], run[0][2]
        values = tuple(v for it in run for v in it[5])
        tags = tuple(it[4].name for it in run)
        single, multi = (5, 15) if table == "coil" else (6, 16)
        fc = single if len(values) == 1 else multi
        ops.append(WriteOp(unit, fc, start, values, tags))
        run.clear()

    for it in items:
        unit, table, address, width, p, regs = it
        if p.dtype == "bit":
            flush()
            and_m, or_m = bit_masks(p.bit or 0, bool(regs[0]), p.byte_order)
            ops.append(WriteOp(unit, 22, address, (and_m, or_m), (p.name,)))
            continue
        if run:
            last = run[-1]
            end = last[2] + last[3]
            if (unit, table) == (last[0], last[1]) and address < end:
                raise WriteRefused(
                    f"tags {last[4].name} and {p.name} overlap in one write",
                    device=device,
                    unit_id=unit,
                    address=address,
                )
            limit = 123 if table == "holding" else 1968  # FC16 / FC15 maxima
            if (
                (unit, table) != (last[0], last[1])
                or address != end
                or sum(len(r[5]) for r in run) + width > limit
            ):
                flush()
        run.append(it)
    flush()
    return ops
