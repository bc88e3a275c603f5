"""Latest-value and staleness logic of subscribe groups, without a server.

A subscription whose publish responses stop while the session stays up cannot be produced on
demand with the simulator, so this drives `OpcUaDriver._read_subscription` with a stand-in
for asyncua's Subscription (its queue, `last_publish_at` and `dropped` counter only) and real
asyncua notification objects.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from asyncua import ua
from asyncua.common.node import Node
from asyncua.common.subscription import (
    DataChangeEvent,
    DataChangeNotif,
    StatusChangeEvent,
    SubscriptionItemData,
)

from drivers.base import ConnectError, GroupSpec, Point, Quality, reason_name
from drivers.opcua import OpcUaDriver, _SubState, create
from drivers.opcua_config import OpcUaDevice


class _StandInSub:
    def __init__(self) -> None:
        self._event_queue: asyncio.Queue = asyncio.Queue(maxsize=100)
        self.last_publish_at: float | None = None
        self.dropped = 0


def _driver(stale_ms: int = 300) -> tuple[OpcUaDriver, object, _StandInSub]:
    pts = tuple(
        Point(name=f"t{i}", index=i, dtype="float64", node=f"ns=2;s=T{i}", scale=10.0)
        for i in range(3)
    )
    group = GroupSpec("dev", "g", 100, "subscribe", 0, 3, pts, {"stale_after_ms": stale_ms})
    tags = [{"name": p.name, "node": p.node} for p in pts]
    cfg = OpcUaDevice.model_validate(
        {"name": "dev", "driver": "opcua", "endpoint": "opc.tcp://127.0.0.1:1/x", "timeout_s": 1.0,
         "poll_groups": [{"name": "g", "interval_ms": 1000, "tags": tags}]}
    )  # fmt: skip
    drv = create(cfg, [group])
    plan = drv.plan(group)
    sub = _StandInSub()
    state = _SubState(
        plan=plan,
        sub=sub,  # type: ignore[arg-type]
        raw=np.array([1.0, 2.0, 3.0]),
        quality=np.zeros(3, dtype=np.uint8),
        reason=np.zeros(3, dtype=np.uint16),
        seeded_at=time.monotonic(),
    )
    drv._subs["g"] = state
    drv._client = object()  # type: ignore[assignment]  # "connected"; no I/O happens here
    return drv, plan, sub


def _change(i: int, value: float, status: int = ua.StatusCodes.Good) -> DataChangeEvent:
    node = Node(None, ua.NodeId(f"T{i}", 2))  # type: ignore[arg-type]
    item = ua.MonitoredItemNotification()
    item.Value = ua.DataValue(ua.Variant(value), StatusCode=ua.StatusCode(status))
    return DataChangeEvent(
        node=node, value=value, data=DataChangeNotif(SubscriptionItemData(), item)
    )


async def test_latest_value_per_node_wins_and_scale_applies():
    drv, plan, sub = _driver()
    for ev in (
        _change(0, 5.0),
        _change(0, 6.0),
        _change(2, 7.0, ua.StatusCodes.UncertainInitialValue),
    ):
        sub._event_queue.put_nowait(ev)
    res = await drv.read(plan)
    assert res.values.tolist() == [60.0, 20.0, 70.0]
    assert res.quality.tolist() == [Quality.GOOD, Quality.GOOD, Quality.UNCERTAIN]
    assert [reason_name(r) for r in res.reason] == ["none", "none", "opcua_UncertainInitialValue"]
    assert drv.stats["notifications"] == 3 and sub._event_queue.empty()


async def test_group_turns_stale_without_publish_responses_and_recovers_on_keepalive():
    drv, plan, sub = _driver(stale_ms=300)
    sub._event_queue.put_nowait(_change(1, 0.5, ua.StatusCodes.BadSensorFailure))
    drv._subs["g"].seeded_at = time.monotonic() - 1.0  # seeded long ago, nothing since
    res = await drv.read(plan)
    assert res.quality.tolist() == [Quality.STALE, Quality.BAD, Quality.STALE]  # bad stays bad
    assert [reason_name(r) for r in res.reason] == ["stale", "opcua_BadSensorFailure", "stale"]
    assert res.values[0] == 10.0  # the last value is still served, flagged stale
    sub.last_publish_at = time.monotonic()  # a keep-alive: the server is alive, values hold
    res = await drv.read(plan)
    assert res.quality.tolist() == [Quality.GOOD, Quality.BAD, Quality.GOOD]
    assert [reason_name(r) for r in res.reason] == ["none", "opcua_BadSensorFailure", "none"]


async def test_dropped_notifications_are_counted_once():
    drv, plan, sub = _driver()
    sub.dropped = 5
    await drv.read(plan)
    await drv.read(plan)
    assert drv.stats["notifications_dropped"] == 5


async def test_bad_status_change_ends_the_group_with_connect_error():
    drv, plan, sub = _driver()
    note = ua.StatusChangeNotification()
    note.Status = ua.StatusCode(ua.StatusCodes.BadTimeout)
    sub._event_queue.put_nowait(StatusChangeEvent(notification=note))
    with pytest.raises(ConnectError, match="subscription of group 'g' ended") as err:
        await drv.read(plan)
    assert err.value.status == "BadTimeout"
    with pytest.raises(ConnectError, match="connection lost"):  # until connect() builds anew
        await drv.read(plan)
