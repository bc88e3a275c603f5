"""The pure loop step with the shipped model: every interlock falls back within one period,
the output never leaves its bounds or rate limit, transfers are bumpless."""

from __future__ import annotations

import dataclasses
import math

import pytest

from agent.control import loop as L
from agent.control import safety
from agent.control.pid import Pid
from agent.control.policy import MODELS_DIR, Policy
from agent.control.settings import DEFAULT_KP, DEFAULT_TI_S, InterlockConfig
from agent.kernel import flags as F
from hw_sim.plant.heater import HeaterPlant

PERIOD = 0.5
RATE_STEP = 12.5  # 25 %/s
NS = 1_000_000_000
STUCK_ALARM = F.ANOMALOUS | F.STUCK  # the kernel's alarm on a stuck sensor


class NanPolicy(Policy):
    """The real model runs; its output is replaced by NaN while `nan` is set (fault injection)."""

    nan = False

    def invoke(self, fs):  # type: ignore[no-untyped-def]
        y = super().invoke(fs)
        return math.nan if self.nan else y


@pytest.fixture(scope="module")
def policy() -> NanPolicy:
    return NanPolicy(
        MODELS_DIR / "heater_policy.tflite", signals=["pv", "flow", "inlet_temp"], period_ms=500
    )


def _spec(fallback: str = "pid", healthy_s: float = 5.0) -> L.LoopSpec:
    return L.LoopSpec(
        name="t",
        period_s=PERIOD,
        roles=("pv", "flow", "inlet_temp"),
        envelope=safety.Envelope(0.0, 100.0, RATE_STEP),
        fallback=fallback,
        pid=Pid(kp=DEFAULT_KP, ti_s=DEFAULT_TI_S),
        fixed_value=5.0,
        max_input_age_s=3 * PERIOD,
        healthy_s=healthy_s,
        policy_roles=(0, 1, 2),
    )


class Rig:
    """The heater plant, the loop state and a clock; `tick()` runs one period."""

    def __init__(self, policy: Policy, spec: L.LoopSpec, mode: str = "auto", sp: float = 50.0):
        self.plant = HeaterPlant(seed=2, disturbances=False)
        self.plant.settle(0.0, temp_c=45.0)
        self.policy, self.spec, self.sp = policy, spec, sp
        self.st = L.LoopState(mode=mode, last_u=self.plant.power_pct)
        self.st.fs = policy.new_state()
        self.now = 10**18
        self.outputs: list[float] = [self.plant.power_pct]
        self.fault: dict = {}
        self.pvs: list[float] = []

    def tick(self) -> L.Decision:
        o = self.plant.outputs()
        inp = L.LoopInputs(
            now_ns=self.now,
            sp=self.sp,
            values=[o["tank_temp"], o["inlet_flow"], o["inlet_temp"]],
            quality=[0, 0, 0],
            flags=[0, 0, 0],
            ts_ns=[self.now] * 3,
        )
        for key, val in self.fault.items():  # list fields of LoopInputs
            getattr(inp, key)[:] = val
        self.pvs.append(inp.values[0])
        d = L.step(self.spec, self.policy, self.st, inp)
        if d.command is not None:
            assert 0.0 <= d.command <= 100.0
            assert abs(d.command - self.outputs[-1]) <= RATE_STEP + 1e-9
            self.outputs.append(d.command)
            self.plant.power_pct = d.command
        self.plant.step(PERIOD)
        self.now += int(PERIOD * NS)
        return d

    def run(self, n: int) -> list[L.Decision]:
        return [self.tick() for _ in range(n)]


def _on_model(rig: Rig) -> None:
    ds = rig.run(40)
    assert ds[-1].active == "model", ds[-1]


def _inject(rig: Rig, **fault: object) -> L.Decision:
    rig.fault = dict(fault)
    return rig.tick()


@pytest.mark.parametrize(
    "fault, reason",
    [
        ({"ts_ns": [0, 0, 0]}, safety.STALE_INPUT),
        ({"quality": [0, 1, 0]}, safety.BAD_QUALITY),
        ({"quality": [3, 3, 3]}, safety.COMM_LOST),
        ({"flags": [STUCK_ALARM, 0, 0]}, safety.ANOMALY),
        ({"values": [math.nan, 10.0, 20.0]}, safety.BAD_QUALITY),
    ],
    ids=["stale", "bad_quality", "comm_lost", "anomaly", "nan_input"],
)
def test_input_interlock_falls_back_in_the_same_period(
    policy: NanPolicy, fault: dict, reason: str
) -> None:
    rig = Rig(policy, _spec())
    _on_model(rig)
    d = _inject(rig, **fault)
    assert d.active == "fallback" and d.entered_fallback
    assert reason in d.reasons
    rig.run(10)  # fault persists: stays on the fallback, inside the envelope (checked in tick)
    assert rig.st.in_fallback


def test_nan_from_the_model_falls_back(policy: NanPolicy) -> None:
    rig = Rig(policy, _spec())
    _on_model(rig)
    policy.nan = True
    try:
        d = rig.tick()
        assert d.active == "fallback" and safety.MODEL_NAN in d.reasons
        assert math.isfinite(d.command or math.nan)
    finally:
        policy.nan = False


def test_failed_write_falls_back(policy: NanPolicy) -> None:
    rig = Rig(policy, _spec())
    _on_model(rig)
    rig.fault = {}
    o = rig.plant.outputs()
    inp = L.LoopInputs(
        rig.now,
        rig.sp,
        [o["tank_temp"], o["inlet_flow"], o["inlet_temp"]],
        [0] * 3,
        [0] * 3,
        [rig.now] * 3,
        write_ok=False,
    )
    d = L.step(rig.spec, policy, rig.st, inp)
    assert d.active == "fallback" and safety.WRITE_FAILED in d.reasons


def test_returns_to_model_only_after_healthy_time_and_bumplessly(policy: NanPolicy) -> None:
    rig = Rig(policy, _spec(healthy_s=5.0))
    _on_model(rig)
    _inject(rig, flags=[STUCK_ALARM, 0, 0])
    rig.run(20)  # 10 s on the PID while the anomaly lasts
    rig.fault = {}
    ds = rig.run(12)
    actives = [d.active for d in ds]
    first_model = actives.index("model")
    assert first_model * PERIOD >= 5.0 - PERIOD  # not before healthy_s
    k = len(rig.outputs) - len(ds) + first_model
    assert abs(rig.outputs[k] - rig.outputs[k - 1]) < 2.0  # blended in, no step


def test_model_to_pid_switch_is_bumpless(policy: NanPolicy) -> None:
    rig = Rig(policy, _spec())
    _on_model(rig)
    before = rig.outputs[-1]
    _inject(rig, flags=[STUCK_ALARM, 0, 0])
    # the PID tracked the model's output: its first move is only what its law gives for one
    # period (proportional on the pv change + one period of integral), no jump to its own
    # idea of the output
    pv0, pv1 = rig.pvs[-2], rig.pvs[-1]
    law = DEFAULT_KP * (abs(pv1 - pv0) + abs(rig.sp - pv1) * PERIOD / DEFAULT_TI_S)
    assert abs(rig.outputs[-1] - before) <= law + 1e-6


def test_manual_and_back_are_bumpless(policy: NanPolicy) -> None:
    rig = Rig(policy, _spec(healthy_s=0.0))
    _on_model(rig)
    last = rig.outputs[-1]
    rig.st.mode = "manual"
    d = rig.tick()
    assert d.active == "manual" and d.command == pytest.approx(last)
    rig.st.manual_u = 80.0  # operator asks for a jump: rate-limited like everything else
    d = rig.tick()
    assert d.command == pytest.approx(last + RATE_STEP)
    rig.run(6)
    rig.st.mode, rig.st.in_fallback = "auto", True
    d = rig.tick()
    assert d.active == "model" and d.command == pytest.approx(80.0, abs=1e-6)


def test_pid_holds_when_its_own_measurement_is_bad(policy: NanPolicy) -> None:
    rig = Rig(policy, _spec())
    _on_model(rig)
    last = rig.outputs[-1]
    rig.fault = {"quality": [3, 0, 0]}
    ds = rig.run(5)
    assert all(d.active == "fallback" for d in ds)
    assert rig.outputs[-5:] == [last] * 5


@pytest.mark.parametrize("kind, expect", [("hold", None), ("fixed", 5.0)])
def test_hold_and_fixed_fallbacks(policy: NanPolicy, kind: str, expect: float | None) -> None:
    rig = Rig(policy, _spec(fallback=kind))
    _on_model(rig)
    last = rig.outputs[-1]
    rig.fault = {"quality": [0, 3, 0]}
    rig.run(30)
    target = last if expect is None else expect
    assert rig.outputs[-1] == pytest.approx(target)  # reached through the rate limit


def test_shadow_runs_the_model_but_the_fallback_drives(policy: NanPolicy) -> None:
    rig = Rig(policy, _spec(), mode="shadow")
    ds = rig.run(20)
    assert all(d.active == "fallback" for d in ds)
    assert all(math.isfinite(d.model_u) for d in ds)


def test_off_writes_nothing(policy: NanPolicy) -> None:
    rig = Rig(policy, _spec(), mode="off")
    assert all(d.command is None for d in rig.run(5))


def test_auto_starts_on_fallback_until_healthy(policy: NanPolicy) -> None:
    rig = Rig(policy, _spec(healthy_s=3.0))
    ds = rig.run(10)
    assert ds[0].active == "fallback"
    assert ds[-1].active == "model"


def test_envelope() -> None:
    env = safety.Envelope(10.0, 90.0, 5.0)
    assert env.apply(200.0, 50.0) == (55.0, True)
    assert env.apply(-5.0, 12.0) == (10.0, True)
    assert env.apply(math.nan, 40.0) == (40.0, True)
    assert env.apply(52.0, 50.0) == (52.0, False)
    # an unknown present value: a rate-limited envelope produces nothing to write
    safe, refused = env.apply(95.0, math.nan)
    assert math.isnan(safe) and refused
    assert math.isnan(env.apply(50.0, math.nan)[0])
    # without a rate limit there is nothing to ramp: clamp only
    assert safety.Envelope(10.0, 90.0).apply(95.0, math.nan) == (90.0, True)


def test_pid_keeps_controlling_on_an_anomalous_but_live_measurement(policy: NanPolicy) -> None:
    rig = Rig(policy, _spec(), sp=55.0)
    _on_model(rig)
    rig.fault = {"flags": [STUCK_ALARM, 0, 0]}
    rig.run(60)
    assert len(set(rig.outputs[-60:])) > 10  # the PID acts, it does not freeze the output


# the flags word the kernel leaves on an input -> does the default interlock trip?
SENSOR_CASES = [
    (0, False),
    (F.ANOMALOUS | F.DRIFT, False),  # a measured disturbance stepped (drift alarm)
    (F.ANOMALOUS, False),  # score alarm, or the tail of a drift alarm
    (F.ANOMALOUS | F.DRIFT | F.SPIKE, False),  # the step's half Hampel window of spikes
    (F.STUCK, False),  # STUCK without the alarm: `stuck` not among its alarm causes
    (F.GROUP_ALARM, True),  # its group disagrees; its own stage sees nothing (a slow ramp)
    (F.ANOMALOUS | F.STUCK, True),
    (F.ANOMALOUS | F.OUT_OF_RANGE, True),
    (F.ANOMALOUS | F.INVALID, True),
    (F.ANOMALOUS | F.DRIFT | F.GROUP_ALARM, True),  # a drift its group does not explain
    (F.ANOMALOUS | F.SPIKE, True),  # a burst of outliers around a steady level
]


@pytest.mark.parametrize("flags, trips", SENSOR_CASES, ids=[str(c[0]) for c in SENSOR_CASES])
def test_default_interlock_trips_on_sensor_faults_only(flags: int, trips: bool) -> None:
    got = safety.input_problem(20.0, 0, flags, 0, NS)
    assert got == (safety.ANOMALY if trips else None)
    strict = safety.input_problem(20.0, 0, flags, 0, NS, anomaly_strict=True)
    assert strict == (safety.ANOMALY if flags & (F.ANOMALOUS | F.GROUP_ALARM) else None)
    off = safety.input_problem(20.0, 0, flags, 0, NS, check_anomaly=False)
    assert off is None


def test_a_drift_alarm_on_a_disturbance_keeps_the_model_unless_strict(policy: NanPolicy) -> None:
    for strict in (False, True):
        rig = Rig(policy, dataclasses.replace(_spec(), anomaly_strict=strict))
        _on_model(rig)
        rig.fault = {"flags": [0, 0, F.ANOMALOUS | F.DRIFT]}
        ds = rig.run(10)
        assert [d.active for d in ds] == (["fallback"] * 10 if strict else ["model"] * 10)


@pytest.mark.parametrize(
    "yaml_value, mode", [(True, "sensor_fault"), (False, "off"), ("any", "any")]
)
def test_on_anomaly_setting(yaml_value: object, mode: str) -> None:
    assert InterlockConfig().on_anomaly == "sensor_fault"
    assert InterlockConfig.model_validate({"on_anomaly": yaml_value}).on_anomaly == mode
