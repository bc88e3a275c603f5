"""Kernel defaults by signal kind: discrete tags (bool, bit, unscaled integers, strings) pass
the kernel with their exact values; analog tags are still smoothed; an explicit per-tag
setting wins over the kind's defaults (issue 13)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.config import load_config
from agent.kernel import flags as F
from agent.kernel.runtime import KernelRuntime
from agent.kernel.settings import KernelConfig, signal_kind
from agent.tags import TagTable, compile_config
from drivers.base import Point

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "dtype, scale, kind",
    [
        ("bool", 1.0, "discrete"),
        ("bit", 1.0, "discrete"),
        ("string", 1.0, "discrete"),
        ("uint16", 1.0, "discrete"),
        ("int32", 1.0, "discrete"),
        ("uint64", 1.0, "discrete"),
        ("int16", 0.1, "analog"),  # tenths of a degree: a measurement sent as an integer
        ("float32", 1.0, "analog"),
        ("float64", 1.0, "analog"),
    ],
)
def test_signal_kind_from_the_configured_type(dtype: str, scale: float, kind: str) -> None:
    assert signal_kind(dtype, scale) == kind


def test_kind_defaults_sit_between_kernel_defaults_and_the_tag_override() -> None:
    cfg = KernelConfig.model_validate(
        {
            "defaults": {
                "filter": "kalman",
                "hampel_window": 9,
                "rate_limit_per_s": 5.0,
                "alarm_on": ["stuck", "drift", "score", "out_of_range"],
                "stuck_samples": 30,
            },
            "tags": {"counter_smoothed": {"filter": "ewma", "alarm_on": ["drift"]}},
        }
    )
    flt = cfg.params_for("x", "analog")
    assert (flt.filter, flt.hampel_window, flt.rate_limit_per_s) == ("kalman", 9, 5.0)
    assert flt.alarm_on == ("stuck", "drift", "score", "out_of_range")
    dis = cfg.params_for("x", "discrete")
    assert (dis.filter, dis.hampel_window, dis.rate_limit_per_s) == ("none", 0, None)
    assert dis.alarm_on == ("stuck", "out_of_range")  # no level alarms on a state or a count
    assert dis.stuck_samples == 30  # what the kind does not set still comes from defaults
    own = cfg.params_for("counter_smoothed", "discrete")
    assert (own.filter, own.alarm_on) == ("ewma", ("drift",))  # explicit setting wins
    assert own.hampel_window == 0


def test_discrete_tags_pass_the_kernel_bit_identical_and_floats_are_smoothed() -> None:
    rng = np.random.default_rng(4)
    n = 600
    bools = (rng.random(n) < 0.3).astype(float)  # toggles often: an EWMA would blur it
    status = rng.integers(0, 2**16, n).astype(float)  # a status word: any bit pattern
    counter = np.cumsum(rng.integers(0, 3, n)).astype(float) + 2.0**40  # large, exact
    flt = 20.0 + rng.normal(0, 0.1, n)
    points = [
        Point("b", 0, "bool"),
        Point("s", 1, "uint16"),
        Point("c", 2, "uint64"),
        Point("f", 3, "float32"),
    ]
    tb = TagTable.from_points(points, ["d"] * 4)
    assert tb.kinds == ["discrete", "discrete", "discrete", "analog"]
    # a user who asks for level alarms on everything does not get them on discrete tags
    cfg = KernelConfig.model_validate({"defaults": {"alarm_on": ["drift", "score", "stuck"]}})
    res = KernelRuntime(cfg, tb).run(np.column_stack([bools, status, counter, flt]))
    for j, col in enumerate((bools, status, counter)):
        assert res.value[:, j].tobytes() == col.tobytes()  # bit-identical
        assert not np.any(res.flags[:, j] & (F.ANOMALOUS | F.SPIKE | F.RATE_LIMITED))
    assert not np.array_equal(res.value[:, 3], flt)  # the float is still filtered
    assert res.value[50:, 3].std() < 0.8 * flt[50:].std()


def test_default_config_kinds() -> None:
    table = compile_config(load_config(ROOT / "config" / "edgeloop.yaml")).table
    kinds = dict(zip(table.names, table.kinds, strict=True))
    for name in ("status_word", "low_flow_alarm", "uptime_s", "heater_cycles", "heater_enable"):
        assert kinds[name] == "discrete", name
    assert kinds["device_model"] == "discrete"
    for name in ("tank_temp", "ambient_temp", "pump_flow", "energy_kwh"):
        assert kinds[name] == "analog", name
