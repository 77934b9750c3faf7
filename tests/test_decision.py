"""The decision report: its statistics on planted data (a known speed-up in steps and a known
step-time overhead come back as their quotient, inside the interval; a variant that never reaches
the target is slower; identical ones show no difference; the minimum detectable difference has
the power it claims, simulated), and the shipped GPU suite run end to end at a reduced shape on
the CPU through the same code path."""
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

from resbench.config import read_yaml, resolve_suite_path
from resbench.stats import min_detectable_difference, steps_to_target, time_to_target, welch_compare

STEPS = list(range(25, 251, 25))


def curves(speed: float, seeds: int, noise: float, rng) -> list:
    """loss(step) = 2 + 3·exp(-speed·step/80), seed noise: an offset and a small per-point wobble."""
    out = []
    for _ in range(seeds):
        off = rng.normal(0, noise)
        out.append([(s, 2 + 3 * math.exp(-speed * s / 80) + off + rng.normal(0, noise / 4)) for s in STEPS])
    return out


def test_steps_to_target_interpolates_between_evaluations():
    curve = [(10, 3.0), (20, 2.0), (30, 1.0)]
    assert steps_to_target(curve, 2.5) == 15.0 and steps_to_target(curve, 2.0) == 20.0
    assert steps_to_target(curve, 0.5) is None and steps_to_target(curve, 9.0) == 10.0


def test_a_planted_speedup_and_overhead_are_recovered():
    rng = np.random.default_rng(0)
    base, var = curves(1.0, 5, 0.002, rng), curves(1.25, 5, 0.002, rng)
    ratios = 1.10 * np.exp(rng.normal(0, 0.02, 11))
    t = time_to_target(base, var, ratios, n_boot=1000)
    truth = 1.25 / 1.10
    assert t.steps_ratio == pytest.approx(1.25, rel=0.03) and t.step_time == pytest.approx(1.10, rel=0.03)
    assert t.multiplier == pytest.approx(truth, rel=0.04) and t.lo < truth < t.hi
    assert t.verdict == "faster to target" and t.reached == 1.0


def test_never_reaching_the_target_is_slower_and_equal_variants_are_no_difference():
    rng = np.random.default_rng(1)
    base = curves(1.0, 5, 0.002, rng)
    slow = time_to_target(base, curves(0.8, 5, 0.002, rng), np.ones(11), n_boot=500)
    assert slow.verdict == "slower to target" and slow.reached < 0.05 and slow.multiplier == 0.0
    assert slow.bound == pytest.approx(1.0, abs=0.02)  # at best at its last step, at the same step time
    same = time_to_target(base, curves(1.0, 5, 0.002, rng), np.exp(rng.normal(0, 0.03, 11)), n_boot=500)
    assert same.verdict == "no detectable difference" and same.lo < 1 < same.hi


def test_the_minimum_detectable_difference_has_its_power():
    rng = np.random.default_rng(2)
    sd, n = 0.01, 5
    mdd = min_detectable_difference(sd, n, sd, n)
    detected = 0
    for _ in range(3000):
        c = welch_compare(rng.normal(mdd, sd, n), rng.normal(0, sd, n))
        detected += c.lo > 0 or c.hi < 0
    assert detected / 3000 == pytest.approx(0.80, abs=0.04)
    assert min_detectable_difference(sd, 20, sd, 20) < mdd / 1.8  # shrinks ~ 1/sqrt(n)


def reduced_gpu_suite(compile_modes) -> dict:
    """decision-gpu.yaml as shipped, on the CPU at a reduced shape: two variants, tiny widths and
    steps; every other key (precision, workloads, kind) as a GPU user runs it."""
    raw = read_yaml(resolve_suite_path("decision-gpu"))
    raw.update(device="cpu", compile=compile_modes, threads=1, seeds=[0, 1], timeout_s=300)
    raw["variants"] = [raw["variants"][0], raw["variants"][-1]]
    for shape, blocks in zip(raw["shapes"], (2, 3, 4)):
        shape.update(d_model=32, n_heads=2, seq_len=32, depth=blocks)
    raw["workloads"]["loss"].update(steps=6, batch=2, warmup=1, eval_every=3, eval_batches=1, corpus_bytes=200_000)
    raw["workloads"]["throughput"].update(batch=2, warmup=1, repeats=3)
    raw["workloads"]["memory"].update(batch=2)
    return raw


def test_the_gpu_suite_parses_and_expands_as_shipped():
    from resbench import studies
    from resbench.config import expand_cells
    study, suite = studies.parse(read_yaml(resolve_suite_path("decision-gpu")), "decision-gpu")
    cells = expand_cells(suite, "cuda")
    assert study.name == "decision" and {c.precision for c in cells} == {"bf16-autocast"}
    assert {(c.workload, c.compile) for c in cells} == {("loss", "none"), ("memory", "none"),
                                                        ("throughput", "none"), ("throughput", "default")}
    params = {c.shape_name: c.params for c in cells if c.workload == "loss"}
    assert sorted(params) == ["l", "m", "s"] and len([c for c in cells if c.workload == "loss"]) == 5 * 3 * 3


@pytest.mark.slow  # ~3 min eager, more compiled: one process per cell
@pytest.mark.parametrize("modes", [["none"], ["none", "default"]])
def test_the_gpu_suite_runs_here_at_a_reduced_shape(tmp_path, modes):
    suite = tmp_path / "decision-gpu.yaml"
    suite.write_text(yaml.safe_dump(reduced_gpu_suite(modes)))
    out = tmp_path / "r.jsonl"
    proc = subprocess.run([sys.executable, "-m", "resbench", "run", str(suite), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "wall-clock × to target, eager" in proc.stdout
    assert ("wall-clock × to target, default" in proc.stdout) == ("default" in modes)
    rows = [ln for ln in proc.stdout.splitlines() if re.match(r"\| [sml] +\| block-attnres", ln)]
    assert len(rows) == 3  # the decision table: one row per size
