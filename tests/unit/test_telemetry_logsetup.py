"""Log format: sd-daemon priority prefixes for journald, timestamps for a terminal."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.telemetry.logsetup import setup_logging, syslog_priority, use_journal_format


@pytest.fixture(autouse=True)
def _restore_root_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("EDGELOOP_LOG_FORMAT", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {n: logging.getLogger(n).level for n in ("asyncua", "pymodbus")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for n, lv in noisy.items():
        logging.getLogger(n).setLevel(lv)
    logging.captureWarnings(False)


def test_priorities_follow_sd_daemon() -> None:
    assert [syslog_priority(x) for x in (50, 40, 30, 20, 10)] == [2, 3, 4, 6, 7]
    assert syslog_priority(35) == 4  # a custom level between WARNING and ERROR
    assert syslog_priority(5) == 7


def test_journal_format_has_prefix_and_no_timestamp() -> None:
    buf = io.StringIO()
    setup_logging("DEBUG", stream=buf, journal=True)
    log = logging.getLogger("agent.acquire")
    log.error("heater_plc: timeout")
    log.info("started")
    log.debug("detail")
    assert buf.getvalue().splitlines() == [
        "<3>agent.acquire: heater_plc: timeout",
        "<6>agent.acquire: started",
        "<7>agent.acquire: detail",
    ]


def test_journal_format_prefixes_every_traceback_line() -> None:
    buf = io.StringIO()
    setup_logging("INFO", stream=buf, journal=True)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("agent.service").exception("fatal")
    lines = buf.getvalue().splitlines()
    assert len(lines) > 3
    assert all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>RuntimeError: boom"


def test_human_format_has_time_and_level() -> None:
    buf = io.StringIO()
    setup_logging("INFO", stream=buf, journal=False)
    logging.getLogger("agent.store").warning("disk %d%% full", 91)
    line = buf.getvalue().strip()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} WARNING agent\.store: disk 91% full", line
    ), line


def test_level_filters_and_noisy_libraries_are_capped() -> None:
    buf = io.StringIO()
    setup_logging("INFO", stream=buf, journal=True)
    logging.getLogger("agent.x").debug("hidden")
    logging.getLogger("pymodbus.logging").info("per-request chatter")
    logging.getLogger("asyncua.client").warning("kept")
    assert buf.getvalue() == "<4>asyncua.client: kept\n"


def test_calling_again_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("INFO", stream=first, journal=True)
    setup_logging("INFO", stream=second, journal=True)
    logging.getLogger("agent").info("once")
    assert first.getvalue() == ""
    assert second.getvalue() == "<6>agent: once\n"


def test_unknown_level_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging("LOUD", stream=io.StringIO())


def test_journal_stream_must_match_the_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "journal", "w") as journal, open(tmp_path / "other", "w") as other:
        st = os.fstat(journal.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert use_journal_format(journal) is True
        assert use_journal_format(other) is False  # inherited variable, redirected stderr
        assert use_journal_format(io.StringIO()) is False  # no file descriptor
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert use_journal_format(journal) is False


@pytest.mark.parametrize(("forced", "expected"), [("journal", True), ("human", False)])
def test_format_can_be_forced(monkeypatch: pytest.MonkeyPatch, forced: str, expected: bool) -> None:
    monkeypatch.setenv("EDGELOOP_LOG_FORMAT", forced)
    assert use_journal_format(io.StringIO()) is expected
