"""agent.kernel.stats against published table values, closed forms and simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.kernel import stats as st


@pytest.mark.parametrize(
    ("p", "k", "table"),
    [
        (0.95, 1, 3.841459),
        (0.99, 10, 23.209251),
        (0.999, 3, 16.266236),
        (0.95, 30, 43.772972),
        (0.01, 5, 0.554298),
        (0.99, 2, 9.210340),
    ],
)
def test_chi2_quantiles_match_the_table(p: float, k: int, table: float) -> None:
    assert st.chi2_ppf(p, k) == pytest.approx(table, rel=2e-6)
    assert st.chi2_cdf(table, k) == pytest.approx(p, abs=2e-7)


@pytest.mark.parametrize(
    ("p", "d1", "d2", "table"),
    [
        (0.95, 3, 10, 3.708265),
        (0.99, 5, 20, 4.102685),
        (0.95, 1, 1, 161.4476),
        (0.95, 2, 30, 3.315830),
        (0.99, 1, 10, 10.044289),
        (0.95, 5, 60, 2.368270),
    ],
)
def test_f_quantiles_match_the_table(p: float, d1: int, d2: int, table: float) -> None:
    assert st.f_ppf(p, d1, d2) == pytest.approx(table, rel=2e-6)


def test_normal_quantile_and_incomplete_functions_closed_forms() -> None:
    assert st.norm_ppf(0.975) == pytest.approx(1.959963985, abs=1e-9)
    assert st.norm_ppf(0.999) == pytest.approx(3.090232306, abs=1e-9)
    assert st.norm_ppf(1e-6) == pytest.approx(-4.753424309, abs=1e-8)
    # I_0.4(2, 3) = P(Binomial(4, 0.4) >= 2)
    assert st.betainc(2, 3, 0.4) == pytest.approx(0.5248, abs=1e-12)
    for x in (0.1, 1.0, 7.5, 40.0):
        assert st.gammainc(1.0, x) == pytest.approx(1.0 - math.exp(-x), rel=1e-12)
    assert st.gammainc(0.5, 2.0) == pytest.approx(math.erf(math.sqrt(2.0)), rel=1e-12)
    assert st.beta_ppf(0.5, 3, 3) == pytest.approx(0.5, abs=1e-12)


def test_binomial_tail_equals_the_direct_sum() -> None:
    for n, p in ((10, 0.1), (25, 0.03), (7, 0.6)):
        for k in range(n + 2):
            direct = sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))
            assert st.binom_sf(k, n, p) == pytest.approx(direct, abs=1e-12)


def test_t2_limit_for_one_component_is_the_scaled_t_squared() -> None:
    # a = 1, n = 11: (n+1)/n * F(0.95; 1, 10) = 12/11 * 4.964603
    assert st.t2_limit(0.05, 1, 11) == pytest.approx(12 / 11 * 4.964603, rel=1e-6)
    # large n: the F limit tends to the chi-square one
    assert st.t2_limit(0.01, 3, 1e7) == pytest.approx(st.chi2_ppf(0.99, 3), rel=1e-4)


def test_spe_limits_match_a_simulated_weighted_chi_square() -> None:
    eigs = np.array([0.9, 0.5, 0.3, 0.1, 0.05])
    rng = np.random.default_rng(1)
    q = (rng.normal(size=(400_000, eigs.size)) ** 2) @ eigs
    for alpha in (0.05, 0.01):
        emp = float(np.quantile(q, 1 - alpha))
        # both are approximations (JM a normal power, Box a two-moment match); with only
        # five eigenvalues they are a few per cent off (JM high, Box low at 1 %)
        assert st.spe_limit_jm(alpha, eigs) == pytest.approx(emp, rel=0.06)
        assert st.spe_limit_box(alpha, eigs) == pytest.approx(emp, rel=0.06)
    many = np.linspace(1.0, 0.02, 40)  # the usual case: many small eigenvalues
    q = (rng.normal(size=(200_000, many.size)) ** 2) @ many
    emp = float(np.quantile(q, 0.99))
    assert st.spe_limit_jm(0.01, many) == pytest.approx(emp, rel=0.015)
    assert st.spe_limit_box(0.01, many) == pytest.approx(emp, rel=0.015)


def ar1(n: int, rho: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.normal(size=n)
    x = np.empty(n)
    x[0] = e[0]
    s = math.sqrt(1 - rho * rho)
    for i in range(1, n):
        x[i] = rho * x[i - 1] + s * e[i]
    return x


def test_autocorrelation_pacf_and_effective_size_of_an_ar1() -> None:
    x = ar1(50_000, 0.7, 2)
    assert st.lag1_autocorr(x) == pytest.approx(0.7, abs=0.02)
    p = st.pacf(x, 3)
    assert p[0] == pytest.approx(0.7, abs=0.02)
    assert abs(p[1]) < 0.03 and abs(p[2]) < 0.03
    assert st.effective_n(1000, 0.7) == pytest.approx(1000 * 0.3 / 1.7)
    assert st.effective_n(1000, -0.5) == 1000  # negative correlation is not credited
    # how exceedances cluster: matched back to the latent correlation
    assert st.tail_autocorr(x, 10) == pytest.approx(0.7, abs=0.06)
    assert st.tail_autocorr(np.random.default_rng(3).normal(size=20_000), 10) < 0.06


def test_window_probability_is_the_binomial_without_correlation() -> None:
    for k, n, p in ((2, 10, 0.1), (5, 10, 0.12), (1, 4, 0.01)):
        assert st.window_sf(k, n, p) == pytest.approx(st.binom_sf(k, n, p), rel=1e-9)
        # onsets: the old window holds k-1, the sample leaving did not exceed, the new did
        onset = p * (1 - p) * math.comb(n - 1, k - 1) * p ** (k - 1) * (1 - p) ** (n - k)
        assert st.window_sf(k, n, p, 1e-9, onset=True) == pytest.approx(onset, rel=1e-3)


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_window_probability_matches_a_simulated_ar1(rho: float) -> None:
    n_sim, k, n, p = 300_000, 4, 10, 0.1
    x = ar1(n_sim, rho, 5)
    above = (x > st.norm_ppf(1 - p)).astype(np.int64)
    count = np.convolve(above, np.ones(n, dtype=np.int64), "valid")
    share = float(np.mean(count >= k))
    onset = float(np.mean((count[1:] >= k) & (count[:-1] < k)))
    # simulated shares of a correlated series: a generous 4-sigma band on a 10 % scale
    assert st.window_sf(k, n, p, rho) == pytest.approx(share, rel=0.1)
    assert st.window_sf(k, n, p, rho, onset=True) == pytest.approx(onset, rel=0.1)
    # independence would be badly wrong here
    assert st.binom_sf(k, n, p) < 0.5 * share


@pytest.mark.parametrize(("budget", "rho", "onset"), [(0.01, 0.0, False), (0.05, 0.6, False),
                                                      (0.001, 0.8, True)])  # fmt: skip
def test_persistence_meets_the_budget_and_beats_one_sample(
    budget: float, rho: float, onset: bool
) -> None:
    k, level = st.persistence(budget, 10, rho, onset)
    assert 1 <= k <= 10 and 0 < level < 1
    assert st.window_sf(k, 10, level, rho, onset) == pytest.approx(budget, rel=1e-3)
    # the chosen k catches the reference shift at least as well as a one-sample limit
    k1_level = st.persistence(budget, 1)[1] if not onset else budget
    delta = st.norm_ppf(1 - budget)
    one = 1 - st.norm_cdf(st.norm_ppf(1 - k1_level) - delta)
    assert st.window_sf(k, 10, level, rho, shift=delta) >= one - 1e-9
