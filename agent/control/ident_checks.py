"""What identification says about its model beyond the fit (agent/control/ident.py): the
gain per operating range (local gains in the card) and the refused result."""

from __future__ import annotations

import math

import numpy as np

from agent.control.ident_model import (
    Fopdt,
    IdentResult,
    LinearModel,
)


def local_gain_table(
    model: LinearModel, y: np.ndarray, X: np.ndarray
) -> tuple[list[tuple[float, float]], list[dict[str, float]], str]:
    """Gain of the u-channel per operating range: the model's dynamics held, the data cut
    into windows of ~2 settling times (each with its own offset, which absorbs slow
    unmeasured drift), windows grouped by their mean output (u) level into up to 4 bins,
    one gain per bin. Empty when the data covers a single operating point."""
    K = model.gain()
    n = len(y)
    settle = model.settling_time_s()
    if K == 0.0 or not math.isfinite(settle):
        return [], [], ""
    w = max(30, int(2.0 * settle / model.dt_s))
    nchunks = n // w
    if nchunks < 4:
        return [], [], ""
    Xu = X.copy()
    Xu[:, 1:] = model.d0
    g = (model.simulate(Xu[:, 0], Xu[:, 1:]) - model.y0) / K
    Xd = X.copy()
    Xd[:, 0] = model.u0
    r = y - model.simulate(Xd[:, 0], Xd[:, 1:])
    cut = nchunks * w
    G = g[:cut].reshape(nchunks, w)
    Rr = r[:cut].reshape(nchunks, w)
    Uc = X[:cut, 0].reshape(nchunks, w)
    Yc = y[:cut].reshape(nchunks, w)
    G = G - G.mean(axis=1, keepdims=True)
    Rr = Rr - Rr.mean(axis=1, keepdims=True)
    ops = Uc.mean(axis=1)
    spread = Uc.std(axis=1)
    inside = float(np.median(spread))
    if np.ptp(ops) <= 2.0 * inside:
        return [], [], "one operating point in the data (no local gains)"
    # a window that holds a move between operating points, or the tail of one, shows the
    # secant gain between them, not a local one: leave it out
    jump = np.abs(np.diff(ops, prepend=ops[0])) > 2.0 * max(inside, 1e-12)
    keep = (spread <= 2.0 * inside) & ~jump
    if keep.sum() < 4:
        return [], [], "the operating point never held still long enough for local gains"
    G, Rr, Uc, Yc, ops = G[keep], Rr[keep], Uc[keep], Yc[keep], ops[keep]
    nchunks = len(ops)
    nbins = min(4, nchunks // 2)
    edges = np.quantile(ops, np.linspace(0, 1, nbins + 1))
    which = np.clip(np.searchsorted(edges, ops, side="right") - 1, 0, nbins - 1)
    pairs: list[tuple[float, float]] = []
    detail: list[dict[str, float]] = []
    for bi in range(nbins):
        sel = which == bi
        gg = float((G[sel] ** 2).sum())
        if not sel.any() or gg <= 0:
            continue
        kb = float((G[sel] * Rr[sel]).sum()) / gg
        res = Rr[sel] - kb * G[sel]
        dof = max(1, res.size - int(sel.sum()) - 1)
        se = math.sqrt(float((res**2).sum()) / dof / gg)
        if not math.isfinite(kb) or se > 0.3 * abs(kb):
            continue
        op = float(ops[sel].mean())
        pairs.append((op, kb))
        detail.append(
            {
                "u": op,
                "y": float(Yc[sel].mean()),
                "gain": kb,
                "se": se,
                "samples": int(sel.sum()) * w,
            }
        )
    if len(pairs) < 2:
        return [], detail, "too little excitation per operating range for local gains"
    order = np.argsort([p[0] for p in pairs])
    pairs = [pairs[i] for i in order]
    detail = [detail[i] for i in order]
    gs = np.array([p[1] for p in pairs])
    ses = np.array([d["se"] for d in detail])
    lo, hi = int(np.argmin(np.abs(gs))), int(np.argmax(np.abs(gs)))
    varies = abs(gs[hi]) > 1.2 * abs(gs[lo]) and abs(gs[hi] - gs[lo]) > 3 * math.hypot(
        ses[hi], ses[lo]
    )
    if not varies:
        return (
            [],
            detail,
            f"gain about constant over u {pairs[0][0]:.4g} .. {pairs[-1][0]:.4g}",
        )
    return (
        pairs,
        detail,
        (
            f"gain varies {gs.min():.3g} .. {gs.max():.3g} over u {pairs[0][0]:.4g} .. "
            f"{pairs[-1][0]:.4g} (local gains in the card)"
        ),
    )


def refusal(
    dt: float,
    u: np.ndarray,
    y: np.ndarray,
    D: np.ndarray,
    names: tuple[str, ...],
    why: str,
    exc: str,
) -> IdentResult:
    """A result that says no: zero model at the data's mean, NaN parameters, ok=False."""
    with np.errstate(all="ignore"):
        u0 = float(np.nanmean(u)) if np.isfinite(u).any() else 0.0
        y0 = float(np.nanmean(y)) if np.isfinite(y).any() else 0.0
        d0 = np.nanmean(D, axis=0) if D.size else np.zeros(D.shape[1])
    m = D.shape[1]
    model = LinearModel(
        dt_s=dt,
        na=1,
        nb=1,
        nk=(1,) * (1 + m),
        a=np.zeros(1),
        b=np.zeros((1 + m, 1)),
        u0=u0,
        d0=np.nan_to_num(np.asarray(d0, dtype=float)),
        y0=y0,
        d_names=names,
        kind="none",
        info={"refused": why},
    )
    return IdentResult(
        fopdt=Fopdt(math.nan, math.nan, math.nan),
        sopdt=None,
        model=model,
        fit_pct=math.nan,
        whiteness_p=math.nan,
        local_gains=[],
        ok=False,
        why=why,
        excitation=exc,
    )
