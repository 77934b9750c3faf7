"""How many interleaved rounds a timed comparison runs: a fixed number, or adaptive ones that stop
as soon as every ratio is known to the precision asked for or has settled the bound it is
checked against, or at the budget.

Stopping on the data must not make the interval lie. The rule looks at the data only at rounds
planned in advance (`planned_looks`: 8, then ×1.5, up to the most allowed), and every interval
it reports is the distribution-free median interval at 1 − α/J for J planned looks (Bonferroni):
the intervals of all looks hold at once with probability ≥ 1 − α, so the one at whichever look
the data stopped at does too. The price is a wider interval per look (at J = 8, each is a 99.4%
interval); tests/test_rounds.py measures the coverage and power on planted heavy-tailed,
drifting noise.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ..stats import median_ci

CONFIDENCE = 0.95
STOPS = ("fixed", "precision", "resolved", "rounds", "budget")  # why the rounds ended, as records say it


def planned_looks(most: int, first: int = 8, growth: float = 1.5) -> list[int]:
    """Round counts at which an adaptive comparison may stop: `first`, then ×growth (at least one
    more), and `most` last."""
    looks, n = [], max(1, min(first, most))
    while n < most:
        looks.append(n)
        n = max(n + 1, math.ceil(n * growth))
    return looks + [most]


def ratio_interval(ratios: list[float], looks: int) -> tuple[float, float, float]:
    """(median, lo, hi) of per-round ratios, at 1 − α/looks: valid at any of `looks` planned looks."""
    return median_ci(ratios, 1 - (1 - CONFIDENCE) / looks)


def paired_ratio(times: list[float], base: list[float], plan: "Rounds | None" = None) -> dict:
    """{"median", "ci"}: the median of per-round ratios times/base (each pair ran back to back, so
    slow drift cancels) and its 95% interval (None with too few rounds), valid at whichever
    planned look of `plan` the rounds stopped at; no plan: fixed rounds, one look."""
    ratios = [t / b for t, b in zip(times, base)]
    med, lo, hi = plan.interval(ratios) if plan is not None else ratio_interval(ratios, looks=1)
    return {"median": med, "ci": [lo, hi] if math.isfinite(lo) else None}


def half_width(med: float, lo: float, hi: float) -> float:
    """The interval's half-width relative to its median (inf while it is unbounded)."""
    return (hi - lo) / 2 / med if math.isfinite(lo) and math.isfinite(hi) and med > 0 else math.inf


def resolves(lo: float, hi: float, bound: float | None) -> bool:
    """Whether an interval settles a bound either way: wholly within (met) or wholly beyond
    (missed), as the overhead study's verdict reads it."""
    return bound is not None and math.isfinite(lo) and math.isfinite(hi) and (hi <= bound or lo > bound)


@dataclass
class Rounds:
    """`most` rounds, or with `precision` > 0 adaptive ones: stop at the first planned look where
    every ratio's interval is narrower than ±precision (relative) or settles the bound given
    with it, or once `budget_s` seconds have passed (checked at the looks), else at `most`."""
    most: int
    precision: float = 0.0
    budget_s: float = 0.0
    first: int = 8
    stopped: str = field(default="fixed", init=False)
    rounds: int = field(default=0, init=False)

    @property
    def adaptive(self) -> bool:
        return self.precision > 0

    def looks(self) -> list[int]:
        return planned_looks(self.most, self.first) if self.adaptive else [self.most]

    def interval(self, ratios: list[float]) -> tuple[float, float, float]:
        return ratio_interval(ratios, len(self.looks()))

    def start(self) -> None:
        """Before the first round: the clock of budget_s, and nothing ran yet."""
        self.stopped, self.rounds = ("rounds" if self.adaptive else "fixed"), 0
        self._looks, self._t0 = set(self.looks()), time.perf_counter()

    def __post_init__(self):
        self.start()

    def at_look(self, done: int) -> bool:
        """Whether round `done` is a planned look of adaptive rounds (the last round is none)."""
        return self.adaptive and done in self._looks and done != self.most

    def check(self, done: int, ratios) -> bool:
        """After round `done`, given every comparison's per-round ratios so far (a list whose
        items are a list of ratios or a (ratios, bound or None) pair, or a function giving it:
        only called at a look): stop now? Only at a planned look: every interval within
        ±precision or settling its bound, or budget_s spent."""
        self.rounds = done
        if not self.at_look(done):
            return False
        if callable(ratios):
            ratios = ratios()
        pairs = [r if isinstance(r, tuple) else (r, None) for r in ratios]
        intervals = [(self.interval(r), bound) for r, bound in pairs]
        precise = [half_width(*iv) <= self.precision for iv, _ in intervals]
        if pairs and all(p or resolves(iv[1], iv[2], b) for p, (iv, b) in zip(precise, intervals)):
            self.stopped = "precision" if all(precise) else "resolved"
            return True
        if self.budget_s and time.perf_counter() - self._t0 >= self.budget_s:
            self.stopped = "budget"
            return True
        return False

    def rule(self, baseline: str, others: list[str], bounds: dict | None = None):
        """The `stop` callback of measure.timing.time_interleaved for ratios of `others` over
        `baseline`, each with its bound from `bounds` if any (a variant that left the rotation
        no longer counts)."""
        self.start()
        bounds = bounds or {}

        def stop(done: int, samples: dict[str, list[float]]) -> bool:
            base = samples[baseline]
            live = [o for o in others if len(samples.get(o, ())) == len(base)]
            return self.check(done, [([a / b for a, b in zip(samples[o], base)], bounds.get(o)) for o in live])

        return stop

    def record(self) -> dict:
        """What a record keeps of the rounds: how many, why they ended, the looks' count."""
        return {"rounds": self.rounds, "stopped": self.stopped, "looks": len(self.looks()),
                "precision": self.precision or None}
