"""memory: peak live bytes per view — inference (params + no-grad prefill peak) and train (params
+ AdamW state + one steady-state step's peak) — with every counter the device has, labelled."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cells import Cell
from ..measure import LiveBytesTracker, NvmlSampler, cuda_memory_snapshot, peak_rss_bytes, reset_cuda_peak, rss_bytes, synchronize
from ..precision import get as get_precision
from ..train import TrainConfig, make_optimizer, train_step
from .base import Workload, num, register
from .common import RunContext, fixed_batch, model_of, static_info

MiB = 2**20


@dataclass(frozen=True)
class Params:
    batch: int = 8


PEAK_SCHEMA = {"peak_bytes": (int, None), "cuda_peak_allocated?": (int, None)}  # what primary_peak reads


def primary_peak(view: dict | None) -> tuple[float | None, str]:
    """The primary counter for a view: torch.cuda peak allocated on GPU, else the tracker."""
    if not view:
        return None, ""
    if view.get("cuda_peak_allocated") is not None:
        return view["cuda_peak_allocated"], "torch.cuda peak allocated"  # absolute: params included
    return view.get("peak_bytes"), "live-tensor tracker"


def _mib(view: dict | None):
    value, _ = primary_peak(view)
    return None if value is None else value / MiB


def _param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _optimizer_bytes(opt) -> int:
    return sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
               if isinstance(t, torch.Tensor))


def _tracked(device: str, fn) -> dict:
    """Run fn once under every counter this device has; bytes are live-tensor peaks above entry."""
    reset_cuda_peak(device)
    with NvmlSampler(device) as nvml, LiveBytesTracker() as tracker:
        fn()
        synchronize(device)
    return {"tracker_peak_bytes": tracker.peak, **cuda_memory_snapshot(device),
            "nvml_peak_bytes": nvml.peak_bytes, "nvml_status": nvml.status}


def run_memory(cell: Cell, ctx: RunContext) -> tuple[str, str | None, dict]:
    cfg, model = model_of(cell, ctx)
    device, prec = ctx.device, ctx.precision
    x, y = fixed_batch(cfg, cell.params["batch"], cell.seed, device)
    params = _param_bytes(model)
    m = static_info(cell, cfg, model)
    m["param_bytes"] = params

    def prefill():
        with prec.inference(device):
            model(x)

    inf = _tracked(device, prefill)
    inf["peak_bytes"] = params + inf["tracker_peak_bytes"]  # the tracker sees only what fn allocates
    inf["rss_peak_bytes"] = peak_rss_bytes()
    m["inference"] = inf

    opt = make_optimizer(model, TrainConfig())
    scaler = ctx.scaler()
    train_step(model, opt, x, y, TrainConfig(), prec, scaler)  # creates AdamW state: steady-state step follows
    opt.zero_grad(set_to_none=True)
    static = params + _optimizer_bytes(opt)
    tr = _tracked(device, lambda: train_step(model, opt, x, y, TrainConfig(), prec, scaler))
    tr["peak_bytes"] = static + tr["tracker_peak_bytes"]
    tr["static_bytes"] = static
    tr["rss_peak_bytes"] = peak_rss_bytes()
    m["train"] = tr
    m["rss_bytes"] = rss_bytes()
    return "ok", None, m


@register("memory")
class Memory(Workload):
    Params = Params
    order = 1
    positive = ("batch",)
    columns = (
        ("peak train MiB", lambda r: num(r["train_peak_bytes"] and r["train_peak_bytes"] / MiB, ".1f")),
        ("peak infer MiB", lambda r: num(r["infer_peak_bytes"] and r["infer_peak_bytes"] / MiB, ".1f")),
        ("state d/tok", lambda r: "-" if r["state_vectors"] is None else r["state_vectors"]),
    )
    cost_columns = (("train_memory", "train peak mem ×"), ("infer_state", "infer extra / declared state"))
    cost_exact = True
    compare_metrics = {
        "train_peak_MiB": (lambda m: (_mib(m.get("train")), None), "{:.2f}"),
        "inference_peak_MiB": (lambda m: (_mib(m.get("inference")), None), "{:.2f}"),
    }
    metrics_schema = {"train": PEAK_SCHEMA, "inference": PEAK_SCHEMA, "state_vectors": int, "params?": int}

    def run_cell(self, cell, ctx):
        return run_memory(cell, ctx)

    def summary(self, metrics):
        train_peak, c1 = primary_peak(metrics[0]["train"]) if metrics else (None, "")
        inf_peak, c2 = primary_peak(metrics[0]["inference"]) if metrics else (None, "")
        return {"train_peak_bytes": train_peak, "infer_peak_bytes": inf_peak,
                "memory_counters": sorted(c for c in (c1, c2) if c)}

    def footnotes(self, metrics, rows):
        counters = sorted({c for r in rows for c in r.get("memory_counters", [])})
        if not counters:
            return []
        return ["Peak memory: " + ", ".join(counters) + "; train = params + AdamW state + step peak; "
                "infer = params + no-grad prefill peak."]

    def cost(self, records):
        if not records:
            return {}
        mm, cell = records[0]["metrics"], records[0]["cell"]
        itemsize = get_precision(cell["precision"]).param_itemsize  # the stream's dtype (autocast: fp32)
        return {"train_peak": primary_peak(mm["train"])[0], "infer_peak": primary_peak(mm["inference"])[0],
                "state_vectors": mm["state_vectors"],
                "vector_bytes": cell["params"]["batch"] * cell["shape"]["seq_len"] * cell["shape"]["d_model"] * itemsize}

    def relative_cost(self, cost, base):
        """train_memory: train peak / the baseline's. infer_state: the inference bytes held beyond
        the baseline / what the declared extra state predicts ((state_vectors - baseline's) x
        tokens x d x bytes): 1.0 = exactly the declared depth state."""
        if "train_peak" not in cost or "train_peak" not in base:
            return {}
        extra_vectors = cost["state_vectors"] - base["state_vectors"]
        return {"train_memory": cost["train_peak"] / base["train_peak"],
                "infer_state": (cost["infer_peak"] - base["infer_peak"]) / (extra_vectors * cost["vector_bytes"])
                if extra_vectors > 0 else None}
