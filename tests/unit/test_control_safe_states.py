"""Issue 11 items 2-4 on the pure loop step: no write from an unknown output, a PID that
starts from the present output, and the PLC-tripped state (track what the PLC applies, no
wind-up, a ramp after the reset)."""

from __future__ import annotations

import itertools
import math

from agent.control import loop as L
from agent.control import safety
from agent.control.pid import Pid

PERIOD = 0.5
RATE = 5.0  # %/s
STEP = RATE * PERIOD
NS = 1_000_000_000


def _spec(fallback: str = "pid") -> L.LoopSpec:
    return L.LoopSpec(
        name="t",
        period_s=PERIOD,
        roles=("pv",),
        envelope=safety.Envelope(0.0, 100.0, STEP),
        fallback=fallback,
        pid=Pid(kp=2.7, ti_s=17.8, out_min=0.0, out_max=100.0),
        max_input_age_s=3 * PERIOD,
        healthy_s=2.0,
    )


def _inp(now: int, pv: float, sp: float = 55.0, **kw: object) -> L.LoopInputs:
    return L.LoopInputs(now_ns=now, sp=sp, values=[pv], quality=[0], flags=[0], ts_ns=[now], **kw)


def test_unknown_output_is_never_written_even_by_the_pid() -> None:
    """Observed: 83 % first write from the PID in auto with the output unreadable."""
    spec, st = _spec(), L.LoopState(mode="manual")
    st.manual_u = 100.0  # an operator's manual output while the PLC value is unknown
    for k in range(10):
        d = L.step(spec, None, st, _inp(k * NS, pv=20.0))
        assert d.command is None
        assert safety.OUTPUT_UNKNOWN in d.reasons
    st.mode = "shadow"  # the PID, far below setpoint, would ask for 100 %
    d = L.step(spec, None, st, _inp(11 * NS, pv=20.0))
    assert d.command is None and safety.OUTPUT_UNKNOWN in d.reasons


def test_known_output_ramps_from_it_in_every_mode() -> None:
    spec = _spec()
    for mode in ("manual", "shadow"):
        st = L.LoopState(mode=mode, last_u=10.0)
        st.manual_u = 100.0
        outs = [L.step(spec, None, st, _inp(k * NS, pv=20.0)).command for k in range(5)]
        assert outs[0] is not None and abs(outs[0] - 10.0) <= STEP + 1e-9, mode
        assert all(abs(b - a) <= STEP + 1e-9 for a, b in itertools.pairwise(outs))


def test_pid_starts_from_the_present_output_not_a_zero_integral() -> None:
    """Observed: a reload moved the heater 94.6 -> 19.5 % because the PID started at I=0."""
    spec = _spec()
    spec = L.LoopSpec(**{**spec.__dict__, "envelope": safety.Envelope(0.0, 100.0)})  # no rate
    st = L.LoopState(mode="shadow", last_u=94.6)
    d = L.step(spec, None, st, _inp(0, pv=54.0, sp=55.0))  # near setpoint: a small correction
    assert d.command is not None and abs(d.command - 94.6) < 5.0, d.command


def test_plc_trip_tracks_the_applied_value_and_the_reset_is_a_ramp() -> None:
    spec = _spec()
    st = L.LoopState(mode="shadow", last_u=60.0)
    now = 0
    outs: list[float] = []
    # tripped: the PLC applies 0 % (its safe value); pv falls far below setpoint
    for _ in range(40):
        d = L.step(spec, None, st, _inp(now, pv=30.0, tripped=True, applied=0.0))
        now += int(PERIOD * NS)
        assert d.active == "plc_tripped" and safety.PLC_TRIPPED in d.reasons
        assert d.command is not None
        outs.append(d.command)
    assert outs[-1] == 0.0  # followed what the PLC applies, never wound up toward 100 %
    assert max(outs) <= 60.0
    # reset: the PID takes over from the applied 0 % and ramps, never steps
    prev = outs[-1]
    for _ in range(10):
        d = L.step(spec, None, st, _inp(now, pv=30.0))
        now += int(PERIOD * NS)
        assert d.active == "fallback" and d.command is not None
        assert abs(d.command - prev) <= STEP + 1e-9
        prev = d.command
    assert prev > 0.0


def test_plc_trip_leaves_the_model_with_a_reason() -> None:
    """Observed: the model reported in charge with no reason while the PLC applied 0 %."""
    spec = _spec()
    st = L.LoopState(mode="auto", last_u=50.0, in_fallback=False)
    d = L.step(spec, None, st, _inp(0, pv=50.0, tripped=True, applied=0.0))
    assert d.active == "plc_tripped"
    assert st.in_fallback and d.entered_fallback
    assert not math.isnan(d.command or math.nan)


def test_manual_mode_started_before_the_output_is_known_holds_the_plc_value() -> None:
    """Found commissioning on the service: manual mode with no manual_output took the
    envelope's low bound as its output while the PLC value was still unknown, then ramped
    the real valve down to it once the value was read."""
    spec = _spec()
    st = L.LoopState(mode="manual")
    assert L.step(spec, None, st, _inp(0, pv=20.0)).command is None  # unknown: nothing
    st.last_u = 61.7  # the runner seeded it from the PLC's read
    outs = [L.step(spec, None, st, _inp(k * NS, pv=20.0)).command for k in range(1, 6)]
    assert outs == [61.7] * 5
