"""Centrifugal pump skid on a VFD against a discharge control valve (pure, seeded, steppable).

Hydraulics (algebraic, solved in closed form each step; pressures in bar, flows in m3/h):

    pump curve      H(Q, n)  = H0 * n^2 - a * Q^2            (affinity laws, n = speed 0..1)
    system curve    P(Q)     = p_static + (Q / Cv_total)^2    (valve + a parallel leak path)
    operating point H(Q) = P(Q)  ->  Q^2 = (H0 n^2 - p_static) / (a + 1 / Cv_total^2)

The valve is quick-opening-to-linear (Cv ~ opening^1.5); a leak adds a parallel orifice
whose flow leaves before the flow meter.  Shaft power follows the hydraulic power over an
efficiency curve peaking at the best-efficiency flow; the motor draws the current of that
load at a V/f-proportional voltage plus a magnetising share.  Motor and fluid temperatures
follow their heat sources with first-order lags; vibration RMS (velocity, mm/s) grows with
speed squared, with distance from the best-efficiency point, with rotor imbalance (mostly
radial-horizontal, axis X) and with cavitation.  Cavitation appears when the NPSH required
at the flow exceeds the NPSH available (reduced by a suction restriction or fluid temperature).

Fault inputs (attributes, 0 or 1.0 nominal) are set by `hw_sim.faults`: `outlet_valve_factor`,
`inlet_valve_factor`, `imbalance_mm_s`, `cavitation`, `leak`.

Deterministic for a seed; `step(dt)` applies exact exponential updates for the lags and an
exact Ornstein-Uhlenbeck update for the supply-voltage wander, so any dt works and the cost
per step is constant (a few microseconds).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

SQRT3 = math.sqrt(3.0)


@dataclass(frozen=True)
class PumpParams:
    """Pump, motor and skid parameters; units in the names."""

    shutoff_head_bar: float = 6.0  # H0 at 100 % speed
    curve_bar_per_m3h2: float = 0.0008  # a: head drop with flow squared
    static_head_bar: float = 0.5
    valve_cv_max: float = 37.0  # m3/h at 1 bar across the fully open valve
    leak_cv_max: float = 15.0  # parallel leak orifice at leak = 1
    bep_flow_m3h: float = 40.0  # best-efficiency flow at 100 % speed
    peak_efficiency: float = 0.72
    motor_efficiency: float = 0.90
    power_factor: float = 0.85
    friction_kw: float = 0.35  # bearing/seal losses at 100 % speed
    magnetising_a: float = 3.0
    supply_v: float = 400.0
    supply_wander_v: float = 4.0  # std of the slow supply voltage wander
    supply_wander_tau_s: float = 60.0
    speed_tau_s: float = 1.5  # VFD ramp
    valve_tau_s: float = 2.0  # valve actuator
    motor_thermal_tau_s: float = 240.0
    motor_ambient_c: float = 25.0
    motor_k_per_kw_loss: float = 25.0  # winding temperature rise per kW of motor loss
    fluid_temp_c: float = 35.0
    fluid_tau_s: float = 60.0
    npsh_available_m: float = 9.0
    npsh_required_m_at_bep: float = 3.5
    base_vibration_mm_s: float = 1.2  # at 100 % speed, at the best-efficiency point
    off_bep_vibration_mm_s: float = 1.5  # added per unit of |Q/Q_bep - 1|
    # measurement noise (standard deviations)
    noise_current_a: float = 0.05
    noise_voltage_v: float = 0.8
    noise_vibration_rel: float = 0.04
    noise_temp_c: float = 0.05
    noise_pressure_bar: float = 0.01
    noise_flow_m3h: float = 0.15


def _lag(x: float, target: float, dt_s: float, tau_s: float) -> float:
    return target + (x - target) * math.exp(-dt_s / tau_s)


class PumpSkid:
    """The pump skid: set `speed_setpoint_pct` and `valve_position_pct`, call `step(dt)`."""

    def __init__(self, params: PumpParams | None = None, seed: int = 0) -> None:
        self.params = params or PumpParams()
        self.seed = seed
        self._rng = random.Random(seed * 15485863 + 3)
        # measurement noise drawn in blocks (one numpy call per 512 steps, not 11 per step)
        self._noise_rng = np.random.default_rng(seed * 15485863 + 4)
        self._noise_block: list[list[float]] = []
        self.t_s = 0.0
        # commands (what the PLC / OPC UA client writes)
        self.speed_setpoint_pct = 80.0
        self.valve_position_pct = 70.0
        # fault inputs
        self.outlet_valve_factor = 1.0  # < 1: discharge valve partly closed (stuck/blocked)
        self.inlet_valve_factor = 1.0  # < 1: suction valve partly closed (NPSH loss)
        self.imbalance_mm_s = 0.0  # added radial vibration at 100 % speed
        self.cavitation = 0.0  # 0..1 extra NPSH loss (e.g. low suction tank level)
        self.leak = 0.0  # 0..1 of the parallel leak orifice opened
        # states
        self._speed = self.speed_setpoint_pct / 100.0
        self._valve = self.valve_position_pct / 100.0
        self._wander_v = 0.0
        self._fluid_temp = self.params.fluid_temp_c
        self._solve()
        self._motor_temp = self._motor_temp_target()
        self._fluid_temp = self._fluid_temp_target()
        self._meas: dict[str, float] = {}
        self._measure()

    # -- algebra ----------------------------------------------------------------------------
    def _solve(self) -> None:
        """Operating point at the current speed, valve and fault inputs."""
        p = self.params
        n = self._speed
        cv = p.valve_cv_max * max(self._valve, 0.0) ** 1.5 * max(self.outlet_valve_factor, 0.0)
        cl = p.leak_cv_max * max(self.leak, 0.0)
        cv_tot = cv + cl
        drive = p.shutoff_head_bar * n * n - p.static_head_bar
        if cv_tot <= 1e-9 or drive <= 0.0:
            q_tot = 0.0
        else:
            q_tot = math.sqrt(drive / (p.curve_bar_per_m3h2 + 1.0 / (cv_tot * cv_tot)))
        # suction side: a restriction and the cavitation input eat NPSH available
        q_bep = max(p.bep_flow_m3h * n, 1e-6)
        inlet = max(self.inlet_valve_factor, 0.05)
        npsh_a = (
            p.npsh_available_m
            - 0.0025 * (q_tot / inlet) ** 2 * (1.0 - inlet) * 4.0
            - 10.0 * self.cavitation
            - max(self._fluid_temp - 40.0, 0.0) * 0.08
        )
        npsh_r = p.npsh_required_m_at_bep * (q_tot / max(p.bep_flow_m3h, 1e-6)) ** 2 + 1.0
        cav = min(max(npsh_r - npsh_a, 0.0) / 2.0, 1.0)  # 0..1 cavitation intensity
        # a cavitating pump loses head and flow
        q_tot *= 1.0 - 0.25 * cav
        head = max(p.shutoff_head_bar * n * n - p.curve_bar_per_m3h2 * q_tot**2, 0.0)
        head *= 1.0 - 0.15 * cav
        q_meter = q_tot * (cv / cv_tot) if cv_tot > 0 else 0.0
        # power chain
        eff = p.peak_efficiency * max(1.0 - 0.8 * (q_tot / q_bep - 1.0) ** 2, 0.25)
        p_hyd_kw = q_tot * head / 36.0
        p_shaft_kw = p_hyd_kw / eff + p.friction_kw * n**3 + (0.05 if n > 0.01 else 0.0)
        p_el_kw = p_shaft_kw / p.motor_efficiency if n > 0.01 else 0.0
        self._cav = cav
        self._q_tot = q_tot
        self._q_meter = q_meter
        self._head = head
        self._p_hyd_kw = p_hyd_kw
        self._p_shaft_kw = p_shaft_kw
        self._p_el_kw = p_el_kw
        self._q_bep = q_bep

    def _voltage(self) -> float:
        p = self.params
        return max((p.supply_v + self._wander_v) * max(self._speed, 0.05), 0.0)

    def _current(self) -> float:
        p = self.params
        if self._speed <= 0.01:
            return 0.0
        u = self._voltage()
        i_act = self._p_el_kw * 1000.0 / (SQRT3 * u * p.power_factor) if u > 1.0 else 0.0
        i_mag = p.magnetising_a * min(self._speed / 0.2, 1.0)
        return math.hypot(i_act, i_mag)

    def _motor_temp_target(self) -> float:
        p = self.params
        loss_kw = self._p_el_kw - self._p_shaft_kw
        # a fan on the shaft: cooling falls at low speed
        cooling = 0.4 + 0.6 * self._speed
        return p.motor_ambient_c + p.motor_k_per_kw_loss * loss_kw / cooling

    def _fluid_temp_target(self) -> float:
        p = self.params
        loss_kw = max(self._p_shaft_kw - self._p_hyd_kw, 0.0)
        # pump losses heat the fluid passing through: dT = P / (m_dot c_p)
        m_dot_kg_s = max(self._q_tot, 0.5) / 3.6
        return p.fluid_temp_c + loss_kw / (m_dot_kg_s * 4.186)

    # -- dynamics ---------------------------------------------------------------------------
    def step(self, dt_s: float) -> None:
        """Advance by `dt_s` seconds of simulated time (commands and faults held)."""
        if dt_s <= 0.0:
            return
        p = self.params
        sp = min(max(self.speed_setpoint_pct, 0.0), 100.0) / 100.0
        vp = min(max(self.valve_position_pct, 0.0), 100.0) / 100.0
        self._speed = _lag(self._speed, sp, dt_s, p.speed_tau_s)
        self._valve = _lag(self._valve, vp, dt_s, p.valve_tau_s)
        # supply voltage wander: exact Ornstein-Uhlenbeck step
        decay = math.exp(-dt_s / p.supply_wander_tau_s)
        self._wander_v = self._wander_v * decay + p.supply_wander_v * math.sqrt(
            1.0 - decay * decay
        ) * self._rng.gauss(0.0, 1.0)
        self._solve()
        self._motor_temp = _lag(
            self._motor_temp, self._motor_temp_target(), dt_s, p.motor_thermal_tau_s
        )
        self._fluid_temp = _lag(self._fluid_temp, self._fluid_temp_target(), dt_s, p.fluid_tau_s)
        self.t_s += dt_s
        self._measure()

    def _measure(self) -> None:
        p = self.params
        if not self._noise_block:
            self._noise_block = self._noise_rng.standard_normal((512, 10)).tolist()
        z = self._noise_block.pop()
        n = self._speed
        off_bep = abs(self._q_tot / self._q_bep - 1.0) if n > 0.05 else 0.0
        base = p.base_vibration_mm_s * n * n + p.off_bep_vibration_mm_s * off_bep * n * n
        imb = self.imbalance_mm_s * n * n
        cav = 3.0 * self._cav
        # cavitation is broadband and erratic: its share fluctuates strongly sample to sample
        cav_x = cav * max(1.0 + 0.5 * z[8], 0.0)
        cav_y = cav * max(1.0 + 0.5 * z[9], 0.0)
        vib_x = math.sqrt(base**2 + imb**2 + cav_x**2)
        vib_y = math.sqrt((0.8 * base) ** 2 + (0.55 * imb) ** 2 + cav_y**2)
        rel = p.noise_vibration_rel
        pressure_noise = p.noise_pressure_bar * (1.0 + 8.0 * self._cav)
        flow_noise = p.noise_flow_m3h * (1.0 + 5.0 * self._cav)
        self._meas = {
            "pump_motor_current": max(self._current() + p.noise_current_a * z[0], 0.0),
            "pump_motor_voltage": max(self._voltage() + p.noise_voltage_v * z[1], 0.0),
            "pump_vibration_x": max(vib_x * (1.0 + rel * z[2]), 0.0),
            "pump_vibration_y": max(vib_y * (1.0 + rel * z[3]), 0.0),
            "pump_motor_temp": self._motor_temp + p.noise_temp_c * z[4],
            "pump_discharge_pressure": max(self._head + pressure_noise * z[5], 0.0),
            "pump_flow": max(self._q_meter + flow_noise * z[6], 0.0),
            "pump_fluid_temp": self._fluid_temp + p.noise_temp_c * z[7],
            "pump_speed_setpoint": self.speed_setpoint_pct,
            "pump_valve_position": self.valve_position_pct,
        }

    # -- observation ------------------------------------------------------------------------
    def outputs(self) -> dict[str, float]:
        """Measured values as served (noisy), keyed by point-map signal names."""
        return dict(self._meas)

    def true_state(self) -> dict[str, float]:
        """Noise-free internal state (for tests and evaluation)."""
        return {
            "speed": self._speed,
            "valve": self._valve,
            "flow_total_m3h": self._q_tot,
            "flow_meter_m3h": self._q_meter,
            "head_bar": self._head,
            "hydraulic_kw": self._p_hyd_kw,
            "shaft_kw": self._p_shaft_kw,
            "electric_kw": self._p_el_kw,
            "cavitation": self._cav,
            "motor_temp_c": self._motor_temp,
            "fluid_temp_c": self._fluid_temp,
            "current_a": self._current(),
            "voltage_v": self._voltage(),
        }
