"""The broken-config corpus: every tests/cases/<name>/config.yaml fails with expected.txt.

Each folder holds one config with one kind of mistake (or several, for the all-at-once
case) and the exact lines `edgeloop check` prints for it.  New folders are picked up
automatically.  The configs go through the same load + compile as `edgeloop check`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import EX_CONFIG, main
from agent.config import ConfigError, parse_config
from agent.tags import compile_config

CASES = Path(__file__).resolve().parents[1] / "cases"
NAMES = sorted(p.name for p in CASES.iterdir() if (p / "config.yaml").exists())


def test_the_corpus_is_there() -> None:
    assert len(NAMES) >= 100


@pytest.mark.parametrize("name", NAMES)
def test_case(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = CASES / name
    monkeypatch.chdir(folder)  # as `edgeloop check config.yaml` in the folder: data files beside it
    text = (folder / "config.yaml").read_text()
    expected = (folder / "expected.txt").read_text().strip().splitlines()
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(text, "config.yaml"))
    assert str(info.value).splitlines() == expected
    assert len(info.value.issues) == len(expected)


def test_check_command_prints_the_lines_and_exits_78(capsys, monkeypatch) -> None:
    monkeypatch.chdir(CASES / "many_problems_at_once")
    assert main(["check", "config.yaml"]) == EX_CONFIG
    err = capsys.readouterr().err.splitlines()
    expected = (CASES / "many_problems_at_once" / "expected.txt").read_text().splitlines()
    assert err[: len(expected)] == expected
    assert err[-1] == f"config.yaml: {len(expected)} problems"
