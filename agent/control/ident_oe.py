"""Output-error FOPDT/SOPDT fits (agent/control/ident.py): the model is simulated from the
inputs (exact zero-order-hold, fractional dead time); dead time and time constants come from
a grid search whose inner problem (gains, offset, initial transient) is linear, then a
compass search.  Measured disturbances are extra channels with their own gain, lag and dead
time."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np

from agent.control.ident_model import (
    Fopdt,
    LinearModel,
    Sopdt,
)
from agent.control.ident_sim import (
    lfilter,
    scaled_lstsq,
    shift_delay,
)

_FRACS = np.array([0.0, 0.25, 0.5, 0.75])  # fractional dead-time grid (refined later)


def _unit_dyn(taus: tuple[float, ...], dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit-gain ZOH discretisation (num, den) of 1/(tau s + 1) or 1/((t1 s+1)(t2 s+1))."""
    if len(taus) == 1:
        a = math.exp(-dt / taus[0])
        return np.array([1.0 - a]), np.array([1.0, -a])
    t1, t2 = max(taus), min(taus)
    if t1 - t2 < 1e-3 * t1:
        t2 = t1 * (1.0 - 1e-3)
    p1, p2 = math.exp(-dt / t1), math.exp(-dt / t2)

    def s(t: float) -> float:  # unit step response
        return 1.0 - (t1 * math.exp(-t / t1) - t2 * math.exp(-t / t2)) / (t1 - t2)

    b1 = s(dt)
    b2 = s(2 * dt) - (p1 + p2) * b1 - b1
    return np.array([b1, b2]), np.array([1.0, -(p1 + p2), p1 * p2])


def _frac_weights(
    taus: tuple[float, ...], dt: float, frac: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the integer-delayed responses for a fractional dead time: exact for a
    first-order lag under ZOH, linear interpolation for the (smoother) second order."""
    frac = np.asarray(frac, dtype=float)
    if len(taus) == 1:
        a = math.exp(-dt / taus[0])
        exact = 1e-300 < a < 1.0 - 1e-15
        w1 = (1.0 - a ** (1.0 - frac)) / (1.0 - a) if exact else 1.0 - frac
        return w1, 1.0 - w1
    return 1.0 - frac, frac


@dataclass
class Chan:
    """One input channel of an output-error fit."""

    taus: tuple[float, ...] = ()
    theta: float = 0.0
    K: float = 0.0
    active: bool = False
    g: np.ndarray | None = None  # unit-gain response on the fit data

    def fopdt(self) -> Fopdt:
        if not self.active:
            return Fopdt(0.0, math.nan, math.nan)
        return Fopdt(float(self.K), float(self.taus[0]), float(self.theta))

    def sopdt(self) -> Sopdt:
        if not self.active:
            return Sopdt(0.0, math.nan, math.nan, math.nan)
        t = self.taus if len(self.taus) == 2 else (self.taus[0], 0.0)
        return Sopdt(float(self.K), float(max(t)), float(min(t)), float(self.theta))


def _response(x: np.ndarray, taus: tuple[float, ...], theta: float, dt: float) -> np.ndarray:
    """Unit-gain response of x through the lag(s) and the (fractional) dead time."""
    num, den = _unit_dyn(taus, dt)
    f = lfilter(num, den, x)
    s = math.floor(theta / dt + 1e-9)
    frac = theta / dt - s
    w1, w2 = _frac_weights(taus, dt, np.array([frac]))
    return float(w1[0]) * shift_delay(f, s) + float(w2[0]) * shift_delay(f, s + 1)


def _transient(taus: tuple[float, ...], dt: float, n: int) -> np.ndarray:
    """Columns a^k for the poles: the decay of a start away from steady state."""
    k = np.arange(n)
    return np.column_stack([np.exp(k * (-dt / t)) for t in taus])


def _lagged_dots(fp: np.ndarray, V: np.ndarray, nshift: int) -> np.ndarray:
    """sum_k fp[o + k] V[k, :] for o = 0 .. nshift-1 (FFT correlation, all lags at once)."""
    N = V.shape[0]
    size = 1 << math.ceil(math.log2(len(fp) + N))
    F = np.fft.rfft(fp, size)
    G = np.fft.rfft(V, size, axis=0)
    corr = np.fft.irfft(F[:, None] * np.conj(G), size, axis=0)
    return corr[:nshift]


def _grid_channel(
    y: np.ndarray, x: np.ndarray, Z: np.ndarray, dt: float, order: int, own_transient: bool
) -> tuple[tuple[float, ...], float, float]:
    """Coarse search of (taus, dead time) for one channel: for every candidate lag the best
    dead time over all shifts and fractions comes from correlations in closed form."""
    N = len(y)
    M = max(1, min(N // 3, 2000))
    T = N * dt
    grid: list[tuple[float, ...]]
    if order == 1:
        grid = [(t,) for t in np.geomspace(dt / 4, T / 2, 28)]
    else:
        grid = [
            (t, t * r) for t in np.geomspace(dt / 2, T / 2, 16) for r in (0.08, 0.2, 0.4, 0.7, 1.0)
        ]
    best = (math.inf, grid[0], 0.0)
    idx = np.arange(M + 1)
    for taus in grid:
        num, den = _unit_dyn(taus, dt)
        f = lfilter(num, den, x)
        Zc = np.column_stack([Z, _transient(taus, dt, N)]) if own_transient else Z
        fp = np.concatenate((np.full(M + 1, f[0]), f))
        dots = _lagged_dots(fp, np.column_stack([y, Zc]), M + 2)[::-1]  # row s: shift s
        gy, gZ = dots[:, 0], dots[:, 1:]
        c2 = np.concatenate(([0.0], np.cumsum(fp * fp)))
        o = M + 1 - np.arange(M + 2)  # window start of shift s
        gg = c2[o + N] - c2[o]
        pr = np.concatenate(([0.0], fp[1:] * fp[:-1]))
        c1 = np.concatenate(([0.0], np.cumsum(pr)))
        # sum_k fp[o+k] fp[o+k-1] for shift s (pairs s, s+1): o = M+1-s >= 1
        gg1 = c1[o[:-1] + N] - c1[o[:-1]]
        ZZ = Zc.T @ Zc
        ZZi = np.linalg.pinv(ZZ)
        Zy = Zc.T @ y
        yPy = float(y @ y - Zy @ ZZi @ Zy)
        w1, w2 = _frac_weights(taus, dt, _FRACS)  # (F,)
        W1, W2 = w1[None, :], w2[None, :]
        gy_s = W1 * gy[idx, None] + W2 * gy[idx + 1, None]  # (M+1, F)
        q = W1[..., None] * gZ[idx, None, :] + W2[..., None] * gZ[idx + 1, None, :]  # (M+1,F,p)
        gg_s = W1**2 * gg[idx, None] + 2 * W1 * W2 * gg1[idx, None] + W2**2 * gg[idx + 1, None]
        proj = np.einsum("sfp,pq->sfq", q, ZZi)
        gPy = gy_s - proj @ Zy
        gPg = gg_s - np.einsum("sfq,sfq->sf", proj, q)
        with np.errstate(all="ignore"):
            sse = np.where(gPg > 1e-12 * max(gg.max(), 1e-300), yPy - gPy**2 / gPg, np.inf)
        k = int(np.argmin(sse))
        s, fi = divmod(k, len(_FRACS))
        if sse.flat[k] < best[0]:
            best = (float(sse.flat[k]), taus, (s + _FRACS[fi]) * dt)
    return best[1], best[2], best[0]


def _channel_sse(
    y: np.ndarray,
    x: np.ndarray,
    Z: np.ndarray,
    dt: float,
    taus: tuple[float, ...],
    theta: float,
    own_transient: bool,
) -> tuple[float, float, np.ndarray]:
    g = _response(x, taus, theta, dt)
    cols = [Z, g[:, None]]
    if own_transient:
        cols.append(_transient(taus, dt, len(y)))
    R = np.column_stack(cols)
    coef = scaled_lstsq(R, y)
    r = y - R @ coef
    return float(r @ r), float(coef[Z.shape[1]]), g


def _compass(
    f: Callable[[np.ndarray], float],
    p0: np.ndarray,
    step: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    tol: np.ndarray,
    max_eval: int = 120,
) -> np.ndarray:
    """Derivative-free local refinement: try +-step per coordinate, halve when stuck."""
    p = p0.astype(float).copy()
    best = f(p)
    st = step.astype(float).copy()
    evals = 1
    while np.any(st > tol) and evals < max_eval:
        moved = False
        for i in range(len(p)):
            if st[i] <= tol[i]:
                continue
            for sgn in (1.0, -1.0):
                q = p.copy()
                q[i] = min(max(p[i] + sgn * st[i], lo[i]), hi[i])
                if q[i] == p[i]:
                    continue
                v = f(q)
                evals += 1
                if v < best:
                    best, p, moved = v, q, True
                    break
        if not moved:
            st /= 2.0
    return p


def _fit_channel(
    y: np.ndarray, x: np.ndarray, Z: np.ndarray, dt: float, order: int, own_transient: bool
) -> Chan:
    taus, theta, _ = _grid_channel(y, x, Z, dt, order, own_transient)
    N = len(y)
    T = N * dt
    theta_max = max(1, min(N // 3, 2000)) * dt
    # order 2 is searched as (log(tau1 + tau2), log(tau2 / tau1)): along the ridge where
    # the lags trade against each other the sum stays put, so coordinate steps can follow it
    if order == 1:
        p0 = np.array([math.log(taus[0]), theta])
        lo = np.array([math.log(dt / 20), 0.0])
        hi = np.array([math.log(10 * T), theta_max])
        step = np.array([0.15, 0.5 * dt])
        tol = np.array([0.008, 0.02 * dt])
    else:
        t1, t2 = max(taus), min(taus)
        p0 = np.array([math.log(t1 + t2), math.log(t2 / t1), theta])
        lo = np.array([math.log(dt / 10), math.log(0.01), 0.0])
        hi = np.array([math.log(20 * T), 0.0, theta_max])
        step = np.array([0.15, 0.4, 0.5 * dt])
        tol = np.array([0.008, 0.02, 0.02 * dt])

    def lags(p: np.ndarray) -> tuple[float, ...]:
        if order == 1:
            return (float(math.exp(p[0])),)
        total, ratio = math.exp(p[0]), math.exp(p[1])
        return (total / (1.0 + ratio), total * ratio / (1.0 + ratio))

    def cost(p: np.ndarray) -> float:
        return _channel_sse(y, x, Z, dt, lags(p), float(p[-1]), own_transient)[0]

    p = _compass(cost, p0, step, lo, hi, tol)
    taus, theta = lags(p), float(p[-1])
    _, K, g = _channel_sse(y, x, Z, dt, taus, theta, own_transient)
    return Chan(taus=taus, theta=theta, K=K, active=True, g=g)


def _highpass(x: np.ndarray, w: int) -> np.ndarray:
    """x minus its causal moving average over w samples (first value held before the start):
    a linear filter, so applied to input and output alike it keeps a linear plant's gain,
    lags and dead time, while the slow level changes of a wide operating range (where a
    nonlinear gain shows as curvature) stop dominating the fit."""
    c = np.cumsum(np.concatenate((np.full(w, x[0]), x)))
    return cast(np.ndarray, x - (c[w:] - c[:-w]) / w)


def fit_oe(
    y: np.ndarray, X: np.ndarray, dt: float, order: int, hp_window: int | None = None
) -> tuple[list[Chan], float]:
    """Output-error fit of every moving input channel (u first), coordinate-wise: u with the
    disturbances as plain regressors, then each disturbance with the others fixed, twice.
    With `hp_window` the lags and dead times are searched on high-passed data (`_highpass`),
    the gains always on the data as given. Returns the channels and the constant (y at the
    inputs' mean)."""
    N, m = X.shape
    chans = [Chan() for _ in range(m)]
    moving = [bool(np.ptp(X[:, i]) > 0) for i in range(m)]
    ones = np.ones((N, 1))
    if hp_window:
        ys = _highpass(y, hp_window)
        Xs = np.column_stack([_highpass(X[:, i], hp_window) for i in range(m)])
    else:
        ys, Xs = y, X

    def fixed(i: int) -> np.ndarray:
        cols = [ones]
        for j in range(m):
            if j == i or not moving[j]:
                continue
            g = chans[j].g
            cols.append((g if g is not None else shift_delay(Xs[:, j], 1)).reshape(-1, 1))
        if i != 0 and chans[0].active:
            cols.append(_transient(chans[0].taus, dt, N))
        return np.column_stack(cols)

    order_of_fits = [0] + [j for j in range(1, m) if moving[j]]
    rounds = 2 if len(order_of_fits) > 1 else 1
    if not moving[0]:
        return chans, 0.0
    for _ in range(rounds):
        for i in order_of_fits:
            chans[i] = _fit_channel(ys, Xs[:, i], fixed(i), dt, order, own_transient=(i == 0))
    if hp_window:
        for i, c in enumerate(chans):
            if c.active:
                c.g = _response(X[:, i], c.taus, c.theta, dt)
    # joint gains and constant with every channel's response fixed
    cols = [ones] + [c.g.reshape(-1, 1) for c in chans if c.active and c.g is not None]
    cols.append(_transient(chans[0].taus, dt, N))
    R = np.column_stack(cols)
    coef = scaled_lstsq(R, y)
    k = 1
    for c in chans:
        if c.active:
            c.K = float(coef[k])
            k += 1
    return chans, float(coef[0])


def oe_to_model(
    chans: list[Chan], y0: float, xbar: np.ndarray, dt: float, names: tuple[str, ...], kind: str
) -> LinearModel:
    """Write the channels as one ARX model with a common denominator."""
    m = len(chans)
    dens, nums, nks = [], [], []
    for c in chans:
        if not c.active or c.K == 0.0:
            dens.append(np.array([1.0]))
            nums.append(np.zeros(1))
            nks.append(1)
            continue
        num, den = _unit_dyn(c.taus, dt)
        s = math.floor(c.theta / dt + 1e-9)
        w1, w2 = _frac_weights(c.taus, dt, np.array([c.theta / dt - s]))
        nums.append(c.K * np.convolve(num, [float(w1[0]), float(w2[0])]))
        dens.append(den)
        nks.append(s + 1)
    A = np.array([1.0])
    for den in dens:
        A = np.convolve(A, den)
    bs = []
    for i in range(m):
        b = nums[i]
        for j in range(m):
            if j != i:
                b = np.convolve(b, dens[j])
        bs.append(b)
    nb = max(len(b) for b in bs)
    B = np.zeros((m, nb))
    for i, b in enumerate(bs):
        B[i, : len(b)] = b
    na = len(A) - 1
    return LinearModel(
        dt_s=dt,
        na=na,
        nb=nb,
        nk=tuple(nks),
        a=A[1:],
        b=B,
        u0=float(xbar[0]),
        d0=np.asarray(xbar[1:], dtype=float),
        y0=y0,
        d_names=names,
        kind=kind,
    )
