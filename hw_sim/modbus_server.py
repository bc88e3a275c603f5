"""Simulated Modbus PLCs (TCP and RTU) serving a live `SimPlant`, with misbehaviour on demand.

Values are read from the plant at request time (no copy to refresh), writes reach the plant
before the response is sent.  Units served: 1 (heater PLC), 2 (pump skid mirror), 10 (the
benchmark block), and the units of the plant's enabled loop plants (3 surge, 4 exchanger);
others get exception 0x0B (gateway target failed to respond), as from a gateway.  Each
table has a fixed size; reading past it gives ILLEGAL_ADDRESS, unmapped registers inside it
read 0 (so a planner may read across gaps).  Writes are validated against the point map: a
read-only or unmapped register gives ILLEGAL_ADDRESS, a value out of range gives
ILLEGAL_VALUE, and nothing of a refused request is applied.

pymodbus 3.16 notes (checked in the installed source): `ModbusServerContext` subclasses with
`old_simulator = True` are used as-is by the server, which then awaits
`context.async_getValues(device_id, func_code, address, count)` /
`async_setValues(...)` with 0-based protocol addresses; returning an `ExcCodes` member makes
an exception response.  We replace the per-connection request handler to add delays and wire
mangling, and to capture each request before awaiting (pymodbus keeps only the last one).

Misbehaviour (`Misbehaviour.set(mode, ...)`, settable at run time from any thread):
`delay` (responses `delay_s` late), `exception` (exception `code` to every request),
`drop` (accept then close at once; TCP), `no_response`, `garbage` (header kept, payload
random), `truncate` (half a frame), `wrong_transaction_id`, `wrong_unit_id`,
`wrong_function` (a register read answered with the other register function code),
`short_response` (a well-formed read response one register short).  `units`
restricts a mode to some unit ids and `count` to the next N requests.  Server stop and
restart on the same port: `await server.stop()` / `await server.start()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler

from hw_sim import codec, pointmap
from hw_sim.runtime import SimPlant, SimWriteError

log = logging.getLogger("hw_sim.modbus")

MODES = (
    "delay",
    "exception",
    "drop",
    "no_response",
    "garbage",
    "truncate",
    "wrong_transaction_id",
    "wrong_unit_id",
    "wrong_function",
    "short_response",
)
_WIRE_MODES = (
    "garbage",
    "truncate",
    "wrong_transaction_id",
    "wrong_unit_id",
    "wrong_function",
    "short_response",
)
_FC_TABLE = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 4: "input"}
_FC_TABLE.update(dict.fromkeys((3, 6, 16, 22, 23), "holding"))
_BIT_TABLES = ("coil", "discrete")

# Table sizes per unit (registers or bits); beyond them: ILLEGAL_ADDRESS.
TABLE_SIZES: dict[int, dict[str, int]] = {
    pointmap.HEATER_UNIT: {"holding": 100, "input": 100, "coil": 16, "discrete": 16},
    pointmap.PUMP_UNIT: {"holding": 16, "input": 32, "coil": 0, "discrete": 0},
    pointmap.BENCH_UNIT: {
        "holding": 0,
        "input": 2 * pointmap.BENCH_MAX_POINTS,
        "coil": 0,
        "discrete": 0,
    },
}


@dataclass
class Misbehaviour:
    """What the simulated PLC does wrong right now; one mode at a time, None = behave.

    Thread-safe: tests may flip it while the server runs on another thread's loop.
    """

    mode: str | None = None
    delay_s: float = 0.0
    code: int = int(ExcCodes.DEVICE_BUSY)
    units: frozenset[int] | None = None  # None: every unit
    count: int | None = None  # None: until cleared; N: the next N requests, then behave
    applied: int = 0  # requests misbehaved so far (for tests)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set(
        self,
        mode: str,
        *,
        delay_s: float = 0.0,
        code: int = int(ExcCodes.DEVICE_BUSY),
        units: Sequence[int] | None = None,
        count: int | None = None,
    ) -> None:
        """Start misbehaving: `mode` is one of MODES."""
        if mode not in MODES:
            raise ValueError(f"unknown misbehaviour {mode!r}; one of {MODES}")
        if mode == "delay" and delay_s <= 0:
            raise ValueError("delay needs delay_s > 0")
        with self._lock:
            self.mode, self.delay_s, self.code = mode, delay_s, int(code)
            self.units = frozenset(units) if units is not None else None
            self.count = count

    def clear(self) -> None:
        """Behave again."""
        with self._lock:
            self.mode = None
            self.count = None
            self.units = None

    def take(self, unit_id: int | None, modes: Sequence[str]) -> str | None:
        """The mode to apply to one request of `unit_id` if it is in `modes` (counts it)."""
        with self._lock:
            m = self.mode
            if m is None or m not in modes:
                return None
            if self.units is not None and unit_id is not None and unit_id not in self.units:
                return None
            if self.count is not None:
                if self.count <= 0:
                    self.mode = None
                    return None
                self.count -= 1
            self.applied += 1
            return m


@dataclass
class ServerStats:
    requests: int = 0
    exceptions: int = 0


class PlantContext(ModbusServerContext):
    """Datastore reading and writing the live plant, laid out by the point map."""

    def __init__(self, plant: SimPlant, misbehaviour: Misbehaviour) -> None:
        # The base __init__ builds pymodbus' own simulator store; we bypass it entirely.
        self.old_simulator = True
        self.simdevices = []
        self._devices = {}
        self.plant = plant
        self.misbehaviour = misbehaviour
        self.stats = ServerStats()
        self.layout: dict[tuple[int, str], list[pointmap.SimPoint]] = {}
        # table sizes: the fixed units plus the plant's enabled loop plants
        self.sizes = dict(TABLE_SIZES)
        for name in plant.loops:
            self.sizes[pointmap.LOOPS[name].unit_id] = dict(pointmap.LOOP_TABLE_SIZE)
        for p in plant.modbus_points():
            if p.type == "bit":  # served through the register that holds it
                continue
            self.layout.setdefault((p.unit_id or 0, p.table or ""), []).append(p)
        for pts in self.layout.values():
            pts.sort(key=lambda p: p.address or 0)

    def device_ids(self) -> list[int]:
        return list(self.sizes)

    def _check(
        self, device_id: int, func_code: int, address: int, count: int
    ) -> tuple[str, ExcCodes | None]:
        if device_id not in self.sizes:
            raise NoSuchIdException(f"unit {device_id}")
        table = _FC_TABLE.get(func_code)
        if table is None:
            return "", ExcCodes.ILLEGAL_FUNCTION
        limit = 2000 if table in _BIT_TABLES else 125
        if not 1 <= count <= limit and func_code not in (15, 16):
            return table, ExcCodes.ILLEGAL_VALUE
        if address < 0 or address + count > self.sizes[device_id][table]:
            return table, ExcCodes.ILLEGAL_ADDRESS
        return table, None

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        self.stats.requests += 1
        if self.misbehaviour.take(device_id, ("exception",)):
            self.stats.exceptions += 1
            return ExcCodes(self.misbehaviour.code)
        table, err = self._check(device_id, func_code, address, count)
        if err is not None:
            self.stats.exceptions += 1
            return err
        if device_id == pointmap.BENCH_UNIT:
            return self._bench(address, count)
        return self.read(device_id, table, address, count)

    def read(self, unit: int, table: str, address: int, count: int) -> list[int] | list[bool]:
        """Registers (or bits) `address .. address+count-1` of one table, from the plant now."""
        values = self.plant.values()
        end = address + count
        if table in _BIT_TABLES:
            bits = [False] * count
            for p in self.layout.get((unit, table), ()):
                a = p.address or 0
                if address <= a < end:
                    bits[a - address] = bool(values[p.name] >= 0.5)
            return bits
        regs = [0] * count
        texts = None
        for p in self.layout.get((unit, table), ()):
            a = p.address or 0
            if a >= end or a + p.width <= address:
                continue
            if p.type == "string":
                texts = texts or self.plant.texts()
                words = codec.encode(p, texts[p.name])
            else:
                words = codec.encode(p, values[p.name])
            for i, w in enumerate(words):
                if address <= a + i < end:
                    regs[a + i - address] = w
        return regs

    def _bench(self, address: int, count: int) -> list[int]:
        first = address // 2
        last = (address + count + 1) // 2
        vals = pointmap.bench_value(np.arange(first, last), self.plant.t_s)
        words = vals.astype(">f4").view(">u2")
        off = address - 2 * first
        return words[off : off + count].tolist()

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        table, err = self._check(device_id, func_code, address, len(values))
        if err is not None:
            self.stats.exceptions += 1
            return err
        try:
            writes = self._plan_write(device_id, table, address, list(values))
        except _Refused as exc:
            self.stats.exceptions += 1
            log.info("write refused: unit %s %s@%s: %s", device_id, table, address, exc)
            return exc.code
        for name, val in writes:
            try:
                self.plant.write(name, val)
            except SimWriteError:  # pre-checked; a race with the map would land here
                return ExcCodes.ILLEGAL_VALUE
        return None

    def _plan_write(
        self, unit: int, table: str, address: int, values: list[Any]
    ) -> list[tuple[str, float]]:
        end = address + len(values)
        covered: set[int] = set()
        writes: list[tuple[str, float]] = []
        current = self.plant.values()
        for p in self.layout.get((unit, table), ()):
            a = p.address or 0
            if a >= end or a + p.width <= address:
                continue
            if not p.writable:
                raise _Refused(ExcCodes.ILLEGAL_ADDRESS, f"{p.name} is read-only")
            if table in _BIT_TABLES:
                val = 1.0 if values[a - address] else 0.0
            else:
                words = codec.encode(p, current[p.name])
                for i in range(p.width):
                    if address <= a + i < end:
                        words[i] = int(values[a + i - address])
                val = float(codec.decode(p, words))
            if (
                val != val
                or (p.min is not None and val < p.min)
                or (p.max is not None and val > p.max)
            ):
                raise _Refused(ExcCodes.ILLEGAL_VALUE, f"{p.name}={val} outside {p.min}..{p.max}")
            covered.update(range(a, a + p.width))
            writes.append((p.name, val))
        if not set(range(address, end)) <= covered:
            raise _Refused(ExcCodes.ILLEGAL_ADDRESS, "unmapped register")
        return writes


class _Refused(Exception):
    def __init__(self, code: ExcCodes, why: str) -> None:
        super().__init__(why)
        self.code = code


class _Handler(ServerRequestHandler):
    """Per-connection handler: captures each request, then delays or mangles on demand."""

    def callback_connected(self) -> None:
        super().callback_connected()
        if self.server.misbehaviour.take(None, ("drop",)):
            self.server.loop.call_soon(self.close)

    def handle_later(self) -> None:
        pdu, addr = self.last_pdu, self.last_addr
        task = self.server.loop.create_task(self._handle(pdu, addr))
        self.server.tasks.add(task)  # keep a reference until done; cancelled on stop()
        task.add_done_callback(self.server.tasks.discard)

    async def _handle(self, pdu: Any, addr: Any) -> None:
        mis = self.server.misbehaviour
        if pdu is None:
            return
        if mis.take(pdu.dev_id, ("delay",)):
            await asyncio.sleep(mis.delay_s)
        if mis.take(pdu.dev_id, ("no_response",)):
            return
        try:
            response = await pdu.datastore_update(self.server.context, pdu.dev_id)
        except NoSuchIdException:
            response = ExceptionResponse(pdu.function_code, ExcCodes.GATEWAY_NO_RESPONSE)
        except Exception:  # the simulated PLC answers DEVICE_FAILURE instead of dying
            log.exception("datastore failed")
            response = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
        response.transaction_id = pdu.transaction_id
        response.dev_id = pdu.dev_id
        if not self.transport:
            return
        mode = mis.take(pdu.dev_id, _WIRE_MODES)
        if mode == "wrong_function" and response.function_code in (3, 4):
            # FC4 data answering FC3 and vice versa: a well-formed frame of the wrong kind
            response.function_code = 7 - response.function_code
        elif mode == "short_response" and getattr(response, "registers", None):
            response.registers = response.registers[:-1]  # consistent frame, one word short
        elif mode == "short_response" and getattr(response, "bits", None):
            response.bits = response.bits[:-8] or []
        elif mode == "wrong_transaction_id":
            response.transaction_id = (pdu.transaction_id + 1) & 0xFFFF
        elif mode == "wrong_unit_id":
            response.dev_id = (pdu.dev_id % 247) + 1
        packet = self.framer.buildFrame(response)
        if mode == "garbage":
            head = 7 if self.server.framer_type == FramerType.SOCKET else 1
            rnd = random.Random(len(packet) + pdu.transaction_id)
            packet = packet[:head] + bytes(rnd.randrange(256) for _ in packet[head:])
        elif mode == "truncate":
            packet = packet[: max(len(packet) // 2, 1)]
        self.low_level_send(packet, addr=addr)


class _TcpServer(ModbusTcpServer):
    framer_type = FramerType.SOCKET
    misbehaviour: Misbehaviour
    tasks: set[asyncio.Task[None]]

    def callback_new_connection(self) -> _Handler:
        return _Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class _RtuServer(ModbusSerialServer):
    framer_type = FramerType.RTU
    misbehaviour: Misbehaviour
    tasks: set[asyncio.Task[None]]

    def callback_new_connection(self) -> _Handler:
        return _Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class SimModbusServer:
    """A simulated Modbus PLC on TCP (`port`) or RTU (`serial_port`) over one `SimPlant`.

    Use as `async with SimModbusServer(plant, port=5020) as srv:` or call `start()` /
    `stop()`; `srv.misbehaviour.set("delay", delay_s=2.0)` changes behaviour at run time.
    Several servers (TCP and RTU) may share one plant and one `Misbehaviour`.
    """

    def __init__(
        self,
        plant: SimPlant,
        *,
        host: str = "127.0.0.1",
        port: int = 5020,
        serial_port: str | None = None,
        baudrate: int = 19200,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        misbehaviour: Misbehaviour | None = None,
    ) -> None:
        self.plant = plant
        self.host, self.port = host, port
        self.serial_port = serial_port
        self.serial = {
            "baudrate": baudrate,
            "parity": parity,
            "stopbits": stopbits,
            "bytesize": bytesize,
        }
        self.misbehaviour = misbehaviour or Misbehaviour()
        self.context = PlantContext(plant, self.misbehaviour)
        self._server: ModbusTcpServer | ModbusSerialServer | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def where(self) -> str:
        if self.serial_port:
            return f"modbus rtu {self.serial_port} {self.serial['baudrate']} baud"
        return f"modbus tcp {self.host}:{self.port}"

    async def start(self) -> None:
        """Listen (TCP) or open the serial port (RTU); returns once serving."""
        if self._server is not None:
            return
        if self.serial_port:
            srv: Any = _RtuServer(self.context, port=self.serial_port, **self.serial)
        else:
            srv = _TcpServer(self.context, address=(self.host, self.port))
        srv.misbehaviour = self.misbehaviour
        srv.tasks = set()
        await srv.serve_forever(background=True)
        self._server = srv

    async def stop(self) -> None:
        """Close the listener and every client connection (clients see a reset)."""
        srv, self._server = self._server, None
        if srv is not None:
            with contextlib.suppress(Exception):
                await srv.shutdown()
            for task in list(srv.tasks):  # requests still being delayed
                task.cancel()
            await asyncio.gather(*srv.tasks, return_exceptions=True)

    async def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down `down_s` seconds, start again on the same port."""
        await self.stop()
        if down_s > 0:
            await asyncio.sleep(down_s)
        await self.start()

    async def __aenter__(self) -> SimModbusServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
