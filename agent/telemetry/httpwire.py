"""HTTP/1.1 framing for the telemetry server: parse one request, write one response.

Only what the routes need and nothing a client can stretch: an ASCII header of at most the
stream limit, a Content-Length body of at most `max_body_bytes` (no chunked bodies), one
query string of at most 2000 characters.  Every violation is an `HttpError` with the status
to answer; the server (agent/telemetry/http.py) then closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import math
import urllib.parse
from collections.abc import Mapping
from typing import Any

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"
REASONS = {
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

# (endpoint label for the request counter, status, body, content type, extra headers)
Response = tuple[str, int, bytes, str, dict[str, str]]


class HttpError(Exception):
    """A request answered with `code` and a JSON error body (plus `headers`)."""

    def __init__(self, code: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class Request:
    __slots__ = ("body", "headers", "method", "path", "query", "version")

    def __init__(self, method: str, path: str, version: str, headers: dict[str, str]):
        self.method = method
        self.path = path
        self.version = version
        self.headers = headers  # names lower-cased
        self.body = b""
        self.query: dict[str, str] = {}  # the status page's history routes only

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return conn == "keep-alive"
        return conn != "close"


async def read_request(reader: asyncio.StreamReader, first: bytes, max_body_bytes: int) -> Request:
    """The rest of a request whose first byte is `first`; the caller bounds the time."""
    try:
        head = first + await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        raise HttpError(400, "incomplete request") from None
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request header too large") from None
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "non-ASCII request header") from None
    lines = text[:-4].split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/"):
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if version.startswith("HTTP/"):
            raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        raise HttpError(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name or line[0] in " \t":
            raise HttpError(400, "malformed header line")
        key = name.lower()
        if key in headers and key in ("content-length", "authorization", "host"):
            raise HttpError(400, f"duplicate {name} header")
        headers[key] = value.strip()
    path, _, query = target.partition("?")
    req = Request(method.upper(), path, version, headers)
    if query:
        req.query = {k: v[-1] for k, v in urllib.parse.parse_qs(query[:2000]).items()}
    if "transfer-encoding" in headers:
        raise HttpError(501, "chunked request bodies are not supported")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise HttpError(400, "invalid Content-Length")
    length = int(length_text)
    if length > max_body_bytes:
        raise HttpError(413, f"body larger than {max_body_bytes} bytes")
    if length:
        try:
            req.body = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise HttpError(400, "body shorter than Content-Length") from None
    return req


async def write_response(
    writer: asyncio.StreamWriter,
    code: int,
    body: bytes,
    keep_alive: bool,
    timeout_s: float,
    content_type: str = JSON_CONTENT_TYPE,
    extra: Mapping[str, str] | None = None,
    *,
    head_only: bool = False,
) -> None:
    """One response; a client that will not read it within `timeout_s` raises TimeoutError."""
    headers = [
        f"HTTP/1.1 {code} {REASONS.get(code, 'Unknown')}",
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
    async with asyncio.timeout(timeout_s):
        await writer.drain()


def json_body(obj: Any) -> bytes:
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


def client_key(writer: asyncio.StreamWriter) -> str:
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


async def close_writer(writer: asyncio.StreamWriter) -> None:
    if writer.is_closing():
        return
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
