"""Modbus acquisition benchmark: tags/s and agent CPU per tag against hw_sim on loopback.

The simulated PLCs run in a child process (`--serve`), so the CPU measured here
(`time.process_time`, this process only) is the agent's: pymodbus client, response
checks and numpy decoding.  Rows:

- batched: 2000 float32 tags of the hw_sim benchmark block (unit 10, input registers
  0..3999) read with the planner (17 x 124 registers + remainder), back to back.
- one read per tag: the same tags with max_read_registers=2 (what a naive driver does).
- decode only: `modbus_codec.decode_into` over the 2000 tags (no I/O).
- 50 devices: 50 connections (one per simulated PLC port) each polling 100 float32 tags at
  10 Hz, drift-free schedule; agent CPU and poll-start jitter (actual - planned start).

Usage: .venv/bin/python bench/acquire.py [--seconds 3] [--devices 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drivers.base import GroupSpec, Point  # noqa: E402
from drivers.modbus import create  # noqa: E402
from drivers.modbus_codec import decode_into  # noqa: E402
from hw_sim import pointmap  # noqa: E402


@dataclass(frozen=True)
class Dev:
    """Device config with the YAML field names (see agent/config.py)."""

    name: str
    port: int
    host: str = "127.0.0.1"
    driver: str = "modbus"
    transport: str = "tcp"
    unit_id: int = pointmap.BENCH_UNIT
    byte_order: str = "big"
    word_order: str = "big"
    timeout_s: float = 2.0
    retries: int = 0
    max_read_registers: int = 125
    max_read_bits: int = 2000
    max_gap_registers: int = 8
    max_gap_bits: int = 32


def bench_group(n: int, name: str = "bench") -> GroupSpec:
    pts = tuple(
        Point(p.name, i, "float32", table="input", address=p.address, unit_id=pointmap.BENCH_UNIT)
        for i, p in enumerate(pointmap.bench_points(n))
    )
    return GroupSpec("bench", name, 100, "poll", 0, n, pts)


# --- the simulator child process ------------------------------------------------------------


def serve(ports: list[int]) -> None:
    from hw_sim.modbus_server import SimModbusServer
    from hw_sim.runtime import SimPlant

    async def main() -> None:
        plant = SimPlant(seed=0)
        servers = [SimModbusServer(plant, port=p) for p in ports]
        for s in servers:
            await s.start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def start_sim(ports: list[int]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", *map(str, ports)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError("simulator did not start")
    return proc


def free_ports(n: int) -> list[int]:
    import socket

    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


# --- measurements -----------------------------------------------------------------------------


def child_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of the simulator process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(
    port: int, n: int, seconds: float, max_regs: int, sim_pid: int = 0
) -> dict[str, float]:
    group = bench_group(n)
    drv = create(Dev("plc", port, max_read_registers=max_regs), [group])
    plan = drv.plan(group)
    await drv.connect()
    await drv.read(plan)  # warm up
    reads = 0
    sim0 = child_cpu_s(sim_pid)
    cpu0, t0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        res = await drv.read(plan)
        reads += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    sim_cpu = child_cpu_s(sim_pid) - sim0
    assert (res.quality == 0).all() and np.isfinite(res.values).all()
    await drv.close()
    tags = reads * n
    return {
        "requests": len(plan.requests),
        "tags_per_s": tags / wall,
        "cpu_us_per_tag": cpu / tags * 1e6,
        "cpu_us_per_request": cpu / (reads * len(plan.requests)) * 1e6,
        "cpu_share": cpu / wall,
        "sim_us_per_request": sim_cpu / (reads * len(plan.requests)) * 1e6,
        "wall_us_per_request": wall / (reads * len(plan.requests)) * 1e6,
    }


def decode_only(n: int, repeats: int = 2000) -> float:
    from drivers.modbus_plan import plan_points

    plan = plan_points(bench_group(n).points)
    regs = np.arange(plan.n_registers, dtype=np.uint16)
    bits = np.zeros(0, np.uint8)
    values = np.empty(n)
    t0 = time.process_time()
    for _ in range(repeats):
        decode_into(plan.classes, regs, bits, values)
    return (time.process_time() - t0) / (repeats * n) * 1e6


async def many_devices(
    ports: list[int], tags: int, seconds: float, period_s: float = 0.1
) -> dict[str, float]:
    group = bench_group(tags)
    drivers = [create(Dev(f"plc{i}", p), [group]) for i, p in enumerate(ports)]
    for d in drivers:
        await d.connect()
    plan = drivers[0].plan(group)
    lateness: list[float] = []
    starts: list[list[float]] = [[] for _ in drivers]
    durations: list[float] = []
    polls = [0]
    errors = [0]

    async def poll(d, phase: float, t_start: float, mine: list[float]) -> None:
        k = 0
        while True:
            planned = t_start + phase + k * period_s
            if planned - t_start > seconds:
                return
            delay = planned - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            began = time.perf_counter()
            lateness.append(began - planned)
            mine.append(began)
            try:
                await d.read(plan)
                polls[0] += 1
                durations.append(time.perf_counter() - began)
            except Exception:
                errors[0] += 1
            k += 1

    t_start = time.perf_counter() + 0.2
    cpu0 = time.process_time()
    await asyncio.gather(
        *(poll(d, period_s * i / len(drivers), t_start, starts[i]) for i, d in enumerate(drivers))
    )
    wall = time.perf_counter() - t_start
    cpu = time.process_time() - cpu0
    for d in drivers:
        await d.close()
    late = np.array(lateness) * 1e3
    period_dev = np.abs(np.concatenate([np.diff(s) for s in starts]) - period_s) * 1e3
    return {
        "period_dev_p50_ms": float(np.percentile(period_dev, 50)),
        "period_dev_p99_ms": float(np.percentile(period_dev, 99)),
        "read_p99_ms": float(np.percentile(durations, 99) * 1e3),
        "polls_per_s": polls[0] / wall,
        "errors": errors[0],
        "cpu_share": cpu / wall,
        "cpu_us_per_tag": cpu / max(1, polls[0] * tags) * 1e6,
        "jitter_p50_ms": float(np.percentile(late, 50)),
        "jitter_p99_ms": float(np.percentile(late, 99)),
        "jitter_max_ms": float(late.max()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--tags", type=int, default=2000)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--device-tags", type=int, default=100)
    ap.add_argument("--serve", nargs="+", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return 0

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    load = os.getloadavg()
    print(f"load average before the run: {load[0]:.2f} (other work shares these cores)")
    ports = free_ports(max(1, args.devices))
    sim = start_sim(ports)
    try:
        batched = asyncio.run(throughput(ports[0], args.tags, args.seconds, 125, sim.pid))
        n_single = min(args.tags, 200)
        single = asyncio.run(throughput(ports[0], n_single, args.seconds, 2, sim.pid))
        dec = decode_only(args.tags)
        fleet = (
            asyncio.run(many_devices(ports, args.device_tags, args.seconds))
            if args.devices
            else None
        )
    finally:
        sim.terminate()
        sim.wait(5)

    print()
    print(
        "| case | tags | requests/read | tags/s | agent CPU µs/tag | agent CPU µs/request "
        "| simulator CPU µs/request | wall µs/request |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, n, r in (
        ("batched (planner)", args.tags, batched),
        ("one read per tag", n_single, single),
    ):
        print(
            f"| {name} | {n} | {r['requests']} | {r['tags_per_s']:,.0f} | "
            f"{r['cpu_us_per_tag']:.2f} | {r['cpu_us_per_request']:.0f} | "
            f"{r['sim_us_per_request']:.0f} | {r['wall_us_per_request']:.0f} |"
        )
    print(f"| decode only (numpy) | {args.tags} | - | - | {dec:.4f} | - | - | - |")
    print()
    print(
        f"batched vs one read per tag: {batched['tags_per_s'] / single['tags_per_s']:.0f}x tags/s, "
        f"{single['cpu_us_per_tag'] / batched['cpu_us_per_tag']:.0f}x less CPU per tag"
    )
    target_ok = batched["tags_per_s"] >= 100_000 and batched["cpu_us_per_tag"] <= 5.0
    print(f"target >= 100,000 tags/s and <= 5 µs CPU/tag: {'met' if target_ok else 'NOT met'}")
    if fleet:
        print()
        print(
            f"| {args.devices} devices x {args.device_tags} float32 @ 10 Hz | polls/s | "
            "agent CPU | CPU µs/tag | start lateness p50 / p99 / max | "
            "period deviation p50 / p99 | read time p99 |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        print(
            f"| {args.seconds:.0f} s run, {fleet['errors']} errors | {fleet['polls_per_s']:.0f} | "
            f"{fleet['cpu_share'] * 100:.1f} % of a core | {fleet['cpu_us_per_tag']:.2f} | "
            f"{fleet['jitter_p50_ms']:.2f} / {fleet['jitter_p99_ms']:.2f} / "
            f"{fleet['jitter_max_ms']:.2f} ms | {fleet['period_dev_p50_ms']:.2f} / "
            f"{fleet['period_dev_p99_ms']:.2f} ms | {fleet['read_p99_ms']:.2f} ms |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
