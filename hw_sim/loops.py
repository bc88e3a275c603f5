"""The loop plants behind their own simulated PLCs (opt-in: `SimPlant(loops=...)`, `--loops`).

Each loop (`surge`, `exchanger`; see `hw_sim.pointmap.LOOPS`) is a pure model from
`hw_sim.plant` behind a small PLC program, the same for every loop:

* applied output (`<loop>_valve_fb`, what the model sees) = the command `<loop>_valve_cmd`,
  or `<loop>_safe_output` while the heartbeat watchdog is tripped;
* heartbeat watchdog as on the heater PLC: armed by the first change of `<loop>_heartbeat`;
  if it then does not change for `<loop>_watchdog_timeout_ms` (default 3000; 0 disables),
  `<loop>_watchdog_tripped` latches until `<loop>_fault_reset`, which restarts the timeout;
* status word `<loop>_status`: bit 0 watchdog tripped, bit 1 watchdog armed.

The model's parameters are drawn from the loop seed; the command starts at the valve opening
that holds the model's starting steady state, so a client reading `<loop>_valve_fb` at start
sees the plant at rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hw_sim import pointmap
from hw_sim.plant.exchanger import ExchangerPlant
from hw_sim.plant.surge import SurgePlant

MODELS: dict[str, Any] = {"surge": SurgePlant, "exchanger": ExchangerPlant}
DEFAULT_WATCHDOG_MS = 3000


class LoopPLC:
    """One loop model and its PLC logic.  Not locked: `SimPlant` holds its lock around calls."""

    def __init__(
        self, name: str, seed: int, clock: Callable[[], float], disturbances: bool = True
    ) -> None:
        self.name = name
        self.spec = pointmap.LOOPS[name]
        self.model = MODELS[name](seed=seed, disturbances=disturbances)
        self.seed = seed
        self._clock = clock
        self._p = name + "_"
        self._pv = self._p + self.spec.pv[0]
        self._dist = self._p + self.spec.disturbance[0]
        self._out = self._p + self.spec.output[0]
        self.cmd = {
            "cmd": self.model.valve_pct,
            "safe_output": 0.0,
            "heartbeat": 0.0,
            "watchdog_timeout_ms": float(DEFAULT_WATCHDOG_MS),
        }
        self.wd_armed = False
        self.wd_last_change = 0.0
        self.watchdog_tripped = False
        self.scan()

    @property
    def params(self) -> Any:
        """The model's true parameters (for tests and benches; never served)."""
        return self.model.params

    def restart_clock(self) -> None:
        """The clock changed (real time started): restart the watchdog timeout from now."""
        self.wd_last_change = self._clock()

    # -- PLC logic ------------------------------------------------------------------------
    def scan(self) -> None:
        """Watchdog check, then the applied output to the model."""
        timeout_ms = self.cmd["watchdog_timeout_ms"]
        if (
            self.wd_armed
            and timeout_ms > 0
            and not self.watchdog_tripped
            and self._clock() - self.wd_last_change > timeout_ms / 1000.0
        ):
            self.watchdog_tripped = True
        self.model.valve_pct = self.cmd["safe_output" if self.watchdog_tripped else "cmd"]

    def step(self, dt_s: float) -> None:
        self.scan()
        self.model.step(dt_s)
        self.scan()

    def write(self, point: str, value: float) -> None:
        """A validated write of one of this loop's points (full point name)."""
        key = point[len(self._p) :]
        if key == "fault_reset":
            if value >= 0.5:
                self.watchdog_tripped = False
                self.wd_last_change = self._clock()
        elif key == "heartbeat":
            if value != self.cmd["heartbeat"]:  # only a change proves the writer alive
                self.wd_armed = True
                self.wd_last_change = self._clock()
            self.cmd["heartbeat"] = value
        elif key == f"{self.spec.output[0]}_cmd":
            self.cmd["cmd"] = value
        else:
            self.cmd[key] = value
            if key == "watchdog_timeout_ms":
                self.wd_last_change = self._clock()
        self.scan()

    # -- observation ----------------------------------------------------------------------
    def signals(self) -> dict[str, float]:
        """Measured signals by point name (before sensor faults)."""
        o = self.model.outputs()
        return {
            self._pv: o[self.model.PV],
            self._dist: o[self.model.DISTURBANCE],
            self._out + "_fb": o["valve"],
        }

    def commands(self) -> dict[str, float]:
        """Command and status points by point name."""
        status = (int(self.watchdog_tripped) << pointmap.LOOP_STATUS_BITS["watchdog_tripped"]) | (
            int(self.wd_armed) << pointmap.LOOP_STATUS_BITS["watchdog_armed"]
        )
        p = self._p
        return {
            self._out + "_cmd": self.cmd["cmd"],
            p + "safe_output": self.cmd["safe_output"],
            p + "heartbeat": self.cmd["heartbeat"],
            p + "watchdog_timeout_ms": self.cmd["watchdog_timeout_ms"],
            p + "fault_reset": 0.0,
            p + "watchdog_tripped": float(self.watchdog_tripped),
            p + "status": float(status),
        }

    def truth(self) -> dict[str, float]:
        return {self._p + k: v for k, v in self.model.true_state().items()}
