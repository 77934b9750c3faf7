"""The workload seam: a workload is one module declaring itself (resbench.workloads.base), and
config, runner, worker, report and compare handle a new one without being touched; no module
imports upward."""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from resbench import workloads
from resbench.compare import compare, metrics
from resbench.config import ConfigError, expand_cells, parse_suite
from resbench.report import render
from resbench.runner import plan_jobs
from resbench.worker import run_job
from resbench.workloads.base import REGISTRY, Workload, num

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class CountParams:
    batch: int = 2
    scale: float = 1.0
    mode: str = "a"


class CountParamsWorkload(Workload):
    """A toy workload: counts the model's parameters (times `scale`)."""
    Params = CountParams
    order = 9
    positive = ("batch", "scale")
    choices = {"mode": ("a", "b")}
    columns = (("scaled params", lambda r: num(r["scaled"], ".0f")),)
    compare_metrics = {"scaled_params": (lambda m: (m.get("scaled"), None), "{:.0f}")}

    def run_cell(self, cell, ctx):
        from resbench.workloads.common import model_of, static_info

        cfg, model = model_of(cell, ctx)
        info = static_info(cell, cfg, model)
        return "ok", None, {**info, "scaled": info["params"] * cell.params["scale"]}

    def summary(self, metrics):
        return {"scaled": metrics[0]["scaled"] if metrics else None}


@pytest.fixture
def toy(monkeypatch):
    workloads.names()  # discover the package's own first
    monkeypatch.setitem(REGISTRY, "count", CountParamsWorkload())
    REGISTRY["count"].name = "count"
    yield REGISTRY["count"]


SUITE = {"name": "t", "threads": 1, "variants": ["prenorm", "full-attnres"],
         "shapes": [{"name": "s", "d_model": 16, "depth": 1, "n_heads": 2, "seq_len": 8}],
         "workloads": {"memory": {"batch": 1}, "count": {"scale": 2.0}}}


def test_a_new_workload_runs_through_config_runner_worker_report_and_compare(toy):
    suite = parse_suite(SUITE)
    cells = expand_cells(suite, "cpu")
    assert [c.workload for c in cells] == ["memory", "memory", "count", "count"]  # order: memory's 1 < 9
    jobs = plan_jobs(cells, {c.key for c in cells})
    assert [[c.workload for c in j] for j in jobs] == [["memory"], ["memory"], ["count"], ["count"]]
    records = []
    for job in jobs:
        res = run_job({"cells": [c.to_dict() for c in job]})
        records += [{"key": c.key, "cell": c.to_dict(), **res[c.key]} for c in job]
    assert all(r["status"] == "ok" for r in records)
    text = render(records)
    assert "scaled params" in text and "peak train MiB" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| prenorm"))
    params = next(r["metrics"]["params"] for r in records if r["cell"]["label"] == "prenorm")
    assert f"| {2 * params} " in row
    assert metrics()["scaled_params"][0] == "count"
    rows = compare({r["key"]: r for r in records}, {r["key"]: r for r in records}, 0.1)
    assert {r.metric for r in rows} >= {"scaled_params", "train_peak_MiB"}


@pytest.mark.parametrize("params,match", [
    ({"scale": 0}, "workloads.count.scale must be > 0"),
    ({"mode": "c"}, "workloads.count.mode must be one of a, b"),
    ({"other": 1}, "workloads.count: unknown key 'other'"),
])
def test_a_new_workloads_declared_schema_is_checked(toy, params, match):
    with pytest.raises(ConfigError, match=match):
        parse_suite({**SUITE, "workloads": {"count": params}})


def test_unknown_workload_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown key 'speed'; allowed: throughput, memory, loss"):
        parse_suite({**SUITE, "workloads": {"speed": {}}})


# an optional kernel library, imported only inside the form that calls it (an extra of its own)
OPTIONAL_KERNELS = {"_attnres_fla.py": "fla"}


def test_variants_import_only_torch_and_their_own_package():
    for path in sorted((ROOT / "variants").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                top = node.module.split(".")[0]  # torch and the standard library, nothing of the harness
                assert top == "torch" or top in sys.stdlib_module_names or top == OPTIONAL_KERNELS.get(path.name), \
                    (path.name, node.module)
            if isinstance(node, ast.ImportFrom) and node.level > 1:
                raise AssertionError(f"variants/{path.name} imports above its package")


def test_no_workload_name_outside_its_module():
    for name in workloads.names():
        hits = [p.relative_to(ROOT).as_posix() for p in (ROOT / "harness").rglob("*.py")
                if f'"{name}"' in p.read_text() and p.parent.name != "workloads"]
        # the loss study reads loss records; the distributed study the three it tabulates; the
        # decision study joins loss, throughput and memory; scaling and projection read memory_views;
        # results.py's read-time upgrade names the distributed workloads' "memory" metric (not the workload)
        decision = "harness/studies/decision.py"
        allowed = {"loss": {"harness/studies/loss.py", decision}, "throughput": {decision},
                   "memory": {decision, "harness/results.py"},
                   "memory_views": {"harness/studies/scaling.py", "harness/studies/projection.py"},
                   "ddp": {"harness/studies/distributed.py"}, "fsdp": {"harness/studies/distributed.py"},
                   "pp": {"harness/studies/distributed.py"}}.get(name, set())
        assert set(hits) <= allowed, (name, hits)
