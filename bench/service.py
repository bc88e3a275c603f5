"""Whole-pipeline benchmark: `edgeloop run` against hw_sim with 1,000 tags at 1 Hz and 10 Hz.

Both run as child processes, exactly as in production: hw_sim (`python -m hw_sim
--no-opcua`) serves the benchmark block (Modbus unit 10, float32 input registers) and the
agent is `.venv/bin/edgeloop run CONFIG` - the command systemd runs - with a generated config:
one Modbus device, N float32 tags in one poll group, the kernel's per-tag stage with the
default `kernel:` section, history on, HTTP on a free port, MQTT publishing on against a
loopback mosquitto when one is installed (off otherwise; the table says which).

Measured from outside the agent, over a steady window after a warm-up:

- CPU %: utime + stime of the agent process (all threads) from /proc/<pid>/stat, per wall
  second, in % of one core; the simulator's CPU is shown too (it shares the machine);
- RSS: VmRSS from /proc/<pid>/status, max over the window; VmHWM (peak since exec);
- history: frames committed to the SQLite `frames` table (start vs end of the window) x tags
  per frame = tag-samples/s; database growth = pages in use (WAL included) per second x 86,400;
- kernel time per frame and poll latency: deltas of the summaries on GET /metrics;
- period jitter: the poll-start timestamps (`frames.ts_ns`) within the window against the
  configured interval;
- start-up: process start to the READY=1 datagram on $NOTIFY_SOCKET (an AF_UNIX datagram
  socket this bench reads in a thread), with NUMBA_CACHE_DIR a fresh empty directory (cold)
  and then the same directory again (warm).

The RSS floor rows come from one child interpreter that imports step by step and then
builds (does not start) the agent's `Pipeline` from the same config: they show what the
libraries cost before the agent holds any data.  Throughput and growth are committed rows
between two snapshots, so a window is off by at most one store batch (500 ms) at each end.

Usage: .venv/bin/python bench/service.py [--warmup 10] [--seconds 30] [--tags 1000]
       [--rates 1,10] [--no-mqtt] [--no-control] [--kernel auto|aot|jit] [--arena-max N]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hw_sim import pointmap  # noqa: E402
from lab.demo import Ports, free_port, start_sim, wait_port  # noqa: E402
from lab.demo import stop_process as stop  # noqa: E402

EDGELOOP = Path(sys.executable).with_name("edgeloop")  # the venv's console script
RSS_TARGET_MB = 120.0
READY_TARGET_S = 3.0
READY_WAIT_S = 120.0  # a cold numba cache on a loaded 2-core box can take a while


# --- helpers ----------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kb(pid: int, key: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM); 0 when the process is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size (shared pages split among their users), /proc/<pid>/smaps_rollup."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {name{labels}: value}, plus {name: total over label sets}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, val = line.rpartition(" ")
        try:
            v = float(val)
        except ValueError:
            continue
        out[key] = v
        base = key.split("{", 1)[0]
        if base == key:
            continue
        if base.endswith("_max"):
            out[base] = max(out.get(base, float("-inf")), v)
        else:
            out[base] = out.get(base, 0.0) + v
    return out


def get_metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5.0) as r:
        return parse_metrics(r.read().decode())


def summary_mean(before: dict[str, float], after: dict[str, float], name: str) -> float:
    """Mean of a summary over the window: delta of _sum / delta of _count."""
    n = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
    s = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)
    return s / n if n > 0 else float("nan")


def period_jitter_ms(ts_ns: np.ndarray, interval_ms: float) -> tuple[float, float, float]:
    """p50, p99 and max of |period - interval| in ms over consecutive poll starts."""
    if len(ts_ns) < 3:
        return (float("nan"),) * 3
    dev = np.abs(np.diff(np.sort(ts_ns)).astype(np.float64) / 1e6 - interval_ms)
    return float(np.percentile(dev, 50)), float(np.percentile(dev, 99)), float(dev.max())


@dataclass
class DbSnapshot:
    frames: int
    tag_samples: int
    used_bytes: int
    file_bytes: int


def db_snapshot(path: Path) -> DbSnapshot:
    """Frames and tag-samples committed so far, pages in use (WAL included), files on disk."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        rows = con.execute(
            "SELECT g.tags, count(*) FROM frames f JOIN groups g ON g.id = f.group_id "
            "GROUP BY f.group_id"
        ).fetchall()
        page = con.execute("PRAGMA page_size").fetchone()[0]
        pages = con.execute("PRAGMA page_count").fetchone()[0]
        free = con.execute("PRAGMA freelist_count").fetchone()[0]
    finally:
        con.close()
    frames = sum(n for _, n in rows)
    samples = sum(len(json.loads(tags)) * n for tags, n in rows)
    files = sum(
        p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()
    )
    return DbSnapshot(frames, samples, (pages - free) * page, files)


def frame_times(path: Path, t_from_ns: int, t_to_ns: int) -> np.ndarray:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        rows = con.execute(
            "SELECT ts_ns FROM frames WHERE ts_ns BETWEEN ? AND ? ORDER BY ts_ns",
            (t_from_ns, t_to_ns),
        ).fetchall()
    finally:
        con.close()
    return np.array([r[0] for r in rows], dtype=np.int64)


class NotifyListener:
    """An AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET.

    Read continuously in a thread so a datagram's arrival time is when it was sent, not when
    the bench got round to looking.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._ready = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            text = data.decode(errors="replace")
            self.messages.append((now, text))
            if "READY=1" in text.splitlines():
                self._ready.set()

    def ready_at(self, timeout_s: float) -> float | None:
        """Monotonic time of the first READY=1, or None if it did not come in time."""
        if not self._ready.wait(timeout_s):
            return None
        return next(t for t, m in self.messages if "READY=1" in m.splitlines())

    def close(self) -> None:
        self._closed = True
        self._thread.join(2.0)
        self._sock.close()
        self.path.unlink(missing_ok=True)


# --- config -----------------------------------------------------------------------------------


@dataclass
class Setup:
    work: Path
    modbus_port: int
    mqtt_port: int | None
    tags: int
    numba_cache: Path
    control: bool = True
    kernel: str = "auto"  # EDGELOOP_KERNEL: auto (the AOT module), jit
    arena_max: str | None = None  # MALLOC_ARENA_MAX (unset, as systemd/edgeloop.service)
    http_port: int = field(default_factory=free_port)


def bench_config(s: Setup, interval_ms: int, run: str) -> dict[str, Any]:
    """One Modbus device, `s.tags` float32 bench signals in one poll group, default kernel."""
    tags = [
        {
            "name": p.name,
            "table": "input",
            "address": p.address,
            "type": "float32",
            "min": p.min,
            "max": p.max,
        }
        for p in pointmap.bench_points(s.tags)
    ]
    cfg: dict[str, Any] = {
        "site": "bench",
        "devices": [
            {
                "name": "bench_plc",
                "driver": "modbus",
                "transport": "tcp",
                "host": "127.0.0.1",
                "port": s.modbus_port,
                "unit_id": pointmap.BENCH_UNIT,
                "timeout_s": min(1.0, interval_ms / 1000.0 * 0.8),
                "retries": 0,
                "poll_groups": [{"name": "all", "interval_ms": interval_ms, "tags": tags}],
            }
        ],
        "store": {"path": str(s.work / f"history_{run}.db")},
        "http": {"port": s.http_port},
        "publish": {
            "enabled": s.mqtt_port is not None,
            "outbox": {"path": str(s.work / f"outbox_{run}.db")},
            "mqtt": {"host": "127.0.0.1", "port": s.mqtt_port or 1883},
        },
    }
    if s.control:
        cfg["devices"].append(HEATER_DEVICE | {"port": s.modbus_port})
        cfg["control"] = CONTROL
        cfg["kernel"] = {"tags": {"heater_power": {"hampel_window": 0, "stuck_samples": 0}}}
    return cfg


# The shadow-mode heater loop of config/examples/control_shadow.yaml (TFLite policy beside
# its PID fallback) on hw_sim's heater, so the control stage and its interpreter run too.
HEATER_DEVICE: dict[str, Any] = {
    "name": "heater_plc",
    "driver": "modbus",
    "host": "127.0.0.1",
    "unit_id": pointmap.HEATER_UNIT,
    "timeout_s": 0.15,
    "poll_groups": [
        {
            "name": "fast",
            "interval_ms": 200,
            "tags": [
                {"name": "tank_temp", "table": "input", "address": 0, "type": "float32",
                 "min": 0, "max": 120},
                {"name": "inlet_flow", "table": "input", "address": 2, "type": "float32",
                 "min": 0, "max": 60},
                {"name": "inlet_temp", "table": "input", "address": 4, "type": "float32",
                 "min": 0, "max": 80},
                {"name": "heater_power", "table": "holding", "address": 10, "type": "float32",
                 "writable": True, "min": 0, "max": 100, "max_rate_per_s": 25},
                {"name": "temp_setpoint", "table": "holding", "address": 12, "type": "float32",
                 "writable": True, "min": 0, "max": 95},
                {"name": "heartbeat", "table": "holding", "address": 16, "type": "uint16",
                 "writable": True, "min": 0, "max": 65535},
            ],
        }
    ],
}  # fmt: skip
CONTROL: dict[str, Any] = {
    "loops": [
        {
            "name": "tank_temperature",
            "period_ms": 500,
            "model": "heater_policy.tflite",
            "inputs": {"pv": "tank_temp", "flow": "inlet_flow", "inlet_temp": "inlet_temp"},
            "output": "heater_power",
            "setpoint": {"tag": "temp_setpoint", "min": 30.0, "max": 80.0},
            "mode": "shadow",
            "fallback": {"kind": "pid", "kp": 2.7, "ti_s": 17.8, "td_s": 0.0},
            "output_max": 80,
            "heartbeat": {"tag": "heartbeat", "every_periods": 1},
        }
    ]
}


# --- processes --------------------------------------------------------------------------------


def start_mosquitto(work: Path) -> tuple[subprocess.Popen[bytes] | None, int | None]:
    exe = shutil.which("mosquitto")
    if exe is None:
        return None, None
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"log_dest file {work / 'mosquitto.log'}\n"
    )
    proc = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if not wait_port(port, 5.0, proc):
        stop(proc)
        return None, None
    return proc, port


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    notify: NotifyListener
    t_exec: float
    ready_s: float | None
    log: Path

    def ready_in_log(self) -> float | None:
        """The agent's own 'ready in X s' (pipeline started -> first poll cycle)."""
        for line in self.log.read_text(errors="replace").splitlines():
            if "ready in " in line:
                with contextlib.suppress(ValueError, IndexError):
                    return float(line.split("ready in ", 1)[1].split()[0])
        return None


def start_agent(s: Setup, interval_ms: int, run: str) -> Agent:
    """Start `edgeloop run` and wait for READY=1 on its notify socket."""
    cfg_path = s.work / f"edgeloop_{run}.yaml"
    cfg_path.write_text(yaml.safe_dump(bench_config(s, interval_ms, run), sort_keys=False))
    notify = NotifyListener(s.work / f"notify_{run}.sock")
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(notify.path),
        "NUMBA_CACHE_DIR": str(s.numba_cache),
        "EDGELOOP_KERNEL": s.kernel,
        **({"MALLOC_ARENA_MAX": s.arena_max} if s.arena_max else {}),
        "PYTHONUNBUFFERED": "1",  # as systemd/edgeloop.service
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    log = s.work / f"agent_{run}.log"
    with open(log, "wb") as f:
        t_exec = time.monotonic()
        proc = subprocess.Popen(
            [str(EDGELOOP), "run", str(cfg_path)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=s.work,
        )
    ready = None
    deadline = t_exec + READY_WAIT_S
    while ready is None and time.monotonic() < deadline and proc.poll() is None:
        ready = notify.ready_at(0.5)
    agent = Agent(proc, notify, t_exec, None if ready is None else ready - t_exec, log)
    if ready is None:
        stop_agent(agent)
        raise RuntimeError(f"edgeloop run sent no READY=1 ({run}); see {log}")
    return agent


def stop_agent(a: Agent) -> int | None:
    rc = stop(a.proc, 10.0)
    a.notify.close()
    return rc


# --- measurements -----------------------------------------------------------------------------


@dataclass
class RunResult:
    rate_hz: float
    ready_s: float
    cpu_pct: float
    sim_cpu_pct: float
    rss_mb: float
    hwm_mb: float
    pss_mb: float
    exported_rss_mb: float
    samples_per_s: float
    expected_per_s: float
    mb_per_day: float
    kernel_us: float
    poll_ms: float
    jitter_ms: tuple[float, float, float]
    overruns: float
    poll_errors: float
    published: float
    dropped: float
    exit_code: int | None
    libs: list[str]


def measure(
    s: Setup, sim: subprocess.Popen[bytes], rate_hz: float, warmup_s: float, window_s: float
) -> RunResult:
    interval_ms = round(1000 / rate_hz)
    run = f"{rate_hz:g}hz"
    a = start_agent(s, interval_ms, run)
    db = s.work / f"history_{run}.db"
    try:
        time.sleep(warmup_s)
        if a.proc.poll() is not None:
            raise RuntimeError(f"edgeloop run exited during warm-up; see {a.log}")
        m0, d0 = get_metrics(s.http_port), db_snapshot(db)
        c0, sc0, w0, t0_ns = cpu_s(a.proc.pid), cpu_s(sim.pid), time.monotonic(), time.time_ns()
        rss = 0
        while time.monotonic() - w0 < window_s:
            rss = max(rss, status_kb(a.proc.pid, "VmRSS"))
            time.sleep(0.25)
        c1, sc1, w1, t1_ns = cpu_s(a.proc.pid), cpu_s(sim.pid), time.monotonic(), time.time_ns()
        d1 = db_snapshot(db)
        rss = max(rss, status_kb(a.proc.pid, "VmRSS"))
        hwm = status_kb(a.proc.pid, "VmHWM")
        pss = pss_kb(a.proc.pid)
        libs = loaded_libraries(a.proc.pid)
        m1 = get_metrics(s.http_port)
        ts = frame_times(db, t0_ns, t1_ns)
    finally:
        rc = stop_agent(a)
    wall = w1 - w0
    return RunResult(
        rate_hz=rate_hz,
        ready_s=a.ready_s or float("nan"),
        cpu_pct=100 * (c1 - c0) / wall,
        sim_cpu_pct=100 * (sc1 - sc0) / wall,
        rss_mb=rss / 1024,
        hwm_mb=hwm / 1024,
        pss_mb=pss / 1024,
        exported_rss_mb=m1.get("process_resident_memory_bytes", float("nan")) / 2**20,
        samples_per_s=(d1.tag_samples - d0.tag_samples) / wall,
        expected_per_s=s.tags * rate_hz,
        mb_per_day=(d1.used_bytes - d0.used_bytes) / wall * 86400 / 1e6,
        kernel_us=summary_mean(m0, m1, "edgeloop_kernel_seconds") * 1e6,
        poll_ms=summary_mean(m0, m1, "edgeloop_poll_latency_seconds") * 1e3,
        jitter_ms=period_jitter_ms(ts, interval_ms),
        overruns=m1.get("edgeloop_poll_overruns_total", 0)
        - m0.get("edgeloop_poll_overruns_total", 0),
        poll_errors=m1.get("edgeloop_poll_errors_total", 0)
        - m0.get("edgeloop_poll_errors_total", 0),
        published=(
            m1.get("edgeloop_publish_messages_total", 0)
            - m0.get("edgeloop_publish_messages_total", 0)
        )
        / wall,
        dropped=m1.get("edgeloop_store_dropped_total", 0)
        - m0.get("edgeloop_store_dropped_total", 0),
        exit_code=rc,
        libs=libs,
    )


StartUp = tuple[float, float | None, int | None, float]


def startup(s: Setup) -> StartUp:
    """Process start -> READY=1 at 1 Hz; also the agent's own pipeline-started -> READY part,
    the exit status after SIGTERM and the peak RSS (VmHWM, MB) at READY=1."""
    a = start_agent(s, 1000, "startup")
    hwm = status_kb(a.proc.pid, "VmHWM") / 1024
    rc = stop_agent(a)
    return a.ready_s or float("nan"), a.ready_in_log(), rc, hwm


FLOOR_STEPS = (
    ("python + numpy", "import numpy"),
    ("+ pymodbus, pydantic, yaml", "import pymodbus.client, pydantic, yaml"),
    ("+ aiomqtt, paho", "import aiomqtt, paho.mqtt.client"),
    (
        "+ the agent modules `edgeloop run` imports for this config",
        "import agent.service, agent.acquire, agent.kernel, agent.store.history, "
        "agent.publish, agent.telemetry.http, drivers.modbus\n"
        "from agent.metrics import Metrics\n"
        "from agent.telemetry.sdnotify import Watchdog",
    ),
    ("+ config loaded and compiled (1 Hz bench config)", "c = agent.service.load_and_compile(CFG)"),
    (
        "+ `Pipeline` built, not started",
        "async def build():\n"
        "    m = Metrics()\n"
        "    return agent.service.Pipeline(c, m, Watchdog(metrics=m, stall_s=None))\n"
        "p = asyncio.run(build())",
    ),
    (
        "+ kernel warm-up and one step per group (the AOT module, or numba's JIT with "
        "EDGELOOP_KERNEL=jit, from the warm cache)",
        "p.kernel.warmup()\nfor g in c.groups:\n    p.kernel.process(g)\nMODS = loaded()",
    ),
    ("(not loaded by the AOT kernel) + numba, what the JIT kernel adds", "import numba"),
    ("(not loaded by this config) + asyncua, what an OPC UA device adds", "import asyncua"),
)

FLOOR_PROBE = """
import asyncio, json, sys
HEAVY = ('numpy', 'numba', 'llvmlite', 'pymodbus', 'asyncua', 'ai_edge_litert', 'aiomqtt',
         'paho', 'pydantic', 'yaml', 'cryptography')

def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1])

def loaded():
    return sorted({m.split('.')[0] for m in sys.modules} & set(HEAVY))

ns = {'CFG': sys.argv[1], 'asyncio': asyncio, 'loaded': loaded, 'MODS': []}
out = [rss()]
for st in json.loads(sys.argv[2]):
    exec(st, ns)
    out.append(rss())
print(json.dumps({'kb': out, 'mods': ns['MODS']}))
"""


def rss_floor(cfg: Path, env: dict[str, str]) -> tuple[list[tuple[str, float]], list[str]]:
    """RSS of a fresh interpreter after each cumulative step (one child process), and the
    heavy packages the agent's pipeline imports for this config."""
    stmts = [st for _, st in FLOOR_STEPS]
    out = subprocess.run(
        [sys.executable, "-c", FLOOR_PROBE, str(cfg), json.dumps(stmts)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=180,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"RSS floor probe failed:\n{out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    names = ["python (asyncio, json imported)", *(n for n, _ in FLOOR_STEPS)]
    return [(n, k / 1024) for n, k in zip(names, res["kb"], strict=True)], res["mods"]


def loaded_libraries(pid: int) -> list[str]:
    """Which heavy libraries a running agent actually mapped (their shared objects)."""
    with contextlib.suppress(OSError):
        maps = Path(f"/proc/{pid}/maps").read_text()
        return [
            lib
            for lib, marker in (
                ("numba", "/numba/"),
                ("llvmlite", "llvmlite"),
                ("ai_edge_litert", "ai_edge_litert"),
                ("numpy", "/numpy/"),
            )
            if marker in maps
        ]
    return []


# --- report -----------------------------------------------------------------------------------


def fmt(v: float, spec: str = ",.0f") -> str:
    return "-" if v != v else format(v, spec)  # NaN -> "-"


def table(
    runs: list[RunResult],
    tags: int,
    mqtt: bool,
    cold: StartUp,
    warm: list[StartUp],
    floor: list[tuple[str, float]],
    mods: list[str],
    setup: Setup,
) -> str:
    pub = "on (mosquitto, loopback)" if mqtt else "off (mosquitto not installed)"
    ctl = (
        "the heater loop (TFLite policy in shadow, PID fallback, 6 more tags at 5 Hz)"
        if setup.control
        else "off"
    )
    arena = setup.arena_max or "unset"
    lines = [
        f"{tags} float32 tags, one poll group, kernel per-tag stage (defaults), store on, "
        f"publish {pub}, http on, control {ctl}; EDGELOOP_KERNEL={setup.kernel}, "
        f"MALLOC_ARENA_MAX={arena}",
        "",
        "| rate | agent CPU % | sim CPU % | RSS max MB | PSS MB | exported RSS MB | VmHWM MB "
        "| history tag-samples/s (of polled) | DB growth GB/day | kernel µs/frame | poll ms "
        "| period jitter ms p50/p99/max | overruns | errors | store drops | MQTT msg/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        j = "/".join(fmt(x, ".1f") for x in r.jitter_ms)
        lines.append(
            f"| {r.rate_hz:g} Hz | {fmt(r.cpu_pct, '.1f')} | {fmt(r.sim_cpu_pct, '.1f')} | "
            f"{fmt(r.rss_mb, '.1f')} | {fmt(r.pss_mb, '.1f')} | {fmt(r.exported_rss_mb, '.1f')} | "
            f"{fmt(r.hwm_mb, '.1f')} | "
            f"{fmt(r.samples_per_s)} ({fmt(r.samples_per_s / r.expected_per_s, '.0%')}) | "
            f"{fmt(r.mb_per_day / 1000, '.2f')} | {fmt(r.kernel_us, '.1f')} | "
            f"{fmt(r.poll_ms, '.2f')} | {j} | {r.overruns:.0f} | {r.poll_errors:.0f} | "
            f"{r.dropped:.0f} | {fmt(r.published, '.1f')} |"
        )
    rss_max = max((r.rss_mb for r in runs), default=float("nan"))
    lines += [
        "",
        "| start-up to READY=1 (1 Hz config) | s from process start | of which after the "
        "pipeline started (first poll + first kernel step) | VmHWM at READY=1 MB |",
        "|---|---:|---:|---:|",
        f"| cold numba cache | {fmt(cold[0], '.2f')} | {fmt(cold[1] or float('nan'), '.2f')} "
        f"| {cold[3]:.1f} |",
    ]
    for i, w in enumerate(warm, 1):
        in_log = fmt(w[1] or float("nan"), ".2f")
        lines.append(
            f"| warm numba cache, start {i} | {fmt(w[0], '.2f')} | {in_log} | {w[3]:.1f} |"
        )
    for r in runs:
        lines.append(
            f"| warm, start of the {r.rate_hz:g} Hz run | {fmt(r.ready_s, '.2f')} | - | - |"
        )
    lines += ["", "| RSS floor (fresh interpreter, cumulative imports) | MB |", "|---|---:|"]
    lines += [f"| {n} | {mb:.1f} |" for n, mb in floor]
    lines += ["", f"Heavy packages the pipeline imports for this config: {', '.join(mods)}."]
    warm_all = [w[0] for w in warm] + [r.ready_s for r in runs]
    med, worst = float(np.median(warm_all)), max(warm_all)
    lines += [
        "",
        f"Targets: RSS <= {RSS_TARGET_MB:.0f} MB at {tags} tags: "
        f"{'met' if rss_max <= RSS_TARGET_MB else 'MISSED'} ({rss_max:.1f} MB max); "
        f"READY=1 <= {READY_TARGET_S:.0f} s with a warm cache: "
        f"{'met' if med <= READY_TARGET_S else 'MISSED'} on the median ({med:.2f} s), "
        f"{'met' if worst <= READY_TARGET_S else 'MISSED'} on the worst ({worst:.2f} s) "
        f"of {len(warm_all)} warm starts.",
    ]
    exits = [cold[2], *(w[2] for w in warm), *(r.exit_code for r in runs)]
    lines.append(f"Agent exit status after SIGTERM (every start): {exits}.")
    libs = sorted({lib for r in runs for lib in r.libs})
    lines.append(f"Shared objects mapped by the running agent: {', '.join(libs) or '-'}.")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds before each window")
    ap.add_argument("--seconds", type=float, default=30.0, help="measured window per rate")
    ap.add_argument("--tags", type=int, default=1000)
    ap.add_argument("--rates", default="1,10", help="poll rates in Hz, comma separated")
    ap.add_argument("--warm-starts", type=int, default=3, help="warm-cache start-ups to time")
    ap.add_argument("--no-mqtt", action="store_true", help="publish off even with mosquitto")
    ap.add_argument("--no-control", action="store_true", help="no control loop")
    ap.add_argument(
        "--kernel",
        default="auto",
        choices=("auto", "aot", "jit"),
        help="EDGELOOP_KERNEL for the agent",
    )
    ap.add_argument(
        "--arena-max",
        default="2",
        help="MALLOC_ARENA_MAX for the agent ('' = unset, glibc's default)",
    )
    args = ap.parse_args()
    if not EDGELOOP.exists():
        print(f"{EDGELOOP} not found: install the package into the venv first", file=sys.stderr)
        return 2
    rates = [float(x) for x in args.rates.split(",") if x]
    print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-") as tmp:
        work = Path(tmp)
        cache = work / "numba-cache"
        cache.mkdir()
        mosq, mqtt_port = (None, None) if args.no_mqtt else start_mosquitto(work)
        sim = None
        try:
            modbus_port = free_port()
            sim = start_sim(Ports(modbus=modbus_port), work / "hw_sim.log", opcua=False)
            s = Setup(
                work, modbus_port, mqtt_port, args.tags, cache, control=not args.no_control,
                kernel=args.kernel, arena_max=args.arena_max or None,
            )  # fmt: skip
            print("start-up, cold numba cache...", flush=True)
            cold = startup(s)
            cached = sum(1 for _ in cache.rglob("*.nbc"))
            print(
                f"  READY=1 after {cold[0]:.2f} s; {cached} numba cache files (.nbc) written",
                flush=True,
            )
            warm = []
            for i in range(args.warm_starts):
                print(f"start-up, warm numba cache ({i + 1}/{args.warm_starts})...", flush=True)
                warm.append(startup(s))
                print(f"  READY=1 after {warm[-1][0]:.2f} s", flush=True)
            print("RSS floor (imports only)...", flush=True)
            floor, mods = rss_floor(
                work / "edgeloop_startup.yaml",
                {**os.environ, "NUMBA_CACHE_DIR": str(cache), "EDGELOOP_KERNEL": args.kernel},
            )
            runs = []
            for hz in rates:
                print(
                    f"{hz:g} Hz: {args.warmup:g} s warm-up, {args.seconds:g} s window", flush=True
                )
                runs.append(measure(s, sim, hz, args.warmup, args.seconds))
        finally:
            stop(sim)
            stop(mosq)
        print()
        print(table(runs, args.tags, mqtt_port is not None, cold, warm, floor, mods, s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
