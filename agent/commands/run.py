"""`edgeloop run CONFIG`: the service (what systemd starts)."""

from __future__ import annotations

import argparse

HELP = "run the gateway service (acquire, kernel, control, history, publish, telemetry)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default="config/edgeloop.yaml", help="YAML config file")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")


def run(args: argparse.Namespace) -> int:
    from agent.service import run_service

    return run_service(args.config, args.log_level)
