"""Statistics for loss claims: CIs, Welch tests, verdicts, power-law fits, compute multipliers.

A verdict is read from the confidence interval of the difference, never from means alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# scipy.stats is imported where used: it costs ~0.7 s, and every worker process imports this module


@dataclass(frozen=True)
class MeanCI:
    mean: float
    lo: float
    hi: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


def mean_ci(values, confidence: float = 0.95) -> MeanCI:
    """Mean with a Student-t confidence interval (n = 1 → an infinitely wide interval)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        raise ValueError("mean_ci of no values")
    m = float(x.mean())
    if n == 1:
        return MeanCI(m, -math.inf, math.inf, 1)
    h = float(stats.t.ppf((1 + confidence) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return MeanCI(m, m - h, m + h, n)


def median_ci(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(median, lo, hi): the distribution-free interval for the median from order statistics
    (x_(k), x_(n-k+1)) with the largest k whose binomial coverage is still >= confidence.
    Needs only independent samples; too few of them (n < 6 at 95%) gives (-inf, inf)."""
    from scipy import stats

    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    if n == 0:
        raise ValueError("median_ci of no values")
    tail = (1 - confidence) / 2
    k = int(stats.binom.ppf(tail, n, 0.5))  # smallest k with P(B <= k) >= tail
    if stats.binom.cdf(k, n, 0.5) > tail:
        k -= 1  # P(B <= k) <= tail: x_(k+1) .. x_(n-k) covers the median with >= confidence
    med = float(np.median(x))
    if k < 0:
        return med, -math.inf, math.inf
    return med, float(x[k]), float(x[n - 1 - k])


@dataclass(frozen=True)
class Comparison:
    diff: float  # mean(variant) − mean(baseline); negative = lower loss
    lo: float
    hi: float
    p_value: float
    verdict: str


def welch_compare(variant, baseline, confidence: float = 0.95, lower_is_better: bool = True) -> Comparison:
    """Welch's t-test and the Welch CI of the difference of means; the verdict follows the CI."""
    from scipy import stats

    a, b = np.asarray(variant, float), np.asarray(baseline, float)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Comparison(diff, -math.inf, math.inf, math.nan, "too few seeds")
    res = stats.ttest_ind(a, b, equal_var=False)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        lo = hi = diff
        p = 0.0 if diff != 0 else 1.0
    else:
        dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
        h = stats.t.ppf((1 + confidence) / 2, dof) * se
        lo, hi, p = diff - h, diff + h, float(res.pvalue)
    if hi < 0:
        verdict = "better" if lower_is_better else "worse"
    elif lo > 0:
        verdict = "worse" if lower_is_better else "better"
    else:
        verdict = "no detectable difference"
    return Comparison(diff, float(lo), float(hi), p, verdict)


@dataclass(frozen=True)
class PowerLaw:
    """loss = a · C^(−b), fitted by least squares in log-log space."""

    a: float
    b: float
    r2: float

    def loss_at(self, compute):
        return self.a * np.power(compute, -self.b)

    def compute_at(self, loss: float) -> float:
        """The compute at which the fitted curve reaches `loss` (inf if it never does)."""
        if self.b <= 0:
            return math.inf
        return float((self.a / loss) ** (1 / self.b))


def fit_power_law(compute, loss) -> PowerLaw:
    c, y = np.log(np.asarray(compute, float)), np.log(np.asarray(loss, float))
    if len(c) < 2 or np.ptp(c) == 0:
        raise ValueError("a power-law fit needs at least two distinct compute values")
    slope, intercept = np.polyfit(c, y, 1)
    pred = intercept + slope * c
    ss_res, ss_tot = float(((y - pred) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    return PowerLaw(float(math.exp(intercept)), float(-slope), 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0)


def compute_multiplier(base: PowerLaw, variant: PowerLaw, loss: float) -> float:
    """C_baseline / C_variant at a loss both reach: > 1 means the variant needs less compute."""
    return base.compute_at(loss) / variant.compute_at(loss)


def bootstrap_multiplier(base_runs, variant_runs, loss: float, n_boot: int = 2000, seed: int = 0,
                         confidence: float = 0.95) -> tuple[float, float, float]:
    """Point estimate and percentile CI of the multiplier, resampling seeds within each model size.

    *_runs: {size: [(compute, final_loss) per seed]}. Each bootstrap draw resamples the seeds of
    every size (with replacement), refits both power laws and recomputes the multiplier.
    """
    def fit(runs, pick):
        pts = [runs[s][i] for s in sorted(runs) for i in pick[s]]
        return fit_power_law([p[0] for p in pts], [p[1] for p in pts])

    def everything(runs):
        return {s: list(range(len(v))) for s, v in runs.items()}

    point = compute_multiplier(fit(base_runs, everything(base_runs)), fit(variant_runs, everything(variant_runs)), loss)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        pb = {s: rng.integers(0, len(v), len(v)) for s, v in base_runs.items()}
        pv = {s: rng.integers(0, len(v), len(v)) for s, v in variant_runs.items()}
        try:
            draws.append(compute_multiplier(fit(base_runs, pb), fit(variant_runs, pv), loss))
        except ValueError:
            continue
    draws = np.asarray([d for d in draws if math.isfinite(d)])
    alpha = (1 - confidence) / 2
    lo, hi = (np.quantile(draws, [alpha, 1 - alpha]) if len(draws) else (math.nan, math.nan))
    return float(point), float(lo), float(hi)


def first_reach(curve, target: float):
    """The first (step, value) of a [(step, loss), ...] curve with loss <= target, or None."""
    for step, value in curve:
        if value <= target:
            return step, value
    return None


# -- the decision report: time to a loss, joined from loss curves and step-time ratios -------------

def steps_to_target(curve, target: float) -> float | None:
    """The first step at which a [(step, loss), ...] curve reaches `target`, linearly
    interpolated between its evaluations (the curve starts at step 0 from above); None if never."""
    prev = None
    for step, value in curve:
        if value <= target:
            if prev is None or prev[1] == value:
                return float(step)
            (s0, v0) = prev
            return s0 + (step - s0) * (v0 - target) / (v0 - value)
        prev = (step, value)
    return None


def mean_curve(curves) -> list[tuple[int, float]]:
    """The seed-mean of curves evaluated at the same steps."""
    steps = [s for s, _ in curves[0]]
    if any([s for s, _ in c] != steps for c in curves):
        raise ValueError("curves are not evaluated at the same steps")
    return [(s, float(np.mean([c[i][1] for c in curves]))) for i, s in enumerate(steps)]


@dataclass(frozen=True)
class TimeToTarget:
    """Wall-clock multiplier at equal loss: (steps the baseline needs / steps the variant needs)
    ÷ the variant's step-time ratio. > 1: the variant reaches the baseline's loss sooner."""
    multiplier: float
    lo: float
    hi: float
    steps_ratio: float    # baseline steps / variant steps to the target (None-safe: 0 if never reached)
    step_time: float      # median per-round step-time ratio
    reached: float        # fraction of bootstrap draws in which the variant reached the target
    verdict: str
    bound: float | None = None  # the variant did not reach the target in its run: the multiplier is below this


def time_to_target(base_curves, variant_curves, ratios, n_boot: int = 2000, seed: int = 0,
                   confidence: float = 0.95) -> TimeToTarget:
    """The target is the baseline's seed-mean final loss. Point estimate from all seeds and the
    median per-round step-time ratio; the interval resamples both sources at once: the seeds of
    each side (mean curves, target) and the timing rounds (their median), percentile bootstrap.
    A draw where the variant never reaches the target counts as multiplier 0 (slower)."""
    ratios = np.asarray(ratios, float)

    def one(b_idx, v_idx, r_idx):
        base = mean_curve([base_curves[i] for i in b_idx])
        var = mean_curve([variant_curves[i] for i in v_idx])
        target = base[-1][1]
        sb, sv = steps_to_target(base, target), steps_to_target(var, target)
        steps_ratio = 0.0 if sv is None or sv == 0 else sb / sv
        return steps_ratio / float(np.median(ratios[r_idx])), steps_ratio, sv is not None

    nb, nv, nr = len(base_curves), len(variant_curves), len(ratios)
    point, steps_ratio, hit = one(range(nb), range(nv), np.arange(nr))
    bound = None
    if not hit:  # it would have needed more steps than it ran: at best it reached it at the last one
        base = mean_curve(base_curves)
        bound = steps_to_target(base, base[-1][1]) / variant_curves[0][-1][0] / float(np.median(ratios))
    rng = np.random.default_rng(seed)
    draws, reached = [], 0
    for _ in range(n_boot):
        m, _, ok = one(rng.integers(0, nb, nb), rng.integers(0, nv, nv), rng.integers(0, nr, nr))
        draws.append(m)
        reached += ok
    alpha = (1 - confidence) / 2
    lo, hi = (float(q) for q in np.quantile(draws, [alpha, 1 - alpha]))
    verdict = ("faster to target" if lo > 1 else "slower to target" if hi < 1 else "no detectable difference")
    return TimeToTarget(float(point), lo, hi, float(steps_ratio), float(np.median(ratios)), reached / n_boot, verdict,
                        bound)


def min_detectable_difference(sd_a: float, n_a: int, sd_b: float, n_b: int, alpha: float = 0.05,
                              power: float = 0.8) -> float:
    """The smallest true difference of means a two-sided Welch test at `alpha` detects with
    probability `power`, given the two samples' standard deviations and sizes:
    (t_{1-alpha/2, df} + t_{power, df}) · sqrt(sd_a²/n_a + sd_b²/n_b), Welch-Satterthwaite df."""
    from scipy import stats

    va, vb = sd_a**2 / n_a, sd_b**2 / n_b
    se = math.sqrt(va + vb)
    if se == 0:
        return 0.0
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se)
