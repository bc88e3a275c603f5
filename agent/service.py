"""`edgeloop run`: the asyncio service wiring acquire -> kernel -> store / publish / control.

Everything built from one config lives in a `Pipeline`; a SIGHUP validates the new file
first and swaps the whole pipeline only when it compiles, so a bad edit never takes a
running gateway down.  The service owns the things that outlive a reload: the metrics
registry, the sd_notify watchdog and the signal handlers.

Shutdown order follows the data: stop control (its in-flight write finishes), stop
acquisition, then drain the store and the publisher's outbox, so nothing that was polled
is lost on a clean stop.  The whole stop shares one deadline (`STOP_BUDGET_S`).

A reload is make-before-break: the new pipeline is compiled and its acquisition connected
and polling first, then control is handed over within one period with every loop's state
(output, model history, run-time mode and setpoint) so nothing steps, and only then does the
old pipeline stop.  The tag table, kernel, store, publisher and HTTP server are carried over
unchanged when their part of the file did not change (kernel state survives).

Supervision: the control task, the device tasks, the store writer and the publisher report
crashes (`edgeloop_component_crashes_total`); `/readyz` and the sd_notify STATUS= line say
which component is failing, and the systemd watchdog is fed only while both acquisition and
control make progress.
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
from agent.metrics import Metrics, build_info
from agent.telemetry import sdnotify
from agent.telemetry.episodes import EpisodeLog
from agent.telemetry.sdnotify import Watchdog
from drivers.base import ReportsMetrics

log = logging.getLogger("agent.service")

EX_OK = 0
EX_FATAL = 1
EX_CONFIG = 78
READY_TIMEOUT_S = 10.0  # READY=1 is sent after the first poll cycle, or after this at the latest
STATUS_EVERY_S = 5.0
STOP_BUDGET_S = 4.5  # SIGTERM -> exit within 5 s: one deadline for the whole stop
EX_SOFTWARE = 70  # a supervised component died for good: systemd restarts the service
HANDOVER_WAIT_S = 5.0  # reload: longest wait for the new pipeline's first poll cycle


class ConfigRefused(Exception):
    """The config did not load or compile; `lines` are the one-line problems."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


def load_and_compile(path: str | Path, isolated: bool = False) -> Any:
    """Load and compile a config exactly as `edgeloop check` does; ConfigRefused on problems.

    `isolated` (SIGHUP reloads, inside a running gateway): the file is read once and its
    bytes are first validated by a child process under a memory and time budget
    (`agent.configguard`), then the same bytes are parsed here; a file that would exhaust
    memory or time is refused without touching this process.
    """
    from agent.config import ConfigError, read_config_bytes
    from agent.tags import load_compiled

    try:
        data = read_config_bytes(path)
        if isolated:
            from agent.configguard import validate_isolated

            lines = validate_isolated(data, str(path))
            if lines:
                raise ConfigRefused(lines)
        return load_compiled(data, str(path))
    except ConfigError as exc:
        raise ConfigRefused(str(exc).splitlines()) from exc


async def load_and_compile_guarded(path: str | Path) -> Any:
    """`load_and_compile(path, isolated=True)` for the event loop (SIGHUP reloads): the
    child's check is cancellable, and the in-process parse of the accepted bytes runs on a
    thread."""
    from agent.config import ConfigError, read_config_bytes
    from agent.configguard import validate_isolated_async
    from agent.tags import load_compiled

    try:
        data = await asyncio.to_thread(read_config_bytes, path)
        lines = await validate_isolated_async(data, str(path))
        if lines:
            raise ConfigRefused(lines)
        return await asyncio.to_thread(load_compiled, data, str(path))
    except ConfigError as exc:
        raise ConfigRefused(str(exc).splitlines()) from exc


class Pipeline:
    """The components built from one compiled config, started and stopped as a unit."""

    def __init__(
        self,
        compiled: Any,
        metrics: Metrics,
        watchdog: Watchdog,
        config_dir: Path | None = None,
        carry: Pipeline | None = None,
    ) -> None:
        """`carry`: the running pipeline a reload replaces; unchanged parts are reused."""
        from agent.acquire import Acquirer
        from agent.kernel import KernelRuntime
        from agent.store.history import HistoryStore

        self.carried: set[str] = set()
        if carry is not None and _same_layout(carry.table, compiled.table):
            compiled.table = carry.table  # both acquirers fill one table during the handover
            self.carried.add("table")
        self.compiled = compiled
        self.cfg = compiled.config
        self.table = compiled.table
        self.metrics = metrics
        self.watchdog = watchdog
        self.config_dir = config_dir
        old = carry if "table" in self.carried else None
        if old is not None and old.cfg.kernel == self.cfg.kernel:
            self.kernel = old.kernel
            self.carried.add("kernel")
        else:
            self.kernel = KernelRuntime(self.cfg.kernel, self.table, metrics)
        if old is not None and old.cfg.store == self.cfg.store:
            self.store = old.store
            self.carried.add("store")
        else:
            self.store = (
                HistoryStore(self.cfg.store, self.table, metrics)
                if self.cfg.store.enabled
                else None
            )
        if (
            old is not None
            and old.cfg.publish == self.cfg.publish
            and old.cfg.site == self.cfg.site
        ):
            self.publisher = old.publisher
            self.carried.add("publisher")
        else:
            self.publisher = self._make_publisher()
        self.acquirer = Acquirer(compiled, metrics, self._on_frame)
        if self.publisher is not None and carry is None:  # a reload hands over in go_live()
            self.publisher.set_write(self.acquirer.write)  # Sparkplug DCMD, through the gate
        for drv in compiled.drivers.values():  # drivers that count their own drops report here
            if isinstance(drv, ReportsMetrics):
                drv.bind_metrics(metrics)
        self.control = self._make_control()
        if carry is not None and carry.cfg.http == self.cfg.http:
            self.telemetry = carry.telemetry
            self.status = carry.status  # the status page keeps its recent events
            self.carried.add("telemetry")
            self._bind_telemetry()
        else:
            self.status = self._make_status()
            self.telemetry = self._make_telemetry()
        # every documented series of this config exists from start-up, at 0 (agent/names.py)
        metrics.declare_all(names.startup_series(compiled))
        self.frames = 0
        self.polled: set[tuple[str, str]] = set()
        self.active_alarms: set[str] = set(carry.active_alarms) if carry is not None else set()
        self._attempts = 0.0
        self._control_periods = -1
        self._stall = EpisodeLog(log)
        self._tasks: list[asyncio.Task[Any]] = []
        # during a reload's handover: run the kernel only if it is not the old one's, and
        # store/publish nothing (the old pipeline still does) until `go_live()`
        self.live = carry is None
        self.fatal: str | None = None  # a component that cannot be restarted
        self._closing = False  # stop() or a reload handover: the control task may end

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
            commission_dir=Path(
                self.cfg.control.commission_dir or Path(self.cfg.store.path).parent / "models"
            ),
        )

    def _make_status(self) -> Any:
        """The operator's status page at / (agent/telemetry/statuspage.py)."""
        from agent.telemetry.statuspage import StatusSource

        token = bool(self.cfg.http.bearer_token_env or self.cfg.http.bearer_token_file)
        status = StatusSource(self.cfg.site, token)
        status.bind(self)
        return status

    def _make_telemetry(self) -> Any:
        from agent.telemetry.http import TelemetryServer

        return TelemetryServer(
            self.cfg.http,
            self.metrics,
            self.health,
            self.ready,
            control=self.control,
            components_fn=self.components,
            status=self.status,
        )

    def _bind_telemetry(self) -> None:
        """Point a carried-over HTTP server at this pipeline."""
        t = self.telemetry
        t.health_fn, t.ready_fn, t.control = self.health, self.ready, self.control
        if hasattr(t, "components_fn"):
            t.components_fn = self.components
        if self.status is not None:
            self.status.bind(self)

    # -- the hot path: one call per poll of one group
    def _on_frame(self, group: Any, ts_ns: int) -> None:
        if not self.live:  # reload handover: the old pipeline still stores and publishes
            if "kernel" not in self.carried:
                self.kernel.process(group)
            self.polled.add((group.device, group.name))
            return
        t0 = time.perf_counter()
        events = self.kernel.process(group)
        self.metrics.observe(
            names.KERNEL_SECONDS,
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
        if kind != "control_action":
            if self.publisher is not None:
                self.publisher.publish_event(kind, payload)
            self.status.note_event(kind, payload)  # the status page's event list

    # -- health
    def health(self) -> dict[str, Any]:
        return self.acquirer.health()

    def devices_up(self) -> bool:
        h = self.acquirer.health()
        return bool(h) and all(_is_up(d) for d in h.values())

    def components(self) -> dict[str, Any]:
        """State of every supervised component: ok | degraded | failed, and why."""
        out: dict[str, Any] = {}
        if self.control is not None:
            why = self.control.stalled()
            out["control"] = {"state": "failed" if why else "ok", "error": why}
        for name, comp in (("store", self.store), ("publish", self.publisher)):
            health = getattr(comp, "health", None)
            if health is not None:
                out[name] = health()
        if self.acquirer.frame_error is not None:
            out["kernel"] = {"state": "failed", "error": self.acquirer.frame_error}
        elif getattr(self.kernel, "groups", None):  # group states and what moved (issue 13)
            groups = self.kernel.group_summary()
            bad = [f"{n}: {g['error']}" for n, g in groups.items() if g["state"] == "failed"]
            out["kernel"] = {"state": "degraded" if bad else "ok", "error": "; ".join(bad) or None,
                             "groups": groups}  # fmt: skip
        for name, t in self.acquirer.task_failures().items():
            out[f"acquire:{name}"] = {"state": "failed", "error": t}
        if self.fatal:
            out["service"] = {"state": "failed", "error": self.fatal}
        return out

    def failing(self) -> list[str]:
        """`component: error` of every component not ok (for STATUS= and logs)."""
        return [
            f"{name} {c.get('state')}: {c.get('error')}"
            for name, c in self.components().items()
            if c.get("state") not in (None, "ok")
        ]

    def ready(self) -> bool:
        """Devices up and no supervised component failed (degraded is still ready)."""
        return self.devices_up() and not any(
            c.get("state") == "failed" for c in self.components().values()
        )

    def check_progress(self) -> None:
        """Feed the watchdog's progress counter from the acquisition counters.

        Frames count (see `_on_frame`); so do failed polls and reconnect attempts, because a
        pipeline that handles a dead PLC is working.  A device waiting out its backoff makes
        no attempts for a while; when no device is up that wait is the expected state, so it
        counts too.  What does not count: devices up but no poll completing (a wedged loop).
        """
        attempts = (
            self.metrics.total(names.POLL_ERRORS_TOTAL)
            + self.metrics.total(names.RECONNECTS_TOTAL)
            + self.metrics.total(names.POLLS_TOTAL)
        )
        acquiring = attempts != self._attempts or self.frames != getattr(self, "_frames_seen", -1)
        self._attempts, self._frames_seen = attempts, self.frames
        if not acquiring and any(_is_up(d) for d in self.acquirer.health().values()):
            return  # devices up but no poll completing: a wedge
        if self.control is not None:
            why = self.control.stalled()
            if why is not None:  # control not progressing: let systemd's watchdog act
                self._stall.fail("control", f"not feeding the watchdog: {why}", logging.ERROR)
                return
            self._stall.ok("control")
        if self.acquirer.task_failures():
            return
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
        parts.extend(f"FAILING {f}" for f in self.failing())
        if self.control is not None:
            for name, st in self.control.status().items():
                parts.append(f"{name}: {st.get('mode', '?')}/{st.get('active', '?')}")
        return "; ".join(parts)

    # -- lifecycle
    async def start(self) -> None:
        """Start everything (a fresh start; a reload uses the handover steps below)."""
        await self.start_outputs()
        await self.start_acquisition()
        self.start_control()
        # the supervised parts that report only a failure say from start-up they run
        for part in ("acquire", "kernel") + (("control",) if self.control is not None else ()):
            self.metrics.set(names.COMPONENT_UP, 1, component=part)

    async def start_outputs(self) -> None:
        """Store, publisher and HTTP server: the parts not carried over from a reload."""
        if self.store is not None and "store" not in self.carried:
            self.store.start()
        if self.publisher is not None and "publisher" not in self.carried:
            await self.publisher.start()
        if "telemetry" not in self.carried:
            await self.telemetry.start()

    async def start_acquisition(self) -> None:
        if "kernel" not in self.carried:
            t0 = time.monotonic()
            # a cold start builds the kernel's AOT module here (a child process; minutes on
            # a Pi), or compiles the JIT's cache: ask systemd for the time it may take
            from agent.kernel.aot import BUILD_TIMEOUT_S

            sdnotify.extend_timeout(BUILD_TIMEOUT_S)
            await asyncio.to_thread(self.kernel.warmup)
            log.info("kernel ready in %.2f s", time.monotonic() - t0)
        await self.acquirer.start()

    def start_control(self) -> None:
        if self.control is not None:
            task = asyncio.create_task(self.control.run(), name="control")
            task.add_done_callback(self._control_done)
            self._tasks.append(task)

    def _control_done(self, task: asyncio.Task[Any]) -> None:
        """The control task ends only by stop(); anything else is fatal, said loudly."""
        if self._closing:
            return
        exc = None if task.cancelled() else task.exception()
        how = "cancelled" if task.cancelled() else repr(exc)  # or returned: stopped all the same
        self.fatal = f"control task ended: {how}"
        self.metrics.inc(names.COMPONENT_CRASHES_TOTAL, component="control")
        self.metrics.set(names.COMPONENT_UP, 0, component="control")
        log.critical("%s", self.fatal, exc_info=exc)

    async def stop_control(self) -> dict[str, Any]:
        """Stop the control loops (an in-flight write finishes) and return their state."""
        if self.control is None:
            return {}
        self._closing = True
        await _bounded(self.control.stop(), 1.0, "control")  # loops end after this period
        if self._tasks:
            await _bounded(asyncio.gather(*self._tasks, return_exceptions=True), 1.0, "control")
        for t in self._tasks:
            t.cancel()
        self._tasks.clear()
        return self.control.export_state()

    def restart_control(self, state: dict[str, Any]) -> None:
        """Resume this pipeline's own loops after an aborted reload handover."""
        if self.control is not None:
            self.control.import_state(state)
            self._closing = False
            self.start_control()

    def go_live(self) -> None:
        """Reload handover done: this pipeline stores, publishes and feeds the kernel."""
        self.live = True
        if self.publisher is not None:
            self.publisher.set_write(self.acquirer.write)
        if "telemetry" in self.carried:
            self._bind_telemetry()

    async def stop(self, keep: frozenset[str] = frozenset(), budget_s: float = STOP_BUDGET_S):
        """Stop in data order within one deadline; `keep`: parts a new pipeline carries."""
        deadline = time.monotonic() + budget_s
        self._closing = True

        def left(share: float) -> float:
            return max(0.05, min(share, deadline - time.monotonic()))

        if self.control is not None and hasattr(self.control, "stop"):
            await _bounded(self.control.stop(), left(0.5), "control")  # loops end on their own
        if self._tasks:
            await _bounded(
                asyncio.gather(*self._tasks, return_exceptions=True), left(1.0), "control task"
            )
        for t in self._tasks:
            t.cancel()
        self._tasks.clear()
        await _bounded(self.acquirer.stop(), left(1.2), "acquire")
        if self.publisher is not None and "publisher" not in keep:
            drain = max(0.05, min(1.0, deadline - time.monotonic() - 1.0))
            await _bounded(self.publisher.close(drain_timeout_s=drain), left(1.5), "publish")
        if "telemetry" not in keep:
            await _bounded(self.telemetry.stop(), left(0.3), "telemetry")
        if self.store is not None and "store" not in keep:
            budget = left(2.0)  # the store's own close honours it (never a hung thread)
            await _bounded(asyncio.to_thread(self.store.close, budget), budget + 0.2, "store")


def _exclusive_links(cfg: Any) -> set[str]:
    """Links (serial lines) the config's enabled devices hold alone (`exclusive_links`)."""
    return {link for d in cfg.devices if d.enabled for link in d.exclusive_links()}


def _same_layout(a: Any, b: Any) -> bool:
    """Two tag tables with the same tags in the same slots (a reload may share one)."""
    return a.names == b.names and a.devices == b.devices and list(a.points) == list(b.points)


def _is_up(dev: Any) -> bool:
    if isinstance(dev, dict):
        return dev.get("state") == "up" or dev.get("up") is True
    return bool(getattr(dev, "up", False))


async def _bounded(aw: Any, timeout_s: float, what: str) -> None:
    """Await `aw` for at most `timeout_s`, whatever it does with a cancellation.

    `asyncio.wait` with a timeout returns when the time is up even if the task ignores its
    cancel (Python 3.11's `asyncio.timeout`/`wait_for` can turn a cancel into a TimeoutError
    that a component catches and runs on; awaiting it under a timeout then never returns -
    seen as a 300 s hang of a pipeline stop on a loaded machine)."""
    task = aw if isinstance(aw, asyncio.Future) else asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=max(0.0, timeout_s))
    if not done:
        task.cancel()
        log.warning("%s did not stop within %.1f s; continuing shutdown", what, timeout_s)
        return
    exc = None if task.cancelled() else task.exception()
    if exc is not None:  # shutdown goes on whatever one component does
        log.error("%s failed while stopping: %s", what, exc)


class Service:
    """Process-level lifecycle: signals, sd_notify, reload and the exit status."""

    def __init__(self, config_path: str | Path) -> None:
        self.config_path = Path(config_path)
        self.metrics = Metrics()
        self.metrics.set(names.BUILD_INFO, 1, **build_info())
        self.watchdog = Watchdog(metrics=self.metrics, stall_s=None)
        self.pipeline: Pipeline | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._ready_sent = False
        self.exit_code = EX_OK
        self._reload_task: asyncio.Task[None] | None = None
        self._reload_phase = ""

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
        self.metrics.set(names.UP, 1)
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
            self.metrics.set(names.UP, 0)
            log.info("stopped in %.2f s", time.monotonic() - t0)
        return self.exit_code

    async def _main_loop(self, started: float) -> None:
        try:
            await self._main_loop_inner(started)
        finally:
            task = self._reload_task
            if task is not None and not task.done():
                if self._reload_phase == "validating":  # nothing changed yet: drop it
                    task.cancel()
                await asyncio.gather(task, return_exceptions=True)  # a handover is bounded

    async def _main_loop_inner(self, started: float) -> None:
        next_status = 0.0
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await self._stop.wait()
            if self._stop.is_set():
                break
            if self._reload.is_set() and self._reload_task is None:
                self._reload.clear()
                self._reload_task = asyncio.create_task(self._do_reload(), name="reload")
            if self._reload_task is not None and self._reload_task.done():
                self._reload_task = None
            p = self.pipeline
            assert p is not None
            if p.fatal:
                log.critical("stopping with status %d: %s", EX_SOFTWARE, p.fatal)
                self.exit_code = EX_SOFTWARE
                break
            p.check_progress()
            p.status.tick()  # device up/down for the status page's event list
            now = time.monotonic()
            if not self._ready_sent and (p.first_cycle_done() or now - started > READY_TIMEOUT_S):
                self._ready_sent = True
                sdnotify.ready(p.status_line())
                log.info("ready in %.2f s: %s", now - started, p.status_line())
            if self._ready_sent and now >= next_status:
                next_status = now + STATUS_EVERY_S
                sdnotify.status(p.status_line())

    async def _do_reload(self) -> None:
        """Make-before-break: the new pipeline polls before the old one stops, and control
        passes from one to the other with its state inside one period."""
        sdnotify.reloading("reloading configuration")
        log.info("SIGHUP: reloading %s", self.config_path)
        old = self.pipeline
        assert old is not None
        try:
            self._reload_phase = "validating"  # a SIGTERM may cancel this phase
            compiled = await load_and_compile_guarded(self.config_path)
            self._reload_phase = "handover"
            new = Pipeline(
                compiled, self.metrics, self.watchdog, self.config_path.parent, carry=old
            )
        except ConfigRefused as exc:
            for line in exc.lines:
                log.error("reload refused: %s", line)
            return self._reload_refused("reload refused; previous configuration still running")
        except Exception as exc:
            log.error("reload refused: %s", exc)
            return self._reload_refused("reload refused; previous configuration still running")
        serial = _exclusive_links(old.cfg) & _exclusive_links(new.cfg)
        carried_state: dict[str, Any] | None = None
        try:
            if "telemetry" not in new.carried:  # a changed HTTP section: the port moves
                await _bounded(old.telemetry.stop(), 1.0, "telemetry")
            if serial:
                # two masters on one RS-485 line would collide: on a serial port the handover
                # is break-before-make (control pauses for the reconnect and first poll)
                log.info("reload: serial line(s) %s handed over break-before-make", serial)
                carried_state = await old.stop_control()
                await _bounded(old.acquirer.stop(), 2.0, "acquire")
            await new.start_acquisition()
            for _ in range(int(HANDOVER_WAIT_S / 0.02)):  # polling before control moves
                if new.first_cycle_done():
                    break
                await asyncio.sleep(0.02)
            if "store" not in new.carried and new.store is not None:
                new.store.start()
        except Exception as exc:
            log.error("reloaded configuration failed to start (%s); keeping the previous", exc)
            await new.stop(keep=frozenset(new.carried))
            if "telemetry" not in new.carried:
                with contextlib.suppress(Exception):
                    await old.telemetry.start()
            else:  # the shared HTTP server (and status page) show the old pipeline again
                old._bind_telemetry()
            if carried_state is not None:  # the serial handover had stopped the old one
                await old.acquirer.start()
                old.restart_control(carried_state)
            return self._reload_refused("reload failed; previous configuration still running")
        # the handover: control stops on the old table and starts on the new one at once
        if carried_state is None:
            carried_state = await old.stop_control()
        if new.control is not None:
            kept = new.control.import_state(carried_state)
            if kept:
                log.info("control carried over (bumpless): %s", ", ".join(kept))
        new.start_control()
        new.go_live()
        self.pipeline = new
        await old.stop(keep=frozenset(new.carried))
        try:
            await new.start_outputs()
        except Exception as exc:  # a port taken, say: the pipeline runs on without it
            log.error("reloaded configuration: outputs failed to start: %s", exc)
        self.metrics.inc(names.CONFIG_RELOADS_TOTAL, result="ok")
        carried = ", ".join(sorted(new.carried)) or "nothing"
        sdnotify.ready(f"reloaded; {new.status_line()}")
        log.info("configuration reloaded (carried over: %s)", carried)

    def _reload_refused(self, status: str) -> None:
        self.metrics.inc(names.CONFIG_RELOADS_TOTAL, result="refused")
        sdnotify.ready(status)


def run_service(config_path: str | Path, log_level: str = "INFO") -> int:
    """Entry point of `edgeloop run`."""
    from agent.telemetry.logsetup import setup_logging

    setup_logging(log_level)
    try:
        return asyncio.run(Service(config_path).run())
    except KeyboardInterrupt:
        return EX_OK
