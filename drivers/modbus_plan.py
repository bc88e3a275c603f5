"""Modbus request planner: a poll group's points -> the fewest reads the device accepts.

Pure and run once per group before any connection.  Points are grouped by (unit id,
table), sorted by address and merged greedily into requests: a point joins the current
request when the request then still spans at most `max_read_registers` (`max_read_bits`)
and the hole before the point is at most `max_gap_registers` (`max_gap_bits`) unused
addresses.  A point never straddles two requests (a 32-bit value read in two halves by two
transactions could be torn), so 1,000 contiguous float32 tags need ceil(1000 / 62) = 17
reads of 124 registers, not 2000 / 125 = 16.

The plan also carries the decode classes (`drivers.modbus_codec.DecodeClass`) with gather
indices into one flat buffer holding all register requests back to back (and one for
bits), so decoding a whole group is a handful of numpy operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from drivers.base import Point
from drivers.modbus_codec import (
    BIT_TABLES,
    REGISTER_TABLES,
    DecodeClass,
    Slot,
    compile_classes,
    register_width,
)

if TYPE_CHECKING:
    from drivers.modbus_config import ModbusDevice

# Modbus application protocol limits for one read (FC01/02: 2000 bits, FC03/04: 125 regs)
MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000

FUNCTION: dict[str, tuple[int, str]] = {
    "coil": (1, "FC01 read_coils"),
    "discrete": (2, "FC02 read_discrete_inputs"),
    "holding": (3, "FC03 read_holding_registers"),
    "input": (4, "FC04 read_input_registers"),
}


class PlanError(ValueError):
    """A point cannot be planned (too wide for the device's maximum, wrong table/type)."""


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """Per-device request limits (YAML: max_read_registers, max_read_bits, max_gap_*)."""

    max_read_registers: int = MAX_READ_REGISTERS
    max_read_bits: int = MAX_READ_BITS
    max_gap_registers: int = 8
    max_gap_bits: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.max_read_registers <= MAX_READ_REGISTERS:
            raise PlanError(f"max_read_registers must be 1..{MAX_READ_REGISTERS}")
        if not 1 <= self.max_read_bits <= MAX_READ_BITS:
            raise PlanError(f"max_read_bits must be 1..{MAX_READ_BITS}")
        if self.max_gap_registers < 0 or self.max_gap_bits < 0:
            raise PlanError("max_gap_registers/max_gap_bits must be >= 0")

    @classmethod
    def from_device(cls, cfg: ModbusDevice) -> PlanLimits:
        """The limits a device's config sets."""
        return cls(
            max_read_registers=cfg.max_read_registers,
            max_read_bits=cfg.max_read_bits,
            max_gap_registers=cfg.max_gap_registers,
            max_gap_bits=cfg.max_gap_bits,
        )


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read: FC, unit, address range, and where its data lands in the flat buffer."""

    unit_id: int
    table: str
    start: int
    count: int
    buffer_offset: int  # into the register buffer (register tables) or bit buffer (bit tables)
    points: np.ndarray  # intp: group-relative indices of the points it covers
    tags: tuple[str, ...]

    @property
    def function_code(self) -> int:
        return FUNCTION[self.table][0]

    @property
    def function(self) -> str:
        return FUNCTION[self.table][1]

    @property
    def is_bits(self) -> bool:
        return self.table in BIT_TABLES


@dataclass(frozen=True, slots=True)
class ModbusPlan:
    """Everything a read of one poll group needs, computed once."""

    device: str
    group: str
    size: int  # number of points in the group (ReadResult length)
    requests: tuple[ReadRequest, ...]
    classes: tuple[DecodeClass, ...]
    n_registers: int  # length of the flat register buffer
    n_bits: int
    point_names: tuple[str, ...] = field(default=())
    text_positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp))

    @property
    def total_registers(self) -> int:
        return self.n_registers


def _width(p: Point) -> int:
    if p.table in BIT_TABLES:
        if p.dtype != "bool":
            raise PlanError(f"tag {p.name}: a {p.table} holds only bool, not {p.dtype}")
        return 1
    if p.table not in REGISTER_TABLES:
        raise PlanError(f"tag {p.name}: unknown table {p.table!r}")
    try:
        return register_width(p.dtype, p.length_registers)
    except ValueError as exc:
        raise PlanError(f"tag {p.name}: {exc}") from None


def plan_points(
    points: Sequence[Point],
    limits: PlanLimits | None = None,
    *,
    device: str = "",
    group: str = "",
) -> ModbusPlan:
    """Plan the reads for `points` (the group's points, in group order)."""
    limits = limits or PlanLimits()
    by_key: dict[tuple[int, str], list[tuple[int, int, int]]] = {}  # -> (address, end, pos)
    for pos, p in enumerate(points):
        if p.address is None or not 0 <= p.address <= 65535:
            raise PlanError(f"tag {p.name}: address must be 0..65535, got {p.address}")
        w = _width(p)
        bits = p.table in BIT_TABLES
        cap = limits.max_read_bits if bits else limits.max_read_registers
        if w > cap:
            raise PlanError(
                f"tag {p.name}: {w} registers exceed the device's maximum read of {cap}"
            )
        if p.address + w > 65536:
            raise PlanError(f"tag {p.name}: runs past address 65535")
        if p.dtype == "bit" and not (p.bit is not None and 0 <= p.bit <= 15):
            raise PlanError(f"tag {p.name}: a bit tag needs bit 0..15")
        by_key.setdefault((p.unit_id, p.table), []).append((p.address, p.address + w, pos))

    requests: list[ReadRequest] = []
    slots: list[Slot] = []
    reg_off = bit_off = 0
    for (unit_id, table), items in sorted(by_key.items()):
        bits = table in BIT_TABLES
        cap = limits.max_read_bits if bits else limits.max_read_registers
        gap = limits.max_gap_bits if bits else limits.max_gap_registers
        items.sort()
        runs: list[list[tuple[int, int, int]]] = []
        start = end = -1
        for item in items:
            a, e, _ = item
            if runs and a - end <= gap and max(end, e) - start <= cap:
                runs[-1].append(item)
                end = max(end, e)
            else:
                runs.append([item])
                start, end = a, e
        for run in runs:
            r_start = run[0][0]
            r_count = max(e for _, e, _ in run) - r_start
            base = bit_off if bits else reg_off
            positions = np.array(sorted({pos for _, _, pos in run}), dtype=np.intp)
            requests.append(
                ReadRequest(
                    unit_id=unit_id,
                    table=table,
                    start=r_start,
                    count=r_count,
                    buffer_offset=base,
                    points=positions,
                    tags=tuple(points[i].name for i in positions),
                )
            )
            for a, e, pos in run:
                p = points[pos]
                slots.append(
                    Slot(
                        out=pos,
                        dtype=p.dtype,
                        byte_order=p.byte_order,
                        word_order=p.word_order,
                        source="bit" if bits else "reg",
                        offset=base + a - r_start,
                        width=e - a,
                        bit=p.bit or 0,
                        scale=p.scale,
                        add=p.offset,
                    )
                )
            if bits:
                bit_off += r_count
            else:
                reg_off += r_count
    return ModbusPlan(
        device=device,
        group=group,
        size=len(points),
        requests=tuple(requests),
        classes=compile_classes(slots),
        n_registers=reg_off,
        n_bits=bit_off,
        point_names=tuple(p.name for p in points),
        text_positions=np.array(
            [i for i, p in enumerate(points) if p.dtype == "string"], dtype=np.intp
        ),
    )
