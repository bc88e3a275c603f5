"""The plant test state machine on a first-order-plus-dead-time plant simulated here: step,
PRBS inside the range, return to the start value; an abort returns at once."""

from __future__ import annotations

import itertools
import math

import pytest

from agent.control.plant_test import PlantTest
from agent.control.safety import Envelope

DT = 0.5


class Fopdt:
    def __init__(self, k: float, tau: float, theta: float, y0: float, u0: float) -> None:
        self.k, self.tau, self.y, self.u0, self.y0 = k, tau, y0, u0, y0
        self.buf = [u0] * max(1, round(theta / DT))

    def step(self, u: float) -> float:
        self.buf.append(u)
        ud = self.buf.pop(0)
        target = self.y0 + self.k * (ud - self.u0)
        self.y += (target - self.y) * (1 - math.exp(-DT / self.tau))
        return self.y


def _drive(test: PlantTest, plant: Fopdt, env: Envelope, abort_at: float | None = None):  # type: ignore[no-untyped-def]
    last, t, us, phases = test.u0, 0.0, [], []
    y = plant.y
    while test.phase != "done" and t < 10 * test.budget_s:
        if abort_at is not None and t >= abort_at:
            test.abort("interrupted")
        u, _ = env.apply(test.target(t, y), last)
        assert env.lo <= u <= env.hi and abs(u - last) <= env.max_step + 1e-9
        last = u
        y = plant.step(u)
        us.append(u)
        phases.append(test.phase)
        if test.phase == "return" and abs(last - test.u0) < 1e-9:
            test.returned()
        t += DT
    return us, phases, t


def test_step_then_prbs_then_back_to_the_start() -> None:
    env = Envelope(0.0, 100.0, 20.0 * DT)
    plant = Fopdt(k=0.8, tau=20.0, theta=4.0, y0=40.0, u0=30.0)
    test = PlantTest(u0=30.0, lo=0.0, hi=100.0, amplitude=10.0, budget_s=600.0, period_s=DT)
    us, phases, t = _drive(test, plant, env)
    assert test.phase == "done" and test.abort_reason is None
    assert us[-1] == 30.0  # where it was found
    assert set(phases) >= {"baseline", "step", "prbs", "return"}
    assert test.step is not None
    assert test.step.gain == pytest.approx(0.8, rel=0.15)
    assert 2.0 <= test.step.dead_time_s <= 7.0
    prbs = [u for u, p in zip(us, phases, strict=True) if p == "prbs"]
    # levels 10 either side of a centre that the slow integral action keeps near u0
    assert max(prbs) - min(prbs) <= 20.0 + 6.0 and max(prbs) - min(prbs) >= 19.0
    assert 25.0 <= sum(prbs) / len(prbs) <= 35.0
    switches = sum(1 for a, b in itertools.pairwise(prbs) if a != b)
    assert switches >= 10  # it excites
    assert t <= 1.2 * 600.0


def test_amplitude_squeezed_against_a_bound() -> None:
    test = PlantTest(u0=95.0, lo=0.0, hi=100.0, amplitude=10.0, budget_s=300.0, period_s=DT)
    plant = Fopdt(k=1.0, tau=5.0, theta=1.0, y0=0.0, u0=95.0)
    us, _, _ = _drive(test, plant, Envelope(0.0, 100.0, 50.0))
    assert max(us) <= 100.0 and min(us) >= 80.0
    assert test.step is not None and test.step.du == -10.0  # toward the roomier side


def test_a_drifting_plant_is_kept_in_its_band_by_the_centre() -> None:
    """A load walks pv away during the PRBS; the centre's integral action brings it back."""
    env = Envelope(0.0, 100.0, 20.0 * DT)
    plant = Fopdt(k=0.8, tau=20.0, theta=4.0, y0=40.0, u0=30.0)
    test = PlantTest(
        u0=30.0, lo=0.0, hi=100.0, amplitude=5.0, budget_s=900.0, period_s=DT, pv_dev_max=6.0
    )
    last, t, devs = 30.0, 0.0, []
    y = plant.y
    while test.phase != "done" and t < 3000:
        if test.phase == "prbs" and t > 300:
            plant.u0 = 20.0  # an unmeasured load: the plant now holds 40 at 20 %, not 30 %
        u, _ = env.apply(test.target(t, y), last)
        last = u
        y = plant.step(u)
        if test.phase == "prbs" and t > 500:
            devs.append(abs(y - 40.0))
        if test.phase == "return" and abs(last - test.u0) < 1e-9:
            test.returned()
        t += DT
    assert test.phase == "done" and devs
    assert max(devs[len(devs) // 2 :]) < 6.0  # back inside the allowed excursion


def test_an_abort_ramps_back_at_the_rate_limit() -> None:
    env = Envelope(0.0, 100.0, 2.0 * DT)
    plant = Fopdt(k=0.8, tau=20.0, theta=4.0, y0=40.0, u0=30.0)
    test = PlantTest(u0=30.0, lo=0.0, hi=100.0, amplitude=10.0, budget_s=600.0, period_s=DT)
    us, phases, _ = _drive(test, plant, env, abort_at=60.0)
    assert test.abort_reason == "interrupted"
    assert us[-1] == 30.0 and test.phase == "done"
    assert phases[-1] == "return" and "prbs" not in phases  # aborted mid-step, ramped back


def test_no_room_is_refused() -> None:
    with pytest.raises(ValueError, match="no room"):
        PlantTest(u0=5.0, lo=5.0, hi=5.0, amplitude=1.0, budget_s=60.0, period_s=DT)
