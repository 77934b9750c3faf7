"""FLOPs per token of a training step (forward + backward) and of a prefill forward, counted by
the harness's `count_flops` (torch's FlopCounterMode with the harness's conventions) on the
quick suite's shape, variant × depth. Exact and machine-independent: a change in this line is
a change in the work a variant does (or in the counting convention, which the commit says)."""
from . import _common as c


def _measure(variant, blocks):
    import torch
    import torch.nn.functional as F

    count_flops = c.need("measure", "count_flops")
    cfg, model = c.build(variant, blocks, "cpu")
    x, y = c.fixed_batch(cfg, "cpu", batch=1)  # per token, the count does not depend on the batch

    def train():
        logits = model(x)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()

    def prefill():
        with torch.no_grad():
            model(x)

    tokens = x.numel()
    return {"train": count_flops(train) / tokens, "prefill": count_flops(prefill) / tokens}


class FlopsPerToken:
    params = c.PARAMS
    param_names = c.PARAM_NAMES
    unit = "FLOPs/token"
    rounds = 1

    def setup_cache(self):
        c.pin_threads()
        return c.cached_grid(_measure)

    setup_cache.timeout = 300

    def track_train_flops_per_token(self, cache, variant, blocks):
        return c.cached(cache, variant, blocks, "train")

    def track_prefill_flops_per_token(self, cache, variant, blocks):
        return c.cached(cache, variant, blocks, "prefill")
