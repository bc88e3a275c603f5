"""Issue 11 "done when": an independent pymodbus client samples the PLC's registers while
`edgeloop run` (a real process) starts with the output unreadable, is reloaded three times
(SIGHUP: a changed control section, a changed tag table, an identical file), hangs long
enough for the PLC's heartbeat watchdog to trip, and sees the trip reset by the operator.
Neither the command register nor the power the PLC applies may ever move faster than the
loop's rate limit, except the PLC's own step to its safe value when its watchdog trips.
"""

from __future__ import annotations

import signal
import struct
import threading
import time
from pathlib import Path

import yaml
from pymodbus.client import ModbusTcpClient

from lab.demo import Ports
from tests.system.test_service import (  # noqa: F401 - plant is the fixture
    _get,
    _start_agent,
    _wait_metric,
    _wait_status,
    _write_cfg,
    plant,
)

RATE = 5.0  # %/s, the loop's max_rate_per_s
PERIOD = 0.5
START = 10.0  # the heater command before the agent starts


def _f32(regs: list[int]) -> float:
    return struct.unpack(">f", struct.pack(">HH", *regs))[0]


class Reader(threading.Thread):
    """The independent client: (t, command, applied, tripped) every 50 ms."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.c = ModbusTcpClient("127.0.0.1", port=port, timeout=1)
        assert self.c.connect()
        self.samples: list[tuple[float, float, float, bool]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def write_f32(self, address: int, value: float) -> None:
        hi, lo = struct.unpack(">HH", struct.pack(">f", value))
        with self.lock:
            assert not self.c.write_registers(address, [hi, lo], device_id=1).isError()

    def write_reg(self, address: int, value: int) -> None:
        with self.lock:
            assert not self.c.write_register(address, value, device_id=1).isError()

    def reset_trip(self) -> None:
        with self.lock:
            assert not self.c.write_coil(1, True, device_id=1).isError()

    def run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                cmd = self.c.read_holding_registers(10, count=2, device_id=1)
                fb = self.c.read_input_registers(6, count=2, device_id=1)
                trip = self.c.read_discrete_inputs(0, count=1, device_id=1)
            if not (cmd.isError() or fb.isError() or trip.isError()):
                s = (time.monotonic(), _f32(cmd.registers), _f32(fb.registers), trip.bits[0])
                self.samples.append(s)
            time.sleep(0.05)

    def last(self) -> tuple[float, float, float, bool]:
        return self.samples[-1]


def _too_fast(samples: list[tuple[float, ...]], col: int, skip_trips: bool) -> list[str]:
    """Pairs of samples 1 s apart that moved more than the rate allows (the staircase of one
    write per period adds one period and the gate's half-period of jitter)."""
    bad = []
    j = 0
    for i, s in enumerate(samples):
        while j < len(samples) and samples[j][0] < s[0] + 1.0:
            j += 1
        if j >= len(samples):
            break
        e = samples[j]
        if skip_trips and any(x[3] != samples[max(0, i - 1)][3] for x in samples[i : j + 1]):
            continue  # the PLC's own watchdog step to its safe value (or back: reset)
        allowed = RATE * (e[0] - s[0] + PERIOD * 1.5) + 0.05
        if abs(e[col] - s[col]) > allowed:
            bad.append(f"t={s[0] - samples[0][0]:.1f}s: {s[col]:.2f} -> {e[col]:.2f}")
    return bad


def _config(tmp: Path, ports: Ports, *, readable: bool, start_output: float | None) -> Path:
    path = _write_cfg(tmp, ports)
    cfg = yaml.safe_load(path.read_text())
    heater = cfg["devices"][0]
    fast = heater["poll_groups"][0]["tags"]
    loop = cfg["control"]["loops"][0]
    loop.update(
        max_rate_per_s=RATE,
        healthy_s=None,
        plc_trip={"tag": "watchdog_tripped", "applied": "heater_power_fb"},
    )
    loop.pop("healthy_s")
    loop["interlocks"] = {"max_input_age_periods": 3, "healthy_s": 2}
    if start_output is not None:
        loop["start_output"] = start_output
    if not readable:
        # the output as a write-only register: its own device whose only read always fails
        # (the read runs past the end of the PLC's holding table)
        power = next(t for t in fast if t["name"] == "heater_power")
        fast.remove(power)
        cmd = {
            k: v for k, v in heater.items() if k not in ("name", "poll_groups", "max_gap_registers")
        }
        cmd.update(name="heater_cmd", max_gap_registers=100)
        pad = {"name": "cmd_pad", "table": "holding", "address": 100, "type": "uint16"}
        cmd["poll_groups"] = [{"name": "cmd", "interval_ms": 1000, "tags": [power, pad]}]
        cfg["devices"].insert(1, cmd)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _wait(pred, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return bool(pred())


def test_no_register_moves_faster_than_its_rate_in_any_state(plant, tmp_path: Path) -> None:  # noqa: F811
    ports, _sim = plant
    reader = Reader(ports.modbus)
    reader.write_f32(10, START)
    reader.write_reg(17, 1500)  # the PLC's heartbeat watchdog: 1.5 s
    reader.start()
    log = tmp_path / "agent.log"
    cfg = _config(tmp_path, ports, readable=False, start_output=None)
    agent = _start_agent(cfg, tmp_path)
    try:
        assert _wait_status(ports.http, "/readyz", 200, 60), log.read_text()[-3000:]
        # 1. output unknown (write-only, no start_output): nothing is written at all
        time.sleep(4.0)
        assert all(abs(s[1] - START) < 1e-6 for s in reader.samples), reader.samples[-5:]
        status = _get(ports.http, "/control")
        assert "output_unknown" in status[1], status
        # 2. reload with start_output: the loop ramps from there
        _config(tmp_path, ports, readable=False, start_output=START)
        agent.send_signal(signal.SIGHUP)
        assert _wait_metric(ports.http, 'edgeloop_config_reloads_total{result="ok"} 1', 30)
        assert _wait(lambda: abs(reader.last()[1] - START) > 2.0, 20), reader.samples[-3:]
        # 3. reload to a readable output (a new tag table), 4. an identical reload
        _config(tmp_path, ports, readable=True, start_output=None)
        agent.send_signal(signal.SIGHUP)
        assert _wait_metric(ports.http, 'edgeloop_config_reloads_total{result="ok"} 2', 30)
        time.sleep(3.0)
        agent.send_signal(signal.SIGHUP)
        assert _wait_metric(ports.http, 'edgeloop_config_reloads_total{result="ok"} 3', 30)
        time.sleep(4.0)
        assert reader.last()[1] > START + 5.0  # control ran on through every reload
        # 5. the agent hangs: the PLC's watchdog trips and applies its safe value (0 %)
        agent.send_signal(signal.SIGSTOP)
        assert _wait(lambda: reader.last()[3], 10)
        agent.send_signal(signal.SIGCONT)
        assert _wait(lambda: '"plc_tripped"' in _get(ports.http, "/control")[1], 10)
        # the command follows what the PLC applies, at the rate limit, and does not wind up
        assert _wait(lambda: reader.last()[1] < 0.5, 60), reader.samples[-3:]
        # 6. the operator resets the trip: the applied power ramps from 0, no step
        reader.reset_trip()
        assert _wait(lambda: not reader.last()[3], 5)
        assert _wait(lambda: reader.last()[2] > 3.0, 30), reader.samples[-3:]
        time.sleep(2.0)
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGCONT)
            agent.send_signal(signal.SIGTERM)
            agent.wait(15)
        reader.stop.set()
        reader.join(5)
    samples = reader.samples
    assert len(samples) > 300
    assert not _too_fast(samples, 1, skip_trips=False), _too_fast(samples, 1, False)[:5]
    assert not _too_fast(samples, 2, skip_trips=True), _too_fast(samples, 2, True)[:5]
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
