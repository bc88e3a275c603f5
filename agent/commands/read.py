"""`edgeloop read CONFIG`: one-shot read of the configured tags, the commissioning tool.

Runs the real acquisition path (compiled plans, drivers, the `Acquirer`) until every
selected poll group delivered a frame in which the selected tags are good, or until
`--timeout`; then prints value, unit and quality per tag (or a JSON object keyed by tag
name with `value`, `unit`, `quality`).  Exit status: 0 when every tag is good, 1 when some
are not, 78 for a bad config, 2 for an unknown --device/--tag.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
from typing import Any

HELP = "read the configured tags once and print value, unit and quality"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", nargs="?", default=None, help="YAML file (default config/edgeloop.yaml)"
    )
    parser.add_argument("--device", action="append", help="only this device (repeatable)")
    parser.add_argument("--tag", action="append", help="only this tag (repeatable)")
    parser.add_argument("--json", action="store_true", help="print a JSON object by tag name")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for good values (5)"
    )


def _value(table: Any, i: int) -> Any:
    p = table.points[i]
    if p.dtype == "string":
        return table.texts.get(i)
    x = float(table.raw[i])
    if not math.isfinite(x):
        return None
    if p.dtype in ("bool", "bit") and p.scale == 1.0 and p.offset == 0.0:
        return bool(x)
    if x.is_integer() and p.dtype not in ("float32", "float64") and p.scale == 1.0:
        return int(x)
    return x


def _text(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


async def _read(compiled: Any, devices: set[str], indices: list[int], wait_s: float) -> Any:
    from agent.acquire import Acquirer
    from agent.metrics import Metrics
    from drivers.base import Quality

    table = compiled.table
    wanted = set(indices)
    groups = [
        g
        for g in compiled.groups
        if g.device in devices and any(i in wanted for i in range(g.start, g.stop))
    ]
    pending = {(g.device, g.name) for g in groups if g.device in compiled.drivers}
    done = asyncio.Event()
    if not pending:
        done.set()

    def on_frame(group: Any, ts_ns: int) -> None:
        mine = [i for i in range(group.start, group.stop) if i in wanted]
        if all(table.quality[i] == Quality.GOOD for i in mine):
            pending.discard((group.device, group.name))
            if not pending:
                done.set()

    acq = Acquirer(compiled, Metrics(), on_frame, devices=devices)
    await acq.start()
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await done.wait()
    finally:
        await acq.stop()
    return acq.health()


def run(args: argparse.Namespace) -> int:
    from agent.cli import EX_CONFIG
    from agent.commands._common import compile_or_report
    from drivers.base import QUALITY_NAMES

    compiled = compile_or_report(args.config)
    if compiled is None:
        return EX_CONFIG
    table = compiled.table
    devices = set(args.device or compiled.devices)
    unknown = sorted(devices - set(compiled.devices))
    unknown += [t for t in args.tag or () if t not in table.index]
    if unknown:
        print(f"unknown device or tag: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if args.tag:
        indices = [table.index[t] for t in args.tag if table.devices[table.index[t]] in devices]
    else:
        indices = [i for i in range(len(table)) if table.devices[i] in devices]
    devices = {table.devices[i] for i in indices}
    health = asyncio.run(_read(compiled, devices, indices, args.timeout))

    from agent.tags import far_outside
    from drivers.base import reason_name

    far = far_outside(table.raw, table.min, table.max)
    rows = []
    reasons: dict[str, str] = {}
    hints: dict[str, str] = {}
    for i in indices:
        name = table.names[i]
        q = QUALITY_NAMES.get(int(table.quality[i]), str(int(table.quality[i])))
        if q != "good":
            reasons[name] = reason_name(int(table.reason[i]))
        if q == "bad" and far[i]:
            # the raw value is kept: show it, it is what tells a wrong order from a wrong scale
            hints[name] = (
                f"{table.raw[i]:.6g} is more than a span outside {table.min[i]:g}.."
                f"{table.max[i]:g}; check type, byte/word order and scale with `edgeloop probe`"
            )
        rows.append((name, _value(table, i), table.units[i], q, table.devices[i]))
    if args.json:
        doc = {
            name: {"value": v, "unit": u, "quality": q}
            | ({"reason": reasons[name]} if name in reasons else {})
            | ({"hint": hints[name]} if name in hints else {})
            for name, v, u, q, _ in rows
        }
        print(json.dumps(doc, indent=2))
    else:
        w = max([len(r[0]) for r in rows] + [3])
        print(f"{'tag':<{w}}  {'value':>14}  {'unit':<8} {'quality':<10} device")
        for name, v, u, q, dev in rows:
            print(f"{name:<{w}}  {_text(v):>14}  {u:<8} {q:<10} {dev}")
        for name, why in reasons.items():
            hint = f": {hints[name]}" if name in hints else ""
            print(f"{name}: {why}{hint}", file=sys.stderr)
    for dev, h in sorted(health.items()):
        if h["last_error"]:
            print(f"{dev}: {h['last_error']}", file=sys.stderr)
    return 0 if all(r[3] == "good" for r in rows) else 1
