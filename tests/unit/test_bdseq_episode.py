"""The Sparkplug bdSeq file: a save that fails is warned once per episode (not per
connection) and its recovery is logged, through the shared `EpisodeLog`."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.publish.spb_node import BdSeqFile


def test_a_failing_save_warns_once_and_logs_the_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "missing" / "bdseq"  # its directory does not exist yet
    bd = BdSeqFile(str(path))
    with caplog.at_level(logging.INFO, logger="edgeloop.publish"):
        assert [bd.next(), bd.next(), bd.next()] == [0, 1, 2]  # goes on in memory
        (tmp_path / "missing").mkdir()
        assert bd.next() == 3
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("cannot save" in m for m in msgs) == 1
    assert sum("recovered after" in m and "(3 failures" in m for m in msgs) == 1
    assert path.read_text() == "3\n"
