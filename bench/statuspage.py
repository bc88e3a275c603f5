"""Status page cost: agent CPU with 0, 1 and 5 pages open at 1,000 tags @ 1 Hz (issue 17).

hw_sim (`--no-opcua`) serves the benchmark block and `edgeloop run` polls 1,000 float32 tags
once a second with the default kernel and history on (bench/service.py's set-up, MQTT off:
it is not what is measured).  A "page" is an HTTP client doing what app.js does: on opening,
GET / (the document), /status/meta, /status/trend and /status/history for the 200 tags a
page shows unfiltered (two requests of 100); then GET /status/live once a second on a
keep-alive connection.  The agent's CPU (utime + stime from /proc) is read over a window
with 0, 1 and 5 such pages; the difference to 0 pages is what the pages cost.

The agent's `http.max_connections_per_client` is raised to 8 here: all five simulated pages
come from 127.0.0.1, and the default (4) would turn the fifth away; five operators' browsers
come from five addresses.

Usage: .venv/bin/python bench/statuspage.py [--warmup 10] [--seconds 30] [--tags 1000]
       [--pages 0,1,5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import service as svc  # noqa: E402  (bench/service.py: the same agent set-up)

from lab.demo import free_port  # noqa: E402


class Page(threading.Thread):
    """One open status page: the loading requests, then /status/live at 1 Hz."""

    def __init__(self, port: int, names: list[str], stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.names, self.stop_ev = port, names, stop
        self.bytes = 0
        self.polls = 0
        self.errors = 0
        self.open_s = float("nan")  # wall time of the loading requests

    def _get(self, conn: http.client.HTTPConnection, path: str, accept: str = "*/*") -> None:
        conn.request("GET", path, headers={"Accept": accept})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            self.errors += 1
        self.bytes += len(body)

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            t0 = time.monotonic()
            self._get(conn, "/", "text/html")
            self._get(conn, "/status/meta")
            self._get(conn, "/status/trend?s=600")
            for k in range(0, min(200, len(self.names)), 100):
                self._get(conn, "/status/history?s=300&tags=" + ",".join(self.names[k : k + 100]))
            self.open_s = time.monotonic() - t0
            nxt = time.monotonic()
            while not self.stop_ev.is_set():
                self._get(conn, "/status/live")
                self.polls += 1
                nxt += 1.0
                self.stop_ev.wait(max(0.0, nxt - time.monotonic()))
        except (OSError, http.client.HTTPException):
            self.errors += 1
        finally:
            conn.close()


def live_size(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/status/live")
    n = len(conn.getresponse().read())
    conn.close()
    return n


def page_size(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/", headers={"Accept": "text/html"})
    n = len(conn.getresponse().read())
    conn.close()
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=30.0, help="measured window per case")
    ap.add_argument("--tags", type=int, default=1000)
    ap.add_argument("--pages", default="0,1,5")
    args = ap.parse_args()
    cases = [int(x) for x in args.pages.split(",") if x]
    print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-") as tmp:
        work = Path(tmp)
        cache = svc.ROOT / ".venv" / "numba-cache"
        sim = agent = None
        try:
            modbus_port = free_port()
            sim = svc.start_sim(modbus_port, work / "hw_sim.log")
            s = svc.Setup(work, modbus_port, None, args.tags, cache)
            orig = svc.bench_config

            def config(s: svc.Setup, interval_ms: int, run: str) -> dict:
                cfg = orig(s, interval_ms, run)
                cfg["http"]["max_connections_per_client"] = 8
                return cfg

            svc.bench_config = config
            agent = svc.start_agent(s, 1000, "statuspage")
            names = [p.name for p in svc.pointmap.bench_points(args.tags)]
            time.sleep(args.warmup)
            html_kb, live_kb = page_size(s.http_port) / 1024, live_size(s.http_port) / 1024
            for n in cases:
                stop = threading.Event()
                pages = [Page(s.http_port, names, stop) for _ in range(n)]
                for p in pages:
                    p.start()
                time.sleep(3.0)  # the pages' loading requests are not the steady cost
                c0, t0 = svc.cpu_s(agent.proc.pid), time.monotonic()
                b0 = sum(p.bytes for p in pages)
                time.sleep(args.seconds)
                c1, t1 = svc.cpu_s(agent.proc.pid), time.monotonic()
                b1 = sum(p.bytes for p in pages)
                stop.set()
                for p in pages:
                    p.join(5)
                cpu = (c1 - c0) / (t1 - t0) * 100
                opened = max((p.open_s for p in pages), default=float("nan"))
                kbs = (b1 - b0) / (t1 - t0) / 1024
                rows.append((n, cpu, kbs, sum(p.errors for p in pages), opened))
                print(f"  {n} page(s): agent CPU {cpu:.2f} % of one core", flush=True)
        finally:
            if agent is not None:
                svc.stop_agent(agent)
            svc.stop(sim)
    base = rows[0][1] if rows and rows[0][0] == 0 else float("nan")
    print()
    print(f"{args.tags} tags @ 1 Hz, history on, MQTT off; page document {html_kb:.1f} KiB, "
          f"/status/live {live_kb:.1f} KiB")  # fmt: skip
    print("| pages open | agent CPU, % of one core | of which the pages | per page | "
          "served KiB/s | errors | slowest page load s |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, cpu, kbs, err, opened in rows:
        extra = cpu - base
        per = f"{extra / n:.2f}" if n else "-"
        load = f"{opened:.2f}" if n else "-"
        print(f"| {n} | {cpu:.2f} | {extra:+.2f} | {per} | {kbs:.1f} | {err} | {load} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
