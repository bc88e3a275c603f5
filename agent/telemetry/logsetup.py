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
import re
import sys
import time
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


_HEX_RUN = re.compile(r"(?:0x[0-9a-fA-F]{1,2}\s?){8,}")


def _bytes_as_text(m: re.Match[str]) -> str:
    """A hex dump as what the peer sent, readable: `SSH-2.0-OpenSSH...` says at once that
    the port is not a Modbus server; long runs are cut."""
    raw = bytes(int(h, 16) for h in m.group(0).split())
    more = f" (+{len(raw) - 48} bytes)" if len(raw) > 48 else ""
    return f"{len(raw)} bytes {raw[:48].decode('latin-1')!r}{more} "


class LibraryEpisodes(logging.Filter):
    """Library records (pymodbus, asyncua, ...) once per episode: the first record of a kind
    passes with its hex dumps shown as text; repeats within `quiet_s` are dropped and counted,
    and the next one that passes says how many were dropped. A broken or foreign device
    then costs a line a minute, not a hex flood per request."""

    def __init__(self, quiet_s: float = 60.0, prefixes: tuple[str, ...] = _NOISY) -> None:
        super().__init__()
        self.quiet_s = quiet_s
        self.prefixes = prefixes
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        msg = record.getMessage()
        first_line = msg.split("\n", 1)[0]
        key = (record.name, re.sub(r"\d+", "#", first_line)[:200])
        now = time.monotonic()
        last, dropped = self._seen.get(key, (-1e18, 0))
        if now - last < self.quiet_s:
            self._seen[key] = (last, dropped + 1)
            return False
        self._seen[key] = (now, 0)
        if len(self._seen) > 1000:  # bounded, whatever a hostile peer sends
            self._seen = {key: (now, 0)}
        text = _HEX_RUN.sub(_bytes_as_text, msg)
        if dropped:
            text += f" [{dropped} similar messages in the last {self.quiet_s:.0f} s not shown]"
        record.msg, record.args = text, None
        return True


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
    handler.addFilter(LibraryEpisodes())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    logging.captureWarnings(True)
    return handler


def setup_cli_logging() -> None:
    """For the short-lived commands (read, probe, check, ...): what Python's last-resort
    handler would print (warnings and errors, bare messages), with library floods collapsed.
    `edgeloop run` replaces it with `setup_logging`."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setLevel(logging.WARNING)
    handler.addFilter(LibraryEpisodes())
    root.addHandler(handler)
