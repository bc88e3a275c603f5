"""Data preparation for identification (agent/control/ident.py): shapes, names, the sample
period, gaps (NaN) filled or masked, deviation variables, and the noise/correlation
figures `excitation` judges the data by."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import numpy as np

MIN_SAMPLES = 50  # fewer samples than this cannot say anything about dynamics


MAX_MISSING = 0.2  # share of missing/bad samples beyond which the data is refused


def as_2d(d: np.ndarray | None, n: int) -> np.ndarray:
    if d is None:
        return np.zeros((n, 0))
    D = np.asarray(d, dtype=float)
    if D.size == 0:
        return np.zeros((n, 0))
    if D.ndim == 1:
        D = D.reshape(-1, 1)
    if D.shape[0] != n:
        raise ValueError(f"d has {D.shape[0]} rows, u {n}")
    return D


def channel_names(d_names: Sequence[str] | None, m: int) -> tuple[str, ...]:
    if d_names is None:
        return tuple(f"d{i + 1}" for i in range(m))
    if len(d_names) != m:
        raise ValueError(f"{m} disturbance columns but {len(d_names)} names")
    return tuple(d_names)


def sample_period(t_s: np.ndarray, dt_s: float | None) -> float:
    if dt_s is not None:
        return float(dt_s)
    t = np.asarray(t_s, dtype=float)
    return float(np.median(np.diff(t)))


def prepare(
    t_s: np.ndarray, u: np.ndarray, y: np.ndarray, d: np.ndarray | None, dt: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """On a uniform grid of dt: the output held (it is piecewise constant), measurements
    interpolated. Non-finite samples stay NaN here (excitation counts them)."""
    t = np.asarray(t_s, dtype=float).reshape(-1)
    u = np.asarray(u, dtype=float).reshape(-1)
    y = np.asarray(y, dtype=float).reshape(-1)
    D = as_2d(d, len(u))
    if not (len(t) == len(u) == len(y)):
        raise ValueError(f"t_s, u, y differ in length: {len(t)}, {len(u)}, {len(y)}")
    if dt <= 0:
        raise ValueError(f"dt_s must be positive, got {dt}")
    if len(t) < 2:
        return u, y, D
    steps = np.diff(t)
    if np.any(steps <= 0):
        raise ValueError("t_s must be strictly increasing")
    if np.all(np.abs(steps - dt) <= 1e-3 * dt):
        return u, y, D
    grid = t[0] + dt * np.arange(math.floor((t[-1] - t[0]) / dt + 1e-9) + 1)
    idx = np.clip(np.searchsorted(t, grid, side="right") - 1, 0, len(t) - 1)
    ug = u[idx]

    def interp(v: np.ndarray) -> np.ndarray:
        ok = np.isfinite(v)
        if ok.sum() < 2:
            return np.full(len(grid), np.nan)
        out = np.interp(grid, t[ok], v[ok])
        # a grid point whose neighbours are both bad stays bad (so it is counted)
        near = idx
        out[~ok[near] & ~ok[np.clip(near + 1, 0, len(t) - 1)]] = np.nan
        return cast(np.ndarray, out)

    Dg = np.column_stack([interp(c) for c in D.T]) if D.shape[1] else np.zeros((len(grid), 0))
    return ug, interp(y), Dg


def fill_gaps(v: np.ndarray) -> np.ndarray:
    ok = np.isfinite(v)
    if ok.all() or not ok.any():
        return v
    k = np.arange(len(v))
    return cast(np.ndarray, np.interp(k, k[ok], v[ok]))


def deviations(u: np.ndarray, D: np.ndarray) -> np.ndarray:
    X = np.column_stack([fill_gaps(u), *[fill_gaps(c) for c in D.T]])
    return cast(np.ndarray, X - X.mean(axis=0))


def mask_columns(X: np.ndarray, active: list[bool]) -> np.ndarray:
    out = X.copy()
    out[:, [not a for a in active]] = 0.0
    return out


def noise_std(y: np.ndarray) -> float:
    """High-frequency noise of y: robust std of first differences / sqrt(2)."""
    dy = np.diff(y)
    if len(dy) == 0:
        return 0.0
    mad = float(np.median(np.abs(dy - np.median(dy))))
    return 1.4826 * mad / math.sqrt(2.0)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else 0.0
