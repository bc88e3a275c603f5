"""A hostile Modbus device is survived: points go bad, the error is raised or recorded,
nothing crashes, and the next read is good again once the device behaves."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from drivers.base import ConnectError, GroupSpec, Point, Quality, ReadError
from drivers.modbus import DeviceException, ProtocolError, ResponseTimeout, create
from tests.integration.test_modbus_peer import DeviceCfg, Peer

# two requests on unit 1 (holding 0..1 and 100..101, too far apart to merge), one on unit 2
POINTS = (
    Point("a", 0, "float32", table="holding", address=0),
    Point("b", 1, "float32", table="holding", address=100),
    Point("c", 2, "uint16", table="holding", address=0, unit_id=2),
)
GROUP = GroupSpec("plc", "g", 1000, "poll", 0, 3, POINTS)
WANT = [1.5, -2.25, 42.0]


@pytest.fixture
async def peer():
    p = await Peer(units=(1, 2)).start()
    p.units[1].holding[0:2] = np.array([1.5], ">f4").view(">u2")
    p.units[1].holding[100:102] = np.array([-2.25], ">f4").view(">u2")
    p.units[2].holding[0] = 42
    yield p
    await p.stop()


@pytest.fixture
async def drv(peer: Peer):
    d = create(DeviceCfg(port=peer.port, timeout_s=0.25, retries=0), [GROUP])
    yield d
    await d.close()


async def read_ok(drv) -> None:
    res = await drv.read(drv.plan(GROUP))
    assert res.quality.tolist() == [Quality.GOOD] * 3
    assert res.values.tolist() == WANT


async def test_exception_response_marks_only_that_request_bad(drv, peer: Peer) -> None:
    peer.misbehave("exception", 0x02)
    res = await drv.read(drv.plan(GROUP))
    assert res.quality.tolist() == [Quality.BAD, Quality.GOOD, Quality.GOOD]
    assert np.isnan(res.values[0]) and res.values[1:].tolist() == WANT[1:]
    (err,) = drv.last_errors
    assert isinstance(err, DeviceException) and err.code == 2
    assert err.status == "exception 0x02 ILLEGAL_DATA_ADDRESS"
    assert "device=plc" in str(err) and "unit=1" in str(err) and "address=0" in str(err)
    assert drv.counters["exceptions"] == 1
    await read_ok(drv)
    assert peer.connections == 1  # a well-formed exception keeps the connection


async def test_gateway_exception_is_comm_lost(drv, peer: Peer) -> None:
    peer.misbehave("ok")
    peer.misbehave("ok")
    peer.misbehave("exception", 0x0B)
    res = await drv.read(drv.plan(GROUP))
    assert res.quality.tolist() == [Quality.GOOD, Quality.GOOD, Quality.COMM_LOST]


async def test_every_request_refused_raises(drv, peer: Peer) -> None:
    peer.misbehave("exception", 0x04, times=3)
    with pytest.raises(ReadError, match="DEVICE_FAILURE") as info:
        await drv.read(drv.plan(GROUP))
    assert info.value.unit_id == 1
    await read_ok(drv)


@pytest.mark.parametrize(
    ("mode", "arg", "error", "quality"),
    [
        ("wrong_fc", 4, ProtocolError, Quality.BAD),
        ("odd_bytes", None, ProtocolError, Quality.BAD),
        ("short", None, ProtocolError, Quality.BAD),
        # pymodbus' framer discards a frame of another unit or transaction: no answer
        ("wrong_unit", 9, ResponseTimeout, Quality.COMM_LOST),
        ("wrong_tid", None, ResponseTimeout, Quality.COMM_LOST),
    ],
)
async def test_mismatched_answer_is_rejected_and_connection_renewed(
    drv, peer, mode, arg, error, quality
) -> None:
    peer.misbehave(mode, arg)
    res = await drv.read(drv.plan(GROUP))
    assert res.quality[0] == quality
    assert np.isnan(res.values[0])
    assert res.quality[2] == Quality.GOOD  # the other unit is unaffected
    assert type(drv.last_errors[0]) is error
    await read_ok(drv)
    assert peer.connections == 2  # dropped after the bad answer, re-opened for the next


async def test_fc4_data_answering_fc3_is_not_taken_as_holding_registers(drv, peer) -> None:
    # the pymodbus 3.16 pitfall: this would be a "successful" read of the wrong table
    peer.misbehave("wrong_fc", 4)
    res = await drv.read(drv.plan(GROUP))
    assert res.quality[0] == Quality.BAD
    assert "function code 4" in str(drv.last_errors[0])


@pytest.mark.parametrize("mode", ["truncated", "garbage", "silent"])
async def test_broken_or_missing_answer_times_out_then_resumes(drv, peer, mode) -> None:
    peer.misbehave(mode)
    res = await drv.read(drv.plan(GROUP))
    # unit 1 timed out: its second request is skipped this poll; unit 2 is still read
    assert res.quality.tolist() == [Quality.COMM_LOST, Quality.COMM_LOST, Quality.GOOD]
    assert isinstance(drv.last_errors[0], ResponseTimeout)
    assert drv.counters["timeouts"] == 1
    assert [(u, a) for u, _, a, _ in peer.requests[-1:]] == [(2, 0)]
    await read_ok(drv)


async def test_late_answer_never_answers_the_next_request(drv, peer) -> None:
    peer.misbehave("late", 0.5)
    res = await drv.read(drv.plan(GROUP))
    assert res.quality[0] == Quality.COMM_LOST
    await asyncio.sleep(0.4)  # the late reply arrives meanwhile (into the dropped connection)
    for _ in range(3):
        await read_ok(drv)


async def test_retry_recovers_within_one_read(peer) -> None:
    d = create(DeviceCfg(port=peer.port, timeout_s=0.25, retries=1), [GROUP])
    peer.misbehave("silent")
    await read_ok(d)
    assert d.counters["retries"] == 1 and d.last_errors == []
    await d.close()


async def test_dropped_connection_raises_connect_error_then_reconnects(drv, peer) -> None:
    await read_ok(drv)
    peer.misbehave("drop")
    with pytest.raises(ConnectError) as info:
        await drv.read(drv.plan(GROUP))
    assert not isinstance(info.value, ResponseTimeout)  # seen at once, not as a timeout
    await read_ok(drv)
    assert peer.connections == 2


async def test_device_down_and_restarted(drv, peer) -> None:
    await read_ok(drv)
    port = peer.port
    await peer.stop()
    for _ in range(2):
        with pytest.raises(ConnectError):
            await drv.read(drv.plan(GROUP))
    await peer.start(port)
    await read_ok(drv)


async def test_connect_refused_is_a_connect_error_with_context() -> None:
    from tests.fixtures.ports import free_port

    d = create(DeviceCfg(port=free_port(), timeout_s=0.5), [GROUP])
    with pytest.raises(ConnectError, match="cannot connect") as info:
        await d.connect()
    assert info.value.device == "plc"


async def test_sustained_misbehaviour_never_crashes(drv, peer) -> None:
    modes = [
        "exception",
        "wrong_fc",
        "wrong_unit",
        "wrong_tid",
        "short",
        "truncated",
        "garbage",
        "drop",
        "late",
        "odd_bytes",
        "ok",
    ]
    args = {"exception": 3, "wrong_fc": 1, "wrong_unit": 5, "late": 0.3}
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(24):
        m = str(rng.choice(modes))
        peer.misbehave(m, args.get(m))
        try:
            res = await drv.read(drv.plan(GROUP))
            seen.update(int(q) for q in res.quality)
            good = res.quality == Quality.GOOD
            assert res.values[good].tolist() == np.array(WANT)[good].tolist()
        except (ConnectError, ReadError):
            seen.add(-1)
    peer.faults.clear()
    await read_ok(drv)
    assert {Quality.GOOD, Quality.BAD, Quality.COMM_LOST} <= seen


async def test_a_failing_request_is_logged_once_per_episode(drv, peer, caplog) -> None:
    caplog.set_level("INFO", logger="drivers.modbus")
    for _ in range(3):
        peer.misbehave("exception", 2)
        peer.misbehave("ok", times=2)
    for _ in range(3):
        res = await drv.read(drv.plan(GROUP))
        assert res.quality[0] == Quality.BAD
    await read_ok(drv)
    lines = [r.getMessage() for r in caplog.records if r.name == "drivers.modbus"]
    assert len(lines) == 2, lines
    assert "ILLEGAL_DATA_ADDRESS" in lines[0] and "answering again after 3" in lines[1]


async def test_trailing_junk_after_a_valid_answer_does_not_desync(drv, peer) -> None:
    # pymodbus drops bytes after a complete frame; the next answers must still line up
    peer.misbehave("trailing", times=3)
    await read_ok(drv)
    await read_ok(drv)


async def test_a_cancelled_read_does_not_leave_its_answer_for_the_next(drv, peer) -> None:
    # the poll scheduler cancels a read that outlives its guard
    peer.misbehave("late", 0.15)
    task = asyncio.ensure_future(drv.read(drv.plan(GROUP)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not drv.connected
    await read_ok(drv)
