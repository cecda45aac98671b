"""benchmarks.report.stats against hand-computed and closed-form answers."""
import numpy as np
import pytest
from scipy import stats as sps

from benchmarks.report.stats import bootstrap_ci, bootstrap_means, cohens_dz, holm, paired_t


def test_holm_on_known_p_values():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    out = holm([0.02, float("nan"), 0.01])  # NaN is no test: m = 2
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.02])
    assert np.isnan(out[1])
    assert holm([]).shape == (0,)


def test_bootstrap_interval_of_a_bernoulli_mean_is_the_binomial_quantile():
    """Resampling n users of whom k hit gives a mean distributed Binomial(n, k/n) / n exactly."""
    n, k = 50, 15
    v = np.zeros(n)
    v[:k] = 1.0
    lo, hi = bootstrap_ci(v, n_boot=20000, seed=3)[0]
    exact_lo = sps.binom.ppf(0.025, n, k / n) / n
    exact_hi = sps.binom.ppf(0.975, n, k / n) / n
    assert abs(lo - exact_lo) <= 1 / n + 1e-12 and abs(hi - exact_hi) <= 1 / n + 1e-12
    assert lo < 0.3 < hi
    # the bootstrap means have the binomial variance p(1-p)/n
    means = bootstrap_means(v, n_boot=20000, seed=3)[:, 0]
    assert abs(means.var() - 0.3 * 0.7 / n) < 0.1 * 0.3 * 0.7 / n


def test_bootstrap_interval_of_a_constant_and_shared_draws():
    assert bootstrap_ci(np.full(30, 0.25)).tolist() == [[0.25, 0.25]]
    v = np.random.default_rng(0).random((40, 2))
    both = bootstrap_means(v, n_boot=100, seed=1)
    np.testing.assert_allclose(both[:, 1], bootstrap_means(v[:, 1], n_boot=100, seed=1)[:, 0])  # same draws


def test_effect_size_and_paired_t():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([0.5, 2.5, 2.0, 3.0])
    d = a - b  # 0.5, -0.5, 1, 1: mean 0.5, sd sqrt(0.5)
    assert abs(cohens_dz(a, b) - 0.5 / np.sqrt(0.5)) < 1e-12
    t, p = paired_t(a, b)
    assert abs(t - 0.5 / (np.sqrt(0.5) / 2)) < 1e-12 and 0 < p < 1
    assert np.isnan(paired_t(a, a)[1]) and np.isnan(cohens_dz(a[:1], b[:1]))
    # two-sided p of t = sqrt(2) with 3 degrees of freedom, from the t distribution itself
    assert p == pytest.approx(2 * sps.t.sf(np.sqrt(2), df=3), rel=1e-10)
    assert cohens_dz(b, a) == pytest.approx(-cohens_dz(a, b)) and paired_t(b, a)[0] == pytest.approx(-t)
