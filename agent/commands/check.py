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
    for note in modicon_notes(compiled.config):
        print(note)
    print(f"{path}: OK: {compiled.summary()}")
    return 0


# Modicon references: 3xxxx input registers, 4xxxx holding registers, 1xxxx discrete
# inputs; a PLC manual's "40001" is holding register 0 on the wire. (Six-digit references
# are above 65535 and refused as addresses anyway.)
_MODICON = {"holding": 40001, "input": 30001, "discrete": 10001}


def modicon_notes(cfg: object) -> list[str]:
    """A note (not an error: 40001 is a legal register) for each Modbus tag whose address
    looks like a Modicon reference of its own table, naming the 0-based address meant."""
    src = getattr(cfg, "source", None)
    out = []
    for i, dev in enumerate(getattr(cfg, "devices", [])):
        if getattr(dev, "driver", None) != "modbus":
            continue
        for j, g in enumerate(dev.poll_groups):
            for k, tag in enumerate(g.tags):
                base = _MODICON.get(tag.table)
                if base is None or not base <= tag.address < base + 9999:
                    continue
                p = ("devices", i, "poll_groups", j, "tags", k, "address")
                where = f"{src.file}:{src.line(p)}" if src else "<config>"
                out.append(
                    f"{where}: devices[{i}].poll_groups[{j}].tags[{k}].address: note: "
                    f"{tag.address} is read as {tag.table} register {tag.address} (0-based, on "
                    f"the wire); if it is a Modicon reference ({tag.address} in a PLC manual), "
                    f"the register is `address: {tag.address - base}`"
                )
    return out
