"""Side by side on one Modbus server and one broker: edgeloop, a plain pymodbus poll loop (the
floor), and the ThingsBoard IoT gateway where it is installed (issue 18).

One hw_sim process serves the benchmark block (Modbus unit 10, float32 input registers) on
loopback, pinned to core 1; each contender runs alone against it, pinned to core 0, and polls
the same tags at the same interval, in poll groups of 1,000 tags (17 requests of up to 124
registers each); 6,000 tags are 3 devices (3 connections to the same server, each 2,000
distinct signals: hw_sim's block holds 2,000 and one device's tags may not overlap) of 2
groups each.

- floor: a child process polling with pymodbus alone (one connection, one task per group,
  drift-free schedule, numpy decode) and counting the values it read; no kernel, no
  history, no MQTT.  What any Python gateway on pymodbus pays at least.
- edgeloop acquire+kernel: `edgeloop run` with history and publish off; values = completed
  polls (GET /metrics) x tags per group.
- edgeloop full: history and MQTT publish on (JSON frames, mosquitto on loopback); values
  are counted at an MQTT subscriber in this process (tags x frames per message).
- ThingsBoard gateway: run only with `--tb-gateway PATH` (its console script in a
  throwaway venv: `python -m venv /tmp/tb && /tmp/tb/bin/pip install thingsboard-gateway`);
  otherwise skipped with a message.

CPU is utime + stime of the contender's process from /proc over the window (all threads);
µs/value = CPU seconds / values delivered.  RSS is VmRSS at the end of the window.

Usage: .venv/bin/python bench/peers.py [--seconds 20] [--warmup 8]
       [--cases 1000@100,1000@1000,6000@100] [--tb-gateway PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import service as svc  # noqa: E402  (bench/service.py: process helpers)

from hw_sim import pointmap  # noqa: E402
from lab.demo import Ports, free_port, start_sim  # noqa: E402
from lab.demo import stop_process as stop  # noqa: E402

AGENT_CORE = 0
SIM_CORE = 1
GROUP_TAGS = 1000
FLOOR = "plain pymodbus poll loop (floor)"
WHO = {
    "floor": FLOOR,
    "acquire+kernel": "edgeloop acquire+kernel",
    "full": "edgeloop full (history + MQTT)",
}


@dataclass(frozen=True)
class Case:
    tags: int
    interval_ms: int

    @property
    def devices(self) -> int:
        """One device (connection) per 2,000 tags: hw_sim's block and the config's
        no-overlap rule allow no more distinct signals on one unit."""
        return max(1, -(-self.tags // pointmap.BENCH_MAX_POINTS))

    @property
    def groups(self) -> int:
        """Poll groups per device."""
        return max(1, self.tags // self.devices // GROUP_TAGS)

    @property
    def per_group(self) -> int:
        return self.tags // self.devices // self.groups

    @property
    def label(self) -> str:
        return f"{self.tags:,} tags @ {self.interval_ms} ms"

    def expected(self, seconds: float) -> float:
        return self.tags * seconds * 1000.0 / self.interval_ms


@dataclass
class Result:
    case: Case
    who: str
    values: float
    cpu_s: float
    wall_s: float
    sim_cpu_s: float
    rss_mb: float
    note: str = ""
    poll_ms: float = float("nan")
    overruns: float = float("nan")

    @property
    def delivered(self) -> float:
        return self.values / self.case.expected(self.wall_s)

    @property
    def us_per_value(self) -> float:
        return self.cpu_s / self.values * 1e6 if self.values else float("nan")


def pinned(core: int) -> Any:
    def fn() -> None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {core})

    return fn


# --- the floor: plain pymodbus ------------------------------------------------------------


def requests_for(n: int) -> list[tuple[int, int]]:
    """(address, count) reads for float32 signals 0..n-1: 62 per request, never split."""
    out = []
    for first in range(0, n, 62):
        k = min(62, n - first)
        out.append((2 * first, 2 * k))
    return out


async def floor_loop(
    port: int, sim_pid: int, case: Case, warmup_s: float, window_s: float
) -> dict[str, Any]:
    from pymodbus.client import AsyncModbusTcpClient

    clients = [
        AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2.0, retries=0)
        for _ in range(case.devices)
    ]
    for c in clients:
        await c.connect()
    # one request in flight per connection, as edgeloop's driver: pymodbus 3.16 fails a
    # second concurrent request on one client
    locks = {id(c): asyncio.Lock() for c in clients}
    reqs = requests_for(case.per_group)
    loop = asyncio.get_running_loop()
    counted = [0]
    counting = [False]
    errors = [0]
    period = case.interval_ms / 1000.0

    async def group(client: Any, first: int, phase: float) -> None:
        next_t = loop.time() + phase
        while True:
            delay = next_t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            n = 0
            try:
                for a, c in reqs:
                    async with locks[id(client)]:
                        rr = await client.read_input_registers(
                            first + a, count=c, device_id=pointmap.BENCH_UNIT
                        )
                    vals = np.frombuffer(np.asarray(rr.registers, dtype=">u2").tobytes(), ">f4")
                    n += vals.size
            except Exception:  # counted, and the poll goes on as a gateway's would
                errors[0] += 1
                n = 0
                async with locks[id(client)]:
                    if not client.connected:
                        await client.connect()
            if counting[0]:
                counted[0] += n
            next_t += period
            while next_t < loop.time():
                next_t += period

    slots = [(k, j) for k in range(case.devices) for j in range(case.groups)]
    tasks = [
        asyncio.create_task(group(clients[k], 2 * case.per_group * j, period * i / len(slots)))
        for i, (k, j) in enumerate(slots)
    ]
    await asyncio.sleep(warmup_s)
    c0, s0, t0 = time.process_time(), svc.cpu_s(sim_pid), time.monotonic()
    counting[0] = True
    await asyncio.sleep(window_s)
    counting[0] = False
    c1, s1, t1 = time.process_time(), svc.cpu_s(sim_pid), time.monotonic()
    rss = svc.status_kb(os.getpid(), "VmRSS")
    return {
        "values": counted[0], "cpu_s": c1 - c0, "wall_s": t1 - t0, "rss_kb": rss,
        "sim_cpu_s": s1 - s0, "tasks": len(tasks), "errors": errors[0],
    }  # fmt: skip


async def floor_child(port: int, sim_pid: int, case: Case, warmup_s: float,
                      window_s: float) -> None:  # fmt: skip
    """Print the floor's result and exit from inside the loop.  Not `asyncio.run`'s return:
    its teardown cancels the poll tasks, pymodbus 3.16 turns the cancellation of a read in
    flight into an ordinary error that the poll loop counts and goes on, and the teardown
    waits for that task forever (the child then printed nothing, and the parent's
    `splitlines()[-1]` raised IndexError)."""
    r = await floor_loop(port, sim_pid, case, warmup_s, window_s)
    print(json.dumps(r), flush=True)
    os._exit(0)  # the poll tasks and connections go with the process


def run_floor(work: Path, port: int, sim: subprocess.Popen[bytes], case: Case, warmup_s: float,
              window_s: float) -> Result:  # fmt: skip
    """The floor in a child process pinned like the agent; RuntimeError (with the tail of
    its stderr) when it exits or times out without its JSON line."""
    args = [str(port), str(sim.pid), str(case.tags), str(case.interval_ms), str(warmup_s),
            str(window_s)]  # fmt: skip
    log = work / f"floor_{case.tags}_{case.interval_ms}.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--floor-child", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=ROOT,
            preexec_fn=pinned(AGENT_CORE),
        )
    timeout = warmup_s + window_s + 60
    try:
        out, _ = proc.communicate(timeout=timeout)
        why = f"exit code {proc.returncode}"
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        why = f"no result within {timeout:.0f} s, killed"
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no stderr)"]
        raise RuntimeError(f"floor child printed no result ({why}): {tail[0]}")
    r = json.loads(lines[-1])
    note = f"{r['errors']} failed polls" if r["errors"] else ""
    return Result(case, FLOOR, r["values"], r["cpu_s"], r["wall_s"], r["sim_cpu_s"],
                  r["rss_kb"] / 1024, note=note)  # fmt: skip


# --- edgeloop -----------------------------------------------------------------------------


def agent_config(work: Path, case: Case, modbus_port: int, mqtt_port: int | None,
                 http_port: int, full: bool) -> dict[str, Any]:  # fmt: skip
    points = pointmap.bench_points(case.per_group * case.groups)
    devices = []
    for k in range(case.devices):
        groups = []
        for j in range(case.groups):
            tags = [
                {"name": f"d{k}_{p.name}", "table": "input", "address": p.address,
                 "type": "float32", "min": p.min, "max": p.max}
                for p in points[j * case.per_group : (j + 1) * case.per_group]
            ]  # fmt: skip
            groups.append({"name": f"g{j}", "interval_ms": case.interval_ms, "tags": tags})
        devices.append(
            {
                "name": f"bench_plc{k}",
                "driver": "modbus",
                "transport": "tcp",
                "host": "127.0.0.1",
                "port": modbus_port,
                "unit_id": pointmap.BENCH_UNIT,
                "timeout_s": min(1.0, case.interval_ms / 1000.0 * 0.8),
                "retries": 0,
                "poll_groups": groups,
            }
        )
    run = f"{case.tags}_{case.interval_ms}_{'full' if full else 'acq'}"
    return {
        "site": "bench",
        "devices": devices,
        "store": {"enabled": full, "path": str(work / f"history_{run}.db")},
        "http": {"port": http_port},
        "publish": {
            "enabled": full and mqtt_port is not None,
            "outbox": {"path": str(work / f"outbox_{run}.db")},
            "mqtt": {"host": "127.0.0.1", "port": mqtt_port or 1883},
        },
    }


class Subscriber:
    """Counts tag values in edgeloop's JSON frame messages (tags x frames per message)."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.values = 0
        self.counting = False
        self._tags: dict[str, int] = {}
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("edgeloop/bench/#", qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        if not self.counting or b'"frames"' not in msg.payload:
            return  # events and status messages carry no frames
        n = self._tags.get(msg.topic)
        if n is None:
            n = len(json.loads(msg.payload)["tags"])
            self._tags[msg.topic] = n
        with self._lock:
            self.values += n * msg.payload.count(b'"ts_ns"')

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run_edgeloop(work: Path, sim: subprocess.Popen[bytes], case: Case, modbus_port: int,
                 mqtt_port: int | None, warmup_s: float, window_s: float, full: bool,
                 cache: Path) -> Result:  # fmt: skip
    http_port = free_port()
    cfg = agent_config(work, case, modbus_port, mqtt_port, http_port, full)
    name = f"{case.tags}_{case.interval_ms}_{'full' if full else 'acq'}"
    path = work / f"edgeloop_{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "MALLOC_ARENA_MAX": "2",
           "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    log = work / f"agent_{name}.log"
    notify = svc.NotifyListener(work / f"notify_{name}.sock")
    env["NOTIFY_SOCKET"] = str(notify.path)
    sub = Subscriber(mqtt_port) if full and mqtt_port is not None else None
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [str(svc.EDGELOOP), "run", str(path)], stdout=f, stderr=subprocess.STDOUT, env=env,
            cwd=work, preexec_fn=pinned(AGENT_CORE),
        )  # fmt: skip
    try:
        t_exec = time.monotonic()
        deadline = t_exec + svc.READY_WAIT_S  # a cold start builds the AOT kernel
        while notify.ready_at(0.5) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
                why = (
                    f"exited with {proc.returncode}"
                    if proc.returncode is not None
                    else f"still starting after {time.monotonic() - t_exec:.0f} s"
                )
                raise RuntimeError(f"edgeloop run sent no READY=1 ({why}): {tail[0]}")
        time.sleep(warmup_s)
        m0 = svc.get_metrics(http_port)
        c0, s0, t0 = svc.cpu_s(proc.pid), svc.cpu_s(sim.pid), time.monotonic()
        if sub:
            sub.counting = True
        time.sleep(window_s)
        if sub:
            sub.counting = False
        c1, s1, t1 = svc.cpu_s(proc.pid), svc.cpu_s(sim.pid), time.monotonic()
        rss = svc.status_kb(proc.pid, "VmRSS")
        m1 = svc.get_metrics(http_port)
    finally:
        stop(proc, 10.0)
        notify.close()
        if sub:
            sub.close()
    polls = m1.get("edgeloop_polls_total", 0) - m0.get("edgeloop_polls_total", 0)
    values = sub.values if sub else polls * case.per_group
    who = WHO["full" if full else "acquire+kernel"]
    over = m1.get("edgeloop_poll_overruns_total", 0) - m0.get("edgeloop_poll_overruns_total", 0)
    return Result(
        case, who, values, c1 - c0, t1 - t0, s1 - s0, rss / 1024,
        poll_ms=svc.summary_mean(m0, m1, "edgeloop_poll_latency_seconds") * 1e3,
        overruns=over,
        note="" if not full or sub else "publish off: mosquitto not installed",
    )  # fmt: skip


# --- ThingsBoard gateway ------------------------------------------------------------------


def tb_gateway_note(path: str | None) -> str:
    if not path:
        return (
            "ThingsBoard gateway: skipped (not installed here; give --tb-gateway PATH to its "
            "console script in a throwaway venv)"
        )
    if not Path(path).exists():
        return f"ThingsBoard gateway: skipped ({path} does not exist)"
    return (
        f"ThingsBoard gateway: {path} found, but this script does not drive it yet "
        "(its Modbus connector and MQTT output need a generated tb_gateway.yaml)"
    )


# --- report -------------------------------------------------------------------------------


def fmt(v: float, spec: str = ",.1f") -> str:
    return "-" if v != v else format(v, spec)


def table(results: list[Result]) -> str:
    lines = [
        "| case | who | values/s | delivered | CPU % of a core | CPU µs/value | vs floor "
        "| sim CPU % | RSS MB | poll ms | overruns |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    floors = {r.case: r for r in results if r.who == FLOOR}
    for r in results:
        fl = floors.get(r.case)
        ratio = r.us_per_value / fl.us_per_value if fl and fl.values else float("nan")
        lines.append(
            f"| {r.case.label} | {r.who}{' (' + r.note + ')' if r.note else ''} "
            f"| {fmt(r.values / r.wall_s, ',.0f')} | {fmt(r.delivered, '.0%')} "
            f"| {fmt(100 * r.cpu_s / r.wall_s)} | {fmt(r.us_per_value, '.2f')} "
            f"| {fmt(ratio, '.2f')}{'x' if ratio == ratio else ''} "
            f"| {fmt(100 * r.sim_cpu_s / r.wall_s)} "
            f"| {fmt(r.rss_mb)} | {fmt(r.poll_ms, '.2f')} | {fmt(r.overruns, '.0f')} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window per run")
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--cases", default="1000@100,1000@1000,6000@100", help="TAGS@INTERVAL_MS,..")
    ap.add_argument("--tb-gateway", default=None, help="thingsboard-gateway console script")
    ap.add_argument("--floor-child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.floor_child:
        port, sim_pid, tags, interval, warm, window = args.floor_child
        case = Case(int(tags), int(interval))
        asyncio.run(floor_child(int(port), int(sim_pid), case, float(warm), float(window)))
        return 1  # floor_child exits the process itself
    cases = [Case(*map(int, c.split("@"))) for c in args.cases.split(",") if c]
    print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}; contender on core {AGENT_CORE}, "
        f"hw_sim on core {SIM_CORE}",
        flush=True,
    )
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="edgeloop-peers-") as tmp:
        work = Path(tmp)
        cache = work / "numba-cache"
        cache.mkdir()
        mosq, mqtt_port = svc.start_mosquitto(work)
        port = free_port()
        sim = start_sim(
            Ports(modbus=port), work / "hw_sim.log", opcua=False, preexec_fn=pinned(SIM_CORE)
        )
        try:
            for case in cases:
                for who in ("floor", "acquire+kernel", "full"):
                    print(f"{case.label}: {who}...", flush=True)
                    try:
                        if who == "floor":
                            r = run_floor(work, port, sim, case, args.warmup, args.seconds)
                        else:
                            r = run_edgeloop(
                                work, sim, case, port, mqtt_port, args.warmup, args.seconds,
                                who == "full", cache,
                            )  # fmt: skip
                    except Exception as exc:  # say so in the table, measure the rest
                        why = f"{type(exc).__name__}: {exc}"
                        print(f"  failed: {why}", flush=True)
                        nan = float("nan")
                        r = Result(case, WHO[who], nan, nan, args.seconds, nan, nan,
                                   note=f"failed: {why}")  # fmt: skip
                    results.append(r)
        finally:
            stop(sim)
            stop(mosq)
    print()
    print(table(results))
    print()
    print(tb_gateway_note(args.tb_gateway))
    return 0


if __name__ == "__main__":
    sys.exit(main())
