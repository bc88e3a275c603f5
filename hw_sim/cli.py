"""Command line of the simulator, shared by `python -m hw_sim` and `edgeloop sim`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _user(text: str) -> tuple[str, str]:
    """`NAME:PASSWORD` of --opcua-user; the password may contain ':'."""
    name, sep, password = text.partition(":")
    if not sep or not name or not password:
        # never echo the argument: it may hold a password
        raise argparse.ArgumentTypeError("expected NAME:PASSWORD, both non-empty")
    return name, password


def _loops(text: str) -> tuple[str, ...]:
    """`--loops surge,exchanger` (or `all`)."""
    from hw_sim.pointmap import parse_loops

    try:
        return parse_loops(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's options (also used by agent/commands/sim.py)."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--modbus-port", type=int, default=5020, help="Modbus TCP port (5020)")
    parser.add_argument("--opcua-port", type=int, default=4840, help="OPC UA port (4840)")
    parser.add_argument(
        "--rtu-port", default=None, help="serial device for Modbus RTU, e.g. a socat pty"
    )
    parser.add_argument(
        "--speed", type=float, default=1.0, help="sim seconds per wall second (1.0)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of plant noise and faults")
    parser.add_argument("--scenario", default=None, help="scenario YAML (disturbances, faults)")
    parser.add_argument("--faults-log", default=None, help="ground-truth fault log (JSONL)")
    parser.add_argument(
        "--print-map",
        action="store_true",
        help="print the point map as JSON and exit (with the points of --loops)",
    )
    parser.add_argument(
        "--loops",
        metavar="NAMES",
        type=_loops,
        default=(),
        help="also run these loop plants, comma-separated: surge (tank level, unit 3), "
        "exchanger (heat exchanger, unit 4), or all",
    )
    parser.add_argument(
        "--loop-seed",
        type=int,
        default=None,
        help="seed the loop plants' parameters, disturbances and noise are drawn from "
        "(default: --seed)",
    )
    parser.add_argument(
        "--no-loop-disturbances",
        action="store_true",
        help="hold the loop plants' measured disturbances still",
    )
    parser.add_argument("--no-opcua", action="store_true", help="do not start the OPC UA server")
    parser.add_argument(
        "--opcua-certs",
        metavar="DIR",
        type=Path,
        default=None,
        help="generate (or reuse) server and client certificates in DIR and offer the secure "
        "policies Basic256Sha256, Aes128Sha256RsaOaep, Aes256Sha256RsaPss (Sign and "
        "SignAndEncrypt) besides None",
    )
    parser.add_argument(
        "--opcua-user",
        metavar="NAME:PASSWORD",
        type=_user,
        action="append",
        default=[],
        help="accept this user name and password (repeatable); anonymous stays allowed",
    )


def run(args: argparse.Namespace) -> int:
    """Print the map, or run plant + servers until SIGTERM / Ctrl-C."""
    if args.print_map:
        from hw_sim.pointmap import print_map

        print(print_map(args.loops))
        return 0
    names = [name for name, _ in args.opcua_user]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        print(f"hw_sim: --opcua-user given twice for {', '.join(dup)}", file=sys.stderr)
        return 2
    if args.opcua_certs is not None:
        args.opcua_certs = args.opcua_certs.resolve()  # printed paths work from anywhere
    if args.no_opcua and (args.opcua_certs is not None or args.opcua_user):
        print("hw_sim: --opcua-certs/--opcua-user have no effect with --no-opcua", file=sys.stderr)
    from hw_sim.serve import serve_forever

    return serve_forever(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hw_sim",
        description="Simulated plant (heater loop + pump skid, optional loop plants) behind "
        "Modbus TCP/RTU and OPC UA.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
