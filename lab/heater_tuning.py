"""Default PID tuning of the simulated heater: a step test and the SIMC rules (Skogestad 2003).

At the nominal point (10 L/min, inlet 20 degC, ~55 degC) the heater power is stepped by
+10 % on the noise-free plant; a first-order-plus-dead-time model is fitted with the
two-point method (times to 28.3 % and 63.2 % of the final change), and SIMC gives

    tau_c = theta (tight but robust),  Kc = tau / (K (tau_c + theta)),
    Ti = min(tau, 4 (tau_c + theta))

`python -m lab.heater_tuning` prints the numbers recorded in docs/control.md and used as
the defaults in `agent.control.settings`.
"""

from __future__ import annotations

from dataclasses import dataclass

from hw_sim.plant.heater import HeaterParams, HeaterPlant


@dataclass(frozen=True)
class StepTest:
    gain_k_per_pct: float
    tau_s: float
    theta_s: float
    kp: float
    ti_s: float


def simc_from_step_test(
    flow_lpm: float = 10.0, temp_c: float = 55.0, step_pct: float = 10.0, dt_s: float = 0.05
) -> StepTest:
    plant = HeaterPlant(HeaterParams(noise_std_c=0.0), disturbances=False)
    plant.set_disturbance(inlet_flow_lpm=flow_lpm, ramp=False)
    plant.settle(0.0, temp_c=temp_c)
    y0, u0 = plant.outputs()["tank_temp"], plant.power_pct
    plant.power_pct = u0 + step_pct
    ts, ys = [], []
    for k in range(1, round(200 / dt_s)):
        plant.step(dt_s)
        ts.append(k * dt_s)
        ys.append(plant.outputs()["tank_temp"] - y0)
    dy = ys[-1]
    t28 = next(t for t, y in zip(ts, ys, strict=True) if y >= 0.283 * dy)
    t63 = next(t for t, y in zip(ts, ys, strict=True) if y >= 0.632 * dy)
    tau = 1.5 * (t63 - t28)
    theta = max(t63 - tau, 0.0)
    k = dy / step_pct
    tau_c = theta
    return StepTest(k, tau, theta, tau / (k * (tau_c + theta)), min(tau, 4 * (tau_c + theta)))


if __name__ == "__main__":
    r = simc_from_step_test()
    print(
        f"K = {r.gain_k_per_pct:.3f} K/%, tau = {r.tau_s:.1f} s, theta = {r.theta_s:.1f} s "
        f"-> SIMC (tau_c = theta): Kc = {r.kp:.2f} %/K, Ti = {r.ti_s:.1f} s"
    )
