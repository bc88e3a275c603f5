"""The poll scheduler: connections, backoff, poll groups, quality, device health, writes.

One task per device owns its connection: connect, run the device's poll groups, and when
the link is lost close, mark the device's tags comm_lost, wait a capped exponential backoff
with jitter and connect again (a fresh session each time; the driver decides what that
means).  One task per poll group runs on its own interval, drift-free: the next poll is
planned from the previous *planned* time, not from when the poll finished, and a poll that
is still running when the next one is due makes the scheduler skip (and count) the missed
ticks instead of stacking polls.  Devices share nothing but the event loop, so a dead or
slow device never delays another.

Failure classes (drivers raise `drivers.base.DriverError` subclasses):
- `ConnectError`, `OSError`, `TimeoutError` or a read that outlives its guard: the link is
  gone -> the device goes down and reconnects; its tags turn comm_lost.
- `ReadError` (and other `DriverError`s): the device answered but the group's data is
  unusable -> the group's tags turn bad, the connection is kept.
- Per-point problems come back inside `ReadResult.quality`.
Every failure is counted; logging is once per episode (`EpisodeLog`), with the recovery.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from agent.backoff import backoff_delay
from agent.lifecycle import AsyncContext
from agent.metrics import Metrics
from agent.names import (
    COMPONENT_CRASHES_TOTAL,
    COMPONENT_RESTARTS_TOTAL,
    COMPONENT_UP,
    DEVICE_UP,
    POLL_ERRORS_TOTAL,
    POLL_LATENCY_SECONDS,
    POLL_OVERRUNS_TOTAL,
    POLLS_TOTAL,
    RECONNECTS_TOTAL,
)
from agent.tags import Compiled, far_outside
from agent.telemetry.episodes import EpisodeLog
from agent.writegate import WriteGate, rules_from_config
from drivers.base import (
    ConnectError,
    Driver,
    DriverError,
    GroupSpec,
    ReadResult,
    Reason,
    WriteRefused,
)
from drivers.base import Quality as Q
from drivers.config_common import bounds_refusal

log = logging.getLogger("edgeloop.acquire")

OnFrame = Callable[[GroupSpec, int], None]

GOOD, BAD, STALE, COMM_LOST = int(Q.GOOD), int(Q.BAD), int(Q.STALE), int(Q.COMM_LOST)
# Link-level failures: the connection is not usable any more.
LINK_ERRORS: tuple[type[BaseException], ...] = (ConnectError, OSError, TimeoutError, EOFError)
CLOSE_TIMEOUT_S = 2.0
# the reason a tag takes when its driver gives a quality but no reason (indexed by quality)
_REASON_OF_QUALITY = np.array(
    [Reason.NONE, Reason.DECODE_ERROR, Reason.STALE, Reason.COMM_LOST, Reason.NONE],
    dtype=np.uint16,
)


class _Lost(NamedTuple):
    """Why a device's link was dropped: the text for logs and /readyz, the tags' code."""

    text: str
    code: int


@dataclass(slots=True)
class DeviceHealth:
    """Health of one device as `/healthz` and `edgeloop read` show it."""

    state: str = "connecting"  # connecting | up | down | disabled | stopped
    last_error: str | None = None
    since: float = 0.0  # wall-clock seconds of the last state change
    reconnects: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "last_error": self.last_error,
            "since": self.since,
            "reconnects": self.reconnects,
        }


class Acquirer(AsyncContext):
    """Runs every enabled device of a compiled config; see the module docstring.

    `on_frame(group, ts_ns)` is called on the event loop after the group's slice of
    `raw/quality/ts_ns/texts` was updated: after each poll, and once when the group's
    quality changes to stale or comm_lost without a poll (so consumers see the change).
    `devices` restricts the run to some device names (used by `edgeloop read`).
    """

    def __init__(
        self,
        compiled: Compiled,
        metrics: Metrics,
        on_frame: OnFrame | None = None,
        *,
        devices: Collection[str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.compiled = compiled
        self.table = compiled.table
        self.metrics = metrics
        self._on_frame = on_frame
        self._rng = rng or random.Random()
        self._episodes = EpisodeLog(log)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, str] = {}
        self.frame_error: str | None = None  # the last frame's consumer (kernel...) failed
        self._crashes: dict[str, int] = {}
        self.gate = WriteGate(self.table, rules_from_config(compiled.config, self.table))
        self._last_good_ns = np.zeros(len(self.table), dtype=np.int64)
        self._groups: dict[str, list[GroupSpec]] = {}
        self._failing: dict[str, set[str]] = {n: set() for n in compiled.devices}
        for g in compiled.groups:
            self._groups.setdefault(g.device, []).append(g)
        wanted = set(compiled.devices) if devices is None else set(devices)
        unknown = wanted - set(compiled.devices)
        if unknown:
            raise ValueError(f"unknown device(s): {', '.join(sorted(unknown))}")
        self._run = [n for n in compiled.devices if n in wanted and n in compiled.drivers]
        now = time.time()
        self._device_index: dict[str, np.ndarray] = {}
        self._health = {
            n: DeviceHealth(state="connecting" if n in compiled.drivers else "disabled", since=now)
            for n in compiled.devices
            if n in wanted
        }

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start one task per device; returns at once (connections happen in the tasks)."""
        for name in self._run:
            if name in self._tasks:
                continue
            self.metrics.set(DEVICE_UP, 0, device=name)
            self._spawn(name)

    def _spawn(self, name: str) -> None:
        task = asyncio.create_task(self._device_loop(name), name=f"dev:{name}")
        task.add_done_callback(lambda t, n=name: self._task_done(n, t))
        self._tasks[name] = task

    def _task_done(self, name: str, task: asyncio.Task[None]) -> None:
        """A device task ends only when cancelled: anything else is a crash, restarted."""
        if task.cancelled() or self._tasks.get(name) is not task:
            return
        exc = task.exception()
        self._crashes[name] = self._crashes.get(name, 0) + 1
        self._failures[name] = f"device task crashed: {exc!r}"
        self.metrics.inc(COMPONENT_CRASHES_TOTAL, component="acquire")
        self.metrics.set(COMPONENT_UP, 0, component="acquire")
        log.critical("device %s: task crashed; restarting it", name, exc_info=exc)
        delay = min(30.0, 0.5 * 2 ** min(self._crashes[name], 6))
        asyncio.get_running_loop().call_later(delay, self._restart, name, task)

    def _restart(self, name: str, dead: asyncio.Task[None]) -> None:
        if self._tasks.get(name) is not dead:  # stopped meanwhile
            return
        self.metrics.inc(COMPONENT_RESTARTS_TOTAL, component="acquire")
        self._failures.pop(name, None)
        if not self._failures:
            self.metrics.set(COMPONENT_UP, 1, component="acquire")
        self._spawn(name)

    def task_failures(self) -> dict[str, str]:
        """Device tasks that crashed and wait for their restart."""
        return dict(self._failures)

    async def stop(self) -> None:
        """Cancel every task and close every connection (bounded in time)."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for name in self._run:
            await self._close(name, self.compiled.drivers[name])
            self._set_state(name, "stopped", self._health[name].last_error)
            self.metrics.set(DEVICE_UP, 0, device=name)

    def health(self) -> dict[str, dict[str, Any]]:
        """State, last error, since (epoch s) and reconnect count per device, and its tags
        that are not good, by reason: `{"timeout": {"count": 3, "tags": [first five]}}`."""
        out = {n: h.as_dict() for n, h in self._health.items()}
        for name, d in out.items():
            d["not_good"] = self.not_good(name)
        return out

    def not_good(self, device: str, examples: int = 5) -> dict[str, dict[str, Any]]:
        """A device's tags that are not good, grouped by reason name."""
        from drivers.base import reason_name

        t = self.table
        idx = self._device_index.get(device)
        if idx is None:
            idx = np.array([i for i, d in enumerate(t.devices) if d == device], dtype=np.intp)
            self._device_index[device] = idx
        bad = idx[t.quality[idx] != GOOD]
        out: dict[str, dict[str, Any]] = {}
        for code in np.unique(t.reason[bad]):
            hit = bad[t.reason[bad] == code]
            out[reason_name(int(code))] = {
                "count": int(hit.size),
                "tags": [t.names[i] for i in hit[:examples]],
            }
        return out

    # --- writes --------------------------------------------------------------------------

    async def write(
        self, tag: str, value: float | int | bool | str, role: str | None = None
    ) -> None:
        """Write one value in engineering units; refuses (never sends) unsafe writes.

        Every write passes the `WriteGate` (agent/writegate.py): `role` says who writes
        (`output:<loop>`, `heartbeat:<loop>`, None = operator) and must be allowed for the
        tag; bounds, rate limit (also with the present value unknown) and write budget hold.
        Raises `WriteRefused` for an unknown, non-writable, out-of-bounds, too fast or
        wrong-role write or a value of the wrong kind; `DriverError` subclasses when the
        device is down or the write fails on the wire.
        """
        idx = self.table.index.get(tag)
        if idx is None:
            raise self._refuse(WriteRefused(f"unknown tag {tag!r}"))
        point = self.table.points[idx]
        device = self.table.devices[idx]
        if not point.writable:
            raise self._refuse(WriteRefused(f"tag {tag!r} is not writable", device=device))
        checked = self._check_value(point, value, device)
        now_ns = time.time_ns()
        if not isinstance(checked, str):
            try:
                self.gate.check(idx, float(checked), role, now_ns)
            except WriteRefused as e:
                raise self._refuse(WriteRefused(str(e), device=device)) from None
        drv = self.compiled.drivers.get(device)
        if drv is None or device not in self._health:
            raise self._refuse(WriteRefused(f"device of {tag!r} is not running", device=device))
        if self._health[device].state != "up":
            raise ConnectError(f"cannot write {tag!r}: device is not connected", device=device)
        dev_cfg = self.compiled.devices[device]
        guard = _guard_s(dev_cfg, 1)
        try:
            async with asyncio.timeout(guard):
                await drv.write([(point, checked)])
        except TimeoutError as e:
            raise ConnectError(
                f"write of {tag!r} got no answer in {guard:.1f} s", device=device
            ) from e
        if not isinstance(checked, str):
            self.gate.committed(idx, float(checked), now_ns)

    def _check_value(self, point: Any, value: Any, device: str) -> float | int | bool | str:
        name = point.name
        if point.dtype == "string":
            if not isinstance(value, str):
                raise self._refuse(WriteRefused(f"{name!r} takes a string", device=device))
            return value
        if isinstance(value, str):
            raise self._refuse(WriteRefused(f"{name!r} takes a number, not text", device=device))
        if point.dtype in ("bool", "bit"):
            if value not in (0, 1):  # True/False compare equal to 1/0
                raise self._refuse(WriteRefused(f"{name!r} takes 0/1 or a bool", device=device))
            return bool(value)
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise self._refuse(WriteRefused(f"{name!r} takes a number", device=device)) from None
        if not math.isfinite(x):
            raise self._refuse(WriteRefused(f"{name!r}: {value!r} is not finite", device=device))
        why = bounds_refusal(x, point.min, point.max)
        if why is not None:
            raise self._refuse(WriteRefused(f"{name!r}: {why}", device=device))
        return value if isinstance(value, int) and not isinstance(value, bool) else x

    @staticmethod
    def _refuse(exc: WriteRefused) -> WriteRefused:
        log.warning("write refused: %s", exc)
        return exc

    # --- device task ---------------------------------------------------------------------

    # Timeouts here use `asyncio.timeout`, not `wait_for`: on Python 3.11 `wait_for` can
    # swallow a cancellation that arrives as the inner call finishes, and a device task that
    # misses its cancel keeps reconnecting forever and hangs `stop()`.
    async def _device_loop(self, name: str) -> None:
        dev = self.compiled.devices[name]
        drv = self.compiled.drivers[name]
        groups = self._groups.get(name, [])
        attempt = 0
        while True:
            if attempt:
                self._health[name].reconnects += 1
                self.metrics.inc(RECONNECTS_TOTAL, device=name)
            if self._health[name].state != "down":
                self._set_state(name, "connecting", self._health[name].last_error)
            try:
                async with asyncio.timeout(_guard_s(dev, 1)):
                    await drv.connect()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the task must outlive any driver failure
                await self._close(name, drv)
                why = _Lost(_describe(e), _reason_code(e))
                self._link_down(name, groups, why, unexpected=not _expected(e))
                await asyncio.sleep(self._backoff(dev, attempt))
                attempt += 1
                continue
            attempt = 0
            self._failing[name].clear()
            self._set_state(name, "up", None)
            self.metrics.set(DEVICE_UP, 1, device=name)
            if self._episodes.ok(name):
                log.info("%s: connected", name)
            lost: asyncio.Future[_Lost] = asyncio.get_running_loop().create_future()
            tasks = [
                asyncio.create_task(self._group_loop(dev, drv, g, lost), name=f"{name}/{g.name}")
                for g in groups
            ]
            try:
                why = await lost
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            await self._close(name, drv)
            self._link_down(name, groups, why, unexpected=False)
            await asyncio.sleep(self._backoff(dev, attempt))
            attempt += 1

    def _backoff(self, dev: Any, attempt: int) -> float:
        return backoff_delay(attempt, dev.backoff_initial_s, dev.backoff_max_s, self._rng)

    def _link_down(self, name: str, groups: list[GroupSpec], why: _Lost, unexpected: bool) -> None:
        self._set_state(name, "down", why.text)
        self.metrics.set(DEVICE_UP, 0, device=name)
        self._episodes.fail(name, why.text, level=logging.ERROR if unexpected else logging.WARNING)
        for g in groups:
            self._mark(g, COMM_LOST, why.code)

    async def _close(self, name: str, drv: Driver) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await drv.close()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # closing a broken link may fail in any way; it is gone anyway
            log.debug("%s: close failed: %s", name, _describe(e))

    def _set_state(self, name: str, state: str, error: str | None) -> None:
        h = self._health[name]
        if h.state != state:
            h.since = time.time()
        h.state = state
        h.last_error = error

    # --- group task ----------------------------------------------------------------------

    async def _group_loop(
        self, dev: Any, drv: Driver, g: GroupSpec, lost: asyncio.Future[_Lost]
    ) -> None:
        loop = asyncio.get_running_loop()
        labels = {"device": g.device, "group": g.name}
        plan = self.compiled.plans[(g.device, g.name)]
        period = g.interval_ms / 1000.0
        guard = _guard_s(dev, max(1, len(self.compiled.requests(g))))
        stale_s = g.options.get("stale_after_ms", 3 * g.interval_ms) / 1000.0
        next_t = loop.time()
        while True:
            delay = next_t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            reason = await self._poll(drv, g, plan, labels, guard, stale_s)
            if reason is not None:
                if not lost.done():
                    lost.set_result(reason)
                return
            next_t += period
            late = loop.time() - next_t
            if late > 0:  # the poll outlived its period: skip the ticks it ate, count them
                missed = int(late // period) + 1
                next_t += missed * period
                self.metrics.inc(POLL_OVERRUNS_TOTAL, missed, **labels)

    async def _poll(
        self,
        drv: Driver,
        g: GroupSpec,
        plan: Any,
        labels: dict[str, str],
        guard: float,
        stale_s: float,
    ) -> _Lost | None:
        """One poll; returns why when the link is lost, else None."""
        key = f"{g.device}/{g.name}"
        ts_ns = time.time_ns()
        t0 = time.perf_counter()
        task = asyncio.ensure_future(drv.read(plan))
        try:
            done, _ = await asyncio.wait({task}, timeout=min(guard, stale_s))
            if not done:  # slow device: say so before the guard gives up
                self._mark_stale(g, time.time_ns())
                done, _ = await asyncio.wait({task}, timeout=max(0.0, guard - stale_s))
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                self.metrics.inc(POLL_ERRORS_TOTAL, **labels)
                why = _Lost(f"no answer within {guard:.1f} s", Reason.TIMEOUT)
                return self._link_error(g, why, timeout=True)
            result: ReadResult = task.result()
        except asyncio.CancelledError:
            task.cancel()
            raise
        except LINK_ERRORS as e:
            self.metrics.inc(POLL_ERRORS_TOTAL, **labels)
            return self._link_error(g, _Lost(_describe(e), _reason_code(e)), timeout=_is_timeout(e))
        except DriverError as e:
            self.metrics.inc(POLL_ERRORS_TOTAL, **labels)
            self._episodes.fail(key, _describe(e))
            self._mark(g, BAD, e.reason)
            return None
        except Exception as e:  # a driver bug: drop the link, a fresh session may recover
            self.metrics.inc(POLL_ERRORS_TOTAL, **labels)
            log.exception("%s: unexpected error from the driver", key)
            return _Lost(f"driver error: {_describe(e)}", Reason.DRIVER_ERROR)
        self.metrics.observe(POLL_LATENCY_SECONDS, time.perf_counter() - t0, **labels)
        self.metrics.inc(POLLS_TOTAL, **labels)
        self._failing[g.device].discard(g.name)
        self._store(g, result, ts_ns)
        self._episodes.ok(key)
        return None

    def _link_error(self, g: GroupSpec, why: _Lost, *, timeout: bool) -> _Lost | None:
        """A lost link takes the device down; a timeout does so only once every group of
        the device times out, so one dead unit behind a gateway does not cut off the others
        (its own group goes comm_lost, the driver re-opens the connection on its own)."""
        failing = self._failing[g.device]
        failing.add(g.name)
        if not timeout or len(failing) >= len(self._groups[g.device]):
            return why
        self._episodes.fail(f"{g.device}/{g.name}", why.text)
        self._mark(g, COMM_LOST, why.code)
        return None

    # --- the tag table -------------------------------------------------------------------

    def _store(self, g: GroupSpec, result: ReadResult, ts_ns: int) -> None:
        sl = slice(g.start, g.stop)
        t = self.table
        if len(result.values) != g.size or len(result.quality) != g.size:
            log.error(
                "%s/%s: driver returned %d values for %d tags",
                g.device,
                g.name,
                len(result.values),
                g.size,
            )
            self._mark(g, BAD, Reason.DRIVER_ERROR)
            return
        t.raw[sl] = result.values
        q = np.array(result.quality, dtype=np.uint8)
        if result.reason is not None and len(result.reason) == g.size:
            t.reason[sl] = result.reason
        else:
            t.reason[sl] = _REASON_OF_QUALITY[np.minimum(q, len(_REASON_OF_QUALITY) - 1)]
        far = far_outside(t.raw[sl], t.min[sl], t.max[sl]) & (q == GOOD)
        key = f"{g.device}/{g.name}: out of range"
        if far.any():
            q[far] = BAD
            t.reason[sl][far] = Reason.OUT_OF_RANGE
            i = g.start + int(np.flatnonzero(far)[0])
            self._episodes.fail(
                key,
                f"{t.names[i]} = {t.raw[i]:.6g} is more than a span outside {t.min[i]:g}.."
                f"{t.max[i]:g} ({int(far.sum())} tags): marked bad; wrong type, byte/word "
                "order or scale? `edgeloop probe` shows the register in every order",
            )
        else:
            self._episodes.ok(key)
        t.quality[sl] = q
        t.ts_ns[sl] = ts_ns
        self._last_good_ns[sl][q == GOOD] = ts_ns
        for rel, text in result.texts.items():
            if 0 <= rel < g.size:
                t.texts[g.start + rel] = text
        self._emit(g, ts_ns)

    def _mark(self, g: GroupSpec, quality: int, reason: int) -> None:
        """Set a whole group's quality and reason without new values and tell."""
        self.table.quality[g.start : g.stop] = quality
        self.table.reason[g.start : g.stop] = reason
        self._emit(g, time.time_ns())

    def _mark_stale(self, g: GroupSpec, now_ns: int) -> None:
        """Good tags whose last good sample is older than the group's limit turn stale."""
        sl = slice(g.start, g.stop)
        limit = int(g.options.get("stale_after_ms", 3 * g.interval_ms)) * 1_000_000
        q = self.table.quality[sl]
        old = (q == GOOD) & (now_ns - self._last_good_ns[sl] > limit)
        if old.any():
            q[old] = STALE
            self.table.reason[sl][old] = Reason.STALE
            self._emit(g, now_ns)

    def _emit(self, g: GroupSpec, ts_ns: int) -> None:
        if self._on_frame is None:
            return
        try:
            self._on_frame(g, ts_ns)
        except Exception as e:  # a consumer bug must not stop acquisition
            self.metrics.inc(COMPONENT_CRASHES_TOTAL, component="kernel")
            if self.frame_error is None:
                self.metrics.set(COMPONENT_UP, 0, component="kernel")
            self.frame_error = f"{g.device}/{g.name}: {_describe(e)}"
            if self._episodes.fail("on_frame", _describe(e), level=logging.ERROR):
                log.exception("on_frame failed for %s/%s", g.device, g.name)
        else:
            if self.frame_error is not None:
                self.frame_error = None
                self.metrics.set(COMPONENT_UP, 1, component="kernel")
            self._episodes.ok("on_frame")


def _guard_s(dev: Any, requests: int) -> float:
    """Backstop for one driver call: every request timing out on every retry, plus 1 s."""
    tries = 1 + int(getattr(dev, "retries", 0))
    return float(dev.timeout_s) * tries * requests + 1.0


def _is_timeout(e: BaseException) -> bool:
    return isinstance(e, TimeoutError) or isinstance(e.__cause__, TimeoutError)


def _expected(e: BaseException) -> bool:
    return isinstance(e, (*LINK_ERRORS, DriverError))


def _reason_code(e: BaseException) -> int:
    """The `Reason` a failure gives the tags it hits."""
    if isinstance(e, DriverError):
        return int(e.reason)
    return int(Reason.TIMEOUT if _is_timeout(e) else Reason.COMM_LOST)


def _describe(e: BaseException) -> str:
    text = str(e) or e.__class__.__name__
    return text if isinstance(e, DriverError) else f"{e.__class__.__name__}: {text}"
