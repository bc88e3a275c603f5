"""The OPC UA driver's config: tag, poll group and device models, the files a secure
session needs (checked at load), and how a tag becomes a `Point`.  Registered in
`drivers/registry.py`; the I/O lives in `drivers/opcua.py`."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from drivers.base import Point
from drivers.config_common import DeviceBase, GroupBase, Problems, TagBase, TagType, raise_if
from drivers.configbase import (
    EnvName,
    SecretError,
    read_cert_file,
    secret_from,
)
from drivers.registry import DriverSpec

NODE_PATTERN = r"^(ns=\d+;|nsu=[^;]+;)?[isgb]=.+$"
NODE_HINT = 'must be an OPC UA NodeId such as "ns=2;s=Pump.Flow" or "i=2258"'


class OpcUaTag(TagBase):
    """One OPC UA variable, addressed by its NodeId."""

    ADDRESSED_BY: ClassVar[str] = "node"
    PATTERN_HINTS: ClassVar[dict[str, str]] = {"node": NODE_HINT}

    node: str = Field(pattern=NODE_PATTERN, description='NodeId, e.g. "ns=2;s=Pump.Flow".')
    type: TagType = Field(
        "float64",
        description="How the value is stored: numeric types in the value arrays, string as text.",
    )

    @model_validator(mode="after")
    def _check(self) -> OpcUaTag:
        out = self._common_problems()
        if self.type == "bit":
            out.append((("type",), "bit is Modbus only; use bool"))
        raise_if(out)
        return self


# --- poll groups -------------------------------------------------------------------------


class OpcUaPollGroup(GroupBase):
    """Tags read together at one rate, by batched Read (poll) or a subscription."""

    mode: Literal["poll", "subscribe"] = Field(
        "poll", description="poll: batched Read each interval; subscribe: monitored items."
    )
    sampling_interval_ms: int | None = Field(
        None, ge=0, description="Server sampling interval (subscribe); default interval_ms."
    )
    deadband_abs: float = Field(
        0.0, ge=0, description="Absolute deadband of monitored items (subscribe)."
    )
    queue_size: int = Field(
        1000, ge=1, le=1_000_000, description="Bounded notification queue (subscribe)."
    )
    tags: list[OpcUaTag] = Field(min_length=1, description="Tags read together at this interval.")

    def options(self) -> dict[str, Any]:
        """Subscription settings the driver reads per group."""
        sampling = (
            self.interval_ms if self.sampling_interval_ms is None else self.sampling_interval_ms
        )
        return {
            **super().options(),
            "sampling_interval_ms": sampling,
            "deadband_abs": self.deadband_abs,
            "queue_size": self.queue_size,
        }


# --- devices -----------------------------------------------------------------------------


SecurityPolicy = Literal["None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"]
SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]


class OpcUaDevice(DeviceBase):
    """An OPC UA server endpoint; secrets come from the environment or a file, never YAML."""

    PATTERN_HINTS: ClassVar[dict[str, str]] = {
        "endpoint": "must look like opc.tcp://host:port/path"
    }
    FILE_KEYS: ClassVar[tuple[str, ...]] = (
        "client_certificate",
        "client_private_key",
        "server_certificate",
        "trust_dir",
        "password_file",
    )

    driver: Literal["opcua"] = Field(description="opcua: an OPC UA server (opc.tcp).")
    endpoint: str = Field(
        pattern=r"^opc\.tcp://\S+$", description="opc.tcp://host:port/path of the server."
    )
    security_policy: SecurityPolicy = Field(
        "None",
        description="Message security policy; other than None needs the client certificate, "
        "key and a pinned or trusted server certificate.",
    )
    security_mode: SecurityMode = Field(
        "None", description="None | Sign | SignAndEncrypt; not None when a policy is set."
    )
    client_certificate: str | None = Field(
        None, description="This client's certificate file (DER or PEM)."
    )
    client_private_key: str | None = Field(
        None, description="Unencrypted private key file (PEM) of client_certificate."
    )
    server_certificate: str | None = Field(
        None, description="Pinned server certificate: only this one is accepted."
    )
    trust_dir: str | None = Field(
        None, description="Directory of trusted server certificates (instead of pinning one)."
    )
    username: str | None = Field(
        None, min_length=1, description="User name to log in; anonymous when omitted."
    )
    password_env: EnvName | None = Field(
        None, description="Name of the environment variable holding the password."
    )
    password_file: str | None = Field(
        None, description="File holding the login password (trailing newline dropped)."
    )
    allow_plaintext_password: bool = Field(
        False,
        description="Allow a password with security_policy None, where it crosses the network "
        "in clear text (a closed test network); off by default.",
    )
    timeout_s: float = Field(
        5.0,
        gt=0,
        le=120,
        description="Request timeout; omitted: 5 s, or 80 % of the fastest poll group's "
        "interval when that is shorter than 5 s.",
    )
    max_nodes_per_read: int = Field(
        0, ge=0, description="Nodes per Read request; 0 asks the server's MaxNodesPerRead."
    )
    poll_groups: list[OpcUaPollGroup] = Field(
        min_length=1, description="Groups of tags, each polled or subscribed at its own interval."
    )

    @field_validator("security_policy", "security_mode", mode="before")
    @classmethod
    def _null_is_none(cls, v: Any) -> Any:
        return "None" if v is None else v

    @property
    def secure(self) -> bool:
        return self.security_policy != "None"

    @model_validator(mode="after")
    def _check(self) -> OpcUaDevice:
        out = self._device_problems()
        if self.secure and self.security_mode == "None":
            out.append(
                (
                    ("security_mode",),
                    f"must be Sign or SignAndEncrypt with security_policy {self.security_policy}",
                )
            )
        if not self.secure and self.security_mode != "None":
            out.append((("security_policy",), f"required with security_mode {self.security_mode}"))
        if self.secure or self.security_mode != "None":
            for key in ("client_certificate", "client_private_key"):
                if not getattr(self, key):
                    out.append(((key,), "required when security is on"))
            if not (self.server_certificate or self.trust_dir):
                out.append(
                    (
                        ("security_policy",),
                        "needs server_certificate (pinned) or trust_dir: an unknown server "
                        "certificate is never trusted",
                    )
                )
        if self.password_env and self.password_file:
            out.append((("password_file",), "give password_env or password_file, not both"))
        if (self.password_env or self.password_file) and not self.username:
            out.append((("username",), "required with password_env or password_file"))
        if not self.secure and not self.allow_plaintext_password:
            key = "password_env" if self.password_env else "password_file"
            if getattr(self, key):
                out.append(
                    (
                        (key,),
                        "security_policy None sends the password in clear text: use a "
                        "security policy, or set allow_plaintext_password: true",
                    )
                )
        nodes: dict[str, str] = {}
        for gi, g in enumerate(self.poll_groups):
            for ti, t in enumerate(g.tags):
                if t.node in nodes:
                    out.append(
                        (
                            ("poll_groups", gi, "tags", ti, "node"),
                            f"{t.node} is already tag {nodes[t.node]!r}",
                        )
                    )
                else:
                    nodes[t.node] = t.name
        raise_if(out)
        return self

    def read_password(self) -> str | None:
        """The login password (trailing newline dropped) or None, as the driver reads it;
        `SecretError` (path relative to the device) when configured but unreadable."""
        return secret_from((), "password", env=self.password_env, file=self.password_file)

    def file_problems(self) -> Problems:
        """What the driver would fail on when it connects, found now: the password, and with
        security on the client certificate and key, the pinned certificate or trust_dir."""
        out: Problems = []
        try:
            self.read_password()
        except SecretError as exc:
            out.append((exc.path, exc.detail))
        if not (self.secure or self.security_mode != "None"):
            return out
        from cryptography import x509
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization

        from drivers import opcua_security as sec

        for key in ("client_certificate", "server_certificate", "client_private_key"):
            value = getattr(self, key)
            if not value:
                continue
            try:
                data = read_cert_file((key,), value)
            except SecretError as exc:
                out.append((exc.path, exc.detail))
                continue
            pem = sec.is_pem(data)
            try:
                if key == "client_private_key":
                    load_key = (
                        serialization.load_pem_private_key
                        if pem
                        else serialization.load_der_private_key
                    )
                    load_key(data, password=None)
                else:
                    (x509.load_pem_x509_certificate if pem else x509.load_der_x509_certificate)(
                        data
                    )
            except TypeError:
                out.append(((key,), f"{value} is encrypted: the driver needs an unencrypted key"))
            except (ValueError, UnsupportedAlgorithm) as exc:
                what = "private key" if key == "client_private_key" else "certificate"
                out.append(((key,), f"{value} is not a {what} (PEM or DER): {exc}"))
        if self.trust_dir and not self.server_certificate:
            try:
                sec.trusted_certs(self.trust_dir)
            except (sec.CertificateRefused, OSError) as exc:
                msg = str(exc).removeprefix("trust_dir: ").removeprefix("trust_dir ")
                out.append((("trust_dir",), msg))
        return out

    def point(self, tag: OpcUaTag, index: int) -> Point:
        return Point(index=index, dtype=tag.type, node=tag.node, **tag.engineering())


SPEC = DriverSpec(
    name="opcua",
    device=OpcUaDevice,
    factory="drivers.opcua:create",
    label="OPC UA",
    article="an",
)
