"""The root YAML model and its loader: one typed, frozen `Config`, or every problem at once.

`load_config(path)` parses the file with PyYAML keeping node positions, validates it with
pydantic, runs the cross-checks and either returns a `Config` or raises `ConfigError`, whose
`str()` is one line per problem in the form editors and humans read::

    plant.yaml:23: devices[0].poll_groups[1].tags[4].address: must be 0..65535

How problems are collected, so a user fixes a file in one round:
- field problems (types, ranges, unknown keys, missing keys) come from pydantic in one pass;
- checks that concern one tag or one device (type/table, bit, string length, min > max,
  overlapping registers, duplicate group names, timeout vs interval, security) run as model
  validators, so they are reported together with the field problems of *other* devices/tags;
- checks over the whole file (duplicate device and tag names, references from other
  sections to tags) need a structurally valid file and run after it validated.

Cross-check hook for the other sections
---------------------------------------
Each section module (`agent.kernel.settings`, `agent.control.settings`,
`agent.store.settings`, `agent.publish.settings`, `agent.telemetry.settings`) may define::

    def cross_check(cfg: Config, tag_index: dict[str, TagRef]) -> list[tuple[path, str]]

where `path` is a tuple of YAML keys and list indices (`("control", "loops", 0, "output")`)
or the same written as a string (`"control.loops[0].output"`) and the second item is the
message.  `TagRef` tells the name, device, group, driver type, unit, writable, min and max of
every configured tag.  The loader maps each path to its line and reports it like any other
problem.  Hooks are pure: no I/O, no exceptions for bad input (return the problem instead).

A section module may also define `check_files(cfg) -> list[(path, message)]`: the secrets
and certificate files its component reads at start, read now the same way (I/O), so `check`
refuses what start-up would.  OPC UA devices do the same (`OpcUaDevice.file_problems`).
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from agent.configyaml import MAX_CONFIG_BYTES, MERGE_TAG, YamlProblem, describe_size, load_yaml
from agent.control.settings import ControlConfig
from agent.kernel.settings import KernelConfig
from agent.publish.settings import PublishConfig
from agent.store.settings import StoreConfig
from agent.telemetry.settings import HttpConfig
from drivers.configbase import (
    ENV_NAME_HINT,
    EnvName,
    SecretError,
    StrictModel,
    anchor_path,
    env_secret,
    read_cert_file,
    read_secret_file,
    tagged_union_for_editors,
)
from drivers.modbus_codec import WIDTH

__all__ = [
    "DEFAULT_CONFIG",
    "MAX_CONFIG_BYTES",
    "Config",
    "ConfigError",
    "DeviceConfig",
    "Issue",
    "ModbusDevice",
    "ModbusPollGroup",
    "ModbusTag",
    "OpcUaDevice",
    "OpcUaPollGroup",
    "OpcUaTag",
    "Source",
    "TagRef",
    "default_config_path",
    "load_config",
    "parse_config",
    "read_config_bytes",
    "register_width",
    "tag_index",
]

Path_ = tuple[str | int, ...]

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$"
NAME_HINT = "must start with a letter or _ and hold only letters, digits, _ . - (max 64)"
NODE_PATTERN = r"^(ns=\d+;|nsu=[^;]+;)?[isgb]=.+$"
NODE_HINT = 'must be an OPC UA NodeId such as "ns=2;s=Pump.Flow" or "i=2258"'

TagType = Literal[
    "bool",
    "bit",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "string",
]
Table = Literal["holding", "input", "coil", "discrete"]
Order = Literal["big", "little"]
Name = Annotated[str, Field(pattern=NAME_PATTERN, description="Identifier; " + NAME_HINT)]

REGISTER_TABLES = ("holding", "input")
BIT_TABLES = ("coil", "discrete")
READ_ONLY_TABLES = ("input", "discrete")


def register_width(dtype: str, length_registers: int | None = None) -> int:
    """Registers (or bits, for bool) one value of `dtype` occupies."""
    if dtype == "bool":
        return 1
    if dtype == "string":
        return int(length_registers or 0)
    return WIDTH[dtype]


def _problems(items: Iterable[tuple[Path_, str]]) -> PydanticCustomError:
    """One pydantic error carrying several (relative path, message) problems in its ctx."""
    return PydanticCustomError("edgeloop_checks", "{problems}", {"problems": tuple(items)})


def _raise_if(problems: list[tuple[Path_, str]]) -> None:
    if problems:
        raise _problems(problems)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# --- tags --------------------------------------------------------------------------------


class _TagCommon(StrictModel):
    name: Name
    unit: str = Field("", description="Engineering unit shown to users, e.g. degC, %, bar.")
    scale: float = Field(1.0, description="engineering = raw * scale + offset.")
    offset: float = Field(0.0, description="engineering = raw * scale + offset.")
    writable: bool = Field(
        False, description="Allow writes (control outputs, setpoints); off by default."
    )
    min: float | None = Field(
        None, description="Lowest valid engineering value; writes below it are refused."
    )
    max: float | None = Field(
        None, description="Highest valid engineering value; writes above it are refused."
    )
    max_rate_per_s: float | None = Field(
        None, gt=0, description="Largest change per second a controller may command."
    )
    description: str = Field(
        "", description="Free text for people (e.g. the PLC comment); no effect on reading."
    )

    def _common_problems(self) -> list[tuple[Path_, str]]:
        out: list[tuple[Path_, str]] = []
        if self.min is not None and self.max is not None and self.min > self.max:
            out.append((("min",), f"must not exceed max ({_num(self.min)} > {_num(self.max)})"))
        if self.scale == 0 or not math.isfinite(self.scale):
            out.append((("scale",), "must be a finite number other than 0"))
        if not math.isfinite(self.offset):
            out.append((("offset",), "must be a finite number"))
        return out


class ModbusTag(_TagCommon):
    """One Modbus value: where it lives (table, address, unit) and how to decode it."""

    table: Table = Field(description="Modbus table: holding | input | coil | discrete.")
    address: int = Field(
        ge=0, le=65535, description="0-based protocol address (manual's 40001 = holding 0)."
    )
    type: TagType | None = Field(
        None,
        description="Value type; default bool for coil/discrete, required for holding/input.",
    )
    bit: int | None = Field(None, ge=0, le=15, description="Bit 0..15 (LSB=0) for type bit.")
    length_registers: int | None = Field(
        None, ge=1, le=125, description="Registers holding a string (2 characters each)."
    )
    byte_order: Order | None = Field(None, description="Overrides the device's byte_order.")
    word_order: Order | None = Field(None, description="Overrides the device's word_order.")
    unit_id: int | None = Field(None, ge=0, le=255, description="Overrides the device's unit_id.")

    @property
    def dtype(self) -> str:
        """The effective type: bool for bit tables when not given."""
        if self.type is None and self.table in BIT_TABLES:
            return "bool"
        return self.type or ""

    @property
    def width(self) -> int:
        return register_width(self.dtype, self.length_registers)

    @model_validator(mode="after")
    def _check(self) -> ModbusTag:
        out = self._common_problems()
        t = self.type
        if self.table in BIT_TABLES:
            if t not in (None, "bool"):
                out.append((("type",), f"must be bool for table {self.table} (got {t})"))
        elif t is None:
            out.append((("type",), f"required for table {self.table}"))
        elif t == "bool":
            out.append(
                (
                    ("type",),
                    f"bool needs table coil or discrete; for a bit of a {self.table} "
                    "register use type: bit with bit: 0..15",
                )
            )
        if t == "bit" and self.bit is None:
            out.append((("bit",), "required for type bit (0..15)"))
        if self.bit is not None and t != "bit":
            out.append((("bit",), "only allowed with type: bit"))
        if t == "string" and self.length_registers is None:
            out.append((("length_registers",), "required for type string"))
        if self.length_registers is not None and t != "string":
            out.append((("length_registers",), "only allowed with type: string"))
        if self.writable and self.table in READ_ONLY_TABLES:
            out.append((("writable",), f"table {self.table} is read-only"))
        dtype = self.dtype
        if dtype and (dtype != "string" or self.length_registers):
            end = self.address + self.width
            if end > 65536:
                out.append(
                    (
                        ("address",),
                        f"{dtype} at {self.address} needs {self.width} registers and runs "
                        "past 65535",
                    )
                )
        if self.table in BIT_TABLES and (self.byte_order or self.word_order):
            key = "byte_order" if self.byte_order else "word_order"
            out.append(((key,), f"has no meaning for table {self.table}"))
        _raise_if(out)
        return self


class OpcUaTag(_TagCommon):
    """One OPC UA variable, addressed by its NodeId."""

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
        _raise_if(out)
        return self


# --- poll groups -------------------------------------------------------------------------


class _GroupCommon(StrictModel):
    name: Name
    interval_ms: int = Field(
        ge=1, le=86_400_000, description="Poll period of the group in ms; all its tags share it."
    )
    stale_after_ms: int | None = Field(
        None, ge=1, description="Quality turns stale after this age; default 3 x interval_ms."
    )

    @property
    def stale_ms(self) -> int:
        return self.stale_after_ms or 3 * self.interval_ms


class ModbusPollGroup(_GroupCommon):
    """Tags read together at one rate; the planner merges them into few requests."""

    mode: Literal["poll"] = Field("poll", description="Modbus groups are always polled.")
    tags: list[ModbusTag] = Field(min_length=1, description="Tags read together at this interval.")


class OpcUaPollGroup(_GroupCommon):
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


# --- devices -----------------------------------------------------------------------------


class _DeviceCommon(StrictModel):
    name: Name
    enabled: bool = Field(True, description="false keeps the device configured but idle.")
    backoff_initial_s: float = Field(
        0.5, gt=0, le=3600, description="First reconnect delay in s; doubles up to backoff_max_s."
    )
    backoff_max_s: float = Field(
        30.0, gt=0, le=3600, description="Longest reconnect delay in s (jitter added)."
    )

    @model_validator(mode="before")
    @classmethod
    def _timeout_from_fastest_group(cls, data: Any) -> Any:
        """An omitted `timeout_s` is the driver's default, or 80 % of the fastest polled group's
        interval where the default would not fit in it: the defaults never contradict each
        other, while a timeout the user set too long for a group is still refused."""
        field = cls.model_fields.get("timeout_s")
        if not isinstance(data, dict) or "timeout_s" in data or field is None:
            return data
        groups = data.get("poll_groups")
        intervals = [
            g.get("interval_ms")
            for g in (groups if isinstance(groups, list) else [])
            if isinstance(g, dict) and g.get("mode", "poll") == "poll"
        ]
        ms = [v for v in intervals if type(v) in (int, float) and v > 0]
        if not ms:
            return data
        default = float(field.default)
        if default * 1000 <= min(ms):
            return data
        return {**data, "timeout_s": round(0.8 * min(ms) / 1000, 3)}

    def _device_problems(self) -> list[tuple[Path_, str]]:
        out: list[tuple[Path_, str]] = []
        if self.backoff_initial_s > self.backoff_max_s:
            out.append(
                (
                    ("backoff_initial_s",),
                    f"must not exceed backoff_max_s ({_num(self.backoff_initial_s)} > "
                    f"{_num(self.backoff_max_s)})",
                )
            )
        seen: dict[str, int] = {}
        groups: Sequence[Any] = self.poll_groups  # type: ignore[attr-defined]
        for i, g in enumerate(groups):
            if g.name in seen:
                out.append(
                    (
                        ("poll_groups", i, "name"),
                        f"duplicate poll group name {g.name!r} (also poll_groups[{seen[g.name]}])",
                    )
                )
            else:
                seen[g.name] = i
            timeout_s: float = self.timeout_s  # type: ignore[attr-defined]
            if g.mode == "poll" and timeout_s * 1000 > g.interval_ms:
                out.append(
                    (
                        ("poll_groups", i, "interval_ms"),
                        f"{g.interval_ms} ms is shorter than the device timeout_s "
                        f"({_num(timeout_s)} s): lower timeout_s or raise interval_ms",
                    )
                )
        return out


def _transport_needs(schema: dict[str, Any]) -> None:
    """The schema says what `_check` enforces per transport, so editors flag it too."""
    schema["if"] = {"properties": {"transport": {"const": "rtu"}}, "required": ["transport"]}
    schema["then"] = {
        "required": ["serial_port"],
        "properties": {
            "serial_port": {"type": "string"},
            "unit_id": {"minimum": 1, "maximum": 247},
        },
    }
    schema["else"] = {"required": ["host"], "properties": {"host": {"type": "string"}}}


class ModbusDevice(_DeviceCommon):
    """A Modbus TCP server or a Modbus RTU serial line (several units may share either)."""

    model_config = ConfigDict(json_schema_extra=_transport_needs)

    driver: Literal["modbus"] = Field(description="modbus: Modbus TCP or RTU.")
    transport: Literal["tcp", "rtu"] = Field(
        "tcp", description="tcp (needs host) | rtu (serial line, needs serial_port)."
    )
    host: str | None = Field(
        None, min_length=1, description="Host name or IP address of the device (tcp)."
    )
    port: int = Field(502, ge=1, le=65535, description="TCP port of the device (tcp).")
    serial_port: str | None = Field(
        None, min_length=1, description="Serial device, e.g. /dev/ttyUSB0 (rtu)."
    )
    baudrate: int = Field(19200, ge=300, le=4_000_000, description="Serial speed in bit/s (rtu).")
    parity: Literal["N", "E", "O"] = Field("N", description="Serial parity N | E | O (rtu).")
    stopbits: Literal[1, 2] = Field(1, description="Serial stop bits per character (rtu).")
    bytesize: Literal[7, 8] = Field(8, description="Serial data bits per character (rtu).")
    unit_id: int = Field(1, ge=0, le=255, description="Default unit (slave) id of the tags.")
    byte_order: Order = Field("big", description="Byte order inside a 16-bit register.")
    word_order: Order = Field("big", description="Register order of 32/64-bit values.")
    timeout_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Response timeout per request; omitted: 1 s, or 80 % of the fastest poll "
        "group's interval when that is shorter than 1 s.",
    )
    retries: int = Field(
        1, ge=0, le=10, description="Retries of a request after a timeout or garbled answer."
    )
    max_read_registers: int = Field(
        125, ge=1, le=125, description="Largest register read; some devices accept less."
    )
    max_read_bits: int = Field(
        2000, ge=1, le=2000, description="Most coils/discrete inputs in one read."
    )
    max_gap_registers: int = Field(
        8, ge=0, le=124, description="Unused registers the planner may read through to merge."
    )
    max_gap_bits: int = Field(
        32, ge=0, le=1999, description="Unused bits the planner may read through to merge."
    )
    poll_groups: list[ModbusPollGroup] = Field(
        min_length=1, description="Groups of tags, each polled at its own interval."
    )

    @model_validator(mode="after")
    def _check(self) -> ModbusDevice:
        out = self._device_problems()
        if self.transport == "tcp" and not self.host:
            out.append((("host",), "required for transport tcp"))
        if self.transport == "rtu":
            if not self.serial_port:
                out.append((("serial_port",), "required for transport rtu"))
            if not 1 <= self.unit_id <= 247:
                out.append((("unit_id",), "must be 1..247 on a serial line"))
        # Overlaps per (unit, table): words by register range, bit tags by (register, bit).
        # Bit tags may share a register with each other and with a word tag that reads the
        # whole status word; the same bit twice, or two words sharing a register, is a mistake.
        words: dict[tuple[int, str], list[tuple[int, int, str, Path_]]] = {}
        bits: dict[tuple[int, str, int, int], tuple[str, Path_]] = {}
        for gi, g in enumerate(self.poll_groups):
            for ti, t in enumerate(g.tags):
                path: Path_ = ("poll_groups", gi, "tags", ti)
                unit = self.unit_id if t.unit_id is None else t.unit_id
                if self.transport == "rtu" and t.unit_id is not None and not 1 <= unit <= 247:
                    out.append(((*path, "unit_id"), "must be 1..247 on a serial line"))
                if t.dtype == "bit":
                    key = (unit, t.table, t.address, t.bit or 0)
                    if key in bits:
                        out.append(
                            (
                                (*path, "bit"),
                                f"{t.table} {t.address} bit {t.bit} is already tag "
                                f"{bits[key][0]!r}",
                            )
                        )
                    else:
                        bits[key] = (t.name, path)
                    continue
                if not t.dtype or t.width <= 0:
                    continue
                limit = self.max_read_bits if t.table in BIT_TABLES else self.max_read_registers
                if t.width > limit:
                    out.append(
                        (
                            (*path, "length_registers"),
                            f"{t.width} registers do not fit one read (max_read_registers {limit})",
                        )
                    )
                lo, hi = t.address, t.address + t.width - 1
                span = words.setdefault((unit, t.table), [])
                for olo, ohi, oname, _ in span:
                    if lo <= ohi and olo <= hi:
                        where = f"{olo}" if olo == ohi else f"{olo}..{ohi}"
                        out.append(
                            (
                                (*path, "address"),
                                f"{t.table} {lo}..{hi} overlaps tag {oname!r} ({t.table} "
                                f"{where}, unit {unit})"
                                if lo != hi
                                else f"{t.table} {lo} overlaps tag {oname!r} ({t.table} "
                                f"{where}, unit {unit})",
                            )
                        )
                        break
                span.append((lo, hi, t.name, path))
        _raise_if(out)
        return self


SecurityPolicy = Literal["None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"]
SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]


class OpcUaDevice(_DeviceCommon):
    """An OPC UA server endpoint; secrets come from the environment or a file, never YAML."""

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
        _raise_if(out)
        return self

    def read_password(self) -> str | None:
        """The login password (trailing newline dropped) or None, as the driver reads it;
        `SecretError` (path relative to the device) when configured but unreadable."""
        if self.password_env:
            return env_secret(("password_env",), self.password_env)
        if self.password_file:
            return read_secret_file(("password_file",), self.password_file).rstrip("\r\n")
        return None

    def file_problems(self) -> list[tuple[Path_, str]]:
        """What the driver would fail on when it connects, found now: the password, and with
        security on the client certificate and key, the pinned certificate or trust_dir."""
        out: list[tuple[Path_, str]] = []
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


DeviceConfig = Annotated[ModbusDevice | OpcUaDevice, Field(discriminator="driver")]


# --- the root ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """Where a Config came from: the file name and the line of every YAML path."""

    file: str
    lines: dict[Path_, int]

    def line(self, path: Sequence[str | int]) -> int:
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.lines.get((), 1)


class Config(StrictModel):
    """The whole edgeloop YAML file."""

    _source: Source | None = PrivateAttr(None)

    template: bool = Field(
        False,
        description="true only in the template install.sh puts in /etc: `check` (and so the "
        "service) refuses the file until it has been edited and this line deleted.",
    )
    site: Name = Field("edgeloop", description="Site name; prefixes MQTT topics and exports.")
    devices: list[DeviceConfig] = Field(
        min_length=1,
        description="PLCs and servers to read, one entry per connection.",
        json_schema_extra=tagged_union_for_editors("Protocol of the device."),
    )
    kernel: KernelConfig = Field(
        default_factory=KernelConfig, description="Signal cleaning and anomaly kernel."
    )
    control: ControlConfig = Field(
        default_factory=ControlConfig, description="Closed-loop control loops."
    )
    store: StoreConfig = Field(default_factory=StoreConfig, description="Local SQLite history.")
    # An omitted `publish:` section means no northbound (not a broker on localhost and a
    # growing outbox); writing the section, even `publish: {}`, turns it on.
    publish: PublishConfig = Field(
        default_factory=lambda: PublishConfig(enabled=False),
        description="MQTT northbound with durable outbox; off when the section is omitted.",
    )
    http: HttpConfig = Field(
        default_factory=HttpConfig, description="HTTP /metrics, /healthz, /readyz."
    )

    @field_validator("template")
    @classmethod
    def _not_the_template(cls, v: bool) -> bool:
        if v:
            raise ValueError(
                "this is the unedited template: point a device at your PLC, enable it, "
                "then delete this line (edgeloop browse / scan find tags)"
            )
        return v

    @property
    def source(self) -> Source | None:
        """File and line numbers, so later stages (compile) can report file:line too."""
        return self._source

    @property
    def config_dir(self) -> Path | None:
        """Directory of the YAML file: relative paths in it (models, certificates) start here."""
        if self._source is None or self._source.file.startswith("<"):
            return None
        return Path(self._source.file).resolve().parent


SECTION_MODULES = {
    "kernel": "agent.kernel.settings",
    "control": "agent.control.settings",
    "store": "agent.store.settings",
    "publish": "agent.publish.settings",
    "http": "agent.telemetry.settings",
}


@dataclass(frozen=True, slots=True)
class TagRef:
    """What other sections may check about a tag they reference."""

    name: str
    device: str
    group: str
    driver: str
    type: str
    unit: str
    writable: bool
    min: float | None
    max: float | None
    path: Path_


def tag_index(cfg: Config) -> dict[str, TagRef]:
    """Every tag by name (first occurrence wins; duplicates are reported separately)."""
    out: dict[str, TagRef] = {}
    for di, d in enumerate(cfg.devices):
        for gi, g in enumerate(d.poll_groups):
            for ti, t in enumerate(g.tags):
                if t.name in out:
                    continue
                dtype = t.dtype if isinstance(t, ModbusTag) else t.type
                out[t.name] = TagRef(
                    name=t.name,
                    device=d.name,
                    group=g.name,
                    driver=d.driver,
                    type=dtype,
                    unit=t.unit,
                    writable=t.writable,
                    min=t.min,
                    max=t.max,
                    path=("devices", di, "poll_groups", gi, "tags", ti),
                )
    return out


_DEVICE_FILES = (
    "client_certificate",
    "client_private_key",
    "server_certificate",
    "trust_dir",
    "password_file",
)


def _anchored(cfg: Config) -> Config:
    """`cfg` with the relative paths of secret and certificate files made relative to the
    config file's directory, so `check` (from any directory) and the service (in its state
    directory) read the same files."""
    base = cfg.config_dir
    if base is None:
        return cfg

    def files(model: Any, keys: Sequence[str]) -> Any:
        update = {k: anchor_path(getattr(model, k), base) for k in keys}
        update = {k: v for k, v in update.items() if v != getattr(model, k)}
        return model.model_copy(update=update) if update else model

    devices = [files(d, _DEVICE_FILES) if isinstance(d, OpcUaDevice) else d for d in cfg.devices]
    mqtt = files(cfg.publish.mqtt, ("password_file",))
    if mqtt.tls is not None:
        mqtt = mqtt.model_copy(
            update={"tls": files(mqtt.tls, ("ca_file", "cert_file", "key_file"))}
        )
    http = cfg.http
    if http.bearer_token_file is not None:
        anchored = anchor_path(http.bearer_token_file, base)
        if anchored != str(http.bearer_token_file):
            http = http.model_copy(update={"bearer_token_file": Path(str(anchored))})
    out = cfg.model_copy(
        update={
            "devices": devices,
            "publish": cfg.publish.model_copy(update={"mqtt": mqtt}),
            "http": http,
        }
    )
    out._source = cfg._source
    return out


def _file_checks(cfg: Config) -> list[tuple[Path_, str]]:
    """Secrets and certificate files the components read at start, read now (I/O, unlike the
    cross-checks): each enabled OPC UA device, and each section module's `check_files`."""
    out: list[tuple[Path_, str]] = []
    for di, d in enumerate(cfg.devices):
        if isinstance(d, OpcUaDevice) and d.enabled:
            out += [(("devices", di, *path), msg) for path, msg in d.file_problems()]
    for section, module_name in SECTION_MODULES.items():
        hook = getattr(importlib.import_module(module_name), "check_files", None)
        if hook is None:
            continue
        for path, message in hook(cfg) or ():
            p = _parse_path(path) if isinstance(path, str) else tuple(path)
            if not p or p[0] != section:
                p = (section, *p)
            out.append((p, message))
    return out


_SERIAL_KEYS = ("baudrate", "parity", "stopbits", "bytesize")


def _shared_serial_lines(cfg: Config) -> list[tuple[Path_, str]]:
    """Devices on one serial port share one wire: its settings must agree (one frame on
    the line at a time is the driver's job; one baudrate per wire is the config's)."""
    out: list[tuple[Path_, str]] = []
    first: dict[str, int] = {}
    for di, d in enumerate(cfg.devices):
        port = getattr(d, "serial_port", None)
        if getattr(d, "transport", None) != "rtu" or not port or not d.enabled:
            continue
        key = os.path.realpath(port)
        if key not in first:
            first[key] = di
            continue
        other = cfg.devices[first[key]]
        for k in _SERIAL_KEYS:
            if getattr(d, k) != getattr(other, k):
                out.append(
                    (
                        ("devices", di, k),
                        f"{getattr(d, k)} differs from devices[{first[key]}] ({other.name}: "
                        f"{getattr(other, k)}) on the same serial_port {port}: one line has "
                        "one setting",
                    )
                )
    return out


def _global_checks(cfg: Config) -> list[tuple[Path_, str]]:
    out: list[tuple[Path_, str]] = []
    devs: dict[str, int] = {}
    for di, d in enumerate(cfg.devices):
        if d.name in devs:
            out.append(
                (
                    ("devices", di, "name"),
                    f"duplicate device name {d.name!r} (also devices[{devs[d.name]}])",
                )
            )
        else:
            devs[d.name] = di
    out += _shared_serial_lines(cfg)
    index = tag_index(cfg)
    for di, d in enumerate(cfg.devices):
        for gi, g in enumerate(d.poll_groups):
            for ti, t in enumerate(g.tags):
                first = index[t.name]
                here: Path_ = ("devices", di, "poll_groups", gi, "tags", ti)
                if first.path != here:
                    out.append(
                        (
                            (*here, "name"),
                            f"duplicate tag name {t.name!r} (also {_render(first.path)})",
                        )
                    )
    for section, module_name in SECTION_MODULES.items():
        hook = getattr(importlib.import_module(module_name), "cross_check", None)
        if hook is None:
            continue
        for path, message in hook(cfg, index) or ():
            p = _parse_path(path) if isinstance(path, str) else tuple(path)
            if not p or p[0] != section:
                p = (section, *p)
            out.append((p, message))
    return out


# --- errors ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem: file, 1-based line, YAML path and a message for humans."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}: {where}{self.message}"


class ConfigError(Exception):
    """The config has problems; `issues` lists all of them, `str()` is one line per issue."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


def _render(path: Sequence[str | int]) -> str:
    s = ""
    for p in path:
        if isinstance(p, int):
            s += f"[{p}]"
        else:
            s += f".{p}" if s else str(p)
    return s


_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _parse_path(text: str) -> Path_:
    out: list[str | int] = []
    for name, idx in _PATH_TOKEN.findall(text):
        out.append(int(idx) if idx else name)
    return tuple(out)


# --- YAML with positions -----------------------------------------------------------------


class _Positions:
    """Line numbers of every YAML node by path, and the keys of every mapping (to clean
    pydantic locs).  Walks the composed tree before construction; merge keys (`<<: *a`)
    count as the keys they bring in, with the lines of the anchor, and a key given beside
    a merge key overrides the merged one (not a duplicate)."""

    def __init__(self) -> None:
        self.lines: dict[Path_, int] = {}
        self.nodes: dict[Path_, yaml.Node] = {}
        self.keys: dict[Path_, set[str]] = {}
        self.duplicates: list[tuple[Path_, str]] = []

    def walk(self, node: yaml.Node, path: Path_ = ()) -> None:
        self.nodes[path] = node
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            self.keys[path] = seen
            self._pairs(node, path, seen, explicit=True)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.walk(item, (*path, i))

    def _pairs(self, node: yaml.MappingNode, path: Path_, seen: set[str], explicit: bool) -> None:
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                merges.append(value_node)
                continue
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            child = (*path, key)
            if key in seen:
                if not explicit:
                    continue  # merged: the key given beside the merge key wins
                self.duplicates.append((child, f"duplicate key {key!r}"))  # at the second
            seen.add(key)
            self.lines[child] = key_node.start_mark.line + 1
            self.walk(value_node, child)
        for merged in merges:
            parts = merged.value if isinstance(merged, yaml.SequenceNode) else [merged]
            for part in parts:
                if isinstance(part, yaml.MappingNode):  # anything else: the constructor says
                    self._pairs(part, path, seen, explicit=False)

    def line(self, path: Path_) -> int:
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.lines.get((), 1)

    def clean(self, loc: Sequence[str | int], missing: bool = False) -> Path_:
        """Drop pydantic's union-member/tag entries that are not keys of the YAML.

        Only the last entry of a `missing` error may name a key that is not in the file.
        """
        out: list[str | int] = []
        for i, part in enumerate(loc):
            node = self.nodes.get(tuple(out))
            last = i == len(loc) - 1
            if isinstance(part, str):
                if isinstance(node, yaml.MappingNode):
                    keys = self.keys.get(tuple(out), set())
                    if part not in keys and not (last and missing):
                        continue
                elif node is not None:  # below a scalar: a union member name
                    continue
            out.append(part)
        return tuple(out)


# --- pydantic errors -> friendly messages ------------------------------------------------


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _resolve(model: Any, loc: Sequence[str | int]) -> tuple[Any, Any]:
    """(FieldInfo of the last field, type) a pydantic loc points at; (None, None) if unknown."""
    tp: Any = model
    info = None
    for part in loc:
        tp = _unwrap(tp)
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            members = [_unwrap(a) for a in typing.get_args(tp) if a is not type(None)]
            tagged = [
                m
                for m in members
                if isinstance(part, str)
                and "driver" in getattr(m, "model_fields", {})
                and part in typing.get_args(m.model_fields["driver"].annotation)
            ]
            if tagged:
                tp, info = tagged[0], None
                continue
            if len(members) != 1:
                return None, None
            tp = members[0]
        if typing.get_origin(tp) is list and isinstance(part, int):
            tp, info = typing.get_args(tp)[0], None
            continue
        fields = getattr(tp, "model_fields", None)
        if isinstance(part, str) and fields and part in fields:
            info = fields[part]
            tp = info.annotation
            continue
        return None, None
    return info, _unwrap(tp)


def _field_at(model: Any, loc: Sequence[str | int]) -> Any:
    return _resolve(model, loc)[0]


def _bounds(info: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    if info is None:
        return out
    for m in info.metadata:
        for k in ("ge", "gt", "le", "lt"):
            v = getattr(m, k, None)
            if v is not None:
                out[k] = v
    return out


def _literal_values(info: Any) -> list[str]:
    if info is None:
        return []
    tp = _unwrap(info.annotation)
    members = [tp] if typing.get_origin(tp) is Literal else typing.get_args(tp)
    vals: list[str] = []
    for a in members:
        a = _unwrap(a)
        if typing.get_origin(a) is Literal:
            vals += [str(v) for v in typing.get_args(a)]
    return vals


_SECRET_KEYS = {"password", "passwd", "secret", "token", "api_key", "private_key_password"}

_SIMPLE = {
    "missing": "required",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "union_tag_not_found": "required: driver (modbus | opcua)",
    "none_required": "must be empty",
}


_MB = "is a Modbus key; OPC UA tags are addressed by node"
_UA = "is an OPC UA key; Modbus tags are addressed by table and address"
_OTHER_DRIVER: dict[Any, tuple[type, str]] = {
    OpcUaTag: (ModbusTag, _MB),
    ModbusTag: (OpcUaTag, _UA),
    OpcUaDevice: (ModbusDevice, "is a Modbus key, not one of an OPC UA device"),
    ModbusDevice: (OpcUaDevice, "is an OPC UA key, not one of a Modbus device"),
    ModbusPollGroup: (OpcUaPollGroup, "is for OPC UA subscriptions; Modbus groups are polled"),
}


def _friendly(err: dict[str, Any], loc: Path_, model: type) -> list[tuple[Path_, str]]:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    raw_loc = err["loc"]
    if kind == "edgeloop_checks":
        return [((*loc, *rel), msg) for rel, msg in ctx["problems"]]
    if kind == "string_type" and isinstance(err.get("input"), bool):
        return [(loc, "must be a string (YAML reads yes/no/on/off as true/false: quote it)")]
    if kind in _SIMPLE:
        msg = _SIMPLE[kind]
        if kind == "union_tag_not_found":
            return [((*loc, "driver"), "required (modbus | opcua)")]
        return [(loc, msg)]
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        if key in _SECRET_KEYS:
            return [
                (
                    loc,
                    "secrets do not belong in YAML: use password_env: VAR_NAME or "
                    "password_file: /path",
                )
            ]
        _, tp = _resolve(model, raw_loc[:-1])
        other = _OTHER_DRIVER.get(tp)
        if other is not None and key in other[0].model_fields:
            return [(loc, other[1])]
        candidates = list(getattr(tp, "model_fields", {}))
        hint = difflib.get_close_matches(key, candidates, n=1, cutoff=0.75)
        return [(loc, "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else ""))]
    if kind == "union_tag_invalid":
        got = ctx.get("tag", err.get("input"))
        return [((*loc, "driver"), f"must be one of modbus | opcua (got {got!r})")]
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        b = _bounds(_field_at(model, raw_loc))
        lo = b.get("ge", b.get("gt"))
        hi = b.get("le", b.get("lt"))
        if "ge" in b and "le" in b:
            return [(loc, f"must be {_num(lo)}..{_num(hi)}")]  # type: ignore[arg-type]
        if kind == "greater_than":
            return [(loc, f"must be > {_num(ctx['gt'])}")]
        if kind == "greater_than_equal":
            return [(loc, f"must be >= {_num(ctx['ge'])}")]
        if kind == "less_than":
            return [(loc, f"must be < {_num(ctx['lt'])}")]
        return [(loc, f"must be <= {_num(ctx['le'])}")]
    if kind == "literal_error":
        vals = _literal_values(_field_at(model, raw_loc))
        if vals == ["poll"] and err.get("input") == "subscribe":
            return [(loc, "subscribe is OPC UA only; Modbus groups are polled")]
        if vals:
            return [(loc, f"must be one of {' | '.join(vals)} (got {err.get('input')!r})")]
        return [(loc, f"must be {ctx.get('expected')}")]
    if kind == "string_pattern_mismatch":
        key = next((p for p in reversed(loc) if isinstance(p, str)), "")
        if key == "node":
            return [(loc, NODE_HINT)]
        if key == "endpoint":
            return [(loc, "must look like opc.tcp://host:port/path")]
        if key.endswith("_env"):  # most likely the secret itself: never echo it
            return [(loc, ENV_NAME_HINT)]
        return [(loc, NAME_HINT)]
    if kind == "too_short":
        if ctx.get("min_length") == 1:
            return [(loc, "must not be empty")]
        return [(loc, f"needs at least {ctx.get('min_length')} items")]
    if kind == "string_too_short":
        return [(loc, "must not be empty")]
    if kind == "value_error":
        return [(loc, str(ctx.get("error", err["msg"])))]
    return [(loc, err["msg"][0].lower() + err["msg"][1:])]


# --- loading -----------------------------------------------------------------------------


def parse_config(
    text: str | bytes,
    filename: str = "<config>",
    *,
    max_bytes: int = MAX_CONFIG_BYTES,
    check_files: bool = True,
) -> Config:
    """Validate YAML text (or the bytes of a file); raises `ConfigError` with every problem
    found.  Text beyond `max_bytes`, alias bombs, deep nesting and the like are refused
    before they cost time or memory (`agent.configyaml`).

    `check_files` (default) also reads the secrets and certificate files the components
    read at start (environment variables set, files readable and parseable), so `check`
    refuses what start-up would; relative paths of those files are relative to the config
    file.  Turn it off only to validate a file for another machine (the examples).
    """

    def refuse(line: int, message: str) -> ConfigError:
        return ConfigError([Issue(filename, line, "", message)])

    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise refuse(1, _too_big(size, max_bytes))
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise refuse(1, f"not UTF-8 text ({e.reason})") from None
    pos = _Positions()
    try:
        node, data = load_yaml(text, pos.walk)
    except YamlProblem as e:
        raise refuse(e.line, e.message) from None
    if node is None:
        raise refuse(1, "empty file: expected a mapping with devices")
    if not isinstance(data, dict):
        raise ConfigError(
            [Issue(filename, 1, "", "top level must be a mapping (site, devices, ...)")]
        )
    problems: list[tuple[Path_, str]] = list(pos.duplicates)
    cfg: Config | None = None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        for err in e.errors(include_url=False):
            loc = pos.clean(err["loc"], missing=err["type"] != "edgeloop_checks")
            problems += _friendly(err, loc, Config)
    if cfg is not None:
        cfg._source = Source(filename, pos.lines)  # cross-checks resolve paths from config_dir
        problems += _global_checks(cfg)
        cfg = _anchored(cfg)
        if check_files:
            problems += _file_checks(cfg)
    if problems:
        issues: list[Issue] = []
        seen: set[tuple[int, str, str]] = set()
        for path, message in problems:
            issue = Issue(filename, pos.line(path), _render(path), message)
            key = (issue.line, issue.path, issue.message)
            if key not in seen:
                seen.add(key)
                issues.append(issue)
        issues.sort(key=lambda i: i.line)
        raise ConfigError(issues)
    assert cfg is not None
    return cfg


DEFAULT_CONFIG = "config/edgeloop.yaml"


def default_config_path() -> Path:
    """`config/edgeloop.yaml` of the working directory, else the one beside the package."""
    here = Path(DEFAULT_CONFIG)
    if here.exists():
        return here
    shipped = Path(__file__).resolve().parents[1] / DEFAULT_CONFIG
    return shipped if shipped.exists() else here


def _too_big(size: int, limit: int) -> str:
    return f"file is {size} bytes, larger than the {describe_size(limit)} limit of a config file"


def read_config_bytes(path: str | Path, *, max_bytes: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of a config file, read only up to the size limit; `ConfigError` otherwise."""
    name = str(path)

    def refuse(message: str) -> ConfigError:
        return ConfigError([Issue(name, 1, "", message)])

    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                raise refuse(_too_big(size, max_bytes))
            data = fh.read(max_bytes + 1)  # files that do not know their size (/proc, pipes)
    except FileNotFoundError:
        raise refuse("no such file") from None
    except IsADirectoryError:
        raise refuse("is a directory, not a YAML file") from None
    except OSError as e:
        raise refuse(f"cannot read: {e.strerror}") from None
    if len(data) > max_bytes:
        raise refuse(f"file is larger than the {describe_size(max_bytes)} limit of a config file")
    return data


def load_config(
    path: str | Path, *, max_bytes: int = MAX_CONFIG_BYTES, check_files: bool = True
) -> Config:
    """Read and validate a YAML file; raises `ConfigError` (file:line form) on any problem.
    See `parse_config` for `check_files`."""
    data = read_config_bytes(path, max_bytes=max_bytes)
    return parse_config(data, str(path), max_bytes=max_bytes, check_files=check_files)
