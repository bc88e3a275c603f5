"""The contract between the acquisition layer and every protocol driver.

A driver never sees YAML or pydantic: the config compiler turns the file into frozen
`Point`s grouped into `GroupSpec`s, and the driver turns each group into its own read plan
once, before any connection is opened.  Everything here is plain data so drivers, the
compiler and the tests can share it without importing each other.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


class Quality(enum.IntEnum):
    """Per-tag quality code, stored as uint8 in the tag table's `quality` array."""

    GOOD = 0
    BAD = 1  # the device answered but the value is unusable (exception, decode error, NaN)
    STALE = 2  # the last good value is older than the staleness limit (overrun, slow device)
    COMM_LOST = 3  # no answer from the device (timeout, refused, disconnected)
    UNCERTAIN = 4  # OPC UA Uncertain status and the like


QUALITY_NAMES = {q.value: q.name.lower() for q in Quality}


class Reason(enum.IntEnum):
    """Why a tag is not good: a uint16 code stored beside its quality, end to end (tag
    table, history, MQTT frames, `read --json`, /readyz).

    One number space, so a consumer needs no protocol to read it: codes below 0x100 are
    edgeloop's own (below); `0x100 + n` is Modbus exception `n` (0x102: illegal data
    address); codes from 0x4000 up are an OPC UA StatusCode's upper 16 bits (0x8034:
    BadNodeIdUnknown, 0x4xxx Uncertain...).  `reason_name` spells any of them.
    """

    NONE = 0
    NO_DATA = 1  # not read since start-up
    TIMEOUT = 2  # no (complete) answer within the timeout
    COMM_LOST = 3  # no connection: refused, closed, device down
    PROTOCOL_ERROR = 4  # an answer that does not match the request
    DECODE_ERROR = 5  # the value is not a finite number of the configured type
    OUT_OF_RANGE = 6  # more than a whole span outside min..max: type, order or scale
    STALE = 7  # no fresh sample within the group's staleness limit
    DRIVER_ERROR = 8  # the driver failed in an unexpected way


MODBUS_EXCEPTION_BASE = 0x100
OPCUA_STATUS_BASE = 0x4000
MODBUS_EXCEPTION_NAMES = {
    0x01: "illegal_function",
    0x02: "illegal_data_address",
    0x03: "illegal_data_value",
    0x04: "device_failure",
    0x05: "acknowledge",
    0x06: "device_busy",
    0x08: "memory_parity_error",
    0x0A: "gateway_path_unavailable",
    0x0B: "gateway_target_no_response",
}


def modbus_reason(exception_code: int) -> int:
    """The reason code of a Modbus exception response."""
    return MODBUS_EXCEPTION_BASE + (int(exception_code) & 0xFF)


def opcua_reason(status_code: int) -> int:
    """The reason code of a non-good OPC UA StatusCode (its upper 16 bits)."""
    return (int(status_code) >> 16) & 0xFFFF


def reason_name(code: int) -> str:
    """`timeout`, `modbus_exception_2_illegal_data_address`, `opcua_BadNodeIdUnknown`."""
    code = int(code)
    if code >= OPCUA_STATUS_BASE:
        try:  # asyncua is loaded only when a config has an OPC UA device
            from asyncua.ua.status_codes import get_name_and_doc

            name, doc = get_name_and_doc(code << 16)
        except Exception:
            name, doc = "", ""
        known = name and not doc.startswith("Unknown StatusCode")
        return f"opcua_{name}" if known else f"opcua_0x{code:04X}"
    if code >= MODBUS_EXCEPTION_BASE:
        n = code - MODBUS_EXCEPTION_BASE
        return f"modbus_exception_{n}_{MODBUS_EXCEPTION_NAMES.get(n, 'unknown')}"
    try:
        return Reason(code).name.lower()
    except ValueError:
        return f"reason_{code}"


@dataclass(frozen=True, slots=True)
class Point:
    """One configured tag as a driver needs it; `index` is its fixed slot in the tag table."""

    name: str
    index: int
    dtype: str  # bool|bit|int16|uint16|int32|uint32|int64|uint64|float32|float64|string
    unit: str = ""
    # Modbus addressing
    table: str | None = None  # holding|input|coil|discrete
    address: int | None = None  # 0-based protocol address
    bit: int | None = None  # 0..15, only for dtype == "bit"
    length_registers: int | None = None  # only for dtype == "string"
    byte_order: str = "big"  # bytes inside a 16-bit register: big|little
    word_order: str = "big"  # register order of 32/64-bit values: big|little
    unit_id: int = 1
    # OPC UA addressing
    node: str | None = None  # e.g. "ns=2;s=Pump.VibrationRMS"
    # any other driver's address, hashable (a CSV replay: the column name); the Modbus and
    # OPC UA fields above stay flat because the Modbus planner and decoder read them per poll
    ref: Hashable | None = None
    # engineering
    scale: float = 1.0
    offset: float = 0.0
    writable: bool = False
    min: float | None = None
    max: float | None = None
    max_rate_per_s: float | None = None


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """One poll group: its points are contiguous in the tag table, `start:stop`."""

    device: str
    name: str
    interval_ms: int
    mode: str  # poll|subscribe
    start: int
    stop: int
    points: tuple[Point, ...]
    options: dict[str, Any] = field(default_factory=dict)  # driver-specific group settings

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(slots=True)
class ReadResult:
    """Values in engineering units (scale/offset applied), one per point of the group."""

    values: np.ndarray  # float64, len == group.size; NaN where not numeric / not read
    quality: np.ndarray  # uint8 Quality codes, len == group.size
    texts: dict[int, str] = field(default_factory=dict)  # group-relative index -> string value
    # uint16 `Reason` codes, len == group.size (0 where good); None: derived from quality
    reason: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One request a read plan will send, for `edgeloop plan` and the planner tests."""

    device: str
    unit_id: int
    function: str  # e.g. "FC03 read_holding_registers" or "OPC UA Read"
    start: int | None
    count: int
    tags: tuple[str, ...]


# --- exceptions: one root for the driver layer, always with device context --------------


class DriverError(Exception):
    """Root of the driver layer; carries the device and, where known, unit/address/status,
    and the `Reason` code the tags it hits take."""

    reason: int = Reason.DRIVER_ERROR

    def __init__(
        self,
        message: str,
        *,
        device: str = "",
        unit_id: int | None = None,
        address: int | None = None,
        status: str | None = None,
        reason: int | None = None,
    ) -> None:
        if reason is not None:
            self.reason = int(reason)
        self.device = device
        self.unit_id = unit_id
        self.address = address
        self.status = status
        ctx = [f"device={device}"] if device else []
        if unit_id is not None:
            ctx.append(f"unit={unit_id}")
        if address is not None:
            ctx.append(f"address={address}")
        if status:
            ctx.append(f"status={status}")
        super().__init__(f"{message} ({', '.join(ctx)})" if ctx else message)


class ConnectError(DriverError):
    """The device could not be reached or the session could not be established."""

    reason = Reason.COMM_LOST


class ReadError(DriverError):
    """A read failed or its response was unusable (exception code, garbage, short)."""

    reason = Reason.PROTOCOL_ERROR


class WriteError(DriverError):
    """A write was refused by the device or failed on the wire."""


class WriteRefused(DriverError):
    """A write was refused locally (not writable, out of bounds) and never sent."""


# --- the protocol and the registry ---------------------------------------------------------


@runtime_checkable
class Driver(Protocol):
    """What the poll scheduler needs from a protocol.

    `plan` is pure and runs at compile time; the async methods do the I/O.  `read` raises a
    `DriverError` subclass when the whole group failed; per-point failures come back as
    quality codes.  Implementations keep at most one request in flight per connection.
    """

    name: str

    def plan(self, group: GroupSpec) -> Any: ...

    def describe(self, plan: Any) -> list[PlannedRequest]: ...

    async def connect(self) -> None: ...

    async def read(self, plan: Any) -> ReadResult: ...

    async def write(self, points: Sequence[tuple[Point, float | int | bool | str]]) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class ReportsMetrics(Protocol):
    """A driver that counts something of its own (OPC UA: dropped notifications) into the
    service's metrics registry; the service binds it once the driver is built."""

    def bind_metrics(self, metrics: Any) -> None: ...


def create_driver(device_cfg: Any, groups: Sequence[GroupSpec]) -> Driver:
    """Build the driver named by `device_cfg.driver` (`drivers.registry`; lazy imports keep
    start-up light)."""
    from drivers.registry import create_driver as create

    return create(device_cfg, groups)
