"""Surge tank level loop with an equal-percentage fill valve (pure, seeded, steppable).

A vertical tank of cross-section A is filled through a control valve from a supply header at
pressure P_s and emptied by a gravity drain (orifice, flow k sqrt(h)) and by a downstream
draw pump taking D (the measured disturbance, moving in random steps and ramps):

    1000 A dh/dt = Q_v(x, h) - k sqrt(h) - D               h in m, flows in L/s, A in m2

The valve is equal-percentage, f(x) = (R^x - 1) / (R - 1) (f(0) = 0, f(1) = 1, rangeability
R), installed in a line with authority a (share of the pressure drop the open valve takes),
against the back-pressure of the level (0.0981 bar per m):

    Q_v(x, h) = Q_max sqrt((P_s (1 + w) - 0.0981 h) / P_s) / sqrt(a / f(x)^2 + 1 - a)

(w: a slow unmeasured wander of the supply pressure).  The valve stem follows the applied
command after a positioner dead time theta_a and a first-order actuator lag tau_a; the level
transmitter has a first-order damping tau_s and noise.

Nonlinearity: the installed equal-percentage characteristic makes dQ/dx grow with the flow
(by ln R at small authority), and the drain makes the process gain dh/dQ = 2 sqrt(h) / k and
the time constant tau = 2000 A sqrt(h) / k grow with the level, so the steady-state gain
dh/dx changes several-fold between a low and a high level.  Above `level_max_m` the tank
overflows; an empty tank starves the draw pump.

`SurgeParams.draw(seed)` draws every physical parameter from the seed (rejection-sampled so
any level in `OPERATING_RANGE_M` is held with the valve between 5 and 95 % at every draw
flow the schedule can take); `SurgePlant(seed=s)` uses those.  `step(dt)` is deterministic
for a seed; the level ODE is integrated with RK4 on sub-steps of at most `max_substep_s`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from hw_sim.plant.common import DeadTime, Disturbance, Wander, lag

BAR_PER_M = 0.0980665  # hydrostatic head of water
OPERATING_RANGE_M = (0.5, 1.5)  # every seed can hold a level in here at every draw flow
OPENING_MARGIN_PCT = (5.0, 95.0)


@dataclass(frozen=True)
class SurgeParams:
    """True parameters of one surge tank (units in the names); drawn from a seed by `draw`."""

    area_m2: float = 0.04
    drain_coeff: float = 2.0  # L/s per sqrt(m): gravity drain k sqrt(h)
    valve_max_flow_lps: float = 8.0  # Q_max: fully open, empty tank, nominal supply
    valve_rangeability: float = 30.0  # R
    valve_authority: float = 0.3  # a
    supply_pressure_bar: float = 2.0  # P_s
    supply_wander_rel: float = 0.02  # std of the slow supply-pressure wander (fraction)
    supply_wander_tau_s: float = 300.0
    actuator_dead_time_s: float = 2.0  # theta_a: positioner / network delay
    actuator_tau_s: float = 2.5  # tau_a
    sensor_tau_s: float = 1.0  # transmitter damping
    level_max_m: float = 2.0  # overflow weir
    nominal_level_m: float = 1.0
    draw_nominal_lps: float = 1.0  # D at start
    draw_min_lps: float = 0.4  # range the schedule moves D in
    draw_max_lps: float = 1.6
    disturbance_interval_s: tuple[float, float] = (60.0, 180.0)
    disturbance_step_tau_s: float = 2.0
    disturbance_ramp_s: tuple[float, float] = (20.0, 60.0)
    noise_level_m: float = 0.003
    noise_flow_lps: float = 0.02
    max_substep_s: float = 0.1

    # -- drawn from a seed ----------------------------------------------------------------
    @classmethod
    def draw(cls, seed: int) -> SurgeParams:
        """The parameters of surge tank number `seed` (deterministic, never the defaults)."""
        rng = random.Random(f"hw_sim.surge.params:{seed}")
        for _ in range(1000):
            tau0 = rng.uniform(15.0, 40.0)  # time constant at the nominal level
            k = rng.uniform(1.5, 3.0)
            d0 = k * rng.uniform(0.25, 1.2)
            x0 = rng.uniform(0.30, 0.75)  # valve opening at the nominal point
            p = cls(
                area_m2=tau0 * k / (2000.0 * math.sqrt(cls.nominal_level_m)),
                drain_coeff=k,
                valve_max_flow_lps=1.0,  # scaled below
                valve_rangeability=rng.uniform(20.0, 50.0),
                valve_authority=rng.uniform(0.1, 0.6),
                supply_pressure_bar=rng.uniform(1.5, 3.0),
                actuator_dead_time_s=rng.uniform(1.0, 3.0),
                actuator_tau_s=rng.uniform(1.5, 4.0),
                sensor_tau_s=rng.uniform(0.5, 1.5),
                draw_nominal_lps=d0,
                draw_min_lps=0.4 * d0,
                draw_max_lps=1.6 * d0,
            )
            q0 = p.drain_flow_lps(p.nominal_level_m) + d0
            p = replace(p, valve_max_flow_lps=q0 / p.valve_flow_lps(x0, p.nominal_level_m))
            if p.holds_operating_range():
                return p
        raise RuntimeError(f"surge: no parameters for seed {seed}")  # pragma: no cover

    def holds_operating_range(self) -> bool:
        """Every level in OPERATING_RANGE_M at every draw: valve inside OPENING_MARGIN_PCT."""
        lo, hi = OPERATING_RANGE_M
        x_lo = self.steady_opening_pct(lo, self.draw_min_lps)
        x_hi = self.steady_opening_pct(hi, self.draw_max_lps)
        return OPENING_MARGIN_PCT[0] <= x_lo and x_hi <= OPENING_MARGIN_PCT[1]

    # -- static relations -----------------------------------------------------------------
    def valve_characteristic(self, x: float) -> float:
        """Inherent equal-percentage characteristic f(x), x the opening 0..1."""
        x = min(max(x, 0.0), 1.0)
        r = self.valve_rangeability
        return (r**x - 1.0) / (r - 1.0)

    def valve_flow_lps(self, x: float, level_m: float, supply: float = 1.0) -> float:
        """Installed valve flow at opening `x` (0..1), level `level_m`, supply factor."""
        f = self.valve_characteristic(x)
        if f <= 0.0:
            return 0.0
        ps = self.supply_pressure_bar
        dp = ps * supply - BAR_PER_M * max(level_m, 0.0)
        if dp <= 0.0:
            return 0.0
        a = self.valve_authority
        return self.valve_max_flow_lps * math.sqrt(dp / ps) / math.sqrt(a / (f * f) + 1.0 - a)

    def drain_flow_lps(self, level_m: float) -> float:
        return self.drain_coeff * math.sqrt(max(level_m, 0.0))

    def steady_opening_pct(self, level_m: float, draw_lps: float) -> float:
        """Valve opening (%) that holds `level_m` at draw `draw_lps` (nan if out of reach)."""
        need = self.drain_flow_lps(level_m) + draw_lps
        if self.valve_flow_lps(1.0, level_m) < need:
            return math.nan
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if self.valve_flow_lps(mid, level_m) < need:
                lo = mid
            else:
                hi = mid
        return 100.0 * 0.5 * (lo + hi)

    def steady_level_m(self, opening_pct: float, draw_lps: float) -> float:
        """Level reached at a constant opening and draw (0: empty, level_max_m: overflows)."""
        x = opening_pct / 100.0

        def net(h: float) -> float:
            return self.valve_flow_lps(x, h) - self.drain_flow_lps(h) - draw_lps

        if net(0.0) <= 0.0:
            return 0.0
        if net(self.level_max_m) >= 0.0:
            return self.level_max_m
        lo, hi = 0.0, self.level_max_m
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if net(mid) > 0.0:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    def gain_m_per_pct(self, level_m: float, draw_lps: float, dx_pct: float = 0.5) -> float:
        """Local steady-state gain d level / d opening (m per %) at an operating point."""
        x = self.steady_opening_pct(level_m, draw_lps)
        return (
            self.steady_level_m(x + dx_pct, draw_lps) - self.steady_level_m(x - dx_pct, draw_lps)
        ) / (2.0 * dx_pct)

    def time_constant_s(self, level_m: float) -> float:
        """Linearised time constant of the level at `level_m` (drain and valve back-pressure
        together; the draw pump does not depend on the level)."""
        x = self.steady_opening_pct(level_m, self.draw_nominal_lps) / 100.0
        eps = 1e-4
        dq_dh = (
            self.drain_flow_lps(level_m + eps)
            - self.drain_flow_lps(level_m - eps)
            - self.valve_flow_lps(x, level_m + eps)
            + self.valve_flow_lps(x, level_m - eps)
        ) / (2.0 * eps)
        return 1000.0 * self.area_m2 / dq_dh

    @property
    def lag_sum_s(self) -> float:
        """Dead time plus the small lags (actuator, transmitter): an FOPDT's apparent delay."""
        return self.actuator_dead_time_s + self.actuator_tau_s + self.sensor_tau_s


class SurgePlant:
    """The surge tank: set `valve_pct` (0..100, the applied command), call `step(dt)`.

    `disturbances=False` holds the draw at its nominal value and the supply pressure still.
    """

    PV = "level"
    DISTURBANCE = "draw_flow"

    def __init__(
        self, params: SurgeParams | None = None, seed: int = 0, disturbances: bool = True
    ) -> None:
        self.params = p = params or SurgeParams.draw(seed)
        self.seed = seed
        self.disturbances = disturbances
        self.t_s = 0.0
        dist_rng = random.Random(f"hw_sim.surge.disturbance:{seed}")
        self._noise = random.Random(f"hw_sim.surge.noise:{seed}")
        self._draw = Disturbance(
            p.draw_nominal_lps,
            p.draw_min_lps,
            p.draw_max_lps,
            dist_rng,
            interval_s=p.disturbance_interval_s,
            step_tau_s=p.disturbance_step_tau_s,
            ramp_s=p.disturbance_ramp_s,
            active=disturbances,
        )
        self._wander = Wander(
            p.supply_wander_rel if disturbances else 0.0,
            p.supply_wander_tau_s,
            random.Random(f"hw_sim.surge.wander:{seed}"),
        )
        self._delay = DeadTime(p.actuator_dead_time_s, 0.0)
        self.valve_pct = 0.0
        self.settle(level_m=p.nominal_level_m)

    # -- state set-up ---------------------------------------------------------------------
    def settle(self, valve_pct: float | None = None, level_m: float | None = None) -> None:
        """Every state at steady state for `valve_pct`, or for `level_m` (the valve solved)."""
        p = self.params
        d = self._draw.value
        if level_m is not None:
            valve_pct = p.steady_opening_pct(level_m, d)
            if math.isnan(valve_pct):
                valve_pct = 100.0
        self.valve_pct = min(max(float(valve_pct or 0.0), 0.0), 100.0)
        self._stem = self.valve_pct / 100.0
        self._delay.reset(self.valve_pct)
        self._level = p.steady_level_m(self.valve_pct, d)
        self._sensor = self._level
        self._draw_actual = self._draw_flow(self._level, d)
        self._meas_level = self._level
        self._meas_draw = self._draw_actual

    def set_disturbance(self, *, draw_flow_lps: float, ramp: bool = True) -> None:
        """Pin the draw flow to a value (the schedule stops moving it)."""
        self._draw.pin(draw_flow_lps, ramp=ramp)

    # -- dynamics -------------------------------------------------------------------------
    @staticmethod
    def _draw_flow(level_m: float, draw_lps: float) -> float:
        """The draw pump loses suction in the last centimetre of an emptying tank."""
        return draw_lps * min(max(level_m / 0.01, 0.0), 1.0)

    def _dhdt(self, h: float, stem: float, supply: float, draw_lps: float) -> float:
        p = self.params
        q = p.valve_flow_lps(stem, h, supply) - p.drain_flow_lps(h) - self._draw_flow(h, draw_lps)
        return q / (1000.0 * p.area_m2)

    def step(self, dt_s: float) -> None:
        """Advance by `dt_s` seconds of simulated time (the command held)."""
        if dt_s <= 0.0:
            return
        p = self.params
        n = max(1, math.ceil(dt_s / p.max_substep_s - 1e-9))
        h = dt_s / n
        self._delay.push(self.t_s, min(max(self.valve_pct, 0.0), 100.0))
        for _ in range(n):
            d = self._draw.advance(h)
            supply = 1.0 + self._wander.advance(h)
            target = self._delay.value_at(self.t_s) / 100.0
            self._stem = lag(self._stem, target, h, p.actuator_tau_s)
            x, s = self._stem, supply
            lv = self._level
            k1 = self._dhdt(lv, x, s, d)
            k2 = self._dhdt(lv + 0.5 * h * k1, x, s, d)
            k3 = self._dhdt(lv + 0.5 * h * k2, x, s, d)
            k4 = self._dhdt(lv + h * k3, x, s, d)
            lv += h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
            self._level = min(max(lv, 0.0), p.level_max_m)
            self._sensor = lag(self._sensor, self._level, h, p.sensor_tau_s)
            self.t_s += h
        self._draw_actual = self._draw_flow(self._level, self._draw.value)
        g = self._noise.gauss
        self._meas_level = max(self._sensor + g(0.0, p.noise_level_m), 0.0)
        self._meas_draw = max(self._draw_actual + g(0.0, p.noise_flow_lps), 0.0)

    # -- observation ----------------------------------------------------------------------
    def outputs(self) -> dict[str, float]:
        """Measured values (noisy) and the applied command, as the PLC serves them."""
        return {
            "level": self._meas_level,
            "draw_flow": self._meas_draw,
            "valve": self.valve_pct,
        }

    def true_state(self) -> dict[str, float]:
        """Noise-free internal state (for tests and evaluation, never served)."""
        p = self.params
        return {
            "level": self._level,
            "sensor_level": self._sensor,
            "stem": 100.0 * self._stem,
            "inflow": p.valve_flow_lps(self._stem, self._level, 1.0 + self._wander.value),
            "drain_flow": p.drain_flow_lps(self._level),
            "draw_flow": self._draw_actual,
            "supply_factor": 1.0 + self._wander.value,
        }
