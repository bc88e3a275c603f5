"""The expert the shipped policy imitates: a constrained MPC on the heater's physical model.

Too expensive for the box at the loop rate (a QP over a 20 s horizon every period), which is
why it only runs offline - to generate training data and as the reference in `control-eval`.

* Model: the tank energy balance plus the element lag (`hw_sim.plant.heater`), linear for a
  frozen flow and inlet temperature, discretised exactly at the control period and
  re-linearised every period at the measured flow and inlet temperature (gain, time constant
  and dead time all move with the flow).
* Estimator: the nominal model runs beside the plant on the applied power and the measured
  disturbances; its tank temperature passes through the pipe delay (pipe volume / flow) and
  the sensor lag to predict the measurement, and the difference integrates into an output
  bias, so the prediction is offset-free under model error (+/-20 % parameters).
* Optimiser: minimise sum (r - T_k)^2 + lambda * sum (du_k)^2 over `horizon` moves subject to
  0 <= u <= 100 and the rate limit, by accelerated projected gradient (FISTA), warm-started.
Measurements only: the expert sees what the policy sees (no privileged plant state).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from hw_sim.plant.heater import RHO_CP_J_PER_L_K, HeaterParams


def _expm(m: np.ndarray) -> np.ndarray:
    """Matrix exponential by scaling and squaring a Taylor series (small matrices only)."""
    norm = float(np.abs(m).sum(axis=1).max())
    s = max(0, math.ceil(math.log2(norm)) + 1) if norm > 0 else 0
    a = m / (2**s)
    out = np.eye(m.shape[0])
    term = np.eye(m.shape[0])
    for k in range(1, 14):
        term = term @ a / k
        out = out + term
    for _ in range(s):
        out = out @ out
    return out


class MpcExpert:
    """Call `step(sp, y_meas, flow_lpm, inlet_c, u_applied_prev) -> u` once per period."""

    def __init__(
        self,
        params: HeaterParams | None = None,
        period_s: float = 0.5,
        horizon: int = 40,
        move_weight: float = 0.01,
        max_rate_per_s: float = 25.0,
        bias_gain: float = 0.1,
        iterations: int = 60,
    ) -> None:
        self.p = params or HeaterParams()
        self.dt = period_s
        self.n = horizon
        self.lam = move_weight
        self.max_step = max_rate_per_s * period_s
        self.bias_gain = bias_gain
        self.iterations = iterations
        self.reset()

    def reset(self, temp_c: float | None = None, power_w: float = 0.0) -> None:
        self.t_hat = math.nan if temp_c is None else temp_c
        self.p_hat = power_w
        self.bias = 0.0
        self.sensor_hat = self.t_hat
        self.cum_vol = 0.0
        self.hist: deque[tuple[float, float]] = deque()
        self.v = np.zeros(self.n)

    def _discretise(
        self, flow_lpm: float, inlet_c: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = self.p
        rc = RHO_CP_J_PER_L_K
        f = flow_lpm / 60.0 * rc
        cap = rc * p.tank_volume_l
        a = np.zeros((4, 4))
        a[0, 0] = -(f + p.loss_w_per_k) / cap
        a[0, 1] = 1.0 / cap
        a[0, 3] = (f * inlet_c + p.loss_w_per_k * p.ambient_c) / cap
        a[1, 1] = -1.0 / p.element_tau_s
        a[1, 2] = p.rated_power_kw * 1000.0 / 100.0 / p.element_tau_s
        e = _expm(a * self.dt)
        return e[:2, :2], e[:2, 2], e[:2, 3]

    def _observe(
        self,
        y: float,
        flow: float,
        inlet: float,
        u_prev: float,
        ad: np.ndarray,
        bd: np.ndarray,
        cd: np.ndarray,
    ) -> None:
        p = self.p
        if math.isnan(self.t_hat):  # start at steady state for the measured temperature
            self.t_hat = y
            self.p_hat = max(p.steady_power_pct(y, flow, inlet), 0.0) * p.rated_power_kw * 10.0
            self.sensor_hat = y
            self.hist.append((-p.pipe_volume_l - 1.0, y))
            self.hist.append((0.0, y))
        else:
            x = ad @ np.array([self.t_hat, self.p_hat]) + bd * u_prev + cd
            self.t_hat, self.p_hat = float(x[0]), float(x[1])
            self.cum_vol += flow / 60.0 * self.dt
            if self.cum_vol > self.hist[-1][0]:
                self.hist.append((self.cum_vol, self.t_hat))
        at = self.cum_vol - p.pipe_volume_l
        h = self.hist
        while len(h) > 2 and h[1][0] <= at:
            h.popleft()
        (v0, t0), (v1, t1) = h[0], h[1]
        delayed = t0 if v1 <= v0 else t0 + (t1 - t0) * min(max((at - v0) / (v1 - v0), 0.0), 1.0)
        self.sensor_hat += (delayed - self.sensor_hat) * (1 - math.exp(-self.dt / p.sensor_tau_s))
        self.bias += self.bias_gain * (y - (self.sensor_hat + self.bias))

    def step(self, sp: float, y: float, flow_lpm: float, inlet_c: float, u_prev: float) -> float:
        """Next heater power (%) from the measurements and the power applied last period."""
        flow = max(flow_lpm, 0.1)
        ad, bd, cd = self._discretise(flow, inlet_c)
        self._observe(y, flow, inlet_c, u_prev, ad, bd, cd)
        n = self.n
        # free response (u held at u_prev) and the unit-step response of T
        free = np.empty(n)
        step_resp = np.empty(n)
        x = np.array([self.t_hat, self.p_hat])
        s = np.zeros(2)
        for k in range(n):
            x = ad @ x + bd * u_prev + cd
            s = ad @ s + bd
            free[k] = x[0] + self.bias
            step_resp[k] = s[0]
        # T_k = free_k + sum_{j<=k} step_resp[k-j] * du_j  (du_j: move at step j)
        idx = np.arange(n)[:, None] - np.arange(n)[None, :]
        g = np.where(idx >= 0, step_resp[np.clip(idx, 0, n - 1)], 0.0)
        err = sp - free
        hess = g.T @ g + self.lam * np.eye(n)
        grad0 = -g.T @ err
        lip = float(np.linalg.norm(hess, 2))
        # decision: moves du; u_k = u_prev + cumsum(du) must stay in [0, 100]
        du = np.concatenate([self.v[1:], [0.0]])
        z, tk = du.copy(), 1.0
        for _ in range(self.iterations):
            du_new = z - (hess @ z + grad0) / lip
            du_new = np.clip(du_new, -self.max_step, self.max_step)
            u_path = np.clip(u_prev + np.cumsum(du_new), 0.0, 100.0)
            du_new = np.diff(np.concatenate([[u_prev], u_path]))
            tk_new = (1 + math.sqrt(1 + 4 * tk * tk)) / 2
            z = du_new + (tk - 1) / tk_new * (du_new - du)
            du, tk = du_new, tk_new
        self.v = du
        return float(min(max(u_prev + du[0], 0.0), 100.0))
