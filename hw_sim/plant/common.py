"""Building blocks shared by the loop plants (`surge`, `exchanger`): pure, seeded, any dt.

* `Disturbance`: a measured disturbance that moves on its own, seeded: at random intervals it
  picks a random target in [lo, hi] and goes there either as a fast step (first-order, time
  constant `step_tau_s`) or as a linear ramp (duration drawn from `ramp_s`).
* `Wander`: a slow unmeasured disturbance, an exact Ornstein-Uhlenbeck process.
* `DeadTime`: a pure time delay of a piecewise-constant input (actuator / positioner delay).
* `PlugPipe`: a plug-flow pipe indexed by cumulative volume, so the delay is volume / flow
  and grows as the flow falls (what a downstream sensor sees).
"""

from __future__ import annotations

import math
import random
from collections import deque


def lag(x: float, target: float, dt_s: float, tau_s: float) -> float:
    """Exact first-order lag update over `dt_s` with the target held."""
    if tau_s <= 0.0:
        return target
    return target + (x - target) * math.exp(-dt_s / tau_s)


class Disturbance:
    """A measured disturbance: random steps and ramps between `lo` and `hi`, seeded by `rng`.

    `active=False` keeps it still; `pin(value)` stops the schedule and moves it to `value`
    (ramping at the step time constant, or at once with `ramp=False`).
    """

    __slots__ = (
        "active",
        "hi",
        "interval_s",
        "lo",
        "mode",
        "next_t",
        "pinned",
        "ramp_s",
        "rate",
        "rng",
        "step_tau_s",
        "t_s",
        "target",
        "value",
    )

    def __init__(
        self,
        value: float,
        lo: float,
        hi: float,
        rng: random.Random,
        *,
        interval_s: tuple[float, float] = (60.0, 180.0),
        step_tau_s: float = 2.0,
        ramp_s: tuple[float, float] = (20.0, 60.0),
        active: bool = True,
    ) -> None:
        self.value = self.target = float(value)
        self.lo, self.hi = float(lo), float(hi)
        self.rng = rng
        self.interval_s = interval_s
        self.step_tau_s = step_tau_s
        self.ramp_s = ramp_s
        self.active = active
        self.pinned = False
        self.mode = "step"
        self.rate = 0.0
        self.t_s = 0.0
        self.next_t = rng.uniform(*interval_s)

    def pin(self, value: float, ramp: bool = True) -> None:
        """Hold the disturbance at `value` from now on (the random schedule stops)."""
        self.pinned = True
        self.target = float(value)
        self.mode = "step"
        if not ramp:
            self.value = self.target

    def advance(self, dt_s: float) -> float:
        """Move by `dt_s` seconds; returns the new value.

        A change falls at its exact time whatever `dt_s`, so the path does not depend on
        the step size."""
        end = self.t_s + dt_s
        while self.active and not self.pinned and self.next_t < end:
            self._move(max(self.next_t - self.t_s, 0.0))
            self.t_s = max(self.t_s, self.next_t)
            self.target = self.rng.uniform(self.lo, self.hi)
            if self.rng.random() < 0.5:
                self.mode = "step"
            else:
                self.mode = "ramp"
                self.rate = abs(self.target - self.value) / self.rng.uniform(*self.ramp_s)
            self.next_t = self.t_s + self.rng.uniform(*self.interval_s)
        self._move(end - self.t_s)
        self.t_s = end
        return self.value

    def _move(self, dt_s: float) -> None:
        if dt_s <= 0.0:
            return
        if self.mode == "ramp":
            d = self.target - self.value
            move = self.rate * dt_s
            self.value = self.target if abs(d) <= move else self.value + math.copysign(move, d)
        else:
            self.value = lag(self.value, self.target, dt_s, self.step_tau_s)


class Wander:
    """An unmeasured slow disturbance: Ornstein-Uhlenbeck (mean 0, std `std`) drawn exactly on
    a fixed grid of `grid_s` sim seconds and interpolated linearly, so the path is the same
    whatever the step size."""

    __slots__ = ("_a", "_b", "_k", "decay", "grid_s", "rng", "std", "t_s", "value")

    def __init__(self, std: float, tau_s: float, rng: random.Random, grid_s: float = 1.0) -> None:
        self.std, self.rng, self.grid_s = float(std), rng, float(grid_s)
        self.decay = math.exp(-grid_s / tau_s)
        self.t_s = 0.0
        self._k = 0  # grid interval [k, k+1] holds values _a.._b
        self._a = 0.0
        self._b = self._next(0.0)
        self.value = 0.0

    def _next(self, x: float) -> float:
        if self.std <= 0.0:
            return 0.0
        d = self.decay
        return x * d + self.std * math.sqrt(1.0 - d * d) * self.rng.gauss(0.0, 1.0)

    def advance(self, dt_s: float) -> float:
        self.t_s += dt_s
        pos = self.t_s / self.grid_s
        while pos >= self._k + 1:
            self._k += 1
            self._a, self._b = self._b, self._next(self._b)
        self.value = self._a + (self._b - self._a) * (pos - self._k)
        return self.value


class DeadTime:
    """Pure delay of a piecewise-constant input: `value_at(t)` is the input at `t - delay`."""

    __slots__ = ("changes", "delay_s")

    def __init__(self, delay_s: float, value: float) -> None:
        self.delay_s = float(delay_s)
        self.changes: deque[tuple[float, float]] = deque([(-math.inf, float(value))])

    def reset(self, value: float) -> None:
        self.changes = deque([(-math.inf, float(value))])

    def push(self, t_s: float, value: float) -> None:
        """The input is `value` from `t_s` on (call whenever it may have changed)."""
        if value != self.changes[-1][1]:
            self.changes.append((t_s, float(value)))

    def value_at(self, t_s: float) -> float:
        at = t_s - self.delay_s
        ch = self.changes
        while len(ch) > 1 and ch[1][0] <= at:
            ch.popleft()
        return ch[0][1]


class PlugPipe:
    """Plug flow through a pipe of `volume_l`: the outlet sees the inlet of `volume_l` ago.

    Indexed by cumulative volume, so the transport delay is volume / flow at any flow and a
    stopped flow freezes the pipe content.  Linear interpolation between stored samples.
    """

    __slots__ = ("cum", "samples", "volume_l")

    def __init__(self, volume_l: float, value: float) -> None:
        self.volume_l = float(volume_l)
        self.reset(value)

    def reset(self, value: float) -> None:
        self.cum = 0.0
        self.samples: deque[tuple[float, float]] = deque(
            [(-self.volume_l - 1.0, value), (0.0, value)]
        )

    def push(self, volume_l: float, value: float) -> float:
        """`volume_l` litres entered at temperature `value`; returns the outlet value now."""
        s = self.samples
        self.cum += max(volume_l, 0.0)
        if self.cum > s[-1][0]:
            s.append((self.cum, value))
        else:  # no flow: the pipe does not move; the inlet sample follows the value
            s[-1] = (s[-1][0], value)
        at = self.cum - self.volume_l
        while len(s) > 2 and s[1][0] <= at:
            s.popleft()
        (v0, x0), (v1, x1) = s[0], s[1]
        if v1 <= v0:
            return x0
        return x0 + (x1 - x0) * min(max((at - v0) / (v1 - v0), 0.0), 1.0)
