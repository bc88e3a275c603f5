"""Routing of the telemetry server: which endpoint a request is for, who may ask, and the
answer of each read-only route (/, /metrics, /healthz, /readyz, /control, /status/*).

Auth: when a bearer token is configured, every route except the probes (/healthz, /readyz)
and the page document itself (it holds no data; its data routes need the token) needs
``Authorization: Bearer <token>`` (compared in constant time).  The control writes are in
agent/telemetry/httpcontrol.py.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.metrics import Metrics
from agent.telemetry.httpcontrol import Control, control_write, require_control
from agent.telemetry.httpwire import (
    JSON_CONTENT_TYPE,
    METRICS_CONTENT_TYPE,
    OPENMETRICS_CONTENT_TYPE,
    HttpError,
    Request,
    Response,
    json_body,
)

PROBE_PATHS = ("/healthz", "/readyz", "/metrics")  # what a reserved slot may ask for
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


class Routes:
    """The answers the server gives.  `health_fn()` returns per-device state
    (``Acquirer.health()``), `ready_fn()` whether the agent is ready, `components_fn()` the
    state of each supervised component (shown in /readyz); all run on the event loop and
    must be cheap.  `status` is the page's data source (agent.telemetry.statuspage)."""

    def __init__(
        self,
        metrics: Metrics,
        health_fn: Callable[[], Mapping[str, Any]],
        ready_fn: Callable[[], bool],
        token: str | None,
        control: Control | None = None,
        components_fn: Callable[[], Mapping[str, Any]] | None = None,
        status: Any = None,
    ) -> None:
        self.metrics = metrics
        self.health_fn = health_fn
        self.ready_fn = ready_fn
        self.control = control
        self.components_fn = components_fn
        self.status = status
        self._token = token
        self._page: Any = None  # the page's assets, loaded on first request
        self._started = time.monotonic()

    def resolve(self, req: Request) -> tuple[str, list[str], Response | None]:
        """(endpoint label, path parts, an answer when the request goes no further:
        404 for no such endpoint, 405 for a method the endpoint does not take)."""
        path = req.path.rstrip("/") or "/"
        parts = path.strip("/").split("/")
        allowed: tuple[str, ...]
        if path in ("/healthz", "/readyz", "/metrics", "/control"):
            endpoint, allowed = path[1:], ("GET", "HEAD")
        elif (
            len(parts) == 3
            and parts[0] == "control"
            and parts[2] in ("setpoint", "mode", "commission")
        ):
            endpoint, allowed = f"control_{parts[2]}", ("POST",)
        elif path == "/":
            endpoint, allowed = "index", ("GET", "HEAD")
        elif path in _STATUS_PATHS and self.status is not None:
            endpoint, allowed = "status_" + path.rsplit("/", 1)[1], ("GET", "HEAD")
        else:
            body = json_body({"error": f"no such endpoint {req.path}"})
            return "unknown", parts, ("unknown", 404, body, *_J)
        if req.method not in allowed:
            body = json_body({"error": f"{req.method} not allowed"})
            extra = {"Allow": ", ".join(allowed)}
            return endpoint, parts, (endpoint, 405, body, JSON_CONTENT_TYPE, extra)
        return endpoint, parts, None

    async def route(self, req: Request, endpoint: str, parts: list[str]) -> Response:
        """The answer of a resolved endpoint; raises HttpError for a refused request."""
        if endpoint == "index" and self.status is not None and _wants_html(req):
            return self._page_response()  # the page holds no data: no token needed
        if endpoint not in ("healthz", "readyz"):
            self._authorize(req)
        if endpoint == "index":
            return endpoint, 200, json_body({"endpoints": _INDEX}), *_J
        if endpoint.startswith("status_"):
            return endpoint, 200, await self._status_route(endpoint, req), *_J
        if endpoint == "healthz":
            return endpoint, 200, json_body(self._healthz()), *_J
        if endpoint == "readyz":
            ready = bool(self.ready_fn())
            body: dict[str, object] = {"ready": ready, "devices": self.health_fn()}
            if self.components_fn is not None:  # supervised tasks: ok | degraded | failed
                body["components"] = self.components_fn()
            return endpoint, 200 if ready else 503, json_body(body), *_J
        if endpoint == "metrics":  # OpenMetrics when the scraper asks for it (Prometheus does)
            om = "application/openmetrics-text" in req.headers.get("accept", "")
            text = self.metrics.render(process=True, openmetrics=om).encode()
            kind = OPENMETRICS_CONTENT_TYPE if om else METRICS_CONTENT_TYPE
            return endpoint, 200, text, kind, {"Vary": "Accept"}
        if endpoint == "control":
            return endpoint, 200, json_body(require_control(self.control).status()), *_J
        has_token = self._token is not None
        answer = await control_write(self.control, has_token, req, parts[1], parts[2])
        return endpoint, 200, json_body(answer), *_J

    def _page_response(self) -> Response:
        if self._page is None:
            from agent.telemetry.statuspage import PageAssets

            self._page = PageAssets()
        headers = {"Content-Security-Policy": self._page.csp, "Referrer-Policy": "no-referrer"}
        return "page", 200, self._page.body, "text/html; charset=utf-8", headers

    async def _status_route(self, endpoint: str, req: Request) -> bytes:
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

    def _authorize(self, req: Request) -> None:
        if self._token is None:
            return
        scheme, _, given = req.headers.get("authorization", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self._token.encode()
        )
        if not ok:
            raise HttpError(
                401, "bearer token required", {"WWW-Authenticate": 'Bearer realm="edgeloop"'}
            )

    def _healthz(self) -> dict[str, Any]:
        return {"status": "alive", "uptime_s": round(time.monotonic() - self._started, 3)}

    def restart_clock(self) -> None:
        """/healthz uptime counts from the server's start."""
        self._started = time.monotonic()


def _wants_html(req: Request) -> bool:
    """A browser asks for text/html; API clients (curl, scripts) keep the JSON index."""
    return "text/html" in req.headers.get("accept", "")
