"""`edgeloop sim`: run the simulated plant and PLCs (same options as `python -m hw_sim`)."""

from __future__ import annotations

import argparse

HELP = "Run the simulated plant behind Modbus TCP/RTU and OPC UA (python -m hw_sim)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hw_sim.cli import add_arguments as sim_arguments

    sim_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hw_sim.cli import run as sim_run

    return sim_run(args)
