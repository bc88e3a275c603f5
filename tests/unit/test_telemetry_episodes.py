"""EpisodeLog: one line per error episode, a recovery line, optional reminders."""

from __future__ import annotations

import logging
import threading

import pytest

from agent.telemetry.episodes import EpisodeLog

LOGGER = "test.episodes"


def _messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def test_one_line_per_episode_and_one_on_recovery(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    ep = EpisodeLog(logging.getLogger(LOGGER), clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert ep.fail("heater_plc", "timeout") is True
        for _ in range(999):
            now[0] += 0.2
            assert ep.fail("heater_plc", "timeout") is False
        assert ep.failures("heater_plc") == 1000
        assert ep.active() == {"heater_plc": "timeout"}
        assert ep.ok("heater_plc") is True
        assert ep.ok("heater_plc") is False  # nothing open any more
    assert _messages(caplog) == [
        ("WARNING", "heater_plc: timeout"),
        ("INFO", "heater_plc: recovered after 199.8 s (1000 failures in the episode)"),
    ]
    assert ep.active() == {} and ep.failures("heater_plc") == 0


def test_keys_are_independent(caplog: pytest.LogCaptureFixture) -> None:
    ep = EpisodeLog(logging.getLogger(LOGGER))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert ep.fail("a", "refused", level=logging.ERROR)
        assert ep.fail("b", "timeout")
        assert not ep.fail("a", "refused")
        ep.ok("b")
        assert ep.fail("b", "timeout again")  # a new episode logs again
    levels = [lv for lv, _ in _messages(caplog)]
    assert levels == ["ERROR", "WARNING", "INFO", "WARNING"]


def test_reminders_during_a_long_episode(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    ep = EpisodeLog(logging.getLogger(LOGGER), remind_s=3600, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger=LOGGER):
        ep.fail("plc", "timeout")
        for _ in range(4 * 3600):  # 4 h of one failure per second
            now[0] += 1
            ep.fail("plc", "connection refused")
    msgs = _messages(caplog)
    assert len(msgs) == 1 + 4
    assert msgs[1] == (
        "WARNING",
        "plc: still failing after 3600 s (3601 failures), last: connection refused",
    )


def test_thread_safe_counting() -> None:
    ep = EpisodeLog(logging.getLogger(LOGGER))
    starts = []

    def worker() -> None:
        for _ in range(2000):
            if ep.fail("k", "x"):
                starts.append(1)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(starts) == 1
    assert ep.failures("k") == 8000
