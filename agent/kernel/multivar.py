"""Multivariate stage: PCA on a warm-up window, Hotelling T2 and SPE (Q) with control limits.

Why PCA/T2/SPE: related process signals (pump current, flow, pressure, vibration) move
together; a fault often breaks that relation while every signal stays inside its own normal
range.  T2 measures how far a sample is inside the learned plane, SPE how far it is off it (a
correlation break).  Both are normalised by their control limits and combined as
`max(T2/T2_lim, SPE/SPE_lim)`, smoothed by an EWMA for the reported score.  The alarm is
either the legacy on/off hysteresis on the smoothed score (limits from `alpha`), or, with a
false-alarm budget, k out of the last n samples over the per-sample limits, where the limits,
k and the per-sample level come from the warm-up statistics (`agent.kernel.stats`, `_limits`).

Dynamic PCA (`lags`): the model sees each member at t, t-1, .., t-L; the scorer keeps the last
L standardised rows in a ring buffer (`hist`), so a lagged model costs no allocation either.

Fitting (numpy `eigh`, once per group) is plain Python; scoring is jitted and allocates
nothing.  Columns with zero variance in the warm-up carry no information for the model: they
are excluded (their standardised value is pinned to 0) and reported in `GroupModel.excluded`;
the per-tag stage still watches them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from agent.kernel import jit
from agent.kernel import stats as st
from agent.kernel.flags import GROUP_ALARM, INVALID, OUT_OF_RANGE
from agent.kernel.settings import MAX_AUTO_LAGS, GroupSettings
from agent.kernel.stats import norm_ppf

# float params / state of a group
GP_SCORE_ALPHA = 0
GP_ON = 1
GP_OFF = 2
GP_ADAPT = 3
GP_MODE = 4  # 0: hysteresis on the smoothed score; 1: k of the last n raw samples over 1
# (events: an episode closes GP_OFF = n samples after the alarm cleared)
GP_K = 5  # k of the k-out-of-n alarm (n = len(win))
GP_LAGS = 6  # dynamic PCA lags L
NGP = 7
GS_SCORE = 0  # smoothed score
GS_T2 = 1
GS_SPE = 2
GS_RAW = 3  # unsmoothed normalised score
NGS = 4
GI_ON_RUN = 0
GI_OFF_RUN = 1
GI_ALARM = 2
GI_NSCORED = 3
GI_WPOS = 4  # next slot of the exceedance window
GI_WCOUNT = 5  # exceedances in the window
GI_HPOS = 6  # slot of the most recent row in the lag history
GI_EPISODE = 7  # budget mode: an alarm episode is open (events), see _group_update
NGI = 8


class GroupFitError(ValueError):
    """The warm-up data cannot define a model (too few valid rows, every column constant)."""


def chi2_ppf(p: float, k: int) -> float:
    """Legacy (`alpha` limits): chi-square quantile, Wilson-Hilferty (~1 % for k >= 1)."""
    z = norm_ppf(p)
    h = 2.0 / (9.0 * k)
    return k * max(0.0, 1.0 - h + z * math.sqrt(h)) ** 3


def t2_limit(alpha: float, a: int, n: int) -> float:
    """Legacy (`alpha` limits): Hotelling T2 limit for a new sample, a components, n rows.

    Kept bit-for-bit for configurations without a budget; budgets use `stats.t2_limit`.

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
    """A fitted group: model arrays, scratch and state for the jitted scorer.

    With L lags the model has k*(L+1) columns: block l (0..L) holds the members at t-l, so
    `load`, `z` and `resid` are k*(L+1) long; `hist` holds the last L standardised rows.
    """

    name: str
    idx: np.ndarray  # int64 [k] tag indices (into the table, or replay columns)
    mean: np.ndarray  # float64 [k]
    sd: np.ndarray  # float64 [k]; 0 = excluded column
    load: np.ndarray  # float64 [k*(L+1), a]
    lam: np.ndarray  # float64 [a]
    lims: np.ndarray  # float64 [2]: T2 limit, SPE limit
    params: np.ndarray  # float64 [NGP]
    fs: np.ndarray = field(default_factory=lambda: np.full(NGS, np.nan))  # NaN until scored
    ist: np.ndarray = field(default_factory=lambda: np.zeros(NGI, dtype=np.int64))
    z: np.ndarray = field(default_factory=lambda: np.zeros(0))
    t: np.ndarray = field(default_factory=lambda: np.zeros(0))
    resid: np.ndarray = field(default_factory=lambda: np.zeros(0))
    hist: np.ndarray = field(default_factory=lambda: np.zeros((1, 0)))  # [max(L,1), k]
    win: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))  # [n]
    excluded: list[int] = field(default_factory=list)  # positions within the group
    n_train: int = 0
    info: dict[str, object] = field(default_factory=dict)  # how the limits were set

    @property
    def n_components(self) -> int:
        return int(self.lam.shape[0])

    @property
    def lags(self) -> int:
        return int(self.params[GP_LAGS])

    @property
    def alarm(self) -> bool:
        return bool(self.ist[GI_ALARM])

    @property
    def score(self) -> float:
        return float(self.fs[GS_SCORE])


def choose_lags(Z: np.ndarray, max_lags: int) -> int:
    """Lags for `lags: auto`: the largest l <= max_lags at which at least half of the members
    have a significant partial autocorrelation (|pacf_l| > 2/sqrt(n), the AR order rule)."""
    n, k = Z.shape
    if k == 0 or n < 4 * (max_lags + 2):
        return 0
    p = np.array([st.pacf(Z[:, j], max_lags) for j in range(k)])  # [k, max_lags]
    sig = np.median(np.abs(p), axis=0) > 2.0 / math.sqrt(n)
    hits = np.flatnonzero(sig)
    return int(hits[-1] + 1) if hits.size else 0


def lagged(Z: np.ndarray, lags: int) -> np.ndarray:
    """Rows [z_t, z_{t-1}, .., z_{t-L}] for t = L..n-1."""
    n = Z.shape[0]
    return np.hstack([Z[lags - lag : n - lag] for lag in range(lags + 1)])


def fit_group(
    settings: GroupSettings, idx: np.ndarray, X: np.ndarray, period_s: float | None = None
) -> GroupModel:
    """Learn mean, scaling, loadings and limits from warm-up rows X (rows x k, filtered values).

    `period_s` (the sample period) converts `false_alarms_per_day` into a per-sample rate.
    """
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
    Zfull = np.zeros((n, k))
    Zfull[:, inc] = (X[:, inc] - mean[inc]) / sd[inc]
    auto = settings.lags == "auto"
    L = choose_lags(Zfull[:, inc], MAX_AUTO_LAGS) if auto else int(settings.lags)
    while auto and L > 0 and n - L < need * (L + 1):
        L -= 1  # a short warm-up cannot carry the lagged model: fewer lags
    if n - L < need * (L + 1):
        raise GroupFitError(
            f"group {settings.name!r}: {n} valid warm-up rows are too few for {L} lags "
            f"(at least {need * (L + 1) + L})"
        )
    ZL = lagged(Zfull, L)  # [n - L, k (L + 1)]
    inc_l = np.concatenate([inc + lag * k for lag in range(L + 1)])
    nl = ZL.shape[0]
    Z = ZL[:, inc_l]
    C = (Z.T @ Z) / (nl - 1)
    w, V = np.linalg.eigh(C)
    order = np.argsort(w)[::-1]
    w = np.clip(w[order], 0.0, None)
    V = V[:, order]
    m = inc_l.size
    if settings.n_components is not None:
        a = settings.n_components
    else:
        frac = np.cumsum(w) / max(float(w.sum()), 1e-300)
        a = int(np.searchsorted(frac, settings.variance_explained) + 1)
    a = max(1, min(a, m - 1 if m > 1 else 1))
    lam = np.maximum(w[:a], 1e-9 * max(float(w[0]), 1e-300))
    kl = k * (L + 1)
    load = np.zeros((kl, a))
    load[inc_l, :] = V[:, :a]
    T = Z @ V[:, :a]
    t2 = np.sum(T * T / lam, axis=1)
    spe = np.sum((Z - T @ V[:, :a].T) ** 2, axis=1)
    info: dict[str, object] = {"lags": L, "rows": nl}
    if settings.budgeted:
        t2_lim, spe_lim, k_of, n_win = _budget_limits(
            settings, T, t2, spe, w[a:] if m > a else None, a, period_s, info,
            held_out_stats(Z, a),
        )  # fmt: skip
        mode = 1.0
    else:
        t2_lim = t2_limit(settings.alpha, a, nl)
        spe_lim = spe_limit(settings.alpha, w[a:]) if m > a else math.inf
        # guard the theoretical limits with the warm-up's own quantile: real process data
        # are autocorrelated and not Gaussian, and an in-sample quantile is never exceeded
        q = 1.0 - settings.alpha
        t2_lim = max(t2_lim, float(np.quantile(t2, q)))
        if math.isfinite(spe_lim):
            spe_lim = max(spe_lim, float(np.quantile(spe, q)), 1e-12)
        k_of, n_win, mode = 1, 1, 0.0
        info.update(method="alpha", alpha=settings.alpha)
    off = settings.alarm_off_samples if mode == 0.0 else n_win  # budget: episode end after n
    params = np.array(
        [settings.score_alpha, settings.alarm_on_samples, off, settings.adapt_alpha, mode,
         k_of, L],
        dtype=np.float64,
    )  # fmt: skip
    hist = np.zeros((max(L, 1), k))
    ist = np.zeros(NGI, dtype=np.int64)
    if L > 0:
        hist[:] = Zfull[n - L :]  # oldest first; the most recent row is slot L - 1
        ist[GI_HPOS] = L - 1
    return GroupModel(
        name=settings.name,
        idx=np.ascontiguousarray(idx, dtype=np.int64),
        mean=mean,
        sd=sd,
        load=np.ascontiguousarray(load),
        lam=np.ascontiguousarray(lam),
        lims=np.array([t2_lim, spe_lim]),
        params=params,
        ist=ist,
        z=np.zeros(kl),
        t=np.zeros(a),
        resid=np.zeros(kl),
        hist=hist,
        win=np.zeros(n_win, dtype=np.int64),
        excluded=[int(j) for j in np.flatnonzero(const)],
        n_train=n,
        info=info,
    )


CV_BLOCKS = 5  # contiguous warm-up blocks for the held-out statistics


def held_out_stats(Z: np.ndarray, a: int, blocks: int = CV_BLOCKS) -> tuple[np.ndarray, ...]:
    """T2 and SPE of every warm-up row scored by a model fitted without its block.

    Contiguous blocks (not random rows): an autocorrelated neighbour would leak the row into
    its own model.  The held-out statistics carry what a new sample carries and the in-sample
    ones do not: the model's estimation error and the drift between parts of the warm-up.
    """
    n = Z.shape[0]
    t2_out = np.empty(n)
    spe_out = np.empty(n)
    for b in range(blocks):
        lo, hi = b * n // blocks, (b + 1) * n // blocks
        keep = np.ones(n, dtype=bool)
        keep[lo:hi] = False
        Zf = Z[keep]
        mu = Zf.mean(axis=0)
        sdf = Zf.std(axis=0, ddof=1)
        sdf[sdf <= 0] = 1.0
        Zs = (Zf - mu) / sdf
        w, V = np.linalg.eigh((Zs.T @ Zs) / (Zs.shape[0] - 1))
        order = np.argsort(w)[::-1][:a]
        P, lam = V[:, order], np.maximum(w[order], 1e-12)
        Zh = (Z[lo:hi] - mu) / sdf
        Th = Zh @ P
        t2_out[lo:hi] = np.sum(Th * Th / lam, axis=1)
        spe_out[lo:hi] = np.sum((Zh - Th @ P.T) ** 2, axis=1)
    return t2_out, spe_out


NONNORMAL_Z = 2.326  # one-sided 1 % test of the warm-up's tail against the Gaussian theory
CHECK_LEVEL = 0.05  # tail level at which the warm-up is compared with the theory


def _tail_too_heavy(stat: np.ndarray, limit: float, level: float, rho: float) -> bool:
    """Do the held-out warm-up statistics exceed the theoretical `level` limit of a new
    sample significantly more often than `level`?  (Tail heavier than the Gaussian theory.)

    Exceedance count against Binomial(n, level), its variance inflated by (1+rho)/(1-rho) for
    an autocorrelated warm-up; one-sided z test at 1 %.
    """
    n = stat.size
    c = float(np.count_nonzero(stat > limit))
    infl = (1.0 + rho) / (1.0 - rho)
    z = (c - n * level) / math.sqrt(n * level * (1.0 - level) * infl)
    return z > NONNORMAL_Z


def _budget_limits(
    settings: GroupSettings,
    T: np.ndarray,
    t2: np.ndarray,
    spe: np.ndarray,
    resid_eigs: np.ndarray | None,
    a: int,
    period_s: float | None,
    info: dict[str, object],
    cv_t2_spe: tuple[np.ndarray, np.ndarray],
) -> tuple[float, float, int, int]:
    """(T2 limit, SPE limit, k, n) for the group's false-alarm budget; notes go to `info`."""
    nl = t2.size
    if settings.false_alarm_rate is not None:
        budget, onset = settings.false_alarm_rate, False
        info["budget"] = f"{settings.false_alarm_rate:g} of samples"
    else:
        if period_s is None or not period_s > 0:
            raise GroupFitError(
                f"group {settings.name!r}: false_alarms_per_day needs the sample period "
                "(timestamps that advance during the warm-up)"
            )
        per_day = float(settings.false_alarms_per_day or 0.0)
        budget, onset = min(0.25, per_day * period_s / 86400.0), True
        info["budget"] = f"{per_day:g} onsets/day at {period_s:g} s = {budget:.3g} per sample"
    # autocorrelation: the scores set the effective warm-up size for the limits
    rho_t = float(np.mean([max(0.0, st.lag1_autocorr(T[:, c])) for c in range(a)]))
    n_eff = st.effective_n(nl, rho_t)
    n_eff = max(n_eff, a + 3.0)
    # first pass at the budget itself to get the statistic whose persistence we model
    spe_ok = resid_eigs is not None and float(np.sum(resid_eigs)) > 0
    t2_0 = st.t2_limit(budget, a, n_eff)
    raw0 = t2 / t2_0
    if spe_ok:
        raw0 = np.maximum(raw0, spe / st.spe_limit_jm(budget, resid_eigs))
    rho_s = min(0.95, st.tail_autocorr(raw0, settings.persistence_window))
    n_win = settings.persistence_window
    k_of, level = st.persistence(budget, n_win, rho_s, onset)
    each = 1.0 - math.sqrt(1.0 - level)  # T2 and SPE independent under the model (Sidak)
    # T2 of a new sample: F with the effective warm-up size, and per component: a slow
    # (autocorrelated) score has a variance known from fewer rows, so t_c^2/lam_c is
    # (1 + 1/n_c) F(1, n_c) with n_c its own effective size; the sum is moment-matched
    t2_lim, t2_method = st.t2_limit(each, a, n_eff), "F"
    alt = st.t2_limit_components(each, [st.lag1_autocorr(T[:, c]) for c in range(a)], nl)
    if alt > t2_lim:
        t2_lim, t2_method = alt, "F per component (slow scores)"
    check = max(CHECK_LEVEL, each)
    cv_t2, cv_spe = cv_t2_spe
    if _tail_too_heavy(cv_t2, st.t2_limit(check, a, n_eff), check, rho_s):
        alt = st.scaled_chi2_limit(each, float(cv_t2.mean()), float(cv_t2.var(ddof=1)))
        if alt > t2_lim:
            t2_lim, t2_method = alt, "scaled chi2 of held-out warm-up (not Gaussian)"
    spe_lim = math.inf
    spe_method = "none (no residual space)"
    if spe_ok:
        assert resid_eigs is not None
        spe_lim, spe_method = st.spe_limit_jm(each, resid_eigs), "JM"
        if _tail_too_heavy(cv_spe, st.spe_limit_jm(check, resid_eigs), check, rho_s):
            alt = st.scaled_chi2_limit(each, float(cv_spe.mean()), float(cv_spe.var(ddof=1)))
            if alt > spe_lim:
                spe_lim, spe_method = alt, "scaled chi2 of held-out warm-up (not Gaussian)"
        spe_lim = max(spe_lim, 1e-12)
    info.update(
        method="budget",
        n_eff=round(n_eff, 1),
        rho_scores=round(rho_t, 3),
        rho_statistic=round(rho_s, 3),
        k_of_n=f"{k_of} of {n_win}",
        sample_level=round(level, 5),
        t2_method=t2_method,
        spe_method=spe_method,
    )
    return t2_lim, spe_lim, k_of, n_win


@jit.njit(cache=True, nogil=True, error_model="numpy", _nrt=False, inline="always")
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
    hist: np.ndarray,
    win: np.ndarray,
) -> int:
    """Score one sample; returns +1 on alarm onset, -1 on clear, 0 otherwise.

    A sample with an invalid or out-of-range member is skipped: score, alarm and the lag
    history are held.
    """
    k = idx.shape[0]
    a = lam.shape[0]
    nlag = int(gp[GP_LAGS])
    kl = k * (nlag + 1)
    for j in range(k):
        x = vals[idx[j]]
        if not math.isfinite(x) or (flags[idx[j]] & (INVALID | OUT_OF_RANGE)) != 0:
            return 0
    for j in range(k):
        if sd[j] > 0.0:
            z[j] = (vals[idx[j]] - mean[j]) / sd[j]
        else:
            z[j] = 0.0
    hpos = ist[GI_HPOS]
    for lag in range(1, nlag + 1):
        row = (hpos - lag + 1 + nlag) % nlag
        for j in range(k):
            z[lag * k + j] = hist[row, j]
    t2 = 0.0
    for c in range(a):
        s = 0.0
        for j in range(kl):
            s += load[j, c] * z[j]
        t[c] = s
        t2 += s * s / lam[c]
    spe = 0.0
    for j in range(kl):
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
    if gp[GP_MODE] == 0.0:
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
    else:  # k out of the last n samples over the per-sample limit
        pos = ist[GI_WPOS]
        over = 1 if raw > 1.0 else 0
        ist[GI_WCOUNT] += over - win[pos]
        win[pos] = over
        ist[GI_WPOS] = (pos + 1) % win.shape[0]
        # the alarm (flag, replay column) is exactly "k of the last n": what the budget is
        # computed for.  Events mark episodes: on at the first alarm after a quiet spell,
        # off once the alarm has stayed clear for GP_OFF (= n) samples, so an alarm that
        # flickers at a fault's edge is one episode, not a stream of events.
        if ist[GI_WCOUNT] >= gp[GP_K]:
            ist[GI_ALARM] = 1
            ist[GI_OFF_RUN] = 0
            if ist[GI_EPISODE] == 0:
                ist[GI_EPISODE] = 1
                trans = 1
        else:
            ist[GI_ALARM] = 0
            if ist[GI_EPISODE] != 0:
                ist[GI_OFF_RUN] += 1
                if ist[GI_OFF_RUN] >= gp[GP_OFF]:
                    ist[GI_EPISODE] = 0
                    ist[GI_OFF_RUN] = 0
                    trans = -1
    # slow adaptation of mean and scale to normal drift; frozen in alarm and on outliers
    aa = gp[GP_ADAPT]
    if aa > 0.0 and ist[GI_ALARM] == 0 and raw <= 1.0:
        for j in range(k):
            if sd[j] > 0.0:
                d = vals[idx[j]] - mean[j]
                mean[j] += aa * d
                sd[j] = math.sqrt(sd[j] * sd[j] + aa * (d * d - sd[j] * sd[j]))
    if nlag > 0:
        hpos = (hpos + 1) % nlag
        for j in range(k):
            hist[hpos, j] = z[j]
        ist[GI_HPOS] = hpos
    return trans


@jit.njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
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
    hist: np.ndarray,
    win: np.ndarray,
) -> int:
    """Live: score the group on the table's current values and OR GROUP_ALARM into members."""
    trans = _group_update(
        vals, flags, idx, mean, sd, load, lam, lims, gp, fs, ist, z, t, resid, hist, win
    )
    if ist[GI_ALARM] != 0:
        for j in range(idx.shape[0]):
            flags[idx[j]] |= GROUP_ALARM
    return trans


@jit.njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
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
    hist: np.ndarray,
    win: np.ndarray,
    out_score: np.ndarray,
    out_alarm: np.ndarray,
) -> None:
    """Replay: rows first.. of (rows x tags) values/flags; writes score/alarm per row."""
    for r in range(first, vals.shape[0]):
        _group_update(
            vals[r], flags[r], idx, mean, sd, load, lam, lims, gp, fs, ist, z, t, resid, hist, win
        )
        out_score[r] = fs[GS_SCORE]
        out_alarm[r] = ist[GI_ALARM]
        if ist[GI_ALARM] != 0:
            for j in range(idx.shape[0]):
                flags[r, idx[j]] |= GROUP_ALARM


def model_args(m: GroupModel) -> tuple[np.ndarray, ...]:
    """The arrays `group_step`/`group_run` take after the value/flag arguments."""
    return (
        m.idx, m.mean, m.sd, m.load, m.lam, m.lims, m.params, m.fs, m.ist, m.z, m.t, m.resid,
        m.hist, m.win,
    )  # fmt: skip


def contributions(m: GroupModel) -> np.ndarray:
    """Per-member share of the last scored sample's deviation (reconstruction-based).

    Reconstruction-based contributions (Alcala and Qin 2009) of the combined index
    phi = SPE/SPE_lim + T2/T2_lim: for column j, (xi_j' M z)^2 / (xi_j' M xi_j) with
    M = (I - P P')/SPE_lim + P diag(1/lam) P'/T2_lim, i.e. how much of phi goes away when
    column j alone is reconstructed from the others.  A bias on one sensor gives that sensor
    the largest RBC.  With lags the lagged copies of a member are summed.  Called at alarm
    onset (allocates a few k-vectors), never per sample.
    """
    P, lam = m.load, m.lam
    z = m.z
    k = m.idx.size
    inv_q = 1.0 / m.lims[1] if math.isfinite(m.lims[1]) and m.lims[1] > 0 else 0.0
    inv_t = 1.0 / m.lims[0]
    tz = P.T @ z
    Mz = (z - P @ tz) * inv_q + (P @ (tz / lam)) * inv_t
    diag = (1.0 - np.sum(P * P, axis=1)) * inv_q + np.sum(P * P / lam, axis=1) * inv_t
    rbc = np.where(diag > 1e-12, Mz * Mz / np.maximum(diag, 1e-12), 0.0)
    per_tag = rbc.reshape(-1, k).sum(axis=0)
    total = float(per_tag.sum())
    return per_tag / total if total > 0 else per_tag
