"""What comes back from a Modbus device, as the driver judges it: the error types a
request ends in (timeout, protocol mismatch, exception response) and the fast register
responses registered with pymodbus.  Pure (no I/O); `drivers/modbus.py` sends the requests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from drivers.base import (
    MODBUS_EXCEPTION_NAMES,
    ConnectError,
    ReadError,
    Reason,
    modbus_reason,
)

# gateway exceptions say the device behind the gateway is unreachable, not that it refused
COMM_LOST_EXCEPTIONS = (0x0A, 0x0B)


def exception_status(code: int) -> str:
    """`exception 0x02 ILLEGAL_DATA_ADDRESS` - the status text carried by errors."""
    return f"exception 0x{code:02X} {MODBUS_EXCEPTION_NAMES.get(code, 'unknown').upper()}"


class ResponseTimeout(ConnectError):
    """No (complete) answer within timeout_s after all retries."""

    reason = Reason.TIMEOUT

    def __init__(self, message: str, **ctx: Any) -> None:
        super().__init__(message, status="timeout", **ctx)


class ProtocolError(ReadError):
    """An answer that does not match the request (function code, unit, count, echo)."""


class DeviceException(ReadError):
    """The device answered with a Modbus exception response."""

    def __init__(self, message: str, *, code: int, **ctx: Any) -> None:
        self.code = code
        super().__init__(message, status=exception_status(code), reason=modbus_reason(code), **ctx)


class _FastRegisters:
    """Register-read responses decoded with one numpy call instead of a struct.unpack and
    list.append per register (pymodbus 3.16), and a short __str__ (pymodbus formats every
    PDU for a debug log line even when debug is off).  Registered per client through the
    documented `client.register()`; about 40 % of the client CPU of a 124-register read.
    `registers` is a big-endian uint16 numpy view."""

    registers: Any
    malformed: str = ""
    function_code: int
    dev_id: int

    def decode(self, data: bytes) -> None:
        # never raise here: pymodbus raises out of data_received, and asyncio then closes
        # the connection; a flagged PDU lets the driver reject just this answer
        n = int(data[0])
        self.malformed = ""
        if n >= len(data) or n % 2:
            self.malformed = f"byte count {n} in a frame of {len(data)} bytes"
            n = min(n, len(data) - 1) & ~1
        self.registers = np.frombuffer(data, ">u2", count=n // 2, offset=1)

    def __str__(self) -> str:
        return (
            f"{type(self).__name__}(dev_id={self.dev_id}, fc={self.function_code}, "
            f"{len(self.registers)} registers)"
        )


class FastHoldingResponse(_FastRegisters, ReadHoldingRegistersResponse):
    pass


class FastInputResponse(_FastRegisters, ReadInputRegistersResponse):
    pass
