"""Modbus TCP/RTU driver over pymodbus 3.16: checked requests, planned reads, guarded writes.

The pure parts live beside this file (`modbus_plan` plans the reads, `modbus_codec`
decodes and encodes); this module only moves bytes and refuses to trust them:

- One connection per device, one request in flight on it (an `asyncio.Lock`); several
  unit ids share the connection (a TCP gateway or an RTU line).
- Every response is checked: function code (pymodbus 3.16 hands an FC04 answer to an
  FC03 request back as success), unit id, register/bit count, write echoes.  Exception
  responses mark that request's points BAD (gateway exceptions 0x0A/0x0B: COMM_LOST)
  and the rest of the group is still read.
- After a timeout or a malformed/mismatched response the connection is dropped and
  re-opened before the next request: a late reply would otherwise be taken as the
  answer to the next request (pymodbus makes the next read time out too).  pymodbus's own
  retries and auto-reconnect are switched off so this logic is the only one.
- A unit that times out is skipped for the rest of that read (COMM_LOST) so a dead unit
  behind a gateway costs one timeout per poll, not one per request.
- Transport failures (refused, reset, cannot reconnect) raise `ConnectError`; if every
  request of a read failed the first error is raised; otherwise the per-request errors
  are in `last_errors` and the counters in `counters`, and the read returns.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from drivers.base import (
    ConnectError,
    DriverError,
    GroupSpec,
    PlannedRequest,
    Point,
    Quality,
    ReadError,
    ReadResult,
    Reason,
    WriteError,
)
from drivers.modbus_codec import decode_into
from drivers.modbus_config import ModbusDevice
from drivers.modbus_plan import FUNCTION, ModbusPlan, PlanLimits, ReadRequest, plan_points
from drivers.modbus_wire import (
    COMM_LOST_EXCEPTIONS,
    DeviceException,
    ProtocolError,
    ResponseTimeout,
)
from drivers.modbus_wire import FastHoldingResponse as _FastHoldingResponse
from drivers.modbus_wire import FastInputResponse as _FastInputResponse
from drivers.modbus_wire import exception_status as exception_status  # agent.commands.scan
from drivers.modbus_writes import WRITE_NAMES, WriteOp, compile_writes

log = logging.getLogger(__name__)

_READ_METHOD = {
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
    "holding": "read_holding_registers",
    "input": "read_input_registers",
}


class _Link:
    """One connection (TCP socket or serial port) and the lock that keeps one request in
    flight on it.  A TCP device has its own; devices configured on the same serial port
    share one, so two slaves on one RS-485 line never interleave frames."""

    def __init__(self, serial_params: tuple[object, ...] | None = None) -> None:
        self.client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self.lock = asyncio.Lock()
        self.serial_params = serial_params


# (serial port resolved, its settings) -> its link, for as long as a driver holds it.  Keyed
# by the settings too: during a reload that fixes a line's baudrate the old pipeline still
# holds the old link while the new one is built; settings that disagree inside one config
# are refused by the config check (agent/config.py), not here.
_SERIAL_LINKS: weakref.WeakValueDictionary[tuple[str, tuple[object, ...]], _Link] = (
    weakref.WeakValueDictionary()
)
_MAX_TIMEOUT_S = 60.0  # the config's upper bound of timeout_s


def _serial_link(cfg: ModbusDevice) -> _Link:
    params = (cfg.baudrate, cfg.parity, cfg.stopbits, cfg.bytesize)
    key = (os.path.realpath(cfg.serial_port or ""), params)
    link = _SERIAL_LINKS.get(key)
    if link is None:
        link = _Link(params)
        _SERIAL_LINKS[key] = link
    return link


class ModbusDriver:
    """`drivers.base.Driver` for one Modbus device (one TCP connection or serial line)."""

    def __init__(self, device_cfg: ModbusDevice, groups: Sequence[GroupSpec]) -> None:
        self.name: str = device_cfg.name
        self.cfg = device_cfg
        self.transport: str = device_cfg.transport
        self.timeout_s: float = float(device_cfg.timeout_s)
        self.retries: int = int(device_cfg.retries)
        self.limits = PlanLimits.from_device(device_cfg)
        self._plans: dict[str, tuple[tuple[Point, ...], ModbusPlan]] = {}
        for g in groups:
            self._plans[g.name] = (g.points, self.plan(g))
        self._link = _serial_link(device_cfg) if self.transport == "rtu" else _Link()
        self._lock = self._link.lock
        self.counters: Counter[str] = Counter()
        self.last_errors: list[DriverError] = []
        # request keys in an error episode -> failures; logged on the first and on recovery
        self._episodes: dict[tuple[int, str, int], int] = {}

    @property
    def _client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient | None:
        return self._link.client

    @_client.setter
    def _client(self, client: AsyncModbusTcpClient | AsyncModbusSerialClient | None) -> None:
        self._link.client = client

    # --- plans ----------------------------------------------------------------------

    def plan(self, group: GroupSpec) -> ModbusPlan:
        """Compile a poll group into its read plan (pure; raises PlanError on bad points)."""
        plans: dict[str, tuple[tuple[Point, ...], ModbusPlan]] = getattr(self, "_plans", {})
        cached = plans.get(group.name)  # None while __init__ makes the plans
        if cached is not None and cached[0] == group.points:
            return cached[1]
        return plan_points(group.points, self.limits, device=self.name, group=group.name)

    def plans(self) -> dict[str, ModbusPlan]:
        """The plans compiled by `create`, by group name."""
        return {name: plan for name, (_, plan) in self._plans.items()}

    def describe(self, plan: ModbusPlan) -> list[PlannedRequest]:
        return [
            PlannedRequest(self.name, r.unit_id, r.function, r.start, r.count, r.tags)
            for r in plan.requests
        ]

    # --- connection -----------------------------------------------------------------

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        # pymodbus' timeout is a backstop; ours (asyncio.timeout) fires first.  retries=0
        # and reconnect_delay=0: retries and reconnects are done here, visibly.
        # a serial link is shared by devices that may have different timeouts
        backstop = (_MAX_TIMEOUT_S if self.transport == "rtu" else self.timeout_s) + 1.0
        holder: list[Any] = []

        def on_change(connected: bool) -> None:
            if holder:
                self._on_connection_change(holder[0], connected)

        if self.transport == "rtu":
            c = self.cfg
            client: AsyncModbusTcpClient | AsyncModbusSerialClient = AsyncModbusSerialClient(
                c.serial_port,
                framer=FramerType.RTU,
                baudrate=c.baudrate,
                bytesize=c.bytesize,
                parity=c.parity,
                stopbits=c.stopbits,
                timeout=backstop,
                retries=0,
                reconnect_delay=0,
                trace_connect=on_change,
            )
        else:
            client = AsyncModbusTcpClient(
                self.cfg.host,
                port=int(self.cfg.port),
                timeout=backstop,
                retries=0,
                reconnect_delay=0,
                trace_connect=on_change,
            )
        holder.append(client)
        client.register(_FastHoldingResponse)
        client.register(_FastInputResponse)
        return client

    @staticmethod
    def _on_connection_change(client: Any, connected: bool) -> None:
        """pymodbus leaves a pending request waiting for its timeout when the connection
        closes (the peer closed it, or asyncio did after pymodbus raised on an undecodable
        frame); fail it at once so a lost connection is seen as one, not as a timeout."""
        if connected:
            return
        fut = getattr(client.ctx, "response_future", None)
        if fut is not None and not fut.done():
            fut.set_exception(ConnectionResetError("connection lost"))

    def _where(self) -> str:
        if self.transport == "rtu":
            return str(self.cfg.serial_port)
        return f"{self.cfg.host}:{self.cfg.port}"

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def _open(self) -> None:
        self._drop()
        client = self._new_client()
        self.counters["connects"] += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                ok = await client.connect()
        except (TimeoutError, OSError) as exc:
            client.close()
            raise ConnectError(f"cannot connect to {self._where()}", device=self.name) from exc
        if not ok or not client.connected:
            client.close()
            raise ConnectError(
                f"cannot connect to {self._where()} (refused or timed out)", device=self.name
            )
        self._client = client

    async def connect(self) -> None:
        async with self._lock:
            if self._client is None or not self._client.connected:
                await self._open()

    async def close(self) -> None:
        async with self._lock:
            self._drop()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    # --- one checked request --------------------------------------------------------

    async def _request(self, method: str, fc: int, unit: int, address: int, **kw: Any) -> Any:
        """Send one request (lock held) with retries; returns a response that matches it."""
        ctx = {"device": self.name, "unit_id": unit, "address": address}
        last: DriverError | None = None
        for attempt in range(self.retries + 1):
            if self._client is None or not self._client.connected:
                await self._open()  # ConnectError propagates: the transport is down
            assert self._client is not None
            self.counters["requests"] += 1
            if attempt:
                self.counters["retries"] += 1
            try:
                async with asyncio.timeout(self.timeout_s):
                    resp = await getattr(self._client, method)(
                        address=address, device_id=unit, **kw
                    )
            except asyncio.CancelledError:
                # the caller gave up mid-request: its answer may still come and must not
                # be taken for the next request's (RTU has no transaction id)
                self._drop()
                raise
            except TimeoutError as exc:
                self.counters["timeouts"] += 1
                self._drop()  # a late reply must not answer the next request
                last = ResponseTimeout(f"no answer within {self.timeout_s} s", **ctx)
                last.__cause__ = exc
                continue
            except (ConnectionException, OSError) as exc:
                self.counters["disconnects"] += 1
                self._drop()
                raise ConnectError(f"connection to {self._where()} lost", **ctx) from exc
            except ModbusIOException as exc:  # pymodbus saw a wrong transaction or unit id
                self.counters["protocol_errors"] += 1
                self._drop()
                last = ProtocolError(f"bad response: {exc}", status="mismatch", **ctx)
                last.__cause__ = exc
                continue
            except ModbusException as exc:
                self.counters["protocol_errors"] += 1
                self._drop()
                last = ProtocolError(f"bad response: {exc}", status="malformed", **ctx)
                last.__cause__ = exc
                continue
            problem = self._check(resp, fc, unit)
            if problem is None:
                return resp
            if problem == "exception":
                self.counters["exceptions"] += 1
                code = int(getattr(resp, "exception_code", 0))
                raise DeviceException(f"{_READ_OR_WRITE[fc]} refused", code=code, **ctx)
            self.counters["protocol_errors"] += 1
            self._drop()  # the stream can no longer be trusted
            last = ProtocolError(f"bad response: {problem}", status="mismatch", **ctx)
        assert last is not None
        raise last

    @staticmethod
    def _check(resp: Any, fc: int, unit: int) -> str | None:
        got_fc = int(getattr(resp, "function_code", -1))
        if got_fc == fc | 0x80 and resp.isError():
            return "exception"
        if got_fc != fc:
            return f"function code {got_fc} answers a request with function code {fc}"
        dev = int(getattr(resp, "dev_id", unit))
        if unit != 0 and dev != unit:
            return f"unit id {dev} answers a request to unit {unit}"
        return None

    # --- reads ----------------------------------------------------------------------

    async def _read_request(self, req: ReadRequest) -> Any:
        resp = await self._request(
            _READ_METHOD[req.table], req.function_code, req.unit_id, req.start, count=req.count
        )
        ctx = {"device": self.name, "unit_id": req.unit_id, "address": req.start}
        if req.is_bits:
            n = len(resp.bits)
            if n != (req.count + 7) // 8 * 8:
                self._drop()
                self.counters["protocol_errors"] += 1
                raise ProtocolError(f"{n} bits answer a read of {req.count}", status="count", **ctx)
            return resp.bits
        if getattr(resp, "malformed", ""):
            self._drop()
            self.counters["protocol_errors"] += 1
            raise ProtocolError(f"malformed answer: {resp.malformed}", status="malformed", **ctx)
        n = len(resp.registers)
        if n != req.count:
            self._drop()
            self.counters["protocol_errors"] += 1
            raise ProtocolError(
                f"{n} registers answer a read of {req.count}", status="count", **ctx
            )
        return resp.registers

    async def read_raw(
        self, table: str, address: int, count: int, unit_id: int | None = None
    ) -> list[int]:
        """One checked read of raw registers (or 0/1 bits) outside any plan; for `probe`."""
        limit = 2000 if table in ("coil", "discrete") else 125
        if table not in _READ_METHOD or not 1 <= count <= limit or address + count > 65536:
            raise ReadError(
                f"cannot read {count} from {table} (max {limit} per request)",
                device=self.name,
                address=address,
            )
        unit = self.cfg.unit_id if unit_id is None else unit_id
        req = ReadRequest(unit, table, address, count, 0, np.zeros(0, np.intp), ())
        async with self._lock:
            data = await self._read_request(req)
        return [int(v) for v in data[:count]]

    async def read(self, plan: ModbusPlan) -> ReadResult:
        """Read a group: every request of the plan, then one decode over all of them."""
        quality = np.zeros(plan.size, dtype=np.uint8)
        reason = np.zeros(plan.size, dtype=np.uint16)
        values = np.full(plan.size, np.nan)
        regs = np.zeros(plan.n_registers, dtype=np.uint16)
        bits = np.zeros(plan.n_bits, dtype=np.uint8)
        errors: list[DriverError] = []
        dead_units: set[int] = set()
        answered = 0
        # the lock is taken per request, not per group, so a setpoint write waits for at
        # most one request of a long poll, never for the whole group
        for req in plan.requests:
            if req.unit_id in dead_units:
                quality[req.points] = Quality.COMM_LOST
                reason[req.points] = Reason.TIMEOUT
                continue
            try:
                async with self._lock:
                    data = await self._read_request(req)
            except ResponseTimeout as exc:
                dead_units.add(req.unit_id)
                quality[req.points] = Quality.COMM_LOST
                reason[req.points] = exc.reason
                errors.append(exc)
                continue
            except DeviceException as exc:
                lost = exc.code in COMM_LOST_EXCEPTIONS
                quality[req.points] = Quality.COMM_LOST if lost else Quality.BAD
                reason[req.points] = exc.reason
                errors.append(exc)
                continue
            except ReadError as exc:
                quality[req.points] = Quality.BAD
                reason[req.points] = exc.reason
                errors.append(exc)
                continue
            answered += 1
            if self._episodes:
                self._recovered(req)
            o = req.buffer_offset
            if req.is_bits:
                bits[o : o + req.count] = data[: req.count]
            else:
                regs[o : o + req.count] = data
        self.last_errors = errors
        for e in errors:
            self._failed(e)
        if errors and not answered:
            raise errors[0]  # the whole group failed: the caller marks it and backs off
        texts: dict[int, str] = {}
        decode_into(plan.classes, regs, bits, values, texts)
        # a NaN/inf float from the device (a failed sensor) is a bad value, not a good one
        nonfinite = ~np.isfinite(values)
        nonfinite[plan.text_positions] = False
        nonfinite &= quality == Quality.GOOD
        quality[nonfinite] = Quality.BAD
        reason[nonfinite] = Reason.DECODE_ERROR
        if errors:
            bad = quality != Quality.GOOD
            values[bad] = np.nan
            for i in np.flatnonzero(bad):
                texts.pop(int(i), None)
        return ReadResult(values=values, quality=quality, texts=texts, reason=reason)

    def _failed(self, e: DriverError) -> None:
        """Log a request's failure once per episode (a dead unit at 5 Hz is one line)."""
        key = (e.unit_id or 0, type(e).__name__, e.address or 0)
        n = self._episodes.get(key, 0)
        self._episodes[key] = n + 1
        if n == 0:
            log.warning("%s", e)

    def _recovered(self, req: ReadRequest) -> None:
        for key in [k for k in self._episodes if k[0] == req.unit_id and k[2] == req.start]:
            n = self._episodes.pop(key)
            log.info(
                "device=%s unit=%s address=%s: answering again after %d failed reads",
                self.name,
                req.unit_id,
                req.start,
                n,
            )

    # --- writes ---------------------------------------------------------------------

    async def write(self, points: Sequence[tuple[Point, float | int | bool | str]]) -> None:
        """Write engineering values; refuses (WriteRefused) before sending anything bad."""
        ops = compile_writes(self.name, points)
        async with self._lock:
            for op in ops:
                await self._send_write(op)

    async def _send_write(self, op: WriteOp) -> None:
        ctx = {"device": self.name, "unit_id": op.unit_id, "address": op.address}
        try:
            if op.function_code == 5:
                resp = await self._request(
                    "write_coil", 5, op.unit_id, op.address, value=bool(op.values[0])
                )
                echo = (resp.address, bool(resp.bits[0]) if resp.bits else None)
                want: tuple[object, ...] = (op.address, bool(op.values[0]))
            elif op.function_code == 15:
                resp = await self._request(
                    "write_coils", 15, op.unit_id, op.address, values=[bool(v) for v in op.values]
                )
                echo, want = (resp.address, resp.count), (op.address, len(op.values))
            elif op.function_code == 6:
                resp = await self._request(
                    "write_register", 6, op.unit_id, op.address, value=op.values[0]
                )
                echo = (resp.address, resp.registers[0] if resp.registers else None)
                want = (op.address, op.values[0])
            elif op.function_code == 16:
                resp = await self._request(
                    "write_registers", 16, op.unit_id, op.address, values=list(op.values)
                )
                echo, want = (resp.address, resp.count), (op.address, len(op.values))
            else:
                resp = await self._request(
                    "mask_write_register",
                    22,
                    op.unit_id,
                    op.address,
                    and_mask=op.values[0],
                    or_mask=op.values[1],
                )
                echo = (resp.address, resp.and_mask, resp.or_mask)
                want = (op.address, *op.values)
        except DeviceException as exc:
            self.counters["write_errors"] += 1
            raise WriteError(
                f"{WRITE_NAMES[op.function_code]} of {', '.join(op.tags)} refused",
                status=exc.status,
                **ctx,
            ) from exc
        except ReadError as exc:
            self.counters["write_errors"] += 1
            raise WriteError(
                f"{WRITE_NAMES[op.function_code]} of {', '.join(op.tags)}: {exc}",
                status=exc.status,
                **ctx,
            ) from exc
        except ResponseTimeout as exc:
            self.counters["write_errors"] += 1
            raise WriteError(
                f"{WRITE_NAMES[op.function_code]} of {', '.join(op.tags)}: no answer",
                status="timeout",
                **ctx,
            ) from exc
        if echo != want:
            self.counters["write_errors"] += 1
            self._drop()
            raise WriteError(
                f"{WRITE_NAMES[op.function_code]} echo {echo} does not match {want}",
                status="mismatch",
                **ctx,
            )
        self.counters["writes"] += 1


_READ_OR_WRITE = {fc: name for fc, name in FUNCTION.values()} | WRITE_NAMES


def create(device_cfg: ModbusDevice, groups: Sequence[GroupSpec]) -> ModbusDriver:
    """Registry factory (`driver: modbus`); plans every group now, so bad points fail early."""
    return ModbusDriver(device_cfg, groups)
