"""The CLI's own surface: `--version`, and commands from the entry-point group (the
simulator tooling in lab/) listed without the runtime importing them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent import cli


def test_version_names_the_distribution_and_python() -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    out = subprocess.run(
        [sys.executable, "-m", "agent", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith(f"edgeloop {cli.version()} (Python ")


def test_registered_commands_join_the_cli() -> None:
    mods = cli._command_modules()
    assert "agent.commands.run" in mods
    assert {"lab.commands.sim", "lab.commands.control_eval"} <= set(mods)
    names = set(cli.build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert {"run", "check", "commission", "sim", "control-eval"} <= names
