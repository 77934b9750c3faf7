"""Pipeline parallelism on torch.distributed.pipelining: the shared model cut at transformer-block
boundaries into C = P·V chunks (chunk c on rank c mod P), the residual state crossing each cut as
the tensors of its pytree. PreNorm sends one stream, Full AttnRes every source so far, Block
AttnRes its completed blocks and the partial sum.

`comm="cached"` is the AttnRes paper's cross-stage caching (§4.1): a rank keeps the completed
sources (Residual.completed: the embedding and completed blocks) it started its earlier chunks from, so a transition
sends only what the receiving rank has not seen since its previous chunk. A kept source is a new
autograd leaf in the later chunk; its gradient is added, in the earlier chunk's backward, to the
tensor it was kept from (_Keep), so gradients equal the naive form's (tests/test_distributed.py).

Every tensor a stage sends is counted where the send is posted (CountingStage), forward and
backward, with the receives counted alongside as a check.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining import schedules as S
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..errors import ConfigError

# Schedules whose backward is one autograd.backward per chunk: kept completed sources get their .grad there
# (_Keep). Zero-bubble schedules split backward with autograd.grad, which would drop it.
SCHEDULES = {"gpipe": S.ScheduleGPipe, "1f1b": S.Schedule1F1B, "interleaved-1f1b": S.ScheduleInterleaved1F1B}
MULTI_STAGE = ("interleaved-1f1b",)  # schedules running V >= 2 chunks per rank
COMMS = ("naive", "cached", "cached-all")


def chunk_bounds(depth: int, chunks: int) -> list[tuple[int, int]]:
    """Sublayer ranges [start, stop) of the chunks: whole transformer blocks, the first
    depth mod C chunks one block longer."""
    if chunks > depth:
        raise ConfigError(f"pipeline: {chunks} chunks (stages x virtual) need at least as many transformer blocks; "
                          f"the shape has depth={depth}")
    base, extra = divmod(depth, chunks)
    out, b = [], 0
    for c in range(chunks):
        n = base + (c < extra)
        out.append((2 * b, 2 * (b + n)))
        b += n
    return out


@dataclass
class Boundary:
    """The residual state entering a chunk, as traced: its pytree spec, the leaves that are not
    tensors (constants such as a None partial sum), each tensor leaf's trailing shape and dtype,
    and the leaf index of each completed source."""
    spec: object
    constants: dict[int, object]
    tensors: dict[int, tuple[tuple[int, ...], torch.dtype]]
    completed: list[int]


def trace_boundaries(model, bounds) -> list[Boundary]:
    """The state entering each chunk (chunk 0: right after residual.begin), from a no-grad forward
    of one token: every variant mixes depth per token, so the structure does not depend on B, T."""
    res = model.residual
    idx = torch.zeros(1, 1, dtype=torch.long, device=next(model.parameters()).device)
    out = []
    with torch.no_grad():
        state = res.begin(model.embed(idx))
        for start, stop in bounds:
            leaves, spec = tree_flatten(state)
            ids = {id(t): k for k, t in enumerate(leaves) if isinstance(t, torch.Tensor)}
            bad = [type(x).__name__ for x in leaves if x is not None and not isinstance(x, (torch.Tensor, int, float, bool))]
            # a form's derived state (folded queries, a backward store) is not per token: it cannot be cut by microbatch
            bad += [f"a {tuple(t.shape)} tensor" for t in leaves if isinstance(t, torch.Tensor) and t.shape[:2] != idx.shape]
            if bad or not _plain_spec(spec):
                raise ConfigError(f"pipeline: {res.name}'s residual state holds {bad[0] if bad else 'a custom node'}, "
                                  "not per-token tensors, which a stage boundary cannot send: use impl: reference")
            hist = [ids[id(t)] for t in res.completed(state)]
            out.append(Boundary(spec, {k: x for k, x in enumerate(leaves) if not isinstance(x, torch.Tensor)},
                                {k: (tuple(t.shape[2:]), t.dtype) for k, t in enumerate(leaves)
                                 if isinstance(t, torch.Tensor)}, hist))
            state = model.run_sublayers(state, start, stop)
    return out


def _plain_spec(spec) -> bool:
    """Only dicts, lists and tuples inside: a custom pytree node (a leafless store) cannot travel."""
    if spec.type not in (None, dict, list, tuple):
        return spec.is_leaf()
    kids = spec.children() if callable(getattr(spec, "children", None)) else spec.children_specs
    return all(_plain_spec(c) for c in kids)


def known_completed(boundaries: list[Boundary], c: int, ranks: int, comm: str) -> int:
    """History tensors the rank of chunk c already holds when chunk c starts: those its previous
    chunk (c - P) started from (`cached`), or ended with (`cached-all`); none otherwise."""
    if comm == "naive" or c < ranks:
        return 0
    return len(boundaries[c - ranks + (comm == "cached-all")].completed)


def sent_leaves(boundaries: list[Boundary], c: int, ranks: int, comm: str) -> list[int]:
    """Leaf indices of the state entering chunk c (c >= 1) that the transition into it carries."""
    b = boundaries[c]
    kept = set(b.completed[:known_completed(boundaries, c, ranks, comm)])
    return [k for k in sorted(b.tensors) if k not in kept]


class _Keep(torch.autograd.Function):
    """Identity on a completed source a rank keeps; its backward adds the gradients its later
    chunks left on their copies of it (they run backward first: they are downstream)."""

    @staticmethod
    def forward(ctx, x, slot):
        ctx.slot = slot
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        slot = ctx.slot
        slot.delivered = True
        extra = [leaf.grad for leaf in slot.leaves if leaf.grad is not None]
        return (g + sum(extra) if extra else g), None


@dataclass
class _Slot:
    value: torch.Tensor
    leaves: list = field(default_factory=list)
    delivered: bool = False


class Chunk(nn.Module):
    """Sublayers [start, stop) of the shared model as one pipeline stage's module. It registers
    its sublayers, the embeddings on the first chunk, the final norm and head on the last, and the
    residual variant (one module for all sublayers, shared by the rank's chunks: a parameter row
    of another rank's sublayer gets a zero or no gradient here, and AdamW leaves it unchanged)."""

    def __init__(self, model, c: int, bounds, boundaries: list[Boundary], ranks: int, comm: str, kept: dict,
                 precision=None, device="cpu"):
        super().__init__()
        self.c, self.chunks = c, len(bounds)
        self.precision, self.device = precision, device
        self.start, self.stop = bounds[c]
        self.first, self.last = c == 0, c == self.chunks - 1
        self.residual = model.residual
        self.sublayers = nn.ModuleDict({str(i): model.sublayers[i] for i in range(self.start, self.stop)})
        if self.first:
            self.tok_emb, self.pos_emb = model.tok_emb, model.pos_emb
        if self.last:
            self.norm_f, self.head = model.norm_f, model.head
        object.__setattr__(self, "_model", model)  # for embed(); not a submodule
        self.entry = boundaries[c]
        self.known = known_completed(boundaries, c, ranks, comm)
        self.received = [] if self.first else sent_leaves(boundaries, c, ranks, comm)
        self.send = [] if self.last else sent_leaves(boundaries, c + 1, ranks, comm)
        self.kept = kept  # {microbatch: [_Slot per completed source]}, shared by the rank's chunks
        # what this chunk starts from is kept only if a later chunk of this rank will read it;
        # under cached-all, what it produces too (it leaves as a sent tensor: see _keep)
        self.keeps = comm != "naive" and c + ranks < self.chunks
        self.exit = None if self.last or comm != "cached-all" else boundaries[c + 1]
        self.microbatch = None  # set by CountingStage around each forward

    def forward(self, *args):
        if self.precision is not None and self.precision.autocast:
            with self.precision.context(self.device):
                return self._forward(*args)
        return self._forward(*args)

    def _forward(self, *args):
        res = self.residual
        if self.first:
            state = res.begin(self._model.embed(args[0]))
            leaves, _ = tree_flatten(state)
        else:
            leaves = self._rebuild(args)
        leaves = self._keep(leaves, self.entry.completed, self.known)
        state = tree_unflatten(leaves, self.entry.spec)
        for i in range(self.start, self.stop):  # the residual, as in Transformer.run_sublayers
            state = res.write(state, i, self.sublayers[str(i)]([res.read(state, i)]))
        if self.last:
            return self.head(self.norm_f(res.end(state)))
        leaves, _ = tree_flatten(state)
        if self.exit is not None:
            leaves = self._keep(leaves, self.exit.completed, len(self.entry.completed))
        return tuple(leaves[k] for k in self.send)

    def _rebuild(self, received):
        """The entering state's leaves: constants, the completed sources this rank kept, what was received."""
        b, leaves = self.entry, {**self.entry.constants}
        held = None if self.microbatch is None or not self.known else self.kept[self.microbatch]
        like = received[0]
        for k in range(self.known):
            pos = b.completed[k]
            if held is None:  # shape inference outside a step: any values of the right shape
                shape, dtype = b.tensors[pos]
                leaves[pos] = torch.zeros(*like.shape[:2], *shape, dtype=dtype, device=like.device)
            else:
                leaf = held[k].value.detach().requires_grad_(held[k].value.requires_grad)
                held[k].leaves.append(leaf)
                leaves[pos] = leaf
        for pos, t in zip(self.received, received, strict=True):
            leaves[pos] = t
        return [leaves[k] for k in range(len(leaves))]

    def _keep(self, leaves, hist: list[int], held_before: int):
        """History sources `hist[held_before:]` (leaf positions in `leaves`) become the rank's to
        keep: at entry, what it did not hold yet; under cached-all, at exit, what the chunk made.
        A kept tensor goes on through _Keep, whose backward adds what later chunks' copies got;
        one made here must be sent on (it is, for P >= 2: the next rank never held it), or that
        backward would never run."""
        if self.microbatch is None or not self.keeps or len(hist) <= held_before:
            return leaves
        held = self.kept.setdefault(self.microbatch, [])
        assert len(held) == held_before, (self.c, len(held), held_before)
        for k in range(held_before, len(hist)):
            slot = _Slot(leaves[hist[k]])
            if leaves[hist[k]].requires_grad:
                leaves[hist[k]] = _Keep.apply(leaves[hist[k]], slot)
            held.append(slot)
        return leaves


class CountingStage(PipelineStage):
    """A PipelineStage that counts the bytes of every send and receive it posts (forward
    activations, backward gradients) and the seconds it computes, and tells its chunk which
    microbatch it is running."""

    def __init__(self, chunk: Chunk, *args, **kwargs):
        super().__init__(chunk, *args, **kwargs)
        self.chunk = chunk
        self.reset()

    def reset(self):
        self.bytes = {"fwd_send": 0, "bwd_send": 0, "fwd_recv": 0, "bwd_recv": 0}
        self.elems = 0  # elements of the forward sends: d-vectors per token, whatever their dtype
        self.busy = 0.0

    @staticmethod
    def _nbytes(ops) -> int:
        return sum(op.tensor.numel() * op.tensor.element_size() for op in ops)

    def get_fwd_send_ops(self, fwd_chunk_id):
        ops = super().get_fwd_send_ops(fwd_chunk_id)
        self.bytes["fwd_send"] += self._nbytes(ops)
        self.elems += sum(op.tensor.numel() for op in ops)
        return ops

    def get_bwd_send_ops(self, bwd_chunk_id):
        ops = super().get_bwd_send_ops(bwd_chunk_id)
        self.bytes["bwd_send"] += self._nbytes(ops)
        return ops

    def get_fwd_recv_ops(self, fwd_chunk_id):
        ops = super().get_fwd_recv_ops(fwd_chunk_id)
        self.bytes["fwd_recv"] += self._nbytes(ops)
        return ops

    def get_bwd_recv_ops(self, bwd_chunk_id):
        ops = super().get_bwd_recv_ops(bwd_chunk_id)
        self.bytes["bwd_recv"] += self._nbytes(ops)
        return ops

    def forward_one_chunk(self, fwd_chunk_id, *args, **kwargs):
        self.chunk.microbatch = fwd_chunk_id
        t0 = time.perf_counter()
        try:
            return super().forward_one_chunk(fwd_chunk_id, *args, **kwargs)
        finally:
            self.busy += time.perf_counter() - t0
            self.chunk.microbatch = None

    def backward_one_chunk(self, bwd_chunk_id, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return super().backward_one_chunk(bwd_chunk_id, *args, **kwargs)
        finally:
            self.busy += time.perf_counter() - t0


@dataclass
class Pipeline:
    """One rank's part of a pipelined model: its chunks, stages and schedule."""
    schedule: object
    stages: list[CountingStage]
    chunks: list[Chunk]
    kept: dict
    rank: int

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        """One training step's forward and backward (no optimizer step): the batch is split into
        the microbatches. Returns the mean loss on the last stage's rank, else None."""
        self.kept.clear()
        for s in self.stages:
            s.reset()
        losses = []
        if self.stages[0].chunk.first:
            self.schedule.step(x, target=y, losses=losses)
        else:
            self.schedule.step(target=y if any(s.chunk.last for s in self.stages) else None, losses=losses)
        undelivered = [s for slots in self.kept.values() for s in slots
                       if not s.delivered and any(leaf.grad is not None for leaf in s.leaves)]
        self.kept.clear()
        if undelivered:
            raise RuntimeError(f"rank {self.rank}: {len(undelivered)} kept completed source(s) got gradients their "
                               "first chunk never read back (a source no sublayer of that chunk reads)")
        return float(sum(x.detach() for x in losses)) if losses else None

    def parameters(self):
        seen = {}
        for c in self.chunks:
            for p in c.parameters():
                seen[id(p)] = p
        return list(seen.values())

    def counts(self) -> dict:
        out = {k: sum(s.bytes[k] for s in self.stages) for k in self.stages[0].bytes}
        out["busy_s"] = sum(s.busy for s in self.stages)
        return out


def build_pipeline(model, schedule: str, ranks: int, virtual: int, microbatches: int, comm: str,
                   rank: int, device, precision=None, whole: bool = False) -> Pipeline:
    """This rank's chunks of `model` (built identically on every rank: same seed, on the CPU)
    under one of SCHEDULES, moved to `device`; the sublayers, embeddings and head of other ranks'
    chunks are dropped unless `whole` (the equality check sums gradients over whole models). The
    loss is the mean cross-entropy over the whole batch (each microbatch's mean divided by the
    number of microbatches), so gradients equal one process's step. Each rank updates the
    residual variant's parameters its chunks read (every variant's are per sublayer)."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"pipeline.schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
    if comm not in COMMS:
        raise ConfigError(f"pipeline.comm must be one of {', '.join(COMMS)}; got {comm!r}")
    if (schedule in MULTI_STAGE) != (virtual > 1):
        raise ConfigError(f"pipeline: schedule {schedule} runs {'V >= 2' if schedule in MULTI_STAGE else 'one'} "
                          f"chunk(s) per rank; got virtual={virtual}")
    chunks = ranks * virtual
    bounds = chunk_bounds(model.cfg.depth, chunks)
    boundaries = trace_boundaries(model, bounds)
    kept: dict = {}
    mine = [Chunk(model, c, bounds, boundaries, ranks, comm, kept, precision, device)
            for c in range(rank, chunks, ranks)]
    if not whole:
        _drop_others(model, [bounds[ch.c] for ch in mine], first=mine[0].first, last=mine[-1].last)
    model.to(device)

    def loss_fn(logits, target):  # in at least fp32, as train.lm_loss
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return F.cross_entropy(logits.flatten(0, 1), target.flatten()) / microbatches

    stages = [CountingStage(ch, ch.c, chunks, torch.device(device)) for ch in mine]
    cls = SCHEDULES[schedule]
    sched = cls(stages if schedule in MULTI_STAGE else stages[0], n_microbatches=microbatches, loss_fn=loss_fn,
                scale_grads=False)
    return Pipeline(sched, stages, mine, kept, rank)


def _drop_others(model, ranges, first: bool, last: bool) -> None:
    """Free what this rank does not run, so its memory is its chunks' (as on a real pipeline)."""
    owned = {i for start, stop in ranges for i in range(start, stop)}
    for i in range(len(model.sublayers)):
        if i not in owned:
            model.sublayers[i] = nn.Identity()
    if not first:
        model.tok_emb = model.pos_emb = nn.Identity()
    if not last:
        model.norm_f = model.head = nn.Identity()


def bubble(ranks: int, virtual: int, microbatches: int) -> float:
    """The ideal bubble fraction of (interleaved) 1F1B with equal chunk times: (P-1) / (V·M + P-1)."""
    return (ranks - 1) / (virtual * microbatches + ranks - 1)


def all_reduced_grads(pipe: Pipeline, model) -> dict[str, torch.Tensor]:
    """Every parameter's gradient summed over ranks (None counts as zero): what one process
    computes for the whole model. For the equality check."""
    out = {}
    for name, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        g = g.detach().clone()
        dist.all_reduce(g)
        out[name] = g
    return out
