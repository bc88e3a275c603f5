"""Multivariate stage: PCA on a warm-up window, Hotelling T2 and SPE (Q) with control limits.

Why PCA/T2/SPE: related process signals (pump current, flow, pressure, vibration) move
together; a fault often breaks that relation while every signal stays inside its own normal
range.  T2 measures how far a sample is inside the learned plane, SPE how far it is off it (a
correlation break).  Both are normalised by their control limits and combined as
`max(T2/T2_lim, SPE/SPE_lim)`, smoothed by an EWMA, and alarmed with on/off hysteresis:
score > 1 means out of control.

Fitting (numpy `eigh`, once per group) is plain Python; scoring is jitted and allocates
nothing.  Columns with zero variance in the warm-up carry no information for the model: they
are excluded (their standardised value is pinned to 0) and reported in `GroupModel.excluded`;
the per-tag stage still watches them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from agent.kernel.flags import GROUP_ALARM, INVALID, OUT_OF_RANGE
from agent.kernel.settings import GroupSettings

# float params / state of a group
GP_SCORE_ALPHA = 0
GP_ON = 1
GP_OFF = 2
GP_ADAPT = 3
NGP = 4
GS_SCORE = 0  # smoothed score
GS_T2 = 1
GS_SPE = 2
GS_RAW = 3  # unsmoothed normalised score
NGS = 4
GI_ON_RUN = 0
GI_OFF_RUN = 1
GI_ALARM = 2
GI_NSCORED = 3
NGI = 4


class GroupFitError(ValueError):
    """The warm-up data cannot define a model (too few valid rows, every column constant)."""


def norm_ppf(p: float) -> float:
    """Inverse standard normal CDF (Acklam's rational approximation, rel. error < 1.2e-9)."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    a = (-39.69683028665376, 220.9460984245205, -275.9285104469687,
         138.3577518672690, -30.66479806614716, 2.506628277459239)  # fmt: skip
    b = (-54.47609879822406, 161.5858368580409, -155.6989798598866,
         66.80131188771972, -13.28068155288572)  # fmt: skip
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838,
         -2.549732539343734, 4.374664141464968, 2.938163982698783)  # fmt: skip
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996, 3.754408661907416)
    plow = 0.02425
    if p < plow:
        q = math.sqrt(-2 * math.log(p))
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1
        )
    if p > 1 - plow:
        return -norm_ppf(1 - p)
    q = p - 0.5
    r = q * q
    return (
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
        * q
        / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    )


def chi2_ppf(p: float, k: int) -> float:
    """Chi-square quantile by Wilson-Hilferty (within ~1% for k >= 1 at p <= 0.9999)."""
    z = norm_ppf(p)
    h = 2.0 / (9.0 * k)
    return k * max(0.0, 1.0 - h + z * math.sqrt(h)) ** 3


def t2_limit(alpha: float, a: int, n: int) -> float:
    """Hotelling T2 limit for a new sample, a components, n training rows.

    a*F(a, n-a) is approximated by chi2(a), scaled by the finite-sample factor; no scipy here.
    """
    factor = (n - 1) * (n + 1) / (n * max(n - a, 1))
    return factor * chi2_ppf(1.0 - alpha, a)


def spe_limit(alpha: float, residual_eigs: np.ndarray) -> float:
    """Jackson-Mudholkar limit of SPE (Q) from the eigenvalues left out of the model."""
    th1 = float(np.sum(residual_eigs))
    th2 = float(np.sum(residual_eigs**2))
    th3 = float(np.sum(residual_eigs**3))
    if th1 <= 0.0 or th2 <= 0.0:
        return math.inf
    h0 = 1.0 - 2.0 * th1 * th3 / (3.0 * th2 * th2)
    if h0 <= 0.0:  # extremely skewed spectrum: fall back to a chi-square moment match
        g = th2 / th1
        dof = th1 * th1 / th2
        return g * chi2_ppf(1.0 - alpha, max(1, round(dof)))
    z = norm_ppf(1.0 - alpha)
    term = z * math.sqrt(2.0 * th2 * h0 * h0) / th1 + 1.0 + th2 * h0 * (h0 - 1.0) / (th1 * th1)
    return th1 * max(term, 0.0) ** (1.0 / h0)


@dataclass(slots=True)
class GroupModel:
    """A fitted group: model arrays, scratch and state for the jitted scorer."""

    name: str
    idx: np.ndarray  # int64 [k] tag indices (into the table, or replay columns)
    mean: np.ndarray  # float64 [k]
    sd: np.ndarray  # float64 [k]; 0 = excluded column
    load: np.ndarray  # float64 [k, a]
    lam: np.ndarray  # float64 [a]
    lims: np.ndarray  # float64 [2]: T2 limit, SPE limit
    params: np.ndarray  # float64 [NGP]
    fs: np.ndarray = field(default_factory=lambda: np.full(NGS, np.nan))  # NaN until scored
    ist: np.ndarray = field(default_factory=lambda: np.zeros(NGI, dtype=np.int64))
    z: np.ndarray = field(default_factory=lambda: np.zeros(0))
    t: np.ndarray = field(default_factory=lambda: np.zeros(0))
    resid: np.ndarray = field(default_factory=lambda: np.zeros(0))
    excluded: list[int] = field(default_factory=list)  # positions within the group
    n_train: int = 0

    @property
    def n_components(self) -> int:
        return int(self.lam.shape[0])

    @property
    def alarm(self) -> bool:
        return bool(self.ist[GI_ALARM])

    @property
    def score(self) -> float:
        return float(self.fs[GS_SCORE])


def fit_group(settings: GroupSettings, idx: np.ndarray, X: np.ndarray) -> GroupModel:
    """Learn mean, scaling, loadings and limits from warm-up rows X (rows x k, filtered values)."""
    X = np.asarray(X, dtype=np.float64)
    X = X[np.all(np.isfinite(X), axis=1)]
    n, k = X.shape
    need = max(20, 2 * k)
    if n < need:
        raise GroupFitError(
            f"group {settings.name!r}: {n} valid warm-up rows, at least {need} needed"
        )
    mean = X.mean(axis=0)
    sd = X.std(axis=0, ddof=1)
    const = sd <= 1e-9 * np.maximum(1.0, np.abs(mean))
    sd[const] = 0.0
    inc = np.flatnonzero(~const)
    if inc.size == 0:
        raise GroupFitError(f"group {settings.name!r}: every column is constant in the warm-up")
    Z = (X[:, inc] - mean[inc]) / sd[inc]
    C = (Z.T @ Z) / (n - 1)
    w, V = np.linalg.eigh(C)
    order = np.argsort(w)[::-1]
    w = np.clip(w[order], 0.0, None)
    V = V[:, order]
    m = inc.size
    if settings.n_components is not None:
        a = settings.n_components
    else:
        frac = np.cumsum(w) / max(float(w.sum()), 1e-300)
        a = int(np.searchsorted(frac, settings.variance_explained) + 1)
    a = max(1, min(a, m - 1 if m > 1 else 1))
    lam = np.maximum(w[:a], 1e-9 * max(float(w[0]), 1e-300))
    load = np.zeros((k, a))
    load[inc, :] = V[:, :a]
    t2_lim = t2_limit(settings.alpha, a, n)
    spe_lim = spe_limit(settings.alpha, w[a:]) if m > a else math.inf
    # guard the theoretical limits with the warm-up's own quantile: real process data are
    # autocorrelated and not Gaussian, and an in-sample quantile is never exceeded by design
    T = Z @ V[:, :a]
    t2 = np.sum(T * T / lam, axis=1)
    spe = np.sum((Z - T @ V[:, :a].T) ** 2, axis=1)
    q = 1.0 - settings.alpha
    t2_lim = max(t2_lim, float(np.quantile(t2, q)))
    if math.isfinite(spe_lim):
        spe_lim = max(spe_lim, float(np.quantile(spe, q)), 1e-12)
    params = np.array(
        [settings.score_alpha, settings.alarm_on_samples, settings.alarm_off_samples,
         settings.adapt_alpha],
        dtype=np.float64,
    )  # fmt: skip
    return GroupModel(
        name=settings.name,
        idx=np.ascontiguousarray(idx, dtype=np.int64),
        mean=mean,
        sd=sd,
        load=np.ascontiguousarray(load),
        lam=np.ascontiguousarray(lam),
        lims=np.array([t2_lim, spe_lim]),
        params=params,
        z=np.zeros(k),
        t=np.zeros(a),
        resid=np.zeros(k),
        excluded=[int(j) for j in np.flatnonzero(const)],
        n_train=n,
    )


@njit(cache=True, nogil=True, error_model="numpy", _nrt=False, inline="always")
def _group_update(
    vals: np.ndarray,
    flags: np.ndarray,
    idx: np.ndarray,
    mean: np.ndarray,
    sd: np.ndarray,
    load: np.ndarray,
    lam: np.ndarray,
    lims: np.ndarray,
    gp: np.ndarray,
    fs: np.ndarray,
    ist: np.ndarray,
    z: np.ndarray,
    t: np.ndarray,
    resid: np.ndarray,
) -> int:
    """Score one sample; returns +1 on alarm onset, -1 on clear, 0 otherwise.

    A sample with an invalid or out-of-range member is skipped: score and alarm are held.
    """
    k = idx.shape[0]
    a = lam.shape[0]
    for j in range(k):
        x = vals[idx[j]]
        if not math.isfinite(x) or (flags[idx[j]] & (INVALID | OUT_OF_RANGE)) != 0:
            return 0
    for j in range(k):
        if sd[j] > 0.0:
            z[j] = (vals[idx[j]] - mean[j]) / sd[j]
        else:
            z[j] = 0.0
    t2 = 0.0
    for c in range(a):
        s = 0.0
        for j in range(k):
            s += load[j, c] * z[j]
        t[c] = s
        t2 += s * s / lam[c]
    spe = 0.0
    for j in range(k):
        s = z[j]
        for c in range(a):
            s -= load[j, c] * t[c]
        resid[j] = s
        spe += s * s
    raw = t2 / lims[0]
    r2 = spe / lims[1]
    if r2 > raw:
        raw = r2
    if ist[GI_NSCORED] == 0:
        fs[GS_SCORE] = raw
    else:
        fs[GS_SCORE] += gp[GP_SCORE_ALPHA] * (raw - fs[GS_SCORE])
    ist[GI_NSCORED] += 1
    fs[GS_T2] = t2
    fs[GS_SPE] = spe
    fs[GS_RAW] = raw
    trans = 0
    if fs[GS_SCORE] > 1.0:
        ist[GI_ON_RUN] += 1
        ist[GI_OFF_RUN] = 0
        if ist[GI_ALARM] == 0 and ist[GI_ON_RUN] >= gp[GP_ON]:
            ist[GI_ALARM] = 1
            trans = 1
    else:
        ist[GI_OFF_RUN] += 1
        ist[GI_ON_RUN] = 0
        if ist[GI_ALARM] != 0 and ist[GI_OFF_RUN] >= gp[GP_OFF]:
            ist[GI_ALARM] = 0
            trans = -1
    # slow adaptation of mean and scale to normal drift; frozen in alarm and on outliers
    aa = gp[GP_ADAPT]
    if aa > 0.0 and ist[GI_ALARM] == 0 and raw <= 1.0:
        for j in range(k):
            if sd[j] > 0.0:
                d = vals[idx[j]] - mean[j]
                mean[j] += aa * d
                sd[j] = math.sqrt(sd[j] * sd[j] + aa * (d * d - sd[j] * sd[j]))
    return trans


@njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def group_step(
    vals: np.ndarray,
    flags: np.ndarray,
    idx: np.ndarray,
    mean: np.ndarray,
    sd: np.ndarray,
    load: np.ndarray,
    lam: np.ndarray,
    lims: np.ndarray,
    gp: np.ndarray,
    fs: np.ndarray,
    ist: np.ndarray,
    z: np.ndarray,
    t: np.ndarray,
    resid: np.ndarray,
) -> int:
    """Live: score the group on the table's current values and OR GROUP_ALARM into members."""
    trans = _group_update(vals, flags, idx, mean, sd, load, lam, lims, gp, fs, ist, z, t, resid)
    if ist[GI_ALARM] != 0:
        for j in range(idx.shape[0]):
            flags[idx[j]] |= GROUP_ALARM
    return trans


@njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def group_run(
    vals: np.ndarray,
    flags: np.ndarray,
    first: int,
    idx: np.ndarray,
    mean: np.ndarray,
    sd: np.ndarray,
    load: np.ndarray,
    lam: np.ndarray,
    lims: np.ndarray,
    gp: np.ndarray,
    fs: np.ndarray,
    ist: np.ndarray,
    z: np.ndarray,
    t: np.ndarray,
    resid: np.ndarray,
    out_score: np.ndarray,
    out_alarm: np.ndarray,
) -> None:
    """Replay: rows first.. of (rows x tags) values/flags; writes score/alarm per row."""
    for r in range(first, vals.shape[0]):
        _group_update(vals[r], flags[r], idx, mean, sd, load, lam, lims, gp, fs, ist, z, t, resid)
        out_score[r] = fs[GS_SCORE]
        out_alarm[r] = ist[GI_ALARM]
        if ist[GI_ALARM] != 0:
            for j in range(idx.shape[0]):
                flags[r, idx[j]] |= GROUP_ALARM


def model_args(m: GroupModel) -> tuple[np.ndarray, ...]:
    """The arrays `group_step`/`group_run` take after the value/flag arguments."""
    return (m.idx, m.mean, m.sd, m.load, m.lam, m.lims, m.params, m.fs, m.ist, m.z, m.t, m.resid)


def contributions(m: GroupModel) -> np.ndarray:
    """Per-column share of the last sample's SPE (squared residuals), for alarm explanations."""
    r2 = m.resid * m.resid
    total = float(r2.sum())
    return r2 / total if total > 0 else r2
