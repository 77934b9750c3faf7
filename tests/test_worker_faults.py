"""A worker that fails says why: a variant's sys.exit fails its cell only, a value torch refuses and
a result that cannot be written are `error` with their one-line cause, a variant's own segfault is
`crashed` with its Python stack (never `killed`, which is a signal from outside), and nothing a
variant prints reaches the progress channel."""
import os
import sys
import textwrap

import pytest

from resbench import workloads
from resbench.config import expand_cells, parse_suite
from resbench.errors import classify
from resbench.executors.process import read_progress, run_job
from resbench.runner import run_suite
from resbench.workloads.common import RunContext

SHAPE = [{"name": "t", "d_model": 16, "depth": 1, "n_heads": 2, "seq_len": 8}]

FAULTS = textwrap.dedent('''
    import ctypes
    import os
    import sys
    from resbench.variants import register
    from resbench.variants.prenorm import PreNorm

    print("resbench-progress x y")  # at import, in the worker too: shaped like the old protocol
    print("resbench-progress 999 1")
    print("\\x00garbage \\xff")

    @register("exits")
    class Exits(PreNorm):
        def write(self, x, i, y):
            sys.exit(3)

    @register("segfault")
    class Segfault(PreNorm):
        def write(self, x, i, y):
            ctypes.string_at(0)  # reads address 0: SIGSEGV
            return x + y

    @register("fills-disk")
    class FillsDisk(PreNorm):
        """Measures fine; its worker's result then lands on a full disk (/dev/full: ENOSPC)."""
        def begin(self, e):
            tmp = sys.argv[-1] + ".tmp"  # the worker's RESULT.json, written through a .tmp
            if not os.path.lexists(tmp):
                os.symlink("/dev/full", tmp)
            return e

    @register("chatty")
    class Chatty(PreNorm):
        def write(self, x, i, y):
            print("resbench-progress x y", flush=True)
            print("resbench-progress 999 1 extra", flush=True)
            print("resbench-progress 5000 2", flush=True)
            print("\\x00garbage \\xff", flush=True)
            return x + y
''')


@pytest.fixture
def faults(plugin_variants):
    return plugin_variants("rb_worker_faults", FAULTS)


def suite(**over):
    raw = {"name": "t", "variants": ["prenorm"], "shapes": SHAPE, "threads": 1, "timeout_s": 120,
           "workloads": {"memory": {"batch": 2}}}
    raw.update(over)
    return parse_suite(raw)


def test_sys_exit_in_a_variant_fails_that_cell_only(faults):
    cells = expand_cells(suite(variants=["prenorm", "exits", "densenet"]), "cpu")
    out = workloads.get("memory").run(cells, RunContext.of(cells))  # in this process: it must survive the exit
    by = {c.variant: out[c.key] for c in cells}
    assert by["prenorm"][0] == by["densenet"][0] == "ok"
    assert by["exits"][0] == "error" and "sys.exit(3)" in by["exits"][1]
    assert len(classify(SystemExit("x" * 10**5))[1]) < 300


def test_a_worker_failure_is_its_cause_never_killed(faults, tmp_path):
    """One run, one job per variant: each cell's status and message are the true cause."""
    recs = run_suite(suite(variants=["exits", "segfault", "fills-disk"]), tmp_path / "r.jsonl",
                     progress=False)
    by = {r["cell"]["variant"]: r for r in recs}
    exits = by["exits"]
    assert exits["status"] == "error" and "sys.exit(3)" in exits["message"], exits
    seg = by["segfault"]
    assert seg["status"] == "crashed" and "SIGSEGV" in seg["message"], seg
    assert "write (rb_worker_faults.py:" in seg["message"] and "from outside" not in seg["message"]
    assert any("Current thread" in ln for ln in seg["worker_stderr"])  # faulthandler's dump, kept
    disk = by["fills-disk"]
    assert disk["status"] == "error", disk
    assert "cannot write the result" in disk["message"] and "No space left on device" in disk["message"]
    assert "Traceback" not in disk["message"] and "\n" not in disk["message"]


def test_threads_torch_refuses_are_an_error_naming_it():
    (cell,) = expand_cells(suite(), "cpu")
    bad = type(cell)(**{**cell.to_dict(), "threads": 100000000000000000000})
    (res,) = run_job([bad], 120).values()
    assert res["status"] == "error" and "Overflow" in res["message"], res


def test_plugin_prints_never_reach_the_progress_bar(faults):
    cells = expand_cells(suite(variants=["prenorm", "chatty"],
                               workloads={"throughput": {"batch": 2, "warmup": 1, "repeats": 2}}), "cpu")
    seen = []
    result = run_job(cells, 120, on_progress=lambda done, total: seen.append((done, total)))
    assert {r["status"] for r in result.values()} == {"ok"}, result
    assert seen and all(0 < d <= t for d, t in seen) and len({t for _, t in seen}) == 1
    assert seen[-1][0] == seen[-1][1]  # the bar reached its end
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    said = next(iter(result.values()))["worker_stderr"]  # what the variant printed is kept, not parsed
    assert any("resbench-progress 5000 2" in ln for ln in said)


def test_the_progress_reader_skips_what_it_cannot_read(tmp_path):
    import threading

    path = tmp_path / "progress"
    path.write_bytes(b"resbench-progress x y\nresbench-progress 1 4\n\xff\xfe\nresbench-progress 1.5 4\n"
                     b"resbench-progress 2 4\nresbench-progress 3")  # the last line still being written
    seen, done = [], threading.Event()
    done.set()
    read_progress(str(path), lambda d, t: seen.append((d, t)), done)
    assert seen == [(1, 4), (2, 4)]
    read_progress(str(tmp_path / "none"), lambda d, t: seen.append((d, t)), done)  # never written: nothing
    assert seen == [(1, 4), (2, 4)]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_the_worker_says_why_it_wrote_no_result(tmp_path):
    """Run directly: a result on a full disk is one line and a non-zero exit, not an abort."""
    import json
    import subprocess

    (cell,) = expand_cells(suite(), "cpu")
    (tmp_path / "job.json").write_text(json.dumps({"cells": [cell.to_dict()]}))
    os.symlink("/dev/full", tmp_path / "result.json.tmp")
    proc = subprocess.Popen([sys.executable, "-m", "resbench.worker", "--parent-stdin", str(tmp_path / "job.json"),
                             str(tmp_path / "result.json")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # stdin stays open: the parent is alive
    try:
        said = proc.stdout.read()
        assert proc.wait(120) == 1, said[-2000:]
    finally:
        proc.kill()
        proc.stdin.close()
    assert said.splitlines()[-1] == f"cannot write the result in {tmp_path}: No space left on device"
