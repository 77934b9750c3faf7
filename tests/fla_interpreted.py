"""Run by tests/test_fla.py in a process of its own (TRITON_INTERPRET=1 must be set before Triton
is imported, and must not leak into other tests): a tiny model with `impl: fla` against the same
model with `impl: reference`, loss and every gradient, on the CPU through Triton's interpreter.
Prints one JSON line per case.

The interpreter runs the kernels' arithmetic, not their GPU behaviour; three adjustments make
fla's kernels run in it, none of which touches what they compute:
- fla's host function refuses non-CUDA tensors: its source is re-run without that one check;
- its autotuners would benchmark configurations on a GPU: each keeps one configuration of its
  own list (with one left, Triton does not benchmark);
- the compiler makes a kernel's `for i in range(...)` variable an int32 tensor, the interpreter a
  Python int (`(i * BL).to(tl.int64)` then fails): the module's `range` yields int32 tensors.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"

import builtins  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime.interpreter import TensorHandle  # noqa: E402

import fla.ops.attnres.fused as fused  # noqa: E402

GUARD = '    if not residuals[0].is_cuda:\n        raise ValueError("Triton attnres requires CUDA tensors")\n'


def adjust_for_the_interpreter() -> None:
    src = inspect.getsource(fused.fused_attnres_fwd)
    if GUARD not in src:
        sys.exit("fla's fused_attnres_fwd changed: its CUDA check is not where this test expects it")
    exec(compile(src.replace(GUARD, ""), fused.__file__, "exec"), fused.__dict__)
    for kernel in (fused.attnres_fwd_kernel, fused.attnres_bwd_kernel_dv, fused.attnres_bwd_kernel_dqdw):
        kernel.configs = kernel.configs[:1]

    def as_int(x):
        return int(x.handle.data.item()) if isinstance(x, tl.tensor) else int(getattr(x, "value", x))

    def int32_range(*args):
        for i in builtins.range(*[as_int(a) for a in args]):
            yield tl.tensor(TensorHandle(np.array([i], dtype=np.int32), tl.int32), tl.int32)

    fused.__dict__["range"] = int32_range


CALLS = {"n": 0}


def count_kernel_calls() -> None:
    """The public function, counted: a run that never reached the kernel proves nothing."""
    import fla.ops.attnres as api

    real = api.fused_attnres

    def counted(*args, **kwargs):
        CALLS["n"] += 1
        return real(*args, **kwargs)

    api.fused_attnres = counted


def case(name: str, options: dict) -> dict:
    from resbench.model import ModelConfig, build_model

    cfg = ModelConfig(vocab_size=64, d_model=32, depth=2, n_heads=2, seq_len=8)
    x = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len + 1), generator=torch.Generator().manual_seed(0))
    out = {}
    for impl in ("reference", "fla"):
        CALLS["n"] = 0
        model = build_model(cfg, name, {**options, "impl": impl}, 0)
        with torch.no_grad():  # queries and gains off their init (w = 0 reads a plain mean)
            g = torch.Generator().manual_seed(1)
            model.residual.query.copy_(torch.randn(model.residual.query.shape, generator=g))
            model.residual.key_gain.copy_(1 + 0.3 * torch.randn(model.residual.key_gain.shape, generator=g))
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        out[impl] = (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        out[impl + "_calls"] = CALLS["n"]
    (ref_loss, ref_g), (fla_loss, fla_g) = out["reference"], out["fla"]
    rel = max(((fla_g[n] - g).norm() / g.norm().clamp_min(1e-30)).item() for n, g in ref_g.items())
    return {"variant": name, "options": options, "loss_ref": ref_loss, "loss_fla": fla_loss,
            "loss_rel_err": abs(fla_loss - ref_loss) / abs(ref_loss), "grad_rel_err": rel,
            "grads": sorted(ref_g) == sorted(fla_g), "kernel_calls": out["fla_calls"],
            "reads": cfg.n_layers + 1, "reference_calls": out["reference_calls"]}


if __name__ == "__main__":
    adjust_for_the_interpreter()
    count_kernel_calls()
    torch.set_num_threads(1)
    for name, options in (("full-attnres", {}), ("block-attnres", {"n_blocks": 2})):
        print(json.dumps(case(name, options)), flush=True)
