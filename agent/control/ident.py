"""System identification from the plant's own data (pure: arrays in, models out, no I/O).

What it gives (issue 12, piece 2):
- `fit_fopdt` / `fit_sopdt`: gain, time constant(s) and dead time by output-error least
  squares - the model is *simulated* from the inputs (exact zero-order-hold discretisation,
  fractional dead time), the dead time and time constants found by a grid search whose
  inner problem (gains, offset, initial transient) is linear, then refined by a compass
  search. Measured disturbances are extra channels with their own gain, lag and dead time.
- `identify`: candidates on the first part of the data - ARX by least squares over orders
  na, nb in 1..3 and dead times around the FOPDT's, each also refined by one instrumental-
  variable step (consistent when the noise is not ARX-white, which on a plant it never is),
  plus the FOPDT and SOPDT fits (dynamics searched on the data as recorded and high-passed)
  written as ARX - all judged by *simulation*: each model runs free over the whole record
  from the inputs alone, and its NRMSE fit % (100 = perfect) is taken on the held-out tail;
  the simplest within 0.5 % of the best wins. Below `min_fit_pct` the model is refused
  (`ok=False`, `why` says why): never used silently. Residual whiteness (Ljung-Box) and
  local gains over the operating range go into the card.
- `LinearModel`: ARX with per-input dead time, in deviation variables around the operating
  point; simulate, state space (dead time as delay states in A), JSON card, a perturbed copy
  for mismatch tests; `Predictor`: the run-time model check (free-run with a slow bias).
- `simc_pid`: SIMC (Skogestad 2003) on the FOPDT or SOPDT; `excitation`: is the data
  informative at all, and if not, why.

Where it lives: this module (excitation, the fits, `identify`) re-exports the rest, so
`from agent.control.ident import ...` is the one import: ident_model (the model types and
card), ident_data (data preparation), ident_oe (output-error FOPDT/SOPDT), ident_arx (ARX
and IV), ident_sim (simulation, least squares, scores), ident_checks (local gains,
refusal), tuning (SIMC).

Why plain numpy and not a library (PyPI metadata checked for this choice):
- python-control 0.10.2 requires scipy and matplotlib; it converts and analyses systems
  but does not fit ARX/output-error models with dead-time selection to data.
- harold 1.0.3 requires scipy, matplotlib and tabulate<0.9 (last release 2022); it is a
  representation/design toolbox, no estimation from data.
- sysidentpy 0.9.0 requires numpy<=2.3.5 (this project runs numpy 2.4), scipy and
  matplotlib; its focus is NARMAX structure selection, and its dead-time handling is by lag
  search like the one here.
All three pull scipy (tens of MB on an aarch64 box, not otherwise needed by the agent) for
what is here a few least-squares solves, FFT correlations and a blocked linear simulation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from agent.control.ident_arx import arx_iv, arx_ls
from agent.control.ident_checks import local_gain_table, refusal
from agent.control.ident_data import (
    MAX_MISSING,
    MIN_SAMPLES,
    as_2d,
    channel_names,
    correlation,
    deviations,
    fill_gaps,
    mask_columns,
    noise_std,
    prepare,
    sample_period,
)
from agent.control.ident_model import (
    CARD_FORMAT,
    CARD_VERSION,
    Fopdt,
    IdentResult,
    LinearModel,
    Predictor,
    Sopdt,
    StateSpace,
    json_safe,
)
from agent.control.ident_oe import Chan, fit_oe, oe_to_model
from agent.control.ident_sim import (
    ljung_box_p,
    nrmse_fit_pct,
)
from agent.control.tuning import simc_pid

__all__ = [
    "CARD_FORMAT",
    "CARD_VERSION",
    "MAX_MISSING",
    "MIN_SAMPLES",
    "Fopdt",
    "IdentResult",
    "LinearModel",
    "Predictor",
    "Sopdt",
    "StateSpace",
    "excitation",
    "fit_fopdt",
    "fit_sopdt",
    "identify",
    "json_safe",
    "simc_pid",
]


def excitation(
    u: np.ndarray,
    y: np.ndarray,
    d: np.ndarray | None,
    dt_s: float,
    *,
    d_names: Sequence[str] | None = None,
) -> tuple[bool, str]:
    """Is there enough in the data to identify anything? (ok, reason) - the reason says what
    is missing when not: too few samples, too many missing, a flat output, a pv that shows
    only noise, or a disturbance that moved with the output (effects not separable)."""
    u = np.asarray(u, dtype=float).reshape(-1)
    y = np.asarray(y, dtype=float).reshape(-1)
    n = len(u)
    D = as_2d(d, n)
    names = channel_names(d_names, D.shape[1])
    if len(y) != n:
        return False, f"u has {n} samples, y {len(y)}"
    dur = n * dt_s
    if n < MIN_SAMPLES:
        return False, f"only {n} samples ({dur:.0f} s): at least {MIN_SAMPLES} are needed"
    good = np.isfinite(u) & np.isfinite(y) & np.all(np.isfinite(D), axis=1)
    miss = 1.0 - float(good.mean())
    if miss > MAX_MISSING:
        return False, (
            f"{100 * miss:.0f} % of the samples are missing or bad (at most "
            f"{100 * MAX_MISSING:.0f} %): choose a window where the pv, the output and the "
            "disturbances were all recorded"
        )
    uf, yf = u[good], y[good]
    lo, hi = np.percentile(uf, [2, 98])
    span = float(hi - lo)
    med = float(np.median(uf))
    if span <= 1e-9 * max(1.0, abs(med)):
        return False, (
            f"the output did not move: it stayed at {med:.6g} for the {dur:.0f} s of data, so "
            "the data says nothing about how the pv responds to it; run a plant test "
            "(`edgeloop commission`) or choose a window where the output moved"
        )
    moves = int(np.count_nonzero(np.abs(np.diff(uf)) > 0.05 * span))
    noise = noise_std(yf)
    ystd = float(np.std(yf))
    if ystd < 2.0 * noise or ystd == 0.0:
        return False, (
            f"the pv shows no response above its noise (std {ystd:.3g}, noise {noise:.3g}) "
            f"although the output moved over {span:.3g}: the moves were too small or too short "
            "for this pv, or the pv does not depend on this output"
        )
    notes = []
    for j, name in enumerate(names):
        dj = D[good, j]
        if np.ptp(dj) <= 1e-9 * max(1.0, abs(float(np.median(dj)))):
            notes.append(f"disturbance {name} did not move (its effect cannot be identified)")
            continue
        r = correlation(uf, dj)
        if abs(r) > 0.98:
            return False, (
                f"the output and disturbance {name} moved together (correlation {r:.3f}): their "
                "effects on the pv cannot be told apart; data with independent moves is needed"
            )
    text = (
        f"output moved {moves} times over {span:.3g} ({lo:.4g} .. {hi:.4g}); pv std {ystd:.3g}, "
        f"noise {noise:.3g}; {n} samples ({dur:.0f} s)"
    )
    if miss > 0:
        text += f"; {100 * miss:.1f} % missing samples interpolated"
    return True, "; ".join([text, *notes])


def fit_fopdt(
    t_s: np.ndarray,
    u: np.ndarray,
    y: np.ndarray,
    *,
    d: np.ndarray | None = None,
    dt_s: float | None = None,
) -> Fopdt:
    """FOPDT from step(s) or any informative data (output-error fit, dead time by grid
    search + least squares, then refined); measured disturbances `d` as extra channels."""
    dt = sample_period(t_s, dt_s)
    uu, yy, D = prepare(t_s, u, y, d, dt)
    chans, _c = fit_oe(yy - yy.mean(), deviations(uu, D), dt, 1)
    return chans[0].fopdt()


def fit_sopdt(
    t_s: np.ndarray,
    u: np.ndarray,
    y: np.ndarray,
    *,
    d: np.ndarray | None = None,
    dt_s: float | None = None,
) -> Sopdt:
    """SOPDT by the same output-error search as `fit_fopdt`, over two time constants."""
    dt = sample_period(t_s, dt_s)
    uu, yy, D = prepare(t_s, u, y, d, dt)
    chans, _c = fit_oe(yy - yy.mean(), deviations(uu, D), dt, 2)
    return chans[0].sopdt()


def identify(
    t_s: np.ndarray,
    u: np.ndarray,
    y: np.ndarray,
    d: np.ndarray | None,
    dt_s: float,
    *,
    holdout: float = 0.3,
    min_fit_pct: float = 60.0,
    d_names: Sequence[str] | None = None,
) -> IdentResult:
    """Identify the plant from recorded (t, u, y, d): the samples are put on a uniform grid
    of `dt_s` (output held, measurements interpolated, short gaps filled), models are fitted
    on the first `1 - holdout` of the data and judged on the rest (see the module doc)."""
    if not 0.05 <= holdout <= 0.8:
        raise ValueError(f"holdout must be within 0.05 .. 0.8, got {holdout}")
    t_s = np.asarray(t_s, dtype=float).reshape(-1)
    u = np.asarray(u, dtype=float).reshape(-1)
    y = np.asarray(y, dtype=float).reshape(-1)
    D0 = as_2d(d, len(u))
    names = channel_names(d_names, D0.shape[1])
    uu, yy, D = prepare(t_s, u, y, D0, dt_s)
    ok, exc = excitation(uu, yy, D, dt_s, d_names=names)
    if not ok:
        return refusal(dt_s, uu, yy, D, names, f"data not informative: {exc}", exc)
    uu, yy = fill_gaps(uu), fill_gaps(yy)
    D = np.column_stack([fill_gaps(c) for c in D.T]) if D.shape[1] else D
    n = len(uu)
    s_val = round(n * (1.0 - holdout))
    val_u = uu[s_val:]
    if n - s_val < 20 or np.ptp(val_u) <= 1e-9 * max(1.0, abs(float(np.median(uu)))):
        return refusal(
            dt_s,
            uu,
            yy,
            D,
            names,
            f"the held-out part (last {100 * holdout:.0f} %) has no output moves, so no model "
            "can be checked on it: choose a window where the output moves throughout",
            exc,
        )
    X = np.column_stack([uu, D])
    xbar = X[:s_val].mean(axis=0)
    ybar = float(yy[:s_val].mean())
    Xd, yd = X - xbar, yy - ybar
    active = [bool(np.ptp(X[:s_val, i]) > 1e-9 * max(1.0, abs(xbar[i]))) for i in range(X.shape[1])]
    est = slice(0, s_val)

    def scored(model: LinearModel, label: str, npar: int) -> dict[str, Any]:
        with np.errstate(all="ignore"):
            ysim = model.simulate(X[:, 0], X[:, 1:])[s_val:]
        fit = nrmse_fit_pct(yy[s_val:], ysim)
        return {"model": model, "label": label, "fit": fit, "npar": npar}

    cands: list[dict[str, Any]] = []
    # output-error FOPDT / SOPDT (also the source of the reported K, tau, theta), their lags
    # and dead times searched on the data as recorded and on high-passed data
    Xm = mask_columns(Xd[est], active)
    hp = max(20, s_val // 8)
    best_oe: dict[int, tuple[list[Chan], dict[str, Any]]] = {}
    for order, kind in ((1, "fopdt"), (2, "sopdt")):
        for w in (None, hp):
            ch, c0 = fit_oe(yd[est], Xm, dt_s, order, w)
            if order == 2:
                so = ch[0].sopdt()
                if not (so.tau2_s >= 0.5 * dt_s and so.tau2_s >= 0.05 * so.tau1_s):
                    continue  # no second lag: the FOPDT says it all
            label = f"{kind} (output error{', high-passed' if w else ''})"
            mo = oe_to_model(ch, c0 + ybar, xbar, dt_s, names, kind)
            cand = scored(mo, label, (order + 2) * sum(active) + 1)
            cands.append(cand)
            if order not in best_oe or cand["fit"] > best_oe[order][1]["fit"]:
                best_oe[order] = (ch, cand)
    f1 = best_oe[1][0]
    fo = f1[0].fopdt()
    # a SOPDT is reported where its second lag shows on the held-out data
    sopdt = None
    if 2 in best_oe and best_oe[2][1]["fit"] > best_oe[1][1]["fit"] + 0.2:
        sopdt = best_oe[2][0][0].sopdt()
    # ARX (least squares, then one instrumental-variable step) around the found dead times
    nk_d = [max(1, math.floor(ch.theta / dt_s) + 1) for ch in f1]
    nk_u = sorted({max(1, nk_d[0] + o) for o in (-1, 0, 1)})
    for na in (1, 2, 3):
        for nb in (1, 2, 3):
            for k0 in nk_u:
                nk = (k0, *nk_d[1:])
                m = arx_ls(yd[est], Xd[est], na, nb, nk, active, ybar, xbar, dt_s, names)
                if m is None:
                    continue
                npar = na + nb * sum(active) + 1
                cands.append(scored(m, f"arx na={na} nb={nb} nk={list(nk)}", npar))
                with np.errstate(all="ignore"):
                    xs = m.simulate(X[est, 0], X[est, 1:]) - ybar
                miv = arx_iv(yd[est], Xd[est], xs, na, nb, nk, active, ybar, xbar, dt_s, names)
                if miv is not None:
                    cands.append(scored(miv, f"arx-iv na={na} nb={nb} nk={list(nk)}", npar))
    cands = [c for c in cands if math.isfinite(c["fit"])]
    if not cands:
        return refusal(dt_s, uu, yy, D, names, "no stable model could be fitted", exc)
    best_fit = max(c["fit"] for c in cands)
    best = min(
        (c for c in cands if c["fit"] >= best_fit - 0.5), key=lambda c: (c["npar"], -c["fit"])
    )
    model: LinearModel = best["model"]
    fit = float(best["fit"])
    # whiteness of the residuals that model structure calls its innovations
    if model.kind == "arx":
        e = _one_step_residuals(model, yy, X, s_val)
    else:
        e = yy[s_val:] - model.simulate(X[:, 0], X[:, 1:])[s_val:]
    wp = ljung_box_p(e, min(20, max(1, len(e) // 5)))
    ok = fit >= min_fit_pct
    lg, lg_detail, lg_note = local_gain_table(model, yy, X)
    summary_c = sorted(cands, key=lambda c: -c["fit"])
    info = {
        "fit_pct": fit,
        "whiteness_p": wp,
        "min_fit_pct": min_fit_pct,
        "holdout": holdout,
        "samples": n,
        "estimation_samples": s_val,
        "selected": best["label"],
        "fopdt": {"K": fo.K, "tau_s": fo.tau_s, "theta_s": fo.theta_s},
        "sopdt": None
        if sopdt is None
        else {
            "K": sopdt.K,
            "tau1_s": sopdt.tau1_s,
            "tau2_s": sopdt.tau2_s,
            "theta_s": sopdt.theta_s,
        },
        "candidates": [{"model": c["label"], "fit_pct": c["fit"]} for c in summary_c[:8]],
        "disturbance_fopdt": {
            names[i - 1]: {"K": ch.K, "tau_s": ch.taus[0], "theta_s": ch.theta}
            for i, ch in enumerate(f1)
            if i > 0 and ch.active
        },
        "excitation": exc,
        "local_gains": lg_detail,
    }
    model = replace(model, local_gains=tuple(lg), info=info)
    sel = f"{best['label']}, {n} samples, last {100 * holdout:.0f} % held out"
    if ok:
        why = f"fit {fit:.1f} % on held-out data >= {min_fit_pct:g} % ({sel})"
        if wp < 0.01:
            why += (
                f"; residuals not white (p {wp:.2g}): unmeasured disturbances or unmodelled "
                "dynamics remain, the fit is what counts"
            )
        if lg_note:
            why += f"; {lg_note}"
    else:
        why = (
            f"model refused: fit {fit:.1f} % on the held-out data is below {min_fit_pct:g} % "
            f"({sel}); the pv is not explained well enough by the output and the measured "
            "disturbances (noise, unmeasured disturbances, nonlinearity or too little excitation)"
        )
        if lg:
            why += (
                f"; {lg_note}: one linear model does not cover this range, identify a narrower "
                "window around the operating point"
            )
    return IdentResult(
        fopdt=fo,
        sopdt=sopdt,
        model=model,
        fit_pct=fit,
        whiteness_p=wp,
        local_gains=lg,
        ok=ok,
        why=why,
        excitation=exc,
        candidates=[{"model": c["label"], "fit_pct": c["fit"]} for c in summary_c],
    )


def _one_step_residuals(model: LinearModel, y: np.ndarray, X: np.ndarray, start: int) -> np.ndarray:
    V = model._shifted(X - model._x0())
    yd = y - model.y0
    k = np.arange(max(start, model.na, model.nb), len(y))
    pred = np.zeros(len(k))
    for i in range(1, model.na + 1):
        pred -= model.a[i - 1] * yd[k - i]
    for j in range(1, model.nb + 1):
        pred += V[k - j] @ model.b[:, j - 1]
    return yd[k] - pred
