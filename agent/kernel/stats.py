"""Distribution functions and control-limit statistics for the multivariate stage.

Pure Python + numpy, no SciPy (it is not installed on the box): the regularized incomplete
beta and gamma functions (Numerical Recipes' continued fractions and series), the F,
chi-square, beta and binomial distributions built on them, quantiles by bracketing and
bisection on the CDF, and the control-limit formulas:

- `t2_limit`: Hotelling T2 of a *new* sample, a components learned from n rows:
  `a (n-1)(n+1) / (n (n-a)) * F(1-alpha; a, n-a)` (Tracy, Young and Mason 1992).
- `spe_limit_jm`: Jackson-Mudholkar (1979) limit of SPE/Q from the left-out eigenvalues;
  `scaled_chi2_limit`: Box's (1954) `g * chi2(h)` with the first two moments matched (used
  for SPE when the JM expansion breaks down and for a statistic whose warm-up distribution is
  far from the Gaussian theory, Nomikos and MacGregor 1995).
- `effective_n`: rows of an AR(1)-correlated warm-up worth as much as independent ones for
  estimating a mean, `n (1 - rho) / (1 + rho)` (Bartlett).
- `persistence`: the k-out-of-n second level.  The statistic is modelled as a Gaussian
  AR(1) (after a monotone transform) with the warm-up statistic's lag-1 autocorrelation,
  discretised as a Markov chain (Tauchen); `window_sf` gives P(at least k of the last n
  samples exceed) for it by dynamic programming (rho = 0: the binomial), and `persistence`
  picks k and the per-sample level so that the alarm's false rate equals the budget.

All functions are called once per model fit, never per sample; they are checked against
published table values in tests/unit/test_kernel_stats.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

_EPS = 1e-15
_TINY = 1e-300


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b), a, b > 0, 0 <= x <= 1."""
    if a <= 0 or b <= 0:
        raise ValueError("a and b must be positive")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    lbt += a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def gammainc(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x), a > 0, x >= 0."""
    if a <= 0:
        raise ValueError("a must be positive")
    if x <= 0.0:
        return 0.0
    lpre = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:  # series
        ap, s, term = a, 1.0 / a, 1.0 / a
        for _ in range(100_000):
            ap += 1.0
            term *= x / ap
            s += term
            if abs(term) < abs(s) * _EPS:
                break
        return min(1.0, math.exp(lpre) * s)
    b = x + 1.0 - a  # continued fraction for Q(a, x)
    c, d = 1.0 / _TINY, 1.0 / b
    h = d
    for i in range(1, 100_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = b + an / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return max(0.0, 1.0 - math.exp(lpre) * h)


def norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def norm_ppf(p: float) -> float:
    """Inverse standard normal CDF (Acklam's rational approximation, one Halley step)."""
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
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1
        )
    elif p > 1 - plow:
        return -norm_ppf(1 - p)
    else:
        q = p - 0.5
        r = q * q
        x = (
            (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
            * q
            / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
        )
    e = norm_cdf(x) - p  # one Halley refinement: full double precision
    u = e * math.sqrt(2 * math.pi) * math.exp(x * x / 2)
    return x - u / (1 + x * u / 2)


def _invert(cdf: Callable[[float], float], p: float, lo: float, hi: float) -> float:
    """x with cdf(x) = p for an increasing cdf on [lo, inf): bracket, then bisect."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    while cdf(hi) < p:
        lo, hi = hi, hi * 2.0
        if hi > 1e300:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if cdf(mid) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-14 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def chi2_cdf(x: float, k: float) -> float:
    return gammainc(0.5 * k, 0.5 * x) if x > 0 else 0.0


def chi2_ppf(p: float, k: float) -> float:
    """Chi-square quantile, k > 0 degrees of freedom (need not be an integer)."""
    return _invert(lambda x: chi2_cdf(x, k), p, 0.0, max(1.0, 2.0 * k))


def f_cdf(x: float, d1: float, d2: float) -> float:
    return betainc(0.5 * d1, 0.5 * d2, d1 * x / (d1 * x + d2)) if x > 0 else 0.0


def f_ppf(p: float, d1: float, d2: float) -> float:
    """F(d1, d2) quantile."""
    return _invert(lambda x: f_cdf(x, d1, d2), p, 0.0, 4.0)


def beta_ppf(p: float, a: float, b: float) -> float:
    return _invert(lambda x: betainc(a, b, min(x, 1.0)), p, 0.0, 1.0)


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return betainc(k, n - k + 1, p) if p > 0 else 0.0


# --- control limits ------------------------------------------------------------------------


def t2_limit(alpha: float, a: int, n: float) -> float:
    """Hotelling T2 limit of a new sample: a components, n (effective) training rows."""
    n = max(float(n), a + 2.0)
    return a * (n - 1) * (n + 1) / (n * (n - a)) * f_ppf(1.0 - alpha, a, n - a)


def t2_limit_components(alpha: float, rhos: list[float], n: float) -> float:
    """T2 limit of a new sample when each score has its own autocorrelation.

    Score c's variance is estimated from n_c = n (1 - rho_c^2) / (1 + rho_c^2) effective rows
    (Bartlett's size for a variance), its mean from fewer; t_c^2 / lam_c of a new sample is
    taken as (1 + 1/n_c) F(1, n_c).  The components are independent, so the sum's mean and
    variance add; Box's scaled chi-square with those moments gives the limit.
    """
    mean = var = 0.0
    for rho in rhos:
        r = min(max(rho, 0.0), 0.99)
        nu = max(5.0, n * (1.0 - r * r) / (1.0 + r * r))
        s = 1.0 + 1.0 / nu
        mean += s * nu / (nu - 2.0)
        var += s * s * 2.0 * nu * nu * (nu - 1.0) / ((nu - 2.0) ** 2 * (nu - 4.0))
    return scaled_chi2_limit(alpha, mean, var)


def t2_insample_limit(alpha: float, a: int, n: float) -> float:
    """Limit of T2 on the training rows themselves: (n-1)^2/n * Beta(a/2, (n-a-1)/2)."""
    n = max(float(n), a + 2.0)
    return (n - 1) ** 2 / n * beta_ppf(1.0 - alpha, 0.5 * a, 0.5 * (n - a - 1))


def scaled_chi2_limit(alpha: float, mean: float, var: float) -> float:
    """Box's g*chi2(h) with mean g*h and variance 2*g^2*h matched to `mean`, `var`."""
    if mean <= 0.0 or var <= 0.0:
        return math.inf if mean > 0 else 0.0
    g = var / (2.0 * mean)
    h = 2.0 * mean * mean / var
    return g * chi2_ppf(1.0 - alpha, h)


def spe_limit_jm(alpha: float, residual_eigs: np.ndarray) -> float:
    """Jackson-Mudholkar limit of SPE (Q); Box's moment match where JM's h0 <= 0."""
    e = np.asarray(residual_eigs, dtype=np.float64)
    th1, th2, th3 = float(e.sum()), float((e**2).sum()), float((e**3).sum())
    if th1 <= 0.0 or th2 <= 0.0:
        return math.inf
    h0 = 1.0 - 2.0 * th1 * th3 / (3.0 * th2 * th2)
    if h0 <= 0.0:
        return scaled_chi2_limit(alpha, th1, 2.0 * th2)
    z = norm_ppf(1.0 - alpha)
    term = z * math.sqrt(2.0 * th2 * h0 * h0) / th1 + 1.0 + th2 * h0 * (h0 - 1.0) / (th1 * th1)
    return th1 * max(term, 0.0) ** (1.0 / h0)


def spe_limit_box(alpha: float, residual_eigs: np.ndarray) -> float:
    """Box's weighted chi-square limit of SPE: mean th1, variance 2 th2."""
    e = np.asarray(residual_eigs, dtype=np.float64)
    return scaled_chi2_limit(alpha, float(e.sum()), 2.0 * float((e**2).sum()))


def lag1_autocorr(x: np.ndarray) -> float:
    """Lag-1 autocorrelation of a series (0 for a constant or too short one)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size < 3:
        return 0.0
    d = x - x.mean()
    den = float(d @ d)
    return float(d[1:] @ d[:-1]) / den if den > 0 else 0.0


def normal_scores(x: np.ndarray) -> np.ndarray:
    """Ranks mapped through the normal quantile (van der Waerden): a monotone Gaussianising."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    ranks = np.empty(n)
    ranks[np.argsort(x, kind="stable")] = np.arange(1, n + 1)
    return np.array([norm_ppf(r / (n + 1)) for r in ranks])


def effective_n(n: float, rho: float) -> float:
    """Bartlett's effective sample size of an AR(1) series with lag-1 correlation rho."""
    rho = min(max(rho, 0.0), 0.99)
    return max(1.0, n * (1.0 - rho) / (1.0 + rho))


def pacf(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Partial autocorrelations at lags 1..max_lag (Durbin-Levinson)."""
    x = np.asarray(x, dtype=np.float64)
    d = x - x.mean()
    den = float(d @ d)
    if den <= 0 or x.size <= max_lag + 2:
        return np.zeros(max_lag)
    r = np.array([float(d[k:] @ d[: x.size - k]) / den for k in range(max_lag + 1)])
    out = np.zeros(max_lag)
    phi = np.zeros(max_lag + 1)
    for k in range(1, max_lag + 1):
        num = r[k] - sum(phi[j] * r[k - j] for j in range(1, k))
        dd = 1.0 - sum(phi[j] * r[j] for j in range(1, k))
        pk = num / dd if abs(dd) > 1e-12 else 0.0
        new = phi.copy()
        new[k] = pk
        for j in range(1, k):
            new[j] = phi[j] - pk * phi[k - j]
        phi = new
        out[k - 1] = pk
    return out


def _bvn_upper(h: float, rho: float) -> float:
    """P(X > h, Y > h), standard bivariate normal with correlation rho >= 0.

    Plackett's identity d/drho P = phi2(h, h; rho), integrated over r = sin(theta), which
    removes the 1/sqrt(1 - r^2) singularity: P = (1 - Phi(h))^2 + 1/(2 pi) *
    int_0^asin(rho) exp(-h^2 / (1 + sin theta)) dtheta.
    """
    base = (1.0 - norm_cdf(h)) ** 2
    if rho <= 0.0:
        return base
    th = np.linspace(0.0, math.asin(min(rho, 1.0)), 257)
    f = np.exp(-h * h / (1.0 + np.sin(th)))
    return base + float(np.sum((f[1:] + f[:-1]) * 0.5 * np.diff(th))) / (2.0 * math.pi)


TAIL_LEVEL = 0.1  # share of the warm-up statistic above the level whose persistence is matched


def tail_autocorr(x: np.ndarray, window: int = 2, level: float = TAIL_LEVEL) -> float:
    """Latent AR(1) correlation that reproduces how exceedances of the series' upper `level`
    quantile cluster within `window` samples.

    What makes a k-of-n alarm fire falsely is how exceedances bunch inside the window.  For a
    statistic made of squared autocorrelated scores that follows the scores' correlation, not
    the (smaller) correlation of the statistic itself; for a dynamic-PCA statistic the
    dependence is short (shared lagged rows), not geometric.  So rho is chosen to match
    sum_{l=1}^{window-1} (window - l) P(I_t and I_{t+l}) -- the part of the variance of the
    window count that dependence adds -- between the series and the latent AR(1).
    """
    x = np.asarray(x, dtype=np.float64)
    window = max(2, int(window))
    if x.size < 10 * window:
        return 0.0
    thr = float(np.quantile(x, 1.0 - level))
    above = x > thr
    p = float(above.mean())
    if p <= 0.0 or p >= 1.0:
        return 0.0
    lags = range(1, window)
    weights = np.array([window - lag for lag in lags], dtype=np.float64)
    pairs = list(zip(weights, lags, strict=True))
    emp = float(sum(w * np.mean(above[lag:] & above[:-lag]) for w, lag in pairs))
    h = norm_ppf(1.0 - p)

    def model(rho: float) -> float:
        return float(sum(w * _bvn_upper(h, rho**lag) for w, lag in pairs))

    # under independence each lagged joint share is p^2 with variance ~ p^2 (1 - p^2) / N:
    # credit dependence only where the warm-up shows it (2 sigma), not its sampling noise
    noise = math.sqrt(float(np.sum(weights**2)) * p * p * (1 - p * p) / x.size)
    if emp <= model(0.0) + 2.0 * noise:
        return 0.0
    lo, hi = 0.0, 0.98
    if emp >= model(hi):
        return hi
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if model(mid) < emp:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --- k out of n ----------------------------------------------------------------------------


LATENT_BINS = 96  # states of the discretised latent AR(1)
LATENT_SPAN = 6.0  # the bins cover +-6 standard deviations


def _ncdf(x: np.ndarray) -> np.ndarray:
    return np.array([norm_cdf(float(v)) for v in np.ravel(x)]).reshape(np.shape(x))


_CHAINS: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def latent_chain(rho: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin edges, stationary bin probabilities, transition matrix) of a Gaussian AR(1)
    x' = rho x + sqrt(1 - rho^2) e on LATENT_BINS bins (Tauchen's discretisation; each bin
    represented by its conditional mean).  Cached per rho."""
    rho = round(min(max(rho, 0.0), 0.98), 4)
    got = _CHAINS.get(rho)
    if got is not None:
        return got
    edges = np.linspace(-LATENT_SPAN, LATENT_SPAN, LATENT_BINS + 1)
    edges[0], edges[-1] = -np.inf, np.inf
    cdf = _ncdf(edges)
    pdf = np.exp(-0.5 * np.where(np.isfinite(edges), edges, 0.0) ** 2) / math.sqrt(2 * math.pi)
    pdf[~np.isfinite(edges)] = 0.0
    mass = np.diff(cdf)
    centre = (pdf[:-1] - pdf[1:]) / np.maximum(mass, 1e-300)  # E[x | bin]
    s = math.sqrt(1.0 - rho * rho)
    P = np.diff(_ncdf((edges[None, :] - rho * centre[:, None]) / s), axis=1)
    P /= P.sum(axis=1, keepdims=True)
    got = (edges, mass, P)
    _CHAINS[rho] = got
    return got


def _exceed_given_bin(edges: np.ndarray, h: float) -> np.ndarray:
    """P(x > h | x in bin) for a standard normal x."""
    lo, hi = edges[:-1], edges[1:]
    cl, ch = _ncdf(lo), _ncdf(hi)
    ca = _ncdf(np.clip(np.maximum(lo, h), -1e300, 1e300))
    q = (ch - np.minimum(np.maximum(ca, cl), ch)) / np.maximum(ch - cl, 1e-300)
    return np.clip(q, 0.0, 1.0)


def window_sf(
    k: int, n: int, p: float, rho: float = 0.0, onset: bool = False, shift: float = 0.0
) -> float:
    """Stationary probability that at least k of n consecutive samples exceed.

    The statistic is modelled as a Gaussian AR(1) with lag-1 correlation `rho` (after a
    monotone transform), exceeding its 1-p quantile; with `shift` its mean is moved by that
    many standard deviations (for power).  rho = 0 gives the binomial.  With `onset`, the
    probability that the count reaches k at this sample from below k at the previous one
    (alarm onsets per sample).  Computed exactly on the discretised chain: a dynamic
    programme over (count so far, latent state).
    """
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0 if not onset else 0.0
    h = norm_ppf(1.0 - p) - shift
    if rho <= 1e-6 and not onset:
        return binom_sf(k, n, 1.0 - norm_cdf(h))
    edges, pi, P = latent_chain(rho)
    q = _exceed_given_bin(edges, h)
    dist = np.zeros((n + 1, pi.size))
    if onset:  # the sample leaving the window did not exceed; it is not counted
        dist[0] = pi * (1.0 - q)
        steps = n - 1
    else:
        dist[0] = pi
        steps = n
    for i in range(steps):
        if onset or i > 0:
            dist = dist @ P
        new = dist * (1.0 - q)
        new[1:] += dist[:-1] * q
        dist = new
    if onset:
        return float((dist[k - 1] @ P) @ q)
    return float(dist[k:].sum())


def _solve_level(target: float, k: int, n: int, rho: float, onset: bool) -> float:
    """Largest per-sample level p with window_sf(k, n, p) <= target (bisection)."""
    lo, hi = 0.0, 1.0
    if onset:  # the onset rate rises then falls in p: search below its peak
        grid = np.linspace(0.0, 1.0, 101)[1:-1]
        vals = [window_sf(k, n, float(q), rho, True) for q in grid]
        hi = float(grid[int(np.argmax(vals))])
        if max(vals) <= target:
            return hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if window_sf(k, n, mid, rho, onset) <= target:
            lo = mid
        else:
            hi = mid
    return lo


def persistence(budget: float, n: int, rho: float = 0.0, onset: bool = False) -> tuple[int, float]:
    """Choose (k, per-sample level) of a k-out-of-n alarm for a false-alarm budget.

    `budget` is the share of samples in alarm (or, with `onset`, alarm onsets per sample).
    For each k the per-sample level is the largest that keeps the alarm's false rate at the
    budget; among them k is the one most likely to alarm on the reference fault: a shift of
    the (Gaussianised) statistic by z(1 - budget), which a one-sample limit at the budget
    catches half of the time.
    """
    if n <= 1:
        return 1, _solve_level(budget, 1, 1, 0.0, onset)
    delta = norm_ppf(1.0 - budget)
    best = (-1.0, 1, budget)
    for k in range(1, n + 1):
        level = _solve_level(budget, k, n, rho, onset)
        if level <= 0.0:
            continue
        power = window_sf(k, n, level, rho, False, shift=delta)
        if power > best[0] + 1e-9:
            best = (power, k, level)
    return best[1], best[2]
