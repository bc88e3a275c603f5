"""sd_notify(3) without libsystemd: READY/STATUS/WATCHDOG/STOPPING/RELOADING over a datagram.

The protocol is a single AF_UNIX datagram of newline-separated ``KEY=VALUE`` lines sent to
``$NOTIFY_SOCKET`` (a path, or an abstract socket written ``@name``).  Outside systemd the
variable is unset and every call is a cheap no-op returning False, so the service code calls
these unconditionally.

The watchdog is the part that matters for an unattended gateway: systemd restarts the
service when ``WATCHDOG=1`` stops arriving, so `Watchdog` feeds it only while the pipeline
reports progress.  A wedged poll loop (or a blocked event loop) therefore stops the feed and
gets the service restarted instead of sitting there alive but useless.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.names import WATCHDOG_MISSED_TOTAL

if TYPE_CHECKING:
    from agent.metrics import Metrics

log = logging.getLogger(__name__)

_SEND_TIMEOUT_S = 1.0  # never let a stuck notify socket block the event loop for long


def _address() -> str | bytes | None:
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):
        return b"\0" + path[1:].encode()  # Linux abstract namespace
    if path.startswith("/"):
        return path
    # vsock:... and other forms (systemd >= 253 in VMs) are not needed on a gateway.
    log.debug("NOTIFY_SOCKET=%r is not a unix socket address; sd_notify disabled", path)
    return None


def notify(*lines: str) -> bool:
    """Send ``KEY=VALUE`` lines in one datagram; False when not under systemd or on error."""
    addr = _address()
    if addr is None or not lines:
        return False
    payload = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(_SEND_TIMEOUT_S)
            s.connect(addr)
            s.sendall(payload)
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def ready(status: str | None = None) -> bool:
    """Start-up (or a reload) finished; systemd marks the unit active and arms the watchdog."""
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def status(text: str) -> bool:
    """One-line health summary shown by ``systemctl status``."""
    return notify(f"STATUS={text.splitlines()[0] if text else ''}")


def stopping(status: str | None = None) -> bool:
    return notify("STOPPING=1", *([f"STATUS={status}"] if status else []))


def reloading(status: str | None = None) -> bool:
    """Reload started; send `ready()` when it is done.  MONOTONIC_USEC is what
    Type=notify-reload (systemd >= 253) needs to match the reload to this message."""
    lines = ["RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}"]
    return notify(*lines, *([f"STATUS={status}"] if status else []))


def extend_timeout(seconds: float) -> bool:
    """Ask for more start/stop time (a cold numba cache compiles for a while on a Pi)."""
    return notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")


def watchdog_interval_s() -> float | None:
    """How often to feed the watchdog: half of WATCHDOG_USEC, None when it is not armed.

    WATCHDOG_PID, when set, names the process that must feed it; a child process (or a
    process that inherited the environment) must not.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


class Watchdog:
    """Feeds ``WATCHDOG=1`` every `interval_s`, but only while `progress()` keeps being called.

    The pipeline calls `progress()` whenever it completes a unit of work (a poll cycle,
    successful or not: a device that times out is handled, a poll that never returns is not).
    With ``stall_s=None`` a feed needs at least one `progress()` since the previous feed;
    with ``stall_s`` set it needs one within the last `stall_s` seconds, for pipelines whose
    slowest unit of work is longer than the feed interval.  A missed feed is logged once per
    stall episode.
    """

    def __init__(
        self,
        interval_s: float | None = None,
        *,
        stall_s: float | None = None,
        notify_fn: Callable[..., bool] = notify,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.interval_s = watchdog_interval_s() if interval_s is None else interval_s
        self.stall_s = stall_s
        self._notify = notify_fn
        self._clock = clock
        self._metrics = metrics
        self._count = 0
        self._fed_count = -1  # so the first tick feeds if anything progressed at all
        self._last_progress = clock()
        self._stalled = False
        self.feeds = 0
        self.missed = 0

    @property
    def enabled(self) -> bool:
        return bool(self.interval_s)

    def progress(self) -> None:
        """Record that the pipeline did work; cheap enough to call per poll cycle."""
        self._count += 1
        self._last_progress = self._clock()

    def healthy(self) -> bool:
        if self.stall_s is None:
            return self._count != self._fed_count and self._count > 0
        return self._count > 0 and self._clock() - self._last_progress <= self.stall_s

    def tick(self) -> bool:
        """Feed the watchdog if the pipeline progressed; returns whether it fed."""
        if self.healthy():
            self._fed_count = self._count
            if self._stalled:
                log.info("pipeline progressing again; feeding the watchdog")
                self._stalled = False
            self._notify("WATCHDOG=1")
            self.feeds += 1
            return True
        self.missed += 1
        if self._metrics is not None:
            self._metrics.inc(WATCHDOG_MISSED_TOTAL)
        if not self._stalled:
            self._stalled = True
            log.error(
                "pipeline made no progress for %.1f s; not feeding the watchdog",
                self._clock() - self._last_progress,
            )
        return False

    async def run(self) -> None:
        """Tick every `interval_s` until cancelled; returns at once when no watchdog is armed."""
        if not self.enabled:
            return
        assert self.interval_s is not None
        while True:
            await asyncio.sleep(self.interval_s)
            self.tick()

    def trigger(self) -> bool:
        """Ask systemd to treat the service as failed now (WATCHDOG=trigger)."""
        return self._notify("WATCHDOG=trigger")
