"""Opening an OPC UA session: the client, channel security and the login.

Kept apart from the driver's reads and writes (`drivers/opcua.py`) because it is the part
that decides whom to trust: the server certificate must be pinned or in `trust_dir`
(`drivers.opcua_security`), and the password comes from the environment or a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies
from asyncua.crypto.uacrypto import CertProperties
from asyncua.ua.status_codes import StatusCodes

from drivers import opcua_codec as codec
from drivers import opcua_security as sec
from drivers.base import ConnectError
from drivers.opcua_config import OpcUaDevice

CLIENT_NAME = "edgeloop gateway"
DEFAULT_CLIENT_URI = "urn:edgeloop:gateway"
# A PLC has few session slots: if the gateway dies, let the server free ours soon.
SESSION_TIMEOUT_MS = 60_000
AUTH_FAILED = (
    StatusCodes.BadUserAccessDenied,
    StatusCodes.BadIdentityTokenRejected,
    StatusCodes.BadIdentityTokenInvalid,
)


def new_client(cfg: OpcUaDevice) -> Client:
    """A fresh client for one connect (re-using one after a loss can hang)."""
    timeout = cfg.timeout_s
    client = Client(cfg.endpoint, timeout=timeout, watchdog_intervall=min(1.0, timeout))
    client.name = client.description = CLIENT_NAME
    client.application_uri = DEFAULT_CLIENT_URI
    client.session_timeout = SESSION_TIMEOUT_MS
    return client


def abort(client: Client) -> None:
    """Synchronous teardown of a client whose connect failed or was cancelled."""
    client.connection_lost_callback = None
    for attr in ("_supervisor_task", "_stale_watchdog_task", "_renew_channel_task"):
        task = getattr(client, attr, None)  # asyncua 2.1 internals; absent ones are skipped
        if isinstance(task, asyncio.Task) and not task.done():
            task.cancel()
    with contextlib.suppress(Exception):
        client.disconnect_socket()


def status_of(exc: BaseException) -> str | None:
    """The StatusCode name an asyncua error carries, if any."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return codec.status_name(code)
    return None


def code_of(exc: BaseException) -> int | None:
    """The StatusCode an asyncua error carries, if any."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def connect_error(exc: BaseException, cfg: OpcUaDevice) -> ConnectError:
    """The `ConnectError` a failed connect raises: refused login, no answer, unreachable."""
    code = code_of(exc)
    status = status_of(exc)
    if code in AUTH_FAILED:
        user = cfg.username
        who = f"user {user!r}" if user else "anonymous login"
        return ConnectError(
            f"server refused {who}: wrong user name or password, or the user is not "
            f"allowed on {cfg.endpoint}",
            device=cfg.name,
            status=status,
        )
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return ConnectError(f"no answer from {cfg.endpoint}", device=cfg.name)
    if isinstance(exc, OSError):
        return ConnectError(f"cannot reach {cfg.endpoint}: {exc}", device=cfg.name)
    return ConnectError(f"connect to {cfg.endpoint} failed: {exc}", device=cfg.name, status=status)


async def setup_security(client: Client, cfg: OpcUaDevice) -> None:
    """Secure the channel when a policy is set: pinned or trusted server certificate only,
    checked against the endpoint list before any secure channel is opened."""
    policy = cfg.security_policy
    if policy == "None":
        return
    mode_name = cfg.security_mode
    try:
        policy_cls = getattr(security_policies, f"SecurityPolicy{policy}")
        mode = getattr(ua.MessageSecurityMode, mode_name)
    except AttributeError as exc:
        raise ConnectError(f"unsupported security {policy}/{mode_name}", device=cfg.name) from exc
    if mode == ua.MessageSecurityMode.None_:
        raise ConnectError(
            f"security_policy {policy} needs security_mode Sign or SignAndEncrypt",
            device=cfg.name,
        )
    if not (cfg.client_certificate and cfg.client_private_key):
        raise ConnectError(
            "client_certificate and client_private_key are required", device=cfg.name
        )
    pinned = cfg.server_certificate
    trust_dir = cfg.trust_dir
    if not (pinned or trust_dir):
        raise ConnectError(
            "security is on but neither server_certificate nor trust_dir is set: "
            "an unknown server certificate is never trusted",
            device=cfg.name,
        )
    try:
        ident = sec.load_client_identity(cfg.client_certificate, cfg.client_private_key)
    except (OSError, ValueError) as exc:
        raise ConnectError(
            f"cannot load the client certificate/key: {exc}", device=cfg.name
        ) from exc
    if ident.application_uri:
        client.application_uri = ident.application_uri

    # The endpoint list is public (GetEndpoints needs no security); use it only to learn
    # which certificate the server will present, then decide before any secure channel.
    try:
        endpoints = await client.connect_and_get_server_endpoints()
    except Exception as exc:
        raise connect_error(exc, cfg) from exc
    offered = [
        e for e in endpoints if e.SecurityPolicyUri == policy_cls.URI and e.SecurityMode == mode
    ]
    if not offered:
        have = sorted(
            {f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}" for e in endpoints}
        )
        raise ConnectError(
            f"server offers no {policy}/{mode_name} endpoint (it offers: {', '.join(have)})",
            device=cfg.name,
        )
    presented = offered[0].ServerCertificate or b""
    try:
        if not presented:
            raise sec.CertificateRefused("server endpoint carries no certificate")
        approved = (
            sec.check_pinned(presented, pinned)
            if pinned
            else sec.check_trusted(presented, trust_dir or "")  # set: checked above
        )
    except (sec.CertificateRefused, OSError, ValueError) as exc:
        raise ConnectError(str(exc), device=cfg.name, status="BadCertificateUntrusted") from exc

    async def validate(cert: Any, _app: Any) -> None:
        # CreateSession's certificate must be the approved one (asyncua checks it too).
        if sec.der(cert) != approved:
            raise ServiceError(StatusCodes.BadCertificateUntrusted)

    client.certificate_validator = validate
    await client.set_security(
        policy_cls,
        CertProperties(ident.cert_der, extension="der"),
        CertProperties(ident.key_bytes, extension="pem" if ident.key_is_pem else "der"),
        server_certificate=CertProperties(approved, extension="der"),
        mode=mode,
    )


def setup_user(client: Client, cfg: OpcUaDevice) -> None:
    """Log in as `username` with the password from the environment or a file."""
    user = cfg.username
    if not user:
        return
    password = read_password(cfg)
    client.set_user(user)
    if password is not None:
        client.set_password(password)


def read_password(cfg: OpcUaDevice) -> str | None:
    """The login password, read when connecting (never kept in the config)."""
    env = cfg.password_env
    path = cfg.password_file
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConnectError(
                f"password_env: environment variable {env} is not set", device=cfg.name
            )
        return value
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConnectError(f"password_file {path}: {exc.strerror}", device=cfg.name) from exc
    return None
