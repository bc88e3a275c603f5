"""A generic constrained MPC on an identified linear model: the expert for any loop.

The expert the policy imitates must come from the plant's own data, so it knows nothing but
the identified discrete model (`agent.control.ident.StateSpace`, deviation variables around
`(u0, d0, y0)`, dead time as delay states inside `A`).  Any order, any dead time, any number
of measured disturbances.

* Estimator: a steady-state Kalman filter on the model augmented with one integrating
  disturbance state - at the plant input (default: a load or a gain error looks like an
  offset on the input, and it also works for integrating plants) or at the output.  The
  integrator is what makes tracking offset-free under model mismatch: any steady error ends
  up in it and the prediction carries it.  The gain comes from the filter Riccati equation
  solved by the doubling algorithm (no scipy).
* Feed-forward: the measured disturbances drive the model in the estimator and are held at
  their present value over the horizon, so a measured disturbance is acted on before the
  pv moves.
* Reference: the plan tracks a first-order path from where the output will be once the dead
  time has passed to the setpoint, time constant `tau_ref` = half the smaller of the
  model's effective dead time and lag (IMC/SIMC's tau_c idea).  Without it the MPC inverts
  the model as fast as the constraints allow, and a dead time 25 % shorter than the model's
  makes it ring for good; with it it stays ahead of the SIMC PID on all the mismatch cases.
* Optimiser: minimise  sum_k (ref_k - y_k)^2 + move_weight * sum_j (g * du_j)^2  (g: the
  model's steady-state gain, so `move_weight` is dimensionless) over `horizon_steps`
  predictions (default 2.5 open-loop settling times), with the input blocked (single
  periods first, longer blocks later) so the horizon costs a few dozen decision variables,
  the planned *levels* (far better conditioned than the moves).  Output bounds and the rate
  limit are hard on every block.  The unconstrained optimum is one precomputed matrix
  product, taken when it is feasible (most periods); otherwise the QP is solved by ADMM
  (OSQP's iteration: one cached KKT inverse per penalty on a small ladder, exact box
  projections, warm-started from the shifted last plan and multipliers).  expert.py's
  FISTA with its clip-the-moves-then-the-path projection was tried first: that projection
  is not a Euclidean one, and on this problem it cycled for thousands of iterations.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, Protocol, cast

import numpy as np

from agent.control.safety import Envelope

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


class StateSpaceLike(Protocol):
    """What the MPC reads from `agent.control.ident.StateSpace` (duck-typed on purpose)."""

    A: np.ndarray
    B: np.ndarray
    Bd: np.ndarray
    C: np.ndarray
    dt_s: float
    u0: float
    d0: np.ndarray
    y0: float


def _arrays(ss: StateSpaceLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(A n×n, B n, Bd n×nd, C n) whatever shapes the model stored them in."""
    a = np.atleast_2d(np.asarray(ss.A, np.float64))
    n = a.shape[0]
    b = np.asarray(ss.B, np.float64).reshape(n)
    nd = np.asarray(ss.d0, np.float64).reshape(-1).size
    bd = np.asarray(ss.Bd, np.float64).reshape(n, nd) if nd else np.zeros((n, 0))
    c = np.asarray(ss.C, np.float64).reshape(n)
    return a, b, bd, c


def step_response(ss: StateSpaceLike, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Output responses to unit steps in u and in each d at k=0, sampled at k = 1..n_steps."""
    a, b, bd, c = _arrays(ss)
    su = np.empty(n_steps)
    sd = np.empty((n_steps, bd.shape[1]))
    x = np.zeros(a.shape[0])
    xd = np.zeros_like(bd)
    for k in range(n_steps):
        x = a @ x + b
        xd = a @ xd + bd
        su[k] = c @ x
        sd[k] = c @ xd
    return su, sd


def steady_gain(ss: StateSpaceLike) -> tuple[float, np.ndarray]:
    """Steady-state gains dy/du and dy/dd (inf when the model integrates)."""
    a, b, bd, c = _arrays(ss)
    m = np.eye(a.shape[0]) - a
    if abs(np.linalg.det(m)) < 1e-12 or np.max(np.abs(np.linalg.eigvals(a))) >= 1.0:
        return math.inf, np.full(bd.shape[1], math.inf)
    return float(c @ np.linalg.solve(m, b)), c @ np.linalg.solve(m, bd)


def settling_steps(ss: StateSpaceLike, band: float = 0.02, max_steps: int = 100_000) -> int:
    """Open-loop periods until a unit input step stays within `band` of its final value."""
    k_ss, _ = steady_gain(ss)
    if not math.isfinite(k_ss) or k_ss == 0.0:
        raise ValueError("the model does not settle (integrating or unstable): give a horizon")
    a, b, _, c = _arrays(ss)
    x = np.zeros(a.shape[0])
    last_out = 0
    tol = band * abs(k_ss)
    for k in range(1, max_steps + 1):
        x = a @ x + b
        if abs(c @ x - k_ss) > tol:
            last_out = k
        elif k > 2 * last_out + 50 and k > a.shape[0]:
            break
    return last_out + 1


def dead_steps(ss: StateSpaceLike, n_max: int = 10_000) -> int:
    """Whole periods before a step in u first shows at the output (the model's dead time)."""
    a, b, _, c = _arrays(ss)
    x = np.zeros(a.shape[0])
    k_ss = steady_gain(ss)[0]
    scale = max(abs(k_ss), 1e-300) if math.isfinite(k_ss) else 1.0
    for k in range(n_max):
        x = a @ x + b
        if abs(c @ x) > 1e-9 * scale:
            return k  # the first nonzero output is y_{k+1}: k whole periods of delay
    return n_max


def fopdt_fit(ss: StateSpaceLike) -> tuple[float, float, float]:
    """(K, tau_s, theta_s) of the model's own step response by the two-point method
    (times to 28.3 % and 63.2 %): the effective dead time and lag that set how fast
    feedback can safely be, whatever the model's order."""
    k, _ = steady_gain(ss)
    if not math.isfinite(k) or k == 0.0:
        raise ValueError("the model does not settle (integrating or unstable)")
    n = max(2 * settling_steps(ss), 10)
    s = step_response(ss, n)[0] / k
    dt = float(ss.dt_s)
    t = np.arange(1, n + 1) * dt

    def cross(frac: float) -> float:
        i = int(np.argmax(s >= frac))
        if i == 0:
            return float(t[0] * frac / max(s[0], 1e-12))
        return float(t[i - 1] + (frac - s[i - 1]) / (s[i] - s[i - 1]) * dt)

    t28, t63 = cross(0.283), cross(0.632)
    tau = max(1.5 * (t63 - t28), dt)
    return k, tau, max(t63 - tau, 0.0)


def kalman_gain(a: np.ndarray, c: np.ndarray, q: np.ndarray, r: float) -> np.ndarray:
    """Steady-state (current-form) Kalman gain for x+ = A x + w, y = C x + v.

    The filter Riccati equation is solved by the structure-preserving doubling algorithm
    (quadratic convergence: ~20 iterations even for slow modes and long delay chains, where
    plain iteration needs thousands).
    """
    n = a.shape[0]
    ak = a.T.copy()
    gk = np.outer(c, c) / r
    hk = q.copy()
    eye = np.eye(n)
    for _ in range(200):
        w = np.linalg.solve(eye + gk @ hk, np.hstack([ak, gk]))
        w_a, w_g = w[:, :n], w[:, n:]
        h_new = hk + ak.T @ hk @ w_a
        gk = gk + ak @ w_g @ ak.T
        ak = ak @ w_a
        done = np.linalg.norm(h_new - hk) <= 1e-12 * max(float(np.linalg.norm(h_new)), 1e-300)
        hk = h_new
        if done:
            break
    p = (hk + hk.T) / 2  # prior (predicted) covariance
    return cast(np.ndarray, p @ c / (c @ p @ c + r))


def move_blocks(horizon: int, moves: int) -> np.ndarray:
    """Periods at which the planned input may change: every period first, then log-spaced.

    Half the moves are single periods (a ramp at the rate limit is representable), the rest
    spread out to half the horizon, so the tail of the horizon sees a settled input.
    """
    moves = max(1, min(moves, horizon))
    fine = max(1, moves // 2)
    if moves == fine:
        return np.arange(fine)
    tail = np.round(np.geomspace(fine, max(fine + 1, horizon // 2), moves - fine)).astype(int)
    return np.unique(np.concatenate([np.arange(fine), tail]))


class ModelMpc:
    """Offset-free constrained MPC on a linear model; `step(...)` once per control period.

    The returned output is inside `[u_lo, u_hi]` and within `max_step` of `u_prev` exactly
    (the same `Envelope` as the run-time loop is the last thing it passes through).
    """

    def __init__(
        self,
        ss: StateSpaceLike,
        *,
        u_lo: float,
        u_hi: float,
        max_step: float = math.inf,
        horizon_steps: int | None = None,
        move_weight: float = 0.05,
        moves: int = 24,
        disturbance: Literal["input", "output"] = "input",
        noise_ratio: float | None = None,
        estimator_time_s: float | None = None,
        tau_ref_s: float | None = None,
        ref_factor: float = 0.5,
        iterations: int = 200,
        tol: float = 1e-4,
        rho: float = 1.0,
    ) -> None:
        """`max_step` is the rate limit per period.  `horizon_steps` defaults to 2.5 open-loop
        settling times (needed for an integrating model).  The estimator's disturbance-to-
        measurement noise variance ratio (`noise_ratio`, in output units: larger follows
        loads faster and passes more noise) is by default chosen so that an unmeasured load
        step is 63 % estimated after `estimator_time_s`, by default 2 effective dead times +
        4 periods: integral action about as fast as SIMC's.  `tau_ref_s` (default
        `ref_factor` x min(dead time, lag), at least 2 periods; 0 = none) sets how fast the
        plan may bring the output to a new setpoint."""
        if not u_lo < u_hi:
            raise ValueError(f"u_lo {u_lo} must be below u_hi {u_hi}")
        self.ss = ss
        self.env = Envelope(float(u_lo), float(u_hi), float(max_step))
        self.u_lo, self.u_hi, self.max_step = float(u_lo), float(u_hi), float(max_step)
        a, b, bd, c = _arrays(ss)
        n, nd = a.shape[0], bd.shape[1]
        self.nd = nd
        self.u0, self.y0 = float(ss.u0), float(ss.y0)
        self.d0 = np.asarray(ss.d0, np.float64).reshape(nd)
        k_ss, _ = steady_gain(ss)
        if horizon_steps is None:
            horizon_steps = math.ceil(2.5 * settling_steps(ss))
        self.horizon = int(horizon_steps)
        if self.horizon < 1:
            raise ValueError("horizon_steps must be >= 1")
        g_scale = abs(k_ss) if math.isfinite(k_ss) and k_ss != 0.0 else 1.0

        # augmented model: plant states + one integrating disturbance state
        aa = np.zeros((n + 1, n + 1))
        aa[:n, :n] = a
        aa[n, n] = 1.0
        ca = np.zeros(n + 1)
        ca[:n] = c
        if disturbance == "input":
            aa[:n, n] = b
            w_scale = 1.0 / g_scale**2
        elif disturbance == "output":
            ca[n] = 1.0
            w_scale = 1.0
        else:
            raise ValueError(f"disturbance must be 'input' or 'output', not {disturbance!r}")
        self.aa, self.ca = aa, ca
        self.ba = np.concatenate([b, [0.0]])
        self.bda = np.vstack([bd, np.zeros((1, nd))])

        # noise on the disturbance state only, so a steady error goes into it and not into
        # the plant states (an identified ARX realisation has modes that only a measured
        # disturbance drives: given noise, the filter parks offsets there and sags back);
        # an integrating plant needs a little on its states for the Riccati to be solvable
        stable = bool(np.max(np.abs(np.linalg.eigvals(a)), initial=0.0) < 1.0 - 1e-9)
        q_plant = 0.0 if stable else 1e-6

        def gain_for(ratio: float) -> np.ndarray:
            q = np.full(n + 1, q_plant * ratio)
            q[n] = ratio * w_scale
            return kalman_gain(aa, ca, np.diag(q), 1.0)

        dt = float(ss.dt_s)
        try:
            _, tau, theta = fopdt_fit(ss)
        except ValueError:  # integrating: no FOPDT; the horizon sets the scale
            tau = theta = 0.1 * self.horizon * dt
        self.tau_s, self.theta_s = tau, theta
        if noise_ratio is None:
            if estimator_time_s is None:
                estimator_time_s = 2.0 * theta + 4.0 * dt
            noise_ratio = self._tune_ratio(gain_for, estimator_time_s / dt)
        self.noise_ratio = float(noise_ratio)
        self.gain = gain_for(self.noise_ratio)
        # reference trajectory: from where the output will be once the dead time has passed,
        # to the setpoint with time constant tau_ref (IMC/SIMC's tau_c), so the plan asks
        # for no faster a response than the model's accuracy supports
        if tau_ref_s is None:
            tau_ref_s = max(ref_factor * min(theta, tau), 2.0 * dt)
        self.tau_ref_s = float(tau_ref_s)
        self.dead = dead_steps(ss, self.horizon)
        k_rel = np.arange(self.horizon) - self.dead + 1.0
        self.ref_decay = np.where(
            k_rel > 0, np.exp(-np.maximum(k_rel, 0.0) * dt / max(self.tau_ref_s, 1e-12)), 1.0
        )
        if self.tau_ref_s == 0.0:
            self.ref_decay = np.where(k_rel > 0, 0.0, 1.0)

        # prediction: y_k = y0 + O_k xa + S_k (u_prev - u0) + Sd_k dd + sum_j G_kj du_j
        big_n = self.horizon
        obs = np.empty((big_n, n + 1))
        row = ca.copy()
        for k in range(big_n):
            row = row @ aa
            obs[k] = row
        self.obs = obs
        su, sd = step_response(ss, big_n)
        self.su, self.sd = su, sd
        self.starts = move_blocks(big_n, moves)
        m = self.starts.size
        self.block_len = np.diff(np.concatenate([self.starts, [big_n]]))
        # decision: w_j = planned output over block j minus u_prev; moves du = D w.  Levels
        # rather than moves keep the Hessian far better conditioned (a move's effect lasts
        # the whole horizon, a level's only its block).
        g = np.zeros((big_n, m))
        for j, s in enumerate(self.starts):
            g[s:, j] = su[: big_n - s]
        diff = np.eye(m) - np.eye(m, k=-1)
        gv = g @ diff
        hess = gv.T @ gv + move_weight * g_scale**2 * (diff.T @ diff)
        self.gv_t = np.ascontiguousarray(gv.T)
        self.k_unc = np.linalg.solve(hess, self.gv_t)  # unconstrained optimum = k_unc @ error
        # the constrained QP, Jacobi-scaled (w = sc * x) with unit-norm constraint rows:
        # rows 0..m-1 bound the levels, rows m..2m-1 the moves
        sc = 1.0 / np.sqrt(np.diag(hess))
        self.sc = sc
        self.p_hat = hess * np.outer(sc, sc)
        row_scale = 1.0 / np.maximum(sc, np.concatenate([[0.0], sc[:-1]]))
        self.row_scale = row_scale
        self.a_hat = np.vstack([np.eye(m), (diff * sc[None, :]) * row_scale[:, None]])
        self.a_hat_t = np.ascontiguousarray(self.a_hat.T)
        self.sigma, self.alpha = 1e-6, 1.6
        # a ladder of penalties with their KKT inverses, so the ADMM penalty can adapt
        # (as OSQP's does) without a factorisation per step
        self.rhos = rho * 10.0 ** np.arange(-3.0, 3.01, 0.5)
        ata = self.a_hat.T @ self.a_hat
        self.kkt_invs = [
            np.linalg.inv(self.p_hat + self.sigma * np.eye(m) + r * ata) for r in self.rhos
        ]
        self.rho_i = self.rhos.size // 2
        self.iterations = iterations
        self.tol = tol
        self.last_iterations = 0
        self.reset(math.nan, math.nan, None)

    # -- estimator ---------------------------------------------------------------------
    def _estimate_time(self, gain: np.ndarray, limit: int) -> int:
        """Periods until the estimator has 63 % of a unit disturbance step (perfect model)."""
        aa, ca = self.aa, self.ca
        x = np.zeros(aa.shape[0])
        x[-1] = 1.0  # the true plant: at rest, disturbance stepped to 1
        xh = np.zeros_like(x)
        for k in range(1, limit + 1):
            x = aa @ x
            xh = aa @ xh
            xh += gain * (ca @ x - ca @ xh)
            if xh[-1] >= 0.632:
                return k
        return limit + 1

    def _tune_ratio(self, gain_for: Callable[[float], np.ndarray], target: float) -> float:
        """Bisection on log10(ratio) in [-6, 4] for a 63 % estimate after `target` periods."""
        lo, hi = -6.0, 4.0
        limit = max(int(4 * target), 50)
        for _ in range(8):
            mid = (lo + hi) / 2.0
            if self._estimate_time(gain_for(10.0**mid), limit) > target:
                lo = mid  # too slow: more disturbance noise
            else:
                hi = mid
        return float(10.0 ** ((lo + hi) / 2.0))

    def reset(self, u0: float, y0: float, d0: Sequence[float] | np.ndarray | None) -> None:
        """Start from the plant at rest at output `u0`, measurement `y0`, disturbances `d0`;
        the model's disturbance state absorbs whatever the model's own operating point
        disagrees with, so the first output is `u0` plus a move, never a step."""
        self.xa = np.zeros(self.aa.shape[0])
        self.plan = np.full(self.starts.size, math.nan)  # absolute levels of the last plan
        self.dual = np.zeros(2 * self.starts.size)
        self.ready = False
        if not (math.isfinite(u0) and math.isfinite(y0)):
            return
        d = self._d(d0)
        n1 = self.aa.shape[0]
        # steady state: (I - Aa) xa = Ba du + Bda dd and Ca xa = dy, solved in least squares
        # (an integrating model has a singular I - A; the output equation pins it)
        lhs = np.vstack([np.eye(n1) - self.aa, self.ca[None, :]])
        rhs = np.concatenate([self.ba * (u0 - self.u0) + self.bda @ (d - self.d0), [y0 - self.y0]])
        self.xa = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
        self.d_last = d
        self.ready = True

    def _d(self, d: Sequence[float] | np.ndarray | None) -> np.ndarray:
        if d is None or self.nd == 0:
            return self.d0.copy()
        return np.asarray(d, np.float64).reshape(self.nd)

    def _observe(self, y: float, d: np.ndarray, u_prev: float) -> None:
        xa = self.aa @ self.xa + self.ba * (u_prev - self.u0) + self.bda @ (self.d_last - self.d0)
        if math.isfinite(y):
            xa += self.gain * (y - self.y0 - self.ca @ xa)
        self.xa = xa
        self.d_last = d

    # -- optimiser ---------------------------------------------------------------------
    def _feasible(self, w: np.ndarray, u_prev: float) -> bool:
        if np.any(np.abs(np.diff(w, prepend=0.0)) > self.max_step * (1 + 1e-9)):
            return False
        return bool(
            np.all(w >= self.u_lo - u_prev - 1e-9) and np.all(w <= self.u_hi - u_prev + 1e-9)
        )

    def _project(self, w: np.ndarray, u_prev: float) -> np.ndarray:
        """A feasible plan near `w`: clip the moves, then the levels (clipping is 1-Lipschitz,
        so the clipped levels keep every move within the rate limit)."""
        moves = np.clip(np.diff(w, prepend=0.0), -self.max_step, self.max_step)
        return cast(np.ndarray, np.clip(np.cumsum(moves), self.u_lo - u_prev, self.u_hi - u_prev))

    def _warm(self, u_prev: float) -> np.ndarray:
        """The last plan shifted by one period, resampled on the blocks, relative to u_prev."""
        if not math.isfinite(self.plan[0]):
            return np.zeros(self.plan.size)
        path = np.repeat(self.plan, self.block_len)
        return cast(np.ndarray, np.concatenate([path[1:], path[-1:]])[self.starts] - u_prev)

    def step(self, sp: float, y_meas: float, d_meas: Sequence[float], u_prev: float) -> float:
        """This period's output from the setpoint, the measurement, the measured disturbances
        and the output applied last period (after any envelope or operator action)."""
        d = self._d(d_meas)
        if not self.ready:
            self.reset(u_prev, y_meas, d)
            if not self.ready:
                return u_prev
        self._observe(y_meas, d, u_prev)
        free = self.y0 + self.obs @ self.xa + self.su * (u_prev - self.u0) + self.sd @ (d - self.d0)
        base = free[self.dead - 1] if self.dead >= 1 else self.y0 + float(self.ca @ self.xa)
        err = sp - free - (sp - base) * self.ref_decay
        w = self.k_unc @ err
        self.last_iterations = 0
        if self._feasible(w, u_prev):
            self.dual[:] = 0.0
        else:
            w = self._solve(err, u_prev)
        self.plan = u_prev + w
        return self.env.apply(u_prev + float(w[0]), u_prev)[0]

    def _solve(self, err: np.ndarray, u_prev: float) -> np.ndarray:
        """The constrained plan by ADMM (the OSQP iteration: one cached KKT inverse, exact
        box projections), warm-started from the shifted last plan and its multipliers."""
        m = self.starts.size
        q = -self.sc * (self.gv_t @ err)
        lo = np.concatenate([(self.u_lo - u_prev) / self.sc, -self.max_step * self.row_scale])
        hi = np.concatenate([(self.u_hi - u_prev) / self.sc, self.max_step * self.row_scale])
        a, a_t, p_hat = self.a_hat, self.a_hat_t, self.p_hat
        sigma, alpha = self.sigma, self.alpha
        rho, kinv = self.rhos[self.rho_i], self.kkt_invs[self.rho_i]
        x = self._project(self._warm(u_prev), u_prev) / self.sc
        z = np.clip(a @ x, lo, hi)
        y = self.dual
        eps_p = self.tol * (1.0 + float(np.max(np.abs(z))))
        eps_d = self.tol * (1.0 + float(np.max(np.abs(q))))
        it = 0
        for it in range(1, self.iterations + 1):
            x_t = kinv @ (sigma * x - q + a_t @ (rho * z - y))
            ax = alpha * (a @ x_t) + (1.0 - alpha) * z
            x = alpha * x_t + (1.0 - alpha) * x
            z_new = np.clip(ax + y / rho, lo, hi)
            y = y + rho * (ax - z_new)
            z = z_new
            if it % 5 == 0:
                ax, px, aty = a @ x, p_hat @ x, a_t @ y
                r_p = float(np.max(np.abs(ax - z)))
                r_d = float(np.max(np.abs(px + q + aty)))
                if r_p <= eps_p and r_d <= eps_d:
                    break
                if it % 20 == 0:  # rebalance the penalty: primal vs dual residual (OSQP)
                    norm_p = max(float(np.max(np.abs(ax))), float(np.max(np.abs(z))), 1e-12)
                    norm_d = max(float(np.max(np.abs(px))), float(np.max(np.abs(aty))), eps_d)
                    want = rho * math.sqrt((r_p / norm_p) / max(r_d / norm_d, 1e-300))
                    i = int(np.argmin(np.abs(np.log(self.rhos) - math.log(max(want, 1e-300)))))
                    if i != self.rho_i:
                        self.rho_i = i
                        rho, kinv = self.rhos[i], self.kkt_invs[i]
        self.dual = y
        self.last_iterations = it
        return self._project(self.sc * x[:m], u_prev)
