"""`resbench compare`: an injected slowdown is caught, noise alone is not, bad input is exit 2."""
from __future__ import annotations

import json

import numpy as np
import pytest

from resbench.cli import main
from resbench.compare import compare, load_side
from resbench.config import Cell

SHAPE = {"vocab_size": 256, "d_model": 64, "depth": 2, "n_heads": 4, "mlp_ratio": 4.0, "seq_len": 64}


def cell(workload: str, label: str = "prenorm", threads: int = 2) -> Cell:
    params = {"throughput": {"batch": 4, "warmup": 2, "repeats": 9}, "memory": {"batch": 4},
              "loss": {"steps": 20}}[workload]
    return Cell(variant=label, options={}, label=label, shape_name="tiny", shape=SHAPE, workload=workload,
                params=params, device="cpu", precision="fp32", seed=0, threads=threads)


def record(c: Cell, metrics: dict, status: str = "ok", commit: str = "a" * 40) -> dict:
    env = {"commit": commit, "device": "cpu", "cpu": "test cpu", "torch": "2.13.0", "threads": c.threads}
    return {"key": c.key, "suite": "t", "time": "2026-01-01T00:00:00+00:00", "cell": c.to_dict(),
            "status": status, "message": None, "metrics": metrics if status == "ok" else {}, "env": env}


def timing(samples_ms) -> dict:
    s = [float(x) for x in samples_ms]
    return {"median": float(np.median(s)), "min": min(s), "max": max(s), "n": len(s), "samples": s}


def draws(seed: int, n: int = 9, median_ms: float = 12.0, sigma: float = 0.08, scale: float = 1.0):
    """Timing-like samples: log-normal around the median, as repeated step times are."""
    rng = np.random.default_rng(seed)
    return scale * median_ms * np.exp(rng.normal(0.0, sigma, n))


def throughput(train, prefill, **kw) -> dict:
    # the fields every ok throughput record has (reading skips one without them)
    return record(cell("throughput", **kw), {"train_ms": timing(train), "prefill_ms": timing(prefill),
                                             "train_tokens_per_s": 1e4, "peak_flops": 1e11,
                                             "peak_flops_source": "test", "train_mfu": None})


def memory(train_bytes: int, inf_bytes: int, **kw) -> dict:
    return record(cell("memory", **kw), {"train": {"peak_bytes": train_bytes},
                                         "inference": {"peak_bytes": inf_bytes}, "state_vectors": 1})


def loss(value: float, **kw) -> dict:
    return record(cell("loss", **kw), {"final_val_loss": value, "train_loss": [value], "val_loss": [value]})


def write(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def run_compare(tmp_path, base, head, *extra) -> int:
    return main(["compare", write(tmp_path / "base.jsonl", base), write(tmp_path / "head.jsonl", head), *extra])


def test_injected_slowdown_is_caught(tmp_path, capsys):
    base = [throughput(draws(1), draws(2, median_ms=3.0))]
    head = [throughput(draws(3, scale=1.3), draws(4, median_ms=3.0))]  # train step 30% slower
    assert run_compare(tmp_path, base, head) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "train_ms" in ln)
    assert "REGRESSION" in line
    assert "REGRESSION" not in next(ln for ln in out.splitlines() if "prefill_ms" in ln)
    assert "1 regression(s)" in out
    assert run_compare(tmp_path, base, head, "--json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["regressions"] == 1 and {r["metric"] for r in doc["rows"] if r["regressed"]} == {"train_ms"}


@pytest.mark.parametrize("seed", range(20))
def test_noise_alone_is_not_flagged(tmp_path, seed):
    # two draws from one distribution, wide enough that some ratios pass 1.10 by chance
    base = [throughput(draws(100 + seed, sigma=0.2), draws(200 + seed, sigma=0.2))]
    head = [throughput(draws(300 + seed, sigma=0.2), draws(400 + seed, sigma=0.2))]
    assert run_compare(tmp_path, base, head) == 0


def test_noise_false_positive_rate_is_below_alpha():
    flagged = 0
    for seed in range(300):
        b = {"k": throughput(draws(seed, sigma=0.2), draws(seed + 1000))}
        h = {"k": throughput(draws(seed + 2000, sigma=0.2), draws(seed + 3000))}
        flagged += any(r.regressed for r in compare(b, h))
    assert flagged <= 3  # alpha = 0.01, and the 10% threshold must be crossed as well


def test_threshold_is_settable(tmp_path):
    base = [throughput(draws(1), draws(2))]
    head = [throughput(draws(3, scale=1.3), draws(4))]
    assert run_compare(tmp_path, base, head, "--threshold", "0.5") == 0


def test_too_few_repeats_cannot_be_significant(tmp_path, capsys):
    # 3 vs 3 samples: the smallest one-sided Mann-Whitney p is 0.05, so even 50% slower passes at 0.01
    base = [throughput(draws(1, n=3), draws(2, n=3))]
    head = [throughput(draws(3, n=3, scale=1.5), draws(4, n=3))]
    assert run_compare(tmp_path, base, head) == 0
    assert "worse, not significant" in capsys.readouterr().out


def test_summaries_without_samples_use_the_ratio(tmp_path, capsys):
    b, h = throughput(draws(1), draws(2)), throughput(draws(3, scale=1.3), draws(4))
    for r in (b, h):
        for view in ("train_ms", "prefill_ms"):
            del r["metrics"][view]["samples"]  # records from before raw samples were stored
    assert run_compare(tmp_path, [b], [h]) == 1
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "train_ms" in ln)
    assert "REGRESSION" in line and line.split("|")[6].strip() == "-"  # no p-value


def test_memory_and_loss(tmp_path):
    base = [memory(1_000_000, 400_000), loss(3.20)]
    assert run_compare(tmp_path, base, [memory(1_050_000, 400_000), loss(3.25)]) == 0
    assert run_compare(tmp_path, base, [memory(1_250_000, 400_000), loss(3.20)]) == 1
    assert run_compare(tmp_path, base, [memory(1_000_000, 400_000), loss(3.60)]) == 1


def test_a_cell_that_stops_finishing_is_a_regression(tmp_path, capsys):
    base = [memory(1_000_000, 400_000)]
    head = [record(cell("memory"), {}, status="oom")]
    assert run_compare(tmp_path, base, head) == 1
    assert "ok -> oom: REGRESSION" in capsys.readouterr().out


def test_cells_match_across_run_settings(tmp_path):
    # different threads -> different cell key; label, shape, workload and seed still pair them
    base = [throughput(draws(1), draws(2), threads=1)]
    head = [throughput(draws(3, scale=1.3), draws(4), threads=2)]
    assert base[0]["key"] != head[0]["key"]
    assert run_compare(tmp_path, base, head) == 1


def test_two_commits_in_one_file(tmp_path):
    old, new = "1" * 40, "2" * 40
    b = throughput(draws(1), draws(2))
    h = throughput(draws(3, scale=1.3), draws(4))
    b["env"]["commit"], h["env"]["commit"] = old, new
    path = write(tmp_path / "both.jsonl", [b, h])
    assert main(["compare", f"{path}@1111111", f"{path}@2222222"]) == 1
    assert main(["compare", f"{path}@1111111", f"{path}@1111111"]) == 0
    _, side = load_side(f"{path}@2222222")
    assert list(side.values())[0]["env"]["commit"] == new


def test_bad_input_is_exit_2(tmp_path, capsys):
    good = write(tmp_path / "good.jsonl", [memory(1, 1)])
    assert main(["compare", str(tmp_path / "missing.jsonl"), good]) == 2
    assert main(["compare", good, write(tmp_path / "other.jsonl", [loss(3.0)])]) == 2  # nothing in common
    assert main(["compare", good, good, "--threshold", "-0.1"]) == 2
    assert main(["compare", good, f"{good}@abcdef0"]) == 2  # no records of that commit
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["compare", str(empty), good]) == 2
    err = capsys.readouterr().err
    assert err.count("resbench: error:") == 5 and "Traceback" not in err


def test_a_slower_machine_is_named(tmp_path, capsys):
    # each CPU run measures a matmul peak for MFU: a 30% lower one means the machine, not the code
    base, head = throughput(draws(1), draws(2)), throughput(draws(3, scale=1.3), draws(4))
    for r, peak in ((base, 100e9), (head, 70e9)):
        r["metrics"].update(peak_flops=peak, peak_flops_source="measured float32 matmul")
    run_compare(tmp_path, [base], [head])
    assert "machine ran 30% slower in HEAD's run" in capsys.readouterr().err
