"""OPC UA driver (asyncua): batched Reads, subscriptions, typed writes, pinned security.

* Poll groups: one Read service call per chunk of at most MaxNodesPerRead nodes (the device's
  `max_nodes_per_read`, or the server's OperationLimits value when that is 0).  A server that
  answers Bad_TooManyOperations anyway gets half-size chunks from then on.
* Subscribe groups: one subscription per group (publishing interval = `interval_ms`), one
  monitored item per tag with the group's sampling interval and absolute deadband.  The publish
  loop only puts notifications into a bounded queue (`queue_size`, drop-oldest, every drop
  counted); `read(plan)` drains it into the latest value per node, so the scheduler reads both
  kinds of group the same way.  Values are seeded by one Read at connect.  If no publish
  response (data or keep-alive) arrived within `stale_after_ms`, the group reads as STALE.
* Writes: the node's DataType is read once and cached; the engineering value is converted
  back (`(value - offset) / scale`) into exactly that type and range-checked before sending.
* The parts live beside this file: the session (client, security, login) in
  `drivers.opcua_session` with the certificate checks of `drivers.opcua_security` (an
  unknown server certificate is always refused), subscriptions and their queues in
  `drivers.opcua_subscription`, value conversion in `drivers.opcua_codec`.
* Reconnect: `connect()` always builds a fresh `asyncua.Client` (re-using one after a loss
  can hang) and re-creates the subscriptions; asyncua's own auto-reconnect stays off so
  backoff and health live in one place, the acquirer.  A lost connection makes `read`
  raise ConnectError, so the scheduler marks the group COMM_LOST and reconnects.

At most one service call is in flight per connection (a lock), as the Driver contract asks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.ua_utils import data_type_to_variant_type
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError

from drivers import opcua_codec as codec
from drivers import opcua_session as session
from drivers.base import (
    ConnectError,
    DriverError,
    GroupSpec,
    PlannedRequest,
    Point,
    Quality,
    ReadError,
    ReadResult,
    Reason,
    WriteError,
    WriteRefused,
    opcua_reason,
)
from drivers.opcua_codec import OpcUaPlan
from drivers.opcua_config import OpcUaDevice
from drivers.opcua_subscription import SubState as _SubState
from drivers.opcua_subscription import drain, subscribe

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_MAX_NODES_PER_READ = ua.NodeId(ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead)
# Errors meaning "the session is gone", as opposed to a Bad status for a request.
_SESSION_GONE = (
    StatusCodes.BadSessionIdInvalid,
    StatusCodes.BadSessionClosed,
    StatusCodes.BadSecureChannelClosed,
    StatusCodes.BadSecureChannelIdInvalid,
    StatusCodes.BadConnectionClosed,
    StatusCodes.BadServerNotConnected,
    StatusCodes.BadShutdown,
    StatusCodes.BadCommunicationError,
)


class OpcUaDriver:
    """One OPC UA server endpoint (see the module docstring)."""

    def __init__(self, cfg: OpcUaDevice, groups: Sequence[GroupSpec]) -> None:
        self.name: str = cfg.name
        self._cfg = cfg
        self._plans: dict[str, OpcUaPlan] = {}
        for g in groups:
            self.plan(g)
        self._client: Client | None = None
        self._lost: BaseException | None = None
        self._lock = asyncio.Lock()
        self._server_max_nodes = 0  # from OperationLimits, 0 = unknown / unlimited
        self._max_nodes = cfg.max_nodes_per_read
        self._subs: dict[str, _SubState] = {}
        self._vtypes: dict[ua.NodeId, ua.VariantType] = {}
        self._params: dict[tuple[str, int, int], ua.ReadParameters] = {}
        self.metrics: Any = None  # agent.metrics.Metrics for queue-drop counting (bind_metrics)
        self.stats: dict[str, int] = {
            "connects": 0,
            "read_calls": 0,
            "notifications": 0,
            "notifications_dropped": 0,
        }

    # --- planning (pure) ---------------------------------------------------------------

    def plan(self, group: GroupSpec) -> OpcUaPlan:
        """Compile a group once; the plan of a subscribe group is subscribed at connect."""
        known = self._plans.get(group.name)
        if known is not None and known.group == group:
            return known
        plan = codec.compile_plan(self.name, group)
        self._plans[group.name] = plan
        return plan

    def describe(self, plan: OpcUaPlan) -> list[PlannedRequest]:
        return codec.describe_plan(plan, self.max_nodes_per_read)

    @property
    def max_nodes_per_read(self) -> int:
        """The chunk size in use: configured, else the server's (after connect), else 0."""
        return self._max_nodes or self._server_max_nodes

    @property
    def connected(self) -> bool:
        return self._client is not None and self._lost is None

    @property
    def client(self) -> Client:
        """The connected asyncua Client, for tools that go beyond the Driver contract
        (`edgeloop browse` walks the address space over the session `connect()` opened, with
        its security and login); ConnectError when not connected or lost."""
        return self._require_client()

    def bind_metrics(self, metrics: Any) -> None:
        """Count dropped subscription notifications into `metrics` (`ReportsMetrics`)."""
        self.metrics = metrics

    # --- connection --------------------------------------------------------------------

    async def connect(self) -> None:
        """Open a session on a fresh Client, then (re)create the subscriptions.

        Every request is bounded by `timeout_s`; no extra waits are added, so the acquirer's
        guard around connect() holds.  If connect fails or is cancelled, the half-built
        client is torn down synchronously (closing its socket), never left running.
        """
        await self.close()
        client = session.new_client(self._cfg)
        try:
            await session.setup_security(client, self._cfg)
            session.setup_user(client, self._cfg)
            await client.connect()
            client.connection_lost_callback = self._on_lost
            self._client = client
            self._lost = None
            await self._after_connect(client)
        except BaseException as exc:
            self._client = None
            self._subs.clear()
            session.abort(client)
            if isinstance(exc, DriverError) or not isinstance(exc, Exception):
                raise  # our own clear error, or a cancellation
            raise session.connect_error(exc, self._cfg) from exc
        self.stats["connects"] += 1

    async def _on_lost(self, exc: Exception) -> None:
        # Called by asyncua's supervisor task: remember, do nothing blocking.
        if self._lost is None:
            log.info("%s: OPC UA connection lost: %r", self.name, exc)
            self._lost = exc

    async def _after_connect(self, client: Client) -> None:
        if self._max_nodes == 0:
            try:
                dv = (
                    await client.uaclient.read_attributes([_MAX_NODES_PER_READ], AttributeIds.Value)
                )[0]
                value = dv.Value.Value if dv.Value is not None else 0
                self._server_max_nodes = (
                    int(value or 0) if codec.status_quality(dv.StatusCode) == Quality.GOOD else 0
                )
            except UaStatusCodeError:
                self._server_max_nodes = 0
        for plan in self._plans.values():
            if plan.mode == "subscribe":
                self._subs[plan.group.name] = await self._subscribe(client, plan)

    async def _subscribe(self, client: Client, plan: OpcUaPlan) -> _SubState:
        sub, results = await subscribe(client, plan)
        n = plan.size
        state = _SubState(
            plan=plan,
            sub=sub,
            raw=np.full(n, np.nan),
            quality=np.full(n, np.uint8(Quality.STALE), dtype=np.uint8),
            reason=np.full(n, Reason.STALE, dtype=np.uint16),
        )
        # seed with one batched Read so the first read() has values, not "no data yet"
        await self._read_into(client, plan, state.raw, state.quality, state.texts, state.reason)
        for i, r in enumerate(results):
            if isinstance(r, ua.StatusCode):  # this item could not be monitored
                log.warning(
                    "%s: cannot monitor %s: %s", self.name, plan.node_ids[i], codec.status_name(r)
                )
                state.quality[i] = Quality.BAD
                state.reason[i] = opcua_reason(r.value)
                state.raw[i] = np.nan
        state.seeded_at = time.monotonic()
        return state

    async def close(self) -> None:
        """Drop the session (best effort, bounded in time); subscriptions die with it."""
        client, self._client = self._client, None
        lost, self._lost = self._lost, None
        self._subs.clear()
        if client is not None:
            await self._drop(client, graceful=lost is None)

    async def _drop(self, client: Client, *, graceful: bool) -> None:
        """CloseSession politely when the link is up (within 1.5 s, inside the scheduler's
        close guard); otherwise, or if that fails or is cancelled, just cut the socket."""
        client.connection_lost_callback = None
        if not graceful:
            session.abort(client)
            return
        timeout = min(self._cfg.timeout_s, 1.5)
        try:
            async with asyncio.timeout(timeout):
                await client.disconnect()
        except BaseException as exc:
            session.abort(client)
            if not isinstance(exc, Exception):
                raise  # cancelled: the socket is closed, let the cancellation through
            log.debug("%s: disconnect: %r", self.name, exc)

    # --- reading -----------------------------------------------------------------------

    def _require_client(self) -> Client:
        if self._client is None:
            raise ConnectError("not connected", device=self.name)
        if self._lost is not None:
            raise ConnectError(f"connection lost: {self._lost!r}", device=self.name) from self._lost
        return self._client

    async def _call(self, what: str, fn: Callable[[], Awaitable[_T]]) -> _T:
        """One service call under the lock; link errors mark the connection lost."""
        async with self._lock:
            try:
                return await fn()
            except TimeoutError as exc:
                # No answer in timeout_s.  The session may still be fine (a slow server), so
                # only this call fails; asyncua's watchdog reports a really dead link.
                raise ConnectError(f"{what}: no answer", device=self.name) from exc
            except (ConnectionError, OSError) as exc:
                self._lost = self._lost or exc
                raise ConnectError(f"{what}: connection lost ({exc!r})", device=self.name) from exc
            except UaStatusCodeError as exc:
                if session.code_of(exc) in _SESSION_GONE:
                    self._lost = self._lost or exc
                    raise ConnectError(
                        f"{what}: session lost", device=self.name, status=session.status_of(exc)
                    ) from exc
                raise

    async def read(self, plan: OpcUaPlan) -> ReadResult:
        client = self._require_client()
        if plan.mode == "subscribe":
            return self._read_subscription(plan)
        n = plan.size
        raw = np.full(n, np.nan)
        quality = np.empty(n, dtype=np.uint8)
        reason = np.zeros(n, dtype=np.uint16)
        texts: dict[int, str] = {}
        await self._read_into(client, plan, raw, quality, texts, reason)
        return codec.engineering(plan, raw, quality, texts, reason)

    async def _read_into(
        self,
        client: Client,
        plan: OpcUaPlan,
        raw: np.ndarray,
        quality: np.ndarray,
        texts: dict[int, str],
        reason: np.ndarray,
    ) -> None:
        start = 0
        while start < plan.size:
            stop = min(start + (self.max_nodes_per_read or codec.DEFAULT_MAX_NODES), plan.size)
            params = self._read_params(plan, start, stop)
            try:
                dvs = await self._call("Read", lambda params=params: client.uaclient.read(params))
            except UaStatusCodeError as exc:
                if session.code_of(exc) == StatusCodes.BadTooManyOperations and stop - start > 1:
                    # the server's real limit is lower than we were told: halve and retry
                    self._max_nodes = max(1, (stop - start) // 2)
                    log.warning(
                        "%s: server refused %d nodes per Read; using %d",
                        self.name,
                        stop - start,
                        self._max_nodes,
                    )
                    continue
                raise ReadError(
                    f"Read of group {plan.group.name!r} refused",
                    device=self.name,
                    status=session.status_of(exc),
                    reason=opcua_reason(session.code_of(exc) or 0x80000000),
                ) from exc
            self.stats["read_calls"] += 1
            if len(dvs) != stop - start:
                raise ReadError(
                    f"Read returned {len(dvs)} results for {stop - start} nodes",
                    device=self.name,
                    status="BadUnexpectedError",
                )
            codec.decode_into(plan, dvs, start, raw, quality, texts, reason)
            start = stop

    def _read_params(self, plan: OpcUaPlan, start: int, stop: int) -> ua.ReadParameters:
        """The Read request of one chunk, built once: Value of each node, no timestamps
        (the scheduler stamps the poll; servers that honour it send less), MaxAge 0."""
        key = (plan.group.name, start, stop)
        params = self._params.get(key)
        if params is None:
            params = ua.ReadParameters()
            params.MaxAge = 0
            params.TimestampsToReturn = ua.TimestampsToReturn.Neither
            for nid in plan.node_ids[start:stop]:
                rv = ua.ReadValueId()
                rv.NodeId = nid
                rv.AttributeId = AttributeIds.Value
                params.NodesToRead.append(rv)
            self._params[key] = params
        return params

    def _read_subscription(self, plan: OpcUaPlan) -> ReadResult:
        state = self._subs.get(plan.group.name)
        if state is None:
            raise ReadError(f"group {plan.group.name!r} is not subscribed", device=self.name)
        self._drain(state)
        if state.dead is not None:
            self._lost = self._lost or RuntimeError(state.dead)
            raise ConnectError(
                f"subscription of group {plan.group.name!r} ended",
                device=self.name,
                status=state.dead,
            )
        quality = state.quality.copy()
        reason = state.reason.copy()
        if time.monotonic() - state.alive_at() > plan.stale_after_s:
            old = quality != Quality.BAD
            quality[old] = Quality.STALE
            reason[old] = Reason.STALE
        return codec.engineering(plan, state.raw.copy(), quality, dict(state.texts), reason)

    def _drain(self, state: _SubState) -> None:
        count, dropped = drain(state)
        self.stats["notifications"] += count
        if dropped:
            self.stats["notifications_dropped"] += dropped
            if self.metrics is not None:
                self.metrics.inc(
                    "edgeloop_queue_dropped_total",
                    dropped,
                    queue=f"opcua:{self.name}/{state.plan.group.name}",
                )

    # --- writing -----------------------------------------------------------------------

    async def write(self, points: Sequence[tuple[Point, float | int | bool | str]]) -> None:
        """Write engineering values in the nodes' own data types, in one Write call."""
        if not points:
            return
        for p, _v in points:
            if not p.writable:
                raise WriteRefused(f"tag {p.name!r} is not writable", device=self.name)
            if not p.node:
                raise WriteRefused(f"tag {p.name!r} has no OPC UA node", device=self.name)
        client = self._require_client()
        ids = [codec.parse_node_id(p.node or "", device=self.name, tag=p.name) for p, _ in points]
        await self._load_types(client, [i for i in ids if i not in self._vtypes])
        dvs = []
        for (p, v), nid in zip(points, ids, strict=True):
            try:
                variant = codec.encode_write(p, v, self._vtypes[nid])
            except codec.EncodeError as exc:
                raise WriteRefused(str(exc), device=self.name) from exc
            dvs.append(
                ua.DataValue(variant, StatusCode=None)
            )  # no status/timestamps: many servers refuse them
        try:
            results = await self._call(
                "Write", lambda: client.uaclient.write_attributes(ids, dvs, AttributeIds.Value)
            )
        except UaStatusCodeError as exc:
            raise WriteError(
                "Write refused", device=self.name, status=session.status_of(exc)
            ) from exc
        except ConnectError as exc:
            raise WriteError(str(exc), device=self.name) from exc
        bad = [(p.name, r) for (p, _), r in zip(points, results, strict=True) if not r.is_good()]
        if bad:
            first = bad[0]
            names = ", ".join(f"{n}: {codec.status_name(r)}" for n, r in bad)
            raise WriteError(
                f"server refused the write ({names})",
                device=self.name,
                status=codec.status_name(first[1]),
            )

    async def _load_types(self, client: Client, ids: list[ua.NodeId]) -> None:
        """Read the DataType attribute of uncached nodes (one Read) and resolve built-in types."""
        if not ids:
            return
        ids = list(dict.fromkeys(ids))
        try:
            dvs = await self._call(
                "Read DataType",
                lambda: client.uaclient.read_attributes(ids, AttributeIds.DataType),
            )
        except UaStatusCodeError as exc:
            raise WriteError(
                "cannot read the nodes' DataType", device=self.name, status=session.status_of(exc)
            ) from exc
        for nid, dv in zip(ids, dvs, strict=True):
            if codec.status_quality(dv.StatusCode) != Quality.GOOD or dv.Value is None:
                raise WriteError(
                    f"node {nid.to_string()}: DataType unreadable",
                    device=self.name,
                    status=codec.status_name(dv.StatusCode),
                )
            dtype: ua.NodeId = dv.Value.Value
            if (
                dtype.NamespaceIndex == 0
                and isinstance(dtype.Identifier, int)
                and 1 <= dtype.Identifier <= 25
            ):
                self._vtypes[nid] = ua.VariantType(dtype.Identifier)
                continue
            try:  # subtypes (enumerations, UtcTime, ...) resolve to their built-in base type
                vtype = await data_type_to_variant_type(client.get_node(dtype))
            except Exception as exc:
                raise WriteError(
                    f"node {nid.to_string()}: cannot resolve DataType {dtype}", device=self.name
                ) from exc
            self._vtypes[nid] = vtype


def create(device_cfg: OpcUaDevice, groups: Sequence[GroupSpec]) -> OpcUaDriver:
    """Driver factory for `driver: opcua` (see drivers.base registry)."""
    return OpcUaDriver(device_cfg, groups)
