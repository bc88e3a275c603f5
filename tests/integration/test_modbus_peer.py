"""A scriptable Modbus TCP device on loopback for the driver tests, plus its self-test.

It speaks real MBAP over a real socket (function codes 01-06, 15, 16, 22) from a
register image, and can misbehave on request in ways a standard server library will not:
wrong function code, unit or transaction id, truncated or garbage frames, short counts,
late answers, silence, dropped connections.  The hw_sim server covers the plant; this
peer gives the robustness tests exact control over one bad answer at a time.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field

import numpy as np

from drivers.modbus_config import ModbusDevice


@dataclass
class Unit:
    holding: np.ndarray = field(default_factory=lambda: np.zeros(65536, np.uint16))
    input: np.ndarray = field(default_factory=lambda: np.zeros(65536, np.uint16))
    coil: np.ndarray = field(default_factory=lambda: np.zeros(65536, np.uint8))
    discrete: np.ndarray = field(default_factory=lambda: np.zeros(65536, np.uint8))


_TABLE = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}


class Peer:
    """A Modbus TCP server with per-request misbehaviour (`misbehave`, consumed per request)."""

    def __init__(self, units: tuple[int, ...] = (1,)) -> None:
        self.units = {u: Unit() for u in units}
        self.faults: list[tuple[str, object]] = []  # FIFO of (mode, arg), one per request
        self.sticky: tuple[str, object] | None = None  # applied to every request while set
        self.requests: list[tuple[int, int, int, int]] = []  # (unit, fc, address, count)
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    async def start(self, port: int = 0) -> Peer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    def misbehave(self, mode: str, arg: object = None, times: int = 1) -> None:
        self.faults.extend([(mode, arg)] * times)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readexactly(7)
                tid, _pid, length, unit = struct.unpack(">HHHB", head)
                pdu = await reader.readexactly(length - 1)
                fault = self.sticky or (self.faults.pop(0) if self.faults else None)
                if not await self._answer(writer, tid, unit, pdu, fault):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, writer, tid, unit, pdu, fault) -> bool:
        fc = pdu[0]
        mode, arg = fault if fault else ("ok", None)
        if mode == "silent":
            return True
        if mode == "drop":
            return False
        body = self._execute(unit, fc, pdu)
        if mode == "exception":
            body = bytes([fc | 0x80, int(arg)])  # type: ignore[arg-type]
        elif mode == "wrong_fc":
            body = bytes([int(arg)]) + body[1:]  # type: ignore[arg-type]
        elif mode == "short":  # one register / byte fewer than asked, byte count consistent
            body = bytes([fc, body[1] - 2]) + body[2:-2] if fc in (3, 4) else body
        elif mode == "odd_bytes":  # a byte count no register read can have
            body = bytes([fc, body[1] - 1]) + body[2:-1] if fc in (3, 4) else body
        if mode == "wrong_unit":
            unit = int(arg)  # type: ignore[arg-type]
        if mode == "wrong_tid":
            tid = (tid + 1) & 0xFFFF
        frame = struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body
        if mode == "truncated":
            frame = frame[: max(8, len(frame) // 2)]
        elif mode == "garbage":
            frame = bytes(range(200, 256)) * 2
        elif mode == "trailing":  # a valid answer followed by junk bytes
            frame += b"\xde\xad\xbe\xef\x00"
        elif mode == "late":
            await asyncio.sleep(float(arg))  # type: ignore[arg-type]
        writer.write(frame)
        await writer.drain()
        return True

    def _execute(self, unit_id: int, fc: int, pdu: bytes) -> bytes:
        unit = self.units.get(unit_id)
        if unit is None:
            return bytes([fc | 0x80, 0x0B])  # gateway target failed to respond
        if fc in (1, 2, 3, 4):
            address, count = struct.unpack(">HH", pdu[1:5])
            self.requests.append((unit_id, fc, address, count))
            data = getattr(unit, _TABLE[fc])
            if address + count > 65536:
                return bytes([fc | 0x80, 0x02])
            if fc in (3, 4):
                payload = data[address : address + count].astype(">u2").tobytes()
            else:
                payload = np.packbits(data[address : address + count], bitorder="little").tobytes()
            return bytes([fc, len(payload)]) + payload
        if fc == 5:
            address, value = struct.unpack(">HH", pdu[1:5])
            self.requests.append((unit_id, fc, address, 1))
            unit.coil[address] = 1 if value == 0xFF00 else 0
            return pdu[:5]
        if fc == 6:
            address, value = struct.unpack(">HH", pdu[1:5])
            self.requests.append((unit_id, fc, address, 1))
            unit.holding[address] = value
            return pdu[:5]
        if fc == 15:
            address, count, _n = struct.unpack(">HHB", pdu[1:6])
            self.requests.append((unit_id, fc, address, count))
            bits = np.unpackbits(np.frombuffer(pdu[6:], np.uint8), bitorder="little")[:count]
            unit.coil[address : address + count] = bits
            return pdu[:5]
        if fc == 16:
            address, count, _n = struct.unpack(">HHB", pdu[1:6])
            self.requests.append((unit_id, fc, address, count))
            unit.holding[address : address + count] = np.frombuffer(pdu[6:], ">u2")
            return pdu[:5]
        if fc == 22:
            address, and_m, or_m = struct.unpack(">HHH", pdu[1:7])
            self.requests.append((unit_id, fc, address, 1))
            cur = int(unit.holding[address])
            unit.holding[address] = (cur & and_m) | (or_m & ~and_m & 0xFFFF)
            return pdu[:7]
        return bytes([fc | 0x80, 0x01])


async def test_peer_answers_a_raw_read() -> None:
    peer = await Peer().start()
    peer.units[1].holding[5] = 0xBEEF
    reader, writer = await asyncio.open_connection("127.0.0.1", peer.port)
    writer.write(struct.pack(">HHHBBHH", 7, 0, 6, 1, 3, 5, 1))
    await writer.drain()
    answer = await reader.readexactly(11)
    assert answer == struct.pack(">HHHBBBH", 7, 0, 5, 1, 3, 2, 0xBEEF)
    writer.close()
    await peer.stop()


def DeviceCfg(**fields: object) -> ModbusDevice:
    """A validated `agent.config.ModbusDevice` (the YAML model) with test defaults.

    The driver is handed the device model as start-up does; the poll group here only
    satisfies the model (the tests give the driver their own GroupSpecs).
    """
    base: dict[str, object] = {"name": "plc", "driver": "modbus", "host": "127.0.0.1"}
    if fields.get("transport") == "rtu":
        base.pop("host")
    placeholder = {
        "name": "cfg",
        "interval_ms": 600_000,
        "tags": [{"name": "placeholder", "table": "holding", "address": 0, "type": "uint16"}],
    }
    return ModbusDevice.model_validate({**base, **fields, "poll_groups": [placeholder]})
