"""The `http:` YAML section: where the telemetry endpoints listen and who may use them."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from drivers.configbase import EnvName, SecretError, StrictModel, secret_from


class HttpConfig(StrictModel):
    """Settings of the telemetry HTTP server; every default lives here.

    Loopback by default: the gateway's metrics and control are for the box itself (a local
    Prometheus agent, an SSH tunnel).  Binding elsewhere is an explicit decision, and the
    control endpoints that change setpoints or modes refuse to work without a bearer token.
    The token never sits in YAML: it comes from an environment variable or a file (systemd
    ``LoadCredential=`` puts one in ``$CREDENTIALS_DIRECTORY``).
    """

    enabled: bool = Field(True, description="Serve /metrics, /healthz, /readyz and /control.")
    bind: str = Field(
        "127.0.0.1", description="IP address to listen on; loopback keeps it on the box."
    )
    port: int = Field(
        9105, ge=0, le=65535, description="TCP port to listen on; 0 lets the OS pick."
    )  # 0 = let the OS pick (tests)
    bearer_token_env: EnvName | None = Field(
        None, description="Name of the environment variable holding the bearer token."
    )  # the variable's name, never the token
    bearer_token_file: Path | None = Field(
        None, description="File holding the bearer token; $VARS expand (${CREDENTIALS_DIRECTORY})."
    )
    request_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Seconds a client has to send one request's headers and body.",
    )  # headers+body of one request, idle
    max_header_bytes: int = Field(
        8192, ge=1024, le=65536, description="Largest request header block in bytes."
    )
    max_body_bytes: int = Field(
        4096, ge=64, le=1_048_576, description="Largest request body in bytes."
    )
    max_connections: int = Field(
        16, ge=1, le=1024, description="Open connections of the general pool (every route)."
    )  # the general pool, every route
    # One source IP may hold at most this many of the general pool, so a few idle or slow
    # clients cannot fill it (on loopback every local client shares 127.0.0.1).
    max_connections_per_client: int = Field(
        4, ge=1, le=1024, description="Connections of the general pool one source IP may hold."
    )
    # Beyond the general pool: connections that may only ask for /healthz, /readyz or
    # /metrics, so probes and Prometheus get through while the pool is full; 0 = none.
    reserved_probe_connections: int = Field(
        4,
        ge=0,
        le=64,
        description="Extra connections only for /healthz, /readyz and /metrics; 0 = none.",
    )
    reserved_request_timeout_s: float = Field(
        2.0, gt=0, le=30, description="Seconds a request on a reserved probe connection may take."
    )  # request on a reserved slot
    # While connections are being turned away, keep-alive connections idle this long close.
    idle_timeout_under_pressure_s: float = Field(
        1.0,
        gt=0,
        le=300,
        description="Idle keep-alive seconds before closing while connections are refused.",
    )

    @field_validator("bind")
    @classmethod
    def _ip_literal(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(
                f"bind must be an IP address such as 127.0.0.1 or ::1, not {v!r}"
            ) from None
        return v

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.bind).is_loopback

    @model_validator(mode="after")
    def _one_token_source(self) -> HttpConfig:
        if self.bearer_token_env and self.bearer_token_file:
            raise ValueError("http: set bearer_token_env or bearer_token_file, not both")
        return self

    def resolve_token(self) -> str | None:
        """The configured bearer token, or None; raises `SecretError` (a ValueError) when it is
        configured but cannot be read, so a missing secret fails start-up (and `check`, via
        `check_files`) instead of opening the endpoints.  Never shows the token or its path."""
        return secret_from(
            ("http",),
            "bearer_token",
            env=self.bearer_token_env,
            file=self.bearer_token_file,
            expand=True,
            nonempty=True,
        )


def check_files(cfg: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """`agent.config` hook: the token start-up reads (the server is built even when
    disabled, so always), read the same way."""
    try:
        cfg.http.resolve_token()
    except SecretError as exc:
        return [(exc.path, exc.detail)]
    return []
