"""Simulator speed: Modbus server requests/s on loopback, and offline plant stepping.

The server runs in its own process (`python -m hw_sim --no-opcua`, as in a demo), so client
and server each get a core.  Rows with the raw-socket client measure what the server can
serve (the client costs almost nothing); rows with the pymodbus client are what a pymodbus
driver will see.  Run: `.venv/bin/python bench/sim.py [--seconds 2]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pymodbus.client import AsyncModbusTcpClient  # noqa: E402

from tests.fixtures.ports import free_port  # noqa: E402


def raw_reads(port: int, unit: int, fc: int, address: int, count: int, seconds: float) -> float:
    """Sequential requests on one raw socket; returns requests/s."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        n, tid = 0, 0
        end = time.perf_counter() + seconds
        t0 = time.perf_counter()
        while time.perf_counter() < end:
            tid = (tid + 1) & 0xFFFF
            s.sendall(struct.pack(">HHHBBHH", tid, 0, 6, unit, fc, address, count))
            head = b""
            while len(head) < 6:
                head += s.recv(6 - len(head))
            length = struct.unpack(">H", head[4:6])[0]
            body = b""
            while len(body) < length:
                body += s.recv(length - len(body))
            if body[1] & 0x80:
                raise RuntimeError(f"exception response {body[2]}")
            n += 1
        return n / (time.perf_counter() - t0)


async def pymodbus_reads(
    port: int, unit: int, address: int, count: int, seconds: float, clients: int = 1
) -> float:
    """FC4 reads with AsyncModbusTcpClient, `clients` connections in parallel; requests/s."""

    async def one() -> int:
        c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5)
        await c.connect()
        n = 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            rr = await c.read_input_registers(address, count=count, device_id=unit)
            if rr.isError():
                raise RuntimeError(str(rr))
            n += 1
        c.close()
        return n

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(one() for _ in range(clients)))
    return sum(counts) / (time.perf_counter() - t0)


async def pymodbus_writes(port: int, seconds: float) -> float:
    c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5)
    await c.connect()
    regs = AsyncModbusTcpClient.convert_to_registers(42.0, AsyncModbusTcpClient.DATATYPE.FLOAT32)
    n = 0
    end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < end:
        rr = await c.write_registers(10, regs, device_id=1)
        if rr.isError():
            raise RuntimeError(str(rr))
        n += 1
    c.close()
    return n / (time.perf_counter() - t0)


def offline_rows() -> list[tuple[str, str]]:
    from hw_sim.modbus_server import Misbehaviour, PlantContext
    from hw_sim.runtime import SimPlant

    plant = SimPlant(seed=0)
    plant.write("heater_power", 40.0)
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        plant.step(0.1)
        plant.values()
    per = (time.perf_counter() - t0) / n
    rows = [
        ("SimPlant.step(0.1 s) + values()", f"{per * 1e6:.1f} us; {0.1 / per / 3600:.2f} sim-h/s"),
    ]
    ctx = PlantContext(plant, Misbehaviour())
    t0 = time.perf_counter()
    for _ in range(n):
        plant.step(0.1)  # invalidates the values cache, as live serving does
        ctx.read(1, "input", 0, 24)
    per = (time.perf_counter() - t0) / n
    rows.append(("datastore read 24 input regs (+step), no I/O", f"{per * 1e6:.1f} us"))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0, help="per row")
    args = ap.parse_args()
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    srv = subprocess.Popen(
        [sys.executable, "-m", "hw_sim", "--no-opcua", "--modbus-port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert srv.stdout is not None
        line = srv.stdout.readline()
        if "modbus tcp" not in line:
            raise RuntimeError(f"server did not start: {line}")
        time.sleep(0.3)
        s = args.seconds
        rows: list[tuple[str, str]] = []
        rows.append(
            ("raw socket, FC4 2 regs, unit 1", f"{raw_reads(port, 1, 4, 0, 2, s):,.0f} req/s")
        )
        rows.append(
            ("raw socket, FC4 24 regs, unit 1", f"{raw_reads(port, 1, 4, 0, 24, s):,.0f} req/s")
        )
        r = raw_reads(port, 10, 4, 0, 124, s)
        rows.append(
            (
                "raw socket, FC4 124 regs, unit 10 (62 floats)",
                f"{r:,.0f} req/s = {r * 62:,.0f} floats/s",
            )
        )
        rows.append(
            (
                "pymodbus async, FC4 24 regs, 1 conn",
                f"{asyncio.run(pymodbus_reads(port, 1, 0, 24, s)):,.0f} req/s",
            )
        )
        r = asyncio.run(pymodbus_reads(port, 10, 0, 124, s))
        rows.append(
            (
                "pymodbus async, FC4 124 regs unit 10, 1 conn",
                f"{r:,.0f} req/s = {r * 62:,.0f} floats/s",
            )
        )
        r = asyncio.run(pymodbus_reads(port, 10, 0, 124, s, clients=4))
        rows.append(("pymodbus async, FC4 124 regs unit 10, 4 conns", f"{r:,.0f} req/s"))
        rows.append(
            (
                "pymodbus async, FC16 write heater_power",
                f"{asyncio.run(pymodbus_writes(port, s)):,.0f} req/s",
            )
        )
    finally:
        srv.terminate()
        srv.wait(timeout=10)
    rows += offline_rows()
    w = max(len(a) for a, _ in rows)
    print(f"{'what':<{w}}  result")
    print(f"{'-' * w}  ------")
    for a, b in rows:
        print(f"{a:<{w}}  {b}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
