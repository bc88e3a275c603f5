"""Continuous stirred-tank heater with a downstream temperature sensor (pure, seeded, steppable).

Energy balance of a well-mixed tank of volume V fed with water at flow F and temperature T_in,
heated by an electric element of rated power P_max (with its own thermal lag) and losing heat
to ambient through UA:

    rho_cp * V * dT/dt = rho_cp * F * (T_in - T) + P_el - UA * (T - T_amb)

The outlet runs through a pipe of volume V_p to the temperature sensor; the pipe is plug
flow, so the measurement sees the outlet temperature of the moment when the last V_p litres
left the tank: the transport delay is V_p / F and grows as the flow falls.  A first-order
sensor lag and Gaussian noise follow.  Gain (1 / (F rho_cp + UA)), time constant (V / F) and
dead time (V_p / F) all change with the flow, so one fixed PID tuning is not good everywhere.

With the default parameters at the nominal point (10 L/min, inlet 20 degC): time constant
~18 s, dead time 3 s, gain ~0.57 K per % of power; a setpoint step settles in tens of seconds.

Everything is deterministic for a seed: the disturbance schedule and the noise come from
separate `random.Random` streams seeded from it.  `step(dt)` integrates exactly (the ODEs are
linear for inputs held over a sub-step of at most `max_substep_s`), so any dt works.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, replace

RHO_CP_J_PER_L_K = 4186.0  # water: volumetric heat capacity


@dataclass(frozen=True)
class HeaterParams:
    """Physical and disturbance parameters of the heater; units in the names."""

    tank_volume_l: float = 3.0
    rated_power_kw: float = 40.0
    element_tau_s: float = 2.0  # thermal lag of the heating element
    loss_w_per_k: float = 15.0  # UA to ambient
    pipe_volume_l: float = 0.5  # tank outlet to sensor: dead time = pipe_volume / flow
    sensor_tau_s: float = 0.8
    noise_std_c: float = 0.05  # tank temperature sensor noise
    flow_noise_lpm: float = 0.02
    inlet_noise_c: float = 0.03
    nominal_flow_lpm: float = 10.0
    flow_min_lpm: float = 5.0  # range the disturbance schedule moves the flow in
    flow_max_lpm: float = 15.0
    nominal_inlet_c: float = 20.0
    inlet_swing_c: float = 5.0  # schedule moves the inlet temperature within +/- this
    ambient_c: float = 22.0
    disturbance_min_interval_s: float = 40.0
    disturbance_max_interval_s: float = 120.0
    disturbance_tau_s: float = 4.0  # disturbances move as first-order ramps, not jumps
    max_substep_s: float = 0.1

    def scaled(
        self,
        *,
        volume: float = 1.0,
        power: float = 1.0,
        loss: float = 1.0,
        pipe: float = 1.0,
        element_tau: float = 1.0,
    ) -> HeaterParams:
        """Parameters off by the given factors (for +/-20 % robustness evaluation)."""
        return replace(
            self,
            tank_volume_l=self.tank_volume_l * volume,
            rated_power_kw=self.rated_power_kw * power,
            loss_w_per_k=self.loss_w_per_k * loss,
            pipe_volume_l=self.pipe_volume_l * pipe,
            element_tau_s=self.element_tau_s * element_tau,
        )

    def steady_power_pct(self, temp_c: float, flow_lpm: float, inlet_c: float) -> float:
        """Heater power (%) that holds the tank at `temp_c` (may fall outside 0..100)."""
        f = flow_lpm / 60.0 * RHO_CP_J_PER_L_K
        watts = f * (temp_c - inlet_c) + self.loss_w_per_k * (temp_c - self.ambient_c)
        return 100.0 * watts / (self.rated_power_kw * 1000.0)

    def steady_temp_c(self, power_pct: float, flow_lpm: float, inlet_c: float) -> float:
        """Tank temperature reached at constant power, flow and inlet temperature."""
        f = flow_lpm / 60.0 * RHO_CP_J_PER_L_K
        p = power_pct / 100.0 * self.rated_power_kw * 1000.0
        return (f * inlet_c + p + self.loss_w_per_k * self.ambient_c) / (f + self.loss_w_per_k)


class _Schedule:
    """A disturbance that jumps to random targets at random times and ramps toward them."""

    __slots__ = ("hi", "lo", "next_t", "pinned", "rng", "target", "value")

    def __init__(self, value: float, lo: float, hi: float, rng: random.Random) -> None:
        self.value = value
        self.target = value
        self.lo, self.hi = lo, hi
        self.rng = rng
        self.next_t = math.inf
        self.pinned = False

    def advance(self, t_s: float, dt_s: float, p: HeaterParams, active: bool) -> None:
        if active and not self.pinned and t_s >= self.next_t:
            self.target = self.rng.uniform(self.lo, self.hi)
            self.next_t = t_s + self.rng.uniform(
                p.disturbance_min_interval_s, p.disturbance_max_interval_s
            )
        self.value += (self.target - self.value) * (1.0 - math.exp(-dt_s / p.disturbance_tau_s))


class HeaterPlant:
    """The heater: set `power_pct` (and optionally `element_health`), call `step(dt)`.

    `power_pct` is the manipulated variable (clamped to 0..100 when applied).
    `element_health` (1.0 nominal) scales the delivered power: < 1 is element degradation.
    `flow_factor` (1.0 nominal) scales the inlet flow: < 1 is a partly closed inlet valve.
    """

    def __init__(
        self, params: HeaterParams | None = None, seed: int = 0, disturbances: bool = True
    ) -> None:
        self.params = p = params or HeaterParams()
        self.seed = seed
        self.disturbances = disturbances
        self.power_pct = 0.0
        self.element_health = 1.0
        self.flow_factor = 1.0
        self.t_s = 0.0
        dist_rng = random.Random(seed * 7919 + 1)
        self._noise = random.Random(seed * 104729 + 2)
        self._flow = _Schedule(p.nominal_flow_lpm, p.flow_min_lpm, p.flow_max_lpm, dist_rng)
        self._inlet = _Schedule(
            p.nominal_inlet_c,
            p.nominal_inlet_c - p.inlet_swing_c,
            p.nominal_inlet_c + p.inlet_swing_c,
            dist_rng,
        )
        if disturbances:
            self._flow.next_t = dist_rng.uniform(
                p.disturbance_min_interval_s, p.disturbance_max_interval_s
            )
            self._inlet.next_t = dist_rng.uniform(
                p.disturbance_min_interval_s, p.disturbance_max_interval_s
            )
        self._ambient = p.ambient_c
        self.settle(0.0)

    # -- state set-up ---------------------------------------------------------------------
    def settle(self, power_pct: float, temp_c: float | None = None) -> None:
        """Put every state at steady state for `power_pct` (or for `temp_c` if given)."""
        p = self.params
        flow, inlet = self.inlet_flow_lpm, self._inlet.value
        if temp_c is not None:
            power_pct = p.steady_power_pct(temp_c, flow, inlet)
        self.power_pct = min(max(power_pct, 0.0), 100.0)
        self._p_el_w = self.power_pct / 100.0 * p.rated_power_kw * 1000.0 * self.element_health
        self._temp = p.steady_temp_c(self.power_pct * self.element_health, flow, inlet)
        self._cum_vol = 0.0
        self._pipe: deque[tuple[float, float]] = deque(
            [(-p.pipe_volume_l - 1.0, self._temp), (0.0, self._temp)]
        )
        self._sensor = self._temp
        self._meas = self._temp
        self._flow_meas = flow
        self._inlet_meas = inlet

    def set_disturbance(
        self,
        *,
        inlet_flow_lpm: float | None = None,
        inlet_temp_c: float | None = None,
        ambient_c: float | None = None,
        ramp: bool = True,
    ) -> None:
        """Pin a disturbance to a value (the schedule stops moving it); ramp or jump there."""
        for sched, v in ((self._flow, inlet_flow_lpm), (self._inlet, inlet_temp_c)):
            if v is not None:
                sched.pinned = True
                sched.target = float(v)
                if not ramp:
                    sched.value = float(v)
        if ambient_c is not None:
            self._ambient = float(ambient_c)

    # -- dynamics -------------------------------------------------------------------------
    @property
    def inlet_flow_lpm(self) -> float:
        return max(self._flow.value * self.flow_factor, 0.0)

    def step(self, dt_s: float) -> None:
        """Advance the plant by `dt_s` seconds of simulated time (inputs held)."""
        if dt_s <= 0.0:
            return
        p = self.params
        n = max(1, math.ceil(dt_s / p.max_substep_s - 1e-9))
        h = dt_s / n
        rc = RHO_CP_J_PER_L_K
        ua = p.loss_w_per_k
        u = min(max(self.power_pct, 0.0), 100.0)
        p_target = u / 100.0 * p.rated_power_kw * 1000.0 * max(self.element_health, 0.0)
        k_el = 1.0 - math.exp(-h / p.element_tau_s)
        k_sens = 1.0 - math.exp(-h / p.sensor_tau_s)
        pipe = self._pipe
        for _ in range(n):
            self._flow.advance(self.t_s, h, p, self.disturbances)
            self._inlet.advance(self.t_s, h, p, self.disturbances)
            self._p_el_w += (p_target - self._p_el_w) * k_el
            f = self.inlet_flow_lpm / 60.0 * rc  # W/K carried by the flow
            a = (f + ua) / (rc * p.tank_volume_l)
            t_eq = (f * self._inlet.value + self._p_el_w + ua * self._ambient) / (f + ua)
            self._temp = t_eq + (self._temp - t_eq) * math.exp(-a * h)
            # plug-flow pipe: remember outlet temperature against cumulative volume
            self._cum_vol += self.inlet_flow_lpm / 60.0 * h
            if self._cum_vol > pipe[-1][0]:
                pipe.append((self._cum_vol, self._temp))
            else:  # no flow: the pipe content does not move
                pipe[-1] = (pipe[-1][0], self._temp)
            at = self._cum_vol - p.pipe_volume_l
            while len(pipe) > 2 and pipe[1][0] <= at:
                pipe.popleft()
            (v0, t0), (v1, t1) = pipe[0], pipe[1]
            delayed = t0 if v1 <= v0 else t0 + (t1 - t0) * min(max((at - v0) / (v1 - v0), 0), 1)
            self._sensor += (delayed - self._sensor) * k_sens
            self.t_s += h
        g = self._noise.gauss
        self._meas = self._sensor + g(0.0, p.noise_std_c)
        self._flow_meas = max(self.inlet_flow_lpm + g(0.0, p.flow_noise_lpm), 0.0)
        self._inlet_meas = self._inlet.value + g(0.0, p.inlet_noise_c)

    # -- observation ----------------------------------------------------------------------
    @property
    def dead_time_s(self) -> float:
        """Current transport delay tank -> sensor (inf with no flow)."""
        f = self.inlet_flow_lpm / 60.0
        return self.params.pipe_volume_l / f if f > 0 else math.inf

    def outputs(self) -> dict[str, float]:
        """Measured and true values as served by the simulated PLC (no side effects)."""
        return {
            "tank_temp": self._meas,
            "tank_temp_true": self._temp,
            "inlet_flow": self._flow_meas,
            "inlet_temp": self._inlet_meas,
            "ambient_temp": self._ambient,
            "heater_power": self.power_pct,
        }

    def true_state(self) -> dict[str, float]:
        """Noise-free internal state (for the model-based expert and for evaluation)."""
        return {
            "tank_temp": self._temp,
            "element_power_w": self._p_el_w,
            "sensor_temp": self._sensor,
            "inlet_flow": self.inlet_flow_lpm,
            "inlet_temp": self._inlet.value,
            "ambient_temp": self._ambient,
        }
