"""Statistics on synthetic data with known answers."""
import math

import numpy as np
import pytest

from resbench.stats import (
    median_ci,
    bootstrap_multiplier,
    compute_multiplier,
    first_reach,
    fit_power_law,
    mean_ci,
    welch_compare,
)


def test_mean_ci_known_values():
    ci = mean_ci([1.0, 2.0, 3.0])
    # mean 2, sd 1, n 3: t(0.975, 2) = 4.302652729911275
    assert ci.mean == 2.0
    assert ci.half_width == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert mean_ci([5.0]).lo == -math.inf


def test_mean_ci_coverage_is_about_95_percent():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        ci = mean_ci(rng.normal(1.0, 2.0, 5))
        hits += ci.lo <= 1.0 <= ci.hi
    assert 0.93 < hits / 2000 < 0.97


def test_welch_verdicts():
    base = [2.00, 2.01, 1.99, 2.00]
    assert welch_compare([1.90, 1.91, 1.89, 1.90], base).verdict == "better"
    assert welch_compare([2.10, 2.11, 2.09, 2.10], base).verdict == "worse"
    noisy = welch_compare([1.95, 2.06, 1.98, 2.03], base)
    assert noisy.verdict == "no detectable difference" and noisy.lo < 0 < noisy.hi
    assert welch_compare([1.9], base).verdict == "too few seeds"


def test_welch_matches_scipy_p_value():
    from scipy import stats

    a, b = [1.0, 1.2, 0.9, 1.1], [1.3, 1.5, 1.4, 1.2, 1.6]
    assert welch_compare(a, b).p_value == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)


def test_power_law_recovers_known_exponent():
    c = np.array([1e12, 3e12, 1e13, 3e13])
    fit = fit_power_law(c, 50.0 * c ** -0.05)
    assert fit.b == pytest.approx(0.05) and fit.a == pytest.approx(50.0) and fit.r2 == pytest.approx(1.0)
    assert fit.compute_at(float(fit.loss_at(2e12))) == pytest.approx(2e12)


def test_compute_multiplier_of_a_shifted_curve():
    # variant reaches every loss with 1.25x less compute: L_v(C) = L_b(1.25 C)
    c = np.array([1e12, 4e12, 1.6e13])
    base = fit_power_law(c, 50.0 * c ** -0.05)
    var = fit_power_law(c, 50.0 * (1.25 * c) ** -0.05)
    assert compute_multiplier(base, var, loss=10.0) == pytest.approx(1.25)


def test_bootstrap_ci_contains_truth_and_shrinks_with_less_noise():
    rng = np.random.default_rng(1)
    sizes = [1e12, 4e12, 1.6e13]

    def runs(shift, noise):
        return {s: [(s, 50.0 * (shift * s) ** -0.05 * (1 + rng.normal(0, noise))) for _ in range(3)] for s in sizes}

    point, lo, hi = bootstrap_multiplier(runs(1.0, 0.002), runs(1.25, 0.002), loss=10.0, n_boot=300)
    assert lo < 1.25 < hi and point == pytest.approx(1.25, rel=0.3)
    _, lo2, hi2 = bootstrap_multiplier(runs(1.0, 0.0002), runs(1.25, 0.0002), loss=10.0, n_boot=300)
    assert hi2 - lo2 < hi - lo


def test_first_reach():
    curve = [(0, 5.0), (10, 3.0), (20, 2.5), (30, 2.4)]
    assert first_reach(curve, 2.5) == (20, 2.5)
    assert first_reach(curve, 1.0) is None


def test_median_ci_is_order_statistics_with_binomial_coverage():
    import math
    assert median_ci([3, 1, 2, 5, 4]) == (3.0, -math.inf, math.inf)  # n = 5 cannot reach 95%
    assert median_ci(range(1, 8))[1:] == (1.0, 7.0)  # n = 7: min..max, 98.4%
    assert median_ci(range(1, 12))[1:] == (2.0, 10.0)  # n = 11: x(3)..x(9) would be only 93.5%
    # coverage on planted data: the true median is inside ~>= 95% of the time
    rng = np.random.default_rng(0)
    hits = sum(lo <= 0 <= hi for _, lo, hi in (median_ci(rng.standard_normal(11)) for _ in range(2000)))
    assert 0.96 < hits / 2000 < 1.0
