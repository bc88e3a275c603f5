"""Heat exchanger outlet-temperature loop with a flow-dependent dead time (pure, seeded).

A counter-flow water/water exchanger heats a product stream F (L/min, the measured
disturbance, moving in random steps and ramps) from T_in with hot water at T_h whose flow
F_h = F_h,max x is set by a linear control valve (x the stem position, following the
applied command through an actuator lag tau_a).  Steady state by effectiveness-NTU:

    C = rho_cp F / 60,  C_h = rho_cp F_h / 60                   (W/K; rho_cp = 4186 J/(L K))
    1/UA = 1 / (hA_p (F / F_0)^0.8) + 1 / (hA_h (F_h / F_h,max)^0.8)   (film coefficients)
    NTU = UA / C_min,  Cr = C_min / C_max
    eps = (1 - exp(-NTU (1 - Cr))) / (1 - Cr exp(-NTU (1 - Cr)))   (NTU / (1 + NTU) at Cr = 1)
    T_ss = T_in + eps C_min (T_h + w - T_in) / C

(w: a slow unmeasured wander of the hot supply temperature).  Dynamics: the wall's heat
capacity (lag tau_w) and the product hold-up V_x of the exchanger (lag V_x / F) in series,
then the outlet pipe of volume V_p to the temperature sensor as plug flow, so the transport
delay is V_p / F, then the sensor's lag tau_s and noise:

    tau_w dT_1/dt = T_ss - T_1,   (60 V_x / F) dT_2/dt = T_1 - T_2,
    T_pipe(t) = T_2(t - 60 V_p / F),   tau_s dT_m/dt = T_pipe - T_m

Nonlinearity: heat transfer saturates as the hot flow rises (eps C_min grows ever slower with
F_h), so dT/dx is several times larger near closed than near open; the gain also falls as
1/F with the product flow, while the residence time and the dead time grow as 1/F.

`ExchangerParams.draw(seed)` draws every parameter from the seed (rejection-sampled so any
outlet temperature in `OPERATING_RANGE_C` is held with the valve between 5 and 95 % at every
flow the schedule can take); `ExchangerPlant(seed=s)` uses them.  Deterministic for a seed;
lags are exact exponential updates on sub-steps of at most `max_substep_s`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from hw_sim.plant.common import Disturbance, PlugPipe, Wander, lag

RHO_CP_J_PER_L_K = 4186.0
OPERATING_RANGE_C = (35.0, 55.0)  # every seed holds an outlet temperature in here
OPENING_MARGIN_PCT = (5.0, 95.0)


def effectiveness(ntu: float, cr: float) -> float:
    """Counter-flow effectiveness for NTU and capacity ratio Cr (0..1)."""
    if ntu <= 0.0:
        return 0.0
    if cr > 1.0 - 1e-6:
        return ntu / (1.0 + ntu)
    e = math.exp(-ntu * (1.0 - cr))
    return (1.0 - e) / (1.0 - cr * e)


@dataclass(frozen=True)
class ExchangerParams:
    """True parameters of one exchanger (units in the names); drawn from a seed by `draw`."""

    flow_nominal_lpm: float = 20.0  # F_0, product flow at start
    flow_min_lpm: float = 12.0  # range the schedule moves F in
    flow_max_lpm: float = 28.0
    inlet_temp_c: float = 15.0  # T_in
    hot_temp_c: float = 80.0  # T_h
    hot_wander_c: float = 0.5  # std of the slow hot supply temperature wander
    hot_wander_tau_s: float = 300.0
    hot_max_flow_lpm: float = 20.0  # F_h,max (valve fully open)
    film_product_w_per_k: float = 3000.0  # hA_p at F_0
    film_hot_w_per_k: float = 3000.0  # hA_h at F_h,max
    wall_tau_s: float = 12.0  # tau_w
    holdup_l: float = 2.5  # V_x: residence V_x / F
    pipe_volume_l: float = 2.0  # V_p: dead time V_p / F
    actuator_tau_s: float = 2.5  # tau_a
    sensor_tau_s: float = 1.5  # tau_s
    disturbance_interval_s: tuple[float, float] = (60.0, 180.0)
    disturbance_step_tau_s: float = 2.0
    disturbance_ramp_s: tuple[float, float] = (20.0, 60.0)
    noise_temp_c: float = 0.05
    noise_flow_lpm: float = 0.1
    max_substep_s: float = 0.1

    # -- drawn from a seed ----------------------------------------------------------------
    @classmethod
    def draw(cls, seed: int) -> ExchangerParams:
        """The parameters of exchanger number `seed` (deterministic, never the defaults)."""
        rng = random.Random(f"hw_sim.exchanger.params:{seed}")
        for _ in range(1000):
            f0 = rng.uniform(12.0, 30.0)
            c0 = f0 / 60.0 * RHO_CP_J_PER_L_K
            ntu0 = rng.uniform(1.0, 3.0)  # NTU of the product side at F_0, valve open
            share = rng.uniform(0.35, 0.65)  # product film's share of the resistance 1/UA
            ua0 = ntu0 * c0
            p = cls(
                flow_nominal_lpm=f0,
                flow_min_lpm=0.6 * f0,
                flow_max_lpm=1.4 * f0,
                inlet_temp_c=rng.uniform(5.0, 20.0),
                hot_temp_c=rng.uniform(65.0, 95.0),
                hot_max_flow_lpm=f0 * rng.uniform(0.7, 2.5),
                film_product_w_per_k=ua0 / share,
                film_hot_w_per_k=ua0 / (1.0 - share),
                wall_tau_s=rng.uniform(6.0, 18.0),
                holdup_l=rng.uniform(4.0, 12.0) * f0 / 60.0,  # residence 4..12 s at F_0
                pipe_volume_l=rng.uniform(4.0, 10.0) * f0 / 60.0,  # dead time 4..10 s at F_0
                actuator_tau_s=rng.uniform(1.5, 4.0),
                sensor_tau_s=rng.uniform(1.0, 3.0),
            )
            if p.holds_operating_range():
                return p
        raise RuntimeError(f"exchanger: no parameters for seed {seed}")  # pragma: no cover

    def holds_operating_range(self) -> bool:
        """Every outlet temperature in OPERATING_RANGE_C at every flow: valve in the margin."""
        lo, hi = OPERATING_RANGE_C
        x_lo = self.steady_opening_pct(lo, self.flow_min_lpm)
        x_hi = self.steady_opening_pct(hi, self.flow_max_lpm)
        return OPENING_MARGIN_PCT[0] <= x_lo and x_hi <= OPENING_MARGIN_PCT[1]

    # -- static relations -----------------------------------------------------------------
    def ua_w_per_k(self, flow_lpm: float, hot_flow_lpm: float) -> float:
        if flow_lpm <= 0.0 or hot_flow_lpm <= 0.0:
            return 0.0
        rp = 1.0 / (self.film_product_w_per_k * (flow_lpm / self.flow_nominal_lpm) ** 0.8)
        rh = 1.0 / (self.film_hot_w_per_k * (hot_flow_lpm / self.hot_max_flow_lpm) ** 0.8)
        return 1.0 / (rp + rh)

    def steady_outlet_c(
        self, opening_pct: float, flow_lpm: float, hot_temp_c: float | None = None
    ) -> float:
        """Exchanger outlet temperature at steady state (valve %, product flow L/min)."""
        t_h = self.hot_temp_c if hot_temp_c is None else hot_temp_c
        x = min(max(opening_pct / 100.0, 0.0), 1.0)
        fh = self.hot_max_flow_lpm * x
        if flow_lpm <= 0.0:
            return t_h if fh > 0.0 else self.inlet_temp_c
        c = flow_lpm / 60.0 * RHO_CP_J_PER_L_K
        ch = fh / 60.0 * RHO_CP_J_PER_L_K
        if ch <= 0.0:
            return self.inlet_temp_c
        cmin, cmax = min(c, ch), max(c, ch)
        eps = effectiveness(self.ua_w_per_k(flow_lpm, fh) / cmin, cmin / cmax)
        return self.inlet_temp_c + eps * cmin * (t_h - self.inlet_temp_c) / c

    def steady_opening_pct(self, outlet_c: float, flow_lpm: float) -> float:
        """Valve opening (%) that holds `outlet_c` at `flow_lpm` (nan if out of reach)."""
        if self.steady_outlet_c(100.0, flow_lpm) < outlet_c or outlet_c < self.inlet_temp_c:
            return math.nan
        lo, hi = 0.0, 100.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if self.steady_outlet_c(mid, flow_lpm) < outlet_c:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    def gain_c_per_pct(self, outlet_c: float, flow_lpm: float, dx_pct: float = 0.5) -> float:
        """Local steady-state gain d outlet / d opening (K per %) at an operating point."""
        x = self.steady_opening_pct(outlet_c, flow_lpm)
        return (
            self.steady_outlet_c(x + dx_pct, flow_lpm) - self.steady_outlet_c(x - dx_pct, flow_lpm)
        ) / (2.0 * dx_pct)

    def dead_time_s(self, flow_lpm: float) -> float:
        """Transport delay exchanger -> sensor at a product flow."""
        return 60.0 * self.pipe_volume_l / flow_lpm if flow_lpm > 0.0 else math.inf

    def residence_s(self, flow_lpm: float) -> float:
        return 60.0 * self.holdup_l / flow_lpm if flow_lpm > 0.0 else math.inf


class ExchangerPlant:
    """The exchanger: set `valve_pct` (0..100, the applied command), call `step(dt)`.

    `disturbances=False` holds the product flow at its nominal value and the hot supply
    temperature still.
    """

    PV = "outlet_temp"
    DISTURBANCE = "flow"

    def __init__(
        self, params: ExchangerParams | None = None, seed: int = 0, disturbances: bool = True
    ) -> None:
        self.params = p = params or ExchangerParams.draw(seed)
        self.seed = seed
        self.disturbances = disturbances
        self.t_s = 0.0
        dist_rng = random.Random(f"hw_sim.exchanger.disturbance:{seed}")
        self._noise = random.Random(f"hw_sim.exchanger.noise:{seed}")
        self._flow = Disturbance(
            p.flow_nominal_lpm,
            p.flow_min_lpm,
            p.flow_max_lpm,
            dist_rng,
            interval_s=p.disturbance_interval_s,
            step_tau_s=p.disturbance_step_tau_s,
            ramp_s=p.disturbance_ramp_s,
            active=disturbances,
        )
        self._wander = Wander(
            p.hot_wander_c if disturbances else 0.0,
            p.hot_wander_tau_s,
            random.Random(f"hw_sim.exchanger.wander:{seed}"),
        )
        self._pipe = PlugPipe(p.pipe_volume_l, p.inlet_temp_c)
        self.valve_pct = 0.0
        self.settle(outlet_c=0.5 * sum(OPERATING_RANGE_C))

    # -- state set-up ---------------------------------------------------------------------
    def settle(self, valve_pct: float | None = None, outlet_c: float | None = None) -> None:
        """Every state at steady state for `valve_pct`, or for `outlet_c` (the valve solved)."""
        p = self.params
        f = self._flow.value
        if outlet_c is not None:
            valve_pct = p.steady_opening_pct(outlet_c, f)
            if math.isnan(valve_pct):
                valve_pct = 100.0 if outlet_c > p.inlet_temp_c else 0.0
        self.valve_pct = min(max(float(valve_pct or 0.0), 0.0), 100.0)
        self._stem = self.valve_pct / 100.0
        t = p.steady_outlet_c(self.valve_pct, f, p.hot_temp_c + self._wander.value)
        self._t1 = self._t2 = self._pipe_out = self._sensor = self._meas_temp = t
        self._pipe.reset(t)
        self._meas_flow = f

    def set_disturbance(self, *, flow_lpm: float, ramp: bool = True) -> None:
        """Pin the product flow to a value (the schedule stops moving it)."""
        self._flow.pin(flow_lpm, ramp=ramp)

    # -- dynamics -------------------------------------------------------------------------
    def step(self, dt_s: float) -> None:
        """Advance by `dt_s` seconds of simulated time (the command held)."""
        if dt_s <= 0.0:
            return
        p = self.params
        n = max(1, math.ceil(dt_s / p.max_substep_s - 1e-9))
        h = dt_s / n
        u = min(max(self.valve_pct, 0.0), 100.0) / 100.0
        for _ in range(n):
            f = max(self._flow.advance(h), 0.0)
            t_h = p.hot_temp_c + self._wander.advance(h)
            self._stem = lag(self._stem, u, h, p.actuator_tau_s)
            t_ss = p.steady_outlet_c(100.0 * self._stem, f, t_h)
            self._t1 = lag(self._t1, t_ss, h, p.wall_tau_s)
            if f > 0.0:
                self._t2 = lag(self._t2, self._t1, h, p.residence_s(f))
            self._pipe_out = self._pipe.push(f / 60.0 * h, self._t2)
            self._sensor = lag(self._sensor, self._pipe_out, h, p.sensor_tau_s)
            self.t_s += h
        g = self._noise.gauss
        self._meas_temp = self._sensor + g(0.0, p.noise_temp_c)
        self._meas_flow = max(self._flow.value + g(0.0, p.noise_flow_lpm), 0.0)

    # -- observation ----------------------------------------------------------------------
    @property
    def dead_time_now_s(self) -> float:
        return self.params.dead_time_s(self._flow.value)

    def outputs(self) -> dict[str, float]:
        """Measured values (noisy) and the applied command, as the PLC serves them."""
        return {
            "outlet_temp": self._meas_temp,
            "flow": self._meas_flow,
            "valve": self.valve_pct,
        }

    def true_state(self) -> dict[str, float]:
        """Noise-free internal state (for tests and evaluation, never served)."""
        return {
            "outlet_temp": self._pipe_out,  # at the sensor, before its lag
            "core_outlet_temp": self._t2,  # leaving the exchanger
            "wall_temp": self._t1,
            "sensor_temp": self._sensor,
            "stem": 100.0 * self._stem,
            "flow": self._flow.value,
            "hot_temp": self.params.hot_temp_c + self._wander.value,
            "dead_time_s": self.dead_time_now_s,
        }
