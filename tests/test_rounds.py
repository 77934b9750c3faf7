"""Adaptive rounds (harness/measure/rounds.py): stopping on the data keeps the 95% interval
honest, and a planted 3% overhead is found, on simulated timings as noisy as a shared machine's:
heavy-tailed per-call noise, a slow drift both sides share, and busy phases that triple the
noise for a while. The same `Rounds.rule` the throughput workload hands to time_interleaved
decides when each simulated comparison stops."""
from __future__ import annotations

import math

import numpy as np
import pytest

from resbench.measure import time_interleaved
from resbench.measure.rounds import Rounds, planned_looks
from resbench.workloads.common import RunContext

RUNS = 1000


def simulate(ratio: float, rounds: Rounds, rng: np.random.Generator, scale: float = 0.04) -> tuple[float, float]:
    """One comparison: per-round times of a baseline and a variant `ratio` times slower, fed to
    the rule round by round until it stops; the interval it ends with."""
    samples: dict[str, list[float]] = {"base": [], "variant": []}
    stop = rounds.rule("base", ["variant"])
    drift, busy = 0.0, False
    for r in range(1, rounds.most + 1):
        drift = 0.9 * drift + 0.05 * rng.standard_t(3)  # slow, shared: cancels in a round's pair
        busy = rng.random() < (0.8 if busy else 0.05)  # a neighbour's busy phases come and go
        noise = scale * (3.0 if busy else 1.0)
        base = math.exp(drift + noise * rng.standard_t(3))
        samples["base"].append(base)
        samples["variant"].append(math.exp(drift + math.log(ratio) + noise * rng.standard_t(3)))
        if stop(r, samples):
            break
    _, lo, hi = rounds.interval([v / b for v, b in zip(samples["variant"], samples["base"])])
    return lo, hi


def study(ratio: float, seed: int, **kw) -> dict:
    rng = np.random.default_rng(seed)
    covered = found = 0
    spent, stops = [], {}
    for _ in range(RUNS):
        rounds = Rounds(most=kw.get("most", 240), precision=kw.get("precision", 0.02))
        lo, hi = simulate(ratio, rounds, rng)
        covered += lo <= ratio <= hi
        found += lo > 1.0
        spent.append(rounds.rounds)
        stops[rounds.stopped] = stops.get(rounds.stopped, 0) + 1
    return {"coverage": covered / RUNS, "found": found / RUNS, "mean_rounds": float(np.mean(spent)), "stops": stops}


def test_planned_looks_grow_geometrically_and_end_at_the_most():
    assert planned_looks(160) == [8, 12, 18, 27, 41, 62, 93, 140, 160]
    assert planned_looks(5) == [5] and planned_looks(8) == [8]
    assert Rounds(most=7).looks() == [7]  # fixed rounds: one look, the plain 95% interval


@pytest.mark.parametrize("ratio", [1.0, 1.03])
def test_stopping_on_the_data_keeps_coverage_at_95_percent(ratio):
    got = study(ratio, seed=int(ratio * 100))
    # 1000 runs: a true coverage of 95% reads below 93.6% with probability < 1%
    assert got["coverage"] >= 0.936, got
    assert got["stops"].get("precision", 0) >= 0.4 * RUNS, got  # the rule did stop on the data, often


def test_a_planted_three_percent_overhead_is_found():
    got = study(1.03, seed=3)
    assert got["found"] >= 0.9, got  # the interval lies wholly above 1.0


def test_looking_without_paying_for_it_would_lie():
    """The control: the same stops, but each look's interval at a plain 95%, undercovers; the
    Bonferroni split is what the coverage above rests on."""
    class Naive(Rounds):
        def interval(self, ratios):
            from resbench.stats import median_ci

            return median_ci(ratios, 0.95)

    rng = np.random.default_rng(11)
    runs, misses = 600, 0
    for _ in range(runs):
        rounds = Naive(most=160, precision=0.03)
        lo, hi = simulate(1.0, rounds, rng)
        misses += not lo <= 1.0 <= hi
    assert misses / runs > 0.05, misses / runs


def test_fixed_rounds_run_them_all_and_say_so():
    rounds = Rounds(most=5)
    calls = {"a": 0, "b": 0}

    def fn(name):
        def f():
            calls[name] += 1
        return f

    stop = rounds.rule("a", ["b"])
    time_interleaved({"a": fn("a"), "b": fn("b")}, "cpu", warmup=1, repeats=5, stop=stop)
    assert calls == {"a": 6, "b": 6} and rounds.record() == {"rounds": 5, "stopped": "fixed", "looks": 1,
                                                             "precision": None}


def test_adaptive_rounds_stop_early_on_a_clear_ratio_in_the_real_timing_loop():
    """Through time_interleaved itself: two fixed-cost calls, one ~2x the other; the rule stops at
    the first look where the ratio is known to ±10%."""
    import time

    def spin(seconds):
        def f():
            end = time.process_time() + seconds
            while time.process_time() < end:
                pass
        return f

    rounds = Rounds(most=200, precision=0.10)
    samples = time_interleaved({"base": spin(0.002), "slow": spin(0.004)}, "cpu", warmup=1, repeats=200,
                               stop=rounds.rule("base", ["slow"]))
    assert rounds.stopped == "precision" and rounds.rounds < 200 and len(samples["base"]) == rounds.rounds
    med, lo, hi = rounds.interval([s / b for s, b in zip(samples["slow"], samples["base"])])
    assert lo <= 2.0 * 1.15 and hi >= 2.0 * 0.85 and (hi - lo) / 2 / med <= 0.10


GOOD = {"name": "t", "variants": ["prenorm", "highway"],
        "shapes": [{"name": "s", "d_model": 32, "depth": 2, "n_heads": 2, "seq_len": 16}],
        "workloads": {"throughput": {"batch": 2, "warmup": 1, "repeats": 10}}}


def _cells(**throughput):
    from resbench import studies
    from resbench.config import expand_cells

    _, suite = studies.parse({**GOOD, "workloads": {"throughput": {**GOOD["workloads"]["throughput"], **throughput}}})
    return expand_cells(suite, "cpu")


def test_the_throughput_record_says_how_many_rounds_ran_and_why_they_stopped():
    from resbench.workloads.throughput import run_throughput

    cells = _cells(precision=0.45)
    out = run_throughput(cells, RunContext.of(cells))
    for status, msg, m in out.values():
        assert status == "ok", msg
        for view in ("train", "prefill"):
            r = m[f"{view}_rounds"]
            assert r["looks"] == len(planned_looks(10)) and r["precision"] == 0.45
            assert r["stopped"] in ("precision", "rounds") and len(m[f"{view}_ms"]["samples"]) == r["rounds"]
            assert r["rounds"] in planned_looks(10)


def test_fixed_rounds_keep_their_record_keys():
    """precision and budget_s at their defaults are not part of a cell's identity: records
    measured before adaptive rounds existed are still the same cells."""
    assert [c.key for c in _cells()] == [c.key for c in _cells(precision=0.0, budget_s=0.0)]
    assert "precision" not in _cells()[0].params
    assert [c.key for c in _cells()] != [c.key for c in _cells(precision=0.02)]


@pytest.mark.parametrize("value", [-0.1, 0.5, float("nan")])
def test_a_bad_precision_is_one_line(value):
    from resbench.config import ConfigError

    with pytest.raises(ConfigError, match="workloads.throughput.precision"):
        _cells(precision=value)


def test_the_table_footnote_says_how_many_rounds_and_why():
    from resbench.workloads.base import rounds_notes

    m = [{"train_rounds": {"rounds": 27, "stopped": "precision", "looks": 9, "precision": 0.02},
          "prefill_rounds": {"rounds": 240, "stopped": "rounds", "looks": 9, "precision": 0.02}}]
    (note,) = rounds_notes(m, ("train", "prefill"))
    assert "±2.0%" in note and "train 27 rounds (precise enough)" in note
    assert "prefill 240 rounds (the most allowed)" in note and "9 planned looks" in note
    assert rounds_notes([{"train_rounds": {"rounds": 7, "stopped": "fixed", "looks": 1, "precision": None}}],
                        ("train",)) == []


def test_decode_points_say_their_rounds_and_adaptive_ones_stop_at_a_look():
    from resbench import studies
    from resbench.config import expand_cells
    from resbench.workloads.decode import run_decode

    raw = {**GOOD, "workloads": {"decode": {"contexts": [4], "batches": [1], "new_tokens": 2, "warmup": 1,
                                            "repeats": 12, "precision": 0.45}}}
    _, suite = studies.parse(raw)
    cells = expand_cells(suite, "cpu")
    out = run_decode(cells, RunContext.of(cells))
    for status, msg, m in out.values():
        assert status == "ok", msg
        (p,) = m["points"]
        r = p["rounds"]
        assert r["looks"] == len(planned_looks(12)) and r["rounds"] in planned_looks(12)
        assert len(p["ttft_ms"]["samples"]) == r["rounds"] and len(p["itl_ms"]["samples"]) == 2 * r["rounds"]
