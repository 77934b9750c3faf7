"""Peak memory in bytes of a training step and of a prefill, variant × depth, on the quick
suite's shape. Exact on CPU (live-tensor bytes under the harness's tracker): any move is the code.

The harness's own memory workload (`run_memory`) defines the views: train = params + AdamW state
+ the steady-state step's peak live tensors; inference = params + the no-grad prefill's peak.
On GPU the number is torch.cuda's peak allocated, as in `resbench report`. Not asv's peakmem_*,
which is host RSS and blind to the GPU.
"""
from . import _common as c


def _cell(Cell, **fields):
    """A memory Cell in this commit's schema: `precision` replaced `dtype`, later fields have
    defaults, and a field this commit lacks is dropped."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(Cell)}
    fields.update({"precision": "fp32"} if "precision" in names else {"dtype": "float32"})
    return Cell(**{k: v for k, v in fields.items() if k in names})


def _measure(variant, blocks):
    Cell = c.need("config", "Cell")
    run_memory = c.need("workloads", "run_memory")
    name, options = c.VARIANTS[variant]
    dev = c.device()
    cfg = c.model_config(blocks)
    cell = _cell(Cell, variant=name, options=dict(options), label=variant, shape_name="asv", shape=cfg.to_dict(),
                 workload="memory", params={"batch": c.BATCH}, device=dev, seed=c.SEED, threads=1)
    try:  # the job's run context, where this commit has one
        context = c.need("workloads.common", "RunContext")
    except NotImplementedError:
        status, message, m = run_memory(cell)
    else:
        status, message, m = run_memory(cell, context.of([cell]))
    if status != "ok":
        raise RuntimeError(f"{variant}/{blocks}: {status}: {message}")
    pick = "cuda_peak_allocated" if dev.startswith("cuda") else "peak_bytes"
    return {view: m[view][pick] for view in ("train", "inference")}


class PeakMemory:
    params = c.PARAMS
    param_names = c.PARAM_NAMES
    unit = "bytes"
    rounds = 1

    def setup_cache(self):
        c.pin_threads()
        return c.cached_grid(_measure)

    setup_cache.timeout = 300

    def track_train_peak_bytes(self, cache, variant, blocks):
        return c.cached(cache, variant, blocks, "train")

    def track_inference_peak_bytes(self, cache, variant, blocks):
        return c.cached(cache, variant, blocks, "inference")
