"""The plant test of `edgeloop commission`: excitation inside the loop's envelope, as a pure
state machine driven once per control period.

Phases, each decided from what the measurement did, not from a model of the plant:
1. `baseline`: hold the present output `u0` for `baseline_s`, measuring the noise on pv.
2. `step`: one step of `amplitude` (toward the roomier side of the output range), held until
   pv settles (its range over the last quarter of the elapsed step time is below 5 % of the
   move so far, or of the noise) or `step_max_s`, or until pv has moved `pv_dev_max` from
   where it started (a plant far more sensitive than the amplitude assumed: the step ends
   early). The response gives a first gain, dead time and 63 % time, which size the next
   phase, and the amplitude is scaled so the PRBS moves pv by about half `pv_dev_max`.
3. `prbs`: a generalised binary noise sequence (GBN, Tulleken 1990) between `u0 - a` and
   `u0 + a`, with a mean switching time of about a third of the step's (dead time +
   63 % time), for the rest of the budget but at least a few settling times; a seeded RNG.
   The centre of the PRBS follows a slow integral action on pv's deviation from where the
   test started (time constant about one settling time, sign and size from the step's
   gain): a disturbance or a nearly integrating plant would otherwise walk pv out of its
   band. With the dither as external excitation the data stays informative (closed-loop
   identification); should pv still pass 80 % of `pv_dev_max`, the level that brings it
   back is forced, like a relay test.
4. `return`: back to `u0`; the runner's envelope rate-limits every move, this one too.
Any abort (`abort(reason)`: bad or stale pv, pv out of its band, Ctrl-C, SIGTERM) goes
straight to `return`, and the test ends where it started.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

PHASES = ("baseline", "step", "prbs", "return", "done")


@dataclass
class StepResponse:
    """First look at the plant from the initial step (rough; identification refines it)."""

    du: float
    dy: float
    dead_time_s: float
    t63_s: float

    @property
    def gain(self) -> float:
        return self.dy / self.du if self.du else math.nan

    @property
    def settle_s(self) -> float:
        """Rough settling time: dead time + 4 time constants."""
        return self.dead_time_s + 4.0 * max(self.t63_s - self.dead_time_s, 0.0)


@dataclass
class PlantTest:
    """Drive with `target(now_s, y)` each period; read `phase`, `abort_reason`, `log`."""

    u0: float
    lo: float
    hi: float
    amplitude: float
    budget_s: float
    period_s: float
    seed: int = 0
    pv_dev_max: float = math.inf
    baseline_s: float = 0.0
    step_max_s: float = 0.0
    phase: str = "baseline"
    abort_reason: str | None = None
    step: StepResponse | None = None
    log: list[str] = field(default_factory=list)
    _t0: float = math.nan
    _now: float = 0.0
    _phase_t0: float = 0.0
    _y0: float = math.nan
    _noise: float = 0.0
    _base: list[float] = field(default_factory=list)
    _resp: list[tuple[float, float]] = field(default_factory=list)
    _level: int = 1
    _next_switch: float = 0.0
    _switch_s: float = 0.0
    _prbs_end: float = 0.0
    _rng: random.Random = field(default_factory=random.Random)
    _up: float = 0.0
    _down: float = 0.0
    _centre: float = 0.0  # PRBS centre offset from u0 (slow integral action on pv)
    _last_t: float = math.nan

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        room_up, room_down = self.hi - self.u0, self.u0 - self.lo
        a = abs(self.amplitude)
        # symmetric where there is room, squeezed against a bound otherwise
        self._up = min(a, room_up)
        self._down = min(a, room_down)
        if self._up <= 0 and self._down <= 0:
            raise ValueError(f"no room to move the output: {self.lo} <= {self.u0} <= {self.hi}")
        if not self.baseline_s:
            self.baseline_s = max(5 * self.period_s, 0.05 * self.budget_s)
        if not self.step_max_s:
            self.step_max_s = 0.35 * self.budget_s

    # -- the driver ------------------------------------------------------------------------
    def abort(self, reason: str) -> None:
        """Stop the test: back to `u0` (the runner ramps), reason recorded."""
        if self.phase in ("return", "done"):
            return
        self.abort_reason = reason
        self.log.append(f"abort: {reason}")
        self.phase = "return"

    @property
    def elapsed_s(self) -> float:
        return 0.0 if math.isnan(self._t0) else self._now - self._t0

    def time_left_s(self) -> float:
        """Estimate for the progress bar."""
        if self.phase == "baseline":
            return self.budget_s - self.elapsed_s
        if self.phase == "step":
            return max(self.budget_s - self.elapsed_s, self.step_max_s)
        if self.phase == "prbs":
            return max(0.0, self._prbs_end - self._now)
        return 0.0

    def target(self, now_s: float, y: float) -> float:
        """The output wanted this period (the caller's envelope clamps and rate-limits it)."""
        self._now = now_s
        if math.isnan(self._t0):
            self._t0 = self._phase_t0 = now_s
        t = now_s - self._phase_t0
        if self.phase == "baseline":
            if math.isfinite(y):
                self._base.append(y)
            if t >= self.baseline_s and len(self._base) >= 3:
                self._y0 = sum(self._base) / len(self._base)
                span = max(self._base) - min(self._base)
                self._noise = span / 2
                self._enter("step", now_s)
                self.log.append(f"baseline: pv {self._y0:.4g} +- {self._noise:.3g}, u0 {self.u0:g}")
            return self.u0
        if self.phase == "step":
            du = self._up if self._up >= self._down else -self._down
            if math.isfinite(y):
                self._resp.append((t, y))
            too_far = math.isfinite(y) and abs(y - self._y0) > self.pv_dev_max
            if too_far or self._settled(t) or t >= self.step_max_s:
                self.step = self._analyse(du, settled=not too_far)
                self._scale_amplitude(too_far)
                self._start_prbs(now_s)
            return self.u0 + du
        if self.phase == "prbs":
            if now_s >= self._prbs_end:
                self._enter("return", now_s)
                return self.u0
            if now_s >= self._next_switch:
                if self._rng.random() < 0.5 or self._next_switch == self._phase_t0:
                    self._level = -self._level
                self._next_switch = now_s + self._switch_s
            dev = y - self._y0 if math.isfinite(y) else 0.0
            gain = self.step.gain if self.step is not None else 0.0
            dt = 0.0 if math.isnan(self._last_t) else now_s - self._last_t
            self._last_t = now_s
            if gain and math.isfinite(gain):
                ti = max(self.step.settle_s, 10 * self.period_s)  # type: ignore[union-attr]
                self._centre -= dev / gain * dt / ti
                lo_c = self.lo + self._down - self.u0
                hi_c = self.hi - self._up - self.u0
                self._centre = min(max(self._centre, lo_c), hi_c)
                if abs(dev) > 0.8 * self.pv_dev_max:
                    # force the level that brings pv back toward where it started
                    self._level = -1 if dev * gain > 0 else 1
                    self._next_switch = now_s + self._switch_s
            return self.u0 + self._centre + (self._up if self._level > 0 else -self._down)
        return self.u0

    def returned(self) -> None:
        """The caller saw the output back at `u0`: the test is over."""
        if self.phase == "return":
            self._enter("done", self._now)

    # -- internals -------------------------------------------------------------------------
    def _enter(self, phase: str, now_s: float) -> None:
        self.phase = phase
        self._phase_t0 = now_s

    def _settled(self, t: float) -> bool:
        if t < max(10 * self.period_s, 0.1 * self.step_max_s) or len(self._resp) < 8:
            return False
        moved = abs(self._resp[-1][1] - self._y0)
        recent = [y for s, y in self._resp if s >= 0.75 * t]
        if len(recent) < 4:
            return False
        band = max(0.05 * moved, 2.0 * self._noise, 1e-12)
        return moved > 3 * self._noise and (max(recent) - min(recent)) < band

    def _scale_amplitude(self, cut_short: bool) -> None:
        """Size the PRBS so pv moves about half `pv_dev_max` (never above the requested)."""
        assert self.step is not None
        dy = abs(self.step.dy)
        if not math.isfinite(self.pv_dev_max) or dy <= 0:
            return
        # cut short: the steady-state move would have been larger still; be conservative
        factor = 0.5 * self.pv_dev_max / dy * (0.75 if cut_short else 1.0)
        if factor < 1.0:
            self._up *= factor
            self._down *= factor
            self.log.append(f"amplitude scaled by {factor:.2f} to keep pv within the band")

    def _analyse(self, du: float, settled: bool = True) -> StepResponse:
        ts = [s for s, _ in self._resp]
        ys = [y - self._y0 for _, y in self._resp]
        dy = sum(ys[-max(3, len(ys) // 10) :]) / max(3, len(ys) // 10) if ys else 0.0
        thr_dead = max(abs(dy) * 0.05, 2 * self._noise)
        dead = next((s for s, y in zip(ts, ys, strict=True) if abs(y) > thr_dead), ts[-1])
        t63 = next((s for s, y in zip(ts, ys, strict=True) if abs(y) >= 0.63 * abs(dy)), ts[-1])
        if not settled:  # still moving when cut short: its time scale is at least this long
            t63 = max(t63, ts[-1])
            dy = ys[-1]
        r = StepResponse(du=du, dy=dy, dead_time_s=dead, t63_s=max(t63, dead + self.period_s))
        self.log.append(
            f"step {du:+.3g}: pv {dy:+.4g} (gain {r.gain:.3g}), dead time ~{r.dead_time_s:.3g} s, "
            f"63 % at {r.t63_s:.3g} s{'' if settled else ' (cut short: pv moved too far)'}"
        )
        return r

    def _start_prbs(self, now_s: float) -> None:
        assert self.step is not None
        self._switch_s = max(2 * self.period_s, self.step.t63_s / 3.0)
        spent = now_s - self._t0
        left = self.budget_s - spent
        # the rest of the budget (more data, better fit), but at least three settling times
        # of excitation; keep time to return to u0
        want = max(3.0 * self.step.settle_s, 20 * self._switch_s)
        self._prbs_end = now_s + max(want, left - max(self.step.settle_s, 5 * self.period_s))
        self._level = 1 if self.step.du > 0 else -1
        self._enter("prbs", now_s)
        self._next_switch = now_s
        self.log.append(
            f"prbs: switching ~{self._switch_s:.3g} s, {self._prbs_end - now_s:.0f} s, "
            f"between {self.u0 - self._down:g} and {self.u0 + self._up:g}"
        )
