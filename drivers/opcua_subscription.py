"""OPC UA subscriptions: one per subscribe group, notifications into a bounded queue.

The publish loop only puts notifications into the queue (`queue_size`, drop-oldest, every
drop counted); `drain` applies them, in order, to the latest value per node (`SubState`)
when the driver's `read` asks, so the scheduler reads poll and subscribe groups alike.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent, Subscription
from asyncua.common.subscription import OverflowPolicy as _Overflow
from asyncua.ua.attribute_ids import AttributeIds

from drivers import opcua_codec as codec
from drivers.opcua_codec import OpcUaPlan


class CountingSubscription(Subscription):
    """asyncua Subscription in iterator mode whose drop-oldest overflows are counted."""

    dropped: int = 0

    def _handle_overflow(self, event: Any) -> None:
        self.dropped += 1
        super()._handle_overflow(event)


@dataclass(slots=True)
class SubState:
    """Latest value per node of one subscribe group (raw, before scale/offset)."""

    plan: OpcUaPlan
    sub: CountingSubscription
    raw: np.ndarray
    quality: np.ndarray
    reason: np.ndarray
    texts: dict[int, str] = field(default_factory=dict)
    seeded_at: float = 0.0  # monotonic time of the seeding Read
    dead: str | None = None  # set by a Bad StatusChangeNotification
    notifications: int = 0

    def alive_at(self) -> float:
        last = self.sub.last_publish_at
        return max(self.seeded_at, last) if last is not None else self.seeded_at


async def subscribe(client: Client, plan: OpcUaPlan) -> tuple[CountingSubscription, list[Any]]:
    """One subscription for a subscribe group: keep-alives at least twice per staleness
    window, one monitored item per node; the create results, a StatusCode where an item
    could not be monitored."""
    interval = float(plan.group.interval_ms)
    # keep-alives at least twice per staleness window, so silence really means trouble
    keepalive = max(1, int(plan.stale_after_s * 1000 / interval / 2))
    params = ua.CreateSubscriptionParameters()
    params.RequestedPublishingInterval = interval
    params.RequestedMaxKeepAliveCount = keepalive
    params.RequestedLifetimeCount = max(3 * keepalive, math.ceil(60_000 / interval))
    params.MaxNotificationsPerPublish = 0
    params.PublishingEnabled = True
    params.Priority = 0
    sub = CountingSubscription(
        client.uaclient.session,
        params,
        None,
        queue_maxsize=plan.queue_size,
        overflow=_Overflow.DROP_OLDEST,
    )
    await sub.init()
    mfilter = None
    if plan.deadband_abs > 0:
        mfilter = ua.DataChangeFilter()
        mfilter.Trigger = ua.DataChangeTrigger.StatusValue
        mfilter.DeadbandType = ua.DeadbandType.Absolute
        mfilter.DeadbandValue = plan.deadband_abs
    requests = []
    for i, nid in enumerate(plan.node_ids):
        item = ua.ReadValueId()
        item.NodeId = nid
        item.AttributeId = AttributeIds.Value
        mp = ua.MonitoringParameters()
        mp.ClientHandle = i + 1
        mp.SamplingInterval = plan.sampling_interval_ms
        mp.QueueSize = 1
        mp.DiscardOldest = True
        if mfilter is not None:
            mp.Filter = mfilter
        req = ua.MonitoredItemCreateRequest()
        req.ItemToMonitor = item
        req.MonitoringMode = ua.MonitoringMode.Reporting
        req.RequestedParameters = mp
        requests.append(req)
    results = await sub.create_monitored_items(requests)
    return sub, list(results)


def drain(state: SubState) -> tuple[int, int]:
    """Apply every queued notification (in order, so the newest value wins); (notifications
    applied, notifications the full queue dropped since the last drain)."""
    queue = state.sub._event_queue
    if queue is None:
        return 0, 0
    index = state.plan.index
    is_text = state.plan.is_text
    count = 0
    while True:
        try:
            ev = queue.get_nowait()
        except asyncio.QueueEmpty:
            break
        if isinstance(ev, DataChangeEvent):
            i = index.get(ev.node.nodeid)
            if i is None:
                continue
            dv = ev.data.monitored_item.Value
            value, q, text, why = codec.decode_value(dv, bool(is_text[i]))
            state.raw[i] = value
            state.quality[i] = q
            state.reason[i] = why
            if text is not None:
                state.texts[i] = text
            else:
                state.texts.pop(i, None)
            count += 1
        elif isinstance(ev, StatusChangeEvent) and ev.notification.Status.is_bad():
            state.dead = codec.status_name(ev.notification.Status)
    state.notifications += count
    dropped, state.sub.dropped = state.sub.dropped, 0
    return count, dropped
