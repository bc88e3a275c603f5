"""`edgeloop scan --host H --port P --unit U`: which Modbus addresses answer, as ranges.

Read-only: only the read function codes (FC01 coils, FC02 discrete inputs, FC03 holding,
FC04 input registers) are sent, through the Modbus driver's `read_raw` (the same checked
requests `probe` and the poller use).  For each table the range `--start .. --start+--count`
is read in blocks (125 registers, 2000 bits).  A block that answers is answering as a whole;
one that is refused is split in halves until the refused addresses are found one by one
(blocks of 16 or fewer are read address by address at once, cheaper than halving further).
Every address ends up with one status, coalesced into ranges:

    ok               the device answered
    illegal_address  exception 0x02 ILLEGAL_DATA_ADDRESS (or another exception: its code)
    timeout          no answer within --timeout (some devices stay silent for unknown addresses)
    not_scanned      the --max-requests budget ran out first

A device behind a gateway that answers 0x0B (target failed to respond) or a table the device
does not have (0x01 ILLEGAL_FUNCTION) ends that table at once; --max-timeouts timeouts in a
row end it too (nothing answers: a wrong unit id?).  Requests are paced to at most --rate per
second, and the total is bounded by --max-requests.

Exit status: 0 something answered, 1 nothing answered, 2 bad arguments, 3 no connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

HELP = "find which Modbus register/bit ranges answer (read-only, rate-limited, bounded)"

EX_CONNECT = 3
TABLES = ("holding", "input", "coil", "discrete")
BLOCK = {"holding": 125, "input": 125, "coil": 2000, "discrete": 2000}
SINGLES_AT = 16  # a refused block this small is read address by address
EXC_ILLEGAL_FUNCTION = 0x01
EXC_ILLEGAL_ADDRESS = 0x02
EXC_GATEWAY_NO_TARGET = 0x0B
EXC_GATEWAY_NO_PATH = 0x0A


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", required=True, help="device host (Modbus TCP)")
    p.add_argument("--port", type=int, default=502, help="device port (502)")
    p.add_argument("--unit", type=int, default=1, help="unit id (1)")
    p.add_argument(
        "--table",
        action="append",
        choices=TABLES,
        help="table to scan, repeatable (default: holding and input)",
    )
    p.add_argument("--start", type=int, default=0, help="first 0-based address (0)")
    p.add_argument("--count", type=int, default=1000, help="addresses to scan per table (1000)")
    p.add_argument("--rate", type=float, default=20.0, help="at most this many requests/s (20)")
    p.add_argument(
        "--max-requests", type=int, default=2000, help="total request budget, all tables (2000)"
    )
    p.add_argument(
        "--max-timeouts", type=int, default=5, help="end a table after N timeouts in a row (5)"
    )
    p.add_argument("--timeout", type=float, default=1.0, help="response timeout, s (1.0)")
    p.add_argument("--json", action="store_true", help="print a JSON document")
    p.add_argument("-v", "--verbose", action="store_true", help="show pymodbus's log messages")


# --- the pure part: statuses, coalescing, the search --------------------------------------


@dataclass(frozen=True)
class Outcome:
    """The answer to one read: ok, an exception code, a timeout."""

    status: str  # ok | exception | timeout
    code: int | None = None  # Modbus exception code


@dataclass(frozen=True)
class Range:
    """Consecutive addresses with the same status (`end` inclusive)."""

    start: int
    end: int
    status: str  # ok | illegal_address | exception | timeout | not_scanned
    code: int | None = None

    @property
    def count(self) -> int:
        return self.end - self.start + 1


def status_of(o: Outcome) -> tuple[str, int | None]:
    if o.status == "ok":
        return "ok", None
    if o.status == "timeout":
        return "timeout", None
    if o.code == EXC_ILLEGAL_ADDRESS:
        return "illegal_address", o.code
    return "exception", o.code


def coalesce(marks: dict[int, tuple[str, int | None]], start: int, count: int) -> list[Range]:
    """Ranges of equal status over start..start+count-1; unmarked addresses: not_scanned."""
    out: list[Range] = []
    for a in range(start, start + count):
        st, code = marks.get(a, ("not_scanned", None))
        if out and out[-1].status == st and out[-1].code == code and out[-1].end == a - 1:
            out[-1] = Range(out[-1].start, a, st, code)
        else:
            out.append(Range(a, a, st, code))
    return out


class TableEnded(Exception):
    """Scanning this table cannot go on (no such table, no such unit, silent device)."""


class Budget(Exception):
    """--max-requests used up."""


@dataclass
class Scanner:
    """Finds the status of every address of a range with few reads (see the module doc).

    `read(address, count)` does one request and returns its Outcome; the scanner counts
    requests against `max_requests` and ends a table on `max_timeouts` timeouts in a row.
    """

    read: Callable[[int, int], Awaitable[Outcome]]
    max_requests: int
    max_timeouts: int = 5
    requests: int = 0
    timeouts: int = 0
    _in_a_row: int = 0
    last: tuple[int, int, Outcome] | None = None  # the latest read and its answer

    def new_table(self) -> None:
        """Start the next table: the timeout streak restarts, the budget carries on."""
        self._in_a_row = 0
        self.last = None

    async def _one(self, address: int, count: int) -> Outcome:
        if self.requests >= self.max_requests:
            raise Budget
        self.requests += 1
        o = await self.read(address, count)
        self.last = (address, count, o)
        if o.status == "timeout":
            self.timeouts += 1
            self._in_a_row += 1
            if self._in_a_row >= self.max_timeouts:
                raise TableEnded(
                    f"{self._in_a_row} timeouts in a row (a wrong unit id, or not Modbus TCP?)"
                )
        else:
            self._in_a_row = 0
        if o.status == "exception" and o.code == EXC_ILLEGAL_FUNCTION:
            raise TableEnded("exception 0x01 ILLEGAL_FUNCTION: the device has no such table")
        if o.status == "exception" and o.code in (EXC_GATEWAY_NO_PATH, EXC_GATEWAY_NO_TARGET):
            raise TableEnded(
                f"exception 0x{o.code:02X} from a gateway: no device answers at this unit id"
            )
        return o

    async def scan(
        self, start: int, count: int, block: int
    ) -> tuple[dict[int, tuple[str, int | None]], str | None]:
        """{address: (status, code)} for what was scanned, and why it stopped early."""
        marks: dict[int, tuple[str, int | None]] = {}

        async def part(a: int, n: int, in_refused: bool = False) -> None:
            # in_refused: a part of a refused block; small ones go address by address
            if n <= SINGLES_AT and in_refused:
                for x in range(a, a + n):
                    marks[x] = status_of(await self._one(x, 1))
                return
            o = await self._one(a, n)
            if o.status == "ok" or n == 1:
                st = status_of(o)
                for x in range(a, a + n):
                    marks[x] = st
                return
            half = n // 2
            await part(a, half, in_refused=True)
            await part(a + half, n - half, in_refused=True)

        try:
            for a in range(start, start + count, block):
                await part(a, min(block, start + count - a))
        except Budget:
            return marks, f"stopped after --max-requests {self.max_requests}"
        except TableEnded as exc:
            if self.last is not None:  # the read that ended the table says what it got
                a, n, o = self.last
                for x in range(a, a + n):
                    marks.setdefault(x, status_of(o))
            return marks, str(exc)
        return marks, None


# --- I/O --------------------------------------------------------------------------------


def _argument_problem(args: argparse.Namespace) -> str | None:
    if not args.host.strip():
        return "--host is empty"
    if not 1 <= args.port <= 65535:
        return f"--port {args.port} is not a TCP port (1..65535)"
    if not 0 <= args.unit <= 255:
        return f"--unit {args.unit} is not a unit id (0..255)"
    if not (0 <= args.start <= 65535 and args.count >= 1 and args.start + args.count <= 65536):
        return "--start/--count must stay within addresses 0..65535 (count >= 1)"
    if not args.rate > 0 or not args.timeout > 0:
        return "--rate and --timeout must be > 0"
    if args.max_requests < 1 or args.max_timeouts < 1:
        return "--max-requests and --max-timeouts must be >= 1"
    return None


async def _scan(args: argparse.Namespace, tables: list[str]) -> dict[str, dict]:
    from drivers.base import ConnectError, DriverError
    from drivers.modbus import DeviceException, ResponseTimeout, create
    from drivers.modbus_config import ModbusDevice

    dev = ModbusDevice.for_command(
        name="scan", host=args.host, port=args.port, unit_id=args.unit, timeout_s=args.timeout,
        retries=0,
    )  # fmt: skip
    drv = create(dev, [])
    period = 1.0 / args.rate
    next_at = time.monotonic()
    table = tables[0]  # the table being scanned (the loop below moves it on)

    async def read(address: int, count: int) -> Outcome:
        nonlocal next_at
        now = time.monotonic()
        if next_at > now:
            await asyncio.sleep(next_at - now)
        next_at = max(now, next_at) + period
        try:
            await drv.read_raw(table, address, count, args.unit)
        except ResponseTimeout:
            return Outcome("timeout")
        except DeviceException as exc:
            return Outcome("exception", exc.code)
        except ConnectError:
            raise
        except DriverError:  # an answer that does not fit the request: treat as refused
            return Outcome("exception", None)
        return Outcome("ok")

    out: dict[str, dict] = {}
    scanner = Scanner(read, args.max_requests, args.max_timeouts)
    try:
        await drv.connect()
        for table in tables:
            before = scanner.requests
            scanner.new_table()
            marks, stopped = await scanner.scan(args.start, args.count, BLOCK[table])
            if scanner.requests >= scanner.max_requests and stopped is None:
                stopped = f"--max-requests {args.max_requests} used up"
            out[table] = {
                "ranges": coalesce(marks, args.start, args.count),
                "requests": scanner.requests - before,
                "stopped": stopped,
            }
    finally:
        await drv.close()
    return out


def _what(r: Range) -> str:
    if r.status == "exception":
        from drivers.modbus import exception_status

        return exception_status(r.code) if r.code is not None else "bad response"
    return {
        "ok": "answers",
        "illegal_address": "exception 0x02 ILLEGAL_DATA_ADDRESS",
        "timeout": "no answer (timeout)",
        "not_scanned": "not scanned",
    }[r.status]


def format_text(where: str, unit: int, results: dict[str, dict]) -> str:
    lines = []
    for table, res in results.items():
        word = "bits" if table in ("coil", "discrete") else "registers"
        ok = sum(r.count for r in res["ranges"] if r.status == "ok")
        lines.append(
            f"{where} unit {unit} {table}: {ok} {word} answer ({res['requests']} "
            + ("request)" if res["requests"] == 1 else "requests)")
            + (f"; {res['stopped']}" if res["stopped"] else "")
        )
        for r in res["ranges"]:
            span = f"{r.start}..{r.end}" if r.end != r.start else f"{r.start}"
            lines.append(f"  {span:>13}  {r.count:>5} {word:<9}  {_what(r)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if not args.verbose:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    problem = _argument_problem(args)
    if problem:
        print(f"edgeloop scan: {problem}", file=sys.stderr)
        return 2
    from drivers.base import ConnectError

    tables = list(dict.fromkeys(args.table or ["holding", "input"]))
    try:
        results = asyncio.run(_scan(args, tables))
    except ConnectError as exc:
        print(f"edgeloop scan: {exc}", file=sys.stderr)
        return EX_CONNECT
    where = f"{args.host}:{args.port}"
    if args.json:
        doc = {
            "host": args.host,
            "port": args.port,
            "unit": args.unit,
            "start": args.start,
            "count": args.count,
            "tables": {
                t: {
                    "requests": r["requests"],
                    "stopped": r["stopped"],
                    "ranges": [{**asdict(x), "count": x.count} for x in r["ranges"]],
                }
                for t, r in results.items()
            },
        }
        print(json.dumps(doc, indent=2))
    else:
        print(format_text(where, args.unit, results))
    answered = any(r.status == "ok" for res in results.values() for r in res["ranges"])
    return 0 if answered else 1
