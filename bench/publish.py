"""Publisher throughput, outage drain rate and payload size against a local mosquitto.

1,000 tags in 10 poll groups of 100, one message per group frame. Measured:
- sustained: frames committed while connected, timed until the outbox is empty again
  (encode + commit + send + PUBACK + delete);
- drain after an outage: the backlog of a 10-minute outage at 1 Hz (600 frames x 10 groups)
  committed with the broker down, then the broker started and the drain timed;
- bytes per tag-value of JSON and Sparkplug B payloads (one frame, and a 10-frame window).
A collecting subscriber is connected, so the broker really fans out every message.

    .venv/bin/python bench/publish.py [--outage-s 600]

`--per-value [--baseline REV]` measures instead what history + publish cost per tag-value in
the running agent's shape: 1,000 tags in 10 groups polled at 10 Hz in real time, every frame
submitted to a HistoryStore and a Publisher (connected, no subscriber), CPU of the whole
process (writer threads included) minus the same loop without them. With `--baseline REV`
the tree at REV is measured in the same run (`git archive` into a temporary directory, each
side in its own process, alternately) and the ratios printed. `+window` rows use
`batch_window_ms: 1000` (a group's frames of one second in one message; `--window-ms` sets it):

    .venv/bin/python bench/publish.py --per-value --baseline 5449459 [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.metrics import Metrics
from agent.publish import PublishConfig, Publisher
from agent.tags import TagTable
from tests.fixtures.mqtt import Broker, Collector

N_TAGS, N_GROUPS = 1000, 10


def Table(n: int) -> TagTable:
    return TagTable.for_names([f"tag{i:04d}" for i in range(n)])


class Group:
    def __init__(self, i: int, size: int) -> None:
        self.device, self.name = f"plc{i // 5}", f"g{i}"
        self.start, self.stop = i * size, (i + 1) * size


GROUPS = [Group(i, N_TAGS // N_GROUPS) for i in range(N_GROUPS)]
RNG = np.random.default_rng(1)


def fill(table: Table) -> None:
    table.raw[:] = np.round(20 + RNG.normal(size=N_TAGS), 4)  # 4 decimals, like real sensors
    table.value[:] = np.round(table.raw * 0.9, 4)
    table.score[:] = np.round(RNG.random(N_TAGS), 3)


def config(broker: Broker, tmp: str, name: str, **over: object) -> PublishConfig:
    return PublishConfig.model_validate(
        {
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "backoff_initial_s": 0.05,
                "backoff_max_s": 0.2,
            },
            "outbox": {"path": f"{tmp}/{name}.db", "max_mb": 4096},
            **over,
        }
    )


async def drained(pub: Publisher, metrics: Metrics, timeout_s: float = 600) -> None:
    end = time.monotonic() + timeout_s
    while metrics.get("edgeloop_outbox_depth") > 0 and time.monotonic() < end:  # noqa: ASYNC110
        await asyncio.sleep(0.005)


async def sustained(
    broker: Broker, tmp: str, frames: int, **over: object
) -> tuple[float, float, float]:
    """(messages/s, event-loop µs per publish_frame, process CPU µs per message).

    The CPU column is what the whole process spends per message (copy, hand-over, encode,
    commit, send, PUBACK, delete, and the subscriber thread of this bench): the cost the
    gateway pays, whichever thread pays it.
    """
    table, metrics = Table(N_TAGS), Metrics()
    pub = Publisher(config(broker, tmp, "sus" + str(over), **over), "bench", table, metrics)
    await pub.start()
    while not pub.connected:  # noqa: ASYNC110 (a bench polls; the service never does)
        await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    commit_s = 0.0
    for k in range(frames):
        fill(table)
        a = time.perf_counter()
        for g in GROUPS:
            pub.publish_frame(g, 1_700_000_000_000_000_000 + k * 10**9)
        commit_s += time.perf_counter() - a
        if k % 20 == 0:
            await asyncio.sleep(0)  # let the drain run, as the event loop would
    await drained(pub, metrics)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    await pub.close()
    n = frames * N_GROUPS
    return n / wall, commit_s / n * 1e6, cpu / n * 1e6


async def outage_drain(broker: Broker, tmp: str, outage_s: int, **over: object) -> dict:
    table, metrics = Table(N_TAGS), Metrics()
    broker.stop()
    pub = Publisher(config(broker, tmp, "drain" + str(over), **over), "bench", table, metrics)
    await pub.start()
    t0 = time.perf_counter()
    for k in range(outage_s):  # 1 Hz: one frame per group per second of outage
        fill(table)
        for g in GROUPS:
            pub.publish_frame(g, 1_700_000_000_000_000_000 + k * 10**9)
        if k % 100 == 99:  # the writer thread commits; keep its hand-over queue bounded
            await pub.flush(60)
    await pub.flush(60)
    fill_s = time.perf_counter() - t0
    depth = metrics.get("edgeloop_outbox_depth")
    nbytes = metrics.get("edgeloop_outbox_bytes")
    broker.start()
    t1 = time.perf_counter()
    while not pub.connected:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    t2 = time.perf_counter()
    await drained(pub, metrics)
    t3 = time.perf_counter()
    await pub.close()
    return {
        "messages": depth,
        "mb": nbytes / 1e6,
        "fill_s": fill_s,
        "reconnect_s": t2 - t1,
        "drain_s": t3 - t2,
        "x_realtime": outage_s / (t3 - t2),
    }


async def payload_sizes(tmp: str) -> dict[str, float]:
    """Bytes per tag-value of the payloads the publisher commits (read back from the outbox)."""
    from tests.fixtures.ports import free_port

    out = {}
    for enc in ("json", "sparkplug_b"):
        for window in (0, 1):
            table = Table(N_TAGS)
            cfg = PublishConfig.model_validate(
                {
                    "encoding": enc,
                    "batch_window_ms": 1000 if window else 0,
                    "outbox": {"path": f"{tmp}/size-{enc}-{window}.db"},
                    "mqtt": {"port": free_port()},  # nobody there: commit only
                }
            )
            pub = Publisher(cfg, "bench", table, Metrics())
            await pub.start()
            g = GROUPS[0]
            frames = 10 if window else 1
            for k in range(frames):
                fill(table)
                pub.publish_frame(g, 1_700_000_000_000_000_000 + k * 10**9)
            if window:
                pub._commit_windows()
            await pub.flush()
            assert pub._writer is not None
            row = (await pub._writer.call(lambda ob: ob.peek(1)))[0]
            await pub.close(drain_timeout_s=0.1)
            values = frames * (g.stop - g.start)
            out[f"{enc}, {'10-frame window' if window else '1 frame'}"] = len(row.payload) / values
    return out


async def amain(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp) / "broker")
        broker.start()
        col = Collector(broker, topic="edgeloop/#")
        try:
            rows = []
            for enc in ("json", "sparkplug_b"):
                msg_s, commit_us, cpu_us = await sustained(broker, tmp, args.frames, encoding=enc)
                rows.append((enc, msg_s, commit_us, cpu_us))
            drain = await outage_drain(broker, tmp, args.outage_s)
        finally:
            col.close()
            broker.stop()
        sizes = await payload_sizes(tmp)
    tags = N_TAGS // N_GROUPS
    print(
        f"publish: {N_TAGS} tags in {N_GROUPS} groups of {tags}, QoS 1, local mosquitto 2.0, "
        f"one subscriber"
    )
    print(
        f"{'encoding':12} {'messages/s':>11} {'tag-values/s':>13} {'loop us/msg':>12} "
        f"{'CPU us/msg':>11}"
    )
    for enc, msg_s, commit_us, cpu_us in rows:
        print(f"{enc:12} {msg_s:11,.0f} {msg_s * tags:13,.0f} {commit_us:12.1f} {cpu_us:11.1f}")
    d = drain
    print(
        f"outage {args.outage_s} s at 1 Hz: {d['messages']:.0f} messages ({d['mb']:.1f} MB) "
        f"committed in {d['fill_s']:.2f} s; reconnect {d['reconnect_s']:.2f} s; drain "
        f"{d['drain_s']:.2f} s = {d['x_realtime']:.0f}x real time "
        f"({d['messages'] / d['drain_s']:,.0f} messages/s)"
    )
    print(f"{'payload':28} {'bytes/tag-value':>15}")
    for k, v in sizes.items():
        print(f"{k:28} {v:15.1f}")
    return 0


# One side of --per-value, run as `python -c PER_VALUE_CHILD root port mode seconds encoding
# window_ms`
# with `root` first on sys.path, so the same code measures this tree and a baseline's.
PER_VALUE_CHILD = r"""
import asyncio, json, logging, sys, tempfile, time
root, port, mode, seconds, encoding = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(
    sys.argv[4]), sys.argv[5]
window_ms = int(sys.argv[6]) if len(sys.argv) > 6 else 1000
sys.path.insert(0, root)
import numpy as np
from agent.metrics import Metrics
from agent.publish import PublishConfig, Publisher
from agent.store.history import HistoryStore
from agent.store.settings import StoreConfig
from agent.tags import TagTable

N, G, HZ = 1000, 10, 10.0
class Group:
    def __init__(self, i, size):
        self.device, self.name = f"plc{i // 5}", f"g{i}"
        self.start, self.stop = i * size, (i + 1) * size
GROUPS = [Group(i, N // G) for i in range(G)]
rng = np.random.default_rng(1)
DATA = [np.round(20 + rng.normal(size=N), 4) for _ in range(16)]

async def main():
    logging.basicConfig(level=logging.CRITICAL)
    tmp = tempfile.mkdtemp()
    table, metrics = TagTable.for_names([f"tag{i:04d}" for i in range(N)]), Metrics()
    store = pub = None
    window = window_ms if mode.endswith("+window") else 0
    kind = mode.removesuffix("+window")
    if kind in ("history", "both"):
        store = HistoryStore(StoreConfig(path=f"{tmp}/h.db"), table, metrics)
        store.start()
    if kind in ("publish", "both"):
        cfg = PublishConfig.model_validate({"encoding": encoding, "batch_window_ms": window,
            "mqtt": {"host": "127.0.0.1", "port": port}, "outbox": {"path": f"{tmp}/o.db"}})
        pub = Publisher(cfg, "bench", table, metrics, GROUPS)
        await pub.start()
        while not pub.connected:
            await asyncio.sleep(0.01)
    period = 1.0 / HZ
    warm = 2.0
    t_next = time.monotonic()
    t_end = t_next + warm + seconds
    k = 0
    cpu0 = None
    polls = 0
    while True:
        now = time.monotonic()
        if cpu0 is None and now >= t_end - seconds:
            cpu0, polls = time.process_time(), 0
        if now >= t_end:
            break
        d = DATA[k % len(DATA)]
        table.raw[:] = d
        table.value[:] = d
        ts = time.time_ns()
        for g in GROUPS:
            if store is not None:
                store.submit_frame(g, ts)
            if pub is not None:
                pub.publish_frame(g, ts)
        k += 1
        polls += 1
        t_next += period
        await asyncio.sleep(max(0.0, t_next - time.monotonic()))
    cpu = time.process_time() - cpu0
    depth = metrics.get("edgeloop_outbox_depth") if pub is not None else 0
    if pub is not None:
        await pub.close()
    if store is not None:
        store.close()
    print(json.dumps({"cpu": cpu, "values": polls * N, "depth": depth}))

asyncio.run(main())
"""


MODES = ("floor", "history", "publish", "both", "publish+window", "both+window")


def per_value(args: argparse.Namespace) -> int:
    """History + publish CPU µs per tag-value at 1,000 tags @ 10 Hz, this tree (and REV)."""
    root = str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"now": root}
        if args.baseline:
            base = Path(tmp) / "base"
            base.mkdir()
            tar = subprocess.run(
                ["git", "-C", root, "archive", args.baseline, "agent", "drivers"],
                check=True,
                capture_output=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(base)], input=tar, check=True)
            trees = {"before": str(base), "now": root}
        broker = Broker(Path(tmp) / "broker")
        broker.start()
        res: dict[tuple[str, str], list[float]] = {}
        try:
            for _ in range(args.repeat):
                for mode in MODES:
                    for name, tree in trees.items():
                        out = subprocess.run(
                            [
                                sys.executable,
                                "-c",
                                PER_VALUE_CHILD,
                                tree,
                                str(broker.port),
                                mode,
                                str(args.seconds),
                                args.encoding,
                                str(args.window_ms),
                            ],
                            check=True,
                            capture_output=True,
                            text=True,
                            cwd=tmp,
                        ).stdout
                        r = json.loads(out.strip().splitlines()[-1])
                        res.setdefault((name, mode), []).append(r["cpu"] / r["values"] * 1e6)
        finally:
            broker.stop()
    best = {k: min(v) for k, v in res.items()}  # least disturbed by the shared machine
    print(
        f"history + publish ({args.encoding}): 1,000 tags in 10 groups @ 10 Hz, "
        f"{args.seconds:g} s per run, best of {args.repeat}; CPU µs per tag-value above the "
        f"floor loop (process CPU, writer threads included); +window: batch_window_ms "
        f"{args.window_ms}"
    )
    names = list(trees)
    print(
        f"{'part':16}" + "".join(f"{n:>10}" for n in names) + ("   ratio" if args.baseline else "")
    )
    floor = {n: best[(n, "floor")] for n in names}
    print(f"{'floor':16}" + "".join(f"{floor[n]:10.2f}" for n in names) + "  (loop alone)")
    for mode in MODES[1:]:
        vals = [best[(n, mode)] - floor[n] for n in names]
        line = f"{mode:16}" + "".join(f"{v:10.2f}" for v in vals)
        if args.baseline:
            line += f"  {vals[1] / vals[0]:6.2f}x"
        print(line)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--outage-s", type=int, default=600)
    ap.add_argument("--frames", type=int, default=300, help="frames per encoding, sustained")
    ap.add_argument("--per-value", action="store_true", help="history + publish µs/tag-value")
    ap.add_argument("--baseline", help="with --per-value: also measure this git revision")
    ap.add_argument("--seconds", type=float, default=10.0, help="with --per-value: per run")
    ap.add_argument("--repeat", type=int, default=2, help="with --per-value: runs per side")
    ap.add_argument("--encoding", default="json", help="with --per-value: json | sparkplug_b")
    ap.add_argument("--window-ms", type=int, default=1000, help="with --per-value: +window rows")
    args = ap.parse_args()
    if args.per_value:
        return per_value(args)
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
