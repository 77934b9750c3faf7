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
# one grid point of each kind: a timing (spawned interpreter with torch) and two cached tracks
SUBSET = [r"time_train_step\('prenorm', 2\)", r"time_prefill\('full-attnres', 4\)",
          r"time_decode_token\('block-attnres', 2\)",
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
    for name in ("time_train_step", "time_prefill", "time_decode_token", "track_state_bytes_per_token",
                 "track_final_val_loss"):
        assert name in out
    assert "Traceback" not in out, out
    # --python=same saves nothing unless told: no results of this run anywhere
    assert not list((asv.tmp / "results").glob("*/*-*.json"))
