"""The pipelined model against one process, run under torchrun (tests/test_distributed.py):

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m resbench.parallel.check

For every registered variant (its equations: impl reference where it has forms) and schedule, and
both comm forms where the variant declares completed sources: the pipelined step's loss and the gradient
of every parameter (summed over ranks) must equal a one-process step of the same model in fp64,
and the counted forward bytes must equal what the layout predicts (harness/parallel/comm.py for AttnRes;
one state of `streams()` d-vectors per transition for the single-stream variants). Rank 0 prints
one line per case and exits 1 if any fails.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import variants
from ..model import ModelConfig, build_model
from . import comm as comm_model
from .pipeline import COMMS, MULTI_STAGE, SCHEDULES, all_reduced_grads, build_pipeline, chunk_bounds

TOL = 1e-9  # fp64: the pipeline only reorders sums over microbatches
# option sets checked beside the defaults: Block AttnRes with blocks that span a cut (partial sums cross)
EXTRA = {"block-attnres": [{"n_blocks": 2}]}


def cases(names: list[str], schedules: list[str], virtual: int):
    for name in names:
        cls = variants.get(name)
        base = {"impl": "reference"} if "impl" in cls.option_defaults() else {}
        cached = cls.completed is not variants.base.Residual.completed
        for opts in [base] + [{**base, **o} for o in EXTRA.get(name, [])]:
            for s in schedules:
                for comm in COMMS if cached else ("naive",):
                    yield name, opts, s, (virtual if s in MULTI_STAGE else 1), comm


def predicted_vectors(model, cfg: ModelConfig, ranks: int, virtual: int, comm: str) -> float | None:
    res = model.residual
    cuts = [s for s, _ in chunk_bounds(cfg.depth, ranks * virtual)]
    if hasattr(res, "starts"):
        return comm_model.exact(list(res.starts), cfg.n_layers, cuts, ranks, comm)["total"]
    if res.state_vectors() == res.streams():  # the state is its streams
        return (len(cuts) - 1) * res.streams()
    return None


def run_case(name, opts, schedule, virtual, comm, cfg, x, y, microbatches) -> tuple[bool, str]:
    rank, world = dist.get_rank(), dist.get_world_size()
    ref = build_model(cfg, name, opts, 0, dtype=torch.float64)
    loss = F.cross_entropy(ref(x).flatten(0, 1), y.flatten())
    loss.backward()
    model = build_model(cfg, name, opts, 0, dtype=torch.float64)
    pipe = build_pipeline(model, schedule, world, virtual, microbatches, comm, rank, "cpu", whole=True)
    got = pipe.step(x, y)
    grads = all_reduced_grads(pipe, model)
    lt = torch.tensor([got if got is not None else 0.0], dtype=torch.float64)
    dist.all_reduce(lt)
    counts = pipe.counts()
    ct = torch.tensor([counts["fwd_send"], counts["fwd_recv"], counts["bwd_send"], counts["bwd_recv"],
                       sum(s.elems for s in pipe.stages)], dtype=torch.float64)
    dist.all_reduce(ct)
    loss_err = abs(lt.item() - loss.item()) / abs(loss.item())
    grad_err = max(((grads[n] - p.grad).norm() / p.grad.norm().clamp_min(1e-300)).item()
                   for n, p in ref.named_parameters() if p.grad is not None)
    tokens = x.numel()
    measured = ct[4].item() / (tokens * cfg.d_model)
    want = predicted_vectors(model, cfg, world, virtual, comm)
    ok = loss_err < TOL and grad_err < TOL and ct[0] == ct[1] == ct[2] == ct[3] and (want is None or measured == want)
    return ok, (f"loss rel err {loss_err:.1e}, grad rel err {grad_err:.1e}, forward {measured:g} d-vectors/token "
                f"(predicted {'-' if want is None else format(want, 'g')}), bytes fwd/bwd/recv "
                f"{int(ct[0])}/{int(ct[2])}/{int(ct[1])}/{int(ct[3])}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="resbench.parallel.check", description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="all", help="comma-separated names, or all (default)")
    ap.add_argument("--schedules", default=",".join(SCHEDULES), help="comma-separated (default: all)")
    ap.add_argument("--virtual", type=int, default=2, help="V for interleaved schedules (default 2)")
    ap.add_argument("--depth", type=int, default=4, help="transformer blocks of the test model (default 4)")
    args = ap.parse_args(argv)
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    names = variants.names() if args.variants == "all" else args.variants.split(",")
    cfg = ModelConfig(vocab_size=64, d_model=32, depth=args.depth, n_heads=2, seq_len=8)
    xy = torch.randint(0, cfg.vocab_size, (8, cfg.seq_len + 1), generator=torch.Generator().manual_seed(0))
    x, y = xy[:, :-1], xy[:, 1:]
    failed = 0
    for name, opts, schedule, virtual, comm in cases(names, args.schedules.split(","), args.virtual):
        ok, msg = run_case(name, opts, schedule, virtual, comm, cfg, x, y, microbatches=4)
        failed += not ok
        if dist.get_rank() == 0:
            label = name + "".join(f" {k}={v}" for k, v in opts.items() if k != "impl")
            print(f"{'ok  ' if ok else 'FAIL'} {label} {schedule} V={virtual} {comm}: {msg}", flush=True)
    dist.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
