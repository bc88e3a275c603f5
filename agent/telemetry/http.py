"""A small asyncio HTTP/1.1 server for /metrics, /healthz, /readyz and loop control.

No web framework: five routes do not justify a dependency on a gateway, and a hand-written
server lets us state its limits plainly.  Every request must arrive within
`request_timeout_s`, headers within `max_header_bytes`, bodies within `max_body_bytes`.
Anything else gets a 4xx and the connection is closed, so a slow or garbage client costs a
socket for a few seconds and nothing more.

Capacity: a general pool of `max_connections`, of which one source IP may hold at most
`max_connections_per_client`.  A connection that finds no room there is not dropped at once:
up to `reserved_probe_connections` such connections get `reserved_request_timeout_s` to
send a request, which is answered only when it is for /healthz, /readyz or /metrics (then
the connection closes).  So idle or slow clients, even many of them, cannot lock out the
probes and Prometheus.  A reserved slot held by a connection that has not sent a byte is
given up to the next newcomer.  Everything else is told 503 with ``Retry-After`` at once and
counted (``edgeloop_http_requests_total{endpoint="overload"|"client_limit",code="503"}``),
and while connections are being turned away, keep-alive connections of those involved
that sit idle longer than `idle_timeout_under_pressure_s` are closed to make room.

A bug in one connection's handling is answered with a 500 or a closed connection; the
server keeps serving, and the failure is logged once per episode, not once per request.

The operator's status page: a browser's ``GET /`` (``Accept: text/html``) gets the page
(agent/telemetry/statuspage.py), which polls ``/status/live`` and reads ``/status/meta``,
``/status/history`` and ``/status/trend``; other clients still get the JSON index at /.

Auth (a bearer token on every route but the probes; the control writes refuse to work
without one) is in the routes.  This module holds the connections: capacity, timeouts,
failure episodes.  The framing is agent/telemetry/httpwire.py, the routes
agent/telemetry/httproutes.py, the control writes agent/telemetry/httpcontrol.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.lifecycle import AsyncContext
from agent.metrics import Metrics
from agent.names import HTTP_REQUESTS_TOTAL
from agent.telemetry.httpcontrol import Control
from agent.telemetry.httproutes import PROBE_PATHS, Routes
from agent.telemetry.httpwire import (
    JSON_CONTENT_TYPE,
    METRICS_CONTENT_TYPE,
    OPENMETRICS_CONTENT_TYPE,
    HttpError,
    Request,
    Response,
    client_key,
    close_writer,
    json_body,
    json_plain,
    read_request,
    write_response,
)
from agent.telemetry.settings import HttpConfig

__all__ = [
    "JSON_CONTENT_TYPE",
    "METRICS_CONTENT_TYPE",
    "OPENMETRICS_CONTENT_TYPE",
    "Control",
    "TelemetryServer",
    "json_plain",
]

log = logging.getLogger(__name__)

_MAX_REQUESTS_PER_CONNECTION = 1000
_QUIET_S = 60.0  # turn-away episodes and failure logs: a new line after this much quiet


class _Conn:
    """One connection's place in the capacity accounting."""

    __slots__ = ("client", "evicted", "heard", "idle_since", "reason", "reserved", "timeout")

    def __init__(self, client: str) -> None:
        self.client = client
        self.reserved = False  # on a reserved probe slot rather than in the general pool
        self.reason = ""  # why it is not in the general pool: overload | client_limit
        self.heard = False  # the client has sent at least one byte
        self.evicted = False  # gave its reserved slot up to a newcomer
        self.idle_since: float | None = None  # loop time, while waiting for a request
        self.timeout: asyncio.Timeout | None = None  # the running wait's deadline


class _Client:
    __slots__ = ("count", "pressure_until")

    def __init__(self) -> None:
        self.count = 0
        self.pressure_until = 0.0


class TelemetryServer(AsyncContext):
    """Serves the agent's metrics, health and (optionally) loop control on one TCP port.

    The callbacks are those of `Routes` (agent/telemetry/httproutes.py), which answers each
    request; they may be swapped while serving (a reload binds the new pipeline's).
    """

    def __init__(
        self,
        http_cfg: HttpConfig,
        metrics: Metrics,
        health_fn: Callable[[], Mapping[str, Any]],
        ready_fn: Callable[[], bool],
        control: Control | None = None,
        components_fn: Callable[[], Mapping[str, Any]] | None = None,
        status: Any = None,
    ) -> None:
        self.cfg = http_cfg
        self.metrics = metrics
        self._token = http_cfg.resolve_token()  # ValueError now rather than an open endpoint
        self.routes = Routes(
            metrics, health_fn, ready_fn, self._token, control, components_fn, status
        )
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._general: set[_Conn] = set()
        self._clients: dict[str, _Client] = {}  # source IP -> its share of the general pool
        self._reserve: list[_Conn] = []  # oldest first
        self._pressure_until = 0.0  # loop time until which the whole pool is under pressure
        self._last_refusal = -math.inf
        self._refused_quietly = 0
        self._failures: dict[str, int] = {}  # failing handler -> failures in the episode

    # the pipeline's callbacks, rebound on a reload (agent/service.py): they live in the routes
    @property
    def health_fn(self) -> Callable[[], Mapping[str, Any]]:
        return self.routes.health_fn

    @health_fn.setter
    def health_fn(self, fn: Callable[[], Mapping[str, Any]]) -> None:
        self.routes.health_fn = fn

    @property
    def ready_fn(self) -> Callable[[], bool]:
        return self.routes.ready_fn

    @ready_fn.setter
    def ready_fn(self, fn: Callable[[], bool]) -> None:
        self.routes.ready_fn = fn

    @property
    def components_fn(self) -> Callable[[], Mapping[str, Any]] | None:
        return self.routes.components_fn

    @components_fn.setter
    def components_fn(self, fn: Callable[[], Mapping[str, Any]] | None) -> None:
        self.routes.components_fn = fn

    @property
    def control(self) -> Control | None:
        return self.routes.control

    @control.setter
    def control(self, control: Control | None) -> None:
        self.routes.control = control

    @property
    def status(self) -> Any:
        return self.routes.status

    @status.setter
    def status(self, status: Any) -> None:
        self.routes.status = status

    @property
    def port(self) -> int:
        """The bound port (useful with ``port: 0``)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        if not self.cfg.enabled:
            log.info("telemetry HTTP disabled (http.enabled: false)")
            return
        if not self.cfg.is_loopback and self._token is None:
            log.warning(
                "telemetry HTTP bound to %s without a bearer token: anyone who can reach "
                "this address can read metrics and device state",
                self.cfg.bind,
            )
        self._server = await asyncio.start_server(
            self._on_connect,
            self.cfg.bind,
            self.cfg.port,
            limit=self.cfg.max_header_bytes,
            reuse_address=True,
        )
        self.routes.restart_clock()
        log.info("telemetry HTTP on http://%s:%d/", self.cfg.bind, self.port)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self._server.wait_closed()
        self._server = None

    # --- connection handling ------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        conn = _Conn(client_key(writer))
        try:
            admitted = self._admit(conn)  # no await before this: arrival order is kept
            if admitted:
                await self._serve(conn, reader, writer)
            elif conn.reserved:
                await self._serve_reserved(conn, reader, writer)
            else:
                await self._refuse(writer, conn)
        except asyncio.CancelledError:
            pass  # stop()
        except (ConnectionError, OSError):
            pass  # the client went away (or would not read): nothing to tell anyone
        except Exception as exc:  # a bug in a handler must not take the server down
            self._failed("connection", exc)
        finally:
            self._conns.discard(task)
            try:
                self._release(conn)
            except Exception as exc:  # never leak the socket over a bookkeeping bug
                self._failed("connection", exc)
            await close_writer(writer)

    # --- capacity ------------------------------------------------------------------------

    def _admit(self, conn: _Conn) -> bool:
        """Place a new connection: True for the general pool; else it goes on a reserved
        probe slot (`conn.reserved`) or is to be refused."""
        client = self._clients.get(conn.client)
        at_client_limit = client is not None and (
            client.count >= self.cfg.max_connections_per_client
        )
        if not at_client_limit and len(self._general) < self.cfg.max_connections:
            if client is None:
                client = self._clients[conn.client] = _Client()
            client.count += 1
            self._general.add(conn)
            return True
        conn.reason = "client_limit" if at_client_limit else "overload"
        self._press(conn.client if at_client_limit else None)
        if len(self._reserve) < self.cfg.reserved_probe_connections or self._evict_silent():
            conn.reserved = True
            self._reserve.append(conn)
        return False

    def _release(self, conn: _Conn) -> None:
        if conn in self._general:
            self._general.discard(conn)
            client = self._clients[conn.client]
            client.count -= 1
            if client.count <= 0:
                del self._clients[conn.client]
        elif conn.reserved and not conn.evicted:
            with contextlib.suppress(ValueError):
                self._reserve.remove(conn)

    def _evict_silent(self) -> bool:
        """Free the reserved slot of the oldest connection that has not sent a byte: a real
        probe sends its request at once, so a silent one is idle or hostile."""
        for conn in self._reserve:
            if not conn.heard and conn.timeout is not None and not conn.timeout.expired():
                self._reserve.remove(conn)
                conn.evicted = True
                _expire(conn.timeout, asyncio.get_running_loop().time())
                return True
        return False

    def _press(self, client: str | None) -> None:
        """Connections are being turned away (from the whole pool, or from one client at its
        limit): idle keep-alive connections there close after the short idle timeout."""
        now = asyncio.get_running_loop().time()
        until = now + self.cfg.request_timeout_s
        if client is None:
            self._pressure_until = until
        elif client in self._clients:
            self._clients[client].pressure_until = until
        short = self._idle_under_pressure_s
        for conn in list(self._general):
            if conn.idle_since is None or conn.timeout is None:
                continue
            if client is None or conn.client == client:
                deadline = max(conn.idle_since + short, now)
                when = conn.timeout.when()
                if when is None or deadline < when:
                    _expire(conn.timeout, deadline)

    @property
    def _idle_under_pressure_s(self) -> float:
        return min(self.cfg.idle_timeout_under_pressure_s, self.cfg.request_timeout_s)

    def _idle_deadline(self, conn: _Conn, now: float) -> float:
        client = self._clients.get(conn.client)
        pressed = now < self._pressure_until or (client is not None and now < client.pressure_until)
        return now + (self._idle_under_pressure_s if pressed else self.cfg.request_timeout_s)

    async def _refuse(self, writer: asyncio.StreamWriter, conn: _Conn) -> None:
        """503 with Retry-After, counted, connection closed (by the caller)."""
        if conn.reason == "client_limit":
            message = (
                f"too many connections from {conn.client} "
                f"(limit {self.cfg.max_connections_per_client}), retry later"
            )
        else:
            message = "too many connections, retry later"
        self._count(conn.reason, 503)
        self._log_refusal(conn)
        retry = {"Retry-After": str(max(1, math.ceil(self._idle_under_pressure_s)))}
        await self._send(writer, 503, json_body({"error": message}), False, extra=retry)

    def _log_refusal(self, conn: _Conn) -> None:
        """One warning per turn-away episode (refusals less than a minute apart); the
        counter carries the rest."""
        now = time.monotonic()
        quiet = now - self._last_refusal > _QUIET_S
        self._last_refusal = now
        if not quiet:
            self._refused_quietly += 1
            return
        if conn.reason == "client_limit":
            why = f"{conn.client} holds its limit of {self.cfg.max_connections_per_client}"
        else:
            why = f"all {self.cfg.max_connections} connections are in use"
        log.warning(
            "telemetry HTTP: turning connections away (503): %s; only /healthz, /readyz and "
            "/metrics are served on the %d reserved slots%s",
            why,
            self.cfg.reserved_probe_connections,
            f" ({self._refused_quietly} more refused in the previous episode)"
            if self._refused_quietly
            else "",
        )
        self._refused_quietly = 0

    def _failed(self, where: str, exc: BaseException) -> None:
        """Log the first failure of an episode with its traceback, count the rest quietly."""
        n = self._failures.get(where, 0)
        self._failures[where] = n + 1
        if n == 0:
            log.error(
                "telemetry HTTP %s failed (further failures are not logged until it works again)",
                where,
                exc_info=exc,
            )

    def _worked(self, where: str) -> None:
        n = self._failures.pop(where, 0)
        if n:
            log.info("telemetry HTTP %s works again after %d failure(s)", where, n)

    # --- serving ---------------------------------------------------------------------------

    async def _serve(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(_MAX_REQUESTS_PER_CONNECTION):
            # idle between requests: wait for the first byte, then close quietly; the
            # deadline comes closer while the server is turning connections away (_press)
            now = loop.time()
            conn.idle_since = now
            try:
                async with asyncio.timeout_at(self._idle_deadline(conn, now)) as conn.timeout:
                    first = await reader.read(1)
            except TimeoutError:
                return
            finally:
                conn.idle_since = conn.timeout = None
            if not first:
                return  # clean EOF between requests
            conn.heard = True
            try:  # the rest of the request must arrive within the timeout too (slowloris)
                async with asyncio.timeout(self.cfg.request_timeout_s):
                    req = await read_request(reader, first, self.cfg.max_body_bytes)
            except TimeoutError:
                await self._send(writer, 408, json_body({"error": "request timeout"}), False)
                self._count("invalid", 408)
                return
            except HttpError as err:
                await self._send(writer, err.code, json_body({"error": err.message}), False)
                self._count("invalid", err.code)
                return
            endpoint, code, body, ctype, extra = await self._dispatch(req)
            self._count(endpoint, code)
            keep = req.keep_alive
            await self._send(writer, code, body, keep, ctype, extra, head_only=req.method == "HEAD")
            self._worked("connection")
            if not keep:
                return

    async def _serve_reserved(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One request on a reserved slot: answered if it is for a probe, else 503."""
        wait_s = min(self.cfg.reserved_request_timeout_s, self.cfg.request_timeout_s)
        try:
            async with asyncio.timeout(wait_s) as conn.timeout:
                first = await reader.read(1)
                if not first:
                    return
                conn.heard = True
                req = await read_request(reader, first, self.cfg.max_body_bytes)
        except TimeoutError:  # silent too long, or gave its slot to a newcomer
            await self._refuse(writer, conn)
            return
        except HttpError as err:
            await self._send(writer, err.code, json_body({"error": err.message}), False)
            self._count("invalid", err.code)
            return
        finally:
            conn.timeout = None
        if (req.path.rstrip("/") or "/") not in PROBE_PATHS:
            await self._refuse(writer, conn)
            return
        endpoint, code, body, ctype, extra = await self._dispatch(req)
        self._count(endpoint, code)
        await self._send(writer, code, body, False, ctype, extra, head_only=req.method == "HEAD")
        self._worked("connection")

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        code: int,
        body: bytes,
        keep_alive: bool,
        content_type: str = JSON_CONTENT_TYPE,
        extra: Mapping[str, str] | None = None,
        *,
        head_only: bool = False,
    ) -> None:
        timeout_s = self.cfg.request_timeout_s
        await write_response(
            writer, code, body, keep_alive, timeout_s, content_type, extra, head_only=head_only
        )

    def _count(self, endpoint: str, code: int) -> None:
        self.metrics.inc(HTTP_REQUESTS_TOTAL, endpoint=endpoint, code=code)

    # --- routing (the answers are Routes') ------------------------------------------------

    async def _dispatch(self, req: Request) -> Response:
        """Returns (endpoint label, status, body, content type, extra headers)."""
        endpoint, parts, early = self.routes.resolve(req)
        if early is not None:
            return early
        try:
            result = await self.routes.route(req, endpoint, parts)
        except HttpError as err:
            body = json_body({"error": err.message})
            return endpoint, err.code, body, JSON_CONTENT_TYPE, err.headers
        except Exception as exc:  # a failing health_fn/status() is a 500, not a dropped conn
            self._failed(f"{req.method} /{endpoint}", exc)
            body = json_body({"error": "internal error, see the agent log"})
            return endpoint, 500, body, JSON_CONTENT_TYPE, {}
        self._worked(f"{req.method} /{endpoint}")
        return result


def _expire(timeout: asyncio.Timeout, when: float) -> None:
    """Bring a running wait's deadline forward (to now or a past time: it fires at once)."""
    with contextlib.suppress(RuntimeError):  # already expiring or left: nothing to do
        if not timeout.expired():
            timeout.reschedule(when)
