"""The Modbus driver's config: tag, poll group and device models, and how a tag becomes a
`Point`.  Registered in `drivers/registry.py`; the I/O lives in `drivers/modbus.py`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from drivers.base import Point
from drivers.config_common import (
    DeviceBase,
    GroupBase,
    Path_,
    Problems,
    TagBase,
    TagType,
    raise_if,
)
from drivers.modbus_codec import BIT_TABLES, register_width
from drivers.registry import DriverSpec

Table = Literal["holding", "input", "coil", "discrete"]
Order = Literal["big", "little"]

READ_ONLY_TABLES = ("input", "discrete")
SERIAL_KEYS = ("baudrate", "parity", "stopbits", "bytesize")


class ModbusTag(TagBase):
    """One Modbus value: where it lives (table, address, unit) and how to decode it."""

    ADDRESSED_BY: ClassVar[str] = "table and address"

    table: Table = Field(description="Modbus table: holding | input | coil | discrete.")
    address: int = Field(
        ge=0, le=65535, description="0-based protocol address (manual's 40001 = holding 0)."
    )
    type: TagType | None = Field(
        None,
        description="Value type; default bool for coil/discrete, required for holding/input.",
    )
    bit: int | None = Field(None, ge=0, le=15, description="Bit 0..15 (LSB=0) for type bit.")
    length_registers: int | None = Field(
        None, ge=1, le=125, description="Registers holding a string (2 characters each)."
    )
    byte_order: Order | None = Field(None, description="Overrides the device's byte_order.")
    word_order: Order | None = Field(None, description="Overrides the device's word_order.")
    unit_id: int | None = Field(None, ge=0, le=255, description="Overrides the device's unit_id.")

    @property
    def dtype(self) -> str:
        """The effective type: bool for bit tables when not given."""
        if self.type is None and self.table in BIT_TABLES:
            return "bool"
        return self.type or ""

    @property
    def width(self) -> int:
        return register_width(self.dtype, self.length_registers)

    @model_validator(mode="after")
    def _check(self) -> ModbusTag:
        out = self._common_problems()
        t = self.type
        if self.table in BIT_TABLES:
            if t not in (None, "bool"):
                out.append((("type",), f"must be bool for table {self.table} (got {t})"))
        elif t is None:
            out.append((("type",), f"required for table {self.table}"))
        elif t == "bool":
            out.append(
                (
                    ("type",),
                    f"bool needs table coil or discrete; for a bit of a {self.table} "
                    "register use type: bit with bit: 0..15",
                )
            )
        if t == "bit" and self.bit is None:
            out.append((("bit",), "required for type bit (0..15)"))
        if self.bit is not None and t != "bit":
            out.append((("bit",), "only allowed with type: bit"))
        if t == "string" and self.length_registers is None:
            out.append((("length_registers",), "required for type string"))
        if self.length_registers is not None and t != "string":
            out.append((("length_registers",), "only allowed with type: string"))
        if self.writable and self.table in READ_ONLY_TABLES:
            out.append((("writable",), f"table {self.table} is read-only"))
        dtype = self.dtype
        if dtype and (dtype != "string" or self.length_registers):
            end = self.address + self.width
            if end > 65536:
                out.append(
                    (
                        ("address",),
                        f"{dtype} at {self.address} needs {self.width} registers and runs "
                        "past 65535",
                    )
                )
        if self.table in BIT_TABLES and (self.byte_order or self.word_order):
            key = "byte_order" if self.byte_order else "word_order"
            out.append(((key,), f"has no meaning for table {self.table}"))
        raise_if(out)
        return self


class ModbusPollGroup(GroupBase):
    """Tags read together at one rate; the planner merges them into few requests."""

    mode: Literal["poll"] = Field("poll", description="Modbus groups are always polled.")
    tags: list[ModbusTag] = Field(min_length=1, description="Tags read together at this interval.")


def _transport_needs(schema: dict[str, Any]) -> None:
    """The schema says what `_check` enforces per transport, so editors flag it too."""
    schema["if"] = {"properties": {"transport": {"const": "rtu"}}, "required": ["transport"]}
    schema["then"] = {
        "required": ["serial_port"],
        "properties": {
            "serial_port": {"type": "string"},
            "unit_id": {"minimum": 1, "maximum": 247},
        },
    }
    schema["else"] = {"required": ["host"], "properties": {"host": {"type": "string"}}}


# Modicon references: 3xxxx input registers, 4xxxx holding registers, 1xxxx discrete
# inputs.  (Six-digit references are above 65535 and refused as addresses anyway.)
_MODICON = {"holding": 40001, "input": 30001, "discrete": 10001}


class ModbusDevice(DeviceBase):
    """A Modbus TCP server or a Modbus RTU serial line (several units may share either)."""

    model_config = ConfigDict(json_schema_extra=_transport_needs)

    driver: Literal["modbus"] = Field(description="modbus: Modbus TCP or RTU.")
    transport: Literal["tcp", "rtu"] = Field(
        "tcp", description="tcp (needs host) | rtu (serial line, needs serial_port)."
    )
    host: str | None = Field(
        None, min_length=1, description="Host name or IP address of the device (tcp)."
    )
    port: int = Field(502, ge=1, le=65535, description="TCP port of the device (tcp).")
    serial_port: str | None = Field(
        None, min_length=1, description="Serial device, e.g. /dev/ttyUSB0 (rtu)."
    )
    baudrate: int = Field(19200, ge=300, le=4_000_000, description="Serial speed in bit/s (rtu).")
    parity: Literal["N", "E", "O"] = Field("N", description="Serial parity N | E | O (rtu).")
    stopbits: Literal[1, 2] = Field(1, description="Serial stop bits per character (rtu).")
    bytesize: Literal[7, 8] = Field(8, description="Serial data bits per character (rtu).")
    unit_id: int = Field(1, ge=0, le=255, description="Default unit (slave) id of the tags.")
    byte_order: Order = Field("big", description="Byte order inside a 16-bit register.")
    word_order: Order = Field("big", description="Register order of 32/64-bit values.")
    timeout_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Response timeout per request; omitted: 1 s, or 80 % of the fastest poll "
        "group's interval when that is shorter than 1 s.",
    )
    retries: int = Field(
        1, ge=0, le=10, description="Retries of a request after a timeout or garbled answer."
    )
    max_read_registers: int = Field(
        125, ge=1, le=125, description="Largest register read; some devices accept less."
    )
    max_read_bits: int = Field(
        2000, ge=1, le=2000, description="Most coils/discrete inputs in one read."
    )
    max_gap_registers: int = Field(
        8, ge=0, le=124, description="Unused registers the planner may read through to merge."
    )
    max_gap_bits: int = Field(
        32, ge=0, le=1999, description="Unused bits the planner may read through to merge."
    )
    poll_groups: list[ModbusPollGroup] = Field(
        min_length=1, description="Groups of tags, each polled at its own interval."
    )

    @model_validator(mode="after")
    def _check(self) -> ModbusDevice:
        out = self._device_problems()
        if self.transport == "tcp" and not self.host:
            out.append((("host",), "required for transport tcp"))
        if self.transport == "rtu":
            if not self.serial_port:
                out.append((("serial_port",), "required for transport rtu"))
            if not 1 <= self.unit_id <= 247:
                out.append((("unit_id",), "must be 1..247 on a serial line"))
        # Overlaps per (unit, table): words by register range, bit tags by (register, bit).
        # Bit tags may share a register with each other and with a word tag that reads the
        # whole status word; the same bit twice, or two words sharing a register, is a mistake.
        # Word tags by (unit, table), then by start address: an earlier tag that overlaps
        # [lo, hi] starts within the widest width seen before lo, so each tag looks at a
        # few addresses instead of every earlier tag (2,000 tags: 2 million comparisons).
        words: dict[tuple[int, str], dict[int, list[tuple[int, int, int, str]]]] = {}
        widest: dict[tuple[int, str], int] = {}
        order = 0
        bits: dict[tuple[int, str, int, int], tuple[str, Path_]] = {}
        for gi, g in enumerate(self.poll_groups):
            for ti, t in enumerate(g.tags):
                path: Path_ = ("poll_groups", gi, "tags", ti)
                unit = self.unit_id if t.unit_id is None else t.unit_id
                if self.transport == "rtu" and t.unit_id is not None and not 1 <= unit <= 247:
                    out.append(((*path, "unit_id"), "must be 1..247 on a serial line"))
                if t.dtype == "bit":
                    key = (unit, t.table, t.address, t.bit or 0)
                    if key in bits:
                        out.append(
                            (
                                (*path, "bit"),
                                f"{t.table} {t.address} bit {t.bit} is already tag "
                                f"{bits[key][0]!r}",
                            )
                        )
                    else:
                        bits[key] = (t.name, path)
                    continue
                if not t.dtype or t.width <= 0:
                    continue
                limit = self.max_read_bits if t.table in BIT_TABLES else self.max_read_registers
                if t.width > limit:
                    out.append(
                        (
                            (*path, "length_registers"),
                            f"{t.width} registers do not fit one read (max_read_registers {limit})",
                        )
                    )
                lo, hi = t.address, t.address + t.width - 1
                span = (unit, t.table)
                starts = words.setdefault(span, {})
                w = widest.get(span, 0)
                # the first earlier tag (in file order) that overlaps, as a scan would find
                hits = [
                    o
                    for a in range(max(0, lo - w + 1), hi + 1)
                    for o in starts.get(a, ())
                    if lo <= o[2]
                ]
                if hits:
                    _, olo, ohi, oname = min(hits)
                    where = f"{olo}" if olo == ohi else f"{olo}..{ohi}"
                    out.append(
                        (
                            (*path, "address"),
                            f"{t.table} {lo}..{hi} overlaps tag {oname!r} ({t.table} "
                            f"{where}, unit {unit})"
                            if lo != hi
                            else f"{t.table} {lo} overlaps tag {oname!r} ({t.table} "
                            f"{where}, unit {unit})",
                        )
                    )
                starts.setdefault(lo, []).append((order, lo, hi, t.name))
                widest[span] = max(w, t.width)
                order += 1
        raise_if(out)
        return self

    def notes(self) -> Problems:
        """A tag address that looks like a Modicon reference of its own table (a PLC
        manual's "40001" is holding register 0 on the wire), naming the 0-based address."""
        out: Problems = []
        for j, g in enumerate(self.poll_groups):
            for k, tag in enumerate(g.tags):
                base = _MODICON.get(tag.table)
                if base is None or not base <= tag.address < base + 9999:
                    continue
                out.append(
                    (
                        ("poll_groups", j, "tags", k, "address"),
                        f"{tag.address} is read as {tag.table} register {tag.address} "
                        f"(0-based, on the wire); if it is a Modicon reference ({tag.address} "
                        f"in a PLC manual), the register is `address: {tag.address - base}`",
                    )
                )
        return out

    def exclusive_links(self) -> frozenset[str]:
        """An RTU device's serial port (the bus has one master); TCP connections overlap."""
        if self.transport == "rtu" and self.serial_port:
            return frozenset({self.serial_port})
        return frozenset()

    def point(self, tag: ModbusTag, index: int) -> Point:
        """Tag overrides of byte/word order and unit id fall back to the device's."""
        return Point(
            index=index,
            dtype=tag.dtype,
            table=tag.table,
            address=tag.address,
            bit=tag.bit,
            length_registers=tag.length_registers,
            byte_order=tag.byte_order or self.byte_order,
            word_order=tag.word_order or self.word_order,
            unit_id=self.unit_id if tag.unit_id is None else tag.unit_id,
            **tag.engineering(),
        )

    @classmethod
    def check_together(cls, devices: Sequence[tuple[int, DeviceBase]]) -> Problems:
        """Devices on one serial port share one wire: its settings must agree (one frame on
        the line at a time is the driver's job; one baudrate per wire is the config's)."""
        out: Problems = []
        first: dict[str, tuple[int, ModbusDevice]] = {}
        for di, d in devices:
            if not isinstance(d, ModbusDevice) or d.transport != "rtu" or not d.serial_port:
                continue
            key = os.path.realpath(d.serial_port)
            if key not in first:
                first[key] = (di, d)
                continue
            oi, other = first[key]
            for k in SERIAL_KEYS:
                if getattr(d, k) != getattr(other, k):
                    out.append(
                        (
                            ("devices", di, k),
                            f"{getattr(d, k)} differs from devices[{oi}] ({other.name}: "
                            f"{getattr(other, k)}) on the same serial_port {d.serial_port}: "
                            "one line has one setting",
                        )
                    )
        return out


SPEC = DriverSpec(
    name="modbus", device=ModbusDevice, factory="drivers.modbus:create", label="Modbus"
)
