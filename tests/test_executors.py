"""The executor seam on one machine: the local pool runs untimed jobs side by side and timed ones
alone, gives each job its own devices, records the same numbers as one job at a time, and stops
every worker with the run; shards and --only split a suite; identical nodes are one producer."""
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from resbench import provenance
from resbench.cli import main
from resbench.config import ConfigError, expand_cells, parse_suite
from resbench.errors import UserError
from resbench.report import tables
from resbench.results import read_records
from resbench.runner import parse_only, parse_shard, plan, run_suite, selection

SHAPE = [{"name": "t", "d_model": 16, "depth": 1, "n_heads": 2, "seq_len": 8}]
LOSS = {"steps": 6, "batch": 2, "eval_every": 3, "eval_batches": 1, "corpus": "generated", "corpus_bytes": 20000}

SPY = textwrap.dedent('''
    import os
    import time
    from resbench.variants import register
    from resbench.variants.prenorm import PreNorm

    @register("spy")
    class Spy(PreNorm):
        """Notes the devices its worker was given, and holds each job a moment so jobs overlap."""
        def begin(self, e):
            with open(os.environ["SPY_LOG"], "a") as fh:
                fh.write(f"{os.getpid()} {os.environ.get('CUDA_VISIBLE_DEVICES', '-')}\\n")
            time.sleep(0.3)
            return e

    @register("sleeper")
    class Sleeper(PreNorm):
        def write(self, x, i, y):
            time.sleep(60)
            return x + y
''')


@pytest.fixture
def spy(plugin_variants, tmp_path, monkeypatch):
    monkeypatch.setenv("SPY_LOG", str(tmp_path / "spy.log"))
    return plugin_variants("rb_spy", SPY)


def suite(**over):
    raw = {"name": "t", "variants": ["prenorm", "densenet"], "shapes": SHAPE, "threads": 1,
           "workloads": {"memory": {"batch": 2}, "loss": LOSS}}
    raw.update(over)
    return parse_suite(raw)


def span(rec):
    p = rec["placement"]
    return datetime.fromisoformat(p["start"]).timestamp(), datetime.fromisoformat(p["end"]).timestamp()


def overlap(a, b) -> bool:
    (s1, e1), (s2, e2) = span(a), span(b)
    return s1 < e2 and s2 < e1


def test_untimed_jobs_share_the_slots_a_timed_job_runs_alone_and_the_numbers_are_the_same(tmp_path):
    tp = {"throughput": {"batch": 2, "warmup": 0, "repeats": 2}}
    s = suite(seeds=[0, 1], executor={"type": "local", "slots": 2}, workloads={"memory": {"batch": 2}, "loss": LOSS, **tp})
    recs = run_suite(s, tmp_path / "r.jsonl", progress=False)
    assert {r["status"] for r in recs} == {"ok"}
    untimed = [r for r in recs if r["cell"]["workload"] != "throughput"]
    timed = [r for r in recs if r["cell"]["workload"] == "throughput"]
    assert any(overlap(a, b) for a in untimed for b in untimed if a is not b)  # side by side
    for t in timed:  # a timed job takes every slot: nothing else ran while it did
        assert t["placement"]["slots"] == "2/2"
        assert not any(overlap(t, o) for o in recs if o["placement"]["start"] != t["placement"]["start"])
    # the loss cells one at a time: the same curves, bit for bit
    one = {r["key"]: r for r in run_suite(suite(seeds=[0, 1], workloads={"loss": LOSS}), tmp_path / "one.jsonl",
                                          progress=False)}
    two = {r["key"]: r for r in untimed if r["cell"]["workload"] == "loss"}
    assert one.keys() == two.keys() and len(one) == 4
    for k in one:
        assert one[k]["metrics"]["val_loss"] == two[k]["metrics"]["val_loss"]
        assert one[k]["metrics"]["train_loss"] == two[k]["metrics"]["train_loss"]


def test_a_device_pool_gives_each_job_its_own_devices(spy):
    s = suite(variants=["spy"], seeds=[0, 1, 2, 3], executor={"type": "local", "devices": [0, 1]},
              workloads={"memory": {"batch": 2}})
    recs = run_suite(s, spy / "r.jsonl", progress=False)
    assert {r["status"] for r in recs} == {"ok"} and len(recs) == 4
    assert {r["placement"]["devices"] for r in recs} <= {"0", "1"}
    for a in recs:
        for b in recs:
            if a is not b and overlap(a, b):
                assert a["placement"]["devices"] != b["placement"]["devices"]
    seen = {line.split()[1] for line in (spy / "spy.log").read_text().splitlines()}
    assert seen == {"0", "1"}  # the workers themselves saw the devices they were given


def test_pool_settings_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="set the suite's threads"):
        run_suite(suite(threads=0, executor={"type": "local", "slots": 2}), tmp_path / "r.jsonl", progress=False)
    with pytest.raises(ConfigError, match="executor.slots is for a CPU pool"):
        run_suite(suite(executor={"type": "local", "slots": 2, "devices": [0]}), tmp_path / "r.jsonl", progress=False)
    for bad, words in [({"type": "nope"}, "executor.type must be one of"), ({"type": "local", "slots": 0}, "slots"),
                       ({"type": "local", "colour": 1}, "unknown key 'colour'"),
                       ({"type": "slurm", "exclusive": 3}, "executor.exclusive must be str")]:
        with pytest.raises(ConfigError, match=words):
            suite(executor=bad)
    assert not (tmp_path / "r.jsonl").exists()


def test_sigterm_stops_every_worker_of_a_pool(spy):
    path = spy / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "variants": ["sleeper"], "shapes": SHAPE, "threads": 1,
                                    "seeds": [0, 1], "workloads": {"memory": {"batch": 2}},
                                    "executor": {"type": "local", "slots": 2}}))
    proc = subprocess.Popen([sys.executable, "-m", "resbench", "--variants-module", "rb_spy", "run", str(path),
                             "--out", str(spy / "r.jsonl"), "--quiet"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(_workers(proc.pid)) < 2:
        time.sleep(0.2)
    workers = _workers(proc.pid)
    assert len(workers) == 2  # both jobs side by side
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    time.sleep(0.5)
    assert not [p for p in workers if Path(f"/proc/{p}").exists() and "resbench.worker" in _cmd(p)]


def _cmd(pid) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def _workers(parent: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(parent).children(recursive=True) if "resbench.worker" in _cmd(p.pid)]
    except psutil.Error:
        return []


# splitting a suite by hand ---------------------------------------------------------------------

def test_shards_are_whole_jobs_that_cover_the_suite_once():
    s = suite(seeds=[0, 1], workloads={"memory": {"batch": 2}, "throughput": {"batch": 2, "warmup": 0, "repeats": 2}})
    cells = expand_cells(s, "cpu")
    parts = [selection(cells, None, (i, 3)) for i in (1, 2, 3)]
    assert set().union(*parts) == {c.key for c in cells} and sum(map(len, parts)) == len(cells)
    for job in plan(cells, {c.key for c in cells}, 1.0):  # a throughput group stays in one shard
        assert sum(bool(set(job.todo) & p) for p in parts) == 1
    # the same shard whatever is finished: job numbers come from the whole suite's plan
    assert selection(cells, None, (2, 3)) == parts[1]


def test_only_keeps_the_named_cells_and_their_partners_run_unrecorded(tmp_path):
    s = suite(workloads={"memory": {"batch": 2}, "throughput": {"batch": 2, "warmup": 0, "repeats": 2}})
    recs = run_suite(s, tmp_path / "r.jsonl", progress=False, only=parse_only(["variant=densenet"]))
    assert {(r["cell"]["variant"], r["cell"]["workload"]) for r in recs} == {("densenet", "memory"),
                                                                            ("densenet", "throughput")}
    tp = next(r for r in recs if r["cell"]["workload"] == "throughput")
    assert tp["metrics"]["train_ratio_vs_prenorm"] is not None  # prenorm ran beside it, unrecorded
    for bad in (["colour=red"], ["variant"], ["shape="]):
        with pytest.raises(UserError, match="--only"):
            parse_only(bad)
    for bad in ("0/2", "3/2", "a/b", "1"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)


def test_cli_shards_then_report_together(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "variants": ["prenorm", "densenet"], "shapes": SHAPE,
                                    "threads": 1, "workloads": {"memory": {"batch": 2}}}))
    for i in (1, 2):
        assert main(["run", str(path), "--shard", f"{i}/2", "--out", str(tmp_path / f"{i}.jsonl"), "--quiet"]) == 0
    assert len(read_records(tmp_path / "1.jsonl")) == len(read_records(tmp_path / "2.jsonl")) == 1
    capsys.readouterr()
    assert main(["report", str(tmp_path / "1.jsonl"), str(tmp_path / "2.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "| prenorm" in out and "| densenet" in out


# many nodes, one producer ----------------------------------------------------------------------

def test_identical_nodes_are_one_producer_and_a_table_counts_its_nodes(tmp_path, monkeypatch):
    ids = []
    for host in ("node1", "node2"):
        provenance.machine.cache_clear()
        monkeypatch.setattr(provenance.platform, "node", lambda host=host: host)
        m = provenance.machine()
        assert m["hostname"] == host
        ids.append(m["machine_id"])
    provenance.machine.cache_clear()
    assert ids[0] == ids[1]
    recs = run_suite(suite(workloads={"memory": {"batch": 2}}), tmp_path / "r.jsonl", progress=False)
    recs[1]["env"]["machine"]["hostname"] = "node2"  # the other variant measured on a twin node
    (t,) = tables(recs)
    assert len(t["hosts"]) == 2 and "2 nodes" in t["measured_by"]
