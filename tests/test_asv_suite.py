"""CI proof that the asv suite imports and runs: `asv check` and a quick run of a small subset,
both with --python=same (this venv, no asv-managed environment).

Everything asv writes (machine file, results, html) goes to a temporary folder: the committed
history under results/asv is never touched.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# one grid point of the cheap caches (each setup_cache still measures its whole grid); the
# interleaved speed cache (~40 s) is tested directly below at a reduced grid
SUBSET = [r"track_train_peak_bytes\('full-attnres', 4\)", r"track_train_flops_per_token\('block-attnres', 2\)",
          r"track_state_bytes_per_token\('densenet', ", r"track_final_val_loss\('prenorm', 2\)"]

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="asv needs git")


@pytest.fixture(scope="module")
def asv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("asv")
    from asv.util import load_json

    conf = load_json(str(ROOT / "asv.conf.json"), js_comments=True)
    conf.update(repo=str(ROOT), benchmark_dir=str(ROOT / "benchmarks"), results_dir=str(tmp / "results"),
                html_dir=str(tmp / "html"), env_dir=str(tmp / "env"))
    (tmp / "asv.conf.json").write_text(json.dumps(conf))
    env = {**os.environ, "HOME": str(tmp), "RESBENCH_ASV_DEVICE": "cpu"}  # machine file in tmp

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "asv", *args, "--config", str(tmp / "asv.conf.json")],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    subprocess.run([sys.executable, "-m", "asv", "machine", "--yes", "--machine", "ci"], cwd=ROOT, env=env,
                   capture_output=True, text=True, timeout=60, check=True)
    run.tmp = tmp
    return run


def test_asv_check(asv):
    res = asv("check", "--python=same")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "No problems found" in res.stdout + res.stderr


def test_asv_quick_run_of_a_subset(asv):
    args = ["run", "--python=same", "--quick", "--machine", "ci", "--show-stderr"]
    for regex in SUBSET:
        args += ["--bench", regex]
    res = asv(*args, timeout=240)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "failed" not in out, out
    for name in ("track_train_peak_bytes", "track_train_flops_per_token", "track_state_bytes_per_token",
                 "track_final_val_loss"):
        assert name in out
    assert "Traceback" not in out, out
    # --python=same saves nothing unless told: no results of this run anywhere
    assert not list((asv.tmp / "results").glob("*/*-*.json"))


def test_timed_shape_is_the_quick_suites():
    """The dashboard's ratios at 4 blocks are the quantities `resbench run quick` tabulates."""
    import yaml

    from benchmarks import _common as c

    quick = yaml.safe_load((ROOT / "benchmarks" / "suites" / "quick.yaml").read_text())
    small = {k: v for k, v in quick["shapes"][0].items() if k not in ("name", "depth")}
    assert {k: float(v) if k == "mlp_ratio" else v for k, v in small.items()} == c.SHAPE
    assert quick["workloads"]["throughput"]["batch"] == c.BATCH
    assert quick["shapes"][0]["depth"] in c.DEPTHS


def test_speed_cache_pairs_rounds_against_prenorm(monkeypatch):
    """The interleaved speed cache at a reduced grid: every workload measured, PreNorm's paired
    ratio exactly 1, a planted 3x slower 'variant' (PreNorm's train step run three times) seen
    as ~3x, CPU milliseconds positive."""
    from benchmarks import _common as c
    from benchmarks import bench_speed as s

    monkeypatch.setattr(c, "VARIANTS", {"prenorm": ("prenorm", {}), "slow": ("prenorm", {}),
                                        "block-attnres": ("block-attnres", {"n_blocks": 2})})
    monkeypatch.setattr(c, "DEPTHS", [2])
    monkeypatch.setattr(s, "ROUNDS", {w: 5 for w in s.WORKLOADS})
    monkeypatch.setattr(s, "WARMUP", 1)
    real = s._fns

    def planted(variant, blocks, dev):
        fns = real(variant, blocks, dev)
        if variant == "slow":
            train = fns["train"]
            fns["train"] = lambda: [train() for _ in range(3)]
        return fns

    monkeypatch.setattr(s, "_fns", planted)
    out = s.measure()
    for work in s.WORKLOADS:
        assert out[work]["prenorm/2"]["ratio"] == 1.0
        for v in c.VARIANTS:
            assert out[work][f"{v}/2"]["ms"] > 0
    assert 2.4 < out["train"]["slow/2"]["ratio"] < 3.6
    assert 0.8 < out["prefill"]["slow/2"]["ratio"] < 1.25  # the same model, untouched


def test_flops_series_equal_the_analytic_count():
    from benchmarks import _common as c
    from benchmarks import bench_flops
    from resbench.model import step_flops

    for variant in c.VARIANTS:
        cfg, model = c.build(variant, 2, "cpu")
        mix = model.residual.mixing_flops()
        got = bench_flops._measure(variant, 2)
        tokens = cfg.seq_len
        assert got["train"] * tokens == step_flops(cfg, mix, tokens, train=True), variant
        assert got["prefill"] * tokens == step_flops(cfg, mix, tokens, train=False), variant


def test_the_history_grid_has_every_registered_variant():
    """A new variant joins the tracked series (benchmarks/_common.py VARIANTS) as it lands."""
    import resbench.variants as variants
    from benchmarks import _common as c

    shipped = {n for n in variants.names() if variants.get(n).__module__.startswith("resbench.variants")}
    assert {name for name, _ in c.VARIANTS.values()} == shipped
    assert c.BASELINE in c.VARIANTS
