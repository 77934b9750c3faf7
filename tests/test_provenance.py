"""Every number is this machine's, this run's: default paths, resume and report keep producers apart."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from conftest import planted_metrics
from resbench.cells import cell_key
from resbench.cli import main
from resbench import studies
from resbench.config import expand_cells, load_suite, parse_suite
from resbench.provenance import code_hash, environment, machine, matmul_fp32_precision, producer
from resbench.report import render
from resbench.results import append_record, default_results_path, read_records, results_root
from resbench.runner import run_suite

ROOT = Path(__file__).resolve().parent.parent
SHAPE = [{"name": "t", "d_model": 16, "depth": 1, "n_heads": 2, "seq_len": 8}]


def tiny_quick() -> dict:
    """The shipped quick suite (all five variants, all three workloads: 15 cells) at a toy size."""
    raw = yaml.safe_load((ROOT / "benchmarks" / "suites" / "quick.yaml").read_text())
    raw["shapes"] = [{"name": "small", "d_model": 16, "depth": 4, "n_heads": 2, "seq_len": 8, "vocab_size": 256}]
    raw["threads"] = 1
    raw["workloads"] = {"throughput": {"batch": 2, "warmup": 0, "repeats": 2}, "memory": {"batch": 2},
                        "loss": {"steps": 2, "batch": 2, "warmup": 0, "eval_every": 0, "eval_batches": 1,
                                 "corpus": "generated", "corpus_bytes": 20000}}
    return raw


def foreign(rec: dict) -> dict:
    """The same cell as measured by another machine with other code (a committed reference result)."""
    env = {**rec["env"], "machine_id": "0ther0machine", "code_hash": "0ther0code", "commit": "a9778927ee" + "0" * 30,
           "cpu": "Some Other CPU"}
    return {**rec, "env": env, "run": "elsewhere", "metrics": {**rec["metrics"], "final_val_loss": 9.99}}


def test_default_results_path_is_where_the_user_stands(tmp_path, monkeypatch):
    checkout = tmp_path / "clone"
    for d in ("harness", "variants", "deep/er"):
        (checkout / d).mkdir(parents=True)
    (checkout / "asv.conf.json").write_text("{}")
    monkeypatch.chdir(checkout / "deep" / "er")  # anywhere inside a checkout: its root's results/
    assert default_results_path("quick") == checkout / "results" / "local" / "quick.jsonl"
    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # outside any checkout: the working directory's results/
    assert results_root() == elsewhere / "results"
    assert default_results_path("quick") == elsewhere / "results" / "local" / "quick.jsonl"


def test_committed_results_are_apart_and_ignored_by_git():
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "results/local/quick.jsonl"])
    assert ignored.returncode == 0, "a user's default output must not be a tracked path"
    assert not list((ROOT / "results").glob("*.jsonl")), "committed records live under results/reference/<machine>/"


def test_a_clone_with_committed_and_foreign_results_measures_all_15_cells(tmp_path, monkeypatch, capsys):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    suite_file = clone / "tiny-quick.yaml"
    suite_file.write_text(yaml.safe_dump({**tiny_quick(), "name": "quick"}))
    monkeypatch.chdir(clone)
    # the clone carries results measured elsewhere, in the very file the run will write
    local = clone / "results" / "local" / "quick.jsonl"
    local.parent.mkdir(parents=True)
    here = environment("cpu")
    for cell in expand_cells(parse_suite(yaml.safe_load(suite_file.read_text())), "cpu"):
        append_record(local, foreign({"key": cell.key, "suite": "quick", "cell": cell.to_dict(), "status": "ok",
                                      "env": here, "metrics": planted_metrics(cell.workload, final_val_loss=1.0)}))
    capsys.readouterr()
    assert main(["run", str(suite_file), "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "measured again here" in printed.err
    recs = read_records(local)
    mine = [r for r in recs if r["run"] != "elsewhere"]
    assert len(mine) == 15 and {r["status"] for r in mine} == {"ok"}
    assert len({r["run"] for r in mine}) == 1
    commit = mine[0]["env"]["commit"][:10]
    assert "a9778927ee" not in printed.out and "9.99" not in printed.out and "Some Other CPU" not in printed.out
    assert printed.out.count(f"commit {commit}") == 1  # one table (one shape), this run's commit only
    table_rows = [ln for ln in printed.out.splitlines() if ln.startswith("| ") and "variant" not in ln]
    assert len(table_rows) == 5


def test_resume_only_reuses_the_same_producer(tmp_path):
    s = parse_suite({"name": "t", "variants": ["prenorm"], "shapes": SHAPE, "threads": 1,
                     "workloads": {"memory": {"batch": 2}}})
    out = tmp_path / "r.jsonl"
    (first,) = run_suite(s, out, progress=False)
    assert run_suite(s, out, progress=False) == []  # same code, same machine: finished
    other = tmp_path / "other.jsonl"
    append_record(other, foreign(first))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = run_suite(s, other, progress=False)
    assert len(again) == 1 and "other code or on another machine" in str(caught[0].message)
    append_record(tmp_path / "o2.jsonl", foreign(first))
    assert run_suite(s, tmp_path / "o2.jsonl", progress=False, resume_any=True) == []  # asked for


def test_report_shows_producers_apart_and_names_them(tmp_path):
    s = parse_suite({"name": "t", "variants": ["prenorm"], "shapes": SHAPE, "threads": 1,
                     "workloads": {"memory": {"batch": 2}}})
    out = tmp_path / "r.jsonl"
    (rec,) = run_suite(s, out, progress=False)
    append_record(out, foreign(rec))
    text = render(read_records(out))
    heads = [ln for ln in text.splitlines() if ln.startswith("measured by:")]
    assert len(heads) == 2
    assert any("0ther0machine" in h and "a9778927ee" in h for h in heads)
    assert any(rec["env"]["machine_id"] in h and rec["env"]["commit"][:10] in h for h in heads)


def test_report_takes_the_newest_record_per_cell_not_a_median_over_runs(tmp_path):
    s = parse_suite({"name": "t", "variants": ["prenorm"], "shapes": SHAPE, "threads": 1,
                     "workloads": {"loss": {"steps": 1, "batch": 2, "warmup": 0, "eval_every": 0,
                                            "eval_batches": 1, "corpus": "generated", "corpus_bytes": 20000}}})
    out = tmp_path / "r.jsonl"
    (rec,) = run_suite(s, out, progress=False)
    # a later run of the same cell with another setting (another key), same producer
    cell = {**rec["cell"], "params": {**rec["cell"]["params"], "eval_batches": 2}}
    later = {**rec, "cell": cell, "key": cell_key(cell), "metrics": {**rec["metrics"], "final_val_loss": 1.2345}}
    append_record(out, later)
    text = render(read_records(out))
    assert "1.2345" in text and "n=2" not in text


def test_the_environment_names_code_machine_and_precision_settings():
    env = environment("cpu")
    assert env["code_hash"] == code_hash() and len(env["code_hash"]) == 16
    assert env["machine_id"] == machine()["machine_id"] and env["machine"]["cpu_signature"]
    assert env["fp32_matmul"] in ("ieee", "tf32")
    assert env["system"]["torch"] and env["system"]["python"]
    assert producer(env) == (env["code_hash"], env["machine_id"], env["torch"], env["python"])


def test_tf32_is_read_from_the_new_api_without_raising():
    import torch

    torch.backends.cuda.matmul.fp32_precision = "tf32"  # torch.get_float32_matmul_precision() raises now
    try:
        assert matmul_fp32_precision() == "tf32"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        assert matmul_fp32_precision() == "ieee"
    finally:
        torch.backends.cuda.matmul.fp32_precision = "none"


def test_a_plain_pip_install_finds_its_suites_and_writes_where_the_user_stands(tmp_path):
    """Not editable: the wheel's own package data, and results under the working directory."""
    site, cwd = tmp_path / "site", tmp_path / "work"
    cwd.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(ROOT)], check=True, capture_output=True)
    assert (site / "resbench" / "suites" / "quick.yaml").is_file()
    assert not (site / "harness").exists() and not (site / "variants").exists()  # one top-level name
    (cwd / "s.yaml").write_text(yaml.safe_dump({"name": "mine", "variants": ["prenorm"], "shapes": SHAPE,
                                                "threads": 1, "workloads": {"memory": {"batch": 2}}}))
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import resbench, resbench.config as c; print(resbench.__file__); "
            "print(c.resolve_suite_path('quick'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    pkg, quick = out.stdout.split()
    assert pkg.startswith(str(site)) and quick.startswith(str(site))
    run = subprocess.run([sys.executable, "-m", "resbench", "run", "s.yaml", "--quiet"], cwd=cwd, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    (rec,) = [json.loads(x) for x in (cwd / "results" / "local" / "mine.jsonl").read_text().splitlines()]
    assert rec["status"] == "ok" and rec["env"]["commit"] is None and rec["env"]["code_hash"]
    version = subprocess.run([sys.executable, "-m", "resbench", "--version"], cwd=cwd, env=env,
                             capture_output=True, text=True)
    assert version.stdout.startswith("resbench ")


@pytest.mark.parametrize("spec", ["quick", "overhead"])
def test_shipped_suites_load_by_name(spec):
    assert studies.load(spec)[1].name == spec


def test_the_gpu_acceptance_script_runs_without_pip(tmp_path):
    """Its plumbing, on this CPU: the package laid out from the checkout (no pip), the CUDA tests
    (skipped here), a suite, the report and the stated commit."""
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"name": "s", "device": "cuda", "variants": ["prenorm"], "shapes": SHAPE,
                                     "threads": 1, "workloads": {"memory": {"batch": 2}}}))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "SUITE": str(suite), "DEVICE": "cpu", "RESBENCH_COMMIT": "cafe1234",
           "INFERENCE_SUITE": str(suite)}
    done = subprocess.run([str(ROOT / "scripts" / "gpu_acceptance.sh"), str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (rec,) = read_records(out / "gpu.jsonl")
    assert rec["status"] == "ok" and rec["env"]["commit"] == "cafe1234" and rec["env"]["commit_stated"]
    assert "skipped" in (out / "pytest.log").read_text() and "commit cafe1234" in (out / "report.md").read_text()
    assert "resbench" in (out / "env.txt").read_text()
    assert read_records(out / "inference.jsonl")[0]["status"] == "ok"
