"""`edgeloop export CONFIG --from T1 --to T2 [--tags a,b] [--filtered] --out FILE.csv`.

Reads only the `store:` section of CONFIG (so history can be exported even while another
part of the file is being fixed), or a database given with `--db`. The CSV is wide: one row
per frame (timestamp x poll group), columns per tag for value, quality and flags.
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = "export history from the SQLite store to a wide CSV file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="edgeloop YAML file (its store.path is read)")
    p.add_argument("--db", help="history database path (instead of the config's store.path)")
    p.add_argument("--from", dest="t_from", required=True, help="start, ISO 8601 or epoch s")
    p.add_argument("--to", dest="t_to", required=True, help="end (exclusive), ISO 8601 or epoch s")
    p.add_argument("--tags", help="comma-separated tag names (default: all)")
    p.add_argument(
        "--filtered", action="store_true", help="export kernel-filtered values instead of raw"
    )
    p.add_argument("--out", required=True, help="output CSV file ('-' for stdout)")


def build_args(argv: list[str]) -> argparse.Namespace:
    """Parse export arguments alone (tests and scripts)."""
    p = argparse.ArgumentParser(prog="edgeloop export")
    add_arguments(p)
    return p.parse_args(argv)


def _db_path(args: argparse.Namespace) -> str:
    if args.db:
        return str(args.db)
    if not args.config:
        raise ValueError("give CONFIG or --db")
    import yaml

    from agent.store.settings import StoreConfig

    with open(args.config, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh) or {}
    section = doc.get("store") or {}
    return StoreConfig(**section).path


def run(args: argparse.Namespace) -> int:
    import yaml

    from agent.store.history import StoreError, open_reader, to_ns

    tags = [t.strip() for t in args.tags.split(",") if t.strip()] if args.tags else None
    try:
        path = _db_path(args)
        t_from, t_to = to_ns(args.t_from), to_ns(args.t_to)
        if t_to <= t_from:
            raise StoreError("--to must be after --from")
        reader = open_reader(path)
    except (OSError, ValueError, StoreError, yaml.YAMLError) as exc:
        print(f"edgeloop export: {exc}", file=sys.stderr)
        return 1
    tmp = None
    try:
        if args.out == "-":
            n = reader.export_csv(sys.stdout, t_from / 1e9, t_to / 1e9, tags, args.filtered)
        else:
            tmp = args.out + ".part"
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                n = reader.export_csv(fh, t_from / 1e9, t_to / 1e9, tags, args.filtered)
            os.replace(tmp, args.out)
            tmp = None
    except (OSError, StoreError) as exc:
        print(f"edgeloop export: {exc}", file=sys.stderr)
        return 1
    finally:
        reader.close()
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    print(f"edgeloop export: {n} rows from {path} -> {args.out}", file=sys.stderr)
    return 0
