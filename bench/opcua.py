"""OPC UA acquisition benchmark: batched vs chunked vs per-node Reads, subscriptions, security.

The simulated server runs in a child process (`--serve`) with N synthetic float64 nodes that
change every 100 ms, so the CPU measured here (`time.process_time` of this process) is the
gateway's: the driver plus asyncua's client stack.  Prints a Markdown table.

    .venv/bin/python bench/opcua.py [--tags 1000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class _Wave:
    """values(): N slowly moving signals; write() accepted and ignored."""

    def __init__(self, n: int) -> None:
        self.names = [f"s{i}" for i in range(n)]

    def values(self) -> dict[str, float]:
        t = time.monotonic()
        return {n: 50.0 + 10.0 * math.sin(t + i) for i, n in enumerate(self.names)}

    def write(self, name: str, value: float) -> None:
        pass


def _points(n: int) -> list[dict]:
    return [
        {"name": f"s{i}", "protocol": "opcua", "node": f"ns=2;s=Bench.S{i}", "type": "float64",
         "unit": "", "min": 0.0, "max": 100.0}
        for i in range(n)
    ]  # fmt: skip


async def _serve(port: int, n: int, certs_dir: str) -> None:
    from hw_sim.opcua_server import start_opcua_server

    sim = await start_opcua_server(
        _Wave(n), port=port, points=_points(n), update_interval_s=0.1, certs_dir=certs_dir,
        users={"bench": "bench"},
    )  # fmt: skip
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def _driver(endpoint: str, n: int, mode: str = "poll", **dev):
    from agent.config import parse_config
    from agent.tags import compile_config

    tags = [{"name": f"s{i}", "node": f"ns=2;s=Bench.S{i}"} for i in range(n)]
    group = {"name": "g", "interval_ms": 100 if mode == "subscribe" else 60000, "mode": mode,
             "tags": tags}  # fmt: skip
    if mode == "subscribe":
        group["queue_size"] = 10 * n  # room for several publishes between two reads
    d = {"name": "b", "driver": "opcua", "endpoint": endpoint, "timeout_s": 5.0,
         "poll_groups": [group], **dev}  # fmt: skip
    c = compile_config(parse_config(yaml.safe_dump({"site": "bench", "devices": [d]})))
    return c.drivers["b"], c.plans[("b", "g")]


async def _poll_case(endpoint: str, n: int, seconds: float, **dev) -> dict:
    drv, plan = _driver(endpoint, n, **dev)
    await drv.connect()
    try:
        await drv.read(plan)  # warm up (DataType cache, first chunk)
        reads0, t0, c0 = drv.stats["read_calls"], time.perf_counter(), time.process_time()
        polls = 0
        while time.perf_counter() - t0 < seconds:
            res = await drv.read(plan)
            polls += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert (res.quality == 0).all()
        reqs = (drv.stats["read_calls"] - reads0) / polls
    finally:
        await drv.close()
    return {"tags": n, "req": reqs, "tags_s": polls * n / wall, "cpu_us": cpu / (polls * n) * 1e6,
            "req_s": polls * reqs / wall}  # fmt: skip


async def _sub_case(endpoint: str, n: int, seconds: float) -> dict:
    drv, plan = _driver(endpoint, n, mode="subscribe")
    await drv.connect()
    try:
        await asyncio.sleep(0.5)
        await drv.read(plan)
        n0, t0, c0 = drv.stats["notifications"], time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            await asyncio.sleep(0.1)
            res = await drv.read(plan)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        got = drv.stats["notifications"] - n0
        assert (res.quality == 0).all()
    finally:
        await drv.close()
    return {"tags": n, "notif_s": got / wall, "cpu_us": cpu / max(got, 1) * 1e6,
            "dropped": drv.stats["notifications_dropped"]}  # fmt: skip


async def _bench(endpoint: str, n: int, seconds: float, certs: Path) -> None:
    os.environ["EDGELOOP_BENCH_PW"] = "bench"
    secure = {
        "security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt",
        "client_certificate": str(certs / "client_cert.pem"),
        "client_private_key": str(certs / "client_key.pem"),
        "server_certificate": str(certs / "server_cert.pem"),
        "username": "bench", "password_env": "EDGELOOP_BENCH_PW",
    }  # fmt: skip
    rows = [
        ("batched Read (1 call)", await _poll_case(endpoint, n, seconds, max_nodes_per_read=n)),
        (
            "chunked, max_nodes_per_read=100",
            await _poll_case(endpoint, n, seconds, max_nodes_per_read=100),
        ),
        ("one node per Read", await _poll_case(endpoint, 100, seconds, max_nodes_per_read=1)),
        (
            "batched, Basic256Sha256 SignAndEncrypt",
            await _poll_case(endpoint, n, seconds, max_nodes_per_read=n, **secure),
        ),
    ]
    print("| case | tags | Reads/poll | tags/s | Read calls/s | gateway CPU µs/tag |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['tags']} | {r['req']:.0f} | {r['tags_s']:,.0f} | {r['req_s']:,.0f} "
              f"| {r['cpu_us']:.2f} |")  # fmt: skip
    s = await _sub_case(endpoint, n, seconds)
    print()
    print("| subscription (publish 100 ms, all nodes change every 100 ms) | tags | notifications/s "
          "| gateway CPU µs/notification | dropped |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    print(
        f"| queue_size {10 * n} | {s['tags']} | {s['notif_s']:,.0f} | {s['cpu_us']:.2f} "
        f"| {s['dropped']} |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tags", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--certs", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve is not None:
        asyncio.run(_serve(args.serve, args.tags, args.certs))
        return 0
    from tests.fixtures.ports import free_port

    port = free_port()
    with tempfile.TemporaryDirectory() as certs:
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port), "--tags", str(args.tags),
             "--certs", certs],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            endpoint = f"opc.tcp://127.0.0.1:{port}/edgeloop/sim"
            asyncio.run(_bench(endpoint, args.tags, args.seconds, Path(certs)))
        finally:
            server.terminate()
            server.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
