"""`edgeloop` command line: one module per sub-command under `agent/commands/`.

A command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Commands are discovered, so adding one is adding one file; imports stay lazy so
`edgeloop --help` and `edgeloop check` do not pay for numba or TFLite.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import agent.commands as _commands

EX_CONFIG = 78  # sysexits.h EX_CONFIG: systemd's RestartPreventExitStatus=78 stops a loop


def _command_modules() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(_commands.__path__) if not m.name.startswith("_")
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeloop",
        description="Edge gateway agent: Modbus/OPC UA acquisition, anomaly kernel, "
        "learned closed-loop control, history and MQTT store-and-forward.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in _command_modules():
        mod = importlib.import_module(f"agent.commands.{mod_name}")
        name = getattr(mod, "NAME", mod_name.replace("_", "-"))
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
