"""The generic MPC expert (agent/control/mpc.py) on plants built here in numpy.

FOPDT and SOPDT plants with dead time as delay states, a third-order plant, an integrating
one and an identified ARX model: offset-free tracking under +-30 % gain mismatch, hard
bounds and rate, measured-disturbance feed-forward, better IAE than a SIMC PID, and the QP
solution checked against an exhaustive active-set search.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from agent.control.ident import Fopdt, LinearModel, Sopdt, StateSpace, simc_pid
from agent.control.mpc import (
    ModelMpc,
    dead_steps,
    fopdt_fit,
    kalman_gain,
    settling_steps,
    steady_gain,
)
from agent.control.pid import Pid, PidState

U0, Y0 = 50.0, 40.0


def plant(
    k: float,
    taus: Sequence[float],
    theta_steps: int,
    dt: float,
    kd: Sequence[float] = (),
    d_tau: float = 20.0,
) -> StateSpace:
    """Dead time (delay chain) then first-order lags in series on u; each measured
    disturbance through its own first-order lag, no dead time."""
    nl, ndist = len(taus), len(kd)
    n = theta_steps + nl + ndist
    a = np.zeros((n, n))
    b = np.zeros(n)
    bd = np.zeros((n, ndist))
    c = np.zeros(n)
    for i in range(1, theta_steps):
        a[i, i - 1] = 1.0
    for j, tau in enumerate(taus):
        p = math.exp(-dt / tau)
        i = theta_steps + j
        a[i, i] = p
        gain = (k if j == 0 else 1.0) * (1.0 - p)
        if j == 0 and theta_steps == 0:
            b[i] = gain
        else:
            a[i, i - 1] = gain
    if theta_steps:
        b[0] = 1.0
    c[theta_steps + nl - 1] = 1.0
    for m, g in enumerate(kd):
        i = theta_steps + nl + m
        p = math.exp(-dt / d_tau)
        a[i, i] = p
        bd[i, m] = g * (1.0 - p)
        c[i] = 1.0
    return StateSpace(a, b.reshape(n, 1), bd, c.reshape(1, n), dt, U0, np.zeros(ndist), Y0)


FOPDT = {"k": 2.0, "taus": (30.0,), "theta_steps": 10, "dt": 1.0, "kd": (-1.0,)}
SOPDT = {"k": -1.5, "taus": (40.0, 10.0), "theta_steps": 5, "dt": 1.0, "kd": (0.8,)}

Controller = Callable[[float, float, Sequence[float], float], float]


def run(
    ss: StateSpace,
    ctrl: Controller,
    n: int,
    sp: Callable[[int], float],
    d: Callable[[int], Sequence[float]] = lambda k: (),
    load: Callable[[int], float] = lambda k: 0.0,
    u_start: float = U0,
    see_d: bool = True,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Closed loop from rest at (u_start, d(0)); returns (y after each period, u, IAE)."""
    a, b, bd, c = ss.A, ss.B.ravel(), ss.Bd, ss.C.ravel()
    d0 = np.asarray(d(0), float) - ss.d0 if bd.shape[1] else np.zeros(0)
    # at rest (least squares: an integrating plant is at rest at u0 with any level)
    x = np.linalg.lstsq(np.eye(a.shape[0]) - a, b * (u_start - ss.u0) + bd @ d0, rcond=None)[0]
    u = u_start
    ys, us = np.empty(n), np.empty(n)
    iae = 0.0
    for k in range(n):
        y = ss.y0 + c @ x
        dk = tuple(d(k))
        u = ctrl(sp(k), y, dk if see_d else tuple(d(0)), u)
        x = a @ x + b * (u + load(k) - ss.u0) + (bd @ (np.asarray(dk) - ss.d0) if dk else 0.0)
        ys[k] = ss.y0 + c @ x
        us[k] = u
        iae += abs(sp(k) - ys[k]) * ss.dt_s
    return ys, us, iae


def steps(*levels: tuple[int, float]) -> Callable[[int], float]:
    def f(k: int) -> float:
        v = levels[0][1]
        for k0, x in levels:
            if k >= k0:
                v = x
        return v

    return f


def mpc_for(ss: StateSpace, **kw: float) -> ModelMpc:
    kw.setdefault("max_step", 3.0)
    return ModelMpc(ss, u_lo=0.0, u_hi=100.0, **kw)  # type: ignore[arg-type]


def test_model_helpers_on_a_known_fopdt() -> None:
    ss = plant(**FOPDT)
    k, kd = steady_gain(ss)
    assert k == pytest.approx(2.0) and kd == pytest.approx([-1.0])
    assert dead_steps(ss) == 10
    # 98 % of a first-order step: 10 s dead time + tau ln 50 = 117 s (discrete: within 2)
    assert abs(settling_steps(ss) - (10 + 30 * math.log(50))) <= 2
    kf, tau, theta = fopdt_fit(ss)
    assert kf == pytest.approx(2.0) and tau == pytest.approx(30.0, rel=0.02)
    assert theta == pytest.approx(10.0, abs=0.6)  # the zero-order hold adds half a period


@pytest.mark.parametrize("spec", [FOPDT, SOPDT], ids=["fopdt", "sopdt"])
@pytest.mark.parametrize("gain_factor", [0.7, 1.0, 1.3])
def test_tracks_setpoint_steps_offset_free_under_gain_mismatch(
    spec: dict, gain_factor: float
) -> None:
    model = plant(**spec)
    true = plant(**{**spec, "k": spec["k"] * gain_factor})
    mpc = mpc_for(model)
    sp = steps((0, Y0), (10, Y0 + 8.0), (350, Y0 - 6.0), (1050, Y0))
    load = steps((0, 0.0), (700, 4.0))  # unmeasured, on the plant input
    ys, us, _ = run(true, mpc.step, 1400, sp, d=lambda k: (0.0,), load=load)
    for k_end, target in ((349, Y0 + 8.0), (699, Y0 - 6.0), (1049, Y0 - 6.0), (1399, Y0)):
        assert abs(ys[k_end] - target) < 0.01, (k_end, ys[k_end], target)
    assert np.all(np.abs(np.diff(us)) <= 3.0 + 1e-9)


def test_any_order_and_long_dead_time() -> None:
    model = plant(1.0, (20.0, 8.0, 3.0), 25, 0.5)
    true = plant(1.3, (20.0, 8.0, 3.0), 25, 0.5)
    mpc = mpc_for(model, max_step=2.0)
    assert mpc.dead == dead_steps(model) >= 25  # each lag in series adds a period here
    ys, _, _ = run(true, mpc.step, 1200, steps((0, Y0), (20, Y0 + 5.0)))
    assert abs(ys[-1] - (Y0 + 5.0)) < 0.01
    assert ys.max() < Y0 + 5.0 + 1.0  # the reference path keeps the overshoot small


def test_respects_bounds_and_rate_exactly() -> None:
    ss = plant(**FOPDT)
    lo, hi, step = 20.0, 80.0, 1.5
    mpc = ModelMpc(ss, u_lo=lo, u_hi=hi, max_step=step)
    # an unreachable setpoint (needs u > 80), a big step down, an operator who moved the
    # output (u_prev jumps): every output inside the bounds and one step from u_prev
    sp = steps((0, Y0), (5, Y0 + 80.0), (200, Y0 - 30.0), (400, Y0 + 10.0))
    _, us, _ = run(ss, mpc.step, 600, sp, d=lambda k: (0.0,))
    assert us.min() >= lo and us.max() <= hi
    assert us.max() == hi and us.min() == lo  # both bounds were actually reached
    assert np.max(np.abs(np.diff(us))) <= step * (1 + 1e-12)
    for u_prev in (hi, lo, 55.0, 95.0):
        u = mpc.step(Y0 + 80.0, Y0, (0.0,), u_prev)
        assert lo <= u <= hi
        if lo <= u_prev <= hi:
            assert abs(u - u_prev) <= step * (1 + 1e-12)


def test_measured_disturbance_feed_forward_beats_feedback_only() -> None:
    ss = plant(**FOPDT)
    d = steps((0, 0.0), (50, 8.0), (350, -6.0))
    sp = steps((0, Y0))
    ys_ff, _, iae_ff = run(ss, mpc_for(ss).step, 650, sp, d=lambda k: (d(k),))
    _, _, iae_fb = run(ss, mpc_for(ss).step, 650, sp, d=lambda k: (d(k),), see_d=False)
    # the disturbance acts through a 20 s lag, the output through 10 s of dead time: even
    # perfect feed-forward leaves the first 10 s of every disturbance step to feedback
    assert iae_ff < 0.5 * iae_fb, (iae_ff, iae_fb)
    assert abs(ys_ff[-1] - Y0) < 0.01


def _pid(m: Fopdt | Sopdt, dt: float) -> Controller:
    t = simc_pid(m)
    pid = Pid(t["kp"], t["ti_s"], t["td_s"], direct_acting=t["direct_acting"])
    st = PidState()
    started = False

    def step(sp: float, y: float, d: Sequence[float], u_prev: float) -> float:
        nonlocal started
        if not started:
            pid.track(st, u_prev, sp, y)
            started = True
        u = pid.step(st, sp, y, dt, u_prev)
        return min(max(u, u_prev - 3.0), u_prev + 3.0)  # the same rate limit as the MPC

    return step


def _scenario(true: StateSpace, ctrl: Controller) -> float:
    """A setpoint step, a measured disturbance step, an unmeasured load step: IAE."""
    sp = steps((0, Y0), (10, Y0 + 3.0))
    d = steps((0, 0.0), (300, 5.0))
    load = steps((0, 0.0), (600, 2.0))
    return run(true, ctrl, 900, sp, d=lambda k: (d(k),), load=load)[2]


@pytest.mark.parametrize("gain_factor", [0.7, 1.0, 1.3])
@pytest.mark.parametrize("spec", [FOPDT, SOPDT], ids=["fopdt", "sopdt"])
def test_beats_simc_pid_on_iae(spec: dict, gain_factor: float) -> None:
    """Against SIMC on the model's FOPDT (what commissioning and validation tune)."""
    model = plant(**spec)
    true = plant(**{**spec, "k": spec["k"] * gain_factor})
    iae_mpc = _scenario(true, mpc_for(model).step)
    iae_pid = _scenario(true, _pid(Fopdt(*fopdt_fit(model)), spec["dt"]))
    assert iae_mpc < 0.8 * iae_pid, (iae_mpc, iae_pid)


def test_beats_the_sopdt_simc_pid_on_the_nominal_plant() -> None:
    """Against the strongest SIMC: a PID (Td = tau2) on the exact SOPDT.  Under +-30 % gain
    the two are within a few % of each other (measured 1.04x and 1.03x), which is why the
    validation compares over many cases rather than per case."""
    model = plant(**SOPDT)
    exact = Sopdt(SOPDT["k"], 40.0, 10.0, 5.0)
    iae_mpc = _scenario(model, mpc_for(model).step)
    iae_pid = _scenario(model, _pid(exact, SOPDT["dt"]))
    assert iae_mpc < 0.85 * iae_pid, (iae_mpc, iae_pid)


def test_start_is_bumpless_even_off_the_models_operating_point() -> None:
    ss = plant(**FOPDT)
    mpc = mpc_for(ss)
    # at rest at u = 62 with the pv 3 K off what the model predicts there
    y_rest = Y0 + 2.0 * (62.0 - U0) + 3.0
    mpc.reset(62.0, y_rest, (0.0,))
    for _ in range(20):
        assert mpc.step(y_rest, y_rest, (0.0,), 62.0) == pytest.approx(62.0, abs=1e-6)
    # without reset, the first step starts from what it sees
    fresh = mpc_for(ss)
    assert fresh.step(y_rest, y_rest, (0.0,), 62.0) == pytest.approx(62.0, abs=1e-6)


def test_nan_measurement_keeps_a_finite_output() -> None:
    ss = plant(**FOPDT)
    mpc = mpc_for(ss)
    mpc.reset(U0, Y0, (0.0,))
    u = U0
    for k in range(30):
        u = mpc.step(Y0 + 5.0, math.nan if k % 3 else Y0, (0.0,), u)
        assert math.isfinite(u)


def test_integrating_plant_with_an_explicit_horizon() -> None:
    # a level: y+ = y + 0.05 (u - 50) after 3 periods of dead time
    n = 4
    a = np.zeros((n, n))
    a[1, 0] = a[2, 1] = a[3, 3] = 1.0
    a[3, 2] = 0.05
    b = np.zeros((n, 1))
    b[0, 0] = 1.0
    c = np.zeros((1, n))
    c[0, 3] = 1.0
    ss = StateSpace(a, b, np.zeros((n, 0)), c, 1.0, U0, np.zeros(0), Y0)
    with pytest.raises(ValueError, match="does not settle"):
        ModelMpc(ss, u_lo=0.0, u_hi=100.0, max_step=5.0)
    a_true = a.copy()
    a_true[3, 2] *= 1.3  # the true level rises 30 % faster
    true = StateSpace(a_true, b, ss.Bd, c, 1.0, U0, ss.d0, Y0)
    mpc = ModelMpc(ss, u_lo=0.0, u_hi=100.0, max_step=5.0, horizon_steps=150)
    ys, _, _ = run(true, mpc.step, 500, steps((0, Y0), (10, Y0 + 10.0)))
    assert abs(ys[-1] - (Y0 + 10.0)) < 0.05


def test_identified_arx_model_plugs_in() -> None:
    p = math.exp(-1.0 / 30.0)
    model = LinearModel(
        dt_s=1.0, na=1, nb=1, nk=(11, 1), a=np.array([-p]),
        b=np.array([[2.0 * (1 - p)], [-1.0 * (1 - p)]]), u0=U0, d0=np.zeros(1), y0=Y0,
    )  # fmt: skip
    ss = model.to_state_space()
    assert ss.C.shape == (1, ss.A.shape[0]) and ss.B.shape == (ss.A.shape[0], 1)
    true = model.perturbed(1.3, 2).to_state_space()
    mpc = mpc_for(ss)
    ys, _, _ = run(true, mpc.step, 500, steps((0, Y0), (10, Y0 + 6.0)), d=lambda k: (0.0,))
    assert abs(ys[-1] - (Y0 + 6.0)) < 0.01


def test_kalman_gain_matches_plain_riccati_iteration() -> None:
    a = np.array([[0.9, 0.1], [0.0, 1.0]])
    c = np.array([1.0, 0.0])
    q = np.diag([1e-3, 1e-2])
    p = np.eye(2)
    for _ in range(5000):
        p = a @ p @ a.T + q - np.outer(a @ p @ c, c @ p @ a.T) / (c @ p @ c + 1.0)
    expected = p @ c / (c @ p @ c + 1.0)
    assert kalman_gain(a, c, q, 1.0) == pytest.approx(expected, rel=1e-8)


def test_constrained_plan_is_the_qp_optimum() -> None:
    """ADMM's plan against every active set of a 4-block problem (3^8 KKT solves)."""
    ss = plant(**FOPDT)
    mpc = ModelMpc(ss, u_lo=0.0, u_hi=100.0, max_step=3.0, moves=4, horizon_steps=120,
                   iterations=2000, tol=1e-7)  # fmt: skip
    m = mpc.starts.size
    assert m == 4
    hess = mpc.p_hat / np.outer(mpc.sc, mpc.sc)
    diff = np.eye(m) - np.eye(m, k=-1)
    rows = np.vstack([np.eye(m), diff])  # levels, then moves
    rng = np.random.default_rng(4)
    for u_prev in (50.0, 97.0, 2.0):
        lo = np.concatenate([np.full(m, 0.0 - u_prev), np.full(m, -3.0)])
        hi = np.concatenate([np.full(m, 100.0 - u_prev), np.full(m, 3.0)])
        for _ in range(3):
            err = rng.normal(0.0, 8.0, mpc.horizon)
            lin = mpc.gv_t @ err
            mpc.plan[:] = math.nan  # cold start

            def f(w: np.ndarray, lin: np.ndarray = lin) -> float:
                return 0.5 * float(w @ hess @ w) - float(lin @ w)

            best = math.inf
            for act in itertools.product((0, 1, 2), repeat=2 * m):
                idx = [i for i, s in enumerate(act) if s]
                if idx:
                    ae = rows[idx]
                    be = np.array([lo[i] if act[i] == 1 else hi[i] for i in idx])
                    kkt = np.block([[hess, ae.T], [ae, np.zeros((len(idx), len(idx)))]])
                    try:
                        sol = np.linalg.solve(kkt, np.concatenate([lin, be]))
                    except np.linalg.LinAlgError:
                        continue
                    w = sol[:m]
                else:
                    w = np.linalg.solve(hess, lin)
                r = rows @ w
                if np.all(r >= lo - 1e-7) and np.all(r <= hi + 1e-7):
                    best = min(best, f(w))
            w = mpc._solve(err, u_prev)
            r = rows @ w
            assert np.all(r >= lo - 1e-9) and np.all(r <= hi + 1e-9)
            assert f(w) <= best + 1e-4 * abs(best), (f(w), best)


# identified by agent.control.ident from a 40 min plant test on hw_sim's heater (GBN on the
# power, flow and inlet steps): FOPDT channels written over one common denominator
HEATER = {
    "dt_s": 0.5, "na": 3, "nb": 4, "nk": (14, 4, 9),
    "a": [-2.9154409782188466, 2.8331877813982103, -0.917726533471039],
    "b": [
        [0.0026102936473634537, 0.00883041865347021, -0.024545361036915216, 0.013116880418488916],
        [-0.08223155333394583, 0.1440631826953881, -0.047815534306454535, -0.014115616677767305],
        [0.013787965139743216, -0.001099041929738722, -0.03728926590472959, 0.024621825490819704],
    ],
    "u0": 62.21190476190386, "d0": [8.266639254274775, 21.249988997840163],
    "y0": 63.648914910981574,
}  # fmt: skip


@pytest.mark.parametrize("gain_factor,extra_delay", [(1.0, 0), (0.9, -2), (1.2, 2)])
def test_identified_heater_model_does_not_ring(gain_factor: float, extra_delay: int) -> None:
    """ARX puts every channel's poles in one denominator, so the u-channel carries zeros that
    cancel the disturbances' poles: modes only the measured disturbances drive.  A filter
    that lets offsets settle in them (any process noise on the plant states) sags and
    rings; the disturbance state must take the whole offset."""
    model = LinearModel(**{**HEATER, "a": np.array(HEATER["a"]), "b": np.array(HEATER["b"]),
                           "d0": np.array(HEATER["d0"])})  # fmt: skip
    ss = model.to_state_space()
    true = model.perturbed(gain_factor, extra_delay).to_state_space()
    mpc = ModelMpc(ss, u_lo=0.0, u_hi=100.0, max_step=12.5)
    d = tuple(HEATER["d0"])
    y_rest = ss.y0
    sp = steps((0, y_rest), (20, y_rest - 5.0), (400, y_rest + 3.0))
    ys, us, _ = run(true, mpc.step, 800, sp, d=lambda k: d, u_start=ss.u0)
    assert abs(ys[399] - (y_rest - 5.0)) < 0.02 and abs(ys[-1] - (y_rest + 3.0)) < 0.02
    quiet = float(np.abs(np.diff(us[250:400])).sum() + np.abs(np.diff(us[650:])).sum())
    assert quiet < 0.5, quiet  # settled and still, not ringing
