"""The default anomaly interlock on flags the real kernel produces (issue 13): a pump's speed
steps and current, flow and pressure follow it as the group learned them - the flow's own
drift alarm goes on, the interlock does not trip; then the flow sensor drifts away from its
peers - too slowly for its own per-tag stage, but its group alarms - and the interlock trips."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.control import safety
from agent.kernel import KernelConfig, KernelRuntime
from agent.kernel import flags as F
from agent.tags import TagTable

NAMES = ["speed", "current", "flow", "pressure"]
STEP, DRIFT_AT, N_ROWS = 900, 1200, 1500


@dataclass(frozen=True)
class Slice:
    name: str
    start: int
    stop: int


def _plant(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    warm = np.repeat(rng.uniform(40, 60, 6), 100)  # setpoint moves through the normal range
    speed = np.r_[warm, np.full(STEP - 600, 45.0), np.full(N_ROWS - STEP, 55.0)]
    speed = speed + rng.normal(0, 0.3, N_ROWS)
    flow = 2.0 * speed + rng.normal(0, 0.3, N_ROWS)
    flow[DRIFT_AT:] += 0.05 * np.arange(N_ROWS - DRIFT_AT)  # the flow sensor drifts
    return np.column_stack(
        [
            speed,
            0.2 * speed + rng.normal(0, 0.05, N_ROWS),
            flow,
            0.05 * speed + rng.normal(0, 0.02, N_ROWS),
        ]
    )


def test_a_consistent_step_does_not_trip_a_drift_against_the_peers_does() -> None:
    tb = TagTable.for_names(NAMES)
    cfg = KernelConfig.model_validate(
        {
            "tags": {"flow": {"alarm_on": ["stuck", "out_of_range", "drift"]}},
            "groups": [{"name": "pump", "tags": NAMES, "warmup_samples": 600}],
        }
    )
    rt = KernelRuntime(cfg, tb)
    flow = NAMES.index("flow")
    flags, trips, strict = [], [], []
    for r, row in enumerate(_plant()):
        tb.raw[:] = row
        tb.ts_ns[:] = r * 1_000_000_000
        rt.process(Slice("g", 0, len(NAMES)))
        f = int(tb.flags[flow])
        flags.append(f)
        trips.append(safety.input_problem(tb.value[flow], 0, f, 0, 1) is not None)
        strict.append(safety.input_problem(tb.value[flow], 0, f, 0, 1, anomaly_strict=True))
    fl = np.array(flags)
    tr = np.array(trips)
    # the speed step: the kernel sees the flow's level move, the group explains it
    assert np.any(fl[STEP:DRIFT_AT] & F.ANOMALOUS)
    assert not np.any(fl[:DRIFT_AT] & F.GROUP_ALARM)
    assert not tr[:DRIFT_AT].any()
    assert any(s is not None for s in strict[STEP:DRIFT_AT])  # `on_anomaly: any` would trip
    # the sensor drift: invisible to the flow's own stage, its group alarms, the loop trips
    assert not np.any(fl[DRIFT_AT:] & F.ANOMALOUS)
    assert tr[DRIFT_AT:].any()
    assert np.all(fl[tr] & F.GROUP_ALARM)
