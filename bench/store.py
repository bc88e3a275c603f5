"""History store throughput and size: the chosen wide-row schema against a long-format one.

1,000 tags in 10 poll groups of 100. Each schema gets the same frames; we time from the
first submit to the last commit (writer thread included) and measure the file afterwards.
Prints a table; results are recorded in bench/README.md (## store).

    .venv/bin/python bench/store.py [--seconds-of-data 60] [--rate-hz 10]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.metrics import Metrics
from agent.store import HistoryStore, StoreConfig
from agent.store.history import db_bytes
from agent.tags import TagTable

N_TAGS, N_GROUPS = 1000, 10


def Table(n: int) -> TagTable:
    return TagTable.for_names([f"tag{i:04d}" for i in range(n)])


class Group:
    def __init__(self, i: int, size: int) -> None:
        self.device, self.name = f"plc{i // 5}", f"g{i}"
        self.start, self.stop = i * size, (i + 1) * size


def bench_wide(tmp: str, frames: int, rate_hz: float) -> dict[str, float]:
    table = Table(N_TAGS)
    groups = [Group(i, N_TAGS // N_GROUPS) for i in range(N_GROUPS)]
    path = os.path.join(tmp, "wide.db")
    store = HistoryStore(StoreConfig(path=path, queue_max=10**6), table, Metrics())
    store.start()
    rng = np.random.default_rng(1)
    submit_s = 0.0
    t0 = time.perf_counter()
    for k in range(frames):
        table.raw[:] = 20 + rng.normal(size=N_TAGS)  # realistic, incompressible doubles
        table.value[:] = table.raw * 0.9
        table.score[:] = rng.random(N_TAGS)
        ts = 1_700_000_000_000_000_000 + int(k * 1e9 / rate_hz)
        a = time.perf_counter()
        for g in groups:
            store.submit_frame(g, ts)
        submit_s += time.perf_counter() - a
    store.close()
    wall = time.perf_counter() - t0
    samples = frames * N_TAGS
    return {
        "samples_per_s": samples / wall,
        "bytes_per_sample": db_bytes(path) / samples,
        "submit_us_per_frame": submit_s / (frames * N_GROUPS) * 1e6,
    }


def bench_long(tmp: str, frames: int, rate_hz: float) -> dict[str, float]:
    """One row per tag-sample with a (tag_id, ts) index: the obvious alternative."""
    path = os.path.join(tmp, "long.db")
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute(
        "CREATE TABLE samples (ts_ns INTEGER, tag_id INTEGER, raw REAL, value REAL, "
        "quality INTEGER, flags INTEGER, score REAL)"
    )
    con.execute("CREATE INDEX samples_tag_ts ON samples (tag_id, ts_ns)")
    rng = np.random.default_rng(1)
    ids = np.arange(N_TAGS)
    t0 = time.perf_counter()
    batch: list[tuple] = []
    for k in range(frames):
        raw = 20 + rng.normal(size=N_TAGS)
        value, score = raw * 0.9, rng.random(N_TAGS)
        ts = 1_700_000_000_000_000_000 + int(k * 1e9 / rate_hz)
        batch.extend(
            zip(
                [ts] * N_TAGS,
                ids.tolist(),
                raw.tolist(),
                value.tolist(),
                [0] * N_TAGS,
                [0] * N_TAGS,
                score.tolist(),
                strict=True,
            )
        )
        if (k + 1) % max(1, int(rate_hz / 2)) == 0:  # the same 500 ms batching
            con.execute("BEGIN")
            con.executemany("INSERT INTO samples VALUES (?,?,?,?,?,?,?)", batch)
            con.execute("COMMIT")
            batch.clear()
    if batch:
        con.execute("BEGIN")
        con.executemany("INSERT INTO samples VALUES (?,?,?,?,?,?,?)", batch)
        con.execute("COMMIT")
    con.close()
    wall = time.perf_counter() - t0
    samples = frames * N_TAGS
    return {
        "samples_per_s": samples / wall,
        "bytes_per_sample": db_bytes(path) / samples,
        "submit_us_per_frame": float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds-of-data", type=float, default=60.0)
    ap.add_argument("--rate-hz", type=float, default=10.0)
    args = ap.parse_args()
    frames = int(args.seconds_of_data * args.rate_hz)
    need = N_TAGS * 10  # 1,000 tags at 10 Hz
    with tempfile.TemporaryDirectory() as tmp:
        res = {"wide (chosen)": bench_wide(tmp, frames, args.rate_hz)}
        res["long (tag_id, ts index)"] = bench_long(tmp, frames, args.rate_hz)
    print(
        f"store: {N_TAGS} tags in {N_GROUPS} groups, {frames} frames ({frames * N_TAGS:,} "
        f"tag-samples), WAL, synchronous=NORMAL"
    )
    print(
        f"{'schema':26} {'tag-samples/s':>14} {'x 10 Hz need':>12} {'B/sample':>9} "
        f"{'GB/day 1Hz':>10} {'GB/day 10Hz':>11} {'submit us/frame':>15}"
    )
    for name, r in res.items():
        per_day = r["bytes_per_sample"] * N_TAGS * 86400 / 1e9
        print(
            f"{name:26} {r['samples_per_s']:14,.0f} {r['samples_per_s'] / need:12.1f} "
            f"{r['bytes_per_sample']:9.1f} {per_day:10.2f} {per_day * 10:11.2f} "
            f"{r['submit_us_per_frame']:15.1f}"
        )
    wide, long_ = res["wide (chosen)"], res["long (tag_id, ts index)"]
    print(
        f"wide/long: {wide['samples_per_s'] / long_['samples_per_s']:.1f}x faster, "
        f"{long_['bytes_per_sample'] / wide['bytes_per_sample']:.1f}x smaller"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
