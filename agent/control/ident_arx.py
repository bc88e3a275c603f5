"""ARX candidates for identification (agent/control/ident.py): least squares over the
regressors, and one instrumental-variable step (consistent when the noise is not
ARX-white, which on a plant it never is)."""

from __future__ import annotations

import numpy as np

from agent.control.ident_model import (
    LinearModel,
)
from agent.control.ident_sim import (
    scaled_lstsq,
    schur_stable,
)


def _arx_rows(
    yd: np.ndarray,
    Xd: np.ndarray,
    na: int,
    nb: int,
    nk: tuple[int, ...],
    active: list[bool],
    ylag: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Regressor matrix [-y lags, input lags of the active inputs, 1] and the targets."""
    N = len(yd)
    k0 = max(na, max(k + nb - 1 for k in nk))
    k = np.arange(k0, N)
    src = yd if ylag is None else ylag
    cols = [-src[k - i] for i in range(1, na + 1)]
    for inp, on in enumerate(active):
        if on:
            cols += [Xd[k - nk[inp] - j, inp] for j in range(nb)]
    cols.append(np.ones(len(k)))
    return np.column_stack(cols), yd[k]


def _arx_model(
    theta: np.ndarray,
    na: int,
    nb: int,
    nk: tuple[int, ...],
    active: list[bool],
    ybar: float,
    xbar: np.ndarray,
    dt: float,
    names: tuple[str, ...],
    kind: str,
) -> LinearModel | None:
    a = theta[:na]
    if not schur_stable(a):
        return None
    B = np.zeros((len(active), nb))
    p = na
    for inp, on in enumerate(active):
        if on:
            B[inp] = theta[p : p + nb]
            p += nb
    c = float(theta[p])
    den = 1.0 + float(a.sum())
    return LinearModel(
        dt_s=dt,
        na=na,
        nb=nb,
        nk=nk,
        a=a,
        b=B,
        u0=float(xbar[0]),
        d0=np.asarray(xbar[1:], dtype=float),
        y0=ybar + c / den,
        d_names=names,
        kind=kind,
    )


def arx_ls(
    yd: np.ndarray,
    Xd: np.ndarray,
    na: int,
    nb: int,
    nk: tuple[int, ...],
    active: list[bool],
    ybar: float,
    xbar: np.ndarray,
    dt: float,
    names: tuple[str, ...],
) -> LinearModel | None:
    Phi, Y = _arx_rows(yd, Xd, na, nb, nk, active)
    if len(Y) <= Phi.shape[1] + 5:
        return None
    theta = scaled_lstsq(Phi, Y)
    return _arx_model(theta, na, nb, nk, active, ybar, xbar, dt, names, "arx")


def arx_iv(
    yd: np.ndarray,
    Xd: np.ndarray,
    xs: np.ndarray,
    na: int,
    nb: int,
    nk: tuple[int, ...],
    active: list[bool],
    ybar: float,
    xbar: np.ndarray,
    dt: float,
    names: tuple[str, ...],
) -> LinearModel | None:
    """One instrumental-variable step: the LS model's simulated (noise-free) output lags
    as instruments for the measured ones, so coloured noise no longer biases the fit."""
    if not np.all(np.isfinite(xs)):
        return None
    Phi, Y = _arx_rows(yd, Xd, na, nb, nk, active)
    Zi, _ = _arx_rows(yd, Xd, na, nb, nk, active, ylag=xs)
    try:
        theta = np.linalg.solve(Zi.T @ Phi, Zi.T @ Y)
    except np.linalg.LinAlgError:
        return None
    return _arx_model(theta, na, nb, nk, active, ybar, xbar, dt, names, "arx-iv")
