"""`edgeloop` command line: one module per sub-command under `agent/commands/`.

A command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Commands are discovered, so adding one is adding one file; imports stay lazy so
`edgeloop --help` and `edgeloop check` do not pay for numba or TFLite. Modules outside the
runtime (the simulator tooling in `lab/`, a third-party package) join through the
`edgeloop.commands` entry-point group: name = "package.module".
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from importlib.metadata import PackageNotFoundError, entry_points
from importlib.metadata import version as _dist_version

import agent.commands as _commands

EX_CONFIG = 78  # sysexits.h EX_CONFIG: systemd's RestartPreventExitStatus=78 stops a loop


ENTRY_POINT_GROUP = "edgeloop.commands"


def version() -> str:
    """The installed distribution's version (what a bug report needs first)."""
    try:
        return _dist_version("edgeloop")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _command_modules() -> list[str]:
    """Dotted module names: the runtime's own commands, then the registered ones."""
    own = sorted(
        f"agent.commands.{m.name}"
        for m in pkgutil.iter_modules(_commands.__path__)
        if not m.name.startswith("_")
    )
    extra = sorted(ep.value for ep in entry_points(group=ENTRY_POINT_GROUP))
    return own + [m for m in extra if m not in own]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeloop",
        description="Edge gateway agent: Modbus/OPC UA acquisition, anomaly kernel, "
        "learned closed-loop control, history and MQTT store-and-forward.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"edgeloop {version()} (Python {sys.version.split()[0]})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_path in _command_modules():
        try:
            mod = importlib.import_module(mod_path)
        except ModuleNotFoundError:  # a registered tool whose package is not installed here
            continue
        name = getattr(mod, "NAME", mod_path.rsplit(".", 1)[-1].replace("_", "-"))
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from agent.telemetry.logsetup import setup_cli_logging

    setup_cli_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
