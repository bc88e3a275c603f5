"""`edgeloop check CONFIG`: load and compile a config exactly as start-up does, no I/O.

Prints one line per problem (`file:line: path: message`) and exits 78 (EX_CONFIG), or a
one-line summary and exits 0.
"""

from __future__ import annotations

import argparse

HELP = "validate and compile a config without connecting; exit 78 on any problem"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", nargs="?", default=None, help="YAML file (default config/edgeloop.yaml)"
    )


def run(args: argparse.Namespace) -> int:
    from agent.cli import EX_CONFIG
    from agent.commands._common import compile_or_report
    from agent.config import default_config_path

    path = args.config or default_config_path()
    compiled = compile_or_report(path, count=True)
    if compiled is None:
        return EX_CONFIG
    print(f"{path}: OK: {compiled.summary()}")
    return 0
