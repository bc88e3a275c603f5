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

Auth: when a bearer token is configured, every route except the probes (/healthz, /readyz)
and the page document itself (it holds no data; its data routes need the token) needs
``Authorization: Bearer <token>`` (compared in constant time).  The control routes,
which change what a PLC is told to do, refuse to work at all without a configured token,
and require ``Content-Type: application/json`` so a browser cannot forge them with a
simple cross-site form post.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import ipaddress
import json
import logging
import math
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from agent.metrics import Metrics
from agent.names import HTTP_REQUESTS_TOTAL
from agent.telemetry.settings import HttpConfig

log = logging.getLogger(__name__)

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
_MAX_REQUESTS_PER_CONNECTION = 1000
_PROBE_PATHS = ("/healthz", "/readyz", "/metrics")  # what a reserved slot may ask for
_QUIET_S = 60.0  # turn-away episodes and failure logs: a new line after this much quiet


class Control(Protocol):
    """What the control routes need; `agent.control.ControlRunner` provides it.

    `set_setpoint`/`set_mode` raise KeyError for an unknown loop and ValueError for a value
    the loop refuses; they may be plain or async functions.
    """

    def set_setpoint(self, loop: str, value: float) -> Any: ...

    def set_mode(self, loop: str, mode: str) -> Any: ...

    def status(self) -> dict[str, Any]: ...


class _HttpError(Exception):
    def __init__(self, code: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class _Request:
    __slots__ = ("body", "headers", "method", "path", "query", "version")

    def __init__(self, method: str, path: str, version: str, headers: dict[str, str]):
        self.method = method
        self.path = path
        self.version = version
        self.headers = headers
        self.body = b""
        self.query: dict[str, str] = {}  # the status page's history routes only

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return conn == "keep-alive"
        return conn != "close"


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


class TelemetryServer:
    """Serves the agent's metrics, health and (optionally) loop control on one TCP port.

    `health_fn()` returns per-device state (``Acquirer.health()``), `ready_fn()` whether the
    agent is ready (devices up, no supervised component failed), `components_fn()` the
    state of each supervised component (shown in /readyz).  Both run on the event loop and
    must be cheap.
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
        self.health_fn = health_fn
        self.ready_fn = ready_fn
        self.control = control
        self.components_fn = components_fn
        self.status = status  # agent.telemetry.statuspage.StatusSource: the page at /
        self._page: Any = None  # its assets, loaded on first request
        self._token = http_cfg.resolve_token()  # ValueError now rather than an open endpoint
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._general: set[_Conn] = set()
        self._clients: dict[str, _Client] = {}  # source IP -> its share of the general pool
        self._reserve: list[_Conn] = []  # oldest first
        self._pressure_until = 0.0  # loop time until which the whole pool is under pressure
        self._last_refusal = -math.inf
        self._refused_quietly = 0
        self._failures: dict[str, int] = {}  # failing handler -> failures in the episode
        self._started = time.monotonic()

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
        self._started = time.monotonic()
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

    async def __aenter__(self) -> TelemetryServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- connection handling ------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        conn = _Conn(_client_key(writer))
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
            await _close(writer)

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
        await self._send(writer, 503, _json({"error": message}), False, extra=retry)

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
                    req = await self._read_request(reader, first)
            except TimeoutError:
                await self._send(writer, 408, _json({"error": "request timeout"}), False)
                self._count("invalid", 408)
                return
            except _HttpError as err:
                await self._send(writer, err.code, _json({"error": err.message}), False)
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
                req = await self._read_request(reader, first)
        except TimeoutError:  # silent too long, or gave its slot to a newcomer
            await self._refuse(writer, conn)
            return
        except _HttpError as err:
            await self._send(writer, err.code, _json({"error": err.message}), False)
            self._count("invalid", err.code)
            return
        finally:
            conn.timeout = None
        if (req.path.rstrip("/") or "/") not in _PROBE_PATHS:
            await self._refuse(writer, conn)
            return
        endpoint, code, body, ctype, extra = await self._dispatch(req)
        self._count(endpoint, code)
        await self._send(writer, code, body, False, ctype, extra, head_only=req.method == "HEAD")
        self._worked("connection")

    async def _read_request(self, reader: asyncio.StreamReader, first: bytes) -> _Request:
        try:
            head = first + await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            raise _HttpError(400, "incomplete request") from None
        except asyncio.LimitOverrunError:
            raise _HttpError(431, "request header too large") from None
        try:
            text = head.decode("ascii")
        except UnicodeDecodeError:
            raise _HttpError(400, "non-ASCII request header") from None
        lines = text[:-4].split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/"):
            raise _HttpError(400, "malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            if version.startswith("HTTP/"):
                raise _HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
            raise _HttpError(400, "malformed request line")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or " " in name or line[0] in " \t":
                raise _HttpError(400, "malformed header line")
            key = name.lower()
            if key in headers and key in ("content-length", "authorization", "host"):
                raise _HttpError(400, f"duplicate {name} header")
            headers[key] = value.strip()
        path, _, query = target.partition("?")
        req = _Request(method.upper(), path, version, headers)
        if query:
            req.query = {k: v[-1] for k, v in urllib.parse.parse_qs(query[:2000]).items()}
        if "transfer-encoding" in headers:
            raise _HttpError(501, "chunked request bodies are not supported")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise _HttpError(400, "invalid Content-Length")
        length = int(length_text)
        if length > self.cfg.max_body_bytes:
            raise _HttpError(413, f"body larger than {self.cfg.max_body_bytes} bytes")
        if length:
            try:
                req.body = await reader.readexactly(length)
            except asyncio.IncompleteReadError:
                raise _HttpError(400, "body shorter than Content-Length") from None
        return req

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
        headers = [
            f"HTTP/1.1 {code} {_REASONS.get(code, 'Unknown')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
        ]
        headers += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("ascii"))
        if not head_only:
            writer.write(body)
        async with asyncio.timeout(self.cfg.request_timeout_s):
            await writer.drain()

    def _count(self, endpoint: str, code: int) -> None:
        self.metrics.inc(HTTP_REQUESTS_TOTAL, endpoint=endpoint, code=code)

    # --- routing ---------------------------------------------------------------------------

    async def _dispatch(self, req: _Request) -> tuple[str, int, bytes, str, dict[str, str]]:
        """Returns (endpoint label, status, body, content type, extra headers)."""
        path = req.path.rstrip("/") or "/"
        parts = path.strip("/").split("/")
        if path in ("/healthz", "/readyz", "/metrics", "/control"):
            endpoint = path[1:]
            allowed: tuple[str, ...] = ("GET", "HEAD")
        elif (
            len(parts) == 3
            and parts[0] == "control"
            and parts[2] in ("setpoint", "mode", "commission")
        ):
            endpoint = f"control_{parts[2]}"
            allowed = ("POST",)
        elif path == "/":
            endpoint, allowed = "index", ("GET", "HEAD")
        elif path in _STATUS_PATHS and self.status is not None:
            endpoint, allowed = "status_" + path.rsplit("/", 1)[1], ("GET", "HEAD")
        else:
            return "unknown", 404, _json({"error": f"no such endpoint {req.path}"}), *_J
        if req.method not in allowed:
            return (
                endpoint,
                405,
                _json({"error": f"{req.method} not allowed"}),
                JSON_CONTENT_TYPE,
                {"Allow": ", ".join(allowed)},
            )
        try:
            result = await self._route(req, endpoint, parts)
        except _HttpError as err:
            return endpoint, err.code, _json({"error": err.message}), JSON_CONTENT_TYPE, err.headers
        except Exception as exc:  # a failing health_fn/status() is a 500, not a dropped conn
            self._failed(f"{req.method} /{endpoint}", exc)
            return endpoint, 500, _json({"error": "internal error, see the agent log"}), *_J
        self._worked(f"{req.method} /{endpoint}")
        return result

    async def _route(
        self, req: _Request, endpoint: str, parts: list[str]
    ) -> tuple[str, int, bytes, str, dict[str, str]]:
        if endpoint == "index" and self.status is not None and _wants_html(req):
            return self._page_response()  # the page holds no data: no token needed
        if endpoint not in ("healthz", "readyz"):
            self._authorize(req)
        if endpoint == "index":
            return endpoint, 200, _json({"endpoints": _INDEX}), *_J
        if endpoint.startswith("status_"):
            return endpoint, 200, await self._status_route(endpoint, req), *_J
        if endpoint == "healthz":
            return endpoint, 200, _json(self._healthz()), *_J
        if endpoint == "readyz":
            ready = bool(self.ready_fn())
            body = {"ready": ready, "devices": self.health_fn()}
            if self.components_fn is not None:  # supervised tasks: ok | degraded | failed
                body["components"] = self.components_fn()
            return endpoint, 200 if ready else 503, _json(body), *_J
        if endpoint == "metrics":  # OpenMetrics when the scraper asks for it (Prometheus does)
            om = "application/openmetrics-text" in req.headers.get("accept", "")
            text = self.metrics.render(process=True, openmetrics=om).encode()
            kind = OPENMETRICS_CONTENT_TYPE if om else METRICS_CONTENT_TYPE
            return endpoint, 200, text, kind, {"Vary": "Accept"}
        if endpoint == "control":
            return endpoint, 200, _json(self._require_control().status()), *_J
        return endpoint, 200, _json(await self._control_write(req, parts[1], parts[2])), *_J

    def _page_response(self) -> tuple[str, int, bytes, str, dict[str, str]]:
        if self._page is None:
            from agent.telemetry.statuspage import PageAssets

            self._page = PageAssets()
        headers = {"Content-Security-Policy": self._page.csp, "Referrer-Policy": "no-referrer"}
        return "page", 200, self._page.body, "text/html; charset=utf-8", headers

    async def _status_route(self, endpoint: str, req: _Request) -> bytes:
        """The status page's data: meta (once per page load), live (1 Hz), history and
        trend (from SQLite, on a page load or a filter change)."""
        status = self.status
        if endpoint == "status_meta":
            return bytes(status.meta())
        if endpoint == "status_live":
            return bytes(status.live())
        if endpoint == "status_history":
            return bytes(await status.history(req.query))
        return bytes(await status.trend(req.query))

    def _authorize(self, req: _Request) -> None:
        if self._token is None:
            return
        scheme, _, given = req.headers.get("authorization", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self._token.encode()
        )
        if not ok:
            raise _HttpError(
                401, "bearer token required", {"WWW-Authenticate": 'Bearer realm="edgeloop"'}
            )

    def _healthz(self) -> dict[str, Any]:
        return {"status": "alive", "uptime_s": round(time.monotonic() - self._started, 3)}

    def _require_control(self) -> Control:
        if self.control is None:
            raise _HttpError(404, "no control loops configured")
        return self.control

    async def _control_write(self, req: _Request, loop: str, what: str) -> dict[str, Any]:
        control = self._require_control()
        if self._token is None:
            raise _HttpError(
                403,
                "control over HTTP needs a bearer token: set http.bearer_token_env or "
                "http.bearer_token_file",
            )
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise _HttpError(415, "Content-Type must be application/json")
        try:
            data = json.loads(req.body)
        except (ValueError, UnicodeDecodeError):
            raise _HttpError(400, "body is not valid JSON") from None
        if not isinstance(data, dict):
            raise _HttpError(400, "body must be a JSON object")
        try:
            if what == "setpoint":
                value = data.get("value")
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not math.isfinite(value)
                ):
                    raise _HttpError(422, 'expected {"value": <finite number>}')
                result = control.set_setpoint(loop, float(value))
            elif what == "commission":  # a plant test on the running service
                start = getattr(control, "start_commission", None)
                if start is None:
                    raise _HttpError(501, "this control runner cannot commission")
                result = start(loop, data)
            else:
                mode = data.get("mode")
                if not isinstance(mode, str) or not mode:
                    raise _HttpError(422, 'expected {"mode": "<mode>"}')
                result = control.set_mode(loop, mode)
            if inspect.isawaitable(result):
                await result
        except KeyError:
            raise _HttpError(404, f"no control loop named {loop!r}") from None
        except ValueError as exc:
            raise _HttpError(422, str(exc)) from None
        log.info("control %s of loop %s set over HTTP: %s", what, loop, data)
        status = control.status()
        return {"ok": True, "loop": loop, "status": status.get(loop, status)}


_J: tuple[str, dict[str, str]] = (JSON_CONTENT_TYPE, {})
_STATUS_PATHS = ("/status/meta", "/status/live", "/status/history", "/status/trend")
_INDEX = [
    "GET /metrics",
    "GET /healthz",
    "GET /readyz",
    "GET /control",
    "POST /control/<loop>/setpoint",
    "POST /control/<loop>/mode",
    "POST /control/<loop>/commission",
]


def _wants_html(req: _Request) -> bool:
    """A browser asks for text/html; API clients (curl, scripts) keep the JSON index."""
    return "text/html" in req.headers.get("accept", "")


def _json(obj: Any) -> bytes:
    return (json.dumps(json_plain(obj), allow_nan=False) + "\n").encode()


def json_plain(obj: Any) -> Any:
    """JSON-safe copy of what health/status dicts carry: numpy scalars, NaN (-> null),
    tuples and sets, enums and paths (-> str)."""
    if isinstance(obj, Mapping):
        return {str(k): json_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [json_plain(v) for v in obj]
    if isinstance(obj, bool | int | str) or obj is None:
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item"):  # numpy scalar
        return json_plain(obj.item())
    return str(obj)


def _client_key(writer: asyncio.StreamWriter) -> str:
    """The source IP a connection counts against (IPv4-mapped IPv6 as plain IPv4)."""
    peer = writer.get_extra_info("peername")
    if not isinstance(peer, tuple) or not peer:
        return "unknown"
    host = str(peer[0])
    with contextlib.suppress(ValueError):
        addr = ipaddress.ip_address(host.split("%", 1)[0])
        mapped = getattr(addr, "ipv4_mapped", None)
        return str(mapped or addr)
    return host


def _expire(timeout: asyncio.Timeout, when: float) -> None:
    """Bring a running wait's deadline forward (to now or a past time: it fires at once)."""
    with contextlib.suppress(RuntimeError):  # already expiring or left: nothing to do
        if not timeout.expired():
            timeout.reschedule(when)


async def _close(writer: asyncio.StreamWriter) -> None:
    if writer.is_closing():
        return
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
