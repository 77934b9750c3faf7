"""The Slurm executor against a real Slurm (scripts/slurm-local.sh: one node, two fake GPUs; CI
starts it): the same keys, statuses and losses as a local run; what Slurm does to a task (its
time limit, scancel, a requeue) becomes the cells' status, recorded once; timed tasks never share
a GPU; a killed submitter loses nothing a task finished."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest

from resbench.cli import main
from resbench.config import parse_suite
from resbench.executors.shards import submissions_dir
from resbench.results import read_records
from resbench.runner import run_suite


def _slurm_up() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no Slurm client on this machine (scripts/slurm-local.sh install && scripts/slurm-local.sh start)"
    res = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    if res.returncode != 0 or not any(s.startswith(("idle", "mix", "alloc")) for s in res.stdout.split()):
        return ("no Slurm controller answers with a usable node (start one with scripts/slurm-local.sh start "
                "and export the SLURM_CONF it prints)")
    return None


WHY_NOT = _slurm_up()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))]

SHAPE = [{"name": "t", "d_model": 16, "depth": 1, "n_heads": 2, "seq_len": 8}]
LOSS = {"steps": 4, "batch": 2, "eval_every": 2, "eval_batches": 1, "corpus": "generated", "corpus_bytes": 20000}
PLUGIN = textwrap.dedent('''
    import os
    import time
    from resbench.variants import register
    from resbench.variants.prenorm import PreNorm

    @register("sleeper")
    class Sleeper(PreNorm):
        def write(self, x, i, y):
            time.sleep(600)
            return x + y

    @register("napper")
    class Napper(PreNorm):
        """Long enough to be seen running, short enough for a test."""
        def begin(self, e):
            time.sleep(float(os.environ.get("NAP_S", "6")))
            return e
''')


@pytest.fixture
def plugin(plugin_variants):
    yield plugin_variants("rb_slurm", PLUGIN)
    subprocess.run(["scancel", "--name", "resbench-t"], capture_output=True)


def _raw():
    return {"name": "t", "variants": ["prenorm", "densenet"], "shapes": SHAPE, "threads": 1,
            "workloads": {"memory": {"batch": 2}, "loss": LOSS}}


def suite(executor=None, **over):
    raw = {**_raw(), "executor": {"type": "slurm", "poll_s": 0.5, **(executor or {})}}
    raw.update(over)
    return parse_suite(raw)


def tasks(out: Path) -> dict[str, str]:
    """{variant: 'ARRAY_TASK'} of the newest submission of `out`."""
    folder = max(submissions_dir(out).iterdir(), key=lambda d: d.stat().st_mtime)
    m = json.loads((folder / "manifest.json").read_text())
    out = {}
    for g in m["groups"]:
        for n, idx in enumerate(g["jobs"]):
            for c in m["jobs"][idx]["cells"]:
                out[c["variant"]] = f"{g['slurm_id']}_{n}"
    return out


def _submitted(out: Path) -> bool:
    try:
        return bool(tasks(out))
    except (OSError, ValueError, KeyError):  # no folder or manifest yet, or written before sbatch answered
        return False


def wait_state(task: str, states: tuple[str, ...], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        res = subprocess.run(["squeue", "-h", "-r", "-j", task.split("_")[0], "-o", "%F_%K %T"],
                             capture_output=True, text=True)
        if any(line.split() == [task, s] for line in res.stdout.splitlines() for s in states):
            return
        time.sleep(0.3)
    pytest.fail(f"task {task} never reached {states}")


def test_a_sweep_on_slurm_gives_the_keys_statuses_and_losses_of_a_local_run(tmp_path):
    on_slurm = run_suite(suite(), tmp_path / "slurm.jsonl", progress=False)
    local = run_suite(parse_suite({**_raw(), "executor": "local"}), tmp_path / "local.jsonl", progress=False)
    a, b = {r["key"]: r for r in on_slurm}, {r["key"]: r for r in local}
    assert a.keys() == b.keys() and len(a) == 4
    assert {k: r["status"] for k, r in a.items()} == {k: r["status"] for k, r in b.items()}
    for k, r in a.items():
        assert r["placement"]["executor"] == "slurm" and r["placement"]["slurm_job"]
        if r["cell"]["workload"] == "loss":
            assert r["metrics"]["val_loss"] == b[k]["metrics"]["val_loss"]  # bit for bit
    assert len(read_records(tmp_path / "slurm.jsonl")) == 4
    assert run_suite(suite(), tmp_path / "slurm.jsonl", progress=False) == []  # resumed: nothing to submit


def test_a_task_past_its_slurm_time_limit_is_a_timeout(plugin):
    s = suite(executor={"time_limit_min": 1}, variants=["sleeper"], timeout_s=900, workloads={"memory": {"batch": 2}})
    (rec,) = run_suite(s, plugin / "r.jsonl", progress=False)
    assert rec["status"] == "timeout" and "TIMEOUT" in rec["message"], rec["message"]


def test_scancel_of_one_task_is_its_status_and_the_others_finish(plugin, capsys):
    out = plugin / "r.jsonl"
    s = suite(variants=["sleeper", "prenorm", "densenet"], workloads={"memory": {"batch": 2}})
    assert run_suite(s, out, progress=False, detach=True) == []
    victim = tasks(out)["sleeper"]
    wait_state(victim, ("RUNNING",))
    subprocess.run(["scancel", victim], check=True)
    assert main(["gather", str(out), "--quiet"]) == 1  # not every cell finished
    by = {r["cell"]["variant"]: r for r in read_records(out)}
    assert by["sleeper"]["status"] == "killed" and "CANCELLED" in by["sleeper"]["message"]
    assert by["prenorm"]["status"] == by["densenet"]["status"] == "ok"


def test_concurrent_timed_tasks_never_share_a_fake_gpu(plugin):
    s = suite(executor={"gpus_per_task": 1, "max_concurrent": 3}, seeds=[0, 1, 2, 3], variants=["prenorm"],
              workloads={"throughput": {"batch": 2, "warmup": 0, "repeats": 2}})
    recs = run_suite(s, plugin / "r.jsonl", progress=False)
    assert len(recs) == 4 and {r["status"] for r in recs} == {"ok"}
    spans = [(r["placement"]["devices"], *(datetime.fromisoformat(r["placement"][k]).timestamp()
                                          for k in ("start", "end"))) for r in recs]
    assert {d for d, _, _ in spans} <= {"0", "1"}
    assert any(a[1] < b[2] and b[1] < a[2] for a in spans for b in spans if a is not b)  # some ran together
    for a in spans:
        for b in spans:
            if a is not b and a[1] < b[2] and b[1] < a[2]:
                assert a[0] != b[0]


def test_a_killed_submitter_loses_nothing_and_a_requeued_task_is_recorded_once(plugin):
    out = plugin / "r.jsonl"
    path = plugin / "s.yaml"
    path.write_text(json.dumps({"name": "t", "variants": ["napper", "prenorm"], "shapes": SHAPE, "threads": 1,
                                "workloads": {"memory": {"batch": 2}}, "executor": {"type": "slurm", "poll_s": 0.5}}))
    env = {**os.environ, "NAP_S": "8"}
    proc = subprocess.Popen([sys.executable, "-m", "resbench", "--variants-module", "rb_slurm", "run", str(path),
                             "--out", str(out), "--quiet"], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not _submitted(out):  # the manifest names the array once sbatch answered
        time.sleep(0.2)
    task = tasks(out)["napper"]
    wait_state(task, ("RUNNING",))
    proc.send_signal(signal.SIGKILL)  # the submitter dies; its tasks go on
    proc.wait()
    time.sleep(1)
    subprocess.run(["scontrol", "requeue", task], check=True)  # as a preemption would
    time.sleep(1)  # Slurm holds a requeued task back a while (its begin time): let it start now
    subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], capture_output=True)
    assert not out.exists() or not read_records(out)  # nothing gathered yet
    assert main(["gather", str(out), "--quiet"]) == 0
    recs = read_records(out)
    assert sorted(r["cell"]["variant"] for r in recs) == ["napper", "prenorm"]  # each once
    assert {r["status"] for r in recs} == {"ok"}
    assert next(r for r in recs if r["cell"]["variant"] == "napper")["placement"]["restarts"] == 1
    assert main(["gather", str(out), "--quiet"]) == 0 and len(read_records(out)) == 2  # gathered once
