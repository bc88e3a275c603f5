"""The telemetry HTTP server, driven by real HTTP clients over loopback.

Clients are urllib (a real HTTP/1.1 client, run in a thread) and raw asyncio streams for the
requests no well-behaved client sends.  The control object is a small in-test class that
implements the `Control` protocol: the real `ControlRunner` lives in another component and
is exercised by its own and the system tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.metrics import Metrics
from agent.telemetry.http import METRICS_CONTENT_TYPE, TelemetryServer
from agent.telemetry.settings import HttpConfig

TOKEN = "s3cret-token-for-tests"


class LoopControl:
    """Two loops with modes and setpoints; refuses what a real runner would refuse."""

    def __init__(self) -> None:
        self.loops: dict[str, dict[str, Any]] = {
            "tank_temperature": {"mode": "shadow", "setpoint": 55.0},
            "pump_pressure": {"mode": "off", "setpoint": 3.0},
        }

    def set_setpoint(self, loop: str, value: float) -> None:
        if value > 90:
            raise ValueError(f"setpoint {value} above the loop's limit 90")
        self.loops[loop]["setpoint"] = value  # KeyError for an unknown loop

    async def set_mode(self, loop: str, mode: str) -> None:  # async on purpose
        await asyncio.sleep(0)
        if mode not in ("off", "manual", "shadow", "auto"):
            raise ValueError(f"unknown mode {mode!r}")
        self.loops[loop]["mode"] = mode

    def status(self) -> dict[str, Any]:
        return {k: dict(v) for k, v in self.loops.items()}


class Agent:
    """The parts of a running agent the server reads."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.ready = False
        self.devices: dict[str, Any] = {
            "heater_plc": {"up": True, "last_error": None, "latency_s": float("nan")},
            "pump_skid": {"up": False, "last_error": "connection refused"},
        }
        self.control = LoopControl()

    def health(self) -> dict[str, Any]:
        return self.devices


async def _start(agent: Agent, **cfg: Any) -> TelemetryServer:
    server = TelemetryServer(
        HttpConfig(port=0, **cfg),
        agent.metrics,
        agent.health,
        lambda: agent.ready,
        control=agent.control,
    )
    await server.start()
    return server


@pytest.fixture
async def agent() -> Agent:
    return Agent()


@pytest.fixture
async def server(agent: Agent) -> AsyncIterator[TelemetryServer]:
    srv = await _start(agent)
    yield srv
    await srv.stop()


@pytest.fixture
async def secured(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TelemetryServer]:
    monkeypatch.setenv("EDGELOOP_TEST_TOKEN", TOKEN)
    srv = await _start(agent, bearer_token_env="EDGELOOP_TEST_TOKEN", request_timeout_s=0.5)
    yield srv
    await srv.stop()


def _fetch(
    port: int,
    path: str,
    *,
    method: str = "GET",
    body: Any = None,
    token: str | None = None,
    content_type: str = "application/json",
) -> tuple[int, dict[str, str], bytes]:
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", content_type)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


async def fetch(port: int, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(_fetch, port, path, **kw)


async def raw(port: int, data: bytes, *, wait_s: float = 3.0) -> bytes:
    """Send bytes as they are and read until the server closes (or `wait_s` passes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(wait_s):
            return await reader.read()
    finally:
        writer.close()


def _status(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1])


# --- the endpoints ---------------------------------------------------------------------------


async def test_metrics_in_prometheus_text_format(server: TelemetryServer, agent: Agent) -> None:
    agent.metrics.inc("edgeloop_polls_total", 3, device="heater_plc", group="fast")
    agent.metrics.set("edgeloop_device_up", 1, device="heater_plc")
    code, headers, body = await fetch(server.port, "/metrics")
    assert code == 200
    assert headers["Content-Type"] == METRICS_CONTENT_TYPE
    text = body.decode()
    assert "# TYPE edgeloop_polls_total counter" in text
    assert 'edgeloop_polls_total{device="heater_plc",group="fast"} 3' in text
    assert 'edgeloop_device_up{device="heater_plc"} 1' in text
    # the process series an RSS alert needs, under prometheus_client's standard names
    rss = next(ln for ln in text.splitlines() if ln.startswith("process_resident_memory_bytes "))
    assert 10e6 < float(rss.split()[1]) < 2e9
    assert "# TYPE process_cpu_seconds_total counter" in text and "process_open_fds " in text


async def test_healthz_is_alive_json(server: TelemetryServer) -> None:
    code, headers, body = await fetch(server.port, "/healthz")
    assert code == 200
    assert headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["status"] == "alive" and doc["uptime_s"] >= 0


async def test_readyz_follows_ready_fn_and_reports_devices(
    server: TelemetryServer, agent: Agent
) -> None:
    code, _, body = await fetch(server.port, "/readyz")
    assert code == 503
    doc = json.loads(body)  # strict JSON: the NaN latency must come out as null
    assert doc["ready"] is False
    assert doc["devices"]["pump_skid"] == {"up": False, "last_error": "connection refused"}
    assert doc["devices"]["heater_plc"]["latency_s"] is None
    agent.ready = True
    code, _, body = await fetch(server.port, "/readyz")
    assert code == 200 and json.loads(body)["ready"] is True


async def test_requests_are_counted_by_endpoint_and_code(
    server: TelemetryServer, agent: Agent
) -> None:
    await fetch(server.port, "/healthz")
    await fetch(server.port, "/readyz")
    await fetch(server.port, "/nope")
    m = agent.metrics
    assert m.get("edgeloop_http_requests_total", endpoint="healthz", code=200) == 1
    assert m.get("edgeloop_http_requests_total", endpoint="readyz", code=503) == 1
    assert m.get("edgeloop_http_requests_total", endpoint="unknown", code=404) == 1


async def test_wrong_method_is_405_with_allow(server: TelemetryServer) -> None:
    code, headers, _ = await fetch(server.port, "/metrics", method="POST", body={})
    assert code == 405 and headers["Allow"] == "GET, HEAD"
    code, headers, _ = await fetch(server.port, "/control/tank_temperature/mode")
    assert code == 405 and headers["Allow"] == "POST"


async def test_head_sends_headers_only(server: TelemetryServer) -> None:
    resp = await raw(server.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = resp.partition(b"\r\n\r\n")
    assert _status(resp) == 200 and b"Content-Length:" in head and body == b""


async def test_keep_alive_serves_several_requests_on_one_connection(
    server: TelemetryServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for _ in range(3):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert b"Connection: keep-alive" in head
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            json.loads(await reader.readexactly(length))
    finally:
        writer.close()


async def test_failing_health_fn_is_a_500_and_the_server_survives(
    server: TelemetryServer, agent: Agent
) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("acquirer gone")

    server.health_fn = broken
    code, _, body = await fetch(server.port, "/readyz")
    assert code == 500 and "error" in json.loads(body)
    code, _, _ = await fetch(server.port, "/healthz")
    assert code == 200


# --- auth --------------------------------------------------------------------------------


async def test_token_protects_metrics_and_control_but_not_probes(
    secured: TelemetryServer,
) -> None:
    port = secured.port
    code, headers, _ = await fetch(port, "/metrics")
    assert code == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert (await fetch(port, "/metrics", token="wrong"))[0] == 401
    assert (await fetch(port, "/metrics", token=TOKEN + "x"))[0] == 401
    assert (await fetch(port, "/metrics", token=TOKEN))[0] == 200
    assert (await fetch(port, "/control"))[0] == 401
    assert (await fetch(port, "/healthz"))[0] == 200
    assert (await fetch(port, "/readyz"))[0] == 503


async def test_basic_auth_scheme_is_not_a_bearer_token(secured: TelemetryServer) -> None:
    resp = await raw(
        secured.port,
        b"GET /metrics HTTP/1.1\r\nAuthorization: Basic " + TOKEN.encode() + b"\r\n\r\n",
    )
    assert _status(resp) == 401


def test_configured_but_missing_token_fails_at_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EDGELOOP_NO_SUCH_TOKEN", raising=False)
    with pytest.raises(ValueError, match="EDGELOOP_NO_SUCH_TOKEN"):
        TelemetryServer(
            HttpConfig(bearer_token_env="EDGELOOP_NO_SUCH_TOKEN"), Metrics(), dict, bool
        )


# --- control -----------------------------------------------------------------------------


async def test_control_status(secured: TelemetryServer, agent: Agent) -> None:
    code, _, body = await fetch(secured.port, "/control", token=TOKEN)
    assert code == 200 and json.loads(body) == agent.control.status()


async def test_setpoint_and_mode_over_http(secured: TelemetryServer, agent: Agent) -> None:
    port = secured.port
    code, _, body = await fetch(
        port, "/control/tank_temperature/setpoint", method="POST", body={"value": 60.5},
        token=TOKEN,
    )  # fmt: skip
    assert code == 200, body
    assert json.loads(body)["status"]["setpoint"] == 60.5
    assert agent.control.loops["tank_temperature"]["setpoint"] == 60.5
    code, _, body = await fetch(
        port, "/control/tank_temperature/mode", method="POST", body={"mode": "auto"}, token=TOKEN
    )
    assert code == 200, body
    assert agent.control.loops["tank_temperature"]["mode"] == "auto"


@pytest.mark.parametrize(
    ("path", "body", "ctype", "expected"),
    [
        ("/control/tank_temperature/setpoint", b"{not json", "application/json", 400),
        ("/control/tank_temperature/setpoint", b"[1, 2]", "application/json", 400),
        ("/control/tank_temperature/setpoint", b'{"value": 60}', "text/plain", 415),
        ("/control/tank_temperature/setpoint", b'{"value": "60"}', "application/json", 422),
        ("/control/tank_temperature/setpoint", b'{"value": true}', "application/json", 422),
        ("/control/tank_temperature/setpoint", b'{"value": NaN}', "application/json", 422),
        ("/control/tank_temperature/setpoint", b'{"value": 95}', "application/json", 422),
        ("/control/tank_temperature/mode", b'{"mode": "turbo"}', "application/json", 422),
        ("/control/tank_temperature/mode", b'{"mode": 3}', "application/json", 422),
        ("/control/no_such_loop/setpoint", b'{"value": 60}', "application/json", 404),
    ],
)
async def test_bad_control_requests_change_nothing(
    secured: TelemetryServer, agent: Agent, path: str, body: bytes, ctype: str, expected: int
) -> None:
    before = agent.control.status()
    code, _, resp = await fetch(
        secured.port, path, method="POST", body=body, token=TOKEN, content_type=ctype
    )
    assert code == expected, resp
    assert "error" in json.loads(resp)
    assert agent.control.status() == before


async def test_control_writes_need_a_configured_token(
    server: TelemetryServer, agent: Agent
) -> None:
    code, _, body = await fetch(
        server.port, "/control/tank_temperature/setpoint", method="POST", body={"value": 50}
    )
    assert code == 403 and b"bearer token" in body
    assert agent.control.loops["tank_temperature"]["setpoint"] == 55.0
    assert (await fetch(server.port, "/control"))[0] == 200  # reading is fine


async def test_no_control_object_is_404(agent: Agent) -> None:
    srv = TelemetryServer(HttpConfig(port=0), agent.metrics, agent.health, lambda: True)
    async with srv:
        assert (await fetch(srv.port, "/control"))[0] == 404


# --- hostile and broken clients -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400),  # TLS hello
        (b"GET\r\n\r\n", 400),
        (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
        (b"GET /healthz SPDY/3\r\n\r\n", 400),
        (b"GET healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nno-colon-here\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\n folded: x\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nX-Name: \xff\xfe\r\n\r\n", 400),
        (b"POST /control/a/mode HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /control/a/mode HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST /control/a/mode HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"POST /control/a/mode HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    ],
)
async def test_bad_requests_get_4xx_and_close(
    server: TelemetryServer, data: bytes, expected: int
) -> None:
    resp = await raw(server.port, data)
    assert _status(resp) == expected
    assert b"Connection: close" in resp
    assert (await fetch(server.port, "/healthz"))[0] == 200


async def test_oversized_header_is_431(server: TelemetryServer) -> None:
    big = b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n"
    resp = await raw(server.port, big)
    assert _status(resp) == 431


async def test_slowloris_gets_408_within_the_timeout(secured: TelemetryServer) -> None:
    # request_timeout_s=0.5: half a request line, then silence
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    resp = await raw(secured.port, b"GET /healthz HTTP/1.1\r\nHost: slo", wait_s=3)
    assert _status(resp) == 408
    assert loop.time() - t0 < 2.0


async def test_idle_connection_is_closed_silently(secured: TelemetryServer) -> None:
    resp = await raw(secured.port, b"", wait_s=3)
    assert resp == b""


async def test_truncated_body_is_400(server: TelemetryServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /control/a/mode HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
    writer.write_eof()
    resp = await asyncio.wait_for(reader.read(), 3)
    writer.close()
    assert _status(resp) == 400


async def test_connection_limit(agent: Agent) -> None:
    srv = await _start(agent, max_connections=2, reserved_probe_connections=0, request_timeout_s=5)
    try:
        held = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(2)]
        resp = await raw(srv.port, b"")  # the server answers the third at once and closes
        assert _status(resp) == 503 and b"Retry-After: 1\r\n" in resp
        for _, w in held:
            w.close()
        await asyncio.sleep(0.05)
        assert (await fetch(srv.port, "/healthz"))[0] == 200
    finally:
        await srv.stop()


async def test_stop_closes_held_connections_and_frees_the_port(agent: Agent) -> None:
    srv = await _start(agent)
    port = srv.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # half a request, held open
    await asyncio.sleep(0.05)
    await asyncio.wait_for(srv.stop(), 3)
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    again = TelemetryServer(HttpConfig(port=port), agent.metrics, agent.health, bool)
    async with again:  # the port can be bound again at once (reload, restart)
        assert (await fetch(port, "/healthz"))[0] == 200


async def test_disabled_server_does_not_listen(agent: Agent) -> None:
    srv = TelemetryServer(HttpConfig(enabled=False), agent.metrics, agent.health, bool)
    async with srv:
        with pytest.raises(RuntimeError):
            _ = srv.port


# --- capacity: per-client limits, reserved probe slots, shedding idle connections ------------
#
# Several loopback addresses stand for several clients: Linux routes all of 127.0.0.0/8 to
# lo, so a socket bound to 127.0.0.2 reaches a server on 127.0.0.1 from another source IP.

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open(port: int, source: str = "127.0.0.1") -> Conn:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _idle(port: int, n: int, source: str = "127.0.0.1") -> list[Conn]:
    """`n` connections that never send a byte."""
    return [await _open(port, source) for _ in range(n)]


async def _request(conn: Conn, path: str) -> tuple[int, bytes, bytes]:
    """One GET on an open connection: (status, response head, body)."""
    reader, writer = conn
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    body = await asyncio.wait_for(reader.readexactly(length), 5)
    return _status(head), head, body


async def _held(port: int, n: int, source: str) -> list[Conn]:
    """`n` connections from `source` that each got a keep-alive answer, then sit idle."""
    conns = []
    for _ in range(n):
        conn = await _open(port, source)
        code, head, _ = await _request(conn, "/healthz")
        assert code == 200 and b"Connection: keep-alive" in head, head
        conns.append(conn)
    return conns


def _close_all(conns: list[Conn]) -> None:
    for _, w in conns:
        w.close()


async def test_sixteen_idle_connections_do_not_lock_out_probes_and_metrics(
    server: TelemetryServer, agent: Agent
) -> None:
    """Issue 11 item 12, as reported: defaults, 16 idle sockets from one client."""
    agent.ready = True
    held = await _idle(server.port, 16)
    try:
        code, _, body = await fetch(server.port, "/metrics")
        assert code == 200, body
        assert (await fetch(server.port, "/readyz"))[0] == 200
        assert (await fetch(server.port, "/healthz"))[0] == 200
    finally:
        _close_all(held)


async def test_sixteen_idle_connections_from_one_client_do_not_lock_out_another(
    server: TelemetryServer,
) -> None:
    held = await _idle(server.port, 16, source="127.0.0.2")
    try:
        code, _, body = await fetch(server.port, "/control")  # from 127.0.0.1
        assert code == 200, body
        assert (await fetch(server.port, "/metrics"))[0] == 200
    finally:
        _close_all(held)


async def test_one_client_cannot_exceed_its_limit_and_a_second_client_is_served(
    agent: Agent,
) -> None:
    # long idle timeouts: nothing is shed while the test runs, however slow the machine
    srv = await _start(
        agent, max_connections_per_client=2, request_timeout_s=60, idle_timeout_under_pressure_s=60
    )
    try:
        held = await _held(srv.port, 2, "127.0.0.2")
        extra = await _open(srv.port, "127.0.0.2")
        code, head, body = await _request(extra, "/control")  # not a probe: refused
        assert code == 503, head
        assert b"Retry-After: " in head and b"Connection: close" in head
        assert "limit" in json.loads(body)["error"]
        assert await asyncio.wait_for(extra[0].read(), 5) == b""  # and closed
        extra[1].close()
        # the same client's probe still goes through, on a reserved slot, then closes
        probe = await _open(srv.port, "127.0.0.2")
        code, head, _ = await _request(probe, "/healthz")
        assert code == 200 and b"Connection: close" in head
        probe[1].close()
        # a second client is served as usual, control included
        assert (await fetch(srv.port, "/control"))[0] == 200
        # and the first client's connections were not disturbed
        for conn in held:
            code, head, _ = await _request(conn, "/control")
            assert code == 200 and b"Connection: keep-alive" in head
        m = agent.metrics
        assert m.get("edgeloop_http_requests_total", endpoint="client_limit", code=503) == 1
        _close_all(held)
    finally:
        await srv.stop()


async def test_full_pool_keeps_reserved_slots_for_probes_and_metrics(agent: Agent) -> None:
    agent.ready = True
    srv = await _start(
        agent,
        max_connections=2,
        max_connections_per_client=1,
        reserved_probe_connections=1,
        request_timeout_s=60,
        idle_timeout_under_pressure_s=60,
    )
    try:
        held = await _held(srv.port, 1, "127.0.0.2") + await _held(srv.port, 1, "127.0.0.3")
        code, headers, body = await fetch(srv.port, "/control")  # pool full: refused
        assert code == 503 and "Retry-After" in headers, body
        for path in ("/metrics", "/readyz", "/healthz"):
            code, headers, body = await fetch(srv.port, path)
            assert code == 200, (path, body)
            assert headers["Connection"] == "close"
        m = agent.metrics
        assert m.get("edgeloop_http_requests_total", endpoint="overload", code=503) == 1
        assert m.get("edgeloop_http_requests_total", endpoint="metrics", code=200) == 1
        _close_all(held)
    finally:
        await srv.stop()


async def test_silent_connections_cannot_hold_the_reserved_slots(agent: Agent) -> None:
    srv = await _start(
        agent,
        max_connections=1,
        reserved_probe_connections=2,
        request_timeout_s=60,
        idle_timeout_under_pressure_s=60,
    )
    try:
        held = await _held(srv.port, 1, "127.0.0.2")
        silent = await _idle(srv.port, 10, source="127.0.0.3")  # more than the reserve
        assert (await fetch(srv.port, "/metrics"))[0] == 200
        # every silent one beyond the reserve was told 503 and closed
        answers = [await asyncio.wait_for(r.read(), 5) for r, _ in silent[:8]]
        assert all(_status(a) == 503 and b"Retry-After: " in a for a in answers)
        _close_all(held + silent)
    finally:
        await srv.stop()


async def test_beyond_the_reserve_the_answer_is_an_immediate_503(agent: Agent) -> None:
    srv = await _start(
        agent, max_connections=1, reserved_probe_connections=1, reserved_request_timeout_s=30
    )
    try:
        held = await _held(srv.port, 1, "127.0.0.2")
        busy = await _open(srv.port, "127.0.0.3")
        busy[1].write(b"GET /metr")  # half a request: it has spoken, so it keeps its slot
        await busy[1].drain()
        await asyncio.sleep(0.2)  # let the server read those bytes (not a timing assertion)
        resp = await raw(srv.port, b"")  # sends nothing and still gets its answer at once
        assert _status(resp) == 503 and b"Retry-After: " in resp
        busy[1].write(b"ics HTTP/1.1\r\nHost: x\r\n\r\n")
        code, _, _ = await _request_rest(busy)
        assert code == 200
        _close_all([*held, busy])
    finally:
        await srv.stop()


async def _request_rest(conn: Conn) -> tuple[int, bytes, bytes]:
    reader, _ = conn
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return _status(head), head, await asyncio.wait_for(reader.readexactly(length), 5)


async def test_idle_keep_alive_connections_are_shed_under_pressure(agent: Agent) -> None:
    # without pressure an idle connection would be kept for request_timeout_s (60 s)
    srv = await _start(
        agent, max_connections_per_client=2, request_timeout_s=60, idle_timeout_under_pressure_s=0.2
    )
    try:
        other = await _held(srv.port, 1, "127.0.0.3")
        held = await _held(srv.port, 2, "127.0.0.2")
        code, head, _ = await _request(await _open(srv.port, "127.0.0.2"), "/control")
        assert code == 503 and b"Retry-After: 1" in head
        for reader, _ in held:  # closed well before the 60 s, without a word
            assert await asyncio.wait_for(reader.read(), 20) == b""
        code, _, _ = await _request(await _open(srv.port, "127.0.0.2"), "/control")
        assert code == 200  # the retry gets in
        code, head, _ = await _request(other[0], "/control")  # another client was left alone
        assert code == 200 and b"Connection: keep-alive" in head
        _close_all(held + other)
    finally:
        await srv.stop()


# --- robustness: handler failures ------------------------------------------------------------


class BuggyServer(TelemetryServer):
    """The real server with a bug planted outside the routes' own error handling."""

    async def _dispatch(self, req: Any) -> Any:
        if req.path == "/boom":
            raise RuntimeError("planted handler bug")
        return await super()._dispatch(req)


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_failing_route_is_logged_once_per_episode(
    server: TelemetryServer, agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("acquirer gone")

    caplog.set_level(logging.INFO, logger="agent.telemetry.http")
    server.health_fn = broken
    for _ in range(3):  # a scrape every 15 s must not write a traceback every 15 s
        assert (await fetch(server.port, "/readyz"))[0] == 500
    assert (await fetch(server.port, "/healthz"))[0] == 200
    assert len(_errors(caplog)) == 1 and _errors(caplog)[0].exc_info
    server.health_fn = agent.health
    assert (await fetch(server.port, "/readyz"))[0] == 503  # works again (not ready yet)
    assert "works again after 3 failure(s)" in caplog.text
    server.health_fn = broken
    assert (await fetch(server.port, "/readyz"))[0] == 500
    assert len(_errors(caplog)) == 2  # a new episode is logged again


async def test_a_crashing_connection_handler_never_takes_the_server_down(
    agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    srv = BuggyServer(
        HttpConfig(port=0, max_connections=1, max_connections_per_client=1),
        agent.metrics,
        agent.health,
        lambda: agent.ready,
    )
    async with srv:
        for _ in range(5):
            resp = await raw(srv.port, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
            assert resp == b""  # the connection is closed, nothing more
        assert len(_errors(caplog)) == 1 and "planted handler bug" in caplog.text
        # the crashed connections gave their slot back: the only one is free again
        conn = await _open(srv.port)
        code, head, _ = await _request(conn, "/healthz")
        assert code == 200 and b"Connection: keep-alive" in head
        conn[1].close()
