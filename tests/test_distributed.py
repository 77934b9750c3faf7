"""Scaling out on torch.distributed (gloo, 2 CPU ranks, each test bounded in time): the pipelined
model equals one process for every variant, counted traffic equals the layout's prediction and
the paper's Eq. 7/8 where they apply, a tiny distributed suite runs end to end, and a rank that
dies or hangs becomes the cell's status instead of hanging the sweep."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from resbench.cells import Cell
from resbench.config import ConfigError, expand_cells, parse_suite
from resbench.parallel import comm
from resbench.parallel.launch import Launch, parse_launch, rank_failure
from resbench.parallel.pipeline import chunk_bounds

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_pipeline_equals_one_process_for_every_variant():
    """Loss and every gradient (fp64, summed over ranks) equal one process's; bytes equal the
    prediction; GPipe, 1F1B, interleaved 1F1B (V = 2), naive and cached (resbench.parallel.check)."""
    out = subprocess.run(TORCHRUN + ["-m", "resbench.parallel.check"], capture_output=True, text=True,
                         timeout=300, env=_env())
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("ok", "FAIL"))]
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    from resbench import variants
    assert {ln.split()[1] for ln in lines} == set(variants.names())
    assert any("cached" in ln and "interleaved" in ln for ln in lines)
    assert not [ln for ln in lines if ln.startswith("FAIL")]


@pytest.mark.parametrize("ranks,virtual,n_blocks", [(2, 2, 4), (2, 3, 6), (4, 2, 8), (3, 2, 12), (2, 1, 2)])
def test_exact_count_is_eq7_eq8_plus_embeddings_when_blocks_align(ranks, virtual, n_blocks):
    """Blocks aligned with chunks (N a multiple of C, one block = whole transformer blocks): the
    exact count is the paper's Eq. 7/8 plus one embedding per transition that carries it."""
    chunks = ranks * virtual
    layers = 2 * n_blocks * 2  # two transformer blocks per AttnRes block
    starts = list(range(0, layers, 4))
    cuts = [s for s, _ in chunk_bounds(layers // 2, chunks)]
    for how, embeddings in (("naive", chunks - 1), ("cached", ranks - 1), ("cached-all", ranks - 1)):
        ex = comm.exact(starts, layers, cuts, ranks, how)
        assert ex["partial"] == 0
        assert ex["blocks"] == comm.paper(ranks, virtual, len(starts), how)
        assert ex["embedding"] == embeddings
        assert ex["total"] == ex["blocks"] + embeddings


def test_figure3_of_the_paper():
    """P = 4, V = 2, a block spanning two chunks (N_p = 1/2): caching saves 6 transmissions of
    the second virtual stage (the paper's Fig. 3), which the averaged Eq. 7 does not give exactly."""
    ranks, virtual, layers = 4, 2, 16  # 8 chunks of 2 sublayers (one transformer block each)
    starts = list(range(0, layers, 4))  # 4 blocks of 4 sublayers: each spans two chunks
    cuts = list(range(0, layers, 2))
    naive, cached = (comm.exact(starts, layers, cuts, ranks, h) for h in ("naive", "cached"))
    second = slice(ranks - 1, None)  # transitions into chunks P .. C-1
    saved = sum(naive["per_transition"][second]) - sum(cached["per_transition"][second])
    assert saved == 6
    # the second virtual stage carries exactly Eq. 8's (V-1)·P²·N_p = 8 blocks, 2 per transition ...
    blocks_v1 = sum(t - (c % 2) for c, t in enumerate(cached["per_transition"][second], start=ranks))
    assert blocks_v1 == (virtual - 1) * ranks ** 2 * 0.5 == 8
    # ... while the first stage's whole blocks (0, 1, 1) are fewer than the averaged P(P-1)/2·N_p = 3
    assert cached["blocks"] == 10 and comm.eq8_cached(ranks, virtual, 0.5) == 11
    assert naive["blocks"] == 12 and comm.eq7_naive(8, 0.5) == 14


def test_cached_all_sends_only_what_the_receiving_rank_never_held():
    """The distributed suite's layout (8 transformer blocks, P 2 × V 2): Block AttnRes (N 4)
    carries 9 d-vectors per token naive, 6 under the paper's caching, 4 when a rank also keeps
    what its own chunk made; Full AttnRes 27, 21, 13. The blocks alone follow the closed form,
    (V-1)·P·N_p below Eq. 8."""
    ranks, virtual, layers = 2, 2, 16
    cuts = [s for s, _ in chunk_bounds(8, ranks * virtual)]
    block = {h: comm.exact([0, 4, 8, 12], layers, cuts, ranks, h) for h in ("naive", "cached", "cached-all")}
    full = {h: comm.exact(list(range(layers)), layers, cuts, ranks, h) for h in ("naive", "cached", "cached-all")}
    assert [block[h]["total"] for h in block] == [9, 6, 4]
    assert [full[h]["total"] for h in full] == [27, 21, 13]
    assert block["cached-all"]["blocks"] == comm.cached_all(ranks, virtual, 1) == 3
    assert comm.eq8_cached(ranks, virtual, 1) - comm.cached_all(ranks, virtual, 1) == (virtual - 1) * ranks * 1


def test_launcher_parsing_and_keys():
    assert parse_launch(None) == Launch() and parse_launch("torchrun").nproc == 2
    lau = parse_launch({"type": "torchrun", "nproc": 4, "backend": "auto"})
    assert lau.resolved("cpu")["backend"] == "gloo" and lau.resolved("cuda")["backend"] == "nccl"
    for bad, msg in [({"nproc": 0}, "launcher.nproc must be a positive integer"),
                     ({"type": "mpirun"}, "launcher.type must be one of local, torchrun"),
                     ({"backend": "mpi"}, "launcher.backend must be one of"),
                     ({"nnodes": 2}, "needs launcher.rdzv_endpoint"),
                     ({"procs": 2}, "unknown key 'procs'")]:
        with pytest.raises(ConfigError, match=msg):
            parse_launch(bad)
    base = dict(variant="prenorm", options={}, label="prenorm", shape_name="s", shape={}, workload="ddp",
                params={}, device="cpu", precision="fp32", seed=0, threads=1)
    local = Cell(**base)
    # a local cell keeps the key it had before the launcher existed: its fields without `launch`
    import dataclasses
    import hashlib
    old = {k: v for k, v in dataclasses.asdict(local).items() if k not in ("label", "compile", "launch")}
    assert local.key == hashlib.sha1(json.dumps(old, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    a = Cell(**base, launch={**lau.resolved("cpu"), "rdzv_endpoint": "a:1"})
    b = Cell(**base, launch={**lau.resolved("cpu"), "rdzv_endpoint": "b:2"})
    c = Cell(**base, launch=parse_launch({"nproc": 2}).resolved("cpu"))
    assert a.key == b.key != c.key != local.key  # ranks are what is measured; the address is not


def _suite(**over):
    raw = {"name": "t", "device": "cpu", "threads": 1, "timeout_s": 120,
           "launcher": {"type": "torchrun", "nproc": 2},
           "variants": ["prenorm", {"name": "block-attnres", "options": {"impl": "reference", "n_blocks": 2},
                                    "label": "block-attnres"}],
           "shapes": [{"name": "t", "d_model": 32, "depth": 4, "n_heads": 2, "seq_len": 16, "vocab_size": 64}],
           "workloads": {"ddp": {"batch": 2, "repeats": 2}, "fsdp": {"batch": 2, "repeats": 2},
                         "pp": {"batch": 4, "microbatches": 2, "repeats": 2,
                                      "schedule": ["1f1b", "interleaved-1f1b"], "comm": ["naive", "cached"]}}}
    raw.update(over)
    return raw


def test_suite_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"workloads.ddp runs on several ranks: set launcher"):
        parse_suite(_suite(launcher="local"))
    with pytest.raises(ConfigError, match="need at least as many transformer blocks"):
        parse_suite(_suite(launcher={"nproc": 8}, workloads={"pp": {"batch": 8, "microbatches": 8}}))
    with pytest.raises(ConfigError, match=r"batch \(5\) must be a multiple of microbatches"):
        parse_suite(_suite(workloads={"pp": {"batch": 5, "microbatches": 2}}))
    with pytest.raises(ConfigError, match="workloads.pp.schedule must be one of gpipe, 1f1b"):
        parse_suite(_suite(workloads={"pp": {"schedule": ["1f1b", "zb"]}}))


def test_cells_one_per_axis_value_cached_only_where_it_can_differ():
    cells = expand_cells(parse_suite(_suite()), "cpu")
    pp = [(c.label, c.params["schedule"], c.params["virtual"], c.params["comm"]) for c in cells
          if c.workload == "pp"]
    assert sorted(pp) == sorted([("prenorm", "1f1b", 1, "naive"), ("block-attnres", "1f1b", 1, "naive"),
                                 ("prenorm", "interleaved-1f1b", 2, "naive"),
                                 ("block-attnres", "interleaved-1f1b", 2, "naive"),
                                 ("block-attnres", "interleaved-1f1b", 2, "cached")])
    assert all(c.launch["backend"] == "gloo" and c.launch["nproc"] == 2 for c in cells)


def _run(tmp_path, raw, env=None):
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"kind": "distributed", **raw}))
    out = tmp_path / "r.jsonl"
    proc = subprocess.run([sys.executable, "-m", "resbench", "run", str(suite), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=600,
                          env={**_env(), "RESBENCH_TEST_RUN": str(tmp_path), **(env or {})})
    return proc, [json.loads(ln) for ln in out.read_text().splitlines()] if out.exists() else []


def _left_behind(tmp_path) -> list[int]:
    """Processes still alive that this test's run started (they inherit its marker variable)."""
    mark = f"RESBENCH_TEST_RUN={tmp_path}".encode()
    out = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if entry.isdigit() and mark in fh.read().split(b"\0"):
                    out.append(int(entry))
        except OSError:
            continue
    return out


def test_distributed_suite_runs_and_its_traffic_matches(tmp_path):
    proc, recs = _run(tmp_path, _suite())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(recs) == 9 and {r["status"] for r in recs} == {"ok"}
    assert not [r for r in recs if "FAILED" in " ".join(r.get("worker_stderr") or [])]  # every rank left cleanly
    ddp = [r["metrics"] for r in recs if r["cell"]["workload"] == "ddp"]
    assert all(m["ranks"] == 2 and len(m["rank_tokens_per_s"]) == 2 for m in ddp)
    cached = next(r["metrics"] for r in recs if r["cell"]["params"].get("comm") == "cached")
    assert cached["vectors_per_token"] == cached["expected"]["total"] == 5
    assert "Stage-transition traffic" in proc.stdout and "| NO" not in proc.stdout


@pytest.mark.parametrize("fault,status,says", [("kill:1:3", "killed", "rank 1 killed by SIGKILL"),
                                               ("hang:1:3", "timeout", "every rank was killed"),
                                               ("raise:1:3", "error",
                                                "rank 1 raised RuntimeError: injected fault on rank 1")])
def test_a_failed_rank_is_the_cells_status(tmp_path, fault, status, says):
    # the job's limit is timeout_s × its 2 cells: room to start both ranks, not to wait long
    raw = _suite(timeout_s=15 if status == "timeout" else 120, workloads={"ddp": {"batch": 2, "repeats": 3}})
    proc, recs = _run(tmp_path, raw, env={"RESBENCH_FAULT": fault})
    assert {r["status"] for r in recs} == {status}, recs
    assert all(says in r["message"] for r in recs), recs[0]["message"]
    assert proc.returncode == 1  # the study reports the failed cells
    assert not _left_behind(tmp_path)  # torchrun and both ranks are gone


def test_rank_failure_reads_torchrun_summary():
    text = """Root Cause (first observed failure):
[0]:
  time      : 2026-12-05_18:00:00
  host      : vm
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 4242)
  error_file: <N/A>"""
    assert rank_failure(text) == ("killed", "rank 1 killed by SIGKILL (torchrun stopped the other ranks)")
    assert rank_failure("plain failure") is None
    two = """ValueError: a bad shape
[0]:
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 11)
[1]:
  rank      : 1 (local_rank: 1)
  exitcode  : 1 (pid: 12)"""
    assert rank_failure(two) == ("error", "rank 0 exited with code 1; rank 1 exited with code 1 "
                                          "(torchrun stopped the other ranks): ValueError: a bad shape")


def _error_file(log_dir, local_rank: int, message: str):
    """What torchrun's @record writes for a rank that raised, under --log-dir."""
    path = log_dir / "run_x" / "attempt_0" / str(local_rank) / "error.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"message": {"message": message, "extraInfo": {"py_callstack": "...",
                                                                                "timestamp": "0"}}}))
    return path


def test_rank_failure_leads_with_the_rank_that_raised_first(tmp_path):
    """Both ranks raised (the second only because the first left); the first error file written is
    the cause, whatever the ranks printed with torch's "[rankN]:" prefix."""
    first = _error_file(tmp_path, 1, "RuntimeError: injected fault on rank 1")
    then = _error_file(tmp_path, 0, "RuntimeError: [gloo] Connection closed by peer\nmore")
    os.utime(first, ns=(10**18, 10**18))
    os.utime(then, ns=(2 * 10**18, 2 * 10**18))
    text = f"""[rank0]: Traceback (most recent call last):
[rank0]: RuntimeError: [gloo] Connection closed by peer
Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 5499)  (SIGTERM)
  error_file: {then}
Root Cause (first observed failure):
[0]:
  rank      : 1 (local_rank: 1)
  exitcode  : 1 (pid: 5500)
  error_file: {first}"""
    assert rank_failure(text, str(tmp_path)) == (
        "error", "rank 1 raised RuntimeError: injected fault on rank 1; rank 0 raised RuntimeError "
                 "(torchrun stopped the other ranks)")
    # no summary printed (torchrun itself cut short): the error files alone, by local rank
    assert rank_failure("", str(tmp_path))[1].startswith("rank 1 raised RuntimeError: injected fault on rank 1;")


def test_rank_failure_without_error_files_reads_prefixed_output():
    text = """[rank1]: Traceback (most recent call last):
[rank1]: ValueError: a bad shape on rank 1
[rank0]: RuntimeError: Connection closed by peer
  rank      : 1 (local_rank: 1)
  exitcode  : 1 (pid: 12)
  error_file: <N/A>"""
    assert rank_failure(text) == ("error", "rank 1 exited with code 1 (torchrun stopped the other ranks): "
                                           "ValueError: a bad shape on rank 1")


def test_a_crashed_rank_leads_with_its_stack():
    text = """Fatal Python error: Segmentation fault

Current thread 0x00007f (most recent call first):
  File "/x/my_variants.py", line 12 in write
  File "/x/model.py", line 80 in forward

Extension modules: torch._C (total: 1)
[0]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 11)
[1]:
  rank      : 1 (local_rank: 1)
  exitcode  : -11 (pid: 12)"""
    status, msg = rank_failure(text)
    assert status == "crashed"
    assert msg == ("rank 1 crashed with SIGSEGV; rank 0 killed by SIGTERM (torchrun stopped the other ranks); "
                   "Python stack, innermost first: write (my_variants.py:12) < forward (model.py:80)")


def test_a_cell_that_cannot_build_fails_alone(tmp_path):
    """A fast form's store cannot cross a stage boundary: that cell says so, its job goes on."""
    raw = _suite(variants=["prenorm", "block-attnres"],
                 workloads={"pp": {"batch": 4, "microbatches": 2, "repeats": 2, "schedule": "1f1b"}})
    proc, recs = _run(tmp_path, raw)
    by = {r["cell"]["label"]: r for r in recs}
    assert by["prenorm"]["status"] == "ok", by["prenorm"]
    assert by["block-attnres"]["status"] == "error" and "use impl: reference" in by["block-attnres"]["message"]


def test_schedule_limits_are_named_before_any_rank_starts():
    with pytest.raises(ConfigError, match=r"microbatches \(1\) must be >= the ranks \(2\) for 1f1b"):
        parse_suite(_suite(workloads={"pp": {"batch": 2, "microbatches": 1, "schedule": "1f1b"}}))
    with pytest.raises(ConfigError, match="does not scale fp16 losses"):
        parse_suite(_suite(precision="fp16-autocast"))
    with pytest.raises(ConfigError, match=r"workloads.ddp.warmup must be > 0"):
        parse_suite(_suite(workloads={"ddp": {"warmup": 0}}))


def test_torchrun_command_one_node_and_several():
    from resbench.parallel.launch import torchrun_command
    one = torchrun_command(parse_launch({"nproc": 2}).resolved("cpu"), ["-m", "resbench.worker"])
    assert one[1:3] == ["-m", "torch.distributed.run"] and "--standalone" in one and "--nproc-per-node=2" in one
    assert one[-2:] == ["-m", "resbench.worker"]
    logged = torchrun_command(parse_launch({"nproc": 2}).resolved("cpu"), ["-m", "x"], log_dir="/tmp/j/torchrun")
    assert "--log-dir=/tmp/j/torchrun" in logged and logged[-2:] == ["-m", "x"]
    many = torchrun_command(parse_launch({"nproc": 8, "nnodes": 2, "rdzv_endpoint": "h0:29500",
                                          "rdzv_id": "j1"}).resolved("cuda"), ["-m", "x"])
    assert "--standalone" not in many
    assert {"--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=h0:29500", "--rdzv-id=j1"} <= set(many)
    job = torchrun_command(parse_launch({"nproc": 8, "nnodes": 2, "rdzv_endpoint": "h0:29500"}).resolved("cuda"),
                           ["-m", "x"], job="0123abcd")
    assert "--rdzv-id=resbench-0123abcd" in job  # one rendezvous per job, the same on every node


def test_adaptive_rounds_stop_on_every_rank_at_one_look(tmp_path):
    """Rank 0 decides on the slowest rank's ratios and every rank follows: the run ends (no rank
    left waiting at a barrier) and the record says where and why it stopped."""
    adaptive = {"batch": 2, "repeats": 40, "precision": 0.45}
    proc, recs = _run(tmp_path, _suite(workloads={"ddp": adaptive, "pp": {**adaptive, "batch": 4, "microbatches": 2}}))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert {r["status"] for r in recs} == {"ok"} and len(recs) == 4
    for r in recs:
        rounds = r["metrics"]["rounds"]
        assert rounds["stopped"] == "precision" and rounds["rounds"] < 40, rounds
        assert r["metrics"]["step_ms"]["n"] == rounds["rounds"]
        assert r["cell"]["params"]["precision"] == 0.45
    assert re.search(r"Adaptive rounds \(rank 0 decides for all ranks\) to ±45\.0%: ddp \d+ rounds \(precise enough\)",
                     proc.stdout), proc.stdout
