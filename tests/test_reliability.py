"""A sweep survives faults, bad values and hostile inputs without losing, inventing or misfiling a
record (docs/RELIABILITY.md lists each promise and the test here that holds it)."""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import yaml

from resbench import variants
from resbench.cli import main
from resbench.config import ConfigError, expand_cells, parse_suite
from resbench.errors import UserError
from resbench.results import append_record, read_records
from resbench.executors.process import run_job
from resbench.results import make_record
from resbench.runner import run_suite

ROOT = Path(__file__).resolve().parent.parent
SHAPE = [{"name": "t", "d_model": 16, "depth": 1, "n_heads": 2, "seq_len": 8}]

FAULTS = textwrap.dedent('''
    import os
    import time
    import warnings
    import torch
    from resbench.variants import register
    from resbench.variants.prenorm import PreNorm

    @register("sleeper")
    class Sleeper(PreNorm):
        """Hangs in its forward: something to kill."""
        def write(self, x, i, y):
            time.sleep(60)
            return x + y

    @register("hog")
    class Hog(PreNorm):
        """Holds ever more memory: 64 MiB more per sublayer call, touched so it is resident."""
        held = []
        def write(self, x, i, y):
            for _ in range(40):
                Hog.held.append(torch.ones(16 * 2**20))
                time.sleep(0.02)
            return x + y

    @register("memerr")
    class MemErr(PreNorm):
        def write(self, x, i, y):
            raise MemoryError("cannot allocate (injected)")

    @register("flaky")
    class Flaky(PreNorm):
        """Works for its first forwards, then fails: as a kernel that breaks on warm caches would."""
        calls = 0
        def begin(self, e):
            Flaky.calls += 1
            if Flaky.calls > 4:
                raise RuntimeError("flaky failure on call %d (injected)" % Flaky.calls)
            return e

    @register("noisy")
    class Noisy(PreNorm):
        def write(self, x, i, y):
            warnings.warn("a warning the worker prints (injected)")
            return x + y
''')


@pytest.fixture
def faults(plugin_variants):
    return plugin_variants("rb_faults", FAULTS)


def suite(**over):
    raw = {"name": "t", "variants": ["prenorm"], "shapes": SHAPE, "threads": 1, "workloads": {"memory": {"batch": 2}}}
    raw.update(over)
    return parse_suite(raw)


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def cmdline(pid: int) -> str:
    """'' for a process that is already gone (a short-lived child: git, a probe)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(cond, timeout=30.0):
    end = time.time() + timeout
    while time.time() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


# 1. the baseline cannot be replaced -----------------------------------------------------------

def test_a_look_alike_class_cannot_take_a_registered_name(tmp_path, monkeypatch, capsys):
    (tmp_path / "rb_imposter.py").write_text(textwrap.dedent('''
        from resbench.variants import register
        from resbench.variants.base import Residual

        @register("prenorm")
        class PreNorm(Residual):  # same name, same class name, other code
            def begin(self, e): return e * 2
            def read(self, x, i): return x
            def write(self, x, i, y): return x + y
            def end(self, x): return x
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    variants.names()
    monkeypatch.setattr(variants, "_REGISTRY", dict(variants._REGISTRY))
    monkeypatch.setattr(variants, "loaded_modules", list(variants.loaded_modules))
    assert main(["--variants-module", "rb_imposter", "list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'prenorm' is already registered by resbench.variants.prenorm.PreNorm" in err
    cls = variants.get("prenorm")
    variants.register("prenorm")(cls)  # the same class again is fine
    assert variants.get("prenorm") is cls


def test_a_worker_never_runs_another_class_under_a_cells_key():
    (cell,) = expand_cells(suite(), "cpu")
    assert cell.variant_source.startswith("resbench.variants.prenorm:PreNorm@")
    other = type(cell)(**{**cell.to_dict(), "variant_source": "rb_imposter:PreNorm@000000000000"})
    assert other.key != cell.key  # the variant's source is part of what a key names
    (res,) = run_job([other], 120).values()
    assert res["status"] == "error" and "two modules register this name" in res["message"]


# 2. a kill is `killed`, retried; `oom` needs evidence -----------------------------------------

def test_sigkill_of_a_worker_is_killed_and_retried(faults, tmp_path):
    import threading

    out = tmp_path / "r.jsonl"
    s = suite(variants=["sleeper"], timeout_s=120)
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("recs", run_suite(s, out, progress=False)))
    t.start()
    worker = wait_for(lambda: [c for c in children(os.getpid()) if "resbench.worker" in cmdline(c)])[0]
    os.kill(worker, signal.SIGKILL)
    t.join(60)
    (rec,) = got["recs"]
    assert rec["status"] == "killed" and "SIGKILL" in rec["message"] and "oom" not in rec["message"]
    assert "killed" not in ("ok", "oom", "diverged")
    s2 = suite(variants=["sleeper"], timeout_s=0.5)
    (again,) = run_suite(s2, out, progress=False)  # not finished: measured again (here: a timeout)
    assert again["status"] == "timeout"


def test_oom_only_with_evidence(faults, tmp_path):
    out = tmp_path / "r.jsonl"
    recs = run_suite(suite(variants=["hog", "memerr"], memory_cap_gb=0.6, timeout_s=120), out, progress=False)
    by = {r["cell"]["variant"]: r for r in recs}
    assert by["hog"]["status"] == "oom" and "memory cap of 0.60 GiB" in by["hog"]["message"]
    assert by["memerr"]["status"] == "oom" and "MemoryError" in by["memerr"]["message"]


# 3. NaN, inf and out-of-range values are refused at load; an unwritable record is an error record

@pytest.mark.parametrize("over,needle", [
    ({"workloads": {"loss": {"lr": float("nan")}}}, "workloads.loss.lr must be a finite number"),
    ({"workloads": {"loss": {"weight_decay": float("inf")}}}, "workloads.loss.weight_decay must be a finite number"),
    ({"shapes": [{**SHAPE[0], "mlp_ratio": float("nan")}]}, "mlp_ratio must be a finite number"),
    ({"variants": [{"name": "highway", "options": {"gate_bias": float("nan")}}]}, "gate_bias must be a finite number"),
    ({"timeout_s": float("nan")}, "timeout_s must be a finite number"),
    ({"memory_cap_gb": float("inf")}, "memory_cap_gb must be a finite number"),
    ({"seeds": [2**70]}, "seeds must be in 0 .. 2**63 - 1"),
    ({"seeds": [-1]}, "seeds must be in 0 .. 2**63 - 1"),
    ({"seeds": [1, 1]}, "seeds has duplicates"),
])
def test_non_finite_and_out_of_range_values_are_refused(over, needle):
    with pytest.raises(ConfigError, match=None) as info:
        suite(**over)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_nan_through_yaml_is_refused_from_the_cli(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("name: t\nvariants: [prenorm]\nshapes: [{name: t, d_model: 16, depth: 1, n_heads: 2, "
                    "seq_len: 8}]\nworkloads: {loss: {lr: .nan}}\ntimeout_s: .nan\n")
    assert main(["run", str(path), "--out", str(tmp_path / "r.jsonl")]) == 2
    assert "finite" in capsys.readouterr().err and not (tmp_path / "r.jsonl").exists()


def test_a_record_that_cannot_be_json_becomes_an_error_record(tmp_path):
    out = tmp_path / "r.jsonl"
    (cell,) = expand_cells(suite(), "cpu")
    rec = make_record(cell, {"status": "ok", "metrics": {"loss": float("nan")}, "env": {}}, "t", "r", {})
    assert rec["status"] == "error" and "JSON" in rec["message"]
    append_record(out, rec)
    (back,) = read_records(out)
    assert back["status"] == "error" and back["metrics"] == {}


# 4. one run per results file ----------------------------------------------------------------

def test_a_second_run_on_the_same_file_is_refused_naming_the_first(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f'''
        import sys, time
        from pathlib import Path
        from resbench.results import exclusive
        with exclusive(Path({str(out)!r})):
            print("locked", flush=True)
            time.sleep(30)
    ''')], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"in use by another resbench run \(pid {holder.pid}\)"):
            run_suite(suite(), out, progress=False)
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({"name": "t", "variants": ["prenorm"], "shapes": SHAPE,
                                        "workloads": {"memory": {"batch": 2}}}))
        assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert len(run_suite(suite(), out, progress=False)) == 1  # free again


# 5. a full disk cuts nothing ------------------------------------------------------------------

def test_a_failed_write_leaves_the_file_byte_identical(tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    (cell,) = expand_cells(suite(), "cpu")
    rec = {"key": cell.key, "cell": cell.to_dict(), "status": "error", "message": "first", "metrics": {}, "env": {}}
    append_record(out, rec)
    before = out.read_bytes()
    real = os.write
    calls = []

    def full_disk(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real(fd, data[: len(data) // 2])  # a short write
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(UserError, match="No space left on device.*left as it was"):
        append_record(out, rec)
    monkeypatch.setattr(os, "write", real)
    assert out.read_bytes() == before

    def short_writes(fd, data):  # the kernel may write less than asked: the rest follows
        return real(fd, data[:7])

    monkeypatch.setattr(os, "write", short_writes)
    append_record(out, {**rec, "message": "second"})
    monkeypatch.setattr(os, "write", real)
    assert [r["message"] for r in read_records(out)] == ["first", "second"]


# 6. a failing variant does not take its throughput group down --------------------------------

def test_a_variant_failing_mid_group_leaves_the_others_measured(faults, tmp_path):
    s = suite(variants=["prenorm", "flaky", "densenet"],
              workloads={"throughput": {"batch": 2, "warmup": 1, "repeats": 3}})
    by = {r["cell"]["variant"]: r for r in run_suite(s, tmp_path / "r.jsonl", progress=False)}
    assert by["flaky"]["status"] == "error" and "flaky failure" in by["flaky"]["message"]
    assert by["prenorm"]["status"] == by["densenet"]["status"] == "ok"
    assert by["densenet"]["metrics"]["train_ratio_vs_prenorm"] > 0


# 7. names are not paths; 8. --out must be a file ----------------------------------------------

@pytest.mark.parametrize("name", ["../../escape", "/abs/path", "a/b", "..", ".hidden", ""])
def test_suite_names_are_plain_names(name):
    with pytest.raises(ConfigError, match="plain name"):
        suite(name=name)


def test_study_names_are_plain_names():
    from resbench.studies import parse

    raw = yaml.safe_load((ROOT / "benchmarks" / "suites" / "scaling.yaml").read_text())
    with pytest.raises(ConfigError, match="plain name"):
        parse({**raw, "name": "../../etc/x"})
    with pytest.raises(ConfigError, match="threads must be >= 0"):
        parse({**raw, "threads": -1})


def test_out_pointing_at_a_directory_fails_before_any_work(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "variants": ["prenorm"], "shapes": SHAPE,
                                    "workloads": {"memory": {"batch": 2}}}))
    assert main(["run", str(path), "--out", str(tmp_path), "--quiet"]) == 2
    assert "is a directory" in capsys.readouterr().err


# 9. workers die with their parent; SIGTERM is a clean stop ------------------------------------

def _start_run(tmp_path, faults_dir):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "variants": ["sleeper"], "shapes": SHAPE, "threads": 1,
                                    "timeout_s": 120, "workloads": {"memory": {"batch": 2}}}))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(faults_dir), "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "resbench", "--variants-module", "rb_faults", "run", str(path),
                             "--out", str(tmp_path / "r.jsonl"), "--quiet"], env=env, stderr=subprocess.PIPE,
                            text=True,
                            # a test run started in the background inherits SIGINT ignored; a user's Ctrl-C is not
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # the module name, not "worker": this test's own tmp path contains "workers", and so may a git child's
    worker = wait_for(lambda: [c for c in children(proc.pid) if "resbench.worker" in cmdline(c)])[0]
    return proc, worker, tmp


def _exit_code(proc, timeout=60):
    """The run's exit code; on a hang, its threads' stacks (SIGUSR1: faulthandler) in the failure."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(1)
        proc.kill()
        raise AssertionError(f"resbench did not exit within {timeout} s; its stacks:\n{proc.stderr.read()}") from None


@pytest.mark.parametrize("sig,code,word", [(signal.SIGKILL, -9, None), (signal.SIGTERM, 143, "terminated"),
                                           (signal.SIGINT, 130, "interrupted")])
def test_workers_die_with_their_parent(faults, tmp_path, sig, code, word):
    proc, worker, tmp = _start_run(tmp_path, faults)
    os.kill(proc.pid, sig)  # the parent only, as `kill` would: not the process group
    assert _exit_code(proc) == code
    wait_for(lambda: not alive(worker), timeout=10)
    wait_for(lambda: not list(tmp.iterdir()), timeout=10)  # no temporary job folder left behind
    if word:
        err = proc.stderr.read()
        assert f"resbench: {word}" in err and "Traceback" not in err


# 10. malformed records are skipped with a line number -----------------------------------------

def test_malformed_records_are_skipped_with_their_line(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    (cell,) = expand_cells(suite(), "cpu")
    good = {"key": cell.key, "cell": cell.to_dict(), "status": "error", "metrics": {}, "env": {}}
    lines = [good, {**good, "key": None}, {**good, "metrics": None}, {**good, "cell": "a string"},
             {k: v for k, v in good.items() if k != "key"}, [1, 2], {**good, "status": "weird"}]
    out.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recs = read_records(out)
    assert [r["status"] for r in recs] == ["error", "weird"]
    text = " ".join(str(w.message) for w in caught)
    for n in (2, 3, 4, 5, 6):
        assert f"r.jsonl:{n}: skipped a malformed record" in text
    assert "r.jsonl:7: unknown status 'weird'" in text
    assert main(["report", str(out)]) == 0  # renders the good ones
    empty = tmp_path / "empty.jsonl"
    empty.write_text("not json\n")
    assert main(["report", str(empty)]) == 2 and "no records" in capsys.readouterr().err


# 11. a broken variants module; 12. a binary suite; 13. an alias bomb; 14. two shapes, one name --

@pytest.mark.parametrize("body,kind", [("raise RuntimeError('boom at import')", "RuntimeError"),
                                       ("def f(:\n    pass", "SyntaxError"), ("raise SystemExit(3)", "SystemExit"),
                                       ("import rb_no_such_module_here", "ModuleNotFoundError")])
def test_a_broken_variants_module_is_one_line(tmp_path, monkeypatch, capsys, body, kind):
    (tmp_path / "rb_broken.py").write_text(body + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("rb_broken", None)
    assert main(["--variants-module", "rb_broken", "list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and kind in err and "rb_broken" in err


def test_a_binary_suite_is_one_line(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a UTF-8 text file" in err


def test_an_alias_bomb_is_refused_fast(tmp_path, capsys):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append("name: *a9")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - t0 < 5 and "alias" in err and len(err) < 300


def test_huge_values_are_never_repr_d_whole_into_a_message():
    with pytest.raises(ConfigError) as info:
        suite(seeds=["x" * 10**6])
    assert len(str(info.value)) < 300


def test_two_shapes_with_one_name_are_refused():
    with pytest.raises(ConfigError, match="two shapes are named 't'"):
        suite(shapes=[SHAPE[0], {**SHAPE[0], "d_model": 32}])
    with pytest.raises(ConfigError, match="two shapes are named 't'"):
        suite(shapes=[{**SHAPE[0], "batch": 2}, {**SHAPE[0], "batch": 4}])


# 15. corpus checks once, before any cell; report on nothing; scale cells guarded --------------

def test_corpus_problems_stop_the_run_before_any_cell(tmp_path):
    out = tmp_path / "r.jsonl"
    loss = {"steps": 1, "batch": 2, "corpus": "generated", "corpus_bytes": 20000}
    with pytest.raises(ConfigError, match=r"token ids up to 255: shapes\[t\].vocab_size is 64"):
        run_suite(suite(shapes=[{**SHAPE[0], "vocab_size": 64}], workloads={"loss": loss}), out, progress=False)
    text = tmp_path / "tiny.txt"
    text.write_text("x" * 40)  # 36 train, 4 validation tokens: fewer than seq_len + 1 = 9
    with pytest.raises(ConfigError, match="fewer than shapes"):
        run_suite(suite(workloads={"loss": {**loss, "corpus": f"text:{text}"}}), out, progress=False)
    assert not out.exists()


def test_a_scale_cell_that_fails_is_a_status(faults, tmp_path, capsys):
    raw = {"kind": "scaling", "name": "mini", "threads": 1,
           "shapes": [{"name": "s", "d_model": 16, "n_heads": 2, "seq_len": 8, "vocab_size": 32, "depth": [1, 2]}],
           "variants": ["prenorm", "memerr"],
           "workloads": {"memory_views": {"views": ["inference"], "pipeline_stages": 1}}}
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["scale", str(path), "--out", str(tmp_path / "mini.jsonl"), "--quiet"]) == 1
    recs = [json.loads(x) for x in (tmp_path / "mini.jsonl").read_text().splitlines()]
    assert {(r["cell"]["variant"], r["status"]) for r in recs} == {("prenorm", "ok"), ("memerr", "oom")}
    assert "memerr" in capsys.readouterr().out  # the report names what was left out of the fits


# 16. exit status, worker stderr ----------------------------------------------------------------

def test_run_exits_1_unless_every_cell_finished_and_keeps_worker_warnings(faults, tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "variants": ["noisy"], "shapes": SHAPE, "threads": 1,
                                    "workloads": {"memory": {"batch": 2}}}))
    out = tmp_path / "r.jsonl"
    assert main(["--variants-module", "rb_faults", "run", str(path), "--out", str(out), "--quiet"]) == 0
    (rec,) = read_records(out)
    assert any("a warning the worker prints" in ln for ln in rec["worker_stderr"])
    path.write_text(yaml.safe_dump({"name": "t", "variants": ["prenorm", "sleeper"], "shapes": SHAPE, "threads": 1,
                                    "timeout_s": 1, "workloads": {"memory": {"batch": 2}}}))
    assert main(["--variants-module", "rb_faults", "run", str(path), "--out", str(out), "--quiet"]) == 1
    assert "not finished" in capsys.readouterr().err
