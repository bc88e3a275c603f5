"""Simulated OPC UA server of the pump skid (asyncua), serving live plant values.

The address space is built from the `opcua` entries of `hw_sim.pointmap` (the single source):

    Objects/PumpSkid/Measurements/Pump.MotorCurrent ...   (read-only)
    Objects/PumpSkid/Setpoints/Pump.SpeedSetpoint ...     (writable)

Every variable is an AnalogItem-like variable in ns=2 with a string NodeId (`ns=2;s=Pump.Flow`),
its Description, and the `EngineeringUnits` (UNECE code) and `EURange` properties clients use
to label and scale it.  A task copies `plant.values()` into the nodes every `update_interval_s`
(a value of None/NaN is served as Bad_SensorFailure, like a PLC with a broken input card); a
client write goes to `plant.write(name, value)`.

Like real PLC servers, and unlike asyncua's default, the simulator checks writes: a value whose
Variant type differs from the node's DataType gets Bad_TypeMismatch, one outside EURange gets
Bad_OutOfRange, and neither reaches the plant.  It can also enforce a MaxNodesPerRead operation
limit (published in ServerCapabilities/OperationLimits, Bad_TooManyOperations above it) and
counts the Read service calls that touch the skid's nodes, so tests can prove read batching.

Security: endpoint None (unless `allow_none=False`) plus Basic256Sha256, Aes128Sha256RsaOaep
and Aes256Sha256RsaPss, each with Sign and SignAndEncrypt, when `certs_dir` is given (the
server's certificate is generated there once, see `hw_sim.certs`).  Users: anonymous (unless
`allow_anonymous=False`) and every `users` name/password.  Client certificates are accepted
without a trust list: the simulator tests the gateway's side of the handshake, not a PLC's
application-authentication policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from asyncua import Server, ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager

from hw_sim import certs as _certs

log = logging.getLogger(__name__)

NAMESPACE_URI = "urn:edgeloop:hw_sim:pump-skid"
NAMESPACE_INDEX = 2  # node ids in the point map are ns=2;s=...
ENDPOINT_PATH = "/edgeloop/sim"
UNITS_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"

# Point-map type -> OPC UA built-in type.
VARIANT_TYPES: dict[str, ua.VariantType] = {
    "bool": ua.VariantType.Boolean,
    "int16": ua.VariantType.Int16,
    "uint16": ua.VariantType.UInt16,
    "int32": ua.VariantType.Int32,
    "uint32": ua.VariantType.UInt32,
    "int64": ua.VariantType.Int64,
    "uint64": ua.VariantType.UInt64,
    "float32": ua.VariantType.Float,
    "float64": ua.VariantType.Double,
    "string": ua.VariantType.String,
}

# Unit symbol -> UNECE Rec. 20 common code (OPC UA Part 8 5.6.3: UnitId packs its ASCII bytes).
UNECE_CODES: dict[str, str] = {
    "A": "AMP",
    "V": "VLT",
    "degC": "CEL",
    "°C": "CEL",
    "K": "KEL",
    "bar": "BAR",
    "kPa": "KPA",
    "Pa": "PAL",
    "m3/h": "MQH",
    "l/min": "L2",
    "mm/s": "C16",
    "g": "K40",
    "%": "P1",
    "rpm": "RPM",
    "Hz": "HTZ",
    "kW": "KWT",
    "W": "WTT",
    "s": "SEC",
}

SECURE_POLICIES: tuple[ua.SecurityPolicyType, ...] = (
    ua.SecurityPolicyType.Basic256Sha256_Sign,
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
)


class Plant(Protocol):
    """What the server needs from the simulated plant (`hw_sim.runtime.SimPlant`)."""

    def values(self) -> Mapping[str, Any]: ...

    def write(self, name: str, value: Any) -> None: ...


def unece_unit_id(code: str) -> int:
    """OPC UA UnitId of a UNECE common code: its (up to 3) ASCII bytes, big-endian."""
    uid = 0
    for ch in code.upper():
        uid = (uid << 8) | ord(ch)
    return uid


def eu_information(unit: str) -> ua.EUInformation:
    """EngineeringUnits value for a unit symbol; unknown symbols get UnitId -1 (spec: none)."""
    code = UNECE_CODES.get(unit)
    info = ua.EUInformation()
    info.NamespaceUri = UNITS_NAMESPACE
    info.UnitId = unece_unit_id(code) if code else -1
    info.DisplayName = ua.LocalizedText(unit)
    info.Description = ua.LocalizedText(unit)
    return info


def _field(entry: Any, name: str, default: Any = None) -> Any:
    if isinstance(entry, Mapping):
        return entry.get(name, default)
    return getattr(entry, name, default)


@dataclass(slots=True)
class _Var:
    name: str  # plant signal / point name
    nodeid: ua.NodeId
    vtype: ua.VariantType
    low: float | None
    high: float | None
    writable: bool


class _Users(UserManager):
    """Anonymous (optional) plus name/password users; a wrong password gets no session."""

    def __init__(self, users: Mapping[str, str], allow_anonymous: bool) -> None:
        self._users = dict(users)
        self._anonymous = allow_anonymous

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is None:
            return User(role=UserRole.User) if self._anonymous else None
        expected = self._users.get(username)
        if expected is None or not hmac.compare_digest(expected, password or ""):
            log.info("OPC UA sim: login refused for user %r", username)
            return None
        return User(role=UserRole.User, name=username)


@dataclass
class OpcUaSim:
    """A running simulated server.  `read_calls` counts Read services touching the skid."""

    endpoint: str
    server: Server
    namespace_index: int
    variables: dict[str, _Var]
    certs: _certs.SimCerts | None = None
    read_calls: int = 0
    read_sizes: list[int] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _forced: dict[str, int] = field(default_factory=dict)
    _stopped: bool = False

    def force_status(self, name: str, status: int | None) -> None:
        """Serve `name` with this StatusCode (e.g. UncertainLastUsableValue); None restores."""
        if name not in self.variables:
            raise KeyError(name)
        if status is None:
            self._forced.pop(name, None)
        else:
            self._forced[name] = status

    def reset_counters(self) -> None:
        self.read_calls = 0
        self.read_sizes.clear()

    async def stop(self) -> None:
        """Stop refreshing and close the server and its client connections."""
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.server.stop()


async def start_opcua_server(
    plant: Plant,
    host: str = "127.0.0.1",
    port: int = 4840,
    certs_dir: str | Path | None = None,
    users: Mapping[str, str] | None = None,
    *,
    points: Iterable[Any] | None = None,
    update_interval_s: float = 0.05,
    allow_none: bool = True,
    allow_anonymous: bool = True,
    max_nodes_per_read: int = 0,
) -> OpcUaSim:
    """Start the pump-skid server on `opc.tcp://host:port/edgeloop/sim` and return it.

    `points` defaults to the point map's `opcua` entries.  `max_nodes_per_read` > 0 publishes
    and enforces that operation limit (0: asyncua's default 10000, not enforced).
    """
    if points is None:
        from hw_sim.pointmap import opcua_points

        points = opcua_points()
    entries = [p for p in points if _field(p, "protocol", "opcua") == "opcua"]
    if not entries:
        raise ValueError("no OPC UA points to serve")
    if not allow_none and certs_dir is None:
        raise ValueError("allow_none=False needs certs_dir for the secure endpoints")

    server = Server(user_manager=_Users(users or {}, allow_anonymous))
    await server.init()
    endpoint = f"opc.tcp://{host}:{port}{ENDPOINT_PATH}"
    server.set_endpoint(endpoint)
    server.set_server_name("edgeloop hw_sim pump skid")
    sim_certs = None
    policies: list[ua.SecurityPolicyType] = []
    if allow_none:
        policies.append(ua.SecurityPolicyType.NoSecurity)
    if certs_dir is not None:
        sim_certs = _certs.ensure_certs(certs_dir)
        await server.set_application_uri(sim_certs.server.uri)
        await server.load_certificate(str(sim_certs.server.cert))
        await server.load_private_key(str(sim_certs.server.key))
        policies.extend(SECURE_POLICIES)
    else:
        await server.set_application_uri(_certs.SERVER_URI)
    server.set_security_policy(policies)
    tokens: list[type] = [ua.AnonymousIdentityToken] if allow_anonymous else []
    if users:
        tokens.append(ua.UserNameIdentityToken)
    if not tokens:
        raise ValueError("allow_anonymous=False needs at least one user")
    server.set_identity_tokens(tokens)

    idx = await server.register_namespace(NAMESPACE_URI)
    if idx != NAMESPACE_INDEX:
        raise RuntimeError(f"namespace {NAMESPACE_URI} got index {idx}, the point map needs 2")
    variables = await _build_address_space(server, idx, entries)
    if max_nodes_per_read > 0:
        limit = server.get_node(
            ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead)
        )
        await limit.write_value(ua.Variant(max_nodes_per_read, ua.VariantType.UInt32))

    sim = OpcUaSim(endpoint=endpoint, server=server, namespace_index=idx, variables=variables)
    sim.certs = sim_certs
    _install_read_hook(sim, max_nodes_per_read)
    _install_write_check(sim, plant)
    await _refresh(sim, plant)  # serve real values from the first request on
    await server.start()
    sim._task = asyncio.create_task(_refresh_loop(sim, plant, update_interval_s))
    log.info("OPC UA sim listening on %s (policies: %d)", endpoint, len(policies))
    return sim


async def _build_address_space(server: Server, idx: int, entries: list[Any]) -> dict[str, _Var]:
    skid = await server.nodes.objects.add_folder(
        ua.NodeId("PumpSkid", idx), ua.QualifiedName("PumpSkid", idx)
    )
    folders = {
        False: await skid.add_folder(
            ua.NodeId("PumpSkid.Measurements", idx), ua.QualifiedName("Measurements", idx)
        ),
        True: await skid.add_folder(
            ua.NodeId("PumpSkid.Setpoints", idx), ua.QualifiedName("Setpoints", idx)
        ),
    }
    variables: dict[str, _Var] = {}
    for e in entries:
        name, node_str = _field(e, "name"), _field(e, "node")
        nodeid = ua.NodeId.from_string(node_str)
        if nodeid.NamespaceIndex != idx:
            raise ValueError(f"{name}: node {node_str} is not in ns={idx}")
        type_ = _field(e, "type", "float64")
        vtype = VARIANT_TYPES[type_]
        writable = bool(_field(e, "writable", False))
        initial: Any = "" if vtype == ua.VariantType.String else (False if type_ == "bool" else 0)
        browse = str(nodeid.Identifier)
        var = await folders[writable].add_variable(
            nodeid, ua.QualifiedName(browse, idx), ua.Variant(initial, vtype), datatype=vtype.value
        )
        await var.write_attribute(
            ua.AttributeIds.Description,
            ua.DataValue(ua.Variant(ua.LocalizedText(_field(e, "description", "") or name))),
        )
        if writable:
            await var.set_writable()
        low, high = _field(e, "min"), _field(e, "max")
        unit = _field(e, "unit", "") or ""
        await var.add_property(
            ua.NodeId(f"{browse}.EngineeringUnits", idx),
            ua.QualifiedName("EngineeringUnits", 0),
            eu_information(unit),
            datatype=ua.ObjectIds.EUInformation,
        )
        if low is not None and high is not None:
            rng = ua.Range(Low=float(low), High=float(high))
            await var.add_property(
                ua.NodeId(f"{browse}.EURange", idx),
                ua.QualifiedName("EURange", 0),
                rng,
                datatype=ua.ObjectIds.Range,
            )
        variables[name] = _Var(name, nodeid, vtype, low, high, writable)
    return variables


def _datavalue(var: _Var, value: Any, status: int | None) -> ua.DataValue:
    now = datetime.now(UTC)
    bad_input = value is None or (isinstance(value, float) and math.isnan(value))
    if status is None and bad_input:
        status = ua.StatusCodes.BadSensorFailure
    if status is not None and ua.StatusCode(status).is_bad():
        variant = ua.Variant()  # Part 4 7.7.1: a Bad value is null
    else:
        variant = ua.Variant(_coerce(var.vtype, value), var.vtype)
    return ua.DataValue(
        variant,
        StatusCode=ua.StatusCode(status if status is not None else ua.StatusCodes.Good),
        SourceTimestamp=now,
        ServerTimestamp=now,
    )


def _coerce(vtype: ua.VariantType, value: Any) -> Any:
    if vtype in (ua.VariantType.Float, ua.VariantType.Double):
        return float(value)
    if vtype == ua.VariantType.Boolean:
        return bool(value)
    if vtype == ua.VariantType.String:
        return str(value)
    return round(float(value))


async def _refresh(sim: OpcUaSim, plant: Plant) -> None:
    values = plant.values()
    for name, var in sim.variables.items():
        dv = _datavalue(var, values.get(name), sim._forced.get(name))
        await sim.server.write_attribute_value(var.nodeid, dv)


async def _refresh_loop(sim: OpcUaSim, plant: Plant, interval_s: float) -> None:
    next_t = time.monotonic()
    while True:
        next_t += interval_s
        try:
            await _refresh(sim, plant)
        except Exception:  # a plant bug must not silently freeze the served values
            log.exception("OPC UA sim: refreshing values from the plant failed")
        await asyncio.sleep(max(0.0, next_t - time.monotonic()))


def _install_read_hook(sim: OpcUaSim, max_nodes: int) -> None:
    """Count client Read calls touching our namespace; enforce MaxNodesPerRead if set."""
    idx = sim.namespace_index

    def pre_read(event: ServerItemCallback, _dispatcher: Any) -> None:
        if not event.is_external:
            return
        nodes = event.request_params.NodesToRead
        if max_nodes > 0 and len(nodes) > max_nodes:
            raise ServiceError(ua.StatusCodes.BadTooManyOperations)
        ours = sum(1 for rv in nodes if rv.NodeId.NamespaceIndex == idx)
        if ours:
            sim.read_calls += 1
            sim.read_sizes.append(ours)

    sim.server.subscribe_server_callback(CallbackType.PreRead, pre_read)


def _install_write_check(sim: OpcUaSim, plant: Plant) -> None:
    """Type/range-check client writes to the skid's nodes and pass the good ones to the plant.

    asyncua's AttributeService stores any Variant a client sends; real PLC servers refuse a
    wrong type.  The service object is wrapped on this server instance only.
    """
    service = sim.server.iserver.attribute_service
    original = service.write
    by_id = {v.nodeid: v for v in sim.variables.values()}

    async def write(params: ua.WriteParameters, user: User = User(role=UserRole.Admin)) -> list:  # noqa: B008
        items = list(params.NodesToWrite)
        results: list[ua.StatusCode | None] = [None] * len(items)
        passed: list[int] = []
        for i, wv in enumerate(items):
            var = by_id.get(wv.NodeId)
            if var is not None and wv.AttributeId == ua.AttributeIds.Value:
                status = _check_write(var, wv.Value)
                if status is not None:
                    results[i] = ua.StatusCode(status)
                    continue
            passed.append(i)
        if passed:
            sub = ua.WriteParameters()
            sub.NodesToWrite = [items[i] for i in passed]
            for i, res in zip(passed, await original(sub, user=user), strict=True):
                results[i] = res
                var = by_id.get(items[i].NodeId)
                if (
                    var is None
                    or not res.is_good()
                    or items[i].AttributeId != ua.AttributeIds.Value
                ):
                    continue
                try:
                    plant.write(var.name, items[i].Value.Value.Value)
                except ValueError:
                    results[i] = ua.StatusCode(ua.StatusCodes.BadOutOfRange)
                except Exception:
                    log.exception("OPC UA sim: plant.write(%s) failed", var.name)
                    results[i] = ua.StatusCode(ua.StatusCodes.BadInternalError)
        return [
            r if r is not None else ua.StatusCode(ua.StatusCodes.BadInternalError) for r in results
        ]

    service.write = write  # type: ignore[method-assign]


def _check_write(var: _Var, dv: ua.DataValue) -> int | None:
    if not var.writable:
        return ua.StatusCodes.BadNotWritable
    if dv.Value is None or dv.Value.Value is None:
        return ua.StatusCodes.BadTypeMismatch
    if dv.Value.VariantType != var.vtype:
        return ua.StatusCodes.BadTypeMismatch
    value = dv.Value.Value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return ua.StatusCodes.BadOutOfRange
        if (var.low is not None and value < var.low) or (var.high is not None and value > var.high):
            return ua.StatusCodes.BadOutOfRange
    return None
