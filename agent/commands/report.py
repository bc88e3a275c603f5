"""`edgeloop report (CONFIG | DB) --out report.png|report.html`: plots from history."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "plot the control loop and the monitored equipment from the history database"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="the config file (its store.path is used) or a history .db")
    p.add_argument("--out", required=True, help="report.png or report.html")
    p.add_argument(
        "--faults",
        help="JSONL spans (id, start_wall, end_wall) to draw: the simulator's fault log, "
        "or known incidents written by hand",
    )
    p.add_argument("--from", dest="t_from", default="0", help="start (epoch s or ISO 8601)")
    p.add_argument("--to", dest="t_to", default="4e9", help="end (epoch s or ISO 8601)")
    p.add_argument("--tags", help="monitored tags to plot (default: the kernel groups' tags)")


def run(args: argparse.Namespace) -> int:
    from agent.report import make_report
    from agent.store.history import to_ns

    src = Path(args.source)
    loops: list[str] | None = None
    pv_tags: dict[str, str] = {}
    units: dict[str, str] = {}
    monitored: list[str] = args.tags.split(",") if args.tags else []
    if src.suffix in (".yaml", ".yml"):
        from agent.commands._common import compile_or_report

        compiled = compile_or_report(src)
        if compiled is None:
            return 78
        cfg = compiled.config
        db = Path(cfg.store.path)
        loops = [lp.name for lp in cfg.control.loops]
        pv_tags = {lp.name: lp.inputs["pv"] for lp in cfg.control.loops if "pv" in lp.inputs}
        units = {n: u for n, u in zip(compiled.table.names, compiled.table.units, strict=True) if u}
        if not monitored:
            monitored = [t for g in cfg.kernel.groups for t in g.tags]
    else:
        db = src
    if not db.exists():
        print(f"no history database at {db}")
        return 66
    out = make_report(
        db,
        args.out,
        loops=loops,
        monitored=monitored,
        faults_log=args.faults,
        pv_tags=pv_tags,
        units=units,
        t_from=to_ns(args.t_from) / 1e9,
        t_to=to_ns(args.t_to) / 1e9,
    )
    print(f"report written to {out}")
    return 0
