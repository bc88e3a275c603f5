"""`edgeloop run`: the asyncio service wiring acquire -> kernel -> store / publish / control.

Everything built from one config lives in a `Pipeline`; a SIGHUP validates the new file
first and swaps the whole pipeline only when it compiles, so a bad edit never takes a
running gateway down.  The service owns the things that outlive a reload: the metrics
registry, the sd_notify watchdog and the signal handlers.

Shutdown order follows the data: stop control (its in-flight write finishes), stop
acquisition, then drain the store and the publisher's outbox, so nothing that was polled
is lost on a clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path
from typing import Any

from agent import names
from agent.metrics import Metrics
from agent.telemetry import sdnotify
from agent.telemetry.sdnotify import Watchdog

log = logging.getLogger("agent.service")

EX_OK = 0
EX_FATAL = 1
EX_CONFIG = 78
READY_TIMEOUT_S = 10.0  # READY=1 is sent after the first poll cycle, or after this at the latest
STATUS_EVERY_S = 5.0
STOP_BUDGET_S = 4.5  # SIGTERM -> exit within 5 s


class ConfigRefused(Exception):
    """The config did not load or compile; `lines` are the one-line problems."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


def load_and_compile(path: str | Path) -> Any:
    """Load and compile a config exactly as `edgeloop check` does; ConfigRefused on problems."""
    from agent.config import ConfigError, load_config
    from agent.tags import compile_config

    try:
        cfg = load_config(path)
        return compile_config(cfg)
    except ConfigError as exc:
        raise ConfigRefused(str(exc).splitlines()) from exc


class Pipeline:
    """The components built from one compiled config, started and stopped as a unit."""

    def __init__(
        self, compiled: Any, metrics: Metrics, watchdog: Watchdog, config_dir: Path | None = None
    ) -> None:
        from agent.acquire import Acquirer
        from agent.kernel import KernelRuntime
        from agent.store.history import HistoryStore

        self.compiled = compiled
        self.cfg = compiled.config
        self.table = compiled.table
        self.metrics = metrics
        self.watchdog = watchdog
        self.config_dir = config_dir
        self.kernel = KernelRuntime(self.cfg.kernel, self.table, metrics)
        self.store = (
            HistoryStore(self.cfg.store, self.table, metrics) if self.cfg.store.enabled else None
        )
        self.publisher = self._make_publisher()
        self.acquirer = Acquirer(compiled, metrics, self._on_frame)
        for drv in compiled.drivers.values():  # drivers that count their own drops report here
            if hasattr(drv, "metrics"):
                drv.metrics = metrics
        self.control = self._make_control()
        self.telemetry = self._make_telemetry()
        self.frames = 0
        self.polled: set[tuple[str, str]] = set()
        self.active_alarms: set[str] = set()
        self._attempts = 0.0
        self._tasks: list[asyncio.Task[Any]] = []

    # -- construction helpers
    def _make_publisher(self) -> Any:
        if not self.cfg.publish.enabled:
            return None
        from agent.publish import Publisher

        return Publisher(
            self.cfg.publish, self.cfg.site, self.table, self.metrics, groups=self.compiled.groups
        )

    def _make_control(self) -> Any:
        if not self.cfg.control.loops:
            return None
        from agent.control.runner import ControlRunner

        return ControlRunner(
            self.cfg.control,
            self.table,
            self.acquirer.write,
            self.metrics,
            self.emit,
            config_dir=self.config_dir,  # a relative model path is relative to the config file
        )

    def _make_telemetry(self) -> Any:
        from agent.telemetry.http import TelemetryServer

        return TelemetryServer(
            self.cfg.http, self.metrics, self.health, self.devices_up, control=self.control
        )

    # -- the hot path: one call per poll of one group
    def _on_frame(self, group: Any, ts_ns: int) -> None:
        t0 = time.perf_counter()
        events = self.kernel.process(group)
        self.metrics.observe(
            "edgeloop_kernel_seconds",
            time.perf_counter() - t0,
            group=f"{group.device}/{group.name}",
        )
        if self.store is not None:
            self.store.submit_frame(group, ts_ns)
        if self.publisher is not None:
            self.publisher.publish_frame(group, ts_ns)
        for ev in events:
            self.emit(ev["kind"], ev)
        self.frames += 1
        self.polled.add((group.device, group.name))
        self.watchdog.progress()

    def emit(self, kind: str, payload: dict[str, Any]) -> None:
        """Route an event (kernel alarm, control action or mode change) to history and MQTT."""
        ts_ns = int(payload.get("ts_ns") or time.time_ns())
        source = str(payload.get("source") or payload.get("loop") or "")
        if kind == names.EVENT_ANOMALY_ON:
            self.active_alarms.add(source)
            log.warning("anomaly on %s (score %.3g)", source, float(payload.get("score", 0.0)))
        elif kind == names.EVENT_ANOMALY_OFF:
            self.active_alarms.discard(source)
            log.info("anomaly cleared on %s", source)
        if self.store is not None:
            if kind.startswith("control"):
                self.store.submit_control(ts_ns, source, {"kind": kind, **payload})
            else:
                self.store.submit_event(ts_ns, kind, source, payload)
        # per-step control actions are history only; events and mode changes go north too
        if self.publisher is not None and kind != "control_action":
            self.publisher.publish_event(kind, payload)

    # -- health
    def health(self) -> dict[str, Any]:
        return self.acquirer.health()

    def devices_up(self) -> bool:
        h = self.acquirer.health()
        return bool(h) and all(_is_up(d) for d in h.values())

    def check_progress(self) -> None:
        """Feed the watchdog's progress counter from the acquisition counters.

        Frames count (see `_on_frame`); so do failed polls and reconnect attempts, because a
        pipeline that handles a dead PLC is working.  A device waiting out its backoff makes
        no attempts for a while; when no device is up that wait is the expected state, so it
        counts too.  What does not count: devices up but no poll completing (a wedged loop).
        """
        attempts = (
            self.metrics.total("edgeloop_poll_errors_total")
            + self.metrics.total("edgeloop_reconnects_total")
            + self.metrics.total("edgeloop_polls_total")
        )
        if attempts != self._attempts:
            self._attempts = attempts
            self.watchdog.progress()
        elif not any(_is_up(d) for d in self.acquirer.health().values()):
            self.watchdog.progress()

    def first_cycle_done(self) -> bool:
        return {(g.device, g.name) for g in self.compiled.groups} <= self.polled

    def status_line(self) -> str:
        h = self.acquirer.health()
        up = sum(1 for d in h.values() if _is_up(d))
        down = [name for name, d in h.items() if not _is_up(d)]
        parts = [f"{up}/{len(h)} devices up"]
        if down:
            parts.append("down: " + ",".join(sorted(down)))
        parts.append(f"{self.frames} frames")
        parts.append(f"{len(self.active_alarms)} alarms")
        if self.control is not None:
            for name, st in self.control.status().items():
                parts.append(f"{name}: {st.get('mode', '?')}/{st.get('active', '?')}")
        return "; ".join(parts)

    # -- lifecycle
    async def start(self) -> None:
        if self.store is not None:
            self.store.start()
        if self.publisher is not None:
            await self.publisher.start()
        await self.telemetry.start()
        t0 = time.monotonic()
        await asyncio.to_thread(self.kernel.warmup)  # a cold numba cache compiles here
        log.info("kernel ready in %.2f s", time.monotonic() - t0)
        await self.acquirer.start()
        if self.control is not None:
            self._tasks.append(asyncio.create_task(self.control.run(), name="control"))

    async def stop(self) -> None:
        """Stop in data order; each step bounded so the whole stop fits systemd's budget."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 1.5)
        if self.control is not None and hasattr(self.control, "stop"):
            await _bounded(self.control.stop(), 1.0, "control")
        await _bounded(self.acquirer.stop(), 1.5, "acquire")
        if self.publisher is not None:
            await _bounded(self.publisher.close(drain_timeout_s=1.0), 1.5, "publish")
        await _bounded(self.telemetry.stop(), 0.5, "telemetry")
        if self.store is not None:
            await _bounded(asyncio.to_thread(self.store.close), 2.0, "store")


def _is_up(dev: Any) -> bool:
    if isinstance(dev, dict):
        return dev.get("state") == "up" or dev.get("up") is True
    return bool(getattr(dev, "up", False))


async def _bounded(aw: Any, timeout_s: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await aw
    except TimeoutError:
        log.warning("%s did not stop within %.1f s; continuing shutdown", what, timeout_s)
    except Exception as exc:  # shutdown goes on whatever one component does
        log.error("%s failed while stopping: %s", what, exc)


class Service:
    """Process-level lifecycle: signals, sd_notify, reload and the exit status."""

    def __init__(self, config_path: str | Path) -> None:
        self.config_path = Path(config_path)
        self.metrics = Metrics()
        self.watchdog = Watchdog(metrics=self.metrics, stall_s=None)
        self.pipeline: Pipeline | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._ready_sent = False

    async def run(self) -> int:
        started = time.monotonic()  # READY=1 latency is measured from here (config load on)
        try:
            compiled = load_and_compile(self.config_path)
        except ConfigRefused as exc:
            for line in exc.lines:
                log.error("%s", line)
            return EX_CONFIG
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        self.metrics.set("edgeloop_up", 1)
        try:
            self.pipeline = Pipeline(compiled, self.metrics, self.watchdog, self.config_path.parent)
            await self.pipeline.start()
        except Exception as exc:
            log.critical("start-up failed: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
            if self.pipeline is not None:
                await self.pipeline.stop()
            return EX_CONFIG if isinstance(exc, ValueError) else EX_FATAL
        log.info("edgeloop running: %s", compiled.config.site)
        wd_task = asyncio.create_task(self.watchdog.run(), name="watchdog")
        try:
            await self._main_loop(started)
        finally:
            sdnotify.stopping("stopping")
            log.info("stopping")
            wd_task.cancel()
            t0 = time.monotonic()
            if self.pipeline is not None:
                await self.pipeline.stop()
            self.metrics.set("edgeloop_up", 0)
            log.info("stopped in %.2f s", time.monotonic() - t0)
        return EX_OK

    async def _main_loop(self, started: float) -> None:
        next_status = 0.0
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.2)
            if self._stop.is_set():
                break
            if self._reload.is_set():
                self._reload.clear()
                await self._do_reload()
            p = self.pipeline
            assert p is not None
            p.check_progress()
            now = time.monotonic()
            if not self._ready_sent and (p.first_cycle_done() or now - started > READY_TIMEOUT_S):
                self._ready_sent = True
                sdnotify.ready(p.status_line())
                log.info("ready in %.2f s: %s", now - started, p.status_line())
            if self._ready_sent and now >= next_status:
                next_status = now + STATUS_EVERY_S
                sdnotify.status(p.status_line())

    async def _do_reload(self) -> None:
        sdnotify.reloading("reloading configuration")
        log.info("SIGHUP: reloading %s", self.config_path)
        try:
            compiled = await asyncio.to_thread(load_and_compile, self.config_path)
            new = Pipeline(compiled, self.metrics, self.watchdog, self.config_path.parent)
        except ConfigRefused as exc:
            for line in exc.lines:
                log.error("reload refused: %s", line)
            self.metrics.inc("edgeloop_config_reloads_total", result="refused")
            sdnotify.ready("reload refused; previous configuration still running")
            return
        except Exception as exc:
            log.error("reload refused: %s", exc)
            self.metrics.inc("edgeloop_config_reloads_total", result="refused")
            sdnotify.ready("reload refused; previous configuration still running")
            return
        old = self.pipeline
        if old is not None:
            await old.stop()
        self.pipeline = new
        try:
            await new.start()
        except Exception as exc:
            # the new config compiled but could not start (port taken...): go back to the old
            log.error("reloaded configuration failed to start (%s); restoring the previous", exc)
            await new.stop()
            self.metrics.inc("edgeloop_config_reloads_total", result="refused")
            assert old is not None
            self.pipeline = Pipeline(
                old.compiled, self.metrics, self.watchdog, self.config_path.parent
            )
            await self.pipeline.start()
            sdnotify.ready("reload failed; previous configuration restored")
            return
        self.metrics.inc("edgeloop_config_reloads_total", result="ok")
        sdnotify.ready(f"reloaded; {new.status_line()}")
        log.info("configuration reloaded")


def run_service(config_path: str | Path, log_level: str = "INFO") -> int:
    """Entry point of `edgeloop run`."""
    from agent.telemetry.logsetup import setup_logging

    setup_logging(log_level)
    try:
        return asyncio.run(Service(config_path).run())
    except KeyboardInterrupt:
        return EX_OK
