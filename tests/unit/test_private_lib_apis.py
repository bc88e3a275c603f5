"""The private parts of asyncua and pymodbus the drivers rely on, checked against the installed
versions.  Each would fail quietly on an upgrade (an override never called, a getattr default
taken, a decode hook bypassed), so each is asserted here by name and by behaviour: a library
change that breaks one fails this file, not a plant.  (aiomqtt's are in the publish tests.)"""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace

import numpy as np
from asyncua import ua
from asyncua.common.subscription import OverflowPolicy, StatusChangeEvent, Subscription
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from drivers.modbus import ModbusDriver
from drivers.modbus_wire import FastHoldingResponse, FastInputResponse
from drivers.opcua_subscription import CountingSubscription

# --- asyncua 2.1: Subscription._event_queue and Subscription._handle_overflow -----------------


def _session() -> SimpleNamespace:
    """What Subscription touches of its session in the calls below: the observer hooks."""
    observer = SimpleNamespace(on_notification=lambda *a: None)
    return SimpleNamespace(observer=observer)


def _status_change(code: int) -> ua.PublishResult:
    notif = ua.StatusChangeNotification()
    notif.Status = ua.StatusCode(code)
    result = ua.PublishResult()
    result.NotificationMessage = ua.NotificationMessage()
    result.NotificationMessage.SequenceNumber = code
    result.NotificationMessage.NotificationData = [notif]
    return result


async def test_iterator_mode_subscription_keeps_a_bounded_asyncio_queue() -> None:
    """drivers/opcua_subscription.py drains `sub._event_queue` with get_nowait() and reads
    None as 'no iterator mode'; the queue must be created at construction with its bound."""
    params = ua.CreateSubscriptionParameters()
    sub = Subscription(_session(), params, None, queue_maxsize=3)
    assert isinstance(sub._event_queue, asyncio.Queue)
    assert sub._event_queue.maxsize == 3
    handled = Subscription(_session(), params, SimpleNamespace(), queue_maxsize=3)
    assert handled._event_queue is None


async def test_a_full_queue_goes_through_handle_overflow_and_drops_the_oldest() -> None:
    """The driver counts drops by overriding `_handle_overflow(event)`; the library's own
    publish path must call it when the queue is full, and DROP_OLDEST keep the newest."""
    sig = inspect.signature(Subscription._handle_overflow)
    assert list(sig.parameters) == ["self", "event"]
    assert "_handle_overflow" in vars(CountingSubscription)
    sub = CountingSubscription(
        _session(),
        ua.CreateSubscriptionParameters(),
        None,
        queue_maxsize=2,
        overflow=OverflowPolicy.DROP_OLDEST,
    )
    for code in (1, 2, 3):  # the public entry point the publish loop calls
        await sub.publish_callback(_status_change(code))
    assert sub.dropped == 1
    queue = sub._event_queue
    assert queue is not None
    kept = [queue.get_nowait(), queue.get_nowait()]
    assert all(isinstance(ev, StatusChangeEvent) for ev in kept)
    assert [ev.notification.Status.value for ev in kept] == [2, 3]
    assert queue.empty()


# --- pymodbus 3.16: client.ctx.response_future and the register-response decode hook ----------


async def test_a_lost_connection_fails_the_pending_response_future() -> None:
    """ModbusDriver._on_connection_change fails `client.ctx.response_future` (found with a
    getattr default, so a rename would silently bring back the full-timeout wait)."""
    client = AsyncModbusTcpClient("127.0.0.1", port=1, retries=0)
    fut = client.ctx.response_future
    assert isinstance(fut, asyncio.Future)
    ModbusDriver._on_connection_change(client, False)
    assert fut.done()
    assert isinstance(fut.exception(), ConnectionResetError)
    client.close()


async def test_registered_register_responses_decode_through_the_driver_class() -> None:
    """`client.register()` must route FC03/FC04 answers to the driver's numpy decoder, which
    pymodbus calls as decode(frame after the function code) and reads via `registers`,
    `function_code`, `dev_id` and isError()."""
    for base, fast in (
        (ReadHoldingRegistersResponse, FastHoldingResponse),
        (ReadInputRegistersResponse, FastInputResponse),
    ):
        assert list(inspect.signature(base.decode).parameters) == ["self", "data"]
        client = AsyncModbusTcpClient("127.0.0.1", port=1, retries=0)
        client.register(fast)
        frame = bytes([base.function_code, 4, 0x12, 0x34, 0xFF, 0xFE])
        pdu = client.ctx.framer.decoder.decode(frame)
        assert type(pdu) is fast
        assert pdu.function_code == base.function_code
        assert not pdu.isError()
        assert isinstance(pdu.dev_id, int)
        np.testing.assert_array_equal(pdu.registers, [0x1234, 0xFFFE])
        client.close()
