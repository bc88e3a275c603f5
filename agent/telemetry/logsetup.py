"""Logging to stderr that reads well both in a terminal and in the journal.

Under systemd, stderr goes to journald, which stamps every line with its own time, unit and
PID and understands sd-daemon(3) ``<N>`` priority prefixes (``SyslogLevelPrefix=yes``, the
default).  So there we print ``<3>agent.acquire: heater_plc: timeout`` — no timestamp, and
the level becomes the journal PRIORITY that ``journalctl -p warning`` filters on.  Each line
of a multi-line message (a traceback) carries the prefix, since journald splits on newlines.
In a terminal we print a local timestamp and the level name instead.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

# Python level -> syslog priority (sd-daemon.h SD_ERR etc.)
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
# Libraries that log per request at INFO/DEBUG; one line per error episode is our job.
_NOISY = ("asyncua", "pymodbus", "numba", "aiomqtt", "paho")
_HANDLER_NAME = "edgeloop"


def syslog_priority(levelno: int) -> int:
    """Syslog priority of a Python level; custom levels round down to the next known one."""
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


class JournalFormatter(logging.Formatter):
    """``<N>logger: message`` on every line, no timestamp (journald adds its own)."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        text = super().format(record)
        return "\n".join(prefix + line for line in text.split("\n"))


class HumanFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s")
        self.datefmt = "%Y-%m-%d %H:%M:%S"


def _stream_is_journal(stream: TextIO) -> bool:
    """True when `stream` is the very socket systemd connected to journald.

    JOURNAL_STREAM is ``<device>:<inode>`` of that socket; checking it against the stream
    (as sd_journal_stream_fd(3) recommends) avoids prefixes when a child's stderr was
    redirected to a file or a terminal but the variable was inherited.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


def use_journal_format(stream: TextIO) -> bool:
    """Journal format when stderr is journald's socket, or EDGELOOP_LOG_FORMAT says so."""
    forced = os.environ.get("EDGELOOP_LOG_FORMAT", "").strip().lower()
    if forced in ("journal", "human"):
        return forced == "journal"
    return _stream_is_journal(stream)


def setup_logging(
    level: int | str = "INFO", *, stream: TextIO | None = None, journal: bool | None = None
) -> logging.Handler:
    """Configure the root logger once (calling again, e.g. after a reload, replaces it).

    `journal=None` detects journald; returns the installed handler.
    """
    stream = sys.stderr if stream is None else stream
    if isinstance(level, str):
        numeric = logging.getLevelName(level.upper())
        if not isinstance(numeric, int):
            raise ValueError(f"unknown log level {level!r}")
        level = numeric
    if journal is None:
        journal = use_journal_format(stream)
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JournalFormatter() if journal else HumanFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    logging.captureWarnings(True)
    return handler
