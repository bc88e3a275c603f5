"""`edgeloop check CONFIG`: load and compile a config exactly as start-up does, no I/O.

Prints one line per problem (`file:line: path: message`) and exits 78 (EX_CONFIG), or a
one-line summary and exits 0.
"""

from __future__ import annotations

import argparse
import sys

HELP = "validate and compile a config without connecting; exit 78 on any problem"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", nargs="?", default=None, help="YAML file (default config/edgeloop.yaml)"
    )


def run(args: argparse.Namespace) -> int:
    from agent.cli import EX_CONFIG
    from agent.config import ConfigError, default_config_path, load_config
    from agent.tags import compile_config

    path = args.config or default_config_path()
    try:
        compiled = compile_config(load_config(path))
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        n = len(e.issues)
        print(f"{path}: {n} problem{'s' if n != 1 else ''}", file=sys.stderr)
        return EX_CONFIG
    print(f"{path}: OK: {compiled.summary()}")
    return 0
