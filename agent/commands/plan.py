"""`edgeloop plan CONFIG`: every request each poll group sends, from the drivers' own plans.

The same plans the service runs (compiled before any connection), so the listing is what
goes on the wire: device, unit, function code, start, count and the tags each request
covers, then the totals per cycle and per second.
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "show every request each poll group sends (from the compiled read plans)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", nargs="?", default=None, help="YAML file (default config/edgeloop.yaml)"
    )
    parser.add_argument("--device", action="append", help="only this device (repeatable)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _tags(tags: tuple[str, ...], width: int = 60) -> str:
    text = ", ".join(tags)
    if len(text) <= width:
        return text
    return f"{tags[0]} .. {tags[-1]} ({len(tags)} tags)"


def run(args: argparse.Namespace) -> int:
    from agent.cli import EX_CONFIG
    from agent.commands._common import compile_or_report

    compiled = compile_or_report(args.config)
    if compiled is None:
        return EX_CONFIG
    wanted = set(args.device or compiled.devices)
    unknown = wanted - set(compiled.devices)
    if unknown:
        print(f"unknown device(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    groups = [g for g in compiled.groups if g.device in wanted]
    per_cycle = 0
    per_second = 0.0
    out: list[dict[str, object]] = []
    lines: list[str] = []
    for g in groups:
        reqs = compiled.requests(g)
        rate = 1000.0 / g.interval_ms if g.mode == "poll" else 0.0
        per_cycle += len(reqs) if g.mode == "poll" else 0
        per_second += len(reqs) * rate
        state = "" if compiled.devices[g.device].enabled else " [device disabled]"
        lines.append(
            f"{g.device}/{g.name}: every {g.interval_ms} ms ({g.mode}), {g.size} tags, "
            f"{len(reqs)} request{'s' if len(reqs) != 1 else ''}{state}"
        )
        for r in reqs:
            if r.start is None:  # node-addressed (OPC UA): no unit, no start address
                where = f"{r.function}  count {r.count}"
            else:
                where = (
                    f"unit {r.unit_id:<3} {r.function:<29} start {r.start:>5}  count {r.count:>4}"
                )
            lines.append(f"  {where}  {_tags(r.tags)}")
        out.append(
            {
                "device": g.device,
                "group": g.name,
                "interval_ms": g.interval_ms,
                "mode": g.mode,
                "requests": [
                    {
                        "unit_id": r.unit_id,
                        "function": r.function,
                        "start": r.start,
                        "count": r.count,
                        "tags": list(r.tags),
                    }
                    for r in reqs
                ],
            }
        )
    tags = sum(g.size for g in groups)
    total = (
        f"total: {len(groups)} groups, {tags} tags, {per_cycle} read requests per cycle, "
        f"{per_second:.1f} requests/s (subscriptions are pushed and not counted)"
    )
    if args.json:
        doc = {
            "groups": out,
            "requests_per_cycle": per_cycle,
            "requests_per_second": round(per_second, 3),
        }
        print(json.dumps(doc, indent=2))
    else:
        print("\n".join([*lines, total]))
    return 0
