"""The `publish:` YAML section: broker, credentials, TLS, outbox budget, encoding."""

from __future__ import annotations

import ssl
from typing import Any, Literal

from pydantic import Field, model_validator

from drivers.configbase import (
    EnvName,
    SecretError,
    StrictModel,
    read_cert_file,
    secret_from,
)

_MQTT = ("publish", "mqtt")


class TlsConfig(StrictModel):
    """TLS to the broker; the CA pins who we talk to, a client cert/key authenticates us."""

    ca_file: str | None = Field(
        None, description="PEM file of the CA(s) the broker's certificate must chain to."
    )  # None: the system trust store
    cert_file: str | None = Field(
        None, description="PEM client certificate, for brokers that authenticate by cert."
    )
    key_file: str | None = Field(
        None, description="Unencrypted PEM private key of cert_file; set both or neither."
    )
    verify_hostname: bool = Field(
        True, description="Check that the broker's certificate names `host`."
    )

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls: cert_file and key_file go together")
        return self

    def problems(self) -> list[SecretError]:
        """Every reason `ssl_context()` would fail, one per file where it can tell."""
        out: list[SecretError] = []
        for key in ("ca_file", "cert_file", "key_file"):
            value = getattr(self, key)
            if value is not None:
                try:
                    read_cert_file((*_MQTT, "tls", key), value)
                except SecretError as exc:
                    out.append(exc)
        if out:
            return out
        try:
            self.ssl_context()
        except SecretError as exc:
            out.append(exc)
        return out

    def ssl_context(self) -> ssl.SSLContext:
        """The client TLS context; `SecretError` when a file is unreadable or not PEM."""
        where = (*_MQTT, "tls")
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise SecretError(
                (*where, "ca_file"), f"cannot load the CA certificates: {exc}"
            ) from None
        if self.cert_file and self.key_file:
            try:  # an encrypted key would make OpenSSL prompt on the terminal: refuse it instead
                ctx.load_cert_chain(self.cert_file, self.key_file, password=lambda: b"")
            except (OSError, ssl.SSLError) as exc:
                raise SecretError(
                    (*where, "cert_file"),
                    f"cannot load the client certificate and key (an unencrypted PEM key "
                    f"matching the certificate): {exc}",
                ) from None
        ctx.check_hostname = self.verify_hostname
        return ctx


class MqttConfig(StrictModel):
    """Broker connection. Secrets never sit in YAML: use password_env or password_file."""

    host: str = Field("127.0.0.1", description="Broker host name or IP address.")
    port: int = Field(
        1883, ge=1, le=65535, description="Broker TCP port (1883 plain, usually 8883 with TLS)."
    )
    topic_prefix: str = Field(
        "edgeloop", description="First topic level of every JSON message: <prefix>/<site>/..."
    )
    # Store-and-forward needs the broker's PUBACK, so QoS 1 is the only supported level.
    qos: Literal[1] = Field(1, description="MQTT QoS of every message; only 1 (acknowledged).")
    client_id: str | None = Field(
        None, description="MQTT client id; omitted: edgeloop-<site>."
    )  # default: edgeloop-<site>
    keepalive_s: int = Field(
        30, ge=5, le=3600, description="MQTT keep-alive in seconds; the broker drops us after 1.5x."
    )
    username: str | None = Field(None, description="Broker user name; none: anonymous.")
    password_env: EnvName | None = Field(
        None, description="Name of the environment variable holding the broker password."
    )  # the variable's name, never the password
    password_file: str | None = Field(
        None, description="File holding the broker password (trailing newline dropped)."
    )
    tls: TlsConfig | None = Field(None, description="TLS to the broker; plain TCP when omitted.")
    connect_timeout_s: float = Field(
        10.0, gt=0, description="Seconds to wait for the broker's CONNACK."
    )
    publish_timeout_s: float = Field(
        30.0, gt=0, description="Seconds for a whole in-flight window to be acknowledged."
    )  # for a whole in-flight window to be acked
    backoff_initial_s: float = Field(
        0.5, gt=0, description="First reconnect delay in seconds; doubles on each failure."
    )
    backoff_max_s: float = Field(
        30.0, gt=0, description="Longest reconnect delay in seconds (jitter added)."
    )
    max_inflight: int = Field(
        200, ge=1, le=65535, description="Messages sent and awaiting PUBACK at once."
    )  # messages awaiting PUBACK at once

    @model_validator(mode="after")
    def _secrets(self) -> MqttConfig:
        if self.password_env and self.password_file:
            raise ValueError("mqtt: give password_env or password_file, not both")
        if (self.password_env or self.password_file) and not self.username:
            raise ValueError("mqtt: a password needs a username")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("mqtt: backoff_max_s must be >= backoff_initial_s")
        return self

    def read_password(self) -> str | None:
        """The password from `password_env` or `password_file` (trailing newline dropped), or
        None; `SecretError` when it is configured but cannot be read."""
        return secret_from(_MQTT, "password", env=self.password_env, file=self.password_file)


class OutboxConfig(StrictModel):
    """The durable outbox: every message is committed here before it is sent."""

    path: str = Field(
        "/var/lib/edgeloop/outbox.db",
        description="SQLite file of the messages not yet acknowledged by the broker.",
    )
    # Disk budget for queued messages (payload + topic + row overhead); beyond it the
    # oldest messages are dropped and counted in edgeloop_outbox_dropped_total.
    max_mb: float = Field(
        512.0,
        gt=0,
        le=1_048_576,
        description="Disk budget of queued messages in MiB; beyond it the oldest are dropped.",
    )  # at most 1 TiB
    # normal: survives kill -9 of the agent; full: also survives power loss (fsync per commit).
    synchronous: Literal["normal", "full"] = Field(
        "normal",
        description="SQLite sync: normal survives a crash, full also a power loss (slower).",
    )
    # Messages handed over by the event loop and waiting for the outbox writer thread (a
    # slow disk, another process holding the write lock); beyond it the newest are dropped,
    # counted and logged. About 3.5 kB each for a 100-tag group.
    queue_max: int = Field(
        5000,
        ge=10,
        le=1_000_000,
        description="Messages waiting for the outbox writer; beyond it the newest are dropped.",
    )


class SparkplugConfig(StrictModel):
    """Sparkplug B naming: spBv1.0/<group_id>/<type>/<edge_node_id = site>[/<device>]."""

    group_id: str = Field(
        "edgeloop", description="Sparkplug group id, the topic level after spBv1.0."
    )
    # Sparkplug 3.0 primary host application: publish only while spBv1.0/STATE/<id> says
    # online (the outbox keeps storing meanwhile); None: publish whenever connected.
    primary_host_id: str | None = Field(
        None,
        min_length=1,
        description="Host id whose STATE must be online before the node publishes; none: always.",
    )

    @model_validator(mode="after")
    def _host_id(self) -> SparkplugConfig:
        if self.primary_host_id is not None and any(c in self.primary_host_id for c in "/+#"):
            raise ValueError("primary_host_id is one topic level: no '/', '+' or '#'")
        return self


class FlatRule(StrictModel):
    """Report-by-exception settings of a poll group or a tag (unset: inherited)."""

    deadband: float | None = Field(
        None, ge=0, description="Change in engineering units a value must exceed to be sent."
    )
    max_silence_s: float | None = Field(
        None, ge=0, description="Seconds after which an unchanged value is sent again; 0: never."
    )


class FlatJsonConfig(StrictModel):
    """`encoding: json_flat`: one message per tag on {prefix}/{site}/{device}/{tag}, sent by
    exception: when the value moves by more than the deadband since the last one sent, when
    its quality or reason changes, and at least every max_silence_s if that is set."""

    # 0: every change is sent (report by exception, no deadband)
    deadband: float = Field(
        0.0, ge=0, description="Default deadband in engineering units; 0 sends every change."
    )
    max_silence_s: float = Field(
        0.0, ge=0, description="Default: resend an unchanged value after this many s; 0: never."
    )
    groups: dict[str, FlatRule] = Field(
        default_factory=dict, description="Per poll group name (of any device): its tags' rule."
    )
    tags: dict[str, FlatRule] = Field(
        default_factory=dict, description="Per tag name: its rule; wins over its group's."
    )

    def rule_for(self, tag: str, group: str) -> tuple[float, float]:
        """(deadband, max_silence_s) of a tag: the tag's own, else its group's, else the
        defaults, field by field."""
        db, silence = self.deadband, self.max_silence_s
        for rule in (self.groups.get(group), self.tags.get(tag)):
            if rule is not None:
                db = rule.deadband if rule.deadband is not None else db
                silence = rule.max_silence_s if rule.max_silence_s is not None else silence
        return db, silence


class PublishConfig(StrictModel):
    """Northbound MQTT. Every default of the publisher lives here."""

    enabled: bool = Field(True, description="Publish frames and events to the MQTT broker.")
    encoding: Literal["json", "sparkplug_b", "json_flat"] = Field(
        "json",
        description="Payload format: json (frames per group) | sparkplug_b | json_flat (per tag).",
    )
    # 0: one message per poll-group frame; > 0: frames of a group collected for this long
    # go out as one message (fewer, larger messages; frames in an open window are in memory).
    batch_window_ms: int = Field(
        0,
        ge=0,
        le=600_000,
        description="ms a poll group's frames are collected into one message; 0 = each alone.",
    )
    mqtt: MqttConfig = Field(MqttConfig(), description="Broker connection and credentials.")
    outbox: OutboxConfig = Field(
        OutboxConfig(), description="Durable store of messages until the broker acknowledges."
    )
    sparkplug: SparkplugConfig = Field(
        SparkplugConfig(), description="Sparkplug B naming, used with encoding sparkplug_b."
    )
    json_flat: FlatJsonConfig = Field(
        FlatJsonConfig(), description="Per-tag messages and their deadbands, encoding json_flat."
    )


def cross_check(cfg: Any, tag_index: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """`agent.config` hook: json_flat rules name configured tags and poll groups."""
    pub: PublishConfig = cfg.publish
    flat = pub.json_flat
    out: list[tuple[tuple[str | int, ...], str]] = []
    for tag in flat.tags:
        if tag not in tag_index:
            out.append((("publish", "json_flat", "tags", tag), f"unknown tag {tag!r}"))
    groups = {getattr(ref, "group", None) for ref in tag_index.values()}
    for group in flat.groups:
        if group not in groups:
            out.append((("publish", "json_flat", "groups", group), f"unknown poll group {group!r}"))
    return out


def check_files(cfg: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """`agent.config` hook: the password and TLS files the publisher reads at start, read the
    same way, so `check` refuses what start-up would (nothing when publishing is off)."""
    pub: PublishConfig = cfg.publish
    if not pub.enabled:
        return []
    errors: list[SecretError] = []
    try:
        pub.mqtt.read_password()
    except SecretError as exc:
        errors.append(exc)
    if pub.mqtt.tls is not None:
        errors += pub.mqtt.tls.problems()
    return [(e.path, e.detail) for e in errors]
