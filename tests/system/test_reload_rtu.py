"""A SIGHUP reload on a Modbus RTU line: two masters on one serial line would collide, so the
serial device is handed over break-before-make, and the loop goes on writing afterwards from
where it was (real `edgeloop run`, hw_sim's RTU server on a socat pseudo-terminal pair)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.fixtures.ports import free_port
from tests.system.test_service import _start_agent, _wait_metric, _wait_status

CONFIG = """
site: rtu-reload
devices:
  - name: heater_rtu
    driver: modbus
    transport: rtu
    serial_port: {port}
    baudrate: 115200
    unit_id: 1
    timeout_s: 0.2
    retries: 1
    backoff_initial_s: 0.2
    backoff_max_s: 1.0
    poll_groups:
      - name: fast
        interval_ms: 500
        tags:
          - {{name: tank_temp, table: input, address: 0, type: float32, min: 0, max: 120}}
          - {{name: heater_power, table: holding, address: 10, type: float32, writable: true,
             min: 0, max: 100}}
          - {{name: heartbeat, table: holding, address: 16, type: uint16, writable: true,
             min: 0, max: 65535}}
control:
  loops:
    - name: tank
      period_ms: 500
      inputs: {{pv: tank_temp}}
      output: heater_power
      setpoint: {{value: 50}}
      mode: manual
      manual_output: {manual}
      max_rate_per_s: 5
      fallback: {{kind: hold}}
      heartbeat: {{tag: heartbeat}}
store: {{enabled: false}}
http: {{port: {http}}}
"""


def _power(sim) -> float:  # type: ignore[no-untyped-def]
    return float(sim.plant.values()["heater_power"])


def test_reload_on_a_serial_line_is_break_before_make(rtu_sim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rtu_sim.plant.write("heater_power", 20.0)
    http = free_port()
    cfg = tmp_path / "rtu.yaml"
    cfg.write_text(CONFIG.format(port=rtu_sim.serial_port, manual=40, http=http))
    agent = _start_agent(cfg, tmp_path)
    log = tmp_path / "agent.log"
    try:
        assert _wait_status(http, "/readyz", 200, 60), log.read_text()[-3000:]
        time.sleep(2.0)
        before = _power(rtu_sim)
        assert 20.0 < before < 40.0  # ramping toward the manual output at 5 %/s
        beats0 = rtu_sim.plant.values()["heartbeat"]
        agent.send_signal(signal.SIGHUP)
        assert _wait_metric(http, 'edgeloop_config_reloads_total{result="ok"} 1', 30)
        time.sleep(3.0)
        after = _power(rtu_sim)
        assert after > before  # the ramp went on from where it was, through the handover
        assert after - before <= 5.0 * 3.5 + 3.0  # and never faster than the rate
        assert rtu_sim.plant.values()["heartbeat"] > beats0
        text = log.read_text()
        assert "handed over break-before-make" in text
        assert "control carried over (bumpless): tank" in text
        assert "Traceback" not in text
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(15)
