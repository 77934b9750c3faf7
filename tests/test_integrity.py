"""Hostile conditions that must not duplicate, misfile or mis-read a record: the results file is
locked by what it is (not by its name), records are verified when read (types, key, size), the
baseline is one cell whatever its label, limits that changed re-open a cell, and the CLI's
machine-readable output and exit codes survive plugins and closed pipes (docs/RELIABILITY.md)."""
import errno
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
from pathlib import Path

import pytest
import yaml

from conftest import planted_metrics
from resbench import studies
from resbench.cells import cell_key, label_of
from resbench.cli import main
from resbench.config import ConfigError, expand_cells, parse_suite
from resbench.errors import UserError
from resbench.results import MAX_MESSAGE, MAX_RECORD_BYTES, append_record, exclusive, finished_keys, read_records
from resbench.runner import run_suite

ROOT = Path(__file__).resolve().parent.parent
SHAPE = [{"name": "t", "d_model": 16, "depth": 1, "n_heads": 2, "seq_len": 8}]


def suite(**over):
    raw = {"name": "t", "variants": ["prenorm"], "shapes": SHAPE, "threads": 1, "workloads": {"memory": {"batch": 2}}}
    raw.update(over)
    return parse_suite(raw)


def record(cell, status="ok", **metrics):
    d = cell.to_dict() if hasattr(cell, "to_dict") else cell
    return {"key": cell_key(d), "cell": d, "status": status, "env": {},
            "metrics": planted_metrics(d["workload"], **metrics) if status == "ok" else {}}


def hold(path: Path):
    """A second process holding the run lock on `path` until killed."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f'''
        import time
        from pathlib import Path
        from resbench.results import exclusive
        with exclusive(Path({str(path)!r})):
            print("locked", flush=True)
            time.sleep(60)
    ''')], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


# 1. the lock is on the file, not its name ---------------------------------------------------

@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_a_run_through_another_name_of_the_file_is_refused(tmp_path, how):
    out = tmp_path / "r.jsonl"
    append_record(out, record(expand_cells(suite(), "cpu")[0], status="error"))
    other = tmp_path / "alias.jsonl"
    (other.symlink_to if how == "symlink" else other.hardlink_to)(out)
    holder = hold(out)
    try:
        with pytest.raises(UserError, match=rf"in use by another resbench run \(pid {holder.pid}\)"):
            run_suite(suite(), other, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert len(read_records(out)) == 1  # nothing measured, nothing appended
    assert not list(tmp_path.glob("*.lock"))  # no side file to remove and so lose the lock


def test_an_empty_results_file_the_run_created_is_removed_again(tmp_path):
    out = tmp_path / "r.jsonl"
    with exclusive(out):
        assert out.is_file()
    assert not out.exists()


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_out_that_is_not_a_regular_file_is_refused_before_any_work(tmp_path, capsys, kind):
    if kind == "fifo":
        out = tmp_path / "r.jsonl"
        os.mkfifo(out)
    else:
        out = Path("/dev/null")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "variants": ["prenorm"], "shapes": SHAPE,
                                    "workloads": {"memory": {"batch": 2}}}))
    try:  # a subprocess: writing into a FIFO nobody reads would block this test forever
        proc = subprocess.run([sys.executable, "-m", "resbench", "run", str(path), "--out", str(out), "--quiet"],
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the run blocked on a results path that is not a regular file")
    assert proc.returncode == 2, proc.stderr
    assert "not a regular file" in proc.stderr and proc.stderr.count("\n") == 1


def test_a_full_disk_at_the_start_is_one_line(tmp_path, monkeypatch):
    real = os.open

    def full(path, flags, *a):
        if str(path).endswith("r.jsonl") and flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, flags, *a)

    monkeypatch.setattr(os, "open", full)
    with pytest.raises(UserError, match="No space left on device"):
        with exclusive(tmp_path / "r.jsonl"):
            pass
    monkeypatch.setattr(os, "open", real)

    def no_room(*a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    for name in ("write", "pwrite", "ftruncate"):  # taking the lock writes nothing
        monkeypatch.setattr(os, name, no_room)
    with exclusive(tmp_path / "r.jsonl"):
        pass


# 3. one definition of the baseline ----------------------------------------------------------

def test_a_label_may_not_take_another_variants_name():
    for label in ("prenorm", "densenet", "full-attnres(x=1)"):
        with pytest.raises(ConfigError, match=r"variants\[1\]\.label .* names the registered variant"):
            suite(variants=["prenorm", {"name": "highway", "label": label}])
    s = suite(variants=[{"name": "prenorm", "label": "real-prenorm"}, {"name": "highway", "label": "gate"},
                        {"name": "block-attnres", "options": {"n_blocks": 1}, "label": "block-attnres"}])
    assert [c.label for c in expand_cells(s, "cpu")] == ["real-prenorm", "gate", "block-attnres"]


def test_studies_find_the_baseline_by_its_cell_never_by_label():
    real = expand_cells(suite(variants=[{"name": "prenorm", "label": "real-prenorm"}]), "cpu")[0].to_dict()
    posing = {**expand_cells(suite(variants=["highway"]), "cpu")[0].to_dict(), "label": "prenorm"}
    assert label_of(real) == "prenorm" and label_of(posing) == "prenorm [highway]"
    # a crafted file where Highway is labelled prenorm: the decision table compares against real PreNorm
    loss = {"steps": 4, "batch": 2, "eval_every": 2, "eval_batches": 1, "corpus": "generated",
            "corpus_bytes": 20000}
    cells = {c.variant: c for c in expand_cells(suite(variants=["prenorm", "highway"], seeds=[0, 1],
                                                      workloads={"loss": loss}), "cpu")}
    del cells  # only the shapes of real cells matter below
    recs = []
    for variant, label, final in (("prenorm", "real-prenorm", 2.0), ("highway", "prenorm", 3.0)):
        for seed in (0, 1):
            s = suite(variants=[{"name": variant}], seeds=[seed], workloads={"loss": loss})
            c = {**expand_cells(s, "cpu")[0].to_dict(), "label": label}
            curve = [[2, final + 1 + seed * 0.01], [4, final + seed * 0.01]]
            recs.append(record(c, final_val_loss=final + seed * 0.01, val_loss=curve, train_loss=curve,
                               val_train_seconds=[0.1, 0.2]))
    text, _ = studies.get("decision").analyse(recs, None, Path("/nonexistent"))
    row = next(ln for ln in text.splitlines() if "prenorm [highway]" in ln)
    assert "+1.0" in row  # Highway is 1.0 worse than the real baseline, not the other way round


# 6, 7, 8. a record is verified when read ----------------------------------------------------

def test_a_record_whose_key_is_not_its_cells_is_not_trusted(tmp_path):
    out = tmp_path / "r.jsonl"
    s = suite(variants=["prenorm", "densenet"])
    a, b = expand_cells(s, "cpu")
    append_record(out, {**record(a), "key": b.key})  # claims b's key with a's cell: b was never measured
    with pytest.warns(UserWarning, match=r"r.jsonl:1: .* not the hash of its cell"):
        done, _ = finished_keys(out)
    assert done == set()
    recs = run_suite(s, out, progress=False)
    assert {r["key"] for r in recs} == {a.key, b.key}


def test_a_distributed_record_written_with_memory_kind_reads_with_counter(tmp_path):
    """Peak memory's `kind` became `counter` (results._upgrade): the committed references, written
    before, read as new records, the dict (ddp, fsdp) and the per-rank list (pp) alike, and a
    record of the new form must name its counter (DataParallel.metrics_schema)."""
    from resbench.results import check_record

    ref = ROOT / "results/reference/epyc-2core/distributed/distributed.jsonl"
    old = {}
    for line in ref.read_text().splitlines():
        rec = json.loads(line)
        old.setdefault(rec["cell"]["workload"], rec)
    assert set(old) == {"ddp", "fsdp", "pp"} and "kind" in old["ddp"]["metrics"]["memory"]  # written before
    assert all("kind" in m for m in old["pp"]["metrics"]["memory"])
    out = tmp_path / "r.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in old.values()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none skipped
        got = {r["cell"]["workload"]: r for r in read_records(out)}
    for wl, rec in old.items():
        mem, was = got[wl]["metrics"]["memory"], rec["metrics"]["memory"]
        for m, w in zip(mem, was) if wl == "pp" else [(mem, was)]:
            assert list(m) == ["counter" if k == "kind" else k for k in w]  # renamed, in place
            assert m["counter"] == w["kind"] == "process peak RSS"
        assert {k: v for k, v in got[wl]["metrics"].items() if k != "memory"} == \
               {k: v for k, v in rec["metrics"].items() if k != "memory"}
    raw = {**old["ddp"], "cell": got["ddp"]["cell"]}  # today's shape field, the memory as written
    assert "memory.counter is missing" in check_record(raw, verify_key=False)  # without the upgrade: refused
    new = got["ddp"]
    # upgraded (its shape too), so its key is the hash of the cell as written, checked on reading
    assert check_record(new, verify_key=False) is None and planted_metrics("ddp")["memory"]["counter"]
    del new["metrics"]["memory"]["counter"]
    assert check_record(new, verify_key=False) == "metrics.memory.counter is missing"


def test_a_record_written_with_shape_n_blocks_reads_with_depth_and_never_resumes_a_new_cell(tmp_path):
    """The shape's transformer-block count became `depth` (results._upgrade): a committed
    reference, written before, reads with `depth` in place and its key still verified as written;
    a cell of today hashes its own shape, so the old record never stands in for it."""
    ref = ROOT / "results/reference/epyc-2core/overhead.jsonl"
    rec = json.loads(ref.read_text().splitlines()[0])
    assert "n_blocks" in rec["cell"]["shape"] and "depth" not in rec["cell"]["shape"]  # written before
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps(rec) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not skipped
        (got,) = read_records(out)
    assert list(got["cell"]["shape"]) == ["depth" if k == "n_blocks" else k for k in rec["cell"]["shape"]]
    assert got["cell"]["shape"]["depth"] == rec["cell"]["shape"]["n_blocks"] and got["key"] == rec["key"]
    assert cell_key(got["cell"]) != rec["key"]  # today's cell of that shape has its own key
    assert finished_keys(out)[0] == {rec["key"]}


def test_an_oom_under_a_cap_that_was_raised_is_measured_again(tmp_path):
    out = tmp_path / "r.jsonl"
    s = suite(memory_cap_gb=0.2)
    (cell,) = expand_cells(s, "cpu")
    append_record(out, {**record(cell, status="oom"), "limits": {"memory_cap_bytes": 0.2 * 2**30}})
    assert finished_keys(out, limits={"memory_cap_bytes": 0.2 * 2**30})[0] == {cell.key}
    assert finished_keys(out, limits={"memory_cap_bytes": 0.1 * 2**30})[0] == {cell.key}  # less: still oom
    assert finished_keys(out, limits={"memory_cap_bytes": 4 * 2**30})[0] == set()
    (rec,) = run_suite(suite(memory_cap_gb=4.0), out, progress=False)
    assert rec["status"] == "ok" and rec["limits"]["memory_cap_bytes"] == 4 * 2**30


BAD = {
    "string train_ms": ("throughput", lambda r: r["metrics"].update(train_ms="12 ms")),
    "string final_val_loss": ("loss", lambda r: r["metrics"].update(final_val_loss="2.5")),
    "ok loss with empty metrics": ("loss", lambda r: r.update(metrics={})),
    "list label": ("memory", lambda r: r["cell"].update(label=["a"])),
    'seed "0"': ("memory", lambda r: r["cell"].update(seed="0")),
    "shape without d_model": ("memory", lambda r: r["cell"]["shape"].pop("d_model")),
    "string batch": ("memory", lambda r: r["cell"]["params"].update(batch="2")),
    "list message": ("memory", lambda r: r.update(message=["x"])),
}


def _bad_file(tmp_path, what) -> Path:
    workload, spoil = BAD[what]
    wl = {"throughput": {"batch": 2, "warmup": 0, "repeats": 2}, "memory": {"batch": 2},
          "loss": {"steps": 2, "batch": 2, "eval_every": 1, "eval_batches": 1, "corpus": "generated",
                   "corpus_bytes": 20000}}[workload]
    (cell,) = expand_cells(suite(workloads={workload: wl}), "cpu")
    good, bad = record(cell), record(cell)
    spoil(bad)
    bad["key"] = cell_key(bad["cell"])  # well keyed: only the type is wrong
    out = tmp_path / f"{workload}.jsonl"
    out.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n" + "[" * 100_000 + "\n")
    return out


@pytest.mark.parametrize("what", sorted(BAD))
def test_wrong_typed_records_are_skipped_with_their_line_everywhere(tmp_path, capsys, what):
    out = _bad_file(tmp_path, what)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(read_records(out)) == 1
    text = " ".join(str(w.message) for w in caught)
    assert f"{out.name}:2: skipped a malformed record" in text and f"{out.name}:3: skipped" in text
    assert main(["report", str(out)]) == 0
    assert main(["compare", str(out), str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "skipped a malformed record" in err


def test_run_resumes_over_a_file_of_wrong_typed_records(tmp_path):
    out = _bad_file(tmp_path, "list label")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run_suite(suite(), out, progress=False, resume_any=True) == []  # the good line stands for it


def test_a_huge_record_is_passed_over_without_reading_it_whole(tmp_path):
    out = tmp_path / "r.jsonl"
    (cell,) = expand_cells(suite(), "cpu")
    ok = record(cell, status="error")
    with open(out, "w") as fh:
        fh.write(json.dumps({**ok, "message": "x" * (40 * MAX_RECORD_BYTES)}) + "\n")
        fh.write(json.dumps({**ok, "message": "y" * (MAX_MESSAGE * 10)}) + "\n")
    tracemalloc.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (rec,) = read_records(out)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 * MAX_RECORD_BYTES  # a 40 MiB line was never held
    assert "r.jsonl:1: skipped a line over" in str(caught[0].message)
    assert len(rec["message"]) < MAX_MESSAGE + 100 and "more characters cut" in rec["message"]
    with pytest.raises(ValueError, match="over the"):
        from resbench.results import encode_record
        encode_record({**ok, "metrics": {"points": list(range(MAX_RECORD_BYTES))}})


# 13, 16, 17, 18. refused at parse, not after the run ----------------------------------------

def test_a_decision_suite_needs_its_loss_workload_and_takes_no_targets():
    base = {"kind": "decision", "name": "d", "variants": ["prenorm"], "shapes": SHAPE,
            "workloads": {"memory": {"batch": 2}}}
    with pytest.raises(ConfigError, match="workloads.loss"):
        studies.parse(base)
    with pytest.raises(ConfigError, match="unknown key 'targets'"):
        studies.parse({**base, "workloads": {"loss": {}}, "targets": {"t": {}}})


def test_threads_beyond_any_machine_are_refused():
    with pytest.raises(ConfigError, match="threads must be <= 4096"):
        suite(threads=10**20)


def test_a_budget_only_decision_report_passes_when_every_cell_is_ok(capsys):
    path = ROOT / "results/reference/epyc-zen4-2core/decision/decision-budget.jsonl"
    assert main(["report", str(path), "--suite", "decision-budget", "--out", "/tmp/resbench-db"]) == 0
    assert "Time-to-result" in capsys.readouterr().out


def test_json_with_a_study_report_is_refused(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    append_record(out, record(expand_cells(suite(), "cpu")[0], status="error"))
    assert main(["report", str(out), "--suite", "overhead", "--json"]) == 2
    assert "--json" in capsys.readouterr().err


def test_the_generic_table_says_its_spread_is_a_standard_deviation(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    loss = {"steps": 2, "batch": 2, "eval_every": 1, "eval_batches": 1, "corpus": "generated", "corpus_bytes": 20000}
    for c in expand_cells(suite(seeds=[0, 1], workloads={"loss": loss}), "cpu"):
        append_record(out, record(c, final_val_loss=2.0 + c.seed))
    assert main(["report", str(out)]) == 0
    assert "2.5000 ± 0.7071 sd (n=2)" in capsys.readouterr().out


# 14, 15. machine-readable output --------------------------------------------------------------

def test_a_plugin_printing_at_import_does_not_corrupt_json(tmp_path):
    (tmp_path / "chatty.py").write_text("print('hello from a plugin')\nprint('resbench-progress 1 2')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "RESBENCH_VARIANTS": "chatty"}
    proc = subprocess.run([sys.executable, "-m", "resbench", "list", "--json"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout)["variants"]
    assert "hello from a plugin" in proc.stderr


def test_a_closed_pipe_is_not_a_traceback():
    proc = subprocess.run(f"{sys.executable} -m resbench list | head -1", shell=True, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.startswith("shape:") and "Traceback" not in proc.stderr and "Error" not in proc.stderr


@pytest.mark.parametrize("endpoint", [":", ":abc", ":99999", "host:0", "host: 29400"])
def test_a_rendezvous_endpoint_that_cannot_be_reached_is_refused_at_parse(endpoint):
    with pytest.raises(ConfigError, match="launcher.rdzv_endpoint"):
        suite(launcher={"type": "torchrun", "nproc": 2, "nnodes": 2, "rdzv_endpoint": endpoint},
              workloads={"ddp": {"batch": 2}})
    suite(launcher={"type": "torchrun", "nproc": 2, "nnodes": 2, "rdzv_endpoint": "node1:29400"},
          workloads={"ddp": {"batch": 2}})
