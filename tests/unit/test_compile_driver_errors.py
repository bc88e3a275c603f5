"""Whatever a driver raises while the config is compiled is a file:line problem, and a reload
that changes a serial line's settings compiles while the old config's drivers still live."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, parse_config
from agent.tags import compile_config

ROOT = Path(__file__).resolve().parents[2]
RTU = (ROOT / "config/examples/modbus_rtu.yaml").read_text()


def test_a_reload_that_fixes_the_baudrate_compiles_beside_the_running_config() -> None:
    running = compile_config(parse_config(RTU, "old.yaml"))
    assert "baudrate: 19200" in RTU
    fixed = compile_config(parse_config(RTU.replace("baudrate: 19200", "baudrate: 9600")))
    old_link = running.drivers["rs485_line"]._link  # type: ignore[attr-defined]
    new_link = fixed.drivers["rs485_line"]._link  # type: ignore[attr-defined]
    assert old_link is not new_link and new_link.serial_params[0] == 9600


def test_an_unexpected_driver_failure_is_a_config_problem_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A driver bug at build time (here: the factory raising KeyError) names the device."""
    import drivers.modbus

    def broken(device_cfg: object, groups: object) -> None:
        raise KeyError("baud table")

    monkeypatch.setattr(drivers.modbus, "create", broken)
    with pytest.raises(ConfigError) as err:
        compile_config(parse_config(RTU, "plant.yaml"))
    (issue,) = err.value.issues
    assert (issue.file, issue.path) == ("plant.yaml", "devices[0]")
    assert issue.message == "driver refused the device: KeyError: 'baud table'"
    assert issue.line == 8
