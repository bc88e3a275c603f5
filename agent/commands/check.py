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
    for note in device_notes(compiled.config):
        print(note)
    print(f"{path}: OK: {compiled.summary()}")
    return 0


def device_notes(cfg: object) -> list[str]:
    """One line per note a device's driver raises (`DeviceBase.notes`: legal values that
    are most likely mistaken), at its file:line; notes never fail the check."""
    from drivers.configbase import render_path

    src = getattr(cfg, "source", None)
    out = []
    for i, dev in enumerate(getattr(cfg, "devices", [])):
        for rel, message in dev.notes():
            p = ("devices", i, *rel)
            where = f"{src.file}:{src.line(p)}" if src else "<config>"
            out.append(f"{where}: {render_path(p)}: note: {message}")
    return out
