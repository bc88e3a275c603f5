"""Linear simulation for identification (agent/control/ident.py): dead-time shifts, state
space from ARX polynomials, a blocked zero-order-hold simulation, least squares, and the
scores a model is judged by (NRMSE fit %, Ljung-Box whiteness).  Plain numpy, no scipy."""

from __future__ import annotations

import math
from typing import cast

import numpy as np

_BLOCK = 64  # block length of the vectorised simulation


def shift_delay(x: np.ndarray, s: int) -> np.ndarray:
    """x delayed by s >= 0 samples, the first value held before the start."""
    if s <= 0:
        return x.copy()
    if s >= len(x):
        return np.full(len(x), x[0] if len(x) else 0.0)
    return np.concatenate((np.full(s, x[0]), x[:-s]))


def schur_stable(a: np.ndarray) -> bool:
    if len(a) == 0:
        return True
    r = np.roots(np.concatenate(([1.0], a)))
    return bool(np.all(np.abs(r) < 1.0 - 1e-9))


def canonical_ss(a: np.ndarray, bt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observable canonical form of y[k] = -sum a_i y[k-i] + sum_i bt[i-1] . v[k-i]."""
    bt = np.atleast_2d(bt)
    na, (nb, m) = len(a), bt.shape
    n = max(na, nb, 1)
    A = np.zeros((n, n))
    A[:na, 0] = -np.asarray(a)
    A[:-1, 1:] += np.eye(n - 1)
    B = np.zeros((n, m))
    B[:nb] = bt
    c = np.zeros(n)
    c[0] = 1.0
    return A, B, c


def state_from_past(
    a: np.ndarray, bt: np.ndarray, y_past: np.ndarray, v_past: np.ndarray
) -> np.ndarray:
    """State of `canonical_ss(a, bt)` from the last n outputs and inputs (most recent last):
    x_m = sum_{i=m..n} (-a_i y[k+m-1-i] + bt_i . v[k+m-1-i])."""
    bt = np.atleast_2d(bt)
    na, (nb, m) = len(a), bt.shape
    n = max(na, nb, 1)
    aa = np.zeros(n)
    aa[:na] = a
    bb = np.zeros((n, m))
    bb[:nb] = bt
    yp = np.asarray(y_past, dtype=float)
    vp = np.asarray(v_past, dtype=float).reshape(len(yp), m) if m else np.zeros((len(yp), 0))
    x = np.zeros(n)
    for mi in range(1, n + 1):
        idx = np.arange(mi, n + 1)  # i
        pos = mi - 1 - idx  # negative positions into the past
        x[mi - 1] = float(-(aa[idx - 1] * yp[pos]).sum() + (bb[idx - 1] * vp[pos]).sum())
    return x


def lsim(A: np.ndarray, B: np.ndarray, c: np.ndarray, x0: np.ndarray, U: np.ndarray) -> np.ndarray:
    """y[k] = c x[k], x[k+1] = A x[k] + B U[k], exactly, without a Python step per sample:
    the inputs' effect inside every block of _BLOCK samples is one matrix product for all
    blocks, and the states at the block starts come from a doubling scan (log2(blocks)
    products), so the cost is a few dozen numpy calls whatever the length."""
    U = np.asarray(U, dtype=float).reshape(len(U), -1)
    N, m = U.shape
    n = A.shape[0]
    if N == 0:
        return np.zeros(0)
    L = min(_BLOCK, N)
    P = np.empty((L + 1, n, n))  # A^0 .. A^L, by doubling
    P[0] = np.eye(n)
    P[1] = A
    s = 1
    while s < L:
        k = min(s, L - s)
        P[s + 1 : s + 1 + k] = P[1 : 1 + k] @ P[s]
        s += k
    obs = np.einsum("i,jik->jk", c, P[:L])  # (L, n): c A^j
    h = obs @ B  # (L, m): c A^j B
    jj, ii = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
    lag = jj - 1 - ii
    T = np.where((lag >= 0)[:, :, None], h[np.clip(lag, 0, None)], 0.0).reshape(L, L * m)
    ctrl = (P[L - 1 :: -1] @ B).transpose(1, 0, 2).reshape(n, L * m)  # A^(L-1-i) B
    nblk = -(-N // L)
    Ub = np.zeros((nblk * L, m))
    Ub[:N] = U
    Ub = Ub.reshape(nblk, L * m)
    # G[b] = state at the start of block b = sum_j AL^(b-j) G0[j], G0 = [x0, F_0, F_1, ...]
    G = np.vstack([np.asarray(x0, dtype=float).reshape(1, n), Ub[:-1] @ ctrl.T])
    Mp = P[L]
    step = 1
    while step < nblk:
        G[step:] = G[step:] + G[:-step] @ Mp.T
        Mp = Mp @ Mp
        step *= 2
    return cast(np.ndarray, (G @ obs.T + Ub @ T.T).reshape(-1)[:N])


def lfilter(num: np.ndarray, den: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y = num(q)/den(q) q^-1 x, starting in steady state at x[0]."""
    a = np.asarray(den[1:], dtype=float)
    bt = np.asarray(num, dtype=float).reshape(-1, 1)
    A, B, c = canonical_ss(a, bt)
    n = A.shape[0]
    g = float(np.sum(num) / np.sum(den))
    x0 = state_from_past(a, bt, np.full(n, g * x[0]), np.full((n, 1), x[0]))
    y = lsim(A, B, c, x0, x.reshape(-1, 1))
    return y


def scaled_lstsq(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares by the normal equations on unit-norm columns: these problems are tall
    and thin (thousands of rows, < 15 columns), where LAPACK's SVD path costs 10-100x more
    on a loaded 2-core box; an ill-conditioned problem falls back to the SVD."""
    s = np.sqrt((A * A).sum(axis=0))
    s[s == 0.0] = 1.0
    As = A / s
    G = As.T @ As
    if np.linalg.cond(G) < 1e12:
        x = np.linalg.solve(G, As.T @ b)
    else:
        x = np.linalg.lstsq(As, b, rcond=None)[0]
    return cast(np.ndarray, x / s)


def nrmse_fit_pct(y: np.ndarray, yhat: np.ndarray) -> float:
    """NRMSE fit: 100 (1 - |y - yhat| / |y - mean y|); -inf for a blown-up simulation."""
    if not np.all(np.isfinite(yhat)):
        return -math.inf
    den = float(np.linalg.norm(y - y.mean()))
    if den == 0.0:
        return -math.inf
    return 100.0 * (1.0 - float(np.linalg.norm(y - yhat)) / den)


def ljung_box_p(e: np.ndarray, lags: int) -> float:
    """Ljung-Box portmanteau p-value (chi-square survival by Wilson-Hilferty: no scipy)."""
    e = np.asarray(e, dtype=float)
    e = e - e.mean()
    n = len(e)
    den = float(e @ e)
    if n < 10 or den == 0.0:
        return math.nan
    q = 0.0
    for k in range(1, lags + 1):
        r = float(e[k:] @ e[:-k]) / den
        q += r * r / (n - k)
    q *= n * (n + 2)
    v = 2.0 / (9.0 * lags)
    z = ((q / lags) ** (1.0 / 3.0) - (1.0 - v)) / math.sqrt(v)
    return 0.5 * math.erfc(z / math.sqrt(2.0))
